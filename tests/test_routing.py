"""Routing hybrids (analyses/routing.py) on tiny random-weight models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from analyses.routing import (
    DisagreeRouter,
    EntropyRouter,
    PositionsRouter,
    ProbeRouter,
    RandomRouter,
    Steering,
    gap_recovered,
    hybrid_generate,
    routed_strategy_counts,
)
from hooks import TwinlensError, generate, load_model
from hooks.generation import row_seed

MAX_NEW = 12


@pytest.fixture(scope="module")
def models(tiny_models):
    # two llama models with the same tokenizer and different weights: base and "RL"
    return load_model(tiny_models["llama"]), load_model(tiny_models["llama_b"])


@pytest.fixture(scope="module")
def prompts(models):
    base = models[0]
    # different lengths, so left padding is exercised
    return [base.encode(t) for t in ("1+2+3:", "9-4:", "abc", "7+7+7+7+7:", "x", "42")]


def never(max_new=MAX_NEW):
    return PositionsRouter(np.zeros(max_new, dtype=bool))


def always(max_new=MAX_NEW):
    return PositionsRouter(np.ones(max_new, dtype=bool))


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_routing_nothing_reproduces_base_generation(models, prompts, temperature):
    base, rl = models
    ref = generate(base, prompts, MAX_NEW, temperature=temperature, n=2, seed=3, batch_size=4,
                   stop_at_eos=False)
    out = hybrid_generate(base, rl, prompts, never(), MAX_NEW, temperature=temperature, n=2,
                          seed=3, batch_size=4, stop_at_eos=False)
    assert out.tokens == ref
    assert out.fraction_routed == 0.0
    assert out.n_rl_forwards == 0  # the lagging RL cache never needed a forward


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_routing_everything_reproduces_rl_generation(models, prompts, temperature):
    base, rl = models
    ref = generate(rl, prompts, MAX_NEW, temperature=temperature, n=2, seed=3, batch_size=4,
                   stop_at_eos=False)
    out = hybrid_generate(base, rl, prompts, always(), MAX_NEW, temperature=temperature, n=2,
                          seed=3, batch_size=4, stop_at_eos=False)
    assert out.tokens == ref
    assert out.fraction_routed == 1.0


def test_lagging_rl_cache_gives_the_same_tokens_as_an_always_updated_one(models, prompts):
    base, rl = models
    # route a sparse, irregular set of steps so catch-ups span 1..5 missing tokens
    mask = np.zeros(MAX_NEW, dtype=bool)
    mask[[0, 3, 4, 9]] = True
    for router in (PositionsRouter(mask), RandomRouter(0.3, seed=1), EntropyRouter(3.7)):
        lazy = hybrid_generate(base, rl, prompts, router, MAX_NEW, batch_size=4, stop_at_eos=False)
        eager = hybrid_generate(base, rl, prompts, router, MAX_NEW, batch_size=4, stop_at_eos=False,
                                lazy_rl=False)
        assert lazy.tokens == eager.tokens
        assert lazy.routed == eager.routed
        assert lazy.n_rl_forwards <= eager.n_rl_forwards
    # with the position mask every row routes at 4 of 12 steps: 4 RL forwards per batch, not 12
    lazy = hybrid_generate(base, rl, prompts, PositionsRouter(mask), MAX_NEW, batch_size=4,
                           stop_at_eos=False)
    assert lazy.n_rl_forwards == 2 * 4


def test_disagree_router_routes_exactly_where_greedy_tokens_differ(models, prompts):
    base, rl = models
    out = hybrid_generate(base, rl, prompts, DisagreeRouter(), MAX_NEW, stop_at_eos=False)
    # Replay each prefix through both models: routed <=> argmaxes differ, token = RL's argmax then.
    for p, toks, routed in zip(prompts, out.tokens, out.routed, strict=True):
        ids = torch.tensor([p + toks])
        lb = base.hf(ids).logits[0, len(p) - 1:-1].argmax(-1)
        lr = rl.hf(ids).logits[0, len(p) - 1:-1].argmax(-1)
        assert routed == (lb != lr).tolist()
        assert toks == torch.where(lb != lr, lr, lb).tolist()


def test_random_router_fraction_matches_budget_within_binomial_bound(models, prompts):
    base, rl = models
    budget, n_rows = 0.2, len(prompts) * 8
    out = hybrid_generate(base, rl, prompts, RandomRouter(budget, seed=0), MAX_NEW, n=8,
                          temperature=1.0, stop_at_eos=False)
    n_tokens = n_rows * MAX_NEW  # 576 independent Bernoulli(0.2) coins (no eos: every step counts)
    # Binomial sd = sqrt(p(1-p)/N) = 0.0167; 4 sd (0.067, two-sided p ~ 6e-5) keeps a false alarm
    # rare but only catches gross errors (probability 0.3 or 0.1; with these coins 0.25 routes
    # 0.231 and would pass), so the exact coins are checked next.
    bound = 4 * math.sqrt(budget * (1 - budget) / n_tokens)
    assert abs(out.fraction_routed - budget) < bound
    # Row (prompt i, sample j) routes step t iff u_t < budget, u = the row's own seeded uniforms.
    coins = [(torch.rand(MAX_NEW, generator=torch.Generator().manual_seed(row_seed(0, "route", i, j)),
                         dtype=torch.float64) < budget).tolist()
             for i in range(len(prompts)) for j in range(8)]
    assert out.routed == coins
    # seeded: the same seed gives the same routing, independent of the batch size
    again = hybrid_generate(base, rl, prompts, RandomRouter(budget, seed=0), MAX_NEW, n=8,
                            temperature=1.0, stop_at_eos=False, batch_size=5)
    assert again.routed == out.routed


@pytest.mark.parametrize("budget", [-0.1, 1.5, float("nan"), "half"])
def test_budget_outside_unit_interval_is_refused(budget):
    with pytest.raises(TwinlensError, match=r"\[0, 1\]"):
        RandomRouter(budget)


def test_models_with_different_tokenizers_are_refused(models, prompts, tmp_path):
    from tests.conftest import make_tiny_model

    base, _ = models
    other = make_tiny_model(tmp_path / "other", "llama", seed=2)
    tok = (other / "tokenizer.json").read_text().replace('"a":', '"A":')
    (other / "tokenizer.json").write_text(tok)
    with pytest.raises(TwinlensError, match="different tokenizers"):
        hybrid_generate(base, load_model(other), prompts, never(), MAX_NEW)


def test_probe_or_vector_of_another_width_is_refused(models, prompts):
    from probes.linear_probe import LinearProbe
    from probes.vectors import StrategyVector

    base, rl = models
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, base.d_model + 8)), rng.integers(0, 2, 40)
    probe = LinearProbe(max_iter=20).fit(X, y)
    with pytest.raises(TwinlensError, match="width"):
        hybrid_generate(base, rl, prompts, ProbeRouter(probe, 0.0, layer=1), MAX_NEW)
    wrong = StrategyVector(torch.ones(base.d_model + 8), layer=1, method="random", strategy="s")
    with pytest.raises(TwinlensError, match="width"):
        hybrid_generate(base, rl, prompts, never(), MAX_NEW, steering=Steering([wrong]))


def test_probe_router_fires_where_the_probe_scores_above_threshold(models, prompts):
    from probes.vectors import StrategyVector

    base, rl = models
    v = StrategyVector(torch.randn(base.d_model, generator=torch.Generator().manual_seed(0)),
                       layer=1, method="random", strategy="s")
    low = hybrid_generate(base, rl, prompts, ProbeRouter(v, -1e9), MAX_NEW, stop_at_eos=False)
    high = hybrid_generate(base, rl, prompts, ProbeRouter(v, 1e9), MAX_NEW, stop_at_eos=False)
    assert low.fraction_routed == 1.0 and high.fraction_routed == 0.0


def test_steered_hybrid_with_zero_vector_equals_base_and_records_strategy(models, prompts):
    from probes.vectors import StrategyVector

    base, rl = models
    zero = StrategyVector(torch.zeros(base.d_model), layer=0, method="random", strategy="zero")
    ref = generate(base, prompts, MAX_NEW, stop_at_eos=False)
    out = hybrid_generate(base, rl, prompts, always(), MAX_NEW, steering=Steering([zero]),
                          stop_at_eos=False)
    assert out.tokens == ref  # cache crop + re-run with a zero vector changes nothing
    assert all(s == "zero" for row in out.strategy for s in row)
    big = StrategyVector(torch.randn(base.d_model) * 50, layer=0, method="random", strategy="big")
    steered = hybrid_generate(base, rl, prompts, always(), MAX_NEW, steering=Steering([big]),
                              stop_at_eos=False)
    assert steered.tokens != ref


def test_gap_recovered_and_its_paired_bootstrap_ci():
    base = np.array([0, 0, 1, 0] * 25)
    rl = np.ones(100)
    hybrid = np.array([1, 0, 1, 1] * 25)  # acc 0.75: (0.75 - 0.25) / (1 - 0.25) = 2/3
    g = gap_recovered(base, rl, hybrid, n_bootstrap=500)
    assert g.value == pytest.approx(2 / 3)
    assert g.ci[0] < 2 / 3 < g.ci[1] and g.ci[1] - g.ci[0] < 0.4
    same = gap_recovered(base, base, base, n_bootstrap=50)
    assert math.isnan(same.value) and same.n_undefined == 50


def test_routed_strategy_counts_counts_segment_starts():
    spans = lambda text: [("compute", 0, 3), ("verification", 3, 6)]  # noqa: E731
    assert routed_strategy_counts(["abcdef"], [[True, False, True, True, False, False]], spans) == {
        "compute": 1, "none": 1, "verification": 1}


def test_route_script_writes_the_results_contract_on_the_organism(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "route"
    res = subprocess.run([sys.executable, str(root / "scripts" / "route.py"), "--out", str(out),
                          "--n-problems", "24", "--no-probe", "--entropy-thresholds", "0.5", "--n-boot", "200"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())
    d = results["routers"]["disagree"]
    for key in ("accuracy_base", "accuracy_rl", "accuracy_hybrid", "gap_recovered", "fraction_routed"):
        assert key in d
    # The shipped RL model beats the base by ~0.8 greedy (model card); the disagree hybrid
    # recovers most of that gap on any 24 problems while routing a small share of tokens.
    assert d["accuracy_rl"] - d["accuracy_base"] >= 0.4
    assert d["gap_recovered"]["value"] >= 0.7 and d["fraction_routed"] <= 0.2
    # the gap itself has a paired CI, and the greedy disagree router is reported for what it is
    lo, hi = results["accuracy_gap_ci"]
    assert 0 < lo <= results["accuracy_rl"] - results["accuracy_base"] <= hi
    assert results["rl_token_needed_fraction"] == d["fraction_routed"]
    assert "by construction" in (out / "summary.md").read_text()
    assert (out / "summary.md").exists() and list(out.glob("*.png"))
