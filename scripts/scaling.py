#!/usr/bin/env python
"""Fit the ScaleRL sigmoid R(C) = R0 + (A - R0) / (1 + (C_mid / C)^B) to (compute, score)
points and extrapolate (RESEARCH.md section 9).

    python scripts/scaling.py --out runs/scaling                  # organism rl-seed0 checkpoints
    python scripts/scaling.py --points curve.csv --exclude-below 1500 --out runs/scaling-real

Points: a CSV with columns ``compute,score`` (header optional), or, by default, the organism
run's checkpoints (rl-seed0-step*, rl-seed0): compute = the training_info "compute" (else the
RL samples seen), score = mean accuracy of sampled answers (pass@1) on held-out problems
(64 problems x 8 samples per checkpoint, temperature 0.6, top-p 0.95, seed 0; ~30 s on 2
cores in a `make demo` run). The step-0 checkpoint has no positive compute: its score fixes R0 (--free-r0 fits R0
instead). Writes DIR/results.json (keys A, B, C_mid, R0, ci, points), DIR/scaling_fit.png,
DIR/summary.md.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analyses.grading import no_answer_line, samples_no_answer  # noqa: E402
from analyses.reporting import save_figure, write_results  # noqa: E402
from analyses.scaling import compare_heldout, fit_sigmoid, plot_sigmoid_fit  # noqa: E402
from hooks import TwinlensError  # noqa: E402
from scripts import _cli as cli  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = cli.make_parser(__doc__)
    ap.add_argument("--points", help="CSV of compute,score (default: measure the organism series)")
    ap.add_argument("--series", default="rl-seed0")
    ap.add_argument("--r0", type=cli.finite_float, help="fix R0 (default: the step-0 score, or fitted)")
    ap.add_argument("--free-r0", action="store_true", help="fit R0 even when a step-0 score exists")
    ap.add_argument("--exclude-below", type=cli.finite_float, help="leave out points with compute below this")
    ap.add_argument("--bootstrap", type=cli.nonnegative_int, default=200, help="bootstrap resamples for the CIs")
    ap.add_argument("--extrapolate", type=cli.positive_float, default=10.0, help="plot up to this x the last compute")
    cli.add_problem_args(ap, n_problems=64, n_samples=8)
    cli.add_sampling_args(ap, max_new_tokens=False)
    cli.add_ray_arg(ap)
    cli.add_run_args(ap, n_boot=None)
    return ap.parse_args(argv)


def read_points(path: str) -> tuple[list[float], list[float]]:
    from analyses.task import read_text_file

    p = Path(path)
    if not p.exists():
        raise TwinlensError(f"Points file {p} does not exist; give a CSV with columns compute,score.")
    compute, score = [], []
    for i, row in enumerate(csv.reader(read_text_file(p, "Points file").splitlines())):
        if not row or not "".join(row).strip():
            continue
        try:
            c, s = float(row[0]), float(row[1])
        except (ValueError, IndexError):
            if i == 0:
                continue  # header
            raise TwinlensError(f"{p}, line {i + 1}: expected two numbers 'compute,score', got {row}.") from None
        if not (math.isfinite(c) and math.isfinite(s)):
            raise TwinlensError(f"{p}, line {i + 1}: compute and score must be finite numbers, got {row}.")
        compute.append(c)
        score.append(s)
    return compute, score


def measure_series(args, out: Path) -> dict:
    """Score every checkpoint of the organism series; returns points and per-checkpoint details."""
    from analyses.sampling import checkpoint_series, load_models, sample_each

    series = checkpoint_series(args.series)
    if len(series) < 2:
        raise TwinlensError(f"Run {args.series!r} has {len(series)} checkpoints; a curve needs several (or pass --points).")
    missing = [d["name"] for d in series if d["compute"] is None]
    if missing:
        raise TwinlensError(f"No compute recorded for {missing}; pass --points with your own compute values.")
    task = cli.load_task_from_args(args)
    family = load_models([d["name"] for d in series], device=args.device)
    cli.use_chat_template(args, *family.values())
    problems = task.problems(args.n_problems, seed=args.problem_set)
    samples = sample_each(family, problems, args.n_samples, out_dir=out / "samples", task=task,
                          **cli.sample_kwargs(args))
    rows = []
    rng = np.random.default_rng(args.seed)
    for d in series:
        per_problem = samples.by_problem(d["name"], "correct")
        acc = np.array([np.mean(v) for v in per_problem.values()])
        boot = acc[rng.integers(0, acc.size, (1000, acc.size))].mean(1)
        rows.append({"checkpoint": d["name"], "step": d["step"], "compute": d["compute"],
                     "score": float(acc.mean()), "score_ci": [float(x) for x in np.quantile(boot, [0.025, 0.975])]})
    return {"task": task.name, "answer_format": task.answer_format, "checkpoints": rows,
            "no_answer": samples_no_answer(samples),
            "sampling": cli.engine_record(samples)}


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(run, parse_args(argv))


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    r0 = args.r0
    if args.points:
        compute, score = read_points(args.points)
        source: dict = {"points_file": args.points}
    else:
        source = measure_series(args, out)
        pts = source["checkpoints"]
        start = [p for p in pts if p["compute"] <= 0]
        pts = [p for p in pts if p["compute"] > 0]
        compute, score = [p["compute"] for p in pts], [p["score"] for p in pts]
        if r0 is None and start and not args.free_r0:
            r0 = start[0]["score"]
    fit = fit_sigmoid(compute, score, r0=r0, exclude_below=args.exclude_below,
                      bootstrap=args.bootstrap, seed=args.seed)

    d = fit.to_dict()
    try:
        used = [(c, y) for c, y in zip(compute, score, strict=True)
                if args.exclude_below is None or c >= args.exclude_below]
        heldout = compare_heldout([c for c, _ in used], [y for _, y in used], r0=r0).to_dict()
    except TwinlensError as exc:  # too few points to hold any out: the verdict says undetermined
        heldout = {"error": str(exc)}
    results = {
        "A": d["A"], "B": d["B"], "C_mid": d["C_mid"], "R0": d["R0"], "ci": d["ci"],
        "A_bound": d["A_bound"], "saturated": d["saturated"], "heldout": heldout,
        "fit": d, "points": {"compute": fit.compute, "score": fit.score},
        "source": source,
        "ci_note": f"95% percentile pairs bootstrap over points ({args.bootstrap} resamples, seed {args.seed})",
    }
    if not args.points:
        results["settings"] = {"n_problems": args.n_problems, "n_samples": args.n_samples,
                               "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed,
                               "score": "mean sampled accuracy (pass@1)"}
    plt = cli.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    plot_sigmoid_fit(fit, ax=ax, extrapolate=args.extrapolate,
                     xlabel="compute" + ("" if args.points else " (RL samples seen)"))
    if not args.points and r0 is not None:
        ax.axhline(r0, color="gray", ls=":", lw=1, label=f"R0 = step-0 score {r0:.3f}")
        ax.legend(fontsize=8)
    ax.set_title("ScaleRL sigmoid fit and extrapolation")
    save_figure(fig, out / "scaling_fit.png")
    write_results(out, results, summary(fit, results))
    return results


def summary(fit, results: dict) -> str:
    ci = fit.ci
    lines = [
        "# Scaling curve", "",
        "R(C) = R0 + (A - R0) / (1 + (C_mid / C)^B), bounded least squares; brackets: "
        + results["ci_note"] + ".", "",
        "| parameter | value | 95% CI |", "|---|---|---|",
        f"| A (asymptote) | {fit.A:.4f} | [{ci['A'][0]:.4f}, {ci['A'][1]:.4f}] |",
        f"| B (efficiency) | {fit.B:.3f} | [{ci['B'][0]:.3f}, {ci['B'][1]:.3f}] |",
        f"| C_mid | {fit.C_mid:.4g} | [{ci['C_mid'][0]:.4g}, {ci['C_mid'][1]:.4g}] |",
        f"| R0 | {fit.R0:.4f} | " + ("fixed" if fit.r0_fixed else f"[{ci['R0'][0]:.4f}, {ci['R0'][1]:.4f}]") + " |",
        "", f"{fit.n_points} points in the fit ({fit.n_excluded} excluded below {fit.exclude_below}); "
        f"RMSE {fit.rmse:.4f}; {fit.n_boot_failed} of {fit.n_boot} bootstrap resamples skipped "
        "(too few distinct points).", "",
    ]
    if "no_answer" in results["source"]:
        lines += [no_answer_line(results["source"]["no_answer"], results["source"]["answer_format"]), ""]
    if "checkpoints" in results["source"]:
        lines += ["| checkpoint | step | compute | score (pass@1) |", "|---|---|---|---|"]
        for p in results["source"]["checkpoints"]:
            lines.append(f"| {p['checkpoint']} | {p['step']} | {p['compute']:g} | {p['score']:.3f} "
                         f"[{p['score_ci'][0]:.3f}, {p['score_ci'][1]:.3f}] |")
        lines.append("")
    if fit.n_points < 8:
        lines += [f"Only {fit.n_points} points: the CIs are wide and the extrapolation is a sketch.", ""]
    if results.get("saturated"):
        lines += [f"**Saturated**: A = {fit.A:.4f} sits at its bound {results['A_bound']}; the sigmoid's shape is "
                  "not identified by these points (the verdict is undetermined).", ""]
    h = results.get("heldout") or {}
    if "sigmoid_rmse" in h:
        lines += [f"Held-out check (fit on the first {h['n_fit']} points, predict the last {h['n_heldout']}): "
                  f"RMSE sigmoid {h['sigmoid_rmse']:.4f} vs power law R0 + a C^b {h['power_law_rmse']:.4f} "
                  f"({h['better'].replace('_', ' ')} extrapolates better).", ""]
    elif h.get("error"):
        lines += [f"No held-out comparison with a power law: {h['error']}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
