"""ActivationStore: a folder of safetensors shards plus `manifest.json`.

Layout (flat, token-major, no padding):
    manifest.json                 models, hooks, shapes, dtype, capture arguments, shard list
    inputs.safetensors            every example's token ids (flat) and offsets
    shard-000000000.safetensors   rows of a contiguous example range (named by its first example):
        tokens, example_index, position          Int[n_rows]
        <model>/<hook>                           Float[n_rows, d], one per model and hook
A paired store keeps base and RL activations in the same shard, so row r is the same token for
both. Shards are written to a temporary name and renamed, then the manifest is replaced the same
way: after an interrupt, the manifest lists only complete shards and a rerun continues from the
first example not covered, so no row is lost or duplicated (also when cluster workers write the
shards: the driver alone lists them, in example order). Each shard's sha256 is in the
manifest and is checked before its first read.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from hooks.errors import TwinlensError
from hooks.validation import check_int

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


def save_safetensors(tensors: dict[str, Tensor], path: str | os.PathLike, metadata: dict | None = None) -> None:
    """safetensors' save_file, with its I/O failures raised as the OSError they are (errno set):
    safetensors reports a full disk or a read-only folder as a SafetensorError whose text holds
    "(os error N)", which callers could not tell from a bad tensor."""
    try:
        save_file(tensors, str(path), metadata=metadata)
    except SafetensorError as exc:
        code = re.search(r"\(os error (\d+)\)", str(exc))
        if code is None:
            raise
        errno_ = int(code.group(1))
        raise OSError(errno_, os.strerror(errno_), str(path)) from exc


def save_tensors_atomic(tensors: dict[str, Tensor], path: Path, metadata: dict | None = None) -> str:
    """Write a safetensors file via temp + rename; return its sha256."""
    tmp = path.with_name(path.name + ".tmp")
    save_safetensors({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
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


_REQUIRED = {"models": dict, "hooks": list, "n_examples": int, "shards": list, "dtype": str}
_SHARD_KEYS = {"file": str, "rows": int, "example_start": int, "example_end": int, "sha256": str}
_FIX = ("Recapture into a new folder, or restore the manifest.json that the capture wrote (a store is "
        "only ever changed by hooks.capture).")


def check_manifest(root: Path, manifest: dict) -> None:
    """Cross-check ``manifest`` against the files of the store at ``root`` (run when a store is
    opened for reading and before a capture resumes into it), so that ``len(store)``, ``read()``
    and a resume agree with what is on disk:

    - the required keys and the keys of each shard entry exist with the right types;
    - shard files are plain names in ``root``, listed once, with a sha256 of 64 hex digits;
    - example ranges start at 0, are contiguous and non-overlapping (start == previous end,
      start < end <= n_examples), and a ``complete`` store covers every example;
    - each shard's row count equals the ``tokens`` rows in its safetensors header, every
      ``<model>/<hook>`` tensor has those rows, and (positions "all"/"last") the count matches the
      example lengths in ``inputs.safetensors``.

    Only headers are read here; the sha256 of a shard's bytes is checked before its first read
    (``verify``) and for every shard before a resume. Any inconsistency is a TwinlensError that
    names the shard and the fix.
    """
    where = root / MANIFEST
    for key, typ in _REQUIRED.items():
        if not isinstance(manifest.get(key), typ) or isinstance(manifest.get(key), bool):
            raise TwinlensError(f"{where} lacks {key!r} (or it is not a {typ.__name__}); the store's manifest was "
                                f"edited or damaged. {_FIX}")
    n_examples = manifest["n_examples"]
    keys = [f"{m}/{h}" for m in manifest["models"] for h in manifest["hooks"]]
    lengths = None
    positions = (manifest.get("capture_args") or {}).get("positions")
    if positions in ("all", "last") and (root / INPUTS).exists():
        try:
            with safe_open(str(root / INPUTS), framework="pt") as f:
                offsets = f.get_tensor("offsets")
        except Exception as exc:  # safetensors raises its own error type for a damaged file
            raise TwinlensError(f"{root / INPUTS} is damaged ({exc.__class__.__name__}); {_FIX}") from None
        if offsets.numel() != n_examples + 1:
            raise TwinlensError(f"{root / INPUTS} holds {offsets.numel() - 1} examples but {where} says "
                                f"{n_examples}; {_FIX}")
        lengths = (offsets[1:] - offsets[:-1]).tolist()
    seen: set[str] = set()
    end = 0
    for i, entry in enumerate(manifest["shards"]):
        name = entry.get("file") if isinstance(entry, dict) else None
        label = f"Shard entry {i} ({name!r}) of {where}"
        if not isinstance(entry, dict) or any(
                not isinstance(entry.get(k), t) or isinstance(entry.get(k), bool) for k, t in _SHARD_KEYS.items()):
            raise TwinlensError(f"{label} lacks one of {sorted(_SHARD_KEYS)} or has a wrong type. {_FIX}")
        if Path(name).name != name or name in (MANIFEST, INPUTS) or name in seen:
            raise TwinlensError(f"{label}: the file must be a shard name in the store folder, listed once. {_FIX}")
        seen.add(name)
        if len(entry["sha256"]) != 64 or any(c not in "0123456789abcdef" for c in entry["sha256"]):
            raise TwinlensError(f"{label}: sha256 {entry['sha256']!r} is not a sha256 digest. {_FIX}")
        start, stop = entry["example_start"], entry["example_end"]
        if start != end or not start < stop <= n_examples:
            raise TwinlensError(
                f"{label} covers examples {start}-{stop}, but the shards before it end at example {end} "
                f"(of {n_examples}): ranges must be contiguous, non-overlapping and within the inputs. "
                f"Keep only the shards before it (drop this entry and every later one from {MANIFEST}) "
                "and rerun the same capture to resume, or recapture into a new folder."
            )
        end = stop
        path = root / name
        if not path.exists():
            raise TwinlensError(f"Shard {name} of {root} is missing; recapture it by rerunning the same capture "
                                f"after dropping its entry and every later one from {MANIFEST} (it resumes).")
        try:
            with safe_open(str(path), framework="pt") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as exc:  # SafetensorError / OSError on a cut or overwritten file
            raise TwinlensError(
                f"Shard {name} of {root} is corrupted or truncated (its header does not read: "
                f"{exc.__class__.__name__}). Drop its entry and every later one from {MANIFEST} and "
                "rerun the same capture (it resumes), or recapture into a new folder."
            ) from None
        rows = shapes.get("tokens", (None,))[0]
        if rows != entry["rows"]:
            raise TwinlensError(f"Shard {name} of {root} holds {rows} rows but {MANIFEST} says {entry['rows']}. {_FIX}")
        bad = [k for k in ["example_index", "position", *keys] if k not in shapes or shapes[k][0] != rows]
        if bad:
            raise TwinlensError(f"Shard {name} of {root} lacks {bad[:3]} or holds another row count than its "
                                f"{rows} tokens. {_FIX}")
        if lengths is not None:
            want = sum(lengths[start:stop]) if positions == "all" else stop - start
            if rows != want:
                raise TwinlensError(
                    f"Shard {name} of {root} holds {rows} rows, but examples {start}-{stop} at positions "
                    f"{positions!r} have {want} tokens. {_FIX}")
    if manifest.get("complete") and end != n_examples:
        raise TwinlensError(f"{where} says the capture is complete, but its shards end at example {end} of "
                            f"{n_examples}. Set \"complete\" to false and rerun the same capture to resume.")


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
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
            raise TwinlensError(f"{path} has format {found!r}, expected {FORMAT!r}.")
        check_manifest(root, manifest)
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
        """Token ids of example i (0 <= i < n_examples) as given to the model (all positions,
        stored or not)."""
        i = check_int("example index", i, minimum=0, maximum=self.n_examples - 1)
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
