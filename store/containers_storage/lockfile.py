"""containers/storage's lock protocol (pkg/lockfile, v1.43 ``lockfile_unix.go``).

* POSIX record locks (``fcntl(F_SETLKW)`` on the whole file), **not** ``flock``: podman's
  ``layers.lock``/``images.lock``/``containers.lock`` are ``F_WRLCK`` for writers, ``F_RDLCK``
  for readers. The file is opened ``O_RDWR|O_CREAT|O_CLOEXEC`` 0644 when the lock is taken and
  closed when it is released, as c/storage does.
* Every modification rewrites a 64-byte "last writer" token at offset 0 (``Touch``):
  u64 LE unix nanoseconds, u64 LE per-process counter, u32 LE pid, 44 random bytes. Readers
  compare it with the value they saw last to decide whether to reload (``Modified``).
* POSIX locks belong to the *process* and are dropped when *any* descriptor of the file is closed,
  so there is one :class:`LockFile` per path per process (:func:`get_lockfile`) and threads are
  serialised on it with an in-process mutex before the fcntl lock is taken.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tether.store.errors import LockError

__all__ = ["LAST_WRITER_SIZE", "LockFile", "get_lockfile", "new_last_writer_token"]

#: Size of the last-writer token (c/storage ``lastWriterIDSize``).
LAST_WRITER_SIZE = 64

_counter = itertools.count(1)
_registry: dict[str, LockFile] = {}
_registry_lock = threading.Lock()


def new_last_writer_token() -> bytes:
    """A fresh token as ``newLastWriterID`` builds it: time, counter, pid, random padding."""
    head = struct.pack("<QQI", time.time_ns() & 0xFFFFFFFFFFFFFFFF, next(_counter), os.getpid() & 0xFFFFFFFF)
    return head + os.urandom(LAST_WRITER_SIZE - len(head))


class LockFile:
    """One lock file of a store, shared by every thread of this process.

    Use :meth:`exclusive` (writers) or :meth:`shared` (readers) as context managers; inside an
    exclusive section call :meth:`touch` after changing what the lock protects.
    """

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self._mutex = threading.Lock()
        self._fd: int | None = None
        self._exclusive = False
        self._last_seen: bytes | None = None

    def _open(self, exclusive: bool) -> int | None:
        read_only = self.read_only
        flags = os.O_CLOEXEC | (os.O_RDONLY if read_only else os.O_RDWR | os.O_CREAT)
        try:
            return os.open(self.path, flags, 0o644)
        except FileNotFoundError:
            if read_only:
                return None  # a read-only additional store without lock files: nothing to coordinate with
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            return os.open(self.path, flags, 0o644)
        except OSError as exc:
            if not exclusive and exc.errno in (errno.EACCES, errno.EROFS):
                # A store on a read-only filesystem: read locks through a read-only descriptor.
                try:
                    return os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    return None
            raise LockError(f"opening lock file {self.path}: {exc}") from exc

    def _acquire(self, exclusive: bool) -> None:
        if exclusive and self.read_only:
            raise LockError(f"cannot take a write lock on read-only lock file {self.path}")
        self._mutex.acquire()
        try:
            fd = self._open(exclusive)
            if fd is not None:
                kind = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
                while True:
                    try:
                        fcntl.lockf(fd, fcntl.LOCK_EX if kind == fcntl.F_WRLCK else fcntl.LOCK_SH)
                        break
                    except InterruptedError:
                        continue
                    except OSError as exc:
                        os.close(fd)
                        raise LockError(f"locking {self.path}: {exc}") from exc
            self._fd = fd
            self._exclusive = exclusive
        except BaseException:
            self._mutex.release()
            raise

    def _release(self) -> None:
        fd, self._fd = self._fd, None
        try:
            if fd is not None:
                os.close(fd)  # closing the only descriptor releases the POSIX lock
        finally:
            self._mutex.release()

    @contextmanager
    def exclusive(self) -> Iterator[LockFile]:
        """Hold the write lock (``F_WRLCK``) for the duration of the block."""
        self._acquire(True)
        try:
            yield self
        finally:
            self._release()

    @contextmanager
    def shared(self) -> Iterator[LockFile]:
        """Hold a read lock (``F_RDLCK``) for the duration of the block."""
        self._acquire(False)
        try:
            yield self
        finally:
            self._release()

    def touch(self) -> None:
        """Record a new last-writer token (c/storage ``Touch``); only inside :meth:`exclusive`."""
        if self._fd is None or not self._exclusive:
            raise LockError(f"touching {self.path} without holding its write lock")
        token = new_last_writer_token()
        written = os.pwrite(self._fd, token, 0)
        if written != len(token):
            raise LockError(f"short write of the last-writer token to {self.path}")
        self._last_seen = token

    def read_token(self) -> bytes:
        """The current last-writer token (empty if never written); only while locked."""
        if self._fd is None:
            return b""
        return os.pread(self._fd, LAST_WRITER_SIZE, 0)

    def modified(self) -> bool:
        """Whether another writer touched the file since we last looked (c/storage ``Modified``)."""
        current = self.read_token()
        changed = len(current) != LAST_WRITER_SIZE or current != self._last_seen
        self._last_seen = current
        return changed


def get_lockfile(path: Path, *, read_only: bool = False) -> LockFile:
    """The process-wide :class:`LockFile` for ``path`` (c/storage ``GetLockfile``/``GetROLockfile``)."""
    # realpath, not just abspath: two spellings of one file (bootc's /usr/lib/bootc/storage symlink) must
    # share one object, or closing one descriptor would drop the other's POSIX lock.
    key = os.path.realpath(path)
    with _registry_lock:
        existing = _registry.get(key)
        if existing is not None:
            if existing.read_only and not read_only:
                existing.read_only = False  # first used as an additional (read-only) store, now written
            return existing
        created = LockFile(Path(key), read_only=read_only)
        _registry[key] = created
        return created
