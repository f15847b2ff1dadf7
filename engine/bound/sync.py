"""``tether bound sync``: make deployments *ready* (see :mod:`tether.engine.bound.records` for what ready means).

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

``mode="download"`` (``--download-only``) fetches what the not-ready deployments need into the store's download
cache and records nothing (a later sync applies it without the network); ``mode="preview"`` (``--dry-run``)
resolves and plans, takes no lock and writes nothing. ``lock`` (``--lock FILE``) pins every image to its lock
file's digest: a deployment whose recorded images differ from the lock is synced again.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import trio

from tether.engine.bound.deployments import Deployment
from tether.engine.bound.discovery import BoundImage, group_bound_images, pull_request_for
from tether.engine.bound.gc import collect_garbage, downloads_wanted
from tether.engine.bound.lockfile import LockFile
from tether.engine.bound.records import (
    DeploymentStatus,
    ImageState,
    ReadinessRecord,
    binding_key,
    compute_status,
    load_record,
    write_record,
)
from tether.engine.copy.image import PullRequest
from tether.engine.copy.pull import ImageResult, PullMode, PullReport, pull
from tether.engine.copy.sources.layout import layout_pull_names
from tether.engine.errors import EngineError
from tether.engine.storelock import hold_store

if TYPE_CHECKING:
    from tether.engine.copy.progress import Progress
    from tether.engine.options import CommonOptions
    from tether.registry.client import RateLimit
    from tether.store.containers_storage import ImageRecord, Store


class SyncError(EngineError):
    """One or more deployments could not be made ready; the message lists which images failed and why."""


#: The steps of a sync at which ``crash_at`` kills it (see :func:`sync_deployments`).
SYNC_CRASH_POINTS = ("sync-before-records",)


def _crash_point(crash_at: str | None, name: str) -> None:
    if name == crash_at:
        os.kill(os.getpid(), signal.SIGKILL)


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
    unlocked: set[tuple[int, str]] = field(default_factory=set)   # bindings a --lock file does not pin


def _request(image: BoundImage, deployment: Deployment, pin: str | None) -> PullRequest:
    request = pull_request_for(image, root=deployment.root)
    return replace(request, digest=pin) if pin is not None else request


def _pinned(digest: str, image_id: str, images: Sequence[ImageRecord]) -> bool:
    record = next((i for i in images if i.id == image_id), None)
    return record is not None and digest in (record.digest, *record.digests)


def _agrees(status: DeploymentStatus, lock: LockFile, images: Sequence[ImageRecord]) -> bool:
    """Whether a ready deployment's recorded images are the ones ``lock`` pins."""
    for image in status.images:
        pin = lock.entry_for(image.key)
        if pin is None or image.id is None or not _pinned(pin.digest, image.id, images):
            return False
    return True


def _unlocked(plan: _Plan, statuses: Sequence[DeploymentStatus], lock: LockFile | None) -> list[ImageFailure]:
    where = lock.path if lock is not None else ""
    out = []
    for index, key in sorted(plan.unlocked):
        status = statuses[index]
        image = next((i.image for i in status.images if i.key == key), key)
        out.append(ImageFailure(status.deployment.name, image, f"not in the lock file {where}"))
    return out


def _bound_name_test(statuses: Sequence[DeploymentStatus]) -> Callable[[str], bool]:
    """Whether an image name (a download record's) is bound by one of the deployments (as GC decides)."""
    if any(status.error is not None for status in statuses):
        # A deployment whose bound set is unknown may want anything: keep every download (GC refuses too).
        return lambda name: True
    return downloads_wanted([image.image for status in statuses for image in status.bound])


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
    crash_at: str | None = None,
    mode: PullMode = "pull",
    rate_limit: RateLimit | None = None,
    lock: LockFile | None = None,
) -> SyncReport:
    """Make every deployment ready (new first); see the module docstring. Never raises for a pull failure:
    the report says what failed. Raises :class:`~tether.engine.storelock.StoreBusyError` if another tether holds
    the store.

    ``source`` (``oci:DIR`` or ``oci-archive:FILE``) takes every bound image from that layout instead of its
    registry (bootc-dev/bootc#1166: switching offline); the images are still recorded under their bound
    names, so status and GC match them. A layout that lacks one of them fails before anything is pulled.

    ``crash_at`` is the kill -9 tests' hook (as :class:`~tether.store.containers_storage.Store` takes one):
    :data:`SYNC_CRASH_POINTS` names the steps at which the process SIGKILLs itself.

    ``mode``, ``rate_limit`` and ``lock``: see the module docstring; in ``download`` and ``preview`` modes the
    report's ``statuses`` are those before the sync (nothing changed them) and ``pulled`` says what was fetched
    or would be.
    """
    pull_fn = pull_function or pull
    with contextlib.nullcontext() if mode == "preview" else hold_store(store.root):
        before = await trio.to_thread.run_sync(compute_status, deployments, store)
        images_before = await trio.to_thread.run_sync(store.list_images) if lock is not None else []
        failures: list[ImageFailure] = []
        plan = _Plan()
        todo: list[int] = []
        for index, status in enumerate(before):
            if status.ready and (lock is None or _agrees(status, lock, images_before)):
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
                pin = lock.entry_for(key) if lock is not None else None
                if lock is not None and pin is None:
                    plan.unlocked.add((index, key))
                    continue
                if (state is not None and state.id is not None and image_status.recorded and image_status.present
                        and (pin is None or _pinned(pin.digest, state.id, images_before))):
                    # Committed by an earlier (partly failed) sync: keep exactly that image.
                    plan.reused[(index, key)] = state
                    continue
                request = _request(group.image, status.deployment, pin.digest if pin is not None else None)
                plan.requests.setdefault(request, []).append((index, key))
        results: dict[PullRequest, ImageResult] = {}
        pulled: tuple[ImageResult, ...] = ()
        if plan.requests:
            requests = list(plan.requests)
            to_pull = requests
            if source is not None:
                to_pull = await trio.to_thread.run_sync(_requests_from_layout, source, requests)
            extra: dict[str, Any] = {}
            if mode != "pull" or rate_limit is not None:
                extra = {"mode": mode, "rate_limit": rate_limit}
            if mode != "preview":
                extra["keep_downloads"] = _bound_name_test(before)
            report: PullReport = await pull_fn(
                to_pull, store=store, options=options, jobs=jobs, policy="newer", progress=progress, **extra
            )
            pulled = report.results
            for request, result in zip(requests, report.results, strict=True):
                results[request] = result
        if mode != "pull":
            for request, result in results.items():
                for index, _ in plan.requests[request]:
                    if result.error is not None:
                        failures.append(ImageFailure(before[index].deployment.name, request.name, result.error))
            failures.extend(_unlocked(plan, before, lock))
            return SyncReport(statuses=before, synced=tuple(before[i].deployment.name for i in todo),
                              failures=tuple(failures), pulled=pulled, reused=len(plan.reused))
        # Committed images are in the store, no record says so yet: a kill here must end in a rerun that
        # records them without pulling again (tests/test_reconcile_kill.py).
        _crash_point(crash_at, "sync-before-records")
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
                if (index, key) in plan.unlocked:
                    why = f"not in the lock file {lock.path if lock is not None else ''}"
                    failures.append(ImageFailure(status.deployment.name, group.image.image, why))
                    states.append(ImageState(group.image.image, key, None, None, error=why, entries=entries))
                    continue
                pin = lock.entry_for(key) if lock is not None else None
                request = _request(group.image, status.deployment, pin.digest if pin is not None else None)
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
    names = layout_pull_names(source, [r.name for r in requests])
    return [replace(r, name=names[r.name]) for r in requests]
