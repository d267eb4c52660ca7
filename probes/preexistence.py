"""Pre-existence test: does the direction found in the BASE model already mark, in the RL
model's activations, the places where the RL model opens a strategy?

Two readings, on held-out examples of a paired store (same tokens for both models), at the
onsets of the strategy (segments not preceded, within 3 positions, by another segment of the
same strategy; a step right after a step is a continuation, not an onset):
1. projection: the base strategy vector, read on RL activations (x . v / |v|) at `start +
   offset` of each onset, against the reasoning positions outside every segment of the strategy
   -> AUROC (bootstrap CI over examples). Offset -1 is the position whose output predicts the
   segment's first token: where the model "decides" to start the strategy.
2. anticipation: the base-trained probe's logit at offsets -3..+1 around each onset (CI over
   examples), beside its mean over reasoning positions outside the strategy. A logit that rises
   before offset 0 means the strategy is represented before its first token is emitted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hooks.errors import TwinlensError
from hooks.validation import bootstrap_indices
from probes.datasets import ExampleSplit, ProbeDataset
from probes.metrics import bootstrap_metrics
from probes.vectors import StrategyVector

__all__ = ["PreexistenceResult", "preexistence_test"]


@dataclass
class PreexistenceResult:
    strategy: str
    layer: int
    vector_model: str  # where the vector / probe were found (base)
    read_model: str  # whose activations were read (rl)
    offsets: list[int]
    projection_auroc: np.ndarray  # [n_offsets]: start+offset vs positions outside the strategy
    projection_auroc_ci: np.ndarray  # [n_offsets, 2]
    probe_score: np.ndarray  # [n_offsets] mean probe logit at start+offset
    probe_score_ci: np.ndarray  # [n_offsets, 2]
    baseline_score: float  # mean probe logit at reasoning positions outside the strategy
    n_segments: int

    def auroc_at(self, offset: int = -1) -> float:
        return float(self.projection_auroc[self.offsets.index(offset)])

    @property
    def rises_before_emission(self) -> bool:
        """The probe logit one position before the segment (offset -1) is above both the
        baseline and its value three positions before (offset -3), CIs not overlapping."""
        i1, i3 = self.offsets.index(-1), self.offsets.index(-3)
        lo = self.probe_score_ci[i1, 0]
        return bool(lo > self.probe_score_ci[i3, 1] and lo > self.baseline_score)

    def to_dict(self) -> dict:
        return {
            "strategy": self.strategy,
            "layer": self.layer,
            "vector_model": self.vector_model,
            "read_model": self.read_model,
            "offsets": list(self.offsets),
            "projection_auroc": self.projection_auroc.tolist(),
            "projection_auroc_ci": self.projection_auroc_ci.tolist(),
            "probe_score": self.probe_score.tolist(),
            "probe_score_ci": self.probe_score_ci.tolist(),
            "baseline_score": self.baseline_score,
            "rises_before_emission": self.rises_before_emission,
            "n_segments": self.n_segments,
        }


def _onsets(ds: ProbeDataset, strategy: str, examples, lookback: int, onsets_only: bool):
    """(example, span) pairs; with `onsets_only`, only spans whose `lookback` preceding
    positions lie outside every span of the strategy (a step right after another step is not
    an onset: its 'before' positions are inside the previous segment)."""
    out = []
    for e in examples:
        lab = ds.spans[int(e)]
        mask = lab.token_mask(strategy)
        for span in lab.spans_of(strategy):
            before = mask[max(0, span.start - lookback) : span.start]
            if not onsets_only or not before.any():
                out.append((int(e), span))
    return out


def _rows_at_offset(ds: ProbeDataset, onsets, offset: int) -> np.ndarray:
    rows = []
    for e, span in onsets:
        r = ds.row(e, span.start + offset)
        if r >= 0:
            rows.append(r)
    return np.unique(np.array(rows, dtype=np.int64))


def preexistence_test(
    read_ds: ProbeDataset,
    strategy: str,
    vector: StrategyVector,
    probe,
    split: ExampleSplit,
    offsets: Sequence[int] = (-3, -2, -1, 0, 1),
    n_bootstrap: int = 1000,
    seed: int = 0,
    vector_model: str = "base",
    onsets_only: bool = True,
) -> PreexistenceResult:
    """Read `vector` (found on the base model) and the base all-layer `probe` on `read_ds`
    (the RL half of the paired store) at its held-out examples (`split.test_examples`).
    onsets_only: use only segments not preceded (within the negative offsets) by another
    segment of the same strategy. See the module docstring."""
    offsets = [int(o) for o in offsets]
    for need in (-3, -1):
        if need not in offsets:
            raise TwinlensError(f"offsets must include {need} (the rise is measured from -3 to -1).")
    li = read_ds.layer_index(vector.layer)
    if vector.direction.shape[0] != read_ds.d_model:
        raise TwinlensError(
            f"The vector has width {vector.direction.shape[0]}, the activations {read_ds.d_model}; "
            "read a vector found on the base model of this pair."
        )
    test = split.test_examples
    in_test = np.isin(read_ds.example, test)
    in_segment = read_ds.y(strategy)
    X = read_ds.X[li].double()
    proj = (X @ vector.unit.double()).numpy()
    coef = np.asarray(probe.coef_)
    icpt = np.asarray(probe.intercept_)
    if coef.ndim != 3 or coef.shape[0] != len(read_ds.layers):
        raise TwinlensError("preexistence_test needs the binary all-layer probe fitted on the base dataset.")
    logit = (X.numpy() @ coef[li, 0] + icpt[li, 0])
    aucs, auc_cis, means, mean_cis, n_seg = [], [], [], [], 0
    base_rows = np.nonzero(in_test & read_ds.reasoning & ~in_segment)[0]
    rng = np.random.default_rng(seed)
    onsets = _onsets(read_ds, strategy, test, max(0, -min(offsets)), onsets_only)
    for off in offsets:
        pos = _rows_at_offset(read_ds, onsets, off)
        if off == 0:
            n_seg = int(pos.size)
        if pos.size == 0:
            raise TwinlensError(
                f"No held-out {strategy!r} onset to test at offset {off}; use more examples."
            )
        # Negatives: reasoning positions outside every segment of the strategy (positions inside
        # a segment carry the strategy by definition; comparing against them says nothing).
        cand = np.union1d(pos, base_rows)
        is_pos = np.isin(cand, pos)
        if is_pos.all():
            raise TwinlensError(f"Every held-out position is a {strategy!r} start; nothing to compare.")
        m = bootstrap_metrics(proj[cand][None], is_pos, read_ds.example[cand], n_bootstrap, seed)
        aucs.append(float(m["auroc"][0]))
        auc_cis.append(m["auroc_ci"][0])
        # Mean probe logit at these positions, bootstrap over examples.
        groups = read_ds.example[pos]
        uniq, inv = np.unique(groups, return_inverse=True)
        sums = np.bincount(inv, weights=logit[pos], minlength=uniq.size)
        cnts = np.bincount(inv, minlength=uniq.size).astype(float)
        draws = bootstrap_indices(rng, uniq.size, n_bootstrap, name="n_bootstrap")
        boot = sums[draws].sum(1) / cnts[draws].sum(1)
        means.append(float(logit[pos].mean()))
        mean_cis.append(np.percentile(boot, [2.5, 97.5]))
    return PreexistenceResult(
        strategy=strategy,
        layer=vector.layer,
        vector_model=vector_model,
        read_model=read_ds.model,
        offsets=offsets,
        projection_auroc=np.array(aucs),
        projection_auroc_ci=np.array(auc_cis),
        probe_score=np.array(means),
        probe_score_ci=np.array(mean_cis),
        baseline_score=float(logit[base_rows].mean()) if base_rows.size else float("nan"),
        n_segments=n_seg,
    )
