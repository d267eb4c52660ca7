#!/usr/bin/env python
"""Mechanism of RL: suppression vs amplification, two phases, plasticity vs drift
(RESEARCH.md sections 2 and 5; analyses/suppression.py, phases.py, plasticity.py).

    python scripts/mechanism.py --out runs/mechanism            # organism: base vs rl-seed0 + its steps
    python scripts/mechanism.py --rl rl-seed1 --out runs/mech-s1
    python scripts/mechanism.py --base path/base --rl path/rl --checkpoint path/step100 \\
        --checkpoint path/step200 --no-plasticity --out runs/m

1. Suppression: n samples per problem from the base (temperature 1, top-p 1: the importance
   weights need the base's own distribution), scored under base and RL (eos included);
   delta log p of correct / incorrect trajectories, the suppression share, per-token location.
2. Phases: each intermediate checkpoint of the RL run (``{rl}-step*`` of the organism, or
   --checkpoint, ordered by training_info step) on its own samples: entropy / perplexity of
   execution vs strategy tokens, strategy n-gram entropy; the change-point rule.
3. Plasticity: each checkpoint's KL(base || checkpoint) on the base samples, and its learning
   gain on the organism's new task variant (--variant, default sub) after --budget fine-tuning
   steps, for each --seeds.

Defaults (organism, 2 CPU cores, ~2-3 min). Writes DIR/results.json (delta_logp,
suppression_share, phase_switch_step, plasticity, and details), DIR/delta_logp.png,
DIR/phases.png, DIR/plasticity.png, DIR/summary.md; samples in DIR/samples/ (a rerun resumes).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analyses.drift import measure_drift  # noqa: E402
from analyses.phases import detect_phases, measure_phase_point, order_checkpoints, plot_phases  # noqa: E402
from analyses.plasticity import measure_plasticity, plot_plasticity  # noqa: E402
from analyses.reporting import save_figure, write_results  # noqa: E402
from analyses.sampling import checkpoint_series, load_models, sample  # noqa: E402
from analyses.suppression import measure_suppression, plot_delta_logp  # noqa: E402
from hooks import TwinlensError  # noqa: E402
from scripts import _cli as cli  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = cli.make_parser(__doc__)
    cli.add_model_args(ap, rl_repeatable=False, helps={"--base": None, "--rl": None})
    ap.add_argument("--checkpoint", action="append",
                    help="intermediate checkpoint of the RL run (repeatable; default: the organism's {rl}-step*)")
    cli.add_problem_args(ap, n_problems=64, n_samples=8, variant=False, helps={
        "--n-problems": "problems for the suppression analysis and KL", "--n-samples": "base samples per problem"})
    ap.add_argument("--phase-problems", type=cli.positive_int, default=32)
    ap.add_argument("--phase-samples", type=cli.positive_int, default=4)
    ap.add_argument("--ngram", type=cli.positive_int, default=2, help="n of the strategy n-grams")
    ap.add_argument("--no-plasticity", action="store_true")
    ap.add_argument("--variant", default="sub", choices=("sub", "sum"),
                    help="the new task variant fine-tuned on (organism; default sub: subtraction, never trained)")
    ap.add_argument("--budget", type=cli.positive_int, default=8, help="fine-tuning steps per checkpoint and seed")
    ap.add_argument("--seeds", type=cli.nonnegative_int, nargs="+", default=[0, 1], help="fine-tuning seeds")
    ap.add_argument("--ft-lr", type=cli.positive_float, default=1e-3)
    ap.add_argument("--ft-batch-size", type=cli.positive_int, default=32)
    ap.add_argument("--n-eval", type=cli.positive_int, default=64, help="held-out problems of the new variant")
    ap.add_argument("--max-new-tokens", type=cli.positive_int)
    cli.add_engine_args(ap)
    cli.add_run_args(ap, n_boot=1000)
    cli.add_ray_arg(ap)
    return ap.parse_args(argv)


def _fmt_ci(ci) -> str:
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    timings: dict[str, float] = {}
    t0 = time.time()
    if not args.no_plasticity and args.budget < 1:  # refuse before any sampling
        raise TwinlensError(f"--budget must be at least 1 fine-tuning step, got {args.budget}; a zero "
                            "budget measures no learning (or pass --no-plasticity).")
    if not args.no_plasticity and len(args.seeds) < 2:
        raise TwinlensError(f"Give at least two --seeds for the plasticity CIs, got {args.seeds}.")
    task = cli.load_task_from_args(args)
    sampling = dict(temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens, seed=args.seed,
                    batch_size=args.batch_size, progress=False, cluster=cli.cluster(args),
                    engine=args.engine, scorer=args.scorer)
    pair = load_models([args.base, args.rl], labels=["base", "rl"], device=args.device)
    cli.use_chat_template(args, *pair.values())
    problems = task.problems(args.n_problems, seed=args.problem_set)
    base_samples = sample(pair, problems, args.n_samples, task=task, sample_from=["base"],
                          out=out / "samples" / "base.jsonl", **sampling)
    supp = measure_suppression(base_samples, models=pair, n_boot=args.n_boot, seed=args.seed)
    timings["suppression"] = time.time() - t0

    # Checkpoints of the run, ordered by recorded step (errors name a missing step / compute).
    t1 = time.time()
    specs = args.checkpoint
    notes: list[str] = []
    if not specs:
        series = checkpoint_series(Path(str(args.rl)).name)
        specs = [str(d["path"]) for d in series]
        if len(specs) < 2:  # the final checkpoint alone (e.g. a twin shipped without steps) is no series
            notes.append(f"no intermediate checkpoints of {args.rl!r} found; phases and plasticity skipped "
                         "(pass --checkpoint).")
            specs = []
    checkpoints = order_checkpoints(specs) if specs else []
    phase_points, kl = [], {}
    phase_probs = problems[: args.phase_problems] if args.phase_problems <= len(problems) else \
        task.problems(args.phase_problems, seed=args.problem_set)
    for ck in checkpoints:
        model = load_models([str(ck.path)], labels=[ck.name], device=args.device)
        cli.use_chat_template(args, *model.values())
        fam = {"base": pair["base"], ck.name: model[ck.name]}
        own = sample(model, phase_probs, args.phase_samples, task=task,
                     out=out / "samples" / f"{ck.name}.jsonl", **sampling)
        phase_points.append(measure_phase_point(model[ck.name], own.rows, ck, ngram=args.ngram,
                                                n_boot=args.n_boot, seed=args.seed))
        d = measure_drift(fam, base_samples, base="base", other=ck.name, n_boot=args.n_boot, seed=args.seed)
        kl[ck.name] = (d.kl_base_rl, d.ci["kl_base_rl"])
    phases = detect_phases(phase_points, ngram=args.ngram, seed=args.seed) if len(phase_points) >= 3 else None
    if checkpoints and phases is None:
        notes.append("fewer than three checkpoints: no phase detection.")
    timings["phases_and_kl"] = time.time() - t1

    t2 = time.time()
    plast = None
    if args.no_plasticity:
        notes.append("plasticity skipped (--no-plasticity).")
    elif args.problems:
        notes.append("plasticity needs the organism task (a new task variant); skipped with --problems.")
    elif len(checkpoints) >= 2:
        plast = measure_plasticity(checkpoints, kl, variant=args.variant, budget=args.budget, seeds=args.seeds,
                                   lr=args.ft_lr, batch_size=args.ft_batch_size, n_eval=args.n_eval,
                                   difficulty=args.difficulty, n_boot=args.n_boot, seed=args.seed)
    timings["plasticity"] = time.time() - t2

    results = {
        "base": str(args.base), "rl": str(args.rl), "task": task.name, "seed": args.seed,
        "delta_logp": {k: v.to_dict() for k, v in supp.delta_logp.items()},
        "suppression_share": supp.suppression_share,
        "suppression_share_ci": list(supp.suppression_share_ci),
        "phase_switch_step": phases.phase_switch_step if phases else None,
        "plasticity": ({p.name: {"step": p.step, "kl_from_base": p.kl_from_base, "kl_ci": list(p.kl_ci),
                                 "learning_gain": p.learning_gain, "learning_gain_ci": list(p.learning_gain_ci),
                                 "gain_by_seed": p.gain_by_seed, "loss_before": p.loss_before,
                                 "loss_after": p.loss_after} for p in plast.points} if plast else {}),
        "suppression": supp.to_dict(),
        "phases": phases.to_dict() if phases else None,
        "plasticity_detail": plast.to_dict() if plast else None,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "notes": notes, "seconds": {k: round(v, 1) for k, v in timings.items()},
    }
    _plots(out, supp, phases, plast)
    results["sampling"] = cli.engine_record(base_samples)
    write_results(out, results, _summary(results, supp, phases, plast))
    return results


def _plots(out: Path, supp, phases, plast) -> None:
    cli.pyplot()  # Agg backend: the plotting helpers draw on pyplot figures
    save_figure(plot_delta_logp(supp).figure, out / "delta_logp.png")
    if phases is not None:
        save_figure(plot_phases(phases)[0].figure, out / "phases.png")
    if plast is not None:
        save_figure(plot_plasticity(plast).figure, out / "plasticity.png")


def _summary(res: dict, supp, phases, plast) -> str:
    c, i = supp.delta_logp["correct"], supp.delta_logp["incorrect"]
    lines = [
        f"# Mechanism: {res['base']} -> {res['rl']} ({res['task']})", "",
        "## 1. Suppression vs amplification (base samples, importance-weighted)",
        f"- delta log p(trajectory), correct: mean {c.mean:+.3f} nats {_fmt_ci(c.ci)} (n={c.n}); "
        f"incorrect: {i.mean:+.3f} {_fmt_ci(i.ci)} (n={i.n}).",
        f"- suppression share {supp.suppression_share:.3f} [{supp.suppression_share_ci[0]:.3f}, "
        f"{supp.suppression_share_ci[1]:.3f}] (0.5: class masses reweighted only; >0.5 freed mass "
        "also reached other wrong trajectories = suppression; <0.5 correct ones gained from other correct "
        "ones = sharpening).",
        f"- masses per problem: {', '.join(f'{k} {v:.3f}' for k, v in supp.mass.items())}.",
        f"- estimator health: mean weight {supp.diagnostics['mean_weight']:.2f} (expect 1), ESS fraction "
        f"{supp.diagnostics['ess_fraction']:.2f}; base accuracy {supp.diagnostics['base_accuracy']:.3f}, "
        f"IW estimate of RL accuracy {supp.diagnostics['rl_accuracy_iw']:.3f}.",
        "- per-token change by role (mean delta per token, share of |change|): "
        + "; ".join(f"{k} {v['mean_delta']:+.3f} ({v['share_of_abs_change']:.0%})"
                    for k, v in supp.by_role["all"].items()) + " (other = unlabelled tokens; in the organism "
        "the '#' that opens an answer).",
        f"- first completion token (the format choice): mean delta {supp.first_token['all']['mean_delta']:+.3f}, "
        f"{supp.first_token['all']['share_of_abs_change']:.0%} of all |change| (correct "
        f"{supp.first_token['correct']['mean_delta']:+.3f}, incorrect {supp.first_token['incorrect']['mean_delta']:+.3f}).",
    ]
    lines += [f"- warning: {w}" for w in supp.warnings]
    lines += ["", "## 2. Two phases"]
    if phases is None:
        lines.append("- not measured (see notes).")
    else:
        lines.append("| step | exec entropy | strategy entropy | exec ppl | strategy ppl | strategy n-gram H (bits) | acc |")
        lines.append("|---|---|---|---|---|---|---|")
        for p in phases.points:
            lines.append(
                f"| {p.step} | {p.entropy['execution']:.3f} [{p.entropy_ci['execution'][0]:.3f}, "
                f"{p.entropy_ci['execution'][1]:.3f}] | {p.entropy['strategy']:.3f} | "
                f"{p.perplexity['execution']:.3f} | {p.perplexity['strategy']:.3f} | {p.strategy_entropy:.3f} "
                f"[{p.strategy_entropy_ci[0]:.3f}, {p.strategy_entropy_ci[1]:.3f}] | {p.accuracy:.2f} |")
        lines.append(f"- two phases: **{phases.two_phase}**; phase_switch_step = {phases.phase_switch_step}; "
                     f"t_exec = {phases.t_exec}, t_strategy = {phases.t_strategy} "
                     f"(strategy diversity {phases.strategy_direction}); {phases.reason}.")
        lines.append(f"- rule: {phases.rule}.")
    lines += ["", "## 3. Plasticity vs drift"]
    if plast is None:
        lines.append("- not measured (see notes).")
    else:
        lines.append(f"Fine-tuned {plast.budget} steps (batch {plast.batch_size}, lr {plast.lr}) on variant "
                     f"'{plast.variant}', seeds {plast.seeds}; gain = held-out loss drop (nats/token).")
        lines.append("| checkpoint | step | KL(base‖ckpt) | learning gain | by seed | loss before -> after | "
                     "acc before -> after |")
        lines.append("|---|---|---|---|---|---|---|")
        for p in plast.points:
            lines.append(f"| {p.name} | {p.step} | {p.kl_from_base:.4f} [{p.kl_ci[0]:.4f}, {p.kl_ci[1]:.4f}] | "
                         f"{p.learning_gain:.3f} {_fmt_ci(p.learning_gain_ci)} | "
                         f"{', '.join(f'{g:.3f}' for g in p.gain_by_seed)} | "
                         f"{p.loss_before:.3f} -> {p.loss_after:.3f} | {p.accuracy_before:.2f} -> {p.accuracy_after:.2f} |")
        lines.append(f"- Spearman(KL, gain) = {plast.spearman_kl_gain:+.2f}; slope {plast.slope_gain_per_kl:+.3f} "
                     f"{_fmt_ci(plast.slope_ci)} nats of gain per nat/token of KL "
                     "(CI: bootstrap over held-out problems, KL fixed); Spearman(KL, loss after) = "
                     f"{plast.spearman_kl_loss_after:+.2f} (the drop depends on the starting loss: read both).")
        lines += [f"- {n}" for n in plast.notes]
    if res["notes"]:
        lines += ["", "## Notes"] + [f"- {n}" for n in res["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rc = cli.run_main(run, args)
    if rc == 0 and not args.json:
        print(f"wrote {Path(args.out) / 'results.json'}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
