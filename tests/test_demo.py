"""scripts/demo.py: jobs in their own folders, finished jobs skipped, failures reported, report written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_demo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), *args],
                          capture_output=True, text=True, timeout=600)


def test_demo_runs_jobs_skips_finished_ones_and_writes_the_report(tmp_path):
    out = tmp_path / "demo"
    first = run_demo("--out", str(out), "--only", "diff", "capture")
    assert first.returncode == 0, first.stdout + first.stderr
    assert (out / "diff" / "results.json").exists() and (out / "capture" / "results.json").exists()
    assert (out / "report.html").exists() and "| 2 | RL updates a sparse" in first.stdout
    stamp = (out / "diff" / "results.json").stat().st_mtime_ns
    again = run_demo("--out", str(out), "--only", "diff")
    assert "done before with the same models and settings, skipped" in again.stdout
    assert (out / "diff" / "results.json").stat().st_mtime_ns == stamp


def test_a_failing_job_is_reported_and_does_not_lose_the_others(tmp_path):
    out = tmp_path / "demo"
    # A base model folder that does not exist: diff fails, but the report is still written and
    # the failure is listed.
    res = run_demo("--out", str(out), "--only", "diff", "--base", str(tmp_path / "missing"))
    assert res.returncode == 1
    assert "Failed jobs" in res.stdout and "diff" in res.stdout
    assert (out / "report.html").exists()
