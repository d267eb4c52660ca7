"""Suppression vs amplification (Zhu et al., arXiv 2506.01347; RESEARCH.md section 2): does RL
move probability by lowering incorrect trajectories or by raising correct ones?

Trajectories y are sampled from the *base* model for each problem x and scored under both
models: delta(y) = log p_rl(y | x) - log p_base(y | x), the sum of the completion's per-token
log-prob changes (teacher forcing, untempered next-token distributions). With ``models`` given
the end-of-sequence token of a finished completion is scored too, so delta is the log-ratio of
whole trajectories; without it the stored per-token log-probs are used (eos not scored).

Probability mass moved (per problem x; importance weighting, since y ~ p_base):

    w(y)      = p_rl(y) / p_base(y) = exp(delta(y))
    D_inc(x)  = sum_{y incorrect} max(p_base(y) - p_rl(y), 0) = E_{y~base}[1{inc} max(1 - w, 0)]
    U_cor(x)  = sum_{y correct}   max(p_rl(y) - p_base(y), 0) = E_{y~base}[1{cor} max(w - 1, 0)]
    (D_cor, U_inc likewise)

each estimated by the mean over the problem's samples (unbiased). Every problem's masses are
probabilities of that problem's trajectory distribution (in [0, 1]); problems count equally:

    suppression_share = sum_x D_inc(x) / (sum_x D_inc(x) + sum_x U_cor(x))

Reading it. Probability is conserved (D_inc + D_cor = U_inc + U_cor), so when every incorrect
trajectory falls and every correct one rises the share is exactly 0.5: lowering the wrong set
and raising the right set are then the same change and cannot be told apart. The share leaves
0.5 by what RL does *within* a class: > 0.5 when the mass taken from suppressed wrong
trajectories also flowed to other wrong ones (U_inc > D_cor: mass freed in proportion to the
prior, the signature of negative-sample reinforcement, which keeps diversity); < 0.5 when
correct trajectories gained mass taken from other correct ones (D_cor > U_inc: sharpening onto
some right answers, the signature of positive-sample reinforcement). Mean delta per class (with
CIs) is reported beside it.

Assumptions of the estimator: (1) samples are drawn from the base's untempered distribution
(temperature 1, top-p 1); other sampling settings bias it (``warnings`` says so); (2) RL's
support lies within the base's (trajectories the base never produces carry no weight here);
(3) the weights are not too heavy-tailed: ``diagnostics`` gives the mean weight (its
expectation is 1) and the effective sample size; a mean weight far from 1 means the mass the
sample set sees is not the mass RL moved.

Per token: the change of each token's log-prob, delta_t, by the token's label (the task's
strategy spans: ``compute`` steps are execution, ``verification``/``backtracking`` strategy,
``answer``, ``end`` (eos), ``none``) and by relative position along the trajectory.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from analyses.sampling import SampleRow, Samples, as_model_family, score_completions
from hooks.errors import TwinlensError
from hooks.validation import bootstrap_indices

ROLE_OF_LABEL = {"compute": "execution", "verification": "strategy", "backtracking": "strategy",
                 "answer": "answer", "end": "end", "none": "other"}
N_POSITION_BINS = 10


def token_role(label: str) -> str:
    """Role of a token label: execution (compute steps), strategy (verification,
    backtracking), answer, end (eos) or other (unlabelled)."""
    return ROLE_OF_LABEL.get(label, "strategy")


@dataclass
class DeltaStats:
    """delta log p(trajectory) (nats) of one class: mean over samples, cluster-bootstrap CI over
    problems, n samples."""

    mean: float
    ci: tuple[float, float]
    n: int
    median: float
    values: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))

    def to_dict(self) -> dict:
        return {"mean": self.mean, "ci": list(self.ci), "n": self.n, "median": self.median}


@dataclass
class SuppressionResult:
    """Suppression vs amplification on base samples. Units: nats (delta), probability (masses)."""

    base: str
    rl: str
    delta_logp: dict[str, DeltaStats]  # "correct", "incorrect"
    suppression_share: float
    suppression_share_ci: tuple[float, float]
    mass: dict[str, float]  # down_incorrect, up_incorrect, down_correct, up_correct: mean per problem
    by_label: dict[str, dict[str, dict[str, float]]]  # class -> token label -> stats
    by_role: dict[str, dict[str, dict[str, float]]]  # class -> role -> stats
    by_position: dict[str, list[float]]  # class -> mean delta_t per relative-position decile
    first_token: dict[str, dict[str, float]]  # class -> delta at the first completion token
    diagnostics: dict[str, float]
    n_problems: int
    n_samples: int
    eos_scored: bool
    seed: int
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "base": self.base, "rl": self.rl,
            "delta_logp": {k: v.to_dict() for k, v in self.delta_logp.items()},
            "suppression_share": self.suppression_share,
            "suppression_share_ci": list(self.suppression_share_ci),
            "mass": self.mass, "by_label": self.by_label, "by_role": self.by_role,
            "by_position": self.by_position, "first_token": self.first_token, "diagnostics": self.diagnostics,
            "n_problems": self.n_problems, "n_samples": self.n_samples,
            "eos_scored": self.eos_scored, "seed": self.seed, "warnings": self.warnings,
            "units": "delta in nats (log p_rl - log p_base); masses in probability per problem",
        }


def _base_rows(samples: Samples | Sequence[SampleRow], base: str) -> list[SampleRow]:
    rows = list(samples.rows if isinstance(samples, Samples) else samples)
    if not rows:
        raise TwinlensError("No samples given.")
    rows = [r for r in rows if r.model == base]
    if not rows:
        raise TwinlensError(
            f"No samples drawn by the base model {base!r}; the estimator needs trajectories from "
            f"the base (analyses.sampling.sample(pair, problems, n, sample_from=[{base!r}]))."
        )
    ungraded = sum(r.correct is None for r in rows)
    if ungraded:
        raise TwinlensError(f"{ungraded} samples are not graded (correct is None); sample with task=... "
                            "so each trajectory is known correct or incorrect.")
    return rows


def check_tokenization(rows: Sequence[SampleRow], labels: Sequence[str], tokenizer: Any = None,
                       vocab_size: int | None = None) -> None:
    """Refuse samples whose log-probs do not line up with their tokens (scored under another
    tokenizer), or, given ``tokenizer``, whose token ids decode to other text or fall outside
    the model's vocabulary (``vocab_size``: rows of the output embedding, which may exceed the
    tokenizer's length: padded vocabularies)."""
    for r in rows:
        for label in labels:
            if label not in r.logprobs:
                raise TwinlensError(
                    f"Sample {r.problem_id}#{r.sample_index} has no log-probs under {label!r} (has "
                    f"{sorted(r.logprobs)}); score the samples under both models, or pass models=."
                )
            if len(r.logprobs[label]) != len(r.completion_ids):
                raise TwinlensError(
                    f"Sample {r.problem_id}#{r.sample_index}: {len(r.logprobs[label])} log-probs under "
                    f"{label!r} for {len(r.completion_ids)} completion tokens: the samples were scored "
                    "with a different tokenizer. Rescore them with the pair's models (models=...)."
                )
    if tokenizer is None:
        return
    vocab_size = max(len(tokenizer), vocab_size or 0)
    for r in rows:
        ids = list(r.prompt_ids) + list(r.completion_ids)
        if ids and max(ids) >= vocab_size:
            raise TwinlensError(
                f"Sample {r.problem_id}#{r.sample_index} holds token id {max(ids)} >= the models' "
                f"vocabulary size {vocab_size}: it was tokenized by a different tokenizer. Sample "
                "again with these models."
            )
        text = tokenizer.decode(list(r.completion_ids), skip_special_tokens=True)
        if text != r.text:
            raise TwinlensError(
                f"Sample {r.problem_id}#{r.sample_index}: its token ids decode to {text[:40]!r} under "
                f"the models' tokenizer, but the sample's text is {r.text[:40]!r}: it was tokenized "
                "by a different tokenizer. Sample again with these models."
            )


def _rescore(rows: list[SampleRow], family: dict, labels: Sequence[str], batch_size: int) -> list[dict[str, list[float]]]:
    """Per-token log-probs of completion + eos (finished rows) under each label's model."""
    out: list[dict[str, list[float]]] = [{} for _ in rows]
    for label in labels:
        model = family[label]
        eos = model.tokenizer.eos_token_id
        comps = [list(r.completion_ids) + ([eos] if r.finished and eos is not None else []) for r in rows]
        scores = score_completions(model, [r.prompt_ids for r in rows], comps, batch_size=batch_size)
        for d, s in zip(out, scores, strict=True):
            d[label] = s
    return out


def mass_moved(delta: np.ndarray, correct: np.ndarray) -> dict[str, float]:
    """Importance-weighted masses moved within one problem: {down,up}_{incorrect,correct}.
    delta: Float[ndarray, "samples"] log p_rl - log p_base of trajectories drawn from the base;
    correct: Bool[ndarray, "samples"]."""
    w = np.exp(np.clip(delta.astype(np.float64), -700, 700))
    n = len(w)
    inc, cor = ~correct, correct
    return {
        "down_incorrect": float(np.maximum(1 - w, 0)[inc].sum() / n),
        "up_incorrect": float(np.maximum(w - 1, 0)[inc].sum() / n),
        "down_correct": float(np.maximum(1 - w, 0)[cor].sum() / n),
        "up_correct": float(np.maximum(w - 1, 0)[cor].sum() / n),
    }


def _share(down_inc: np.ndarray, up_cor: np.ndarray) -> float:
    total = down_inc.sum() + up_cor.sum()
    return float(down_inc.sum() / total) if total > 0 else math.nan


def measure_suppression(
    samples: Samples | Sequence[SampleRow],
    *,
    base: str = "base",
    rl: str = "rl",
    models: Any = None,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    batch_size: int = 32,
) -> SuppressionResult:
    """Delta log p of correct and incorrect base trajectories, the suppression share and where
    along the trajectory the change sits (module docstring).

    samples: rows drawn by ``base`` (others are ignored), graded, scored under ``base`` and
    ``rl``. models: optional ModelPair / {label: Model} holding both; then the samples are
    checked against the models' tokenizer and rescored with the eos included.
    """
    rows = _base_rows(samples, base)
    warnings: list[str] = []
    meta = samples.meta if isinstance(samples, Samples) else {}
    if meta and (meta.get("temperature", 1.0) != 1.0 or meta.get("top_p", 1.0) != 1.0):
        warnings.append(
            f"samples drawn at temperature {meta.get('temperature')}, top-p {meta.get('top_p')}: the "
            "importance weights assume the base's untempered distribution (temperature 1, top-p 1); "
            "masses and the share are biased."
        )
    eos_scored = models is not None
    if models is not None:
        family = as_model_family(models)
        for label in (base, rl):
            if label not in family:
                raise TwinlensError(f"Model {label!r} not among the models given ({list(family)}).")
        out_emb = family[base].hf.get_output_embeddings()
        check_tokenization(rows, [], family[base].tokenizer,
                           vocab_size=getattr(out_emb, "out_features", None) or family[base].hf.config.vocab_size)
        token_lp = _rescore(rows, family, (base, rl), batch_size)
    else:
        check_tokenization(rows, (base, rl))
        token_lp = [{base: r.logprobs[base], rl: r.logprobs[rl]} for r in rows]

    problems = list(dict.fromkeys(r.problem_id for r in rows))
    pindex = {p: i for i, p in enumerate(problems)}
    prob_of = np.array([pindex[r.problem_id] for r in rows])
    delta = np.array([sum(lp[rl]) - sum(lp[base]) for lp in token_lp], dtype=np.float64)
    correct = np.array([bool(r.correct) for r in rows])
    weight = np.exp(np.clip(delta, -700, 700))  # p_rl / p_base of each trajectory

    # Per-problem masses, then a cluster bootstrap over problems.
    per = {k: np.zeros(len(problems)) for k in ("down_incorrect", "up_incorrect", "down_correct", "up_correct")}
    ess, mean_w, rl_acc = np.zeros(len(problems)), np.zeros(len(problems)), np.zeros(len(problems))
    for i in range(len(problems)):
        sel = prob_of == i
        for k, v in mass_moved(delta[sel], correct[sel]).items():
            per[k][i] = v
        w = weight[sel]
        mean_w[i] = w.mean()
        ess[i] = w.sum() ** 2 / (w**2).sum() / sel.sum()
        rl_acc[i] = np.mean(w * correct[sel])
    rng = np.random.default_rng(seed)
    boot = bootstrap_indices(rng, len(problems), n_boot)
    q = [(1 - ci) / 2, 1 - (1 - ci) / 2]
    share = _share(per["down_incorrect"], per["up_correct"])
    shares = np.array([_share(per["down_incorrect"][b], per["up_correct"][b]) for b in boot])
    shares = shares[np.isfinite(shares)]
    share_ci = tuple(float(x) for x in np.quantile(shares, q)) if len(shares) else (math.nan, math.nan)

    delta_stats = {}
    for name, mask in (("correct", correct), ("incorrect", ~correct)):
        vals = delta[mask]
        if len(vals) == 0:
            delta_stats[name] = DeltaStats(math.nan, (math.nan, math.nan), 0, math.nan, vals)
            warnings.append(f"no {name} trajectory among the base samples: its delta log p is undefined.")
            continue
        sums = np.bincount(prob_of[mask], weights=vals, minlength=len(problems))
        counts = np.bincount(prob_of[mask], minlength=len(problems)).astype(float)
        bs, bc = sums[boot].sum(1), counts[boot].sum(1)
        bm = bs[bc > 0] / bc[bc > 0]
        delta_stats[name] = DeltaStats(float(vals.mean()), tuple(float(x) for x in np.quantile(bm, q)),
                                       int(len(vals)), float(np.median(vals)), vals)

    by_label, by_role, by_position, first_token = _per_token(rows, token_lp, base, rl, correct, eos_scored)
    diagnostics = {
        "mean_weight": float(mean_w.mean()),  # E_base[p_rl/p_base] = 1 under the assumptions
        "ess_fraction": float(ess.mean()),  # effective sample size / n, mean over problems
        "max_delta": float(delta.max()), "min_delta": float(delta.min()),
        "base_accuracy": float(correct.mean()),
        # IW estimate of the RL model's accuracy on these problems (checks the weights).
        "rl_accuracy_iw": float(rl_acc.mean()),
    }
    if abs(diagnostics["mean_weight"] - 1) > 0.15:
        warnings.append(
            f"mean importance weight {diagnostics['mean_weight']:.2f} (expected 1): the base samples "
            "do not cover where the RL model puts its mass; masses are unreliable (draw more samples)."
        )
    return SuppressionResult(
        base=base, rl=rl, delta_logp=delta_stats, suppression_share=share,
        suppression_share_ci=share_ci, mass={k: float(v.mean()) for k, v in per.items()},
        by_label=by_label, by_role=by_role, by_position=by_position, first_token=first_token,
        diagnostics=diagnostics,
        n_problems=len(problems), n_samples=len(rows), eos_scored=eos_scored, seed=seed,
        warnings=warnings,
    )


def _per_token(rows, token_lp, base, rl, correct, eos_scored):
    """Token-level delta by label, by role, by relative position, and at the first token (the
    choice of format: in the organism ``#`` answers directly, a digit starts a step), per class."""
    acc: dict[str, dict[str, list[float]]] = {"all": defaultdict(list), "correct": defaultdict(list),
                                              "incorrect": defaultdict(list)}
    pos: dict[str, list[list[float]]] = {k: [[] for _ in range(N_POSITION_BINS)] for k in acc}
    first: dict[str, list[float]] = {k: [] for k in acc}
    for r, lp, c in zip(rows, token_lp, correct, strict=True):
        d = np.asarray(lp[rl]) - np.asarray(lp[base])
        labels = r.token_labels()
        if len(d) == len(labels) + 1:  # the scored eos
            labels = [*labels, "end"]
        cls = "correct" if c else "incorrect"
        if len(d):
            first["all"].append(float(d[0]))
            first[cls].append(float(d[0]))
        for t, (lab, v) in enumerate(zip(labels, d.tolist(), strict=True)):
            b = min(N_POSITION_BINS - 1, int(N_POSITION_BINS * t / len(d)))
            for k in ("all", cls):
                acc[k][lab].append(v)
                pos[k][b].append(v)

    def summarise(groups: dict[str, list[float]]) -> dict[str, dict[str, float]]:
        total_abs = sum(float(np.abs(v).sum()) for v in groups.values()) or math.nan
        return {k: {"mean_delta": float(np.mean(v)), "mean_abs_delta": float(np.mean(np.abs(v))),
                    "share_of_abs_change": float(np.abs(v).sum() / total_abs), "n_tokens": len(v)}
                for k, v in sorted(groups.items()) if v}

    by_label = {k: summarise(g) for k, g in acc.items()}
    by_role = {}
    for k, g in acc.items():
        roles: dict[str, list[float]] = defaultdict(list)
        for lab, v in g.items():
            roles[token_role(lab)] += v
        by_role[k] = summarise(roles)
    by_position = {k: [float(np.mean(b)) if b else math.nan for b in bins] for k, bins in pos.items()}
    first_token = {}
    for k, v in first.items():
        total_abs = sum(float(np.abs(x).sum()) for x in acc[k].values())
        first_token[k] = {"mean_delta": float(np.mean(v)) if v else math.nan,
                          "share_of_abs_change": float(np.abs(v).sum() / total_abs) if total_abs else math.nan,
                          "n": len(v)}
    return by_label, by_role, by_position, first_token


def plot_delta_logp(result: SuppressionResult, ax=None, bins: int = 40):
    """Histograms of delta log p(trajectory) for correct and incorrect base samples."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    vals = [v.values for v in result.delta_logp.values() if len(v.values)]
    if not vals:
        return ax
    allv = np.concatenate(vals)
    edges = np.linspace(allv.min(), allv.max() + 1e-9, bins + 1)
    for name, color in (("correct", "tab:green"), ("incorrect", "tab:red")):
        s = result.delta_logp[name]
        if len(s.values):
            ax.hist(s.values, bins=edges, alpha=0.5, color=color, density=True,
                    label=f"{name} (n={s.n}, mean {s.mean:+.2f} [{s.ci[0]:+.2f}, {s.ci[1]:+.2f}])")
            ax.axvline(s.mean, color=color, lw=1)
    ax.axvline(0, color="k", lw=0.5)
    ax.set_xlabel(f"log p_{result.rl} - log p_{result.base} of base trajectories (nats)")
    ax.set_ylabel("density")
    ax.set_title(f"suppression share {result.suppression_share:.2f} "
                 f"[{result.suppression_share_ci[0]:.2f}, {result.suppression_share_ci[1]:.2f}]")
    ax.legend(fontsize=7)
    return ax
