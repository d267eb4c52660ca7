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
    EVAL_SEED_OFFSET,
    FORMATS,
    STRATEGIES,
    StrategySpan,
    classify_format,
    eval_problems,
    grade,
    is_eval_problem,
    label_strategies,
    make_problems,
    problem_from_digits,
    token_labels,
    write_completion,
)

ROOT = Path(__file__).resolve().parents[1]
P = problem_from_digits((3, 5, 8, 2, 1))  # answer 9
STEP = "3+5=08;8+8=16;6+2=08;8+1=09;#9"
VERIFY = "3+5=08;8+8=16;6+2=08;8+1=09;chk 1+2=03;3+8=11;1+5=06;6+3=09;ok;#9"
WAIT = "3+5=08;8+8=15;wait;8+8=16;6+2=08;8+1=09;#9"
WRONG = "3+5=08;8+8=15;5+2=07;7+1=08;#8"


def test_api_constants_are_as_documented():
    assert STRATEGIES == ("compute", "verification", "backtracking")
    assert FORMATS == ("direct", "step", "verify")


def test_problem_prompt_and_answer():
    assert P.prompt == "3+5+8+2+1:" and P.answer == 9 and P.variant == "sum"
    sub = problem_from_digits((9, 3, 5, 2, 1), "sub")
    assert sub.prompt == "9-3-5-2-1:" and sub.answer == (9 - 3 - 5 - 2 - 1) % 10


def test_writer_produces_the_documented_grammar():
    assert write_completion(P, "direct") == "#9"
    assert write_completion(P, "step") == STEP
    assert write_completion(P, "verify") == VERIFY
    assert write_completion(P, "step", wrong_step=1, wrong_value=15, backtrack=True) == WAIT
    assert write_completion(P, "step", wrong_step=1, wrong_value=15) == WRONG
    # A wrong forward step caught by the check: "no;" and the check's (right) answer.
    caught = write_completion(P, "verify", wrong_step=1, wrong_value=15)
    assert caught.endswith("no;#9") and grade(P, caught)


def test_grade_reads_the_answer_after_the_last_hash():
    assert grade(P, "#9") and grade(P, STEP) and grade(P, VERIFY) and grade(P, WAIT)
    assert not grade(P, WRONG)
    assert grade(P, "#3;#9") and not grade(P, "#9;#3")
    assert not grade(P, "9") and not grade(P, "#") and not grade(P, "#99") and not grade(P, "")


def test_classify_format():
    assert classify_format("#9") == "direct"
    assert classify_format(STEP) == "step"
    assert classify_format(WAIT) == "step"
    assert classify_format(WRONG) == "step"  # format, not correctness
    assert classify_format(VERIFY) == "verify"
    for bad in ("", "9", "#", "3+5=08;", "3+5=8;#8", "chk ok;#9", "3+5=08;chk ok;#9", "#9#9"):
        assert classify_format(bad) == "other", bad


def test_label_strategies_on_hand_written_completions():
    assert label_strategies("#9") == []
    assert label_strategies(STEP) == [StrategySpan("compute", 7 * i, 7 * i + 7) for i in range(4)]
    spans = label_strategies(WAIT)
    assert [s.strategy for s in spans] == ["compute", "compute", "backtracking", "compute", "compute"]
    bt = spans[2]
    assert WAIT[bt.start:bt.end] == "wait;8+8=16;"
    spans = label_strategies(VERIFY)
    assert [s.strategy for s in spans] == ["compute"] * 4 + ["verification"]
    v = spans[-1]
    assert VERIFY[v.start:v.end] == "chk 1+2=03;3+8=11;1+5=06;6+3=09;ok;"
    # Malformed text: best effort, no crash; a dangling wait is still backtracking.
    assert [s.strategy for s in label_strategies("3+5=08;wait;")] == ["compute", "backtracking"]
    assert [s.strategy for s in label_strategies("chk 1+2=03;")] == ["verification"]


def test_token_labels_cover_every_character():
    labels = token_labels(WAIT)
    assert len(labels) == len(WAIT)
    assert labels[:7] == ["compute"] * 7
    assert labels[14:26] == ["backtracking"] * 12
    assert labels[-2:] == ["answer", "answer"]
    assert set(token_labels(VERIFY)) == {"compute", "verification", "answer"}


def test_make_problems_is_deterministic_and_train_eval_disjoint():
    a, b = make_problems(200, seed=3), make_problems(200, seed=3)
    assert a == b and make_problems(200, seed=4) != a
    train = {p.prompt for s in range(5) for p in make_problems(2000, seed=s)}
    held = {p.prompt for k in range(3) for p in eval_problems(500, k)}
    assert not train & held, "held-out problems must never appear in training"
    assert all(is_eval_problem(p) for p in held) and not any(is_eval_problem(p) for p in train)
    assert eval_problems(10, 2) == make_problems(10, EVAL_SEED_OFFSET + 2)
    assert {len(p.digits) for p in make_problems(50, 0, difficulty=7)} == {7}
    assert all(p.variant == "sub" and "-" in p.prompt for p in make_problems(20, 0, variant="sub"))
    with pytest.raises(ValueError, match="variant"):
        make_problems(1, 0, variant="mul")


def test_corpus_mix_and_mistakes():
    corpus = make_corpus(3000, seed=0)
    fmts = [classify_format(c) for _, c in corpus]
    assert "other" not in fmts
    # 3000 draws: binomial sd of a 0.6 share is 0.009; 0.03 is > 3 sd.
    assert abs(fmts.count("direct") / 3000 - PRETRAIN_MIX.direct) < 0.03
    assert abs(fmts.count("verify") / 3000 - PRETRAIN_MIX.verify) < 0.03
    probs = make_problems(3000, seed=0)
    wrong_direct = sum(not grade(p, c) for p, (_, c) in zip(probs, corpus, strict=True) if c.startswith("#"))
    assert 0.25 < wrong_direct / fmts.count("direct") < 0.35
    assert any("wait;" in c for _, c in corpus)
    sft = make_corpus(500, seed=1, mix=SFT_MIX)
    assert all(grade(p, c) and "wait" not in c for p, (_, c) in zip(make_problems(500, 1), sft, strict=True))


def test_tokenizer_round_trips_every_task_string(tmp_path):
    from transformers import AutoTokenizer

    from organism.generation import encode
    from organism.tokenizer import save_tokenizer

    save_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert tok.bos_token is None and tok.eos_token == "<eos>" and tok.pad_token == "<pad>"
    texts = [p + c for p, c in make_corpus(300, seed=5)]
    for variant in ("sum", "sub"):
        p = make_problems(1, 0, variant=variant)[0]
        texts += [p.prompt + write_completion(p, f) for f in ("direct", "step", "verify")]
        texts.append(p.prompt + write_completion(p, "verify", wrong_step=0,
                                                 wrong_value=(p.digits[0] + 1) % 10, backtrack=True))
    texts += [" ", "wait;", "chk ", "ok;", "no;"]
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
        assert got["n_weights"] == organism.checkpoint_info(b)["n_params"] == 446_304
        assert got["unchanged_fraction"] == pytest.approx(recorded[key], abs=1e-12), key


def test_shipped_rl_model_beats_base_greedy_on_held_out_problems():
    """100 held-out problems, greedy. Measured on 500: base 0.198, rl-seed0 0.984 (model card);
    on these 100: base 0.22, rl-seed0 1.00. The bounds leave room for a few argmax flips on
    other hardware, not for a base that already reasons or an RL model that does not."""
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
    stats = decoding_stats([P, P, P, P], ["#9", STEP, WAIT, "#1"])
    assert stats.accuracy.k == 3 and stats.formats["direct"].k == 2 and stats.formats["step"].k == 2
    assert stats.strategies["compute"].k == 2 and stats.strategies["backtracking"].k == 1
    assert stats.strategies["verification"].k == 0


def test_decision_points_are_the_prompt_end_and_step_separators():
    from organism.task import decision_points, label_strategies

    c = "3+5=08;8+8=15;wait;8+8=16;chk 1+2=03;ok;#9"
    pts = decision_points(c)
    assert pts[0] == -1 and all(c[i] == ";" for i in pts[1:])
    # every strategy span starts right after a decision point (or at the completion's start)
    for span in label_strategies(c):
        assert span.start - 1 in pts, (span, pts)
