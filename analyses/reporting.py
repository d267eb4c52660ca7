"""Writing a job's outputs by the results contract (DESIGN.md): ``DIR/results.json``,
``DIR/summary.md`` and PNG plots, each written atomically (temp file + rename), so an
interrupted job never leaves a half-written file where a finished one was.

    write_results(out_dir, results, summary_md)   # results.json + summary.md
    save_figure(fig, out_dir / "plot.png")        # PNG, then the figure is closed

``results`` may hold numpy / torch scalars and arrays, tuples, Paths and dataclasses: they are
converted to plain JSON. Non-finite floats (NaN, inf) become ``null``, since JSON has no NaN.

Every writer here belongs to the job-folder contract (analyses.jobdir): it refuses a folder that
another process holds the lock of (one writer at a time), and a write that fails for lack of space
or permission ends in a TwinlensError that says what the folder kept and how to resume, instead of
a raw OSError. Files get the usual permissions (0666 minus the umask), not mkstemp's 0600.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["to_jsonable", "write_results", "save_figure", "write_text_atomic"]


def to_jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types: dicts with string keys, lists, str, int, float (finite) or None."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        if hasattr(obj, "to_dict"):
            return to_jsonable(obj.to_dict())
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in obj]
    # numpy and torch scalars / arrays, without importing either here
    if hasattr(obj, "tolist") and callable(obj.tolist):
        return to_jsonable(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item):
        return to_jsonable(obj.item())
    return str(obj)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_current_umask()


def _check_writer(folder: Path) -> None:
    """TwinlensError when another process holds ``folder``'s lock (hooks.locking)."""
    from hooks.errors import TwinlensError
    from hooks.locking import describe_owner, lock_owner

    owner = lock_owner(folder)
    if owner is not None and owner.get("pid") != os.getpid():
        raise TwinlensError(f"{folder} is in use by {describe_owner(owner)}: only one writer at a time. "
                            "Wait for it to finish, or write into another folder.")


@contextmanager
def _atomic_target(path: Path, suffix: str) -> Iterator[str]:
    """A temp file next to ``path`` for the block to write; renamed onto ``path`` when the block
    succeeds, removed when it fails. Failed writes (space, permissions): see the module docstring."""
    from analyses.jobdir import write_failure
    from hooks.locking import WRITE_ERRNOS, make_folder

    make_folder(path.parent)
    _check_writer(path.parent)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(fd)
        os.chmod(tmp, _FILE_MODE)
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            raise write_failure(path.parent, exc) from None
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temp file in the same folder and an atomic rename."""
    path = Path(path)
    with _atomic_target(path, ".tmp") as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def write_results(out_dir: str | os.PathLike, results: Mapping[str, Any], summary_md: str) -> Path:
    """Write ``out_dir/results.json`` (indented, NaN -> null) and ``out_dir/summary.md``.

    Returns the path of results.json. Both files are replaced atomically.
    """
    out = Path(out_dir)
    text = json.dumps(to_jsonable(results), indent=1, allow_nan=False)
    path = write_text_atomic(out / "results.json", text + "\n")
    write_text_atomic(out / "summary.md", summary_md if summary_md.endswith("\n") else summary_md + "\n")
    return path


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG atomically and close it (frees pyplot's reference)."""
    path = Path(path)
    try:
        with _atomic_target(path, path.suffix or ".png") as tmp:  # savefig reads the format from it
            fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    finally:
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close(fig)
    return path
