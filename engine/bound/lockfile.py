"""Lock files: every image a deployment binds, pinned to a digest (``tether bound lock``, ``bound sync --lock``,
``bound status --lock``). The format and the comparisons, no I/O beyond the file itself.

A floating tag makes a fleet non-reproducible: hosts that stage an hour apart bind different images
(bootc-dev/bootc#128). A lock file, made once (``tether bound lock``) and shipped with the fleet's rollout,
pins each binding to the digest its tag pointed at then; ``bound sync --lock`` pulls exactly those digests and
stores them under the bound names, so status, GC and podman see the names the quadlets use.

**What is pinned: the digest the tag points at** (the registry's answer to ``GET /v2/NAME/manifests/TAG``):
an image index's digest for a multi-platform image, the manifest's for a single-platform one. The index
digest, not the platform's manifest digest, because one lock then serves a fleet of several architectures
(each host takes its platform's entry from the pinned index, verified against it) and it is what ``NAME@DIGEST``
means everywhere (podman, skopeo, quadlets); the manifest the locking host's platform gets is recorded beside it
for reference. A stored image matches a pin when the pin is its manifest digest or one of its digests (c/storage
keeps an image's index digest among them).

The file is JSON with sorted keys and entries sorted by image then binding, two-space indented, and nothing
that changes between two runs over the same digests (no time stamp), so that it diffs cleanly under version
control::

    {"images": [{"binding": "...", "digest": "sha256:...", "image": "quay.io/org/app:1", "manifest": "sha256:...",
                 "mediaType": "application/vnd.oci.image.index.v1+json", "name": "quay.io/org/app:1",
                 "platform": "linux/amd64"}], "version": 1}

``image`` is the reference as the quadlet writes it, ``name`` its normalized form, ``binding`` the key that
makes two bindings the same pull (:func:`tether.engine.bound.records.binding_key`: name, platform and transport
options).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from tether.engine.bound.records import DeploymentStatus
from tether.engine.errors import EngineError
from tether.store.containers_storage import ImageRecord, atomic_write

__all__ = ["LOCK_VERSION", "MAX_LOCK_SIZE", "LockEntry", "LockFile", "LockFileError", "differences", "load_lock",
           "write_lock"]

LOCK_VERSION: Final = 1
#: The largest lock file read (an entry is ~400 bytes: thousands of images fit).
MAX_LOCK_SIZE: Final = 4 << 20


class LockFileError(EngineError):
    """A lock file cannot be read, or does not have what a command needs; the message names the file."""


@dataclass(frozen=True, kw_only=True)
class LockEntry:
    """One binding pinned: see the module docstring for the fields."""

    image: str
    name: str
    binding: str
    digest: str
    media_type: str
    manifest: str | None = None
    platform: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"image": self.image, "name": self.name, "binding": self.binding,
                               "digest": self.digest, "mediaType": self.media_type}
        if self.manifest is not None:
            out["manifest"] = self.manifest
        if self.platform is not None:
            out["platform"] = self.platform
        return out

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> LockEntry:
        return cls(image=str(raw["image"]), name=str(raw["name"]), binding=str(raw["binding"]),
                   digest=str(raw["digest"]), media_type=str(raw.get("mediaType") or ""),
                   manifest=raw.get("manifest"), platform=raw.get("platform"))

    def matches(self, digests: Iterable[str | None]) -> bool:
        """Whether a stored image with these digests (its manifest digest and ``digests``) is the one pinned."""
        return self.digest in set(digests)


@dataclass(frozen=True)
class LockFile:
    """A lock file's entries, by binding key."""

    entries: tuple[LockEntry, ...]
    path: Path | None = None

    def entry_for(self, binding: str) -> LockEntry | None:
        """The pin of one binding (:func:`tether.engine.bound.records.binding_key`), or ``None``."""
        return next((e for e in self.entries if e.binding == binding), None)

    def to_json(self) -> dict[str, Any]:
        ordered = sorted(self.entries, key=lambda e: (e.image, e.binding))
        return {"version": LOCK_VERSION, "images": [e.to_json() for e in ordered]}

    def dumps(self) -> str:
        """The file's text: stable key order, sorted entries, a final newline."""
        return json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"


def load_lock(path: Path) -> LockFile:
    """Read a lock file (at most :data:`MAX_LOCK_SIZE` bytes); :class:`LockFileError` naming it otherwise."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_LOCK_SIZE + 1)
    except OSError as exc:
        raise LockFileError(f"lock file {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_LOCK_SIZE:
        raise LockFileError(f"lock file {path}: larger than {MAX_LOCK_SIZE} bytes")
    try:
        raw = json.loads(data)
        if not isinstance(raw, dict) or raw.get("version") != LOCK_VERSION:
            raise ValueError(f"not a version {LOCK_VERSION} lock file")
        entries = tuple(LockEntry.from_json(e) for e in raw["images"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LockFileError(f"lock file {path}: {exc}") from None
    seen: set[str] = set()
    for entry in entries:
        if entry.binding in seen:
            raise LockFileError(f"lock file {path}: {entry.image} is pinned twice (binding {entry.binding})")
        seen.add(entry.binding)
    return LockFile(entries, path)


def write_lock(path: Path, entries: Sequence[LockEntry]) -> LockFile:
    """Write a lock file atomically (temp file, rename) and return it."""
    lock = LockFile(tuple(entries), path)
    atomic_write(path, lock.dumps().encode(), 0o644)
    return lock


def differences(status: DeploymentStatus, lock: LockFile, images: Sequence[ImageRecord]) -> list[str]:
    """How a deployment's images in the store differ from ``lock``, one line each (empty: they match): an image
    the lock does not pin, one missing from the store, one stored with another digest."""
    if status.error is not None:
        return [f"its bound images cannot be read: {status.error}"]
    by_id = {image.id: image for image in images}
    out: list[str] = []
    for image in status.images:
        pin = lock.entry_for(image.key)
        stored = by_id.get(image.id) if image.id is not None and image.present else None
        if pin is None:
            out.append(f"{image.image}: not in the lock file")
        elif stored is None:
            out.append(f"{image.image}: not in the store (the lock pins {pin.digest})")
        elif not pin.matches((stored.digest, *stored.digests)):
            out.append(f"{image.image}: the store has {stored.digest}, the lock pins {pin.digest}")
    return out
