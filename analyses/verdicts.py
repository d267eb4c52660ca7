"""The rule of every verdict in the report, in one place, with its thresholds named and argued.

A verdict answers one claim of RESEARCH.md on one pair. It reads the jobs' ``results.json`` files
(``results[job]`` below is the parsed file, ``None`` when the job did not run) and returns a
:class:`Verdict` whose ``outcome`` is one of

- ``supported`` — the effect is there, clear of its negative control **and** of its trivial
  explanation (token identity for probes, construction for routing, a uniform guesser for pass@k,
  chance share for peak locations, sampling noise for everything sampled: CIs apart);
- ``not supported`` — the test could discriminate and the effect is absent (or reversed);
- ``undetermined`` — the test cannot tell here: a tie, saturation, a CI across the threshold,
  too few samples, or the results lack the control that would rule out the trivial explanation;
- ``detector failed its positive control`` — the same job, run where the claim is planted true,
  did not fire: a "not supported" from that detector would mean nothing;
- ``not measured`` — the job did not run.

Every rule is a pure function of the results dictionaries, so tests plant results and check each
outcome (tests/test_verdicts.py). Positive controls: a rule takes ``positive`` / ``negative``
results of the same job run on an organism checkpoint built to make the claim true / false
(which checkpoints, per row: analyses/controls.py; the runner: scripts/controls.py). A row
without such a run says "untested: <why>" and its outcome rests on its own controls.

Intervals throughout are the jobs' 95% intervals (bootstrap over problems or Wilson); "CIs apart"
means one interval's lower end above the other's upper end, a conservative test at roughly the
0.5% level for two independent 95% intervals.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from analyses.passk import guesser_pass_at_k  # noqa: F401  (re-exported: the pass@k row's baseline)
from analyses.scaling import SATURATION_TOL

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
UNDETERMINED = "undetermined"
DETECTOR_FAILED = "detector failed its positive control"
NOT_MEASURED = "not measured"
OUTCOMES = (SUPPORTED, NOT_SUPPORTED, UNDETERMINED, DETECTOR_FAILED, NOT_MEASURED)

UNTESTED = "untested: no planted-true run of this row's job (scripts/controls.py runs them)"
PASSED = "passed"
FAILED = "FAILED"

# ---------------------------------------------------------------- thresholds, argued
#: Probes. Selectivity = probe AUROC minus the token-identity baseline's (Hewitt & Liang 2019). A probe
#: "holds the strategy" beyond token identity only if its lower CI clears the baseline by this much:
#: the CI already covers resampling noise; 0.02 AUROC more asks for an effect a reader would call
#: one (a choice, not a measured seed spread).
SELECTIVITY_MIN = 0.02
#: A token baseline at or above this AUROC leaves the probe no room to show selectivity (it would need
#: more than SELECTIVITY_MIN above it): a ceiling, so the comparison is undetermined, not negative.
BASELINE_CEILING = 1.0 - SELECTIVITY_MIN
#: Decision-point probes: the residual just before a strategy starts must predict it above chance.
#: AUROC 0.5 is chance; the lower CI must clear 0.55 (a weak but real signal) and the shuffled control.
DECISION_AUROC_MIN = 0.55
#: Steering: at least this many random vectors of equal norm per setting (one random vector moved
#: compute 0.45 -> 0.62 alone in the audit: the spread of several is the control).
STEER_MIN_RANDOM = 5
#: Degenerate steering (any one suffices): accuracy down more than 20% relative, more malformed
#: outputs (CIs apart), mean length below 0.5x unsteered (a collapse), or mean length outside
#: [0.5x, 2x] of what the unsteered model writes in the same formats (see is_degenerate).
DEGENERATE_ACC_DROP = 0.20
DEGENERATE_LENGTH = (0.5, 2.0)
#: The format-matched length ratio decides only when at least this share of the steered samples
#: have a format the unsteered samples also have (else there is too little to compare like with like).
MATCHED_LENGTH_MIN_SHARE = 0.5
#: Routing: "most of the gap" = at least half of it (Venhoff et al. report up to 0.91); "few tokens"
#: = at most 20% routed (they steer ~12%).
GAP_MIN = 0.5
BUDGET_MAX = 0.2
#: The base-to-RL accuracy gap must itself be resolved (CIs apart) for gap recovered to mean anything.
#: Sparsity (Mukherjee et al.): RL updates 5-30% of weights, i.e. >= 70% unchanged.
SPARSE_MAX_UPDATED = 0.30
#: Full rank: mean update rank / min(shape) at least 0.9 (published 0.992-0.998).
FULL_RANK_MIN = 0.90
#: Seed overlap above random: o1 must exceed its random expectation by this much (published 0.605
#: vs 0.367; on dense updates both are ~0.97 and differ by < 0.005).
OVERLAP_MARGIN = 0.02
#: Format collapse: one format holds at least 90% of the outputs (Zhao et al. track shares to ~1.0).
COLLAPSE_SHARE = 0.90
#: pass@k is decided only at k where both models' lower CI clears the uniform guesser by this much
#: and neither model's upper CI reaches 1 - SATURATION (a tie at 1.0 says nothing about who wins).
GUESSER_MARGIN = 0.05
SATURATION = 1e-3
#: Calibration: ECE, Brier and AUROC are read together; the claim "binary reward hurts
#: calibration" is supported when at least two of the three worsen with CIs apart, and it is
#: decided only on *stated* confidence (RLCR); an answer-token probability after a worked trace
#: mostly measures copying.
CALIBRATION_MIN_WORSE = 2
#: Scaling: an asymptote within this distance of its bound (1.0 for accuracy) is "saturated"
#: (the scaling job flags the same, analyses.scaling.SATURATION_TOL).
ASYMPTOTE_BOUND_TOL = SATURATION_TOL
#: Mechanism (importance-weighted suppression share): Kish's effective sample size over n must
#: reach 0.3 and at least 100 samples; below, a few weights carry the estimate.
ESS_MIN_FRACTION = 0.30
ESS_MIN = 100
#: The importance weights p_rl/p_base average to 1 under the base when the base covers RL's support;
#: further than this from 1 the masses are unreliable (the job warns at the same tolerance).
MEAN_WEIGHT_TOL = 0.15
#: MI peaks: RL's peaks sit on strategy tokens above chance when the permutation test of the job
#: (peaks redrawn uniformly within each trajectory) rejects chance at this level.
MI_ENRICHMENT_ALPHA = 0.05
#: Shortcuts: a length collapse is RL's mean length below half the base's (510 -> 46 tokens in
#: arXiv 2605.28388), and not also seen in the control run on solvable problems.
LENGTH_COLLAPSE = 0.5


@dataclass
class Verdict:
    """One row of the verdict table (``row``: its key in :data:`ROW_JOBS`)."""

    section: int
    claim: str
    job: str
    row: str = ""
    shows: str = ""
    number: str = ""
    control: str = ""  # negative control(s)
    trivial: str = ""  # the trivial explanation and how this row rules it out (or cannot)
    positive_control: str = UNTESTED
    outcome: str = NOT_MEASURED
    why: str = ""  # one sentence: which rule fired

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- small readers
def get(d: Any, *keys: Any, default: Any = None) -> Any:
    """Nested lookup that never raises: ``get(r, "a", 0, "b")``."""
    for k in keys:
        if isinstance(d, Mapping) and k in d:
            d = d[k]
        elif isinstance(d, Sequence) and not isinstance(d, str) and isinstance(k, int) and -len(d) <= k < len(d):
            d = d[k]
        else:
            return default
    return d


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def value_ci(x: Any) -> tuple[float | None, tuple[float, float] | None]:
    """A number and its interval from the shapes jobs write: ``{"value", "ci": [lo, hi]}``,
    ``{"value", "low", "high"}``, ``{"mean", "ci"}`` or a plain number (no interval)."""
    if isinstance(x, Mapping):
        v = x.get("value", x.get("mean"))
        ci = x.get("ci")
        if ci is None and _num(x.get("low")) and _num(x.get("high")):
            ci = (x["low"], x["high"])
        if ci is not None and len(ci) == 2 and all(_num(c) for c in ci):
            return (v if _num(v) else None), (float(ci[0]), float(ci[1]))
        return (v if _num(v) else None), None
    return (x if _num(x) else None), None


def is_interval(x: Any) -> bool:
    """Two finite numbers (jobs write [None, None] where a statistic is undefined, e.g. an AUROC
    when every sample is wrong)."""
    return isinstance(x, (list, tuple)) and len(x) == 2 and all(_num(c) for c in x)


def apart_above(a: tuple[float, float] | None, b: tuple[float, float] | None) -> bool:
    """Interval a lies entirely above interval b (False when either is not an interval)."""
    return is_interval(a) and is_interval(b) and a[0] > b[1]


def fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    if isinstance(x, (list, tuple)) and len(x) == 2 and all(_num(v) for v in x):
        return f"[{x[0]:.{digits}f}, {x[1]:.{digits}f}]"
    return str(x)


def fmt_vci(x: Any, digits: int = 3) -> str:
    v, ci = value_ci(x)
    return fmt(v, digits) + (f" {fmt(ci, digits)}" if ci else "")


def _rl_key(d: Any) -> str | None:
    return next((k for k in d if k != "base"), None) if isinstance(d, Mapping) else None


def untested(why: str) -> str:
    """The positive-control cell of a row whose detector was not run where its claim is planted."""
    return f"untested: {why}"


def _positive_control(rule: Callable[..., Verdict], positive: Any, negative: Any,
                      why_untested: str = "") -> tuple[str, bool | None]:
    """Run ``rule`` on the planted-true (and planted-false) results: (cell text, detector ok?).

    The detector passes when it says "supported" where the claim is planted true and does not say
    "supported" where it is planted false. "undetermined" on the planted-false run is not a
    failure: the detector did not fire on a false claim, it only could not rule it out at the
    control's size; the cell says so. ``ok`` is None when there is no planted-true run; a
    planted-false run alone can still fail the detector (it fires on a false claim).
    """
    if positive is None:
        if negative is None:
            return UNTESTED, None
        nv = rule(negative)
        why = why_untested or "no planted-true run"
        if nv.outcome == SUPPORTED:
            return (f"{FAILED}: the detector fires where the claim is planted false (planted false: supported; "
                    f"no planted-true case: {why})"), False
        return untested(f"{why} (planted false: {nv.outcome})"), None
    pv = rule(positive)
    if pv.outcome == NOT_MEASURED:  # the planted run wrote none of the numbers the rule reads
        return untested("the planted-true run has none of the numbers this rule reads"), None
    nv = rule(negative) if negative is not None else None
    seen = f"planted true: {pv.outcome}" + (f"; planted false: {nv.outcome}" if nv is not None else
                                            "; no planted-false run")
    # A control cannot tell a blind detector from a twin that did not come out as planted: the model
    # card's claim rows say which twins hold their planted claim (issue 14: where one does not, read
    # the detector as untested, not the claim as false).
    card = "; a twin the model card shows not holding its planted claim makes this untested instead"
    if pv.outcome != SUPPORTED:
        return f"{FAILED}: the detector does not fire where the claim is planted true ({seen}{card})", False
    if nv is not None and nv.outcome == SUPPORTED:
        return f"{FAILED}: the detector fires where the claim is planted false ({seen}{card})", False
    return f"{PASSED}: detector says supported where planted true ({seen})", True


def with_positive_control(rule: Callable[..., Verdict], results: Any, positive: Any = None,
                          negative: Any = None) -> Verdict:
    """Apply ``rule`` to this pair's results and to its positive/negative controls.

    A detector that does not say "supported" on the planted-true checkpoint (or says "supported"
    on the planted-false one) has failed its positive control, and its verdict here is replaced by
    DETECTOR_FAILED: an absent effect from a blind detector is no evidence, and a present one from
    a detector that fires on false claims neither.
    """
    v = rule(results)
    if positive is None:  # keep the rule's own in-job control text, if it has one
        return v
    return _apply_control(v, *_positive_control(rule, positive, negative))


def _apply_control(v: Verdict, text: str, ok: bool | None) -> Verdict:
    v.positive_control = text
    if ok is False and v.outcome != NOT_MEASURED:
        v.why = f"{DETECTOR_FAILED} ({text}); it said {v.outcome!r} here: {v.why}"
        v.outcome = DETECTOR_FAILED
    return v


# ---------------------------------------------------------------- §1 probes
def verdict_probes(r: Mapping | None) -> Verdict:
    """Base models already hold the strategies as linear directions.

    Decided per strategy on the **decision-point probe** (the residual just before a strategy span
    starts vs other decision points; issue 15: this is what "the base already carries the decision"
    means) and its **decision-point selectivity** (that probe's AUROC minus a model-free baseline on
    the same decision points and split: one-hot current/previous token + position,
    ``probes.baselines.decision_point_probe``; Hewitt & Liang 2019 control tasks). Per-token
    selectivity (the probe on every token vs the same baseline on every token) is **reported, not
    decisive**: on a task whose strategy spans are literally their characters (the organism), the
    token baseline reaches 0.93-1.00 per token and no probe can beat it, whatever the model holds.
    supported: every strategy's decision-point AUROC lower CI >= DECISION_AUROC_MIN and above its
    shuffled control, and its decision-point selectivity lower CI >= SELECTIVITY_MIN;
    not supported: some strategy's decision-point AUROC upper CI < DECISION_AUROC_MIN, or its
    decision-point selectivity upper CI < SELECTIVITY_MIN (token and position at the decision point
    explain the probe), unless that baseline is at its ceiling (>= BASELINE_CEILING: undetermined);
    undetermined otherwise, or when the decision-point probe or its baseline is missing.
    """
    v = Verdict(1, "Base models already hold the strategies as linear directions (probes)", "probe")
    rows = {k: x for k, x in (get(r, "acceptance") or {}).items() if isinstance(x, Mapping) and "auroc" in x}
    if not rows:
        return v
    v.shows = ("decision-point probe on held-out base traces: AUROC and selectivity over token + position at the "
               "decision points (decisive); best-layer per-token AUROC and selectivity (reported)")
    parts, controls, trivial = [], [], []
    missing, fails, passes, ceilings = [], [], [], []
    for name, x in rows.items():
        sel_v, sel_ci = value_ci(x.get("selectivity"))
        tok_v, tok_ci = value_ci(x.get("token_baseline_auroc"))
        dp = x.get("decision_point") or {}
        dp_v, dp_ci = value_ci({"value": dp.get("auroc"), "ci": dp.get("ci")}) if dp else (None, None)
        parts.append(f"{name}: AUROC {fmt(x.get('auroc'), 2)} (L{x.get('best_layer')}), selectivity "
                     f"{fmt(sel_v, 3)} {fmt(sel_ci, 3) if sel_ci else ''}, decision point {fmt(dp_v, 2)}"
                     f"{' ' + fmt(dp_ci, 2) if dp_ci else ''}".replace("  ", " "))
        controls.append(f"{name}: shuffled {fmt(x.get('control_auroc'), 2)}, random-init model "
                        f"{fmt(value_ci(x.get('random_init_auroc'))[0], 2)}, decision-point shuffled "
                        f"{fmt(dp.get('control_auroc'), 2)}")
        trivial.append(f"{name}: token baseline {fmt(tok_v, 2)}{' ' + fmt(tok_ci, 2) if tok_ci else ''}")
        dp_ctrl = dp.get("control_auroc")
        dp_sel_v, dp_sel_ci = value_ci(dp.get("selectivity"))
        dp_tok_v, dp_tok_ci = value_ci(dp.get("token_baseline_auroc"))
        if dp:
            parts[-1] += (f", decision-point selectivity {fmt(dp_sel_v, 3)}"
                          f"{' ' + fmt(dp_sel_ci, 3) if dp_sel_ci else ''}")
            trivial[-1] += (f", at decision points {fmt(dp_tok_v, 2)}"
                            f"{' ' + fmt(dp_tok_ci, 2) if dp_tok_ci else ''}")
        if dp_ci is None or dp_sel_ci is None:
            missing.append(name)
            continue
        dp_ceiling = _num(dp_tok_v) and dp_tok_v >= BASELINE_CEILING
        if dp_ci[1] < DECISION_AUROC_MIN or (dp_sel_ci[1] < SELECTIVITY_MIN and not dp_ceiling):
            fails.append(name)
        elif dp_ci[0] >= DECISION_AUROC_MIN and (not _num(dp_ctrl) or dp_ci[0] > dp_ctrl) and (
                dp_sel_ci[0] >= SELECTIVITY_MIN):
            passes.append(name)
        elif dp_ceiling:
            ceilings.append(name)
    v.number, v.control = "; ".join(parts), "; ".join(controls)
    v.trivial = "token identity (one-hot current/previous token + position): " + "; ".join(trivial)
    if fails:
        v.outcome, v.why = NOT_SUPPORTED, (
            f"{', '.join(fails)}: decision-point selectivity upper CI < {SELECTIVITY_MIN} (token and position at "
            f"the decision point explain the probe) or decision-point AUROC upper CI < {DECISION_AUROC_MIN}")
    elif missing:
        v.outcome, v.why = UNDETERMINED, (
            f"{', '.join(missing)}: no decision-point probe or no token baseline at the decision points in the "
            "results; raw AUROC alone cannot rule out token identity")
    elif ceilings:
        v.outcome, v.why = UNDETERMINED, (
            f"{', '.join(ceilings)}: token identity and position at the decision points alone reach AUROC >= "
            f"{BASELINE_CEILING}: no room for a probe to show selectivity")
    elif len(passes) == len(rows):
        v.outcome, v.why = SUPPORTED, (f"every strategy: decision-point AUROC lower CI >= {DECISION_AUROC_MIN} and "
                                       f"above shuffled, decision-point selectivity lower CI >= {SELECTIVITY_MIN}")
    else:
        v.outcome, v.why = UNDETERMINED, "a decision-point AUROC or selectivity interval straddles its threshold"
    return v


# ---------------------------------------------------------------- §1 steering
def is_degenerate(best: Mapping) -> tuple[bool, str]:
    """Steering that breaks the model does not show a strategy was deployed. Any one of: accuracy
    down > DEGENERATE_ACC_DROP relative; malformed outputs up (CIs apart where given, else any rise
    of more than 5 points); a **length collapse** (mean length below DEGENERATE_LENGTH[0] x the
    unsteered mean, ``length_ratio``); or a length outside DEGENERATE_LENGTH x what the unsteered
    model writes **in the same formats** (``length_ratio_matched``, from
    ``probes.steering.format_matched_length_ratio``, when at least MATCHED_LENGTH_MIN_SHARE of the
    steered samples have a format the unsteered ones have; else the raw ``length_ratio``).
    Raw length above 2x is not by itself degenerate: steering a direct answer ("#59", 3 tokens)
    into a step trace (~27 tokens) lengthens it by construction (the v2 demo's compute steering
    0.45 -> 0.88 was flagged at x2.06 for that alone). The one rule the steering search and the
    steering verdict share."""
    a0, a1 = best.get("accuracy_at_0"), best.get("accuracy")
    if _num(a0) and _num(a1) and a0 > 0 and (a0 - a1) / a0 > DEGENERATE_ACC_DROP:
        return True, f"accuracy {fmt(a0, 2)} -> {fmt(a1, 2)}"
    m0, m1 = best.get("malformed_at_0"), best.get("malformed")
    m0v, m0ci = value_ci(m0)
    m1v, m1ci = value_ci(m1)
    if m0ci and m1ci:
        if apart_above(m1ci, m0ci):
            return True, f"malformed {fmt(m0v, 2)} -> {fmt(m1v, 2)}"
    elif _num(m0v) and _num(m1v) and m1v - m0v > 0.05:
        return True, f"malformed {fmt(m0v, 2)} -> {fmt(m1v, 2)}"
    lr, lm = best.get("length_ratio"), best.get("length_ratio_matched")
    if _num(lr) and lr < DEGENERATE_LENGTH[0]:
        return True, f"length collapse x{fmt(lr, 2)}"
    share = best.get("length_matched_share")
    if _num(lm) and _num(share) and share >= MATCHED_LENGTH_MIN_SHARE:
        if not (DEGENERATE_LENGTH[0] <= lm <= DEGENERATE_LENGTH[1]):
            return True, f"length x{fmt(lm, 2)} within formats"
    elif _num(lr) and not (DEGENERATE_LENGTH[0] <= lr <= DEGENERATE_LENGTH[1]):
        return True, f"length x{fmt(lr, 2)}"
    return False, ""


def verdict_steering(r: Mapping | None) -> Verdict:
    """Steering the base with a strategy vector makes it use that strategy.

    supported: for every strategy, the best setting's steered-rate CI lies above the highest upper
    CI of >= STEER_MIN_RANDOM random vectors of equal norm (same layer, strength and positions), and
    the steering is not degenerate (:func:`is_degenerate`); not supported: no setting beats its
    random vectors; undetermined: fewer random vectors than STEER_MIN_RANDOM, or only degenerate
    settings beat them.
    """
    v = Verdict(1, "Steering the base with a strategy vector makes it use that strategy", "steer")
    strategies = get(r, "strategies") or {}
    if not strategies:
        return v
    v.shows = "best setting per strategy: steered rate vs the highest of >= 5 random vectors of equal norm"
    parts, ctrl, outcomes = [], [], []
    for name, x in strategies.items():
        best = x.get("best") or {}
        rnd = best.get("random") or {}
        n_rnd = rnd.get("n", best.get("n_random"))
        rate_ci = best.get("ci")
        if not best:
            parts.append(f"{name}: no setting")
            outcomes.append(NOT_SUPPORTED)
            continue
        deg, why = is_degenerate(best)
        strength = best.get("alpha_fraction")
        parts.append(f"{name}: {fmt(best.get('rate_at_0'), 2)} -> {fmt(best.get('rate'), 2)} {fmt(rate_ci, 2)} at "
                     f"L{best.get('layer')} {'strength ' + fmt(strength, 2) + 'x|resid|' if _num(strength) else 'alpha ' + fmt(best.get('alpha'))}"
                     f" ({best.get('vector', 'vector')}, {best.get('where', 'all')} positions)"
                     f"{'; degenerate: ' + why if deg else ''}")
        ctrl.append(f"{name}: {n_rnd} random vectors, highest upper CI {fmt(rnd.get('max_upper_ci'), 2)}")
        if not _num(n_rnd) or n_rnd < STEER_MIN_RANDOM or not rate_ci or not _num(rnd.get("max_upper_ci")):
            outcomes.append(UNDETERMINED)
        elif rate_ci[0] > rnd["max_upper_ci"]:
            outcomes.append(UNDETERMINED if deg else SUPPORTED)
        else:
            outcomes.append(NOT_SUPPORTED)
    v.number, v.control = "; ".join(parts), "; ".join(ctrl)
    v.trivial = "random vectors of equal norm move strategy rates by themselves; degenerate steering breaks the model"
    if all(o == SUPPORTED for o in outcomes):
        v.outcome, v.why = SUPPORTED, "every strategy's steered CI clears its random vectors', not degenerate"
    elif NOT_SUPPORTED in outcomes and UNDETERMINED not in outcomes:
        v.outcome, v.why = NOT_SUPPORTED, "some strategy's best setting does not clear its random vectors"
    else:
        v.outcome, v.why = UNDETERMINED, (f"fewer than {STEER_MIN_RANDOM} random vectors, no CIs, or only "
                                          "degenerate settings beat the random vectors")
    return v


# ---------------------------------------------------------------- §1 routing
#: Routers whose gap recovered is not true by construction under greedy decoding.
NON_TAUTOLOGICAL_ROUTERS = ("steered_disagree", "disagree_sampled", "entropy", "probe")


def verdict_routing(r: Mapping | None) -> Verdict:
    """A hybrid routing few tokens recovers most of the base-to-RL gap.

    Under greedy decoding the disagree router emits RL's greedy token wherever the two differ, i.e.
    RL's greedy completion: its gap recovered is 1.0 **by construction**. It is reported as "RL's
    token was needed at X% of positions" and the claim is decided on the non-tautological hybrids
    (steered hybrid, sampled decoding, entropy/probe routers), each against random routing at the
    same budget.
    supported: some non-tautological hybrid recovers gap >= GAP_MIN (lower CI) at <= BUDGET_MAX
    routed, its CI above its random control's; not supported: none reaches GAP_MIN even at its
    upper CI; undetermined: the base-RL accuracy gap itself is not resolved, or CIs straddle.
    """
    v = Verdict(1, "A hybrid routing few tokens recovers most of the base-to-RL gap", "route")
    routers = get(r, "routers") or {}
    if not routers:
        return v
    d = routers.get("disagree") or {}
    frac = d.get("fraction_routed")
    v.shows = ("gap recovered (acc_hybrid - acc_base)/(acc_rl - acc_base) by hybrids that are not RL's output by "
               "construction, at the fraction of tokens routed")
    parts, ctrl, best = [], [], None
    for name in NON_TAUTOLOGICAL_ROUTERS:
        x = routers.get(name)
        if not x:
            continue
        g, gci = value_ci(x.get("gap_recovered"))
        rnd = x.get("random_control") or {}
        rg, rci = value_ci(rnd.get("gap_recovered"))
        f = x.get("fraction_routed")
        parts.append(f"{name} {fmt(g)} {fmt(gci) if gci else ''} at {fmt(f)} routed".replace("  ", " "))
        ctrl.append(f"{name}: random routing {fmt(rg)} {fmt(rci) if rci else ''}".replace("  ", " "))
        if gci and _num(f):
            if gci[0] >= GAP_MIN and f <= BUDGET_MAX and apart_above(gci, rci):
                best = best or name
    v.number = "; ".join(parts) or "no non-tautological hybrid in the results"
    v.control = "; ".join(ctrl)
    v.trivial = (f"construction: the greedy disagree hybrid is RL's own greedy output (gap "
                 f"{fmt(value_ci(d.get('gap_recovered'))[0])}); RL's token was needed at "
                 f"{fmt(100 * frac, 1) + '%' if _num(frac) else '?'} of positions")
    acc_b, acc_r = get(r, "accuracy_base"), get(r, "accuracy_rl")
    gap_ci = get(r, "accuracy_gap_ci")
    if _num(acc_b) and _num(acc_r) and acc_r - acc_b <= 0:
        v.outcome, v.why = UNDETERMINED, "RL is not more accurate than the base: there is no gap to recover"
        return v
    if gap_ci and len(gap_ci) == 2 and gap_ci[0] <= 0:
        v.outcome, v.why = UNDETERMINED, "the base-to-RL accuracy gap is not resolved (its CI includes 0)"
        return v
    if best:
        v.outcome, v.why = SUPPORTED, (f"{best}: gap lower CI >= {GAP_MIN} at <= {BUDGET_MAX:.0%} routed, above "
                                       "random routing at the same budget")
        return v
    measured = []
    for name in NON_TAUTOLOGICAL_ROUTERS:
        x = routers.get(name)
        if x:
            _, gci = value_ci(x.get("gap_recovered"))
            if gci:
                measured.append(gci[1] < GAP_MIN)
    if measured and all(measured):
        v.outcome, v.why = NOT_SUPPORTED, f"no non-tautological hybrid reaches {GAP_MIN} of the gap even at its upper CI"
    else:
        v.outcome, v.why = UNDETERMINED, "no non-tautological hybrid with a CI, or CIs straddle the thresholds"
    return v


# ---------------------------------------------------------------- §2 sparsity
def verdict_sparsity(r: Mapping | None) -> Verdict:
    """RL updates a sparse (5-30%), full-rank subnetwork, similar across seeds (Mukherjee et al.).

    Counts are exact (no sampling), so no CI: supported when the updated fraction (|delta| > 1e-5 on
    bf16 weights) is <= SPARSE_MAX_UPDATED, the mean update rank >= FULL_RANK_MIN and, where two
    seeds were diffed, their overlap o1 exceeds the random expectation by OVERLAP_MARGIN; not
    supported when the update is dense. The trivial explanation of a small updated fraction is
    bf16 rounding at a tiny learning rate: the SFT control (published 85-94% updated) says whether
    the pair's training moved weights at all.
    """
    v = Verdict(2, "RL updates a sparse (5-30%), full-rank subnetwork, similar across seeds", "diff")
    if r is None:
        return v
    frac = get(r, "updated_fraction", "atol")
    rank = get(r, "update_rank_mean")
    ov = get(r, "overlap", 0, default={}) or {}
    o1, ro1 = ov.get("o1"), ov.get("random_o1")
    v.shows = "updated fraction (|delta| > 1e-5), mean update rank / min(shape), seed overlap o1"
    v.number = f"updated {fmt(frac)}, rank {fmt(rank)}, overlap o1 {fmt(o1)}"
    v.control = f"random overlap {fmt(ro1)}; SFT updated {fmt(get(r, 'sft', 'updated_fraction', 'atol'))}"
    v.trivial = "a random updated set of the same size overlaps at 1 - s (the random o1)"
    if not _num(frac):
        return v
    if frac == 0:
        v.outcome, v.why = UNDETERMINED, "no weight changed: the two checkpoints are identical (a sanity pair?)"
    elif frac > SPARSE_MAX_UPDATED:
        v.outcome, v.why = NOT_SUPPORTED, f"dense update: {fmt(frac)} of weights moved (> {SPARSE_MAX_UPDATED})"
    elif _num(rank) and rank < FULL_RANK_MIN:
        v.outcome, v.why = NOT_SUPPORTED, f"sparse but low rank ({fmt(rank)} < {FULL_RANK_MIN})"
    elif _num(o1) and _num(ro1) and o1 - ro1 < OVERLAP_MARGIN:
        v.outcome, v.why = NOT_SUPPORTED, "sparse, but the seeds overlap no more than random sets"
    elif not (_num(o1) and _num(ro1)):
        v.outcome, v.why = UNDETERMINED, "sparse and full rank, but only one RL run: seed overlap untested"
    else:
        v.outcome, v.why = SUPPORTED, "sparse, full rank, seeds overlap above random"
    return v


# ---------------------------------------------------------------- §2 mechanism
def verdict_mechanism(r: Mapping | None) -> Verdict:
    """RL mostly suppresses wrong trajectories (NSR) rather than amplifying right ones.

    The share is an importance-weighted estimate; when Kish's effective sample size (per problem,
    averaged) is below ESS_MIN_FRACTION of n (or below ESS_MIN samples in all), or the mean weight is
    off 1 by more than MEAN_WEIGHT_TOL, a handful of weights carry it and the row is undetermined. Otherwise supported when the share's CI lies above 0.5, not supported when below
    or straddling with CI width < 0.1 (a balanced update), undetermined when it straddles widely.
    """
    v = Verdict(2, "RL mostly suppresses wrong trajectories (NSR) rather than amplifying right ones", "mechanism")
    if r is None or get(r, "suppression_share") is None:
        return v
    share, ci = get(r, "suppression_share"), get(r, "suppression_share_ci")
    dc, di = get(r, "delta_logp", "correct", default={}), get(r, "delta_logp", "incorrect", default={})
    n = get(r, "n_samples", default=get(r, "suppression", "n_samples"))
    ess_frac = get(r, "ess_fraction", default=get(r, "suppression", "diagnostics", "ess_fraction"))
    mean_w = get(r, "mean_weight", default=get(r, "suppression", "diagnostics", "mean_weight"))
    ess = get(r, "ess")
    if not _num(ess) and _num(ess_frac) and _num(n):
        ess = ess_frac * n
    if not _num(ess_frac) and _num(ess) and _num(n) and n > 0:
        ess_frac = ess / n
    v.shows = "share of the moved probability mass that lowered incorrect base samples (0.5 = balanced)"
    v.number = f"{fmt(share)}{' ' + fmt(ci) if ci else ''}; ESS {fmt(ess, 0)} of {n} ({fmt(ess_frac, 2)})"
    v.control = (f"delta log p correct {fmt(dc.get('mean'), 2)}, incorrect {fmt(di.get('mean'), 2)}")
    v.trivial = "importance weights concentrated on a few samples (low effective sample size)"
    if not _num(ess_frac):
        v.outcome, v.why = UNDETERMINED, "no effective sample size in the results: the estimate's reliability is unknown"
    elif _num(mean_w) and abs(mean_w - 1) > MEAN_WEIGHT_TOL:
        v.outcome, v.why = UNDETERMINED, (f"mean importance weight {fmt(mean_w, 2)} (expected 1 +- {MEAN_WEIGHT_TOL}): "
                                          "the base samples do not cover the RL model's mass")
    elif ess_frac < ESS_MIN_FRACTION or (_num(ess) and ess < ESS_MIN):
        v.outcome, v.why = UNDETERMINED, f"ESS fraction {fmt(ess_frac, 2)} < {ESS_MIN_FRACTION} (or ESS < {ESS_MIN})"
    elif not ci:
        v.outcome, v.why = UNDETERMINED, "no CI on the share"
    elif ci[0] > 0.5:
        v.outcome, v.why = SUPPORTED, "share CI above 0.5"
    elif ci[1] < 0.5 or ci[1] - ci[0] < 0.1:
        v.outcome, v.why = NOT_SUPPORTED, "share CI below 0.5, or tight around it"
    else:
        v.outcome, v.why = UNDETERMINED, "share CI straddles 0.5"
    return v


# ---------------------------------------------------------------- §3 formats
def verdict_formats(r: Mapping | None, greedy: Mapping | None = None) -> Verdict:
    """Outputs collapse onto one format early in RL (Echo Chamber, Zhao et al.).

    Decided on the **sampled** shares only: supported when, at the last checkpoint, the dominant
    format's sampled share has its lower CI >= COLLAPSE_SHARE and lies above the same format's share
    at the first checkpoint (CIs apart); not supported when that upper CI < COLLAPSE_SHARE or the
    share did not rise; undetermined when the interval straddles the threshold. ``greedy`` =
    {format: share} of the last checkpoint's greedy outputs, when known: **reported, never
    decisive**. Greedy decoding emits one format per prompt template by construction, for nearly
    any model (organism v2's base is 93% direct under greedy on tier 4, its KL-penalized twin
    ``rl-kl-3`` 100% step while it samples 0.45 direct / 0.55 step), so a greedy share >= the
    threshold says nothing about collapse.
    """
    v = Verdict(3, "Outputs collapse onto one format early in RL", "formats")
    if r is None:
        return v
    share, cis, ckpts = get(r, "share", default={}), get(r, "share_ci", default={}), get(r, "checkpoints", default=[])
    if not ckpts:
        return v
    first, last = share.get(ckpts[0], {}), share.get(ckpts[-1], {})
    if not last:
        return v
    top = max(last, key=last.get)
    ci_last = get(cis, ckpts[-1], top)
    ci_first = get(cis, ckpts[0], top)
    g = (greedy or {}).get(top)
    v.shows = f"dominant format's share, first -> last checkpoint (sampled; greedy where known), threshold {COLLAPSE_SHARE:.0%}"
    v.number = (f"{top}: {fmt(first.get(top))} {fmt(ci_first) if ci_first else ''} -> {fmt(last.get(top))} "
                f"{fmt(ci_last) if ci_last else ''}; greedy {fmt(g)}; collapse step {get(r, 'collapse_step')}").replace("  ", " ")
    v.control = f"share of the same format at the first checkpoint ({ckpts[0]})"
    v.trivial = "sampling noise around the threshold (decided on CIs)"
    ci_last = tuple(ci_last) if ci_last else None
    ci_first = tuple(ci_first) if ci_first else None
    if ci_last is None:
        v.outcome, v.why = UNDETERMINED, "no CI on the format shares"
    elif ci_last[1] < COLLAPSE_SHARE:
        v.outcome, v.why = NOT_SUPPORTED, (f"{top}'s sampled share upper CI < {COLLAPSE_SHARE} (greedy shares "
                                           "are one format by construction, not evidence)")
    elif ci_first is not None and not apart_above(ci_last, ci_first):
        v.outcome, v.why = NOT_SUPPORTED, f"{top}'s sampled share did not rise from {ckpts[0]} (CIs overlap)"
    elif ci_last[0] >= COLLAPSE_SHARE:
        v.outcome, v.why = SUPPORTED, (f"{top}'s sampled share lower CI >= {COLLAPSE_SHARE}"
                                       + (f", above {ckpts[0]}'s (CIs apart)" if ci_first is not None else ""))
    else:
        v.outcome, v.why = UNDETERMINED, f"{top}'s share CI straddles {COLLAPSE_SHARE}"
    return v


# ---------------------------------------------------------------- §4 pass@k
def verdict_passk(r: Mapping | None) -> Verdict:
    """RL beats base at every k (ProRL) rather than base overtaking at large k (Yue et al.).

    Decided only at k where both models are clear of the trivial explanations: each lower CI above
    the uniform guesser's pass@k by GUESSER_MARGIN, and neither saturated (upper CI < 1 - SATURATION:
    a tie at 1.0 says nothing). At those k: not supported (crossover) if base's CI lies above RL's at
    some k; supported if the largest k reported is decidable, RL's CI lies above base's there, and
    base is never above; undetermined otherwise (the question is about large k: a win at k = 1 with
    saturated curves beyond says nothing about it).
    """
    v = Verdict(4, "RL beats base at every k (ProRL) rather than base overtaking at large k (Yue et al.)", "passk")
    curves = get(r, "pass_at_k") or {}
    rl = _rl_key(curves)
    if rl is None or "base" not in curves:
        return v
    ks = list(get(r, "k", default=[]))
    b, q = curves["base"], curves[rl]
    bm, qm = b.get("mean", []), q.get("mean", [])
    blo, bhi, qlo, qhi = b.get("ci_low", []), b.get("ci_high", []), q.get("ci_low", []), q.get("ci_high", [])
    guess = get(r, "guesser", "pass_at_k")
    space = get(r, "guesser", "answer_space")
    if not ks or len(bm) != len(ks):
        return v
    v.shows = f"pass@k base vs {rl}, decided only where both are clear of the uniform guesser and not saturated"
    v.number = (f"pass@{ks[0]} {fmt(bm[0])} vs {fmt(qm[0])}; pass@{ks[-1]} {fmt(bm[-1])} vs {fmt(qm[-1])}; "
                f"crossover k (means) = {get(r, 'crossover_k', rl)}")
    v.control = f"problems solved by one model only: {get(r, 'n_solved_only_by')}"
    if guess is None or len(guess) != len(ks):
        v.trivial = "uniform guesser: answer space unknown (the task does not state it)"
        guess = [0.0] * len(ks)
        known_guesser = False
    else:
        v.trivial = f"uniform guesser over {space} answers: pass@{ks[0]} {fmt(guess[0])}, pass@{ks[-1]} {fmt(guess[-1])}"
        known_guesser = True
    if not (len(blo) == len(bhi) == len(qlo) == len(qhi) == len(ks)):
        v.outcome, v.why = UNDETERMINED, "no CIs on the pass@k curves"
        return v
    decidable = [i for i in range(len(ks))
                 if blo[i] > guess[i] + GUESSER_MARGIN and qlo[i] > guess[i] + GUESSER_MARGIN
                 and bhi[i] < 1 - SATURATION and qhi[i] < 1 - SATURATION]
    if not decidable:
        v.outcome, v.why = UNDETERMINED, ("no k where both models are clear of the guesser and below saturation"
                                          + ("" if known_guesser else " (guesser unknown)"))
        return v
    base_wins = [ks[i] for i in decidable if blo[i] > qhi[i]]
    if base_wins:
        v.outcome, v.why = NOT_SUPPORTED, f"base above RL (CIs apart) at k = {base_wins[0]}: a crossover"
        return v
    last = decidable[-1]
    if last != len(ks) - 1:
        v.outcome, v.why = UNDETERMINED, (f"the largest k = {ks[-1]} cannot be decided (saturated, or not clear of "
                                          f"the guesser); decidable up to k = {ks[last]}, where no crossover shows")
    elif qlo[last] > bhi[last]:
        v.outcome, v.why = SUPPORTED, (f"RL above base (CIs apart) at the largest k = {ks[last]}, base never "
                                       "above at any decidable k")
    else:
        v.outcome, v.why = UNDETERMINED, f"a CI tie at the largest k = {ks[last]}"
    if not known_guesser and v.outcome == SUPPORTED:
        v.why += " (answer space unknown: the guesser was not ruled out)"
    return v


# ---------------------------------------------------------------- §5 drift
def verdict_drift(r: Mapping | None) -> Verdict:
    """RL drifts from the base: per-token KL on samples from either model.

    The trivial explanation of a non-zero KL estimate is sampling noise; the first checkpoint of the
    series (the base itself, or step 0) gives that floor. supported when the last checkpoint's
    KL(base||rl) CI lies above the first checkpoint's; not supported when they overlap (RL did not
    move the distribution measurably); undetermined without CIs. The Fast-Slow claim (lower KL at
    matched reward with a KL penalty) needs rl-kl-<beta> twins (organism v2).
    """
    v = Verdict(5, "RL drifts from the base: per-token KL, on samples from either model", "drift")
    kl = get(r, "kl_base_rl")
    if not isinstance(kl, Mapping) or not kl:
        return v
    names = list(kl)
    first, last = names[0], names[-1]
    fw, bw = kl[last], get(r, "kl_rl_base", last, default={})
    v.shows = f"KL(base||rl) and KL(rl||base), nats/token, {last}, on base samples / on RL samples"
    v.number = (f"{fmt(get(fw, 'on_base_samples'))} / {fmt(get(fw, 'on_own_samples'))} and "
                f"{fmt(get(bw, 'on_base_samples'))} / {fmt(get(bw, 'on_own_samples'))}")
    v.control = f"first checkpoint ({first}): {fmt(get(kl, first, 'on_base_samples'))}"
    v.trivial = "estimator noise: the first checkpoint's KL is the floor"
    # scripts/drift.py writes ci[checkpoint][samples][direction]
    ci_last = get(r, "ci", last, "on_base_samples", "kl_base_rl")
    ci_first = get(r, "ci", first, "on_base_samples", "kl_base_rl")
    if first == last:
        v.outcome, v.why = UNDETERMINED, "one checkpoint only: no noise floor"
    elif ci_last and ci_first:
        if apart_above(tuple(ci_last), tuple(ci_first)):
            v.outcome, v.why = SUPPORTED, "last checkpoint's KL CI above the first's"
        else:
            v.outcome, v.why = NOT_SUPPORTED, "KL CIs of the last and first checkpoints overlap"
    else:  # a ratio to a floor of exactly 0 (the base against itself) says nothing about noise
        v.outcome, v.why = UNDETERMINED, "no CIs on KL: the estimator's noise floor is unknown"
    return v


# ---------------------------------------------------------------- §6 shortcuts
def verdict_shortcuts(r: Mapping | None) -> Verdict:
    """Training on too-hard problems teaches shortcuts (length collapse, skipped steps).

    supported when rl-hard's mean sampled length falls below LENGTH_COLLAPSE x the base's **and**
    the control run on solvable problems (rl-seed0) does not collapse (else RL shortens everything
    and hardness is not the explanation); not supported when rl-hard does not collapse.
    """
    v = Verdict(6, "Training on too-hard problems teaches shortcuts (length collapse, skipped steps)", "evaluate")
    rows = get(r, "checkpoints", default={}) or {}
    base, hard, ref = rows.get("base"), rows.get("rl-hard"), rows.get("rl-seed0")
    if not base or not hard:
        return v

    def pick(row: Mapping, *keys: str) -> Any:
        return get(row, "sampled", *keys)

    v.shows = "rl-hard (RL on problems the base never solves) vs base, sampled: direct answers, mean length, accuracy"
    v.number = (f"direct {fmt(pick(base, 'formats', 'direct', 'value'))} -> {fmt(pick(hard, 'formats', 'direct', 'value'))}; "
                f"length {fmt(pick(base, 'mean_length'), 1)} -> {fmt(pick(hard, 'mean_length'), 1)}; "
                f"accuracy {fmt(pick(base, 'accuracy', 'value'))} -> {fmt(pick(hard, 'accuracy', 'value'))}")
    lb, lh = pick(base, "mean_length"), pick(hard, "mean_length")
    lr = pick(ref, "mean_length") if ref else None
    v.control = (f"rl-seed0 (RL on solvable problems): direct {fmt(pick(ref, 'formats', 'direct', 'value'))}, "
                 f"length {fmt(lr, 1)}") if ref else "no rl-seed0 control"
    v.trivial = "RL shortens every output (checked on rl-seed0)"
    if not (_num(lb) and _num(lh)):
        return v
    if lh >= LENGTH_COLLAPSE * lb:
        v.outcome, v.why = NOT_SUPPORTED, f"rl-hard's length is not below {LENGTH_COLLAPSE}x the base's"
    elif not _num(lr):
        v.outcome, v.why = UNDETERMINED, "length collapsed, but no control run on solvable problems"
    elif lr < LENGTH_COLLAPSE * lb:
        v.outcome, v.why = UNDETERMINED, "the control RL run collapsed too: hardness is not the explanation"
    else:
        v.outcome, v.why = SUPPORTED, f"rl-hard's length < {LENGTH_COLLAPSE}x the base's; rl-seed0's is not"
    return v


# ---------------------------------------------------------------- §7 calibration
def verdict_calibration(r: Mapping | None) -> Verdict:
    """Binary-reward RL hurts calibration (RLCR, Damani et al.).

    ECE (equal-width bins), Brier and AUROC are read together: supported when at least
    CALIBRATION_MIN_WORSE of the three worsen with CIs apart (ECE/Brier up, AUROC down); not
    supported when none worsens with CIs apart; undetermined when only one does. The claim is about *stated* confidence: with confidence = the probability
    of the answer tokens after a worked trace (which measures copying the trace's last step), the
    row is undetermined whatever the numbers; the calibrate job uses the stated confidence where the
    task states one (organism v2's '?' prompts) and records which in results.json "confidence".
    """
    v = Verdict(7, "Binary-reward RL hurts calibration (ECE, Brier, AUROC together)", "calibrate")
    ece = get(r, "ece")
    rl = _rl_key(ece)
    if r is None or rl is None:
        return v
    ci_b, ci_r = get(r, "ci", "base", default={}) or {}, get(r, "ci", rl, default={}) or {}
    metrics = {}
    for m in ("ece", "brier", "auroc"):
        metrics[m] = (get(r, m, "base"), get(r, m, rl), ci_b.get(m), ci_r.get(m))
    conf = get(r, "confidence", default="?")
    v.shows = f"base -> {rl}: ECE, Brier, AUROC of confidence vs correctness; confidence = {conf}"
    v.number = "; ".join(f"{m} {fmt(b)}{' ' + fmt(cb) if cb else ''} -> {fmt(q)}{' ' + fmt(cq) if cq else ''}"
                         for m, (b, q, cb, cq) in metrics.items())
    v.control = f"accuracy {fmt(get(r, 'accuracy', 'base'))} -> {fmt(get(r, 'accuracy', rl))}"
    v.trivial = "ECE is capped near 1 - accuracy when accuracy is high; answer-token probability measures copying"
    worse, better, have = 0, 0, 0
    for m, (_, _, cb, cq) in metrics.items():
        if not (is_interval(cb) and is_interval(cq)):  # e.g. AUROC undefined: one class only
            continue
        have += 1
        up, down = apart_above(tuple(cq), tuple(cb)), apart_above(tuple(cb), tuple(cq))
        if (m == "auroc" and down) or (m != "auroc" and up):
            worse += 1
        if (m == "auroc" and up) or (m != "auroc" and down):
            better += 1
    if conf != "stated":
        v.outcome, v.why = UNDETERMINED, (f"confidence = {conf}, not a stated confidence: the RLCR claim needs "
                                          "rl-binary / rl-brier twins on a stated-confidence task")
        v.why += f" (here {worse} of {have} metrics worsen with CIs apart)"
    elif have < 2:
        v.outcome, v.why = UNDETERMINED, "fewer than two metrics with CIs"
    elif worse >= CALIBRATION_MIN_WORSE:
        v.outcome, v.why = SUPPORTED, f"{worse} of 3 calibration metrics worsen with CIs apart"
    elif worse == 0:
        v.outcome, v.why = NOT_SUPPORTED, f"no metric worsens with CIs apart ({better} improve)"
    else:
        v.outcome, v.why = UNDETERMINED, f"only {worse} metric worsens with CIs apart"
    return v


# ---------------------------------------------------------------- §8 entropy
OPEN_DOMAIN_TWIN = "rl-open"  # organism v2's twin RL-trained on the open domain


def verdict_entropy(r: Mapping | None) -> Verdict:
    """RL on a structured domain lowers output entropy, on an open one it does not, or less
    (Omni-Thinker, RESEARCH.md s.8).

    With the drift job's per-domain entropy changes (``entropy_change_by_domain[model][domain]``:
    change from the base on each model's own samples, paired bootstrap CI over problems): the
    structured change is the last model's (other than ``OPEN_DOMAIN_TWIN``, whatever the order
    the models were given in) on the structured task; the open change is
    ``OPEN_DOMAIN_TWIN``'s on the open domain where that twin was measured (RL trained on the open
    domain), else the same model's. supported when the structured change's CI lies below 0 and the
    open change's CI lies above it (the open domain loses less entropy, CIs apart); not supported
    when the structured CI does not lie below 0 (no drop), or the open change's CI lies below the
    structured one's (the open domain loses more); undetermined when the two CIs overlap. Without
    an open domain (e.g. a real pair on one task) the structured part alone decides: supported when
    the last checkpoint's entropy CI lies below the base's, not supported when it does not,
    undetermined without CIs; the row says the contrast was not measured."""
    v = Verdict(8, "RL lowers output entropy on a structured domain, not (or less) on an open one", "drift")
    ent, ci = get(r, "entropy"), get(r, "entropy_ci") or {}
    if not isinstance(ent, Mapping) or "base" not in ent:
        return v
    structured_models = [m for m in ent if m not in ("base", OPEN_DOMAIN_TWIN)]
    last = structured_models[-1] if structured_models else list(ent)[-1]
    v.trivial = "sampling noise (CIs)"
    changes = get(r, "entropy_change_by_domain") or {}
    s_ch = get(changes, last, "structured")
    open_model = OPEN_DOMAIN_TWIN if get(changes, OPEN_DOMAIN_TWIN, "open") else last
    o_ch = get(changes, open_model, "open")
    if last != "base" and s_ch and o_ch and s_ch.get("ci") and o_ch.get("ci"):
        s_ci, o_ci = tuple(s_ch["ci"]), tuple(o_ch["ci"])
        v.shows = (f"entropy change from the base on own samples (nats/token): {last} on the structured task, "
                   f"{open_model} on the open domain")
        v.number = f"structured {fmt(s_ch.get('change'))} {fmt(s_ci)}; open {fmt(o_ch.get('change'))} {fmt(o_ci)}"
        v.control = (f"{last} on the open domain: {fmt(get(changes, last, 'open', 'change'))}"
                     if open_model != last and get(changes, last, "open") else
                     "entropy by token kind in the drift section")
        if not s_ci[1] < 0:
            v.outcome, v.why = NOT_SUPPORTED, "entropy on the structured task did not fall (change CI not below 0)"
        elif apart_above(o_ci, s_ci):
            v.outcome, v.why = SUPPORTED, "structured entropy fell, and the open domain's change lies above it (CIs apart)"
        elif apart_above(s_ci, o_ci):
            v.outcome, v.why = NOT_SUPPORTED, "the open domain lost more entropy than the structured task (CIs apart)"
        else:
            v.outcome, v.why = UNDETERMINED, "structured entropy fell, but the open domain's change overlaps it"
        return v
    v.shows = f"mean next-token entropy on each model's own samples, base -> {last} (nats)"
    v.number = f"{fmt(ent['base'])}{' ' + fmt(ci.get('base')) if ci.get('base') else ''} -> {fmt(ent[last])}{' ' + fmt(ci.get(last)) if ci.get(last) else ''}"
    v.control = "entropy by token kind in the drift section; one domain only (the open-domain contrast was not measured)"
    if last == "base":
        return v
    if ci.get("base") and ci.get(last):
        if apart_above(tuple(ci["base"]), tuple(ci[last])):
            v.outcome, v.why = SUPPORTED, "entropy CI of the last checkpoint below the base's"
        else:
            v.outcome, v.why = NOT_SUPPORTED, "entropy did not fall with CIs apart"
    else:
        v.outcome, v.why = UNDETERMINED, "no CIs on entropy"
    return v


# ---------------------------------------------------------------- §9 scaling
def verdict_scaling(r: Mapping | None) -> Verdict:
    """RL performance follows a sigmoid in compute (ScaleRL).

    A fit whose asymptote A sits within ASYMPTOTE_BOUND_TOL of its bound (score 1.0) is saturated:
    the sigmoid shape is then not identified, so undetermined. Otherwise supported when the sigmoid
    predicts held-out points better than a power law (``heldout_rmse`` of each, written by the
    scaling job), not supported when the power law predicts them better; undetermined without the
    comparison.
    """
    v = Verdict(9, "RL performance follows a sigmoid in compute", "scaling")
    if r is None or get(r, "A") is None:
        return v
    ci = get(r, "ci", default={}) or {}
    A = get(r, "A")
    v.shows = "fit of R(C) = R0 + (A - R0)/(1 + (C_mid/C)^B) over RL checkpoints (compute = samples seen)"
    v.number = (f"A={fmt(A)}{' ' + fmt(ci.get('A')) if ci.get('A') else ''}, B={fmt(get(r, 'B'), 2)}, "
                f"C_mid={fmt(get(r, 'C_mid'), 0)}")
    s_rmse, p_rmse = get(r, "heldout", "sigmoid_rmse"), get(r, "heldout", "power_law_rmse")
    v.control = f"held-out RMSE sigmoid {fmt(s_rmse)} vs power law {fmt(p_rmse)}"
    v.trivial = "saturation: an asymptote at its bound does not identify the curve"
    bound = get(r, "A_bound", default=1.0)
    a_hi = (ci.get("A") or [A, A])[1]
    if _num(A) and (bound - A <= ASYMPTOTE_BOUND_TOL or (_num(a_hi) and bound - a_hi <= ASYMPTOTE_BOUND_TOL)):
        v.outcome, v.why = UNDETERMINED, f"saturated: A = {fmt(A)} at its bound {fmt(bound)}"
    elif not (_num(s_rmse) and _num(p_rmse)):
        v.outcome, v.why = UNDETERMINED, "no held-out comparison with a power law"
    elif s_rmse < p_rmse:
        v.outcome, v.why = SUPPORTED, "the sigmoid predicts held-out points better than a power law"
    else:
        v.outcome, v.why = NOT_SUPPORTED, "a power law predicts held-out points as well or better"
    return v


# ---------------------------------------------------------------- §10 MI peaks
def combine_planted_controls(per_model: Mapping[str, Mapping] | None) -> dict[str, Any]:
    """The MI-peak detector's positive control over several models, from each model's
    ``planted_dependence_control`` result (``n_planted``, ``recall``, ``passed``).

    A model with no usable trajectory (``n_planted`` 0: e.g. organism v2's base, whose own greedy
    texts are 3-token direct answers) tests nothing, so it neither passes nor fails the control:
    ``passed`` is True when every model that had planted positions recovered them (recall >= its
    ``min_recall``), False when one did not, and None (untested) when no model had any.
    ``recall`` = the lowest recall among the tested models (None when untested); ``untested`` names
    the models without trajectories. Returns a new dict; ``per_model`` is kept as given.
    """
    per_model = dict(per_model or {})
    tested = {m: p for m, p in per_model.items() if isinstance(p, Mapping) and (p.get("n_planted") or 0) > 0}
    recalls = [p["recall"] for p in tested.values() if _num(p.get("recall"))]
    return {"recall": min(recalls) if recalls else None,
            "passed": (all(bool(p.get("passed")) for p in tested.values()) if tested else None),
            "per_model": per_model, "untested": sorted(set(per_model) - set(tested))}


def verdict_mi(r: Mapping | None) -> Verdict:
    """RL creates sharper MI peaks than the base has, at thinking tokens (Qian et al.).

    supported when, on the shared reference text, RL - base AOM has its CI above 0 **and** RL's
    peaks fall on strategy tokens above chance (their share of tokens; permutation p-value below
    MI_ENRICHMENT_ALPHA);
    not supported when AOM does not rise (CI upper <= 0) or peaks sit at or below chance;
    undetermined otherwise. Special tokens (``<eos>``) must be excluded from peak finding by the job
    (``special_tokens_excluded``), else the row is undetermined: 26-38% of peaks sat on ``<eos>``.
    """
    v = Verdict(10, "RL creates sharper MI peaks than the base has, at strategy tokens", "mi_peaks")
    d = get(r, "paired", "reference", "rl-base")
    if not d:
        return v
    mi, aom, npk = d.get("mi_mean", {}), d.get("aom", {}), d.get("n_peaks", {})
    v.shows = "paired RL - base on a shared reference solution: mean MI, AOM, peaks per trajectory"
    v.number = (f"MI {fmt(mi.get('value'), 4)} [{fmt(mi.get('low'), 4)}, {fmt(mi.get('high'), 4)}]; "
                f"AOM {fmt(aom.get('value'), 2)} [{fmt(aom.get('low'), 2)}, {fmt(aom.get('high'), 2)}]; "
                f"peaks {fmt(npk.get('value'), 2)}")
    shares = {m: get(r, "models", m, "texts", "reference", "peaks_at_strategy_tokens", default={}) or {}
              for m in ("base", "rl")}
    v.control = "share of peaks on strategy tokens vs chance (their share of tokens): " + "; ".join(
        f"{m} {fmt(x.get('share'))} vs {fmt(x.get('chance'))}" for m, x in shares.items() if x)
    planted = get(r, "planted_control")
    if isinstance(get(planted, "per_model"), Mapping):  # re-derived: results written before the rule
        planted = {**planted, **combine_planted_controls(planted["per_model"])}  # skipped untested models
    v.trivial = "chance share of peak locations; special tokens at trajectory ends"
    if planted is not None and get(planted, "passed") is None:
        v.positive_control = untested("no model had a trajectory to plant dependence into")
    elif planted is not None:
        skipped = get(planted, "untested") or []
        v.positive_control = (f"planted dependence found: {fmt(get(planted, 'recall'), 2)} recall "
                              f"({PASSED if get(planted, 'passed') else FAILED})"
                              + (f"; untested on {', '.join(skipped)} (no trajectories)" if skipped else ""))
    rl_share = shares.get("rl") or {}
    s, chance = rl_share.get("share"), rl_share.get("chance")
    # the job reports the enrichment's one-sided permutation p-value (peaks redrawn within each
    # trajectory), not an interval on the share
    p_perm = rl_share.get("p_permutation")
    above_chance = _num(s) and _num(chance) and s > chance and _num(p_perm) and p_perm < MI_ENRICHMENT_ALPHA
    if planted is not None and get(planted, "passed") is False:
        v.outcome, v.why = DETECTOR_FAILED, "the planted-dependence control was not recovered"
    elif not get(r, "special_tokens_excluded"):
        v.outcome, v.why = UNDETERMINED, "special tokens were not excluded from peak finding"
    elif not _num(aom.get("low")) or not _num(chance):
        v.outcome, v.why = UNDETERMINED, "no AOM CI or no chance share"
    elif aom.get("high", 0) <= 0 or (_num(s) and s <= chance):
        v.outcome, v.why = NOT_SUPPORTED, "AOM does not rise, or RL's peaks are not above chance on strategy tokens"
    elif aom["low"] > 0 and above_chance:
        v.outcome, v.why = SUPPORTED, "AOM up (CI above 0) and RL's peaks on strategy tokens above chance"
    else:
        v.outcome, v.why = UNDETERMINED, "AOM or the strategy-token share straddles its threshold"
    return v


# ---------------------------------------------------------------- the table
@dataclass
class Rule:
    """One row: which job's results it reads, and the rule."""

    job: str
    decide: Callable[..., Verdict]
    extra_jobs: tuple[str, ...] = field(default_factory=tuple)


def _formats_with_greedy(results: Mapping[str, Any]) -> Verdict:
    fr = results.get("formats")
    ev = results.get("evaluate")
    last = (get(fr, "checkpoints") or [None])[-1]
    greedy = get(fr, "greedy_share", last) if last is not None else None
    if not isinstance(greedy, Mapping) and last is not None:  # older formats runs: evaluate's greedy rows
        g = get(ev, "checkpoints", last, "greedy", "formats")
        greedy = {k: value_ci(x)[0] for k, x in g.items()} if isinstance(g, Mapping) else None
    return verdict_formats(fr, greedy)


def verdict_formats_run(r: Mapping | None) -> Verdict:
    """:func:`verdict_formats` on one formats run with its own greedy shares (the rule a planted
    formats run is judged by: the same evidence as the row's, greedy included)."""
    return _formats_with_greedy({"formats": r})


#: Every row of the table, in order: its key -> the job whose results.json it reads. Planted
#: results (``positives`` / ``negatives`` of :func:`collect`) are keyed by the row, not the job: the
#: drift job feeds two rows (KL, entropy) whose claims are planted on different checkpoints.
ROW_JOBS: dict[str, str] = {
    "probe": "probe", "steer": "steer", "route": "route", "diff": "diff", "mechanism": "mechanism",
    "formats": "formats", "passk": "passk", "drift": "drift", "shortcuts": "evaluate",
    "calibrate": "calibrate", "entropy": "drift", "scaling": "scaling", "mi_peaks": "mi_peaks",
}
_RULES: dict[str, Callable[[Any], Verdict]] = {
    "probe": verdict_probes, "steer": verdict_steering, "route": verdict_routing, "diff": verdict_sparsity,
    "mechanism": verdict_mechanism, "formats": verdict_formats_run, "passk": verdict_passk, "drift": verdict_drift,
    "shortcuts": verdict_shortcuts, "calibrate": verdict_calibration, "entropy": verdict_entropy,
    "scaling": verdict_scaling, "mi_peaks": verdict_mi,
}


def collect(results: Mapping[str, Any], positives: Mapping[str, Any] | None = None,
            negatives: Mapping[str, Any] | None = None,
            untested_why: Mapping[str, str] | None = None) -> list[Verdict]:
    """Every row of the verdict table from ``results[job]`` (parsed results.json or None).

    ``positives[row]`` / ``negatives[row]`` (row keys of :data:`ROW_JOBS`): the row's job run on the
    organism checkpoint where its claim is planted true / false, when it was run.
    ``untested_why[row]``: why a row has no planted-true run (shown in its positive-control cell
    instead of the generic text; a job's own in-job control text is kept).
    """
    positives, negatives, untested_why = positives or {}, negatives or {}, untested_why or {}
    rows = []
    for row, job in ROW_JOBS.items():
        rule = _RULES[row]
        try:  # one unreadable results.json costs its row, not the table
            v = _formats_with_greedy(results) if row == "formats" else rule(results.get(job))
        except Exception as exc:
            v = Verdict(0, f"{row}: its results could not be read", job,
                        why=f"{job}/results.json: {type(exc).__name__}: {exc}")
        v.row = row
        if positives.get(row) is not None or negatives.get(row) is not None:
            try:
                text, ok = _positive_control(rule, positives.get(row), negatives.get(row), untested_why.get(row, ""))
            except Exception as exc:
                text, ok = untested(f"the planted results could not be read ({type(exc).__name__}: {exc})"), None
            _apply_control(v, text, ok)
        elif v.positive_control == UNTESTED and untested_why.get(row):
            v.positive_control = untested(untested_why[row])
        rows.append(v)
    return rows
