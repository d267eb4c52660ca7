"""Accuracy (greedy and sampled, 95% Wilson CIs), format mix and strategy frequencies of
organism checkpoints on held-out problems (the eval partition, disjoint from training).

    python scripts/evaluate.py --checkpoints base sft rl-seed0 rl-seed1 --n 500 --out runs/eval
    python scripts/evaluate.py --checkpoints path/to/hf-folder --n 100 --json
    python scripts/evaluate.py --card --out runs/card          # every number of the model card
    python scripts/model_card.py --card runs/card/results.json # ... written into the card's README

Writes DIR/results.json, DIR/summary.md and DIR/accuracy.png, DIR/formats.png.
With --card (analyses.organism_card): the base's pass@k per tier against the uniform guesser, every
checkpoint's accuracy / formats / strategies / length / bf16 unchanged fraction / KL and entropy per
domain, the sparse seeds' overlap, the stated confidence's ECE/Brier/AUROC, and the claim rows;
DIR/results.json is the card JSON, DIR/summary.md its tables, DIR/passk.png the base's curves.
The base's pass@k samples go through vLLM when it is installed (--engine auto, the card's default),
else the HF loop; results.json records which engine made which numbers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import organism  # noqa: E402
from analyses.reporting import save_figure, write_results  # noqa: E402
from hooks import TwinlensError, generate, load_model  # noqa: E402
from organism.evaluation import CheckpointEval, evaluate_model  # noqa: E402
from organism.task import FORMATS, STRATEGIES, eval_problems  # noqa: E402
from scripts import _cli as cli  # noqa: E402

DEFAULT = ["base", "sft", "rl-seed0", "rl-seed1", "rl-hard"]


def resolve(name: str) -> Path:
    p = Path(name)
    if p.is_dir() and (p / "config.json").exists():
        return p
    return organism.checkpoint_path(name)


def write_plots(results: list[CheckpointEval], out: Path) -> None:
    plt = cli.pyplot()
    names = [r.name for r in results]
    x = range(len(names))
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(names)), 3.5))
    for off, mode in ((-0.2, "greedy"), (0.2, "sampled")):
        vals = [getattr(r, mode).accuracy for r in results]
        ax.bar([i + off for i in x], [v.value for v in vals], width=0.4, label=mode,
               yerr=[[max(0.0, v.value - v.low) for v in vals],
                     [max(0.0, v.high - v.value) for v in vals]], capsize=3)
    ax.set_xticks(list(x), names, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (95% Wilson CI)")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, out / "accuracy.png")

    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(names)), 3.5))
    bottom = [0.0] * len(names)
    for f in (*FORMATS, "other"):
        vals = [r.sampled.formats[f].value for r in results]
        ax.bar(list(x), vals, bottom=bottom, label=f)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.set_xticks(list(x), names, rotation=30, ha="right")
    ax.set_ylabel("format share (sampled, T=1)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "formats.png")


def summary_markdown(results: list[CheckpointEval], args) -> str:
    lines = [f"# Organism evaluation: {args.n} held-out problems (eval set {args.eval_set}), "
             f"seed {args.seed}", "",
             "Rates with 95% Wilson intervals. Sampled = temperature 1, one sample per problem.", "",
             "| checkpoint | greedy acc | sampled acc | " + " | ".join(f"{f} (s)" for f in FORMATS)
             + " | " + " | ".join(f"{s} (s)" for s in STRATEGIES) + " | mean len (s) |",
             "|---" * (4 + len(FORMATS) + len(STRATEGIES)) + "|"]
    for r in results:
        cells = [r.name, str(r.greedy.accuracy), str(r.sampled.accuracy)]
        cells += [str(r.sampled.formats[f]) for f in FORMATS]
        cells += [str(r.sampled.strategies[s]) for s in STRATEGIES]
        cells += [f"{r.sampled.mean_length:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Greedy format mix:", "",
              "| checkpoint | " + " | ".join(FORMATS) + " | other | " + " | ".join(STRATEGIES) + " |",
              "|---" * (2 + len(FORMATS) + len(STRATEGIES)) + "|"]
    for r in results:
        cells = [r.name] + [f"{r.greedy.formats[f].value:.3f}" for f in (*FORMATS, "other")]
        cells += [f"{r.greedy.strategies[s].value:.3f}" for s in STRATEGIES]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Example sampled completions:", ""]
    for r in results:
        lines.append(f"- **{r.name}**: " + "; ".join(f"`{e}`" for e in r.sampled.examples[:3]))
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = cli.make_parser(__doc__)
    ap.add_argument("--checkpoints", nargs="+", default=None,
                    help="shipped names (organism.list_checkpoints()) or HF folders; default: "
                    + " ".join(DEFAULT))
    ap.add_argument("--n", type=cli.positive_int, default=500, help="held-out problems")
    ap.add_argument("--eval-set", type=cli.nonnegative_int, default=0, help="held-out set number k")
    ap.add_argument("--difficulty", type=cli.difficulty, default=4, help=cli.DIFFICULTY_HELP)
    ap.add_argument("--seed", type=cli.nonnegative_int, default=0, help="sampling seed")
    ap.add_argument("--samples", type=cli.positive_int, default=1, help="samples per problem at T=1")
    ap.add_argument("--max-new-tokens", type=cli.positive_int,
                    help="default: the tier's longest trace + room for a backtrack (analyses.task.organism_max_new_tokens)")
    cli.add_engine_args(ap, scorer=False)
    ap.set_defaults(engine=None)  # hf, or for --card auto (vLLM for the bulk sampling when installed)
    card = ap.add_argument_group("model card (--card)")
    card.add_argument("--card", action="store_true",
                      help="measure every number of the model card (analyses.organism_card); --n is the "
                      "held-out problems per measurement; --checkpoints default: every shipped name but the "
                      "intermediate -step* checkpoints")
    card.add_argument("--passk-samples", type=cli.positive_int, default=256,
                      help="samples per problem for the base's pass@k (the largest k)")
    card.add_argument("--passk-problems", type=cli.positive_int, default=100,
                      help="problems per tier for pass@k (default 100: the card in ~10 min on 2 free cores; "
                      "500 for the full protocol, ~4x the sampling time)")
    card.add_argument("--tiers", type=cli.difficulty, nargs="+", default=None,
                      help="operand counts of the pass@k rows (default: every tier, organism.task MIN_OPERANDS..MAX_OPERANDS)")
    card.add_argument("--twin-tier", type=cli.difficulty, default=4,
                      help="operands of the per-checkpoint problems (and of the twins' pass@k)")
    card.add_argument("--passk-twins", nargs="*", default=None,
                      help="twins that also get a pass@k curve at --passk-twin-tier (default: rl-seed0 rl-nsr rl-psr "
                      "where shipped; none: give the flag alone)")
    card.add_argument("--passk-twin-tier", type=cli.difficulty, default=None,
                      help="operands of the twins' pass@k problems (default: the hardest tier, where the base's "
                      "pass@256 has room)")
    card.add_argument("--n-boot", type=cli.positive_int, default=1000, help="bootstrap resamples")
    card.add_argument("--stage-cache", type=Path, default=None,
                      help="folder of finished card stages, reused when their weights and settings are unchanged "
                      "(default: OUT/stages; give one outside OUT to keep it across --overwrite)")
    card.add_argument("--card-engine", choices=("auto", "vllm", "hf"), default=None,
                      help="engine of the card's sampling (default: --engine if given, else auto)")
    ap.add_argument("--out", type=Path, default=Path("runs/evaluate"))
    ap.add_argument("--overwrite", action="store_true", help=cli.OVERWRITE_HELP)
    ap.add_argument("--json", action="store_true", help="print results.json to stdout")
    ap.add_argument("--threads", type=cli.nonnegative_int, default=1,
                    help="torch threads (1 is fastest for this tiny model, esp. on a shared CPU)")
    args = ap.parse_args(argv)
    if args.max_new_tokens is None:
        from analyses.task import organism_max_new_tokens

        args.max_new_tokens = organism_max_new_tokens(args.difficulty)
    if args.card:
        args.card_engine = args.card_engine or args.engine or "auto"
        args.engine = "vllm" if args.card_engine == "vllm" else "hf"
    args.engine = args.engine or "hf"
    try:
        cli.check_engine_args(args)
    except TwinlensError as e:
        ap.error(str(e))
    if args.card:
        shipped = organism.list_checkpoints()
        if args.checkpoints is None:
            args.checkpoints = [n for n in shipped if "-step" not in n]
            if "base" not in args.checkpoints:
                ap.error("--card needs a checkpoint named 'base' (run scripts/train_organism.py, or set "
                         "TWINLENS_ORGANISM_CHECKPOINTS to a folder of checkpoints)")
        elif "base" not in args.checkpoints:
            ap.error("--card compares every checkpoint with the base: include 'base' in --checkpoints")
        if args.passk_twins is None:
            args.passk_twins = [n for n in ("rl-seed0", "rl-nsr", "rl-psr") if n in args.checkpoints]
        unknown = [n for n in args.passk_twins if n not in args.checkpoints]
        if unknown:
            ap.error(f"--passk-twins {unknown} are not among --checkpoints {args.checkpoints}")
        try:
            from analyses.organism_card import CARD_TIERS, CardSettings

            args._card = CardSettings(
                n_problems=args.n, passk_problems=args.passk_problems, passk_samples=args.passk_samples,
                passk_tiers=tuple(args.tiers or CARD_TIERS), passk_twins=tuple(args.passk_twins),
                twin_tier=args.twin_tier, eval_set=args.eval_set, seed=args.seed, n_boot=args.n_boot,
                engine=args.card_engine,
                **({} if args.passk_twin_tier is None else {"passk_twin_tier": args.passk_twin_tier}))
        except TwinlensError as e:
            ap.error(str(e))
    args.checkpoints = args.checkpoints or [n for n in DEFAULT if n in organism.list_checkpoints()]
    try:
        args._paths = {n: resolve(n) for n in args.checkpoints}  # fail before any work on a wrong name
    except LookupError as e:
        ap.error(str(e.args[0]) + " (or give a folder holding config.json)")
    return args


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(run, parse_args(argv))


def write_card_plot(card: dict, out: Path) -> None:
    plt = cli.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (tier, b) in enumerate(sorted(card["tiers"].items(), key=lambda kv: int(kv[0]))):
        pk = b["pass_at_k"]
        ax.plot(pk["k"], pk["mean"], "o-", color=f"C{i}", label=f"base, {tier} operands")
        ax.fill_between(pk["k"], pk["ci_low"], pk["ci_high"], color=f"C{i}", alpha=0.2)
    if card["tiers"]:
        pk = next(iter(card["tiers"].values()))["pass_at_k"]
        ax.plot(pk["k"], pk["guesser"], "k--", label="uniform guesser (100 answers)")
    ax.set_xscale("log", base=2)
    ax.set_ylim(0, 1)
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k (95% bootstrap CI)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out / "passk.png")


def run_card(args: argparse.Namespace) -> dict:
    from analyses.organism_card import card_markdown, measure_card

    card = measure_card(args._paths, args._card, cache=args.stage_cache or args.out / "stages")
    write_results(args.out, card, "# Organism model card numbers\n\n" + card_markdown(card))
    write_card_plot(card, args.out)
    if not args.json:
        print(card_markdown(card))
    return card


def run(args: argparse.Namespace) -> dict:
    if args.card:
        return run_card(args)
    paths = args._paths
    problems = eval_problems(args.n, args.eval_set, args.difficulty)
    results: list[CheckpointEval] = []
    for name, path in paths.items():
        t0 = time.time()
        model = load_model(str(path), device="cpu", dtype=torch.float32)

        def gen(prompts, temperature, n, seed, model=model):
            ids = [model.encode(p) for p in prompts]
            out = generate(model, ids, args.max_new_tokens, temperature=temperature, n=n,
                           seed=seed, batch_size=256, engine=args.engine)
            return [model.tokenizer.decode(o, skip_special_tokens=True) for o in out]

        r = evaluate_model(model.hf, model.tokenizer, problems, name=name, seed=args.seed,
                           samples=args.samples, generate_fn=gen)
        results.append(r)
        if args.engine == "vllm":  # one engine at a time: each holds its own KV cache
            from hooks.vllm_engine import release_engine

            release_engine(model)
        print(f"{name}: greedy {r.greedy.accuracy}  sampled {r.sampled.accuracy}  "
              f"({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    payload = {"generation": ("hooks.generate (HF model, KV cache, token ids, no BOS)" if args.engine == "hf" else
                              "hooks.generate(engine='vllm') (vLLM, same per-row seeds, token ids, no BOS)"),
               "n_problems": args.n, "eval_set": args.eval_set, "difficulty": args.difficulty,
               "seed": args.seed, "samples_per_problem": args.samples,
               "checkpoints": {r.name: r.to_dict() for r in results},
               "paths": {n: str(p) for n, p in paths.items()}}
    write_results(args.out, payload, summary_markdown(results, args))
    write_plots(results, args.out)
    if not args.json:
        print(summary_markdown(results, args))
    return payload


if __name__ == "__main__":
    raise SystemExit(main())
