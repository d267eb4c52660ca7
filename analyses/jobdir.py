"""The job-folder contract (DESIGN.md): a job's ``--out`` folder has an owner.

    identity = job_identity("passk", args)              # job, settings, models with weight hashes
    with claim_folder(args.out, identity, overwrite=args.overwrite) as folder:
        results = run(args)                             # write outputs into args.out
        folder.finish()                                 # job.json: "complete": true

What claim_folder guarantees, before any model loads:
- the folder is a folder you can write to (a file, a path under a file, a read-only or
  forbidden place: TwinlensError naming the path);
- one writer at a time: ``hooks.locking.FolderLock`` (a lock file with the owner's pid and host;
  the kernel drops it when the owner dies, so a stale lock never blocks);
- ``DIR/job.json`` records which job, which settings and which models (weight hashes) made the
  folder. A folder made by another job, or by this job with other settings or models, is refused
  (TwinlensError naming both sides and the fix: another --out, or ``--overwrite``, which deletes the
  earlier outputs first). The same job with the same settings and models is accepted: that is a
  resume (samples files and activation stores continue where they stopped);
- a folder that holds files but no job.json is refused unless it is an output folder of an
  earlier twinlens version (it holds results.json) and ``--overwrite`` is given;
- a write that fails mid-run (disk full, read-only, quota) ends in write_failure's TwinlensError:
  what the folder kept and how to resume.

Settings are the job's options except those in RUN_ONLY_OPTIONS, which change where and how fast a
job runs but not its numbers (threads, device, batch size, --json, ...). Model options
(MODEL_OPTIONS) are recorded by weight hash: blake2b over the model folder's *.safetensors files
(hooks.loading.hash_files), computed before loading, so the same weights under another path or
name are the same model. An option naming an existing file (a problems file, vectors) is recorded
with the file's sha256, so an edited file is another setting.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hooks.errors import TwinlensError
from hooks.locking import LOCK_NAME, WRITE_ERRNOS, FolderLock

__all__ = [
    "JOB_FILE",
    "MODEL_OPTIONS",
    "RUN_ONLY_OPTIONS",
    "JobFolder",
    "claim_folder",
    "compare_identity",
    "describe_kept",
    "job_identity",
    "read_job_record",
    "write_failure",
]

JOB_FILE = "job.json"
FORMAT = "twinlens.job/1"
#: Options that do not change a job's numbers: where its outputs go, how they are shown, how fast
#: and where it runs (sampled rows are seeded per row, so batch size and a cluster do not change them).
RUN_ONLY_OPTIONS = frozenset({
    "out", "json", "threads", "device", "batch_size", "overwrite", "ray", "no_progress", "progress",
    "quiet", "verbose",
})
#: Options that name models (organism checkpoint name, folder, .safetensors file or hub id).
MODEL_OPTIONS = ("base", "rl", "sft", "model", "checkpoints")
_HASH_LIMIT = 256 << 20  # input files above this are recorded by size and mtime, not hashed


# ----------------------------------------------------------------------------- identity
def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _model_entry(spec: Any) -> dict[str, Any]:
    """{"spec", "path", "weight_hash"} of one model option value, without loading the model. A
    spec that does not resolve gets weight_hash None (the job's own loader reports it)."""
    from hooks.loading import hash_files

    text = str(spec)
    entry: dict[str, Any] = {"spec": text, "path": None, "weight_hash": None}
    path = Path(text).expanduser()
    if not path.exists() and "/" not in text:
        import organism

        if text in organism.list_checkpoints():
            path = Path(organism.checkpoint_path(text))
    if not path.exists():
        from hooks.loading import resolve_model_path

        try:  # a hub id already in the local cache (never downloads here when offline)
            if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
                path = resolve_model_path(text)
        except Exception:  # noqa: BLE001 -- unresolvable: the job's loader gives the clear error
            return entry
    if path.is_file() and path.suffix == ".safetensors":
        files = [path]
    elif path.is_dir():
        from hooks.loading import check_weights_are_safe

        try:  # the files HF loads, as Model.weight_hash hashes them (a stray file is not one)
            files = check_weights_are_safe(path)
        except TwinlensError:  # not loadable: the job's loader gives the clear error
            files = []
    else:
        return entry
    entry["path"] = str(path.resolve())
    if files:
        entry["weight_hash"] = hash_files(files)
    return entry


def _setting(value: Any) -> Any:
    from analyses.reporting import to_jsonable

    if isinstance(value, (str, Path)) and str(value) and Path(value).is_file():
        p = Path(value)
        size = p.stat().st_size
        if size > _HASH_LIMIT:
            return {"file": str(value), "size": size, "mtime": p.stat().st_mtime}
        return {"file": str(value), "sha256": _file_sha256(p)}
    if isinstance(value, (list, tuple)):
        return [_setting(v) for v in value]
    return to_jsonable(value)


def job_identity(job: str, args: argparse.Namespace | Mapping[str, Any]) -> dict[str, Any]:
    """{"job", "settings", "models"} of a run of ``job`` with the parsed options ``args``.

    settings: every option but RUN_ONLY_OPTIONS, MODEL_OPTIONS and names starting with "_" (values
    a script derived from its options), as JSON (files by sha256);
    models: {option: None (the job's default) | entry | [entry, ...]} with entry = {"spec",
    "path", "weight_hash"}. Hashing reads the weight files once (seconds for a 1.5B model)."""
    opts = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
    settings = {k: _setting(v) for k, v in sorted(opts.items())
                if k not in RUN_ONLY_OPTIONS and k not in MODEL_OPTIONS and not k.startswith("_")}
    models: dict[str, Any] = {}
    for key in MODEL_OPTIONS:
        if key not in opts:
            continue
        value = opts[key]
        if value is None:
            models[key] = None
        elif isinstance(value, (list, tuple)):
            models[key] = [_model_entry(v) for v in value]
        else:
            models[key] = _model_entry(value)
    return {"job": job, "settings": settings, "models": models}


def _model_key(entry: Any) -> Any:
    if entry is None:
        return None
    if isinstance(entry, list):
        return [_model_key(e) for e in entry]
    return ("weights", entry["weight_hash"]) if entry.get("weight_hash") else ("spec", entry.get("spec"))


def _show_model(entry: Any) -> str:
    if entry is None:
        return "the job's default"
    if isinstance(entry, list):
        return "[" + ", ".join(_show_model(e) for e in entry) + "]"
    h = entry.get("weight_hash")
    return f"{entry.get('spec')}" + (f" (weights {h[:12]})" if h else "")


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def compare_identity(recorded: Mapping[str, Any], asked: Mapping[str, Any]) -> list[str]:
    """Differences between a folder's recorded identity and a run's, one line each
    (``--rl: rl-seed0 (weights 1a2b...) here, rl-seed1 (weights 3c4d...) asked``); [] if the same
    job, settings and models (by weight hash)."""
    diffs: list[str] = []
    if recorded.get("job") != asked.get("job"):
        diffs.append(f"job: {recorded.get('job')!r} here, {asked.get('job')!r} asked")
        return diffs
    old_m, new_m = recorded.get("models") or {}, asked.get("models") or {}
    for key in sorted(set(old_m) | set(new_m)):
        if _model_key(old_m.get(key)) != _model_key(new_m.get(key)):
            diffs.append(f"{_flag(key)}: {_show_model(old_m.get(key))} here, {_show_model(new_m.get(key))} asked")
    old_s, new_s = recorded.get("settings") or {}, asked.get("settings") or {}
    for key in sorted(set(old_s) | set(new_s)):
        if old_s.get(key, "<unset>") != new_s.get(key, "<unset>"):
            a, b = old_s.get(key, "<unset>"), new_s.get(key, "<unset>")
            if isinstance(a, dict) and isinstance(b, dict) and a.get("file") == b.get("file"):
                diffs.append(f"{_flag(key)}: file {a.get('file')} changed since this folder was made")
            else:
                diffs.append(f"{_flag(key)}: {json.dumps(a)} here, {json.dumps(b)} asked")
    return diffs


def read_job_record(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The folder's job.json, or None when it has none; TwinlensError when it is unreadable."""
    path = Path(folder) / JOB_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TwinlensError(f"{path} is damaged ({exc.__class__.__name__}); delete it only if you know which "
                            "job made the folder, or give another --out.") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise TwinlensError(f"{path} is not a twinlens job record (format {FORMAT!r}); give another --out.")
    return record


# ----------------------------------------------------------------------------- the folder
def _entries(folder: Path) -> list[Path]:
    """What the folder holds besides lock files (the folder's, a samples file's) and interrupted
    atomic writes' temp files."""
    return sorted(p for p in folder.iterdir() if p.name != LOCK_NAME and not
                  (p.name.startswith(".") and p.name.endswith((".tmp", ".lock"))))


def _clear(folder: Path) -> None:
    for p in _entries(folder):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


@dataclass
class JobFolder:
    """A claimed job folder: ``path`` (created), ``record`` (its job.json), the lock held until
    release(). ``resumed``: the folder already held this job's outputs (same settings and
    models); ``replaced``: --overwrite deleted another run's outputs first."""

    path: Path
    record: dict[str, Any]
    lock: FolderLock = field(repr=False)
    resumed: bool = False
    replaced: list[str] = field(default_factory=list)
    created: bool = False

    def _write_record(self) -> None:
        from analyses.reporting import write_text_atomic

        write_text_atomic(self.path / JOB_FILE, json.dumps(self.record, indent=1) + "\n")

    def finish(self) -> None:
        """Mark the job complete in job.json (the demo skips complete jobs with the same identity)."""
        self.record["complete"] = True
        self.record["finished"] = time.time()
        self._write_record()

    def abandon(self) -> None:
        """After a failed run: a folder left holding nothing but job.json is given back as it was
        (so a corrected rerun is not refused for settings that never wrote anything)."""
        if not self.record.get("complete") and not self.resumed:
            left = [p for p in _entries(self.path) if p.name != JOB_FILE]
            if not left:
                (self.path / JOB_FILE).unlink(missing_ok=True)

    def release(self) -> None:
        self.lock.release()
        if self.created:
            try:
                self.path.rmdir()  # only succeeds when the failed run left it empty
            except OSError:
                pass


def _claim(path: Path, identity: Mapping[str, Any], overwrite: bool) -> JobFolder:
    existed = path.is_dir()
    lock = FolderLock(path, what=str(identity.get("job"))).acquire()  # checks the folder is writable
    try:
        folder = JobFolder(path, {}, lock, created=not existed)
        record = read_job_record(path)
        entries = _entries(path)
        if record is not None:
            diffs = compare_identity(record, identity)
            if diffs and not overwrite:
                made_by, job = record.get("job"), identity.get("job")
                if made_by != job:
                    what = f"holds the outputs of job {made_by!r}; {job!r} would replace or mix with them"
                else:
                    shown = "; ".join(diffs[:6]) + ("; ..." if len(diffs) > 6 else "")
                    what = (f"holds a run of {job!r} with other settings or models ({shown}); writing this "
                            "run into it would mix the two")
                raise TwinlensError(
                    f"{path} {what}. Give another --out, or --overwrite to delete {path}'s outputs and "
                    "start anew."
                )
            if diffs:
                folder.replaced = [p.name for p in entries]
                _clear(path)
            else:
                folder.resumed = True
                folder.record = dict(record)
                folder.record["complete"] = False
                folder.record.setdefault("runs", 1)
                folder.record["runs"] += 1
        elif entries:
            legacy = (path / "results.json").is_file()
            if not (overwrite and legacy):
                names = ", ".join(p.name for p in entries[:5]) + (", ..." if len(entries) > 5 else "")
                fix = ("--overwrite to delete them and start anew, or give another --out" if legacy else
                       "give an empty or new folder as --out (twinlens deletes only folders a job made)")
                raise TwinlensError(
                    f"{path} holds files ({names}) but no {JOB_FILE}: it was not made by this version's "
                    f"{identity.get('job')!r} job, and writing into it could replace or mix them. {fix[0].upper()}{fix[1:]}."
                )
            folder.replaced = [p.name for p in entries]
            _clear(path)
        if not folder.resumed:
            folder.record = {
                "format": FORMAT, **identity, "complete": False, "created": time.time(),
                "host": socket.gethostname(), "pid": os.getpid(), "command": list(sys.argv), "runs": 1,
            }
        folder.record["pid"] = os.getpid()
        try:
            folder._write_record()
        except OSError as exc:
            raise write_failure(path, exc) from None
        return folder
    except BaseException:
        lock.release()
        raise


@contextmanager
def claim_folder(out: str | os.PathLike, identity: Mapping[str, Any], *,
                 overwrite: bool = False) -> Iterator[JobFolder]:
    """Claim ``out`` for the run ``identity`` (from job_identity) for the duration of the block.

    Raises TwinlensError before anything is written when ``out`` is a file or not writable, is in
    use by another process, or holds another job's or another run's outputs (unless overwrite).
    In the block, an OSError of writing (disk full, read-only, quota, permissions) is turned into
    write_failure's TwinlensError. On a failure the lock is released and a folder that the run
    left empty is removed; job.json keeps ``"complete": false`` until ``finish()``."""
    path = Path(out)
    folder = _claim(path, identity, overwrite)
    ok = False
    try:
        try:
            yield folder
        except OSError as exc:
            if exc.errno in WRITE_ERRNOS:
                raise write_failure(path, exc) from None
            raise
        ok = True
    finally:
        if not ok:
            try:
                folder.abandon()
            except OSError:
                pass
        folder.release()


# ----------------------------------------------------------------------------- failures
def describe_kept(folder: str | os.PathLike) -> str:
    """What ``folder`` holds, for a message: samples files with their complete row counts,
    activation stores with their shards, other files by name."""
    path = Path(folder)
    if not path.is_dir():
        return "nothing (the folder does not exist)"
    parts: list[str] = []
    for p in _entries(path):
        if p.name == JOB_FILE:
            continue
        if p.is_dir():
            manifest = p / "manifest.json"
            if manifest.is_file():
                try:
                    m = json.loads(manifest.read_text())
                    shards = m.get("shards", [])
                    done = shards[-1]["example_end"] if shards else 0
                    parts.append(f"{p.name}/ (activation store: {len(shards)} complete shards, examples "
                                 f"0-{done} of {m.get('n_examples')})")
                    continue
                except (OSError, ValueError, KeyError, TypeError, IndexError):
                    pass
            inner = describe_kept(p)
            parts.append(f"{p.name}/ ({inner})")
        elif p.suffix == ".jsonl":
            try:
                with open(p, "rb") as fh:
                    rows = sum(1 for line in fh if line.endswith(b"\n"))
                parts.append(f"{p.name} ({rows} complete rows)")
            except OSError:
                parts.append(p.name)
        else:
            parts.append(p.name)
    return ", ".join(parts) if parts else "nothing yet"


def write_failure(folder: str | os.PathLike, exc: OSError) -> TwinlensError:
    """The TwinlensError for a failed write into ``folder``: the cause (disk full, read-only,
    no permission, ...), what the folder kept, and how to resume."""
    reasons = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exhausted",
               errno.EROFS: "the filesystem is read-only", errno.EACCES: "permission denied",
               errno.EPERM: "operation not permitted", errno.EFBIG: "the file is too large for the filesystem",
               errno.EIO: "an I/O error (failing disk?)"}
    why = reasons.get(exc.errno, exc.strerror or str(exc))
    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    fix = {errno.ENOSPC: "free space", errno.EDQUOT: "free space or raise the quota",
           errno.EROFS: "make it writable (or copy it to a writable disk)",
           errno.EACCES: "make it writable", errno.EPERM: "make it writable"}.get(exc.errno, "fix the disk")
    return TwinlensError(
        f"Writing into {folder} failed: {why}{where}. Kept: {describe_kept(folder)}; nothing complete was "
        f"lost. {fix[0].upper()}{fix[1:]}, then rerun the same command: samples files and activation "
        "stores resume where they stopped (or give another --out)."
    )
