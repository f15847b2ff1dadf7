"""``tether bound install``: put the images a new system binds into its bootc store at install time.

bootc install (bootc-dev/bootc ``crates/lib/src/install.rs``, ``--bound-images=stored|pull|skip``):

- ``stored`` (default): every bound image of the source root must already be in the host's default store
  (``/var/lib/containers/storage``, written by podman); all are looked up *before* the target is touched
  (one missing fails the install early), then each is copied (bootc: ``podman image push
  containers-storage:[...]IMAGE``; here the copy engine with a containers-storage source, which rebuilds each
  layer from the source's tar-split and keeps the manifest, config and digests byte for byte) — no network;
- ``pull``: pulled from the registries into the target store (the ordinary concurrent pull);
- ``skip``: nothing.

With ``--sysroot`` (the installed system's ostree sysroot), :func:`record_installed` then writes the readiness
record a ``tether bound sync`` would write for every deployment there whose bound images were all installed, so
the first boot finds them ready (``bound status --check``) without a sync, a registry or a re-resolved tag.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import trio

from tether.engine.bound.deployments import list_sysroot_deployments
from tether.engine.bound.discovery import (
    BoundImage,
    discover_bound_images,
    group_bound_images,
    normalize_image_name,
    pull_request_for,
)
from tether.engine.bound.records import ImageState, ReadinessRecord, binding_key, find_image_for, write_record
from tether.engine.copy.clients import RegistryClients
from tether.engine.copy.image import ImageSource, PullRequest
from tether.engine.copy.pull import copy_into_store, pull
from tether.engine.copy.sources.storage import StorageSource
from tether.engine.errors import BoundImageError, EngineError
from tether.engine.options import CommonOptions
from tether.engine.storelock import hold_store
from tether.store.containers_storage import Store, detect_driver

if TYPE_CHECKING:
    from tether.engine.copy.progress import Progress
    from tether.store.containers_storage import ImageRecord

InstallMode = Literal["stored", "pull", "skip"]
DEFAULT_SOURCE_STORE = Path("/var/lib/containers/storage")


class InstallError(EngineError):
    """A bound image is missing from the source store, or could not be copied or pulled."""


@dataclass(frozen=True)
class InstalledImage:
    """One bound image put into the target store."""

    image: str
    id: str | None
    digest: str | None
    error: str | None = None
    #: :func:`tether.engine.bound.sync.binding_key` of the binding: the image and the pull options it was put there for
    key: str = ""


@dataclass(frozen=True)
class InstallReport:
    images: tuple[InstalledImage, ...]
    mode: InstallMode

    @property
    def ok(self) -> bool:
        return all(i.error is None for i in self.images)


def _target_names(image: BoundImage, source: ImageRecord) -> list[str]:
    """The name the target gets: the bound reference, fully qualified when it is one, as podman push
    to ``containers-storage:IMAGE`` names it; short names keep the source image's names."""
    normalized = normalize_image_name(image.image)
    if normalized != image.image or "/" in image.image.split("@")[0]:
        return [normalized]
    return list(source.names) or [image.image]


def resolve_in_source(bound: tuple[BoundImage, ...], source_images: list[ImageRecord]) -> list[ImageRecord]:
    """The source image of each bound image (same order); :class:`InstallError` lists every missing one."""

    found: list[ImageRecord] = []
    missing: list[str] = []
    for image in bound:
        record = find_image_for(source_images, image.image)
        if record is None:
            missing.append(f"{image.image} (bound by {image.entry})")
        else:
            found.append(record)
    if missing:
        raise InstallError(
            "bound images missing from the source store (pull them with podman first, or use "
            "--bound-images=pull):\n  " + "\n  ".join(missing)
        )
    return found


async def install_stored(
    src_root: Path,
    *,
    source_store: Path,
    target_store: Path,
    target_driver: str | None = None,
    source_driver: str | None = None,
    jobs: int | None = None,
    progress: Progress | None = None,
) -> InstallReport:
    """``--bound-images=stored``: copy from ``source_store`` without the network, through the copy engine
    (:class:`~tether.engine.copy.sources.storage.StorageSource` into the target store, all images at once)."""
    bound = tuple(g.image for g in group_bound_images(discover_bound_images(src_root)))
    if not bound:
        return InstallReport(images=(), mode="stored")
    if detect_driver(source_store) is None and source_driver is None:
        raise InstallError(f"source store {source_store} holds no containers-storage images")
    source = await trio.to_thread.run_sync(lambda: Store.open(source_store, driver=source_driver))
    source_images = await trio.to_thread.run_sync(source.list_images)
    records = resolve_in_source(bound, source_images)
    # Everything is in the source: only now is the target created/touched.
    target = await trio.to_thread.run_sync(lambda: Store.open(target_store, driver=target_driver))
    requests = [PullRequest(name=image.image) for image in bound]
    sources = {
        request: StorageSource(store=source, record=record, names=tuple(_target_names(image, record)))
        for request, image, record in zip(requests, bound, records, strict=True)
    }

    async def open_stored(request: PullRequest, clients: RegistryClients, stack: AsyncExitStack) -> ImageSource:
        return sources[request]

    # The images were verified (if the policy asked) when they were pulled into the source store.
    report = await copy_into_store(requests, open_stored, store=target, options=CommonOptions(root=target_store),
                                   jobs=jobs, progress=progress, check_signatures=False)
    # The digest an install records is the copied record's (the source's: an index digest when it was pulled
    # through one), as the readiness record of a sync would have it.
    digests = {rec.id: rec.digest for rec in await trio.to_thread.run_sync(target.list_images)}
    return InstallReport(
        images=tuple(
            InstalledImage(image=image.image, id=r.image_id, error=r.error, key=binding_key(image),
                           digest=digests.get(r.image_id) if r.error is None and r.image_id else None)
            for image, r in zip(bound, report.results, strict=True)
        ),
        mode="stored",
    )


async def install_pulled(
    src_root: Path,
    *,
    target_store: Path,
    options: CommonOptions,
    target_driver: str | None = None,
    jobs: int | None = None,
    progress: Progress | None = None,
) -> InstallReport:
    """``--bound-images=pull``: pull every bound image of ``src_root`` into the target store."""

    groups = group_bound_images(discover_bound_images(src_root))
    if not groups:
        return InstallReport(images=(), mode="pull")
    requests = [pull_request_for(g.image, root=src_root) for g in groups]
    target = Store.open(target_store, driver=target_driver)
    report = await pull(requests, store=target, options=options, jobs=jobs, policy="newer", progress=progress)
    return InstallReport(
        images=tuple(
            InstalledImage(image=r.request.name, id=r.image_id, digest=r.manifest_digest, error=r.error,
                           key=binding_key(group.image))
            for group, r in zip(groups, report.results, strict=True)
        ),
        mode="pull",
    )


@dataclass(frozen=True)
class InstallRecords:
    """What :func:`record_installed` did for each deployment of the sysroot."""

    #: deployments now recorded ready
    ready: tuple[str, ...]
    #: (deployment, why not): it binds an image this install did not put in the store, or its bindings
    #: cannot be read
    skipped: tuple[tuple[str, str], ...]


def record_installed(report: InstallReport, *, sysroot: Path, target_store: Path,
                     target_driver: str | None = None) -> InstallRecords:
    """Write a ready record into ``target_store`` for each deployment of ``sysroot`` whose bound images (by
    image and pull options, as ``bound sync`` keys them) were all installed by ``report`` and are in the store:
    the same record a sync would write, so that the installed system boots ready with no sync.  Deployments
    binding nothing need no record (they are ready as they are); a deployment that binds anything else is
    left without one (a sync will pull it).  Blocking."""


    installed = {i.key: i for i in report.images if i.error is None and i.id is not None and i.key}
    deployments = list_sysroot_deployments(sysroot)
    ready: list[str] = []
    skipped: list[tuple[str, str]] = []
    if not installed:
        return InstallRecords(ready=(), skipped=tuple((d.name, "no image was installed") for d in deployments))
    store = Store.open(target_store, driver=target_driver)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    with hold_store(store.root):
        present = {i.id for i in store.list_images()}
        for deployment in deployments:
            try:
                groups = group_bound_images(discover_bound_images(deployment.root))
            except BoundImageError as exc:
                skipped.append((deployment.name, str(exc)))
                continue
            if not groups:
                continue
            states: list[ImageState] = []
            for group in groups:
                done = installed.get(binding_key(group.image))
                if done is None or done.id not in present:
                    skipped.append((deployment.name, f"it binds {group.image.image} ({group.image.entry}), "
                                                     "which this install did not put in the store"))
                    break
                states.append(ImageState(image=group.image.image, key=done.key, id=done.id, digest=done.digest,
                                         entries=tuple(b.entry for b in group.bindings)))
            else:
                write_record(store.root, deployment, ReadinessRecord(
                    deployment=deployment.name, root=str(deployment.root), ready=True, images=tuple(states),
                    updated=now))
                ready.append(deployment.name)
    return InstallRecords(ready=tuple(ready), skipped=tuple(skipped))
