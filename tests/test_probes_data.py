"""Labels, datasets and strategy vectors on hand-made stores (no model needed)."""

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from hooks.errors import TwinlensError
from probes.datasets import build_dataset, split_examples
from probes.labels import (
    ExampleLabels,
    RegexLabeler,
    TokenSpan,
    char_spans_to_token_spans,
    organism_labels,
    task_labeler,
)
from probes.vectors import (
    StrategyVector,
    diff_of_means_vectors,
    load_vectors,
    random_vector_like,
    save_vectors,
)


class FakeStore:
    """The part of ActivationStore that probes read: rows of (example, position, token) and
    one activation matrix per (model, layer)."""

    def __init__(self, seqs, d=6, layers=(0, 1), seed=0, models=("base", "rl")):
        rng = torch.Generator().manual_seed(seed)
        ex, pos, tok = [], [], []
        for e, ids in enumerate(seqs):
            ex += [e] * len(ids)
            pos += list(range(len(ids)))
            tok += list(ids)
        self.example_index = torch.tensor(ex)
        self.position = torch.tensor(pos)
        self.tokens = torch.tensor(tok)
        self.hooks = [f"blocks.{layer}.hook_out" for layer in layers]
        self.model_keys = list(models)
        self.models = {m: {"name": f"toy-{m}", "weight_hash": f"hash-{m}"} for m in models}
        self.acts = {
            (m, h): torch.randn(len(tok), d, generator=rng) for m in models for h in self.hooks
        }

    def read(self, hook, model=None):
        return self.acts[(model or self.model_keys[0], hook)]


def _word_tokenizer(words):
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(sorted(set(words)))}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


# ------------------------------------------------------------------ labels
def test_default_regex_config_labels_the_standard_categories():
    lab = RegexLabeler.from_json()
    assert set(lab.strategies) == {
        "initializing", "deduction", "adding-knowledge", "example-testing",
        "uncertainty-estimation", "backtracking", "verification",
    }
    text = "Okay, let me start. 3 plus 4 is 8. Wait, that is wrong. Let me check: 7. Therefore 7."
    spans = {(s, text[a:b]) for s, a, b in lab.char_spans(text)}
    assert ("initializing", "Okay, let me start.") in spans
    assert ("backtracking", "Wait, that is wrong.") in spans
    assert ("verification", "Let me check: 7.") in spans
    assert ("deduction", "Therefore 7.") in spans


def test_char_spans_become_the_token_positions_that_overlap_them():
    # tokens: "ab" [0,2) " " "cd" [3,5) "e" [5,6)
    offsets = [(0, 2), (3, 5), (5, 6)]
    spans = char_spans_to_token_spans([("x", 3, 6), ("y", 1, 4), ("z", 2, 3)], offsets)
    assert spans == [TokenSpan("x", 1, 3), TokenSpan("y", 0, 2)]  # "z" covers only a space


def test_regex_labels_line_up_with_tokenizer_offsets_after_the_prompt():
    words = "Q : 2 + 2 ? so it is 4 . Wait no , it is 5 .".split()
    tok = _word_tokenizer(words)
    prompt = tok("Q : 2 + 2 ?", add_special_tokens=False)["input_ids"]
    completion = tok("so it is 4 . Wait no , it is 5 .", add_special_tokens=False)["input_ids"]
    labels = RegexLabeler({"backtracking": [r"\bWait\b"]}).label_tokens(
        prompt + completion, tok, reasoning_start=len(prompt)
    )
    (span,) = labels.spans
    decoded = tok.convert_ids_to_tokens(list(labels.token_ids[span.start : span.end]))
    assert decoded == ["Wait", "no", ",", "it", "is", "5", "."]
    assert labels.reasoning_start == len(prompt) and labels.source == "regex:custom"


def test_bad_regex_config_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="not a valid regular expression"):
        RegexLabeler({"backtracking": ["(unclosed"]})
    bad = tmp_path / "labels.json"
    bad.write_text('{"patterns": {}}')
    with pytest.raises(ValueError, match="'strategies' object"):
        RegexLabeler.from_json(bad)


def test_organism_labels_are_character_spans_shifted_by_the_prompt():
    from organism.task import StrategySpan
    from organism.tokenizer import build_tokenizer

    tok = build_tokenizer()
    prompt = tok("3+5:", add_special_tokens=False)["input_ids"]
    completion = tok("3+5=08;#8", add_special_tokens=False)["input_ids"]
    lab = organism_labels(prompt, completion, tok, label_fn=lambda t: [StrategySpan("compute", 0, 7)])
    assert lab.spans == (TokenSpan("compute", 4, 11),)
    assert lab.reasoning_start == 4 and lab.reasoning_end == 13
    np.testing.assert_array_equal(np.nonzero(lab.token_mask("compute"))[0], np.arange(4, 11))


# ------------------------------------------------------------------ datasets
def _toy_labels(seqs, prompt_len=2):
    out = []
    for ids in seqs:
        n = len(ids)
        spans = (TokenSpan("a", prompt_len, prompt_len + 3), TokenSpan("a", n - 3, n - 1))
        out.append(ExampleLabels(tuple(ids), spans, prompt_len, n, source="toy"))
    return out


def test_dataset_rows_carry_per_token_labels_and_reasoning_mask():
    seqs = [[5, 6, 7, 8, 9, 10, 11, 12], [5, 6, 1, 2, 3, 4, 5, 6, 7]]
    store = FakeStore(seqs)
    ds = build_dataset(store, _toy_labels(seqs), model="rl")
    assert ds.X.shape == (2, 17, 6) and ds.layers == (0, 1) and ds.model == "rl"
    assert ds.weight_hash == "hash-rl" and ds.label_source == "toy"
    torch.testing.assert_close(ds.X[1], store.acts[("rl", "blocks.1.hook_out")])
    np.testing.assert_array_equal(ds.y("a")[:8], [0, 0, 1, 1, 1, 1, 1, 0])
    np.testing.assert_array_equal(ds.reasoning[:8], [0, 0, 1, 1, 1, 1, 1, 1])


def test_labels_from_other_tokens_are_refused_with_the_fix():
    seqs = [[5, 6, 7, 8, 9, 10], [5, 6, 1, 2, 3, 4]]
    labels = _toy_labels(seqs)
    shifted = [labels[0], ExampleLabels((5, 6, 1, 9, 3, 4), labels[1].spans, 2, 6)]
    with pytest.raises(TwinlensError, match="example 1, position 3 holds token 2 in the store but 9"):
        build_dataset(FakeStore(seqs), shifted, model="base")
    short = [labels[0], ExampleLabels((5, 6, 1, 2), (TokenSpan("a", 2, 3),), 2, 4)]
    with pytest.raises(TwinlensError, match="labels cover only 4 tokens"):
        build_dataset(FakeStore(seqs), short, model="base")
    with pytest.raises(TwinlensError, match="labels stop at 1 examples"):
        build_dataset(FakeStore(seqs), labels[:1], model="base")


def test_a_layer_that_is_not_stored_is_refused_naming_the_stored_ones():
    seqs = [[5, 6, 7, 8, 9, 10], [5, 6, 1, 2, 3, 4]]
    with pytest.raises(TwinlensError, match=r"Layer\(s\) \[7\] do not exist.*\[0, 1\]"):
        build_dataset(FakeStore(seqs), _toy_labels(seqs), model="base", layers=[0, 7])


def test_split_keeps_every_example_on_one_side():
    ex = np.repeat(np.arange(40), 5)
    split = split_examples(ex, test_fraction=0.25, seed=3)
    assert not set(split.train_examples) & set(split.test_examples)
    assert len(split.test_examples) == 10 and len(split.train_examples) == 30
    tr, te = split.masks(ex)
    assert not (tr & te).any() and (tr | te).all()
    np.testing.assert_array_equal(split_examples(ex, seed=3).test_examples, split.test_examples)


# ------------------------------------------------------------------ vectors
def test_difference_of_means_follows_the_paper_definition_exactly():
    # Independent re-computation with plain loops over the definition in RESEARCH.md s.1.
    rng = np.random.default_rng(0)
    seqs = [list(rng.integers(1, 9, size=30)) for _ in range(3)]
    labels = [
        ExampleLabels(tuple(seqs[0]), (TokenSpan("b", 4, 20), TokenSpan("b", 22, 25)), 3, 30),
        ExampleLabels(tuple(seqs[1]), (TokenSpan("b", 3, 5),), 3, 28),
        ExampleLabels(tuple(seqs[2]), (), 5, 30),
    ]
    store = FakeStore(seqs, d=5, layers=(0, 1, 2))
    ds = build_dataset(store, labels, model="base", strategies=["b"])
    # The paper's (authors' code) common mean: the mean of per-example means of the reasoning span.
    vecs = diff_of_means_vectors(ds, "b", common_mean="example_mean")
    pooled = diff_of_means_vectors(ds, "b")  # the default: every reasoning token weighs the same
    assert [v.layer for v in vecs] == [0, 1, 2] and vecs[0].n_segments == 3
    for li, layer in enumerate((0, 1, 2)):
        A = store.acts[("base", f"blocks.{layer}.hook_out")].double().numpy().reshape(3, 30, 5)
        tokens = np.concatenate([A[e, lab.reasoning_start : lab.reasoning_end] for e, lab in enumerate(labels)])
        segs_p = [A[e, s.start - 1 : min(s.end - 1, s.start + 10)].mean(0) for e, lab in enumerate(labels)
                  for s in lab.spans]
        strat_p, overall_p = np.mean(segs_p, 0), tokens.mean(0)
        expect_p = (strat_p - overall_p) / np.linalg.norm(strat_p - overall_p) * np.linalg.norm(overall_p)
        np.testing.assert_allclose(pooled[li].direction.numpy(), expect_p, rtol=1e-5, atol=1e-6)
        segs = []
        for e, lab in enumerate(labels):
            for s in lab.spans:
                segs.append(A[e, s.start - 1 : min(s.end - 1, s.start + 10)].mean(0))
        strat = np.mean(segs, 0)
        overall = np.mean([A[e, lab.reasoning_start : lab.reasoning_end].mean(0)
                           for e, lab in enumerate(labels)], 0)
        expect = (strat - overall) / np.linalg.norm(strat - overall) * np.linalg.norm(overall)
        np.testing.assert_allclose(vecs[li].direction.numpy(), expect, rtol=1e-5, atol=1e-6)
        assert vecs[li].model_name == "toy-base" and vecs[li].weight_hash == "hash-base"


def test_vectors_round_trip_through_safetensors_with_provenance(tmp_path):
    v = StrategyVector(torch.arange(4.0), layer=2, method="diff_of_means", strategy="backtracking",
                       model_name="base", weight_hash="abc", labels_source="organism",
                       n_segments=12, extra={"window": 10})
    r = random_vector_like(v, seed=1)
    assert r.norm == pytest.approx(v.norm, rel=1e-5) and r.method == "random"
    save_vectors(tmp_path / "v.safetensors", [v, r])
    back = load_vectors(tmp_path / "v.safetensors")
    assert back[0].metadata() == v.metadata() and back[1].metadata() == r.metadata()
    torch.testing.assert_close(back[0].direction, v.direction)
    v.save(tmp_path / "one.safetensors")
    assert StrategyVector.load(tmp_path / "one.safetensors").strategy == "backtracking"


def test_a_vector_of_the_wrong_width_or_layer_is_refused_before_touching_the_model():
    class Shape:
        name, d_model, n_layers = "toy", 8, 2

    v = StrategyVector(torch.ones(6), layer=1, method="diff_of_means", strategy="a")
    with pytest.raises(TwinlensError, match="width 6 but the model 'toy' has d_model 8"):
        v.apply(Shape(), alpha=1.0)
    w = StrategyVector(torch.ones(8), layer=5, method="diff_of_means", strategy="a")
    with pytest.raises(TwinlensError, match="layer 5, but the model has 2 blocks"):
        w.apply(Shape(), alpha=1.0)


def test_task_labeler_takes_the_config_else_the_default_regexes_else_the_task_labels(tmp_path):
    from analyses.task import organism_task
    from organism.tokenizer import build_tokenizer

    task, tok = organism_task(), build_tokenizer()
    prompt = tok("37+5:", add_special_tokens=False)["input_ids"]
    completion = tok("37+5=42;#42", add_special_tokens=False)["input_ids"]  # one organism v2 step
    lab = task_labeler(task)(prompt, completion, tok)
    assert lab.source == task.name and lab.reasoning_start == len(prompt)
    assert lab.spans == organism_labels(prompt, completion, tok).spans and lab.spans
    assert task_labeler(task, regex=True).name == "default_labels"
    cfg = tmp_path / "mine.json"
    cfg.write_text('{"strategies": {"x": ["a"]}}')
    assert task_labeler(task, cfg, regex=True).name == "mine"
