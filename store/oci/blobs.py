"""Blobs of an OCI layout written and read safely: written to a temporary file, hashed while written, fsynced
and renamed into ``blobs/<algorithm>/<hex>`` (so a blob path that exists always holds exactly its digest);
read back through a stream that checks size and digest at EOF.  Also the atomic replacement of small files
(``index.json``, ``oci-layout``) and of whole oci-archive files."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any, BinaryIO, Self

from tether.store._fsync import fsync_dir
from tether.store.oci.index import BlobDigestError, LayoutError, blob_relpath, validate_digest

__all__ = ["CHUNK", "BlobWriter", "VerifyingReader", "atomic_output", "hasher", "write_file_atomically"]

CHUNK = 1024 * 1024
#: A blob being written: ``<layout>/.tether-blob-<hex>.partial`` (``OCILayout.prune`` removes dead ones).
PARTIAL_PREFIX = ".tether-blob-"
PARTIAL_SUFFIX = ".partial"


def hasher(digest: str) -> Any:
    """A hashlib object for the algorithm of ``digest`` (validated)."""
    return hashlib.new(validate_digest(digest).partition(":")[0])


@contextlib.contextmanager
def atomic_output(path: Path, *, mode: int = 0o644) -> Iterator[BinaryIO]:
    """A file written to a temp beside ``path`` (``.NAME.<hex>.tmp``), then fsynced, renamed over ``path`` and
    its directory fsynced; the temp is removed if the block fails."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_file_atomically(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """``data`` as the whole content of ``path``, via :func:`atomic_output`."""
    with atomic_output(path, mode=mode) as fh:
        fh.write(data)


class BlobWriter:
    """Writes one blob: a temporary file hashed while written, renamed into place by :meth:`commit`.

    ``layout_dir`` is the layout's directory.  Used as a context manager; leaving it without ``commit`` (or on an
    exception) removes the temporary file. ``expected_digest``/``expected_size`` are verified at commit; without
    an expected digest the blob is stored under the digest of what was written (sha256).
    """

    def __init__(self, layout_dir: Path, *, expected_digest: str | None, expected_size: int | None) -> None:
        self._dir = layout_dir
        self._expected_digest = validate_digest(expected_digest) if expected_digest else None
        self._expected_size = expected_size
        self._hash = hasher(expected_digest) if expected_digest else hashlib.sha256()
        self._algorithm = self._hash.name
        self.size = 0
        name = f"{PARTIAL_PREFIX}{secrets.token_hex(8)}{PARTIAL_SUFFIX}"
        self._tmp = layout_dir / name
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self._file: IO[bytes] | None = os.fdopen(fd, "wb")
        self.digest: str | None = None

    def write(self, chunk: bytes) -> None:
        """Append bytes (hashed as they go); refuses more bytes than the expected size."""
        if self._file is None:
            raise LayoutError(f"{self._dir}: blob writer already closed")
        self.size += len(chunk)
        if self._expected_size is not None and self.size > self._expected_size:
            raise BlobDigestError(
                f"writing blob {self._expected_digest} to {self._dir}: more than the "
                f"{self._expected_size} bytes its descriptor declares"
            )
        self._hash.update(chunk)
        self._file.write(chunk)

    def commit(self) -> str:
        """Verify, fsync and rename into ``blobs/``; return the digest. Idempotent if the blob exists."""
        if self._file is None:
            raise LayoutError(f"{self._dir}: blob writer already closed")
        digest = f"{self._algorithm}:{self._hash.hexdigest()}"
        what = self._expected_digest or digest
        try:
            if self._expected_size is not None and self.size != self._expected_size:
                raise BlobDigestError(
                    f"writing blob {what} to {self._dir}: got {self.size} bytes, expected {self._expected_size}"
                )
            if self._expected_digest is not None and digest != self._expected_digest:
                raise BlobDigestError(
                    f"writing blob {self._expected_digest} to {self._dir}: content has digest {digest}"
                )
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            target = self._dir / blob_relpath(digest)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._tmp, target)
            fsync_dir(target.parent)
        except BaseException:
            self.abort()
            raise
        self.digest = digest
        return digest

    def abort(self) -> None:
        """Drop the temporary file (no effect after a commit)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.digest is None:
            self.abort()


class VerifyingReader(io.RawIOBase):
    """A read-only stream over a blob that raises :class:`BlobDigestError` at EOF if the bytes lie."""

    def __init__(self, raw: BinaryIO, *, digest: str, size: int | None, where: str) -> None:
        self._raw = raw
        self._digest = digest
        self._size = size
        self._where = where
        self._hash = hasher(digest)
        self._seen = 0
        self._checked = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        limit = len(buffer)
        if self._size is not None:
            limit = min(limit, max(self._size - self._seen, 0))
        data = self._raw.read(limit) if limit else b""
        n = len(data)
        buffer[:n] = data
        self._hash.update(data)
        self._seen += n
        if n == 0:
            self._check()
        return n

    def _check(self) -> None:
        if self._checked:
            return
        self._checked = True
        actual = f"{self._hash.name}:{self._hash.hexdigest()}"
        if (self._size is not None and self._seen != self._size) or actual != self._digest:
            raise BlobDigestError(f"{self._where}: blob {self._digest} is corrupt (read {self._seen} bytes, {actual})")

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()
