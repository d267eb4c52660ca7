"""Shortcut detectors for degenerate RL (RESEARCH.md section 6): response length, repeated
n-grams, answers given without intermediate steps — per checkpoint.

Repeated n-gram rate of one completion is ``rep-n`` (Welleck et al. 2019):
1 - |distinct n-grams| / |n-grams| over its tokens (0 for a completion shorter than n).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from analyses.sampling import SampleRow, Samples
from analyses.task import Task
from hooks.errors import TwinlensError
from hooks.validation import bootstrap_indices


def repeated_ngram_rate(tokens: Sequence, n: int) -> float:
    """1 - distinct / total n-grams of ``tokens``; 0.0 when there is no n-gram."""
    if n < 1:
        raise TwinlensError(f"n-gram size must be >= 1, got {n}.")
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


@dataclass
class ShortcutStats:
    """Per-model averages over samples; CIs are bootstrap over problems."""

    n_samples: int
    mean_length: float  # completion tokens (eos excluded)
    repeated_ngram_rate: float
    skipped_steps_rate: float | None  # None when the task defines no detector
    unfinished_rate: float  # cut at max_new_tokens (no eos)
    ngram: int
    ci: dict[str, tuple[float, float]]
    seed: int

    def to_dict(self) -> dict:
        return {
            "n_samples": self.n_samples, "mean_length": self.mean_length,
            "repeated_ngram_rate": self.repeated_ngram_rate,
            "skipped_steps_rate": self.skipped_steps_rate, "unfinished_rate": self.unfinished_rate,
            "ngram": self.ngram, "ci": {k: list(v) for k, v in self.ci.items()}, "seed": self.seed,
        }


def shortcut_stats(
    samples: Samples | Sequence[SampleRow],
    task: Task | None = None,
    *,
    ngram: int | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> ShortcutStats:
    """Detectors over ``samples`` (one model's). ngram defaults to the task's unit (4 otherwise)."""
    rows = list(samples.rows if isinstance(samples, Samples) else samples)
    if not rows:
        raise TwinlensError("No samples given; shortcut detectors need at least one sample.")
    n = ngram or (task.ngram if task is not None else 4)
    metrics: dict[str, dict[str, list[float]]] = {
        "mean_length": {}, "repeated_ngram_rate": {}, "unfinished_rate": {}}
    if task is not None and task.skips_steps is not None:
        metrics["skipped_steps_rate"] = {}
    for r in rows:
        values = {
            "mean_length": float(len(r.completion_ids)),
            "repeated_ngram_rate": repeated_ngram_rate(r.completion_ids, n),
            "unfinished_rate": float(not r.finished),
        }
        if "skipped_steps_rate" in metrics:
            values["skipped_steps_rate"] = float(task.skips_steps(r.text))
        for k, v in values.items():
            metrics[k].setdefault(r.problem_id, []).append(v)
    ids = sorted(metrics["mean_length"])
    rng = np.random.default_rng(seed)
    idx = bootstrap_indices(rng, len(ids), n_boot)
    q = [(1 - ci) / 2, 1 - (1 - ci) / 2]
    point, cis = {}, {}
    for k, per in metrics.items():
        pp = np.array([np.mean(per[p]) for p in ids])  # per-problem means: samples correlate
        point[k] = float(pp.mean())
        cis[k] = tuple(float(x) for x in np.quantile(pp[idx].mean(axis=1), q))
    return ShortcutStats(
        n_samples=len(rows), mean_length=point["mean_length"],
        repeated_ngram_rate=point["repeated_ngram_rate"],
        skipped_steps_rate=point.get("skipped_steps_rate"),
        unfinished_rate=point["unfinished_rate"], ngram=n, ci=cis, seed=seed,
    )


def shortcuts_by_checkpoint(
    samples: Samples, task: Task | None = None, checkpoints: Sequence[str] | None = None, **kwargs
) -> dict[str, ShortcutStats]:
    """shortcut_stats for each model that sampled rows in ``samples`` (default: all, in order)."""
    names = list(checkpoints) if checkpoints is not None else samples.models
    return {m: shortcut_stats(samples.for_model(m), task, **kwargs) for m in names}


def plot_shortcuts(stats: Mapping[str, ShortcutStats], x: Sequence[float] | None = None, ax=None,
                   xlabel: str = "checkpoint"):
    """Mean length (left axis) and rates (right axis) per checkpoint."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    names = list(stats)
    xs = list(x) if x is not None else list(range(len(names)))
    ax.plot(xs, [stats[m].mean_length for m in names], "o-", color="C0", label="mean length")
    ax.set_ylabel("tokens", color="C0")
    ax.set_xlabel(xlabel)
    ax2 = ax.twinx()
    ax2.plot(xs, [stats[m].repeated_ngram_rate for m in names], "s--", color="C1", label="repeated n-gram rate")
    if all(stats[m].skipped_steps_rate is not None for m in names):
        ax2.plot(xs, [stats[m].skipped_steps_rate for m in names], "^--", color="C2", label="answer without steps")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("rate")
    if x is None:
        ax.set_xticks(xs, names, rotation=45, ha="right", fontsize=7)
    lines = ax.get_lines() + ax2.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], fontsize=7)
    return ax
