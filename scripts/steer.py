#!/usr/bin/env python
"""Steer the base model with strategy vectors (RESEARCH.md section 1, issue 15). Two modes.

--mode search (the default unless --alphas or --vectors is given): does any setting make the base
use a strategy more than random vectors of the same size do?

    python scripts/steer.py --out runs/steer                       # organism base, default search
    python scripts/steer.py --strategies compute --where all,decision_points --fractions 0.05,0.1,0.2,0.4

Candidate directions, per strategy and layer, from the base model's own labelled traces:
`decision_point_contrast` (mean residual at the decision point just before the strategy starts
minus the mean at the other decision points; decision points = the last prompt token and every
reasoning token ending with ; : . ! ? or a newline), `diff_of_means_token_pooled` (Venhoff et al.'s
difference of means against the token-pooled reasoning mean) and, on request,
`diff_of_means_example_mean` (the authors' average of per-example means). Strength = a fraction of
the mean residual norm at the steered layer and positions (--fractions). Positions (--where):
every token, or decision points only (the last prompt token and each generated separator token).
Every setting is screened on --n-screen prompts; per strategy the largest rise that is not
degenerate (analyses.verdicts.is_degenerate: accuracy down > 20% relative, malformed outputs up,
length below 0.5x (a collapse), or length outside [0.5x, 2x] of the unsteered length in the same
formats, since switching strategy changes length by construction) is chosen and measured on --n-problems held-out prompts against
--n-random Gaussian random vectors of the same norm, layer and positions. Passes: the steered
rate's CI lies above the highest random upper CI and the setting is not degenerate (the rule of
analyses.verdicts.verdict_steering). Writes results.json (strategies[s]["best"]: layer,
alpha_fraction, where, vector, rate_at_0, rate, change, ci, random {n, rates, max_upper_ci},
accuracy(_at_0), malformed(_at_0), length_ratio, passes; strategies[s]["screen"]), steering.png
(screened rise per setting), summary.md. Defaults (organism, 2 CPU cores): about 2 minutes (120 s).

--mode sweep (Venhoff et al.'s recipe as published; implied by --alphas or --vectors): add
alpha * v to one layer's output at every position while it generates, and measure each
strategy's frequency, the task accuracy and the output length, beside the same sweep with a
random vector of equal norm (seeded). Sweeps alpha and layer.

    python scripts/steer.py --vectors runs/probe/vectors.safetensors --layers chosen --out runs/steer2
    python scripts/steer.py --base path/base --problems qa.jsonl --labels decision --chat-template \\
        --alphas=-1,0,1 --device cuda --out runs/steer-real

Vectors: read from --vectors (written by scripts/probe.py; difference-of-means vectors of the
base model are used, with the layers probe.py's attribution chose) or found here: sample traces
from the base model, capture its block outputs, difference of means per layer (RESEARCH.md
section 1). Layers: `all`, `chosen` (the attribution-chosen layer of each strategy) or a comma
list. The steering prompts are held out: disjoint from the problems the vectors were fitted on
(here, or as recorded by probe.py in the vector file). Frequency = share of samples that
use the strategy at least once (task labels); CIs: 95% percentile bootstrap over prompts; the
vector and its random control share the sampling seed (alpha = 0 is the same samples).
"Passes" at an alpha > 0: the strategy's frequency rises by >= 3x the change the random vector
causes, and the two frequency CIs do not overlap.
Writes DIR/results.json (per strategy: layer, alpha, frequency, random_frequency, accuracy, ...),
DIR/examples.jsonl (what the steered model wrote: per vector, layer and alpha, the first
completion of the first prompts, beside the random vector's), DIR/steering.png (dose-response
with CIs), DIR/summary.md. Defaults (organism, 2 CPU cores):
about 1 minute (52 s in a `make demo` run, 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from analyses.grading import no_answer_line, no_answer_share  # noqa: E402
from analyses.reporting import save_figure, write_results  # noqa: E402
from analyses.sampling import resolve_model_spec  # noqa: E402
from analyses.task import prompt_id  # noqa: E402
from analyses.verdicts import is_degenerate  # noqa: E402
from hooks import TwinlensError, capture, load_model  # noqa: E402
from probes.attribution import attribute_layers  # noqa: E402
from probes.baselines import DEFAULT_SEPARATORS, decision_point_positions  # noqa: E402
from probes.baselines import _separator_ids as separator_ids_of  # noqa: E402
from probes.datasets import build_dataset  # noqa: E402
from probes.labels import task_labeler, text_labeler  # noqa: E402
from probes.steering import WHERE, Candidate, steering_experiment, steering_search  # noqa: E402
from probes.traces import plan_sample_size, sample_traces  # noqa: E402
from probes.vectors import (  # noqa: E402
    decision_point_contrast_vectors,
    diff_of_means_vectors,
    load_vectors,
    mean_residual_norm,
    read_vectors_info,
    save_vectors,
)
from scripts import _cli as cli  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = cli.make_parser(__doc__)
    ap.add_argument("--base", default="base", help="model to steer: organism checkpoint name, folder or hub id")
    ap.add_argument("--problems", help=cli.PROBLEMS_HELP)
    ap.add_argument("--difficulty", type=cli.difficulty, default=4, help=cli.DIFFICULTY_HELP)
    cli.add_answer_args(ap)
    ap.add_argument("--labels", help="regex label config (JSON) for real text, or a shipped one: 'default' "
                    "(strategy regexes) or 'decision' (sentence / line starts); default: the task's labels")
    cli.add_chat_template_arg(ap)
    ap.add_argument("--vectors", help="vectors.safetensors from scripts/probe.py (default: find them here)")
    ap.add_argument("--strategies", help="comma list (default: every strategy with a vector)")
    ap.add_argument("--layers", type=cli.layer_choice, default="all", help="'all', 'chosen' (attribution) or a comma list")
    ap.add_argument("--mode", choices=("search", "sweep"), default=None,
                    help="search (default) or sweep (implied by --alphas / --vectors); see above")
    ap.add_argument("--alphas", type=cli.alpha_list, default=None,
                    help="sweep: steering coefficients (must include 0; default -1,0,0.5,1,2)")
    ap.add_argument("--vector-kinds", type=_kinds, default="decision_point_contrast,diff_of_means_token_pooled",
                    help=f"search: comma list of candidate kinds among {', '.join(KINDS)}")
    ap.add_argument("--where", type=_wheres, default="decision_points",
                    help="search: comma list of all (every token), decision_points (last prompt token and separators)")
    ap.add_argument("--fractions", type=_fractions, default="0.05,0.1,0.2",
                    help="search: strengths, fractions of the mean residual norm at the layer and positions")
    ap.add_argument("--n-screen", type=cli.positive_int, default=8, help="search: prompts for screening the grid")
    ap.add_argument("--n-screen-samples", type=cli.positive_int, default=2, help="search: samples per screening prompt")
    ap.add_argument("--n-random", type=cli.positive_int, default=5,
                    help="search: random vectors per chosen setting (>= 5 for a verdict)")
    ap.add_argument("--n-problems", type=cli.positive_int, default=24, help="steering prompts (held-out set)")
    ap.add_argument("--n-samples", type=cli.positive_int, default=4, help="samples per prompt and alpha")
    ap.add_argument("--pilot-problems", type=cli.nonnegative_int, default=8,
                    help="problems of a pilot sample that says, before the vector traces are sampled, how many "
                    "traces each strategy needs (0: no pilot; not used with --vectors)")
    ap.add_argument("--vector-problems", type=cli.positive_int, default=300, help="problems for finding the vectors")
    cli.add_sampling_args(ap, temperature=1.0, top_p=None, engine=False)
    ap.add_argument("--n-bootstrap", type=cli.positive_int, default=1000)
    ap.add_argument("--factor", type=cli.positive_float, default=3.0)
    ap.add_argument("--random-seed", type=cli.nonnegative_int, default=1000, help="seed of the random control vectors")
    cli.add_run_args(ap, n_boot=None, batch_size=None,
                     helps={"--threads": "torch CPU threads (default 1; 0 = torch's default)"})
    args = ap.parse_args(argv)
    if args.mode is None:
        args.mode = "sweep" if (args.alphas is not None or args.vectors) else "search"
    if args.mode == "sweep" and args.alphas is None:
        args.alphas = cli.alpha_list("-1,0,0.5,1,2")
    if args.mode == "search" and (args.alphas is not None or args.vectors or args.layers == "chosen"):
        ap.error("--alphas, --vectors and --layers chosen belong to --mode sweep; the search finds its own "
                 "vectors and strengths (--fractions)")
    return args


KINDS = ("decision_point_contrast", "diff_of_means_token_pooled", "diff_of_means_example_mean")


def _split(text: str, allowed: tuple, what: str) -> list[str]:
    items = [x.strip() for x in str(text).split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"{what} must be a comma list among {', '.join(allowed)}; got {text!r}")
    return items


def _kinds(text: str) -> list[str]:
    return _split(text, KINDS, "--vector-kinds")


def _wheres(text: str) -> list[str]:
    return _split(text, WHERE, "--where")


def _fractions(text: str) -> list[float]:
    try:
        vals = [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--fractions must be numbers, e.g. 0.05,0.1,0.2; got {text!r}") from None
    if not vals or any(not (0 < v <= 10) for v in vals):
        raise argparse.ArgumentTypeError(f"--fractions must be in (0, 10] (fractions of the residual norm); got {text!r}")
    return vals


MIN_VECTOR_SEGMENTS = 5  # fewer segments of a strategy in the vector traces and it gets no vector


def plan_vector_traces(model, task, args, max_new: int, problems, labeler) -> dict:
    """Before sampling the vector traces: a pilot on the first --pilot-problems problems says, per
    strategy, how many traces its vector needs (MIN_VECTOR_SEGMENTS segments) at the rate seen."""
    k = min(args.pilot_problems, len(problems))
    if k < 1:
        return {}
    prompts = [model.encode_prompt(p.prompt) for p in problems[:k]]
    pilot = sample_traces({"base": model}, prompts, 1, seed=args.seed + 7, max_new_tokens=max_new,
                          temperature=args.temperature, labeler=labeler)
    names = list(task.strategies) or list(getattr(labeler, "strategies", []))
    return plan_sample_size(pilot, names, len(problems), MIN_VECTOR_SEGMENTS, None)


def find_vectors(model, task, args, max_new: int, problems, labeler):
    """Difference-of-means vectors of every strategy and layer, from the base model's own traces
    on `problems`; returns (vectors, labels) so the attribution can use the same traces."""
    prompts = [model.encode_prompt(p.prompt) for p in problems]
    traces = sample_traces({"base": model}, prompts, 1, seed=args.seed + 2, max_new_tokens=max_new,
                           temperature=args.temperature, labeler=labeler)
    labels = [t.labels for t in traces]
    with tempfile.TemporaryDirectory(prefix="twinlens-steer-") as tmp:
        store = capture(model, [t.token_ids for t in traces], hooks=["blocks.*.hook_out"],
                        out=Path(tmp) / "acts", positions="all", batch_size=64, progress=False)
        ds = build_dataset(store, labels, model=None)
    vectors = []
    for s in ds.strategies:
        if sum(len(lab.spans_of(s)) for lab in labels) >= MIN_VECTOR_SEGMENTS:
            vectors += diff_of_means_vectors(ds, s)
    return vectors, labels


def run_sweep(args) -> tuple[dict, dict]:
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:6.1f}s] {msg}", file=sys.stderr)

    task = cli.load_task_from_args(args)
    labeler = task_labeler(task, args.labels, regex=bool(args.problems))  # a bad --labels file: before loading
    # Decide every problem set before loading anything: the held-out steering prompts exclude
    # the problems the vectors were fitted on (here, or as probe.py recorded them).
    info: dict = {}
    plans: dict = {}
    if args.vectors:
        info = read_vectors_info(args.vectors)
        if args.layers == "chosen" and not info.get("chosen_layers"):
            raise TwinlensError(
                f"--layers chosen: {args.vectors} records no attribution-chosen layers (written by an older "
                "scripts/probe.py); rerun probe.py, or give --layers as a comma list.")
        fit_ids = info.get("fit_problem_ids", [])
        if task.name != info.get("task", task.name):
            log(f"note: the vectors were fitted on task {info['task']!r}, steering runs on {task.name!r}")
        vector_problems = None
    else:
        vector_problems = task.problems(args.vector_problems, seed=args.seed + 2)
        fit_ids = [prompt_id(p.prompt) for p in vector_problems]
    problems = task.problems(args.n_problems, seed=args.seed + 1, exclude=fit_ids)
    name, path = resolve_model_spec(args.base)
    model = load_model(path, device=args.device)
    cli.use_chat_template(args, model)
    max_new = args.max_new_tokens or task.max_new_tokens
    if args.vectors:
        vectors = [v for v in load_vectors(args.vectors)
                   if v.method == "diff_of_means" and v.extra.get("model_key", "base") == "base"]
        if not vectors:
            raise TwinlensError(f"{args.vectors} holds no base-model difference-of-means vectors.")
        labels = None
    else:
        plans = plan_vector_traces(model, task, args, max_new, vector_problems, labeler)
        for plan in plans.values():
            log(f"sample size: {plan.message()}")
        vectors, labels = find_vectors(model, task, args, max_new, vector_problems, labeler)
        save_vectors(Path(args.out) / "vectors.safetensors", vectors,
                     info={"task": task.name, "fit_problem_ids": fit_ids})
        log(f"found {len(vectors)} vectors")
    by_strategy: dict[str, dict[int, object]] = {}
    for v in vectors:
        by_strategy.setdefault(v.strategy, {})[v.layer] = v
    strategies = args.strategies.split(",") if args.strategies else list(by_strategy)
    missing = [s for s in strategies if s not in by_strategy]
    if missing:
        raise TwinlensError(f"No vector for strategies {missing}; vectors exist for {sorted(by_strategy)}.")
    chosen = {}
    if labels is None:
        chosen = {s: {"chosen_layer": int(k), "source": f"{args.vectors} (scripts/probe.py's attribution)"}
                  for s, k in info.get("chosen_layers", {}).items()}
    else:
        for s in strategies:
            att = attribute_layers(model, labels, [by_strategy[s][k] for k in sorted(by_strategy[s])],
                                   max_segments=200, seed=args.seed)
            chosen[s] = att.to_dict()
    selected = []
    for s in strategies:
        if args.layers == "all":
            layers = sorted(by_strategy[s])
        elif args.layers == "chosen":
            if s not in chosen:
                raise TwinlensError(f"--layers chosen: no attribution-chosen layer for {s!r} (chosen for "
                                    f"{sorted(chosen)}); pick --strategies among those, or a comma list of layers.")
            layers = [chosen[s]["chosen_layer"]]
        else:
            layers = [int(x) for x in args.layers.split(",")]
        bad = [k for k in layers if k not in by_strategy[s]]
        if bad:
            raise TwinlensError(
                f"Layer(s) {bad} do not exist for {s!r}: vectors exist for layers {sorted(by_strategy[s])}."
            )
        selected += [by_strategy[s][k] for k in layers]
    alphas = args.alphas
    prompts = [model.encode_prompt(p.prompt) for p in problems]
    graded_answers: list = []

    def grade_fn(i: int, text: str) -> bool:
        graded_answers.append(task.extract_answer(text))
        return task.grade(problems[i], text)

    runs = steering_experiment(
        model, selected, prompts, alphas, label_fn=text_labeler(task, labeler),
        grade_fn=grade_fn, strategies=strategies,
        n_samples=args.n_samples, seed=args.seed, random_seed=args.random_seed,
        max_new_tokens=max_new, temperature=args.temperature, n_bootstrap=args.n_bootstrap,
        factor=args.factor, progress=lambda r: log(f"{r.vector.strategy} layer {r.vector.layer} done"),
    )
    results: dict = {"strategies": {}, "sample_size": {k: v.to_dict() for k, v in plans.items()}}
    for s in strategies:
        mine = [r for r in runs if r.vector.strategy == s]
        per_layer = {str(r.vector.layer): r.to_dict() for r in mine}
        passing = [(r.comparison.change[i], r.vector.layer, a) for r in mine
                   for i, a in enumerate(r.comparison.alphas) if r.comparison.passes[i]]
        best = max(passing) if passing else None
        best_info = None
        if best is not None:
            r = per_layer[str(best[1])]
            k, k0 = r["alpha"].index(best[2]), r["alpha"].index(0.0)
            best_info = {
                "layer": best[1], "alpha": best[2], "change": best[0],
                "accuracy": r["accuracy"][k], "accuracy_at_0": r["accuracy"][k0],
                "length": r["length"][k], "length_at_0": r["length"][k0],
                "length_ratio": r["length"][k] / max(r["length"][k0], 1e-9),
            }
            # the one rule the search and the verdict use (any of accuracy, malformed, length);
            # a sweep has no per-format lengths, so its length criterion is the raw ratio
            best_info["degenerate"], best_info["degenerate_why"] = is_degenerate(best_info)
        results["strategies"][s] = {
            "layers": per_layer,
            "attribution": chosen.get(s),
            "passes": bool(passing),
            "best": best_info,
        }
        if best is not None:  # the headline numbers, flat, at the best passing layer
            r = per_layer[str(best[1])]
            results["strategies"][s].update({k: r[k] for k in ("layer", "alpha", "frequency", "random_frequency", "accuracy")})
    # Over every graded completion (steered and unsteered, every vector and alpha).
    results["no_answer"] = {"all completions": no_answer_share(graded_answers)}
    results["model"] = {"name": name, "path": str(path), "weight_hash": model.weight_hash}
    results["settings"] = {
        "task": task.name, "answer_format": task.answer_format, "alphas": alphas, "n_problems": args.n_problems, "n_samples": args.n_samples,
        "temperature": args.temperature, "max_new_tokens": max_new, "seed": args.seed,
        "random_seed": args.random_seed, "factor": args.factor, "layers": args.layers,
        "vectors": args.vectors or "found here (difference of means, base traces)",
        "labels": getattr(labeler, "name", None) or task.name, "chat_template": bool(args.chat_template),
        "n_excluded_fit_problems": len(fit_ids), "examples": "examples.jsonl",
        "frequency": "share of samples using the strategy at least once",
        "ci": "95% percentile bootstrap over prompts", "seconds": round(time.time() - t0, 1),
    }
    return results, {"runs": runs}


def plot_sweep(runs, out: Path) -> None:
    plt = cli.pyplot()

    strategies = list(dict.fromkeys(r.vector.strategy for r in runs))
    fig, axes = plt.subplots(3, len(strategies), figsize=(4.3 * len(strategies), 9), squeeze=False)
    for j, s in enumerate(strategies):
        mine = [r for r in runs if r.vector.strategy == s]
        for k, r in enumerate(mine):
            c = f"C{k}"
            for ax, key in ((axes[0, j], "freq"), (axes[1, j], "acc"), (axes[2, j], "len")):
                for curve, style in ((r.curve, "o-"), (r.random_curve, "x:")):
                    y, ci = {"freq": (curve.frequency[s], curve.frequency_ci[s]),
                             "acc": (curve.accuracy, curve.accuracy_ci),
                             "len": (curve.length, curve.length_ci)}[key]
                    lab = f"layer {r.vector.layer}" + (" random" if curve is r.random_curve else "")
                    ax.plot(curve.alphas, y, style, color=c, label=lab)
                    if curve is r.curve:
                        ax.fill_between(curve.alphas, ci[:, 0], ci[:, 1], color=c, alpha=0.15)
        axes[0, j].set_title(s)
        axes[0, j].set_ylabel(f"share of samples using {s}")
        axes[1, j].set_ylabel("task accuracy")
        axes[2, j].set_ylabel("completion length (tokens)")
        axes[2, j].set_xlabel("alpha")
        axes[0, j].legend(fontsize=6)
    save_figure(fig, out / "steering.png")


def summary_sweep(results: dict) -> str:
    st = results["settings"]
    lines = [
        "# Steering the base model with strategy vectors", "",
        f"Model `{results['model']['name']}`, task `{st['task']}`: {st['n_problems']} held-out prompts x "
        f"{st['n_samples']} samples per alpha (temperature {st['temperature']}, seed {st['seed']}); vectors: "
        f"{st['vectors']}; control: a Gaussian random vector of equal norm (seed {st['random_seed']} + index). "
        f"Frequency = {st['frequency']}; brackets: {st['ci']}. Passes: alpha > 0, rise >= {st['factor']}x the "
        "random vector's change, CIs apart.", "",
        no_answer_line(results["no_answer"], st["answer_format"]), "",
        "| strategy | layer | alpha | frequency [CI] | random [CI] | accuracy | length | passes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s, e in results["strategies"].items():
        for layer, r in e["layers"].items():
            for k, a in enumerate(r["alpha"]):
                f, fc = r["frequency"][k], r["frequency_ci"][k]
                g, gc = r["random_frequency"][k], r["random_frequency_ci"][k]
                lines.append(f"| {s} | {layer} | {a:g} | {f:.2f} [{fc[0]:.2f}, {fc[1]:.2f}] | {g:.2f} "
                             f"[{gc[0]:.2f}, {gc[1]:.2f}] | {r['accuracy'][k]:.2f} | {r['length'][k]:.1f} | "
                             f"{r['comparison']['passes'][k]} |")
    lines += ["", "## Verdict", ""]
    for s, e in results["strategies"].items():
        att = f" (attribution-chosen layer {e['attribution']['chosen_layer']})" if e.get("attribution") else ""
        if e["best"]:
            b = e["best"]
            note = (f"; but the output degenerates ({b.get('degenerate_why', '')}): accuracy "
                    f"{b['accuracy_at_0']:.2f} -> {b['accuracy']:.2f}, length {b['length_at_0']:.0f} -> "
                    f"{b['length']:.0f} tokens (limit {st['max_new_tokens']})" if b["degenerate"] else "")
            lines.append(f"- {s}: passes at layer {b['layer']}, alpha {b['alpha']:g} (frequency "
                         f"+{b['change']:.2f}){att}{note}.")
        else:
            lines.append(f"- {s}: no alpha > 0 raises it by >= {st['factor']}x the random change with CIs apart{att}.")
    lines.append("")
    return "\n".join(lines)


def find_dataset(model, args, max_new: int, problems, labeler):
    """The base model's own labelled traces on `problems`, captured at every block output."""
    prompts = [model.encode_prompt(p.prompt) for p in problems]
    traces = sample_traces({"base": model}, prompts, 1, seed=args.seed + 2, max_new_tokens=max_new,
                           temperature=args.temperature, labeler=labeler)
    labels = [t.labels for t in traces]
    with tempfile.TemporaryDirectory(prefix="twinlens-steer-") as tmp:
        store = capture(model, [t.token_ids for t in traces], hooks=["blocks.*.hook_out"],
                        out=Path(tmp) / "acts", positions="all", batch_size=64, progress=False)
        ds = build_dataset(store, labels, model=None)
    return ds, labels


def _candidates(ds, dpp, kinds, strategies, layers) -> dict:
    out: dict = {}
    for s in strategies:
        cands = []
        for kind in kinds:
            if kind == "decision_point_contrast":
                vs = decision_point_contrast_vectors(ds, s, dpp)
            else:
                vs = diff_of_means_vectors(ds, s, common_mean=kind.removeprefix("diff_of_means_"))
            cands += [Candidate(v, kind) for v in vs if v.layer in layers]
        out[s] = cands
    return out


def run_search(args) -> tuple[dict, dict]:
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:6.1f}s] {msg}", file=sys.stderr)

    task = cli.load_task_from_args(args)
    labeler = task_labeler(task, args.labels, regex=bool(args.problems))  # a bad --labels file: before loading
    vector_problems = task.problems(args.vector_problems, seed=args.seed + 2)
    fit_ids = [prompt_id(p.prompt) for p in vector_problems]
    # held out: disjoint from the problems the vectors are found on
    problems = task.problems(args.n_problems + args.n_screen, seed=args.seed + 1, exclude=fit_ids)
    name, path = resolve_model_spec(args.base)
    model = load_model(path, device=args.device)
    cli.use_chat_template(args, model)
    max_new = args.max_new_tokens or task.max_new_tokens
    wanted = None if args.layers == "all" else [int(x) for x in args.layers.split(",")]
    bad = [k for k in wanted or [] if not 0 <= k < model.n_layers]
    if bad:  # before sampling and capturing traces
        raise TwinlensError(f"Layer(s) {bad} do not exist: the model has layers 0-{model.n_layers - 1}.")
    ds, labels = find_dataset(model, args, max_new, vector_problems, labeler)
    common = [s for s in ds.strategies if sum(len(lab.spans_of(s)) for lab in labels) >= MIN_VECTOR_SEGMENTS]
    strategies = args.strategies.split(",") if args.strategies else common
    missing = [s for s in strategies if s not in common]
    if missing:
        raise TwinlensError(f"Strategies {missing} have fewer than 5 segments in the base model's traces; "
                            f"steerable: {common}.")
    layers = list(ds.layers) if wanted is None else wanted
    sep = separator_ids_of(model.tokenizer, DEFAULT_SEPARATORS)
    dpp = decision_point_positions(ds, separator_ids=sep)
    norms = {"all": dict(zip(ds.layers, mean_residual_norm(ds).tolist(), strict=True)),
             "decision_points": dict(zip(ds.layers, mean_residual_norm(ds, dpp).tolist(), strict=True))}
    cands = _candidates(ds, dpp, args.vector_kinds, strategies, layers)
    save_vectors(Path(args.out) / "vectors.safetensors", [c.vector for cs in cands.values() for c in cs],
                 info={"task": task.name, "fit_problem_ids": fit_ids})
    log(f"found {sum(map(len, cands.values()))} candidate vectors")
    screen_p, eval_p = problems[args.n_problems:], problems[:args.n_problems]
    graded_answers: list = []

    def grader(ps):
        def grade_fn(i: int, text: str) -> bool:
            graded_answers.append(task.extract_answer(text))
            return task.grade(ps[i], text)
        return grade_fn

    found = steering_search(
        model, cands, norms, [model.encode_prompt(p.prompt) for p in screen_p],
        [model.encode_prompt(p.prompt) for p in eval_p], label_fn=text_labeler(task, labeler), grade_fn_screen=grader(screen_p), grade_fn_eval=grader(eval_p),
        malformed_fn=lambda t: task.extract_answer(t) is None, separator_ids=sorted(sep),
        fractions=args.fractions, wheres=args.where, n_screen_samples=args.n_screen_samples,
        n_samples=args.n_samples, n_random=args.n_random, seed=args.seed, random_seed=args.random_seed,
        max_new_tokens=max_new, temperature=args.temperature, n_bootstrap=args.n_bootstrap, progress=log,
    )
    results: dict = {"strategies": {}}
    for s, x in found.items():
        results["strategies"][s] = {"best": x["best"], "passes": x["best"]["passes"], "screen": x["screen"]}
    results["residual_norm"] = {w: {str(k): v for k, v in n.items()} for w, n in norms.items()}
    results["no_answer"] = {"all completions": no_answer_share(graded_answers)}
    results["model"] = {"name": name, "path": str(path), "weight_hash": model.weight_hash}
    results["settings"] = {
        "task": task.name, "answer_format": task.answer_format, "n_problems": args.n_problems,
        "n_samples": args.n_samples, "n_screen": args.n_screen, "n_screen_samples": args.n_screen_samples,
        "temperature": args.temperature, "max_new_tokens": max_new, "seed": args.seed,
        "random_seed": args.random_seed, "n_random": args.n_random, "layers": layers,
        "vector_kinds": args.vector_kinds, "where": args.where, "fractions": args.fractions,
        "vectors": "found here (base traces)", "n_excluded_fit_problems": len(fit_ids),
        "labels": getattr(labeler, "name", None) or task.name, "chat_template": bool(args.chat_template),
        "strength": "alpha_fraction x mean residual norm at the steered layer and positions",
        "common_mean": "diff_of_means_token_pooled: token-pooled reasoning mean; _example_mean: mean of per-example means",
        "frequency": "share of samples using the strategy at least once",
        "ci": "95% percentile bootstrap over prompts", "seconds": round(time.time() - t0, 1),
    }
    return results, {}


def plot_search(results: dict, out: Path) -> None:
    plt = cli.pyplot()
    strategies = list(results["strategies"])
    fig, axes = plt.subplots(1, len(strategies), figsize=(4.5 * len(strategies), 3.8), squeeze=False)
    for j, s in enumerate(strategies):
        ax = axes[0, j]
        rows = results["strategies"][s]["screen"]
        keys = list(dict.fromkeys((r["vector"], r["layer"], r["where"]) for r in rows))
        for k, key in enumerate(keys):
            mine = [r for r in rows if (r["vector"], r["layer"], r["where"]) == key]
            ax.plot([r["alpha_fraction"] for r in mine], [r["change"] for r in mine], "o-" if key[2] == "all" else "s--",
                    color=f"C{k % 10}", label=f"{key[0]} L{key[1]} {key[2]}", markersize=3)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(f"{s} (screen)")
        ax.set_xlabel("strength (fraction of residual norm)")
        ax.set_ylabel("rate change")
        ax.legend(fontsize=5)
    save_figure(fig, out / "steering.png")


def summary_search(results: dict) -> str:
    st = results["settings"]
    lines = [
        "# Steering the base model with strategy vectors", "",
        f"Model `{results['model']['name']}`, task `{st['task']}`. Search over vectors {st['vector_kinds']}, layers "
        f"{st['layers']}, positions {st['where']}, strengths {st['fractions']} ({st['strength']}), screened on "
        f"{st['n_screen']} prompts x {st['n_screen_samples']} samples; the chosen setting measured on {st['n_problems']} "
        f"held-out prompts x {st['n_samples']} samples against {st['n_random']} random vectors of equal norm. "
        f"Rate = {st['frequency']}; brackets: {st['ci']}.", "",
        no_answer_line(results["no_answer"], st["answer_format"]), "",
        "| strategy | vector | layer | where | strength | rate at 0 | rate [CI] | random rates (max upper CI) "
        "| accuracy | malformed | length x | passes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s, e in results["strategies"].items():
        b = e["best"]
        rr = ", ".join(f"{x:.2f}" for x in b["random"]["rates"])
        acc = (f"{b['accuracy_at_0']:.2f} -> {b['accuracy']:.2f}" if b["accuracy"] is not None else "n/a")
        lines.append(
            f"| {s} | {b['vector']} | {b['layer']} | {b['where']} | {b['alpha_fraction']:g} | {b['rate_at_0']:.2f} | "
            f"{b['rate']:.2f} [{b['ci'][0]:.2f}, {b['ci'][1]:.2f}] | {rr} ({b['random']['max_upper_ci']:.2f}) | {acc} | "
            f"{b['malformed_at_0']['value']:.2f} -> {b['malformed']['value']:.2f} | {b['length_ratio']:.2f} | "
            f"{b['passes']}{' (degenerate: ' + b['degenerate_why'] + ')' if b['degenerate'] else ''} |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(run_and_report, parse_args(argv))


def run_and_report(args) -> dict:
    out = Path(args.out)
    if args.mode == "search":
        results, _ = run_search(args)
        plot_search(results, out)
        write_results(out, results, summary_search(results))
        return results
    results, extra = run_sweep(args)
    plot_sweep(extra["runs"], out)
    write_examples(extra["runs"], out / "examples.jsonl")
    write_results(out, results, summary_sweep(results))
    return results


def write_examples(runs, path: Path) -> None:
    """One JSON line per (vector, layer, alpha, prompt): the first steered completion of each of
    the first prompts, for the strategy vector and for its random control."""
    rows = []
    for r in runs:
        for curve in (r.curve, r.random_curve):
            for a, texts in zip(curve.alphas, curve.examples or [], strict=False):
                rows += [{"strategy": r.vector.strategy, "layer": r.vector.layer, "vector": curve.method,
                          "alpha": a, "prompt_index": i, "text": t} for i, t in enumerate(texts)]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tmp.replace(path)


if __name__ == "__main__":
    raise SystemExit(main())
