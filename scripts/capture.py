#!/usr/bin/env python
"""Capture activations of a model or a base/RL pair to an on-disk ActivationStore.

    python scripts/capture.py --out runs/capture                     # organism base + rl-seed0
    python scripts/capture.py --model path/or/hub-id --prompts prompts.txt --hooks 'blocks.*.hook_out'

Writes DIR/store/ (the ActivationStore), DIR/results.json (rows, hooks, per-layer residual norms
and base-vs-RL cosine), DIR/residual_norms.png and DIR/summary.md. Rerunning resumes the store.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hooks import TwinlensError, capture, load_model, load_pair  # noqa: E402
from scripts import _cli as cli  # noqa: E402


def read_prompts(spec: str, n: int) -> list[str]:
    if spec == "organism":
        from organism.task import eval_problems, write_completion

        problems = eval_problems(n)
        # Prompt + a reference step-by-step solution: the positions carry every strategy.
        return [p.prompt + write_completion(p, "step") for p in problems]
    from analyses.task import read_prompts_file

    if not Path(spec).exists():
        raise TwinlensError(f"--prompts {spec!r}: no such file; give a text file (one prompt per line), a JSONL "
                            "file of {\"prompt\": ...} rows, or 'organism'.")
    return read_prompts_file(spec, n)


def summarize(store, models: list[str]) -> dict:
    layers = [h for h in store.hooks if h.startswith("blocks.") and h.endswith(".hook_out")]
    out: dict = {"rows": store.n_rows, "examples": store.n_examples, "hooks": store.hooks,
                 "models": store.models, "residual_norm": {}, "cosine_base_rl": {}}
    for key in models:
        out["residual_norm"][key] = {h: float(store.read(h, key).float().norm(dim=-1).mean()) for h in layers}
    if set(models) == {"base", "rl"}:
        for h in layers:
            b, r = store.read(h, "base").float(), store.read(h, "rl").float()
            out["cosine_base_rl"][h] = float(torch.nn.functional.cosine_similarity(b, r, dim=-1).mean())
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = cli.make_parser(__doc__)
    ap.add_argument("--base", help="base model folder or hub id (default: organism base)")
    ap.add_argument("--rl", help="RL model folder or hub id (default: organism rl-seed0)")
    ap.add_argument("--model", help="capture a single model instead of a pair")
    ap.add_argument("--prompts", default="organism", help="text/jsonl file, or 'organism'")
    ap.add_argument("--n", type=cli.positive_int, default=64, help="number of prompts")
    ap.add_argument("--hooks", nargs="+", default=["blocks.*.hook_out"])
    ap.add_argument("--positions", default="all", choices=["all", "last"])
    cli.add_run_args(ap, n_boot=None, batch_size=8, seed=False, helps={"--json": cli.JSON_HELP})
    cli.add_ray_arg(ap)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return cli.run_main(run, parse_args(argv))


def run(args: argparse.Namespace) -> dict:
    from analyses.reporting import save_figure, write_results

    prompts = read_prompts(args.prompts, args.n)  # checked before any model loads
    if args.model:
        target = load_model(args.model, device=args.device)
        keys = ["model"]
    else:
        import organism

        base = args.base or organism.checkpoint_path("base")
        rl = args.rl or organism.checkpoint_path("rl-seed0")
        target = load_pair(base, rl, device=args.device)
        keys = ["base", "rl"]
    out = Path(args.out)
    store = capture(target, prompts, hooks=args.hooks, out=out / "store",
                    positions=args.positions, batch_size=args.batch_size, cluster=cli.cluster(args))

    results = summarize(store, keys)
    plt = cli.pyplot()

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key, norms in results["residual_norm"].items():
        ax.plot(range(len(norms)), list(norms.values()), marker="o", label=key)
    ax.set_xlabel("block")
    ax.set_ylabel("mean residual norm")
    ax.set_title("Block-output norms")
    ax.legend()
    save_figure(fig, out / "residual_norms.png")
    lines = [
        "# Capture", "",
        f"{store.n_rows} rows from {store.n_examples} examples; hooks: {', '.join(store.hooks)}.",
        f"Store: `{out / 'store'}` (open with `hooks.ActivationStore.open`).", "",
    ]
    if results["cosine_base_rl"]:
        lines += ["| hook | cosine(base, rl) |", "|---|---|"]
        lines += [f"| {h} | {c:.3f} |" for h, c in results["cosine_base_rl"].items()]
    write_results(out, results, "\n".join(lines) + "\n")
    return results


if __name__ == "__main__":
    raise SystemExit(main())
