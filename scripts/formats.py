#!/usr/bin/env python
"""Format collapse and shortcuts across RL checkpoints: the share of outputs in each format,
the step at which one format first exceeds 90%, pass@k and maj@k per checkpoint, and the
shortcut detectors (response length, repeated n-grams, answers without intermediate steps)
(RESEARCH.md sections 3 and 6).

    python scripts/formats.py --out runs/formats                      # organism rl-seed0 series
    python scripts/formats.py --series rl-hard --out runs/formats-hard
    python scripts/formats.py --checkpoint ck/step100 --step 100 --checkpoint ck/step200 --step 200 \\
        --problems math.jsonl --device cuda --out runs/formats-real

Defaults (organism, 2 CPU cores, ~30 s in a `make demo` run): every checkpoint of the organism run rl-seed0
(rl-seed0-step*, then rl-seed0; steps from their training_info.json), 64 held-out problems x 8
samples each, temperature 0.6, top-p 0.95. Writes DIR/results.json (keys share, collapse_step,
collapse_format, pass_at_k, maj_at_k, shortcuts), DIR/formats.png, DIR/shortcuts.png,
DIR/summary.md; samples in DIR/samples/ (rerun resumes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analyses.formats import format_collapse, plot_format_shares  # noqa: E402
from analyses.reporting import save_figure, write_results  # noqa: E402
from analyses.sampling import (  # noqa: E402
    checkpoint_series,
    compute_of,
    load_models,
    resolve_model_spec,
    sample_each,
)
from analyses.shortcuts import plot_shortcuts, shortcuts_by_checkpoint  # noqa: E402
from hooks import TwinlensError  # noqa: E402
from scripts import _cli as cli  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = cli.make_parser(__doc__)
    ap.add_argument("--series", default="rl-seed0", help="organism run whose checkpoints to track")
    ap.add_argument("--checkpoint", "--rl", dest="checkpoints", action="append",
                    help="a checkpoint (repeatable; replaces --series)")
    ap.add_argument("--step", dest="steps", action="append", type=cli.nonnegative_float,
                    help="its RL step (one per --checkpoint; default: its training_info.json)")
    cli.add_problem_args(ap, n_problems=64, n_samples=8)
    ap.add_argument("--k", type=cli.positive_int, nargs="+", help="k values for pass@k / maj@k (default 1 and n)")
    ap.add_argument("--threshold", type=cli.probability, default=0.9)
    ap.add_argument("--ngram", type=cli.positive_int, help="n of the repeated n-gram detector (default: the task's)")
    cli.add_sampling_args(ap)
    cli.add_ray_arg(ap)
    cli.add_run_args(ap, n_boot=1000)
    return cli.check_k_values(ap, ap.parse_args(argv))


def step_of_folder(path: Path) -> tuple[float | None, float | None]:
    """(step, compute) from a checkpoint folder's training_info.json or trainer_state.json."""
    for name, key in (("training_info.json", "step"), ("trainer_state.json", "global_step")):
        f = Path(path) / name
        if f.exists():
            info = json.loads(f.read_text())
            if key in info:
                return float(info[key]), compute_of(info)
    return None, None


def resolve_checkpoints(args) -> tuple[list[str], list[str], dict[str, float], dict[str, float | None]]:
    """(specs, labels, steps, compute)."""
    if args.checkpoints:
        specs = list(args.checkpoints)
        labels = [resolve_model_spec(s)[0] for s in specs]
        if args.steps and len(args.steps) != len(specs):
            raise TwinlensError(f"{len(args.steps)} --step values for {len(specs)} checkpoints; give one each.")
        steps, compute = {}, {}
        for i, (spec, label) in enumerate(zip(specs, labels, strict=True)):
            step, comp = step_of_folder(Path(resolve_model_spec(spec)[1]))
            if args.steps:
                step = args.steps[i]
            if step is None:
                raise TwinlensError(f"No step known for {spec}; pass --step after each --checkpoint.")
            steps[label], compute[label] = step, comp
        return specs, labels, steps, compute
    series = checkpoint_series(args.series)
    if not series:
        raise TwinlensError(f"No organism checkpoints of run {args.series!r}; pass --checkpoint/--step.")
    names = [d["name"] for d in series]
    return names, names, {d["name"]: d["step"] for d in series}, {d["name"]: d["compute"] for d in series}


def greedy_format_shares(family: dict, problems, task, batch_size: int | None = None) -> dict[str, dict[str, float]]:
    """{checkpoint: {format: share of greedy completions}} (one greedy completion per problem)."""
    from hooks import generate

    out = {}
    for label, model in family.items():
        prompts = [model.encode_prompt(p.prompt) for p in problems]
        kw = {"batch_size": batch_size} if batch_size else {}
        toks = generate(model, prompts, task.max_new_tokens, temperature=0.0, **kw)
        kinds = [task.classify_format(model.tokenizer.decode(t)) for t in toks]
        out[label] = {f: kinds.count(f) / len(kinds) for f in (*task.formats, "other")}
    return out


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(run, parse_args(argv))


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    task = cli.load_task_from_args(args)
    specs, labels, steps, compute = resolve_checkpoints(args)
    family = load_models(specs, labels=labels, device=args.device)
    cli.use_chat_template(args, *family.values())
    problems = task.problems(args.n_problems, seed=args.problem_set)
    samples = sample_each(family, problems, args.n_samples, out_dir=out / "samples", task=task,
                          **cli.sample_kwargs(args))
    fc = format_collapse(samples, steps, task.formats, compute=compute, threshold=args.threshold,
                         ks=args.k, n_boot=args.n_boot, seed=args.seed)
    shortcuts = shortcuts_by_checkpoint(samples, task, fc.checkpoints, ngram=args.ngram,
                                        n_boot=args.n_boot, seed=args.seed)
    greedy = greedy_format_shares(family, problems, task, batch_size=args.batch_size)

    results = {
        **fc.to_dict(),
        # greedy decoding collapses before sampling does (T=1 keeps a tail): both are reported
        "greedy_share": greedy,
        "shortcuts": {m: s.to_dict() for m, s in shortcuts.items()},
        "ci_note": f"95% percentile bootstrap over problems ({args.n_boot} resamples, seed {args.seed})",
        "models": {label: str(m.path) for label, m in family.items()},
        "settings": {"task": task.name, "n_problems": args.n_problems, "n_samples": args.n_samples,
                     "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed},
    }
    plt = cli.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    plot_format_shares(fc, ax=axes[0])
    axes[0].set_title("share of outputs per format")
    for k in fc.ks:
        axes[1].plot(fc.steps, [fc.pass_at_k[c][k] for c in fc.checkpoints], "o-", label=f"pass@{k}")
        if k > 1:
            axes[1].plot(fc.steps, [fc.maj_at_k[c][k] for c in fc.checkpoints], "s--", label=f"maj@{k}")
    axes[1].set_xlabel("RL step")
    axes[1].set_ylim(0, 1.02)
    axes[1].grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    axes[1].set_title("pass@k and maj@k per checkpoint")
    save_figure(fig, out / "formats.png")
    fig, ax = plt.subplots(figsize=(6, 4))
    plot_shortcuts(shortcuts, x=fc.steps, ax=ax, xlabel="RL step")
    save_figure(fig, out / "shortcuts.png")
    results["sampling"] = cli.engine_record(samples)
    write_results(out, results, summary(fc, shortcuts, results))
    return results


def summary(fc, shortcuts, results: dict) -> str:
    s = results["settings"]
    fnames = list(next(iter(fc.share.values())))
    lines = [
        "# Format collapse and shortcuts", "",
        f"{s['n_problems']} problems of `{s['task']}` x {s['n_samples']} samples per checkpoint "
        f"(temperature {s['temperature']}, top-p {s['top_p']}, seed {s['seed']}).", "",
        "Collapse (first step where one format holds > "
        f"{fc.threshold:.0%} of outputs): "
        + (f"**step {fc.collapse_step:g}** ({fc.collapse_format})" if fc.collapse_step is not None else "never"), "",
        "| checkpoint | step | " + " | ".join(fnames) + " | "
        + " | ".join(f"pass@{k}" for k in fc.ks) + " | " + " | ".join(f"maj@{k}" for k in fc.ks if k > 1)
        + " | length | rep-n | no steps |",
        "|---|---|" + "---|" * (len(fnames) + len(fc.ks) + len([k for k in fc.ks if k > 1]) + 3),
    ]
    for c, step in zip(fc.checkpoints, fc.steps, strict=True):
        sc = shortcuts[c]
        lines.append(
            f"| {c} | {step:g} | " + " | ".join(f"{fc.share[c][f]:.3f}" for f in fnames) + " | "
            + " | ".join(f"{fc.pass_at_k[c][k]:.3f}" for k in fc.ks) + " | "
            + " | ".join(f"{fc.maj_at_k[c][k]:.3f}" for k in fc.ks if k > 1)
            + f" | {sc.mean_length:.1f} | {sc.repeated_ngram_rate:.3f} | "
            + ("" if sc.skipped_steps_rate is None else f"{sc.skipped_steps_rate:.3f}") + " |")
    g = results.get("greedy_share") or {}
    if g:
        lines += ["", "Greedy decoding (one completion per problem), share per format:", "",
                  "| checkpoint | " + " | ".join(fnames) + " |", "|---|" + "---|" * len(fnames)]
        lines += [f"| {c} | " + " | ".join(f"{g[c].get(f, 0.0):.3f}" for f in fnames) + " |" for c in fc.checkpoints]
    lines += ["", f"Share CIs, shortcut CIs: {results['ci_note']} (in results.json).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
