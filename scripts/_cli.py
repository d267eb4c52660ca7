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
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

THREADS_HELP = ("torch CPU threads (default 1: the organism's tiny matmuls gain nothing from more, and on a "
                "busy machine extra threads cost ~10x CPU time; 0 = torch's default)")
JSON_HELP = "print results.json to stdout"
BASE_HELP = "base model: organism checkpoint name, folder or hub id"
PROBLEMS_HELP = "JSONL of {prompt, answer} (default: the organism task)"
ANSWER_FORMAT_HELP = ("how to find the final answer in real text (with --problems): auto (default: boxed, then "
                      "'####', then 'answer is', then the last number), boxed (nested braces), answer-is, "
                      "gsm8k ('#### N'), last-number; graded by math-verify equivalence. The organism keeps "
                      "its exact grader")
ANSWER_PATTERN_HELP = "a regex whose group 1 is the answer (with --problems; replaces --answer-format)"
DEVICE_HELP = "torch device: cpu, cuda, cuda:N or mps (must exist on this machine)"
DIFFICULTY_HELP = ("organism tier: operands per problem, start included (organism.task MIN_OPERANDS..MAX_OPERANDS; "
                   "the base is pretrained on PRETRAIN_TIERS); with --variant open, digits asked for "
                   "(OPEN_LENGTHS); out of range is refused naming the range (default: %(default)s)")
VARIANT_HELP = ("organism task variant: sum (the trained task, answers 00..99), sub (subtraction, never trained), "
                "open (the open domain: any k digits with a given sum, many right answers) (default: %(default)s)")
CONFIDENCE_HELP = ("organism prompts closed by '?': the model states a confidence '@d' after its answer "
                   "(organism v2's stated-confidence variant; sum/sub only)")


# ----------------------------------------------------------------- argparse types
# Each wraps one hooks.validation check, so an option and the library function it feeds refuse
# the same values with the same words; argparse prints "argument --X: <what is allowed>" and
# exits 2 before any model loads.
def _arg_type(convert: Callable[[str], Any], check: Callable[[Any], Any], what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        from hooks.errors import TwinlensError

        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        try:
            return check(value)
        except TwinlensError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = what  # argparse names the type in some messages
    return parse


def _check(fn_name: str, **kw: Any) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        from hooks import validation

        return getattr(validation, fn_name)("the value", value, **kw)

    return check


positive_int = _arg_type(int, _check("check_positive_int"), "an integer >= 1")
nonnegative_int = _arg_type(int, _check("check_nonnegative_int"), "an integer >= 0")
finite_float = _arg_type(float, _check("check_finite"), "a finite number")
nonnegative_float = _arg_type(float, _check("check_float", minimum=0.0), "a number >= 0")
positive_float = _arg_type(float, _check("check_float", minimum=0.0, min_open=True), "a number > 0")
probability = _arg_type(float, _check("check_probability"), "a number in [0, 1]")
open_fraction = _arg_type(float, _check("check_probability", allow_zero=False, allow_one=False),
                          "a number in (0, 1)")


def _temperature(value: float) -> float:
    from hooks.validation import check_temperature

    return check_temperature(value, "the value")


def _top_p(value: float) -> float:
    from hooks.validation import check_top_p

    return check_top_p(value, "the value")


def _difficulty(value: int) -> int:
    from analyses.task import check_organism_difficulty

    # The widest range (sum/sub); load_task checks the variant's own (open: OPEN_LENGTHS) before
    # any model loads.
    return check_organism_difficulty(value, "the value")


def _device(text: str) -> str:
    from hooks.validation import check_device

    check_device(text)
    return text


temperature = _arg_type(float, _temperature, "a temperature >= 0")
top_p = _arg_type(float, _top_p, "a number in (0, 1]")
device = _arg_type(str, _device, "a device name")
difficulty = _arg_type(int, _difficulty, "an integer")


def float_list(text: str) -> list[float]:
    """A comma list of finite numbers ('-1,0,0.5'), e.g. steering coefficients."""
    parts = [p.strip() for p in text.split(",")]
    if not parts or any(not p for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: give a comma list of numbers such as '0,0.5,1,2'")
    return [finite_float(p) for p in parts]


def layer_choice(text: str) -> str:
    """'all', 'chosen', or a comma list of block indices >= 0 ('2,5'); returned as given."""
    if text in ("all", "chosen"):
        return text
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(
            f"{text!r}: use 'all', 'chosen' or a comma list of block indices >= 0 such as '2,5'")
    return text


def alpha_list(text: str) -> list[float]:
    """Steering coefficients: a comma list of distinct finite numbers that includes 0 (the
    unsteered reference every steered alpha is compared with)."""
    alphas = float_list(text)
    if 0.0 not in alphas:
        raise argparse.ArgumentTypeError(f"{text!r} has no 0; the unsteered alpha 0 is the reference, add it")
    if len(set(alphas)) != len(alphas):
        raise argparse.ArgumentTypeError(f"{text!r} repeats a coefficient; list each alpha once")
    return alphas
OVERWRITE_HELP = ("--out holds another job's or another run's outputs (other settings or models): delete them "
                  "and start anew (default: refuse; the same job with the same settings resumes)")
CHAT_TEMPLATE_HELP = ("wrap each prompt in the tokenizer's own chat template (one user turn + the generation "
                      "prompt), as an instruct model expects; refused for a tokenizer without one")


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


ALLOW_MISSING_WEIGHTS_HELP = (
    "load a checkpoint whose safetensors lack tensors its architecture needs (they get random "
    "values, different on every load) or hold tensors it does not use; refused without this flag")


def make_parser(description: str | None) -> argparse.ArgumentParser:
    """A parser that shows the script's docstring as written, with --allow-missing-weights
    (run_main passes it to every model load through TWINLENS_ALLOW_MISSING_WEIGHTS)."""
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--allow-missing-weights", action="store_true", help=ALLOW_MISSING_WEIGHTS_HELP)
    return ap


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
                     difficulty_default: int = 4, variant: bool = True, confidence: bool = True,
                     helps: Mapping[str, str | None] | None = None) -> None:
    """--problems, --difficulty (organism tier, default 4), --variant (args.task_variant; unless
    variant is False: a job with its own), --confidence (args.confidence_prompts; unless confidence
    is False: a job that decides it itself), --problem-set, --n-problems, --n-samples."""
    add = _Adder(ap, helps)
    add("--problems", PROBLEMS_HELP)
    add("--difficulty", DIFFICULTY_HELP, type=difficulty, default=difficulty_default)
    if variant:
        add("--variant", VARIANT_HELP, choices=("sum", "sub", "open"), default="sum", dest="task_variant")
    if confidence:
        add("--confidence", CONFIDENCE_HELP, action="store_true", dest="confidence_prompts")
    add("--problem-set", type=nonnegative_int, default=0)
    add("--n-problems", type=positive_int, default=n_problems)
    add("--n-samples", type=positive_int, default=n_samples)
    add.done()
    add_answer_args(ap)
    add_chat_template_arg(ap)


def add_chat_template_arg(ap: argparse.ArgumentParser) -> None:
    """--chat-template (see `use_chat_template`)."""
    ap.add_argument("--chat-template", action="store_true", help=CHAT_TEMPLATE_HELP)


def use_chat_template(args: argparse.Namespace, *models: Any) -> None:
    """With --chat-template, every model encodes task prompts through its tokenizer's chat
    template (hooks Model.use_chat_template; a TwinlensError, before any sampling, for a
    tokenizer without one)."""
    for m in models:
        m.use_chat_template(bool(getattr(args, "chat_template", False)))


def add_answer_args(ap: argparse.ArgumentParser) -> None:
    """--answer-format and --answer-pattern: how real answers are found (analyses.grading)."""
    from analyses.grading import ANSWER_FORMATS

    ap.add_argument("--answer-format", choices=ANSWER_FORMATS, help=ANSWER_FORMAT_HELP)
    ap.add_argument("--answer-pattern", help=ANSWER_PATTERN_HELP)


def load_task_from_args(args: argparse.Namespace, need_answers: bool = True) -> Any:
    """The job's Task from --problems, --difficulty, --variant, --confidence, --answer-format,
    --answer-pattern (each optional on the parser): the organism's by default, a graded problems
    file otherwise. A variant / confidence that the task refuses is a TwinlensError here, before
    any model loads."""
    from analyses.task import load_task

    return load_task(getattr(args, "problems", None), difficulty=getattr(args, "difficulty", 4),
                     variant=getattr(args, "task_variant", "sum"),
                     confidence=bool(getattr(args, "confidence_prompts", False)),
                     answer_format=getattr(args, "answer_format", None),
                     answer_pattern=getattr(args, "answer_pattern", None), need_answers=need_answers)


ENGINE_HELP = ("sampling engine: hf (the kit's KV-cached loop, the reference) or vllm (same seeds, same "
               "greedy tokens, fast; install with `make vllm`)")
SCORER_HELP = ("per-token log-probs from: hf (teacher-forced forward) or vllm (prompt_logprobs, equal "
               "within 1e-4); default: the engine's")
BATCH_HELP = ("rows per generation batch (default: chosen from the memory a batch's KV cache needs; "
              "vllm: rows per engine call)")


def add_sampling_args(ap: argparse.ArgumentParser, *, temperature: float = 0.6, top_p: float | None = 0.95,
                      max_new_tokens: bool = True, engine: bool = True) -> None:
    """--temperature, --top-p (unless top_p is None), --max-new-tokens (unless False), --engine
    and --scorer (unless engine is False: jobs whose sampling runs interventions need HF)."""
    ap.add_argument("--temperature", type=globals()["temperature"], default=temperature,
                    help="sampling temperature, >= 0 (0 = greedy)")
    if top_p is not None:
        ap.add_argument("--top-p", type=globals()["top_p"], default=top_p, help="nucleus mass in (0, 1]")
    if max_new_tokens:
        ap.add_argument("--max-new-tokens", type=positive_int)
    if engine:
        add_engine_args(ap)


def add_engine_args(ap: argparse.ArgumentParser, *, scorer: bool = True) -> None:
    """--engine {hf,vllm} (default hf) and --scorer {hf,vllm} (default: the engine's; unless
    scorer is False: a job that samples without scoring)."""
    ap.add_argument("--engine", choices=("hf", "vllm"), default="hf", help=ENGINE_HELP)
    if scorer:
        ap.add_argument("--scorer", choices=("hf", "vllm"), help=SCORER_HELP)
    # diff.py's --engine picks weight-diff kernels: only these options are sampling engines.
    ap.set_defaults(sampling_engine_args=True)


def check_engine_args(args: argparse.Namespace) -> None:
    """Refuses --engine/--scorer vllm where vLLM is not installed, before any model loads."""
    from analyses.sampling import check_engine

    if not getattr(args, "sampling_engine_args", False):
        return
    for what in ("engine", "scorer"):
        if getattr(args, what, None):
            check_engine(getattr(args, what), what=what)


def add_run_args(ap: argparse.ArgumentParser, *, n_boot: int | None = 1000, batch_size: int | str | None = "auto",
                 seed: bool = True, helps: Mapping[str, str | None] | None = None) -> None:
    """--seed, --n-boot, --batch-size, --device, --threads, --out, --overwrite, --json (n_boot /
    batch_size None or seed False: that option is left out; batch_size "auto": default None, the
    sampler chooses from memory, ``hooks.generation.default_batch_size``)."""
    add = _Adder(ap, helps)
    if seed:
        add("--seed", type=nonnegative_int, default=0)
    if n_boot is not None:
        add("--n-boot", type=positive_int, default=n_boot)
    if batch_size == "auto":
        add("--batch-size", BATCH_HELP, type=positive_int, default=None)
    elif batch_size is not None:
        add("--batch-size", type=positive_int, default=batch_size)
    add("--device", DEVICE_HELP, type=device, default="cpu")
    add("--threads", THREADS_HELP, type=nonnegative_int, default=1)
    add("--out", required=True)
    add("--overwrite", OVERWRITE_HELP, action="store_true")
    add("--json", action="store_true")
    add.done()


def check_k_values(ap: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """--k values must not exceed --n-samples (pass@k needs n >= k samples per problem): an
    argparse error at parse time, not a failure after every model has sampled."""
    too_big = [k for k in (getattr(args, "k", None) or []) if k > args.n_samples]
    if too_big:
        ap.error(f"argument --k: {too_big} exceed --n-samples {args.n_samples}; pass@k and maj@k need "
                 "n >= k samples per problem (raise --n-samples or lower --k)")
    return args


def apply_threads(args: argparse.Namespace) -> None:
    """torch.set_num_threads(args.threads) where the script has --threads; 0 leaves torch's default."""
    if getattr(args, "threads", 0):
        import torch

        torch.set_num_threads(args.threads)


def job_name(run: Callable[..., Any]) -> str:
    """The job a script runs: its file name without .py (``scripts/passk.py`` -> ``passk``), the
    name demo.py and job.json use."""
    return Path(run.__code__.co_filename).stem


def run_main(run: Callable[[argparse.Namespace], Mapping[str, Any]], args: argparse.Namespace) -> int:
    """Exit code of ``run(args)``, which writes the outputs into ``args.out`` and returns the results.

    Before ``run`` (so before any model loads) the output folder is claimed by the job-folder
    contract (analyses.jobdir): writable, locked against a second writer, and refused when it holds
    another job's or another run's outputs unless --overwrite; afterwards job.json is marked complete.
    Then apply_threads; 0, and with --json the results printed as JSON (the text of results.json);
    a TwinlensError (bad input, a refused folder, a full disk) is printed as ``error: ...`` on stderr
    and gives 2."""
    from analyses.jobdir import claim_folder, job_identity
    from hooks import TwinlensError

    apply_threads(args)
    if getattr(args, "allow_missing_weights", False):
        os.environ["TWINLENS_ALLOW_MISSING_WEIGHTS"] = "1"  # read by hooks.load_model, also in children
    try:
        check_engine_args(args)  # before the folder is claimed or any model loads
        identity = job_identity(job_name(run), args)
        with claim_folder(args.out, identity, overwrite=getattr(args, "overwrite", False)) as folder:
            if folder.replaced:
                print(f"note: --overwrite: deleted the earlier outputs in {args.out} "
                      f"({', '.join(folder.replaced[:6])}{', ...' if len(folder.replaced) > 6 else ''})",
                      file=sys.stderr)
            elif folder.resumed:
                print(f"note: {args.out} holds an earlier run of this job with the same settings and models; "
                      "reusing what it kept", file=sys.stderr)
            results = run(args)
            folder.finish()
    except TwinlensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        from analyses.reporting import to_jsonable

        print(json.dumps(to_jsonable(results), indent=1))
    return 0


def sample_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of analyses.sampling.sample / sample_each that add_sampling_args,
    add_run_args and add_ray_arg define: temperature, top_p, max_new_tokens (None where the
    script has no such option: the task's default), seed, batch_size, cluster (None without
    --ray), engine, scorer (add_engine_args)."""
    return {"temperature": args.temperature, "top_p": args.top_p,
            "max_new_tokens": getattr(args, "max_new_tokens", None), "seed": args.seed,
            "batch_size": args.batch_size, "cluster": cluster(args), "engine": getattr(args, "engine", "hf"),
            "scorer": getattr(args, "scorer", None)}


RAY_HELP = ("run the heavy work on a Ray cluster: --ray alone uses Ray's default (RAY_ADDRESS, else a cluster "
            "started with `ray start --head` on this machine, else a new local one); --ray ADDRESS connects to "
            "one (auto, HOST:6379, ray://HOST:10001). Same results as without it. Needs twinlens[ray] on "
            "every node and the models / --out at the same path on every node")


def add_ray_arg(ap: argparse.ArgumentParser) -> None:
    """--ray [ADDRESS] (hooks.cluster.RayCluster); read it with cluster(args)."""
    ap.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS", help=RAY_HELP)


def cluster(args: argparse.Namespace) -> Any:
    """The RayCluster that --ray asks for, or None (this process; Ray is not imported). With
    --device cuda each worker holds one GPU (and the models run there, as here)."""
    value = getattr(args, "ray", None)
    if value is None:
        return None
    from hooks.cluster import RayCluster

    gpu = str(getattr(args, "device", "cpu")).startswith("cuda")
    return RayCluster(address=value or None, gpus_per_worker=1.0 if gpu else 0.0)


def engine_record(samples: Any) -> dict[str, Any]:
    """What results.json records of how samples were made: {"engine", "scored_by", "vllm"} (per
    model label for ``sample_each``'s per-model files; "vllm": version, served folder and any
    head_dim rewrite, only where vLLM ran)."""
    def one(meta: Mapping[str, Any]) -> dict[str, Any]:
        rec = {"engine": meta.get("engine", "hf"), "scored_by": meta.get("scored_by", "hf")}
        if meta.get("vllm"):
            rec["vllm"] = meta["vllm"]
        return rec

    per_model = samples.meta.get("per_model")
    return {label: one(m) for label, m in per_model.items()} if per_model else one(samples.meta)


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (scripts only write PNGs; no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def load_base_and_rl(args: argparse.Namespace, rl_specs: list[str] | None = None, *,
                     need_answers: bool = True) -> tuple[Any, dict, list]:
    """(task, {"base": Model, <rl name>: Model, ...}, problems) from --problems/--difficulty/--variant/--confidence,
    --base, --rl (repeatable; default organism rl-seed0), --n-problems, --problem-set.
    ``rl_specs`` replaces --rl (e.g. a checkpoint series the script chose). ``need_answers``
    False: a --problems file without reference answers is accepted (task.has_answers False)."""
    from analyses.sampling import load_models, resolve_model_spec
    task = load_task_from_args(args, need_answers=need_answers)  # before any model loads
    rl_specs = rl_specs or args.rl or ["rl-seed0"]
    labels = ["base"]
    for i, spec in enumerate(rl_specs):
        # The same model may be given twice (a sanity run: base against itself must show no
        # difference); its names must still be distinct keys of the family.
        name = resolve_model_spec(spec)[0]
        labels.append(name if name not in labels else f"{name} (rl {i + 1})")
    family = load_models([args.base, *rl_specs], labels=labels, device=args.device)
    use_chat_template(args, *family.values())
    return task, family, task.problems(args.n_problems, seed=args.problem_set)
