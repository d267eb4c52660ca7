"""Grading real answers (analyses.grading): extraction by format, math-verify equivalence, the
tasks and scripts that use it, and the no-answer share the jobs report."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from analyses.grading import answer_span, answers_equivalent, extract_answer, no_answer_share
from analyses.task import TaskProblem, load_task, organism_task, regex_task
from hooks import TwinlensError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("text, fmt, want", [
    (r"so $x = \boxed{\frac{1}{2}}$.", "boxed", r"\frac{1}{2}"),  # nested braces
    (r"\boxed{3} first, then \boxed{\sqrt{2}+1}", "boxed", r"\sqrt{2}+1"),  # the last box
    ("The answer is: 8", "answer-is", "8"),  # SmolLM2's own phrasing
    ("So the answer is $\\frac{3}{4}$.", "answer-is", r"\frac{3}{4}"),
    ("The final answer is 12 apples.", "answer-is", "12"),
    ("She pays 3 * 4 = 12 dollars.\n#### 1,234", "gsm8k", "1,234"),
    ("3.5 then 42.", "last-number", "42"),
    (r"The answer is 7, i.e. \boxed{8}", "auto", "8"),  # auto: boxed first
    ("We get 5 and then #### 6", "auto", "6"),
    ("Adding them, the answer is 9. Check: 4 + 5.", "auto", "9"),  # answer-is before last number
    ("so 4 + 5 = 9", "auto", "9"),
    ("no number here", "auto", None),
    ("The answer is 8", "boxed", None),  # a format finds only its own
])
def test_answers_are_found_by_format(text, fmt, want):
    assert extract_answer(text, fmt) == want
    span = answer_span(text, fmt)
    assert (span is None) == (want is None)


@pytest.mark.parametrize("answer, reference, same", [
    ("8", 8, True), ("8.0", "8", True), (r"\frac{1}{2}", "0.5", True), ("1,000", "1000", True),
    ("$18", "18", True), ("9", "8", False), (None, "8", False), ("8", None, False),
    ("twelve", "twelve", True), ("x", "y", False),
])
def test_equivalence_is_mathematical(answer, reference, same):
    assert answers_equivalent(answer, reference) is same


def test_a_real_task_grades_answer_is_and_nested_boxes():
    """The old default graded only \\boxed{[^{}]*}: 'The answer is: 8' and \\boxed{\\frac12} were wrong."""
    task = regex_task("t", [("q", "8")])
    p = TaskProblem(id="p", prompt="q", answer="8")
    assert task.grade(p, "Tom has 5 + 3 apples. The answer is: 8")
    assert task.grade(TaskProblem(id="h", prompt="q", answer="0.5"), r"Half: \boxed{\frac{1}{2}}")
    assert not task.grade(p, "The answer is: 9")
    assert task.answer_format == "auto"
    custom = regex_task("t", answer_pattern=r"ANSWER=(\d+)")
    assert custom.grade(p, "ANSWER=8 (not 9)") and custom.extract_answer("9 then ANSWER=8") == "8"
    with pytest.raises(TwinlensError, match="group"):
        regex_task("t", answer_pattern=r"\d+")
    with pytest.raises(TwinlensError, match="answer-is"):
        regex_task("t", answer_format="boxxed")


def test_the_organism_keeps_its_exact_grader_and_refuses_answer_options():
    task = organism_task()
    assert task.answer_format == "exact"
    with pytest.raises(TwinlensError, match="problems file"):
        load_task(None, answer_format="answer-is")


def test_no_answer_share_counts_nones():
    assert no_answer_share(["8", None, "3", None]) == {"n": 4, "n_no_answer": 2, "share": 0.5}


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"_{name}", ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_passk_reports_the_share_with_no_answer(tiny_models, tmp_path):
    problems = tmp_path / "sums.jsonl"
    problems.write_text("".join(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n"
                                for a, b in [(1, 2), (3, 4), (2, 2)]))
    out = tmp_path / "passk"
    passk = load_script("passk")
    # The tiny models' character vocabulary has no backslash: '\boxed' never appears, so with
    # --answer-format boxed every completion has no answer and none can be graded correct.
    rc = passk.main(["--base", str(tiny_models["llama"]), "--rl", str(tiny_models["llama_b"]),
                     "--problems", str(problems), "--answer-format", "boxed", "--n-problems", "3",
                     "--n-samples", "2", "--max-new-tokens", "6", "--n-boot", "20", "--out", str(out)])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["answer_format"] == "boxed"
    for m in ("base", "llama_b"):
        assert results["no_answer"][m] == {"n": 6, "n_no_answer": 6, "share": 1.0}
    assert "no answer found (answer format `boxed`): base 6/6 (100%)" in (out / "summary.md").read_text()
    # last-number finds the random digits the model writes: the share is what the rows say.
    out2 = tmp_path / "passk2"
    assert passk.main(["--base", str(tiny_models["llama"]), "--rl", str(tiny_models["llama_b"]),
                       "--problems", str(problems), "--answer-format", "last-number", "--n-problems", "3",
                       "--n-samples", "2", "--max-new-tokens", "6", "--n-boot", "20", "--out", str(out2)]) == 0
    results = json.loads((out2 / "results.json").read_text())
    rows = [json.loads(line) for line in (out2 / "samples.jsonl").read_text().splitlines()]
    for m in ("base", "llama_b"):
        mine = [r for r in rows if r["model"] == m]
        assert results["no_answer"][m]["n_no_answer"] == sum(r["answer"] is None for r in mine)
        assert all((r["answer"] is None) == (not any(c.isdigit() for c in r["text"])) for r in mine)


def test_samples_no_answer_is_per_model():
    from analyses.grading import samples_no_answer
    from analyses.sampling import SampleRow, Samples

    def row(model, j, answer):
        return SampleRow(model=model, problem_id="p", sample_index=j, prompt_ids=[1], completion_ids=[2],
                         text="", logprobs={}, finished=True, answer=answer)

    s = Samples([row("base", 0, None), row("base", 1, "3"), row("rl", 0, "4")])
    assert samples_no_answer(s) == {"base": {"n": 2, "n_no_answer": 1, "share": 0.5},
                                    "rl": {"n": 1, "n_no_answer": 0, "share": 0.0}}
