#!/usr/bin/env python
"""Capture throughput and memory, as ratios against a baseline measured in the same run.

    python benchmarks/capture.py [--sizes tiny,100m] [--device cpu|cuda]

1. Throughput: capture-to-disk of every block's output (the residual stream at every layer)
   over the same batches as a bare HF forward; prints capture / bare tokens per second.
   Targets: >= 0.8 on CPU, >= 0.9 on a GPU.
2. Memory: peak RSS of a capture of N examples and of 4N examples, each in a fresh subprocess;
   prints the growth. Target: < 10% more with 4x the data (memory bounded by one shard).
Models are random-weight, built from a config (no download): a tiny Llama and a ~100M-parameter
Qwen2-style model (or Qwen2-1.5B dimensions with --size 1.5b on a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

SIZES = {
    # name: (hidden, layers, heads, kv_heads, intermediate, vocab)
    "tiny": (64, 2, 4, 2, 128, 64),
    "100m": (768, 8, 12, 2, 2048, 32000),
    "1.5b": (1536, 28, 12, 2, 8960, 151936),
}


def build_model(folder: Path, size: str, dtype: torch.dtype) -> Path:
    from conftest import save_char_tokenizer
    from transformers import Qwen2Config, Qwen2ForCausalLM

    d, n_layers, heads, kv, inter, vocab = SIZES[size]
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=d, intermediate_size=inter, num_hidden_layers=n_layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=2048,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).to(dtype)
    model.save_pretrained(folder)
    save_char_tokenizer(folder)  # ids beyond its vocabulary are fine: we feed token ids
    return folder


def batches(n_examples: int, seq: int, vocab: int, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, min(vocab, 40), (n_examples, seq), generator=g).tolist()


def throughput(folder: Path, device: str, dtype: torch.dtype, n_examples: int, seq: int, batch: int) -> dict:
    from hooks import capture, load_model

    model = load_model(folder, device=device, dtype=dtype)
    data = batches(n_examples, seq, model.hf.config.vocab_size)
    tokens = n_examples * seq
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def bare(module: torch.nn.Module) -> float:
        sync()
        t0 = time.perf_counter()
        with torch.no_grad():
            for i in range(0, n_examples, batch):
                module(torch.tensor(data[i : i + batch], device=device))
        sync()
        return time.perf_counter() - t0

    def cap() -> float:
        with tempfile.TemporaryDirectory() as tmp:
            sync()
            t0 = time.perf_counter()
            capture(model, data, hooks="blocks.*.hook_out", out=Path(tmp) / "s", batch_size=batch, progress=False)
            sync()
            return time.perf_counter() - t0

    bare(model.hf), cap()  # warm-up: bridge boot, allocator, kernels
    t_bare = min(bare(model.hf) for _ in range(3))
    # The strictest baseline: the decoder alone, without the LM head capture does not need.
    t_body = min(bare(model.hf.base_model) for _ in range(3))
    t_cap = min(cap() for _ in range(3))
    return {"tokens": tokens, "bare_tok_s": tokens / t_bare, "capture_tok_s": tokens / t_cap,
            "ratio": t_bare / t_cap, "ratio_no_head": t_body / t_cap}


CHILD = """
import json, resource, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import torch
from hooks import capture, load_model
model = load_model(sys.argv[2])
n, seq = int(sys.argv[3]), int(sys.argv[4])
g = torch.Generator().manual_seed(0)
data = torch.randint(0, 40, (n, seq), generator=g).tolist()
with tempfile.TemporaryDirectory() as tmp:
    capture(model, data, hooks="blocks.*.hook_out", out=Path(tmp) / "s", batch_size=8,
            shard_bytes=int(sys.argv[5]), progress=False)
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def peak_rss(folder: Path, n: int, seq: int, shard_bytes: int) -> float:
    out = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), str(folder), str(n), str(seq), str(shard_bytes)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="tiny,100m")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="float32 on CPU, bfloat16 on GPU by default")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--examples", type=int, default=None,
                    help="examples per model (default: 256 for tiny, 16 otherwise, so each run does "
                    "enough work that per-call set-up is amortised as it is on a real dataset)")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            folder = build_model(Path(tmp) / size, size, dtype)
            n = args.examples or (256 if size == "tiny" else 16)
            r = throughput(folder, args.device, dtype, n, args.seq, batch=8)
            print(f"[{size}] {args.device} {str(dtype).removeprefix('torch.')}: bare HF forward "
                  f"{r['bare_tok_s']:,.0f} tok/s, capture of every block output to disk "
                  f"{r['capture_tok_s']:,.0f} tok/s -> ratio {r['ratio']:.2f} "
                  f"(target >= {0.9 if args.device.startswith('cuda') else 0.8}); "
                  f"vs the decoder without its LM head: {r['ratio_no_head']:.2f}")
        # Memory: smallest model that makes the shard buffer matter; 16 MB shards.
        folder = Path(tmp) / "tiny"
        small = peak_rss(folder, 256, 512, 16 << 20)
        large = peak_rss(folder, 1024, 512, 16 << 20)
        print(f"[memory] peak RSS {small:.0f} MB for 256 examples, {large:.0f} MB for 1024 "
              f"-> growth {100 * (large / small - 1):+.1f}% with 4x the data (target < 10%)")


if __name__ == "__main__":
    main()
