"""One reader for prompts/problems files (issue 17, kind B): every error names the file, the
line and the fix, is raised before any model loads, and a job that grades refuses a file
without reference answers (it used to report pass@k = 0.0 for both models); where answers are
optional, results.json and summary.md say none were given."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from analyses.task import load_task, read_problems_file, read_prompts_file
from hooks import TwinlensError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, content: bytes | str, name: str = "probs.jsonl") -> Path:
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    return p


GOOD = '{"prompt": "1+2:", "answer": "3"}\n'
CASES = [
    # (file content, error words; every one must also name the file and the line)
    (GOOD + '{"prompt": "caf\xe9", "answer": "1"}\n'.encode("latin-1").decode("latin-1"), None),
    (GOOD.encode() + '{"prompt": "caf\xe9"}\n'.encode("latin-1"), r"line 2: not UTF-8 text .*Save the file as UTF-8"),
    (GOOD + "\n" + '{"prompt": "4+4:", "answer": 8\n', r"line 3: not valid JSON .*one JSON object a line"),
    (GOOD + '{"question": "2+2:", "answer": "4"}\n', r"line 2: no \"prompt\" field \(it has \['answer', 'question'\]\)"),
    (GOOD + '{"prompt": 123, "answer": "4"}\n', r"line 2: \"prompt\" must be a string, got int 123"),
    (GOOD + '{"prompt": [{"role": "user", "content": "hi"}], "answer": "4"}\n',
     r"line 2: \"prompt\" must be a string, got list .*apply the chat template"),
    (GOOD + '{"prompt": "2+2:", "answer": {"value": 4}}\n', r"line 2: \"answer\" must be a string or a number"),
    (GOOD + '{"prompt": "2+2:", "answer": NaN}\n', r"line 2: \"answer\" must be a string or a number"),
    (GOOD + '{"prompt": "   ", "answer": "4"}\n', r"line 2: \"prompt\" is empty"),
    (GOOD + GOOD, r"line 2: the same prompt as line 1"),
    (GOOD + '["1+2:", "3"]\n', r"line 2: a JSON list, not an object"),
    ("\n\n", r"holds no problems"),
]


@pytest.mark.parametrize("content, words", CASES[1:], ids=[w.split(":")[0][:30] for _, w in CASES[1:]])
def test_a_bad_problems_file_names_file_line_and_fix(tmp_path, content, words):
    path = write(tmp_path, content)
    with pytest.raises(TwinlensError, match=words) as exc:
        read_problems_file(path)
    assert str(path) in str(exc.value)


def test_a_good_file_reads_with_line_numbers_past_blank_lines(tmp_path):
    path = write(tmp_path, '\n{"prompt": "1+2:", "answer": "3"}\n\n{"prompt": "2+2:", "answer": 4, "gold": "x"}\n')
    rows = read_problems_file(path, need_answers=True)
    assert [(r.line, r.prompt, r.answer) for r in rows] == [(2, "1+2:", "3"), (4, "2+2:", 4)]
    assert rows[1].fields["gold"] == "x"


def test_missing_file_or_folder_is_named(tmp_path):
    with pytest.raises(TwinlensError, match="does not exist"):
        read_problems_file(tmp_path / "nope.jsonl")
    with pytest.raises(TwinlensError, match="is a folder"):
        read_problems_file(tmp_path)


def test_a_grading_job_refuses_a_file_without_answers(tmp_path):
    path = write(tmp_path, '{"prompt": "1+2:"}\n{"prompt": "2+2:", "answer": "4"}\n{"prompt": "3+3:"}\n')
    with pytest.raises(TwinlensError, match=r"2 of 3 rows have no \"answer\" \(lines \[1, 3\]\)"):
        load_task(str(path))
    task = load_task(str(path), need_answers=False)
    assert task.has_answers is False and len(task.problems(3)) == 3
    assert load_task(str(write(tmp_path, GOOD, "ok.jsonl"))).has_answers is True


def test_a_sample_without_a_reference_answer_is_not_graded_rather_than_wrong(tmp_path):
    from analyses.sampling import _annotate, SampleRow  # noqa: I001

    task = load_task(str(write(tmp_path, '{"prompt": "1+2:"}\n')), need_answers=False)
    task.char_tokens = True  # one token per character: no tokenizer needed to map spans
    text = "\\boxed{3}"
    row = SampleRow("m", "p", 0, [1], list(range(len(text))), text, {}, True)
    _annotate(row, task.problems(1)[0], task, tokenizer=None)
    assert row.correct is None and row.answer == "3"


def test_prompts_text_file_reader_checks_utf8_and_emptiness(tmp_path):
    assert read_prompts_file(write(tmp_path, "a\n\nb\nc\n", "p.txt"), 2) == ["a", "b"]
    with pytest.raises(TwinlensError, match=r"p2.txt, line 3: not UTF-8"):
        read_prompts_file(write(tmp_path, b"a\nb\n\xff\xfe\n", "p2.txt"))
    with pytest.raises(TwinlensError, match="holds no prompts"):
        read_prompts_file(write(tmp_path, "\n \n", "p3.txt"))
    with pytest.raises(TwinlensError, match=r"line 1: \"prompt\" must be a string"):
        read_prompts_file(write(tmp_path, '{"prompt": ["x"]}\n', "p4.jsonl"))


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"_problems_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def no_model_loading(monkeypatch):
    import transformers

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the problems file was checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


@pytest.mark.parametrize("script, content, words", [
    ("passk", '{"prompt": "1+2:"}\n', "have no \"answer\""),
    ("passk", '{"prompt": "1+2:", "answer": {"v": 3}}\n', "must be a string or a number"),
    ("calibrate", '{"prompt": "1+2:"}\n', "have no \"answer\""),
    ("route", '{"prompt": "1+2:"}\n', "have no \"answer\""),
    ("steer", '{"prompt": "1+2:"}\n', "have no \"answer\""),
    ("probe", '{"prompt": "1+2:"}\n', "have no \"answer\""),
    ("formats", '{"prompt": "1+2:"}\n', "have no \"answer\""),
    ("scaling", '{"prompt": "1+2:"}\n', "have no \"answer\""),
    ("mechanism", '{"prompt": "1+2:"}\n', "have no \"answer\""),
    ("drift", b'{"prompt": "1+2:"}\n\xff\n', "line 2: not UTF-8"),
    ("mi_peaks", '{"prompt": "1+2:", "answer": "3"}\n', "no 'gold' field"),
    ("capture", b'\xff\n', "line 1: not UTF-8"),
])
def test_scripts_refuse_bad_problem_files_before_any_model_loads(tmp_path, capsys, no_model_loading,
                                                                  script, content, words):
    path = write(tmp_path, content, "probs.jsonl" if script != "capture" else "prompts.txt")
    flag = "--prompts" if script == "capture" else "--problems"
    rc = _load_script(script).main(["--out", str(tmp_path / "out"), flag, str(path)])
    err = capsys.readouterr().err
    assert rc == 2 and words in err and str(path) in err, err


def test_drift_without_answers_runs_and_says_none_were_given(tmp_path):
    path = write(tmp_path, '{"prompt": "1+2+3+4+5:"}\n{"prompt": "2+2+2+2+2:"}\n')
    out = tmp_path / "drift"
    rc = _load_script("drift").main(["--out", str(out), "--problems", str(path), "--series", "", "--n-problems", "2",
                                     "--n-samples", "1", "--n-boot", "10", "--max-new-tokens", "6"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["answers"].startswith("none given")
    assert "Reference answers: none given" in (out / "summary.md").read_text()
    rows = [json.loads(line) for f in (out / "samples").glob("*.jsonl") for line in f.read_text().splitlines()]
    assert rows and all(r["correct"] is None for r in rows)


@pytest.mark.parametrize("content, words", [
    (b'{"strategies": {"x": "a"}}\n\xff', r"line 2: not UTF-8"),
    ('{"strategies": {"x": "a"},\n  oops}', r"line 2: not valid JSON"),
    ('["x"]', r"needs a 'strategies' object"),
    ('{"strategies": {"x": 5}}', r"strategy 'x' needs a regex or a list of regexes"),
    ('{"strategies": {"x": "(unclosed"}}', "not a valid regular expression"),
])
def test_label_config_errors_are_twinlens_errors_naming_file_and_line(tmp_path, content, words):
    from probes.labels import RegexLabeler

    with pytest.raises(TwinlensError, match=words):
        RegexLabeler.from_json(write(tmp_path, content, "labels.json"))


@pytest.mark.parametrize("script", ["probe", "steer"])
def test_a_bad_labels_file_stops_the_script_before_any_model_loads(tmp_path, capsys, no_model_loading, script):
    labels = write(tmp_path, '{"strategies": {"x": "(unclosed"}}', "labels.json")
    rc = _load_script(script).main(["--out", str(tmp_path / "out"), "--labels", str(labels)])
    assert rc == 2 and "not a valid regular expression" in capsys.readouterr().err


@pytest.mark.parametrize("content, words", [
    (b"compute,score\n1,0.1\n\xff,0.2\n", "line 3: not UTF-8"),
    ("compute,score\n1,0.1\n2,nan\n", "line 3: compute and score must be finite"),
])
def test_scaling_points_file_errors_name_the_line(tmp_path, capsys, content, words):
    rc = _load_script("scaling").main(["--out", str(tmp_path / "out"), "--points",
                                       str(write(tmp_path, content, "points.csv"))])
    assert rc == 2 and words in capsys.readouterr().err
