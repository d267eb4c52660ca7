"""Read and check a safetensors file's header without loading a tensor (issue 17, kind E).

A garbage or truncated ``model.safetensors`` used to fail inside transformers with a bare
``SafetensorError`` that names no file. ``read_safetensors_header`` checks what the format
promises (spec: https://github.com/huggingface/safetensors#format): 8 bytes of little-endian
header length N, N bytes of a JSON object, then the data; each tensor's ``data_offsets`` lie
inside the data, match its shape and dtype, and the data ends where the file ends. Only the
header is read (bytes, not tensors), so checking a 3 GB checkpoint costs microseconds.

``load_model`` checks every weight file with it before transformers opens one, and
``analyses.subnetworks`` (scripts/diff.py) reads its tensor index through it: one check, one
message, for every path that opens weights.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from hooks.errors import TwinlensError

# bytes per element of the safetensors dtypes
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8,
               "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "C64": 8}
_MAX_HEADER = 100_000_000  # the safetensors library's own limit


def _damaged(file: Path, what: str) -> TwinlensError:
    return TwinlensError(
        f"{file} is not a valid safetensors file ({what}): it is damaged, truncated or not a weights "
        "file. Re-download or re-save it (model.save_pretrained(folder)) and load the folder again."
    )


def read_safetensors_header(file: str | Path) -> dict[str, dict[str, Any]]:
    """{tensor name: {"dtype", "shape", "data_offsets", "start", "end"}} of ``file`` (start/end:
    absolute byte offsets in the file), ``__metadata__`` left out. Raises TwinlensError naming
    the file when it is not a complete safetensors file."""
    file = Path(file)
    try:
        size = file.stat().st_size
        with open(file, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise _damaged(file, f"{size} bytes, shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER or 8 + n > size:
                raise _damaged(file, f"header length {n} does not fit the file's {size} bytes")
            raw = f.read(n)
    except OSError as exc:
        raise TwinlensError(f"Could not read {file}: {exc.strerror or exc}.") from None
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _damaged(file, "its header is not JSON") from None
    if not isinstance(header, dict):
        raise _damaged(file, "its header is not a JSON object")
    data = size - 8 - n
    out: dict[str, dict[str, Any]] = {}
    end_max = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (b, e) = info["dtype"], [int(d) for d in info["shape"]], info["data_offsets"]
            b, e = int(b), int(e)
        except (KeyError, TypeError, ValueError):
            raise _damaged(file, f"tensor {name!r} has no dtype/shape/data_offsets") from None
        if not 0 <= b <= e:
            raise _damaged(file, f"tensor {name!r} has data offsets {b}-{e}")
        if e > data:
            raise _damaged(file, f"tensor {name!r} ends at data byte {e} but the file holds {data} data bytes; "
                                 "it was cut short")
        numel = 1
        for d in shape:
            numel *= d
        if dtype in DTYPE_BYTES and e - b != numel * DTYPE_BYTES[dtype]:
            raise _damaged(file, f"tensor {name!r} of shape {shape} {dtype} needs {numel * DTYPE_BYTES[dtype]} "
                                 f"bytes, its offsets give {e - b}")
        end_max = max(end_max, e)
        out[name] = {"dtype": dtype, "shape": tuple(shape), "data_offsets": (b, e),
                     "start": 8 + n + b, "end": 8 + n + e}
    if end_max != data:
        # the safetensors library refuses this too (its data must end where the last tensor ends)
        raise _damaged(file, f"{data - end_max} bytes after the last tensor's data")
    return out


def check_safetensors_files(files: list[Path]) -> None:
    """read_safetensors_header on each file: a damaged one is named before any tensor loads."""
    for f in files:
        read_safetensors_header(f)
