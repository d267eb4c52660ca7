"""Token-identity baseline, selectivity and decision-point probes on planted data: the baseline
explains a label that only token identity carries, and the decision-point probe recovers a
direction planted at decision points that no token feature carries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probes.baselines import (
    decision_point_positions,
    decision_point_probe,
    paired_auroc_difference,
    token_baseline_scores,
)
from probes.datasets import ProbeDataset, split_examples
from probes.labels import ExampleLabels, TokenSpan
from probes.metrics import auroc

SEP, VOCAB, D = 1, 12, 64


def planted_dataset(n_examples=160, n_steps=6, signal=3.0, seed=0, token_carries_label=False):
    """Examples of prompt (2 tokens, the last a separator) + n_steps steps of 3 tokens ending in SEP.
    A hidden coin per decision point decides whether strategy "S" spans the next step; the residual
    at that decision point is coin * signal * u + noise (u a fixed unit direction); tokens are random
    digits (2..11), unrelated to the coin, unless ``token_carries_label``: then the first token of an
    S step is always 2 and of other steps never 2 (the label is token identity)."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed + 100)  # never the global stream: other tests move it
    u = torch.nn.functional.normalize(torch.randn(D, generator=torch.Generator().manual_seed(1)), dim=0)
    spans, toks, X_rows, ex, pos = {}, [], [], [], []
    for e in range(n_examples):
        ids = [int(rng.integers(2, VOCAB)), SEP]
        coins = rng.random(n_steps) < 0.4
        sp = []
        for c in coins:
            start = len(ids)
            first = 2 if (token_carries_label and c) else int(rng.integers(3 if token_carries_label else 2, VOCAB))
            ids += [first, int(rng.integers(2, VOCAB)), SEP]
            if c:
                sp.append(TokenSpan("S", start, start + 3))
        n = len(ids)
        lab = ExampleLabels(tuple(ids), tuple(sp), 2, n, source="planted")
        spans[e] = lab
        x = torch.randn(n, D, generator=gen)
        for k, c in enumerate(coins):
            decision = 1 + 3 * k  # the separator just before step k
            x[decision] += float(c) * signal * u
        X_rows.append(x)
        toks += ids
        ex += [e] * n
        pos += list(range(n))
    X = torch.cat(X_rows)[None]  # one layer
    ex, pos, tokens = np.array(ex), np.array(pos), np.array(toks)
    reasoning = np.array([p >= 2 for p in pos])
    y = np.concatenate([spans[e].token_mask("S") for e in range(n_examples)])
    return ProbeDataset(X=X, layers=(0,), example=ex, position=pos, reasoning=reasoning, labels={"S": y},
                        spans=spans, model="base", tokens=tokens)


def test_decision_point_positions_are_prompt_end_and_separators():
    ds = planted_dataset(n_examples=2)
    pts = decision_point_positions(ds, separator_ids={SEP})
    # prompt end (1), then the separators at 4, 7, ..., except the last token (19): nothing follows it
    assert pts[0].tolist() == [1, 4, 7, 10, 13, 16]


def test_decision_point_probe_recovers_a_planted_direction_beyond_token_identity():
    ds = planted_dataset()
    split = split_examples(ds.example, 0.25, seed=0)
    res = decision_point_probe(ds, ["S"], split, decision_point_positions(ds, separator_ids={SEP}), VOCAB,
                               n_bootstrap=200)["S"]
    d = res.to_dict()
    # signal 3 sd along u vs unit noise: a linear readout separates the coins almost perfectly
    assert d["auroc"] > 0.9 and d["ci"][0] > 0.8
    # shuffled labels: chance, up to the chance alignment of a noise-fitted direction with u
    # (|cos| ~ 1/sqrt(64) = 0.12 in 64 dims, against a 3-sd signal)
    assert abs(d["control_auroc"] - 0.5) < 0.15
    # token identity and position carry nothing about the coin here
    assert abs(d["token_baseline_auroc"]["value"] - 0.5) < 0.1
    assert d["selectivity"]["ci"][0] > 0.3


def test_decision_point_probe_finds_nothing_without_a_planted_direction():
    ds = planted_dataset(signal=0.0)
    split = split_examples(ds.example, 0.25, seed=0)
    d = decision_point_probe(ds, ["S"], split, decision_point_positions(ds, separator_ids={SEP}), VOCAB,
                             n_bootstrap=200)["S"].to_dict()
    assert d["ci"][0] < 0.5 < d["ci"][1] or abs(d["auroc"] - 0.5) < 0.08
    assert d["selectivity"]["ci"][0] < 0.05


def test_token_baseline_explains_a_label_that_token_identity_carries():
    ds = planted_dataset(signal=0.0, token_carries_label=True)
    split = split_examples(ds.example, 0.25, seed=0)
    tr_m, te_m = split.masks(ds.example)
    tr, te = np.nonzero(tr_m & ds.reasoning)[0], np.nonzero(te_m & ds.reasoning)[0]
    y = ds.labels["S"]
    s = token_baseline_scores(ds, y, tr, te, VOCAB)
    # token identity names 2 of the 3 tokens of an S step exactly (its first token is 2, the second
    # follows a 2); its closing separator is at chance: AUROC ~ 2/3 * 1 + 1/3 * 0.5-0.8 ~ 0.85-0.93
    assert auroc(s, y[te]) > 0.85


def test_paired_difference_is_zero_for_identical_scores_and_detects_a_gap():
    rng = np.random.default_rng(0)
    y = rng.random(400) < 0.5
    groups = np.repeat(np.arange(40), 10)
    good = y + rng.normal(0, 0.5, 400)
    noise = rng.normal(0, 1, 400)
    d, ci = paired_auroc_difference(good, good, y, groups, 200, 0)
    assert d == 0 and ci == (0.0, 0.0)
    d, ci = paired_auroc_difference(good, noise, y, groups, 200, 0)
    assert d == pytest.approx(auroc(good, y) - auroc(noise, y)) and ci[0] > 0.2
