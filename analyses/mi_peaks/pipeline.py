"""The whole MI-peaks comparison for a family of models on one problem set.

Two kinds of text per model:

- ``own``: each model's own greedy completions (the paper's protocol). A model that answers
  without reasoning has trajectories too short for peaks (< 4 tokens); they are counted.
- ``reference``: every model reads the SAME teacher-forced reference solutions that contain the
  task's strategies (for the organism: a wrong step, ``wait;`` and the correction, then the
  ``chk`` pass). This separates "the model has MI peaks at strategy tokens when it reads them"
  from "the model writes strategy tokens" -- the question whether RL creates the peaks or the
  base already has them.

Gold text (for both): prompt + a correct step-by-step solution (ends with the answer's two digits).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from analyses.mi_peaks.comparison import (
    STRATEGIES_OF_INTEREST,
    ModelMiSummary,
    compute_mi,
    label_trajectories,
    paired_difference,
    summarise_model,
    usable,
)
from analyses.mi_peaks.estimators import PAPER_SIGMA
from analyses.mi_peaks.interventions import (
    peak_token_suppression,
    random_token_ids,
    thinking_token_scaling,
)
from analyses.mi_peaks.peaks import DEFAULT_TOP_K
from analyses.mi_peaks.trajectories import Trajectory, collect_trajectories, greedy_trajectories
from analyses.task import Task, TaskProblem
from hooks import Model, TwinlensError

TEXT_KINDS = ("own", "reference")
PAIRED_KEYS = ("mi_mean", "mi_std", "n_peaks", "peak_ratio", "aom")


@dataclass
class MiProblemSet:
    """What the comparison needs from a task: problems, gold texts, optional reference texts."""

    task: Task
    problems: list[TaskProblem]
    gold_texts: list[str]  # reference solution text per problem (prompt + worked solution)
    reference_completions: list[str] | None = None  # teacher-forced texts with strategies
    append_texts: tuple[str, ...] = ()  # thinking tokens for test-time scaling


def organism_problem_set(n: int, seed: int = 0, difficulty: int = 4, variant: str = "sum") -> MiProblemSet:
    """Held-out organism problems (tier ``difficulty``: operands per problem, 2..6); gold = prompt +
    correct step solution; reference = the verify format with one wrong step (a slip the corpus
    writes: the step's true value off by 1 or 10, mod 100) followed by ``wait;`` and its correction,
    so it holds compute, backtracking and verification spans."""
    from analyses.task import organism_task
    from organism import task as ot

    task = organism_task(difficulty=difficulty, variant=variant)
    problems = task.problems(n, seed)
    rng = random.Random(f"mi-peaks-reference/{seed}")
    gold, refs = [], []
    for p in problems:
        src = p.source
        gold.append(p.prompt + ot.write_completion(src, "step"))
        step = rng.randrange(len(src.operands) - 1)
        true = ot.answer_of(src.operands[: step + 2], src.variant)  # what that step writes when right
        wrong = (true + rng.choice((-10, -1, 1, 10))) % ot.MODULUS
        refs.append(ot.write_completion(src, "verify", wrong_step=step, wrong_value=wrong, backtrack=True))
    return MiProblemSet(task=task, problems=problems, gold_texts=gold, reference_completions=refs,
                        append_texts=("wait;", "chk "))


@dataclass
class MiPeaksConfig:
    layer: int | None = None  # None = last block, before the final norm
    method: str = "hsic_paper"
    sigma: float = PAPER_SIGMA
    top_k: int = DEFAULT_TOP_K
    max_new_tokens: int | None = None  # None = the task's
    texts: tuple[str, ...] = TEXT_KINDS
    strategies: tuple[str, ...] = STRATEGIES_OF_INTEREST
    n_boot: int = 2000
    n_permutations: int = 10000
    hsic_permutations: int = 200
    interventions: bool = True
    n_ban: int = 3  # peak-token types banned in the suppression test
    n_random_bans: int = 3
    seed: int = 0


@dataclass
class MiPeaksResult:
    config: MiPeaksConfig
    models: dict[str, str]  # label -> model name/path
    summaries: dict[str, dict[str, ModelMiSummary | None]]  # text kind -> label -> summary
    paired: dict[str, dict[str, dict[str, Any]]]  # text kind -> "rl-base" -> key -> Estimate
    errors: dict[str, dict[str, str]] = field(default_factory=dict)  # why a summary is None
    trajectories: dict[str, dict[str, list[Trajectory]]] = field(repr=False, default_factory=dict)
    interventions: dict[str, dict[str, Any]] = field(default_factory=dict)


def model_trajectories(
    model: Model, problem_set: MiProblemSet, kind: str, cfg: MiPeaksConfig
) -> list[Trajectory]:
    """Trajectories (MI filled, labelled, graded) of one model on one kind of text."""
    ps = problem_set
    prompts = [model.encode_prompt(p.prompt) for p in ps.problems]
    ids = [p.id for p in ps.problems]
    max_new = cfg.max_new_tokens or ps.task.max_new_tokens
    if kind == "own":
        trajs = greedy_trajectories(model, prompts, ps.gold_texts, cfg.layer, max_new, problem_ids=ids)
    elif kind == "reference":
        if ps.reference_completions is None:
            raise TwinlensError("texts='reference' needs reference completions in the problem set.")
        comps = [model.tokenizer(c, add_special_tokens=False)["input_ids"] for c in ps.reference_completions]
        trajs = collect_trajectories(model, prompts, comps, ps.gold_texts, cfg.layer, None, ids)
    else:
        raise TwinlensError(f"Unknown text kind {kind!r}; valid: {TEXT_KINDS}.")
    label_trajectories(trajs, model.tokenizer, ps.task.label_strategies, ps.task.char_tokens,
                       ps.task.answer_span)
    if kind == "own":  # a reference text is correct by construction: nothing to grade
        for t, p in zip(trajs, ps.problems, strict=True):
            t.correct = bool(ps.task.grade(p, t.text))
    compute_mi(trajs, cfg.method, cfg.sigma)
    return trajs


def run_mi_peaks(
    models: Mapping[str, Model],
    problem_set: MiProblemSet,
    cfg: MiPeaksConfig | None = None,
    progress: Callable[[str], None] | None = None,
) -> MiPeaksResult:
    """Trajectories, peaks, controls and (optionally) interventions for each model; paired
    differences of every model against the first one (the base)."""
    cfg = cfg or MiPeaksConfig()
    say = progress or (lambda msg: None)
    labels = list(models)
    if not labels:
        raise TwinlensError("No models given.")
    summaries: dict[str, dict[str, ModelMiSummary | None]] = {}
    errors: dict[str, dict[str, str]] = {}
    all_trajs: dict[str, dict[str, list[Trajectory]]] = {}
    for kind in cfg.texts:
        summaries[kind], all_trajs[kind], errors[kind] = {}, {}, {}
        for label in labels:
            say(f"{kind} texts: {label}")
            trajs = model_trajectories(models[label], problem_set, kind, cfg)
            all_trajs[kind][label] = trajs
            try:
                summaries[kind][label] = summarise_model(
                    label, models[label], trajs, cfg.method, cfg.sigma, cfg.top_k, cfg.strategies,
                    cfg.n_boot, cfg.n_permutations, cfg.hsic_permutations, cfg.seed,
                )
            except TwinlensError as exc:  # e.g. every trajectory too short: reported, not fatal
                summaries[kind][label] = None
                errors[kind][label] = str(exc)
    paired = {
        kind: {
            f"{label}-{labels[0]}": {
                key: asdict(paired_difference(summaries[kind][labels[0]], summaries[kind][label], key,
                                              cfg.n_boot, cfg.seed))
                for key in PAIRED_KEYS
            }
            for label in labels[1:]
            if summaries[kind][labels[0]] is not None and summaries[kind][label] is not None
        }
        for kind in cfg.texts
    }
    result = MiPeaksResult(config=cfg, models={k: m.name for k, m in models.items()},
                           summaries=summaries, paired=paired, errors=errors, trajectories=all_trajs)
    if cfg.interventions and "own" in cfg.texts:
        for label in labels:
            if summaries["own"][label] is None:
                result.interventions[label] = {"skipped": errors["own"][label]}
                continue
            say(f"interventions: {label}")
            result.interventions[label] = run_interventions(
                models[label], problem_set, all_trajs["own"][label], summaries["own"][label], cfg
            )
    return result


def run_interventions(
    model: Model, problem_set: MiProblemSet, trajs: Sequence[Trajectory], summary: ModelMiSummary,
    cfg: MiPeaksConfig,
) -> dict[str, Any]:
    """Peak-token suppression and thinking-token scaling on one model's own greedy texts."""
    ps = problem_set
    prompts = [model.encode_prompt(p.prompt) for p in ps.problems]

    def grade(i: int, text: str) -> bool:
        return bool(ps.task.grade(ps.problems[i], text))

    max_new = cfg.max_new_tokens or ps.task.max_new_tokens
    eos = model.tokenizer.eos_token_id
    vocab_used = sorted({t for tr in trajs for t in tr.completion_ids})
    # Peak tokens by frequency: ids of the emitted tokens at the summary's IQR peaks (its
    # per_problem rows are the usable trajectories, in order).
    counts = Counter(tr.emitted_ids[i] for tr, row in zip(usable(trajs)[0], summary.per_problem, strict=True)
                     for i in row["peaks"])
    counts.pop(eos, None)
    out: dict[str, Any] = {}
    top = [t for t, _ in counts.most_common(cfg.n_ban)]
    if top and len(vocab_used) > len(top):
        out["suppression"] = asdict(peak_token_suppression(
            model, prompts, grade, top, vocab_used, max_new, cfg.n_random_bans, cfg.seed))
    else:
        out["suppression"] = {"skipped": "no non-eos peak tokens or too few other token types"}
    completions = [tr.completion_ids for tr in trajs]
    scaling = {}
    # A language with spaces between words gets " Wait" after a word; the organism's has none.
    boundary = not ps.task.char_tokens
    for text in ps.append_texts:
        scaling[text] = asdict(thinking_token_scaling(model, prompts, completions, grade, text, max_new,
                                                      ps.task.extract_answer, word_boundary=boundary))
        # The control appends as many tokens as the thinking text does after a sentence.
        n_tok = len(model.encode_continuation(text, "x.", word_boundary=boundary))
        ctrl_ids = random_token_ids(model, vocab_used, n_tok, cfg.seed)
        scaling[f"control:{text}"] = asdict(thinking_token_scaling(
            model, prompts, completions, grade, model.decode(ctrl_ids), max_new, ps.task.extract_answer,
            append_ids=ctrl_ids))
    out["thinking_token_scaling"] = scaling
    return out


SERIES_KEYS = ("mi_mean", "mi_std", "peaks_per_trajectory", "peak_ratio", "aom")


def summary_scalars(summary: ModelMiSummary | None) -> dict[str, Any]:
    """The headline numbers of a summary (for series over checkpoints)."""
    if summary is None:
        return {}
    d = summary.to_dict()
    out = {k: d[k] for k in SERIES_KEYS}
    out.update({f"{k}_ci": d[f"{k}_ci"] for k in SERIES_KEYS})
    e = summary.peaks_at_strategy_tokens
    out.update(strategy_share=e.share, strategy_chance=e.chance, strategy_p=e.p_permutation,
               marker_share=summary.peaks_at_strategy_markers.share,
               marker_chance=summary.peaks_at_strategy_markers.chance,
               n_used=summary.n_used, n_too_short=summary.n_too_short,
               accuracy=summary.accuracy.value if summary.accuracy else None)
    return out


def checkpoint_series(
    checkpoints: Sequence[tuple[int, str, Model]], problem_set: MiProblemSet,
    cfg: MiPeaksConfig, progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Headline numbers per (step, name, model), for every text kind, in step order (cheaper
    controls: ``headline_scalars``)."""
    say = progress or (lambda msg: None)
    out = []
    for step, name, model in sorted(checkpoints, key=lambda c: c[0]):
        row: dict[str, Any] = {"step": step, "name": name}
        for kind in cfg.texts:
            say(f"checkpoint {name}: {kind} texts")
            trajs = model_trajectories(model, problem_set, kind, cfg)
            row[kind] = headline_scalars(name, model, trajs, cfg, cfg.method, cfg.sigma)
        out.append(row)
    return out


def headline_scalars(
    label: str, model: Model, trajectories: Sequence[Trajectory], cfg: MiPeaksConfig, method: str, sigma: float,
) -> dict[str, Any]:
    """``summary_scalars`` of MI-filled trajectories with cheaper controls than the main comparison
    (1000 bootstrap draws, 2000 permutations, no population HSIC), or {"error": why}."""
    try:
        summ = summarise_model(label, model, trajectories, method, sigma, cfg.top_k, cfg.strategies,
                               1000, 2000, 0, cfg.seed)
    except TwinlensError as exc:
        return {"error": str(exc)}
    return summary_scalars(summ)
