"""layers.json / images.json records: frozen views and the raw dicts c/storage reads and writes.

Field names, order and omitempty behaviour follow containers/storage 1.43 ``layers.go`` (``Layer``)
and ``images.go`` (``Image``). Raw dicts are kept as read so that fields tether does not know
(newer podman) survive our rewrites.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tether.store.containers_storage.gojson import parse_go_time

__all__ = [
    "ImageRecord",
    "LayerRecord",
    "StagedLayer",
    "add_image_names",
    "big_data_file_name",
    "chain_id",
    "image_digests",
    "image_from_raw",
    "layer_from_raw",
    "lookup_image",
]

INCOMPLETE_FLAG = "incomplete"  # layers.go incompleteFlag
MANIFEST_PREFIX = "manifest"  # images.go ImageDigestManifestBigDataNamePrefix
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")

#: c/storage pkg/archive Compression values as recorded in ``compression``.
COMPRESSION_CODES = {"none": 0, "uncompressed": 0, "bzip2": 1, "gzip": 2, "xz": 3, "zstd": 4}


def compression_code(value: object) -> int:
    """Map an extractor's compression (int or name) to the ``compression`` number c/storage records."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    return COMPRESSION_CODES.get(str(value).lower(), 0)


def chain_id(parent_chain: str | None, diff_id: str) -> str:
    """Layer id as containers/image computes it: the first is the diffID hex, each next one is
    ``sha256(parentID + "+" + diffID hex)`` (storage_dest.go ``commitLayer``)."""
    diff_hex = diff_id.split(":", 1)[1] if ":" in diff_id else diff_id
    if not parent_chain:
        return diff_hex
    return hashlib.sha256(f"{parent_chain}+{diff_hex}".encode("ascii")).hexdigest()


def big_data_file_name(key: str) -> str:
    """store.go ``makeBigDataBaseName``: the key if only ``[.0-9a-z]``, else ``=`` + base64(key)."""
    if key and all(ch == "." or "0" <= ch <= "9" or "a" <= ch <= "z" for ch in key):
        return key
    return "=" + base64.b64encode(key.encode("utf-8")).decode("ascii")


@dataclass(frozen=True)
class LayerRecord:
    """One entry of layers.json (or volatile-layers.json)."""

    id: str
    parent: str | None
    created: datetime | None
    compressed_digest: str | None
    compressed_size: int | None
    diff_digest: str | None
    diff_size: int | None
    compression: int
    uidset: tuple[int, ...]
    gidset: tuple[int, ...]
    names: tuple[str, ...]
    incomplete: bool
    read_only: bool = False
    volatile: bool = False


@dataclass(frozen=True)
class ImageRecord:
    """One entry of images.json; ``digests`` rebuilt as images.go ``recomputeDigests`` does."""

    id: str
    names: tuple[str, ...]
    digest: str | None
    digests: tuple[str, ...]
    top_layer: str | None
    created: datetime | None
    metadata: str | None
    big_data_names: tuple[str, ...]
    names_history: tuple[str, ...] = ()
    big_data_sizes: Mapping[str, int] = field(default_factory=dict)
    big_data_digests: Mapping[str, str] = field(default_factory=dict)
    mapped_layers: tuple[str, ...] = ()
    read_only: bool = False


@dataclass(frozen=True)
class StagedLayer:
    """A layer extracted into a staging directory, not yet visible in the store."""

    layer_id: str
    parent: str | None
    diff_digest: str
    diff_size: int
    compression: int
    uidset: tuple[int, ...]
    gidset: tuple[int, ...]
    staging_dir: str = ""
    input_size: int = 0


def _created(raw: Mapping[str, Any]) -> datetime | None:
    text = raw.get("created")
    if not isinstance(text, str):
        return None
    parsed = parse_go_time(text)
    return parsed[0] if parsed else None


def layer_incomplete(raw: Mapping[str, Any]) -> bool:
    flags = raw.get("flags")
    return isinstance(flags, dict) and flags.get(INCOMPLETE_FLAG) is True


def layer_from_raw(raw: Mapping[str, Any], *, read_only: bool = False, volatile: bool = False) -> LayerRecord:
    return LayerRecord(
        id=str(raw["id"]),
        parent=raw.get("parent") or None,
        created=_created(raw),
        compressed_digest=raw.get("compressed-diff-digest") or None,
        compressed_size=raw.get("compressed-size") if raw.get("compressed-diff-digest") else None,
        diff_digest=raw.get("diff-digest") or None,
        diff_size=raw.get("diff-size", 0) if raw.get("diff-digest") else None,
        compression=int(raw.get("compression") or 0),
        uidset=tuple(raw.get("uidset") or ()),
        gidset=tuple(raw.get("gidset") or ()),
        names=tuple(raw.get("names") or ()),
        incomplete=layer_incomplete(raw),
        read_only=read_only,
        volatile=volatile,
    )


def image_digests(raw: Mapping[str, Any]) -> tuple[str, ...]:
    """images.go ``recomputeDigests``: ``digest`` first, then digests of ``manifest*`` big data."""
    out: list[str] = []
    digest = raw.get("digest")
    if digest:
        out.append(str(digest))
    for name, value in sorted((raw.get("big-data-digests") or {}).items()):
        if name.startswith(MANIFEST_PREFIX) and value and value not in out:
            out.append(str(value))
    return tuple(out)


def image_from_raw(raw: Mapping[str, Any], *, read_only: bool = False) -> ImageRecord:
    digests = image_digests(raw)
    return ImageRecord(
        id=str(raw["id"]),
        names=tuple(raw.get("names") or ()),
        digest=raw.get("digest") or (digests[0] if digests else None),
        digests=digests,
        top_layer=raw.get("layer") or None,
        created=_created(raw),
        metadata=raw.get("metadata") or None,
        big_data_names=tuple(raw.get("big-data-names") or ()),
        names_history=tuple(raw.get("names-history") or ()),
        big_data_sizes=dict(raw.get("big-data-sizes") or {}),
        big_data_digests=dict(raw.get("big-data-digests") or {}),
        mapped_layers=tuple(raw.get("mapped-layers") or ()),
        read_only=read_only,
    )


def valid_digest(value: str) -> bool:
    return bool(_DIGEST_RE.match(value))


def dedupe(names: Sequence[str]) -> list[str]:
    """c/storage ``dedupeNames``: first occurrence wins, order kept."""
    seen: set[str] = set()
    out: list[str] = []
    for name in names:
        if name not in seen:
            seen.add(name)
            out.append(name)
    return out


def new_layer_raw(
    *,
    layer_id: str,
    parent: str | None,
    created: str,
    compressed_digest: str | None,
    compressed_size: int | None,
    diff_digest: str,
    diff_size: int,
    compression: int,
    uidset: Sequence[int],
    gidset: Sequence[int],
    incomplete: bool,
) -> dict[str, Any]:
    """A layers.json entry in ``Layer`` field order with c/storage's omitempty behaviour."""
    raw: dict[str, Any] = {"id": layer_id}
    if parent:
        raw["parent"] = parent
    raw["created"] = created
    if compressed_digest:
        raw["compressed-diff-digest"] = compressed_digest
    if compressed_size:
        raw["compressed-size"] = compressed_size
    raw["diff-digest"] = diff_digest
    if diff_size:
        raw["diff-size"] = diff_size
    if compression:
        raw["compression"] = compression
    if uidset:
        raw["uidset"] = sorted(set(uidset))
    if gidset:
        raw["gidset"] = sorted(set(gidset))
    if incomplete:
        raw["flags"] = {INCOMPLETE_FLAG: True}
    return raw


IMAGE_FIELD_ORDER = (
    "id",
    "digest",
    "names",
    "names-history",
    "layer",
    "mapped-layers",
    "metadata",
    "big-data-names",
    "big-data-sizes",
    "big-data-digests",
    "created",
    "flags",
)
LAYER_FIELD_ORDER = (
    "id",
    "names",
    "parent",
    "metadata",
    "mountlabel",
    "created",
    "compressed-diff-digest",
    "compressed-size",
    "diff-digest",
    "diff-size",
    "compression",
    "uidset",
    "gidset",
    "flags",
    "uidmap",
    "gidmap",
    "big-data-names",
)


def ordered(raw: Mapping[str, Any], order: Sequence[str]) -> dict[str, Any]:
    """Put known fields in Go struct order and drop empty ones (omitempty); unknown fields last."""
    out: dict[str, Any] = {}
    for key in order:
        if key in raw:
            value = raw[key]
            if key in ("id", "created") or value not in (None, "", 0, [], {}, False):
                out[key] = value
    for key, value in raw.items():
        if key not in out and key not in order:
            out[key] = value
    return out


def add_image_names(images: list[dict[str, Any]], raw: dict[str, Any], names: Sequence[str]) -> None:
    """images.go ``updateNames(addNames)``: new names first, old kept, deduped; each name removed from
    other images and pushed to the front of ``names-history``."""
    if not names:
        return
    result = dedupe([*names, *(raw.get("names") or [])])
    for name in result:
        for other in images:
            if other is not raw and name in (other.get("names") or []):
                other["names"] = [n for n in other["names"] if n != name]
        raw["names-history"] = dedupe([name, *(raw.get("names-history") or [])])
    raw["names"] = result


_SHORT_ID = re.compile(r"^[0-9a-f]{1,64}$")


def lookup_image(images: Sequence[ImageRecord], text: str) -> ImageRecord | None:
    """Resolve ``text`` against images: id, name, ``name:latest``, ``sha256:<id>``, digests, id prefix."""
    candidates = [text]
    if text.startswith("sha256:") and len(text) == 71:
        candidates.append(text[7:])
    for image in images:
        if image.id in candidates:
            return image
    for image in images:
        if text in image.names:
            return image
    last = text.rsplit("/", 1)[-1]
    if "@" not in text and ":" not in last:
        tagged = f"{text}:latest"
        for image in images:
            if tagged in image.names:
                return image
    if "@" in text:
        repo, _, digest = text.partition("@")
        for image in images:
            if digest in image.digests and any(n.rsplit("@", 1)[0].rpartition(":")[0] == repo
                                               or n.split("@")[0] == repo for n in image.names):
                return image
        for image in images:
            if digest in image.digests:
                return image
    elif text.startswith("sha256:"):
        for image in images:
            if text in image.digests:
                return image
    if _SHORT_ID.match(text):
        matches = [image for image in images if image.id.startswith(text)]
        if len(matches) == 1:
            return matches[0]
    return None
