"""Changed-parameter masks: packed bits on disk, and patching RL values into a copy of the base.

File format: a safetensors file with one uint8 tensor per parameter, the mask flattened in
row-major order and packed 8 per byte by ``numpy.packbits`` (big bit order, zero padded); the
metadata holds ``format`` ("twinlens-packed-mask-v1"), ``shapes`` (JSON: name -> original shape)
and whatever the writer adds (tolerance kind and value, the checkpoints compared).

    masks = load_masks("masks_rl.safetensors")       # {name: BoolTensor of the original shape}
    hybrid = patch(base_model, rl_model, masks)      # new model; base and rl untouched
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from torch import Tensor, nn

from hooks.errors import TwinlensError
from hooks.store import save_safetensors

__all__ = ["MASK_FORMAT", "PackedMasks", "pack_mask", "unpack_mask", "save_masks", "load_masks",
           "read_mask_metadata", "patch"]

MASK_FORMAT = "twinlens-packed-mask-v1"


def pack_mask(mask: Tensor) -> np.ndarray:
    """Bool tensor of any shape -> uint8 array of ceil(numel / 8) bytes (row-major, big bit order)."""
    flat = mask.detach().reshape(-1).to(torch.bool).cpu().numpy()
    return np.packbits(flat)


def unpack_mask(packed: np.ndarray | Tensor, shape: tuple[int, ...] | list[int]) -> Tensor:
    """Inverse of ``pack_mask``: a bool tensor of ``shape``."""
    arr = packed.cpu().numpy() if isinstance(packed, Tensor) else np.asarray(packed)
    n = math.prod(shape)
    if arr.size != (n + 7) // 8:
        raise TwinlensError(f"packed mask has {arr.size} bytes, expected {(n + 7) // 8} for shape {tuple(shape)}.")
    bits = np.unpackbits(arr.astype(np.uint8, copy=False), count=n).astype(bool)
    return torch.from_numpy(bits).reshape(tuple(shape))


@dataclass
class PackedMasks:
    """Masks of one run kept packed in memory (1 bit per parameter): name -> uint8 array."""

    tolerance: str
    tol: float
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    packed: dict[str, np.ndarray] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.packed)

    def __getitem__(self, name: str) -> Tensor:
        return unpack_mask(self.packed[name], self.shapes[name])

    def names(self) -> list[str]:
        return list(self.packed)

    def to_tensors(self) -> dict[str, Tensor]:
        """Unpacked {name: BoolTensor} (8x the packed memory)."""
        return {n: self[n] for n in self.packed}

    def count(self) -> int:
        """Number of True entries over all masks."""
        return int(sum(int(np.unpackbits(p).sum()) for p in self.packed.values()))

    def save(self, path: str | os.PathLike) -> Path:
        meta = {"tolerance": self.tolerance, "tol": repr(self.tol), **self.metadata}
        return _save_packed(path, self.packed, self.shapes, meta)


def _save_packed(path, packed: Mapping[str, np.ndarray], shapes: Mapping[str, tuple[int, ...]],
                 metadata: Mapping[str, str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {str(k): str(v) for k, v in metadata.items()}
    meta["format"] = MASK_FORMAT
    meta["shapes"] = json.dumps({n: list(s) for n, s in shapes.items()})
    tensors = {n: torch.from_numpy(np.ascontiguousarray(a, dtype=np.uint8)) for n, a in packed.items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_safetensors(tensors, tmp, metadata=meta)
    os.replace(tmp, path)
    return path


def save_masks(path: str | os.PathLike, masks: PackedMasks | Mapping[str, Tensor],
               metadata: Mapping[str, str] | None = None) -> Path:
    """Write masks (PackedMasks, or {name: BoolTensor}) as packed bits to a safetensors file."""
    if isinstance(masks, PackedMasks):
        if metadata:
            masks = PackedMasks(masks.tolerance, masks.tol, masks.shapes, masks.packed, {**masks.metadata, **metadata})
        return masks.save(path)
    packed = {n: pack_mask(m) for n, m in masks.items()}
    shapes = {n: tuple(m.shape) for n, m in masks.items()}
    return _save_packed(path, packed, shapes, metadata or {})


def read_mask_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a mask file (``shapes`` decoded is left as JSON text)."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_masks(path: str | os.PathLike) -> dict[str, Tensor]:
    """{name: BoolTensor of the original shape} from a file written by ``save_masks``."""
    path = Path(path)
    if not path.is_file():
        raise TwinlensError(f"mask file {path} does not exist; write one with `scripts/diff.py --save-masks`.")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != MASK_FORMAT:
            raise TwinlensError(f"{path} is not a twinlens mask file (metadata format {meta.get('format')!r}).")
        shapes = json.loads(meta["shapes"])
        return {n: unpack_mask(f.get_tensor(n), shapes[n]) for n in f.keys()}


def _resolve_param(params: Mapping[str, nn.Parameter], name: str, prefix: str) -> str | None:
    if name in params:
        return name
    if prefix and f"{prefix}.{name}" in params:  # old hub files store names without the model prefix
        return f"{prefix}.{name}"
    if prefix and name.startswith(prefix + ".") and name[len(prefix) + 1:] in params:
        return name[len(prefix) + 1:]
    return None


def patch(base_model: nn.Module, rl_model: nn.Module, mask: Mapping[str, Tensor] | str | os.PathLike) -> nn.Module:
    """A NEW model: a deep copy of ``base_model`` whose parameters take ``rl_model``'s values where
    ``mask`` is True and keep the base values elsewhere. Neither input is modified.

    ``mask`` is {parameter name: BoolTensor of the parameter's shape} or a mask file path.
    Parameters without a mask stay at base values. Tied parameters appear once (under the name
    ``named_parameters`` gives them), so patching the embedding also patches a tied output matrix.
    Raises TwinlensError for a mask naming no parameter, or a shape that does not match.
    """
    if isinstance(mask, (str, os.PathLike)):
        mask = load_masks(mask)
    base_params = dict(base_model.named_parameters())
    rl_params = dict(rl_model.named_parameters())
    if base_params.keys() != rl_params.keys():
        diff = sorted(base_params.keys() ^ rl_params.keys())
        raise TwinlensError(f"base and RL models have different parameters (first: {diff[:5]}); "
                            "patch needs two models of the same architecture.")
    prefix = getattr(base_model, "base_model_prefix", "") or ""
    plan: list[tuple[str, Tensor]] = []
    unknown = []
    for name, m in mask.items():
        pname = _resolve_param(base_params, name, prefix)
        if pname is None:
            unknown.append(name)
            continue
        if tuple(m.shape) != tuple(base_params[pname].shape):
            raise TwinlensError(f"mask {name!r} has shape {tuple(m.shape)}, parameter has "
                                f"{tuple(base_params[pname].shape)}; the mask belongs to another model.")
        if tuple(rl_params[pname].shape) != tuple(base_params[pname].shape):
            raise TwinlensError(f"parameter {pname!r} has shape {tuple(base_params[pname].shape)} in the base model "
                                f"and {tuple(rl_params[pname].shape)} in the RL model.")
        plan.append((pname, m))
    if unknown:
        raise TwinlensError(f"{len(unknown)} mask name(s) match no model parameter, e.g. {unknown[:5]}; "
                            f"parameters look like {list(base_params)[:3]}.")
    new = copy.deepcopy(base_model)
    new_params = dict(new.named_parameters())
    with torch.no_grad():
        for pname, m in plan:
            p = new_params[pname]
            src = rl_params[pname].detach().to(device=p.device, dtype=p.dtype)
            p.copy_(torch.where(m.to(device=p.device, dtype=torch.bool), src, p))
    return new
