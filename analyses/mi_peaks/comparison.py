"""Summaries of MI trajectories per model, their controls, and base-vs-RL comparisons.

Every per-model number is a mean over problems of a per-trajectory quantity, with a 95%
percentile bootstrap interval over problems (seeded):

- ``mi_mean``: mean over the trajectory's tokens; ``mi_std``: std (ddof 0) over its tokens;
- ``peaks_per_trajectory``: number of IQR-rule peaks; ``peak_ratio``: peaks / tokens;
- ``aom``: average outlier magnitude (trajectories without peaks or with IQR 0 have none; the
  mean is over those that have one, and ``aom_n_defined`` says how many).

Controls: peaks at strategy tokens against the share of strategy tokens (chance), with an exact
one-sided binomial test and a permutation test that redraws each trajectory's peak positions
uniformly within that trajectory (hypergeometric draws, which is exactly that permutation);
peak-token counts next to the counts of all trajectory tokens (enrichment); HSIC across
problems between states and gold states at the top peak vs at a random token.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import stats

from analyses.mi_peaks.estimators import PAPER_SIGMA, HsicTest, estimate_mi, hsic_permutation_test
from analyses.mi_peaks.peaks import DEFAULT_TOP_K, MIN_TRAJECTORY_LENGTH, PeakStats, peak_stats
from analyses.mi_peaks.trajectories import Trajectory, decode_states
from hooks import Model, TwinlensError
from hooks.validation import bootstrap_indices

STRATEGIES_OF_INTEREST = ("backtracking", "verification")
CI_LEVEL = 0.95


# ----------------------------------------------------------------------------- small stats
@dataclass(frozen=True)
class Estimate:
    """A mean over problems with its 95% bootstrap percentile interval."""

    value: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.value:.4g} [{self.low:.4g}, {self.high:.4g}]"


def bootstrap_mean(values: Sequence[float], n_boot: int = 2000, seed: int = 0) -> Estimate:
    """Mean of the finite values with a percentile bootstrap CI (resampling problems)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    rng = np.random.default_rng(seed)
    means = v[bootstrap_indices(rng, v.size, n_boot)].mean(axis=1)
    a = (1 - CI_LEVEL) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return Estimate(float(v.mean()), float(lo), float(hi), int(v.size))


def wilson(k: int, n: int) -> Estimate:
    """k of n with a 95% Wilson interval."""
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    z = 1.959964
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), n)


# ----------------------------------------------------------------------------- per trajectory
def compute_mi(
    trajectories: Sequence[Trajectory], method: str = "hsic_paper", sigma: float = PAPER_SIGMA
) -> None:
    """Fill ``trajectory.mi`` ([T], float64) with the chosen estimator."""
    for t in trajectories:
        t.mi = estimate_mi(t.states, t.gold, method=method, sigma=sigma)


def label_trajectories(
    trajectories: Sequence[Trajectory],
    tokenizer: Any,
    label_strategies: Callable[[str], list[tuple[str, int, int]]],
    char_tokens: bool = False,
    answer_span: Callable[[str], tuple[int, int] | None] | None = None,
) -> None:
    """Fill ``text``, ``token_strategy`` (strategy of each emitted token, ``answer`` on the final
    answer when ``answer_span`` is given, "none" elsewhere and at eos) and ``strategy_marker``
    (the first token of each strategy span) from character spans."""
    from analyses.sampling import spans_through_offsets
    from probes.labels import token_char_offsets

    for t in trajectories:
        # One decode gives the text and each token's characters (special tokens never shift).
        text, offsets = token_char_offsets(tokenizer, t.completion_ids)
        spans = [tuple(s) for s in label_strategies(text)]
        ans = answer_span(text) if answer_span is not None else None
        if ans is not None:
            spans.append(("answer", *ans))
        if char_tokens and len(text) == len(t.completion_ids):
            tok_spans = [[n, s, e] for n, s, e in spans]
        else:
            tok_spans = spans_through_offsets(spans, offsets)
        labels, marker = ["none"] * t.length, [False] * t.length
        for name, s, e in tok_spans:
            for i in range(s, min(e, len(t.completion_ids))):
                if name != "answer" or labels[i] == "none":
                    labels[i] = name
            if name != "answer" and s < len(t.completion_ids):
                marker[s] = True
        t.text, t.token_strategy, t.strategy_marker = text, labels, marker


def special_mask(trajectory: Trajectory, special_ids: set[int] | frozenset[int]) -> np.ndarray:
    """Bool[ndarray, "T"]: the states that emit a special token (``<eos>``, ``<|im_end|>``, ...)."""
    return np.array([int(i) in special_ids for i in trajectory.emitted_ids], dtype=bool)


def usable(trajectories: Sequence[Trajectory], special_ids: set[int] | frozenset[int] = frozenset()
           ) -> tuple[list[Trajectory], int]:
    """Trajectories with enough non-special tokens for quartiles, and how many were too short
    (reported, never silently dropped)."""
    ok = [t for t in trajectories
          if t.length - int(special_mask(t, special_ids).sum()) >= MIN_TRAJECTORY_LENGTH]
    return ok, len(trajectories) - len(ok)


def planted_dependence_control(
    trajectories: Sequence[Trajectory], method: str, sigma: float, special_ids: set[int] | frozenset[int] = frozenset(),
    *, n_planted: int = 2, mix: float = 0.5, min_recall: float = 0.8, seed: int = 0,
) -> dict[str, Any]:
    """Positive control of the peak detector: plant dependence on the gold state at known positions
    and check that the same estimator and peak rule find them.

    In each usable trajectory, ``n_planted`` non-special positions (seeded) get the state
    (1 - mix) * h_t + mix * h_gold; the MI is re-estimated and IQR peaks found with special tokens
    excluded, as in the analysis. recall = planted positions found / planted; ``passed`` when recall
    >= ``min_recall``. A detector that misses planted peaks cannot support (or deny) the claim.
    """
    rng = np.random.default_rng(seed)
    found = planted = other_peaks = other = 0
    used, _ = usable(trajectories, special_ids)
    for t in used:
        allowed = np.flatnonzero(~special_mask(t, special_ids))
        if allowed.size < MIN_TRAJECTORY_LENGTH + n_planted:
            continue
        pos = rng.choice(allowed, size=n_planted, replace=False)
        states = t.states.clone()
        states[pos] = (1 - mix) * states[pos] + mix * t.gold
        mi = estimate_mi(states, t.gold, method=method, sigma=sigma)
        peaks = set(peak_stats(mi, "iqr", exclude=special_mask(t, special_ids)).peaks)
        found += len(peaks & set(pos.tolist()))
        planted += n_planted
        other_peaks += len(peaks - set(pos.tolist()))
        other += allowed.size - n_planted
    recall = found / planted if planted else math.nan
    return {"n_trajectories": len(used), "n_planted": planted, "mix": mix, "recall": recall,
            "peak_rate_elsewhere": other_peaks / other if other else math.nan,
            "min_recall": min_recall, "passed": bool(planted and recall >= min_recall)}


# ----------------------------------------------------------------------------- enrichment
@dataclass(frozen=True)
class StrategyEnrichment:
    """Do peaks sit on strategy tokens more than chance?

    share = peaks on strategy tokens / peaks; chance = strategy tokens / tokens (pooled over the
    trajectories). p_binomial: one-sided exact binomial test of the count at the chance rate;
    p_permutation: each trajectory's peaks redrawn uniformly among its own tokens (so a model
    whose long trajectories hold the strategy tokens is not favoured)."""

    strategies: tuple[str, ...]
    what: str  # "span" (any token of a span) or "marker" (the span's first token)
    n_peaks: int
    n_at_strategy: int
    n_tokens: int
    n_strategy_tokens: int
    share: float
    chance: float
    enrichment: float
    p_binomial: float
    p_permutation: float
    n_permutations: int


def strategy_enrichment(
    trajectories: Sequence[Trajectory],
    peaks: Sequence[Sequence[int]],
    strategies: Sequence[str] = STRATEGIES_OF_INTEREST,
    what: str = "span",
    n_permutations: int = 10000,
    seed: int = 0,
    exclude: Sequence[np.ndarray] | None = None,
) -> StrategyEnrichment:
    """``exclude[i]`` (Bool[ndarray, "T_i"]): positions of trajectory i left out of the chance rate
    and of the permutation null (the special tokens peak finding skipped)."""
    if what not in ("span", "marker"):
        raise TwinlensError(f"what must be 'span' or 'marker', got {what!r}.")
    strategies = tuple(strategies)
    k = n_peaks = n_tok = n_strat = 0
    per_traj = []  # (strategy tokens, tokens, peaks) for the null
    for i, (t, p) in enumerate(zip(trajectories, peaks, strict=True)):
        if what == "span":
            mask = np.array([s in strategies for s in t.token_strategy], dtype=bool)
        else:
            mask = np.array([m and s in strategies for m, s in zip(t.strategy_marker, t.token_strategy, strict=True)], dtype=bool)
        if mask.size != t.length:
            raise TwinlensError("Trajectories are not labelled; call label_trajectories first.")
        keep = np.ones(t.length, dtype=bool) if exclude is None else ~np.asarray(exclude[i], dtype=bool)
        mask = mask & keep
        n_kept = int(keep.sum())
        p = np.asarray(p, dtype=np.int64)
        k += int(mask[p].sum())
        n_peaks += int(p.size)
        n_tok += n_kept
        n_strat += int(mask.sum())
        per_traj.append((int(mask.sum()), n_kept, int(p.size)))
    chance = n_strat / n_tok if n_tok else math.nan
    share = k / n_peaks if n_peaks else math.nan
    if n_peaks == 0 or n_strat == 0:
        p_bin = p_perm = math.nan
    else:
        p_bin = float(stats.binomtest(k, n_peaks, chance, alternative="greater").pvalue)
        rng = np.random.default_rng(seed)
        null = np.zeros(n_permutations, dtype=np.int64)
        for s_i, t_i, k_i in per_traj:
            if k_i and s_i:
                null += rng.hypergeometric(s_i, t_i - s_i, k_i, size=n_permutations)
        p_perm = float((1 + (null >= k).sum()) / (1 + n_permutations))
    return StrategyEnrichment(
        strategies=strategies, what=what, n_peaks=n_peaks, n_at_strategy=k, n_tokens=n_tok,
        n_strategy_tokens=n_strat, share=share, chance=chance,
        enrichment=share / chance if chance and chance > 0 and n_peaks else math.nan,
        p_binomial=p_bin, p_permutation=p_perm, n_permutations=int(n_permutations),
    )


# ----------------------------------------------------------------------------- MI by token kind
def token_kinds(t: Trajectory) -> list[str]:
    """Kind of each state's emitted token: its strategy (``compute``, ``verification``, ...,
    ``none``), ``eos`` for the eos-emitting state."""
    kinds = list(t.token_strategy) if t.token_strategy else ["none"] * t.length
    if t.finished and len(t.emitted_ids) > len(t.completion_ids):
        kinds[-1] = "eos"
    return kinds


def relative_mi_by_kind(
    trajectories: Sequence[Trajectory], n_boot: int = 2000, seed: int = 0
) -> dict[str, Estimate]:
    """Mean robust z-score (m_t - median) / IQR of the MI at tokens of each kind (and at span
    markers, ``marker:<strategy>``), first averaged within a trajectory, then over trajectories
    with a bootstrap CI. Threshold-free: where along a trajectory the MI is high, in units of the
    trajectory's own spread (the same units as AOM)."""
    per_kind: dict[str, list[float]] = {}
    for t in trajectories:
        m = t.mi.numpy()
        q1, med, q3 = np.percentile(m, [25, 50, 75])
        if q3 - q1 <= 0:
            continue
        z = (m - med) / (q3 - q1)
        kinds = token_kinds(t)
        groups: dict[str, list[float]] = {}
        for i, k in enumerate(kinds):
            groups.setdefault(k, []).append(z[i])
            if t.strategy_marker and t.strategy_marker[i]:
                groups.setdefault(f"marker:{k}", []).append(z[i])
        for k, v in groups.items():
            per_kind.setdefault(k, []).append(float(np.mean(v)))
    return {k: bootstrap_mean(v, n_boot, seed) for k, v in sorted(per_kind.items())}


# ----------------------------------------------------------------------------- per model
def token_name(tokenizer: Any, token_id: int) -> str:
    """A readable name for one token (special tokens by their own name)."""
    if token_id in set(getattr(tokenizer, "all_special_ids", [])):
        return tokenizer.convert_ids_to_tokens(int(token_id))
    return tokenizer.decode([int(token_id)], skip_special_tokens=False)


@dataclass
class ModelMiSummary:
    """Everything measured on one model's trajectories (see the module docstring)."""

    label: str
    n_problems: int
    n_used: int
    n_too_short: int
    n_tokens: int
    method: str
    sigma: float
    layer: int
    mi_mean: Estimate
    mi_std: Estimate
    peaks_per_trajectory: Estimate
    peak_ratio: Estimate
    aom: Estimate
    topk: dict[str, Any]  # the notebook's top-k rule: k, aom, peaks at strategy tokens
    peak_tokens: dict[str, int]  # emitted token at each peak (the paper's "token at the peak")
    peak_decoded_tokens: dict[str, int]  # logit lens of the peak state (final norm + unembedding)
    token_counts: dict[str, int]  # every trajectory token: the base rate for peak_tokens
    peaks_at_strategy_tokens: StrategyEnrichment
    peaks_at_strategy_markers: StrategyEnrichment
    decoded_equals_emitted: float  # share of peak states whose decoded token is the emitted one
    relative_mi_by_kind: dict[str, Estimate]  # robust z of MI by token kind (threshold-free)
    peak_share_by_kind: dict[str, dict[str, float]]  # kind -> share of peaks, share of tokens
    accuracy: Estimate | None = None
    population_hsic: dict[str, HsicTest] = field(default_factory=dict)
    per_problem: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        # flat numbers for programs, intervals next to them
        for key in ("mi_mean", "mi_std", "peaks_per_trajectory", "peak_ratio", "aom"):
            est = getattr(self, key)
            out[key] = est.value
            out[f"{key}_ci"] = [est.low, est.high]
        out["aom_n_defined"] = self.aom.n
        if self.accuracy is not None:
            out["accuracy"] = self.accuracy.value
            out["accuracy_ci"] = [self.accuracy.low, self.accuracy.high]
        return out


def summarise_model(
    label: str,
    model: Model,
    trajectories: Sequence[Trajectory],
    method: str,
    sigma: float,
    top_k: int = DEFAULT_TOP_K,
    strategies: Sequence[str] = STRATEGIES_OF_INTEREST,
    n_boot: int = 2000,
    n_permutations: int = 10000,
    hsic_permutations: int = 200,
    seed: int = 0,
) -> ModelMiSummary:
    """Peaks, AOM, token tables and controls for one model's (MI-filled, labelled) trajectories.
    Trajectories shorter than 4 tokens are left out and counted in ``n_too_short``."""
    if any(t.mi is None for t in trajectories):
        raise TwinlensError("Trajectories have no MI yet; call compute_mi first.")
    special = frozenset(int(i) for i in getattr(model.tokenizer, "all_special_ids", []) or [])
    used, too_short = usable(trajectories, special)
    if not used:
        raise TwinlensError(
            f"All {len(trajectories)} trajectories of {label!r} have fewer than "
            f"{MIN_TRAJECTORY_LENGTH} tokens (IQR undefined): the model answers without reasoning. "
            "Use teacher-forced reference completions (texts='reference') or raise max_new_tokens."
        )
    tok = model.tokenizer
    # special tokens (<eos>, chat markers) take no part in peak finding: see peaks.peak_stats
    iqr_stats: list[PeakStats] = [peak_stats(t.mi, "iqr", exclude=special_mask(t, special)) for t in used]
    topk_stats: list[PeakStats] = [peak_stats(t.mi, "topk", top_k, exclude=special_mask(t, special)) for t in used]

    peak_tokens, decoded, counts = Counter(), Counter(), Counter()
    agree = total = 0
    for t, s in zip(used, iqr_stats, strict=True):
        counts.update(token_name(tok, i) for i in t.emitted_ids)
        if not s.peaks:
            continue
        idx = list(s.peaks)
        emitted = [t.emitted_ids[i] for i in idx]
        dec = decode_states(model, t.states[idx])
        peak_tokens.update(token_name(tok, i) for i in emitted)
        decoded.update(token_name(tok, i) for i in dec)
        agree += sum(a == b for a, b in zip(emitted, dec, strict=True))
        total += len(idx)

    def est(values):
        return bootstrap_mean(values, n_boot=n_boot, seed=seed)

    excl = [special_mask(t, special) for t in used]
    enrich = strategy_enrichment(used, [s.peaks for s in iqr_stats], strategies, "span", n_permutations, seed, excl)
    enrich_m = strategy_enrichment(used, [s.peaks for s in iqr_stats], strategies, "marker", n_permutations, seed, excl)
    enrich_k = strategy_enrichment(used, [s.peaks for s in topk_stats], strategies, "span", n_permutations, seed, excl)
    correct = [t.correct for t in trajectories if t.correct is not None]
    per_problem = [
        {"problem_id": t.problem_id, "length": s.length, "mi_mean": s.mean, "mi_std": s.std,
         "n_peaks": s.n_peaks, "aom": s.aom, "peaks": list(s.peaks), "correct": t.correct,
         "text": t.text, "mi": [float(f"{v:.6g}") for v in t.mi.tolist()]}
        for t, s in zip(used, iqr_stats, strict=True)
    ]
    return ModelMiSummary(
        label=label, n_problems=len(trajectories), n_used=len(used), n_too_short=too_short,
        n_tokens=sum(t.length for t in used), method=method, sigma=float(sigma), layer=used[0].layer,
        mi_mean=est([s.mean for s in iqr_stats]),
        mi_std=est([s.std for s in iqr_stats]),
        peaks_per_trajectory=est([s.n_peaks for s in iqr_stats]),
        peak_ratio=est([s.peak_ratio for s in iqr_stats]),
        aom=est([s.aom for s in iqr_stats]),
        topk={
            "k": int(top_k),
            "aom": asdict(est([s.aom for s in topk_stats])),
            "peak_ratio": asdict(est([s.peak_ratio for s in topk_stats])),
            "peaks_at_strategy_tokens": asdict(enrich_k),
        },
        peak_tokens=dict(peak_tokens.most_common()),
        peak_decoded_tokens=dict(decoded.most_common()),
        token_counts=dict(counts.most_common()),
        peaks_at_strategy_tokens=enrich,
        peaks_at_strategy_markers=enrich_m,
        decoded_equals_emitted=agree / total if total else math.nan,
        relative_mi_by_kind=relative_mi_by_kind(used, n_boot, seed),
        peak_share_by_kind=peak_share_by_kind(used, [s.peaks for s in iqr_stats]),
        accuracy=wilson(sum(correct), len(correct)) if correct else None,
        population_hsic=population_dependence(used, hsic_permutations, seed) if hsic_permutations else {},
        per_problem=per_problem,
    )


def peak_share_by_kind(trajectories: Sequence[Trajectory], peaks: Sequence[Sequence[int]]) -> dict[str, dict[str, float]]:
    """For each token kind: share of all peaks on it and share of all tokens that are of it."""
    n_peaks, n_tok = Counter(), Counter()
    for t, p in zip(trajectories, peaks, strict=True):
        kinds = token_kinds(t)
        n_tok.update(kinds)
        n_peaks.update(kinds[i] for i in p)
    tp, tt = max(1, sum(n_peaks.values())), max(1, sum(n_tok.values()))
    return {k: {"peaks": n_peaks[k] / tp, "tokens": n_tok[k] / tt} for k in sorted(n_tok)}


def population_dependence(
    trajectories: Sequence[Trajectory], n_permutations: int = 200, seed: int = 0,
) -> dict[str, HsicTest]:
    """hsic_gaussian across problems between the state at each trajectory's highest-MI token and
    its gold state, and the control: the state at a uniformly random token (seeded)."""
    if len(trajectories) < 4:
        return {}
    rng = np.random.default_rng(seed)
    top = torch.stack([t.states[int(np.argmax(t.mi.numpy()))] for t in trajectories])
    rand = torch.stack([t.states[int(rng.integers(t.length))] for t in trajectories])
    gold = torch.stack([t.gold for t in trajectories])
    return {
        "top_peak_state": hsic_permutation_test(top, gold, n_permutations, seed),
        "random_token_state": hsic_permutation_test(rand, gold, n_permutations, seed),
    }


# ----------------------------------------------------------------------------- base vs RL
def paired_difference(
    a: ModelMiSummary, b: ModelMiSummary, key: str, n_boot: int = 2000, seed: int = 0
) -> Estimate:
    """Mean over problems used by both of (b - a) for a per-problem key (mi_mean, n_peaks, aom,
    ...), with a paired bootstrap CI."""
    va = {p["problem_id"]: p for p in a.per_problem}
    diffs = []
    for p in b.per_problem:
        q = va.get(p["problem_id"])
        if q is None:
            continue
        if key == "peak_ratio":
            diffs.append(p["n_peaks"] / p["length"] - q["n_peaks"] / q["length"])
        else:
            diffs.append(float(p[key]) - float(q[key]))
    return bootstrap_mean(diffs, n_boot=n_boot, seed=seed)
