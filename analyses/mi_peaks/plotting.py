"""Plots of MI trajectories (peaks marked, strategy tokens shaded) and peak-token tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from analyses.mi_peaks.comparison import special_mask, token_name
from analyses.mi_peaks.peaks import MIN_TRAJECTORY_LENGTH, peak_stats
from analyses.mi_peaks.trajectories import Trajectory

STRATEGY_COLOURS = {"backtracking": "tab:orange", "verification": "tab:green", "compute": "0.92"}


def _spans(labels: Sequence[str]) -> list[tuple[str, int, int]]:
    out, start = [], 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            out.append((labels[start], start, i))
            start = i
    return out


def plot_trajectory(traj: Trajectory, tokenizer: Any, ax, title: str = "",
                    shade: Sequence[str] = ("backtracking", "verification")) -> None:
    """One MI trajectory: the line, IQR-rule peaks (red), strategy spans shaded, and the emitted
    token under each point when the trajectory is short enough to read."""
    mi = traj.mi.numpy() if hasattr(traj.mi, "numpy") else np.asarray(traj.mi)
    x = np.arange(len(mi))
    for name, s, e in _spans(traj.token_strategy or ["none"] * len(mi)):
        if name in shade:
            ax.axvspan(s - 0.5, e - 0.5, color=STRATEGY_COLOURS.get(name, "0.85"), alpha=0.25, lw=0)
    # One towering value (typically the eos/answer state) would flatten the rest: clip the axis
    # at 1.5x the largest other value and write the clipped values on the plot.
    order = np.sort(mi)
    top = 1.5 * order[-2] if len(mi) > 1 and order[-2] > 0 else None
    clip = top is not None and order[-1] > 2 * top
    shown = np.minimum(mi, top) if clip else mi
    ax.plot(x, shown, lw=1.2, color="tab:blue")
    # the peaks the analysis counts: special-token states (eos) excluded, as in summarise_model
    special = special_mask(traj, frozenset(int(i) for i in getattr(tokenizer, "all_special_ids", []) or []))
    if len(mi) - int(special.sum()) >= MIN_TRAJECTORY_LENGTH:
        p = np.array(peak_stats(mi, "iqr", exclude=special).peaks, dtype=np.int64)
        ax.scatter(p, shown[p], color="tab:red", s=18, zorder=3)
    if clip:
        ax.set_ylim(min(0.0, float(mi.min())), top * 1.08)
        for i in np.flatnonzero(mi > top):
            ax.annotate(f"{mi[i]:.2f}", (i, top), xytext=(-4, -10), textcoords="offset points",
                        fontsize=6, color="tab:red", ha="right")
    if len(mi) <= 80:
        names = [token_name(tokenizer, i) for i in traj.emitted_ids]
        names = ["eos" if n == tokenizer.eos_token else (n if n.strip() else "␣") for n in names]
        ax.set_xticks(x, names, fontsize=5, family="monospace")
    ax.set_title(title, fontsize=8)
    ax.tick_params(axis="y", labelsize=6)
    ax.grid(axis="y", alpha=0.3)


def plot_model_rows(
    trajectories: Mapping[str, Sequence[Trajectory]], tokenizer: Any, n_columns: int = 3,
    suptitle: str = "",
):
    """One row per model (first = top, e.g. base above RL), the same problems in each column.
    Returns the figure."""
    import matplotlib.pyplot as plt

    labels = list(trajectories)
    first = trajectories[labels[0]]
    ids = [t.problem_id for t in first]
    # Columns: problems where every model has a trajectory long enough for peaks.
    by_label = {lab: {t.problem_id: t for t in trajectories[lab]} for lab in labels}
    cols = [i for i in ids if all(by_label[lab].get(i) is not None and
                                  by_label[lab][i].length >= MIN_TRAJECTORY_LENGTH for lab in labels)]
    cols = (cols or ids)[:n_columns]
    fig, axes = plt.subplots(len(labels), len(cols), figsize=(4.2 * len(cols), 2.2 * len(labels)),
                             squeeze=False)
    for r, lab in enumerate(labels):
        for c, pid in enumerate(cols):
            t = by_label[lab].get(pid)
            ax = axes[r][c]
            if t is None or t.mi is None:
                ax.set_axis_off()
                continue
            graded = "" if t.correct is None else (" | correct" if t.correct else " | wrong")
            plot_trajectory(t, tokenizer, ax, title=f"{lab} | {pid}{graded}")
            if c == 0:
                ax.set_ylabel(f"{lab}\nMI (HSIC)", fontsize=8)
    if suptitle:
        fig.suptitle(suptitle + "  (red: peaks, Q3+1.5 IQR; shaded: backtracking orange, "
                     "verification green)", fontsize=9)
    fig.tight_layout()
    return fig


def plot_peak_tokens(tables: Mapping[str, Mapping[str, int]], top: int = 12, title: str = ""):
    """Grouped bars: share of peaks carried by each token, per model (top tokens of the union)."""
    import matplotlib.pyplot as plt

    totals = {lab: max(1, sum(t.values())) for lab, t in tables.items()}
    union: dict[str, float] = {}
    for lab, t in tables.items():
        for tok, n in t.items():
            union[tok] = union.get(tok, 0.0) + n / totals[lab]
    toks = [t for t, _ in sorted(union.items(), key=lambda kv: -kv[1])[:top]]
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(toks) * len(tables)), 3.2))
    w = 0.8 / max(1, len(tables))
    for j, (lab, t) in enumerate(tables.items()):
        ax.bar(np.arange(len(toks)) + j * w, [t.get(k, 0) / totals[lab] for k in toks], width=w, label=lab)
    ax.set_xticks(np.arange(len(toks)) + 0.4 - w / 2, [repr(k) for k in toks], fontsize=8)
    ax.set_ylabel("share of peaks")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_checkpoint_series(series: Sequence[Mapping[str, Any]], keys: Sequence[str], title: str = ""):
    """Each key (mi_mean, peak_ratio, aom, share at strategy tokens) against the RL step."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
    steps = [s["step"] for s in series]
    for ax, key in zip(axes[0], keys, strict=True):
        vals = [s.get(key) for s in series]
        lo = [s.get(f"{key}_ci", [None, None])[0] for s in series]
        hi = [s.get(f"{key}_ci", [None, None])[1] for s in series]
        ax.plot(steps, [np.nan if v is None else v for v in vals], "o-")
        if all(v is not None for v in lo + hi):
            ax.fill_between(steps, lo, hi, alpha=0.2)
        if key == "strategy_share" and all(s.get("strategy_chance") is not None for s in series):
            ax.plot(steps, [s["strategy_chance"] for s in series], "k--", lw=1, label="chance")
            ax.legend(fontsize=7)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
