"""Directories alive while their writer is: staging directories of layers being extracted, and the records
of the layers a tether process published (its session).  Each is ``<name>/`` beside ``<name>.lock``, whose
``flock`` its writer holds; a free lock means the writer is gone (killed, crashed, or done)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from pathlib import Path

from tether.store.containers_storage.drivers import remove_tree

__all__ = ["StagingDir", "clean_staging", "dead_sessions", "lock_is_free"]


class StagingDir:
    """A staging directory ``R/<driver>/tether-staging/<name>/``, alive while ``<name>.lock`` beside it
    is ``flock``-ed by its writer.

    The lock file is created under a temporary name, locked, then renamed into place, and exists
    before the directory; removal goes the other way (tree, then lock file). So another process's
    :meth:`Store.open` can tell live staging (lock held) from a killed writer's (lock free, or a
    directory without lock file) without any timing guess.
    """

    def __init__(self, base: Path) -> None:
        while True:
            base.mkdir(mode=0o700, parents=True, exist_ok=True)
            name = secrets.token_hex(8)
            tmp = base / f".tmp-{name}.lock"
            try:
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:
                continue  # the (empty) base was removed by a concurrent recovery
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                os.rename(tmp, base / f"{name}.lock")
                (base / name).mkdir(mode=0o700)
            except FileNotFoundError:
                os.close(fd)  # a recovery took our not-yet-locked temp lock for a dead one
                continue
            break
        self.path = base / name
        self.lock_path = base / f"{name}.lock"
        self._fd: int | None = fd

    def release(self) -> None:
        """Drop the lock (the directory then looks dead to other processes)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        """Remove the directory, then its lock file."""
        remove_tree(self.path)
        self.lock_path.unlink(missing_ok=True)
        self.release()


def lock_is_free(path: Path) -> bool:
    """Whether nobody holds the ``flock`` on ``path`` (its writer is gone)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False  # already removed by its owner
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def clean_staging(base: Path) -> None:
    """Remove what killed writers left in the staging base (see :class:`StagingDir`)."""
    try:
        entries = list(base.iterdir())
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name.endswith(".lock"):
            if lock_is_free(entry):
                if not entry.name.startswith(".tmp-"):
                    remove_tree(base / entry.name[: -len(".lock")])
                entry.unlink(missing_ok=True)
        elif entry.is_dir() and not (base / f"{entry.name}.lock").exists():
            remove_tree(entry)
    with contextlib.suppress(OSError):
        base.rmdir()  # only when empty


def dead_sessions(base: Path) -> list[tuple[Path, Path]]:
    """(lock file, directory) of tether sessions whose process is gone (their flock is free)."""
    try:
        entries = list(base.iterdir())
    except FileNotFoundError:
        return []
    out = []
    for entry in entries:
        if entry.name.endswith(".lock") and not entry.name.startswith(".tmp-") and lock_is_free(entry):
            out.append((entry, base / entry.name[: -len(".lock")]))
    return out
