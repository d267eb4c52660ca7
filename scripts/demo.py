#!/usr/bin/env python
"""The whole pipeline on one pair: every analysis, then one report.

    python scripts/demo.py                          # the shipped organism, into runs/demo/
    python scripts/demo.py --base B --rl R [--rl R2] [--sft S] --out runs/mypair

Each job runs as its own process into its own folder under --out; a job whose results.json
exists is skipped unless --force; a failing job is reported at the end and does not stop the
others. Finally scripts/report.py writes report.html and report.md and prints the verdict table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Job:
    name: str
    script: str
    args: list[str] = field(default_factory=list)
    models: tuple[str, ...] = ("base", "rl")  # which of --base/--rl/--sft the script takes
    many_rl: bool = False  # the script takes --rl more than once


# Defaults sized for the organism on a 2-core CPU (the 13 jobs took 402 s in a fresh-clone `make demo`).
JOBS = [
    Job("evaluate", "evaluate.py", ["--n", "300"], models=()),
    Job("capture", "capture.py", ["--n", "32"]),
    Job("probe", "probe.py"),
    Job("steer", "steer.py"),
    Job("diff", "diff.py", models=("base", "rl", "sft"), many_rl=True),
    Job("route", "route.py"),
    Job("passk", "passk.py"),
    Job("drift", "drift.py"),
    Job("calibrate", "calibrate.py"),
    Job("formats", "formats.py", models=()),
    Job("scaling", "scaling.py", models=()),
    Job("mi_peaks", "mi_peaks.py", ["--n-problems", "32"]),
    Job("mechanism", "mechanism.py"),
]


def job_command(job: Job, args: argparse.Namespace, out: Path) -> list[str]:
    cmd = [sys.executable, str(ROOT / "scripts" / job.script), "--out", str(out), *job.args]
    if "base" in job.models and args.base:
        cmd += ["--base", args.base]
    if "rl" in job.models and args.rl:
        for r in args.rl if job.many_rl else args.rl[:1]:
            cmd += ["--rl", r]
    if "sft" in job.models and args.sft:
        cmd += ["--sft", args.sft]
    return cmd


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base")
    ap.add_argument("--rl", action="append")
    ap.add_argument("--sft")
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--only", nargs="+", help="run only these jobs")
    ap.add_argument("--skip", nargs="+", default=[], help="skip these jobs")
    ap.add_argument("--force", action="store_true", help="rerun finished jobs")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "MPLBACKEND": "Agg"}
    jobs = [j for j in JOBS if (not args.only or j.name in args.only) and j.name not in args.skip]
    failed: list[tuple[str, str]] = []
    t_start = time.time()
    for i, job in enumerate(jobs, 1):
        job_out = out / job.name
        if (job_out / "results.json").exists() and not args.force:
            print(f"[{i}/{len(jobs)}] {job.name}: done before, skipped (--force to rerun)", flush=True)
            continue
        if not (ROOT / "scripts" / job.script).exists():
            failed.append((job.name, f"scripts/{job.script} is missing"))
            print(f"[{i}/{len(jobs)}] {job.name}: MISSING scripts/{job.script}", flush=True)
            continue
        print(f"[{i}/{len(jobs)}] {job.name} ...", flush=True)
        t0 = time.time()
        job_out.mkdir(parents=True, exist_ok=True)
        with open(job_out / "log.txt", "w") as log:
            proc = subprocess.run(job_command(job, args, job_out), stdout=log, stderr=subprocess.STDOUT, env=env)
        took = time.time() - t0
        if proc.returncode != 0 or not (job_out / "results.json").exists():
            tail = (job_out / "log.txt").read_text().strip().splitlines()[-3:]
            failed.append((job.name, " | ".join(tail)))
            print(f"[{i}/{len(jobs)}] {job.name}: FAILED after {took:.0f}s (see {job_out / 'log.txt'})", flush=True)
        else:
            print(f"[{i}/{len(jobs)}] {job.name}: ok in {took:.0f}s", flush=True)
    print(f"jobs finished in {time.time() - t_start:.0f}s", flush=True)

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "scripts"))
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
