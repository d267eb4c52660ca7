"""Shortcut detectors: repeated n-grams, length, answers without steps."""

from __future__ import annotations

import pytest

from analyses.sampling import SampleRow
from analyses.shortcuts import repeated_ngram_rate, shortcut_stats
from analyses.task import organism_task
from hooks import TwinlensError


def test_repeated_ngram_rate():
    assert repeated_ngram_rate([1, 2, 3, 4], 2) == 0.0
    assert repeated_ngram_rate([1, 2, 1, 2, 1, 2], 2) == pytest.approx(1 - 2 / 5)
    assert repeated_ngram_rate([1], 4) == 0.0


def test_stats_on_organism_completions():
    task = organism_task(difficulty=3)
    texts = ["#16", "10+2=12;12+4=16;#16", "10+2=12;10+2=12;10+2=12;#12"]
    rows = [SampleRow("m", f"p{i}", 0, [1], list(range(len(t))), t, {}, finished=i != 2)
            for i, t in enumerate(texts)]
    # completion ids stand in for characters: use the text itself for the n-gram detector
    for r in rows:
        r.completion_ids = [ord(ch) for ch in r.text]
    st = shortcut_stats(rows, task, n_boot=20)
    assert st.ngram == 8  # one step "10+2=12;": a repeated 8-gram is a repeated step
    assert st.mean_length == pytest.approx((3 + 19 + 27) / 3)
    assert st.skipped_steps_rate == pytest.approx(1 / 3)  # only "#16" skips the steps
    assert st.unfinished_rate == pytest.approx(1 / 3)
    rep = repeated_ngram_rate([ord(c) for c in texts[2]], 8)
    assert st.repeated_ngram_rate == pytest.approx(rep / 3)
    assert rep > 0.4


def test_empty_samples_refused():
    with pytest.raises(TwinlensError, match="No samples"):
        shortcut_stats([])
