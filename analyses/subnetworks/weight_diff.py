"""Streaming weight diff of a base model against one or several runs (RL seeds, SFT).

    diff = diff_weights(base, rl)                       # WeightDiff of one run
    fam = diff_runs(base, [rl0, rl1], sft=sft)          # RunFamilyDiff: each run, overlaps, consensus
    fam.to_dict()                                       # the results.json of scripts/diff.py

One pass over the tensors in storage order: for each parameter name, the base tensor and every
run's tensor are loaded (memory-mapped), compared chunk by chunk (``change_counts``), optionally
ranked / spectrally compared as whole matrices (``matrix_spectra``), and dropped. Memory is the
K + 1 stored tensors of one name plus O(chunk) buffers; rank and spectra need float32 copies of
one matrix (a few times its size) while they run. The next tensor's bytes are prefetched
into the page cache meanwhile.

Tied embeddings are counted once. Which rule decided is recorded in ``TiedEmbeddings``:
- ``absent``: no output matrix is stored (``lm_head.weight`` missing): nothing to deduplicate;
- ``config``: ``tie_word_embeddings`` is true in a checkpoint's config.json (and false in none):
  the stored output matrix is skipped, as HF would replace it by the embedding when loading;
- ``identical``: config silent, and the output matrix equals the embedding in every checkpoint;
- ``untied``: otherwise, both are counted.

Overlap across runs (Mukherjee et al.; Jaccard from "The Path Not Taken"), with I the set of
parameters a run changed at ``overlap_tolerance`` and s its sparsity, p = 1 - s its updated
fraction:  o1 = |I1 & I2| / |I1|, o2 = |I1 & I2| / |I2|, random_o1 = 1 - s2, random_o2 = 1 - s1,
jaccard = |I1 & I2| / |I1 | I2|, random_jaccard = p q / (p + q - p q). The random baselines are
the expectations for two independent random subsets of the same sizes.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from hooks.cluster import RayCluster, as_cluster
from hooks.errors import TwinlensError

from .change_counts import ENGINES, TOLERANCE_KINDS, UpdatedCounts, compare_tensor, prepare_engine
from .checkpoint_files import SafetensorsCheckpoint
from .masks import PackedMasks
from .matrix_spectra import (
    RANK_METHODS,
    SpectralShift,
    compare_spectra,
    single_thread_if_small,
    top_singular_subspaces,
    update_rank,
)
from .parameter_names import MODULE_KINDS, layer_index, module_kind, non_parameter_reason

__all__ = ["DiffSettings", "TensorDiff", "TiedEmbeddings", "WeightDiff", "RunOverlap", "Consensus",
           "RunFamilyDiff", "diff_weights", "diff_runs", "overlap_of"]

Source = str | os.PathLike | SafetensorsCheckpoint


@dataclass(frozen=True)
class DiffSettings:
    """How to diff. ``tolerance``: the atol threshold. ``compare``: "native" (delta in the stored
    dtype, like the paper's code on bf16) or "float32". ``overlap_tolerance``: the mask used for
    overlaps, consensus and saved masks. ``rank`` / ``spectral``: whole-matrix measures (slow on
    big models). ``rank_method``: "exact" (matrix_rank), "gram" (float64 Gram approximation) or
    "auto" (gram above ``gram_threshold`` elements). ``device``: where rank/SVD run.
    ``workers``: threads comparing one large tensor (None: up to 4, capped by the usable CPUs).
    ``engine``: "fused" (numba kernels), "numpy" (reference) or "auto"; the numbers are identical."""

    tolerance: float = 1e-5
    compare: str = "native"
    overlap_tolerance: str = "atol"
    rank: bool = True
    rank_method: str = "exact"
    gram_threshold: int = 1 << 26
    spectral: bool = True
    spectral_k: int = 8
    chunk: int = 1 << 18
    workers: int | None = None
    device: str = "cpu"
    engine: str = "auto"

    def __post_init__(self):
        if not (self.tolerance >= 0 and math.isfinite(self.tolerance)):
            raise TwinlensError(f"tolerance must be a finite number >= 0, got {self.tolerance}.")
        if self.compare not in ("native", "float32"):
            raise TwinlensError(f"compare must be 'native' or 'float32', got {self.compare!r}.")
        if self.overlap_tolerance not in TOLERANCE_KINDS:
            raise TwinlensError(f"overlap_tolerance must be one of {TOLERANCE_KINDS}, got {self.overlap_tolerance!r}.")
        if self.rank_method not in RANK_METHODS:
            raise TwinlensError(f"rank_method must be one of {RANK_METHODS}, got {self.rank_method!r}.")
        if self.spectral_k < 1:
            raise TwinlensError(f"spectral_k must be >= 1, got {self.spectral_k}.")
        if self.chunk < 8 or self.chunk % 8:
            raise TwinlensError(f"chunk must be a positive multiple of 8, got {self.chunk}.")
        if self.engine not in ENGINES:
            raise TwinlensError(f"engine must be one of {ENGINES}, got {self.engine!r}.")
        if self.workers is not None and self.workers < 1:
            raise TwinlensError(f"workers must be >= 1, got {self.workers}.")

    @property
    def n_workers(self) -> int:
        if self.workers is not None:
            return self.workers
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            cpus = os.cpu_count() or 1
        return max(1, min(4, cpus))

    def to_dict(self) -> dict:
        return {"tolerance": self.tolerance, "bf16_rtol": 1e-3, "compare_dtype": self.compare,
                "overlap_tolerance": self.overlap_tolerance, "rank": self.rank, "rank_method": self.rank_method,
                "gram_threshold": self.gram_threshold, "spectral": self.spectral, "spectral_k": self.spectral_k}


@dataclass
class TensorDiff:
    """One parameter tensor of one run against the base."""

    name: str
    shape: tuple[int, ...]
    kind: str
    layer: int | None
    dtype: str
    counts: UpdatedCounts
    update_rank: float | None = None  # rank(delta) / min(shape); None if not a ranked matrix
    rank_method: str | None = None
    spectral: SpectralShift | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "kind": self.kind, "layer": self.layer,
                "dtype": self.dtype, **self.counts.to_dict(), "update_rank": self.update_rank,
                "rank_method": self.rank_method}


@dataclass
class TiedEmbeddings:
    """How a tied output matrix was handled: status in {absent, config, identical, untied}."""

    status: str
    embedding: str | None
    unembedding: str | None
    skipped: str | None
    reason: str

    @property
    def counted_once(self) -> bool:
        return self.status != "untied"

    def to_dict(self) -> dict:
        return {"status": self.status, "counted_once": self.counted_once, "embedding": self.embedding,
                "unembedding": self.unembedding, "skipped": self.skipped, "reason": self.reason}


def _group(tensors: Sequence[TensorDiff], key) -> dict:
    out: dict = {}
    for t in tensors:
        k = key(t)
        if k is None:
            continue
        out.setdefault(k, UpdatedCounts()).add(t.counts)
    return out


@dataclass
class WeightDiff:
    """A run against the base: counts per tensor, module kind, layer and overall; rank; spectra."""

    name: str
    source: str
    base_source: str
    settings: DiffSettings
    tied: TiedEmbeddings
    skipped: list[tuple[str, str]]
    tensors: list[TensorDiff] = field(default_factory=list)
    masks: PackedMasks | None = None

    @property
    def overall(self) -> UpdatedCounts:
        total = UpdatedCounts()
        for t in self.tensors:
            total.add(t.counts)
        return total

    @property
    def updated_fraction(self) -> dict[str, float]:
        """1 - sparsity at each tolerance, over all (counted-once) parameters."""
        return self.overall.updated_fraction

    @property
    def per_module(self) -> dict[str, UpdatedCounts]:
        got = _group(self.tensors, lambda t: t.kind)
        return {k: got[k] for k in MODULE_KINDS if k in got}

    @property
    def per_layer(self) -> dict[int, UpdatedCounts]:
        got = _group(self.tensors, lambda t: t.layer)
        return dict(sorted(got.items()))

    @property
    def per_layer_module(self) -> dict[int, dict[str, UpdatedCounts]]:
        out: dict[int, dict[str, UpdatedCounts]] = {}
        for t in self.tensors:
            if t.layer is not None:
                out.setdefault(t.layer, {}).setdefault(t.kind, UpdatedCounts()).add(t.counts)
        return dict(sorted(out.items()))

    @property
    def update_rank_mean(self) -> float | None:
        """Mean over ranked matrices (2-D, not norms; unchanged ones count as rank 0) of rank(delta)/min(shape)."""
        ranks = [t.update_rank for t in self.tensors if t.update_rank is not None]
        return float(np.mean(ranks)) if ranks else None

    @property
    def rank_methods(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tensors:
            if t.rank_method:
                out[t.rank_method] = out.get(t.rank_method, 0) + 1
        return out

    def spectral_summary(self) -> dict | None:
        rows = [t.spectral for t in self.tensors if t.spectral is not None]
        if not rows:
            return None

        def mean(vals):
            vals = [v for v in vals if v is not None and math.isfinite(v)]
            return float(np.mean(vals)) if vals else None

        return {"k": self.settings.spectral_k,
                "mean_spectral_shift": mean([r.spectral_shift for r in rows]),
                "mean_max_left_angle_deg": mean([max(r.left_angles_deg, default=0.0) for r in rows]),
                "mean_max_right_angle_deg": mean([max(r.right_angles_deg, default=0.0) for r in rows]),
                "methods": sorted({r.method for r in rows}),
                "per_matrix": [r.to_dict() for r in rows]}

    def to_dict(self, per_tensor: bool = True) -> dict:
        out = {"name": self.name, "source": self.source, "n_params": self.overall.n_params,
               "n_updated": self.overall.to_dict()["n_updated"],
               "updated_fraction": self.updated_fraction,
               "sparsity": {t: 1 - f for t, f in self.updated_fraction.items()},
               "per_module": {k: v.to_dict() for k, v in self.per_module.items()},
               "per_layer": {str(k): v.to_dict() for k, v in self.per_layer.items()},
               "per_layer_module": {str(layer): {k: v.updated_fraction for k, v in kinds.items()}
                                    for layer, kinds in self.per_layer_module.items()},
               "update_rank_mean": self.update_rank_mean,
               "update_rank_methods": self.rank_methods,
               "spectral": self.spectral_summary()}
        if per_tensor:
            out["per_tensor"] = [t.to_dict() for t in self.tensors]
        return out


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


@dataclass
class RunOverlap:
    """Overlap of two runs' updated sets, with the random-subset baselines."""

    run_a: str
    run_b: str
    tolerance: str
    n_params: int
    n_a: int
    n_b: int
    n_both: int

    @property
    def o1(self) -> float:
        return _ratio(self.n_both, self.n_a)

    @property
    def o2(self) -> float:
        return _ratio(self.n_both, self.n_b)

    @property
    def random_o1(self) -> float:  # 1 - s2
        return _ratio(self.n_b, self.n_params)

    @property
    def random_o2(self) -> float:  # 1 - s1
        return _ratio(self.n_a, self.n_params)

    @property
    def jaccard(self) -> float:
        return _ratio(self.n_both, self.n_a + self.n_b - self.n_both)

    @property
    def random_jaccard(self) -> float:
        p, q = self.random_o2, self.random_o1
        return _ratio(p * q, p + q - p * q)

    def to_dict(self) -> dict:
        return {"run_a": self.run_a, "run_b": self.run_b, "tolerance": self.tolerance, "n_params": self.n_params,
                "n_a": self.n_a, "n_b": self.n_b, "n_both": self.n_both, "o1": self.o1, "o2": self.o2,
                "random_o1": self.random_o1, "random_o2": self.random_o2, "jaccard": self.jaccard,
                "random_jaccard": self.random_jaccard}


def overlap_of(run_a: str, run_b: str, n_params: int, n_a: int, n_b: int, n_both: int,
               tolerance: str = "atol") -> RunOverlap:
    """RunOverlap from counts (for users with their own masks)."""
    return RunOverlap(run_a, run_b, tolerance, n_params, n_a, n_b, n_both)


@dataclass
class Consensus:
    """How many of N runs change each parameter. histogram[c] = parameters changed by exactly c runs."""

    runs: list[str]
    tolerance: str
    histogram: list[int]
    updated_fractions: list[float]

    @property
    def n_params(self) -> int:
        return int(sum(self.histogram))

    @property
    def consensus_ratio(self) -> float:
        """Fraction of all parameters changed by all N runs."""
        return _ratio(self.histogram[-1], self.n_params)

    @property
    def random_consensus_ratio(self) -> float:
        """Expectation for independent random subsets of the same sizes: prod p_i."""
        return float(np.prod(self.updated_fractions))

    @property
    def consensus_of_union(self) -> float:
        """|I_1 & ... & I_N| / |I_1 | ... | I_N|."""
        return _ratio(self.histogram[-1], self.n_params - self.histogram[0])

    @property
    def random_consensus_of_union(self) -> float:
        p_any = 1 - float(np.prod([1 - p for p in self.updated_fractions]))
        return _ratio(self.random_consensus_ratio, p_any)

    def to_dict(self) -> dict:
        return {"runs": self.runs, "tolerance": self.tolerance, "n_runs": len(self.runs),
                "consensus_ratio": self.consensus_ratio, "random_consensus_ratio": self.random_consensus_ratio,
                "consensus_of_union": self.consensus_of_union,
                "random_consensus_of_union": self.random_consensus_of_union,
                "histogram": self.histogram,
                "histogram_fraction": [h / self.n_params if self.n_params else float("nan") for h in self.histogram]}


@dataclass
class RunFamilyDiff:
    """Several runs from one base (and optionally an SFT model): per-run diffs, overlaps, consensus."""

    base_source: str
    settings: DiffSettings
    runs: dict[str, WeightDiff]
    sft: WeightDiff | None
    overlaps: list[RunOverlap]
    sft_overlaps: list[RunOverlap]
    consensus: Consensus | None
    tied: TiedEmbeddings
    skipped: list[tuple[str, str]]
    engine: str = "numpy"  # which change-counting engine ran: "fused" or "numpy"

    @property
    def primary(self) -> WeightDiff:
        return next(iter(self.runs.values()))

    def to_dict(self) -> dict:
        """The results.json of scripts/diff.py. Top-level per-run numbers are those of the first run
        (``primary_run``); ``per_run`` holds every run when there are several."""
        prim = self.primary
        out = {"base": self.base_source, "runs": {k: v.source for k, v in self.runs.items()},
               "primary_run": prim.name, "settings": {**self.settings.to_dict(), "engine": self.engine},
               "tied_embeddings": self.tied.to_dict(),
               "skipped": [{"name": n, "reason": r} for n, r in self.skipped]}
        out.update(prim.to_dict(per_tensor=True))
        out.pop("name")
        out.pop("source")
        if len(self.runs) > 1:
            out["per_run"] = {k: v.to_dict(per_tensor=False) for k, v in self.runs.items()}
            out["overlap"] = [o.to_dict() for o in self.overlaps]
            out["consensus"] = self.consensus.to_dict() if self.consensus else None
        if self.sft is not None:
            sft = self.sft.to_dict(per_tensor=False)
            sft["overlap_with_rl"] = [o.to_dict() for o in self.sft_overlaps]
            out["sft"] = sft
        return out


# --------------------------------------------------------------------------------------------
# the pass over the tensors


def _open(src: Source) -> SafetensorsCheckpoint:
    return src if isinstance(src, SafetensorsCheckpoint) else SafetensorsCheckpoint(src)


def _run_names(runs: Sequence[Source] | Mapping[str, Source]) -> dict[str, Source]:
    if isinstance(runs, Mapping):
        return dict(runs)
    if isinstance(runs, (str, os.PathLike, SafetensorsCheckpoint)):
        runs = [runs]
    out: dict[str, Source] = {}
    for src in runs:
        text = src.source if isinstance(src, SafetensorsCheckpoint) else str(src)
        name = Path(text.rstrip("/")).name or text
        base, i = name, 1
        while name in out:
            i += 1
            name = f"{base}#{i}"
        out[name] = src
    return out


def _tensors_equal(a: torch.Tensor, b: torch.Tensor, chunk: int) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    fa, fb = a.reshape(-1), b.reshape(-1)
    return all(torch.equal(fa[s:s + chunk], fb[s:s + chunk]) for s in range(0, fa.numel(), chunk))


def _decide_tied(ckpts: Sequence[SafetensorsCheckpoint], chunk: int) -> TiedEmbeddings:
    """Decide whether the output matrix is the (tied) embedding, counted once; see module docstring."""
    names = set().union(*(c.entries for c in ckpts))
    unemb = sorted(n for n in names if module_kind(n) == "unembedding" and n.endswith("weight"))
    if not unemb:
        return TiedEmbeddings("absent", None, None, None,
                              "no output matrix stored (tied to the embedding or absent): nothing counted twice")
    out_name = unemb[0]
    shape = next(c.entries[out_name].shape for c in ckpts if out_name in c.entries)
    emb = sorted(n for n in names if module_kind(n) == "embedding" and n.endswith("weight")
                 and all(c.entries.get(n) is None or c.entries[n].shape == shape for c in ckpts)
                 and any(n in c.entries for c in ckpts))
    emb_name = emb[0] if emb else None
    if emb_name is None:
        return TiedEmbeddings("untied", None, out_name, None, "no embedding of the output matrix's shape")
    flags = [c.tie_word_embeddings for c in ckpts]
    if any(f is True for f in flags) and not any(f is False for f in flags):
        return TiedEmbeddings("config", emb_name, out_name, out_name,
                              "config.json says tie_word_embeddings=true: the stored output matrix is the "
                              "embedding, counted once (under the embedding's name)")
    if any(f is False for f in flags):
        return TiedEmbeddings("untied", emb_name, out_name, None, "config.json says tie_word_embeddings=false")
    for c in ckpts:
        if out_name in c.entries and emb_name in c.entries:
            if not _tensors_equal(c.load(emb_name), c.load(out_name), chunk):
                return TiedEmbeddings("untied", emb_name, out_name, None,
                                      f"config silent and the output matrix differs from the embedding in {c.source}")
    return TiedEmbeddings("identical", emb_name, out_name, out_name,
                          "config silent, but the output matrix equals the embedding in every checkpoint: "
                          "counted once (under the embedding's name)")


def _plan(ckpts: Mapping[str, SafetensorsCheckpoint], tied: TiedEmbeddings) -> tuple[list[str], list[tuple[str, str]]]:
    """Parameter names to compare (base storage order) and skipped (name, reason); raises on mismatch."""
    base_key = next(iter(ckpts))
    base = ckpts[base_key]
    skipped: list[tuple[str, str]] = []
    drop = {tied.skipped} if tied.skipped else set()
    if tied.skipped:
        skipped.append((tied.skipped, f"tied output matrix ({tied.status})"))
    problems: list[str] = []
    base_names = set(base.entries) - drop
    for key, ck in ckpts.items():
        if key == base_key:
            continue
        names = set(ck.entries) - drop
        only_base = sorted(base_names - names)
        only_run = sorted(names - base_names)
        if only_base:
            problems.append(f"{len(only_base)} tensor(s) only in the base ({base.source}), e.g. {only_base[:5]}")
        if only_run:
            problems.append(f"{len(only_run)} tensor(s) only in {key} ({ck.source}), e.g. {only_run[:5]}")
        shapes = [f"{n}: {base.entries[n].shape} vs {ck.entries[n].shape}"
                  for n in sorted(base_names & names) if base.entries[n].shape != ck.entries[n].shape]
        if shapes:
            problems.append(f"{len(shapes)} shape mismatch(es) between the base and {key}, e.g. {shapes[:5]}")
    if problems:
        raise TwinlensError("the checkpoints do not have the same parameters, so they cannot be diffed "
                            "(a weight diff needs the same architecture and size; merge LoRA adapters first):\n  - "
                            + "\n  - ".join(problems))
    order = []
    for n in base.names:
        if n in drop:
            continue
        e = base.entries[n]
        why = non_parameter_reason(n, e.is_float and all(c.entries[n].is_float for c in ckpts.values()), len(e.shape))
        if why:
            skipped.append((n, why))
        else:
            order.append(n)
    return order, skipped


def _is_ranked_matrix(name: str, shape: tuple[int, ...]) -> bool:
    return len(shape) == 2 and min(shape) > 0 and module_kind(name) != "norm"


def diff_runs(base: Source, runs: Sequence[Source] | Mapping[str, Source], sft: Source | None = None, *,
              settings: DiffSettings | None = None, keep_masks: bool = False, progress: bool = True,
              prefetch: bool = True, cluster: RayCluster | str | bool | None = None,
              **setting_kwargs) -> RunFamilyDiff:
    """Diff each run (and ``sft``) against ``base`` in one streaming pass over the tensors.

    base, runs, sft: checkpoint folders, .safetensors files, hub ids or SafetensorsCheckpoint.
    ``runs`` as a list gets names from the folder names; as a dict, from its keys.
    ``settings`` or keyword arguments of DiffSettings (tolerance=, compare=, rank=, spectral=, ...).
    ``keep_masks``: keep each run's changed mask (at ``overlap_tolerance``) packed in memory,
    1 bit per parameter, as ``WeightDiff.masks`` (save with ``.save(path)``).
    ``cluster``: a hooks.cluster.RayCluster (or a Ray address, or True): groups of tensors are
    compared by Ray actors reading the safetensors where they lie (the same path on every node);
    the result, masks included, is the single-process one.
    Raises TwinlensError when the checkpoints' names or shapes differ.
    """
    cluster = as_cluster(cluster)
    settings = settings or DiffSettings(**setting_kwargs)
    run_srcs = _run_names(runs)
    if not run_srcs:
        raise TwinlensError("give at least one run to diff against the base.")
    if sft is not None:
        if "sft" in run_srcs:
            raise TwinlensError("a run is named 'sft'; pass runs as a dict with other names.")
    ck_base = _open(base)
    cks: dict[str, SafetensorsCheckpoint] = {"__base__": ck_base}
    for name, src in run_srcs.items():
        cks[name] = _open(src)
    if sft is not None:
        cks["sft"] = _open(sft)
    try:
        return _diff_pass(cks, list(run_srcs), sft is not None, settings, keep_masks, progress, prefetch,
                          cluster)
    finally:
        for ck in cks.values():
            ck.close()


def _diff_pass(cks: dict[str, SafetensorsCheckpoint], run_names: list[str], has_sft: bool, st: DiffSettings,
               keep_masks: bool, progress: bool, prefetch: bool, cluster: RayCluster | None = None) -> RunFamilyDiff:
    ck_base = cks["__base__"]
    engine = prepare_engine(st.engine)
    others = run_names + (["sft"] if has_sft else [])
    tied = _decide_tied(list(cks.values()), st.chunk)
    order, skipped = _plan(cks, tied)
    diffs = {k: WeightDiff(k, cks[k].source, ck_base.source, st, tied, skipped) for k in others}
    if keep_masks:
        for k in others:
            diffs[k].masks = PackedMasks(st.overlap_tolerance, st.tolerance,
                                         metadata={"base": ck_base.source, "run": cks[k].source})
    n_cons = len(run_names) if len(run_names) > 1 else 0
    both = np.zeros((len(others), len(others)), dtype=np.int64)
    hist = np.zeros(n_cons + 1, dtype=np.int64)
    total = 0

    def record(name: str, res: _TensorResult) -> None:
        nonlocal both, hist, total
        both += res.both
        hist += res.consensus_hist
        total += res.numel
        for j, k in enumerate(others):
            diffs[k].tensors.append(res.tensors[j])
            if keep_masks:
                diffs[k].masks.shapes[name] = res.tensors[j].shape
                diffs[k].masks.packed[name] = res.packed[j]

    diff_one = functools.partial(_diff_tensor, others=others, st=st, n_cons=n_cons, keep_masks=keep_masks,
                                 engine=engine)
    if cluster is not None:
        _diff_on_cluster(cluster, cks, order, diff_one, record, progress)
        order = []
    pool = ThreadPoolExecutor(max_workers=1) if prefetch else None
    try:
        pending = None
        if pool and order:
            pending = pool.submit(lambda n=order[0]: [c.prefetch(n) for c in cks.values()])
        for i, name in enumerate(tqdm(order, desc="weight diff", unit="tensor", disable=not progress)):
            if pending is not None:
                pending.result()
                pending = None
            if pool and i + 1 < len(order):
                pending = pool.submit(lambda n=order[i + 1]: [c.prefetch(n) for c in cks.values()])
            record(name, diff_one(cks, name))
    finally:
        if pool:
            pool.shutdown(wait=True)
    overlaps = [RunOverlap(a, b, st.overlap_tolerance, total, int(both[i, i]), int(both[j, j]), int(both[i, j]))
                for i, a in enumerate(run_names) for j, b in enumerate(run_names) if i < j]
    sft_overlaps = []
    if has_sft:
        s = len(others) - 1
        sft_overlaps = [RunOverlap("sft", a, st.overlap_tolerance, total, int(both[s, s]), int(both[i, i]),
                                   int(both[i, s])) for i, a in enumerate(run_names)]
    consensus = None
    if n_cons:
        consensus = Consensus(run_names, st.overlap_tolerance, [int(h) for h in hist],
                              [diffs[k].overall.n_updated(st.overlap_tolerance) / total if total else float("nan")
                               for k in run_names])
    return RunFamilyDiff(ck_base.source, st, {k: diffs[k] for k in run_names}, diffs["sft"] if has_sft else None,
                         overlaps, sft_overlaps, consensus, tied, skipped, engine)


@dataclass
class _TensorResult:
    """One parameter compared against every run: what the pass adds up (also what a cluster
    worker sends back)."""

    tensors: list[TensorDiff]  # one per run (runs, then sft)
    both: np.ndarray
    consensus_hist: np.ndarray
    packed: list  # per run: packed mask bits (np.ndarray) or None
    numel: int


def _diff_tensor(cks: Mapping[str, SafetensorsCheckpoint], name: str, *, others: list[str], st: DiffSettings,
                 n_cons: int, keep_masks: bool, engine: str) -> _TensorResult:
    """Compare tensor ``name`` of the base with every run: counts, masks, rank, spectra."""
    w0 = cks["__base__"].load(name)
    ws = [cks[k].load(name) for k in others]
    cmp = compare_tensor(w0, ws, tol=st.tolerance, compare=st.compare, mask_tolerance=st.overlap_tolerance,
                         n_consensus=n_cons, pack=[keep_masks] * len(others), chunk=st.chunk,
                         workers=st.n_workers, engine=engine)
    shape = tuple(w0.shape)
    kind, layer = module_kind(name), layer_index(name)
    ranked = _is_ranked_matrix(name, shape)
    base_sub = None
    with single_thread_if_small(w0.numel(), st.device):
        if ranked and st.spectral:
            base_sub = top_singular_subspaces(w0.to(st.device, torch.float32), st.spectral_k,
                                              st.rank_method, st.gram_threshold)
        tds = []
        for j in range(len(others)):
            td = TensorDiff(name, shape, kind, layer, str(ws[j].dtype).replace("torch.", ""), cmp.counts[j])
            if ranked and st.rank:
                delta = _delta_matrix(w0, ws[j], st).to(st.device)
                r, method = update_rank(delta, st.rank_method, st.gram_threshold)
                del delta
                td.update_rank, td.rank_method = r / min(shape), method
            if base_sub is not None:
                sub = top_singular_subspaces(ws[j].to(st.device, torch.float32), st.spectral_k,
                                             st.rank_method, st.gram_threshold)
                td.spectral = compare_spectra(name, base_sub, sub, shape)
            tds.append(td)
    return _TensorResult(tds, cmp.both, cmp.consensus_hist, list(cmp.packed), w0.numel())


def _header(ck: SafetensorsCheckpoint) -> dict[str, tuple]:
    return {n: (e.file.name, e.dtype, tuple(e.shape), e.start, e.end) for n, e in ck.entries.items()}


def _open_on_worker(sources: Mapping[str, str], headers: Mapping[str, dict], engine: str) -> dict:
    """On a cluster worker: the driver's checkpoints, opened where they lie, refused if this node
    sees other files there (other headers)."""
    import socket

    cks = {key: SafetensorsCheckpoint(src) for key, src in sources.items()}
    for key, ck in cks.items():
        if _header(ck) != headers[key]:
            raise TwinlensError(f"Node {socket.gethostname()} sees another checkpoint at {sources[key]} than the "
                                "driver (other tensors or byte ranges); put the same files at the same path on "
                                "every node (or on a shared file system).")
    prepare_engine(engine)
    return cks


def _diff_group(cks: Mapping[str, SafetensorsCheckpoint], names: list[str], *, diff_one) -> list[_TensorResult]:
    return [diff_one(cks, name) for name in names]


def _diff_on_cluster(cluster: RayCluster, cks: Mapping[str, SafetensorsCheckpoint], order: list[str], diff_one, record,
                     progress: bool) -> None:
    """Tensors in groups of about 1/4 of a worker's share of the bytes (a big tensor alone) as
    work items of actors that open the checkpoints where they lie; results are added up in
    storage order, as in one process."""
    ray = cluster.connect()
    nbytes = {n: sum(ck.entries[n].nbytes for ck in cks.values()) for n in order}
    target = max(1, sum(nbytes.values()) // (4 * cluster.n_workers(ray)))
    groups: list[list[str]] = []
    size = target
    for name in order:
        if size >= target:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes[name]

    def where(ck: SafetensorsCheckpoint) -> str:
        local = Path(ck.source)
        return str(local.absolute()) if local.exists() else str(ck.folder)

    setup = functools.partial(_open_on_worker, {k: where(ck) for k, ck in cks.items()},
                              {k: _header(ck) for k, ck in cks.items()}, diff_one.keywords["engine"])
    for i, results in cluster.map(setup, functools.partial(_diff_group, diff_one=diff_one), groups,
                                  desc="weight diff (ray)", weights=[len(g) for g in groups],
                                  progress=progress, unit="tensor"):
        for name, res in zip(groups[i], results, strict=True):
            record(name, res)


def _delta_matrix(w0: torch.Tensor, w1: torch.Tensor, st: DiffSettings) -> torch.Tensor:
    """The update as float32: rounded in the stored 16-bit dtype first when compare='native' (paper's code)."""
    if st.compare == "native" and w0.dtype == w1.dtype and w0.dtype in (torch.bfloat16, torch.float16):
        return (w1 - w0).float()
    return w1.float() - w0.float()


def diff_weights(base: Source, rl: Source, *, name: str | None = None, settings: DiffSettings | None = None,
                 keep_masks: bool = False, progress: bool = True, cluster: RayCluster | str | bool | None = None,
                 **setting_kwargs) -> WeightDiff:
    """Diff one run against the base (see ``diff_runs``, also for ``cluster``); returns its WeightDiff."""
    runs = {name: rl} if name else _run_names([rl])
    fam = diff_runs(base, runs, settings=settings, keep_masks=keep_masks, progress=progress, cluster=cluster,
                    **setting_kwargs)
    return fam.primary
