#!/usr/bin/env python
"""Drift from the base: per-token KL(base || rl) and KL(rl || base) on samples from either
model, and next-token entropy per position and per token kind (strategy tokens vs the rest),
for one or several RL models or a series of checkpoints (RESEARCH.md sections 5 and 8).

    python scripts/drift.py --out runs/drift                 # organism: base vs rl-seed0 + its steps
    python scripts/drift.py --rl rl-seed0 --rl rl-seed1 --rl rl-hard --out runs/drift-seeds
    python scripts/drift.py --base path/base --rl path/rl --problems math.jsonl --device cuda --out runs/d

Entropy by domain (RESEARCH.md s.8): on the organism, the final RL model(s) and the base are also
sampled on --open-problems problems of the open domain (``4>23:`` -> any 4 digits summing to 23:
many right answers), and each model's entropy change from the base is reported per domain
(structured = the task above, open), with paired bootstrap CIs over problems.

Defaults (organism, 2 CPU cores, ~45 s in a `make demo` run): 64 held-out tier-4 problems x 4 samples per
model, plus 32 open-domain problems (4 digits), temperature 0.6, top-p 0.95. Without --rl the organism's
rl-seed0 series (rl-seed0-step*, then rl-seed0) is measured. Writes DIR/results.json (keys kl_base_rl,
kl_rl_base, entropy, entropy_by_domain, entropy_change_by_domain, ...), DIR/kl_series.png,
DIR/entropy.png, DIR/summary.md; samples in DIR/samples/ and DIR/samples-open/ (rerun resumes).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analyses.drift import entropy_change, measure_drift, plot_entropy_by_position  # noqa: E402
from analyses.reporting import save_figure, write_results  # noqa: E402
from analyses.sampling import checkpoint_series, sample_each  # noqa: E402
from hooks import TwinlensError  # noqa: E402
from scripts import _cli as cli  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = cli.make_parser(__doc__)
    cli.add_model_args(ap, helps={"--base": None, "--rl": "RL model or checkpoint (repeatable)"})
    ap.add_argument("--series", default="rl-seed0",
                    help="without --rl: the organism run whose step checkpoints to measure ('' = final only)")
    cli.add_problem_args(ap, n_problems=64, n_samples=4)
    ap.add_argument("--open-problems", type=cli.nonnegative_int, default=32,
                    help="organism: open-domain problems for the entropy-by-domain contrast (0 = structured only; "
                    "ignored with --problems or --variant open)")
    ap.add_argument("--open-difficulty", type=cli.difficulty, default=4,
                    help="organism open domain: digits asked for, in organism.task.OPEN_LENGTHS (default: %(default)s)")
    cli.add_sampling_args(ap)
    cli.add_ray_arg(ap)
    cli.add_run_args(ap, n_boot=1000)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(run, parse_args(argv))


ANSWERS_NONE = ("none given: the problems file has rows without an \"answer\"; nothing here is graded "
                "(KL and entropy need no answers), samples carry correct = null")


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    steps: dict[str, float] = {}
    series_specs = None  # --rl, else the series, else the organism's rl-seed0
    if not args.rl and args.series:
        series = checkpoint_series(args.series)
        if not series:
            raise TwinlensError(f"No organism checkpoints of run {args.series!r}; pass --rl.")
        series_specs = [d["name"] for d in series]
        steps = {d["name"]: d["step"] for d in series}
    # KL and entropy need no reference answers: a problems file without them is fine (and said so)
    task, family, problems = cli.load_base_and_rl(args, series_specs, need_answers=False)
    labels = list(family)[1:]  # the RL models, after "base"
    samples = sample_each(family, problems, args.n_samples, out_dir=out / "samples", task=task,
                          **cli.sample_kwargs(args))
    kw = dict(base="base", n_boot=args.n_boot, seed=args.seed,
              batch_size=args.batch_size or 32)  # scoring rows per forward

    def both(samples_, label):
        pair = {"base": family["base"], label: family[label]}
        return {"on_base_samples": measure_drift(pair, samples_, sampled_by=["base"], other=label, **kw),
                "on_own_samples": measure_drift(pair, samples_, sampled_by=[label], other=label, **kw)}

    drift = {label: both(samples, label) for label in labels}
    domain = task.domain or "task"
    by_domain = {domain: drift}
    open_task = None
    if args.problems is None and task.domain == "structured" and args.open_problems:
        # The open-domain contrast for the final models only (a series' steps add nothing to it).
        from analyses.task import organism_task

        open_task = organism_task(args.open_difficulty, "open")
        finals = [labels[-1]] if steps else labels
        open_family = {m: family[m] for m in ("base", *finals)}
        open_samples = sample_each(open_family, open_task.problems(args.open_problems, seed=args.problem_set),
                                   args.n_samples, out_dir=out / "samples-open", task=open_task,
                                   **cli.sample_kwargs(args))
        by_domain["open"] = {m: both(open_samples, m) for m in finals}
    change = {d: {m: entropy_change(r["on_base_samples"], r["on_own_samples"], n_boot=args.n_boot, seed=args.seed)
                  for m, r in res.items()} for d, res in by_domain.items()}

    sources = ("on_base_samples", "on_own_samples")
    base_res = drift[labels[0]]["on_base_samples"]
    results = {
        "kl_base_rl": {m: {s: d[s].kl_base_rl for s in sources} for m, d in drift.items()},
        "kl_rl_base": {m: {s: d[s].kl_rl_base for s in sources} for m, d in drift.items()},
        "ci": {m: {s: {"kl_base_rl": d[s].ci["kl_base_rl"], "kl_rl_base": d[s].ci["kl_rl_base"]}
                   for s in sources} for m, d in drift.items()},
        # entropy of each model's next-token distribution on its own samples (nats per token)
        "entropy": {"base": base_res.entropy["base"],
                    **{m: d["on_own_samples"].entropy[m] for m, d in drift.items()}},
        "entropy_ci": {"base": base_res.ci["entropy_base"],
                       **{m: d["on_own_samples"].ci[f"entropy_{m}"] for m, d in drift.items()}},
        "entropy_by_kind": {"base": base_res.entropy_by_kind["base"],
                            **{m: d["on_own_samples"].entropy_by_kind[m] for m, d in drift.items()}},
        # per domain: each model's entropy on its own samples, and its change from the base's (nats/token)
        "entropy_by_domain": {d: {"base": next(iter(res.values()))["on_base_samples"].entropy["base"],
                                  **{m: r["on_own_samples"].entropy[m] for m, r in res.items()}}
                              for d, res in by_domain.items()},
        "entropy_change_by_domain": {m: {d: change[d][m].to_dict() for d in change if m in change[d]}
                                     for m in labels},
        "domains": {domain: task.name, **({"open": open_task.name} if open_task else {})},
        "steps": steps or None,
        "details": {m: {s: d[s].to_dict() for s in sources} for m, d in drift.items()},
        "units": "nats per token; mean over a sample's completion tokens, then its problem's samples, then problems",
        "ci_note": f"95% percentile bootstrap over problems ({args.n_boot} resamples, seed {args.seed})",
        "models": {label: str(m.path) for label, m in family.items()},
        "settings": {"task": task.name, "n_problems": args.n_problems, "n_samples": args.n_samples,
                     "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed,
                     "open_problems": args.open_problems if open_task else 0,
                     "answers": "given" if task.has_answers else ANSWERS_NONE},
    }
    write_plots(drift, labels, steps, out)
    results["sampling"] = cli.engine_record(samples)
    write_results(out, results, summary(results, labels))
    return results


def write_plots(drift: dict, labels: list[str], steps: dict, out: Path) -> None:
    plt = cli.pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    xs = [steps[m] for m in labels] if steps else list(range(len(labels)))
    for key, style, name in (("kl_base_rl", "o-", "KL(base||rl)"), ("kl_rl_base", "s--", "KL(rl||base)")):
        for src, color in (("on_own_samples", "C0"), ("on_base_samples", "C1")):
            ys = [getattr(drift[m][src], key) for m in labels]
            lo = [drift[m][src].ci[key][0] for m in labels]
            hi = [drift[m][src].ci[key][1] for m in labels]
            ax.errorbar(xs, ys, yerr=[[y - a for y, a in zip(ys, lo, strict=True)],
                                      [b - y for y, b in zip(ys, hi, strict=True)]],
                        fmt=style, color=color, capsize=3,
                        label=f"{name}, {src.replace('on_', '').replace('_', ' ')}")
    if steps:
        ax.set_xlabel("RL step")
    else:
        ax.set_xticks(xs, labels, rotation=30, ha="right")
    ax.set_ylabel("KL (nats / token)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, out / "kl_series.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    final = labels[-1]
    plot_entropy_by_position({"base": drift[final]["on_base_samples"], final: drift[final]["on_own_samples"]},
                             ax=axes[0])
    axes[0].set_title(f"next-token entropy: base vs {final}")
    kinds = sorted(set(drift[final]["on_base_samples"].entropy_by_kind["base"])
                   | set(drift[final]["on_own_samples"].entropy_by_kind[final]))
    width = 0.4
    for i, (name, res, label) in enumerate((("base", drift[final]["on_base_samples"], "base"),
                                            (final, drift[final]["on_own_samples"], final))):
        vals = [res.entropy_by_kind[label].get(k, float("nan")) for k in kinds]
        axes[1].bar([j + (i - 0.5) * width for j in range(len(kinds))], vals, width, label=f"{name} (own samples)")
    axes[1].set_xticks(range(len(kinds)), kinds, rotation=30, ha="right")
    axes[1].set_ylabel("entropy (nats)")
    axes[1].set_title("entropy by token kind")
    axes[1].legend(fontsize=8)
    save_figure(fig, out / "entropy.png")


def summary(results: dict, labels: list[str]) -> str:
    s = results["settings"]
    lines = [
        "# Drift and entropy", "",
        f"{s['n_problems']} problems of `{s['task']}` x {s['n_samples']} samples per model "
        f"(temperature {s['temperature']}, top-p {s['top_p']}, seed {s['seed']}). Exact "
        "full-vocabulary KL per completion token, " + results["units"].split("; ", 1)[1]
        + ". Brackets: " + results["ci_note"] + ".", "",
        *([f"Reference answers: {s['answers']}.", ""] if s.get("answers", "given") != "given" else []),
        "| model | step | KL(base\\|\\|rl) own samples | KL(rl\\|\\|base) own samples | KL(base\\|\\|rl) base samples | KL(rl\\|\\|base) base samples | entropy (own) |",
        "|---|---|---|---|---|---|---|",
    ]
    fmt = lambda v, ci: f"{v:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]"  # noqa: E731
    for m in labels:
        kb, kr, ci = results["kl_base_rl"][m], results["kl_rl_base"][m], results["ci"][m]
        step = results["steps"].get(m, "") if results["steps"] else ""
        lines.append(
            f"| {m} | {step} | {fmt(kb['on_own_samples'], ci['on_own_samples']['kl_base_rl'])} | "
            f"{fmt(kr['on_own_samples'], ci['on_own_samples']['kl_rl_base'])} | "
            f"{fmt(kb['on_base_samples'], ci['on_base_samples']['kl_base_rl'])} | "
            f"{fmt(kr['on_base_samples'], ci['on_base_samples']['kl_rl_base'])} | "
            f"{fmt(results['entropy'][m], results['entropy_ci'][m])} |")
    lines += ["", f"Base entropy on its own samples: {fmt(results['entropy']['base'], results['entropy_ci']['base'])} nats/token.", "",
              "Entropy by token kind (own samples; 'strategy' pools the strategy spans, 'rest' the others):", ""]
    kinds = sorted({k for d in results["entropy_by_kind"].values() for k in d})
    lines += ["| model | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for m, d in results["entropy_by_kind"].items():
        lines.append(f"| {m} | " + " | ".join(f"{d[k]:.3f}" if k in d else "" for k in kinds) + " |")
    domains = list(results["entropy_by_domain"])
    lines += ["", "Entropy change from the base by domain (own samples; " + ", ".join(
        f"{d} = `{results['domains'][d]}`" for d in domains) + "; negative = lower than the base):", "",
        "| model | " + " | ".join(domains) + " |", "|---|" + "---|" * len(domains)]
    for m, per in results["entropy_change_by_domain"].items():
        lines.append(f"| {m} | " + " | ".join(
            fmt(per[d]["change"], per[d]["ci"]) if d in per else "" for d in domains) + " |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
