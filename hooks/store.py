"""ActivationStore: a folder of safetensors shards plus `manifest.json`.

Layout (flat, token-major, no padding):
    manifest.json                 models, hooks, shapes, dtype, capture arguments, shard list
    inputs.safetensors            every example's token ids (flat) and offsets
    shard-00000.safetensors       rows of a contiguous example range:
        tokens, example_index, position          Int[n_rows]
        <model>/<hook>                           Float[n_rows, d], one per model and hook
A paired store keeps base and RL activations in the same shard, so row r is the same token for
both. Shards are written to a temporary name and renamed, then the manifest is replaced the same
way: after an interrupt, the manifest lists only complete shards and a rerun continues from the
first example not covered, so no row is lost or duplicated. Each shard's sha256 is in the
manifest and is checked before its first read.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from hooks.errors import TwinlensError

MANIFEST = "manifest.json"
INPUTS = "inputs.safetensors"
FORMAT = "twinlens.activation_store/1"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_tensors_atomic(tensors: dict[str, Tensor], path: Path, metadata: dict | None = None) -> str:
    """Write a safetensors file via temp + rename; return its sha256."""
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    digest = sha256_file(tmp)
    os.replace(tmp, path)
    return digest


@dataclass(frozen=True)
class ShardInfo:
    file: str
    rows: int
    example_start: int
    example_end: int  # exclusive
    sha256: str


class ActivationStore:
    """Read side of a capture folder. Reads are lazy and per hook; nothing is loaded at open."""

    def __init__(self, root: Path, manifest: dict):
        self.root = Path(root)
        self.manifest = manifest
        self._verified: set[str] = set()
        self._index: dict[str, Tensor] | None = None

    # ----------------------------------------------------------------- opening
    @classmethod
    def open(cls, root: str | os.PathLike) -> ActivationStore:
        root = Path(root)
        path = root / MANIFEST
        if not path.exists():
            raise TwinlensError(
                f"{root} is not an activation store (no {MANIFEST}); capture into it first with "
                "hooks.capture(...) or scripts/capture.py."
            )
        try:
            manifest = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise TwinlensError(f"{path} is not valid JSON ({exc}); the store is damaged.") from None
        if manifest.get("format") != FORMAT:
            raise TwinlensError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}.")
        return cls(root, manifest)

    # ----------------------------------------------------------------- metadata
    @property
    def shards(self) -> list[ShardInfo]:
        return [ShardInfo(**s) for s in self.manifest["shards"]]

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def hooks(self) -> list[str]:
        return list(self.manifest["hooks"])

    @property
    def model_keys(self) -> list[str]:
        return list(self.manifest["models"])

    @property
    def models(self) -> dict[str, dict]:
        return dict(self.manifest["models"])

    @property
    def n_examples(self) -> int:
        return int(self.manifest["n_examples"])

    @property
    def n_rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def __len__(self) -> int:
        return self.n_rows

    def __repr__(self) -> str:
        return (
            f"ActivationStore({str(self.root)!r}, models={self.model_keys}, hooks={len(self.hooks)}, "
            f"rows={self.n_rows}, examples={self.n_examples}, complete={self.complete})"
        )

    # ----------------------------------------------------------------- inputs
    def example_tokens(self, i: int) -> list[int]:
        """Token ids of example i as given to the model (all positions, stored or not)."""
        with safe_open(str(self.root / INPUTS), framework="pt") as f:
            offsets = f.get_tensor("offsets")
            flat = f.get_slice("tokens")[int(offsets[i]) : int(offsets[i + 1])]
        return flat.tolist()

    # ----------------------------------------------------------------- reading
    def _shard_path(self, shard: ShardInfo) -> Path:
        return self.root / shard.file

    def verify(self, shard: ShardInfo | None = None) -> None:
        """Check the sha256 of one shard (or all); a missing, truncated or corrupted shard is
        reported by name."""
        targets = [shard] if shard is not None else self.shards
        for s in targets:
            if s.file in self._verified:
                continue
            path = self._shard_path(s)
            if not path.exists():
                raise TwinlensError(f"Shard {s.file} of {self.root} is missing; recapture it by "
                                    "rerunning the same capture (it resumes).")
            if sha256_file(path) != s.sha256:
                raise TwinlensError(
                    f"Shard {s.file} of {self.root} is corrupted or truncated (checksum mismatch). "
                    f"Delete {path.name}, remove its entry from {MANIFEST} (or capture anew into an "
                    "empty folder) and rerun the capture."
                )
            self._verified.add(s.file)

    def _read_key(self, key: str) -> Tensor:
        parts = []
        for s in self.shards:
            self.verify(s)
            with safe_open(str(self._shard_path(s)), framework="pt") as f:
                parts.append(f.get_tensor(key))
        if not parts:
            raise TwinlensError(f"{self.root} holds no rows yet; run the capture.")
        return torch.cat(parts)

    def _index_tensors(self) -> dict[str, Tensor]:
        if self._index is None:
            self._index = {k: self._read_key(k) for k in ("tokens", "example_index", "position")}
        return self._index

    @property
    def tokens(self) -> Int[Tensor, " n_tokens"]:
        return self._index_tensors()["tokens"]

    @property
    def example_index(self) -> Int[Tensor, " n_tokens"]:
        return self._index_tensors()["example_index"]

    @property
    def position(self) -> Int[Tensor, " n_tokens"]:
        return self._index_tensors()["position"]

    def _key(self, hook: str, model: str | None) -> str:
        if hook not in self.hooks:
            import difflib

            raise TwinlensError(
                f"Hook {hook!r} is not in this store. Stored hooks: "
                f"{difflib.get_close_matches(hook, self.hooks, n=5, cutoff=0.3) or self.hooks[:5]}"
            )
        if model is None:
            if len(self.model_keys) != 1:
                raise TwinlensError(
                    f"This store holds several models {self.model_keys}; pass model=... to read()."
                )
            model = self.model_keys[0]
        if model not in self.model_keys:
            raise TwinlensError(f"Model {model!r} is not in this store; it holds {self.model_keys}.")
        return f"{model}/{hook}"

    def read(self, hook: str, model: str | None = None) -> Float[Tensor, "n_tokens d"]:
        """All stored rows of one hook for one model, in row order (memory: this hook only)."""
        return self._read_key(self._key(hook, model))

    def read_layer(self, layer: int, model: str | None = None, point: str = "hook_out") -> Tensor:
        return self.read(f"blocks.{layer}.{point}", model)

    def iter_shards(self, hook: str, model: str | None = None) -> Iterator[tuple[ShardInfo, Tensor]]:
        """(shard, activations) one shard at a time: memory bounded by one shard."""
        key = self._key(hook, model)
        for s in self.shards:
            self.verify(s)
            with safe_open(str(self._shard_path(s)), framework="pt") as f:
                yield s, f.get_tensor(key)
