"""Calibration metrics against scikit-learn and straightforward loop references."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, roc_auc_score

from analyses.calibration import (
    adaptive_calibration_error,
    answer_confidence,
    auroc,
    brier_score,
    calibration_report,
    expected_calibration_error,
    parse_stated_confidence,
)
from hooks import TwinlensError


def _random(seed, n=500):
    rng = np.random.default_rng(seed)
    conf = rng.random(n)
    conf[:20] = np.round(conf[:20], 1)  # values on bin edges (0.1, 0.2, ...) are included
    correct = rng.random(n) < conf ** 2  # miscalibrated on purpose
    return conf, correct


def loop_ece(conf, correct, n_bins=10):
    """Reference: bins (lo, hi] with lo = b/n_bins, confidence 0 in the first bin."""
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        members = [i for i, c in enumerate(conf) if (lo < c <= hi) or (b == 0 and c == 0)]
        if members:
            acc = sum(correct[i] for i in members) / len(members)
            avg = sum(conf[i] for i in members) / len(members)
            total += len(members) / len(conf) * abs(acc - avg)
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_brier_equals_sklearn(seed):
    conf, correct = _random(seed)
    # Same arithmetic (mean of squared differences): agreement to rounding, 1e-15.
    assert brier_score(conf, correct) == pytest.approx(brier_score_loss(correct, conf), abs=1e-15)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_equals_loop_reference(seed):
    conf, correct = _random(seed)
    # Edges 0.3 vs linspace's 0.30000000000000004 could differ for a value exactly between them;
    # none of ours is (values are k/10 or random doubles), so the sums agree to rounding.
    for n_bins in (10, 15):
        assert expected_calibration_error(conf, correct, n_bins) == pytest.approx(
            loop_ece(conf, correct, n_bins), abs=1e-12)


def test_adaptive_ece_uses_equal_mass_bins():
    conf, correct = _random(3, n=100)
    order = np.argsort(conf, kind="stable")
    ref = sum(len(g) / 100 * abs(correct[g].mean() - conf[g].mean()) for g in np.array_split(order, 10))
    assert adaptive_calibration_error(conf, correct, 10) == pytest.approx(ref, abs=1e-12)


def test_auroc_equals_sklearn_and_perfect_calibration_has_small_ece():
    conf, correct = _random(4)
    assert auroc(conf, correct) == pytest.approx(roc_auc_score(correct, conf), abs=1e-12)
    assert np.isnan(auroc([0.2, 0.9], [True, True]))
    rng = np.random.default_rng(5)
    c = rng.random(20000)
    y = rng.random(20000) < c  # calibrated by construction
    # Sampling noise of a bin's accuracy ~ sqrt(0.25 / 2000) = 0.011; weighted: ECE < 0.02.
    assert expected_calibration_error(c, y) < 0.02


def test_report_cis_bracket_point_estimates():
    conf, correct = _random(6, n=200)
    r = calibration_report(conf, correct, n_boot=100, seed=0)
    assert r.ci["brier"][0] <= r.brier <= r.ci["brier"][1]
    assert sum(r.bins.count) == 200


def test_parse_stated_confidence():
    assert parse_stated_confidence("so x=3. Confidence: 0.8") == 0.8
    assert parse_stated_confidence("confidence = 85%") == pytest.approx(0.85)
    assert parse_stated_confidence("<confidence>0.3</confidence>") == 0.3
    assert parse_stated_confidence("I am sure") is None


def test_answer_confidence_is_product_over_answer_tokens():
    assert answer_confidence([-1.0, np.log(0.5), np.log(0.4)], (1, 3)) == pytest.approx(0.2)
    assert answer_confidence([-1.0], None) == 0.0


def test_bad_input_is_refused():
    with pytest.raises(TwinlensError, match="No predictions"):
        brier_score([], [])
    with pytest.raises(TwinlensError, match="probabilities"):
        expected_calibration_error([1.2], [1])
    with pytest.raises(TwinlensError, match="one of each"):
        brier_score([0.1, 0.2], [1])


def test_group_bootstrap_resamples_whole_problems():
    conf, correct = _random(7, n=120)
    groups = [f"p{i // 4}" for i in range(120)]
    a = calibration_report(conf, correct, groups=groups, n_boot=50, seed=1)
    b = calibration_report(conf, correct, groups=groups, n_boot=50, seed=1)
    assert a.ci == b.ci and a.brier == brier_score(conf, correct)
    with pytest.raises(TwinlensError, match="group labels"):
        calibration_report(conf, correct, groups=groups[:10])
    # Two problems of 60 answers: a resample of whole problems is {p0, p0}, {p1, p1} or {p0, p1},
    # so its Brier is one half's, the other's, or the whole's. Each pure draw has chance 1/4, so
    # among 50 resamples the 2.5% and 97.5% quantiles (between the 2nd and 3rd extreme values)
    # are exactly the two halves' scores; resampling single answers would land strictly inside.
    halves = sorted([brier_score(conf[:60], correct[:60]), brier_score(conf[60:], correct[60:])])
    two = calibration_report(conf, correct, groups=["p0"] * 60 + ["p1"] * 60, n_boot=50, seed=1)
    assert list(two.ci["brier"]) == pytest.approx(halves, abs=1e-12)
