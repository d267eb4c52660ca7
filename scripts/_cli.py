"""The command-line pieces the job scripts share: offline defaults, the common options (each
script passes its own defaults and help texts), torch's thread count, and the end of a run.

Scripts put the repo root on sys.path and then ``from scripts import _cli as cli``: that works
when a script runs directly, in a subprocess, and when a test loads it with importlib (which
does not put scripts/ itself on sys.path, so a plain ``import _cli`` would fail there).

Importing it sets HF_HUB_OFFLINE=1 and TOKENIZERS_PARALLELISM=false unless already set; the kit
imports huggingface_hub and tokenizers only when it loads a model, so this is in time for
everything a script does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

THREADS_HELP = ("torch CPU threads (default 1: the organism's tiny matmuls gain nothing from more, and on a "
                "busy machine extra threads cost ~10x CPU time; 0 = torch's default)")
JSON_HELP = "print results.json to stdout"
BASE_HELP = "base model: organism checkpoint name, folder or hub id"
PROBLEMS_HELP = "JSONL of {prompt, answer} (default: the organism task)"


class _Adder:
    """ap.add_argument with help texts from `helps` (option -> text; None = no help) over the
    defaults given here; an option in `helps` that the helper does not add is an error."""

    def __init__(self, ap: argparse.ArgumentParser, helps: Mapping[str, str | None] | None):
        self.ap, self.helps = ap, dict(helps or {})

    def __call__(self, flag: str, help: str | None = None, **kw: Any) -> None:
        self.ap.add_argument(flag, help=self.helps.pop(flag, help), **kw)

    def done(self) -> None:
        if self.helps:
            raise ValueError(f"helps for options this helper does not add: {sorted(self.helps)}")


def make_parser(description: str | None) -> argparse.ArgumentParser:
    """A parser that shows the script's docstring as written."""
    return argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_model_args(ap: argparse.ArgumentParser, *, rl_repeatable: bool = True,
                   helps: Mapping[str, str | None] | None = None) -> None:
    """--base (default: the organism's base) and --rl: repeatable with no default (the script
    picks one), or a single model defaulting to the organism's rl-seed0."""
    add = _Adder(ap, helps)
    add("--base", BASE_HELP, default="base")
    if rl_repeatable:
        add("--rl", "RL model (repeatable; default: organism rl-seed0)", action="append")
    else:
        add("--rl", "RL model (default: organism rl-seed0)", default="rl-seed0")
    add.done()


def add_problem_args(ap: argparse.ArgumentParser, *, n_problems: int, n_samples: int,
                     helps: Mapping[str, str | None] | None = None) -> None:
    """--problems, --difficulty, --problem-set, --n-problems, --n-samples."""
    add = _Adder(ap, helps)
    add("--problems", PROBLEMS_HELP)
    add("--difficulty", type=int, default=5)
    add("--problem-set", type=int, default=0)
    add("--n-problems", type=int, default=n_problems)
    add("--n-samples", type=int, default=n_samples)
    add.done()


def add_sampling_args(ap: argparse.ArgumentParser, *, temperature: float = 0.6, top_p: float | None = 0.95,
                      max_new_tokens: bool = True) -> None:
    """--temperature, --top-p (unless top_p is None), --max-new-tokens (unless False)."""
    ap.add_argument("--temperature", type=float, default=temperature)
    if top_p is not None:
        ap.add_argument("--top-p", type=float, default=top_p)
    if max_new_tokens:
        ap.add_argument("--max-new-tokens", type=int)


def add_run_args(ap: argparse.ArgumentParser, *, n_boot: int | None = 1000, batch_size: int | None = 128,
                 seed: bool = True, helps: Mapping[str, str | None] | None = None) -> None:
    """--seed, --n-boot, --batch-size, --device, --threads, --out, --json (n_boot / batch_size
    None or seed False: that option is left out)."""
    add = _Adder(ap, helps)
    if seed:
        add("--seed", type=int, default=0)
    if n_boot is not None:
        add("--n-boot", type=int, default=n_boot)
    if batch_size is not None:
        add("--batch-size", type=int, default=batch_size)
    add("--device", default="cpu")
    add("--threads", THREADS_HELP, type=int, default=1)
    add("--out", required=True)
    add("--json", action="store_true")
    add.done()


def apply_threads(args: argparse.Namespace) -> None:
    """torch.set_num_threads(args.threads) where the script has --threads; 0 leaves torch's default."""
    if getattr(args, "threads", 0):
        import torch

        torch.set_num_threads(args.threads)


def run_main(run: Callable[[argparse.Namespace], Mapping[str, Any]], args: argparse.Namespace) -> int:
    """Exit code of ``run(args)``, which writes the outputs and returns the results, after
    apply_threads: 0, and with --json the results printed as JSON (the text of results.json); a
    TwinlensError is printed as ``error: ...`` on stderr and gives 2."""
    from hooks import TwinlensError

    apply_threads(args)
    try:
        results = run(args)
    except TwinlensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        from analyses.reporting import to_jsonable

        print(json.dumps(to_jsonable(results), indent=1))
    return 0


def sample_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of analyses.sampling.sample / sample_each that add_sampling_args and
    add_run_args define: temperature, top_p, max_new_tokens (None where the script has no such
    option: the task's default), seed, batch_size."""
    return {"temperature": args.temperature, "top_p": args.top_p,
            "max_new_tokens": getattr(args, "max_new_tokens", None), "seed": args.seed,
            "batch_size": args.batch_size}


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (scripts only write PNGs; no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def load_base_and_rl(args: argparse.Namespace, rl_specs: list[str] | None = None) -> tuple[Any, dict, list]:
    """(task, {"base": Model, <rl name>: Model, ...}, problems) from --problems/--difficulty,
    --base, --rl (repeatable; default organism rl-seed0), --n-problems, --problem-set.
    ``rl_specs`` replaces --rl (e.g. a checkpoint series the script chose)."""
    from analyses.sampling import load_models, resolve_model_spec
    from analyses.task import load_task

    task = load_task(args.problems, difficulty=args.difficulty)
    rl_specs = rl_specs or args.rl or ["rl-seed0"]
    labels = ["base"] + [resolve_model_spec(s)[0] for s in rl_specs]
    family = load_models([args.base, *rl_specs], labels=labels, device=args.device)
    return task, family, task.problems(args.n_problems, seed=args.problem_set)
