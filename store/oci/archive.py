"""oci-archive files (``oci-archive:FILE``): an uncompressed tar of a layout directory with relative member names
(containers/image ``oci/archive/oci_dest.go tarDirectory``).  Read in place: the tar headers are indexed once
and blobs are read by offset, nothing is unpacked; written from a layout by :func:`write_oci_archive`.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Self

from tether.store.errors import CorruptStoreError
from tether.store.oci.blobs import CHUNK, VerifyingReader, atomic_output
from tether.store.oci.index import (
    BLOBS_DIR,
    DIGEST_RE,
    INDEX_FILE,
    LAYOUT_FILE,
    LAYOUT_VERSION,
    MAX_INDEX_SIZE,
    MAX_MANIFEST_SIZE,
    IndexEntry,
    LayoutError,
    blob_relpath,
    parse_index,
    select_entry,
    serialize_index,
)
from tether.store.oci.layout import OCILayout

__all__ = ["OCIArchive", "write_oci_archive"]


@dataclass(frozen=True)
class _Member:
    offset: int
    size: int


def _normalize_member_name(name: str) -> str | None:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        return None
    return "/".join(parts)


class OCIArchive:
    """An oci-archive file opened for reading without unpacking it.

    The tar headers are scanned once (seeking over member contents); blobs are then read straight
    from their offsets. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: Path, members: Mapping[str, _Member], fh: BinaryIO) -> None:
        self.path = path
        self._members = dict(members)
        self._fh = fh
        where = f"oci-archive:{path}"
        if LAYOUT_FILE not in self._members or INDEX_FILE not in self._members:
            fh.close()
            raise LayoutError(f"{where}: not an OCI archive (no {LAYOUT_FILE} or {INDEX_FILE})")
        try:
            version = json.loads(self._read_member(LAYOUT_FILE, MAX_MANIFEST_SIZE)).get("imageLayoutVersion")
        except (ValueError, AttributeError):
            fh.close()
            raise CorruptStoreError(f"{where}: {LAYOUT_FILE} is invalid") from None
        if version != LAYOUT_VERSION:
            fh.close()
            raise LayoutError(f"{where}: unsupported imageLayoutVersion {version!r}")
        self._top, self._entries = parse_index(
            self._read_member(INDEX_FILE, MAX_INDEX_SIZE), where=f"{where}/{INDEX_FILE}"
        )

    @classmethod
    def open(cls, path: Path | str) -> OCIArchive:
        """Index an archive's members (``LayoutError`` if it is missing or not an OCI archive)."""
        path = Path(path)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - owned by the OCIArchive
        except FileNotFoundError:
            raise LayoutError(f"oci-archive:{path}: no such file") from None
        members: dict[str, _Member] = {}
        try:
            with tarfile.open(fileobj=fh, mode="r:") as tar:
                for info in tar:
                    name = _normalize_member_name(info.name)
                    if name is None or not info.isfile():
                        continue
                    members[name] = _Member(offset=info.offset_data, size=info.size)
        except tarfile.TarError as exc:
            fh.close()
            raise LayoutError(f"oci-archive:{path}: not a readable tar file: {exc}") from None
        return cls(path, members, fh)

    def close(self) -> None:
        """Close the archive file."""
        self._fh.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read_member(self, name: str, max_size: int) -> bytes:
        member = self._members[name]
        if member.size > max_size:
            raise LayoutError(f"oci-archive:{self.path}: {name} is larger than {max_size} bytes")
        return os.pread(self._fh.fileno(), member.size, member.offset)

    def entries(self) -> tuple[IndexEntry, ...]:
        """The entries of the archive's ``index.json``."""
        return self._entries

    @property
    def index_top(self) -> Mapping[str, Any]:
        """The archive's index.json top-level object."""
        return self._top

    def resolve(self, ref: str | None) -> IndexEntry:
        """The entry ``ref`` names (see :func:`select_entry`)."""
        return select_entry(self._entries, ref, where=f"oci-archive:{self.path}")

    def has_blob(self, digest: str, size: int | None = None) -> bool:
        """Whether the archive holds the blob (with ``size`` bytes, when given)."""
        member = self._members.get(blob_relpath(digest))
        return member is not None and (size is None or size < 0 or member.size == size)

    def blob_size(self, digest: str) -> int:
        """The size of a blob in the archive."""
        member = self._members.get(blob_relpath(digest))
        if member is None:
            raise LayoutError(f"oci-archive:{self.path}: blob {digest} is missing")
        return member.size

    def open_blob(self, digest: str, *, size: int | None = None, verify: bool = True) -> BinaryIO:
        """A stream over one blob, read from its offset in the archive (its own file handle)."""
        member = self._members.get(blob_relpath(digest))
        if member is None:
            raise LayoutError(f"oci-archive:{self.path}: blob {digest} is missing")
        raw = _SliceReader(self.path, member.offset, member.size)
        if not verify:
            return io.BufferedReader(raw, CHUNK)
        checked = VerifyingReader(
            io.BufferedReader(raw, CHUNK), digest=digest, size=size, where=f"oci-archive:{self.path}"
        )
        return io.BufferedReader(checked, CHUNK)

    def read_blob(self, digest: str, *, max_size: int = MAX_MANIFEST_SIZE) -> bytes:
        """Read a small blob whole, verified."""
        size = self.blob_size(digest)
        if size > max_size:
            raise LayoutError(f"oci-archive:{self.path}: blob {digest} is {size} bytes, more than {max_size}")
        with self.open_blob(digest, size=size) as fh:
            return fh.read()

    def blob_digests(self) -> tuple[str, ...]:
        """Every blob the archive holds."""
        out = []
        for name in self._members:
            parts = name.split("/")
            if len(parts) == 3 and parts[0] == BLOBS_DIR and DIGEST_RE.match(f"{parts[1]}:{parts[2]}"):
                out.append(f"{parts[1]}:{parts[2]}")
        return tuple(sorted(out))

    def copy_into(self, layout: OCILayout) -> int:
        """Copy every blob missing from ``layout`` into it (verified), and merge the archive's entries
        into its index. Returns the number of blobs copied."""
        copied = 0
        for digest in self.blob_digests():
            size = self.blob_size(digest)
            if layout.has_blob(digest, size):
                continue
            with (
                self.open_blob(digest, size=size) as src,
                layout.blob_writer(expected_digest=digest, expected_size=size) as writer,
            ):
                while chunk := src.read(CHUNK):
                    writer.write(chunk)
                writer.commit()
            copied += 1
        layout.add_entries(self._entries)
        return copied


class _SliceReader(io.RawIOBase):
    """Reads ``size`` bytes at ``offset`` of a file with ``pread`` (independent of other readers)."""

    def __init__(self, path: Path, offset: int, size: int) -> None:
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._offset = offset
        self._end = offset + size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self._end - self._offset)
        if want <= 0:
            return 0
        data = os.pread(self._fd, want, self._offset)
        if not data:
            raise LayoutError("oci-archive: truncated archive")
        n = len(data)
        buffer[:n] = data
        self._offset += n
        return n

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def _tarinfo(name: str, *, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    if directory:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
    else:
        info.mode = 0o644
        info.size = size
    return info


def write_oci_archive(layout: OCILayout, archive: Path | str, *, only_reachable: bool = True) -> None:
    """Write ``layout`` as an oci-archive file, atomically (temp file, fsync, rename).

    Members: ``oci-layout``, ``index.json``, then ``blobs/`` (relative names, uid/gid 0, mtime 0, as
    containers/image's ``tarDirectory`` writes with a fixed timestamp). With ``only_reachable`` blobs
    no entry reaches are left out. Every blob is verified while it is copied.
    """
    archive = Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    top, entries = layout._read_index_top()
    digests = sorted(layout.reachable(entries)) if only_reachable else list(layout.iter_blob_digests())
    # 0o666 before the umask, as open(..., "x") created it
    with atomic_output(archive, mode=0o666) as fh, \
            tarfile.open(fileobj=fh, mode="w:", format=tarfile.PAX_FORMAT) as tar:
        layout_raw = json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode()
        tar.addfile(_tarinfo(LAYOUT_FILE, size=len(layout_raw)), io.BytesIO(layout_raw))
        index_raw = serialize_index(top, entries)
        tar.addfile(_tarinfo(INDEX_FILE, size=len(index_raw)), io.BytesIO(index_raw))
        tar.addfile(_tarinfo(f"{BLOBS_DIR}/", directory=True))
        algorithms = sorted({d.partition(":")[0] for d in digests})
        for algorithm in algorithms:
            tar.addfile(_tarinfo(f"{BLOBS_DIR}/{algorithm}/", directory=True))
        for digest in digests:
            if not layout.has_blob(digest):
                raise LayoutError(f"writing oci-archive:{archive}: blob {digest} is missing from {layout.path}")
            size = layout.blob_size(digest)
            with layout.open_blob(digest, size=size) as src:
                tar.addfile(_tarinfo(blob_relpath(digest), size=size), src)
                src.read()  # reach EOF: the verifying reader checks the digest there
