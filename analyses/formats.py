"""Format collapse (RESEARCH.md section 3, Echo Chamber): the share of outputs in each format
across RL checkpoints, the step at which one format first exceeds 90%, and pass@k / maj@k per
checkpoint (pass@k falling while maj@k rises is the published signature).

Only the task's own formats can "collapse": output the classifier calls "other" (malformed)
never counts as a collapse, though its share is reported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from analyses.passk import maj_at_k, pass_at_k
from analyses.sampling import Samples
from hooks.errors import TwinlensError
from hooks.validation import bootstrap_indices, check_probability


def format_shares(
    samples: Samples, model: str, formats: Sequence[str], *, n_boot: int = 1000, seed: int = 0,
    ci: float = 0.95,
) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """Share of ``model``'s samples in each format (plus "other"), with bootstrap CIs over
    problems (samples of one problem are not independent)."""
    by_problem = samples.by_problem(model, "format")
    names = list(dict.fromkeys([*formats, "other"]))
    ids = sorted(by_problem)
    counts = np.array([[sum(f == name or (name == "other" and f not in formats) for f in by_problem[p])
                        for name in names] for p in ids], dtype=float)  # [problems, formats]
    totals = np.array([len(by_problem[p]) for p in ids], dtype=float)
    share = counts.sum(0) / totals.sum()
    rng = np.random.default_rng(seed)
    idx = bootstrap_indices(rng, len(ids), n_boot)
    boot = counts[idx].sum(1) / totals[idx].sum(1)[:, None]  # [n_boot, formats]
    lo, hi = np.quantile(boot, [(1 - ci) / 2, 1 - (1 - ci) / 2], axis=0)
    return ({n: float(s) for n, s in zip(names, share, strict=True)},
            {n: (float(a), float(b)) for n, a, b in zip(names, lo, hi, strict=True)})


def collapse_step(
    steps: Sequence[float], shares: Sequence[Mapping[str, float]], formats: Sequence[str],
    threshold: float = 0.9,
) -> tuple[float | None, str | None]:
    """First step (in increasing step order) at which one of ``formats`` holds more than
    ``threshold`` of the outputs, and that format; (None, None) if never."""
    if len(steps) != len(shares):
        raise TwinlensError(f"{len(steps)} steps but {len(shares)} share tables.")
    for step, share in sorted(zip(steps, shares, strict=True), key=lambda t: t[0]):
        for f in formats:
            if share.get(f, 0.0) > threshold:
                return step, f
    return None, None


@dataclass
class FormatCollapse:
    """Format shares and pass@k / maj@k of each checkpoint, in step order."""

    checkpoints: list[str]
    steps: list[float]
    compute: list[float | None]
    share: dict[str, dict[str, float]]
    share_ci: dict[str, dict[str, tuple[float, float]]]
    collapse_step: float | None
    collapse_format: str | None
    threshold: float
    ks: list[int]
    pass_at_k: dict[str, dict[int, float]]
    maj_at_k: dict[str, dict[int, float]]
    seed: int

    def to_dict(self) -> dict:
        return {
            "checkpoints": self.checkpoints, "steps": self.steps, "compute": self.compute,
            "share": self.share,
            "share_ci": {c: {f: list(v) for f, v in d.items()} for c, d in self.share_ci.items()},
            "collapse_step": self.collapse_step, "collapse_format": self.collapse_format,
            "threshold": self.threshold, "k": self.ks,
            "pass_at_k": {c: {str(k): v for k, v in d.items()} for c, d in self.pass_at_k.items()},
            "maj_at_k": {c: {str(k): v for k, v in d.items()} for c, d in self.maj_at_k.items()},
            "seed": self.seed,
        }


def format_collapse(
    samples: Samples,
    steps: Mapping[str, float],
    formats: Sequence[str],
    *,
    compute: Mapping[str, float | None] | None = None,
    threshold: float = 0.9,
    ks: Sequence[int] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    maj_resamples: int = 1000,
) -> FormatCollapse:
    """Track formats over checkpoints. ``samples`` holds rows sampled by each checkpoint (row
    model label = checkpoint name); ``steps[name]`` its RL step."""
    threshold = check_probability("threshold", threshold)
    if not formats:
        raise TwinlensError("The task defines no formats; format collapse needs a format classifier.")
    if not steps:
        raise TwinlensError("format_collapse needs at least one checkpoint in `steps` ({name: RL step}).")
    names = sorted(steps, key=lambda c: steps[c])
    missing = [c for c in names if c not in samples.models]
    if missing:
        raise TwinlensError(f"No samples from checkpoints {missing}; sample each checkpoint first.")
    share, share_ci, passk, majk = {}, {}, {}, {}
    refs = samples.references()
    for c in names:
        share[c], share_ci[c] = format_shares(samples, c, formats, n_boot=n_boot, seed=seed)
        correct = samples.by_problem(c, "correct")
        answers = samples.by_problem(c, "answer")
        ids = sorted(correct)
        n = np.array([len(correct[p]) for p in ids])
        cnt = np.array([sum(bool(x) for x in correct[p]) for p in ids])
        use_ks = list(ks) if ks is not None else sorted({1, int(n.min())})
        passk[c] = {k: float(pass_at_k(n, cnt, k).mean()) for k in use_ks}
        majk[c] = {k: float(maj_at_k([answers[p] for p in ids], [refs[p] for p in ids], k,
                                     n_resamples=maj_resamples, seed=seed).mean()) for k in use_ks}
    step, fmt = collapse_step([steps[c] for c in names], [share[c] for c in names], formats, threshold)
    return FormatCollapse(
        checkpoints=names, steps=[steps[c] for c in names],
        compute=[(compute or {}).get(c) for c in names], share=share, share_ci=share_ci,
        collapse_step=step, collapse_format=fmt, threshold=threshold, ks=use_ks,
        pass_at_k=passk, maj_at_k=majk, seed=seed,
    )


def plot_format_shares(result: FormatCollapse, ax=None):
    """Stacked shares of each format over RL steps, with the collapse step marked."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    names = list(next(iter(result.share.values())))
    ys = [[result.share[c][f] for c in result.checkpoints] for f in names]
    ax.stackplot(result.steps, ys, labels=names, alpha=0.85)
    if result.collapse_step is not None:
        ax.axvline(result.collapse_step, color="k", ls="--",
                   label=f"> {result.threshold:.0%} {result.collapse_format} at step {result.collapse_step:g}")
    ax.set_xlabel("RL step")
    ax.set_ylabel("share of outputs")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="center right")
    return ax
