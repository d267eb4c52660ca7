"""Steering experiments: add alpha * v to one layer of the base model while it generates, and
measure how often each strategy appears, the task accuracy and the output length, beside the
same sweep with a random vector of equal norm (the control).

The intervention itself is `hooks.add_to_residual` (via `StrategyVector.apply`); this module only
runs the sweep and summarises it. Samples of one prompt are correlated, so CIs come from a
bootstrap over prompts. The vector and its random control are sampled with the same seed
(common random numbers): at alpha = 0 both curves are the same samples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from hooks.errors import TwinlensError
from hooks.validation import bootstrap_indices, check_finite, check_positive_int, check_temperature
from probes.vectors import StrategyVector, random_vector_like

__all__ = [
    "SteeringCurve",
    "SteeringComparison",
    "SteeringResult",
    "steering_curve",
    "compare_to_random",
    "steering_experiment",
]

LabelFn = Callable[[str], Sequence]  # text -> spans with a `.strategy` (or (strategy, ...) tuples)
GradeFn = Callable[[int, str], bool]  # (prompt index, completion text) -> correct


@dataclass
class SteeringCurve:
    """Dose-response of one vector: arrays are per alpha."""

    strategy: str  # the vector's strategy
    method: str  # the vector's method ("diff_of_means", "random", ...)
    layer: int
    alphas: list[float]
    strategies: list[str]  # measured strategies
    frequency: dict[str, np.ndarray]  # share of samples using the strategy
    frequency_ci: dict[str, np.ndarray]  # [A, 2]
    accuracy: np.ndarray
    accuracy_ci: np.ndarray
    length: np.ndarray  # mean completion length in tokens
    length_ci: np.ndarray
    n_prompts: int
    n_samples: int  # per prompt
    seed: int
    vector_norm: float
    # Per alpha, the first sample's completion text for each of the first `N_EXAMPLES` prompts
    # (what the steered model actually wrote: a frequency alone cannot show broken text).
    examples: list[list[str]] | None = None

    def to_dict(self) -> dict:
        return {
            "strategy": self.strategy,
            "method": self.method,
            "layer": self.layer,
            "alpha": list(self.alphas),
            "frequency": {k: v.tolist() for k, v in self.frequency.items()},
            "frequency_ci": {k: v.tolist() for k, v in self.frequency_ci.items()},
            "accuracy": self.accuracy.tolist(),
            "accuracy_ci": self.accuracy_ci.tolist(),
            "length": self.length.tolist(),
            "length_ci": self.length_ci.tolist(),
            "n_prompts": self.n_prompts,
            "n_samples": self.n_samples,
            "seed": self.seed,
            "vector_norm": self.vector_norm,
        }


N_EXAMPLES = 3  # prompts per alpha whose first steered completion a SteeringCurve keeps


def _strategies_in(spans) -> set[str]:
    out = set()
    for s in spans:
        out.add(s.strategy if hasattr(s, "strategy") else s[0])
    return out


def _bootstrap_mean(values: np.ndarray, n_bootstrap: int, seed: int) -> np.ndarray:
    """values [n_prompts, n_samples] -> percentile CI [2] of the mean, resampling prompts."""
    per_prompt = values.mean(1)
    n_prompts = per_prompt.shape[0]
    rng = np.random.default_rng(seed)
    draws = bootstrap_indices(rng, n_prompts, n_bootstrap, name="n_bootstrap")
    return np.percentile(per_prompt[draws].mean(1), [2.5, 97.5])


def steering_curve(
    model,
    vector: StrategyVector,
    prompts: Sequence[Sequence[int]],
    alphas: Sequence[float],
    label_fn: LabelFn,
    grade_fn: GradeFn | None = None,
    strategies: Sequence[str] | None = None,
    n_samples: int = 4,
    seed: int = 0,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    n_bootstrap: int = 1000,
    batch_size: int = 256,
    unsteered: list[list[int]] | None = None,
) -> SteeringCurve:
    """Generate `n_samples` completions per prompt with `alpha * vector` added at the vector's
    layer (all positions), for each alpha, and summarise (see the module docstring).

    unsteered: the completions at alpha = 0 (same prompts, n_samples, seed, temperature), to
    reuse across vectors instead of generating them again."""
    from hooks import generate

    vector.check_fits(model)
    if not prompts:
        raise TwinlensError("steering_curve needs at least one prompt.")
    # every argument checked before the first (expensive) generation, not at the alpha that fails
    alphas = [check_finite(f"alphas[{i}]", a) for i, a in enumerate(alphas)]
    if not alphas:
        raise TwinlensError("steering_curve needs at least one alpha (include 0, the unsteered reference).")
    n_samples = check_positive_int("n_samples", n_samples)
    check_positive_int("n_bootstrap", n_bootstrap)
    check_positive_int("max_new_tokens", max_new_tokens)
    check_temperature(temperature)
    strategies = list(strategies) if strategies is not None else [vector.strategy]
    P, S = len(prompts), n_samples
    freq = {s: [] for s in strategies}
    freq_ci = {s: [] for s in strategies}
    acc, acc_ci, length, length_ci, examples = [], [], [], [], []
    for k, alpha in enumerate(alphas):
        if float(alpha) == 0.0 and unsteered is not None:
            outs = unsteered
        else:
            with vector.apply(model, alpha=float(alpha)):
                outs = generate(model, [list(p) for p in prompts], max_new_tokens,
                                temperature=temperature, n=S, seed=seed, batch_size=batch_size)
        texts = [model.tokenizer.decode(o, skip_special_tokens=True) for o in outs]
        used = [_strategies_in(label_fn(t)) for t in texts]
        examples.append([texts[i * S] for i in range(min(P, N_EXAMPLES))])
        lens = np.array([len(o) for o in outs], dtype=float).reshape(P, S)
        for s in strategies:
            hit = np.array([s in u for u in used], dtype=float).reshape(P, S)
            freq[s].append(hit.mean())
            freq_ci[s].append(_bootstrap_mean(hit, n_bootstrap, seed + k))
        if grade_fn is not None:
            ok = np.array([bool(grade_fn(i // S, t)) for i, t in enumerate(texts)], float).reshape(P, S)
            acc.append(ok.mean())
            acc_ci.append(_bootstrap_mean(ok, n_bootstrap, seed + k))
        else:
            acc.append(np.nan)
            acc_ci.append([np.nan, np.nan])
        length.append(lens.mean())
        length_ci.append(_bootstrap_mean(lens, n_bootstrap, seed + k))
    return SteeringCurve(
        strategy=vector.strategy,
        method=vector.method,
        layer=vector.layer,
        alphas=[float(a) for a in alphas],
        strategies=strategies,
        frequency={s: np.array(v) for s, v in freq.items()},
        frequency_ci={s: np.array(v) for s, v in freq_ci.items()},
        accuracy=np.array(acc),
        accuracy_ci=np.array(acc_ci),
        length=np.array(length),
        length_ci=np.array(length_ci),
        n_prompts=P,
        n_samples=S,
        seed=seed,
        vector_norm=vector.norm,
        examples=examples,
    )


@dataclass
class SteeringComparison:
    """Strategy vector against its equal-norm random control, per alpha, for one strategy."""

    strategy: str
    alphas: list[float]
    change: np.ndarray  # frequency(alpha) - frequency(0), strategy vector
    random_change: np.ndarray  # same, random vector
    ratio: np.ndarray  # change / |random_change| (inf when the random vector changes nothing)
    separated: np.ndarray  # the two frequency CIs do not overlap
    passes: np.ndarray  # alpha > 0, raised by >= factor x the random change, CIs separated
    factor: float

    @property
    def best_alpha(self) -> float | None:
        """The alpha with the largest raise among those that pass, else None."""
        if not self.passes.any():
            return None
        idx = np.nonzero(self.passes)[0]
        return float(self.alphas[idx[np.argmax(self.change[idx])]])

    def to_dict(self) -> dict:
        return {
            "strategy": self.strategy,
            "alpha": list(self.alphas),
            "change": self.change.tolist(),
            "random_change": self.random_change.tolist(),
            "ratio": [float(r) if np.isfinite(r) else None for r in self.ratio],
            "separated": self.separated.tolist(),
            "passes": self.passes.tolist(),
            "factor": self.factor,
            "best_alpha": self.best_alpha,
        }


def compare_to_random(
    curve: SteeringCurve, random_curve: SteeringCurve, strategy: str | None = None,
    factor: float = 3.0,
) -> SteeringComparison:
    """Per alpha: does the vector raise `strategy`'s frequency by >= `factor` times the change
    the random vector causes, with non-overlapping CIs? Both curves must share alphas and the
    alpha = 0 point."""
    strategy = strategy or curve.strategy
    if curve.alphas != random_curve.alphas:
        raise TwinlensError("The vector and random curves must use the same alphas.")
    if 0.0 not in curve.alphas:
        raise TwinlensError("Include alpha = 0 in the sweep: changes are measured from it.")
    z = curve.alphas.index(0.0)
    f, fr = curve.frequency[strategy], random_curve.frequency[strategy]
    ci, cir = curve.frequency_ci[strategy], random_curve.frequency_ci[strategy]
    change = f - f[z]
    rchange = fr - fr[z]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(np.abs(rchange) > 0, change / np.abs(rchange), np.inf * np.sign(change))
    separated = (ci[:, 0] > cir[:, 1]) | (ci[:, 1] < cir[:, 0])
    # Only positive alphas count: adding the vector must raise the strategy (a raise at a
    # negative alpha is reported in `change` but means the vector points the other way).
    positive = np.array(curve.alphas) > 0
    passes = positive & (change > 0) & (change >= factor * np.abs(rchange)) & separated
    return SteeringComparison(
        strategy=strategy,
        alphas=list(curve.alphas),
        change=change,
        random_change=rchange,
        ratio=ratio,
        separated=separated,
        passes=passes,
        factor=factor,
    )


@dataclass
class SteeringResult:
    """One strategy vector's dose-response, its equal-norm random control, and the comparison."""

    vector: StrategyVector
    curve: SteeringCurve
    random_curve: SteeringCurve
    comparison: SteeringComparison
    random_seed: int | None = None  # seed of the random control vector

    def to_dict(self) -> dict:
        s = self.vector.strategy
        return {
            "strategy": s,
            "layer": self.vector.layer,
            "method": self.vector.method,
            "vector_norm": self.vector.norm,
            "alpha": list(self.curve.alphas),
            "frequency": self.curve.frequency[s].tolist(),
            "frequency_ci": self.curve.frequency_ci[s].tolist(),
            "random_frequency": self.random_curve.frequency[s].tolist(),
            "random_frequency_ci": self.random_curve.frequency_ci[s].tolist(),
            "accuracy": self.curve.accuracy.tolist(),
            "accuracy_ci": self.curve.accuracy_ci.tolist(),
            "random_accuracy": self.random_curve.accuracy.tolist(),
            "length": self.curve.length.tolist(),
            "length_ci": self.curve.length_ci.tolist(),
            "random_length": self.random_curve.length.tolist(),
            "other_frequencies": {k: v.tolist() for k, v in self.curve.frequency.items() if k != s},
            "comparison": self.comparison.to_dict(),
            "n_prompts": self.curve.n_prompts,
            "n_samples": self.curve.n_samples,
            "seed": self.curve.seed,
            "random_seed": self.random_seed,
        }


def steering_experiment(
    model,
    vectors: Sequence[StrategyVector],
    prompts: Sequence[Sequence[int]],
    alphas: Sequence[float],
    label_fn: LabelFn,
    grade_fn: GradeFn | None = None,
    strategies: Sequence[str] | None = None,
    n_samples: int = 4,
    seed: int = 0,
    random_seed: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    n_bootstrap: int = 1000,
    factor: float = 3.0,
    progress=None,
) -> list[SteeringResult]:
    """Dose-response of every vector and of an equal-norm random vector (seeded per vector:
    `random_seed + index`), with the unsteered (alpha = 0) samples generated once and shared.
    `alphas` must include 0."""
    from hooks import generate

    alphas = [float(a) for a in alphas]
    if 0.0 not in alphas:
        raise TwinlensError("Include alpha = 0 in the sweep: changes are measured from it.")
    unsteered = generate(model, [list(p) for p in prompts], max_new_tokens,
                         temperature=temperature, n=n_samples, seed=seed)
    kw = dict(alphas=alphas, label_fn=label_fn, grade_fn=grade_fn, n_samples=n_samples, seed=seed,
              max_new_tokens=max_new_tokens, temperature=temperature, n_bootstrap=n_bootstrap,
              unsteered=unsteered)
    out = []
    for i, v in enumerate(vectors):
        rv = random_vector_like(v, seed=random_seed + i)
        measured = list(strategies) if strategies is not None else []
        if v.strategy not in measured:
            measured.append(v.strategy)
        curve = steering_curve(model, v, prompts, strategies=measured, **kw)
        rcurve = steering_curve(model, rv, prompts, strategies=measured, **kw)
        out.append(SteeringResult(v, curve, rcurve, compare_to_random(curve, rcurve, v.strategy, factor),
                                  random_seed=random_seed + i))
        if progress is not None:
            progress(out[-1])
    return out
