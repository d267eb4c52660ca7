"""Probe datasets: activations of every requested layer from an ActivationStore, with
per-token strategy labels that are checked to line up with the stored tokens.

A `ProbeDataset` keeps every stored row of the labelled examples (prompt rows too: the strategy
vectors read the position just before a segment, which can be the last prompt token) and marks
the reasoning rows; probes train and test on the reasoning rows only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from hooks.errors import TwinlensError
from probes.labels import ExampleLabels

__all__ = ["ProbeDataset", "ExampleSplit", "build_dataset", "split_examples", "store_layers"]


@dataclass
class ProbeDataset:
    """Rows of a store with their labels.

    X: `[n_layers, n_rows, d]` activations (float32), `X[i]` is layer `layers[i]`.
    example, position: `[n_rows]` example id and token position of each row.
    reasoning: `[n_rows]` bool, the row lies in its example's reasoning span.
    labels: strategy -> bool `[n_rows]`, the row lies in a segment of that strategy.
    tokens: `[n_rows]` token id of each row (for the token-identity baseline), when known.
    spans: example id -> its `ExampleLabels` (segments in positions).
    model: the store's model key ("base", "rl", ...); model_name / weight_hash: provenance.
    """

    X: Float[Tensor, "n_layers n_rows d"]
    layers: tuple[int, ...]
    example: np.ndarray
    position: np.ndarray
    reasoning: np.ndarray
    labels: dict[str, np.ndarray]
    spans: dict[int, ExampleLabels]
    model: str
    model_name: str = ""
    weight_hash: str = ""
    label_source: str = ""
    tokens: np.ndarray | None = None  # [n_rows] token id of each row (the token baselines read it)
    _row_index: dict[tuple[int, int], int] | None = field(default=None, repr=False)

    @property
    def n_rows(self) -> int:
        return int(self.X.shape[1])

    @property
    def d_model(self) -> int:
        return int(self.X.shape[2])

    @property
    def strategies(self) -> list[str]:
        return sorted(self.labels)

    def y(self, strategy: str) -> np.ndarray:
        if strategy not in self.labels:
            raise TwinlensError(
                f"Strategy {strategy!r} has no labels in this dataset; labelled strategies: "
                f"{self.strategies}."
            )
        return self.labels[strategy]

    def layer_index(self, layer: int) -> int:
        if layer not in self.layers:
            raise TwinlensError(
                f"Layer {layer!r} is not in this dataset (layers {list(self.layers)}); build the "
                "dataset with that layer, or pick one of these."
            )
        return self.layers.index(layer)

    def row(self, example: int, position: int) -> int:
        """Row of (example, position), or -1 when that token was not stored."""
        if self._row_index is None:
            self._row_index = {
                (int(e), int(p)): i for i, (e, p) in enumerate(zip(self.example, self.position, strict=True))
            }
        return self._row_index.get((int(example), int(position)), -1)

    def with_activations(self, X: Tensor, model: str, model_name: str = "", weight_hash: str = ""):
        """The same rows and labels over other activations (e.g. the RL model's)."""
        if X.shape[:2] != self.X.shape[:2]:
            raise TwinlensError(
                f"Activations of shape {tuple(X.shape)} do not match this dataset's "
                f"{tuple(self.X.shape)}."
            )
        return replace(self, X=X, model=model, model_name=model_name, weight_hash=weight_hash)


@dataclass(frozen=True, eq=False)
class ExampleSplit:
    """Train/test split by example: no example has rows on both sides."""

    train_examples: np.ndarray
    test_examples: np.ndarray
    seed: int

    def masks(self, example: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.isin(example, self.train_examples), np.isin(example, self.test_examples)


def split_examples(
    examples: Sequence[int] | np.ndarray, test_fraction: float = 0.25, seed: int = 0
) -> ExampleSplit:
    """Random split of the example ids (unique values of `examples`), seeded."""
    ids = np.unique(np.asarray(examples))
    if not 0 < test_fraction < 1:
        raise TwinlensError(f"test_fraction must be in (0, 1), got {test_fraction}.")
    if ids.size < 2:
        raise TwinlensError(
            f"A train/test split by example needs at least 2 examples, got {ids.size}; "
            "capture more examples."
        )
    rng = np.random.default_rng(seed)
    perm = rng.permutation(ids)
    n_test = min(max(1, round(test_fraction * ids.size)), ids.size - 1)
    return ExampleSplit(np.sort(perm[n_test:]), np.sort(perm[:n_test]), seed)


def store_layers(store, point: str = "hook_out") -> list[int]:
    """Block indices whose `blocks.L.<point>` is in the store."""
    out = []
    for h in store.hooks:
        parts = h.split(".")
        if len(parts) == 3 and parts[0] == "blocks" and parts[2] == point and parts[1].isdigit():
            out.append(int(parts[1]))
    return sorted(out)


def _labels_for(labels, e: int) -> ExampleLabels:
    try:
        return labels[e]
    except (IndexError, KeyError):
        n = len(labels)
        raise TwinlensError(
            f"The store has rows of example {e} but the labels stop at {n} examples; give one "
            "ExampleLabels per captured example (in capture order), or a dict keyed by example id."
        ) from None


def check_alignment(
    tokens: np.ndarray, example: np.ndarray, position: np.ndarray, labels
) -> None:
    """Raise a TwinlensError naming the first row whose stored token differs from the labels'
    token at that position (or whose position the labels do not cover)."""
    for e in np.unique(example):
        lab = _labels_for(labels, int(e))
        rows = np.nonzero(example == e)[0]
        pos = position[rows]
        ids = np.asarray(lab.token_ids, dtype=np.int64)
        out = pos >= ids.size
        if out.any():
            r = rows[np.argmax(out)]
            raise TwinlensError(
                f"Labels do not line up with the store: example {int(e)} has a stored row at "
                f"position {int(position[r])}, but its labels cover only {ids.size} tokens. Label "
                "the exact token ids that were captured (store.example_tokens(i))."
            )
        bad = ids[pos] != tokens[rows]
        if bad.any():
            r = rows[np.argmax(bad)]
            p = int(position[r])
            raise TwinlensError(
                f"Labels do not line up with the store: example {int(e)}, position {p} holds "
                f"token {int(tokens[r])} in the store but {int(ids[p])} in the labels. The labels "
                "were made from different text or tokenization than the capture; label the token "
                "ids that were captured (store.example_tokens(i)), in capture order."
            )


def build_dataset(
    store,
    labels: Sequence[ExampleLabels] | Mapping[int, ExampleLabels],
    model: str | None = None,
    layers: Sequence[int] | None = None,
    point: str = "hook_out",
    strategies: Sequence[str] | None = None,
) -> ProbeDataset:
    """(X per layer, per-token labels) from an ActivationStore and labels.

    labels: one `ExampleLabels` per captured example (capture order) or a dict by example id;
        their token ids must equal the stored tokens at every stored position (checked).
    model: the store's model key ("base" / "rl" in a paired store; None if it holds one).
    layers: block indices (default: every `blocks.L.<point>` in the store).
    strategies: which strategies get a label column (default: every one seen in the labels).
    """
    available = store_layers(store, point)
    if layers is None:
        layers = available
    layers = [int(layer) for layer in layers]
    missing = [layer for layer in layers if layer not in available]
    if missing:
        raise TwinlensError(
            f"Layer(s) {missing} do not exist in this store: it holds blocks.L.{point} for L in "
            f"{available}. Pick from those, or capture those layers."
        )
    if not layers:
        raise TwinlensError(f"The store holds no blocks.L.{point} activations; capture them first.")
    tokens = store.tokens.numpy().astype(np.int64)
    example = store.example_index.numpy().astype(np.int64)
    position = store.position.numpy().astype(np.int64)
    check_alignment(tokens, example, position, labels)

    ex_ids = np.unique(example)
    spans = {int(e): _labels_for(labels, int(e)) for e in ex_ids}
    if strategies is None:
        strategies = sorted({s.strategy for lab in spans.values() for s in lab.spans})
    reasoning = np.zeros(tokens.size, dtype=bool)
    y = {s: np.zeros(tokens.size, dtype=bool) for s in strategies}
    for e, lab in spans.items():
        rows = np.nonzero(example == e)[0]
        pos = position[rows]
        reasoning[rows] = (pos >= lab.reasoning_start) & (pos < lab.reasoning_end)
        for s in strategies:
            y[s][rows] = lab.token_mask(s)[pos]

    X = torch.stack([store.read(f"blocks.{layer}.{point}", model=model).float() for layer in layers])
    key = model if model is not None else store.model_keys[0]
    info = store.models.get(key, {}) if hasattr(store, "models") else {}
    sources = sorted({lab.source for lab in spans.values()})
    return ProbeDataset(
        X=X,
        layers=tuple(layers),
        example=example,
        position=position,
        reasoning=reasoning,
        labels=y,
        spans=spans,
        model=key,
        model_name=str(info.get("name", key)),
        weight_hash=str(info.get("weight_hash", "")),
        label_source=",".join(sources),
        tokens=tokens,
    )
