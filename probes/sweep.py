"""Per-layer probe sweep with its controls, and base <-> RL transfer.

For one strategy, `sweep_layers` fits a `LinearProbe` on every layer at once (reasoning rows of
the training examples), and reports on the held-out examples, per layer, accuracy and AUROC with
bootstrap CIs over examples, beside two controls:
- shuffled-label control probes (3 shuffles by default, AUROC averaged), fitted the same way
  on labels permuted across all training tokens (`control="global"`, default: breaks every link between activation and label, so its
  AUROC measures what the probe can fit from noise, expected 0.5) or permuted within each
  training example (`control="within_example"`: keeps each trace's share of positives, so the
  control can still learn which traces use the strategy; a stricter, token-level control);
  selectivity = real AUROC - control AUROC;
- the majority baseline (predict the training majority class; AUROC 0.5 by definition).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hooks.errors import TwinlensError
from probes.datasets import ExampleSplit, ProbeDataset, split_examples
from probes.linear_probe import LinearProbe
from probes.metrics import bootstrap_metrics

__all__ = [
    "ProbeSweep",
    "TransferResult",
    "sweep_layers",
    "sweep_strategies",
    "transfer_probe",
    "shuffle_labels",
]


@dataclass
class ProbeSweep:
    """Result of a per-layer sweep for one strategy on one model (arrays are per layer)."""

    strategy: str
    model: str
    layers: list[int]
    accuracy: np.ndarray
    accuracy_ci: np.ndarray  # [L, 2]
    auroc: np.ndarray
    auroc_ci: np.ndarray  # [L, 2]
    control_accuracy: np.ndarray
    control_auroc: np.ndarray
    control_auroc_ci: np.ndarray  # [L, 2] (mean over shuffles of each shuffle's bootstrap CI)
    majority_accuracy: float
    n_train_tokens: int
    n_test_tokens: int
    n_test_examples: int
    positive_rate: float  # share of positive tokens among the held-out tokens
    control: str
    C: float
    class_weight: str | None
    n_bootstrap: int
    seed: int
    probe: LinearProbe = field(repr=False)
    control_probe: LinearProbe = field(repr=False)  # the first shuffle's probe
    control_auroc_each: np.ndarray | None = None  # [n_controls, L]

    @property
    def selectivity(self) -> np.ndarray:
        return self.auroc - self.control_auroc

    @property
    def best_layer(self) -> int:
        """Layer with the highest held-out AUROC (the first one on ties)."""
        return int(self.layers[int(np.argmax(self.auroc))])

    def at(self, layer: int) -> dict[str, float]:
        i = self.layers.index(layer)
        return {
            "auroc": float(self.auroc[i]),
            "control_auroc": float(self.control_auroc[i]),
            "accuracy": float(self.accuracy[i]),
        }

    def to_dict(self) -> dict:
        return {
            "strategy": self.strategy,
            "model": self.model,
            "layers": list(self.layers),
            "best_layer": self.best_layer,
            "auroc": self.auroc.tolist(),
            "auroc_ci": self.auroc_ci.tolist(),
            "accuracy": self.accuracy.tolist(),
            "accuracy_ci": self.accuracy_ci.tolist(),
            "control_auroc": self.control_auroc.tolist(),
            "control_auroc_ci": self.control_auroc_ci.tolist(),
            "control_auroc_each": None if self.control_auroc_each is None else self.control_auroc_each.tolist(),
            "control_accuracy": self.control_accuracy.tolist(),
            "selectivity": self.selectivity.tolist(),
            "majority_accuracy": self.majority_accuracy,
            "n_train_tokens": self.n_train_tokens,
            "n_test_tokens": self.n_test_tokens,
            "n_test_examples": self.n_test_examples,
            "positive_rate": self.positive_rate,
            "control": self.control,
            "C": self.C,
            "class_weight": self.class_weight,
            "n_bootstrap": self.n_bootstrap,
            "seed": self.seed,
        }


@dataclass
class TransferResult:
    """A probe trained on one model's activations, tested on another's (same tokens)."""

    strategy: str
    train_model: str
    test_model: str
    layers: list[int]
    auroc: np.ndarray
    auroc_ci: np.ndarray
    accuracy: np.ndarray

    def to_dict(self) -> dict:
        return {
            "strategy": self.strategy,
            "train_model": self.train_model,
            "test_model": self.test_model,
            "layers": list(self.layers),
            "auroc": self.auroc.tolist(),
            "auroc_ci": self.auroc_ci.tolist(),
            "accuracy": self.accuracy.tolist(),
        }


def shuffle_labels(y: np.ndarray, groups: np.ndarray, how: str, seed: int) -> np.ndarray:
    """Permute labels across all tokens ("global") or within each group ("within_example")."""
    rng = np.random.default_rng(seed)
    if how == "global":
        return y[rng.permutation(y.size)]
    if how == "within_example":
        out = y.copy()
        for g in np.unique(groups):
            idx = np.nonzero(groups == g)[0]
            out[idx] = y[rng.permutation(idx)]
        return out
    raise TwinlensError(f"control must be 'global' or 'within_example', got {how!r}.")


def _train_test_rows(ds: ProbeDataset, strategy: str, split: ExampleSplit):
    train, test = split.masks(ds.example)
    train &= ds.reasoning
    test &= ds.reasoning
    y = ds.y(strategy)
    for name, rows in (("training", train), ("held-out", test)):
        classes = np.unique(y[rows])
        if classes.size < 2:
            what = "no token of" if not classes.size or not classes[0] else "only tokens of"
            raise TwinlensError(
                f"The {name} examples hold {what} strategy {strategy!r} ({int(rows.sum())} "
                "reasoning tokens); a probe needs both classes on both sides. Use more examples, "
                "another split seed, or a strategy that occurs in the data."
            )
    return np.nonzero(train)[0], np.nonzero(test)[0]


def sweep_layers(
    ds: ProbeDataset,
    strategy: str,
    split: ExampleSplit | None = None,
    C: float = 1.0,
    class_weight: str | None = None,
    control: str = "global",
    n_bootstrap: int = 1000,
    seed: int = 0,
    max_iter: int = 1000,
    n_controls: int = 3,
) -> ProbeSweep:
    """Fit the probe and its shuffled-label controls on every layer of `ds` (one batched run)
    and score them on the held-out examples. See the module docstring."""
    return sweep_strategies(ds, [strategy], split, C, class_weight, control, n_bootstrap, seed,
                            max_iter, n_controls)[strategy]


def sweep_strategies(
    ds: ProbeDataset,
    strategies: list[str],
    split: ExampleSplit | None = None,
    C: float = 1.0,
    class_weight: str | None = None,
    control: str = "global",
    n_bootstrap: int = 1000,
    seed: int = 0,
    max_iter: int = 1000,
    n_controls: int = 3,
) -> dict[str, ProbeSweep]:
    """`sweep_layers` for several strategies at once: every strategy's probe and its shuffled
    control, on every layer, are fitted in ONE batched L-BFGS run (a multilabel `LinearProbe`:
    the activations are read once per iteration for all of them). Each strategy's real probe is
    the one it gets when fitted alone (independent problems, same objective; equal up to the
    solver's tolerance); its controls' shuffles are seeded by its index in `strategies`, so they
    match a lone fit only for the first strategy.

    n_controls: shuffles per strategy. On activations that cluster by token type, one shuffled
    control's AUROC scatters well away from 0.5 (its noise-fitted direction picks up whatever
    token mix the shuffle happened to give the positives: 0.42-0.63 in runs/demo/probe), so the
    reported control AUROC is the mean over `n_controls` shuffles; each one is kept
    (`control_auroc_each`)."""
    split = split if split is not None else split_examples(ds.example, seed=seed)
    rows = {s: _train_test_rows(ds, s, split) for s in strategies}
    tr, te = rows[strategies[0]]  # the same rows for every strategy: reasoning rows of each side
    real = [ds.y(s)[tr] for s in strategies]
    if n_controls < 1:
        raise TwinlensError(f"n_controls must be >= 1, got {n_controls}.")
    S = len(strategies)
    # columns: S strategies, then shuffle r of strategy i at S + r * S + i
    fake = [shuffle_labels(real[i], ds.example[tr], control, seed + 1 + i + 1000 * r)
            for r in range(n_controls) for i in range(S)]
    Y = np.stack(real + fake, axis=1)
    probe = LinearProbe(C=C, class_weight=class_weight, max_iter=max_iter).fit(ds.X[:, tr], Y)
    scores = probe.decision_function(ds.X[:, te])  # [L, n_test, 2S]
    groups = ds.example[te]
    out = {}
    for i, s in enumerate(strategies):
        y_te = ds.y(s)[te]
        m_real = bootstrap_metrics(scores[..., i], y_te, groups, n_bootstrap, seed)
        fakes = [bootstrap_metrics(scores[..., S + r * S + i], y_te, groups, n_bootstrap, seed)
                 for r in range(n_controls)]
        m_fake = {k: np.mean([f[k] for f in fakes], axis=0) for k in ("auroc", "auroc_ci", "accuracy")}
        majority = bool(real[i].mean() >= 0.5)
        out[s] = ProbeSweep(
            strategy=s,
            model=ds.model,
            layers=list(ds.layers),
            accuracy=m_real["accuracy"],
            accuracy_ci=m_real["accuracy_ci"],
            auroc=m_real["auroc"],
            auroc_ci=m_real["auroc_ci"],
            control_accuracy=m_fake["accuracy"],
            control_auroc=m_fake["auroc"],
            control_auroc_ci=m_fake["auroc_ci"],
            majority_accuracy=float((y_te == majority).mean()),
            n_train_tokens=int(tr.size),
            n_test_tokens=int(te.size),
            n_test_examples=int(np.unique(groups).size),
            positive_rate=float(y_te.mean()),
            control=control,
            C=C,
            class_weight=class_weight,
            n_bootstrap=n_bootstrap,
            seed=seed,
            probe=probe.binary_probe(i),
            control_probe=probe.binary_probe(S + i),
            control_auroc_each=np.stack([f["auroc"] for f in fakes]),
        )
    return out


def transfer_probe(
    train_ds: ProbeDataset,
    test_ds: ProbeDataset,
    strategy: str,
    split: ExampleSplit,
    probe: LinearProbe | None = None,
    C: float = 1.0,
    class_weight: str | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> TransferResult:
    """Train on `train_ds`'s training examples (or reuse a fitted all-layer `probe`), test on
    `test_ds`'s held-out examples. The two datasets must hold the same rows (a paired store)."""
    if not (
        np.array_equal(train_ds.example, test_ds.example)
        and np.array_equal(train_ds.position, test_ds.position)
        and train_ds.layers == test_ds.layers
    ):
        raise TwinlensError(
            "Transfer needs two datasets over the same rows and layers (the base and RL halves "
            "of one paired store, built with the same labels and layers)."
        )
    tr, _ = _train_test_rows(train_ds, strategy, split)
    _, te = _train_test_rows(test_ds, strategy, split)
    y = train_ds.y(strategy)
    if probe is None:
        probe = LinearProbe(C=C, class_weight=class_weight).fit(train_ds.X[:, tr], y[tr])
    m = bootstrap_metrics(
        probe.decision_function(test_ds.X[:, te]), test_ds.y(strategy)[te], test_ds.example[te],
        n_bootstrap, seed,
    )
    return TransferResult(
        strategy=strategy,
        train_model=train_ds.model,
        test_model=test_ds.model,
        layers=list(train_ds.layers),
        auroc=m["auroc"],
        auroc_ci=m["auroc_ci"],
        accuracy=m["accuracy"],
    )
