"""Rebuild every organism checkpoint from scratch: base, sft, rl-seed0 (+ intermediate steps),
rl-seed1, rl-hard. Deterministic by seed; prints the wall time of each stage.

    python scripts/train_organism.py --out organism/checkpoints          # ~8 min, one thread
    python scripts/train_organism.py --out /tmp/org --quick              # seconds: path check
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from hooks import TwinlensError  # noqa: E402
from hooks.locking import FolderLock  # noqa: E402
from organism.corpus import SFT_MIX  # noqa: E402
from organism.training import (  # noqa: E402
    RLConfig,
    SupervisedConfig,
    bf16_unchanged_fraction,
    find_unsolved_problems,
    finetune_sft,
    load_fp32,
    pretrain_base,
    train_rl,
)
from scripts import _cli as cli  # noqa: E402

RL_SAVE_STEPS = (0, 1, 2, 3, 5, 10, 20, 30, 40, 50)
STAGES = ("base", "sft", "rl-seed0", "rl-seed1", "rl-hard")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("organism/checkpoints"))
    ap.add_argument("--quick", action="store_true", help="a few steps of every stage (tests)")
    ap.add_argument("--seed", type=cli.nonnegative_int, default=0, help="pretraining seed")
    ap.add_argument("--pretrain-steps", type=cli.nonnegative_int, default=1500)
    ap.add_argument("--sft-steps", type=cli.nonnegative_int, default=300)
    ap.add_argument("--rl-steps", type=cli.nonnegative_int, default=50)
    ap.add_argument("--rl-lr", type=cli.positive_float, default=3e-4)
    ap.add_argument("--beta", type=cli.nonnegative_float, default=0.0, help="GRPO KL coefficient")
    ap.add_argument("--hard-difficulty", type=cli.difficulty, default=7,
                    help="digits per rl-hard problem (the base only saw 5: it is at chance on 7)")
    ap.add_argument("--hard-pool", type=cli.positive_int, default=400,
                    help="problems screened for base pass@8 = 0 (rl-hard's training set)")
    ap.add_argument("--max-completion", type=cli.positive_int, default=100,
                    help="RL completion length limit (tokens); 5-digit traces are <= 77, "
                    "7-digit verify traces 93 (105 with a wait;)")
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--threads", type=cli.nonnegative_int, default=1,
                    help="torch threads (1 is fastest for this tiny model, esp. on a shared CPU)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    progress = not args.no_progress
    if args.quick:
        args.pretrain_steps, args.sft_steps, args.rl_steps, args.hard_pool = 10, 3, 2, 16
        args.max_completion = 32  # an untrained model babbles up to the limit
    save_steps = tuple(s for s in RL_SAVE_STEPS if s < args.rl_steps) + (args.rl_steps,)
    out: Path = args.out
    try:  # one trainer per checkpoints folder; a file or unwritable path is refused before training
        lock = FolderLock(out, what="train_organism").acquire()  # noqa: F841 -- held until main returns
    except TwinlensError as exc:
        ap.error(str(exc))
    stages = args.stages.split(",")
    if set(stages) - set(STAGES):
        ap.error(f"unknown stage(s) {sorted(set(stages) - set(STAGES))}; valid: {','.join(STAGES)}")
    walls: dict[str, float] = {}

    def stage(name: str):
        print(f"\n== {name} ==", flush=True)
        return time.time()

    def done(name: str, t0: float):
        walls[name] = round(time.time() - t0, 1)
        print(f"== {name}: {walls[name]:.1f} s wall", flush=True)

    base = out / "base"
    if "base" in stages:
        t0 = stage("base")
        pretrain_base(base, SupervisedConfig(steps=args.pretrain_steps, seed=args.seed),
                      progress=progress)
        done("base", t0)
    if "sft" in stages:
        t0 = stage("sft")
        finetune_sft(base, out / "sft", SupervisedConfig(
            steps=args.sft_steps, lr=3e-4, warmup=20, seed=args.seed + 1, mix=SFT_MIX),
            progress=progress)
        done("sft", t0)
    for seed in (0, 1):
        name = f"rl-seed{seed}"
        if name not in stages:
            continue
        t0 = stage(name)
        cfg = RLConfig(steps=args.rl_steps, lr=args.rl_lr, beta=args.beta, seed=seed,
                       max_completion_length=args.max_completion)
        train_rl(base, out / name, cfg,
                 save_at=save_steps if seed == 0 else (),
                 save_name=(lambda s: f"rl-seed0-step{s}") if seed == 0 else None,
                 progress=progress)
        done(name, t0)
    if "rl-hard" in stages:
        t0 = stage("rl-hard")
        model = load_fp32(base)
        tok = AutoTokenizer.from_pretrained(base)
        unsolved, screen = find_unsolved_problems(model, tok, args.hard_pool, seed=11, k=8,
                                                  max_new_tokens=args.max_completion,
                                                  difficulty=args.hard_difficulty)
        print(f"base pass@8 = 0 on {screen['unsolved']} of {screen['pool']} screened problems",
              flush=True)
        if not unsolved:
            print("no unsolved problem found: rl-hard skipped", flush=True)
        else:
            cfg = RLConfig(steps=args.rl_steps, lr=args.rl_lr, beta=args.beta, seed=0,
                           max_completion_length=args.max_completion)
            train_rl(base, out / "rl-hard", cfg, problems=unsolved, progress=progress,
                     info_extra={"problem_selection": f"train-partition problems of "
                                 f"{args.hard_difficulty} digits with base pass@8 = 0 at "
                                 "temperature 1", "difficulty": args.hard_difficulty, "screen": screen,
                                 "train_prompts": [p.prompt for p in unsolved][:200]})
        done("rl-hard", t0)
    for d in out.glob(".trl-*"):
        shutil.rmtree(d, ignore_errors=True)

    # A partial rebuild (--stages) keeps the recorded wall times of the stages it did not rerun.
    report_path = out / "build_report.json"
    previous = json.loads(report_path.read_text()) if report_path.exists() else {}
    if previous.get("quick") == args.quick:
        walls = {**previous.get("stage_wall_seconds", {}), **walls}
    report: dict = {"stage_wall_seconds": walls, "total_wall_seconds": round(sum(walls.values()), 1),
                    "quick": args.quick, "threads": args.threads,
                    "command": " ".join(sys.argv)}
    changes = {}
    for name in ("sft", "rl-seed0", "rl-seed1", "rl-hard"):
        if (out / name / "model.safetensors").exists() and (base / "model.safetensors").exists():
            changes[name] = bf16_unchanged_fraction(base, out / name)["unchanged_fraction"]
    if (out / "rl-seed0").exists() and (out / "rl-seed1").exists():
        changes["rl-seed0_vs_rl-seed1"] = bf16_unchanged_fraction(out / "rl-seed0", out / "rl-seed1")["unchanged_fraction"]
    report["bf16_unchanged_fraction_vs_base"] = changes
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    print("\nwall time per stage (s):", walls)
    print(f"total: {report['total_wall_seconds']:.1f} s")
    print("bf16 weights unchanged vs base:", {k: round(v, 4) for k, v in changes.items()})
    return report


if __name__ == "__main__":
    main()
