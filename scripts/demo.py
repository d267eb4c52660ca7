#!/usr/bin/env python
"""The whole pipeline on one pair: every analysis, then one report.

    python scripts/demo.py                          # the shipped organism, into runs/demo/
    python scripts/demo.py --base B --rl R [--rl R2] [--sft S] --problems tests/data/arith20.jsonl \\
        --labels decision --chat-template --job-args probe="--n-problems 20" --out runs/mypair
    python scripts/demo.py --engine vllm            # every sampling job samples with vLLM (make vllm)

Each job runs as its own process into its own folder under --out (its output in
--out/logs/<job>.log). A job whose folder records (job.json) a finished run with the same models
(weight hashes) and settings is skipped unless --force; a folder made with other models or settings
is rerun from scratch (the job gets --overwrite), and the demo says so. A failing job is reported at
the end and does not stop the others. Job processes die with the demo (Linux: parent-death signal),
and one demo at a time may write into --out (a lock). On the organism, a full demo (no --only) then
runs each verdict row's positive and negative controls (scripts/controls.py: the row's job on the
twins where its claim is planted true / false, at small sizes) into --out/controls; --no-controls
skips them. Finally scripts/report.py writes report.html and report.md and prints the verdict
table, positive-control column included.

A pair that is not the organism needs its task: --problems (JSONL of {prompt, answer[, gold,
reference]}: mi_peaks reads gold/reference), and optionally --labels (strategy labels: a JSON
config, or 'default' / 'decision'), --answer-format and --chat-template; they go to every job
that takes them.
Jobs that only exist for the organism (its checkpoint series, training variants) are skipped on
another pair, with the reason printed. --job-args NAME="ARGS" appends ARGS to job NAME's command
(e.g. smaller settings).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analyses.jobdir import compare_identity, job_identity, read_job_record  # noqa: E402
from hooks import TwinlensError  # noqa: E402
from hooks.locking import FolderLock  # noqa: E402


@dataclass
class Job:
    name: str
    script: str
    args: list[str] = field(default_factory=list)
    models: tuple[str, ...] = ("base", "rl")  # which of --base/--rl/--sft the script takes
    many_rl: bool = False  # the script takes --rl more than once
    engine: bool = False  # the script samples through analyses.sampling and takes --engine
    task: tuple[str, ...] = ()  # the task options it takes: problems, labels, chat_template, prompts
    organism_only: bool = False  # it runs the organism's own checkpoints whatever pair is given

TASK = ("problems", "chat_template", "answer_format")


# Defaults sized for the organism on a 2-core CPU (the 13 jobs took 402 s in a fresh-clone `make demo`).
JOBS = [
    Job("evaluate", "evaluate.py", ["--n", "300"], models=(), engine=True, organism_only=True),
    Job("capture", "capture.py", ["--n", "32"], task=("prompts",)),
    Job("probe", "probe.py", task=(*TASK, "labels")),
    Job("steer", "steer.py", models=("base",), task=(*TASK, "labels")),
    Job("diff", "diff.py", models=("base", "rl", "sft"), many_rl=True),
    Job("route", "route.py", engine=True, task=TASK),  # engine: its greedy baselines
    Job("passk", "passk.py", engine=True, task=TASK),
    Job("drift", "drift.py", engine=True, task=TASK),
    Job("calibrate", "calibrate.py", engine=True, task=TASK),
    Job("formats", "formats.py", models=(), engine=True, organism_only=True),
    Job("scaling", "scaling.py", models=(), engine=True, organism_only=True),
    Job("mi_peaks", "mi_peaks.py", ["--n-problems", "32"], task=TASK),
    Job("mechanism", "mechanism.py", engine=True, organism_only=True),
]
TASK_OPTIONS = {"problems": "--problems", "labels": "--labels", "chat_template": "--chat-template",
                "prompts": "--prompts", "answer_format": "--answer-format"}


def is_organism(spec: str | None) -> bool:
    """True for no model (the organism's default) or a shipped organism checkpoint (by name or
    folder)."""
    if spec is None:
        return True
    import organism
    from analyses.sampling import resolve_model_spec

    root = Path(organism.checkpoint_path("base")).resolve().parent
    path = Path(str(resolve_model_spec(spec)[1])).resolve()
    return path == root or root in path.parents


def task_args(job: Job, args: argparse.Namespace) -> list[str]:
    """The task options given to the demo that `job` takes (capture reads the problems' prompts)."""
    out: list[str] = []
    for opt in job.task:
        value = args.problems if opt == "prompts" else getattr(args, opt, None)
        if value is True:
            out.append(TASK_OPTIONS[opt])
        elif value:
            out += [TASK_OPTIONS[opt], str(value)]
    return out


def job_command(job: Job, args: argparse.Namespace, out: Path) -> list[str]:
    cmd = [sys.executable, str(ROOT / "scripts" / job.script), "--out", str(out), *job.args]
    if "base" in job.models and args.base:
        cmd += ["--base", args.base]
    if "rl" in job.models and args.rl:
        for r in args.rl if job.many_rl else args.rl[:1]:
            cmd += ["--rl", r]
    if "sft" in job.models and args.sft:
        cmd += ["--sft", args.sft]
    if job.engine and args.engine != "hf":
        cmd += ["--engine", args.engine]
    cmd += task_args(job, args)
    return cmd + shlex.split(dict(getattr(args, "job_args", None) or {}).get(job.name, ""))


def check_task(args: argparse.Namespace, ap: argparse.ArgumentParser) -> bool:
    """Whether the pair is the organism; a pair that is not needs --problems (refused before any
    job runs: its jobs would feed the organism's modular-sum prompts to a real tokenizer and grade
    them with the organism's grader)."""
    organism_pair = all(is_organism(s) for s in [args.base, *(args.rl or []), args.sft])
    if not organism_pair and not args.problems:
        ap.error("this pair is not the organism: give its task with --problems FILE.jsonl (rows {prompt, "
                 "answer[, gold, reference]}; e.g. tests/data/arith20.jsonl), and as needed --labels "
                 "(JSON config, 'default' or 'decision') and --chat-template for an instruct model")
    return organism_pair


def parse_job_args(items: list[str] | None, ap: argparse.ArgumentParser) -> dict[str, str]:
    out = {}
    names = {j.name for j in JOBS}
    for item in items or []:
        name, sep, rest = item.partition("=")
        if not sep or name not in names:
            ap.error(f"--job-args {item!r}: expected NAME=ARGS with NAME one of {sorted(names)}")
        out[name] = (out.get(name, "") + " " + rest).strip()
    return out


def script_module(job: Job) -> Any:
    """The job's script loaded as a module (once per process), for its own parse_args."""
    path = ROOT / "scripts" / job.script
    spec = importlib.util.spec_from_file_location(f"_twinlens_demo_{path.stem}", path)
    module = sys.modules.get(spec.name)
    if module is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses in a script look their module up there
        spec.loader.exec_module(module)
    return module


def script_identity(job: Job, cmd: list[str]) -> dict[str, Any]:
    """The identity (analyses.jobdir.job_identity) the job's script will record for ``cmd``: its
    own parse_args on the same options, so defaults are the script's."""
    return job_identity(Path(job.script).stem, script_module(job).parse_args(cmd[2:]))


def plan_job(job: Job, cmd: list[str], job_out: Path, force: bool) -> tuple[str, str]:
    """("skip" | "run" | "rerun", why) for a job about to run into ``job_out``: skip a finished run
    with the same identity (unless force); rerun (with --overwrite) a folder made by another run."""
    if not job_out.exists() or not any(p for p in job_out.iterdir() if p.name != ".twinlens.lock"):
        return "run", ""
    try:
        asked = script_identity(job, cmd)
        record = read_job_record(job_out)
    except (TwinlensError, SystemExit) as exc:  # the job itself will give the error
        return "run", f"({exc})"
    if record is None:
        left = [p.name for p in job_out.iterdir() if p.name != ".twinlens.lock"]
        if left == ["log.txt"]:  # the log an earlier demo kept inside the job folder, nothing else
            (job_out / "log.txt").unlink()
            return "run", ""
        if (job_out / "results.json").exists():
            return "rerun", "its folder was made before job folders recorded their models (no job.json)"
        return "run", ""
    diffs = compare_identity(record, asked)
    if diffs:
        return "rerun", "its folder was made with other models or settings (" + "; ".join(diffs[:4]) + ")"
    if record.get("complete") and (job_out / "results.json").exists() and not force:
        return "skip", ""
    return "run", "resuming the earlier run with the same settings" if not record.get("complete") else ""


def run_planted_controls(args: argparse.Namespace, jobs: list[Job], out: Path) -> None:
    """The verdict rows' positive/negative controls (scripts/controls.py) into out/controls, for the
    rows whose job this demo ran, on a full demo (no --only) of the organism pair; their runs' seconds
    are printed and kept in out/controls/controls.json. A failed control run is recorded there (the
    report says the row's control is untested, and why) and does not fail the demo."""
    if getattr(args, "no_controls", False):
        return
    if args.only or not getattr(args, "organism_pair", True):
        why = "--only given" if args.only else "the pair is not the organism"
        print(f"controls: not run ({why}); run them with `python scripts/controls.py --out {out / 'controls'}`",
              flush=True)
        return
    from controls import run_controls

    from analyses.verdicts import ROW_JOBS

    ran = {j.name for j in jobs}
    rows = [row for row, job in ROW_JOBS.items() if job in ran]
    t0 = time.time()
    try:
        run_controls(out / "controls", rows, demo_dir=out, force=args.force, engine=args.engine,
                     log=lambda line: print(line, flush=True))
    except TwinlensError as exc:
        print(f"controls: not run ({exc})", flush=True)
    print(f"controls finished in {time.time() - t0:.0f}s", flush=True)


def _die_with_parent(parent: int):
    """preexec_fn for a job: the kernel sends it SIGTERM when the demo dies, however the demo dies
    (SIGKILL included), so no job is left writing into a folder a rerun will use (Linux prctl)."""

    def set_signal() -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the demo died before the prctl took effect
            os._exit(1)

    return set_signal if sys.platform.startswith("linux") else None


def main(argv: list[str] | None = None) -> int:
    names = [j.name for j in JOBS]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base")
    ap.add_argument("--rl", action="append")
    ap.add_argument("--sft")
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--only", nargs="+", metavar="JOB", help="run only these jobs: " + ", ".join(names))
    ap.add_argument("--skip", nargs="+", default=[], metavar="JOB", help="skip these jobs")
    ap.add_argument("--force", action="store_true", help="rerun finished jobs (same settings: reusing their samples)")
    ap.add_argument("--engine", choices=("hf", "vllm"), default="hf",
                    help="sampling engine of every job that samples (vllm: install with `make vllm`)")
    ap.add_argument("--problems", help="the pair's task: JSONL of {prompt, answer[, gold, reference]} "
                    "(required for a pair that is not the organism)")
    ap.add_argument("--labels", help="strategy labels for probe/steer: JSON config, 'default' or 'decision'")
    ap.add_argument("--chat-template", action="store_true",
                    help="every job wraps prompts in the tokenizer's own chat template (instruct models)")
    ap.add_argument("--answer-format", help="how the jobs find real answers (see scripts/passk.py --help)")
    ap.add_argument("--job-args", action="append", metavar="NAME=ARGS",
                    help="extra arguments for one job, e.g. probe=\"--n-problems 20\" (repeatable)")
    ap.add_argument("--no-controls", action="store_true",
                    help="skip the positive/negative controls (scripts/controls.py: each verdict row's job on the "
                    "organism twins where its claim is planted true / false, into OUT/controls); they run after "
                    "the jobs on a full demo of the organism (no --only)")
    args = ap.parse_args(argv)
    for option, given in (("--only", args.only or []), ("--skip", args.skip)):
        unknown = [n for n in given if n not in names]
        if unknown:
            ap.error(f"{option}: unknown job(s) {', '.join(unknown)}; the jobs are: {', '.join(names)}")
    if args.engine != "hf":  # refuse before any job runs
        sys.path.insert(0, str(ROOT))
        from analyses.sampling import check_engine
        from hooks.errors import TwinlensError

        try:
            check_engine(args.engine)
        except TwinlensError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.problems and not Path(args.problems).is_file():
        ap.error(f"--problems {args.problems}: no such file")
    args.job_args = parse_job_args(args.job_args, ap)
    args.organism_pair = check_task(args, ap)
    out = Path(args.out)
    try:
        lock = FolderLock(out, what="demo").acquire()
    except TwinlensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # SIGTERM / SIGHUP end the demo through SystemExit, so subprocess.run kills the running job
    # (where there is no parent-death signal, e.g. macOS); restored after (tests call main in-process).
    previous = {sig: signal.signal(sig, _exit_on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return _run_jobs(args, out)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        lock.release()


def _exit_on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def _run_jobs(args: argparse.Namespace, out: Path) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "MPLBACKEND": "Agg"}
    jobs = [j for j in JOBS if (not args.only or j.name in args.only) and j.name not in args.skip]
    failed: list[tuple[str, str]] = []
    logs = out / "logs"
    t_start = time.time()
    for i, job in enumerate(jobs, 1):
        job_out = out / job.name
        if job.organism_only and not args.organism_pair:
            print(f"[{i}/{len(jobs)}] {job.name}: skipped (it runs the organism's own checkpoints, not this pair)",
                  flush=True)
            continue
        if not (ROOT / "scripts" / job.script).exists():
            failed.append((job.name, f"scripts/{job.script} is missing"))
            print(f"[{i}/{len(jobs)}] {job.name}: MISSING scripts/{job.script}", flush=True)
            continue
        cmd = job_command(job, args, job_out)
        action, why = plan_job(job, cmd, job_out, args.force)
        if action == "skip":
            print(f"[{i}/{len(jobs)}] {job.name}: done before with the same models and settings, skipped "
                  "(--force to rerun)", flush=True)
            continue
        if action == "rerun":
            cmd.append("--overwrite")
            print(f"[{i}/{len(jobs)}] {job.name}: {why}; rerunning it from scratch ...", flush=True)
        else:
            print(f"[{i}/{len(jobs)}] {job.name} ...{' ' + why if why else ''}", flush=True)
        t0 = time.time()
        logs.mkdir(parents=True, exist_ok=True)
        log_path = logs / f"{job.name}.log"
        with open(log_path, "w") as log:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                  preexec_fn=_die_with_parent(os.getpid()))
        took = time.time() - t0
        if proc.returncode != 0 or not (job_out / "results.json").exists():
            tail = log_path.read_text().strip().splitlines()[-3:]
            failed.append((job.name, " | ".join(tail)))
            print(f"[{i}/{len(jobs)}] {job.name}: FAILED after {took:.0f}s (see {log_path})", flush=True)
        else:
            print(f"[{i}/{len(jobs)}] {job.name}: ok in {took:.0f}s", flush=True)
    print(f"jobs finished in {time.time() - t_start:.0f}s", flush=True)
    for job in JOBS:  # the report also shows the jobs not run now: say which were made otherwise
        if job in jobs or not (out / job.name / "job.json").exists():
            continue
        try:
            diffs = compare_identity(read_job_record(out / job.name),
                                     script_identity(job, job_command(job, args, out / job.name)))
        except (TwinlensError, SystemExit):
            continue
        if diffs:
            print(f"note: {job.name} (not run now) was made with other models or settings "
                  f"({'; '.join(diffs[:3])}); the report shows it as it is. Rerun it with --only {job.name}.",
                  flush=True)

    sys.path.insert(0, str(ROOT / "scripts"))
    run_planted_controls(args, jobs, out)
    from report import write_report

    table = write_report(out)
    print(table)
    print(f"report: {out / 'report.html'}")
    if failed:
        print("\nFailed jobs (their results are missing from the report):")
        for name, why in failed:
            print(f"  - {name}: {why}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
