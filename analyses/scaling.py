"""RL scaling curves: the ScaleRL sigmoid (RESEARCH.md section 9).

R(C) = R0 + (A - R0) / (1 + (C_mid / C)^B): A the asymptote, B the efficiency (steepness in
log compute), C_mid the compute at which half the gain A - R0 is reached, R0 the score at the
start. Fitted by bounded least squares (scipy.optimize.curve_fit, trust-region reflective) in
the parameters (A, B, log C_mid[, R0]) from a grid of starts; CIs by a pairs bootstrap over
the points. ScaleRL leaves the first ~1.5k GPU-hours out of the fit: ``exclude_below``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from hooks.errors import TwinlensError
from hooks.validation import check_finite, check_int

#: A fitted asymptote within this of its bound (1.0 for scores in [0, 1]) is saturated: the points do
#: not identify the curve's shape (analyses/verdicts.py reads the same tolerance).
SATURATION_TOL = 0.01


def sigmoid_curve(compute, A: float, B: float, C_mid: float, R0: float) -> np.ndarray:
    """R(C) for C > 0 (Float[ndarray, "points"])."""
    c = np.asarray(compute, dtype=np.float64)
    return R0 + (A - R0) / (1.0 + (C_mid / c) ** B)


@dataclass
class SigmoidFit:
    """Fitted ScaleRL sigmoid. ``ci``: name -> (low, high), percentile bootstrap over points."""

    A: float
    B: float
    C_mid: float
    R0: float
    r0_fixed: bool
    ci: dict[str, tuple[float, float]]
    seed: int
    n_points: int  # points used in the fit (after exclude_below)
    n_excluded: int
    exclude_below: float | None
    rmse: float
    n_boot: int
    n_boot_failed: int
    A_bound: float = float("inf")  # upper bound of A in the fit (1.0 for scores in [0, 1])
    compute: list[float] = field(repr=False, default_factory=list)
    score: list[float] = field(repr=False, default_factory=list)

    def predict(self, compute) -> np.ndarray:
        return sigmoid_curve(compute, self.A, self.B, self.C_mid, self.R0)

    def to_dict(self) -> dict:
        return {
            "A": self.A, "B": self.B, "C_mid": self.C_mid, "R0": self.R0,
            "ci": {k: list(v) for k, v in self.ci.items()},
            "r0_fixed": self.r0_fixed, "seed": self.seed, "n_points": self.n_points,
            "n_excluded": self.n_excluded, "exclude_below": self.exclude_below,
            "rmse": self.rmse, "n_boot": self.n_boot, "n_boot_failed": self.n_boot_failed,
            "A_bound": self.A_bound if math.isfinite(self.A_bound) else None,
            # an asymptote at its bound does not identify the curve (analyses/verdicts.py)
            "saturated": bool(math.isfinite(self.A_bound) and self.A_bound - self.A <= SATURATION_TOL),
        }


def _validate(compute, score) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(compute, dtype=np.float64).reshape(-1)
    s = np.asarray(score, dtype=np.float64).reshape(-1)
    if c.size != s.size:
        raise TwinlensError(f"{c.size} compute values but {s.size} scores; pass one score per compute value.")
    if c.size == 0:
        raise TwinlensError("No (compute, score) points given.")
    if not (np.all(np.isfinite(c)) and np.all(np.isfinite(s))):
        raise TwinlensError("Compute and score must be finite numbers (no NaN/inf).")
    if np.any(c <= 0):
        raise TwinlensError(
            f"Compute must be positive (the sigmoid uses (C_mid / C)^B); got {c[c <= 0][:3].tolist()}. "
            "Drop the step-0 point or shift compute so it starts above 0."
        )
    if np.any(np.diff(c) <= 0):
        i = int(np.argmax(np.diff(c) <= 0))
        raise TwinlensError(
            f"Compute must be strictly increasing; point {i + 1} ({c[i + 1]}) does not exceed "
            f"point {i} ({c[i]}). Sort the points by compute and merge duplicates."
        )
    return c, s


def _least_squares(c, s, r0, bounds, starts_B, starts_logmid):
    """Best of a grid of curve_fit starts; returns (params (A, B, C_mid, R0), sse) or None.
    bounds: (low, high) for A and for R0 alike."""
    from scipy.optimize import curve_fit

    log_lo, log_hi = math.log(c.min()) - 5.0, math.log(c.max()) + 5.0
    if r0 is None:
        def f(x, A, B, logmid, R0):
            return sigmoid_curve(x, A, B, math.exp(logmid), R0)
        lo = [bounds[0], 1e-3, log_lo, bounds[0]]
        hi = [bounds[1], 20.0, log_hi, bounds[1]]
    else:
        def f(x, A, B, logmid):
            return sigmoid_curve(x, A, B, math.exp(logmid), r0)
        lo = [bounds[0], 1e-3, log_lo]
        hi = [bounds[1], 20.0, log_hi]
    best = None
    for b0 in starts_B:
        for lm0 in starts_logmid:
            # A starts at the highest score, R0 at the lowest, each moved just inside its bounds.
            p0 = [float(s.max()), b0, lm0, float(s.min())][: len(lo)]
            p0 = [min(max(v, lo_ + 1e-9), hi_ - 1e-9) for v, lo_, hi_ in zip(p0, lo, hi, strict=True)]
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    popt, _ = curve_fit(f, c, s, p0=p0, bounds=(lo, hi), method="trf",
                                        xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=20000)
            except (RuntimeError, ValueError):
                continue
            sse = float(np.sum((f(c, *popt) - s) ** 2))
            if best is None or sse < best[1]:
                A, B, logmid = popt[:3]
                R0 = popt[3] if r0 is None else r0
                best = ((float(A), float(B), float(math.exp(logmid)), float(R0)), sse)
    return best


def fit_sigmoid(
    compute: Sequence[float],
    score: Sequence[float],
    r0: float | None = None,
    exclude_below: float | None = None,
    bootstrap: int = 200,
    *,
    seed: int = 0,
    ci: float = 0.95,
    bounds_A: tuple[float, float] | None = None,
) -> SigmoidFit:
    """Fit R(C) = R0 + (A - R0) / (1 + (C_mid / C)^B) to (compute, score) points.

    compute: strictly increasing, > 0 (GPU-hours, samples, steps x batch: any positive unit).
    r0: fix R0 (e.g. the score before RL); None fits it. exclude_below: points with compute
    below this are left out of the fit (kept for plotting). bootstrap: pairs-bootstrap
    resamples for the CIs (0 = none); resamples with too few distinct points are skipped and
    counted in ``n_boot_failed``. bounds_A defaults to [0, 1] when every score is in [0, 1].
    """
    c_all, s_all = _validate(compute, score)
    bootstrap = check_int("bootstrap", bootstrap, minimum=0, allowed="an integer >= 0 (0 = no CIs)")
    r0 = None if r0 is None else check_finite("r0", r0)
    exclude_below = None if exclude_below is None else check_finite("exclude_below", exclude_below)
    keep = np.ones(c_all.size, dtype=bool) if exclude_below is None else c_all >= exclude_below
    c, s = c_all[keep], s_all[keep]
    n_params = 3 if r0 is not None else 4
    if c.size < n_params + 1:
        raise TwinlensError(
            f"{c.size} points left after exclude_below={exclude_below}; the fit of {n_params} "
            f"parameters needs at least {n_params + 1}. Add points or lower exclude_below."
        )
    unit = bool(np.all((s_all >= 0) & (s_all <= 1))) and (r0 is None or 0 <= r0 <= 1)
    b_A = np.array(bounds_A if bounds_A is not None else ((0.0, 1.0) if unit else (-np.inf, np.inf)), dtype=float)
    starts_B = (0.5, 1.5, 4.0)
    starts_mid = tuple(np.quantile(np.log(c), [0.25, 0.5, 0.75]))
    best = _least_squares(c, s, r0, b_A, starts_B, starts_mid)
    if best is None:
        raise TwinlensError("The sigmoid fit did not converge from any start; check the points.")
    (A, B, C_mid, R0), sse = best
    rng = np.random.default_rng(seed)
    samples: list[tuple[float, float, float, float]] = []
    failed = 0
    for _ in range(bootstrap):
        i = np.sort(rng.integers(0, c.size, c.size))
        if np.unique(i).size < n_params + 1:
            failed += 1
            continue
        # Start the resample's fit from the full fit: fast and in the same basin.
        fit = _least_squares(c[i], s[i], r0, b_A, (B,), (math.log(C_mid),))
        if fit is None:
            failed += 1
            continue
        samples.append(fit[0])
    q = [(1 - ci) / 2, 1 - (1 - ci) / 2]
    cis: dict[str, tuple[float, float]] = {}
    names = ("A", "B", "C_mid", "R0")
    arr = np.array(samples) if samples else np.empty((0, 4))
    for j, name in enumerate(names):
        if name == "R0" and r0 is not None:
            cis[name] = (float(r0), float(r0))
        elif arr.shape[0]:
            cis[name] = tuple(float(x) for x in np.quantile(arr[:, j], q))
        else:
            cis[name] = (float("nan"), float("nan"))
    return SigmoidFit(
        A=A, B=B, C_mid=C_mid, R0=R0, r0_fixed=r0 is not None, ci=cis, seed=seed,
        n_points=int(c.size), n_excluded=int((~keep).sum()), exclude_below=exclude_below,
        rmse=math.sqrt(sse / c.size), n_boot=bootstrap, n_boot_failed=failed,
        A_bound=float(b_A[1]), compute=c_all.tolist(), score=s_all.tolist(),
    )


def power_law_curve(compute, a: float, b: float, R0: float) -> np.ndarray:
    """R(C) = R0 + a * C^b: the non-saturating alternative to the sigmoid."""
    return R0 + a * np.asarray(compute, dtype=np.float64) ** b


def _fit_power_law(c: np.ndarray, s: np.ndarray) -> tuple[float, float, float] | None:
    from scipy.optimize import curve_fit

    def f(x, log_a, b, R0):
        return power_law_curve(x, math.exp(log_a), b, R0)

    scale = float(np.median(c))
    best = None
    for b0 in (0.1, 0.5, 1.0):
        p0 = [math.log(max(float(s.max() - s.min()), 1e-6)) - b0 * math.log(scale), b0, float(s.min())]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                popt, _ = curve_fit(f, c, s, p0=p0, bounds=([-50.0, 1e-4, -10.0], [50.0, 5.0, 10.0]),
                                    method="trf", max_nfev=20000)
        except (RuntimeError, ValueError):
            continue
        sse = float(np.sum((f(c, *popt) - s) ** 2))
        if best is None or sse < best[1]:
            best = ((math.exp(popt[0]), float(popt[1]), float(popt[2])), sse)
    return best[0] if best else None


@dataclass
class HeldOutComparison:
    """Sigmoid vs power law, each fitted on the earlier points and scored on the last ones
    (extrapolation in compute: what a scaling curve is for). RMSE in score units."""

    n_fit: int
    n_heldout: int
    sigmoid_rmse: float
    power_law_rmse: float
    sigmoid_params: dict
    power_law_params: dict

    def to_dict(self) -> dict:
        return {"n_fit": self.n_fit, "n_heldout": self.n_heldout, "sigmoid_rmse": self.sigmoid_rmse,
                "power_law_rmse": self.power_law_rmse, "sigmoid": self.sigmoid_params,
                "power_law": self.power_law_params,
                "better": "sigmoid" if self.sigmoid_rmse < self.power_law_rmse else "power_law"}


def compare_heldout(compute: Sequence[float], score: Sequence[float], n_heldout: int | None = None,
                    r0: float | None = None) -> HeldOutComparison:
    """Fit the ScaleRL sigmoid and a power law R0 + a C^b on all but the last ``n_heldout`` points
    (default: the last quarter, at least one) and report each one's RMSE on the held-out points.

    Raises TwinlensError when too few points are left to fit the sigmoid (4 parameters need 5).
    """
    c, s = _validate(compute, score)
    n_heldout = max(1, math.ceil(c.size / 4)) if n_heldout is None else int(n_heldout)
    n_params = 3 if r0 is not None else 4
    if n_heldout < 1 or c.size - n_heldout < n_params + 1:
        raise TwinlensError(
            f"{c.size} points: holding out {n_heldout} leaves {c.size - n_heldout} to fit {n_params} parameters "
            f"(need {n_params + 1}). Add checkpoints.")
    cf, sf, ch, sh = c[:-n_heldout], s[:-n_heldout], c[-n_heldout:], s[-n_heldout:]
    sig = fit_sigmoid(cf, sf, r0=r0, bootstrap=0)
    pw = _fit_power_law(cf, sf)
    if pw is None:
        raise TwinlensError("The power-law fit did not converge; check the points.")
    s_rmse = float(np.sqrt(np.mean((sig.predict(ch) - sh) ** 2)))
    p_rmse = float(np.sqrt(np.mean((power_law_curve(ch, *pw) - sh) ** 2)))
    return HeldOutComparison(
        n_fit=int(cf.size), n_heldout=int(n_heldout), sigmoid_rmse=s_rmse, power_law_rmse=p_rmse,
        sigmoid_params={"A": sig.A, "B": sig.B, "C_mid": sig.C_mid, "R0": sig.R0},
        power_law_params={"a": pw[0], "b": pw[1], "R0": pw[2]})


def plot_sigmoid_fit(fit: SigmoidFit, ax=None, extrapolate: float = 10.0, label: str = "",
                     xlabel: str = "compute"):
    """Points (excluded ones hollow), the fitted curve extended to ``extrapolate`` x the largest
    compute, and the asymptote A with its CI."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    c = np.array(fit.compute)
    s = np.array(fit.score)
    used = np.ones(c.size, bool) if fit.exclude_below is None else c >= fit.exclude_below
    ax.scatter(c[used], s[used], color="C0", zorder=3, label=f"{label} points (fit)".strip())
    if (~used).any():
        ax.scatter(c[~used], s[~used], facecolors="none", edgecolors="C0", zorder=3,
                   label="excluded (early compute)")
    grid = np.geomspace(c.min(), c.max() * extrapolate, 200)
    ax.plot(grid, fit.predict(grid), "-", color="C1",
            label=f"fit: A={fit.A:.3f}, B={fit.B:.2f}, C_mid={fit.C_mid:.3g}")
    ax.axvline(c.max(), color="gray", ls=":", lw=1)
    ax.axhline(fit.A, color="C1", ls="--", lw=1)
    lo, hi = fit.ci.get("A", (float("nan"), float("nan")))
    if np.isfinite([lo, hi]).all():
        ax.axhspan(lo, hi, color="C1", alpha=0.12, label=f"A 95% CI [{lo:.3f}, {hi:.3f}]")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax
