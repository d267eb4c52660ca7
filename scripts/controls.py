#!/usr/bin/env python
"""Positive and negative controls of the verdict table: run, for each row, only the job that row
needs on the organism checkpoints where its claim is planted true and planted false
(analyses/controls.py says which, and why), at the smallest sizes that still discriminate.

    python scripts/controls.py --out runs/demo/controls                 # every row
    python scripts/controls.py --out runs/demo/controls --rows diff passk
    python scripts/controls.py --out runs/demo/controls --dry-run       # the commands, nothing run
    python scripts/report.py runs/demo                                  # reads runs/demo/controls

Writes OUT/positive/<row>/ and OUT/negative/<row>/ (each a job folder: results.json, summary.md,
plots), OUT/logs/<side>-<row>.log, and OUT/controls.json: per row and side, what ran (the command,
its seconds) or why it did not (no honest planted case, a checkpoint not shipped, options the job
does not take, a failed run). A planted-true case that is the job's own default run on the
organism (probe, steer) reuses the demo's folder (--demo) when that run has the same models and
settings. A finished run with the same models and settings is skipped (--force reruns it); a
folder made otherwise is rerun from scratch. A failing run is recorded and does not stop the
others. The report's positive-control column then reads "passed" / "FAILED" / "untested: <why>".
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from analyses.controls import CONTROLS, RECORD, SIDE_FOLDER, SIDES, planted_args  # noqa: E402
from analyses.reporting import write_text_atomic  # noqa: E402
from analyses.verdicts import ROW_JOBS  # noqa: E402
from hooks import TwinlensError  # noqa: E402


def _demo():
    """scripts/demo.py's job table and folder planning (one implementation of skip / rerun)."""
    if str(ROOT / "scripts") not in sys.path:
        sys.path.insert(0, str(ROOT / "scripts"))
    import demo

    return demo


def job_spec(job: str):
    """The demo's Job for ``job`` (its script name and whether it samples)."""
    for j in _demo().JOBS:
        if j.name == job:
            return j
    raise TwinlensError(f"no demo job named {job!r}")


def check_options(job, cmd: list[str]) -> str:
    """'' when the job's own parser takes ``cmd``'s options, else argparse's complaint (an
    untested reason: e.g. a job that does not take --variant yet)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            _demo().script_module(job).parse_args(cmd[2:])
    except SystemExit:
        lines = [ln for ln in err.getvalue().strip().splitlines() if ln.strip()]
        return f"scripts/{job.script} refuses the control's options: {lines[-1] if lines else 'argument error'}"
    except TwinlensError as exc:
        return f"scripts/{job.script}: {exc}"
    return ""


def reusable(job, cmd: list[str], demo_dir: Path | None) -> Path | None:
    """The demo's own folder of ``job`` when it holds a finished run with exactly ``cmd``'s models
    and settings (same weight hashes), else None."""
    if demo_dir is None:
        return None
    folder = demo_dir / job.name
    if not (folder / "results.json").is_file():
        return None
    probe_cmd = [cmd[0], cmd[1], "--out", str(folder), *cmd[4:]]
    try:
        action, _ = _demo().plan_job(job, probe_cmd, folder, force=False)
    except (TwinlensError, SystemExit, OSError):
        return None
    return folder if action == "skip" else None


def run_controls(out: str | Path, rows: list[str] | None = None, demo_dir: str | Path | None = None,
                 force: bool = False, dry_run: bool = False, engine: str = "hf",
                 log: Any = print) -> dict[str, Any]:
    """Run every (or ``rows``') planted case into ``out``; return (and write) controls.json's rows."""
    demo = _demo()
    out = Path(out)
    demo_dir = Path(demo_dir) if demo_dir else None
    rows = list(rows or ROW_JOBS)
    unknown = [r for r in rows if r not in CONTROLS]
    if unknown:
        raise TwinlensError(f"unknown row(s) {unknown}; the rows are: {', '.join(ROW_JOBS)}")
    path = out / RECORD
    record: dict[str, Any] = {}
    if path.is_file() and not dry_run:
        try:
            record = json.loads(path.read_text()).get("rows") or {}
        except (OSError, json.JSONDecodeError, AttributeError):
            record = {}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "MPLBACKEND": "Agg"}
    t_all = time.time()
    for row in rows:
        control = CONTROLS[row]
        job = job_spec(control.job)
        for side in SIDES:
            tag = f"{row} planted {side}"
            args = planted_args(control, side)
            if isinstance(args, str):
                record.setdefault(row, {})[side] = {"status": "untested", "why": args}
                log(f"[controls] {tag}: untested ({args})")
                continue
            folder = out / SIDE_FOLDER[side] / row
            cmd = [sys.executable, str(ROOT / "scripts" / job.script), "--out", str(folder), *args]
            if job.engine and engine != "hf":
                cmd += ["--engine", engine]
            entry: dict[str, Any] = {"command": cmd[1:], "folder": str(Path(SIDE_FOLDER[side]) / row)}
            bad = check_options(job, cmd)
            if bad:
                entry.update(status="untested", why=bad)
                record.setdefault(row, {})[side] = entry
                log(f"[controls] {tag}: untested ({bad})")
                continue
            if dry_run:
                log(f"[controls] {tag}: " + " ".join(cmd[1:]))
                continue
            reuse = reusable(job, cmd, demo_dir) if side == "true" and control.reuse_demo else None
            if reuse is not None:
                entry.update(status="reused", folder=str(reuse.resolve()), seconds=0.0)
                record.setdefault(row, {})[side] = entry
                log(f"[controls] {tag}: the demo's own {job.name} run ({reuse}) is this case, reused")
                continue
            action, why = demo.plan_job(job, cmd, folder, force)
            if action == "skip":
                prev = (record.get(row) or {}).get(side) or {}
                entry.update(status="done before", seconds=prev.get("seconds"))
                record.setdefault(row, {})[side] = entry
                log(f"[controls] {tag}: done before with the same models and settings, skipped")
                continue
            if action == "rerun":
                cmd.append("--overwrite")
            log_path = out / "logs" / f"{SIDE_FOLDER[side]}-{row}.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log(f"[controls] {tag}: {job.name} ...{' (' + why + ')' if why else ''}")
            t0 = time.time()
            with open(log_path, "w") as fh:
                proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                      preexec_fn=demo._die_with_parent(os.getpid()))
            took = round(time.time() - t0, 1)
            entry["seconds"] = took
            if proc.returncode != 0 or not (folder / "results.json").is_file():
                tail = [ln for ln in log_path.read_text().strip().splitlines() if ln.strip()][-1:]
                entry.update(status="failed", why=f"exit {proc.returncode}: {' '.join(tail)[:300]}; "
                                                  f"log {log_path}")
                log(f"[controls] {tag}: FAILED after {took:.0f}s (see {log_path})")
            else:
                entry["status"] = "ran"
                log(f"[controls] {tag}: ok in {took:.0f}s")
            record.setdefault(row, {})[side] = entry
            write_text_atomic(path, json.dumps({"rows": record}, indent=1))
    if not dry_run:
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps({"rows": record}, indent=1))
        log(f"[controls] finished in {time.time() - t_all:.0f}s")
    return record


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/demo/controls", help="controls folder (default: runs/demo/controls)")
    ap.add_argument("--rows", nargs="+", metavar="ROW", choices=list(ROW_JOBS),
                    help="only these rows: " + ", ".join(ROW_JOBS))
    ap.add_argument("--demo", help="the demo folder whose own runs may serve as planted-true cases "
                    "(default: the parent of --out when it is a demo folder)")
    ap.add_argument("--force", action="store_true", help="rerun finished control runs")
    ap.add_argument("--dry-run", action="store_true", help="print each row's commands (or why it is untested)")
    ap.add_argument("--engine", choices=("hf", "vllm"), default="hf", help="sampling engine of the jobs that sample")
    args = ap.parse_args(argv)
    demo_dir = Path(args.demo) if args.demo else Path(args.out).resolve().parent
    try:
        record = run_controls(args.out, args.rows, demo_dir, force=args.force, dry_run=args.dry_run,
                              engine=args.engine)
    except TwinlensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = [f"{r} planted {s}" for r, sides in record.items() for s, e in sides.items()
              if e.get("status") == "failed"]
    if failed:
        print("failed control runs: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
