"""scripts/demo.py: jobs in their own folders, finished jobs skipped, failures reported, report written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARITH20 = ROOT / "tests" / "data" / "arith20.jsonl"


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
    res = run_demo("--out", str(out), "--only", "diff", "--base", str(tmp_path / "missing"),
                   "--problems", str(ARITH20))
    assert res.returncode == 1
    assert "Failed jobs" in res.stdout and "diff" in res.stdout
    assert (out / "report.html").exists()


def test_a_pair_that_is_not_the_organism_without_a_task_is_refused_naming_the_options(tmp_path):
    res = run_demo("--out", str(tmp_path / "d"), "--base", str(tmp_path / "b"), "--rl", str(tmp_path / "r"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "not the organism" in res.stderr and all(o in res.stderr for o in ("--problems", "--labels", "--chat-template"))
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())  # no job ran


def test_task_options_reach_every_job_that_takes_them(tmp_path):
    import argparse

    import scripts.demo as demo

    ap = argparse.ArgumentParser()
    args = argparse.Namespace(base="/m/base", rl=["/m/rl"], sft=None, problems=str(ARITH20), labels="decision",
                              answer_format="answer-is", engine="hf",
                              chat_template=True, job_args=demo.parse_job_args(["probe=--n-problems 20"], ap))
    cmds = {j.name: demo.job_command(j, args, tmp_path) for j in demo.JOBS}
    for name in ("probe", "steer", "route", "passk", "drift", "calibrate", "mi_peaks"):
        cmd = cmds[name]
        assert cmd[cmd.index("--problems") + 1] == str(ARITH20) and "--chat-template" in cmd, name
        assert cmd[cmd.index("--answer-format") + 1] == "answer-is", name
        assert ("--labels" in cmd) == (name in ("probe", "steer")), name
    assert cmds["capture"][cmds["capture"].index("--prompts") + 1] == str(ARITH20)
    assert "--problems" not in cmds["diff"] and "--rl" not in cmds["steer"]  # steer takes the base only
    assert cmds["probe"][-2:] == ["--n-problems", "20"]
    # every option the demo passes is one the job's script accepts (argparse would refuse it)
    for name in ("probe", "steer", "route", "passk", "drift", "calibrate", "mi_peaks", "capture"):
        script = next(j for j in demo.JOBS if j.name == name).script
        help_text = subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--help"],
                                   capture_output=True, text=True, timeout=120).stdout
        assert all(f in help_text for f in cmds[name] if f.startswith("--")), name
