"""MI peaks of one trajectory: the paper's outlier rule, the notebook's top-k, and AOM.

- IQR rule (paper): token t is a peak iff m_t > Q3 + 1.5 * IQR of the trajectory. Quartiles are
  numpy's default linear interpolation (``np.percentile(..., method="linear")``).
- top-k (the released notebook): the k largest values (ties keep the earlier token).
- AOM (average outlier magnitude) = mean over peaks of |m_i - median| / IQR.

A trajectory needs at least 4 tokens for quartiles to mean anything; shorter ones are refused.
``exclude`` (a boolean mask, e.g. special tokens such as ``<eos>``) leaves positions out of the
quartiles and out of the peaks: the state emitting ``<eos>`` carries the answer by construction and
held 26-38% of all peaks on the organism, which says nothing about thinking tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hooks.errors import TwinlensError

MIN_TRAJECTORY_LENGTH = 4
PEAK_RULES = ("iqr", "topk")
IQR_FACTOR = 1.5
DEFAULT_TOP_K = 20


def _as_trajectory(mi) -> np.ndarray:
    m = np.asarray(mi.detach().cpu().numpy() if hasattr(mi, "detach") else mi, dtype=np.float64)
    if m.ndim != 1:
        raise TwinlensError(f"An MI trajectory is one value per token (1-D); got shape {m.shape}.")
    if len(m) < MIN_TRAJECTORY_LENGTH:
        raise TwinlensError(
            f"MI trajectory of {len(m)} tokens: quartiles (and the IQR) need at least "
            f"{MIN_TRAJECTORY_LENGTH}. Generate longer completions (raise max_new_tokens), or drop "
            "such trajectories (collect_... functions count them under 'too_short')."
        )
    if not np.all(np.isfinite(m)):
        raise TwinlensError("The MI trajectory holds NaN or inf; check the estimator inputs.")
    return m


def quartiles(mi) -> tuple[float, float, float]:
    """(Q1, median, Q3) of a trajectory, numpy linear interpolation."""
    m = _as_trajectory(mi)
    q1, med, q3 = np.percentile(m, [25, 50, 75])
    return float(q1), float(med), float(q3)


def find_peaks_iqr(mi, factor: float = IQR_FACTOR) -> np.ndarray:
    """Indices t with m_t > Q3 + factor * IQR (ascending). The paper's rule with factor 1.5."""
    m = _as_trajectory(mi)
    q1, _, q3 = quartiles(m)
    return np.flatnonzero(m > q3 + factor * (q3 - q1))


def find_peaks_topk(mi, k: int = DEFAULT_TOP_K) -> np.ndarray:
    """Indices of the min(k, T) largest values (ascending); ties keep the earlier token."""
    m = _as_trajectory(mi)
    if int(k) != k or k < 1:
        raise TwinlensError(f"k must be an integer >= 1, got {k!r}.")
    order = np.argsort(-m, kind="stable")[: int(k)]
    return np.sort(order)


def find_peaks(mi, rule: str = "iqr", k: int = DEFAULT_TOP_K) -> np.ndarray:
    if rule == "iqr":
        return find_peaks_iqr(mi)
    if rule == "topk":
        return find_peaks_topk(mi, k)
    raise TwinlensError(f"Unknown peak rule {rule!r}; valid: {PEAK_RULES}.")


def average_outlier_magnitude(mi, peaks) -> float:
    """AOM = mean over peaks of |m_i - median| / IQR. NaN when there are no peaks or the IQR is
    0 (a flat trajectory): the ratio is undefined there, and callers average with nanmean and
    report how many trajectories had a defined AOM."""
    m = _as_trajectory(mi)
    peaks = np.asarray(peaks, dtype=np.int64)
    q1, med, q3 = quartiles(m)
    iqr = q3 - q1
    if peaks.size == 0 or iqr <= 0:
        return float("nan")
    return float(np.mean(np.abs(m[peaks] - med)) / iqr)


@dataclass(frozen=True)
class PeakStats:
    """Peaks and summary numbers of one MI trajectory."""

    length: int
    mean: float
    std: float  # population std (ddof=0) over the trajectory's tokens
    q1: float
    median: float
    q3: float
    peaks: tuple[int, ...]  # token indices, ascending
    aom: float  # NaN when undefined (no peaks, or IQR = 0)

    @property
    def n_peaks(self) -> int:
        return len(self.peaks)

    @property
    def peak_ratio(self) -> float:
        return self.n_peaks / self.length


def peak_stats(mi, rule: str = "iqr", k: int = DEFAULT_TOP_K, exclude=None) -> PeakStats:
    """Peaks and summary numbers of one trajectory; positions where ``exclude`` (Bool[ndarray, "T"])
    is True take no part (length, mean and quartiles are over the kept tokens; peak indices are
    positions in the full trajectory)."""
    full = np.asarray(mi.detach().cpu().numpy() if hasattr(mi, "detach") else mi, dtype=np.float64)
    keep = np.ones(full.shape, dtype=bool) if exclude is None else ~np.asarray(exclude, dtype=bool)
    if keep.shape != full.shape:
        raise TwinlensError(f"exclude mask of shape {keep.shape} for a trajectory of shape {full.shape}.")
    idx = np.flatnonzero(keep)
    m = _as_trajectory(full[idx])
    peaks = find_peaks(m, rule, k)
    q1, med, q3 = quartiles(m)
    return PeakStats(
        length=len(m),
        mean=float(m.mean()),
        std=float(m.std()),
        q1=q1,
        median=med,
        q3=q3,
        peaks=tuple(int(idx[i]) for i in peaks),
        aom=average_outlier_magnitude(m, peaks),
    )
