"""Per-layer sweep with controls, transfer and the pre-existence test, on a planted signal."""

import numpy as np
import pytest
import torch
from test_probes_data import FakeStore

from hooks.errors import TwinlensError
from probes.datasets import build_dataset, split_examples
from probes.labels import ExampleLabels, TokenSpan
from probes.metrics import auroc, bootstrap_metrics
from probes.preexistence import preexistence_test
from probes.sweep import shuffle_labels, sweep_layers, transfer_probe
from probes.vectors import diff_of_means_vectors, vector_cosines


def _planted(n_examples=60, length=40, d=16, strength=3.0, seed=0):
    """Layer 1 carries direction u inside every segment of "a" and one position before it
    (the model 'anticipates'); layer 0 is pure noise. The RL activations are the base ones
    plus fresh noise, so a base probe should transfer."""
    rng = np.random.default_rng(seed)
    seqs = [list(rng.integers(1, 20, size=length)) for _ in range(n_examples)]
    labels = []
    for ids in seqs:
        spans = []
        for start in rng.choice(np.arange(6, length - 6, 8), size=2, replace=False):
            spans.append(TokenSpan("a", int(start), int(start) + 4))
        labels.append(ExampleLabels(tuple(ids), tuple(sorted(spans, key=lambda s: s.start)), 4, length))
    store = FakeStore(seqs, d=d, layers=(0, 1), seed=seed)
    u = torch.zeros(d)
    u[0] = 1.0
    for e, lab in enumerate(labels):
        for s in lab.spans:
            rows = e * length + np.arange(s.start - 1, s.end)
            for m in ("base", "rl"):
                store.acts[(m, "blocks.1.hook_out")][rows] += strength * u
    store.acts[("rl", "blocks.1.hook_out")] += 0.3 * torch.randn(n_examples * length, d)
    return store, labels


def test_auroc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    y = rng.random(300) < 0.3
    s = np.round(rng.normal(size=(2, 300)) + y, 1)  # many ties
    np.testing.assert_allclose(auroc(s, y), [roc_auc_score(y, x) for x in s], atol=1e-12)


def test_bootstrap_ci_covers_the_point_and_is_seeded():
    rng = np.random.default_rng(2)
    y = rng.random(400) < 0.3
    s = rng.normal(size=(1, 400)) + y
    g = np.repeat(np.arange(40), 10)
    a = bootstrap_metrics(s, y, g, n_bootstrap=300, seed=5)
    b = bootstrap_metrics(s, y, g, n_bootstrap=300, seed=5)
    np.testing.assert_array_equal(a["auroc_ci"], b["auroc_ci"])
    lo, hi = a["auroc_ci"][0]
    assert lo < a["auroc"][0] < hi and hi - lo < 0.2


def test_sweep_finds_the_planted_layer_and_the_shuffled_control_stays_at_chance():
    store, labels = _planted()
    ds = build_dataset(store, labels, model="base")
    res = sweep_layers(ds, "a", n_bootstrap=300, seed=0)
    assert res.best_layer == 1
    assert res.auroc[1] > 0.9 and res.auroc_ci[1, 0] > 0.85
    # Layer 0 is noise: its CI must contain chance.
    assert res.auroc_ci[0, 0] < 0.5 < res.auroc_ci[0, 1]
    # The shuffled control learns nothing real: its AUROC is chance up to sampling noise (its
    # bootstrap CI half-width here is ~0.05; 0.1 leaves two of them).
    assert np.all(np.abs(res.control_auroc - 0.5) < 0.1)
    # The reported control is the mean over the n_controls (default 3) shuffles.
    assert res.control_auroc_each.shape == (3, 2)
    np.testing.assert_allclose(res.control_auroc, res.control_auroc_each.mean(0))
    assert res.selectivity[1] > 0.3
    assert 0.7 < res.majority_accuracy < 0.95  # 8 of 36 reasoning tokens are positive
    d = res.to_dict()
    assert d["best_layer"] == 1 and len(d["auroc"]) == 2 and d["control"] == "global"


def test_within_example_shuffle_keeps_each_trace_positive_count():
    y = np.array([1, 0, 0, 1, 1, 0, 0, 0], bool)
    g = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    z = shuffle_labels(y, g, "within_example", seed=0)
    assert z[:4].sum() == 2 and z[4:].sum() == 1
    with pytest.raises(TwinlensError, match="global"):
        shuffle_labels(y, g, "sideways", 0)


def test_base_probe_transfers_to_rl_on_the_same_tokens_and_vectors_agree():
    store, labels = _planted()
    base = build_dataset(store, labels, model="base")
    rl = build_dataset(store, labels, model="rl")
    split = split_examples(base.example, seed=0)
    t = transfer_probe(base, rl, "a", split, n_bootstrap=200)
    assert t.train_model == "base" and t.test_model == "rl"
    assert t.auroc[1] > 0.9
    cos = vector_cosines(diff_of_means_vectors(base, "a"), diff_of_means_vectors(rl, "a"))
    assert cos[1] > 0.9  # the planted direction dominates both vectors at layer 1
    other = build_dataset(store, labels, model="rl", layers=[1])
    with pytest.raises(TwinlensError, match="same rows and layers"):
        transfer_probe(base, other, "a", split)


def test_single_class_strategy_is_refused_in_the_sweep():
    store, labels = _planted(n_examples=10)
    ds = build_dataset(store, labels, model="base", strategies=["a", "never"])
    with pytest.raises(TwinlensError, match="no token of strategy 'never'"):
        sweep_layers(ds, "never", n_bootstrap=10)
    with pytest.raises(TwinlensError, match="labelled strategies"):
        ds.y("unknown")


def test_base_vector_marks_rl_strategy_starts_before_emission():
    store, labels = _planted()
    base = build_dataset(store, labels, model="base")
    rl = build_dataset(store, labels, model="rl")
    split = split_examples(base.example, seed=0)
    vec = diff_of_means_vectors(base, "a", examples=split.train_examples)[1]
    sweep = sweep_layers(base, "a", split=split, n_bootstrap=50)
    res = preexistence_test(rl, "a", vec, sweep.probe, split, n_bootstrap=300)
    assert res.read_model == "rl" and res.n_segments == 2 * len(split.test_examples)
    # The planted signal starts one position before the segment.
    assert res.auroc_at(-1) > 0.9 and res.auroc_at(-3) < 0.7
    assert res.rises_before_emission
