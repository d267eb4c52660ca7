"""The kit's view of organism v2's task (analyses.task.organism_task and the scripts' task
options): tiers, answer space, answer spans, generation budget within the context, the
stated-confidence variant and the open domain. No model is loaded: these are facts of the task."""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
from pathlib import Path

import pytest

from analyses.task import (
    ORGANISM_CONTEXT,
    load_task,
    organism_longest_completion,
    organism_max_new_tokens,
    organism_step_length,
    organism_task,
)
from hooks import TwinlensError
from organism import task as ot

ROOT = Path(__file__).resolve().parents[1]
LO, HI = ot.MIN_OPERANDS, ot.MAX_OPERANDS  # the structured tiers organism.task admits


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_t_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT))
    spec.loader.exec_module(module)
    return module


def test_the_tiers_are_organism_v2s_operand_counts_and_the_open_domains_digit_counts():
    for d in range(LO, HI + 1):
        task = organism_task(d)
        assert {len(p.source.operands) for p in task.problems(20)} == {d}
    for bad in (LO - 1, HI + 1):
        with pytest.raises(TwinlensError, match=rf"{LO}\.\.{HI} \(operands per problem.*pretrained on "
                                                rf"{min(ot.PRETRAIN_TIERS)}\.\.{max(ot.PRETRAIN_TIERS)}"):
            organism_task(bad)
    for d in ot.OPEN_LENGTHS:
        assert {len(p.prompt) for p in organism_task(d, "open").problems(5)} == {5}  # '4>23:'
    with pytest.raises(TwinlensError, match=r"3\.\.5 \(digits asked for"):
        organism_task(max(ot.OPEN_LENGTHS) + 1, "open")
    with pytest.raises(TwinlensError, match="sum, sub, open"):
        organism_task(4, "mul")


def test_the_context_is_the_organisms_and_every_tiers_longest_trace_fits_it_with_room_for_a_backtrack():
    from organism.training import MAX_LEN

    assert ORGANISM_CONTEXT == MAX_LEN == 160
    step = organism_step_length()
    assert step == len("37+8=45;") == 8
    # the top tier, '?' prompt, by hand: n - 1 steps, a backtrack ('wait;' + the step again),
    # 'chk ', n - 1 check steps, 'ok;', '#NN', '@d'
    n = HI
    assert organism_longest_completion(n, confidence=True) == (n - 1) * step + 5 + step + 4 + (n - 1) * step + 3 + 3 + 2
    rng = random.Random(0)
    for variant in ("sum", "sub"):
        for d in range(LO, HI + 1):
            for conf in (False, True):
                task = organism_task(d, variant, conf)
                p = task.problems(1)[0].source
                budget = task.max_new_tokens
                assert len(p.prompt) + budget <= ORGANISM_CONTEXT
                # the corpus's longest trace and one with a second backtrack both end (eos) in budget
                i = rng.randrange(d - 1)
                true = ot.answer_of(p.operands[: i + 2], variant)
                c = ot.write_completion(p, "verify", wrong_step=i, wrong_value=(true + 1) % 100,
                                        backtrack=True, confidence=3 if conf else None)
                assert len(c) == organism_longest_completion(d, variant, conf)
                two = c.replace(";wait;", ";wait;" + c[: c.index(";") + 1] + "wait;", 1)
                assert len(two) == len(c) + 5 + step and len(two) + 1 <= budget
                assert task.grade(task.problems(1)[0], c)
    assert organism_max_new_tokens(4, "open") == 1 + 4 + 1 + 4


def test_the_answer_space_is_100_uniform_and_the_guesser_stays_far_below_the_models():
    from analyses.passk import guesser_pass_at_k

    task = organism_task(4)
    assert task.answer_space == ot.ANSWER_SPACE == 100 and task.single_answer
    answers = [p.answer for p in task.problems(5000, seed=3)]
    counts = [answers.count(a) for a in range(100)]
    # uniform: 50 expected per value, sd ~7; every value within 50 +- 6 sd
    assert min(counts) >= 8 and max(counts) <= 92 and set(answers) == set(range(100))
    # the trivial baseline issue 14 asks for: pass@16 = 0.15 (v1's 10 answers gave 0.81)
    g16 = guesser_pass_at_k([16], task.answer_space)[0]
    assert g16 == pytest.approx(1 - 0.99**16) and g16 < 0.16


def test_the_answer_span_is_both_digits_of_the_answer_with_or_without_a_stated_confidence():
    task = organism_task(3, confidence=True)
    for completion, answer in (("97+8=05;05+2=07;#07", 7), ("#07@8", 7), ("97+8=05;05+2=07;#93@2", 93)):
        start, end = task.answer_span(completion)
        assert completion[start:end] == f"{answer:02d}"
        assert task.extract_answer(completion) == answer
    assert task.answer_span("37+8=45;#") is None and task.answer_span("#7") is None


def test_the_confidence_variant_asks_with_question_marks_and_reads_the_stated_digit():
    plain, asked = organism_task(4), organism_task(4, confidence=True)
    pp, pa = plain.problems(30, seed=2), asked.problems(30, seed=2)
    assert all(p.prompt.endswith(":") for p in pp) and all(p.prompt.endswith("?") for p in pa)
    assert [p.prompt[:-1] for p in pp] == [p.prompt[:-1] for p in pa]  # the same problems
    assert plain.extract_confidence is None
    assert asked.extract_confidence("12+3=15;#15@8") == pytest.approx(0.85)
    assert asked.extract_confidence("#42") is None and asked.extract_confidence("#42@") is None
    assert asked.grade(pa[0], f"#{pa[0].answer:02d}@9") and not asked.grade(pa[0], f"#{(pa[0].answer + 1) % 100:02d}@9")
    assert plain.name != asked.name and pp[0].id != pa[0].id  # samples of the two never mix on disk
    with pytest.raises(TwinlensError, match="open domain has no stated-confidence"):
        organism_task(4, "open", confidence=True)


def test_the_open_domain_grades_any_right_digit_string_and_has_no_single_answer():
    task = organism_task(4, "open")
    p = next(q for q in task.problems(50) if q.answer == 23)
    assert p.prompt == "4>23:"
    for right in ("#5738", "#9950", "#0599"):
        assert task.grade(p, right) and task.extract_answer(right) == right[1:]
        s, e = task.answer_span(right)
        assert right[s:e] == right[1:]
    for wrong in ("#5737", "#573", "#57380", "5738", "#57a8"):
        assert not task.grade(p, wrong)
    assert task.answer_space is None and not task.single_answer and task.domain == "open"
    assert task.classify_format("#5738") == "answer" and task.classify_format("12+3") == "other"
    assert organism_task(4).domain == "structured"
    # a problem rebuilt from its prompt (samples read back from disk) grades the same
    bare = type(p)(id=p.id, prompt=p.prompt, answer=p.answer)
    assert task.grade(bare, "#9950") and not task.grade(bare, "#9951")


def test_script_defaults_are_tier_4_and_the_task_options_reach_the_task_before_any_model():
    passk = _script("passk")
    args = passk.parse_args(["--out", "x"])
    assert args.difficulty == 4 and args.task_variant == "sum" and args.confidence_prompts is False
    from scripts import _cli as cli

    task = cli.load_task_from_args(passk.parse_args(["--out", "x", "--confidence"]))
    assert task.extract_confidence is not None and task.problems(1)[0].prompt.endswith("?")
    task = cli.load_task_from_args(passk.parse_args(["--out", "x", "--variant", "open", "--difficulty", "5"]))
    assert task.domain == "open" and task.problems(1)[0].prompt.startswith("5>")
    with pytest.raises(TwinlensError, match=r"3\.\.5"):
        cli.load_task_from_args(passk.parse_args(["--out", "x", "--variant", "open", "--difficulty", "2"]))
    with pytest.raises(TwinlensError, match="a problems file brings its own prompts"):
        load_task(str(ROOT / "tests" / "data" / "arith20.jsonl"), confidence=True)


def test_calibrate_uses_the_stated_confidence_where_the_task_states_one():
    calibrate = _script("calibrate")
    args = calibrate.parse_args(["--out", "x"])
    assert args.confidence == "auto"
    assert calibrate.confidence_plan(args) == ("stated", "task") and args.confidence_prompts is True
    args = calibrate.parse_args(["--out", "x", "--confidence", "answer-prob"])
    assert calibrate.confidence_plan(args) == ("answer-prob", "answer-prob") and args.confidence_prompts is False
    args = calibrate.parse_args(["--out", "x", "--problems", "f.jsonl"])
    assert calibrate.confidence_plan(args) == ("answer-prob", "answer-prob")  # real text: the fallback
    args = calibrate.parse_args(["--out", "x", "--problems", "f.jsonl", "--confidence", "stated"])
    assert calibrate.confidence_plan(args) == ("stated", "text")

    class Row:  # what confidences() reads of a sample row
        def __init__(self, text, correct):
            self.text, self.correct, self.problem_id, self.model = text, correct, "p", "m"

    rows = [Row("#07@8", True), Row("#07@1", False), Row("#07", True)]
    conf, corr, _, left = calibrate.confidences(rows, "stated", ot.extract_confidence)
    assert conf == pytest.approx([0.85, 0.15]) and corr == [True, False] and left == 1


def test_plasticity_fine_tunes_on_plain_prompts_of_the_new_variant_only():
    from analyses.plasticity import heldout_pairs, plasticity_mix
    from organism.corpus import make_corpus

    pairs = make_corpus(400, seed=1, mix=plasticity_mix(), variant="sub")
    assert all(ot.parse_prompt(p).variant == "sub" and p.endswith(":") for p, _ in pairs)
    assert all(ot.classify_format(c) in ("step", "verify") for _, c in pairs)
    held = heldout_pairs(6)
    assert all(ot.grade(ot.parse_prompt(p), c) and len(ot.parse_prompt(p).operands) == 4 for p, c in held)
    with pytest.raises(TwinlensError, match="structured organism variant"):
        heldout_pairs(4, variant="open")


def test_argparse_namespace_without_task_options_gets_the_default_task():
    from scripts import _cli as cli

    task = cli.load_task_from_args(argparse.Namespace())
    assert task.name == "organism-sum-d4" and task.max_new_tokens == organism_max_new_tokens(4)
