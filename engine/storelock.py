"""tether's own lock on a store: one sync or gc at a time, and no gc while a pull runs.

``STORE/tether/tether.lock`` is an ``flock`` taken by :func:`hold_store`, independent of c/storage's own lock
files (which the store takes per operation). Kept apart from :mod:`tether.engine.bound.sync` so that ``tether pull``
takes it without importing the bound-image machinery.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from tether.engine.errors import EngineError

__all__ = ["LOCK_NAME", "TETHER_DIR", "StoreBusyError", "hold_store"]

TETHER_DIR = "tether"
LOCK_NAME = f"{TETHER_DIR}/tether.lock"


class StoreBusyError(EngineError):
    """Another tether process holds the store (sync or gc running)."""


@contextlib.contextmanager
def hold_store(store_root: Path, *, shared: bool = False) -> Iterator[None]:
    """Hold ``STORE/tether/tether.lock`` (``flock``) or raise :class:`StoreBusyError` at once.

    Exclusive for sync and gc; ``shared`` for work that only adds to the store (a plain ``tether pull``
    could take it so that a gc never runs while it has reused but not yet committed a layer). The file
    records the exclusive holder's pid for the message another tether prints.
    """
    path = Path(store_root) / LOCK_NAME
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
            who = f"another tether (pid {holder})" if holder else "another tether (a pull)"
            raise StoreBusyError(f"{who} holds the store {store_root}; try again when it has finished") from None
        if not shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            if not shared:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
