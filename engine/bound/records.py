"""Readiness records and status: which deployments are *ready*, and what a record pins for each.

A deployment is **ready** when every image its ``usr/lib/bootc/bound-images.d`` binds is committed in the
store and a readiness record says so. The record (``STORE/tether/deployments/<deployment>.json``, written
atomically: temp file in the same directory, fsync, rename, fsync of the directory) names the deployment,
its root and, per bound image, the exact image id and manifest digest that were committed for it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.engine.bound.deployments import Deployment
from tether.engine.bound.discovery import (
    BoundImage,
    discover_bound_images,
    group_bound_images,
    normalize_image_name,
    short_name_matches,
)
from tether.engine.errors import BoundImageError
from tether.engine.storelock import TETHER_DIR
from tether.store.containers_storage import atomic_write, lookup_image, sync_filesystem

if TYPE_CHECKING:
    from tether.store.containers_storage import ImageRecord, Store

RECORDS_DIR = f"{TETHER_DIR}/deployments"
RECORD_VERSION = 1


# --------------------------------------------------------------------------- readiness records


def binding_key(image: BoundImage) -> str:
    """A stable text key for "the same pull" (image name normalised + pull options)."""
    return json.dumps(image.pull_options_key(), separators=(",", ":"))


@dataclass(frozen=True)
class ImageState:
    """One bound image of a deployment as the last sync left it."""

    image: str
    key: str
    id: str | None
    digest: str | None
    error: str | None = None
    entries: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "key": self.key,
            "id": self.id,
            "digest": self.digest,
            "error": self.error,
            "entries": list(self.entries),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ImageState:
        return cls(
            image=str(raw["image"]),
            key=str(raw.get("key") or ""),
            id=raw.get("id"),
            digest=raw.get("digest"),
            error=raw.get("error"),
            entries=tuple(raw.get("entries") or ()),
        )


@dataclass(frozen=True)
class ReadinessRecord:
    """``STORE/tether/deployments/<deployment>.json``."""

    deployment: str
    root: str
    ready: bool
    images: tuple[ImageState, ...]
    updated: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "version": RECORD_VERSION,
            "deployment": self.deployment,
            "root": self.root,
            "ready": self.ready,
            "updated": self.updated,
            "images": [i.to_json() for i in self.images],
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ReadinessRecord:
        return cls(
            deployment=str(raw["deployment"]),
            root=str(raw.get("root") or ""),
            ready=bool(raw.get("ready")),
            images=tuple(ImageState.from_json(i) for i in raw.get("images") or ()),
            updated=str(raw.get("updated") or ""),
        )


def record_path(store_root: Path, deployment: Deployment) -> Path:
    """Where a deployment's readiness record lives."""
    return Path(store_root) / RECORDS_DIR / f"{deployment.record_name}.json"


def load_record(store_root: Path, deployment: Deployment) -> ReadinessRecord | None:
    """The deployment's record, or None (missing or unreadable: then it is simply not ready)."""
    path = record_path(store_root, deployment)
    try:
        raw = json.loads(path.read_bytes())
        record = ReadinessRecord.from_json(raw)
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None
    if record.deployment != deployment.name:
        return None
    return record


def write_record(store_root: Path, deployment: Deployment, record: ReadinessRecord) -> Path:
    """Write the record atomically (temp file, fsync, rename, fsync the directory), once the store's
    filesystem is synced: a record that survives a power cut never claims images whose files did not (no
    writer fsyncs the files of an extracted layer, as c/storage does not; one syncfs covers them all)."""
    path = record_path(store_root, deployment)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = json.dumps(record.to_json(), indent=2).encode() + b"\n"
    sync_filesystem(path.parent)
    atomic_write(path, data, 0o600, durable=True)
    return path


def list_record_files(store_root: Path) -> list[Path]:
    """Every readiness record file in the store."""
    directory = Path(store_root) / RECORDS_DIR
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.json") if not p.name.startswith("."))


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class ImageStatus:
    """One distinct bound image of a deployment and whether the store holds it."""

    image: str
    key: str
    id: str | None
    digest: str | None
    present: bool
    recorded: bool
    error: str | None = None
    entries: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"image": self.image, "id": self.id, "digest": self.digest, "present": self.present}
        if self.error:
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class DeploymentStatus:
    """A deployment, its bound images and whether it is ready."""

    deployment: Deployment
    ready: bool
    images: tuple[ImageStatus, ...]
    bound: tuple[BoundImage, ...] = ()
    error: str | None = None  # discovery failed

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "deployment": self.deployment.name,
            "root": str(self.deployment.root),
            "ready": self.ready,
            "images": [i.to_json() for i in self.images],
            "role": self.deployment.role,
        }
        if self.deployment.pinned:
            out["pinned"] = True
        if self.error:
            out["error"] = self.error
        return out


def find_image_for(images: Sequence[ImageRecord], name: str) -> ImageRecord | None:
    """The store image a bound name currently designates (by name, normalised name, or digest)."""
    found = lookup_image(images, name)
    if found is None:
        normalized = normalize_image_name(name)
        if normalized != name:
            found = lookup_image(images, normalized)
    if found is None:
        # A short name: the one stored image it can designate (podman stores the resolved name).
        candidates = [i for i in images if short_name_matches(i.names, name)]
        if len(candidates) == 1:
            found = candidates[0]
    return found


def deployment_status(deployment: Deployment, images: Sequence[ImageRecord], store_root: Path) -> DeploymentStatus:
    """Compute one deployment's status from its root, its record and the store's images."""
    try:
        bound = _discover(deployment.root)
    except BoundImageError as exc:
        return DeploymentStatus(deployment=deployment, ready=False, images=(), error=str(exc))
    record = load_record(store_root, deployment)
    recorded = {s.key: s for s in record.images} if record else {}
    ids = {i.id for i in images}
    statuses: list[ImageStatus] = []
    for group in group_bound_images(bound):
        key = binding_key(group.image)
        entries = tuple(b.entry for b in group.bindings)
        state = recorded.get(key)
        if state is not None and state.id is not None:
            statuses.append(
                ImageStatus(
                    image=group.image.image,
                    key=key,
                    id=state.id,
                    digest=state.digest,
                    present=state.id in ids,
                    recorded=True,
                    entries=entries,
                )
            )
            continue
        current = find_image_for(images, group.image.image)
        statuses.append(
            ImageStatus(
                image=group.image.image,
                key=key,
                id=current.id if current else None,
                digest=current.digest if current else None,
                present=current is not None,
                recorded=False,
                error=state.error if state is not None else None,
                entries=entries,
            )
        )
    # Nothing bound: ready as it is. Otherwise a sync must have recorded every image, and each recorded
    # image must still be in the store.
    ready = not statuses or (bool(record and record.ready) and all(s.recorded and s.present for s in statuses))
    return DeploymentStatus(deployment=deployment, ready=ready, images=tuple(statuses), bound=bound)


def compute_status(deployments: Sequence[Deployment], store: Store) -> tuple[DeploymentStatus, ...]:
    """Status of every deployment (blocking: reads roots, records and the store)."""
    images = store.list_images()
    return tuple(deployment_status(d, images, store.root) for d in deployments)


def _discover(root: Path) -> tuple[BoundImage, ...]:
    return discover_bound_images(root)


