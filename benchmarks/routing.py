#!/usr/bin/env python
"""Hybrid decoding speed against base-only generation, measured in the same run on the same
prompts (greedy, same batch size): tokens/s of `hybrid_generate` (disagree router: an RL forward
every step; random router at 12%: the lagging RL cache) / tokens/s of `hooks.generate(base)`.
Target: >= 0.45x for the disagree router (it does two forwards per token where base-only does one).

    python benchmarks/routing.py [--n-prompts 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import organism  # noqa: E402
from analyses.routing import DisagreeRouter, RandomRouter, hybrid_generate  # noqa: E402
from hooks import generate, load_pair  # noqa: E402
from organism.task import eval_problems  # noqa: E402


def best_rate(fn, repeats: int) -> float:
    """Tokens/s of the fastest of `repeats` runs (the box is shared: the minimum time is the
    least disturbed measurement)."""
    best = 0.0
    for _ in range(repeats):
        t = time.perf_counter()
        n_tokens = fn()
        best = max(best, n_tokens / (time.perf_counter() - t))
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n-prompts", type=int, default=200)
    ap.add_argument("--max-new-tokens", type=int, default=80)
    ap.add_argument("--batch-size", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pair = load_pair(organism.checkpoint_path("base"), organism.checkpoint_path("rl-seed0"))
    prompts = [pair.base.encode(p.prompt) for p in eval_problems(args.n_prompts)]
    # Same number of tokens for both sides: no eos stop, every row decodes max_new_tokens.
    kw = dict(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, stop_at_eos=False)

    def base_only() -> int:
        return sum(map(len, generate(pair.base, prompts, **kw)))

    def hybrid(router) -> int:
        return sum(map(len, hybrid_generate(pair.base, pair.rl, prompts, router, **kw).tokens))

    base_rate = best_rate(base_only, args.repeats)
    dis_rate = best_rate(lambda: hybrid(DisagreeRouter()), args.repeats)
    rnd_rate = best_rate(lambda: hybrid(RandomRouter(0.12, seed=0)), args.repeats)
    print(f"base-only generate:      {base_rate:9.0f} tokens/s")
    print(f"hybrid, disagree router: {dis_rate:9.0f} tokens/s  ratio {dis_rate / base_rate:.2f}x (target >= 0.45x)")
    print(f"hybrid, random 12%:      {rnd_rate:9.0f} tokens/s  ratio {rnd_rate / base_rate:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
