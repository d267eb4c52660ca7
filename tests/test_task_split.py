"""Held-out problem sets are disjoint from the problems a job fitted on, for every task (a
problems file used to ignore the seed, so steering's held-out prompts were the fitted ones)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from analyses.task import load_task, prompt_id
from hooks import TwinlensError

ARITH20 = Path(__file__).parent / "data" / "arith20.jsonl"


def test_a_problems_file_honours_the_seed_and_excludes_the_fitted_problems():
    task = load_task(str(ARITH20))
    rows = [json.loads(line)["prompt"] for line in ARITH20.read_text().splitlines()]
    fit = task.problems(12, seed=0)
    assert [p.prompt for p in fit] == rows[:12]  # set 0: the file's own order
    other = task.problems(12, seed=1)
    assert [p.prompt for p in other] != rows[:12]  # the seed is no longer ignored
    held = task.problems(8, seed=1, exclude=fit)
    assert len(held) == 8 and not {p.prompt for p in held} & {p.prompt for p in fit}
    # excluding by recorded ids (what probe.py writes into its vector file) is the same
    assert task.problems(8, seed=1, exclude=[prompt_id(p.prompt) for p in fit]) == held
    with pytest.raises(TwinlensError, match=r"holds 20 problems and 12 of them are already used.*9 more"):
        task.problems(9, seed=1, exclude=fit)


def test_organism_held_out_sets_exclude_the_fitted_problems_by_content():
    task = load_task(None, difficulty=3)  # tier 3: ~1000 held-out problems, so two sets of 400 overlap
    fit = task.problems(400, seed=0)
    plain = task.problems(400, seed=1)
    shared = {p.prompt for p in plain} & {p.prompt for p in fit}
    assert shared  # two seeds of the organism's eval partition do overlap (why exclusion is needed)
    held = task.problems(400, seed=1, exclude=fit)
    assert len(held) == 400 and not {p.prompt for p in held} & {p.prompt for p in fit}
    # set 1 in its own order, minus the fitted problems: it changes only where it must
    fitted = {p.prompt for p in fit}
    assert held == [p for p in task.problems(800, seed=1) if p.prompt not in fitted][:400]
