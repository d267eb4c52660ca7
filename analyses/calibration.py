"""Calibration of a model's confidence in its own answers (RESEARCH.md section 7, RLCR).

Confidence is a confidence the completion states (the organism's stated-confidence variant:
``#07@8`` = 0.85, read by the task's ``extract_confidence``; real text: ``confidence: 0.8``, parsed
by ``parse_stated_confidence``), or, as the fallback, the model's probability of its own final
answer (the product over the answer's tokens; the organism: the two digits after the last ``#``).
Metrics: Brier score, ECE with equal-width bins (Guo et al. 2017: bins (lo, hi], confidence 0
in the first), adaptive ECE with equal-mass bins, AUROC of confidence vs correctness.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hooks.errors import TwinlensError
from hooks.validation import check_positive_int, check_probability


def _check(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(confidence, dtype=np.float64).reshape(-1)
    corr = np.asarray(correct).reshape(-1)
    if conf.size == 0:
        raise TwinlensError("No predictions given; calibration needs at least one (confidence, correct) pair.")
    if conf.shape != corr.shape:
        raise TwinlensError(f"{conf.size} confidences but {corr.size} correctness labels; pass one of each per answer.")
    if not np.all(np.isfinite(conf)) or np.any(conf < 0) or np.any(conf > 1):
        raise TwinlensError("Confidences must be probabilities in [0, 1] (no NaN); got values outside.")
    if corr.dtype != bool:
        if not np.all(np.isin(corr, (0, 1))):
            raise TwinlensError("Correctness labels must be 0/1 or booleans.")
    return conf, corr.astype(np.float64)


def brier_score(confidence, correct) -> float:
    """mean((confidence - correct)^2); equals sklearn.metrics.brier_score_loss."""
    conf, corr = _check(confidence, correct)
    return float(np.mean((conf - corr) ** 2))


def bin_equal_width(confidence, n_bins: int = 10) -> np.ndarray:
    """Bin index in 0..n_bins-1 for bins (i/n, (i+1)/n]; confidence 0 goes into bin 0."""
    n_bins = check_positive_int("n_bins", n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.digitize(np.asarray(confidence, dtype=np.float64), edges[1:-1], right=True)


@dataclass
class ReliabilityBins:
    """Per-bin data of a reliability diagram (empty bins have count 0 and NaN means)."""

    lower: list[float]
    upper: list[float]
    count: list[int]
    confidence: list[float]
    accuracy: list[float]

    def to_dict(self) -> dict:
        nan_to_none = lambda xs: [None if math.isnan(x) else x for x in xs]  # noqa: E731
        return {"lower": self.lower, "upper": self.upper, "count": self.count,
                "confidence": nan_to_none(self.confidence), "accuracy": nan_to_none(self.accuracy)}


def _bins_from_index(conf, corr, index, n_bins, lower, upper) -> ReliabilityBins:
    count, mconf, acc = [], [], []
    for b in range(n_bins):
        sel = index == b
        count.append(int(sel.sum()))
        mconf.append(float(conf[sel].mean()) if sel.any() else float("nan"))
        acc.append(float(corr[sel].mean()) if sel.any() else float("nan"))
    return ReliabilityBins(list(lower), list(upper), count, mconf, acc)


def reliability_bins(confidence, correct, n_bins: int = 10, adaptive: bool = False) -> ReliabilityBins:
    """Equal-width bins (default) or equal-mass bins (adaptive: sorted by confidence, split
    into n_bins groups whose sizes differ by at most one)."""
    conf, corr = _check(confidence, correct)
    if n_bins < 1:
        raise TwinlensError(f"n_bins must be >= 1, got {n_bins}.")
    if not adaptive:
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        return _bins_from_index(conf, corr, bin_equal_width(conf, n_bins), n_bins, edges[:-1], edges[1:])
    order = np.argsort(conf, kind="stable")
    index = np.empty(conf.size, dtype=np.int64)
    groups = np.array_split(order, n_bins)
    for b, g in enumerate(groups):
        index[g] = b
    lower = [float(conf[g].min()) if g.size else float("nan") for g in groups]
    upper = [float(conf[g].max()) if g.size else float("nan") for g in groups]
    return _bins_from_index(conf, corr, index, n_bins, lower, upper)


def _ece_from_bins(bins: ReliabilityBins) -> float:
    total = sum(bins.count)
    return float(sum(
        n / total * abs(a - c) for n, a, c in zip(bins.count, bins.accuracy, bins.confidence, strict=True) if n > 0
    ))


def expected_calibration_error(confidence, correct, n_bins: int = 10) -> float:
    """ECE = sum_b (n_b / N) |acc_b - conf_b| over equal-width bins (i/n, (i+1)/n]."""
    return _ece_from_bins(reliability_bins(confidence, correct, n_bins))


def adaptive_calibration_error(confidence, correct, n_bins: int = 10) -> float:
    """ECE over equal-mass bins (each holds N/n_bins predictions, +-1)."""
    return _ece_from_bins(reliability_bins(confidence, correct, n_bins, adaptive=True))


def auroc(confidence, correct) -> float:
    """Area under the ROC curve of confidence as a score for correctness; NaN when all answers
    are right or all wrong (the AUROC is undefined then)."""
    conf, corr = _check(confidence, correct)
    if corr.min() == corr.max():
        return float("nan")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(corr, conf))


_STATED = re.compile(
    r"confidence\s*(?:level|score)?\s*(?:is|[:=])?\s*(?P<num>\d+(?:\.\d+)?|\.\d+)\s*(?P<pct>%)?",
    re.IGNORECASE,
)


def parse_stated_confidence(text: str, pattern: re.Pattern | str | None = None) -> float | None:
    """The last stated confidence in ``text`` as a probability (``confidence: 0.8``,
    ``Confidence = 80%``, ``<confidence>0.8</confidence>``), or None if absent or out of [0, 1]
    (values in (1, 100] without a % sign are read as percents). A custom ``pattern`` must have a
    group named ``num`` (and may have ``pct``)."""
    rx = re.compile(pattern, re.IGNORECASE) if isinstance(pattern, str) else (pattern or _STATED)
    matches = list(rx.finditer(text.replace("<confidence>", "confidence: ")))
    if not matches:
        return None
    m = matches[-1]
    value = float(m.group("num"))
    pct = "pct" in rx.groupindex and m.group("pct")
    if pct or 1 < value <= 100:
        value /= 100
    return value if 0 <= value <= 1 else None


@dataclass
class CalibrationResult:
    """Calibration metrics of one model's answers."""

    n: int
    accuracy: float
    mean_confidence: float
    brier: float
    ece: float
    adaptive_ece: float
    auroc: float
    bins: ReliabilityBins
    ci: dict[str, tuple[float, float]]  # bootstrap CI over answers for brier, ece, auroc
    seed: int

    def to_dict(self) -> dict:
        return {
            "n": self.n, "accuracy": self.accuracy, "mean_confidence": self.mean_confidence,
            "brier": self.brier, "ece": self.ece, "adaptive_ece": self.adaptive_ece,
            "auroc": None if math.isnan(self.auroc) else self.auroc,
            "ci": {k: list(v) for k, v in self.ci.items()}, "seed": self.seed,
            "reliability": self.bins.to_dict(),
        }


def calibration_report(
    confidence, correct, n_bins: int = 10, *, groups: Sequence | None = None, n_boot: int = 500,
    seed: int = 0, ci: float = 0.95,
) -> CalibrationResult:
    """All metrics, with percentile-bootstrap CIs. ``groups`` (e.g. the problem id of each
    answer): resample whole groups, since answers to one problem are not independent;
    otherwise resample answers."""
    conf, corr = _check(confidence, correct)
    n_boot = check_positive_int("n_boot", n_boot)
    n_bins = check_positive_int("n_bins", n_bins)
    ci = check_probability("ci", ci, allow_zero=False, allow_one=False)
    rng = np.random.default_rng(seed)
    if groups is not None:
        if len(groups) != conf.size:
            raise TwinlensError(f"{len(groups)} group labels for {conf.size} answers; give one per answer.")
        _, codes = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
        members = [np.flatnonzero(codes == g) for g in range(int(codes.max()) + 1)]
    boot: dict[str, list[float]] = {"brier": [], "ece": [], "adaptive_ece": [], "auroc": []}
    for _ in range(n_boot):
        if groups is not None:
            i = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        else:
            i = rng.integers(0, conf.size, conf.size)
        boot["brier"].append(brier_score(conf[i], corr[i]))
        boot["ece"].append(expected_calibration_error(conf[i], corr[i], n_bins))
        boot["adaptive_ece"].append(adaptive_calibration_error(conf[i], corr[i], n_bins))
        boot["auroc"].append(auroc(conf[i], corr[i]))
    q = [(1 - ci) / 2, 1 - (1 - ci) / 2]
    cis = {}
    for k, v in boot.items():
        arr = np.array(v, dtype=np.float64)
        arr = arr[np.isfinite(arr)]
        cis[k] = tuple(float(x) for x in np.quantile(arr, q)) if arr.size else (float("nan"),) * 2
    bins = reliability_bins(conf, corr, n_bins)
    return CalibrationResult(
        n=int(conf.size), accuracy=float(corr.mean()), mean_confidence=float(conf.mean()),
        brier=brier_score(conf, corr), ece=_ece_from_bins(bins),
        adaptive_ece=adaptive_calibration_error(conf, corr, n_bins), auroc=auroc(conf, corr),
        bins=bins, ci=cis, seed=seed,
    )


def answer_confidence(logprobs: Sequence[float], answer_span: tuple[int, int] | None) -> float:
    """Probability of the answer: exp(sum of the log-probs over the answer's tokens)
    (``answer_span`` = [start, end) in completion tokens). 0 when there is no answer."""
    if answer_span is None:
        return 0.0
    start, end = answer_span
    if not 0 <= start < end <= len(logprobs):
        raise TwinlensError(f"Answer span {answer_span} is outside the completion of {len(logprobs)} tokens.")
    return float(math.exp(sum(logprobs[start:end])))


def plot_reliability(results: dict[str, CalibrationResult], ax=None):
    """Reliability diagram: accuracy vs mean confidence per equal-width bin, one line per model."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ":", color="gray", label="perfect calibration")
    for i, (name, r) in enumerate(results.items()):
        xs = [c for c, n in zip(r.bins.confidence, r.bins.count, strict=True) if n > 0]
        ys = [a for a, n in zip(r.bins.accuracy, r.bins.count, strict=True) if n > 0]
        ns = [n for n in r.bins.count if n > 0]
        sizes = [20 + 200 * n / max(ns) for n in ns]
        ax.plot(xs, ys, "-", color=f"C{i}", alpha=0.7)
        ax.scatter(xs, ys, s=sizes, color=f"C{i}",
                   label=f"{name}: ECE {r.ece:.3f}, Brier {r.brier:.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (probability of own answer)")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return ax
