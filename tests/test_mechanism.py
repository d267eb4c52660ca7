"""Mechanism analyses: suppression share on a planted pair, the phase change-point rule, the
plasticity inputs, and their bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from analyses.phases import (
    PhasePoint,
    detect_phases,
    order_checkpoints,
    read_checkpoint,
    strategy_ngram_entropy,
)
from analyses.sampling import SampleRow, Samples, sample
from analyses.suppression import mass_moved, measure_suppression
from analyses.task import Task, TaskProblem
from hooks import TwinlensError, load_model
from tests.conftest import CHARS

INCORRECT = set("abcdefghijklmnopqrstuvwxyz")  # a one-token trajectory is wrong iff it is a letter
LOWERED = "abcde"  # the planted change lowers these (all wrong) tokens


def _with_bias(path: Path, bias: torch.Tensor):
    """The model at ``path`` with an lm_head bias: log p(t) = log softmax(W h + bias)_t."""
    m = load_model(path)
    old = m.hf.lm_head
    new = torch.nn.Linear(old.in_features, old.out_features, bias=True)
    new.weight.data.copy_(old.weight.data)
    new.bias.data.copy_(bias)
    m.hf.lm_head = new
    return m


@pytest.fixture(scope="module")
def planted(tiny_models):
    """Base A and RL B = A with the logits of LOWERED cut by 3 nats (eos/pad off in both, so a
    trajectory is exactly one token and its distribution is the next-token distribution)."""
    vocab = len(CHARS) + 2
    common = torch.zeros(vocab)
    common[vocab - 2 :] = -30.0
    lowered = common.clone()
    lowered[[CHARS.index(c) for c in LOWERED]] -= 3.0
    a = _with_bias(tiny_models["llama"], common)
    b = _with_bias(tiny_models["llama"], lowered)
    task = Task(name="planted", grade=lambda p, c: c not in INCORRECT, extract_answer=lambda c: c)
    # The grader needs no reference, but sample() grades only problems that carry an answer (a file
    # without answers must not read as "all wrong"): give each one.
    problems = [TaskProblem(id=f"p{i}", prompt=p, answer="any") for i, p in enumerate(["12+3:", "4-5:", "abc:", "9#"])]
    samples = sample({"base": a, "rl": b}, problems, 200, task=task, temperature=1.0, top_p=1.0,
                     max_new_tokens=1, sample_from=["base"], batch_size=256, progress=False)
    return a, b, problems, samples


def _exact_share(a, b, problems) -> float:
    """Planted share from the exact next-token distributions (the whole trajectory space)."""
    down = up = 0.0
    wrong = torch.tensor([i < len(CHARS) and CHARS[i] in INCORRECT for i in range(len(CHARS) + 2)])
    for p in problems:
        ids = torch.tensor([a.encode(p.prompt)])
        with torch.no_grad():
            pa = torch.softmax(a.hf(ids).logits[0, -1].double(), -1)
            pb = torch.softmax(b.hf(ids).logits[0, -1].double(), -1)
        down += float((pa - pb).clamp_min(0)[wrong].sum())
        up += float((pb - pa).clamp_min(0)[~wrong].sum())
    return down / (down + up)


def test_suppression_share_recovers_planted_value(planted):
    a, b, problems, samples = planted
    r = measure_suppression(samples)
    exact = _exact_share(a, b, problems)
    # Lowering 5 of 26 wrong tokens frees mass that flows in proportion to the prior, mostly to
    # other wrong tokens: the planted share is well above 0.5.
    assert exact > 0.6
    # 800 samples, importance weights in [e^-3, ~1.1]: the bootstrap CI half-width is ~0.015;
    # 0.05 is > 3 of them.
    assert abs(r.suppression_share - exact) < 0.05
    assert r.suppression_share_ci[0] - 0.02 <= exact <= r.suppression_share_ci[1] + 0.02
    # Nothing correct was lowered; correct trajectories all rise by the same factor.
    assert r.mass["down_correct"] == 0.0
    assert r.delta_logp["correct"].mean > 0 > r.delta_logp["incorrect"].mean
    assert abs(r.diagnostics["mean_weight"] - 1) < 0.05
    # One-token trajectories: all the change sits at the first token.
    assert r.first_token["all"]["share_of_abs_change"] == pytest.approx(1.0)


def test_suppression_share_is_half_when_only_class_masses_move():
    """Every wrong trajectory scaled down by one factor and every right one up: 0.5 exactly."""
    # base: 4 equally likely trajectories, 2 right; rl: right ones 0.4 each, wrong ones 0.1.
    delta = np.log(np.array([0.4, 0.4, 0.1, 0.1]) / 0.25)
    m = mass_moved(delta, np.array([True, True, False, False]))
    assert m["down_incorrect"] / (m["down_incorrect"] + m["up_correct"]) == pytest.approx(0.5)
    # Sharpening onto one right trajectory (mass also taken from the other right one): < 0.5.
    delta = np.log(np.array([0.7, 0.1, 0.1, 0.1]) / 0.25)
    m = mass_moved(delta, np.array([True, True, False, False]))
    # down_incorrect = 0.15 + 0.15, up_correct = 0.45 (0.15 of it from the other right one).
    assert m["down_incorrect"] / (m["down_incorrect"] + m["up_correct"]) == pytest.approx(0.3 / 0.75)
    # Suppressing one wrong trajectory, its mass spread over all others in proportion: > 0.5.
    delta = np.log(np.array([1 / 3, 1 / 3, 1 / 3, 1e-12]) / 0.25)
    m = mass_moved(delta, np.array([True, True, False, False]))
    assert m["down_incorrect"] / (m["down_incorrect"] + m["up_correct"]) == pytest.approx(0.25 / (0.25 + 2 / 12))


def test_suppression_rescoring_with_models_matches_stored_logprobs(planted):
    """With models given (eos scored; none here, trajectories cut at one token) = stored."""
    a, b, _, samples = planted
    r1 = measure_suppression(samples)
    r2 = measure_suppression(samples, models={"base": a, "rl": b}, batch_size=256)
    assert r2.suppression_share == pytest.approx(r1.suppression_share, abs=1e-5)
    assert r2.delta_logp["incorrect"].mean == pytest.approx(r1.delta_logp["incorrect"].mean, abs=1e-4)


def test_suppression_refuses_samples_scored_by_another_tokenizer(planted, tmp_path):
    a, b, _, samples = planted
    row = samples.rows[0]
    # Log-probs of another tokenization (two tokens for a one-token completion).
    bad = SampleRow(**{**row.__dict__, "logprobs": {"base": [-1.0, -1.0], "rl": [-1.0, -1.0]}})
    with pytest.raises(TwinlensError, match="different tokenizer"):
        measure_suppression(Samples([bad, *samples.rows[1:]]))
    # Token ids that decode to other text under the models' tokenizer.
    other = SampleRow(**{**row.__dict__, "text": "#" if row.text != "#" else "a"})
    with pytest.raises(TwinlensError, match="different tokenizer"):
        measure_suppression(Samples([other]), models={"base": a, "rl": b})
    # Token ids beyond the models' vocabulary (a larger tokenizer's).
    big = SampleRow(**{**row.__dict__, "completion_ids": [1000]})
    with pytest.raises(TwinlensError, match="vocabulary size"):
        measure_suppression(Samples([big]), models={"base": a, "rl": b})


def test_suppression_refuses_ungraded_or_non_base_samples(planted):
    _, _, _, samples = planted
    with pytest.raises(TwinlensError, match="base model"):
        measure_suppression(samples, base="rl")
    ungraded = SampleRow(**{**samples.rows[0].__dict__, "correct": None})
    with pytest.raises(TwinlensError, match="not graded"):
        measure_suppression(Samples([ungraded]))


def _checkpoint(folder: Path, info: dict | None) -> Path:
    folder.mkdir(parents=True)
    if info is not None:
        (folder / "training_info.json").write_text(json.dumps(info))
    return folder


def test_checkpoints_without_step_or_compute_are_refused(tmp_path):
    with pytest.raises(TwinlensError, match="no training_info.json"):
        read_checkpoint(_checkpoint(tmp_path / "a", None))
    with pytest.raises(TwinlensError, match="no integer 'step'"):
        read_checkpoint(_checkpoint(tmp_path / "b", {"compute": 10}))
    with pytest.raises(TwinlensError, match="no compute"):
        read_checkpoint(_checkpoint(tmp_path / "c", {"step": 3}))
    ok = [_checkpoint(tmp_path / f"s{s}", {"step": s, "samples_seen": 64 * s}) for s in (20, 0, 10)]
    assert [c.step for c in order_checkpoints(ok)] == [0, 10, 20]
    assert order_checkpoints(ok)[2].compute == 1280


def test_plasticity_refuses_a_zero_budget():
    from analyses.phases import Checkpoint
    from analyses.plasticity import finetune_copy, measure_plasticity

    cks = [Checkpoint("a", Path("."), 0, 0.0), Checkpoint("b", Path("."), 1, 1.0)]
    kl = {"a": (0.0, (0.0, 0.0)), "b": (0.1, (0.05, 0.15))}
    with pytest.raises(TwinlensError, match="budget must be at least 1"):
        measure_plasticity(cks, kl, budget=0)
    with pytest.raises(TwinlensError, match="budget must be at least 1"):
        finetune_copy(cks[0], variant="sub", steps=0, seed=0, lr=1e-3, batch_size=4)
    with pytest.raises(TwinlensError, match="two fine-tuning seeds"):
        measure_plasticity(cks, kl, seeds=[0])


def _point(step: int, ex: float, st: float, w: float = 0.02) -> PhasePoint:
    return PhasePoint(name=f"s{step}", step=step, compute=float(step), entropy={"execution": ex, "strategy": 1.0},
                      entropy_ci={"execution": (ex - w, ex + w), "strategy": (0.9, 1.1)},
                      perplexity={"execution": 1.0, "strategy": 1.0}, strategy_entropy=st,
                      strategy_entropy_ci=(st - w, st + w), accuracy=0.5, n_samples=10,
                      n_tokens={"execution": 10, "strategy": 10})


def test_phase_rule_finds_execution_first_then_strategy():
    # Execution entropy half-falls by step 5 (0.4 of 0.8); strategy diversity rises only from step 30.
    ex = [1.0, 0.6, 0.3, 0.25, 0.2, 0.2]
    st = [1.0, 1.0, 1.02, 1.1, 1.6, 2.0]
    pts = [_point(s, e, d) for s, e, d in zip([0, 5, 10, 20, 30, 40], ex, st, strict=True)]
    r = detect_phases(pts)
    assert (r.t_exec, r.t_strategy, r.two_phase, r.phase_switch_step) == (5, 30, True, 30)
    assert r.strategy_direction == "up"


def test_phase_rule_reports_no_switch_when_strategy_moves_first_or_nothing_falls():
    st_first = [_point(s, e, d) for s, e, d in zip([0, 5, 10, 20], [1.0, 0.95, 0.5, 0.4], [1.0, 2.0, 2.0, 2.0], strict=True)]
    r = detect_phases(st_first)
    assert not r.two_phase and r.phase_switch_step is None and "no execution-first" in r.reason
    flat = [_point(s, 1.0, 1.0 + 0.001 * s) for s in (0, 5, 10)]
    r = detect_phases(flat)
    assert not r.two_phase and r.phase_switch_step is None and "does not fall" in r.reason


def test_strategy_ngram_entropy_counts_move_sequences():
    def row(spans, ans=True):
        return SampleRow(model="m", problem_id="p", sample_index=0, prompt_ids=[1], completion_ids=[1] * 30,
                         text="", logprobs={}, finished=True, strategy_spans=spans,
                         answer_span=[28, 29] if ans else None)

    same = [row([["compute", 0, 7], ["compute", 7, 14]]) for _ in range(4)]
    # One sequence <s> compute answer </s>: three distinct bigrams, equally frequent.
    assert strategy_ngram_entropy(same, 2) == pytest.approx(np.log2(3))
    mixed = same + [row([["compute", 0, 7], ["verification", 7, 20]]) for _ in range(4)]
    assert strategy_ngram_entropy(mixed, 2) > strategy_ngram_entropy(same, 2)


def test_finetune_copy_trains_on_the_new_variant_and_restores_the_trainer():
    import organism
    import organism.training as tr
    from analyses.phases import Checkpoint
    from analyses.plasticity import finetune_copy, heldout_pairs, per_problem_loss

    if "base" not in organism.list_checkpoints():
        pytest.skip("organism base checkpoint not built")
    original = tr.make_corpus
    ck = Checkpoint("base", organism.checkpoint_path("base"), 0, 0.0)
    pairs = heldout_pairs(8, "sub")
    assert all("-" in p and "+" not in p for p, _ in pairs)
    before = per_problem_loss(tr.load_fp32(ck.path), pairs)
    tuned = finetune_copy(ck, variant="sub", steps=3, seed=0, lr=3e-3, batch_size=16)
    after = per_problem_loss(tuned, pairs)
    assert tr.make_corpus is original
    # The base never saw '-' traces: three steps on them lower their held-out loss.
    assert after.shape == before.shape == (8,)
    assert after.mean() < before.mean()


def test_phase_point_entropy_and_perplexity_are_in_range(tiny_models):
    """On a tiny random model's own samples, split in halves labelled execution / strategy:
    entropies and perplexities per role equal those of a direct HF forward (entropies in
    (0, log V]), the n-gram entropy of one move sequence (<s> compute verification </s>) is
    log2(3)."""
    from analyses.phases import Checkpoint, measure_phase_point

    m = load_model(tiny_models["llama"])

    def halves(c):
        h = len(c) // 2
        return [("compute", 0, h), ("verification", h, len(c))] if h else []

    task = Task(name="halves", grade=lambda p, c: True, extract_answer=lambda c: c, label_strategies=halves)
    probs = [TaskProblem(id=f"p{i}", prompt=p) for i, p in enumerate(["12+3:", "4-5:"])]
    s = sample({"m": m}, probs, 4, task=task, temperature=1.0, top_p=1.0, max_new_tokens=8, progress=False)
    rows = [r for r in s.rows if len(r.completion_ids) >= 2]
    assert rows
    pt = measure_phase_point(m, rows, Checkpoint("m", Path("."), 0, 0.0), n_boot=50)
    vocab = len(CHARS) + 2
    # The same numbers from one unpadded HF forward per sample (float32; padding and batching
    # move them by rounding only, hence rel 1e-5).
    ent, nll = {"execution": [], "strategy": []}, {"execution": [], "strategy": []}
    for r in rows:
        with torch.no_grad():
            logits = m.hf(torch.tensor([r.prompt_ids + r.completion_ids])).logits[0].float()
        p = len(r.prompt_ids)
        lp = torch.log_softmax(logits[p - 1 : p - 1 + len(r.completion_ids)], -1)
        for t, lab in enumerate(r.token_labels()):
            role = {"compute": "execution", "verification": "strategy"}[lab]
            ent[role].append(float(-(lp[t].exp() * lp[t]).sum()))
            nll[role].append(float(-lp[t, r.completion_ids[t]]))
    for role in ("execution", "strategy"):
        assert 0 < pt.entropy[role] <= np.log(vocab) + 1e-4
        assert pt.entropy[role] == pytest.approx(np.mean(ent[role]), rel=1e-5)
        assert pt.perplexity[role] == pytest.approx(np.exp(np.mean(nll[role])), rel=1e-5)
        assert pt.n_tokens[role] == len(nll[role])
        lo, hi = pt.entropy_ci[role]
        assert lo <= pt.entropy[role] + 1e-9 and pt.entropy[role] - 1e-9 <= hi
    assert pt.strategy_entropy == pytest.approx(np.log2(3))


def test_script_writes_the_results_contract_on_the_organism(tmp_path):
    """scripts/mechanism.py end to end on three organism checkpoints, at toy sizes."""
    import organism
    from scripts.mechanism import main

    names = ["rl-seed0-step0", "rl-seed0-step10", "rl-seed0-step50"]
    if not all(n in organism.list_checkpoints() for n in ["base", "rl-seed0", *names]):
        pytest.skip("organism checkpoints not built")
    out = tmp_path / "mech"
    args = ["--out", str(out), "--n-problems", "4", "--n-samples", "2", "--phase-problems", "4",
            "--phase-samples", "2", "--budget", "1", "--n-eval", "4", "--n-boot", "50"]
    for n in names:
        args += ["--checkpoint", n]
    threads = torch.get_num_threads()
    try:
        assert main(args) == 0  # (the script sets torch to one thread; restored below)
    finally:
        torch.set_num_threads(threads)
    res = json.loads((out / "results.json").read_text())
    for cls in ("correct", "incorrect"):
        assert set(res["delta_logp"][cls]) >= {"mean", "ci", "n"}
    assert "suppression_share" in res and "phase_switch_step" in res
    assert set(res["plasticity"]) == set(names)
    assert res["plasticity"]["rl-seed0-step0"]["kl_from_base"] == pytest.approx(0.0, abs=1e-6)
    for f in ("delta_logp.png", "phases.png", "plasticity.png", "summary.md"):
        assert (out / f).is_file()
    # Budget zero: an argparse error at parse time (exit code 2, before any model loads), no traceback.
    zero = [str(tmp_path / "zero") if a == str(out) else a for a in args]
    zero[zero.index("--budget") + 1] = "0"
    with pytest.raises(SystemExit) as exc:
        main(zero)
    assert exc.value.code == 2
    assert not (tmp_path / "zero" / "results.json").exists()


def test_script_on_a_twin_shipped_without_intermediate_steps_skips_phases_and_says_so(tmp_path):
    """An RL model whose run has only its final checkpoint (organism v2's rl-nsr / rl-psr, or a
    user's RL model) gets the suppression analysis, with phases and plasticity skipped and a note,
    not an error about needing two checkpoints."""
    import organism
    from scripts.mechanism import main

    lone = [n for n in organism.list_checkpoints() if n.startswith("rl-") and "-step" not in n
            and not any(m.startswith(n + "-step") for m in organism.list_checkpoints())]
    if "base" not in organism.list_checkpoints() or not lone:
        pytest.skip("no organism RL checkpoint without intermediate steps")
    out = tmp_path / "mech"
    threads = torch.get_num_threads()
    try:
        assert main(["--out", str(out), "--rl", lone[0], "--no-plasticity", "--n-problems", "4", "--n-samples", "2",
                     "--n-boot", "50"]) == 0
    finally:
        torch.set_num_threads(threads)
    res = json.loads((out / "results.json").read_text())
    assert 0.0 <= res["suppression_share"] <= 1.0 and res["phase_switch_step"] is None
    assert any("no intermediate checkpoints" in n for n in res.get("notes", [])), res.get("notes")
