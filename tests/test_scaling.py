"""The ScaleRL sigmoid fit recovers published parameters from noiseless synthetic points."""

from __future__ import annotations

import numpy as np
import pytest

from analyses.scaling import compare_heldout, fit_sigmoid, power_law_curve, sigmoid_curve
from hooks import TwinlensError

PUBLISHED = [(0.710, 1.65, 4242.0), (0.645, 1.70, 10909.0)]  # RESEARCH.md section 9


@pytest.mark.parametrize("A, B, C_mid", PUBLISHED)
@pytest.mark.parametrize("fix_r0", [False, True])
def test_fit_recovers_published_scalerl_parameters_to_1_percent(A, B, C_mid, fix_r0):
    R0 = 0.25
    compute = np.geomspace(200, 60000, 24)
    score = sigmoid_curve(compute, A, B, C_mid, R0)
    fit = fit_sigmoid(compute, score, r0=R0 if fix_r0 else None, exclude_below=1500, bootstrap=20)
    assert fit.n_excluded == int((compute < 1500).sum())
    for got, want in ((fit.A, A), (fit.B, B), (fit.C_mid, C_mid), (fit.R0, R0)):
        assert got == pytest.approx(want, rel=0.01)
    lo, hi = fit.ci["A"]
    assert lo <= fit.A * (1 + 1e-9) and hi >= fit.A * (1 - 1e-9)


def test_fit_with_noise_has_cis_covering_truth():
    rng = np.random.default_rng(0)
    compute = np.geomspace(200, 60000, 30)
    score = sigmoid_curve(compute, 0.71, 1.65, 4242, 0.25) + rng.normal(0, 0.005, compute.size)
    fit = fit_sigmoid(compute, score, bootstrap=100, seed=0)
    assert fit.ci["A"][0] <= 0.71 <= fit.ci["A"][1]
    assert fit.A == pytest.approx(0.71, abs=0.02)


def test_same_seed_same_cis():
    compute = np.geomspace(200, 60000, 12)
    score = sigmoid_curve(compute, 0.7, 1.5, 3000, 0.2) + np.linspace(-0.01, 0.01, 12)
    a = fit_sigmoid(compute, score, bootstrap=30, seed=3)
    b = fit_sigmoid(compute, score, bootstrap=30, seed=3)
    assert a.ci == b.ci


@pytest.mark.parametrize(
    "compute, match",
    [([1, 2, 2, 3, 4, 5], "strictly increasing"), ([3, 2, 4, 5, 6, 7], "strictly increasing"),
     ([0, 1, 2, 3, 4, 5], "positive"), ([-1, 1, 2, 3, 4, 5], "positive")],
)
def test_bad_compute_series_is_refused(compute, match):
    with pytest.raises(TwinlensError, match=match):
        fit_sigmoid(compute, np.linspace(0.1, 0.6, len(compute)))


def test_too_few_points_after_exclusion_is_refused():
    with pytest.raises(TwinlensError, match="points left"):
        fit_sigmoid([1, 2, 3, 4, 5, 6], [0.1, 0.2, 0.3, 0.4, 0.5, 0.55], exclude_below=4)


def _run_script(argv):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "scaling.py"
    spec = importlib.util.spec_from_file_location("scaling_script", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main(argv)


def test_script_writes_results_contract_from_a_points_file(tmp_path):
    import json

    compute = np.geomspace(200, 60000, 12)
    lines = ["compute,score"] + [f"{c},{s}" for c, s in zip(compute, sigmoid_curve(compute, 0.71, 1.65, 4242, 0.3), strict=True)]
    (tmp_path / "pts.csv").write_text("\n".join(lines))
    assert _run_script(["--points", str(tmp_path / "pts.csv"), "--bootstrap", "10", "--out", str(tmp_path / "o")]) == 0
    res = json.loads((tmp_path / "o" / "results.json").read_text())
    assert res["A"] == pytest.approx(0.71, rel=0.01) and set(res["ci"]) == {"A", "B", "C_mid", "R0"}
    assert res["saturated"] is False and res["heldout"]["better"] == "sigmoid"
    assert (tmp_path / "o" / "scaling_fit.png").stat().st_size > 0 and (tmp_path / "o" / "summary.md").exists()
    (tmp_path / "bad.csv").write_text("1,0.1\n1,0.2\n2,0.3\n3,0.4\n4,0.5\n")
    assert _run_script(["--points", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "b")]) == 2


def test_heldout_comparison_tells_a_sigmoid_from_a_power_law():
    """Points from a sigmoid that bends within the range: the sigmoid extrapolates them better; points
    from a power law that keeps rising: the power law does. Noiseless, so either fit can be exact."""
    c = np.geomspace(100, 100000, 12)
    sig = compare_heldout(c, sigmoid_curve(c, 0.71, 1.65, 4242, 0.2))
    assert sig.n_heldout == 3 and sig.sigmoid_rmse < 0.01 < sig.power_law_rmse
    pw = compare_heldout(c, power_law_curve(c, 0.01, 0.3, 0.1))
    assert pw.power_law_rmse < 0.01 < pw.sigmoid_rmse
    with pytest.raises(TwinlensError, match="need 5"):
        compare_heldout(c[:5], sigmoid_curve(c[:5], 0.71, 1.65, 4242, 0.2))


def test_saturated_fit_is_flagged():
    c = np.geomspace(100, 100000, 10)
    fit = fit_sigmoid(c, sigmoid_curve(c, 1.0, 2.0, 300, 0.2), bootstrap=0)
    assert fit.to_dict()["saturated"] and fit.to_dict()["A_bound"] == 1.0
