"""What the model card (organism/checkpoints/README.md) promises, checked from the shipped weights
(or the set TWINLENS_ORGANISM_CHECKPOINTS points at): every fixed name is there, the architecture
vLLM's CPU attention takes, the 40 MB budget, the answer space, the base's pass@1 on the demo's tier,
and the sparse twins' bf16 update regime (issue 14). Fast: weights are read as files; the one sampled
check draws 200 completions of a 0.7M-parameter model."""

from __future__ import annotations

import itertools
import json
import os
from collections import Counter

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import organism  # noqa: E402
from analyses.organism_card import (  # noqa: E402
    PASSK_TEMPERATURE,
    PASSK_TOP_P,
    SPARSE_TWINS,
    SPARSE_UNCHANGED_MIN,
    TIER_PASS1_BAND,
    weight_overlap,
)
from analyses.task import organism_max_new_tokens  # noqa: E402
from organism.evaluation import Rate  # noqa: E402
from organism.task import ANSWER_SPACE, eval_problems, grade, is_eval_problem, problem_from_operands  # noqa: E402
from organism.training import bf16_unchanged_fraction  # noqa: E402

# Until the v2 set replaces it, organism/checkpoints/ holds v1's (446,304 parameters, head_dim 24):
# these tests describe v2 and run on any other set (the v2 one, or TWINLENS_ORGANISM_CHECKPOINTS).
V1_N_PARAMS = 446_304
pytestmark = pytest.mark.skipif(
    "base" in organism.list_checkpoints() and organism.checkpoint_info("base").get("n_params") == V1_N_PARAMS,
    reason="organism/checkpoints/ still holds the v1 set; these tests check the v2 set")

# Names tools and held-out checks look up (issue 14's twin table).
FIXED_NAMES = ("base", "sft", "rl-seed0", "rl-seed1", "rl-hard", *SPARSE_TWINS, "rl-nsr", "rl-psr",
               "rl-binary", "rl-brier", "rl-open")
CHECKPOINT_BUDGET_BYTES = 40 * 10**6  # all checkpoints together, in git
HEAD_DIM = 32  # vLLM's CPU attention takes 32, 64, 80, >= 96 (v1's 24 was refused)
# The demo's jobs sample the organism at the scripts' default tier (`--difficulty 4`).
DEMO_TIERS = (4,)


def _config(name: str) -> dict:
    return json.loads((organism.checkpoint_path(name) / "config.json").read_text())


def test_every_fixed_checkpoint_name_is_shipped():
    names = organism.list_checkpoints()
    missing = [n for n in FIXED_NAMES if n not in names]
    assert not missing, f"missing checkpoints {missing} in {organism.CHECKPOINT_DIR}"
    assert len([n for n in names if n.startswith("rl-kl-")]) >= 2, "need rl-kl-<beta> for >= 2 betas"
    assert any(n.startswith("rl-seed0-step") for n in names), "need rl-seed0's intermediate checkpoints"


def test_every_checkpoint_has_head_dim_32_and_the_base_shape():
    base = _config("base")
    for name in organism.list_checkpoints():
        cfg = _config(name)
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        assert head_dim == HEAD_DIM, (name, head_dim)
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
            assert cfg[key] == base[key], (name, key)


def test_all_checkpoints_fit_the_40_mb_budget():
    total = sum(f.stat().st_size for d in organism.CHECKPOINT_DIR.iterdir() if d.is_dir()
                for f in d.rglob("*") if f.is_file())
    assert total <= CHECKPOINT_BUDGET_BYTES, f"{total / 1e6:.1f} MB of checkpoints"


def test_answer_space_is_100_values_uniform_over_held_out_problems():
    assert ANSWER_SPACE == 100
    # Every held-out problem of the demo's tier (the whole eval partition, enumerated: ~9,800 of the
    # 100,000 4-operand problems), answers counted: a chi-square with 99 degrees of freedom has mean 99
    # and sd 14 under uniformity; 148.2 is its 0.001 quantile (measured: 87.1). Draws *with
    # replacement* from the partition (eval_problems) would add the partition's own fluctuation
    # (chi2 ~ 300 at 20,000 draws): the property is of the partition, so it is counted whole.
    answers: Counter = Counter()
    for start in range(100):
        for addends in itertools.product(range(10), repeat=3):
            p = problem_from_operands((start, *addends))
            if is_eval_problem(p.prompt):
                answers[p.answer] += 1
    assert set(answers) == set(range(100))
    expected = sum(answers.values()) / 100
    chi2 = sum((answers[a] - expected) ** 2 / expected for a in range(100))
    assert chi2 < 148.2, chi2


@pytest.mark.parametrize("tier", DEMO_TIERS)
def test_base_pass1_on_the_demo_tier_is_inside_the_band_the_card_promises(tier):
    # The card's protocol (temperature 0.6, top-p 0.95) on 100 held-out problems x 2 samples (HF
    # loop, seeded). The card states the band TIER_PASS1_BAND for 500 x 256 samples; here the 95%
    # Wilson interval of 200 samples must overlap it: a base at chance (0.01, v2's untrained pilot)
    # (v2's untrained pilot base_a: 0.015 [0.005, 0.043]) fails; one at the card's value passes whatever the seed.
    from hooks import generate, load_model

    model = load_model(str(organism.checkpoint_path("base")))
    problems = eval_problems(100, 0, difficulty=tier)
    out = generate(model, [model.encode(p.prompt) for p in problems], organism_max_new_tokens(tier),
                   temperature=PASSK_TEMPERATURE,
                   top_p=PASSK_TOP_P, n=2, seed=0, batch_size=200)
    texts = [model.tokenizer.decode(o, skip_special_tokens=True) for o in out]
    rate = Rate.of(sum(grade(problems[i // 2], t) for i, t in enumerate(texts)), len(texts))
    lo, hi = TIER_PASS1_BAND
    assert rate.high >= lo and rate.low <= hi, f"tier {tier}: base pass@1 {rate} vs band [{lo}, {hi}]"


@pytest.mark.parametrize("name", SPARSE_TWINS)
def test_sparse_twins_leave_most_bf16_weights_unchanged(name):
    u = bf16_unchanged_fraction(organism.checkpoint_path("base"), organism.checkpoint_path(name))
    assert u["unchanged_fraction"] >= SPARSE_UNCHANGED_MIN, f"{name}: {u['unchanged_fraction']:.3f} unchanged"
    assert u["unchanged_fraction"] < 1.0, f"{name} equals the base: no update at all"


def test_sparse_seeds_overlap_above_random_and_the_dense_twin_is_dense():
    path = organism.checkpoint_path
    o = weight_overlap(path("base"), path(SPARSE_TWINS[0]), path(SPARSE_TWINS[1]), SPARSE_TWINS)
    assert o["n_a"] > 0 and o["n_b"] > 0, "a sparse twin equals the base"
    assert o["o1"] > o["random_o1"] and o["o2"] > o["random_o2"], o
    # the planted-false side of s.2: rl-seed0 (dense lr regime) moves most weights
    dense = bf16_unchanged_fraction(path("base"), path("rl-seed0"))["unchanged_fraction"]
    assert dense < SPARSE_UNCHANGED_MIN, f"rl-seed0 {dense:.3f} unchanged: the negative control is sparse too"
