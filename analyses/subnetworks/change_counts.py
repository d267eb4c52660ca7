"""Counting changed parameters at three tolerances, chunk by chunk, for one tensor of a base
model against K other runs at once.

Tolerances (RESEARCH.md section 2), "changed" = NOT unchanged:
- ``exact``: unchanged iff delta == 0.
- ``atol``:  unchanged iff |delta| <= tol (default 1e-5; the paper's code,
  ``torch.isclose(delta, 0, atol=tol)``, whose rtol term is rtol * |0| = 0).
- ``bf16``:  unchanged iff |w' - w| <= 1e-3 * max(|w|, |w'|) ("The Path Not Taken": bf16 equality).
The boundaries are inclusive, and a NaN delta counts as changed at every tolerance.

``compare="native"`` computes delta in the stored dtype when both checkpoints store the same
16-bit float type (delta rounded to bf16, as the paper's code does on bf16 weights); with
``compare="float32"`` delta is the float32 difference of the exactly up-cast values. For nearby
values (within 2x) the two are identical (Sterbenz); they can differ only for large deltas.

Two engines give identical numbers (tested on adversarial values). "fused" (``fused_kernels``,
numba) tests each element at all three tolerances in one vectorised pass over the stored bytes:
memory-bound, ~9x the numpy loop. "numpy" is the reference: chunks of ``chunk`` elements in
preallocated buffers, a dozen element-wise passes each. Either way memory is the stored tensors
plus O(chunk) buffers, never a float copy of a whole tensor. Both run single-threaded per range:
on a shared CPU, torch's intra-op thread pool made these memory-bound element-wise ops up to 100x
slower (threads waiting on each other); ``workers`` splits a large tensor into ranges instead.
bf16 is widened to float32 by a bit shift (bf16 is the top half of a float32).

The native 16-bit delta is never materialised: torch computes a bf16/fp16 difference in float32
and rounds it to the stored dtype, and rounding is monotonic, so ``|round(d)| <= tol`` is the
same as comparing the float32 ``|d|`` with the midpoint between the largest stored-dtype value
<= tol and the next one (inclusive when the former is even, as round-half-to-even sends the tie
there). The exact and bf16 rules give the same answer on the rounded and unrounded delta.
"""

from __future__ import annotations

import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

__all__ = ["TOLERANCE_KINDS", "BF16_RTOL", "ENGINES", "UpdatedCounts", "TensorComparison", "compare_tensor",
           "prepare_engine", "resolve_engine", "rounded_atol_threshold"]

TOLERANCE_KINDS = ("exact", "atol", "bf16")
BF16_RTOL = 1e-3
_HALF = (torch.bfloat16, torch.float16)
_FLOATS = (torch.bfloat16, torch.float16, torch.float32, torch.float64)


@dataclass
class UpdatedCounts:
    """How many of ``n_params`` parameters changed under each tolerance."""

    n_params: int = 0
    exact: int = 0
    atol: int = 0
    bf16: int = 0

    def add(self, other: UpdatedCounts) -> None:
        self.n_params += other.n_params
        self.exact += other.exact
        self.atol += other.atol
        self.bf16 += other.bf16

    def n_updated(self, tolerance: str) -> int:
        return getattr(self, tolerance)

    @property
    def updated_fraction(self) -> dict[str, float]:
        """1 - sparsity per tolerance (NaN for an empty group)."""
        n = self.n_params
        return {t: (getattr(self, t) / n if n else float("nan")) for t in TOLERANCE_KINDS}

    def to_dict(self) -> dict:
        return {"n_params": self.n_params, "n_updated": {t: getattr(self, t) for t in TOLERANCE_KINDS},
                "updated_fraction": self.updated_fraction}


@dataclass
class TensorComparison:
    """One tensor, base against K runs.

    counts[k]: UpdatedCounts of run k. both[i, j]: parameters changed (at the overlap tolerance)
    in both run i and run j (diagonal: in run i). consensus_hist[c]: parameters changed in
    exactly c of the first ``n_consensus`` runs. packed[k]: run k's mask as packed bits, or None.
    """

    counts: list[UpdatedCounts]
    both: np.ndarray
    consensus_hist: np.ndarray
    packed: list[np.ndarray | None] = field(default_factory=list)


def rounded_atol_threshold(tol: float, dtype: torch.dtype) -> tuple[float, bool]:
    """(m, inclusive) such that, for a float32 delta d, ``|round_dtype(d)| <= tol`` iff
    ``|d| < m`` or (``|d| == m`` and inclusive); round = round-half-to-even into bf16 / fp16."""
    t = torch.tensor([tol], dtype=torch.float64)
    b = t.to(dtype)
    bits = b.view(torch.int16)
    if float(b.double()) > tol:  # nearest was above tol: step one value down (tol >= 0, so bits > 0)
        bits = bits - 1
    b = bits.view(dtype)
    nxt = (bits + 1).view(dtype)
    m = (float(b.double()) + float(nxt.double())) / 2
    return m, int(bits) % 2 == 0


def _numpy_view(t: Tensor) -> np.ndarray:
    """Flat numpy view of a CPU tensor (bf16 as its raw uint16 bits)."""
    flat = t.detach().reshape(-1)
    if flat.dtype == torch.bfloat16:
        return flat.view(torch.int16).numpy().view(np.uint16)
    return flat.numpy()


def _as_float(src: np.ndarray, is_bf16: bool, s: int, e: int, buf: np.ndarray) -> np.ndarray:
    """Elements s:e of ``src`` as buf's float dtype: a view when no conversion is needed, else in buf."""
    c = e - s
    if is_bf16:
        u = buf[:c].view(np.uint32) if buf.dtype == np.float32 else None
        if u is None:  # float64 compute: widen through float32
            tmp = np.empty(c, np.uint32)
            np.copyto(tmp, src[s:e])
            np.left_shift(tmp, 16, out=tmp)
            np.copyto(buf[:c], tmp.view(np.float32))
            return buf[:c]
        np.copyto(u, src[s:e])
        np.left_shift(u, 16, out=u)
        return buf[:c]
    if src.dtype == buf.dtype:
        return src[s:e]
    np.copyto(buf[:c], src[s:e], casting="unsafe")
    return buf[:c]


ENGINES = ("auto", "fused", "numpy")
_NO_MASK = np.empty(0, np.uint8)
_FUSED_UNAVAILABLE: str | None = None  # why the fused kernels could not be loaded, once known


def fused_kernels():
    """The numba module ``fused_kernels``, or None when numba cannot be imported (reason kept)."""
    global _FUSED_UNAVAILABLE
    if _FUSED_UNAVAILABLE is not None:
        return None
    try:
        from . import fused_kernels as fk
    except ImportError as exc:  # numba missing, or too old / new for this numpy or Python
        _FUSED_UNAVAILABLE = f"{type(exc).__name__}: {exc}"
        warnings.warn(f"numba is not usable ({_FUSED_UNAVAILABLE}): weight diffs use the numpy engine "
                      "(same numbers, ~5x slower); `pip install numba` for the fused kernels",
                      RuntimeWarning, stacklevel=3)
        return None
    return fk


def resolve_engine(engine: str):
    """The fused-kernel module for "fused" (or "auto" when numba imports), None for "numpy"."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if engine == "numpy":
        return None
    fk = fused_kernels()
    if fk is None and engine == "fused":
        raise ImportError(f"the fused weight-diff kernels need numba ({_FUSED_UNAVAILABLE}); "
                          "`pip install numba`, or pass engine='numpy' (same numbers, ~5x slower in benchmarks/diff.py)")
    return fk


def prepare_engine(engine: str = "auto") -> str:
    """Load the fused kernels now (numba import, LLVM start-up, cached machine code: 0.4-0.5 s once
    per process; ~1.1 s the first time, when they compile) rather than inside the first diff.
    Returns the engine that diffs will use: "fused" or "numpy"."""
    fk = resolve_engine(engine)
    if fk is None:
        return "numpy"
    for dtype in (np.uint16, np.float32, np.float64):  # bf16 bits, and the float compute types
        ft = np.float64 if dtype == np.float64 else np.float32
        x = np.zeros(8, dtype)
        fk.count_changed(x, x, ft(0), ft(0), 0, np.empty(8, np.uint8))
    fk.tally_masks(np.zeros((2, 8), np.uint8), 8, 2, np.zeros((2, 2), np.int64), np.zeros(3, np.int64))
    return "fused"


@dataclass
class _RangeJob:
    """The chunk loop of ``compare_tensor`` over elements [lo, hi), with its own buffers.

    Per chunk, every run's changed counts (and, when overlaps, consensus or packed masks are
    wanted, its mask at ``mask_tolerance``) come from ``_fused_chunk`` (numba, one pass per run)
    or ``_numpy_chunk`` (the reference: numpy element-wise passes); the rest is shared.
    """

    src_x: np.ndarray
    src_r: list[np.ndarray]
    bf_x: bool
    bf_r: list[bool]
    ft: type
    thresholds: list[tuple[float, bool]]
    mask_tolerance: str
    n_consensus: int
    packed: list[np.ndarray | None]
    chunk: int
    fused: object = None  # the fused_kernels module, or None for the numpy reference

    def __post_init__(self):
        self.need_masks = len(self.src_r) > 1 or any(p is not None for p in self.packed) or self.n_consensus > 1
        # per run: can the fused kernel read it and the base as stored (bf16 bits = uint16, or the
        # compute dtype itself), with no widening into buffers?
        dx = self.src_x.dtype
        self.raw_ok = [r.dtype == dx and (dx == self.ft or (dx == np.uint16 and self.ft == np.float32))
                       for r in self.src_r]
        if self.fused is not None:  # the kernels test d <= thr only: strict thresholds become inclusive ones
            self.fused_thr = [self.fused.strict_to_inclusive(t, inc, self.ft) for t, inc in self.thresholds]

    def run(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k_runs, n_consensus, packed = len(self.src_r), self.n_consensus, self.packed
        need_masks, fused = self.need_masks, self.fused is not None
        widen = not fused or not all(self.raw_ok)
        c_max = self.chunk if need_masks or widen else max(hi - lo, 1)  # else: one kernel call, no buffers
        # one row per run; uint8 0/1 for the kernels, bool for numpy
        masks = np.empty((k_runs if need_masks else 0, c_max), np.uint8 if fused else bool)
        scratch = _Scratch(c_max if widen else 0, self.ft, fused=fused)
        both_buf = np.empty(c_max, bool) if k_runs > 1 and not fused else None
        csum = np.empty(c_max, np.uint8) if n_consensus > 1 and not fused else None
        counts = np.zeros((k_runs, 3), dtype=np.int64)
        both = np.zeros((k_runs, k_runs), dtype=np.int64)
        hist = np.zeros(max(n_consensus, 0) + 1, dtype=np.int64)
        chunk_fn = self._fused_chunk if fused else self._numpy_chunk
        with np.errstate(invalid="ignore"):  # inf - inf = NaN: counted as changed, on purpose
            for s in range(lo, hi, c_max):
                e = min(s + c_max, hi)
                c = e - s
                ms = [m[:c] for m in masks]
                counts += chunk_fn(s, e, ms, scratch)
                for k in range(k_runs):
                    if packed[k] is not None:
                        packed[k][s // 8:(e + 7) // 8] = np.packbits(ms[k])
                if fused and (k_runs > 1 or n_consensus > 1):
                    self.fused.tally_masks(masks, c, n_consensus, both, hist)
                    continue
                if k_runs > 1:
                    for i in range(k_runs):
                        for j in range(i + 1, k_runs):
                            np.logical_and(ms[i], ms[j], out=both_buf[:c])
                            both[i, j] += np.count_nonzero(both_buf[:c])
                if csum is not None:
                    cs = csum[:c]
                    cs.fill(0)
                    for k in range(n_consensus):
                        np.add(cs, ms[k], out=cs, casting="unsafe")
                    hist += np.bincount(cs, minlength=n_consensus + 1)
        return counts, both, hist

    def _fused_chunk(self, s: int, e: int, masks: list[np.ndarray], sc: _Scratch) -> np.ndarray:
        fk, ft = self.fused, self.ft
        out = np.zeros((len(self.src_r), 3), dtype=np.int64)
        rtol = ft(BF16_RTOL)
        xs_w = None
        for k, src in enumerate(self.src_r):
            if self.raw_ok[k]:
                xs, ys = self.src_x[s:e], src[s:e]
            else:  # mixed or fp16 storage: widen exactly into the compute dtype first
                if xs_w is None:
                    xs_w = _as_float(self.src_x, self.bf_x, s, e, sc.x)
                xs, ys = xs_w, _as_float(src, self.bf_r[k], s, e, sc.y)
            kind, mask = (TOLERANCE_KINDS.index(self.mask_tolerance), masks[k]) if masks else (-1, _NO_MASK)
            out[k] = fk.count_changed(xs, ys, self.fused_thr[k], rtol, kind, mask)
        return out

    def _numpy_chunk(self, s: int, e: int, masks: list[np.ndarray], sc: _Scratch) -> np.ndarray:
        c = e - s
        out = np.zeros((len(self.src_r), 3), dtype=np.int64)
        rtol = self.ft(BF16_RTOL)
        mask_tolerance = self.mask_tolerance
        xs = _as_float(self.src_x, self.bf_x, s, e, sc.x)
        axs = sc.ax[:c]
        np.abs(xs, out=axs)
        oks, ds, ts = sc.ok[:c], sc.d[:c], sc.t[:c]
        for k in range(len(self.src_r)):
            ys = _as_float(self.src_r[k], self.bf_r[k], s, e, sc.y)
            np.subtract(ys, xs, out=ds)
            np.abs(ds, out=ds)
            out[k, 0] = np.count_nonzero(ds)  # NaN != 0: counted as changed
            if masks and mask_tolerance == "exact":
                np.not_equal(ds, 0, out=masks[k])
            thr, inclusive = self.thresholds[k]
            (np.less_equal if inclusive else np.less)(ds, thr, out=oks)  # NaN: not unchanged
            out[k, 1] = c - np.count_nonzero(oks)
            if masks and mask_tolerance == "atol":
                np.logical_not(oks, out=masks[k])
            np.abs(ys, out=ts)
            np.maximum(ts, axs, out=ts)
            np.multiply(ts, rtol, out=ts)
            np.less_equal(ds, ts, out=oks)
            out[k, 2] = c - np.count_nonzero(oks)
            if masks and mask_tolerance == "bf16":
                np.logical_not(oks, out=masks[k])
        return out


class _Scratch:
    """Per-thread buffers of one chunk: widened inputs (both engines), temporaries (numpy only)."""

    def __init__(self, c_max: int, ft: type, fused: bool):
        self.x, self.y = np.empty(c_max, ft), np.empty(c_max, ft)
        if not fused:
            self.ax, self.t, self.d = np.empty(c_max, ft), np.empty(c_max, ft), np.empty(c_max, ft)
            self.ok = np.empty(c_max, bool)


def compare_tensor(base: Tensor, runs: list[Tensor], *, tol: float = 1e-5, compare: str = "native",
                   mask_tolerance: str = "atol", n_consensus: int = 0, pack: list[bool] | None = None,
                   chunk: int = 1 << 18, workers: int = 1, engine: str = "auto") -> TensorComparison:
    """Compare one stored tensor of the base with the same tensor of K runs (same shape).

    ``mask_tolerance`` picks the mask used for overlaps, the consensus histogram and packing.
    ``workers`` > 1 splits a large tensor into that many contiguous ranges compared in threads
    (numpy and the fused kernels release the GIL); results do not depend on it.
    ``engine``: "fused" (numba kernels, one pass per run), "numpy" (the reference, several
    passes per chunk) or "auto" (fused when numba imports); results do not depend on it.
    """
    fused = resolve_engine(engine)
    if compare not in ("native", "float32"):
        raise ValueError(f"compare must be 'native' or 'float32', got {compare!r}")
    if mask_tolerance not in TOLERANCE_KINDS:
        raise ValueError(f"mask_tolerance must be one of {TOLERANCE_KINDS}, got {mask_tolerance!r}")
    if chunk <= 0 or chunk % 8:
        raise ValueError("chunk must be a positive multiple of 8 (masks are packed 8 bits a byte)")
    if sys.byteorder != "little":  # pragma: no cover - the bf16 bit shift assumes little endian
        base, runs = base.float(), [r.float() for r in runs]
    for tensor in (base, *runs):
        if tensor.dtype not in _FLOATS:
            raise ValueError(f"compare_tensor needs floating-point tensors, got {tensor.dtype}")
    k_runs = len(runs)
    pack = list(pack) if pack is not None else [False] * k_runs
    n = base.numel()
    ft = np.float64 if base.dtype == torch.float64 or any(r.dtype == torch.float64 for r in runs) else np.float32
    # per run: atol threshold on the float delta and whether the boundary is inclusive
    thresholds = []
    for r in runs:
        if compare == "native" and r.dtype == base.dtype and base.dtype in _HALF and ft == np.float32:
            m, inclusive = rounded_atol_threshold(tol, base.dtype)
            thresholds.append((ft(m), inclusive))
        else:
            thresholds.append((ft(tol), True))
    job = _RangeJob(
        src_x=_numpy_view(base), src_r=[_numpy_view(r) for r in runs], bf_x=base.dtype == torch.bfloat16,
        bf_r=[r.dtype == torch.bfloat16 for r in runs], ft=ft, thresholds=thresholds,
        mask_tolerance=mask_tolerance, n_consensus=n_consensus,
        packed=[np.zeros((n + 7) // 8, dtype=np.uint8) if p else None for p in pack],
        chunk=max(8, min(chunk, -(-n // 8) * 8)), fused=fused)
    # contiguous ranges, multiples of 8 so packed bytes never straddle two ranges
    n_ranges = max(1, min(workers, n // (4 * job.chunk)))
    step = max(8, -(-n // (8 * n_ranges)) * 8)
    bounds = [(lo, min(lo + step, n)) for lo in range(0, n, step)] or [(0, 0)]
    if len(bounds) == 1:
        parts = [job.run(*bounds[0])]
    else:
        with ThreadPoolExecutor(max_workers=len(bounds)) as pool:
            parts = list(pool.map(lambda b: job.run(*b), bounds))
    counts = sum(p[0] for p in parts)
    both = sum(p[1] for p in parts)
    hist = sum(p[2] for p in parts)
    packed = job.packed
    if n_consensus == 1:
        hist[1] = counts[0, TOLERANCE_KINDS.index(mask_tolerance)]
        hist[0] = n - hist[1]
    elif n_consensus == 0:
        hist[0] = n
    ti = TOLERANCE_KINDS.index(mask_tolerance)
    for i in range(k_runs):
        both[i, i] = counts[i, ti]
        for j in range(i):
            both[i, j] = both[j, i]
    return TensorComparison(
        counts=[UpdatedCounts(n, int(a), int(b), int(cc)) for a, b, cc in counts],
        both=both, consensus_hist=hist, packed=packed)
