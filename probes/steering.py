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
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

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
    "SteeringSetting",
    "SettingSamples",
    "run_settings",
    "summarize_setting",
    "format_matched_length_ratio",
    "WHERE",
    "Candidate",
    "steering_search",
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


# ------------------------------------------------------------------ batched settings and search
WHERE = ("all", "decision_points")


@dataclass
class SteeringSetting:
    """One steering setting: add `vector.direction` (already scaled to the strength) at the
    vector's layer, at every position (where="all") or at decision points only
    (where="decision_points": the last prompt token and every generated token in
    `separator_ids`, i.e. `probes.baselines.decision_point_positions` while generating).
    vector None = unsteered."""

    vector: StrategyVector | None
    where: str = "all"
    fraction: float = 0.0  # strength as a fraction of the mean residual norm (for the record)
    kind: str = ""  # which vector ("decision_point_contrast", ..., "random")


@contextmanager
def _steer_rows(model, settings: Sequence[SteeringSetting], n_prompts: int, prompt_lens: Sequence[int],
                separator_ids: Sequence[int]):
    """Interventions for a generate call over `settings x prompts` (setting-major): row r of the
    call's prompts is setting r // n_prompts. Per layer, one hook adds each row's own vector at
    its own positions (absolute positions from the forward layout; token ids read by a pre-hook
    on the input embedding, so decision points are found in the tokens being generated)."""
    from hooks.interventions import _Edit, _layout_for, _open_edit

    d = model.d_model
    R = len(settings) * n_prompts
    by_layer: dict[int, Tensor] = {}
    dp = torch.zeros(R, dtype=torch.bool)
    for k, s in enumerate(settings):
        if s.vector is None:
            continue
        s.vector.check_fits(model)
        if s.where not in WHERE:
            raise TwinlensError(f"where must be one of {WHERE}, got {s.where!r}.")
        table = by_layer.setdefault(s.vector.layer, torch.zeros(R, d))
        table[k * n_prompts:(k + 1) * n_prompts] = s.vector.direction
        dp[k * n_prompts:(k + 1) * n_prompts] = s.where == "decision_points"
    plen = torch.tensor(list(prompt_lens) * len(settings), dtype=torch.long)
    sep = torch.tensor(sorted(set(int(t) for t in separator_ids)), dtype=torch.long)
    ids: dict[str, Tensor] = {}

    def pre(_mod, args, kwargs):
        x = args[0] if args else kwargs.get("input", kwargs.get("input_ids"))
        ids["x"] = x

    with ExitStack() as stack:
        for layer, table in by_layer.items():
            spec = _Edit(f"blocks.{layer}.hook_out", None, f"steer_rows(layer={layer})", None)

            def fn(x, layout, table=table, spec=spec):
                layout = _layout_for(x, layout, spec.description)
                prow = (layout.rows // layout.n).cpu()
                pos = layout.positions.cpu()
                p0 = plen[prow][:, None]
                at_dp = pos == p0 - 1
                tok = ids.get("x")
                if bool(dp[prow].any()) and sep.numel():
                    if not isinstance(tok, Tensor) or tuple(tok.shape) != tuple(pos.shape):
                        raise TwinlensError(
                            f"{spec.description}: steering at decision points needs the token ids of this "
                            "forward pass (read from the input embedding), but they were not seen; generate "
                            "with hooks.generate on the HF model, or steer with where='all'.")
                    at_dp = at_dp | (torch.isin(tok.cpu(), sep) & (pos >= p0))
                mask = torch.where(dp[prow][:, None], at_dp, pos >= 0)
                add = mask.unsqueeze(-1).to(x.dtype) * table[prow][:, None, :].to(x.dtype)
                return x + add.to(x.device)

            spec.fn = fn
            stack.enter_context(_open_edit(model, spec))
        if dp.any():
            handle = model.hf.get_input_embeddings().register_forward_pre_hook(pre, with_kwargs=True)
            stack.callback(handle.remove)
        yield


@dataclass
class SettingSamples:
    """Per-sample outcomes of one setting: arrays `[n_prompts, n_samples]`."""

    setting: SteeringSetting
    used: dict[str, np.ndarray]  # strategy -> bool
    correct: np.ndarray
    malformed: np.ndarray
    length: np.ndarray


def run_settings(
    model, settings: Sequence[SteeringSetting], prompts: Sequence[Sequence[int]], label_fn: LabelFn,
    strategies: Sequence[str], grade_fn: GradeFn | None = None, malformed_fn: Callable[[str], bool] | None = None,
    separator_ids: Sequence[int] = (), n_samples: int = 4, seed: int = 0, max_new_tokens: int = 64,
    temperature: float = 1.0,
) -> list[SettingSamples]:
    """Generate `n_samples` completions per prompt under every setting in ONE batched generate call
    (rows = settings x prompts; each row gets its own setting's vector), with common random numbers:
    sample j of prompt i has the same seed under every setting. Returns one `SettingSamples` each."""
    from hooks import generate

    if not prompts:
        raise TwinlensError("run_settings needs at least one prompt.")
    n_samples = check_positive_int("n_samples", n_samples)
    check_temperature(temperature)
    P, S = len(prompts), n_samples
    allp = [list(p) for _ in settings for p in prompts]
    with _steer_rows(model, settings, P, [len(p) for p in prompts], separator_ids):
        outs = generate(model, allp, max_new_tokens, temperature=temperature, n=S, seed=seed,
                        row_ids=list(range(P)) * len(settings))
    res = []
    for k, s in enumerate(settings):
        mine = outs[k * P * S:(k + 1) * P * S]
        texts = [model.tokenizer.decode(o, skip_special_tokens=True) for o in mine]
        found = [_strategies_in(label_fn(t)) for t in texts]
        used = {st: np.array([st in f for f in found]).reshape(P, S) for st in strategies}
        ok = (np.array([bool(grade_fn(i // S, t)) for i, t in enumerate(texts)]) if grade_fn
              else np.full(P * S, np.nan))
        bad = (np.array([bool(malformed_fn(t)) for t in texts]) if malformed_fn else np.full(P * S, np.nan))
        res.append(SettingSamples(s, used, ok.reshape(P, S), bad.reshape(P, S),
                                  np.array([len(o) for o in mine], float).reshape(P, S)))
    return res


def _rate(x: np.ndarray, n_bootstrap: int, seed: int) -> tuple[float, list[float]]:
    x = np.asarray(x, float)
    return float(x.mean()), [float(c) for c in _bootstrap_mean(x, n_bootstrap, seed)]


def format_matched_length_ratio(s: SettingSamples, s0: SettingSamples) -> tuple[float | None, float]:
    """Steered mean length over the length the unsteered model writes **in the same formats**:
    (ratio, share of steered samples whose format the unsteered samples have).

    A sample's format is the set of measured strategies it uses (on the organism: direct = none,
    step = {compute}, verify = {compute, verification}). Steering toward a strategy changes the
    format mix and with it the length by construction (a step trace is ~27 tokens, a direct answer
    3), so the comparison is like with like: expected = sum over formats f of (share of steered
    samples in f) x (unsteered mean length in f), over the steered samples whose format occurs
    unsteered; ratio = their mean steered length / expected. Units: tokens / tokens. Returns
    (None, 0.0) when no steered sample's format occurs unsteered (nothing to compare with).
    """
    names = sorted(set(s.used) & set(s0.used))

    def fmt_keys(x: SettingSamples) -> list[tuple[bool, ...]]:
        return list(zip(*(np.asarray(x.used[n]).reshape(-1).tolist() for n in names), strict=True)) if names else \
            [()] * int(np.asarray(x.length).size)

    k1, k0 = fmt_keys(s), fmt_keys(s0)
    len1, len0 = np.asarray(s.length, float).reshape(-1), np.asarray(s0.length, float).reshape(-1)
    by_fmt: dict[tuple[bool, ...], list[float]] = {}
    for k, n in zip(k0, len0, strict=True):
        by_fmt.setdefault(k, []).append(n)
    ref = {k: float(np.mean(v)) for k, v in by_fmt.items()}
    pairs = [(n, ref[k]) for k, n in zip(k1, len1, strict=True) if k in ref]
    if not pairs:
        return None, 0.0
    obs, exp = (float(np.mean(c)) for c in zip(*pairs, strict=True))
    return obs / max(exp, 1e-9), len(pairs) / max(len(k1), 1)


def summarize_setting(s: SettingSamples, s0: SettingSamples, strategy: str, n_bootstrap: int = 1000,
                      seed: int = 0) -> dict:
    """Steered vs unsteered numbers of one setting for `strategy` (the keys
    `analyses.verdicts.verdict_steering` reads): rates with 95% bootstrap-over-prompts CIs."""
    rate, ci = _rate(s.used[strategy], n_bootstrap, seed)
    rate0, ci0 = _rate(s0.used[strategy], n_bootstrap, seed)
    m, mci = _rate(s.malformed, n_bootstrap, seed)
    m0, m0ci = _rate(s0.malformed, n_bootstrap, seed)
    v = s.setting.vector
    matched, matched_share = format_matched_length_ratio(s, s0)
    return {
        "layer": None if v is None else v.layer, "alpha_fraction": s.setting.fraction,
        "where": s.setting.where, "vector": s.setting.kind,
        "rate_at_0": rate0, "ci_at_0": ci0, "rate": rate, "ci": ci, "change": rate - rate0,
        "accuracy_at_0": float(np.nanmean(s0.correct)) if np.isfinite(s0.correct).any() else None,
        "accuracy": float(np.nanmean(s.correct)) if np.isfinite(s.correct).any() else None,
        "malformed_at_0": {"value": m0, "ci": m0ci}, "malformed": {"value": m, "ci": mci},
        "length_at_0": float(s0.length.mean()), "length": float(s.length.mean()),
        "length_ratio": float(s.length.mean() / max(s0.length.mean(), 1e-9)),
        # like with like: steered vs unsteered length within each format (switching strategy
        # changes the length by construction), weighted by the steered format mix
        "length_ratio_matched": matched, "length_matched_share": matched_share,
        "vector_norm": None if v is None else v.norm,
    }


@dataclass
class Candidate:
    """A direction to try for one strategy: `vector` (any norm; the search rescales it),
    `kind` names it ("decision_point_contrast", "diff_of_means_token_pooled", ...)."""

    vector: StrategyVector
    kind: str


def _scaled(c: Candidate, where: str, fraction: float, norms: dict) -> SteeringSetting:
    """`c`'s unit direction times fraction x the mean residual norm at its layer and positions."""
    ref = float(norms[where][c.vector.layer])
    v = c.vector
    sv = StrategyVector(v.unit * ref * fraction, v.layer, v.method, v.strategy, v.model_name, v.weight_hash,
                        v.labels_source, v.n_segments, {**v.extra, "alpha_fraction": fraction, "where": where,
                                                        "residual_norm": ref})
    return SteeringSetting(sv, where, fraction, c.kind)


def steering_search(
    model, candidates: dict[str, list[Candidate]], norms: dict[str, dict[int, float]],
    screen_prompts: Sequence[Sequence[int]], eval_prompts: Sequence[Sequence[int]], label_fn: LabelFn,
    grade_fn_screen: GradeFn | None = None, grade_fn_eval: GradeFn | None = None,
    malformed_fn: Callable[[str], bool] | None = None, separator_ids: Sequence[int] = (),
    fractions: Sequence[float] = (0.05, 0.1, 0.2), wheres: Sequence[str] = ("decision_points",),
    n_screen_samples: int = 2, n_samples: int = 4, n_random: int = 5, seed: int = 0, random_seed: int = 1000,
    max_new_tokens: int = 64, temperature: float = 1.0, n_bootstrap: int = 1000, progress=None,
) -> dict:
    """Find, per strategy, the steering setting (candidate vector x layer x where x strength) that
    raises the strategy most without degenerating, then measure it on held-out prompts against
    `n_random` Gaussian random vectors of the same norm, layer and positions.

    Strength: `fraction` x the mean residual norm at the vector's layer and the steered positions
    (`norms[where][layer]`, see `probes.vectors.mean_residual_norm`), so one grid means the same at
    every layer. Stage 1 (screen) runs every setting on `screen_prompts` x `n_screen_samples` and
    keeps the largest rise among settings `analyses.verdicts.is_degenerate` does not flag; stage 2
    runs unsteered, the chosen setting and the random vectors on `eval_prompts` x `n_samples`
    (disjoint prompts, so the choice does not inflate the reported effect). Returns
    {strategy: {"best": {...verdict keys...}, "screen": [summaries]}}. Raises TwinlensError on an
    empty grid, a `where` outside WHERE, `n_random` < 1, a fraction <= 0, or a missing norm."""
    from analyses.verdicts import is_degenerate

    fractions = [check_finite(f"fractions[{i}]", f) for i, f in enumerate(fractions)]
    if not fractions or any(f <= 0 for f in fractions):
        raise TwinlensError(f"fractions must be > 0 (a share of the residual norm, e.g. 0.05-0.5); got {fractions}.")
    bad = [w for w in wheres if w not in WHERE]
    if bad or not wheres:
        raise TwinlensError(f"where must be among {WHERE}; got {list(wheres)}.")
    check_positive_int("n_random", n_random)
    strategies = [s for s in candidates if candidates[s]]
    if not strategies:
        raise TwinlensError("steering_search needs at least one candidate vector.")
    for s in strategies:
        for c in candidates[s]:
            for w in wheres:
                if c.vector.layer not in norms.get(w, {}):
                    raise TwinlensError(f"No residual norm for layer {c.vector.layer}, where={w!r}.")
    common = dict(label_fn=label_fn, strategies=strategies, malformed_fn=malformed_fn,
                  separator_ids=separator_ids, seed=seed, max_new_tokens=max_new_tokens, temperature=temperature)
    grid = [SteeringSetting(None, "all", 0.0, "none")]
    owner = [None]
    for s in strategies:
        for c in candidates[s]:
            for w in wheres:
                for f in fractions:
                    grid.append(_scaled(c, w, f, norms))
                    owner.append((s, c))
    screen = run_settings(model, grid, screen_prompts, grade_fn=grade_fn_screen, n_samples=n_screen_samples,
                          **common)
    if progress is not None:
        progress(f"screened {len(grid) - 1} settings")
    out: dict = {}
    chosen = []
    for s in strategies:
        rows = []
        for k in range(1, len(grid)):
            if owner[k][0] != s:
                continue
            x = summarize_setting(screen[k], screen[0], s, n_bootstrap=200, seed=seed)
            x["degenerate"], x["degenerate_why"] = is_degenerate(x)
            rows.append((x, owner[k][1], grid[k]))
        ok = [r for r in rows if not r[0]["degenerate"]] or rows
        best = max(ok, key=lambda r: (r[0]["change"], -r[2].fraction))
        out[s] = {"screen": [r[0] for r in rows]}
        chosen.append((s, best[2]))
    final = [SteeringSetting(None, "all", 0.0, "none")]
    for k, (_s, st) in enumerate(chosen):
        final.append(st)
        for j in range(n_random):
            rv = random_vector_like(st.vector, seed=random_seed + 100 * k + j)
            final.append(SteeringSetting(rv, st.where, st.fraction, "random"))
    ev = run_settings(model, final, eval_prompts, grade_fn=grade_fn_eval, n_samples=n_samples, **common)
    if progress is not None:
        progress(f"measured {len(chosen)} chosen settings against {n_random} random vectors each")
    for k, (s, _st) in enumerate(chosen):
        i = 1 + k * (1 + n_random)
        b = summarize_setting(ev[i], ev[0], s, n_bootstrap=n_bootstrap, seed=seed)
        rnd = [summarize_setting(ev[i + 1 + j], ev[0], s, n_bootstrap=n_bootstrap, seed=seed)
               for j in range(n_random)]
        b["random"] = {"n": n_random, "rates": [r["rate"] for r in rnd], "cis": [r["ci"] for r in rnd],
                       "max_upper_ci": max(r["ci"][1] for r in rnd),
                       "seeds": [random_seed + 100 * k + j for j in range(n_random)]}
        b["degenerate"], b["degenerate_why"] = is_degenerate(b)
        b["n_prompts"], b["n_samples"] = len(eval_prompts), n_samples
        b["passes"] = bool(b["ci"][0] > b["random"]["max_upper_ci"] and not b["degenerate"])
        out[s]["best"] = b
    return out
