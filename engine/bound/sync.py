"""``tether bound sync`` and ``bound status``: make deployments *ready* and say which are.

A deployment is **ready** when every image its ``usr/lib/bootc/bound-images.d`` binds is committed in the
store and a readiness record says so. The record (``STORE/tether/deployments/<deployment>.json``, written
atomically: temp file in the same directory, fsync, rename, fsync of the directory) names the deployment,
its root and, per bound image, the exact image id and manifest digest that were committed for it.

bootc stages the new deployment *before* pulling its bound images, and a failed pull then cannot be retried
(bootc-dev/bootc#2013). Here the sync is a separate, idempotent step: it pulls (concurrently, one
:func:`tether.engine.copy.pull.pull` call; the new deployment's images first) every bound image of every deployment that
is not ready, marks ready only the deployments whose images were all committed, records what failed, and a
rerun pulls only what is still missing (images already committed for a not-ready deployment are reused by
id). A floating tag is re-resolved (pull policy ``newer``) for every not-ready deployment; a ready
deployment keeps the exact ids its record pins, even if the tag has moved since.

Only one tether at a time works on a store's bound images: :func:`tether.engine.storelock.hold_store` takes an
exclusive ``flock`` on ``STORE/tether/tether.lock`` (independent of c/storage's own lock files, which the
store takes per operation).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.engine.bound.deployments import Deployment
from tether.engine.bound.discovery import (
    BoundImage,
    group_bound_images,
    normalize_image_name,
    pull_request_for,
    short_name_matches,
)
from tether.engine.errors import BoundImageError, EngineError
from tether.engine.storelock import TETHER_DIR, hold_store
from tether.store.containers_storage import atomic_write

if TYPE_CHECKING:
    from tether.engine.copy.progress import Progress
    from tether.engine.copy.pull import ImageResult, PullReport, PullRequest
    from tether.engine.options import CommonOptions
    from tether.store.containers_storage import ImageRecord, Store

RECORDS_DIR = f"{TETHER_DIR}/deployments"
RECORD_VERSION = 1


class SyncError(EngineError):
    """One or more deployments could not be made ready; the message lists which images failed and why."""


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
    """Write the record atomically (temp file, fsync, rename, fsync the directory)."""
    path = record_path(store_root, deployment)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = json.dumps(record.to_json(), indent=2).encode() + b"\n"
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
    from tether.store.containers_storage import lookup_image

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
    from tether.engine.bound.discovery import discover_bound_images

    return discover_bound_images(root)


# --------------------------------------------------------------------------- sync


@dataclass(frozen=True)
class ImageFailure:
    """A bound image that could not be pulled for a deployment."""

    deployment: str
    image: str
    error: str


@dataclass(frozen=True)
class SyncReport:
    """What a sync did: every deployment's status afterwards, what failed, what GC removed."""

    statuses: tuple[DeploymentStatus, ...]
    synced: tuple[str, ...]  # deployments that were not ready at the start
    failures: tuple[ImageFailure, ...]
    pulled: tuple[ImageResult, ...] = ()
    gc_removed: tuple[str, ...] = ()
    gc_error: str | None = None
    reused: int = 0

    @property
    def ok(self) -> bool:
        return all(s.ready for s in self.statuses)

    def summary(self) -> str:
        """One line per failure ("DEPLOYMENT: IMAGE: why"), discovery errors included."""
        lines = [f"{f.deployment}: {f.image}: {f.error}" for f in self.failures]
        return "\n".join(lines)


PullFunction = Callable[..., Any]


@dataclass
class _Plan:
    requests: dict[PullRequest, list[tuple[int, str]]] = field(default_factory=dict)
    reused: dict[tuple[int, str], ImageState] = field(default_factory=dict)


async def sync_deployments(
    deployments: Sequence[Deployment],
    *,
    store: Store,
    options: CommonOptions,
    jobs: int | None = None,
    progress: Progress | None = None,
    gc: bool = True,
    pull_function: PullFunction | None = None,
    source: str | None = None,
) -> SyncReport:
    """Make every deployment ready (new first); see the module docstring. Never raises for a pull failure:
    the report says what failed. Raises :class:`~tether.engine.storelock.StoreBusyError` if another tether holds
    the store.

    ``source`` (``oci:DIR`` or ``oci-archive:FILE``) takes every bound image from that layout instead of its
    registry (bootc-dev/bootc#1166: switching offline); the images are still recorded under their bound
    names, so status and GC match them. A layout that lacks one of them fails before anything is pulled.
    """
    import trio

    from tether.engine.copy.pull import pull

    pull_fn = pull_function or pull
    with hold_store(store.root):
        before = await trio.to_thread.run_sync(compute_status, deployments, store)
        failures: list[ImageFailure] = []
        plan = _Plan()
        todo: list[int] = []
        for index, status in enumerate(before):
            if status.ready:
                continue
            if status.error is not None:
                failures.append(ImageFailure(status.deployment.name, "(discovery)", status.error))
                continue
            todo.append(index)
            record = load_record(store.root, status.deployment)
            previous = {s.key: s for s in record.images} if record else {}
            for group in group_bound_images(status.bound):
                key = binding_key(group.image)
                state = previous.get(key)
                image_status = next(s for s in status.images if s.key == key)
                if state is not None and state.id is not None and image_status.recorded and image_status.present:
                    # Committed by an earlier (partly failed) sync: keep exactly that image.
                    plan.reused[(index, key)] = state
                    continue
                request = pull_request_for(group.image, root=status.deployment.root)
                plan.requests.setdefault(request, []).append((index, key))
        results: dict[PullRequest, ImageResult] = {}
        pulled: tuple[ImageResult, ...] = ()
        if plan.requests:
            requests = list(plan.requests)
            to_pull = requests
            if source is not None:
                to_pull = await trio.to_thread.run_sync(_requests_from_layout, source, requests)
            report: PullReport = await pull_fn(
                to_pull, store=store, options=options, jobs=jobs, policy="newer", progress=progress
            )
            pulled = report.results
            for request, result in zip(requests, report.results, strict=True):
                results[request] = result
        images = await trio.to_thread.run_sync(store.list_images)
        by_id = {i.id: i for i in images}
        now = datetime.now(UTC).isoformat(timespec="seconds")
        for index in todo:
            status = before[index]
            states: list[ImageState] = []
            for group in group_bound_images(status.bound):
                key = binding_key(group.image)
                entries = tuple(b.entry for b in group.bindings)
                reused = plan.reused.get((index, key))
                if reused is not None:
                    states.append(reused)
                    continue
                request = pull_request_for(group.image, root=status.deployment.root)
                result = results[request]
                error = result.error
                if error is None and (result.image_id is None or result.image_id not in by_id):
                    error = f"pull reported image {result.image_id} but the store does not have it"
                if error is not None:
                    failures.append(ImageFailure(status.deployment.name, group.image.image, error))
                    states.append(ImageState(group.image.image, key, None, None, error=error, entries=entries))
                    continue
                digest = result.manifest_digest or by_id[str(result.image_id)].digest
                states.append(ImageState(group.image.image, key, result.image_id, digest, entries=entries))
            ready = all(s.id is not None and s.error is None for s in states)
            record = ReadinessRecord(
                deployment=status.deployment.name,
                root=str(status.deployment.root),
                ready=ready,
                images=tuple(states),
                updated=now,
            )
            await trio.to_thread.run_sync(write_record, store.root, status.deployment, record)
        gc_removed: tuple[str, ...] = ()
        gc_error: str | None = None
        if gc:
            from tether.engine.bound.gc import collect_garbage

            try:
                result_gc = await trio.to_thread.run_sync(
                    lambda: collect_garbage(deployments, store, dry_run=False, locked=True)
                )
                gc_removed = result_gc.removed_image_ids
            except EngineError as exc:
                gc_error = str(exc)
        after = await trio.to_thread.run_sync(compute_status, deployments, store)
    return SyncReport(
        statuses=after,
        synced=tuple(before[i].deployment.name for i in todo),
        failures=tuple(failures),
        pulled=pulled,
        gc_removed=gc_removed,
        gc_error=gc_error,
        reused=len(plan.reused),
    )


def _requests_from_layout(source: str, requests: Sequence[PullRequest]) -> list[PullRequest]:
    """The same requests with their names pointed into the ``source`` layout (``oci:DIR:REF``).

    Raises :class:`tether.engine.copy.layouts.LayoutSourceError` naming every image the layout lacks.
    """
    from dataclasses import replace

    from tether.engine.copy.layouts import layout_pull_names

    names = layout_pull_names(source, [r.name for r in requests])
    return [replace(r, name=names[r.name]) for r in requests]
