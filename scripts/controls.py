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
others. The runs share --workers processes (default 2), each running job scripts in-process (their
imports paid once per worker). The report's positive-control column then reads "passed" / "FAILED" / "untested: <why>".
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
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


def _worker_init(root: str, parent: int) -> None:
    """A control worker: the repo on sys.path, plots headless, and it dies with the runner."""
    for p in (root, os.path.join(root, "scripts")):
        if p not in sys.path:
            sys.path.insert(0, p)
    os.environ["MPLBACKEND"] = "Agg"
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)


def _run_job_here(job_name: str, argv: list[str], log_path: str) -> tuple[int, float]:
    """Run one job script's main(argv) in this worker (its imports paid once per worker, not once
    per run: ~5-9 s each on a loaded 2-core box), output to log_path; (exit code, seconds)."""
    import traceback

    import torch

    t0 = time.time()
    threads = torch.get_num_threads()
    with open(log_path, "w") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        try:
            code = job_spec_module(job_name).main(argv)
        except SystemExit as exc:  # argparse errors, scripts that exit
            code = exc.code if isinstance(exc.code, int) else 1
        except Exception:  # one failed control must not end the worker (the others still run)
            traceback.print_exc()
            code = 1
        finally:
            torch.set_num_threads(threads)
            import matplotlib.pyplot as plt

            plt.close("all")
    return int(code or 0), round(time.time() - t0, 1)


def job_spec_module(job_name: str) -> Any:
    return _demo().script_module(job_spec(job_name))


def run_controls(out: str | Path, rows: list[str] | None = None, demo_dir: str | Path | None = None,
                 force: bool = False, dry_run: bool = False, engine: str = "hf", workers: int = 2,
                 log: Any = print) -> dict[str, Any]:
    """Run every (or ``rows``') planted case into ``out``; return (and write) controls.json's rows.

    The runs go to ``workers`` worker processes (default 2: one per core of the reference 2-core
    machine; every job uses one torch thread), each running job scripts in-process."""
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
    t_all = time.time()
    todo: list[tuple[str, str, Any, list[str], dict[str, Any], Path]] = []
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
            log(f"[controls] {tag}: {job.name} queued{' (' + why + ')' if why else ''}")
            todo.append((row, side, job, cmd, entry, folder))
    if dry_run:
        return record
    out.mkdir(parents=True, exist_ok=True)
    if todo:
        (out / "logs").mkdir(parents=True, exist_ok=True)
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=max(1, min(workers, len(todo))), mp_context=mp.get_context("spawn"),
                                 initializer=_worker_init, initargs=(str(ROOT), os.getpid())) as pool:
            futures = {}
            for row, side, job, cmd, entry, folder in todo:
                log_path = out / "logs" / f"{SIDE_FOLDER[side]}-{row}.log"
                fut = pool.submit(_run_job_here, job.name, cmd[2:], str(log_path))
                futures[fut] = (row, side, entry, folder, log_path)
            for fut in as_completed(futures):
                row, side, entry, folder, log_path = futures[fut]
                tag = f"{row} planted {side}"
                try:
                    code, took = fut.result()
                except Exception as exc:  # the worker itself died
                    code, took = 1, None
                    with open(log_path, "a") as fh:
                        fh.write(f"\ncontrol worker died: {exc!r}\n")
                entry["seconds"] = took
                if code != 0 or not (folder / "results.json").is_file():
                    lines = [ln for ln in log_path.read_text().strip().splitlines() if ln.strip()] \
                        if log_path.is_file() else []
                    entry.update(status="failed", why=f"exit {code}: {' '.join(lines[-1:])[:300]}; log {log_path}")
                    log(f"[controls] {tag}: FAILED after {took}s (see {log_path})")
                else:
                    entry["status"] = "ran"
                    log(f"[controls] {tag}: ok in {took}s")
                record.setdefault(row, {})[side] = entry
                write_text_atomic(path, json.dumps({"rows": record}, indent=1))
    write_text_atomic(path, json.dumps({"rows": record}, indent=1))
    cost = {row: sum(e.get("seconds") or 0 for e in record.get(row, {}).values()) for row in rows}
    log(f"[controls] finished in {time.time() - t_all:.0f}s; worker seconds per row: "
        + ", ".join(f"{row} {sec:.0f}" for row, sec in cost.items() if sec))
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
    ap.add_argument("--workers", type=int, default=2,
                    help="control runs at a time (default 2: one per core of a 2-core machine; each uses one thread)")
    args = ap.parse_args(argv)
    demo_dir = Path(args.demo) if args.demo else Path(args.out).resolve().parent
    try:
        record = run_controls(args.out, args.rows, demo_dir, force=args.force, dry_run=args.dry_run,
                              engine=args.engine, workers=args.workers)
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
