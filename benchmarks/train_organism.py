"""Pretraining step time of the organism: the length-bucketed step (what training uses) against
one padded batch (the baseline), both measured in this run, at 1 and 2 torch threads.

    python benchmarks/train_organism.py [--steps 20]
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
from transformers import LlamaForCausalLM  # noqa: E402

from organism.corpus import make_corpus  # noqa: E402
from organism.training import ModelShape, _backward_summed_loss, _length_groups  # noqa: E402


def step_time(bucketed: bool, steps: int, batch: int = 64) -> float:
    torch.manual_seed(0)
    model = LlamaForCausalLM(ModelShape().config())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    times = []
    for step in range(steps + 3):
        pairs = make_corpus(batch, seed=step)
        groups = _length_groups(pairs) if bucketed else [pairs]
        t0 = time.perf_counter()
        opt.zero_grad()
        _backward_summed_loss(model, groups, batch)  # the training step's own loss code
        opt.step()
        if step >= 3:
            times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        padded = step_time(False, args.steps)
        bucketed = step_time(True, args.steps)
        print(f"threads={threads}: padded {padded * 1e3:.0f} ms/step, bucketed "
              f"{bucketed * 1e3:.0f} ms/step, speed-up x{padded / bucketed:.2f}")


if __name__ == "__main__":
    main()
