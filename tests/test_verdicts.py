"""Every verdict rule (analyses/verdicts.py) on planted results: each outcome it can give, and the
trivial explanations it must not mistake for support (token identity, construction, a guesser,
saturation, chance, a blind detector)."""

from __future__ import annotations

import pytest

from analyses import verdicts as V
from analyses.verdicts import DETECTOR_FAILED, NOT_MEASURED, NOT_SUPPORTED, SUPPORTED, UNDETERMINED


# ------------------------------------------------------------------ probes
def _probe(sel_ci, dp_ci, dp_ctrl=0.5, baseline=True, dp_sel_ci=(0.05, 0.1), tok=0.95, dp_tok=0.6):
    row = {"auroc": 0.98, "best_layer": 3, "control_auroc": 0.5}
    if baseline:
        row |= {"token_baseline_auroc": {"value": tok, "ci": [tok - 0.01, min(1.0, tok + 0.01)]},
                "selectivity": {"value": sum(sel_ci) / 2, "ci": sel_ci},
                "decision_point": {"auroc": sum(dp_ci) / 2, "ci": dp_ci, "control_auroc": dp_ctrl,
                                   "token_baseline_auroc": {"value": dp_tok, "ci": [dp_tok - 0.01, min(1.0, dp_tok + 0.01)]},
                                   "selectivity": {"value": sum(dp_sel_ci) / 2, "ci": list(dp_sel_ci)}}}
    return {"acceptance": {"compute": row, "backtracking": dict(row)}}


@pytest.mark.parametrize("results, outcome", [
    (_probe([0.03, 0.06], [0.60, 0.70]), SUPPORTED),
    # per-token selectivity is reported, not decisive: the v2 demo's compute probe is explained per
    # token by the token baseline (0.005 [-0.002, 0.014]) because its spans are its characters,
    # while the decision-point probe beats token + position at the decision points
    (_probe([-0.002, 0.014], [0.94, 0.96]), SUPPORTED),
    (_probe([-0.032, -0.010], [0.60, 0.70], tok=0.993), SUPPORTED),  # a per-token ceiling decides nothing
    (_probe([0.03, 0.06], [0.45, 0.54]), NOT_SUPPORTED),  # the decision is not readable before the span
    (_probe([0.03, 0.06], [0.60, 0.70], dp_sel_ci=(0.01, 0.05)), UNDETERMINED),  # straddles SELECTIVITY_MIN
    (_probe([0.03, 0.06], [0.60, 0.70], dp_ctrl=0.65), UNDETERMINED),  # not above its shuffled control
    # position alone predicts the decision as well as the residual does
    (_probe([0.03, 0.06], [0.60, 0.70], dp_sel_ci=(-0.1, -0.01)), NOT_SUPPORTED),
    (_probe([0.03, 0.06], [0.60, 0.70], dp_sel_ci=(-0.05, 0.05)), UNDETERMINED),
    # token + position at the decision points at its ceiling: no room, undetermined not negative
    (_probe([0.03, 0.06], [0.95, 0.985], dp_sel_ci=(-0.007, 0.005), dp_tok=0.995), UNDETERMINED),
    (_probe(None, None, baseline=False), UNDETERMINED),  # raw AUROC 0.98 alone: never "supported"
    (None, NOT_MEASURED),
])
def test_probe_rule_rests_on_selectivity_and_decision_points(results, outcome):
    assert V.verdict_probes(results).outcome == outcome


def test_probe_rule_on_the_v2_demo_numbers_names_the_strategies_position_explains():
    """The v2 demo's probe results: decision-point AUROC 0.95 / 0.95 / 0.85 (shuffled 0.53 / 0.40 /
    0.43), but token + position at the decision points reach 0.95 / 0.96 / 0.68, so only
    backtracking's decision is read beyond them (selectivity 0.17 [0.07, 0.28])."""
    def row(tok_sel, dp, dp_ctrl, dp_tok, dp_sel):
        return {"auroc": 0.97, "best_layer": 3, "control_auroc": 0.47,
                "token_baseline_auroc": {"value": 0.97, "ci": [0.96, 0.98]},
                "selectivity": {"value": sum(tok_sel) / 2, "ci": list(tok_sel)},
                "decision_point": {"auroc": sum(dp) / 2, "ci": list(dp), "control_auroc": dp_ctrl,
                                   "token_baseline_auroc": {"value": dp_tok, "ci": [dp_tok - 0.01, dp_tok + 0.01]},
                                   "selectivity": {"value": sum(dp_sel) / 2, "ci": list(dp_sel)}}}
    r = {"acceptance": {
        "compute": row((-0.002, 0.014), (0.945, 0.964), 0.53, 0.946, (-0.0005, 0.017)),
        "verification": row((-0.027, -0.019), (0.923, 0.968), 0.40, 0.961, (-0.035, 0.005)),
        "backtracking": row((0.001, 0.059), (0.780, 0.926), 0.43, 0.683, (0.068, 0.276))}}
    v = V.verdict_probes(r)
    assert v.outcome == NOT_SUPPORTED
    assert v.why.startswith("compute, verification: decision-point selectivity")
    assert "decision-point selectivity 0.172 [0.068, 0.276]" in v.number  # reported per strategy
    r["acceptance"] = {"backtracking": r["acceptance"]["backtracking"]}
    assert V.verdict_probes(r).outcome == SUPPORTED


# ------------------------------------------------------------------ steering
def _steer(rate_ci, max_rnd, n_rnd=5, acc=(0.41, 0.63), length=1.1, malformed=(0.01, 0.01)):
    best = {"layer": 3, "alpha_fraction": 0.1, "where": "decision_points", "vector": "decision_point_contrast",
            "rate_at_0": 0.44, "rate": sum(rate_ci) / 2, "ci": rate_ci,
            "random": {"n": n_rnd, "max_upper_ci": max_rnd}, "accuracy_at_0": acc[0], "accuracy": acc[1],
            "malformed_at_0": malformed[0], "malformed": malformed[1], "length_ratio": length}
    return {"strategies": {"compute": {"best": best}}}


@pytest.mark.parametrize("results, outcome", [
    (_steer([0.665, 0.744], 0.55), SUPPORTED),  # the audit's decision-point contrast effect
    (_steer([0.50, 0.60], 0.55), NOT_SUPPORTED),  # inside the random vectors' spread
    (_steer([0.665, 0.744], 0.55, n_rnd=1), UNDETERMINED),  # one random vector is no spread
    (_steer([0.665, 0.744], 0.55, acc=(0.6, 0.4)), UNDETERMINED),  # accuracy down 33%: degenerate
    (_steer([0.665, 0.744], 0.55, length=0.2), UNDETERMINED),  # collapse to short outputs: degenerate
    (_steer([0.665, 0.744], 0.55, malformed=(0.01, 0.2)), UNDETERMINED),  # malformed outputs up
])
def test_steering_rule_needs_five_random_vectors_and_no_degeneration(results, outcome):
    assert V.verdict_steering(results).outcome == outcome


def test_degenerate_is_any_one_of_accuracy_malformed_or_length():
    ok = {"accuracy_at_0": 0.5, "accuracy": 0.45, "malformed_at_0": 0.0, "malformed": 0.0, "length_ratio": 1.0}
    assert not V.is_degenerate(ok)[0]
    assert V.is_degenerate(ok | {"accuracy": 0.39})[0]  # 22% relative drop; accuracy alone suffices
    assert V.is_degenerate(ok | {"length_ratio": 2.1})[0]
    assert V.is_degenerate(ok | {"length_ratio": 0.49})[0]



def test_degenerate_length_compares_like_with_like():
    """Switching strategy changes length by construction: the v2 demo's compute steering 0.45 ->
    0.88 went x2.06 in raw length (step traces vs 3-token direct answers) and was flagged for that
    alone. Within formats it is x1.05: not degenerate. A collapse to a few tokens still is."""
    ok = {"accuracy_at_0": 0.5, "accuracy": 0.45, "malformed_at_0": 0.0, "malformed": 0.0}
    switched = ok | {"length_ratio": 2.06, "length_ratio_matched": 1.05, "length_matched_share": 0.95}
    assert V.is_degenerate(switched) == (False, "")
    assert V.is_degenerate(switched | {"length_ratio_matched": 2.5})[0]  # longer within its own format
    assert V.is_degenerate(switched | {"length_ratio_matched": 0.3})[0]  # shorter within its own format
    assert V.is_degenerate(ok | {"length_ratio": 0.2, "length_ratio_matched": 1.0,
                                 "length_matched_share": 1.0})[0]  # a collapse to a few tokens
    # too few steered samples in a format the unsteered model writes: fall back to the raw ratio
    assert V.is_degenerate(switched | {"length_matched_share": 0.2})[0]


def test_format_matched_length_ratio_weights_unsteered_lengths_by_the_steered_mix():
    """Unsteered: 80% direct (3 tokens), 20% step (27); steered: 90% step, 10% direct at the same
    lengths -> raw ratio 24.6 / 7.8 = 3.15, matched ratio exactly 1; the search's summary and the
    shared is_degenerate agree. Step traces cut to 5 tokens -> matched 0.20: degenerate."""
    import numpy as np

    from probes.steering import (
        SettingSamples,
        SteeringSetting,
        format_matched_length_ratio,
        summarize_setting,
    )

    def samples(step_share, step_len):
        n_step = round(10 * step_share)
        used = np.array([[i < n_step for i in range(10)]] * 4)  # 4 prompts x 10 samples
        length = np.where(used, float(step_len), 3.0)
        return SettingSamples(SteeringSetting(None, "all", 0.0, "none"), {"compute": used},
                              np.ones_like(length), np.zeros_like(length), length)

    s0, s = samples(0.2, 27), samples(0.9, 27)
    ratio, share = format_matched_length_ratio(s, s0)
    assert ratio == pytest.approx(1.0) and share == 1.0
    x = summarize_setting(s, s0, "compute", n_bootstrap=50)
    assert x["length_ratio"] == pytest.approx(24.6 / 7.8)
    assert V.is_degenerate(x) == (False, "")
    cut = summarize_setting(samples(0.9, 5), s0, "compute", n_bootstrap=50)
    assert cut["length_ratio_matched"] == pytest.approx((0.9 * 5 + 0.3) / 24.6)
    assert V.is_degenerate(cut)[0]
    # a steered format the unsteered model never writes has nothing to compare with
    assert format_matched_length_ratio(samples(0.9, 27), samples(0.0, 27)) == (pytest.approx(3 / 3), 0.1)

# ------------------------------------------------------------------ routing
def _route(gap_ci, rnd_ci, frac=0.1, acc=(0.4, 0.9), gap_acc_ci=None):
    r = {"accuracy_base": acc[0], "accuracy_rl": acc[1], "routers": {
        "disagree": {"gap_recovered": {"value": 1.0, "ci": [1.0, 1.0]}, "fraction_routed": 0.03,
                     "random_control": {"gap_recovered": {"value": 0.05, "ci": [0.0, 0.1]}}},
        "steered_disagree": {"gap_recovered": {"value": sum(gap_ci) / 2, "ci": gap_ci}, "fraction_routed": frac,
                             "random_control": {"gap_recovered": {"value": 0.0, "ci": rnd_ci}}}}}
    if gap_acc_ci:
        r["accuracy_gap_ci"] = gap_acc_ci
    return r


@pytest.mark.parametrize("results, outcome", [
    (_route([0.6, 0.8], [0.0, 0.2]), SUPPORTED),
    (_route([0.0, 0.3], [0.0, 0.2]), NOT_SUPPORTED),
    (_route([0.6, 0.8], [0.5, 0.7]), UNDETERMINED),  # random routing does as well
    (_route([0.6, 0.8], [0.0, 0.2], frac=0.5), UNDETERMINED),  # too many tokens routed
    (_route([0.6, 0.8], [0.0, 0.2], acc=(0.9, 0.9)), UNDETERMINED),  # no gap to recover
    (_route([0.6, 0.8], [0.0, 0.2], gap_acc_ci=[-0.02, 0.1]), UNDETERMINED),
])
def test_routing_rule_ignores_the_tautological_greedy_hybrid(results, outcome):
    assert V.verdict_routing(results).outcome == outcome


def test_greedy_disagree_alone_is_never_support():
    r = _route([0.6, 0.8], [0.0, 0.2])
    del r["routers"]["steered_disagree"]  # gap 1.000 [1.000, 1.000] by construction
    v = V.verdict_routing(r)
    assert v.outcome == UNDETERMINED and "construction" in v.trivial and "3.0%" in v.trivial


# ------------------------------------------------------------------ sparsity, mechanism
@pytest.mark.parametrize("results, outcome", [
    ({"updated_fraction": {"atol": 0.2}, "update_rank_mean": 0.99, "overlap": [{"o1": 0.6, "random_o1": 0.37}]}, SUPPORTED),
    ({"updated_fraction": {"atol": 0.97}, "update_rank_mean": 0.99, "overlap": [{"o1": 0.97, "random_o1": 0.97}]}, NOT_SUPPORTED),
    ({"updated_fraction": {"atol": 0.2}, "update_rank_mean": 0.99, "overlap": [{"o1": 0.38, "random_o1": 0.37}]}, NOT_SUPPORTED),
    ({"updated_fraction": {"atol": 0.2}, "update_rank_mean": 0.99}, UNDETERMINED),  # one run: overlap untested
    ({"updated_fraction": {"atol": 0.0}, "update_rank_mean": 0.0}, UNDETERMINED),  # identical checkpoints
])
def test_sparsity_rule(results, outcome):
    assert V.verdict_sparsity(results).outcome == outcome


@pytest.mark.parametrize("results, outcome", [
    ({"suppression_share": 0.7, "suppression_share_ci": [0.6, 0.8], "ess": 400, "n_samples": 1000}, SUPPORTED),
    ({"suppression_share": 0.7, "suppression_share_ci": [0.6, 0.8], "ess": 270, "n_samples": 1000}, UNDETERMINED),
    ({"suppression_share": 0.7, "suppression_share_ci": [0.6, 0.8]}, UNDETERMINED),  # ESS not reported
    ({"suppression_share": 0.3, "suppression_share_ci": [0.2, 0.4], "ess": 800, "n_samples": 1000}, NOT_SUPPORTED),
    ({"suppression_share": 0.5, "suppression_share_ci": [0.3, 0.7], "ess": 800, "n_samples": 1000}, UNDETERMINED),
])
def test_mechanism_rule_has_an_effective_sample_size_floor(results, outcome):
    assert V.verdict_mechanism(results).outcome == outcome


# ------------------------------------------------------------------ formats
def _formats(last_ci, first_ci=(0.05, 0.15)):
    return {"checkpoints": ["step0", "step50"], "collapse_step": None,
            "share": {"step0": {"verify": 0.1, "direct": 0.68}, "step50": {"verify": sum(last_ci) / 2, "direct": 0.0}},
            "share_ci": {"step0": {"verify": list(first_ci)}, "step50": {"verify": list(last_ci)}}}


@pytest.mark.parametrize("results, greedy, outcome", [
    (_formats([0.92, 0.97]), None, SUPPORTED),
    (_formats([0.92, 0.97]), {"verify": 0.5}, SUPPORTED),  # greedy is reported, never decisive
    (_formats([0.854, 0.908]), None, UNDETERMINED),  # the audit's straddling interval
    # greedy collapsed and the sampled share rose with CIs apart, but it straddles the threshold:
    # greedy is one format by construction, so it cannot decide
    (_formats([0.854, 0.908]), {"verify": 1.0}, UNDETERMINED),
    (_formats([0.40, 0.50]), {"verify": 0.6}, NOT_SUPPORTED),
    (_formats([0.92, 0.97], first_ci=(0.91, 0.96)), None, NOT_SUPPORTED),  # already one format: no collapse
])
def test_formats_rule_is_ci_aware_and_decides_on_sampled_shares(results, greedy, outcome):
    assert V.verdict_formats(results, greedy).outcome == outcome


def test_formats_planted_false_twin_with_greedy_collapse_is_not_supported():
    """The v2 demo's planted-false control, rl-kl-3 (a KL-penalized twin that keeps the base's mix):
    sampled step 0.35 [0.27, 0.42] -> 0.55 [0.45, 0.65], greedy 100% step. The old rule read the
    greedy share as collapse and said "supported"; the row then failed its positive control."""
    kl3 = {"checkpoints": ["base", "rl-kl-3"], "collapse_step": None,
           "share": {"base": {"direct": 0.648, "step": 0.352}, "rl-kl-3": {"direct": 0.453, "step": 0.547}},
           "share_ci": {"base": {"direct": [0.578, 0.727], "step": [0.273, 0.422]},
                        "rl-kl-3": {"direct": [0.351, 0.547], "step": [0.453, 0.649]}},
           "greedy_share": {"base": {"direct": 1.0, "step": 0.0}, "rl-kl-3": {"direct": 0.0, "step": 1.0}}}
    v = V.verdict_formats_run(kl3)
    assert v.outcome == NOT_SUPPORTED
    assert "greedy 1.000" in v.number  # reported
    seed0 = {**kl3, "checkpoints": ["base", "rl-seed0"],
             "share": {"base": kl3["share"]["base"], "rl-seed0": {"direct": 0.0, "step": 1.0}},
             "share_ci": {"base": kl3["share_ci"]["base"], "rl-seed0": {"direct": [0.0, 0.0], "step": [1.0, 1.0]}},
             "greedy_share": {"rl-seed0": {"step": 1.0}}}
    rows = {v.row: v for v in V.collect({"formats": seed0}, positives={"formats": seed0},
                                         negatives={"formats": kl3})}
    assert rows["formats"].outcome == SUPPORTED
    assert rows["formats"].positive_control.startswith(V.PASSED)


# ------------------------------------------------------------------ pass@k
def _passk(base, rl, width=0.03, ks=(1, 4, 16), space=100):
    def curve(m):
        return {"mean": m, "ci_low": [max(0.0, x - width) for x in m], "ci_high": [min(1.0, x + width) for x in m]}
    r = {"k": list(ks), "pass_at_k": {"base": curve(base), "rl": curve(rl)}, "crossover_k": {"rl": None}}
    if space:
        r["guesser"] = {"answer_space": space, "pass_at_k": V.guesser_pass_at_k(ks, space)}
    return r


@pytest.mark.parametrize("results, outcome", [
    (_passk([0.2, 0.4, 0.6], [0.5, 0.7, 0.8]), SUPPORTED),
    (_passk([0.2, 0.5, 0.8], [0.5, 0.6, 0.65]), NOT_SUPPORTED),  # base overtakes at k = 16
    (_passk([0.5, 0.9, 1.0], [0.9, 1.0, 1.0], width=0.0), UNDETERMINED),  # ties at 1.0: saturated
    # 10 answers: the guesser's pass@16 = 0.81, so both models at ~0.85 are not clear of it
    (_passk([0.3, 0.85, 0.85], [0.6, 0.86, 0.86], ks=(1, 16, 32), space=10), UNDETERMINED),
    (_passk([0.2, 0.4, 0.6], [0.5, 0.7, 0.62]), UNDETERMINED),  # CI tie at the largest k
])
def test_passk_rule_decides_only_clear_of_guesser_and_saturation(results, outcome):
    assert V.verdict_passk(results).outcome == outcome


def test_guesser_curve_is_one_minus_miss_to_the_k():
    assert V.guesser_pass_at_k([1, 16], 10) == pytest.approx([0.1, 1 - 0.9 ** 16])


# ------------------------------------------------------------------ calibration, scaling, MI peaks, others
def _calib(conf, ece_rl_ci, brier_rl_ci, auroc_rl_ci):
    ci = {"base": {"ece": [0.02, 0.04], "brier": [0.10, 0.12], "auroc": [0.85, 0.95]},
          "rl": {"ece": ece_rl_ci, "brier": brier_rl_ci, "auroc": auroc_rl_ci}}
    return {"confidence": conf, "ece": {"base": 0.03, "rl": 0.1}, "brier": {"base": 0.11, "rl": 0.2},
            "auroc": {"base": 0.9, "rl": 0.6}, "ci": ci}


@pytest.mark.parametrize("results, outcome", [
    (_calib("stated", [0.06, 0.08], [0.15, 0.2], [0.5, 0.7]), SUPPORTED),
    (_calib("stated", [0.02, 0.04], [0.10, 0.12], [0.85, 0.95]), NOT_SUPPORTED),
    (_calib("stated", [0.06, 0.08], [0.10, 0.12], [0.85, 0.95]), UNDETERMINED),  # ECE alone
    # answer-token probability measures copying: undetermined whatever the numbers
    (_calib("answer_probability", [0.06, 0.08], [0.15, 0.2], [0.5, 0.7]), UNDETERMINED),
])
def test_calibration_rule_reads_three_metrics_on_stated_confidence(results, outcome):
    assert V.verdict_calibration(results).outcome == outcome


@pytest.mark.parametrize("results, outcome", [
    ({"A": 1.0, "ci": {"A": [0.98, 1.0]}, "B": 1.5, "C_mid": 100}, UNDETERMINED),  # saturated
    ({"A": 0.7, "ci": {"A": [0.65, 0.75]}, "B": 1.5, "C_mid": 100,
      "heldout": {"sigmoid_rmse": 0.01, "power_law_rmse": 0.05}}, SUPPORTED),
    ({"A": 0.7, "ci": {"A": [0.65, 0.75]}, "B": 1.5, "C_mid": 100,
      "heldout": {"sigmoid_rmse": 0.05, "power_law_rmse": 0.01}}, NOT_SUPPORTED),
    ({"A": 0.7, "ci": {"A": [0.65, 0.75]}, "B": 1.5, "C_mid": 100}, UNDETERMINED),  # no comparison
])
def test_scaling_rule_calls_a_saturated_fit_undetermined(results, outcome):
    assert V.verdict_scaling(results).outcome == outcome


def _mi(aom_ci, share, p_perm, chance=0.3, excluded=True, planted=True):
    r = {"paired": {"reference": {"rl-base": {"mi_mean": {"value": 0.01, "low": 0.0, "high": 0.02},
                                               "aom": {"value": sum(aom_ci) / 2, "low": aom_ci[0], "high": aom_ci[1]},
                                               "n_peaks": {"value": -0.5}}}},
         "models": {"rl": {"texts": {"reference": {"peaks_at_strategy_tokens": {
             "share": share, "p_permutation": p_perm, "chance": chance}}}}},
         "special_tokens_excluded": excluded}
    if planted is not None:
        r["planted_control"] = {"recall": 0.9 if planted else 0.1, "passed": planted}
    return r


@pytest.mark.parametrize("results, outcome", [
    (_mi([0.2, 0.8], 0.5, 0.001), SUPPORTED),
    (_mi([0.2, 0.8], 0.25, 0.9), NOT_SUPPORTED),  # AOM up but peaks below chance on strategy tokens
    (_mi([-0.5, -0.1], 0.5, 0.001), NOT_SUPPORTED),
    (_mi([0.2, 0.8], 0.35, 0.2), UNDETERMINED),  # above chance by share, not by the permutation test
    (_mi([0.2, 0.8], 0.5, 0.001, excluded=False), UNDETERMINED),  # <eos> peaks still counted
    (_mi([0.2, 0.8], 0.5, 0.001, planted=False), DETECTOR_FAILED),
])
def test_mi_rule_needs_aom_and_strategy_peaks_above_chance(results, outcome):
    assert V.verdict_mi(results).outcome == outcome


def _per_model(base, rl):
    def one(n_planted, recall):
        return {"n_trajectories": n_planted // 2, "n_planted": n_planted, "recall": recall, "min_recall": 0.8,
                "passed": bool(n_planted and recall is not None and recall >= 0.8)}
    return {"base": one(*base), "rl": one(*rl)}


@pytest.mark.parametrize("per_model, passed, outcome", [
    # the v2 demo: the base's own greedy texts are 3-token direct answers (no trajectory to plant
    # into), rl's planted recall is 0.89: the control passes on the model it could test
    (_per_model((0, None), (64, 0.890625)), True, SUPPORTED),
    (_per_model((0, None), (64, 0.5)), False, DETECTOR_FAILED),  # the tested model missed them
    (_per_model((64, 0.95), (64, 0.5)), False, DETECTOR_FAILED),  # any tested model's miss fails it
    (_per_model((0, None), (0, None)), None, SUPPORTED),  # nothing tested: untested, not failed
])
def test_mi_planted_control_is_decided_on_models_with_trajectories(per_model, passed, outcome):
    pc = V.combine_planted_controls(per_model)
    assert pc["passed"] is passed
    # old results.json files carry the all-models "passed": the rule re-derives it from per_model
    r = _mi([0.2, 0.8], 0.5, 0.001)
    r["planted_control"] = {"recall": None, "passed": False, "per_model": per_model}
    v = V.verdict_mi(r)
    assert v.outcome == outcome
    if passed is None:
        assert v.positive_control.startswith("untested")
    elif passed:
        assert "0.89 recall (passed); untested on base" in v.positive_control


@pytest.mark.parametrize("hard_len, ref_len, outcome", [(8.0, 50.0, SUPPORTED), (20.0, 50.0, NOT_SUPPORTED),
                                                        (8.0, 9.0, UNDETERMINED)])
def test_shortcut_rule_needs_the_solvable_run_not_to_collapse(hard_len, ref_len, outcome):
    rows = {m: {"sampled": {"mean_length": n}} for m, n in (("base", 22.0), ("rl-hard", hard_len), ("rl-seed0", ref_len))}
    assert V.verdict_shortcuts({"checkpoints": rows}).outcome == outcome


def _domains(structured_ci, open_ci, open_model="rl-seed0"):
    ch = {"rl-seed0": {"structured": {"change": sum(structured_ci) / 2, "ci": structured_ci}}}
    ch.setdefault(open_model, {})["open"] = {"change": sum(open_ci) / 2, "ci": open_ci}
    return {"entropy": {"base": 0.5, "rl-seed0": 0.2}, "entropy_ci": {"base": [0.45, 0.55], "rl-seed0": [0.15, 0.25]},
            "entropy_change_by_domain": ch}


@pytest.mark.parametrize("structured_ci, open_ci, open_model, outcome", [
    ([-0.35, -0.25], [-0.05, 0.04], "rl-open", SUPPORTED),  # the open twin keeps its entropy
    ([-0.35, -0.25], [-0.05, 0.04], "rl-seed0", SUPPORTED),  # no open twin: the same model on the open domain
    ([-0.35, -0.25], [-0.30, -0.10], "rl-open", UNDETERMINED),  # the drops overlap
    ([-0.35, -0.25], [-0.60, -0.40], "rl-open", NOT_SUPPORTED),  # the open domain loses more
    ([-0.05, 0.02], [0.00, 0.10], "rl-open", NOT_SUPPORTED),  # structured entropy did not fall
])
def test_entropy_rule_contrasts_the_structured_drop_with_the_open_domains(structured_ci, open_ci, open_model, outcome):
    r = _domains(structured_ci, open_ci, open_model)
    v = V.verdict_entropy(r)
    assert v.outcome == outcome, v.why
    assert "structured" in v.number and "open" in v.number
    # the open twin listed last (after the structured one) changes nothing: the rule picks by name
    if open_model == "rl-open":
        swapped = {**r, "entropy": {"base": 0.5, "rl-seed0": 0.2, "rl-open": 0.9}}
        assert V.verdict_entropy(swapped).outcome == outcome
    # the old, one-domain reading of the same numbers would say supported in every case but the last
    del r["entropy_change_by_domain"]
    one = V.verdict_entropy(r)
    assert one.outcome == SUPPORTED and "not measured" in one.control


def test_entropy_and_drift_rules_use_intervals():
    ent = {"entropy": {"base": 0.5, "rl": 0.2}, "entropy_ci": {"base": [0.45, 0.55], "rl": [0.15, 0.25]}}
    assert V.verdict_entropy(ent).outcome == SUPPORTED
    ent["entropy_ci"]["rl"] = [0.15, 0.5]
    assert V.verdict_entropy(ent).outcome == NOT_SUPPORTED
    drift = {"kl_base_rl": {"step0": {"on_base_samples": 0.001}, "step50": {"on_base_samples": 0.3}},
             # the shape scripts/drift.py writes: ci[checkpoint][samples][direction]
             "ci": {"step0": {"on_base_samples": {"kl_base_rl": [0.0, 0.002]}},
                    "step50": {"on_base_samples": {"kl_base_rl": [0.25, 0.35]}}}}
    assert V.verdict_drift(drift).outcome == SUPPORTED
    drift["ci"]["step50"]["on_base_samples"]["kl_base_rl"] = [0.001, 0.35]
    assert V.verdict_drift(drift).outcome == NOT_SUPPORTED
    # no CIs: a ratio to the base-vs-itself KL of exactly 0 is no noise floor
    del drift["ci"]
    drift["kl_base_rl"]["step0"]["on_base_samples"] = 0.0
    assert V.verdict_drift(drift).outcome == UNDETERMINED


# ------------------------------------------------------------------ positive controls
def test_a_blind_detector_is_reported_as_such_not_as_a_negative_finding():
    here = _route([0.0, 0.3], [0.0, 0.2])  # not supported on this pair ...
    blind = _route([0.0, 0.3], [0.0, 0.2])  # ... and also on the pair where the claim is planted true
    v = V.with_positive_control(V.verdict_routing, here, positive=blind, negative=here)
    assert v.outcome == DETECTOR_FAILED
    good = _route([0.6, 0.8], [0.0, 0.2])
    v = V.with_positive_control(V.verdict_routing, here, positive=good, negative=here)
    assert v.outcome == NOT_SUPPORTED and "planted true: supported" in v.positive_control
    # a detector that also fires on the planted-false pair fails its control too
    v = V.with_positive_control(V.verdict_routing, good, positive=good, negative=good)
    assert v.outcome == DETECTOR_FAILED


def test_every_row_is_not_measured_without_results():
    rows = V.collect({})
    assert len(rows) == 13 and {r.outcome for r in rows} == {NOT_MEASURED}
    assert all(r.positive_control == V.UNTESTED for r in rows)
