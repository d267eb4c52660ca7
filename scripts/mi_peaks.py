#!/usr/bin/env python
"""Mutual-information peaks (Qian et al. 2025; RESEARCH.md section 10) of a base model and its RL
twin: does RL create MI peaks at thinking tokens, or does the base already have them?

    python scripts/mi_peaks.py --out runs/mi_peaks                       # organism base vs rl-seed0
    python scripts/mi_peaks.py --base B --rl R --problems probs.jsonl --out DIR --json
    python scripts/mi_peaks.py --out DIR --sigma-grid 50 100 200 400 --checkpoints none

Per model: greedy trajectories ("own" texts) and the same teacher-forced reference solutions with
strategies ("reference" texts); MI of each token's state with the gold state (``--method``,
``--sigma``, ``--layer``; default the last block before the final norm), IQR peaks, AOM, peak
tokens, peaks at strategy tokens vs chance, paired RL - base differences, intermediate RL
checkpoints, and the paper's interventions (peak-token suppression, thinking-token scaling).

--problems (for non-organism models): JSONL rows {"prompt", "answer", "gold"[, "reference"]};
"gold" is the reference solution text whose last token's state is the gold representation.

Writes DIR/results.json, DIR/summary.md, DIR/mi_trajectories_<texts>.png, DIR/peak_tokens_<texts>.png
and DIR/checkpoints.png.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hooks import TwinlensError, load_model, load_pair  # noqa: E402
from scripts import _cli as cli  # noqa: E402

HEADLINE = ("mi_mean", "mi_std", "peaks_per_trajectory", "peak_ratio", "aom")


def problem_set_from_args(args):
    from analyses.mi_peaks import MiProblemSet, organism_problem_set

    if args.problems is None:
        if args.answer_format or args.answer_pattern:
            raise TwinlensError("--answer-format/--answer-pattern grade real text: give --problems FILE.jsonl "
                                "too; the organism task keeps its own exact grader.")
        return organism_problem_set(args.n_problems, seed=args.eval_set, difficulty=args.difficulty)
    from analyses.task import read_problems_file, regex_task

    path = Path(args.problems)
    rows = [r.fields for r in read_problems_file(path, need_answers=True, required=("gold",))][: args.n_problems]
    bad = [i for i, r in enumerate(rows) if not isinstance(r["gold"], str)
           or ("reference" in r and not isinstance(r["reference"], str))]
    if bad:
        raise TwinlensError(f"{path}: row {bad[0] + 1}: \"gold\" (and \"reference\" when given) must be text.")
    task = regex_task(path.stem, problems=[(r["prompt"], r["answer"]) for r in rows],
                      answer_pattern=args.answer_pattern, answer_format=args.answer_format or "auto")
    refs = [r["reference"] for r in rows] if all("reference" in r for r in rows) else None
    return MiProblemSet(task=task, problems=task.problems(len(rows)), gold_texts=[r["gold"] for r in rows],
                        reference_completions=refs, append_texts=tuple(args.append or ("Wait",)))


def resolve_checkpoints(args) -> list[tuple[int, str, str]]:
    """(step, name, path) of the intermediate checkpoints to follow."""
    if args.checkpoints == ["none"]:
        return []
    if args.checkpoints:
        out = []
        for i, c in enumerate(args.checkpoints):
            m = re.search(r"step(\d+)$", str(c).rstrip("/"))
            out.append((int(m.group(1)) if m else i, Path(c).name, str(c)))
        return out
    if args.rl is not None:
        return []
    from analyses.sampling import checkpoint_series

    return [(d["step"], d["name"], str(d["path"])) for d in checkpoint_series("rl-seed0", include_final=False)]


def fmt(d: dict, key: str, digits: int = 4) -> str:
    v, ci = d.get(key), d.get(f"{key}_ci")
    if v is None:
        return "n/a"
    if ci and None not in ci:
        return f"{v:.{digits}g} [{ci[0]:.{digits}g}, {ci[1]:.{digits}g}]"
    return f"{v:.{digits}g}"


def summary_markdown(results: dict) -> str:
    cfg = results["config"]
    labels = list(results["models"])
    models = ", ".join(f"{lab} `{results['models'][lab].get('path', '?')}`" for lab in labels)
    lines = [
        f"# MI peaks: {' vs '.join(labels)}", "",
        f"Models: {models}; task "
        f"`{cfg.get('task', '?')}`; gold texts: {cfg.get('gold_text', '?')}.", "",
        f"{cfg['n_problems']} problems; estimator `{cfg['method']}` (sigma {cfg['sigma']}), layer "
        f"{cfg['layer']} (block output before the final norm), peaks by Q3 + 1.5 IQR; means over "
        f"problems with 95% bootstrap CIs (seed {cfg['seed']}).", "",
    ]
    for kind in cfg["texts"]:
        # The organism's reference solutions carry its markers; a real task's come from its file.
        reference = ("The same teacher-forced reference solutions (with `wait;` and `chk`)"
                     if cfg.get("task", "organism").startswith("organism") else
                     f"The same teacher-forced reference solutions (the 'reference' rows of `{cfg['task']}`)")
        title = {"own": "Own greedy completions (the paper's protocol)", "reference": reference}[kind]
        lines += [f"## {title}", "", "| model | used / too short | accuracy | " + " | ".join(HEADLINE)
                  + " | peaks at strategy tokens (chance, p) | at markers (chance, p) |",
                  "|---" * (5 + len(HEADLINE)) + "|"]
        for lab in labels:
            s = results["models"][lab]["texts"].get(kind) or {}
            if "error" in s:
                lines.append(f"| {lab} | {s['error']} |")
                continue
            e, m = s["peaks_at_strategy_tokens"], s["peaks_at_strategy_markers"]
            share = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
            lines.append(
                f"| {lab} | {s['n_used']} / {s['n_too_short']} | {fmt(s, 'accuracy', 3)} | "
                + " | ".join(fmt(s, k) for k in HEADLINE)
                + f" | {share(e['share'])} ({share(e['chance'])}, {share(e['p_permutation'])})"
                + f" | {share(m['share'])} ({share(m['chance'])}, {share(m['p_permutation'])}) |")
        for pair, diffs in results["paired"].get(kind, {}).items():
            n = next(iter(diffs.values()))["n"] if diffs else 0
            lines += ["", f"Paired difference {pair} (same {n} problems): " + "; ".join(
                f"{k} n/a" if d["value"] is None else f"{k} {d['value']:+.4g} [{d['low']:+.4g}, {d['high']:+.4g}]"
                for k, d in diffs.items())]
        kinds = sorted({k for lab in labels for k in (results["models"][lab]["texts"].get(kind) or {})
                        .get("relative_mi_by_kind", {})})
        if kinds:
            lines += ["", "MI by token kind: mean robust z = (MI - median) / IQR of its trajectory "
                      "[95% CI]; share of peaks / share of tokens:", "",
                      "| kind | " + " | ".join(labels) + " |", "|---" * (1 + len(labels)) + "|"]
            for k in kinds:
                cells = []
                for lab in labels:
                    s = results["models"][lab]["texts"].get(kind) or {}
                    e = s.get("relative_mi_by_kind", {}).get(k)
                    sh = None if k.startswith("marker:") else s.get("peak_share_by_kind", {}).get(k)
                    cell = "n/a" if not e or e["value"] is None else f"{e['value']:+.2f} [{e['low']:+.2f}, {e['high']:+.2f}]"
                    if sh:
                        cell += f"; {sh['peaks']:.2f} / {sh['tokens']:.2f}"
                    cells.append(cell)
                lines.append(f"| {k} | " + " | ".join(cells) + " |")
        lines += ["", "Peak tokens (emitted token at each peak; count / all occurrences of that token):", ""]
        for lab in labels:
            s = results["models"][lab]["texts"].get(kind) or {}
            if "peak_tokens" in s:
                top = list(s["peak_tokens"].items())[:10]
                lines.append(f"- {lab}: " + ", ".join(
                    f"{t!r} {n}/{s['token_counts'].get(t, 0)}" for t, n in top))
                dec = list(s["peak_decoded_tokens"].items())[:6]
                lines.append("  - decoded from the peak states: " + ", ".join(f"{t!r} {n}" for t, n in dec))
        lines.append("")
    if results.get("interventions"):
        lines += ["## Interventions (own greedy completions)", ""]
        for lab, iv in results["interventions"].items():
            sup = iv.get("suppression", {})
            if "accuracy_peak_banned" in sup:
                rnd = ", ".join(f"{a['value']:.3f}" for a in sup["accuracy_random_banned"])
                lines.append(
                    f"- {lab}: banning peak tokens {sup['banned_peak_tokens']}: accuracy "
                    f"{sup['accuracy_unbanned']['value']:.3f} -> {sup['accuracy_peak_banned']['value']:.3f}; "
                    f"same number of random tokens: {rnd} (mean {sup['accuracy_random_mean']:.3f})")
            else:
                lines.append(f"- {lab}: suppression skipped ({sup.get('skipped', iv.get('skipped'))})")
            for text, r in iv.get("thinking_token_scaling", {}).items():
                lines.append(
                    f"  - append {r['appended']!r}{' (control for ' + text.split(':', 1)[1] + ')' if text.startswith('control:') else ''}: "
                    f"accuracy {r['accuracy_before']['value']:.3f} -> {r['accuracy_after']['value']:.3f} "
                    f"(fixed {r['fixed']}, broken {r['broken']}, McNemar p {r['p_mcnemar']:.3g}; "
                    f"{r['n_no_new_answer']} without a new answer, {r['n_no_room']} without room)")
        lines.append("")
    if results.get("checkpoints"):
        lines += ["## Over RL training (intermediate checkpoints)", "",
                  "| step | texts | accuracy | mi_mean | peak_ratio | aom | share at strategy (chance) |",
                  "|---|---|---|---|---|---|---|"]
        for row in results["checkpoints"]:
            for kind in cfg["texts"]:
                s = row.get(kind, {})
                if not s or "error" in s:
                    lines.append(f"| {row['step']} | {kind} | {s.get('error', 'n/a')} |")
                    continue
                acc = "n/a" if s.get("accuracy") is None else f"{s['accuracy']:.3f}"
                sh = "n/a" if s["strategy_share"] is None else f"{s['strategy_share']:.3f}"
                ch = "n/a" if s["strategy_chance"] is None else f"{s['strategy_chance']:.3f}"
                lines.append(f"| {row['step']} | {kind} | {acc} | {fmt(s, 'mi_mean')} | "
                             f"{fmt(s, 'peak_ratio')} | {fmt(s, 'aom')} | {sh} ({ch}) |")
        lines.append("")
    if results.get("sigma_grid"):
        lines += ["## Bandwidth grid (hsic_paper sigma)", "", "| sigma | texts | model | mi_mean | peak_ratio | aom |",
                  "|---|---|---|---|---|---|"]
        for sigma, kinds in results["sigma_grid"].items():
            for kind, by_model in kinds.items():
                for lab, s in by_model.items():
                    lines.append(f"| {sigma} | {kind} | {lab} | {fmt(s, 'mi_mean')} | {fmt(s, 'peak_ratio')} | {fmt(s, 'aom')} |")
        lines.append("")
    lines.append(f"Wall time {results['wall_seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = cli.make_parser(__doc__)
    ap.add_argument("--base", help="base model folder or hub id (default: organism base)")
    ap.add_argument("--rl", help="RL model folder or hub id (default: organism rl-seed0)")
    ap.add_argument("--checkpoints", nargs="+",
                    help="intermediate RL checkpoints (folders; 'stepN' at the end of a name gives its "
                         "step); default: the organism's rl-seed0-step* when --rl is not given; 'none' skips")
    ap.add_argument("--problems", help="JSONL problems for non-organism models (see the docstring)")
    cli.add_answer_args(ap)
    cli.add_chat_template_arg(ap)
    ap.add_argument("--append", nargs="+", help="thinking tokens for test-time scaling (default organism: "
                    "'wait;' 'chk '; else 'Wait')")
    ap.add_argument("--n-problems", type=cli.positive_int, default=64)
    ap.add_argument("--eval-set", type=cli.nonnegative_int, default=0, help="organism held-out problem set number")
    ap.add_argument("--difficulty", type=cli.difficulty, default=4, help=cli.DIFFICULTY_HELP)
    ap.add_argument("--layer", type=cli.nonnegative_int, default=None, help="block index (default: the last block)")
    ap.add_argument("--method", default="hsic_paper", choices=["hsic_paper", "hsic_paper_median"])
    ap.add_argument("--sigma", type=cli.positive_float, default=50.0, help="hsic_paper kernel bandwidth (paper: 50)")
    ap.add_argument("--sigma-grid", type=cli.positive_float, nargs="+", help="also summarise at these bandwidths")
    ap.add_argument("--top-k", type=cli.positive_int, default=20, help="the notebook's top-k peak rule")
    ap.add_argument("--texts", nargs="+", default=["own", "reference"], choices=["own", "reference"])
    ap.add_argument("--max-new-tokens", type=cli.positive_int, default=None)
    ap.add_argument("--no-interventions", action="store_true")
    ap.add_argument("--n-boot", type=cli.positive_int, default=2000)
    ap.add_argument("--seed", type=cli.nonnegative_int, default=0)
    ap.add_argument("--device", type=cli.device, default="cpu", help=cli.DEVICE_HELP)
    ap.add_argument("--out", required=True)
    ap.add_argument("--overwrite", action="store_true", help=cli.OVERWRITE_HELP)
    ap.add_argument("--json", action="store_true", help=cli.JSON_HELP)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(run, parse_args(argv))


def run(args: argparse.Namespace) -> dict:
    from analyses.mi_peaks import (
        MiPeaksConfig,
        compute_mi,
        planted_dependence_control,
        run_mi_peaks,
    )
    from analyses.mi_peaks.pipeline import checkpoint_series, headline_scalars
    from analyses.mi_peaks.plotting import plot_checkpoint_series, plot_model_rows, plot_peak_tokens
    from analyses.reporting import save_figure, to_jsonable, write_results
    from analyses.verdicts import combine_planted_controls

    t0 = time.time()
    out = Path(args.out)
    say = lambda msg: print(f"[mi_peaks {time.time() - t0:5.1f}s] {msg}", file=sys.stderr)  # noqa: E731
    if args.base is None or args.rl is None:
        import organism

        base_path = args.base or organism.checkpoint_path("base")
        rl_path = args.rl or organism.checkpoint_path("rl-seed0")
    else:
        base_path, rl_path = args.base, args.rl
    if args.problems is None and (args.base is not None) != (args.rl is not None):
        say("note: one model given, the other is the organism's")
    problem_set = problem_set_from_args(args)  # the file is checked before any model loads
    pair = load_pair(base_path, rl_path, device=args.device)
    models = {"base": pair.base, "rl": pair.rl}
    cli.use_chat_template(args, pair.base, pair.rl)
    if args.append:
        problem_set.append_texts = tuple(args.append)
    cfg = MiPeaksConfig(
        layer=args.layer, method=args.method, sigma=args.sigma, top_k=args.top_k,
        max_new_tokens=args.max_new_tokens, texts=tuple(args.texts),
        n_boot=args.n_boot, interventions=not args.no_interventions, seed=args.seed,
    )
    result = run_mi_peaks(models, problem_set, cfg, progress=say)
    ckpts = resolve_checkpoints(args)
    series = []
    if ckpts:
        loaded = [(step, name, load_model(path, device=args.device)) for step, name, path in ckpts]
        series = checkpoint_series(loaded, problem_set, cfg, progress=say)
    grid = {}
    for sigma in args.sigma_grid or []:
        grid[str(sigma)] = {}
        for kind, by_label in result.trajectories.items():
            grid[str(sigma)][kind] = {}
            for lab, trajs in by_label.items():
                compute_mi(trajs, "hsic_paper", sigma)
                grid[str(sigma)][kind][lab] = headline_scalars(lab, models[lab], trajs, cfg, "hsic_paper", sigma)
        say(f"sigma grid: {sigma} done")
    if args.sigma_grid:  # the plots show the main estimator: restore it
        for by_label in result.trajectories.values():
            for trajs in by_label.values():
                compute_mi(trajs, cfg.method, cfg.sigma)

    resolved_layer = next(iter(next(iter(result.trajectories.values())).values()))[0].layer
    results = {
        "config": {**to_jsonable(cfg), "layer": resolved_layer, "n_problems": len(problem_set.problems),
                   "task": problem_set.task.name, "gold_text": "prompt + correct step-by-step solution"
                   if args.problems is None else "the 'gold' field"},
        "models": {},
        "paired": result.paired,
        "interventions": result.interventions,
        "checkpoints": series,
        "sigma_grid": grid,
    }
    # Positive control of the detector: dependence planted at known positions must be found as peaks.
    planted = {}
    for lab, model in models.items():
        special = frozenset(int(i) for i in getattr(model.tokenizer, "all_special_ids", []) or [])
        planted[lab] = planted_dependence_control(result.trajectories[cfg.texts[0]][lab], cfg.method, cfg.sigma,
                                                  special, seed=cfg.seed)
    results["special_tokens_excluded"] = True
    results["planted_control"] = {**combine_planted_controls(planted), "texts": cfg.texts[0]}
    for lab, model in models.items():
        texts = {}
        for kind in cfg.texts:
            s = result.summaries[kind][lab]
            texts[kind] = s.to_dict() if s is not None else {"error": result.errors[kind][lab]}
        primary = texts[cfg.texts[0]]
        results["models"][lab] = {
            "path": str(model.path), "weight_hash": model.weight_hash,
            "primary_texts": cfg.texts[0],
            # the headline numbers of the primary texts at the top, as the results contract asks
            **{k: primary.get(k) for k in (*HEADLINE, *(f"{h}_ci" for h in HEADLINE), "aom_n_defined",
                                           "peak_tokens", "peak_decoded_tokens", "peaks_at_strategy_tokens",
                                           "accuracy", "accuracy_ci", "n_used", "n_too_short", "error")
               if k in primary},
            "texts": texts,
        }
    results["wall_seconds"] = time.time() - t0

    cli.pyplot()  # Agg backend: the plotting helpers draw on pyplot figures
    tok = pair.base.tokenizer
    for kind, by_label in result.trajectories.items():
        name = "own greedy completions" if kind == "own" else "shared reference solutions"
        save_figure(plot_model_rows(by_label, tok, suptitle=f"MI trajectories, {name}"),
                    out / f"mi_trajectories_{kind}.png")
        tables = {lab: results["models"][lab]["texts"][kind].get("peak_tokens", {}) for lab in models}
        save_figure(plot_peak_tokens(tables, title=f"Tokens at MI peaks ({name})"), out / f"peak_tokens_{kind}.png")
    if series:
        kind = cfg.texts[-1]
        rows = [{"step": r["step"], **r.get(kind, {})} for r in series]
        save_figure(plot_checkpoint_series(rows, ["mi_mean", "peak_ratio", "aom", "strategy_share"],
                                           title=f"MI peaks over RL steps ({kind} texts)"), out / "checkpoints.png")
    write_results(out, results, summary_markdown(to_jsonable(results)))
    say(f"wrote {out / 'results.json'}")
    return results


if __name__ == "__main__":
    raise SystemExit(main())
