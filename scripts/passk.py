#!/usr/bin/env python
"""pass@k and maj@k of a base model and its RL model(s): does RL create capability, or does the
base catch up at large k? (RESEARCH.md section 4)

    python scripts/passk.py --out runs/passk                      # organism base vs rl-seed0
    python scripts/passk.py --rl rl-seed0 --rl rl-seed1 --n-samples 64 --out runs/passk64
    python scripts/passk.py --base Qwen/Qwen2.5-Math-1.5B --rl path/to/rl --problems math.jsonl \\
        --n-samples 256 --max-new-tokens 2048 --device cuda --out runs/math

Defaults (organism, 2 CPU cores, ~30 s in a `make demo` run): 100 held-out problems x 16 samples per model,
temperature 0.6, top-p 0.95 (the papers' protocol with n = 16 instead of 256). Samples are kept
in DIR/samples.jsonl (rerun resumes). Writes DIR/results.json (keys: k, pass_at_k, maj_at_k,
crossover_k, solved_only_by), DIR/pass_at_k.png, DIR/summary.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analyses.grading import no_answer_line, no_answer_share  # noqa: E402
from analyses.passk import compare_pass_at_k, guesser_pass_at_k, plot_pass_at_k  # noqa: E402
from analyses.reporting import save_figure, write_results  # noqa: E402
from analyses.sampling import sample  # noqa: E402
from scripts import _cli as cli  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = cli.make_parser(__doc__)
    cli.add_model_args(ap)
    cli.add_problem_args(ap, n_problems=100, n_samples=16, helps={
        "--problem-set": "held-out problem set number",
        "--n-samples": "samples per problem (n)"})
    ap.add_argument("--k", type=cli.positive_int, nargs="+", help="k values (default 1, 2, 4, ..., n)")
    cli.add_sampling_args(ap)
    cli.add_ray_arg(ap)
    cli.add_run_args(ap, n_boot=1000, helps={"--json": cli.JSON_HELP})
    return cli.check_k_values(ap, ap.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(run, parse_args(argv))


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    task, family, problems = cli.load_base_and_rl(args)
    samples = sample(family, problems, args.n_samples, task=task, out=out / "samples.jsonl",
                     **cli.sample_kwargs(args))
    # maj@k votes for one right answer: a task with many right answers per problem (the organism's
    # open domain) has none to vote for, so maj@k is left out there.
    cmp = compare_pass_at_k(
        {m: samples.by_problem(m, "correct") for m in family},
        answers={m: samples.by_problem(m, "answer") for m in family} if task.single_answer else None,
        reference=samples.references() if task.single_answer else None, ks=args.k, n_boot=args.n_boot,
        seed=args.seed,
    )

    results = {
        **cmp.to_dict(),
        "n_solved_only_by": {m: len(v) for m, v in cmp.solved_only_by.items()},
        "no_answer": {m: no_answer_share(r.answer for r in samples.for_model(m).rows) for m in family},
        "ci": f"95% percentile bootstrap over problems ({args.n_boot} resamples, seed {args.seed})",
        "models": {label: str(m.path) for label, m in family.items()},
        "settings": {"task": task.name, "answer_format": task.answer_format,
                     "n_problems": args.n_problems, "n_samples": args.n_samples,
                     "temperature": args.temperature, "top_p": args.top_p,
                     "max_new_tokens": samples.meta["max_new_tokens"], "seed": args.seed,
                     "problem_set": args.problem_set},
        "samples": str(out / "samples.jsonl"),
        # The trivial baseline: a uniform guesser over the task's answers (None when unknown).
        "guesser": ({"answer_space": task.answer_space,
                     "pass_at_k": guesser_pass_at_k(cmp.k, task.answer_space)} if task.answer_space else None),
    }
    plt = cli.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    plot_pass_at_k(cmp, ax=ax, answer_space=task.answer_space)
    save_figure(fig, out / "pass_at_k.png")
    results["sampling"] = cli.engine_record(samples)
    write_results(out, results, summary(cmp, results))
    return results


def summary(cmp, results: dict) -> str:
    s = results["settings"]
    lines = [
        "# pass@k", "",
        f"{s['n_problems']} problems of `{s['task']}`, {s['n_samples']} samples each, temperature "
        f"{s['temperature']}, top-p {s['top_p']}, seed {s['seed']}. Unbiased estimator "
        "1 - C(n-c,k)/C(n,k); brackets: " + results["ci"] + ".", "",
        no_answer_line(results["no_answer"], s["answer_format"]), "",
        "| k | " + " | ".join(f"{m} pass@k" for m in cmp.pass_at_k) + " | "
        + " | ".join(f"{m} maj@k" for m in cmp.maj_at_k) + " |",
        "|---|" + "---|" * (len(cmp.pass_at_k) + len(cmp.maj_at_k)),
    ]
    guess = (results.get("guesser") or {}).get("pass_at_k")
    if guess:
        lines[-2] += " uniform guesser |"
        lines[-1] += "---|"
    for i, k in enumerate(cmp.k):
        cells = [f"{c.mean[i]:.3f} [{c.ci_low[i]:.3f}, {c.ci_high[i]:.3f}]" for c in cmp.pass_at_k.values()]
        cells += [f"{c.mean[i]:.3f}" for c in cmp.maj_at_k.values()]
        cells += [f"{guess[i]:.3f}"] if guess else []
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    lines.append("")
    if guess:
        lines.append(f"- Trivial baseline: a uniform guesser over the task's {results['guesser']['answer_space']} "
                     "answers; pass@k is decided only where both models are clear of it (analyses/verdicts.py).")
    else:
        lines.append("- The task does not state its answer space: the uniform guesser's curve is unknown.")
    for m, k in cmp.crossover_k.items():
        if k is None:
            text = f"none up to k = {cmp.k[-1]} ({m} ahead at every k)"
        elif k == cmp.k[0]:
            text = f"k = {k}: the base is not behind {m} even at k = {k}"
        else:
            text = f"**k = {k}** ({m} ahead below it)"
        lines.append(f"- Crossover (first k where base pass@k >= {m}'s): {text}")
    for m, n in results["n_solved_only_by"].items():
        lines.append(f"- Problems solved (>= 1 correct sample) only by {m}: {n}")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
