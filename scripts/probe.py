#!/usr/bin/env python
"""Strategy probes on a base/RL pair (RESEARCH.md section 1): are the strategies RL deploys
already linearly present in the base model?

    python scripts/probe.py --out runs/probe                       # organism base vs rl-seed0
    python scripts/probe.py --base base --rl rl-seed1 --out runs/probe-s1 --json
    python scripts/probe.py --base path/base --rl path/rl --problems qa.jsonl \\
        --labels decision --chat-template --n-problems 20 --device cuda --out runs/probe-real

Steps: a pilot (--pilot-problems x 1 sample per model) measures each strategy's segment rate
and says, before the main sampling, how many traces the strategy needs (results.json
"sample_size"); sample completions from both models (temperature 1), label them (organism: ground truth;
else the regex labeler), capture every block output of BOTH models on ALL traces into one paired
store (same tokens at the same rows), then per strategy:
- per-layer probe sweep on each model (held-out examples; AUROC / accuracy with bootstrap CIs
  over examples), its shuffled-label control (labels permuted across training tokens) and the
  majority baseline;
- transfer: base probe on RL activations and RL probe on base activations (same tokens);
- difference-of-means vectors (training examples) per layer for both models, their cosine;
  probe-weight directions;
- layer choice by attribution on the base model;
- pre-existence: the base vector read on RL activations at RL strategy starts (AUROC), and the
  base probe's logit at offsets -3..+1 around segment starts;
- a small steering check at the attribution-chosen layer (scripts/steer.py sweeps more).
Writes DIR/results.json, DIR/vectors.safetensors, DIR/probe_layers.png, DIR/preexistence.png,
DIR/steering.png, DIR/summary.md. Defaults (organism, 2 CPU cores): about 1 minute (58 s in a `make demo` run).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from analyses.reporting import save_figure, write_results  # noqa: E402
from analyses.sampling import resolve_model_spec  # noqa: E402
from analyses.task import prompt_id  # noqa: E402
from hooks import capture, load_model, load_pair  # noqa: E402
from probes.attribution import attribute_layers  # noqa: E402
from probes.datasets import ExampleSplit, build_dataset, split_examples  # noqa: E402
from probes.labels import task_labeler, text_labeler  # noqa: E402
from probes.preexistence import preexistence_test  # noqa: E402
from probes.steering import steering_experiment  # noqa: E402
from probes.sweep import sweep_strategies, transfer_probe  # noqa: E402
from probes.traces import plan_sample_size, sample_traces  # noqa: E402
from probes.vectors import (  # noqa: E402
    diff_of_means_vectors,
    probe_weight_vectors,
    save_vectors,
    vector_cosines,
)
from scripts import _cli as cli  # noqa: E402

MIN_SEGMENTS = 10  # fewer held-out segments than this and a per-strategy number is not reported


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = cli.make_parser(__doc__)
    cli.add_model_args(ap, rl_repeatable=False)
    ap.add_argument("--problems", help=cli.PROBLEMS_HELP)
    ap.add_argument("--difficulty", type=cli.difficulty, default=4, help=cli.DIFFICULTY_HELP)
    cli.add_answer_args(ap)
    ap.add_argument("--labels", help="regex label config (JSON), or a shipped one: 'default' (strategy regexes, "
                    "probes/default_labels.json: the default for --problems) or 'decision' (sentence / line "
                    "starts: in every trace, for small real samples); default: the task's own labels "
                    "(organism ground truth)")
    cli.add_chat_template_arg(ap)
    ap.add_argument("--pilot-problems", type=cli.nonnegative_int, default=8,
                    help="problems of a pilot sample (1 completion per model) that estimates each strategy's "
                    "rate and the traces it needs, before the main sampling (0: no pilot)")
    ap.add_argument("--n-problems", type=cli.positive_int, default=400,
                    help="problems (x n-samples x 2 models traces); 400 gave 110 backtracking "
                    "segments (runs/demo/probe)")
    ap.add_argument("--n-samples", type=cli.positive_int, default=2, help="completions per problem per model")
    cli.add_sampling_args(ap, temperature=1.0, top_p=None, engine=False)
    ap.add_argument("--test-fraction", type=cli.open_fraction, default=0.25)
    ap.add_argument("--C", type=cli.positive_float, default=1.0, help="inverse L2 strength of the probes")
    ap.add_argument("--class-weight", choices=["balanced", "none"], default="balanced",
                    help="balanced (default): rare strategies (1-2%% of tokens) weigh as much as "
                    "frequent ones, so probes of different strategies are comparable")
    ap.add_argument("--control", choices=["global", "within_example"], default="global",
                    help="shuffle labels across all training tokens (default) or within each trace")
    ap.add_argument("--n-controls", type=cli.positive_int, default=3, help="shuffled controls per strategy (AUROC averaged)")
    ap.add_argument("--n-bootstrap", type=cli.positive_int, default=500)
    ap.add_argument("--steer-problems", type=cli.positive_int, default=24)
    ap.add_argument("--steer-samples", type=cli.positive_int, default=4)
    ap.add_argument("--alphas", type=cli.alpha_list, default="0,0.5,1,2", help="steering coefficients (must include 0)")
    ap.add_argument("--no-steer", action="store_true")
    ap.add_argument("--no-random-init", action="store_true",
                    help="skip the random-init control model (same architecture, fresh weights)")
    ap.add_argument("--acts", help="keep the paired activation store in this folder (default: a temp folder)")
    cli.add_run_args(ap, n_boot=None, batch_size=64, helps={"--json": cli.JSON_HELP, "--threads": (
        "torch CPU threads (default 1: the organism's small matmuls gain nothing from "
        "more on a shared 2-core machine; 0 = torch's default)")})
    return ap.parse_args(argv)


def run(args) -> tuple[dict, dict]:
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:6.1f}s] {msg}", file=sys.stderr)

    # the steering part grades completions (accuracy); probing alone needs no reference answers
    task = cli.load_task_from_args(args, need_answers=not args.no_steer)
    (base_name, base_path), (rl_name, rl_path) = resolve_model_spec(args.base), resolve_model_spec(args.rl)
    problems = task.problems(args.n_problems, seed=args.seed)
    # The steering prompts: disjoint from the problems the probes and vectors are fitted on.
    steer_problems = (None if args.no_steer else
                      task.problems(args.steer_problems, seed=args.seed + 1, exclude=problems))
    labeler = task_labeler(task, args.labels, regex=bool(args.problems))
    pair = load_pair(base=base_path, rl=rl_path, device=args.device)
    cli.use_chat_template(args, pair.base, pair.rl)
    prompts = [pair.base.encode_prompt(p.prompt) for p in problems]
    max_new = args.max_new_tokens or task.max_new_tokens
    plans = {}
    if args.pilot_problems > 0:
        k = min(args.pilot_problems, len(prompts))
        pilot = sample_traces(pair.models, prompts[:k], 1, seed=args.seed + 7, max_new_tokens=max_new,
                              temperature=args.temperature, labeler=labeler, batch_size=args.batch_size * 4)
        names = list(task.strategies) or list(getattr(labeler, "strategies", []))
        plans = plan_sample_size(pilot, names, 2 * args.n_problems * args.n_samples, MIN_SEGMENTS,
                                 args.test_fraction)
        for plan in plans.values():
            log(f"sample size: {plan.message()}")
    traces = sample_traces(pair.models, prompts, args.n_samples, seed=args.seed, max_new_tokens=max_new,
                           temperature=args.temperature, labeler=labeler, batch_size=args.batch_size * 4)
    log(f"sampled {len(traces)} traces")
    labels = [t.labels for t in traces]
    generated_by = np.array([t.generated_by for t in traces])
    with tempfile.TemporaryDirectory(prefix="twinlens-probe-") as tmp:
        acts = Path(args.acts) if args.acts else Path(tmp) / "acts"
        store = capture(pair, [t.token_ids for t in traces], hooks=["blocks.*.hook_out"], out=acts,
                        positions="all", batch_size=args.batch_size, progress=False)
        ds = {m: build_dataset(store, labels, model=m) for m in ("base", "rl")}
    log(f"captured {store.n_rows} rows x {len(ds['base'].layers)} layers x 2 models")
    split = split_examples(ds["base"].example, args.test_fraction, seed=args.seed)
    cw = None if args.class_weight == "none" else "balanced"
    sweep_kw = dict(C=args.C, class_weight=cw, control=args.control, n_bootstrap=args.n_bootstrap, seed=args.seed,
                    n_controls=args.n_controls)
    strategies = [s for s in (task.strategies or ds["base"].strategies) if s in ds["base"].labels]
    results: dict = {"strategies": {}, "sample_size": {k: v.to_dict() for k, v in plans.items()}}
    extra: dict = {"sweeps": {}, "vectors": {}, "pre": {}, "steering": {}}
    all_vectors = []
    probed = []
    for s in strategies:
        n_train_segments = sum(len(labels[e].spans_of(s)) for e in split.train_examples)
        n_test_segments = sum(len(labels[e].spans_of(s)) for e in split.test_examples)
        entry: dict = {"n_train_segments": n_train_segments, "n_test_segments": n_test_segments}
        results["strategies"][s] = entry
        if min(n_train_segments, n_test_segments) < MIN_SEGMENTS:
            plan = plans.get(s)
            need = (f"~{plan.traces_needed} traces at the pilot's rate" if plan and plan.traces_needed
                    else "many more traces")
            entry["skipped"] = (f"only {n_train_segments} train / {n_test_segments} held-out segments "
                                f"(< {MIN_SEGMENTS}); sample more problems ({need}; {len(traces)} sampled) "
                                "or use --labels decision")
            log(f"{s}: skipped ({entry['skipped']})")
        else:
            probed.append(s)
    # Every strategy and its control, every layer: one batched fit per model.
    all_sweeps = {m: sweep_strategies(ds[m], probed, split=split, **sweep_kw) if probed else {}
                  for m in ("base", "rl")}
    log(f"probes fitted ({len(probed)} strategies + controls x {len(ds['base'].layers)} layers x 2 models)")
    for s in probed:
        entry = results["strategies"][s]
        sweeps = {m: all_sweeps[m][s] for m in ("base", "rl")}
        extra["sweeps"][s] = sweeps
        for m, sw in sweeps.items():
            entry[m] = sw.to_dict()
        tkw = dict(n_bootstrap=args.n_bootstrap, seed=args.seed)
        entry["transfer"] = {
            "base->rl": transfer_probe(ds["base"], ds["rl"], s, split, probe=sweeps["base"].probe, **tkw).to_dict(),
            "rl->base": transfer_probe(ds["rl"], ds["base"], s, split, probe=sweeps["rl"].probe, **tkw).to_dict(),
        }
        vb = diff_of_means_vectors(ds["base"], s, examples=split.train_examples)
        vr = diff_of_means_vectors(ds["rl"], s, examples=split.train_examples)
        pw = probe_weight_vectors(ds["base"], s, sweeps["base"].probe, examples=split.train_examples)
        all_vectors += vb + vr + pw
        extra["vectors"][s] = vb
        entry["vector_cosine_base_rl"] = vector_cosines(vb, vr).tolist()
        entry["probe_weight_cosine_diff_of_means"] = vector_cosines(vb, pw).tolist()
        entry["vector_norm"] = [v.norm for v in vb]
        train_labels = [labels[e] for e in split.train_examples]
        att = attribute_layers(pair.base, train_labels, vb, max_segments=200, seed=args.seed)
        entry["attribution"] = att.to_dict()
        best = sweeps["base"].best_layer
        # Pre-existence on the RL model's own traces when it produced enough segments.
        rl_test = np.array([e for e in split.test_examples if generated_by[e] == "rl"])
        n_rl = sum(len(labels[e].spans_of(s)) for e in rl_test)
        pre_split = ExampleSplit(split.train_examples, rl_test if n_rl >= MIN_SEGMENTS else split.test_examples, split.seed)
        pre = preexistence_test(ds["rl"], s, vb[ds["base"].layer_index(best)], sweeps["base"].probe, pre_split,
                                n_bootstrap=args.n_bootstrap, seed=args.seed)
        extra["pre"][s] = pre
        entry["preexistence"] = {**pre.to_dict(), "traces": "rl-generated" if n_rl >= MIN_SEGMENTS else "all (too few rl segments)"}
        log(f"{s}: base best layer {best} AUROC {sweeps['base'].auroc.max():.3f} "
            f"(control {sweeps['base'].control_auroc[ds['base'].layer_index(best)]:.3f}); "
            f"attribution layer {att.chosen_layer}")
    if probed:
        trivial_baselines(args, pair, traces, ds, split, probed, all_sweeps, results, log)
    names = list(extra["vectors"])
    results["vector_cosine_between_strategies"] = {
        f"{a}|{b}": vector_cosines(extra["vectors"][a], extra["vectors"][b]).tolist()
        for i, a in enumerate(names) for b in names[i + 1:]
    }
    if not args.no_steer:
        alphas = args.alphas
        steer_prompts = [pair.base.encode_prompt(p.prompt) for p in steer_problems]
        chosen = [extra["vectors"][s][ds["base"].layer_index(results["strategies"][s]["attribution"]["chosen_layer"])]
                  for s in extra["vectors"]]
        runs = steering_experiment(
            pair.base, chosen, steer_prompts, alphas,
            label_fn=text_labeler(task, labeler),
            grade_fn=lambda i, text: task.grade(steer_problems[i], text),
            strategies=list(extra["vectors"]), n_samples=args.steer_samples, seed=args.seed,
            random_seed=args.seed + 1000, max_new_tokens=max_new, n_bootstrap=args.n_bootstrap,
            temperature=args.temperature,
        )
        for r in runs:
            results["strategies"][r.vector.strategy]["steering"] = r.to_dict()
            extra["steering"][r.vector.strategy] = r
        log("steering done")
    # What scripts/steer.py --vectors needs: each strategy's attribution-chosen layer (--layers
    # chosen) and the problems the vectors were fitted on (its held-out prompts exclude them).
    save_vectors(Path(args.out) / "vectors.safetensors", all_vectors, info={
        "task": task.name, "fit_problem_ids": [prompt_id(p.prompt) for p in problems],
        "chosen_layers": {s: results["strategies"][s]["attribution"]["chosen_layer"] for s in extra["vectors"]},
        "chat_template": bool(args.chat_template)})
    results["acceptance"] = acceptance(results)
    results["models"] = {
        "base": {"name": base_name, "path": str(base_path), "weight_hash": pair.base.weight_hash},
        "rl": {"name": rl_name, "path": str(rl_path), "weight_hash": pair.rl.weight_hash},
    }
    results["settings"] = {
        "task": task.name, "n_problems": args.n_problems, "n_samples": args.n_samples,
        "temperature": args.temperature, "max_new_tokens": max_new, "seed": args.seed,
        "test_fraction": args.test_fraction, "C": args.C, "class_weight": cw, "control": args.control,
        "n_controls": args.n_controls,
        "n_bootstrap": args.n_bootstrap, "labels": labels[0].source if labels else None,
        "chat_template": bool(args.chat_template), "pilot_problems": args.pilot_problems,
        "n_traces": {m: int((generated_by == m).sum()) for m in ("base", "rl")},
        "n_rows": int(ds["base"].n_rows), "layers": list(ds["base"].layers),
        "n_train_examples": int(len(split.train_examples)), "n_test_examples": int(len(split.test_examples)),
        "steer_problems": args.steer_problems, "steer_samples": args.steer_samples,
        "answers": "given" if task.has_answers else "none given (the problems file has rows without an "
                   "\"answer\"; probing needs none, and --no-steer skips the graded steering)",
        "ci": "95% percentile bootstrap over held-out examples (probes) or prompts (steering)",
        "seconds": round(time.time() - t0, 1),
    }
    return results, extra


def trivial_baselines(args, pair, traces, ds, split, probed, all_sweeps, results, log) -> None:
    """What each base probe must beat (probes.baselines): the token-identity baseline on the same
    held-out tokens (selectivity, paired CI), a random-init model of the same architecture through the
    same capture path, and decision-point probes with their own token baseline."""
    from probes.baselines import (
        decision_point_positions,
        decision_point_probe,
        paired_auroc_difference,
        random_init_model,
        token_baseline_scores,
    )
    from probes.metrics import bootstrap_metrics

    vocab = max(len(pair.base.tokenizer), int(getattr(pair.base.hf.config, "vocab_size", 0) or 0))
    base = ds["base"]
    tr_m, te_m = split.masks(base.example)
    tr, te = np.nonzero(tr_m & base.reasoning)[0], np.nonzero(te_m & base.reasoning)[0]
    groups = base.example[te]
    for s in probed:
        sw = all_sweeps["base"][s]
        y = base.y(s)
        tok = token_baseline_scores(base, y, tr, te, vocab, C=args.C)
        tm = bootstrap_metrics(tok[None], y[te], groups, args.n_bootstrap, args.seed)
        li = base.layer_index(sw.best_layer)
        probe_scores = sw.probe.decision_function(base.X[:, te])[li]
        sel, sel_ci = paired_auroc_difference(probe_scores, tok, y[te], groups, args.n_bootstrap, args.seed)
        results["strategies"][s]["token_baseline"] = {
            "auroc": float(tm["auroc"][0]), "auroc_ci": [float(x) for x in tm["auroc_ci"][0]],
            "features": "one-hot current token, previous token, position in the completion",
            "selectivity_at_best_layer": {"value": sel, "ci": list(sel_ci), "layer": sw.best_layer}}
        log(f"{s}: token baseline AUROC {tm['auroc'][0]:.3f}; selectivity {sel:+.3f} [{sel_ci[0]:+.3f}, {sel_ci[1]:+.3f}]")
    points = decision_point_positions(base, pair.base.tokenizer)
    dp = decision_point_probe(base, probed, split, points, vocab, C=args.C, n_controls=args.n_controls,
                              n_bootstrap=args.n_bootstrap, seed=args.seed)
    for s in probed:
        r = dp.get(s)
        results["strategies"][s]["decision_point"] = r.to_dict() if hasattr(r, "to_dict") else {"skipped": r}
    log("decision-point probes: " + "; ".join(
        f"{s} {r.to_dict()['auroc']:.3f} (token baseline {r.token_baseline_auroc:.3f})" if hasattr(r, "to_dict")
        else f"{s} skipped" for s, r in dp.items()))
    if args.no_random_init:
        return
    with tempfile.TemporaryDirectory(prefix="twinlens-randinit-") as tmp:
        folder = random_init_model(pair.base, Path(tmp) / "model", seed=args.seed)
        rand = load_model(folder, device=args.device)
        store = capture(rand, [t.token_ids for t in traces], hooks=["blocks.*.hook_out"], out=Path(tmp) / "acts",
                        positions="all", batch_size=args.batch_size, progress=False)
        labels = [t.labels for t in traces]
        rds = build_dataset(store, labels)
        rsw = sweep_strategies(rds, probed, split=split, C=args.C, class_weight=all_sweeps["base"][probed[0]].class_weight,
                               control=args.control, n_bootstrap=args.n_bootstrap, seed=args.seed, n_controls=1)
    for s in probed:
        i = int(np.argmax(rsw[s].auroc))
        results["strategies"][s]["random_init"] = {
            "auroc": float(rsw[s].auroc[i]), "auroc_ci": rsw[s].auroc_ci[i].tolist(), "best_layer": rsw[s].best_layer,
            "auroc_per_layer": rsw[s].auroc.tolist(), "seed": args.seed}
    log("random-init model: " + "; ".join(f"{s} {rsw[s].auroc.max():.3f}" for s in probed))


def acceptance(results: dict) -> dict:
    """Per strategy, the numbers the verdict rule reads (analyses/verdicts.verdict_probes): raw AUROC
    beside its shuffled control, the token baseline, selectivity, the random-init model and the
    decision-point probe."""
    out = {}
    for s, e in results["strategies"].items():
        if "base" not in e:
            continue
        i = int(np.argmax(e["base"]["auroc"]))
        a = {"best_layer": e["base"]["best_layer"], "auroc": e["base"]["auroc"][i],
             "control_auroc": e["base"]["control_auroc"][i],
             "probe_auroc_ge_0.9": e["base"]["auroc"][i] >= 0.9,
             "control_auroc_le_0.6": e["base"]["control_auroc"][i] <= 0.6}
        tb = e.get("token_baseline")
        if tb:
            a["token_baseline_auroc"] = {"value": tb["auroc"], "ci": tb["auroc_ci"]}
            a["selectivity"] = {k: tb["selectivity_at_best_layer"][k] for k in ("value", "ci")}
        if "random_init" in e:
            a["random_init_auroc"] = {"value": e["random_init"]["auroc"], "ci": e["random_init"]["auroc_ci"]}
        dp = e.get("decision_point")
        if dp and "auroc" in dp:
            a["decision_point"] = {k: dp[k] for k in ("auroc", "ci", "control_auroc", "layer", "n_pos", "n_neg",
                                                      "token_baseline_auroc", "selectivity")}
        if "steering" in e:
            a["steering_3x_random"] = any(e["steering"]["comparison"]["passes"])
            a["steering_layer"] = e["steering"]["layer"]
        out[s] = a
    return out


def plot_layers(results, extra, out: Path):
    plt = cli.pyplot()

    strategies = list(extra["sweeps"])
    if not strategies:
        return
    fig, axes = plt.subplots(2, len(strategies), figsize=(4.2 * len(strategies), 7), squeeze=False)
    for j, s in enumerate(strategies):
        e, ax = results["strategies"][s], axes[0, j]
        layers = e["base"]["layers"]
        for m, color in (("base", "C0"), ("rl", "C1")):
            ci = np.array(e[m]["auroc_ci"])
            ax.plot(layers, e[m]["auroc"], "o-", color=color, label=f"{m} probe")
            ax.fill_between(layers, ci[:, 0], ci[:, 1], color=color, alpha=0.2)
        ax.plot(layers, e["base"]["control_auroc"], "s:", color="gray", label="shuffled control (base)")
        ax.plot(layers, e["transfer"]["base->rl"]["auroc"], "^--", color="C2", label="base probe on rl")
        ax.plot(layers, e["transfer"]["rl->base"]["auroc"], "v--", color="C3", label="rl probe on base")
        ax.axhline(0.5, color="k", lw=0.5)
        ax.set_ylim(0.3, 1.02)
        ax.set_title(s)
        ax.set_xlabel("layer")
        if j == 0:
            ax.set_ylabel("held-out AUROC (95% CI)")
            ax.legend(fontsize=7, loc="lower right")
        ax2 = axes[1, j]
        ax2.plot(layers, e["vector_cosine_base_rl"], "o-", label="cos(base, rl) diff-of-means")
        att = np.array(e["attribution"]["effect"])
        ax2.plot(layers, att / max(att.max(), 1e-12), "d--", label="attribution (scaled)")
        ax2.axvline(e["attribution"]["chosen_layer"], color="C1", lw=0.8)
        ax2.set_ylim(-0.05, 1.05)
        ax2.set_xlabel("layer")
        if j == 0:
            ax2.legend(fontsize=7)
    save_figure(fig, out / "probe_layers.png")


def plot_preexistence(extra, out: Path):
    plt = cli.pyplot()

    if not extra["pre"]:
        return
    fig, axes = plt.subplots(1, len(extra["pre"]), figsize=(4 * len(extra["pre"]), 3.4), squeeze=False)
    for ax, (s, pre) in zip(axes[0], extra["pre"].items(), strict=True):
        ci = pre.probe_score_ci
        ax.errorbar(pre.offsets, pre.probe_score, yerr=[pre.probe_score - ci[:, 0], ci[:, 1] - pre.probe_score],
                    fmt="o-", capsize=3, label="base probe logit on rl")
        ax.axhline(pre.baseline_score, color="gray", ls=":", label="outside the strategy")
        ax.axvline(-0.5, color="k", lw=0.5)
        ax.set_title(f"{s} (layer {pre.layer}); vector AUROC@-1 {pre.auroc_at(-1):.2f}", fontsize=9)
        ax.set_xlabel("offset from segment start")
        ax.legend(fontsize=7)
    save_figure(fig, out / "preexistence.png")


def plot_steering(runs: dict, out: Path, name: str = "steering.png"):
    plt = cli.pyplot()

    if not runs:
        return
    fig, axes = plt.subplots(2, len(runs), figsize=(4 * len(runs), 6), squeeze=False)
    for j, (s, r) in enumerate(runs.items()):
        ax = axes[0, j]
        for curve, color, lab in ((r.curve, "C0", f"{s} vector"), (r.random_curve, "gray", "random, equal norm")):
            ci = curve.frequency_ci[s]
            ax.plot(curve.alphas, curve.frequency[s], "o-", color=color, label=lab)
            ax.fill_between(curve.alphas, ci[:, 0], ci[:, 1], color=color, alpha=0.2)
        ax.set_title(f"{s}, layer {r.vector.layer}")
        ax.set_ylabel("share of samples using it")
        ax.legend(fontsize=7)
        ax2 = axes[1, j]
        for curve, color in ((r.curve, "C0"), (r.random_curve, "gray")):
            ci = curve.accuracy_ci
            ax2.plot(curve.alphas, curve.accuracy, "o-", color=color)
            ax2.fill_between(curve.alphas, ci[:, 0], ci[:, 1], color=color, alpha=0.2)
        ax2.set_xlabel("alpha")
        ax2.set_ylabel("task accuracy")
    save_figure(fig, out / name)


def summary(results: dict) -> str:
    st = results["settings"]
    lines = [
        "# Strategy probes: base vs RL", "",
        f"Models: base `{results['models']['base']['name']}`, RL `{results['models']['rl']['name']}`. "
        f"Task `{st['task']}`: {st['n_problems']} problems x {st['n_samples']} samples per model "
        f"(temperature {st['temperature']}, seed {st['seed']}); {st['n_traces']} traces, labels "
        f"`{st['labels']}`. Probes: L2 logistic regression (C={st['C']}, class_weight={st['class_weight']}) "
        f"on every layer at once, {st['n_train_examples']} train / {st['n_test_examples']} held-out traces; "
        f"control: labels shuffled ({st['control']}), AUROC averaged over {st['n_controls']} shuffles. "
        f"Brackets: {st['ci']}.", "",
        *([f"Reference answers: {st['answers']}.", ""] if st.get("answers", "given") != "given" else []),
        "| strategy | base best layer | base AUROC | control | selectivity | RL AUROC (same layer) | "
        "base->RL | RL->base | cos(base, RL) vector | attribution layer |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s, e in results["strategies"].items():
        if "base" not in e:
            lines.append(f"| {s} | {e.get('skipped', '')} |||||||||")
            continue
        i = e["base"]["layers"].index(e["base"]["best_layer"])
        ci = e["base"]["auroc_ci"][i]
        lines.append(
            f"| {s} | {e['base']['best_layer']} | {e['base']['auroc'][i]:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] | "
            f"{e['base']['control_auroc'][i]:.3f} | {e['base']['selectivity'][i]:.3f} | {e['rl']['auroc'][i]:.3f} | "
            f"{e['transfer']['base->rl']['auroc'][i]:.3f} | {e['transfer']['rl->base']['auroc'][i]:.3f} | "
            f"{e['vector_cosine_base_rl'][i]:.3f} | {e['attribution']['chosen_layer']} |")
    lines += ["", "## Pre-existence (base vector / base probe read on RL activations)", "",
              "| strategy | layer | traces | vector AUROC at start-1 [CI] | probe logit at -3, -2, -1, 0, +1 | outside | rises before emission |",
              "|---|---|---|---|---|---|---|"]
    for s, e in results["strategies"].items():
        if "preexistence" not in e:
            continue
        p = e["preexistence"]
        k = p["offsets"].index(-1)
        lines.append(f"| {s} | {p['layer']} | {p['traces']} | {p['projection_auroc'][k]:.3f} "
                     f"[{p['projection_auroc_ci'][k][0]:.3f}, {p['projection_auroc_ci'][k][1]:.3f}] | "
                     + ", ".join(f"{v:.2f}" for v in p["probe_score"])
                     + f" | {p['baseline_score']:.2f} | {p['rises_before_emission']} |")
    if any("steering" in e for e in results["strategies"].values()):
        lines += ["", "## Steering the base model (attribution-chosen layer; see scripts/steer.py for the full sweep)", "",
                  "| strategy | layer | alpha | frequency | random vector | accuracy | passes (>= 3x random, CIs apart) |",
                  "|---|---|---|---|---|---|---|"]
        for s, e in results["strategies"].items():
            if "steering" not in e:
                continue
            r = e["steering"]
            for k, a in enumerate(r["alpha"]):
                lines.append(f"| {s} | {r['layer']} | {a:g} | {r['frequency'][k]:.2f} | {r['random_frequency'][k]:.2f} | "
                             f"{r['accuracy'][k]:.2f} | {r['comparison']['passes'][k]} |")
    lines += ["", "## Acceptance", "", "```", json.dumps(results["acceptance"], indent=1), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(run_and_report, parse_args(argv))


def run_and_report(args) -> dict:
    out = Path(args.out)
    results, extra = run(args)
    plot_layers(results, extra, out)
    plot_preexistence(extra, out)
    plot_steering(extra["steering"], out)
    write_results(out, results, summary(results))
    return results


if __name__ == "__main__":
    raise SystemExit(main())
