"""Two phases of RL (Wang et al.; RESEARCH.md section 2): does RL first consolidate execution
(execution-token entropy falls) and only then change the strategy mix (strategy diversity
changes)? Measured over intermediate checkpoints of one RL run, ordered by their recorded step.

At each checkpoint, on the checkpoint's *own* samples (n per problem, the same problems at every
checkpoint):

- entropy: the checkpoint's full next-token entropy (nats) at positions that predict a token of
  each role (``analyses.suppression.token_role``: execution = compute steps, strategy =
  verification/backtracking, answer, end, other), mean over tokens;
- perplexity: exp(mean negative log-prob of the sampled tokens) of each role;
- strategy diversity ("semantic entropy"): each completion is read as its sequence of strategy
  moves (the task's spans in order, consecutive repeats collapsed, then the answer), padded with
  start/end markers; the Shannon entropy (bits) of the pooled frequencies of its n-grams.

CIs: percentile bootstrap over problems (each checkpoint separately).

Change-point rule (``detect_phases``). For a series m(s) over steps s_0 < ... < s_K:
- execution entropy *falls* when its largest drop below m(s_0) is significant (the CI at the
  lowest point lies wholly below the CI at s_0); its half-change step t_exec is the first step
  whose drop reaches half of that largest drop;
- strategy diversity *changes* when its largest absolute change from m(s_0) is significant
  (non-overlapping CIs); t_strategy = the first step reaching half of that change.
- Two phases iff both are significant and t_exec < t_strategy; then ``phase_switch_step`` =
  t_strategy (by this step the second phase, the change of strategy, is under way while
  execution had consolidated earlier). Otherwise ``phase_switch_step`` is None and ``reason``
  says which condition failed.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from analyses.drift import token_entropy
from analyses.sampling import SampleRow, iter_completion_logprobs
from analyses.suppression import token_role
from hooks.errors import TwinlensError
from hooks.validation import bootstrap_indices

ROLES = ("execution", "strategy")


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint folder with its recorded training step and compute."""

    name: str
    path: Path
    step: int
    compute: float


def read_checkpoint(spec: str | os.PathLike, name: str | None = None) -> Checkpoint:
    """Checkpoint ``spec`` (organism name or folder) with the step and compute recorded in its
    training_info.json; refuses one that records neither (they order the phase curves)."""
    from analyses.sampling import compute_of, resolve_model_spec

    label, path = resolve_model_spec(spec)
    path = Path(path)
    info_path = path / "training_info.json"
    if not info_path.is_file():
        raise TwinlensError(
            f"Checkpoint {spec} has no training_info.json; the phase and plasticity analyses order "
            'checkpoints by their RL step: write {"step": N, "compute": C} into '
            f"{info_path} (organism.training.train_rl does)."
        )
    info = json.loads(info_path.read_text())
    step = info.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        raise TwinlensError(
            f"Checkpoint {spec}: training_info.json records no integer 'step' (got {step!r}); add "
            "the RL step it was saved at."
        )
    compute = compute_of(info)
    if compute is None:
        raise TwinlensError(
            f"Checkpoint {spec}: training_info.json records no compute ('compute', 'samples_seen' or "
            "'tokens_generated'); add the training compute spent up to this step."
        )
    return Checkpoint(name or label, path, step, compute)


def order_checkpoints(specs: Sequence[str | os.PathLike]) -> list[Checkpoint]:
    """Checkpoints sorted by step; of two at the same step the first given is kept."""
    if len(specs) < 2:
        raise TwinlensError(f"Need at least two checkpoints of one run to follow it over training, got {len(specs)}.")
    out: dict[int, Checkpoint] = {}
    for s in specs:
        c = read_checkpoint(s)
        out.setdefault(c.step, c)
    if len(out) < 2:
        raise TwinlensError("Every checkpoint records the same step; give checkpoints from different steps.")
    return [out[k] for k in sorted(out)]


def strategy_moves(row: SampleRow) -> list[str]:
    """The completion as its sequence of strategy moves (spans in order, repeats collapsed),
    closed by ``answer`` when it gives one."""
    moves: list[str] = []
    for name, _, _ in sorted(row.strategy_spans, key=lambda s: s[1]):
        if not moves or moves[-1] != name:
            moves.append(name)
    if row.answer_span is not None:
        moves.append("answer")
    return moves


def strategy_ngram_entropy(rows: Sequence[SampleRow], n: int = 2) -> float:
    """Shannon entropy (bits) of the pooled frequencies of strategy-move n-grams."""
    counts: Counter = Counter()
    for r in rows:
        seq = ["<s>", *strategy_moves(r), "</s>"]
        counts.update(tuple(seq[i : i + n]) for i in range(max(1, len(seq) - n + 1)))
    total = sum(counts.values())
    if total == 0:
        return math.nan
    p = np.array(list(counts.values()), dtype=float) / total
    return float(-(p * np.log2(p)).sum())


@dataclass
class PhasePoint:
    """Measurements at one checkpoint (entropy in nats, diversity in bits)."""

    name: str
    step: int
    compute: float
    entropy: dict[str, float]  # role -> mean next-token entropy
    entropy_ci: dict[str, tuple[float, float]]
    perplexity: dict[str, float]  # role -> exp(mean NLL of the sampled tokens)
    strategy_entropy: float
    strategy_entropy_ci: tuple[float, float]
    accuracy: float
    n_samples: int
    n_tokens: dict[str, int]


@dataclass
class PhaseResult:
    points: list[PhasePoint]
    t_exec: int | None  # half-change step of execution entropy (None: no significant fall)
    t_strategy: int | None  # half-change step of strategy diversity (None: no significant change)
    exec_falls: bool
    strategy_changes: bool
    strategy_direction: str  # "up" | "down" | "none"
    two_phase: bool
    phase_switch_step: int | None
    reason: str
    ngram: int
    seed: int
    rule: str = field(default=(
        "half-change steps: first checkpoint reaching half of the largest significant (non-overlapping "
        "bootstrap CIs) change from the first checkpoint; two phases iff execution entropy falls, "
        "strategy diversity changes, and t_exec < t_strategy; phase_switch_step = t_strategy"))

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return {**{k: v for k, v in asdict(self).items() if k != "points"},
                "points": [asdict(p) for p in self.points]}


def _boot_ci(per_problem: Mapping[str, list[float]], boot: np.ndarray, ids: list[str], q) -> tuple[float, float]:
    sums = np.array([sum(per_problem.get(p, [])) for p in ids])
    cnts = np.array([len(per_problem.get(p, [])) for p in ids], dtype=float)
    bs, bc = sums[boot].sum(1), cnts[boot].sum(1)
    ok = bc > 0
    if not ok.any():
        return (math.nan, math.nan)
    return tuple(float(x) for x in np.quantile(bs[ok] / bc[ok], q))


@torch.no_grad()
def measure_phase_point(
    model: Any,
    rows: Sequence[SampleRow],
    checkpoint: Checkpoint,
    *,
    ngram: int = 2,
    n_boot: int = 1000,
    seed: int = 0,
    ci: float = 0.95,
    batch_size: int = 32,
) -> PhasePoint:
    """Entropy / perplexity per role and strategy diversity of ``model`` on its own samples
    ``rows`` (drawn by it, graded, with strategy spans)."""
    if not rows:
        raise TwinlensError(f"No samples of checkpoint {checkpoint.name!r}.")
    ent: dict[str, dict[str, list[float]]] = {r: defaultdict(list) for r in ROLES}
    nll: dict[str, list[float]] = defaultdict(list)
    it = iter_completion_logprobs(model, [r.prompt_ids for r in rows], [r.completion_ids for r in rows], batch_size)
    for row, lp in zip(rows, it, strict=True):
        if lp.shape[0] == 0:
            continue
        h = token_entropy(lp).tolist()
        own = lp.gather(-1, torch.tensor(row.completion_ids)[:, None]).squeeze(-1).tolist()
        for lab, hv, ov in zip(row.token_labels(), h, own, strict=True):
            role = token_role(lab)
            if role in ent:
                ent[role][row.problem_id].append(hv)
                nll[role].append(-ov)
    ids = list(dict.fromkeys(r.problem_id for r in rows))
    rng = np.random.default_rng(seed)
    boot = bootstrap_indices(rng, len(ids), n_boot)
    q = [(1 - ci) / 2, 1 - (1 - ci) / 2]
    entropy = {r: float(np.mean([v for vs in ent[r].values() for v in vs])) if ent[r] else math.nan for r in ROLES}
    entropy_ci = {r: _boot_ci(ent[r], boot, ids, q) for r in ROLES}
    by_problem: dict[str, list[SampleRow]] = defaultdict(list)
    for r in rows:
        by_problem[r.problem_id].append(r)
    div = strategy_ngram_entropy(rows, ngram)
    bdiv = [strategy_ngram_entropy([r for i in b for r in by_problem[ids[i]]], ngram) for b in boot[: min(n_boot, 300)]]
    return PhasePoint(
        name=checkpoint.name, step=checkpoint.step, compute=checkpoint.compute, entropy=entropy,
        entropy_ci=entropy_ci,
        perplexity={r: float(math.exp(np.mean(nll[r]))) if nll[r] else math.nan for r in ROLES},
        strategy_entropy=div, strategy_entropy_ci=tuple(float(x) for x in np.quantile(bdiv, q)),
        accuracy=float(np.mean([bool(r.correct) for r in rows])) if rows[0].correct is not None else math.nan,
        n_samples=len(rows), n_tokens={r: len(nll[r]) for r in ROLES},
    )


def _half_change(steps: Sequence[int], change: np.ndarray) -> int:
    target = 0.5 * change.max()
    return int(steps[int(np.argmax(change >= target))])


def detect_phases(points: Sequence[PhasePoint], ngram: int = 2, seed: int = 0) -> PhaseResult:
    """Apply the change-point rule of the module docstring to points ordered by step."""
    if len(points) < 3:
        raise TwinlensError(f"Detecting two phases needs at least three checkpoints, got {len(points)}.")
    pts = sorted(points, key=lambda p: p.step)
    steps = [p.step for p in pts]
    ex = np.array([p.entropy["execution"] for p in pts])
    ex_lo = np.array([p.entropy_ci["execution"][0] for p in pts])
    ex_hi = np.array([p.entropy_ci["execution"][1] for p in pts])
    st = np.array([p.strategy_entropy for p in pts])
    st_lo = np.array([p.strategy_entropy_ci[0] for p in pts])
    st_hi = np.array([p.strategy_entropy_ci[1] for p in pts])
    if not np.isfinite(ex).all() or not np.isfinite(st).all():
        raise TwinlensError("A checkpoint has no execution tokens or no strategy moves in its samples; "
                            "draw more samples per checkpoint.")
    drop = ex[0] - ex
    k = int(np.argmax(drop))
    exec_falls = bool(drop[k] > 0 and ex_hi[k] < ex_lo[0])
    t_exec = _half_change(steps, np.maximum(drop, 0)) if exec_falls else None
    change = np.abs(st - st[0])
    j = int(np.argmax(change))
    strategy_changes = bool(change[j] > 0 and (st_lo[j] > st_hi[0] or st_hi[j] < st_lo[0]))
    direction = ("up" if st[j] > st[0] else "down") if strategy_changes else "none"
    t_strat = _half_change(steps, change) if strategy_changes else None
    if not exec_falls:
        reason = "execution-token entropy does not fall significantly over the run"
    elif not strategy_changes:
        reason = "strategy diversity does not change significantly over the run"
    elif t_exec >= t_strat:
        reason = (f"strategy diversity changes no later than execution entropy falls "
                  f"(t_strategy={t_strat} <= t_exec={t_exec}): no execution-first ordering")
    else:
        reason = f"execution entropy half-fell by step {t_exec}, strategy diversity half-changed by step {t_strat}"
    two = exec_falls and strategy_changes and t_exec < t_strat
    return PhaseResult(points=list(pts), t_exec=t_exec, t_strategy=t_strat, exec_falls=exec_falls,
                       strategy_changes=strategy_changes, strategy_direction=direction, two_phase=two,
                       phase_switch_step=t_strat if two else None, reason=reason, ngram=ngram, seed=seed)


def plot_phases(result: PhaseResult, axes=None):
    """Execution and strategy entropy and strategy diversity against step, the switch marked."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 4))
    ax1, ax2 = axes
    steps = [p.step for p in result.points]
    for role, color in (("execution", "tab:blue"), ("strategy", "tab:orange")):
        y = [p.entropy[role] for p in result.points]
        lo = [p.entropy_ci[role][0] for p in result.points]
        hi = [p.entropy_ci[role][1] for p in result.points]
        ax1.plot(steps, y, "o-", color=color, label=f"{role} tokens")
        ax1.fill_between(steps, lo, hi, color=color, alpha=0.2)
    ax1.set_xlabel("RL step")
    ax1.set_ylabel("next-token entropy (nats)")
    ax1.set_title("token entropy on own samples")
    y = [p.strategy_entropy for p in result.points]
    ax2.plot(steps, y, "o-", color="tab:purple", label=f"strategy {result.ngram}-gram entropy")
    ax2.fill_between(steps, [p.strategy_entropy_ci[0] for p in result.points],
                     [p.strategy_entropy_ci[1] for p in result.points], color="tab:purple", alpha=0.2)
    ax2.set_xlabel("RL step")
    ax2.set_ylabel("strategy diversity (bits)")
    for ax in axes:
        if result.t_exec is not None:
            ax.axvline(result.t_exec, color="tab:blue", ls=":", lw=1, label=f"t_exec={result.t_exec}")
        if result.t_strategy is not None:
            ax.axvline(result.t_strategy, color="tab:purple", ls=":", lw=1, label=f"t_strategy={result.t_strategy}")
        if result.phase_switch_step is not None:
            ax.axvline(result.phase_switch_step, color="k", lw=1.5, label=f"switch={result.phase_switch_step}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax2.set_title("two phases" if result.two_phase else f"no two phases: {result.reason}"[:70], fontsize=8)
    return axes
