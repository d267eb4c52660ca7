"""Strategy vectors: difference of means (Venhoff et al., arXiv 2506.18167) and probe weights.

Difference of means, per layer, exactly as RESEARCH.md section 1:
1. for each labelled segment `[start, end)` of the strategy, average the activation over the
   positions `[start - 1, min(end - 1, start + 10))` (the position that decides to open the
   segment, then its first tokens);
2. average those segment means over segments;
3. subtract the common mean over the reasoning span: by default (`common_mean="token_pooled"`)
   the mean over every reasoning token of every example pooled, so each token weighs the same;
   `common_mean="example_mean"` is the authors' code (each example's reasoning-span mean, averaged
   over examples), where two-token direct answers weigh as much as long traces and dominate the
   mean (issue 15: its norm exceeds the mean token norm and all strategy vectors collapse onto one
   shared direction, pairwise cosine 0.96-0.99);
4. rescale the difference to the norm of that common mean.

`decision_point_contrast_vectors` is the alternative that asks the question steering should ask:
the mean residual at the decision point just before a strategy starts minus the mean at the other
decision points (`probes.baselines.decision_point_positions`).

A `StrategyVector` is a direction + layer + provenance, saved as safetensors with JSON metadata;
`vector.apply(model, alpha)` is the scoped steering intervention (`hooks.add_to_residual`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float
from safetensors import safe_open
from torch import Tensor

from hooks.errors import TwinlensError
from hooks.store import save_safetensors
from hooks.validation import check_finite_vector
from probes.datasets import ProbeDataset

__all__ = [
    "StrategyVector",
    "diff_of_means_vectors",
    "decision_point_contrast_vectors",
    "mean_residual_norm",
    "COMMON_MEANS",
    "probe_weight_vectors",
    "random_vector_like",
    "vector_cosines",
    "save_vectors",
    "load_vectors",
    "read_vectors_info",
    "SEGMENT_WINDOW",
]

COMMON_MEANS = ("token_pooled", "example_mean")
SEGMENT_WINDOW = 10  # tokens after the segment start that enter its mean (RESEARCH.md s.1)
_FORMAT = "twinlens.strategy_vectors/1"


@dataclass
class StrategyVector:
    """A steering/reading direction for one strategy at one layer.

    direction: `[d_model]` float32, in the residual stream's units (not unit norm:
        difference-of-means vectors carry the norm of the mean activation, so alpha = 1 adds an
        activation-sized step, as in the paper).
    layer: block index (`blocks.{layer}.hook_out`).
    method: "diff_of_means" | "probe_weight" | "random".
    provenance: model_name, weight_hash (of the model the vector was read from), labels_source.
    """

    direction: Float[Tensor, " d"]
    layer: int
    method: str
    strategy: str
    model_name: str = ""
    weight_hash: str = ""
    labels_source: str = ""
    n_segments: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.direction = torch.as_tensor(self.direction, dtype=torch.float32).detach().cpu()
        if self.direction.ndim != 1:
            raise TwinlensError(
                f"A StrategyVector direction must be 1-D [d_model], got {tuple(self.direction.shape)}."
            )
        check_finite_vector(f"The {self.strategy!r} vector's direction", self.direction)
        self.layer = int(self.layer)

    @property
    def norm(self) -> float:
        return float(self.direction.norm())

    @property
    def unit(self) -> Tensor:
        return self.direction / self.direction.norm().clamp_min(1e-12)

    def metadata(self) -> dict:
        meta = asdict(self)
        meta.pop("direction")
        return meta

    def check_fits(self, model) -> None:
        """Clear errors for a vector that does not fit `model` (width, layer)."""
        if self.direction.shape[0] != model.d_model:
            raise TwinlensError(
                f"The {self.strategy!r} vector has width {self.direction.shape[0]} but the model "
                f"{getattr(model, 'name', '')!r} has d_model {model.d_model}; use a vector found on "
                "a model of the same width (the base model of this pair)."
            )
        if not 0 <= self.layer < model.n_layers:
            raise TwinlensError(
                f"The {self.strategy!r} vector is for layer {self.layer}, but the model has "
                f"{model.n_layers} blocks (0-{model.n_layers - 1}); pick a vector of an existing layer."
            )

    def apply(self, model, alpha: float = 1.0, positions=None):
        """Context manager: add `alpha * direction` to block `layer`'s output in every forward
        pass of `model` (all positions by default; `positions` as in `hooks.add_to_residual`:
        absolute positions per row); hooks are removed on exit, also on an exception."""
        from hooks import add_to_residual

        self.check_fits(model)
        return add_to_residual(model, self.layer, self.direction, alpha=alpha, positions=positions)

    def save(self, path: str | Path) -> Path:
        return save_vectors(path, [self])

    @classmethod
    def load(cls, path: str | Path) -> StrategyVector:
        vectors = load_vectors(path)
        if len(vectors) != 1:
            raise TwinlensError(
                f"{path} holds {len(vectors)} vectors; use probes.load_vectors to read them all."
            )
        return vectors[0]


def save_vectors(path: str | Path, vectors: Sequence[StrategyVector], info: dict | None = None) -> Path:
    """Save vectors to one safetensors file; their metadata go in its JSON header, with `info`
    (JSON-serialisable facts about the whole file: e.g. scripts/probe.py records the
    attribution-chosen layer of each strategy and the ids of the problems the vectors were
    fitted on; read back by `read_vectors_info`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"vector.{i}": v.direction.contiguous() for i, v in enumerate(vectors)}
    meta = {"format": _FORMAT, "vectors": json.dumps([v.metadata() for v in vectors]),
            "info": json.dumps(info or {})}
    tmp = path.with_name(path.name + ".tmp")
    save_safetensors(tensors, tmp, metadata=meta)
    tmp.replace(path)
    return path


def _vector_file_metadata(path: Path) -> dict:
    """The metadata of a twinlens strategy-vector file, or a TwinlensError naming what is wrong."""
    if not path.exists():
        raise TwinlensError(f"No vector file at {path}.")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != _FORMAT:
        raise TwinlensError(f"{path} is not a twinlens strategy-vector file (format {meta.get('format')!r}).")
    return meta


def load_vectors(path: str | Path) -> list[StrategyVector]:
    path = Path(path)
    infos = json.loads(_vector_file_metadata(path)["vectors"])
    with safe_open(str(path), framework="pt") as f:
        return [StrategyVector(direction=f.get_tensor(f"vector.{i}"), **info) for i, info in enumerate(infos)]


def read_vectors_info(path: str | Path) -> dict:
    """The `info` dict `save_vectors` stored in a vector file ({} for files written without)."""
    return json.loads(_vector_file_metadata(Path(path)).get("info", "{}"))


# ------------------------------------------------------------------ difference of means
def _examples_of(ds: ProbeDataset, examples) -> list[int]:
    ids = sorted(ds.spans) if examples is None else [int(e) for e in np.unique(examples)]
    unknown = [e for e in ids if e not in ds.spans]
    if unknown:
        raise TwinlensError(f"Examples {unknown[:5]} are not in this dataset.")
    return ids


def segment_windows(
    ds: ProbeDataset, strategy: str, examples=None, window: int = SEGMENT_WINDOW
) -> list[np.ndarray]:
    """Rows of each segment's window `[start-1, min(end-1, start+window))`, one array per
    segment (segments whose window is empty or not stored are an error)."""
    out = []
    for e in _examples_of(ds, examples):
        for span in ds.spans[e].spans_of(strategy):
            lo, hi = span.start - 1, min(span.end - 1, span.start + window)
            if lo < 0:
                raise TwinlensError(
                    f"Example {e}: a {strategy!r} segment starts at position 0, so the position "
                    "before it (start - 1) does not exist; keep the prompt in the stored sequence."
                )
            rows = np.array([ds.row(e, p) for p in range(lo, hi)], dtype=np.int64)
            if (rows < 0).any():
                raise TwinlensError(
                    f"Example {e}: positions {lo}..{hi - 1} of a {strategy!r} segment were not "
                    "captured; capture with positions='all'."
                )
            out.append(rows)
    return out


def overall_mean(ds: ProbeDataset, examples=None, common_mean: str = "example_mean") -> Tensor:
    """`[L, d]` common mean of the reasoning span: "example_mean" = each example's mean over its
    reasoning span, averaged over examples; "token_pooled" = the mean over all reasoning tokens of
    these examples pooled (every token weighs the same)."""
    if common_mean not in COMMON_MEANS:
        raise TwinlensError(f"common_mean must be one of {COMMON_MEANS}, got {common_mean!r}.")
    if common_mean == "token_pooled":
        rows = np.nonzero(np.isin(ds.example, _examples_of(ds, examples)) & ds.reasoning)[0]
        if not rows.size:
            raise TwinlensError("No reasoning rows in these examples; nothing to average.")
        return ds.X[:, rows].double().mean(1)
    means = []
    for e in _examples_of(ds, examples):
        rows = np.nonzero((ds.example == e) & ds.reasoning)[0]
        if rows.size:
            means.append(ds.X[:, rows].double().mean(1))
    if not means:
        raise TwinlensError("No reasoning rows in these examples; nothing to average.")
    return torch.stack(means).mean(0)


def diff_of_means_vectors(
    ds: ProbeDataset, strategy: str, examples=None, window: int = SEGMENT_WINDOW,
    common_mean: str = "token_pooled",
) -> list[StrategyVector]:
    """One difference-of-means vector per layer of `ds` (see the module docstring); method
    "diff_of_means", `extra["common_mean"]` says which common mean was subtracted.

    examples: example ids to use (e.g. the training split), default all.
    common_mean: "token_pooled" (default) or "example_mean" (the authors' code)."""
    if common_mean not in COMMON_MEANS:
        raise TwinlensError(f"common_mean must be one of {COMMON_MEANS}, got {common_mean!r}.")
    windows = segment_windows(ds, strategy, examples, window)
    if not windows:
        raise TwinlensError(
            f"No {strategy!r} segment in these examples; a strategy vector needs labelled "
            "segments. Use more examples or a strategy that occurs."
        )
    seg_means = torch.stack([ds.X[:, rows].double().mean(1) for rows in windows])  # [S, L, d]
    strategy_mean = seg_means.mean(0)
    base = overall_mean(ds, examples, common_mean)
    diff = strategy_mean - base
    scale = base.norm(dim=-1, keepdim=True) / diff.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return _per_layer(ds, (diff * scale).float(), "diff_of_means", strategy,
                      n_segments=len(windows), extra={"window": window, "common_mean": common_mean})


def _decision_rows(ds: ProbeDataset, decision_points: dict, examples=None) -> dict[int, np.ndarray]:
    out = {}
    for e in _examples_of(ds, examples):
        pts = np.asarray(decision_points.get(e, []), dtype=np.int64)
        rows = np.array([ds.row(e, int(p)) for p in pts], dtype=np.int64)
        if (rows < 0).any():
            raise TwinlensError(f"Example {e}: some decision points were not captured; capture with positions='all'.")
        out[e] = rows
    return out


def decision_point_contrast_vectors(
    ds: ProbeDataset, strategy: str, decision_points: dict, examples=None, min_points: int = 5
) -> list[StrategyVector]:
    """Per layer: mean residual at the decision points just before a `strategy` segment starts
    (position `start - 1` is a decision point) minus the mean at every other decision point
    (issue 15). `[d]` per layer, raw units (steer with a strength relative to the residual norm).

    decision_points: {example id: positions}, from `probes.baselines.decision_point_positions`.
    Raises TwinlensError with fewer than `min_points` decision points on either side."""
    pos_rows, neg_rows = [], []
    for e, rows in _decision_rows(ds, decision_points, examples).items():
        starts = {sp.start - 1 for sp in ds.spans[e].spans_of(strategy)}
        pts = np.asarray(decision_points.get(e, []), dtype=np.int64)
        for p, r in zip(pts, rows, strict=True):
            (pos_rows if int(p) in starts else neg_rows).append(int(r))
    if len(pos_rows) < min_points or len(neg_rows) < min_points:
        raise TwinlensError(
            f"The {strategy!r} contrast vector needs >= {min_points} decision points before a {strategy!r} "
            f"segment and >= {min_points} others; got {len(pos_rows)} and {len(neg_rows)}. Use more examples."
        )
    diff = ds.X[:, pos_rows].double().mean(1) - ds.X[:, neg_rows].double().mean(1)
    return _per_layer(ds, diff.float(), "decision_point_contrast", strategy, n_segments=len(pos_rows),
                      extra={"n_other_points": len(neg_rows)})


def mean_residual_norm(ds: ProbeDataset, decision_points: dict | None = None, examples=None) -> Tensor:
    """`[L]` mean L2 norm of the residual (block output) per layer of `ds`: over every stored
    token of the examples (`decision_points=None`, the positions steered with where="all"), or over
    their decision points only (where="decision_points"). The unit of steering strength."""
    if decision_points is None:
        rows = np.nonzero(np.isin(ds.example, _examples_of(ds, examples)))[0]
    else:
        rows = np.concatenate([r for r in _decision_rows(ds, decision_points, examples).values()] or [[]])
        rows = rows.astype(np.int64)
    if not rows.size:
        raise TwinlensError("No rows to measure the residual norm on.")
    return ds.X[:, rows].double().norm(dim=-1).mean(1)


def probe_weight_vectors(
    ds: ProbeDataset, strategy: str, probe, examples=None
) -> list[StrategyVector]:
    """The probe's weight direction per layer (from a binary all-layer `LinearProbe` fitted on
    `ds`'s layers), rescaled to the norm of the overall mean so that alpha means the same as for
    difference-of-means vectors."""
    coef = torch.as_tensor(np.asarray(probe.coef_), dtype=torch.float64)
    if coef.ndim != 3 or coef.shape[1] != 1 or coef.shape[0] != len(ds.layers):
        raise TwinlensError(
            f"probe_weight_vectors needs a binary probe fitted on all {len(ds.layers)} layers of "
            f"the dataset (coef_ [n_layers, 1, d]); got coef_ of shape {tuple(coef.shape)}."
        )
    w = coef[:, 0]
    norm = overall_mean(ds, examples).norm(dim=-1, keepdim=True)
    vecs = (w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12) * norm).float()
    return _per_layer(ds, vecs, "probe_weight", strategy, extra={"C": getattr(probe, "C", None)})


def _per_layer(ds: ProbeDataset, vecs: Tensor, method: str, strategy: str, extra: dict,
               n_segments: int = 0) -> list[StrategyVector]:
    """One `StrategyVector` per layer of `ds` from `vecs` `[L, d]`, with `ds`'s provenance
    (`extra` gets the dataset's model key)."""
    return [
        StrategyVector(
            direction=vecs[i],
            layer=layer,
            method=method,
            strategy=strategy,
            model_name=ds.model_name,
            weight_hash=ds.weight_hash,
            labels_source=ds.label_source,
            n_segments=n_segments,
            extra={**extra, "model_key": ds.model},
        )
        for i, layer in enumerate(ds.layers)
    ]


def random_vector_like(vector: StrategyVector, seed: int = 0) -> StrategyVector:
    """A Gaussian random direction with the same norm and layer (the steering control)."""
    g = torch.Generator().manual_seed(int(seed))
    r = torch.randn(vector.direction.shape[0], generator=g, dtype=torch.float64)
    r = (r / r.norm() * vector.norm).float()
    return StrategyVector(
        direction=r,
        layer=vector.layer,
        method="random",
        strategy=vector.strategy,
        model_name=vector.model_name,
        weight_hash=vector.weight_hash,
        labels_source=vector.labels_source,
        extra={"seed": int(seed), "matched_to": vector.method},
    )


def vector_cosines(a: Sequence[StrategyVector], b: Sequence[StrategyVector]) -> np.ndarray:
    """Cosine similarity of two per-layer vector lists, matched by layer -> `[n_layers]`."""
    by_layer = {v.layer: v for v in b}
    if sorted(by_layer) != sorted(v.layer for v in a):
        raise TwinlensError("vector_cosines needs the same layers on both sides.")
    return np.array(
        [float(torch.nn.functional.cosine_similarity(v.direction, by_layer[v.layer].direction, 0))
         for v in a]
    )
