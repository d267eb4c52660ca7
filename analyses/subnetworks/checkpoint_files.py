"""Read a checkpoint tensor by tensor straight from its safetensors files; no model is built.

A checkpoint is a local folder (``model.safetensors``, or shards listed by
``model.safetensors.index.json``, or any ``*.safetensors`` files), a single ``.safetensors``
file, or a Hugging Face hub id resolved through the local cache with
``huggingface_hub.snapshot_download`` (``local_files_only`` when ``HF_HUB_OFFLINE`` is set).
Pickle checkpoints (``pytorch_model.bin``) are refused: twinlens never unpickles.

Memory: ``load(name)`` opens the file with ``safetensors.safe_open`` for that one tensor. The
tensor is a view of a private memory map, so its pages count towards RSS only while it is alive
and only once touched; dropping the tensor unmaps it. Holding one ``safe_open`` handle across
tensors would instead keep every page read so far mapped, i.e. RSS would grow to the file size.
``prefetch(name)`` asks the kernel to read the tensor's byte range ahead (``POSIX_FADV_WILLNEED``),
which overlaps disk reads with the computation on the previous tensor without using process memory.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from hooks.errors import TwinlensError
from hooks.safetensors_files import read_safetensors_header

__all__ = ["CheckpointNotFoundError", "SafetensorsCheckpoint", "TensorEntry", "resolve_checkpoint_files"]

# safetensors dtype strings -> (torch dtype, is floating point)
_DTYPES = {
    "F64": (torch.float64, True), "F32": (torch.float32, True), "F16": (torch.float16, True),
    "BF16": (torch.bfloat16, True), "I64": (torch.int64, False), "I32": (torch.int32, False),
    "I16": (torch.int16, False), "I8": (torch.int8, False), "U8": (torch.uint8, False),
    "BOOL": (torch.bool, False),
}
_PICKLE_PATTERNS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt", "*.bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


class CheckpointNotFoundError(TwinlensError, FileNotFoundError):
    """A checkpoint folder, file or hub id that cannot be found."""


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lives: file, dtype string, shape and absolute byte range in the file."""

    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.end - self.start

    @property
    def is_float(self) -> bool:
        return _DTYPES.get(self.dtype, (None, self.dtype.startswith(("F", "BF"))))[1]


def _hub_offline() -> bool:
    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    if flag in {"1", "ON", "YES", "TRUE"}:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover - huggingface_hub is a transformers dependency
        return False


def _download(source: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover
        raise TwinlensError(f"{source!r} is not a local path and huggingface_hub is not installed.") from exc
    offline = _hub_offline()
    try:
        folder = snapshot_download(
            source, local_files_only=offline,
            allow_patterns=["*.safetensors", "*.safetensors.index.json", "config.json"],
        )
    except Exception as exc:
        if offline:
            fix = (f"download it once with network access (`hf download {source}`, without "
                   f"HF_HUB_OFFLINE=1), or pass a local folder holding *.safetensors")
        else:
            fix = "check the hub id and your network / token, or pass a local folder holding *.safetensors"
        raise CheckpointNotFoundError(
            f"checkpoint {source!r} is not a local folder or file, and the hub did not provide it "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); {fix}."
        ) from exc
    return Path(folder)


def resolve_checkpoint_files(source: str | os.PathLike) -> tuple[Path, list[Path]]:
    """(folder, safetensors files) for a folder, a single .safetensors file or a hub id.

    Raises CheckpointNotFoundError for a missing path, TwinlensError for a folder without
    safetensors (naming the fix when it holds a pickle checkpoint instead).
    """
    path = Path(os.path.expanduser(str(source)))
    if path.is_file():
        if path.suffix != ".safetensors":
            raise TwinlensError(f"{path} is not a .safetensors file; pass the checkpoint folder or a .safetensors file.")
        return path.parent, [path]
    if not path.exists():
        text = str(source)
        # a hub id is "name" or "org/name"; anything else is a path that does not exist
        looks_like_path = text.startswith(("/", ".", "~")) or text.count("/") > 1 or "\\" in text
        if looks_like_path or not _HUB_ID.match(text):
            raise CheckpointNotFoundError(f"checkpoint folder {text!r} does not exist; pass an existing folder "
                                          f"holding *.safetensors files, or a hub id like 'Qwen/Qwen2.5-Math-1.5B'.")
        path = _download(text)
    if not path.is_dir():
        raise CheckpointNotFoundError(f"checkpoint {str(source)!r} is neither a folder nor a .safetensors file.")

    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise TwinlensError(f"{index} is not a valid safetensors index (no 'weight_map').") from exc
        files = sorted({path / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise TwinlensError(f"{index} lists shards that are not in {path}: {missing[:5]}; "
                                "the download is incomplete, fetch the missing shards.")
        return path, files
    if (path / "model.safetensors").is_file():
        return path, [path / "model.safetensors"]
    files = sorted(f for f in path.glob("*.safetensors") if not f.name.startswith("adapter_"))
    if files:
        return path, files
    if sorted(path.glob("adapter_*.safetensors")):
        raise TwinlensError(f"{path} holds only a LoRA adapter; merge it into the base model first "
                            "(peft: `model.merge_and_unload().save_pretrained(dir)`) and diff the merged folder.")
    pickles = sorted({f.name for pat in _PICKLE_PATTERNS for f in path.glob(pat)})
    if pickles:
        raise TwinlensError(
            f"{path} has only pickle weights ({', '.join(pickles[:3])}); twinlens never unpickles a checkpoint. "
            "Convert it once to safetensors: load it with transformers in a trusted environment and call "
            "`model.save_pretrained(dir, safe_serialization=True)`, then pass that folder.")
    raise TwinlensError(f"no *.safetensors files in {path}; pass a folder saved with `save_pretrained`.")


def _read_header(file: Path) -> dict[str, TensorEntry]:
    """The tensor index of one file, through the kit's one safetensors header check
    (hooks.safetensors_files: a damaged or truncated file is a TwinlensError naming it)."""
    return {name: TensorEntry(name, file, info["dtype"], info["shape"], info["start"], info["end"])
            for name, info in read_safetensors_header(file).items()}


class SafetensorsCheckpoint:
    """One checkpoint's tensors, read lazily one at a time.

    >>> ck = SafetensorsCheckpoint("path/or/hub-id")
    >>> ck.names[:2], ck.entries["model.norm.weight"].shape
    >>> w = ck.load("model.layers.0.mlp.up_proj.weight")   # memory-mapped, freed when dropped
    """

    def __init__(self, source: str | os.PathLike):
        self.source = str(source)
        self.folder, self.files = resolve_checkpoint_files(source)
        self.entries: dict[str, TensorEntry] = {}
        for file in self.files:
            for name, entry in _read_header(file).items():
                if name in self.entries:
                    raise TwinlensError(f"tensor {name!r} is stored twice ({self.entries[name].file.name} and "
                                        f"{file.name}) in {self.folder}; remove the stale shard.")
                self.entries[name] = entry
        if not self.entries:
            raise TwinlensError(f"the safetensors files in {self.folder} hold no tensors.")
        config = self.folder / "config.json"
        try:
            self.config: dict = json.loads(config.read_text()) if config.is_file() else {}
        except json.JSONDecodeError:
            self.config = {}
        self._fds: dict[Path, int] = {}

    def __repr__(self) -> str:
        return f"SafetensorsCheckpoint({self.source!r}, {len(self.entries)} tensors in {len(self.files)} file(s))"

    @property
    def names(self) -> list[str]:
        """Tensor names in storage order (file, then byte offset): reading in this order is sequential."""
        return sorted(self.entries, key=lambda n: (str(self.entries[n].file), self.entries[n].start))

    @property
    def tie_word_embeddings(self) -> bool | None:
        """``config.json``'s ``tie_word_embeddings`` (also under ``text_config``), or None if not stated."""
        for cfg in (self.config, self.config.get("text_config") or {}):
            if isinstance(cfg, dict) and "tie_word_embeddings" in cfg:
                return bool(cfg["tie_word_embeddings"])
        return None

    def load(self, name: str) -> torch.Tensor:
        """The stored tensor ``name`` (stored dtype, CPU, memory-mapped; do not modify it in place)."""
        entry = self.entries[name]
        with safe_open(str(entry.file), framework="pt") as f:
            return f.get_tensor(name)

    def prefetch(self, name: str) -> None:
        """Ask the kernel to read tensor ``name``'s bytes into the page cache, asynchronously."""
        if not hasattr(os, "posix_fadvise"):
            return
        entry = self.entries[name]
        try:
            fd = self._fds.get(entry.file)
            if fd is None:
                fd = self._fds[entry.file] = os.open(entry.file, os.O_RDONLY)
            os.posix_fadvise(fd, entry.start, entry.nbytes, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass  # a hint only

    def close(self) -> None:
        """Close the file descriptors kept for prefetching."""
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds.clear()

    def __enter__(self) -> SafetensorsCheckpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
