"""What a pull keeps of its downloads across runs: blob prefixes, download records, and their cleaning.

The store's :class:`~tether.store.blobcache.BlobCache` lives in ``STORE/tether/cache``. Two things go there:

* **blob files** (``blobs/sha256-<hex>``): every blob a registry pull fetches is appended there as it streams
  (a *prefix* of the blob; the whole blob once complete). A pull killed after half its bytes leaves half of
  each file; the next run feeds those bytes to the extractor, hashing them from the first, and asks the
  registry for the rest with ``Range`` (:func:`tether.engine.copy.execute.stream_cached`). A prefix that does
  not hash to the digest fails the blob, which is then fetched whole once more
  (:class:`~tether.engine.copy.destinations.storage.StorageDestination`); nothing unverified is published.
* **download records** (``records/<key>.json``, :class:`DownloadRecord`): per image name and platform, what a
  pull resolved: the manifests, config and layer digests. A pull writes one, ``complete: false``, before its
  first layer, so that cleaners know whose blobs the files are; ``--download-only`` marks it ``complete`` once
  every blob is held whole and verified, with the manifests and config kept beside them, and a later pull of
  that name applies it without a request (:class:`~tether.engine.copy.sources.cached.CachedRegistrySource`).

This module reads and cleans the cache without trio (``bound gc`` uses it); the streaming half is
:func:`tether.engine.copy.execute.stream_cached`.

When files go (:func:`clean_cache`): a blob file when the layer made from it is published; a record when its
image is committed (with the blob files no other record lists); every record and its files after
:data:`DOWNLOAD_MAX_AGE` without being written (any pull); and, under the exclusive store lock (``bound sync``
after its pulls, ``bound gc``), every record whose name no present deployment binds and every file no record
lists.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from tether.engine.storelock import TETHER_DIR
from tether.registry.manifest import host_platform
from tether.store.blobcache import BlobCache

if TYPE_CHECKING:
    from tether.engine.copy.image import SourceImage
    from tether.registry.manifest import Platform
    from tether.store.containers_storage import Store

CACHE_DIR: Final = f"{TETHER_DIR}/cache"
#: A record not written for this long is dropped with its files by any pull (a download never applied, a
#: pull never rerun); the trickle timer rewrites its records on every run.
DOWNLOAD_MAX_AGE: Final = 7 * 24 * 3600.0
RECORD_VERSION: Final = 1


def blob_cache(store: Store) -> BlobCache:
    """The store's download cache (``STORE/tether/cache``), guarded by the store's disk reserve."""
    return BlobCache(Path(store.root) / CACHE_DIR, reserve=store.disk_reserve, where=Path(store.root))


def platform_text(platform: Platform | None) -> str:
    """``os/arch[/variant]`` of ``platform`` (the host's when ``None``): part of a record's key."""
    p = platform or host_platform()
    return "/".join(part for part in (p.os, p.architecture, p.variant) if part)


def record_key(name: str, platform: str) -> str:
    """The file name of the record of ``name`` (as stored, fully qualified) for ``platform``."""
    return hashlib.sha256(f"{name}\0{platform}".encode()).hexdigest()


@dataclass(frozen=True, kw_only=True)
class DownloadRecord:
    """One image a pull resolved and is fetching (``complete`` False) or has fetched whole (True)."""

    name: str
    platform: str
    complete: bool
    top: str
    top_media_type: str
    manifest: str
    manifest_media_type: str
    config: str
    config_size: int
    layers: tuple[tuple[str, int], ...]

    @property
    def key(self) -> str:
        return record_key(self.name, self.platform)

    @property
    def digests(self) -> frozenset[str]:
        """Every blob file this record accounts for (layers, and for a complete one its manifests and config)."""
        return frozenset({self.top, self.manifest, self.config, *(d for d, _ in self.layers)})

    @property
    def download_size(self) -> int:
        return sum(size for _, size in self.layers)

    @classmethod
    def of(cls, image: SourceImage, *, platform: str, complete: bool) -> DownloadRecord:
        """The record of a resolved registry image."""
        return cls(name=image.names[0], platform=platform, complete=complete, top=image.resolved.top.digest,
                   top_media_type=image.resolved.top.media_type, manifest=image.manifest_digest,
                   manifest_media_type=image.manifest_media_type, config=image.manifest.config.digest,
                   config_size=image.manifest.config.size,
                   layers=tuple((d.digest, d.size) for d in image.manifest.layers))

    def to_json(self) -> dict[str, Any]:
        return {"version": RECORD_VERSION, "name": self.name, "platform": self.platform, "complete": self.complete,
                "top": {"digest": self.top, "mediaType": self.top_media_type},
                "manifest": {"digest": self.manifest, "mediaType": self.manifest_media_type},
                "config": {"digest": self.config, "size": self.config_size},
                "layers": [{"digest": d, "size": s} for d, s in self.layers]}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> DownloadRecord:
        """Raises KeyError, TypeError or ValueError for a document that is not a record."""
        if raw.get("version") != RECORD_VERSION:
            raise ValueError(f"unknown download record version {raw.get('version')!r}")
        return cls(name=str(raw["name"]), platform=str(raw["platform"]), complete=bool(raw["complete"]),
                   top=str(raw["top"]["digest"]), top_media_type=str(raw["top"]["mediaType"]),
                   manifest=str(raw["manifest"]["digest"]), manifest_media_type=str(raw["manifest"]["mediaType"]),
                   config=str(raw["config"]["digest"]), config_size=int(raw["config"]["size"]),
                   layers=tuple((str(layer["digest"]), int(layer["size"])) for layer in raw["layers"]))


def load_records(cache: BlobCache) -> dict[str, tuple[DownloadRecord | None, float]]:
    """Every record (``None`` for one that cannot be read) and when it was last written (blocking)."""
    out: dict[str, tuple[DownloadRecord | None, float]] = {}
    for key, (document, mtime) in cache.records().items():
        record: DownloadRecord | None = None
        if document is not None:
            try:
                record = DownloadRecord.from_json(document)
            except (KeyError, TypeError, ValueError, AttributeError):
                record = None
        out[key] = (record, mtime)
    return out


def find_download(cache: BlobCache, names: Iterable[str], platform: str) -> DownloadRecord | None:
    """The complete download of one of ``names`` for ``platform``, if one was made (blocking)."""
    for name in names:
        document = cache.read_record(record_key(name, platform))
        if document is None:
            continue
        try:
            record = DownloadRecord.from_json(document)
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
        if record.complete and record.name == name and record.platform == platform:
            return record
    return None


@dataclass(frozen=True)
class CleanReport:
    """What :func:`clean_cache` removed (or, ``dry_run``, would remove): record keys with their image names,
    blob digests, and the bytes those held."""

    records: tuple[str, ...]
    blobs: tuple[str, ...]
    names: tuple[str, ...] = ()
    freed_bytes: int = 0


def clean_cache(cache: BlobCache, *, done: Iterable[str] = (), wanted: Callable[[str], bool] | None = None,
                max_age: float = DOWNLOAD_MAX_AGE, now: float | None = None, dry_run: bool = False) -> CleanReport:
    """Remove records and the blob files they leave unlisted (blocking); see the module docstring.

    ``done``: keys of records whose image was committed. ``wanted``: given only under the exclusive store lock
    (no other tether writes the cache), it decides by image name which records stay, and every file no
    remaining record lists goes; otherwise only the files of the records removed go, and files no record lists
    that are older than ``max_age``. Files a writer holds stay. ``dry_run``: remove nothing, say what would go.
    """
    now = time.time() if now is None else now
    records = load_records(cache)
    sizes = cache.blobs()
    gone: list[str] = []
    names: list[str] = []
    freed: set[str] = set()
    finished = set(done)
    for key, (record, mtime) in records.items():
        unwanted = record is None or (wanted is not None and not wanted(record.name))
        if key in finished or unwanted or now - mtime > max_age:
            gone.append(key)
            if record is not None:
                freed |= record.digests
                names.append(record.name)
    kept: set[str] = set()
    for key, (record, _) in records.items():
        if key not in gone and record is not None:
            kept |= record.digests
    if wanted is not None:
        doomed = set(sizes) - kept
    else:
        doomed = (freed - kept) & set(sizes)
        # Files no record lists, untouched for as long as a record may live: a pull killed before its record.
        for digest in set(sizes) - kept - doomed:
            try:
                if now - cache.blob_path(digest).stat().st_mtime > max_age:
                    doomed.add(digest)
            except FileNotFoundError:
                continue
    if dry_run:
        removed = tuple(sorted(doomed))
    else:
        for key in gone:
            cache.remove_record(key)
        if wanted is not None:
            removed = cache.remove_blobs_except(kept)
        else:
            removed = tuple(sorted(d for d in doomed if cache.remove_blob(d)))
    return CleanReport(records=tuple(sorted(gone)), blobs=removed, names=tuple(sorted(names)),
                       freed_bytes=sum(sizes.get(d, 0) for d in removed))


__all__ = [
    "CACHE_DIR",
    "DOWNLOAD_MAX_AGE",
    "CleanReport",
    "DownloadRecord",
    "blob_cache",
    "clean_cache",
    "find_download",
    "load_records",
    "platform_text",
    "record_key",
]
