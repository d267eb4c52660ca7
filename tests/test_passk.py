"""pass@k against the exact combinatorial formula; maj@k against exact enumeration."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from fractions import Fraction

import numpy as np
import pytest

from analyses.passk import compare_pass_at_k, crossover_k, maj_at_k, pass_at_k, pass_at_k_curve
from hooks import TwinlensError


def exact_pass_at_k(n: int, c: int, k: int) -> Fraction:
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def test_pass_at_k_equals_exact_combinatorial_formula_on_random_counts():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 1025))
        c = int(rng.integers(0, n + 1))
        k = int(rng.integers(1, n + 1))
        # The product has <= 1024 factors each rounded to 1 ulp (1.1e-16): <= ~1e-13 off.
        assert abs(pass_at_k(n, c, k) - float(exact_pass_at_k(n, c, k))) < 1e-12, (n, c, k)


def test_pass_at_k_is_finite_and_exact_at_n_1024():
    n = 1024
    c = np.arange(0, n + 1)
    for k in (1, 2, 64, 512, 1024):
        got = pass_at_k(np.full_like(c, n), c, k)
        assert np.all(np.isfinite(got))
        want = np.array([float(exact_pass_at_k(n, int(ci), k)) for ci in c])
        assert np.max(np.abs(got - want)) < 1e-12
    # Known values: pass@1 = c/n; with no correct sample pass@k = 0; with all correct 1.
    assert pass_at_k(n, 256, 1) == pytest.approx(0.25, abs=1e-15)
    assert pass_at_k(n, 0, 512) == 0.0 and pass_at_k(n, n, 512) == 1.0


def test_pass_at_k_vectorised_matches_scalar():
    n, c = np.array([10, 20, 30]), np.array([0, 5, 30])
    assert pass_at_k(n, c, 4).tolist() == [pass_at_k(10, 0, 4), pass_at_k(20, 5, 4), pass_at_k(30, 30, 4)]


@pytest.mark.parametrize(
    "n, c, k, match",
    [(4, 2, 5, "exceeds"), (4, 5, 2, "c > n"), (-1, 0, 1, ">= 0"), (4, -1, 1, ">= 0"), (4, 1, 0, "k must be >= 1")],
)
def test_pass_at_k_bad_input_is_a_clear_value_error(n, c, k, match):
    with pytest.raises(ValueError, match=match):
        pass_at_k(n, c, k)


def _exact_maj(answers, right, k):
    """Average over all k-subsets; ties split uniformly."""
    total = Fraction(0)
    subsets = list(itertools.combinations(range(len(answers)), k))
    for s in subsets:
        votes = Counter(answers[i] for i in s if answers[i] is not None)
        if not votes:
            continue
        top = max(votes.values())
        winners = [a for a, v in votes.items() if v == top]
        total += Fraction(int(right in winners), len(winners))
    return float(total / len(subsets))


def test_maj_at_k_matches_exact_enumeration_within_monte_carlo_error():
    rng = np.random.default_rng(1)
    problems = [[int(x) if x < 4 else None for x in rng.integers(0, 5, 8)] for _ in range(6)]
    right = [0] * 6
    for k in (1, 3, 8):
        got = maj_at_k(problems, right, k, n_resamples=4000, seed=0)
        want = [_exact_maj(a, 0, k) for a in problems]
        # k=1 and k=n are exact; otherwise 4000 draws: std <= 0.5/sqrt(4000) = 0.008, 4 sigma.
        tol = 1e-12 if k in (1, 8) else 0.032
        assert np.max(np.abs(got - want)) <= tol, k


def test_maj_at_k_is_seeded():
    answers = [[1, 2, 2, 1, 3, None, 1, 2]]
    assert maj_at_k(answers, [1], 4, seed=5).tolist() == maj_at_k(answers, [1], 4, seed=5).tolist()
    # and the seed is used: another seed draws other subsets (a different Monte-Carlo estimate)
    assert maj_at_k(answers, [1], 4, seed=5).tolist() != maj_at_k(answers, [1], 4, seed=6).tolist()


def test_curve_ci_brackets_mean_and_crossover_found():
    n = np.full(50, 16)
    c = np.random.default_rng(0).integers(0, 17, 50)
    curve = pass_at_k_curve(n, c, seed=0)
    assert curve.k == [1, 2, 4, 8, 16]
    assert all(lo <= m <= hi for lo, m, hi in zip(curve.ci_low, curve.mean, curve.ci_high, strict=True))
    assert crossover_k([1, 2, 4], [0.2, 0.5, 0.9], [0.6, 0.7, 0.8]) == 4
    assert crossover_k([1, 2], [0.1, 0.2], [0.6, 0.7]) is None


def test_compare_finds_problems_solved_by_one_model_only():
    base = {"a": [True, False, False, False], "b": [False] * 4, "c": [False, False, True, True]}
    rl = {"a": [True] * 4, "b": [True, False, False, False], "c": [False] * 4}
    cmp = compare_pass_at_k({"base": base, "rl": rl}, seed=0, n_boot=50)
    assert cmp.solved_only_by == {"base": ["c"], "rl": ["b"]}
    assert cmp.k == [1, 2, 4]
    # base pass@4 = 2/3 (a, c), rl pass@4 = 2/3 (a, b): base >= rl first at k=4
    assert cmp.pass_at_k["base"].mean[-1] == pytest.approx(2 / 3)
    assert cmp.crossover_k == {"rl": 4}


def test_empty_sample_sets_are_refused():
    with pytest.raises(TwinlensError, match="empty"):
        compare_pass_at_k({"base": {}, "rl": {}})
    with pytest.raises(TwinlensError, match="empty"):
        pass_at_k_curve([], [])
    with pytest.raises(TwinlensError, match="empty"):
        maj_at_k([], [], 1)


def test_script_on_tiny_pair_writes_results_contract(tiny_models, tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "passk.py"
    spec = importlib.util.spec_from_file_location("passk_script", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "run"
    argv = ["--base", str(tiny_models["llama"]), "--rl", str(tiny_models["llama_b"]), "--difficulty", "3",
            "--n-problems", "3", "--n-samples", "2", "--max-new-tokens", "6", "--n-boot", "20", "--out", str(out)]
    assert mod.main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["k"] == [1, 2] and set(res["pass_at_k"]) == {"base", "llama_b"}
    assert "crossover_k" in res and res["seed"] == 0
    # organism v2's task has 100 answers (00..99): the guesser's curve is written beside the models'
    assert res["guesser"]["answer_space"] == 100
    assert res["guesser"]["pass_at_k"] == pytest.approx([0.01, 1 - 0.99**2])
    assert (out / "pass_at_k.png").exists() and (out / "summary.md").exists()
    assert "uniform guesser" in (out / "summary.md").read_text()


def test_guesser_pass_at_k_matches_enumeration():
    from analyses.passk import guesser_pass_at_k

    # 3 answers, k = 2: the guesser misses twice with probability (2/3)^2
    assert guesser_pass_at_k([1, 2], 3) == pytest.approx([1 / 3, 1 - 4 / 9])
    with pytest.raises(TwinlensError, match="answer_space"):
        guesser_pass_at_k([1], 0)
