"""The OCI image layout's names and its ``index.json`` (image-spec ``image-layout.md``, ``image-index.md``):
media types, digests and reference names as containers/image validates them, index entries, selecting and
merging them, and the children a manifest or index refers to.  No I/O."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tether.store.errors import CorruptStoreError, ImageUnknownError, StoreError

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


# oci/internal/oci_util.go: the ref.name annotation grammar.
_SEPARATOR = r"(?:[-._:@+]|--)"
_ALPHANUM = r"(?:[A-Za-z0-9]+)"
_COMPONENT = rf"(?:{_ALPHANUM}(?:{_SEPARATOR}{_ALPHANUM})*)"
_REF_RE = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
DIGEST_RE = re.compile(r"^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$")


class LayoutError(StoreError):
    """An OCI layout or archive is missing, malformed, or cannot be written; names the path."""


class BlobDigestError(LayoutError):
    """Bytes written as (or read from) a blob do not match its digest or size."""


# --------------------------------------------------------------------------------------------------
# pure parts


def validate_digest(digest: str) -> str:
    """Return ``digest`` if it is a well-formed sha256/sha512 digest (also keeps paths safe)."""
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
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
    """``@N`` (containers/image's source index) -> N; :class:`LayoutError` when N is not a non-negative integer."""
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
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
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
        if isinstance(item, dict) and isinstance(item.get("digest"), str) and DIGEST_RE.match(item["digest"]):
            size = item.get("size")
            out.append((str(item.get("mediaType", "")), item["digest"], size if isinstance(size, int) else -1))
    return tuple(out)
