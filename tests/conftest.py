"""Shared fixtures: tiny random-weight models of real architectures, saved to a temp folder and
loaded through the real loading path (no network: HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import os
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


def make_tiny_model(folder: Path, arch: str = "llama", seed: int = 0, n_layers: int = 2, d: int = 32) -> Path:
    """Write a random-weight model of a real architecture (llama, qwen2, gpt2) to `folder`."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    vocab = len(CHARS) + 2
    pad, eos = len(CHARS), len(CHARS) + 1
    torch.manual_seed(seed)
    if arch == "llama":
        cfg = LlamaConfig(vocab_size=vocab, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=n_layers,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                          pad_token_id=pad, eos_token_id=eos, bos_token_id=None)
        model = LlamaForCausalLM(cfg)
    elif arch == "qwen2":
        cfg = Qwen2Config(vocab_size=vocab, hidden_size=d, intermediate_size=2 * d, num_hidden_layers=n_layers,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                          pad_token_id=pad, eos_token_id=eos, bos_token_id=None, tie_word_embeddings=True)
        model = Qwen2ForCausalLM(cfg)
    elif arch == "gpt2":
        cfg = GPT2Config(vocab_size=vocab, n_embd=d, n_layer=n_layers, n_head=4, n_positions=128,
                         pad_token_id=pad, eos_token_id=eos, bos_token_id=eos)
        model = GPT2LMHeadModel(cfg)
    else:
        raise ValueError(arch)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    save_char_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """{'llama': path, 'qwen2': path, 'gpt2': path, 'llama_b': same arch, other weights}."""
    root = tmp_path_factory.mktemp("tiny_models")
    out = {arch: make_tiny_model(root / arch, arch) for arch in ("llama", "qwen2", "gpt2")}
    out["llama_b"] = make_tiny_model(root / "llama_b", "llama", seed=1)
    return out
