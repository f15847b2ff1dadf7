"""Blob bytes kept across runs: :class:`BlobCache`, a directory of blob files and small download records.

containers/image keeps nothing of a blob across runs (podman#14616: "very unlikely we would ever implement
that"), so a pull killed by a reboot, an OOM kill or an outage longer than the retries starts again from byte 0.
Here every blob a pull fetches is also appended to ``DIR/blobs/<algorithm>-<hex>`` as it arrives: the file always
holds a *prefix* of the blob (the whole blob once complete), and the next run feeds that prefix to its consumer
and asks the registry for the rest with ``Range``.

Nothing here trusts those bytes: the file is written without fsync (a kill -9 keeps the page cache; a power
cut may leave garbage or zeros), and whoever reuses it hashes it from its first byte, so a wrong prefix fails
the blob's digest and is then thrown away.  What is kept is bounded by the caller (files removed when their
blob is published, when no wanted image lists them) and by the store's :class:`~tether.store.diskspace.DiskReserve`:
every append goes through a :class:`~tether.store.diskspace.SpaceGuard`.

Concurrency: a writer holds ``flock(LOCK_EX)`` on the file it appends to, and only one writer may (another
process asking for the same blob streams without the cache); cleaners take the same lock, non-blocking, before
they unlink, so a file being written is never removed under its writer.

``DIR/records/<key>.json`` are small JSON documents the caller defines (the engine's download records: which
image a set of blobs belongs to), written by rename, read with a size cap.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

from tether.store.containers_storage.files import atomic_write
from tether.store.diskspace import DiskReserve, SpaceGuard, human_size
from tether.store.errors import CorruptStoreError, StoreError

__all__ = ["READ_CHUNK", "RECORD_LIMIT", "BlobCache", "CacheError", "CachedBlob"]

#: Bytes read from a blob file at a time (one thread hop per MiB, as the network side groups its chunks).
READ_CHUNK: Final = 1 << 20
#: The largest record read (a record lists one image's layers: a few KiB).
RECORD_LIMIT: Final = 1 << 20
_DIGEST = re.compile(r"^(sha256|sha384|sha512):([0-9a-f]{64}|[0-9a-f]{96}|[0-9a-f]{128})$")
_FILE = re.compile(r"^(sha256|sha384|sha512)-([0-9a-f]+)$")
_KEY = re.compile(r"^[0-9a-f]{16,128}$")


class CacheError(StoreError):
    """A cache file or record cannot be used as asked (a bad digest or key, a blob larger than declared)."""


def _file_name(digest: str) -> str:
    match = _DIGEST.match(digest)
    if match is None:
        raise CacheError(f"not a blob digest: {digest!r}")
    return f"{match.group(1)}-{match.group(2)}"


def _digest_of(name: str) -> str | None:
    match = _FILE.match(name)
    return f"{match.group(1)}:{match.group(2)}" if match else None


def _lock_nb(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class CachedBlob:
    """One blob's file, locked for this writer: the bytes it holds (:meth:`read`), appends (:meth:`append`).

    ``held`` is how many bytes of the blob the file holds (a prefix; ``size`` when complete). Not thread-safe:
    one writer thread at a time, as a stream has one. Close it (:meth:`close`, or use it as a context manager);
    the lock goes with the file descriptor.
    """

    def __init__(self, path: Path, fd: int, *, digest: str, size: int, guard: SpaceGuard | None) -> None:
        self.path = path
        self.digest = digest
        self.size = size
        self._fd = fd
        self._guard = guard
        self.held = os.fstat(fd).st_size
        if self.held > size:  # never ours: more than the blob can hold
            self.truncate()

    @property
    def complete(self) -> bool:
        """Whether the file holds as many bytes as the blob has (verified only by whoever hashes them)."""
        return self.held == self.size

    def read(self, *, chunk: int = READ_CHUNK) -> Iterator[bytes]:
        """The bytes held, from the first, ``chunk`` at a time."""
        offset = 0
        while offset < self.held:
            data = os.pread(self._fd, min(chunk, self.held - offset), offset)
            if not data:
                raise CacheError(f"{self.path}: ends at byte {offset}, {self.held} expected")
            offset += len(data)
            yield data

    def append(self, chunks: Sequence[bytes]) -> None:
        """Append the blob's next bytes (one ``pwritev``); :class:`~tether.store.errors.DiskReserveError` when
        they would take the filesystem below the reserve, :class:`CacheError` past the declared size."""
        total = sum(len(c) for c in chunks)
        if not total:
            return
        if self.held + total > self.size:
            raise CacheError(f"{self.path}: {self.held + total} bytes would pass the blob's {self.size}")
        if self._guard is not None:
            self._guard.wrote(total)
        views: list[bytes | memoryview] = list(chunks)
        offset = self.held
        while views:
            written = os.pwritev(self._fd, views, offset)
            offset += written
            while views and written >= len(views[0]):
                written -= len(views[0])
                views.pop(0)
            if views and written:
                views[0] = memoryview(views[0])[written:]
        self.held = offset

    def truncate(self) -> None:
        """Forget every byte held (they failed the digest, or the blob is fetched whole again)."""
        os.ftruncate(self._fd, 0)
        self.held = 0

    def discard(self) -> None:
        """Remove the file (still locked, so no other writer has it) and close it."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self.close()

    def close(self) -> None:
        """Close the file; its lock goes with it."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> CachedBlob:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BlobCache:
    """``directory``: ``blobs/`` (prefixes of blobs, by digest) and ``records/`` (the caller's JSON documents).

    ``reserve`` guards every append (``where`` names the store in its messages). Nothing is created until
    something is written: a cache that was never used is an absent directory.
    """

    def __init__(self, directory: Path, *, reserve: DiskReserve, where: Path | None = None) -> None:
        self.directory = Path(directory)
        self.blobs_dir = self.directory / "blobs"
        self.records_dir = self.directory / "records"
        self.reserve = reserve
        self.where = where or self.directory

    # ---- blobs

    def blob_path(self, digest: str) -> Path:
        """Where the bytes of blob ``digest`` are kept."""
        return self.blobs_dir / _file_name(digest)

    def held(self, digest: str) -> int:
        """Bytes of ``digest`` held (0 when none), without locking: an estimate for plans and previews."""
        try:
            return os.stat(self.blob_path(digest)).st_size
        except FileNotFoundError:
            return 0

    def open_blob(self, digest: str, *, size: int) -> CachedBlob | None:
        """The file of blob ``digest`` (``size`` bytes), created if missing, locked for the caller; ``None``
        when another writer holds it (the caller then does without the cache)."""
        path = self.blob_path(digest)
        self.blobs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for _ in range(8):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                if not _lock_nb(fd):
                    os.close(fd)
                    return None
                try:
                    same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if same:  # not unlinked by a cleaner between our open and our lock
                    return CachedBlob(path, fd, digest=digest, size=size,
                                      guard=self.reserve.guard(self.blobs_dir, where=self.where))
                os.close(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.close(fd)
                raise
        raise CacheError(f"{path}: removed again and again while being opened")

    def remove_blob(self, digest: str) -> bool:
        """Remove blob ``digest``'s file unless a writer holds it; whether it is gone."""
        return self._remove_file(self.blob_path(digest))

    def _remove_file(self, path: Path) -> bool:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # not ours: a symlink is never written here
                path.unlink(missing_ok=True)
                return True
            raise
        try:
            if not _lock_nb(fd):
                return False
            path.unlink(missing_ok=True)
            return True
        finally:
            os.close(fd)

    def blobs(self) -> dict[str, int]:
        """Every blob file: digest -> bytes held."""
        out: dict[str, int] = {}
        try:
            entries = list(os.scandir(self.blobs_dir))
        except FileNotFoundError:
            return out
        for entry in entries:
            digest = _digest_of(entry.name)
            if digest is not None:
                with contextlib.suppress(FileNotFoundError):
                    out[digest] = entry.stat(follow_symlinks=False).st_size
        return out

    def remove_blobs_except(self, keep: Iterable[str]) -> tuple[str, ...]:
        """Remove every blob file not in ``keep`` (digests) that no writer holds, and files that are not blobs
        (a temporary file a killed writer left); returns the digests removed."""
        wanted = set(keep)
        removed: list[str] = []
        try:
            entries = list(os.scandir(self.blobs_dir))
        except FileNotFoundError:
            return ()
        for entry in entries:
            digest = _digest_of(entry.name)
            if digest is not None and digest in wanted:
                continue
            if self._remove_file(Path(entry.path)) and digest is not None:
                removed.append(digest)
        return tuple(sorted(removed))

    def put_blob(self, digest: str, data: bytes) -> None:
        """Keep a small blob whole (a manifest, a config), already verified by the caller."""
        blob = self.open_blob(digest, size=len(data))
        if blob is None:
            return  # another writer is keeping the same bytes
        with blob:
            if blob.held != len(data) or b"".join(blob.read()) != data:
                blob.truncate()
                blob.append([data])

    def read_blob(self, digest: str, *, limit: int) -> bytes | None:
        """A whole small blob (``limit`` bytes at most), unverified; ``None`` when it is not held."""
        try:
            with open(self.blob_path(digest), "rb") as handle:
                data = handle.read(limit + 1)
        except FileNotFoundError:
            return None
        if len(data) > limit:
            raise CacheError(f"{self.blob_path(digest)}: more than the {limit} bytes expected")
        return data

    # ---- records

    def _record_path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise CacheError(f"not a record key: {key!r}")
        return self.records_dir / f"{key}.json"

    def write_record(self, key: str, document: dict[str, Any], *, durable: bool = False) -> None:
        """Replace record ``key`` (rename; ``durable`` adds fdatasync and a directory fsync, for a record a
        later run must find after a power cut)."""
        path = self._record_path(key)
        self.records_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
        atomic_write(path, data, durable=durable, sync=durable)

    def read_record(self, key: str) -> dict[str, Any] | None:
        """Record ``key``, or ``None`` when missing; :class:`CorruptStoreError` naming it when unreadable."""
        return self._read_record(self._record_path(key))

    @staticmethod
    def _read_record(path: Path) -> dict[str, Any] | None:
        try:
            with open(path, "rb") as handle:
                data = handle.read(RECORD_LIMIT + 1)
        except FileNotFoundError:
            return None
        if len(data) > RECORD_LIMIT:
            raise CorruptStoreError(f"{path}: larger than {human_size(RECORD_LIMIT)}")
        try:
            document = json.loads(data)
        except ValueError as exc:
            raise CorruptStoreError(f"{path}: not JSON: {exc}") from None
        if not isinstance(document, dict):
            raise CorruptStoreError(f"{path}: not a JSON object")
        return document

    def records(self) -> dict[str, tuple[dict[str, Any] | None, float]]:
        """Every record: key -> (its document, ``None`` if unreadable; the time it was last written)."""
        out: dict[str, tuple[dict[str, Any] | None, float]] = {}
        try:
            entries = list(os.scandir(self.records_dir))
        except FileNotFoundError:
            return out
        for entry in entries:
            if entry.name.startswith(".tmp-"):
                if time.time() - entry.stat().st_mtime > 3600:  # a writer killed between write and rename
                    Path(entry.path).unlink(missing_ok=True)
                continue
            key, dot, ext = entry.name.partition(".")
            if ext != "json" or not dot or not _KEY.match(key):
                continue
            try:
                mtime = entry.stat().st_mtime
                document = self._read_record(Path(entry.path))
            except FileNotFoundError:
                continue
            except CorruptStoreError:
                document = None
            out[key] = (document, mtime)
        return out

    def remove_record(self, key: str) -> None:
        """Remove record ``key`` (missing is fine)."""
        self._record_path(key).unlink(missing_ok=True)
