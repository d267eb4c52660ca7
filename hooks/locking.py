"""One writer at a time for a folder: an exclusive lock file that names its owner.

    with FolderLock(folder, what="capture"):      # TwinlensError if another process holds it
        ...write into folder...

The lock is ``folder/.twinlens.lock``, held with ``fcntl.flock`` on an open file that records the
owner (pid, host, what, since). The kernel drops a flock when its process dies, however it dies
(SIGKILL included), so a lock left by a dead owner is stale by construction: the next writer takes
it over without a timeout or a pid guess, and the owner's details in the file are only for the
message. The file is removed on release. Used by the activation store (hooks.capture) and by the
job-folder contract (analyses.jobdir), so a job and a capture into one folder also exclude each
other only where they share a folder.

Linux/macOS (fcntl). A folder on a network filesystem without flock support makes the lock fail
with a TwinlensError that says so.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from hooks.errors import TwinlensError

LOCK_NAME = ".twinlens.lock"
#: errno values of a failed write that the user fixes (space, permissions) and then resumes.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG,
                          errno.EIO})

__all__ = ["LOCK_NAME", "WRITE_ERRNOS", "FolderLock", "describe_owner", "lock_owner", "make_folder", "pid_alive"]


def make_folder(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Create ``folder`` (and parents) if missing; TwinlensError naming the path when it is a file,
    sits under a file, or cannot be created (read-only filesystem, no permission)."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise TwinlensError(f"The {what} {path} is a file, not a folder; give a folder path (new or empty).")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise TwinlensError(
            f"The {what} {path} cannot be created: a part of that path is a file. Give a folder path."
        ) from None
    except OSError as exc:
        raise TwinlensError(
            f"The {what} {path} cannot be created ({exc.strerror or exc}); give a folder you can write to."
        ) from None
    return path


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) holds no locks and writes nothing
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


def lock_owner(folder: str | os.PathLike, name: str = LOCK_NAME) -> dict[str, Any] | None:
    """The owner recorded in ``folder``'s lock file ({pid, host, what, since}) if a live process
    holds the lock now, else None (no lock file, or a stale one)."""
    path = Path(folder) / name
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_owner(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_owner(fd: int) -> dict[str, Any]:
    try:
        data = os.pread(fd, 4096, 0)
        owner = json.loads(data.decode("utf-8"))
        return owner if isinstance(owner, dict) else {}
    except (OSError, ValueError):
        return {}


def describe_owner(owner: dict[str, Any]) -> str:
    """'pid 123 on host h (passk, since 2026-11-30 01:02:03 UTC)' from a lock file's record."""
    what = owner.get("what")
    since = owner.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(since)) if isinstance(since, (int, float)) else None
    extra = ", ".join(x for x in (what, f"since {when}" if when else None) if x)
    return (f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}" + (f" ({extra})" if extra else ""))


class FolderLock:
    """An exclusive, non-blocking lock on ``folder`` (created if missing) for this process;
    ``name``: the lock file's name (another name locks one file of the folder, e.g. a samples file).

    acquire() raises TwinlensError naming the owner (pid, host, job) when another live process
    holds it, and one naming the folder when the lock file cannot be created (read-only, not a
    folder). A context manager: released on exit, also on error. Not re-entrant: a second
    FolderLock on the same folder in the same process is refused too (two writers are two writers).
    """

    def __init__(self, folder: str | os.PathLike, what: str = "twinlens", name: str = LOCK_NAME):
        self.folder = Path(folder)
        self.path = self.folder / name
        self.what = what
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> FolderLock:
        if self._fd is not None:
            return self
        make_folder(self.folder)
        for _ in range(20):  # retried only when the file was replaced between open and flock
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise TwinlensError(
                    f"Cannot create the lock file {self.path}: {exc.strerror or exc}. {self.folder} must be "
                    "a folder you can write to; give another output folder."
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd)
                os.close(fd)
                target = (self.folder if self.path.name == LOCK_NAME
                          else self.folder / self.path.name.removeprefix(".").removesuffix(".lock"))
                raise TwinlensError(
                    f"{target} is in use by {describe_owner(owner)}: only one writer at a time. Wait "
                    "for it to finish (or stop it), or give another output folder."
                ) from None
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise TwinlensError(
                        f"{self.folder}: the filesystem does not support file locks ({exc.strerror}); "
                        "give an output folder on a local disk."
                    ) from None
                raise
            # The previous owner may have removed the file after our open: then we hold a lock on
            # an unlinked file and must retry on the path's current file.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            record = {"pid": os.getpid(), "host": socket.gethostname(), "what": self.what, "since": time.time()}
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
            except OSError as exc:
                os.close(fd)
                raise TwinlensError(
                    f"Cannot write the lock file {self.path}: {exc.strerror or exc}. Free space on that "
                    "disk or give another output folder."
                ) from None
            self._fd = fd
            return self
        raise TwinlensError(f"Could not take the lock {self.path}: it kept being replaced; retry.")

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            self.path.unlink(missing_ok=True)  # while still locked: nobody else can own this file
        except OSError:
            pass
        os.close(fd)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a lock object dropped without release must not keep the folder
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
