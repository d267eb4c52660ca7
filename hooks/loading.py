"""Load one model or a base/RL pair from a local folder or a hub id.

Each `Model` holds the Hugging Face model untouched (`hf`, used for generation and scoring) and
boots a TransformerLens `TransformerBridge` lazily on a *shallow copy* of it that shares the
parameter tensors. The copy matters: booting a bridge rewires the HF model it is given (module
wrappers, eager attention), after which KV-cached generation from that model is broken
(MEASUREMENTS.md). Sharing the tensors keeps the weight memory at one copy.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from hooks.errors import TwinlensError

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_BRIDGE_WRAPPER = "._original_component"


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """A local folder, or a hub id resolved from the local HF cache (downloaded only when the
    hub is reachable and HF_HUB_OFFLINE is unset)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    text = str(name_or_path)
    looks_like_hub_id = re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", text) is not None
    if path.exists():
        raise TwinlensError(f"{text!r} is a file; pass the model's folder (with config.json).")
    if not looks_like_hub_id:
        raise TwinlensError(
            f"Model folder {text!r} does not exist. Pass an existing local folder (with "
            "config.json and *.safetensors) or a hub id such as 'Qwen/Qwen2.5-Math-1.5B'."
        )
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            text,
            allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"],
            local_files_only=offline,
        )
    except Exception as exc:  # the hub library raises many types; one clear message instead
        hint = (
            "HF_HUB_OFFLINE=1 is set and the model is not in the local cache: download it "
            "on a machine with network access, or pass a local folder."
            if offline
            else "check the id and your network, or pass a local folder."
        )
        raise TwinlensError(f"Could not resolve hub id {text!r}: {hint} ({exc.__class__.__name__})") from None
    return Path(local)


def check_weights_are_safe(path: Path) -> list[Path]:
    """Return the safetensors files of `path`; refuse pickle-only checkpoints."""
    safetensors = sorted(path.glob("*.safetensors"))
    if safetensors:
        return safetensors
    pickles = [p.name for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES]
    if pickles:
        raise TwinlensError(
            f"{path} holds only pickle checkpoints ({', '.join(pickles[:3])}). Unpickling can run "
            "arbitrary code, so twinlens refuses it. Convert once with "
            f"`python -m hooks.convert {path}` (loads with torch.load(weights_only=True) and "
            "writes model.safetensors), then load the folder again."
        )
    ggufs = sorted(p.name for p in path.glob("*.gguf"))
    if ggufs:
        raise TwinlensError(
            f"{path} holds a GGUF checkpoint ({ggufs[0]}), not safetensors. Convert it once with "
            f"`python -m hooks.convert --gguf {path / ggufs[0]} OUT_FOLDER` (needs "
            "pip install 'twinlens[real]'), then load OUT_FOLDER."
        )
    raise TwinlensError(f"{path} has no *.safetensors weights; is it a model folder?")


def hash_files(files: list[Path]) -> str:
    """blake2b over the weight files' bytes (1 MiB chunks): identifies exactly which weights ran."""
    h = hashlib.blake2b(digest_size=16)
    for f in sorted(files):
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


@dataclass(eq=False)
class Model:
    """A causal LM loaded for interpretability. See API.md."""

    name: str
    path: Path
    hf: Any  # transformers.PreTrainedModel, eval mode, never mutated by twinlens
    tokenizer: Any
    weight_files: list[Path] = field(repr=False)
    _bridge: Any = field(default=None, repr=False)
    _module_names: dict = field(default_factory=dict, repr=False)

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.hf.parameters()).dtype

    @property
    def config(self) -> Any:
        return self.hf.config

    @property
    def n_layers(self) -> int:
        return int(self.hf.config.num_hidden_layers)

    @property
    def d_model(self) -> int:
        return int(self.hf.config.hidden_size)

    @property
    def n_ctx(self) -> int | None:
        for key in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
            value = getattr(self.hf.config, key, None)
            if isinstance(value, int):
                return value
        return None

    @cached_property
    def weight_hash(self) -> str:
        return hash_files(self.weight_files)

    @property
    def bridge(self) -> Any:
        """TransformerBridge over a shallow copy of `hf` sharing its parameter tensors."""
        if self._bridge is None:
            from transformer_lens.model_bridge import TransformerBridge

            shared = {id(t): t for t in [*self.hf.parameters(), *self.hf.buffers()]}
            twin = copy.deepcopy(self.hf, shared)
            bridge = TransformerBridge.boot_transformers(
                str(self.path),
                hf_model=twin,
                tokenizer=self.tokenizer,
                device=self.device,
                dtype=self.dtype,
            )
            # We always feed token tensors; never let the bridge add a BOS the model never saw.
            bridge.cfg.default_prepend_bos = False
            bridge.eval()
            self._bridge = bridge
        return self._bridge

    def encode(self, text: str) -> list[int]:
        """Token ids by the tokenizer's own convention (what the HF model sees normally)."""
        return list(self.tokenizer(text)["input_ids"])

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def hook_names(self) -> list[str]:
        """Every hook point of the bridge, TransformerLens naming (`blocks.3.hook_out`, ...)."""
        return list(self.bridge.hook_dict.keys())

    def resolve_hooks(self, patterns: str | list[str]) -> list[str]:
        return resolve_hook_names(self.hook_names(), patterns, n_layers=self.n_layers)

    def hf_module_name(self, hook_name: str) -> tuple[str, str]:
        """Map `blocks.3.hook_out` to (HF module name, "output" | "input"), derived from the
        bridge (no per-architecture table)."""
        if hook_name in self._module_names:
            return self._module_names[hook_name]
        comp_path, _, point = hook_name.rpartition(".")
        if point not in ("hook_out", "hook_in"):
            raise TwinlensError(
                f"{hook_name!r}: only component inputs/outputs (`*.hook_in`, `*.hook_out`) map to "
                "an HF module; use e.g. 'blocks.3.hook_out'."
            )
        self.resolve_hooks([hook_name])  # validates, with suggestions
        component = self.bridge.get_submodule(comp_path)
        original = getattr(component, "original_component", None)
        if original is None:
            raise TwinlensError(f"{hook_name!r} has no underlying HF module to hook.")
        twin = self.bridge.original_model
        for name, module in twin.named_modules():
            if module is original:
                found = name.replace(_BRIDGE_WRAPPER, ""), ("output" if point == "hook_out" else "input")
                self._module_names[hook_name] = found
                return found
        raise TwinlensError(f"Could not locate the HF module behind {hook_name!r}.")

    def hf_module(self, hook_name: str) -> tuple[torch.nn.Module, str]:
        name, where = self.hf_module_name(hook_name)
        return self.hf.get_submodule(name), where


@dataclass(eq=False)
class ModelPair:
    base: Model
    rl: Model

    @property
    def tokenizer(self) -> Any:
        return self.base.tokenizer

    @property
    def models(self) -> dict[str, Model]:
        return {"base": self.base, "rl": self.rl}


_LAYER_RANGE = re.compile(r"^blocks\.(\d+)-(\d+)\.(.+)$")


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """`*` matches one dotted component (`blocks.*.hook_out` = block outputs only, not
    `blocks.0.mlp.hook_out`); `**` matches any depth."""
    out = re.escape(pattern).replace(r"\*\*", ".+").replace(r"\*", "[^.]+").replace(r"\?", "[^.]")
    return re.compile(out)


def resolve_hook_names(
    available: list[str], patterns: str | list[str], n_layers: int | None = None
) -> list[str]:
    """Exact names, glob patterns (`blocks.*.hook_out`) and layer ranges (`blocks.2-5.hook_out`,
    inclusive) -> exact names in model order. Unknown names fail with the closest valid ones."""
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        raise TwinlensError("No hooks given; e.g. hooks=['blocks.*.hook_out'].")
    order = {name: i for i, name in enumerate(available)}
    chosen: set[str] = set()
    for pattern in patterns:
        m = _LAYER_RANGE.match(pattern)
        if m:
            lo, hi, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            if n_layers is not None and hi >= n_layers:
                raise TwinlensError(
                    f"Layer range {lo}-{hi} in {pattern!r} is out of range: the model has "
                    f"{n_layers} blocks (0-{n_layers - 1})."
                )
            names = [f"blocks.{i}.{rest}" for i in range(lo, hi + 1)]
        elif any(ch in pattern for ch in "*?["):
            names = [n for n in available if _glob_regex(pattern).fullmatch(n)]
            if not names:
                raise TwinlensError(
                    f"Hook pattern {pattern!r} matches no hook point. Close names: "
                    f"{difflib.get_close_matches(pattern.replace('*', '0'), available, n=5)}"
                )
        else:
            names = [pattern]
        for name in names:
            if name not in order:
                close = difflib.get_close_matches(name, available, n=5, cutoff=0.5)
                raise TwinlensError(
                    f"Unknown hook point {name!r}. Closest valid names: {close}. "
                    "List them all with model.hook_names()."
                )
            chosen.add(name)
    return sorted(chosen, key=order.__getitem__)


def load_model(
    name_or_path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    trust_remote_code: bool = False,
) -> Model:
    """Load a causal LM (safetensors only) and its tokenizer. `trust_remote_code` stays off
    unless asked: it runs code shipped with the checkpoint."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    path = resolve_model_path(name_or_path)
    if not (path / "config.json").exists():
        raise TwinlensError(f"{path} has no config.json; pass a Hugging Face model folder.")
    weight_files = check_weights_are_safe(path)
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise TwinlensError(
                f"{path} needs custom code from the checkpoint. Read it first, then pass "
                "trust_remote_code=True if you trust it."
            ) from None
        raise
    hf = AutoModelForCausalLM.from_pretrained(
        path,
        config=config,
        dtype=dtype,
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
    )
    hf.to(device).eval()
    hf.requires_grad_(False)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise TwinlensError(
            f"{path} has no loadable tokenizer ({exc.__class__.__name__}: {exc}). Save one with "
            "tokenizer.save_pretrained(folder)."
        ) from None
    return Model(name=str(name_or_path), path=path, hf=hf, tokenizer=tokenizer, weight_files=weight_files)


def describe_pair_mismatch(base: Model, rl: Model) -> list[str]:
    """Every way two models differ that makes comparing their activations meaningless."""
    problems = []
    arch_b = (base.config.model_type, tuple(getattr(base.config, "architectures", None) or ()))
    arch_r = (rl.config.model_type, tuple(getattr(rl.config, "architectures", None) or ()))
    if arch_b != arch_r:
        problems.append(f"architecture: base {arch_b} vs rl {arch_r}")
    vb, vr = base.tokenizer.get_vocab(), rl.tokenizer.get_vocab()
    if vb != vr:
        only_b = sorted(set(vb) - set(vr))[:5]
        only_r = sorted(set(vr) - set(vb))[:5]
        moved = [t for t in set(vb) & set(vr) if vb[t] != vr[t]][:5]
        problems.append(
            f"tokenizer vocabulary: {len(vb)} vs {len(vr)} tokens; only in base {only_b}, "
            f"only in rl {only_r}, different ids {moved}"
        )
    shapes_b = {n: tuple(p.shape) for n, p in base.hf.state_dict().items()}
    shapes_r = {n: tuple(p.shape) for n, p in rl.hf.state_dict().items()}
    if shapes_b != shapes_r:
        diffs = [n for n in sorted(set(shapes_b) | set(shapes_r)) if shapes_b.get(n) != shapes_r.get(n)]
        problems.append(
            "parameter shapes: "
            + "; ".join(f"{n}: {shapes_b.get(n)} vs {shapes_r.get(n)}" for n in diffs[:5])
        )
    return problems


def load_pair(
    base: str | os.PathLike, rl: str | os.PathLike, **kwargs: Any
) -> ModelPair:
    """Load base and RL models; refuse a pair that does not share vocabulary, architecture and
    shapes, saying which."""
    pair = ModelPair(base=load_model(base, **kwargs), rl=load_model(rl, **kwargs))
    problems = describe_pair_mismatch(pair.base, pair.rl)
    if problems:
        raise TwinlensError(
            f"{base} and {rl} are not a comparable pair:\n  - " + "\n  - ".join(problems)
            + "\nLoad an RL model trained from this base (same tokenizer and architecture)."
        )
    return pair
