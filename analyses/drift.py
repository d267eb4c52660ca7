"""Drift from the base and output entropy (RESEARCH.md sections 5 and 8).

Per-token KL between the two models' full next-token distributions, KL(base || rl) and
KL(rl || base), at every completion position of samples from either model ("RL's Razor"
measures it on the RL model's samples), averaged over a sample's completion tokens, then over
its problem's samples, then over problems. Exact over the whole vocabulary: one teacher-forced
forward of each model over prompt + completion. Entropy of each model's next-token
distribution per completion position and per token kind (the strategy the predicted token
belongs to, from the task's labels: strategy tokens vs the rest). Entropy by domain (RESEARCH.md
s.8, Omni-Thinker: RL on a structured domain lowers output entropy, on an open/creative one it does
not): ``entropy_change`` gives a model's entropy drop from the base on one domain's problems with a
bootstrap CI; scripts/drift.py measures it on the organism's structured task and its open domain.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from analyses.sampling import SampleRow, Samples, as_model_family, iter_completion_logprobs
from hooks.errors import TwinlensError
from hooks.validation import bootstrap_indices

NON_STRATEGY_KINDS = ("none", "answer")


def token_kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row, in nats: logp, logq Float[Tensor, "tokens vocab"] log-softmax."""
    return (logp.exp() * (logp - logq)).sum(-1)


def token_entropy(logp: torch.Tensor) -> torch.Tensor:
    """Entropy per row, in nats: logp Float[Tensor, "tokens vocab"] log-softmax."""
    return -(logp.exp() * logp).sum(-1)


@dataclass
class DriftResult:
    """KL and entropy of a (base, other) pair on one set of samples. Units: nats per token."""

    base: str
    other: str
    sampled_by: list[str]  # which models drew the samples used
    kl_base_rl: float  # KL(base || other), mean over problems
    kl_rl_base: float  # KL(other || base)
    ci: dict[str, tuple[float, float]]  # bootstrap over problems
    entropy: dict[str, float]  # model -> mean entropy per token (same averaging as KL)
    entropy_by_kind: dict[str, dict[str, float]]  # model -> kind -> mean over those tokens
    entropy_by_position: dict[str, list[float]]  # model -> mean over samples at completion position t
    kl_by_kind: dict[str, float]  # KL(base || other) per token kind
    n_problems: int
    n_samples: int
    n_tokens: int
    n_empty: int  # samples with no completion token (no position to measure; skipped)
    seed: int
    per_problem: dict[str, np.ndarray] = field(repr=False, default_factory=dict)
    problem_ids: list[str] = field(repr=False, default_factory=list)  # order of the per_problem arrays

    def to_dict(self) -> dict:
        return {
            "base": self.base, "other": self.other, "sampled_by": self.sampled_by,
            "kl_base_rl": self.kl_base_rl, "kl_rl_base": self.kl_rl_base,
            "ci": {k: list(v) for k, v in self.ci.items()},
            "entropy": self.entropy, "entropy_by_kind": self.entropy_by_kind,
            "entropy_by_position": self.entropy_by_position, "kl_by_kind": self.kl_by_kind,
            "n_problems": self.n_problems, "n_samples": self.n_samples, "n_tokens": self.n_tokens,
            "n_empty": self.n_empty, "seed": self.seed, "units": "nats per token",
        }


def _rows_of(samples: Samples | Sequence[SampleRow], sampled_by: Sequence[str] | None) -> list[SampleRow]:
    rows = list(samples.rows if isinstance(samples, Samples) else samples)
    if sampled_by is not None:
        rows = [r for r in rows if r.model in sampled_by]
    if not rows:
        raise TwinlensError(
            "No samples to measure drift on (empty sample set"
            + (f", or none drawn by {list(sampled_by)}" if sampled_by is not None else "") + ")."
        )
    return rows


def _problem_mean(values: dict[str, list[float]]) -> tuple[list[str], np.ndarray]:
    ids = sorted(values)
    return ids, np.array([np.mean(values[p]) for p in ids])


def measure_drift(
    models: Any,
    samples: Samples | Sequence[SampleRow],
    *,
    base: str = "base",
    other: str = "rl",
    sampled_by: Sequence[str] | None = None,
    batch_size: int = 32,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
) -> DriftResult:
    """KL(base || other), KL(other || base) and both entropies on ``samples``.

    models: ModelPair or {label: Model} holding ``base`` and ``other`` (same tokenizer).
    sampled_by: keep only samples drawn by these models (default: all rows given).
    """
    family = as_model_family(models)
    for label in (base, other):
        if label not in family:
            raise TwinlensError(f"Model {label!r} not given; models: {list(family)}.")
    rows = _rows_of(samples, sampled_by)
    mb, mo = family[base], family[other]
    prompts = [r.prompt_ids for r in rows]
    comps = [r.completion_ids for r in rows]
    kl_bo: dict[str, list[float]] = defaultdict(list)
    kl_ob: dict[str, list[float]] = defaultdict(list)
    ent: dict[str, dict[str, list[float]]] = {base: defaultdict(list), other: defaultdict(list)}
    kind_ent: dict[str, dict[str, list[float]]] = {base: defaultdict(list), other: defaultdict(list)}
    pos_ent: dict[str, dict[int, list[float]]] = {base: defaultdict(list), other: defaultdict(list)}
    kind_kl: dict[str, list[float]] = defaultdict(list)
    n_tokens = n_empty = 0
    it_b = iter_completion_logprobs(mb, prompts, comps, batch_size)
    it_o = iter_completion_logprobs(mo, prompts, comps, batch_size)
    for row, lb, lo in zip(rows, it_b, it_o, strict=True):
        if lb.shape[0] == 0:
            n_empty += 1
            continue
        n_tokens += lb.shape[0]
        kbo, kob = token_kl(lb, lo), token_kl(lo, lb)
        kl_bo[row.problem_id].append(kbo.mean().item())
        kl_ob[row.problem_id].append(kob.mean().item())
        labels = row.token_labels()
        for label, lp in ((base, lb), (other, lo)):
            h = token_entropy(lp)
            ent[label][row.problem_id].append(h.mean().item())
            for t, (kind, v) in enumerate(zip(labels, h.tolist(), strict=True)):
                kind_ent[label][kind].append(v)
                kind_ent[label]["strategy" if kind not in NON_STRATEGY_KINDS else "rest"].append(v)
                pos_ent[label][t].append(v)
        for kind, v in zip(labels, kbo.tolist(), strict=True):
            kind_kl[kind].append(v)
            kind_kl["strategy" if kind not in NON_STRATEGY_KINDS else "rest"].append(v)
    if not kl_bo:
        raise TwinlensError("Every sample has an empty completion; there is no token to measure KL on.")
    ids, per_bo = _problem_mean(kl_bo)
    _, per_ob = _problem_mean(kl_ob)
    per = {"kl_base_rl": per_bo, "kl_rl_base": per_ob}
    for label in (base, other):
        per[f"entropy_{label}"] = _problem_mean(ent[label])[1]
    rng = np.random.default_rng(seed)
    idx = bootstrap_indices(rng, len(ids), n_boot)
    q = [(1 - ci) / 2, 1 - (1 - ci) / 2]
    cis = {k: tuple(float(x) for x in np.quantile(v[idx].mean(axis=1), q)) for k, v in per.items()}
    max_t = max(pos_ent[base]) + 1
    return DriftResult(
        base=base, other=other, sampled_by=sorted({r.model for r in rows}),
        kl_base_rl=float(per_bo.mean()), kl_rl_base=float(per_ob.mean()), ci=cis,
        entropy={label: float(per[f"entropy_{label}"].mean()) for label in (base, other)},
        entropy_by_kind={label: {k: float(np.mean(v)) for k, v in sorted(kind_ent[label].items())}
                         for label in (base, other)},
        entropy_by_position={label: [float(np.mean(pos_ent[label][t])) if pos_ent[label][t] else float("nan")
                                     for t in range(max_t)] for label in (base, other)},
        kl_by_kind={k: float(np.mean(v)) for k, v in sorted(kind_kl.items())},
        n_problems=len(ids), n_samples=len(rows) - n_empty, n_tokens=n_tokens, n_empty=n_empty,
        seed=seed, per_problem=per, problem_ids=ids,
    )


@dataclass
class EntropyChange:
    """A model's mean next-token entropy on its own samples minus the base's on the base's samples,
    over the problems both were measured on (nats per token; negative = RL lowered entropy)."""

    base: float
    other: float
    change: float  # other - base
    ci: tuple[float, float]  # percentile bootstrap over problems (paired: one problem, both models)
    n_problems: int

    def to_dict(self) -> dict:
        return {"base": self.base, "other": self.other, "change": self.change, "ci": list(self.ci),
                "n_problems": self.n_problems}


def entropy_change(on_base: DriftResult, on_other: DriftResult, *, n_boot: int = 1000, seed: int = 0,
                   ci: float = 0.95) -> EntropyChange:
    """Entropy change of ``on_other.other`` from the base, each on its own samples:
    ``on_base``: measure_drift on the base's samples, ``on_other``: on the other model's (same
    base, same problems). Per problem, H_other(own samples) - H_base(base samples); mean over
    problems, CI by a paired percentile bootstrap over problems. Errors: results of different
    models, or no problem in common (TwinlensError)."""
    if on_base.base != on_other.base or on_base.other != on_other.other:
        raise TwinlensError(f"entropy_change needs two results of one pair; got ({on_base.base}, {on_base.other}) "
                            f"and ({on_other.base}, {on_other.other}).")
    hb = dict(zip(on_base.problem_ids, on_base.per_problem[f"entropy_{on_base.base}"], strict=True))
    ho = dict(zip(on_other.problem_ids, on_other.per_problem[f"entropy_{on_other.other}"], strict=True))
    common = sorted(set(hb) & set(ho))
    if not common:
        raise TwinlensError("The two drift results share no problem; measure both on the same problems.")
    b, o = np.array([hb[p] for p in common]), np.array([ho[p] for p in common])
    idx = bootstrap_indices(np.random.default_rng(seed), len(common), n_boot)
    q = [(1 - ci) / 2, 1 - (1 - ci) / 2]
    d = o - b
    lo, hi = np.quantile(d[idx].mean(axis=1), q)
    return EntropyChange(base=float(b.mean()), other=float(o.mean()), change=float(d.mean()),
                         ci=(float(lo), float(hi)), n_problems=len(common))


def drift_series(
    models: Mapping[str, Any],
    samples: Mapping[str, Samples | Sequence[SampleRow]],
    *,
    base: str = "base",
    **kwargs: Any,
) -> dict[str, DriftResult]:
    """Drift of each checkpoint in ``models`` (besides ``base``) from the base, each measured on
    ``samples[checkpoint]`` (e.g. the checkpoint's own samples, or the base's)."""
    out = {}
    for label, model in models.items():
        if label == base:
            continue
        if label not in samples:
            raise TwinlensError(f"No samples given for checkpoint {label!r}.")
        out[label] = measure_drift({base: models[base], label: model}, samples[label],
                                   base=base, other=label, **kwargs)
    if not out:
        raise TwinlensError("drift_series needs at least one checkpoint besides the base.")
    return out


def plot_entropy_by_position(results: Mapping[str, DriftResult], ax=None):
    """Mean next-token entropy at each completion position, base and other model(s)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    drawn = set()
    for r in results.values():
        for label in (r.base, r.other):
            key = (label, tuple(r.sampled_by))
            if key in drawn:
                continue
            drawn.add(key)
            ys = r.entropy_by_position[label]
            ax.plot(range(len(ys)), ys, "-" if label == r.other else "--",
                    label=f"{label} (on samples of {'+'.join(r.sampled_by)})", alpha=0.8)
    ax.set_xlabel("completion position (token)")
    ax.set_ylabel("entropy (nats)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return ax
