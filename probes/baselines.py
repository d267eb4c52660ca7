"""Trivial baselines and decision-point probes: what a strategy probe must beat before its AUROC
says anything about the model (Hewitt & Liang 2019, "Designing and Interpreting Probes with
Control Tasks"; RESEARCH.md section 1).

- **Token baseline**: logistic regression on one-hot (current token, previous token, position in the
  completion), no model at all, on the same rows and the same example split as the probe. On the
  organism it reaches held-out AUROC 0.92-0.997 by itself, as high as the best-layer probes.
- **Selectivity** = probe AUROC minus token-baseline AUROC on the same held-out tokens, with a paired
  bootstrap CI over held-out examples (the same resampled examples score both).
- **Random-init model**: the same architecture with freshly initialised weights (seeded), through the
  same capture path: what the architecture and the token embeddings alone carry.
- **Decision-point probes**: from the residual at a *decision point* (a position after which a
  strategy can begin: the end of the prompt, and each sentence / line / step end) predict whether a
  span of strategy S starts at the next token, against the other decision points. This is what "the
  base already carries the decision" means; its own token baseline runs on the same points.

Shapes: ``[L, n, d]`` activations (layers, rows, width); scores ``[L, n]``; labels ``[n]`` bool.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hooks.errors import TwinlensError
from probes.datasets import ExampleSplit, ProbeDataset
from probes.linear_probe import LinearProbe
from probes.metrics import bootstrap_metrics, weighted_auroc
from probes.sweep import shuffle_labels

__all__ = [
    "DEFAULT_SEPARATORS", "DecisionPointResult", "decision_point_positions", "decision_point_probe",
    "paired_auroc_difference", "random_init_model", "token_baseline_scores", "token_features",
]

#: Text that ends a step, sentence or line: a strategy can begin at the next token. The organism's
#: steps end with ";" and its prompt with ":".
DEFAULT_SEPARATORS = (";", ":", ".", "!", "?", "\n")


# ------------------------------------------------------------------ token baseline
def token_features(ds: ProbeDataset, rows: np.ndarray, vocab_size: int, max_position: int = 256):
    """Sparse one-hot features of each row: current token, previous token, position in the
    completion (clipped to ``max_position``; positions before the completion count as 0).
    Returns a scipy CSR matrix ``[len(rows), 2 * vocab_size + max_position + 1]``."""
    from scipy import sparse

    if ds.tokens is None:
        raise TwinlensError("This ProbeDataset has no token ids; build it with probes.datasets.build_dataset.")
    rows = np.asarray(rows, dtype=np.int64)
    cur = ds.tokens[rows]
    prev = np.full(rows.size, vocab_size, dtype=np.int64)  # "no previous token" -> an extra column
    for i, r in enumerate(rows):
        q = ds.row(int(ds.example[r]), int(ds.position[r]) - 1)
        if q >= 0:
            prev[i] = ds.tokens[q]
    start = np.array([ds.spans[int(e)].reasoning_start for e in ds.example[rows]], dtype=np.int64)
    pos = np.clip(ds.position[rows] - start, 0, max_position)
    if cur.size and (cur.max() >= vocab_size or cur.min() < 0):
        raise TwinlensError(f"Token id {int(cur.max())} outside the vocabulary of {vocab_size}.")
    n = rows.size
    cols = np.concatenate([cur, vocab_size + 1 + prev, 2 * vocab_size + 1 + pos])
    data = np.ones(3 * n)
    rix = np.concatenate([np.arange(n)] * 3)
    return sparse.csr_matrix((data, (rix, cols)), shape=(n, 2 * vocab_size + 1 + max_position + 1))


def token_baseline_scores(ds: ProbeDataset, y: np.ndarray, train_rows: np.ndarray, test_rows: np.ndarray,
                          vocab_size: int, C: float = 1.0, class_weight: str | None = "balanced") -> np.ndarray:
    """Decision scores ``[len(test_rows)]`` of a logistic regression on :func:`token_features`
    (scikit-learn, lbfgs), trained on ``train_rows`` with labels ``y[train_rows]``."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(y, dtype=bool)
    if np.unique(y[train_rows]).size < 2:
        raise TwinlensError("The token baseline needs both classes among the training rows.")
    clf = LogisticRegression(C=C, class_weight=class_weight, max_iter=2000)
    clf.fit(token_features(ds, train_rows, vocab_size), y[train_rows])
    return clf.decision_function(token_features(ds, test_rows, vocab_size))


def paired_auroc_difference(score_a: np.ndarray, score_b: np.ndarray, y: np.ndarray, groups: np.ndarray,
                            n_bootstrap: int = 1000, seed: int = 0, ci: float = 0.95) -> tuple[float, tuple[float, float]]:
    """AUROC(a) - AUROC(b) on the same tokens, with a percentile CI from a bootstrap over examples
    (``groups``) that resamples both with the same draws (paired)."""
    s = torch.as_tensor(np.stack([np.asarray(score_a, float), np.asarray(score_b, float)]), dtype=torch.float64)
    yt = torch.as_tensor(np.asarray(y, dtype=bool))
    point = weighted_auroc(s, yt, torch.ones(1, s.shape[1], dtype=torch.float64))[:, 0]
    _, gidx = np.unique(np.asarray(groups), return_inverse=True)
    gidx = torch.as_tensor(gidx)
    n_groups = int(gidx.max()) + 1
    gen = torch.Generator().manual_seed(int(seed))
    draws = torch.randint(n_groups, (n_bootstrap, n_groups), generator=gen)
    counts = torch.zeros(n_bootstrap, n_groups, dtype=torch.float64).scatter_add_(
        1, draws, torch.ones(n_bootstrap, n_groups, dtype=torch.float64))
    W = counts[:, gidx]
    keep = ((W * yt).sum(1) > 0) & ((W * ~yt).sum(1) > 0)
    diffs = weighted_auroc(s, yt, W[keep])  # [2, b]
    d = (diffs[0] - diffs[1]).numpy()
    q = [(1 - ci) / 2 * 100, (1 + ci) / 2 * 100]
    lo, hi = (np.percentile(d, q) if d.size else (math.nan, math.nan))
    return float(point[0] - point[1]), (float(lo), float(hi))


# ------------------------------------------------------------------ random-init control model
def random_init_model(model, folder: str | Path, seed: int = 0) -> Path:
    """Write a model of ``model``'s architecture (its HF config) with freshly initialised weights
    (``torch.manual_seed(seed)``) and its tokenizer to ``folder``; load it with ``hooks.load_model``
    so it goes through the same loading and capture path as the real model."""
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(int(seed))
    fresh = AutoModelForCausalLM.from_config(model.hf.config)
    fresh.save_pretrained(folder, safe_serialization=True)
    model.tokenizer.save_pretrained(folder)
    return folder


# ------------------------------------------------------------------ decision points
def _separator_ids(tokenizer, separators: Sequence[str]) -> set[int]:
    """Token ids whose text, stripped of trailing spaces, ends with a separator."""
    ids = set()
    for tid in range(len(tokenizer)):
        text = tokenizer.decode([tid])
        t = text.rstrip(" ")
        if t and (t[-1] in separators or (text.endswith("\n") and "\n" in separators)):
            ids.add(tid)
    return ids


def decision_point_positions(ds: ProbeDataset, tokenizer=None, separators: Sequence[str] = DEFAULT_SEPARATORS,
                             separator_ids: set[int] | None = None) -> dict[int, np.ndarray]:
    """Decision points of each example: the last prompt token (the first decision) and every
    reasoning token that ends a step, sentence or line, except the last reasoning token (nothing
    follows it). Returns {example id: positions (ascending)}."""
    if ds.tokens is None:
        raise TwinlensError("This ProbeDataset has no token ids; build it with probes.datasets.build_dataset.")
    if separator_ids is None:
        if tokenizer is None:
            raise TwinlensError("Pass the tokenizer (or separator_ids) to find decision points.")
        separator_ids = _separator_ids(tokenizer, separators)
    out = {}
    for e, lab in ds.spans.items():
        toks = lab.token_ids
        first = lab.reasoning_start - 1
        pos = [first] if first >= 0 else []
        pos += [p for p in range(lab.reasoning_start, lab.reasoning_end - 1) if toks[p] in separator_ids]
        out[int(e)] = np.array(sorted(set(pos)), dtype=np.int64)
    return out


@dataclass
class DecisionPointResult:
    """Decision-point probe of one strategy (arrays per layer)."""

    strategy: str
    layers: list[int]
    auroc: np.ndarray
    auroc_ci: np.ndarray  # [L, 2]
    control_auroc: np.ndarray  # shuffled labels, mean over shuffles
    token_baseline_auroc: float
    token_baseline_auroc_ci: tuple[float, float]
    selectivity: float  # best layer's AUROC minus the token baseline's, same held-out points
    selectivity_ci: tuple[float, float]
    best_layer: int
    n_pos: int  # held-out decision points followed by the strategy
    n_neg: int
    n_train: int

    def to_dict(self) -> dict:
        i = self.layers.index(self.best_layer)
        return {
            "strategy": self.strategy, "layers": list(self.layers), "auroc_per_layer": self.auroc.tolist(),
            "auroc_ci_per_layer": self.auroc_ci.tolist(), "control_auroc_per_layer": self.control_auroc.tolist(),
            "layer": self.best_layer, "auroc": float(self.auroc[i]), "ci": [float(x) for x in self.auroc_ci[i]],
            "control_auroc": float(self.control_auroc[i]),
            "token_baseline_auroc": {"value": self.token_baseline_auroc, "ci": list(self.token_baseline_auroc_ci)},
            "selectivity": {"value": self.selectivity, "ci": list(self.selectivity_ci)},
            "n_pos": self.n_pos, "n_neg": self.n_neg, "n_train": self.n_train,
        }


def decision_point_probe(
    ds: ProbeDataset,
    strategies: Sequence[str],
    split: ExampleSplit,
    points: dict[int, np.ndarray],
    vocab_size: int,
    *,
    C: float = 1.0,
    n_controls: int = 3,
    n_bootstrap: int = 500,
    seed: int = 0,
    min_positives: int = 10,
) -> dict[str, DecisionPointResult | str]:
    """For each strategy: a probe per layer on the residual at decision points (``points``), label =
    a span of the strategy starts at the next position; shuffled-label controls; the token baseline
    on the same points; selectivity with a paired bootstrap over held-out examples. Strategies with
    fewer than ``min_positives`` held-out (or training) positives get a string saying so."""
    rows, nxt_pos = [], []
    for e, ps in points.items():
        for p in ps:
            r = ds.row(e, int(p))
            if r >= 0:
                rows.append(r)
                nxt_pos.append((e, int(p) + 1))
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        raise TwinlensError("No decision point found in the stored rows; check the separators.")
    groups = ds.example[rows]
    train_m, test_m = split.masks(groups)
    Y = {}
    for s in strategies:
        starts = {(int(e), sp.start) for e, lab in ds.spans.items() for sp in lab.spans_of(s)}
        Y[s] = np.array([(e, p) in starts for e, p in nxt_pos], dtype=bool)
    out: dict[str, DecisionPointResult | str] = {}
    fit = []
    for s in strategies:
        npos_tr, npos_te = int(Y[s][train_m].sum()), int(Y[s][test_m].sum())
        nneg_tr, nneg_te = int((~Y[s][train_m]).sum()), int((~Y[s][test_m]).sum())
        if min(npos_tr, npos_te, nneg_tr, nneg_te) < min_positives:
            out[s] = (f"too few decision points: {npos_tr}/{npos_te} train/held-out followed by {s}, "
                      f"{nneg_tr}/{nneg_te} not (need {min_positives} each); sample more traces")
        else:
            fit.append(s)
    if not fit:
        return out
    tr, te = np.nonzero(train_m)[0], np.nonzero(test_m)[0]
    real = [Y[s][tr] for s in fit]
    fake = [shuffle_labels(real[i], groups[tr], "global", seed + 1 + i + 1000 * r)
            for r in range(n_controls) for i in range(len(fit))]
    probe = LinearProbe(C=C, class_weight="balanced").fit(ds.X[:, rows[tr]], np.stack(real + fake, axis=1))
    scores = probe.decision_function(ds.X[:, rows[te]])  # [L, n_te, K]
    S = len(fit)
    for i, s in enumerate(fit):
        y_te = Y[s][te]
        m = bootstrap_metrics(scores[..., i], y_te, groups[te], n_bootstrap, seed)
        ctrl = np.mean([bootstrap_metrics(scores[..., S + r * S + i], y_te, groups[te], 0, seed)["auroc"]
                        for r in range(n_controls)], axis=0)
        best = int(np.argmax(m["auroc"]))
        base = token_baseline_scores(ds, _row_labels(ds, rows, Y[s]), rows[tr], rows[te], vocab_size, C=C)
        bm = bootstrap_metrics(base[None], y_te, groups[te], n_bootstrap, seed)
        sel, sel_ci = paired_auroc_difference(scores[best, :, i], base, y_te, groups[te], n_bootstrap, seed)
        out[s] = DecisionPointResult(
            strategy=s, layers=list(ds.layers), auroc=m["auroc"], auroc_ci=m["auroc_ci"], control_auroc=ctrl,
            token_baseline_auroc=float(bm["auroc"][0]), token_baseline_auroc_ci=tuple(float(x) for x in bm["auroc_ci"][0]),
            selectivity=sel, selectivity_ci=sel_ci, best_layer=int(ds.layers[best]),
            n_pos=int(y_te.sum()), n_neg=int((~y_te).sum()), n_train=int(tr.size))
    return out


def _row_labels(ds: ProbeDataset, rows: np.ndarray, y_points: np.ndarray) -> np.ndarray:
    """Labels of decision points spread onto a full-length row vector (False elsewhere)."""
    y = np.zeros(ds.n_rows, dtype=bool)
    y[rows] = y_points
    return y
