#!/usr/bin/env python
"""Calibration of base vs RL: is the model's confidence in its own answer matched by its
accuracy? Brier score, ECE (10 equal-width bins) and adaptive ECE (equal-mass), AUROC of
confidence vs correctness, reliability diagram (RESEARCH.md section 7).

    python scripts/calibrate.py --out runs/calib                  # organism base vs rl-seed0, stated confidence
    python scripts/calibrate.py --rl rl-binary --rl rl-brier --out runs/calib2   # the RLCR twins
    python scripts/calibrate.py --confidence answer-prob --out runs/calib3        # ':' prompts, answer-token probability
    python scripts/calibrate.py --base path/base --rl path/rl --problems qa.jsonl \\
        --confidence stated --device cuda --out runs/calib-real

Confidence (--confidence): ``stated`` = the confidence the completion states: on the organism its
stated-confidence variant (prompts closed by '?', ``#07@8`` states (8 + 0.5) / 10 = 0.85,
organism.task.extract_confidence), on real text one parsed from it ("confidence: 0.8");
``answer-prob`` = the sampling model's probability of the answer it gave (the product over the
answer's tokens; organism: its two digits), from the samples' teacher-forced log-probs
(temperature 1), the fallback where the task states no confidence; ``auto`` (default) = stated
where the task states one (the organism), else answer-prob. results.json records which was used
("confidence") and where it came from ("confidence_source"). A sample without an answer is wrong
with confidence 0 (answer-prob); a sample that states no confidence is left out (stated) and
counted ("left_out": a twin that stops stating one shows there). Defaults (organism, 2 CPU cores): 200 held-out
tier-4 problems x 2 samples per model at temperature 0.6, top-p 0.95. Writes DIR/results.json (keys
brier, ece, adaptive_ece, auroc, ci, reliability, confidence), DIR/reliability.png, DIR/summary.md.
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
    cli.add_problem_args(ap, n_problems=200, n_samples=2, confidence=False)
    ap.add_argument("--confidence", choices=["auto", "stated", "answer-prob"], default="auto",
                    help="which confidence to calibrate: stated by the completion, the probability of the "
                    "answer tokens, or auto (default: stated where the task states one, i.e. the organism's "
                    "'?' prompts, else answer-prob)")
    ap.add_argument("--n-bins", type=cli.positive_int, default=10)
    cli.add_sampling_args(ap)
    cli.add_ray_arg(ap)
    cli.add_run_args(ap, n_boot=500)
    return ap.parse_args(argv)


STATED_SOURCES = {
    "task": "stated by the completion, read by the task (organism: '@d' after the answer, (d + 0.5) / 10; "
            "organism.task.extract_confidence)",
    "text": "stated in the completion's text ('confidence: 0.8'; analyses.calibration.parse_stated_confidence)",
    "answer-prob": "the sampling model's probability of its answer tokens (teacher-forced, temperature 1)",
}


def confidence_plan(args: argparse.Namespace) -> tuple[str, str]:
    """(confidence used: "stated" | "answer-prob", its source: a key of STATED_SOURCES), decided from
    --confidence and the task before any model loads. On the organism, stated (and auto) ask the
    stated-confidence prompts ('?'), answer-prob the plain ones (':')."""
    organism = getattr(args, "problems", None) is None
    if args.confidence == "answer-prob":
        args.confidence_prompts = False
        return "answer-prob", "answer-prob"
    if organism:
        args.confidence_prompts = True  # the organism's task states one: '?' prompts
        return "stated", "task"
    args.confidence_prompts = False
    if args.confidence == "stated":
        return "stated", "text"
    return "answer-prob", "answer-prob"  # auto on real text: nothing says the prompts ask for one


def confidences(rows, how: str, read=None) -> tuple[list[float], list[bool], list[str], int]:
    """(confidence, correct, problem id) per sample, and how many samples were left out.
    how: "answer-prob" or "stated"; ``read(text)`` -> stated confidence or None (default: parsed
    from real text)."""
    read = read or parse_stated_confidence
    conf, corr, ids, left_out = [], [], [], 0
    for r in rows:
        if how == "answer-prob":
            span = tuple(r.answer_span) if r.answer_span else None
            conf.append(answer_confidence(r.logprobs[r.model], span))
        else:
            c = read(r.text)
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
    how, source = confidence_plan(args)  # sets the organism's prompts ('?' or ':') for the task
    task, family, problems = cli.load_base_and_rl(args)
    read = task.extract_confidence if source == "task" else None
    if source == "task" and read is None:
        raise TwinlensError(f"Task {task.name!r} states no confidence; use --confidence answer-prob.")
    samples = sample_each(family, problems, args.n_samples, out_dir=out / "samples", task=task,
                          **cli.sample_kwargs(args))
    reports, left = {}, {}
    for m in family:
        conf, corr, ids, left[m] = confidences(samples.for_model(m).rows, how, read)
        if not conf:
            raise TwinlensError(f"No sample of {m!r} states a confidence ({STATED_SOURCES[source]}); "
                                "use --confidence answer-prob.")
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
        "confidence": how,  # what was calibrated: "stated" or "answer-prob" (the fallback)
        "confidence_requested": args.confidence,
        "confidence_source": STATED_SOURCES[source],
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
    ax.set_title(f"Reliability ({how} confidence, {args.n_bins} bins)")
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
        f"{results['confidence']} ({results['confidence_source']}). ECE over {s['n_bins']} equal-width bins. Brackets: {results['ci_note']}.", "",
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
