"""Rank of a weight update and how the singular spectrum / top singular subspaces moved.

Definitions (RESEARCH.md section 2):
- update rank = ``torch.linalg.matrix_rank(delta.float()) / min(shape)``, default tolerance
  ``sigma_max * max(m, n) * eps(float32)`` (Mukherjee et al.).
- normalized spectral shift = ``||sigma(W') - sigma(W)||_2 / ||sigma(W)||_2`` (singular values
  sorted descending, all min(m, n) of them).
- principal angles between the top-k left (and right) singular subspaces of W and W', in degrees.

``method="gram"`` is a faster approximation for very large matrices, labelled as such wherever
it is used: singular values from the eigenvalues of the float64 Gram matrix ``D^T D`` (the
smaller side), accumulated over row blocks so memory stays ``n x n``. Its relative accuracy on
a singular value is ~sqrt(eps64 * n) ~ 1e-6 of sigma_max, far below the float32 rank tolerance
(>= 1e-4 of sigma_max for matrices with max side >= 1000), so only singular values within that
distance of the threshold can be counted differently from the exact SVD.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["RANK_METHODS", "single_thread_if_small", "update_rank", "singular_values", "top_singular_subspaces",
           "principal_angles_deg", "spectral_shift", "SpectralShift", "compare_spectra"]

RANK_METHODS = ("exact", "gram", "auto")
Float2D = Tensor  # "m n": a 2-D float matrix (alias for readable signatures)
_ROW_BLOCK = 1 << 14


SMALL_MATRIX = 1 << 20


@contextmanager
def single_thread_if_small(numel: int, device: str | torch.device = "cpu") -> Iterator[None]:
    """Run torch on one CPU thread for a small matrix, restoring the thread count afterwards.

    On a shared CPU, OpenMP threads waiting on each other made SVDs of small matrices ~40x
    slower (organism, 2 busy cores: 14.7 s with 2 threads vs 0.4 s with 1); below ~1M
    elements a second thread gains nothing anyway. Large matrices keep the user's setting.
    """
    if numel >= SMALL_MATRIX or torch.device(device).type != "cpu" or torch.get_num_threads() == 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _choose(method: str, mat: Tensor, gram_threshold: int) -> str:
    if method not in RANK_METHODS:
        raise ValueError(f"method must be one of {RANK_METHODS}, got {method!r}")
    if method == "auto":
        return "gram" if mat.numel() > gram_threshold else "exact"
    return method


def _gram(mat: Tensor) -> Tensor:
    """float64 ``M^T M`` for a tall (m >= n) matrix, accumulated over row blocks."""
    n = mat.shape[1]
    g = torch.zeros(n, n, dtype=torch.float64, device=mat.device)
    for s in range(0, mat.shape[0], _ROW_BLOCK):
        blk = mat[s:s + _ROW_BLOCK].to(torch.float64)
        g.addmm_(blk.T, blk)
    return g


def singular_values(mat: Tensor, method: str = "exact", gram_threshold: int = 1 << 26) -> tuple[Tensor, str]:
    """All min(m, n) singular values of ``mat`` (descending, float64 on CPU) and the method used."""
    method = _choose(method, mat, gram_threshold)
    if method == "exact":
        return torch.linalg.svdvals(mat.float()).double().cpu(), "exact"
    tall = mat if mat.shape[0] >= mat.shape[1] else mat.T
    ev = torch.linalg.eigvalsh(_gram(tall))
    return ev.clamp_min(0).sqrt().flip(0).cpu(), "gram"


def update_rank(delta: Float2D, method: str = "exact", gram_threshold: int = 1 << 26) -> tuple[int, str]:
    """(rank of ``delta`` with matrix_rank's default float32 tolerance, method used)."""
    method = _choose(method, delta, gram_threshold)
    if method == "exact":
        return int(torch.linalg.matrix_rank(delta.float())), "exact"
    sigma, _ = singular_values(delta, "gram")
    if sigma.numel() == 0 or float(sigma[0]) == 0.0:
        return 0, "gram"
    tol = float(sigma[0]) * max(delta.shape) * torch.finfo(torch.float32).eps
    return int((sigma > tol).sum()), "gram"


def top_singular_subspaces(mat: Float2D, k: int, method: str = "exact", gram_threshold: int = 1 << 26
                           ) -> tuple[Tensor, Tensor, Tensor, str]:
    """(sigma: all singular values desc, U_k: "m k", V_k: "n k", method) in float64 on CPU."""
    method = _choose(method, mat, gram_threshold)
    k = min(k, *mat.shape)
    if method == "exact":
        u, s, vh = torch.linalg.svd(mat.float(), full_matrices=False)
        return s.double().cpu(), u[:, :k].double().cpu(), vh[:k].T.double().cpu(), "exact"
    transposed = mat.shape[0] < mat.shape[1]
    tall = mat.T if transposed else mat
    ev, vecs = torch.linalg.eigh(_gram(tall))
    ev, vecs = ev.flip(0), vecs.flip(1)
    sigma = ev.clamp_min(0).sqrt()
    v = vecs[:, :k]
    # left vectors of the top-k: U_k = M V_k / sigma_k (well conditioned for the top of the spectrum)
    u = (tall.to(torch.float64) @ v) / sigma[:k].clamp_min(torch.finfo(torch.float64).tiny)
    if transposed:
        u, v = v, u
    return sigma.cpu(), u.cpu(), v.cpu(), "gram"


def principal_angles_deg(q1: Tensor, q2: Tensor) -> list[float]:
    """Principal angles (degrees, ascending) between the column spaces of orthonormal q1, q2 ("m k").

    Small angles come from the sines (svdvals of q2 - q1 q1^T q2), large ones from the cosines
    (svdvals of q1^T q2): arccos alone loses all precision near 0 degrees.
    """
    q1, q2 = q1.double(), q2.double()
    cos = torch.linalg.svdvals(q1.T @ q2).clamp(0, 1)  # descending -> angles ascending
    sin = torch.linalg.svdvals(q2 - q1 @ (q1.T @ q2)).clamp(0, 1).flip(0)  # ascending
    k = min(cos.numel(), sin.numel())
    out = []
    for c, s in zip(cos[:k].tolist(), sin[:k].tolist(), strict=True):
        ang = math.asin(s) if s < math.sqrt(0.5) else math.acos(c)
        out.append(math.degrees(ang))
    return sorted(out)


def spectral_shift(sigma_base: Tensor, sigma_new: Tensor) -> float:
    """||sigma' - sigma||_2 / ||sigma||_2 (NaN when W is all zeros)."""
    denom = float(torch.linalg.vector_norm(sigma_base.double()))
    if denom == 0.0:
        return float("nan")
    return float(torch.linalg.vector_norm(sigma_new.double() - sigma_base.double())) / denom


@dataclass
class SpectralShift:
    """Spectral view of one matrix: W (base) against W' (run)."""

    name: str
    shape: tuple[int, ...]
    k: int
    spectral_shift: float
    left_angles_deg: list[float]
    right_angles_deg: list[float]
    method: str

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "k": self.k, "spectral_shift": self.spectral_shift,
                "max_left_angle_deg": max(self.left_angles_deg, default=0.0),
                "max_right_angle_deg": max(self.right_angles_deg, default=0.0),
                "left_angles_deg": self.left_angles_deg, "right_angles_deg": self.right_angles_deg,
                "method": self.method}


def compare_spectra(name: str, base: tuple[Tensor, Tensor, Tensor, str], new: tuple[Tensor, Tensor, Tensor, str],
                    shape: tuple[int, ...]) -> SpectralShift:
    """SpectralShift from two ``top_singular_subspaces`` results of the same-shaped matrices."""
    s0, u0, v0, m0 = base
    s1, u1, v1, m1 = new
    return SpectralShift(name=name, shape=tuple(shape), k=u0.shape[1], spectral_shift=spectral_shift(s0, s1),
                         left_angles_deg=principal_angles_deg(u0, u1),
                         right_angles_deg=principal_angles_deg(v0, v1),
                         method=m0 if m0 == m1 else f"{m0}/{m1}")
