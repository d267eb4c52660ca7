"""The sampling engine on tiny random-weight Llamas (char tokenizer saved to disk, loaded
through hooks.load_model): determinism by seed, resume gives identical rows, log-probs equal a
teacher-forced recomputation, clear errors for bad input."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict

import pytest
import torch

from analyses.sampling import Samples, sample
from analyses.task import organism_task
from hooks import TwinlensError, load_model

N, MAX_NEW = 3, 10
# Float32 forwards of the same tokens, batched with padding vs alone: the sums run in another
# order, so values agree to ~1e-6 (max 2.4e-7 seen here); 1e-5 on log-probs of size ~3.8
# (ln 45: near uniform over the 45-token vocabulary) is tight.
ATOL = 1e-5


@pytest.fixture(scope="module")
def family(tiny_models):
    return {"base": load_model(tiny_models["llama"]), "rl": load_model(tiny_models["llama_b"])}


@pytest.fixture(scope="module")
def task():
    return organism_task(difficulty=3)


@pytest.fixture(scope="module")
def problems(task):
    return task.problems(4, seed=0)


def _rows(samples: Samples) -> list[dict]:
    return [asdict(r) for r in samples.rows]


def test_same_seed_gives_same_samples_and_another_seed_differs(family, task, problems):
    kw = dict(task=task, max_new_tokens=MAX_NEW, progress=False, temperature=1.0, top_p=1.0)
    a = sample(family["base"], problems, N, seed=3, **kw)
    b = sample(family["base"], problems, N, seed=3, batch_size=5, **kw)  # other batch layout
    c = sample(family["base"], problems, N, seed=4, **kw)
    assert len(a) == len(problems) * N
    assert _rows(a) == _rows(b)
    assert [r.completion_ids for r in a.rows] != [r.completion_ids for r in c.rows]


def test_resume_after_partial_run_and_cut_line_gives_identical_rows(family, task, problems, tmp_path):
    kw = dict(task=task, max_new_tokens=MAX_NEW, progress=False, seed=7)
    full = sample(family, problems, N, out=tmp_path / "full.jsonl", **kw)
    part = tmp_path / "part.jsonl"
    sample(family, problems[:2], N, out=part, **kw)
    # An interrupt in the middle of a write leaves half a line behind.
    with open(part, "a") as fh:
        fh.write('{"model": "base", "problem_id": "cut')
    resumed = sample(family, problems, N, out=part, **kw)
    assert _rows(resumed) == _rows(full)
    on_disk = Samples.load(part)
    assert len(on_disk) == 2 * len(problems) * N  # no row lost or duplicated
    assert sorted(r.key for r in on_disk.rows) == sorted(r.key for r in full.rows)
    # A rerun on a complete file draws nothing and changes nothing.
    before = part.read_bytes()
    again = sample(family, problems, N, out=part, **kw)
    assert part.read_bytes() == before and _rows(again) == _rows(full)


def test_logprobs_equal_teacher_forced_recomputation_under_both_models(family, task, problems):
    s = sample(family, problems, N, task=task, max_new_tokens=MAX_NEW, progress=False, seed=1,
               temperature=1.0, top_p=1.0)
    assert s.models == ["base", "rl"]
    for row in s.rows:
        for label, model in family.items():
            ids = torch.tensor([row.prompt_ids + row.completion_ids])
            with torch.no_grad():
                logp = torch.log_softmax(model.hf(input_ids=ids).logits[0].float(), -1)
            p = len(row.prompt_ids)
            want = [logp[p - 1 + t, tok].item() for t, tok in enumerate(row.completion_ids)]
            assert row.logprobs[label] == pytest.approx(want, abs=ATOL)
        assert row.correct in (True, False) and row.format in (*task.formats, "other")


def test_rows_carry_task_labels_in_token_positions(family, task, problems):
    s = sample(family["base"], problems[:1], 1, task=task, max_new_tokens=MAX_NEW, progress=False)
    row = s.rows[0]
    assert row.prompt_ids == family["base"].encode(problems[0].prompt)
    assert row.reference == problems[0].answer
    assert len(row.token_labels()) == len(row.completion_ids)


def test_pair_with_different_tokenizers_is_refused(tiny_models, family, problems, tmp_path):
    other = tmp_path / "other_tok"
    shutil.copytree(tiny_models["llama_b"], other)
    tok = json.loads((other / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    keys = list(vocab)
    tok["model"]["vocab"] = {k: vocab[keys[(i + 1) % len(keys)]] for i, k in enumerate(keys)}
    (other / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(TwinlensError, match="different tokenizers"):
        sample({"base": family["base"], "rl": load_model(other)}, problems, 1, progress=False)


def test_empty_problem_list_and_bad_n_are_refused(family, problems):
    with pytest.raises(TwinlensError, match="No problems"):
        sample(family, [], 4, progress=False)
    with pytest.raises(TwinlensError, match="n \\(samples per problem\\)"):
        sample(family, problems, 0, progress=False)


def test_resume_with_other_settings_is_refused(family, task, problems, tmp_path):
    out = tmp_path / "s.jsonl"
    sample(family["base"], problems[:1], 1, task=task, max_new_tokens=MAX_NEW, out=out, progress=False)
    with pytest.raises(TwinlensError, match="other settings"):
        sample(family["base"], problems[:1], 1, task=task, max_new_tokens=MAX_NEW, out=out,
               temperature=0.9, progress=False)


def test_char_spans_map_to_the_tokens_they_cover():
    from transformers import AutoTokenizer

    import organism
    from analyses.sampling import char_spans_to_tokens

    tok = AutoTokenizer.from_pretrained(organism.checkpoint_path("base"))
    text = "1+2=03;wait;1+2=03;"
    ids = tok(text)["input_ids"]  # character tokenizer that decodes back to `text`
    assert len(ids) == len(text) and tok.decode(ids) == text
    # "wait;" is characters 7-11; an empty span maps to nothing.
    assert char_spans_to_tokens(tok, ids, [("backtracking", 7, 12), ("x", 0, 0)]) == [["backtracking", 7, 12]]


def test_regex_task_uses_the_kits_default_labeler_for_real_text():
    from analyses.task import regex_task
    from probes.labels import RegexLabeler

    task = regex_task("real", problems=[("What is 2+2?", "4")])
    text = "So 2+2 = 5. Wait, that is wrong. The answer is \\boxed{4}."
    assert task.label_strategies(text) == RegexLabeler.from_json(None).char_spans(text)
    assert any(name == "backtracking" and text[s:e].startswith("Wait") for name, s, e in task.label_strategies(text))
    assert task.grade(task.problems(1, seed=0)[0], text)
