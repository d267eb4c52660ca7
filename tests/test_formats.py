"""Format shares, collapse step and per-checkpoint pass@k / maj@k on hand-made samples."""

from __future__ import annotations

import pytest

from analyses.formats import collapse_step, format_collapse
from analyses.sampling import SampleRow, Samples
from hooks import TwinlensError

FORMATS = ("direct", "step", "verify")


def _samples(spec: dict[str, list[list[tuple[str, bool]]]]) -> Samples:
    """spec[checkpoint][problem] = [(format, correct), ...]."""
    rows = []
    for ckpt, problems in spec.items():
        for p, samples in enumerate(problems):
            for j, (fmt, ok) in enumerate(samples):
                rows.append(SampleRow(ckpt, f"p{p}", j, [1], [2], "", {}, True, correct=ok,
                                      answer=1 if ok else 2, reference=1, format=fmt))
    return Samples(rows)


def test_collapse_step_is_first_step_over_threshold():
    shares = [{"direct": 0.5, "step": 0.5}, {"step": 0.9}, {"step": 0.95}, {"step": 0.99}]
    assert collapse_step([0, 10, 20, 30], shares, FORMATS) == (20, "step")  # 0.9 is not > 0.9
    assert collapse_step([0, 10], shares[:2], FORMATS) == (None, None)
    # "other" (malformed output) is never a collapse
    assert collapse_step([0], [{"other": 1.0}], FORMATS) == (None, None)


def test_format_collapse_shares_and_scores():
    s = _samples({
        "ck-step0": [[("direct", True), ("step", False)], [("verify", False), ("other", False)]],
        "ck-step10": [[("step", True), ("step", True)], [("step", False), ("step", True)]],
    })
    r = format_collapse(s, {"ck-step10": 10, "ck-step0": 0}, FORMATS, n_boot=50)
    assert r.checkpoints == ["ck-step0", "ck-step10"]
    assert r.share["ck-step0"] == {"direct": 0.25, "step": 0.25, "verify": 0.25, "other": 0.25}
    assert r.share["ck-step10"]["step"] == 1.0
    assert (r.collapse_step, r.collapse_format) == (10, "step")
    # pass@1 = mean fraction correct; pass@2 = share of problems with a correct sample
    assert r.pass_at_k["ck-step0"] == {1: 0.25, 2: 0.5}
    assert r.pass_at_k["ck-step10"] == {1: 0.75, 2: 1.0}
    # maj@2 of two samples: a tie between right and wrong counts one half
    assert r.maj_at_k["ck-step10"][2] == pytest.approx((1.0 + 0.5) / 2)


def test_missing_checkpoint_samples_are_refused():
    s = _samples({"a": [[("step", True)]]})
    with pytest.raises(TwinlensError, match="No samples from checkpoints"):
        format_collapse(s, {"a": 0, "b": 5}, FORMATS)
    with pytest.raises(TwinlensError, match="at least one checkpoint"):
        format_collapse(s, {}, FORMATS)
