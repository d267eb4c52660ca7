"""The organism: task grammar, grader, labels, tokenizer, problem splits, training path, and the
shipped checkpoints."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import organism  # noqa: E402
from organism.corpus import PRETRAIN_MIX, SFT_MIX, make_corpus  # noqa: E402
from organism.task import (  # noqa: E402
    ANSWER_SPACE,
    EVAL_SEED_OFFSET,
    FORMATS,
    STRATEGIES,
    StrategySpan,
    apply_op,
    classify_format,
    eval_problems,
    extract_confidence,
    grade,
    is_eval_problem,
    label_strategies,
    make_problems,
    open_problem,
    open_solutions,
    parse_prompt,
    problem_from_operands,
    token_labels,
    write_completion,
)

ROOT = Path(__file__).resolve().parents[1]
# Organism v2: a two-digit start, one-digit addends, every step mod 100. By hand: 37+8 = 45;
# 45+5 = 50; 50+9 = 59; 59+4 = 63. Check pass (sum: the addends onto the start, last first):
# 37+4 = 41; 41+9 = 50; 50+5 = 55; 55+8 = 63.
P = problem_from_operands((37, 8, 5, 9, 4))  # answer 63
STEP = "37+8=45;45+5=50;50+9=59;59+4=63;#63"
VERIFY = "37+8=45;45+5=50;50+9=59;59+4=63;chk 37+4=41;41+9=50;50+5=55;55+8=63;ok;#63"
WAIT = "37+8=45;45+5=51;wait;45+5=50;50+9=59;59+4=63;#63"
WRONG = "37+8=45;45+5=51;51+9=60;60+4=64;#64"


def test_api_constants_are_as_documented():
    assert STRATEGIES == ("compute", "verification", "backtracking")
    assert FORMATS == ("direct", "step", "verify")
    assert ANSWER_SPACE == 100


def test_problem_prompt_and_answer():
    assert P.prompt == "37+8+5+9+4:" and P.answer == 63 and P.variant == "sum" and P.difficulty == 5
    sub = problem_from_operands((5, 3, 5, 2, 1), "sub")
    assert sub.prompt == "05-3-5-2-1:" and sub.answer == (5 - 3 - 5 - 2 - 1) % 100 == 94
    asked = problem_from_operands((37, 8), confidence=True)
    assert asked.prompt == "37+8?" and asked.answer == 45 and parse_prompt("37+8?") == asked
    assert parse_prompt(P.prompt) == P and parse_prompt("4>23:") == open_problem(4, 23)


def test_writer_produces_the_documented_grammar():
    assert write_completion(P, "direct") == "#63"
    assert write_completion(P, "step") == STEP
    assert write_completion(P, "verify") == VERIFY
    assert write_completion(P, "step", wrong_step=1, wrong_value=51, backtrack=True) == WAIT
    assert write_completion(P, "step", wrong_step=1, wrong_value=51) == WRONG
    # A wrong forward step caught by the check: "no;" and the check's (right) answer.
    caught = write_completion(P, "verify", wrong_step=1, wrong_value=51)
    assert caught.endswith("60+4=64;chk 37+4=41;41+9=50;50+5=55;55+8=63;no;#63") and grade(P, caught)
    assert write_completion(P, "step", confidence=8) == STEP + "@8"


def test_grade_reads_the_two_digits_after_the_last_hash():
    assert grade(P, "#63") and grade(P, STEP) and grade(P, VERIFY) and grade(P, WAIT)
    assert not grade(P, WRONG)
    assert grade(P, "#03;#63") and not grade(P, "#63;#03") and grade(P, "#63@2")
    for bad in ("63", "#", "#6", "#3", "#633", "#6 3", ""):
        assert not grade(P, bad), bad


def test_stated_confidence_is_the_digit_after_the_answer():
    assert extract_confidence(STEP + "@8") == pytest.approx(0.85)
    assert extract_confidence("#63@0") == pytest.approx(0.05) and extract_confidence("#63@9") == pytest.approx(0.95)
    for none in (STEP, "#63@", "#6@8", "@8", "#63@8@8x"):
        assert extract_confidence(none) is None, none


def test_open_domain_grades_every_string_of_the_right_length_and_sum():
    q = open_problem(4, 23)
    assert q.prompt == "4>23:" and q.variant == "open" and q.difficulty == 4
    assert grade(q, "#5738") and grade(q, "#9950") and not grade(q, "#5737") and not grade(q, "#57380")
    # the count of right answers, against brute force over all 10^4 strings
    assert open_solutions(4, 23) == sum(sum(map(int, f"{x:04d}")) == 23 for x in range(10**4)) == 480
    assert open_solutions(3, 0) == 1 and open_solutions(3, 27) == 1


def test_classify_format():
    assert classify_format("#63") == "direct" and classify_format("#63@3") == "direct"
    assert classify_format(STEP) == "step" and classify_format(STEP + "@9") == "step"
    assert classify_format(WAIT) == "step"
    assert classify_format(WRONG) == "step"  # format, not correctness
    assert classify_format(VERIFY) == "verify"
    for bad in ("", "63", "#", "#6", "37+8=45;", "37+8=4;#04", "37+58=95;#95", "chk ok;#63", "37+8=45;chk ok;#45",
                "#63#63"):
        assert classify_format(bad) == "other", bad


def test_label_strategies_on_hand_written_completions():
    assert label_strategies("#63") == []
    assert label_strategies(STEP) == [StrategySpan("compute", 8 * i, 8 * i + 8) for i in range(4)]
    spans = label_strategies(WAIT)
    assert [s.strategy for s in spans] == ["compute", "compute", "backtracking", "compute", "compute"]
    bt = spans[2]
    assert WAIT[bt.start:bt.end] == "wait;45+5=50;"
    spans = label_strategies(VERIFY)
    assert [s.strategy for s in spans] == ["compute"] * 4 + ["verification"]
    v = spans[-1]
    assert VERIFY[v.start:v.end] == "chk 37+4=41;41+9=50;50+5=55;55+8=63;ok;"
    # Malformed text: best effort, no crash; a dangling wait is still backtracking.
    assert [s.strategy for s in label_strategies("37+8=45;wait;")] == ["compute", "backtracking"]
    assert [s.strategy for s in label_strategies("chk 37+4=41;")] == ["verification"]


def test_token_labels_cover_every_character():
    labels = token_labels(WAIT)
    assert len(labels) == len(WAIT)
    assert labels[:8] == ["compute"] * 8
    assert labels[16:29] == ["backtracking"] * 13
    assert labels[-3:] == ["answer"] * 3  # "#63"
    assert set(token_labels(VERIFY)) == {"compute", "verification", "answer"}
    assert token_labels("#63@8")[-2:] == ["none", "none"]  # the stated confidence is not the answer


def test_make_problems_is_deterministic_and_train_eval_disjoint():
    a, b = make_problems(200, seed=3), make_problems(200, seed=3)
    assert a == b and make_problems(200, seed=4) != a
    train = {p.prompt for s in range(5) for p in make_problems(2000, seed=s)}
    held = {p.prompt for k in range(3) for p in eval_problems(500, k)}
    assert not train & held, "held-out problems must never appear in training"
    assert all(is_eval_problem(p) for p in held) and not any(is_eval_problem(p) for p in train)
    assert eval_problems(10, 2) == make_problems(10, EVAL_SEED_OFFSET + 2)
    from organism.task import MAX_OPERANDS, MIN_OPERANDS

    assert {len(p.operands) for p in make_problems(50, 0, difficulty=MAX_OPERANDS)} == {MAX_OPERANDS}
    assert all(0 <= p.operands[0] <= 99 and all(0 <= d <= 9 for d in p.operands[1:])
               for p in make_problems(200, 0))
    assert all(p.variant == "sub" and "-" in p.prompt for p in make_problems(20, 0, variant="sub"))
    # a '?' problem is on the same side of the split as its ':' twin
    asked = make_problems(200, 0, confidence=True)
    assert [p.prompt[:-1] for p in asked] == [p.prompt[:-1] for p in make_problems(200, 0)]
    assert not any(is_eval_problem(p.prompt) for p in asked)
    with pytest.raises(ValueError, match="variant"):
        make_problems(1, 0, variant="mul")
    with pytest.raises(ValueError, match=rf"{MIN_OPERANDS}\.\.{MAX_OPERANDS}"):
        make_problems(1, 0, difficulty=MAX_OPERANDS + 1)


def test_corpus_mix_mistakes_and_calibrated_confidence():
    from organism.corpus import DIRECT_RIGHT, STEP_SHARE
    from organism.task import PRETRAIN_TIERS

    corpus = make_corpus(3000, seed=0)
    probs = [parse_prompt(p) for p, _ in corpus]
    opened = [i for i, q in enumerate(probs) if q.variant == "open"]
    structured = [i for i, q in enumerate(probs) if q.variant != "open"]
    # 3000 draws: binomial sd of a 0.12 share is 0.006; 0.03 is 5 sd
    assert abs(len(opened) / 3000 - PRETRAIN_MIX.open_share) < 0.03
    asked = [i for i in structured if probs[i].confidence]
    assert abs(len(asked) / len(structured) - PRETRAIN_MIX.confidence_share) < 0.04  # sd 0.008
    assert all(classify_format(corpus[i][1]) != "other" for i in structured)
    assert all(extract_confidence(corpus[i][1]) is not None for i in asked)
    assert {probs[i].difficulty for i in structured} == set(PRETRAIN_MIX.tiers) == set(PRETRAIN_TIERS)
    for n in (min(PRETRAIN_TIERS), max(PRETRAIN_TIERS)):  # stepping grows with the operand count
        tier = [i for i in structured if probs[i].difficulty == n]
        direct = [i for i in tier if classify_format(corpus[i][1]) == "direct"]
        # ~660 problems a tier: sd of the direct share <= 0.02; 0.07 is 3.5 sd
        assert abs(len(direct) / len(tier) - (1 - STEP_SHARE[n])) < 0.07
        right = sum(grade(probs[i], corpus[i][1]) for i in direct) / len(direct)
        assert abs(right - DIRECT_RIGHT[n]) < 0.1  # >= 190 direct answers a tier: sd <= 0.036
    assert any("wait;" in c for _, c in corpus)
    # Stated confidence is calibrated in the corpus: by construction the digit states the corpus's
    # accuracy for that kind of completion, jittered by one digit (0.1) either way, so the ECE over
    # the stated values stays below ~0.1 (measured 0.041 on these 671); shuffled against the
    # answers, the same confidences have an ECE of 0.38.
    conf = [extract_confidence(corpus[i][1]) for i in asked]
    right = [grade(probs[i], corpus[i][1]) for i in asked]

    def ece(c, r):
        bins: dict = {}
        for q, ok in zip(c, r, strict=True):
            bins.setdefault(q, []).append(ok)
        return sum(len(v) / len(c) * abs(sum(v) / len(v) - q) for q, v in bins.items())

    import random

    shuffled = random.Random(0).sample(right, len(right))
    assert ece(conf, right) < 0.1 < 0.25 < ece(conf, shuffled)
    sft = make_corpus(500, seed=1, mix=SFT_MIX)
    assert all(grade(parse_prompt(p), c) and "wait" not in c for p, c in sft)


def test_tokenizer_round_trips_every_task_string(tmp_path):
    from transformers import AutoTokenizer

    from organism.generation import encode
    from organism.tokenizer import save_tokenizer

    save_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert tok.bos_token is None and tok.eos_token == "<eos>" and tok.pad_token == "<pad>"
    texts = [p + c for p, c in make_corpus(300, seed=5)]
    assert any("?" in t and "@" in t for t in texts) and any(">" in t for t in texts)
    for variant in ("sum", "sub"):
        p = make_problems(1, 0, variant=variant)[0]
        texts += [p.prompt + write_completion(p, f) for f in ("direct", "step", "verify")]
        slip = (apply_op(p.operands[0], p.operands[1], variant) + 1) % 100  # step 0 written wrong
        texts.append(p.prompt + write_completion(p, "verify", wrong_step=0, wrong_value=slip,
                                                 backtrack=True, confidence=7))
    texts += [" ", "wait;", "chk ", "ok;", "no;", "4>23:#5738"]
    for t in texts:
        ids = tok(t)["input_ids"]
        assert len(ids) == len(t), "one token per character, nothing added"
        assert ids == encode(t)
        assert tok.decode(ids) == t
    eos = tok(texts[0])["input_ids"] + [tok.eos_token_id]
    assert tok.decode(eos, skip_special_tokens=True) == texts[0]


# The build script (every stage, bit-identical rebuilds): tests/test_organism_training.py


# ---------------------------------------------------------------- the shipped checkpoints
SHIPPED = ["base", "sft", "rl-seed0", "rl-seed1", "rl-hard"]


def test_checkpoint_path_lists_valid_names_on_a_wrong_one():
    with pytest.raises(LookupError, match="valid names: .*base"):
        organism.checkpoint_path("rl-seed9")
    for name in SHIPPED:
        assert (organism.checkpoint_path(name) / "model.safetensors").is_file()


def test_shipped_checkpoints_are_complete_and_small():
    names = organism.list_checkpoints()
    assert set(SHIPPED) <= set(names)
    steps = [n for n in names if n.startswith("rl-seed0-step")]
    assert len(steps) >= 6 and "rl-seed0-step0" in steps
    infos = [organism.checkpoint_info(n) for n in steps]
    assert [i["step"] for i in infos] == sorted(i["step"] for i in infos)
    assert infos[0]["step"] == 0 and infos[0]["tokens_generated"] == 0
    total = sum(f.stat().st_size for f in organism.CHECKPOINT_DIR.rglob("*") if f.is_file())
    assert total < 40e6


def test_shipped_checkpoints_load_offline_and_step0_is_the_base():
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name in SHIPPED:
        m = AutoModelForCausalLM.from_pretrained(organism.checkpoint_path(name))
        assert m.config.vocab_size >= len(AutoTokenizer.from_pretrained(organism.checkpoint_path(name)))
    a = load_file(str(organism.checkpoint_path("base") / "model.safetensors"))
    b = load_file(str(organism.checkpoint_path("rl-seed0-step0") / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    last = load_file(str(organism.checkpoint_path("rl-seed0-step50") / "model.safetensors"))
    final = load_file(str(organism.checkpoint_path("rl-seed0") / "model.safetensors"))
    assert last.keys() == final.keys() and all(torch.equal(last[k], final[k]) for k in final)
    c = load_file(str(organism.checkpoint_path("rl-seed1") / "model.safetensors"))
    d = load_file(str(organism.checkpoint_path("rl-seed0") / "model.safetensors"))
    assert any(not torch.equal(c[k], d[k]) for k in c), "the two RL seeds must differ"


def test_build_report_unchanged_fractions_match_the_shipped_weights():
    """The bf16 unchanged fractions in build_report.json (and the model card) are those of the
    shipped weights, not of some other build."""
    from organism.training import bf16_unchanged_fraction

    report = json.loads((organism.CHECKPOINT_DIR / "build_report.json").read_text())
    recorded = report["bf16_unchanged_fraction_vs_base"]
    # every shipped twin has its entry (train_organism.py writes one per twin it built)
    twins = [n for n in organism.list_checkpoints() if n != "base" and "-step" not in n]
    pairs = {n: ("base", n) for n in twins}
    pairs["rl-seed0_vs_rl-seed1"] = ("rl-seed0", "rl-seed1")
    assert set(recorded) == set(pairs)
    for key, (a, b) in pairs.items():
        got = bf16_unchanged_fraction(organism.checkpoint_path(a), organism.checkpoint_path(b))
        assert got["n_weights"] == organism.checkpoint_info(b)["n_params"] == 660_608
        assert got["unchanged_fraction"] == pytest.approx(recorded[key], abs=1e-12), key


def test_shipped_rl_model_beats_base_greedy_on_held_out_problems():
    """100 held-out tier-4 problems, greedy. Measured on these 100 (organism v2): base 0.09,
    rl-seed0 1.00. The bounds leave room for a few argmax flips on other hardware, not for a base
    that already reasons or an RL model that does not."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from organism.generation import generate_texts

    problems = eval_problems(100, k=0)
    acc = {}
    for name in ("base", "rl-seed0"):
        path = organism.checkpoint_path(name)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(path)
        outs = generate_texts(model, tok, [p.prompt for p in problems], temperature=0.0)
        acc[name] = sum(grade(p, o) for p, o in zip(problems, outs, strict=True)) / len(problems)
    assert acc["rl-seed0"] >= acc["base"] + 0.3, acc
    assert acc["base"] <= 0.35 and acc["rl-seed0"] >= 0.9, acc


def test_shipped_checkpoints_load_through_hooks_and_generate_like_plain_hf():
    """`hooks.load_model` loads every shipped checkpoint offline; its generation equals the
    organism's own KV-cached greedy helper on a fresh HF model (exact token equality)."""
    from transformers import AutoModelForCausalLM

    from hooks import generate, load_model
    from organism.generation import generate_ids

    problems = eval_problems(20, k=1)
    for name in SHIPPED:
        path = organism.checkpoint_path(name)
        model = load_model(str(path))
        ids = [model.encode(p.prompt) for p in problems]
        assert ids[0] == [int(t) for t in model.tokenizer(problems[0].prompt)["input_ids"]]
        fresh = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        assert generate(model, ids, 100) == generate_ids(fresh, ids, 100), name


def test_wilson_interval_and_decoding_stats():
    from organism.evaluation import Rate, decoding_stats

    r = Rate.of(5, 10)  # textbook Wilson 95%: [0.2366, 0.7634]
    assert abs(r.low - 0.2366) < 1e-3 and abs(r.high - 0.7634) < 1e-3
    assert Rate.of(10, 10).high == 1.0 and Rate.of(0, 10).low == 0.0
    assert abs(Rate.of(0, 10).high - 0.2775) < 1e-3
    stats = decoding_stats([P, P, P, P], ["#63", STEP, WAIT, "#01"])
    assert stats.accuracy.k == 3 and stats.formats["direct"].k == 2 and stats.formats["step"].k == 2
    assert stats.strategies["compute"].k == 2 and stats.strategies["backtracking"].k == 1
    assert stats.strategies["verification"].k == 0


def test_decision_points_are_the_prompt_end_and_step_separators():
    from organism.task import decision_points, label_strategies

    c = "37+8=46;wait;37+8=45;45+5=50;chk 37+5=42;42+8=50;ok;#50"
    pts = decision_points(c)
    assert pts[0] == -1 and all(c[i] == ";" for i in pts[1:])
    # every strategy span starts right after a decision point (or at the completion's start)
    for span in label_strategies(c):
        assert span.start - 1 in pts, (span, pts)
