"""Rebuild every organism checkpoint from scratch: the base, then every twin of issue 14's table in
parallel worker processes (one fresh process and one torch thread per stage, so a stage's weights do
not depend on which worker ran it or in what order). Prints each stage's wall time; writes
build_report.json (wall time per stage, bf16 unchanged fraction vs base of every twin, the sparse
seeds' update overlap with its random baseline).

    python scripts/train_organism.py --out /tmp/org                 # every stage, 2 workers
    python scripts/train_organism.py --out /tmp/org --quick         # a few steps each: path check
    python scripts/train_organism.py --out /tmp/org --stages rl-nsr,rl-psr   # reuses /tmp/org/base

Stages (the names tools look up; ``organism/checkpoints/README.md`` says what each makes true):
  base             pretraining on PRETRAIN_MIX (tiers 3-6, '?' prompts, open domain)
  sft              SFT_MIX (correct step/verify traces only)
  rl-seed0, rl-seed1   GRPO, correctness reward, ':' prompts of tiers 3-5 (organism.training.RL_TIERS);
                   rl-seed0 also writes rl-seed0-step<s> for s in --save-steps
  rl-hard          rl-seed0's recipe on tier-7 problems (pretraining stopped at 6) with base pass@8 = 0
  rl-sparse-seed0, rl-sparse-seed1   bf16 master weights, smaller lr, more steps (sparse updates)
  rl-kl-<beta>     rl-seed0's recipe with TRL's KL coefficient beta (one stage per --kl-betas value)
  rl-nsr, rl-psr   rl-seed0's recipe keeping only negative / only positive advantages
  rl-binary, rl-brier  '?' prompts of tiers 3-5, reward correct (1/0) vs c - (q - c)^2
  rl-open          open-domain prompts, correctness reward (any right digit string)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hooks import TwinlensError  # noqa: E402
from hooks.locking import FolderLock  # noqa: E402
from organism.corpus import SFT_MIX  # noqa: E402
from organism.training import (  # noqa: E402
    RLConfig,
    StageSpec,
    SupervisedConfig,
    bf16_unchanged_fraction,
    run_stage,
    update_overlap,
)
from scripts import _cli as cli  # noqa: E402

RL_SAVE_STEPS = (0, 1, 2, 3, 5, 10, 20, 30, 40)
# Expected cost order (longest first keeps 2 workers busy to the end): used to schedule.
_COST = {"rl-sparse": 4, "rl-kl": 3, "rl-hard": 2.5, "sft": 2}


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected one or more KL coefficients > 0, got {text!r}")
    return values


def _beta_name(beta: float) -> str:
    return f"rl-kl-{beta:g}"


def stage_plan(args: argparse.Namespace) -> dict[str, StageSpec]:
    """Every stage's recipe, by name, from the command line."""
    rl = RLConfig(steps=args.rl_steps, lr=args.rl_lr, seed=0, max_completion_length=args.max_completion,
                  prompts_per_step=args.rl_prompts, generations=args.rl_generations)
    save_at = tuple(s for s in args.save_steps if s < args.rl_steps) + (args.rl_steps,)
    sparse = replace(rl, steps=args.sparse_steps, lr=args.sparse_lr, master_dtype="bfloat16")
    plan = [
        StageSpec("base", "pretrain", supervised=SupervisedConfig(steps=args.pretrain_steps, seed=args.seed)),
        StageSpec("sft", "sft", supervised=SupervisedConfig(
            steps=args.sft_steps, lr=3e-4, warmup=20, seed=args.seed + 1, mix=SFT_MIX)),
        StageSpec("rl-seed0", "rl", rl=rl, save_at=save_at),
        StageSpec("rl-seed1", "rl", rl=replace(rl, seed=1)),
        StageSpec("rl-hard", "rl-hard", rl=replace(rl, max_completion_length=args.hard_max_completion),
                  hard_pool=args.hard_pool, hard_difficulty=args.hard_difficulty, hard_variant=args.hard_variant,
                  note=f"rl-seed0's recipe on {args.hard_variant} problems of {args.hard_difficulty} operands "
                  "the base never solves"),
        StageSpec("rl-sparse-seed0", "rl", rl=sparse,
                  note="bf16 master weights: Adam steps below half a bf16 ulp are lost"),
        StageSpec("rl-sparse-seed1", "rl", rl=replace(sparse, seed=1),
                  note="bf16 master weights: Adam steps below half a bf16 ulp are lost"),
        *[StageSpec(_beta_name(b), "rl", rl=replace(rl, beta=b), note=f"rl-seed0's recipe, KL beta {b:g}")
          for b in args.kl_betas],
        StageSpec("rl-nsr", "rl", rl=replace(rl, advantage_sign="negative"),
                  note="negative sample reinforcement (Zhu et al. 2506.01347)"),
        StageSpec("rl-psr", "rl", rl=replace(rl, advantage_sign="positive"),
                  note="positive sample reinforcement (Zhu et al. 2506.01347)"),
        StageSpec("rl-binary", "rl", rl=replace(rl, problems="confidence"),
                  note="'?' prompts, reward correct 1/0 (the stated confidence is not rewarded)"),
        StageSpec("rl-brier", "rl", rl=replace(rl, problems="confidence", reward="brier"),
                  note="'?' prompts, RLCR reward c - (q - c)^2"),
        StageSpec("rl-open", "rl", rl=replace(rl, problems="open"),
                  note="open-domain prompts, any right digit string"),
    ]
    return {s.name: s for s in plan}


def _cost(name: str) -> float:
    return next((c for prefix, c in _COST.items() if name.startswith(prefix)), 1.0)


def _twins(out: Path, plan: dict[str, StageSpec]) -> list[str]:
    return [n for n in plan if n != "base" and (out / n / "model.safetensors").exists()]


def build_report(out: Path, plan: dict[str, StageSpec]) -> dict:
    """bf16 unchanged fraction vs base of every twin in ``out``; rl-seed0 vs rl-seed1; the sparse
    seeds' update overlap (o1, o2) with its random baseline (organism.training.update_overlap)."""
    base = out / "base"
    if not (base / "model.safetensors").exists():
        return {}
    changes = {n: bf16_unchanged_fraction(base, out / n)["unchanged_fraction"] for n in _twins(out, plan)}
    if (out / "rl-seed0").exists() and (out / "rl-seed1").exists():
        changes["rl-seed0_vs_rl-seed1"] = bf16_unchanged_fraction(out / "rl-seed0", out / "rl-seed1")["unchanged_fraction"]
    report: dict = {"bf16_unchanged_fraction_vs_base": changes}
    pairs = {"sparse_overlap": ("rl-sparse-seed0", "rl-sparse-seed1"), "seed_overlap": ("rl-seed0", "rl-seed1")}
    for key, (a, b) in pairs.items():
        if (out / a / "model.safetensors").exists() and (out / b / "model.safetensors").exists():
            report[key] = update_overlap(base, out / a, out / b)
    return report


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("organism/checkpoints"))
    ap.add_argument("--quick", action="store_true", help="a few steps of every stage (tests)")
    ap.add_argument("--seed", type=cli.nonnegative_int, default=0, help="pretraining seed")
    ap.add_argument("--pretrain-steps", type=cli.nonnegative_int, default=2500)
    ap.add_argument("--sft-steps", type=cli.nonnegative_int, default=300)
    ap.add_argument("--rl-steps", type=cli.nonnegative_int, default=50)
    ap.add_argument("--rl-lr", type=cli.positive_float, default=3e-4)
    ap.add_argument("--sparse-steps", type=cli.nonnegative_int, default=100,
                    help="steps of the rl-sparse-seed* twins")
    ap.add_argument("--sparse-lr", type=cli.positive_float, default=3e-5,
                    help="lr of the rl-sparse-seed* twins (bf16 master weights)")
    ap.add_argument("--kl-betas", type=_floats, default=(1.0, 3.0),
                    help="KL coefficients of the rl-kl-<beta> twins (comma-separated, each > 0)")
    ap.add_argument("--hard-difficulty", type=cli.difficulty, default=7,
                    help="operands per rl-hard problem (the base was pretrained on 3..6: it fails every "
                    "one of 8 samples on 1694 of 2000 tier-7 problems, on 6 of 400 at tier 6)")
    ap.add_argument("--hard-variant", choices=("sum", "sub"), default="sum",
                    help="rl-hard's problems: sums (default) or subtraction, which the base never saw "
                    "(pass@8 = 0 on all of them, so GRPO gets no reward and changes nothing)")
    ap.add_argument("--hard-pool", type=cli.positive_int, default=2000,
                    help="problems screened for base pass@8 = 0 (rl-hard's training set)")
    ap.add_argument("--max-completion", type=cli.positive_int, default=110,
                    help="RL completion length limit (tokens); a tier-5 verify trace with a backtrack "
                    "and '@d' is 89")
    ap.add_argument("--hard-max-completion", type=cli.positive_int, default=140,
                    help="rl-hard's completion length limit (a tier-7 sum's verify trace with a "
                    "backtrack and '@d' is 121)")
    ap.add_argument("--rl-prompts", type=cli.positive_int, default=8, help="prompts per GRPO step")
    ap.add_argument("--rl-generations", type=cli.positive_int, default=8,
                    help="completions per prompt (the GRPO group)")
    ap.add_argument("--save-steps", type=lambda t: tuple(int(x) for x in t.split(",")),
                    default=RL_SAVE_STEPS, help="rl-seed0's intermediate checkpoints (and the final step)")
    ap.add_argument("--stages", default=None, help="comma-separated subset (default: all)")
    ap.add_argument("--workers", type=cli.positive_int, default=2,
                    help="stages run in parallel after the base, one process and one torch thread each")
    ap.add_argument("--threads", type=cli.positive_int, default=1,
                    help="torch threads per stage (1 is fastest for this tiny model)")
    ap.add_argument("--no-progress", action="store_true", help="no per-step bar for a lone stage")
    args = ap.parse_args(argv)
    if args.quick:
        args.pretrain_steps, args.sft_steps, args.rl_steps, args.sparse_steps = 10, 3, 2, 3
        args.hard_pool, args.max_completion, args.hard_max_completion = 8, 24, 24
        args.rl_prompts, args.rl_generations, args.save_steps = 2, 4, (0, 1)
    plan = stage_plan(args)
    stages = list(plan) if args.stages is None else [s for s in args.stages.split(",") if s]
    unknown = [s for s in stages if s not in plan]
    if unknown:
        ap.error(f"unknown stage(s) {unknown}; valid: {','.join(plan)}")
    out: Path = args.out
    try:  # one trainer per checkpoints folder; a file or unwritable path is refused before training
        lock = FolderLock(out, what="train_organism").acquire()  # noqa: F841 -- held until main returns
    except TwinlensError as exc:
        ap.error(str(exc))
    if "base" not in stages and not (out / "base" / "model.safetensors").exists():
        ap.error(f"stages {stages} start from {out / 'base'}, which does not exist: add 'base' to --stages")

    walls: dict[str, float] = {}
    skipped: dict[str, str] = {}
    t_build = time.time()
    ctx = multiprocessing.get_context("forkserver")
    # trl loads its trainer (and wandb) lazily: preloaded once here, not once per stage
    ctx.set_forkserver_preload(["organism.training", "trl.trainer.grpo_trainer", "datasets"])
    # A lone stage in the foreground may show its step bar; parallel stages report when done.
    waves = [[s for s in stages if s == "base"],
             sorted((s for s in stages if s != "base"), key=lambda n: -_cost(n))]
    n_done, n_all = 0, len(stages)
    for wave in waves:
        if not wave:
            continue
        bar = not args.no_progress and len(wave) == 1
        with ProcessPoolExecutor(max_workers=min(args.workers, len(wave)), mp_context=ctx,
                                 max_tasks_per_child=1) as pool:
            running = {pool.submit(run_stage, plan[n], str(out), args.threads, bar): n for n in wave}
            for n in wave:
                print(f"   queued {n}", flush=True)
            pending = set(running)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    name = running[fut]
                    try:
                        res = fut.result()
                    except Exception as exc:
                        pool.shutdown(cancel_futures=True)
                        raise SystemExit(f"stage {name} failed: {type(exc).__name__}: {exc}") from exc
                    n_done += 1
                    walls[name] = res["seconds"]
                    if "skipped" in res:
                        skipped[name] = res["skipped"]
                    print(f"[{n_done}/{n_all}] {name}: {res['seconds']:.1f} s"
                          + (f" (skipped: {res['skipped']})" if "skipped" in res else "")
                          + f"; {time.time() - t_build:.0f} s since start", flush=True)
    build_wall = round(time.time() - t_build, 1)
    for d in out.glob(".trl-*"):
        shutil.rmtree(d, ignore_errors=True)

    # A partial rebuild (--stages) keeps the recorded wall times of the stages it did not rerun.
    report_path = out / "build_report.json"
    previous = json.loads(report_path.read_text()) if report_path.exists() else {}
    if previous.get("quick") == args.quick:
        walls = {**previous.get("stage_wall_seconds", {}), **walls}
    report: dict = {"stage_wall_seconds": walls, "total_wall_seconds": round(sum(walls.values()), 1),
                    "build_wall_seconds": build_wall, "workers": args.workers,
                    "quick": args.quick, "threads": args.threads, "skipped": skipped,
                    "command": " ".join(sys.argv), **build_report(out, plan)}
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    print("\nwall time per stage (s):", walls)
    print(f"sum over stages: {report['total_wall_seconds']:.1f} s; this build: {build_wall:.1f} s wall "
          f"with {args.workers} workers")
    print("bf16 weights unchanged vs base:",
          {k: round(v, 4) for k, v in report.get("bf16_unchanged_fraction_vs_base", {}).items()})
    if "sparse_overlap" in report:
        o = report["sparse_overlap"]
        print(f"sparse seeds' overlap: o1 {o['o1']:.3f} o2 {o['o2']:.3f} "
              f"(random {o['random_o1']:.3f} / {o['random_o2']:.3f})")
    return report


if __name__ == "__main__":
    main()
