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
from hooks.safetensors_files import check_safetensors_files
from hooks.validation import check_device, check_dtype, check_layer_range

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_BRIDGE_WRAPPER = "._original_component"
_BLOCK_HOOK = re.compile(r"^blocks\.(\d+)\.hook_(in|out)$")


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
    """The safetensors files Hugging Face loads from `path`, in its own order of preference:
    `model.safetensors`, else the files named by `model.safetensors.index.json`. Other
    safetensors files in the folder (an adapter, a stray copy) are not loaded, so they are not
    listed (and do not enter `weight_hash`). Refuses pickle-only checkpoints."""
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        import json

        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError):
            raise TwinlensError(
                f"{index} is not a safetensors index (no 'weight_map'); restore it or re-save the "
                "model with save_pretrained."
            ) from None
        files = [path / name for name in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise TwinlensError(
                f"{index.name} in {path} names shards that are not there: {absent[:3]}. Copy the "
                "missing shards into the folder."
            )
        return files
    safetensors = sorted(path.glob("*.safetensors"))
    if safetensors:
        raise TwinlensError(
            f"{path} has safetensors files ({', '.join(p.name for p in safetensors[:3])}) but neither "
            "model.safetensors nor model.safetensors.index.json, so Hugging Face loads none of them. "
            "Rename the single weight file to model.safetensors, or restore the index of a sharded "
            "checkpoint."
        )
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
    _hf_refusals: dict = field(default_factory=dict, repr=False)
    _bridge_error: str | None = field(default=None, repr=False)
    # Task prompts go through the tokenizer's own chat template (`encode_prompt`); set by
    # `use_chat_template` (scripts: --chat-template).
    chat_template: bool = False

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
        """TransformerBridge over a shallow copy of `hf` sharing its parameter tensors.

        Raises TwinlensError, naming the architecture and what works without a bridge, when
        TransformerLens cannot build one for this model (the failure is remembered: no retry)."""
        if self._bridge is None:
            if self._bridge_error is not None:
                raise TwinlensError(self._bridge_error)
            from transformer_lens.model_bridge import TransformerBridge

            shared = {id(t): t for t in [*self.hf.parameters(), *self.hf.buffers()]}
            twin = copy.deepcopy(self.hf, shared)
            try:
                reference = reference_logits(self, twin)  # before the bridge rewires the copy
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
                check_bridge_logits(self, bridge, reference)
            except Exception as exc:  # TransformerLens raises anything (RuntimeError, KeyError...)
                self._bridge_error = describe_bridge_failure(self, exc)
                raise TwinlensError(self._bridge_error) from exc
            # Interventions open while the bridge boots must act on its copy too.
            from hooks.interventions import attach_open_interventions

            attach_open_interventions(self, bridge)
            self._bridge = bridge
        return self._bridge

    @property
    def bridge_available(self) -> bool:
        """Whether TransformerLens can build a bridge for this model (boots it if not yet)."""
        try:
            _ = self.bridge
        except TwinlensError:
            return False
        return True

    def encode(self, text: str) -> list[int]:
        """Token ids by the tokenizer's own convention (what the HF model sees normally)."""
        return list(self.tokenizer(text)["input_ids"])

    def use_chat_template(self, on: bool = True) -> Model:
        """Make `encode_prompt` apply the tokenizer's own chat template (an instruct model's
        prompts as it saw them in training). Errors, naming the fix, when the tokenizer has
        none (a base model, the organism). Returns self."""
        if on and not getattr(self.tokenizer, "chat_template", None):
            raise TwinlensError(
                f"The tokenizer of {self.name!r} has no chat template (tokenizer_config.json "
                "'chat_template'); drop --chat-template, or write the template into the prompts."
            )
        self.chat_template = bool(on)
        return self

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a task prompt: `encode(text)`, or with `chat_template` set, the
        tokenizer's chat template applied to one user turn plus the generation prompt
        (`apply_chat_template(..., add_generation_prompt=True)`: special tokens such as BOS come
        from the template, never twice)."""
        if not self.chat_template:
            return self.encode(text)
        ids = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                 tokenize=True, return_dict=False)
        return [int(t) for t in ids]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def encode_continuation(self, text: str, previous_text: str = "", word_boundary: bool = True) -> list[int]:
        """Token ids of `text` as a continuation of `previous_text` (appended to a completion):
        never special tokens (no BOS in mid-sequence: `encode` would give Gemma's `[<bos>, Wait]`),
        and, with `word_boundary`, a new word where the text starts one after a non-space
        character: "Wait" after "... is 8." is the token of " Wait", the one the model writes
        (GPT-2's "ĠWait", SentencePiece's "▁Wait"), not the word-internal "Wait".

        The spaced form is encoded after an anchor ("." then " Wait") and the anchor's tokens
        removed, so tokenizers that prepend a space to every encode (Llama-2's SentencePiece)
        do not get two. `word_boundary=False` for a language without spaces between words (the
        organism's). Raises TwinlensError when `text` encodes to no tokens."""
        from hooks.errors import TwinlensError

        def enc(t: str) -> list[int]:
            return list(self.tokenizer(t, add_special_tokens=False)["input_ids"])

        ids = enc(text)
        if word_boundary and previous_text and not previous_text[-1].isspace() and text[:1].isalnum():
            anchor = enc(".")
            both = enc(". " + text)
            ids = both[len(anchor):] if both[: len(anchor)] == anchor else enc(" " + text)
        if not ids:
            raise TwinlensError(f"The continuation {text!r} tokenizes to nothing; pass text with tokens.")
        return ids

    def hook_names(self) -> list[str]:
        """Every hook point of the bridge, TransformerLens naming (`blocks.3.hook_out`, ...).
        TwinlensError when the bridge cannot be built for this architecture."""
        return list(self.bridge.hook_dict.keys())

    def block_hook_names(self) -> list[str]:
        """`blocks.L.hook_in` and `blocks.L.hook_out` of every block: the hook points served by
        the HF decoder layers themselves, with or without a bridge."""
        return [f"blocks.{i}.hook_{p}" for i in range(self.n_layers) for p in ("in", "out")]

    def resolve_hooks(self, patterns: str | list[str]) -> list[str]:
        """Exact hook names for `patterns` (see resolve_hook_names). Without a bridge (an
        architecture TransformerLens cannot build) only block inputs/outputs resolve."""
        try:
            available = self.hook_names()
        except TwinlensError:
            if self._bridge_error is None:
                raise
            try:
                return resolve_hook_names(self.block_hook_names(), patterns, n_layers=self.n_layers)
            except TwinlensError as exc:
                raise TwinlensError(f"{exc}\n{self._bridge_error}") from None
        return resolve_hook_names(available, patterns, n_layers=self.n_layers)

    @cached_property
    def decoder_layers_name(self) -> str:
        """HF module name of the list of decoder blocks (`model.layers`, `transformer.h`,
        `model.decoder.layers`...): the shallowest ModuleList of `num_hidden_layers` modules of
        one class, found in the module tree (no per-architecture table, no bridge needed)."""
        found = [
            name
            for name, module in self.hf.named_modules()
            if isinstance(module, torch.nn.ModuleList)
            and len(module) == self.n_layers
            and len({type(m) for m in module}) == 1
        ]
        if not found:
            raise TwinlensError(
                f"Could not find the {self.n_layers} decoder blocks of this {self.config.model_type} "
                "model (no ModuleList of num_hidden_layers blocks)."
            )
        return min(found, key=lambda n: n.count("."))

    def hf_module_name(self, hook_name: str) -> tuple[str, str]:
        """The HF module and side ("output" | "input") whose value *is* hook `hook_name`.

        Block inputs/outputs (`blocks.L.hook_in`, `blocks.L.hook_out`) are decoder layer L's
        input/output, bridge or not. Any other component hook is located through the bridge's
        component mapping and then verified once (cached) on a short input: the HF module must
        give the bridge's value for the hook, same shape, else TwinlensError (the hook is served
        by the bridge only; e.g. OPT's `mlp.hook_out`, which HF has no module for)."""
        if hook_name in self._module_names:
            return self._module_names[hook_name]
        if hook_name in self._hf_refusals:
            raise TwinlensError(self._hf_refusals[hook_name])
        block = _BLOCK_HOOK.match(hook_name)
        if block:
            layer = int(block.group(1))
            if layer >= self.n_layers:
                raise TwinlensError(
                    f"{hook_name!r}: layer {layer} does not exist, the model has {self.n_layers} "
                    f"blocks (0-{self.n_layers - 1})."
                )
            found = f"{self.decoder_layers_name}.{layer}", ("output" if block.group(2) == "out" else "input")
            self._module_names[hook_name] = found
            return found
        self.verify_hf_modules([hook_name])
        return self.hf_module_name(hook_name)

    def hf_module(self, hook_name: str) -> tuple[torch.nn.Module, str]:
        name, where = self.hf_module_name(hook_name)
        return self.hf.get_submodule(name), where

    def _bridge_module_name(self, hook_name: str) -> tuple[str, str]:
        """Candidate HF module behind a component hook, from the bridge's component mapping."""
        comp_path, _, point = hook_name.rpartition(".")
        if point not in ("hook_out", "hook_in"):
            raise TwinlensError(
                f"{hook_name!r}: only component inputs/outputs (`*.hook_in`, `*.hook_out`) map to "
                "an HF module; use e.g. 'blocks.3.hook_out'."
            )
        self.resolve_hooks([hook_name])  # validates, with suggestions
        try:
            component = self.bridge.get_submodule(comp_path)
        except AttributeError:  # a split view (Falcon's attn.q of a fused qkv) has no module
            component = None
        original = getattr(component, "original_component", None)
        if original is None:
            raise TwinlensError(f"{hook_name!r} has no underlying HF module to hook.")
        for name, module in self.bridge.original_model.named_modules():
            if module is original:
                name = name.replace(_BRIDGE_WRAPPER, "")
                try:  # modules the bridge added to its copy (split q/k/v views) are not in `hf`
                    self.hf.get_submodule(name)
                except AttributeError:
                    break
                return name, ("output" if point == "hook_out" else "input")
        raise TwinlensError(f"Could not locate the HF module behind {hook_name!r}.")

    @torch.no_grad()
    def verify_hf_modules(self, hook_names: list[str]) -> dict[str, str]:
        """Check, once per model, that each component hook's HF module gives the bridge's value.

        One HF forward (module hooks) and one bridge forward over 2 x 6 random tokens (seed 0);
        a hook passes when the shapes are equal and max|hf - bridge| <= tol * max(1, max|bridge|),
        tol = 1e-4 in float32/64 (SDPA vs eager attention differ by ~1e-6) and 2e-2 in 16-bit
        types (a few roundings of 2^-8). Results are cached; returns {hook: reason} for the hooks
        refused (they are then served by the bridge only)."""
        pending = [
            h for h in hook_names
            if h not in self._module_names and h not in self._hf_refusals and not _BLOCK_HOOK.match(h)
        ]
        candidates: dict[str, tuple[str, str]] = {}
        for h in pending:
            try:
                candidates[h] = self._bridge_module_name(h)
            except TwinlensError as exc:
                self._hf_refusals[h] = str(exc)
        if candidates:
            gen = torch.Generator().manual_seed(0)
            ids = torch.randint(0, int(self.config.vocab_size), (2, 6), generator=gen).to(self.device)
            from_hf: dict[str, Any] = {}
            from_bridge: dict[str, Any] = {}

            def copy_of(x: Any) -> Any:
                # A copy at hook time, as capture takes: HF code may add to an output in place
                # afterwards (Falcon: mlp_output += attention_output).
                return x.detach().clone() if isinstance(x, torch.Tensor) else x

            def grab(name: str, where: str):
                def post(_m, _args, output):
                    from_hf[name] = copy_of(output[0] if isinstance(output, tuple) else output)

                def pre(_m, args, kwargs):
                    from_hf[name] = copy_of(args[0] if args else kwargs.get("hidden_states"))

                return post if where == "output" else pre

            from hooks.interventions import suspend_interventions

            handles = []
            try:
                for h, (name, where) in candidates.items():
                    module = self.hf.get_submodule(name)
                    if where == "output":
                        handles.append(module.register_forward_hook(grab(h, where)))
                    else:
                        handles.append(module.register_forward_pre_hook(grab(h, where), with_kwargs=True))
                with suspend_interventions(self):  # the check compares module values, clean
                    self.hf(input_ids=ids, use_cache=False)
            finally:
                for handle in handles:
                    handle.remove()
            try:
                with suspend_interventions(self):
                    self.bridge.run_with_hooks(
                        ids, return_type=None,
                        fwd_hooks=[(h, lambda act, hook=None, h=h: from_bridge.__setitem__(h, copy_of(act)))
                               for h in candidates],
                    )
            except Exception as exc:  # a hook TransformerLens will not attach; no reference value
                from_bridge = {}
                reason = f"{exc.__class__.__name__}: {exc}"
            else:
                reason = "the bridge's hook did not fire"
            tol = 1e-4 if self.dtype in (torch.float32, torch.float64) else 2e-2
            for h, (name, where) in candidates.items():
                x, y = from_hf.get(h), from_bridge.get(h)
                if not isinstance(y, torch.Tensor):
                    why = reason
                elif not isinstance(x, torch.Tensor) or x.shape != y.shape:
                    why = (f"HF {name} {where} has shape {tuple(x.shape) if isinstance(x, torch.Tensor) else None},"
                           f" the bridge's hook {tuple(y.shape)}")
                else:
                    err = (x.float() - y.float()).abs().max().item()
                    scale = max(1.0, y.float().abs().max().item())
                    if err <= tol * scale:
                        self._module_names[h] = (name, where)
                        continue
                    why = f"HF {name} {where} differs from the bridge's hook by {err:.3g} (scale {scale:.3g})"
                self._hf_refusals[h] = (
                    f"{h!r} has no HF module giving its value on {self.config.model_type} ({why}); "
                    "it is served by the bridge (engine='bridge' or 'auto')."
                )
        return {h: self._hf_refusals[h] for h in hook_names if h in self._hf_refusals}


class BridgeMismatch(RuntimeError):
    """The bridge runs but its logits are not the HF model's."""


def _probe_ids(model: Model) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, int(model.config.vocab_size), (2, 5), generator=gen).to(model.device)


@torch.no_grad()
def reference_logits(model: Model, hf: Any) -> torch.Tensor:
    """Logits of `hf` on the bridge check's input (2 x 5 random tokens, seed 0)."""
    return hf(input_ids=_probe_ids(model), use_cache=False).logits.float()


@torch.no_grad()
def check_bridge_logits(model: Model, bridge: Any, want: torch.Tensor) -> None:
    """A booted bridge must reproduce the HF model's logits `want` on reference_logits' input:
    a bridge that runs a different computation, or cannot run one, is not used. Tolerance as
    in Model.verify_hf_modules (1e-4 relative in float32, 2e-2 in 16-bit)."""
    got = bridge(_probe_ids(model), return_type="logits").float()
    tol = 1e-4 if model.dtype in (torch.float32, torch.float64) else 2e-2
    scale = max(1.0, want.abs().max().item())
    if got.shape != want.shape or (got - want).abs().max().item() > tol * scale:
        err = (got - want).abs().max().item() if got.shape == want.shape else float("nan")
        raise BridgeMismatch(
            f"the bridge's logits differ from the HF model's by {err:.3g} (shape "
            f"{tuple(got.shape)} vs {tuple(want.shape)})"
        )


def describe_bridge_failure(model: Model, exc: BaseException) -> str:
    """The message for an architecture TransformerLens cannot bridge: which one, why, what still
    works (everything that runs on the HF model itself)."""
    cfg = model.config
    arch = ", ".join(getattr(cfg, "architectures", None) or ()) or cfg.model_type
    return (
        f"TransformerLens could not build its bridge for {model.path.name} ({arch}, model_type "
        f"{cfg.model_type!r}): {exc.__class__.__name__}: {str(exc)[:300]}. Hook points other than "
        "block inputs/outputs need the bridge and are unavailable for this model. What still works: "
        "loading, generate(), scoring, add_to_residual / ablate_direction / edit_block_output (they "
        "hook the HF blocks), weight diffs, routing, and capture of 'blocks.L.hook_out' / "
        "'blocks.L.hook_in' (engine='hf' or 'auto')."
    )


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
            check_layer_range(lo, hi, n_layers, pattern)
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


def check_loading_info(path: Path, info: dict, *, allow_missing_weights: bool = False) -> None:
    """Refuse a load whose checkpoint lacks tensors the architecture needs (HF initialises them
    at random) or holds tensors it does not use; `info` is from_pretrained's loading info.
    Tied weights (an output matrix shared with the embedding) are not missing: HF ties them."""
    missing = sorted(info.get("missing_keys") or ())
    unexpected = sorted(info.get("unexpected_keys") or ())
    mismatched = sorted(str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys") or ())
    problems = []
    if missing:
        problems.append(
            f"{len(missing)} tensor(s) the architecture needs are not in the checkpoint and would be "
            f"random: {missing[:5]}"
        )
    if unexpected:
        problems.append(f"{len(unexpected)} tensor(s) in the checkpoint are not used by the architecture: {unexpected[:5]}")
    if mismatched:
        problems.append(f"{len(mismatched)} tensor(s) have another shape than the config says: {mismatched[:5]}")
    if not problems:
        return
    text = f"{path}: the checkpoint does not match its config.json:\n  - " + "\n  - ".join(problems)
    if allow_missing_weights and not mismatched:
        import warnings

        warnings.warn(text + "\nLoaded anyway (allow_missing_weights=True).", stacklevel=3)
        return
    raise TwinlensError(
        text + "\nCheck that the folder holds every shard and the config of the same model (for an "
        "untied output layer, `lm_head.weight`; or set tie_word_embeddings in config.json if the "
        "model ties it). To load it anyway, with random values in the missing tensors, pass "
        "allow_missing_weights=True (scripts: --allow-missing-weights)."
    )


def load_model(
    name_or_path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str = torch.float32,
    trust_remote_code: bool = False,
    allow_missing_weights: bool | None = None,
) -> Model:
    """Load a causal LM (safetensors only) and its tokenizer. `trust_remote_code` stays off
    unless asked: it runs code shipped with the checkpoint.

    A checkpoint whose tensors do not match the architecture is refused (TwinlensError naming
    the first few): a *missing* tensor (e.g. `lm_head.weight` of an untied model) would be
    filled with fresh random values, different on every load, and an *unexpected* one is a
    weight the model never uses. `allow_missing_weights=True` loads it anyway, with a warning
    naming them; the numbers then depend on the random initialisation. None (the default) reads
    the environment variable TWINLENS_ALLOW_MISSING_WEIGHTS ("1" = allow), which the scripts'
    --allow-missing-weights sets.

    `dtype`: a floating torch dtype or its name ('float32', 'bfloat16', ...); `device`: one this
    machine has ('cpu', 'cuda:0'). Bad values raise TwinlensError before anything is read."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    dtype = check_dtype(dtype)
    device = check_device(device)
    path = resolve_model_path(name_or_path)
    if not (path / "config.json").exists():
        raise TwinlensError(f"{path} has no config.json; pass a Hugging Face model folder.")
    weight_files = check_weights_are_safe(path)
    check_safetensors_files(weight_files)  # a damaged file is named here, not deep in transformers
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        if "trust_remote_code" in str(exc):
            raise TwinlensError(
                f"{path} needs custom code from the checkpoint. Read it first, then pass "
                "trust_remote_code=True if you trust it."
            ) from None
        raise
    hf, loading_info = AutoModelForCausalLM.from_pretrained(
        path,
        config=config,
        dtype=dtype,
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
        output_loading_info=True,
    )
    if allow_missing_weights is None:
        allow_missing_weights = os.environ.get("TWINLENS_ALLOW_MISSING_WEIGHTS", "0") == "1"
    check_loading_info(path, loading_info, allow_missing_weights=allow_missing_weights)
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
