#!/usr/bin/env python
"""Calibration of base vs RL: is the model's confidence in its own answer matched by its
accuracy? Brier score, ECE (10 equal-width bins) and adaptive ECE (equal-mass), AUROC of
confidence vs correctness, reliability diagram (RESEARCH.md section 7).

    python scripts/calibrate.py --out runs/calib                  # organism base vs rl-seed0
    python scripts/calibrate.py --rl rl-seed0 --rl rl-hard --out runs/calib2
    python scripts/calibrate.py --base path/base --rl path/rl --problems qa.jsonl \\
        --confidence stated --device cuda --out runs/calib-real

Confidence: ``answer-prob`` (default) = the sampling model's probability of the answer it gave
(organism: the digit after the last '#'; several answer tokens: their product), from the
samples' teacher-forced log-probs (temperature 1); ``stated`` = a confidence parsed from the
text ("confidence: 0.8"). A sample without an answer is wrong with confidence 0 (answer-prob)
or left out (stated). Defaults (organism, 2 CPU cores, ~15 s in a `make demo` run): 200 held-out problems x 2
samples per model at temperature 0.6, top-p 0.95. Writes DIR/results.json (keys brier, ece,
adaptive_ece, auroc, ci, reliability), DIR/reliability.png, DIR/summary.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analyses.calibration import (  # noqa: E402
    answer_confidence,
    calibration_report,
    parse_stated_confidence,
    plot_reliability,
)
from analyses.grading import no_answer_line, samples_no_answer  # noqa: E402
from analyses.reporting import save_figure, write_results  # noqa: E402
from analyses.sampling import sample_each  # noqa: E402
from hooks import TwinlensError  # noqa: E402
from scripts import _cli as cli  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = cli.make_parser(__doc__)
    cli.add_model_args(ap, helps={"--base": None})
    cli.add_problem_args(ap, n_problems=200, n_samples=2)
    ap.add_argument("--confidence", choices=["answer-prob", "stated"], default="answer-prob")
    ap.add_argument("--n-bins", type=cli.positive_int, default=10)
    cli.add_sampling_args(ap)
    cli.add_ray_arg(ap)
    cli.add_run_args(ap, n_boot=500)
    return ap.parse_args(argv)


def confidences(rows, how: str) -> tuple[list[float], list[bool], list[str], int]:
    """(confidence, correct, problem id) per sample, and how many samples were left out."""
    conf, corr, ids, left_out = [], [], [], 0
    for r in rows:
        if how == "answer-prob":
            span = tuple(r.answer_span) if r.answer_span else None
            conf.append(answer_confidence(r.logprobs[r.model], span))
        else:
            c = parse_stated_confidence(r.text)
            if c is None:
                left_out += 1
                continue
            conf.append(c)
        corr.append(bool(r.correct))
        ids.append(r.problem_id)
    return conf, corr, ids, left_out


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(run, parse_args(argv))


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    task, family, problems = cli.load_base_and_rl(args)
    samples = sample_each(family, problems, args.n_samples, out_dir=out / "samples", task=task,
                          **cli.sample_kwargs(args))
    reports, left = {}, {}
    for m in family:
        conf, corr, ids, left[m] = confidences(samples.for_model(m).rows, args.confidence)
        if not conf:
            raise TwinlensError(f"No sample of {m!r} states a confidence; use --confidence answer-prob.")
        reports[m] = calibration_report(conf, corr, args.n_bins, groups=ids, n_boot=args.n_boot,
                                        seed=args.seed)

    results = {
        "brier": {m: r.brier for m, r in reports.items()},
        "ece": {m: r.ece for m, r in reports.items()},
        "adaptive_ece": {m: r.adaptive_ece for m, r in reports.items()},
        "auroc": {m: r.auroc for m, r in reports.items()},
        "accuracy": {m: r.accuracy for m, r in reports.items()},
        "mean_confidence": {m: r.mean_confidence for m, r in reports.items()},
        "ci": {m: r.ci for m, r in reports.items()},
        "reliability": {m: r.bins.to_dict() for m, r in reports.items()},
        "n": {m: r.n for m, r in reports.items()},
        "left_out": left,
        "no_answer": samples_no_answer(samples),
        "confidence": args.confidence,
        "ci_note": f"95% percentile bootstrap over problems ({args.n_boot} resamples, seed {args.seed})",
        "models": {label: str(m.path) for label, m in family.items()},
        "settings": {"task": task.name, "answer_format": task.answer_format,
                     "n_problems": args.n_problems, "n_samples": args.n_samples,
                     "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed,
                     "n_bins": args.n_bins},
    }
    plt = cli.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    plot_reliability(reports, ax=ax)
    ax.set_title(f"Reliability ({args.confidence}, {args.n_bins} bins)")
    save_figure(fig, out / "reliability.png")
    results["sampling"] = cli.engine_record(samples)
    write_results(out, results, summary(results, reports))
    return results


def summary(results: dict, reports: dict) -> str:
    s = results["settings"]
    fmt = lambda v, ci: f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"  # noqa: E731
    lines = [
        "# Calibration", "",
        f"{s['n_problems']} problems of `{s['task']}` x {s['n_samples']} samples per model "
        f"(temperature {s['temperature']}, top-p {s['top_p']}, seed {s['seed']}); confidence: "
        f"{results['confidence']}. ECE over {s['n_bins']} equal-width bins. Brackets: {results['ci_note']}.", "",
        no_answer_line(results["no_answer"], s["answer_format"]), "",
        "| model | n | accuracy | mean confidence | Brier | ECE | adaptive ECE | AUROC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m, r in reports.items():
        auroc = "undefined (one class)" if r.auroc != r.auroc else fmt(r.auroc, r.ci["auroc"])
        lines.append(f"| {m} | {r.n} | {r.accuracy:.3f} | {r.mean_confidence:.3f} | {fmt(r.brier, r.ci['brier'])} | "
                     f"{fmt(r.ece, r.ci['ece'])} | {fmt(r.adaptive_ece, r.ci['adaptive_ece'])} | {auroc} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
