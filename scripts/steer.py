#!/usr/bin/env python
"""Steer the base model with strategy vectors (RESEARCH.md section 1): add alpha * v to one
layer's output at every position while it generates, and measure each strategy's frequency,
the task accuracy and the output length, beside the same sweep with a random vector of equal
norm (seeded). Sweeps alpha and layer.

    python scripts/steer.py --out runs/steer                       # organism base, all layers
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
from hooks import TwinlensError, capture, load_model  # noqa: E402
from probes.attribution import attribute_layers  # noqa: E402
from probes.datasets import build_dataset  # noqa: E402
from probes.labels import task_labeler, text_labeler  # noqa: E402
from probes.steering import steering_experiment  # noqa: E402
from probes.traces import plan_sample_size, sample_traces  # noqa: E402
from probes.vectors import diff_of_means_vectors, load_vectors, read_vectors_info, save_vectors  # noqa: E402
from scripts import _cli as cli  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = cli.make_parser(__doc__)
    ap.add_argument("--base", default="base", help="model to steer: organism checkpoint name, folder or hub id")
    ap.add_argument("--problems", help=cli.PROBLEMS_HELP)
    cli.add_answer_args(ap)
    ap.add_argument("--labels", help="regex label config (JSON) for real text, or a shipped one: 'default' "
                    "(strategy regexes) or 'decision' (sentence / line starts); default: the task's labels")
    cli.add_chat_template_arg(ap)
    ap.add_argument("--vectors", help="vectors.safetensors from scripts/probe.py (default: find them here)")
    ap.add_argument("--strategies", help="comma list (default: every strategy with a vector)")
    ap.add_argument("--layers", type=cli.layer_choice, default="all", help="'all', 'chosen' (attribution) or a comma list")
    ap.add_argument("--alphas", type=cli.alpha_list, default="-1,0,0.5,1,2", help="steering coefficients (must include 0)")
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
    return ap.parse_args(argv)


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


def run(args) -> tuple[dict, dict]:
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
                # The raise comes with broken outputs: accuracy below half of the unsteered one
                # and completions running to the token limit.
                "degenerate": bool(r["accuracy"][k] < 0.5 * r["accuracy"][k0]
                                   and r["length"][k] >= 0.9 * max_new),
            }
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


def plot(runs, out: Path) -> None:
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


def summary(results: dict) -> str:
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
            note = (f"; but the output degenerates: accuracy {b['accuracy_at_0']:.2f} -> {b['accuracy']:.2f}, "
                    f"length {b['length_at_0']:.0f} -> {b['length']:.0f} tokens (limit {st['max_new_tokens']})"
                    if b["degenerate"] else "")
            lines.append(f"- {s}: passes at layer {b['layer']}, alpha {b['alpha']:g} (frequency "
                         f"+{b['change']:.2f}){att}{note}.")
        else:
            lines.append(f"- {s}: no alpha > 0 raises it by >= {st['factor']}x the random change with CIs apart{att}.")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(run_and_report, parse_args(argv))


def run_and_report(args) -> dict:
    out = Path(args.out)
    results, extra = run(args)
    plot(extra["runs"], out)
    write_examples(extra["runs"], out / "examples.jsonl")
    write_results(out, results, summary(results))
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
