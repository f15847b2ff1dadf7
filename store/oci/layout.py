"""OCI image layout directories (``oci:DIR``): index entries, blobs, references, prune, verify.

``index.json`` is replaced atomically under an ``flock`` on the layout directory, so concurrent writers (several
tether processes) do not lose each other's entries; blobs are written as :mod:`.blobs` writes them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from tether.store._fsync import fsync_dir
from tether.store.errors import CorruptStoreError
from tether.store.oci.blobs import (
    CHUNK,
    PARTIAL_PREFIX,
    PARTIAL_SUFFIX,
    BlobWriter,
    VerifyingReader,
    hasher,
    write_file_atomically,
)
from tether.store.oci.index import (
    BLOBS_DIR,
    DIGEST_RE,
    INDEX_FILE,
    LAYOUT_FILE,
    LAYOUT_VERSION,
    MANIFEST_MEDIA_TYPES,
    MAX_INDEX_SIZE,
    MAX_MANIFEST_SIZE,
    OCI_INDEX_MEDIA_TYPE,
    BlobDigestError,
    IndexEntry,
    LayoutError,
    blob_relpath,
    child_descriptors,
    merge_entries,
    parse_index,
    select_entry,
    serialize_index,
)

__all__ = ["OCILayout", "PruneResult"]


@dataclass(frozen=True)
class PruneResult:
    """What :meth:`OCILayout.prune` removed."""

    removed: tuple[str, ...]
    freed_bytes: int
    partials_removed: int


class OCILayout:
    """An OCI image layout directory. Cheap to construct; every read goes to disk."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"OCILayout({str(self.path)!r})"

    # -- opening ---------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path | str, *, create: bool = False) -> OCILayout:
        """Open an existing layout (``LayoutError`` if it is not one) or, with ``create``, make one.

        Creating writes ``oci-layout``, an empty ``index.json`` and ``blobs/sha256`` (each only if
        missing), so it also completes a layout an interrupted run left half-made.
        """
        layout = cls(Path(path))
        marker = layout.path / LAYOUT_FILE
        if create:
            layout.path.mkdir(parents=True, exist_ok=True)
            (layout.path / BLOBS_DIR / "sha256").mkdir(parents=True, exist_ok=True)
            if not marker.exists():
                write_file_atomically(marker, json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode())
            if not (layout.path / INDEX_FILE).exists():
                with layout.locked():
                    if not (layout.path / INDEX_FILE).exists():
                        layout._write_index({"schemaVersion": 2, "mediaType": OCI_INDEX_MEDIA_TYPE}, ())
        if not layout.path.is_dir():
            raise LayoutError(f"{layout.path}: no such OCI layout directory")
        try:
            version = json.loads(marker.read_bytes()).get("imageLayoutVersion")
        except FileNotFoundError:
            raise LayoutError(f"{layout.path}: not an OCI layout (no {LAYOUT_FILE} file)") from None
        except (ValueError, AttributeError) as exc:
            raise CorruptStoreError(f"{marker}: invalid: {exc}") from None
        if version != LAYOUT_VERSION:
            raise LayoutError(f"{marker}: unsupported imageLayoutVersion {version!r}")
        return layout

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """An exclusive ``flock`` on the layout directory (serializes ``index.json`` updates)."""
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # -- index -----------------------------------------------------------------------------------

    def _read_index_top(self) -> tuple[dict[str, Any], tuple[IndexEntry, ...]]:
        path = self.path / INDEX_FILE
        try:
            with open(path, "rb") as fh:
                raw = fh.read(MAX_INDEX_SIZE + 1)
        except FileNotFoundError:
            raise LayoutError(f"{self.path}: not an OCI layout (no {INDEX_FILE})") from None
        if len(raw) > MAX_INDEX_SIZE:
            raise CorruptStoreError(f"{path}: larger than {MAX_INDEX_SIZE} bytes")
        return parse_index(raw, where=str(path))

    def entries(self) -> tuple[IndexEntry, ...]:
        """The entries of ``index.json``, in file order."""
        return self._read_index_top()[1]

    def resolve(self, ref: str | None) -> IndexEntry:
        """The entry a ``ref`` names (see :func:`select_entry`)."""
        return select_entry(self.entries(), ref, where=f"oci:{self.path}")

    def _write_index(self, top: Mapping[str, Any], entries: Sequence[IndexEntry]) -> None:
        write_file_atomically(self.path / INDEX_FILE, serialize_index(top, entries))

    def update_index(self, change: Callable[[tuple[IndexEntry, ...]], Sequence[IndexEntry]]) -> tuple[IndexEntry, ...]:
        """Read-modify-write ``index.json`` under the layout lock; returns the new entries."""
        with self.locked():
            top, entries = self._read_index_top()
            new = tuple(change(entries))
            if new != entries:
                self._write_index(top, new)
            return new

    def add_entries(self, new: Iterable[IndexEntry], *, require_blobs: bool = True) -> tuple[IndexEntry, ...]:
        """Add or replace entries (:func:`merge_entries`). Each entry's blob must already be stored."""
        new = tuple(new)
        if require_blobs:
            for entry in new:
                if not self.has_blob(entry.digest, entry.size):
                    raise LayoutError(f"{self.path}: cannot reference {entry.digest}: blob missing or wrong size")
        return self.update_index(lambda entries: merge_entries(entries, new))

    def remove_references(self, names: Iterable[str]) -> tuple[IndexEntry, ...]:
        """Drop the entries carrying these ref names (blobs stay until :meth:`prune`)."""
        drop = set(names)
        return self.update_index(lambda entries: tuple(e for e in entries if e.ref_name not in drop))

    # -- blobs -----------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """Where a blob lives (whether or not it exists)."""
        return self.path / blob_relpath(digest)

    def has_blob(self, digest: str, size: int | None = None) -> bool:
        """Whether the blob exists (and has ``size`` bytes, when given)."""
        try:
            st = self.blob_path(digest).stat()
        except FileNotFoundError:
            return False
        return size is None or size < 0 or st.st_size == size

    def blob_size(self, digest: str) -> int:
        """The size of a stored blob (``LayoutError`` if missing)."""
        try:
            return self.blob_path(digest).stat().st_size
        except FileNotFoundError:
            raise LayoutError(f"oci:{self.path}: blob {digest} is missing") from None

    def open_blob(self, digest: str, *, size: int | None = None, verify: bool = True) -> BinaryIO:
        """Open a blob for reading. With ``verify`` the stream raises :class:`BlobDigestError` at EOF
        if the content does not match ``digest`` (and ``size``)."""
        path = self.blob_path(digest)
        try:
            fh = open(path, "rb")  # noqa: SIM115 - returned to the caller
        except FileNotFoundError:
            raise LayoutError(f"oci:{self.path}: blob {digest} is missing") from None
        if not verify:
            return fh
        return io.BufferedReader(VerifyingReader(fh, digest=digest, size=size, where=f"oci:{self.path}"), CHUNK)

    def read_blob(self, digest: str, *, max_size: int = MAX_MANIFEST_SIZE) -> bytes:
        """Read a small blob whole (manifests, configs), verified."""
        size = self.blob_size(digest)
        if size > max_size:
            raise LayoutError(f"oci:{self.path}: blob {digest} is {size} bytes, more than {max_size}")
        with self.open_blob(digest, size=size) as fh:
            return fh.read()

    def blob_writer(self, *, expected_digest: str | None = None, expected_size: int | None = None) -> BlobWriter:
        """A :class:`BlobWriter` for one new blob."""
        return BlobWriter(self.path, expected_digest=expected_digest, expected_size=expected_size)

    def put_blob(self, data: bytes, *, expected_digest: str | None = None) -> str:
        """Store bytes as a blob (verified against ``expected_digest`` if given); return the digest."""
        h = hasher(expected_digest) if expected_digest else hashlib.sha256()
        h.update(data)
        digest = f"{h.name}:{h.hexdigest()}"
        if expected_digest and digest != expected_digest:
            raise BlobDigestError(f"writing blob {expected_digest} to {self.path}: content has digest {digest}")
        if self.has_blob(digest, len(data)):
            return digest
        with self.blob_writer(expected_digest=digest, expected_size=len(data)) as writer:
            writer.write(data)
            return writer.commit()

    def iter_blob_digests(self) -> Iterator[str]:
        """Every blob file present under ``blobs/`` (names that are not digests are skipped)."""
        base = self.path / BLOBS_DIR
        if not base.is_dir():
            return
        for algo_dir in sorted(base.iterdir()):
            if not algo_dir.is_dir():
                continue
            for blob in sorted(algo_dir.iterdir()):
                digest = f"{algo_dir.name}:{blob.name}"
                if DIGEST_RE.match(digest) and blob.is_file():
                    yield digest

    # -- reachability, prune, verify ------------------------------------------------------------

    def reachable(self, entries: Sequence[IndexEntry] | None = None) -> dict[str, int]:
        """Digests reachable from the index entries (manifests, indexes, configs, layers) -> size.

        Missing manifests are reported as reachable (so nothing is deleted on their account) but not
        followed.
        """
        todo = [(e.media_type, e.digest, e.size) for e in (self.entries() if entries is None else entries)]
        seen: dict[str, int] = {}
        while todo:
            media_type, digest, size = todo.pop()
            if digest in seen:
                continue
            seen[digest] = size
            if media_type in MANIFEST_MEDIA_TYPES or media_type == "":
                try:
                    raw = self.read_blob(digest)
                except LayoutError:
                    continue
                todo.extend(child_descriptors(raw, media_type or None))
        return seen

    def prune(self) -> PruneResult:
        """Remove blobs no index entry reaches, and leftover partial blob files of interrupted writes.

        Runs under the layout lock, so entries added concurrently through :meth:`add_entries` are seen
        (a writer adds its entry only after its blobs are in place; blobs written but not yet
        referenced by a running sync can be removed, which that sync's final check reports).
        """
        removed: list[str] = []
        freed = 0
        partials = 0
        with self.locked():
            keep = self.reachable()
            for digest in list(self.iter_blob_digests()):
                if digest in keep:
                    continue
                path = self.blob_path(digest)
                with contextlib.suppress(FileNotFoundError):
                    freed += path.stat().st_size
                    path.unlink()
                    removed.append(digest)
            for child in self.path.iterdir():
                if child.name.startswith(PARTIAL_PREFIX) and child.name.endswith(PARTIAL_SUFFIX):
                    with contextlib.suppress(FileNotFoundError):
                        freed += child.stat().st_size
                        child.unlink()
                        partials += 1
            if removed:
                for algo_dir in (self.path / BLOBS_DIR).iterdir():
                    fsync_dir(algo_dir)
        return PruneResult(removed=tuple(removed), freed_bytes=freed, partials_removed=partials)

    def verify(self, *, digests: bool = True) -> list[str]:
        """Problems found: every reachable blob present with the right size (and, with ``digests``,
        content matching its digest). An empty list means the layout is whole."""
        problems = []
        for digest, size in sorted(self.reachable().items()):
            if not self.has_blob(digest):
                problems.append(f"blob {digest} is missing")
                continue
            actual = self.blob_size(digest)
            if size >= 0 and actual != size:
                problems.append(f"blob {digest} has {actual} bytes, descriptors say {size}")
                continue
            if digests:
                try:
                    with self.open_blob(digest) as fh:
                        while fh.read(CHUNK):
                            pass
                except BlobDigestError as exc:
                    problems.append(str(exc))
        return problems
