"""MI peaks: the authors' estimator, textbook HSIC with its permutation test, the peak rules,
trajectories captured through hooks, and the bad-input errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from analyses.mi_peaks import (
    average_outlier_magnitude,
    collect_trajectories,
    compute_mi,
    decode_states,
    estimate_mi,
    find_peaks_iqr,
    find_peaks_topk,
    greedy_trajectories,
    hsic_gaussian,
    hsic_paper,
    hsic_permutation_test,
    peak_stats,
    planted_dependence_control,
    strategy_enrichment,
)
from analyses.mi_peaks.trajectories import Trajectory
from hooks import TwinlensError, load_model


# ------------------------------------------------------------------ hsic_paper (authors' code)
def paper_formula_numpy(x: np.ndarray, y: np.ndarray, sigma: float, eps: float = 1e-5) -> float:
    """The authors' hsic_normalized_cca written out with loops and explicit inverses (float64):
    K_ij = exp(-(v_i - v_j)^2 / (2 sigma^2)), Kc = K @ H, R = Kc inv(Kc + eps m I),
    score = sum(R_x * R_y^T)."""
    m = len(x)
    h = np.eye(m) - np.ones((m, m)) / m

    def r(v):
        k = np.array([[math.exp(-((v[i] - v[j]) ** 2) / (2 * sigma**2)) for j in range(m)] for i in range(m)])
        kc = k @ h
        return kc @ np.linalg.inv(kc + eps * m * np.eye(m))

    return float(np.sum(r(x) * r(y).T))


def test_hsic_paper_two_coordinates_equals_closed_form():
    # d = 2: K = [[1, k], [k, 1]], K H = (1-k)/2 [[1,-1],[-1,1]], whose only nonzero eigenvalue is
    # 1 - k on (1,-1)/sqrt2; so R = (1-k)/(1-k+2eps) P with P that projection, and
    # trace(R_x R_y) = r_x * r_y.
    sigma, eps = 50.0, 1e-5
    x, y = torch.tensor([3.0, -40.0]), torch.tensor([10.0, 70.0])
    kx = math.exp(-(43.0**2) / (2 * sigma**2))
    ky = math.exp(-(60.0**2) / (2 * sigma**2))
    expected = (1 - kx) / (1 - kx + 2 * eps) * (1 - ky) / (1 - ky + 2 * eps)
    got = float(hsic_paper(x, y, sigma=sigma)[0])
    assert got == pytest.approx(expected, rel=1e-10)


def test_hsic_paper_reproduces_the_authors_formula_per_token():
    rng = np.random.default_rng(0)
    traj, gold = rng.normal(0, 30, (3, 6)), rng.normal(0, 30, 6)
    got = estimate_mi(torch.tensor(traj), torch.tensor(gold), method="hsic_paper", sigma=50.0)
    want = [paper_formula_numpy(traj[t], gold, 50.0) for t in range(3)]
    # float64 on both sides: only rounding of a 6x6 solve separates them
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9)
    # the "median" bandwidth option: same formula, sigma = median |v_i - v_j| per vector
    med = lambda v: float(np.median([abs(v[i] - v[j]) for i in range(6) for j in range(i + 1, 6)]))  # noqa: E731

    def want_median(v, g):
        m = len(v)
        h = np.eye(m) - np.ones((m, m)) / m

        def r(u):
            s = med(u)
            k = np.exp(-((u[:, None] - u[None, :]) ** 2) / (2 * s * s)) @ h
            return k @ np.linalg.inv(k + 1e-5 * m * np.eye(m))

        return float(np.sum(r(v) * r(g).T))

    got_med = hsic_paper(torch.tensor(traj), torch.tensor(gold), sigma="median")
    np.testing.assert_allclose(got_med.numpy(), [want_median(traj[t], gold) for t in range(3)], rtol=1e-9)


def test_hsic_paper_right_centring_gives_the_doubly_centred_score():
    # The code centres K on the right (K H); the brief wrote H K H. The R matrices differ
    # (R_HKH = H R_KH) but the score does not: trace(H R_x H R_y) = trace(R_x R_y) since R H = R.
    rng = np.random.default_rng(1)
    x, y = rng.normal(0, 40, 5), rng.normal(0, 40, 5)
    m, eps = 5, 1e-5
    h = np.eye(m) - np.ones((m, m)) / m

    def r(v, both_sides):
        k = np.exp(-((v[:, None] - v[None, :]) ** 2) / 5000.0)
        k = h @ k @ h if both_sides else k @ h
        return k @ np.linalg.inv(k + eps * m * np.eye(m))

    assert not np.allclose(r(x, True), r(x, False))
    doubly = float(np.sum(r(x, True) * r(y, True).T))
    got = float(hsic_paper(torch.tensor(x), torch.tensor(y))[0])
    assert got == pytest.approx(paper_formula_numpy(x, y, 50.0), rel=1e-9)
    assert got == pytest.approx(doubly, rel=1e-8)


# ------------------------------------------------------------------ textbook HSIC
def test_hsic_gaussian_equals_trace_formula_with_median_bandwidth():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(12, 3)), rng.normal(size=(12, 2))
    n = 12
    h = np.eye(n) - np.ones((n, n)) / n

    def gram(a):
        d = np.sqrt(((a[:, None] - a[None]) ** 2).sum(-1))
        s = np.median(d[np.triu_indices(n, 1)])
        return np.exp(-(d**2) / (2 * s * s))

    want = np.trace(gram(x) @ h @ gram(y) @ h) / (n - 1) ** 2
    assert hsic_gaussian(torch.tensor(x), torch.tensor(y)) == pytest.approx(want, rel=1e-10)


def test_hsic_permutation_pvalues_are_uniform_under_independence():
    # p = (1 + #{null >= stat}) / (1 + B) with B = 99 satisfies P(p <= 0.05) = 0.05 exactly under
    # independence, so over 50 independent seeds the count below 0.05 is Binomial(50, 0.05):
    # P(count >= 8) = 0.0032. The count below 0.5 is Binomial(50, ~0.5): P(<= 14 or >= 36) ~ 0.003.
    pvals = []
    for seed in range(50):
        x = torch.randn(30, 2, generator=torch.Generator().manual_seed(seed))
        y = torch.randn(30, 2, generator=torch.Generator().manual_seed(10_000 + seed))
        pvals.append(hsic_permutation_test(x, y, n_permutations=99, seed=seed).p_value)
    pvals = np.array(pvals)
    assert (pvals <= 0.05).sum() <= 7
    assert 14 < (pvals < 0.5).sum() < 36
    assert pvals.min() >= 1 / 100  # never 0: the observed statistic counts as one permutation


def test_hsic_gaussian_increases_with_planted_dependence():
    # y = r x + sqrt(1 - r^2) e keeps y's marginal fixed; HSIC grows with r. Averaging 5 samples
    # per level: the smallest gap (r 0 -> 0.25, ~0.0018) is ~5 sd of the averaged noise (measured).
    levels = [0.0, 0.25, 0.5, 0.75, 1.0]
    means = np.zeros(len(levels))
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(200, 2, generator=g, dtype=torch.float64)
        e = torch.randn(200, 2, generator=g, dtype=torch.float64)
        means += [hsic_gaussian(x, r * x + math.sqrt(1 - r * r) * e) for r in levels]
    assert np.all(np.diff(means) > 0), means
    test = hsic_permutation_test(x, 0.75 * x + math.sqrt(1 - 0.75**2) * e, n_permutations=99)
    assert test.p_value == pytest.approx(0.01)


def test_hsic_gaussian_refuses_unpaired_or_tiny_samples():
    with pytest.raises(TwinlensError, match="paired"):
        hsic_gaussian(torch.randn(10, 2), torch.randn(9, 2))
    with pytest.raises(TwinlensError, match="at least 4"):
        hsic_gaussian(torch.randn(3, 2), torch.randn(3, 2))


# ------------------------------------------------------------------ peaks
def test_iqr_peaks_and_aom_on_hand_made_trajectory():
    # sorted: 0 1 2 3 4 5 6 7 100 -> Q1 = 2, median = 4, Q3 = 6 (linear interpolation at 2, 4, 6)
    # IQR 4, threshold 6 + 1.5 * 4 = 12: only 100 (index 3) is a peak; AOM = |100 - 4| / 4 = 24.
    mi = [3, 0, 5, 100, 1, 7, 2, 6, 4]
    assert find_peaks_iqr(mi).tolist() == [3]
    assert average_outlier_magnitude(mi, [3]) == pytest.approx(24.0)
    s = peak_stats(mi)
    assert (s.q1, s.median, s.q3, s.peaks, s.aom) == (2.0, 4.0, 6.0, (3,), 24.0)
    assert s.peak_ratio == pytest.approx(1 / 9)
    assert find_peaks_topk(mi, k=2).tolist() == [3, 5]  # 100 and 7
    assert find_peaks_topk(mi, k=50).tolist() == list(range(9))
    # no peaks -> AOM undefined (NaN), not 0
    assert math.isnan(peak_stats([1, 2, 3, 4, 5]).aom)


def test_excluded_positions_take_no_part_in_quartiles_or_peaks():
    # the last token (an <eos> state) holds the largest value; excluded, the peak is the 100 at index 3
    mi = [3, 0, 5, 100, 1, 7, 2, 6, 4, 500]
    full = peak_stats(mi)
    assert 9 in full.peaks
    s = peak_stats(mi, exclude=[False] * 9 + [True])
    assert s.peaks == (3,) and s.length == 9 and (s.q1, s.median, s.q3) == (2.0, 4.0, 6.0)
    # peak indices are positions in the full trajectory, also when an excluded token comes first
    s = peak_stats([500, *mi[:9]], exclude=[True] + [False] * 9)
    assert s.peaks == (4,)
    with pytest.raises(TwinlensError, match="exclude mask"):
        peak_stats(mi, exclude=[False] * 3)


def test_short_trajectory_is_refused_with_the_fix():
    with pytest.raises(TwinlensError, match="at least 4"):
        find_peaks_iqr([0.1, 0.5, 0.2])


def test_strategy_enrichment_counts_peaks_against_chance():
    def traj(labels):
        t = Trajectory("p", [1], [5] * len(labels), False, [5] * len(labels), torch.zeros(len(labels), 2),
                       torch.zeros(2), 0)
        t.token_strategy = labels
        t.strategy_marker = [lab != "none" and (i == 0 or labels[i - 1] != lab) for i, lab in enumerate(labels)]
        return t

    labels = ["none"] * 16 + ["backtracking"] * 4  # chance 4/20 = 0.2
    trajs = [traj(labels) for _ in range(5)]
    planted = strategy_enrichment(trajs, [[16, 17]] * 5, n_permutations=2000)
    assert (planted.share, planted.chance, planted.n_peaks) == (1.0, 0.2, 10)
    assert planted.p_binomial == pytest.approx(0.2**10)
    assert planted.p_permutation < 0.001
    off = strategy_enrichment(trajs, [[0, 1]] * 5, n_permutations=2000)
    assert off.share == 0.0 and off.p_permutation == 1.0
    marker = strategy_enrichment(trajs, [[16, 17]] * 5, what="marker", n_permutations=200)
    assert (marker.share, marker.chance) == (0.5, 0.05)


# ------------------------------------------------------------------ trajectories on a real model
@pytest.fixture(scope="module")
def organism_like_model(tmp_path_factory) -> Path:
    """A tiny random Llama with the organism's own character tokenizer (texts decode exactly)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from organism.tokenizer import EOS_ID, PAD_ID, VOCAB, save_tokenizer

    folder = tmp_path_factory.mktemp("mi_llama")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(VOCAB), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=PAD_ID, eos_token_id=EOS_ID, bos_token_id=None)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    save_tokenizer(folder)
    return folder


def test_trajectory_states_equal_hf_hidden_states(organism_like_model):
    model = load_model(organism_like_model)
    prompt, comp = model.encode("3+5+8:"), model.encode("3+5=08;8+8=16;#6")
    gold = "3+5+8:3+5=08;8+8=16;#6"
    p = len(prompt)
    ids = torch.tensor([prompt + comp])
    with torch.no_grad():
        hs = model.hf(ids, output_hidden_states=True).hidden_states
    t0 = collect_trajectories(model, [prompt], [comp], [gold], layer=0)[0]
    # state t emits completion token t; with eos the last state is the last completion position
    assert t0.emitted_ids == comp + [model.tokenizer.eos_token_id]
    torch.testing.assert_close(t0.states, hs[1][0, p - 1 : p + len(comp)], rtol=0, atol=0)
    last = collect_trajectories(model, [prompt], [comp], [gold], layer=-1)[0]
    assert last.layer == 1
    # HF's last hidden_states entry has the final norm applied; ours is the block output before it
    norm = model.hf.model.norm
    with torch.no_grad():
        torch.testing.assert_close(norm(last.states), hs[-1][0, p - 1 : p + len(comp)], rtol=1e-6, atol=1e-6)
        assert not torch.allclose(last.states, hs[-1][0, p - 1 : p + len(comp)])
        gold_hs = model.hf(torch.tensor([model.encode(gold)]), output_hidden_states=True).hidden_states
        torch.testing.assert_close(norm(last.gold), gold_hs[-1][0, -1], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(t0.gold, gold_hs[1][0, -1], rtol=0, atol=0)
    # greedy trajectories: the last-layer logit lens of state t is the token greedily emitted
    g = greedy_trajectories(model, [prompt], [gold], layer=None, max_new_tokens=10)[0]
    assert decode_states(model, g.states) == g.emitted_ids
    compute_mi([g])
    assert g.mi.shape == (g.length,) and torch.isfinite(g.mi).all()


def test_bad_layer_and_empty_gold_give_clear_errors(organism_like_model):
    model = load_model(organism_like_model)
    prompt = model.encode("1+2:")
    with pytest.raises(TwinlensError, match=r"out of range.*0\.\.1"):
        collect_trajectories(model, [prompt], [model.encode("#3")], ["1+2:#3"], layer=2)
    with pytest.raises(TwinlensError, match="tokenizes to nothing.*reference solution"):
        collect_trajectories(model, [prompt], [model.encode("#3")], [""], layer=0)


def test_script_writes_the_results_contract(organism_like_model, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "mi_peaks_script", Path(__file__).resolve().parents[1] / "scripts" / "mi_peaks.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "run"
    # A random model's own greedy texts may all end within 4 tokens (on organism v2's tier-4 prompts
    # this one's do): the teacher-forced reference texts come first, so the headline numbers exist.
    rc = script.main(["--base", str(organism_like_model), "--rl", str(organism_like_model), "--n-problems", "4",
                      "--max-new-tokens", "8", "--n-boot", "100", "--checkpoints", "none", "--texts", "reference",
                      "own", "--no-interventions", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    for lab in ("base", "rl"):
        m = res["models"][lab]
        for key in ("mi_mean", "mi_std", "peaks_per_trajectory", "peak_ratio", "aom", "peak_tokens"):
            assert key in m
        assert {"share", "chance", "p_permutation"} <= set(m["peaks_at_strategy_tokens"])
        ref = m["texts"]["reference"]["peaks_at_strategy_tokens"]
        assert 0 < ref["chance"] < 1  # the reference texts carry wait; and chk spans
    # same weights for base and rl: the paired differences are exactly 0
    assert res["paired"]["reference"]["rl-base"]["mi_mean"]["value"] == 0.0
    # special tokens are out of peak finding, and the detector's planted positive control ran
    assert res["special_tokens_excluded"] is True
    pc = res["planted_control"]
    assert pc["per_model"]["base"]["n_planted"] > 0 and 0 <= pc["recall"] <= 1
    assert (out / "summary.md").exists() and (out / "mi_trajectories_reference.png").exists()
    # bad input: a clear error and exit code 2, nothing written
    assert script.main(["--base", str(tmp_path / "missing"), "--rl", str(organism_like_model),
                        "--checkpoints", "none", "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad" / "results.json").exists()


def test_banned_tokens_never_appear_and_scaling_keeps_the_last_answer(organism_like_model):
    from analyses.mi_peaks import ban_tokens, thinking_token_scaling
    from hooks import generate

    model = load_model(organism_like_model)
    prompt = model.encode("37+8+5:")
    free = generate(model, [prompt], max_new_tokens=8)[0]
    banned = sorted(set(free))
    logits = ban_tokens(banned)(torch.zeros(1, len(model.tokenizer)), torch.zeros(1, 0, dtype=torch.long))
    assert torch.isinf(logits[0, banned]).all() and torch.isfinite(logits).sum() == len(model.tokenizer) - len(banned)
    held = generate(model, [prompt], max_new_tokens=8, logits_processor=ban_tokens(banned))[0]
    assert not set(held) & set(banned)
    # A random model's continuation holds no "#dd" answer: the first answer must stand.
    from organism.task import extract_answer

    first = model.encode("37+8=45;45+5=50;#50")
    r = thinking_token_scaling(model, [prompt], [first], lambda i, text: extract_answer(text) == 50,
                               "wait;", max_new_tokens=4, extract_answer=lambda t: None)
    assert (r.accuracy_before.value, r.accuracy_after.value, r.n_no_new_answer) == (1.0, 1.0, 1)


def test_summary_reports_an_undefined_paired_difference_as_na():
    # No problem had a defined AOM under both models: the paired AOM difference is NaN, which
    # results.json stores as null; the summary must say n/a, not crash.
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "mi_peaks_script", Path(__file__).resolve().parents[1] / "scripts" / "mi_peaks.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    none = {"value": None, "low": None, "high": None, "n": 0}
    results = {
        "config": {"n_problems": 2, "method": "hsic_paper", "sigma": 50.0, "layer": 1, "seed": 0, "texts": ["own"]},
        "models": {"base": {"texts": {"own": {"error": "too short"}}}, "rl": {"texts": {"own": {"error": "too short"}}}},
        "paired": {"own": {"rl-base": {"mi_mean": {"value": -0.5, "low": -1.0, "high": 0.25, "n": 1}, "aom": none}}},
        "wall_seconds": 1.0,
    }
    md = script.summary_markdown(results)
    assert "mi_mean -0.5 [-1, +0.25]; aom n/a" in md


def test_planted_dependence_is_found_and_eos_never_peaks():
    """The detector's positive control on the shipped base: dependence on the gold state mixed in at
    known positions (half gold) is found by the same estimator and IQR rule, every time here (recall
    1.0 measured; bound 0.8), while the same positions with nothing planted peak at the base rate
    (0.04 measured; bound 0.2). No peak ever lands on <eos>."""
    import organism
    from analyses.mi_peaks import MiPeaksConfig, organism_problem_set, run_mi_peaks
    from analyses.mi_peaks.comparison import usable

    model = load_model(organism.checkpoint_path("base"))
    cfg = MiPeaksConfig(texts=("reference",), interventions=False, n_boot=50, n_permutations=100,
                        hsic_permutations=0)
    res = run_mi_peaks({"base": model}, organism_problem_set(12, seed=0), cfg)
    trajs = res.trajectories["reference"]["base"]
    special = frozenset(model.tokenizer.all_special_ids)
    used, _ = usable(trajs, special)
    summary = res.summaries["reference"]["base"]
    eos = model.tokenizer.eos_token_id
    assert any(t.emitted_ids[-1] == eos for t in used)  # the <eos> state is there to be (wrongly) picked
    for p, t in zip(summary.per_problem, used, strict=True):
        assert p["problem_id"] == t.problem_id and all(t.emitted_ids[i] != eos for i in p["peaks"])
    pc = planted_dependence_control(trajs, cfg.method, cfg.sigma, special, seed=0)
    assert pc["n_planted"] >= 20 and pc["recall"] >= 0.8 and pc["passed"]
    null = planted_dependence_control(trajs, cfg.method, cfg.sigma, special, mix=0.0, seed=0)
    assert null["recall"] < 0.2 and not null["passed"]


def test_organism_reference_texts_are_v2_verify_traces_with_a_near_slip_and_its_correction():
    import re

    from analyses.mi_peaks import organism_problem_set
    from organism import task as ot

    ps = organism_problem_set(200, seed=3)
    assert {len(p.source.operands) for p in ps.problems} == {4}  # the kit's default tier
    for p, gold, ref in zip(ps.problems, ps.gold_texts, ps.reference_completions, strict=True):
        assert gold == p.prompt + ot.write_completion(p.source, "step") and gold.endswith(f"#{p.answer:02d}")
        assert ot.classify_format(ref) == "verify" and ot.grade(p.source, ref)
        assert ot.strategies_used(ref) == {"compute", "verification", "backtracking"}
        # the step before "wait;" is the slip: same operands as the corrected step, value off by 1 or 10
        m = re.search(r"(\d\d\+\d)=(\d\d);wait;(\d\d\+\d)=(\d\d);", ref)
        assert m and m.group(1) == m.group(3)
        assert (int(m.group(2)) - int(m.group(4))) % 100 in (1, 10, 90, 99)
