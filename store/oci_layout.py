"""OCI image layouts (``oci:DIR``) and oci-archive files (``oci-archive:FILE``).

The format is the image-spec's ``image-layout.md``: a directory holding ``oci-layout``
(``{"imageLayoutVersion": "1.0.0"}``), ``index.json`` (an image index whose entries may carry an
``org.opencontainers.image.ref.name`` annotation) and ``blobs/<algorithm>/<hex>``. Behaviour follows
containers/image's ``oci/layout`` and ``oci/archive`` transports where it matters to interoperate
with skopeo and podman:

- ``DIR:REF`` is split at the first colon (``oci/internal.SplitPathAndImage``), REF is validated
  with the annotation grammar of ``oci/internal.ValidateImageName``, ``@N`` selects entry N, and no
  REF selects the only entry (``getManifestDescriptor``).
- Adding an entry whose name already exists replaces it (``oci_dest.go addManifest``; containers/image
  keeps the old entry unnamed, tether drops it so ``prune`` can reclaim its blobs).
- An oci-archive is an uncompressed tar of the layout directory with relative member names
  (``oci/archive/oci_dest.go tarDirectory``). tether reads it in place: the tar headers are indexed
  once and blobs are read by offset, nothing is unpacked.

Everything here is blocking; the engine calls it from worker threads. Blobs are written to a temporary
file in the layout, hashed while written, fsynced and renamed into place, so a blob path that exists
always holds exactly its digest. ``index.json`` is replaced the same way, under an ``flock`` on the
layout directory so concurrent writers (several tether processes) do not lose each other's entries.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import io
import json
import os
import re
import secrets
import tarfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, BinaryIO, Self

from tether.store._fsync import fsync_dir
from tether.store.errors import CorruptStoreError, ImageUnknownError, StoreError

__all__ = [
    "INDEX_FILE",
    "LAYOUT_FILE",
    "LAYOUT_VERSION",
    "MANIFEST_MEDIA_TYPES",
    "OCI_INDEX_MEDIA_TYPE",
    "REF_NAME_ANNOTATION",
    "BlobDigestError",
    "BlobWriter",
    "IndexEntry",
    "LayoutError",
    "OCIArchive",
    "OCILayout",
    "PruneResult",
    "blob_relpath",
    "child_descriptors",
    "merge_entries",
    "parse_index",
    "select_entry",
    "serialize_index",
    "split_layout_reference",
    "validate_digest",
    "validate_ref_name",
    "write_oci_archive",
]

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
BLOBS_DIR = "blobs"
LAYOUT_VERSION = "1.0.0"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"

OCI_INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_MEDIA_TYPES = frozenset({OCI_INDEX_MEDIA_TYPE, DOCKER_LIST_MEDIA_TYPE})
#: The entry types containers/image accepts when a name is looked up (oci_transport.go).
MANIFEST_MEDIA_TYPES = frozenset(
    {OCI_MANIFEST_MEDIA_TYPE, OCI_INDEX_MEDIA_TYPE, DOCKER_MANIFEST_MEDIA_TYPE, DOCKER_LIST_MEDIA_TYPE}
)

#: Manifests and indexes are small; refuse to load anything bigger as JSON (containers/image: 4 MiB).
MAX_MANIFEST_SIZE = 4 * 1024 * 1024
#: index.json of a big mirror holds thousands of entries; still cap what is parsed.
MAX_INDEX_SIZE = 64 * 1024 * 1024

_CHUNK = 1024 * 1024
_PARTIAL_PREFIX = ".tether-blob-"
_PARTIAL_SUFFIX = ".partial"

# oci/internal/oci_util.go: the ref.name annotation grammar.
_SEPARATOR = r"(?:[-._:@+]|--)"
_ALPHANUM = r"(?:[A-Za-z0-9]+)"
_COMPONENT = rf"(?:{_ALPHANUM}(?:{_SEPARATOR}{_ALPHANUM})*)"
_REF_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_DIGEST_RE = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")


class LayoutError(StoreError):
    """An OCI layout or archive is missing, malformed, or cannot be written; names the path."""


class BlobDigestError(LayoutError):
    """Bytes written as (or read from) a blob do not match its digest or size."""


# --------------------------------------------------------------------------------------------------
# pure parts


def validate_digest(digest: str) -> str:
    """Return ``digest`` if it is a well-formed sha256/sha512 digest (also keeps paths safe)."""
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise LayoutError(f"invalid blob digest {digest!r}")
    return digest


def blob_relpath(digest: str) -> str:
    """``blobs/<algorithm>/<hex>`` for a digest, relative to the layout root."""
    algorithm, _, encoded = validate_digest(digest).partition(":")
    return f"{BLOBS_DIR}/{algorithm}/{encoded}"


def validate_ref_name(name: str) -> str:
    """Check a ``ref.name`` as containers/image's ``ValidateImageName`` does; return it."""
    if not _REF_RE.match(name):
        raise LayoutError(f"invalid OCI reference name {name!r}")
    return name


def split_layout_reference(text: str) -> tuple[str, str | None]:
    """Split ``DIR[:REF]`` at the first colon, as containers/image does on Linux.

    An empty REF (``DIR:``) is ``None``. REF may be ``@N`` (an entry index) or a name, which is
    validated.
    """
    path, sep, ref = text.partition(":")
    if not path:
        raise LayoutError(f"invalid OCI layout reference {text!r}: empty path")
    if not sep or not ref:
        return path, None
    if ref.startswith("@"):
        _parse_entry_index(ref)
    else:
        validate_ref_name(ref)
    return path, ref


def _parse_entry_index(ref: str) -> int:
    try:
        index = int(ref[1:], 10)
    except ValueError:
        raise LayoutError(f"invalid source index {ref}: not an integer") from None
    if index < 0:
        raise LayoutError(f"invalid source index {ref}: must not be negative")
    return index


@dataclass(frozen=True)
class IndexEntry:
    """One descriptor of ``index.json``; ``raw`` is the descriptor object as stored (kept whole)."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ref_name(self) -> str | None:
        """The ``org.opencontainers.image.ref.name`` annotation, if any."""
        return self.annotations.get(REF_NAME_ANNOTATION) or None

    @classmethod
    def build(
        cls,
        *,
        media_type: str,
        digest: str,
        size: int,
        ref_name: str | None = None,
        annotations: Mapping[str, str] | None = None,
        platform: Mapping[str, Any] | None = None,
    ) -> IndexEntry:
        """A new entry; ``ref_name`` is validated and stored as the ref.name annotation."""
        validate_digest(digest)
        notes = dict(annotations or {})
        if ref_name is not None:
            notes[REF_NAME_ANNOTATION] = validate_ref_name(ref_name)
        raw: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size}
        if platform:
            raw["platform"] = dict(platform)
        if notes:
            raw["annotations"] = notes
        return cls(media_type=media_type, digest=digest, size=size, annotations=notes, raw=raw)

    def to_json(self) -> dict[str, Any]:
        """The descriptor object to store (unknown fields of a read entry are preserved)."""
        out = copy.deepcopy(dict(self.raw))
        out["mediaType"] = self.media_type
        out["digest"] = self.digest
        out["size"] = self.size
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        else:
            out.pop("annotations", None)
        return out


def _entry_from_json(obj: Any, *, where: str) -> IndexEntry:
    if not isinstance(obj, dict):
        raise CorruptStoreError(f"{where}: a manifests entry is not an object")
    media_type = obj.get("mediaType", "")
    digest = obj.get("digest")
    size = obj.get("size")
    annotations = obj.get("annotations") or {}
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise CorruptStoreError(f"{where}: entry has an invalid digest {digest!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise CorruptStoreError(f"{where}: entry {digest} has an invalid size {size!r}")
    if not isinstance(media_type, str):
        raise CorruptStoreError(f"{where}: entry {digest} has an invalid mediaType")
    if not isinstance(annotations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    ):
        raise CorruptStoreError(f"{where}: entry {digest} has invalid annotations")
    return IndexEntry(media_type=media_type, digest=digest, size=size, annotations=annotations, raw=obj)


def parse_index(raw: bytes, *, where: str) -> tuple[dict[str, Any], tuple[IndexEntry, ...]]:
    """Parse ``index.json``; returns the top-level object (for its other fields) and the entries.

    ``where`` names the file in error messages (``CorruptStoreError``).
    """
    try:
        top = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptStoreError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(top, dict):
        raise CorruptStoreError(f"{where}: not a JSON object")
    if top.get("schemaVersion") != 2:
        raise CorruptStoreError(f"{where}: schemaVersion is {top.get('schemaVersion')!r}, expected 2")
    manifests = top.get("manifests")
    if not isinstance(manifests, list):
        raise CorruptStoreError(f"{where}: manifests is not a list")
    return top, tuple(_entry_from_json(m, where=where) for m in manifests)


def serialize_index(top: Mapping[str, Any], entries: Sequence[IndexEntry]) -> bytes:
    """``index.json`` bytes: the other top-level fields kept, ``manifests`` replaced."""
    out: dict[str, Any] = {k: v for k, v in top.items() if k != "manifests"}
    out["schemaVersion"] = 2
    out.setdefault("mediaType", OCI_INDEX_MEDIA_TYPE)
    out["manifests"] = [e.to_json() for e in entries]
    return json.dumps(out, separators=(",", ":")).encode()


def select_entry(entries: Sequence[IndexEntry], ref: str | None, *, where: str) -> IndexEntry:
    """Pick the entry ``ref`` names, as containers/image's ``getManifestDescriptor`` does.

    ``ref`` is a ref.name, ``@N`` (entry N) or ``None`` (the only entry). ``ImageUnknownError`` if
    nothing matches.
    """
    if ref is None:
        if len(entries) != 1:
            raise ImageUnknownError(
                f"{where}: holds {len(entries)} images; name one with {where}:REF"
                + (f" (one of: {', '.join(_names(entries))})" if _names(entries) else "")
            )
        return entries[0]
    if ref.startswith("@"):
        index = _parse_entry_index(ref)
        if index >= len(entries):
            raise ImageUnknownError(f"{where}: index {index} is too large, only {len(entries)} entries available")
        return entries[index]
    unsupported = []
    for entry in entries:
        if entry.ref_name == ref:
            if entry.media_type in MANIFEST_MEDIA_TYPES:
                return entry
            unsupported.append(entry.media_type)
    if unsupported:
        raise LayoutError(f"{where}: reference {ref!r} matches unsupported media types {unsupported}")
    raise ImageUnknownError(f"{where}: no image named {ref!r}")


def _names(entries: Iterable[IndexEntry]) -> list[str]:
    return [e.ref_name for e in entries if e.ref_name]


def merge_entries(entries: Sequence[IndexEntry], new: Iterable[IndexEntry]) -> tuple[IndexEntry, ...]:
    """Add or replace entries (pure): a named entry replaces every entry of the same name, an unnamed
    one replaces an unnamed entry of the same digest; otherwise it is appended."""
    result = list(entries)
    for entry in new:
        name = entry.ref_name
        if name is not None:
            positions = [i for i, e in enumerate(result) if e.ref_name == name]
        else:
            positions = [i for i, e in enumerate(result) if e.ref_name is None and e.digest == entry.digest]
        if positions:
            result[positions[0]] = entry
            for i in reversed(positions[1:]):
                del result[i]
        else:
            result.append(entry)
    return tuple(result)


def child_descriptors(raw: bytes, media_type: str | None) -> tuple[tuple[str, str, int], ...]:
    """The blobs a manifest or index refers to, as ``(media_type, digest, size)``.

    Manifests: config and layers (and ``subject`` is not followed: it points at another image).
    Indexes: their manifests. Anything else (configs, layers): nothing. Unknown JSON: nothing.
    """
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return ()
    if not isinstance(obj, dict):
        return ()
    kind = obj.get("mediaType") or media_type
    items: list[Any] = []
    if kind in INDEX_MEDIA_TYPES or ("manifests" in obj and "layers" not in obj):
        items = obj.get("manifests") or []
    elif kind in (OCI_MANIFEST_MEDIA_TYPE, DOCKER_MANIFEST_MEDIA_TYPE) or "layers" in obj:
        items = [obj.get("config"), *(obj.get("layers") or [])]
    out = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("digest"), str) and _DIGEST_RE.match(item["digest"]):
            size = item.get("size")
            out.append((str(item.get("mediaType", "")), item["digest"], size if isinstance(size, int) else -1))
    return tuple(out)


def _hasher(digest: str) -> Any:
    return hashlib.new(validate_digest(digest).partition(":")[0])


# --------------------------------------------------------------------------------------------------
# file helpers


@contextlib.contextmanager
def _atomic_output(path: Path, *, mode: int = 0o644) -> Iterator[BinaryIO]:
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


def _write_file_atomically(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    with _atomic_output(path, mode=mode) as fh:
        fh.write(data)


class BlobWriter:
    """Writes one blob: a temporary file hashed while written, renamed into place by :meth:`commit`.

    Used as a context manager; leaving it without ``commit`` (or on an exception) removes the
    temporary file. ``expected_digest``/``expected_size`` are verified at commit; without an expected
    digest the blob is stored under the digest of what was written (sha256).
    """

    def __init__(self, layout: OCILayout, *, expected_digest: str | None, expected_size: int | None) -> None:
        self._layout = layout
        self._expected_digest = validate_digest(expected_digest) if expected_digest else None
        self._expected_size = expected_size
        self._hash = _hasher(expected_digest) if expected_digest else hashlib.sha256()
        self._algorithm = self._hash.name
        self.size = 0
        name = f"{_PARTIAL_PREFIX}{secrets.token_hex(8)}{_PARTIAL_SUFFIX}"
        self._tmp = layout.path / name
        fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self._file: IO[bytes] | None = os.fdopen(fd, "wb")
        self.digest: str | None = None

    def write(self, chunk: bytes) -> None:
        """Append bytes (hashed as they go); refuses more bytes than the expected size."""
        if self._file is None:
            raise LayoutError(f"{self._layout.path}: blob writer already closed")
        self.size += len(chunk)
        if self._expected_size is not None and self.size > self._expected_size:
            raise BlobDigestError(
                f"writing blob {self._expected_digest} to {self._layout.path}: more than the "
                f"{self._expected_size} bytes its descriptor declares"
            )
        self._hash.update(chunk)
        self._file.write(chunk)

    def commit(self) -> str:
        """Verify, fsync and rename into ``blobs/``; return the digest. Idempotent if the blob exists."""
        if self._file is None:
            raise LayoutError(f"{self._layout.path}: blob writer already closed")
        digest = f"{self._algorithm}:{self._hash.hexdigest()}"
        what = self._expected_digest or digest
        try:
            if self._expected_size is not None and self.size != self._expected_size:
                raise BlobDigestError(
                    f"writing blob {what} to {self._layout.path}: got {self.size} bytes, expected {self._expected_size}"
                )
            if self._expected_digest is not None and digest != self._expected_digest:
                raise BlobDigestError(
                    f"writing blob {self._expected_digest} to {self._layout.path}: content has digest {digest}"
                )
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            target = self._layout.path / blob_relpath(digest)
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


@dataclass(frozen=True)
class PruneResult:
    """What :meth:`OCILayout.prune` removed."""

    removed: tuple[str, ...]
    freed_bytes: int
    partials_removed: int


class _VerifyingReader(io.RawIOBase):
    """A read-only stream over a blob that raises :class:`BlobDigestError` at EOF if the bytes lie."""

    def __init__(self, raw: BinaryIO, *, digest: str, size: int | None, where: str) -> None:
        self._raw = raw
        self._digest = digest
        self._size = size
        self._where = where
        self._hash = _hasher(digest)
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


# --------------------------------------------------------------------------------------------------
# layouts


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
                _write_file_atomically(marker, json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode())
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
        _write_file_atomically(self.path / INDEX_FILE, serialize_index(top, entries))

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
        return io.BufferedReader(_VerifyingReader(fh, digest=digest, size=size, where=f"oci:{self.path}"), _CHUNK)

    def read_blob(self, digest: str, *, max_size: int = MAX_MANIFEST_SIZE) -> bytes:
        """Read a small blob whole (manifests, configs), verified."""
        size = self.blob_size(digest)
        if size > max_size:
            raise LayoutError(f"oci:{self.path}: blob {digest} is {size} bytes, more than {max_size}")
        with self.open_blob(digest, size=size) as fh:
            return fh.read()

    def blob_writer(self, *, expected_digest: str | None = None, expected_size: int | None = None) -> BlobWriter:
        """A :class:`BlobWriter` for one new blob."""
        return BlobWriter(self, expected_digest=expected_digest, expected_size=expected_size)

    def put_blob(self, data: bytes, *, expected_digest: str | None = None) -> str:
        """Store bytes as a blob (verified against ``expected_digest`` if given); return the digest."""
        hasher = _hasher(expected_digest) if expected_digest else hashlib.sha256()
        hasher.update(data)
        digest = f"{hasher.name}:{hasher.hexdigest()}"
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
                if _DIGEST_RE.match(digest) and blob.is_file():
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
                if child.name.startswith(_PARTIAL_PREFIX) and child.name.endswith(_PARTIAL_SUFFIX):
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
                        while fh.read(_CHUNK):
                            pass
                except BlobDigestError as exc:
                    problems.append(str(exc))
        return problems


# --------------------------------------------------------------------------------------------------
# oci-archive


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
            return io.BufferedReader(raw, _CHUNK)
        checked = _VerifyingReader(
            io.BufferedReader(raw, _CHUNK), digest=digest, size=size, where=f"oci-archive:{self.path}"
        )
        return io.BufferedReader(checked, _CHUNK)

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
            if len(parts) == 3 and parts[0] == BLOBS_DIR and _DIGEST_RE.match(f"{parts[1]}:{parts[2]}"):
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
                while chunk := src.read(_CHUNK):
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
    with _atomic_output(archive, mode=0o666) as fh, \
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
