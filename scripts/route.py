#!/usr/bin/env python
"""Routing hybrids: how much of the base -> RL accuracy gap comes back when the base model is
helped at a few tokens? (RESEARCH.md section 1, Venhoff et al. arXiv 2510.07364)

    python scripts/route.py --out runs/route                    # organism base vs rl-seed0
    python scripts/route.py --base base --rl rl-seed1 --n-problems 400 --out runs/route1

Routers: disagree (greedy tokens differ), entropy (base entropy sweep), probe (a strategy probe
on base activations, threshold sweep), each beside the control `random` at the fraction of tokens
it actually routed; token routing (routed token = RL's) and the steered hybrid (routed token =
base steered with a strategy vector chosen from the RL model's activation, at the disagree
router's moments). Greedy, plus a sampled run of disagree vs random.

Writes DIR/results.json (per router: accuracy_base, accuracy_rl, accuracy_hybrid,
gap_recovered {value, ci}, fraction_routed, curve), DIR/gap_vs_budget.png, DIR/summary.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from analyses.grading import no_answer_line, no_answer_share  # noqa: E402
from analyses.reporting import save_figure, write_results  # noqa: E402
from analyses.routing import (  # noqa: E402
    DisagreeRouter,
    EntropyRouter,
    ProbeRouter,
    ProjectionPicker,
    RandomRouter,
    Steering,
    budget_curve,
    evaluate_hybrid,
    fit_strategy_tools,
)
from analyses.sampling import completion_text, resolve_model_spec  # noqa: E402
from hooks import TwinlensError, generate, load_pair  # noqa: E402
from scripts import _cli as cli  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = cli.make_parser(__doc__)
    cli.add_model_args(ap, rl_repeatable=False)
    ap.add_argument("--problems", help=cli.PROBLEMS_HELP)
    cli.add_answer_args(ap)
    ap.add_argument("--difficulty", type=cli.difficulty, default=4, help=cli.DIFFICULTY_HELP)
    ap.add_argument("--problem-set", type=cli.nonnegative_int, default=0, help="held-out set to evaluate on")
    ap.add_argument("--fit-set", type=cli.nonnegative_int, default=1, help="held-out set the probe/vectors are fitted on")
    ap.add_argument("--n-problems", type=cli.positive_int, default=200)
    ap.add_argument("--max-new-tokens", type=cli.positive_int)
    ap.add_argument("--entropy-thresholds", type=cli.nonnegative_float, nargs="+", default=[0.05, 0.2, 0.5, 1.0, 1.5])
    ap.add_argument("--probe-thresholds", type=cli.finite_float, nargs="+", default=[-2.0, 0.0, 2.0, 4.0])
    ap.add_argument("--strategy",
                    help="strategy the probe router watches (default: the task's first strategy; organism: "
                    "compute = write the steps). The probe router needs token-level labels (the organism's); "
                    "on other tasks it is skipped")
    ap.add_argument("--layer", type=cli.nonnegative_int, help="probe / vector layer (default: ~37%% of depth)")
    ap.add_argument("--alpha", type=cli.finite_float, default=1.0, help="steering coefficient")
    ap.add_argument("--temperature", type=cli.temperature, default=1.0, help="for the sampled run")
    ap.add_argument("--no-probe", action="store_true", help="skip the probe router and steered hybrid")
    cli.add_engine_args(ap, scorer=False)
    cli.add_chat_template_arg(ap)
    cli.add_run_args(ap, n_boot=2000, batch_size=256, helps={
        "--threads": "torch CPU threads (1: tiny models gain nothing from more on a busy box)", "--json": cli.JSON_HELP})
    return ap.parse_args(argv)


def headline(points: list[dict], max_fraction: float = 0.2) -> dict:
    """The curve point reported as the router's number: the best gap recovered routing at most
    `max_fraction` of tokens (else the point routing the fewest)."""
    ok = [p for p in points if p["router"].fraction_routed <= max_fraction]
    if ok:
        # ties (common when several thresholds recover the whole gap) go to the smaller budget
        return max(ok, key=lambda p: (np.nan_to_num(p["router"].gap_recovered.value, nan=-np.inf),
                                      -p["router"].fraction_routed))
    return min(points, key=lambda p: p["router"].fraction_routed)


def entry(points: list[dict]) -> dict:
    top = headline(points)
    d = top["router"].to_dict()
    d["random_control"] = top["random"].to_dict()
    d["curve"] = [
        {**p["router"].router, "fraction_routed": p["router"].fraction_routed,
         "accuracy_hybrid": p["router"].accuracy_hybrid,
         "gap_recovered": p["router"].gap_recovered.to_dict(),
         "random_fraction_routed": p["random"].fraction_routed,
         "random_accuracy_hybrid": p["random"].accuracy_hybrid,
         "random_gap_recovered": p["random"].gap_recovered.to_dict()}
        for p in points
    ]
    return d


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(run, parse_args(argv))


def probe_strategy(task, args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(strategy the probe router watches, or None with the reason it is skipped), decided
    before any model loads: --strategy, else the task's first strategy (organism: compute);
    the probe router needs the organism's token-level labels (one token per character)."""
    if args.no_probe:
        return None, "skipped (--no-probe)"
    if not task.char_tokens:
        if args.strategy is not None:
            raise TwinlensError(
                f"--strategy {args.strategy!r}: the probe router and the steered hybrid need token-level "
                f"strategy labels, which task {task.name!r} does not have (only the organism's); drop "
                "--strategy, or pass --no-probe.")
        return None, f"skipped: task {task.name!r} has no token-level strategy labels (organism only)"
    strategy = args.strategy or (task.strategies[0] if task.strategies else None)
    if strategy not in task.strategies:
        raise TwinlensError(f"--strategy {strategy!r} is not a strategy of task {task.name!r}; "
                            f"choose one of {list(task.strategies)}.")
    return strategy, None


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    task = cli.load_task_from_args(args)
    strategy, probe_skipped = probe_strategy(task, args)
    (_, base_path), (_, rl_path) = resolve_model_spec(args.base), resolve_model_spec(args.rl)
    pair = load_pair(base_path, rl_path, device=args.device)
    base, rl = pair.base, pair.rl
    cli.use_chat_template(args, base, rl)
    max_new = args.max_new_tokens or task.max_new_tokens
    problems = task.problems(args.n_problems, seed=args.problem_set)
    prompts = [base.encode_prompt(p.prompt) for p in problems]

    def grade(i: int, text: str) -> bool:
        return bool(task.grade(problems[i], text))

    no_answer: dict[str, dict] = {}

    def correct_of(model, temperature: float, label: str) -> np.ndarray:
        # --engine serves the greedy baselines (the same tokens from either engine); sampled
        # baselines stay on the HF loop so they share each row's random numbers with the hybrid.
        toks = generate(model, prompts, max_new, temperature=temperature, seed=args.seed,
                        batch_size=args.batch_size, engine=args.engine if temperature == 0 else "hf")
        texts = [completion_text(model.tokenizer, t) for t in toks]
        no_answer[label] = no_answer_share(task.extract_answer(t) for t in texts)
        return np.array([grade(i, t) for i, t in enumerate(texts)])

    cb, cr = correct_of(base, 0.0, "base"), correct_of(rl, 0.0, "rl")
    kw = dict(max_new_tokens=max_new, seed=args.seed, batch_size=args.batch_size,
              label_strategies=task.label_strategies, n_bootstrap=args.n_boot)
    routers: dict[str, dict] = {}
    routers["disagree"] = entry(budget_curve(base, rl, prompts, grade, [DisagreeRouter()], cb, cr, **kw))
    routers["entropy"] = entry(budget_curve(
        base, rl, prompts, grade, [EntropyRouter(t) for t in args.entropy_thresholds], cb, cr, **kw))
    steered = None
    if strategy is not None:
        layer = args.layer if args.layer is not None else max(0, round(0.37 * base.n_layers))
        with tempfile.TemporaryDirectory() as tmp:
            tools = fit_strategy_tools(base, rl, task, layer=layer, strategy=strategy,
                                       n_problems=args.n_problems, problem_set=args.fit_set,
                                       max_new_tokens=max_new, workdir=Path(tmp) / "acts",
                                       batch_size=args.batch_size, exclude=problems)
        routers["probe"] = entry(budget_curve(
            base, rl, prompts, grade,
            [ProbeRouter(tools.probe, t, layer=layer, strategy=strategy) for t in args.probe_thresholds],
            cb, cr, **kw))
        steering = Steering(tools.vectors, alpha=args.alpha,
                            pick=ProjectionPicker(tools.vectors, center={layer: tools.center}))
        s_res = evaluate_hybrid(base, rl, prompts, grade, DisagreeRouter(), cb, cr, steering=steering, **kw)
        s_ctrl = evaluate_hybrid(base, rl, prompts, grade, RandomRouter(s_res.fraction_routed, args.seed),
                                 cb, cr, steering=steering, **kw)
        steered = {**s_res.to_dict(), "random_control": s_ctrl.to_dict(),
                   "routed_vector_counts": s_res.routed_vectors,
                   "layer": layer, "alpha": args.alpha,
                   "vectors": [v.strategy for v in tools.vectors]}
        routers["steered_disagree"] = steered
    # sampled: base, RL, disagree hybrid and random at its fraction, same seed per row
    T = args.temperature
    sb, sr = correct_of(base, T, "base_sampled"), correct_of(rl, T, "rl_sampled")
    sd = evaluate_hybrid(base, rl, prompts, grade, DisagreeRouter(), sb, sr, temperature=T, **kw)
    sc = evaluate_hybrid(base, rl, prompts, grade, RandomRouter(sd.fraction_routed, args.seed), sb, sr,
                         temperature=T, **kw)
    routers["disagree_sampled"] = {**sd.to_dict(), "random_control": sc.to_dict()}

    # The gap itself, with a paired bootstrap CI: gap recovered means nothing when this CI holds 0.
    rng = np.random.default_rng(args.seed)
    idx = rng.integers(0, len(cb), size=(args.n_boot, len(cb)))
    gaps = cr[idx].mean(1) - cb[idx].mean(1)
    results = {
        "routers": routers,
        "accuracy_base": float(cb.mean()), "accuracy_rl": float(cr.mean()),
        "accuracy_gap_ci": [float(x) for x in np.quantile(gaps, [0.025, 0.975])],
        "rl_token_needed_fraction": routers["disagree"]["fraction_routed"],
        "accuracy_base_sampled": float(sb.mean()), "accuracy_rl_sampled": float(sr.mean()),
        "no_answer": no_answer,
        "ci": f"95% percentile bootstrap over problems, paired ({args.n_boot} resamples, seed {args.seed})",
        "models": {"base": str(base.path), "rl": str(rl.path)},
        "settings": {"task": task.name, "answer_format": task.answer_format,
                     "n_problems": args.n_problems, "problem_set": args.problem_set,
                     "fit_set": args.fit_set, "max_new_tokens": max_new, "seed": args.seed,
                     "temperature_sampled": T, "strategy": strategy, "alpha": args.alpha,
                     "greedy_baseline_engine": args.engine,
                     "probe_router": probe_skipped or "run", "chat_template": bool(args.chat_template)},
    }
    save_figure(plot(routers), out / "gap_vs_budget.png")
    write_results(out, results, summary(results))
    return results


def plot(routers: dict):
    plt = cli.pyplot()

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    colors = {"disagree": "C0", "entropy": "C1", "probe": "C2", "steered_disagree": "C3",
              "disagree_sampled": "C4"}
    first_random = True
    for name, r in routers.items():
        pts = r.get("curve") or [{"fraction_routed": r["fraction_routed"], "gap_recovered": r["gap_recovered"],
                                  "random_fraction_routed": r["random_control"]["fraction_routed"],
                                  "random_gap_recovered": r["random_control"]["gap_recovered"]}]
        pts = sorted(pts, key=lambda p: p["fraction_routed"])  # a sweep need not be monotone in budget
        for key, label, style, c in (("", name, "-o", colors.get(name, "k")),
                                     ("random_", "random (same fraction)", ":x", "grey")):
            x = [p[f"{key}fraction_routed"] for p in pts]
            g = [p[f"{key}gap_recovered"] for p in pts]
            y = np.array([np.nan if q["value"] is None else q["value"] for q in g], dtype=float)
            lo = np.array([np.nan if q["ci"][0] is None else q["ci"][0] for q in g], dtype=float)
            hi = np.array([np.nan if q["ci"][1] is None else q["ci"][1] for q in g], dtype=float)
            show = label if key == "" or first_random else None
            ax.errorbar(x, y, yerr=[y - lo, hi - y], fmt=style, color=c, capsize=2, label=show, ms=4)
            if key:
                first_random = False
    ax.axhline(1.0, color="k", lw=0.5)
    ax.axhline(0.0, color="k", lw=0.5)
    ax.set_xlabel("fraction of tokens routed")
    ax.set_ylabel("gap recovered (95% CI)")
    ax.set_title("Routing hybrid: gap recovered vs routing budget")
    ax.legend(fontsize=8)
    return fig


def summary(results: dict) -> str:
    s = results["settings"]
    lines = [
        "# Routing hybrids", "",
        f"{s['n_problems']} problems of `{s['task']}` (held-out set {s['problem_set']}), greedy "
        f"unless marked sampled (temperature {s['temperature_sampled']}), seed {s['seed']}. Gap "
        "recovered = (acc_hybrid - acc_base) / (acc_rl - acc_base); brackets: " + results["ci"] + ".",
        f"Probe router: {s['probe_router']}" + (f" (strategy `{s['strategy']}`)." if s["strategy"] else "."),
        "", f"Base accuracy {results['accuracy_base']:.3f}, RL accuracy {results['accuracy_rl']:.3f} "
        f"(sampled: {results['accuracy_base_sampled']:.3f}, {results['accuracy_rl_sampled']:.3f}); gap "
        f"{results['accuracy_rl'] - results['accuracy_base']:.3f} [{results['accuracy_gap_ci'][0]:.3f}, "
        f"{results['accuracy_gap_ci'][1]:.3f}].", "",
        no_answer_line(results["no_answer"], s["answer_format"]), "",
        f"Under greedy decoding the `disagree` hybrid emits RL's greedy token wherever the two differ: it *is* RL's "
        f"greedy completion, so its gap recovered is 1 by construction. What it measures is how often RL's token "
        f"was needed: at {100 * results['rl_token_needed_fraction']:.1f}% of positions. The claim is decided on the "
        "other hybrids (steered, sampled, entropy, probe), each against random routing at its budget.", "",
        "| router | mode | routed | hybrid acc | gap recovered | random at same fraction |",
        "|---|---|---|---|---|---|",
    ]

    def gap(g):
        v, (lo, hi) = g["value"], g["ci"]
        return "n/a" if v is None else f"{v:.2f} [{lo:.2f}, {hi:.2f}]"

    for name, r in results["routers"].items():
        extra = ""
        if "threshold" in r["router"]:
            extra = f" (threshold {r['router']['threshold']})"
        c = r["random_control"]
        lines.append(f"| {name}{extra} | {r['mode']}{' sampled' if r['temperature'] > 0 else ''} | "
                     f"{r['fraction_routed']:.3f} | {r['accuracy_hybrid']:.3f} | {gap(r['gap_recovered'])} | "
                     f"{gap(c['gap_recovered'])} (acc {c['accuracy_hybrid']:.3f}) |")
    lines += ["", "Routed tokens by the strategy they start (labeler on the hybrid completion):", ""]
    for name, r in results["routers"].items():
        lines.append(f"- {name}: {r['routed_strategies']}")
    lines += ["", "Curves (threshold sweeps) are in results.json and gap_vs_budget.png.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
