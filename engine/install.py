"""``tether bound install``: put the images a new system binds into its bootc store at install time.

bootc install (bootc-dev/bootc ``crates/lib/src/install.rs``, ``--bound-images=stored|pull|skip``):

- ``stored`` (default): every bound image of the source root must already be in the host's default store
  (``/var/lib/containers/storage``, written by podman); all are looked up *before* the target is touched
  (one missing fails the install early), then each is copied (bootc: ``podman image push
  containers-storage:[...]IMAGE``; here :func:`store.containers_storage.copy_image`, which rebuilds each
  layer from the source's tar-split and keeps the manifest, config and digests byte for byte) — no network;
- ``pull``: pulled from the registries into the target store (the ordinary concurrent pull);
- ``skip``: nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from engine.bound import BoundImage, discover_bound_images, group_bound_images, normalize_image_name
from engine.errors import EngineError

if TYPE_CHECKING:
    from engine.options import CommonOptions
    from engine.progress import Progress
    from store.containers_storage import ImageRecord

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
    from engine.reconcile import find_image_for

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


def install_stored(
    src_root: Path,
    *,
    source_store: Path,
    target_store: Path,
    target_driver: str | None = None,
    source_driver: str | None = None,
) -> InstallReport:
    """``--bound-images=stored``: copy from ``source_store`` without the network (blocking)."""
    from store.containers_storage import Store, copy_image, detect_driver

    bound = tuple(g.image for g in group_bound_images(discover_bound_images(src_root)))
    if not bound:
        return InstallReport(images=(), mode="stored")
    if detect_driver(source_store) is None and source_driver is None:
        raise InstallError(f"source store {source_store} holds no containers-storage images")
    source = Store.open(source_store, driver=source_driver)
    records = resolve_in_source(bound, source.list_images())
    # Everything is in the source: only now is the target created/touched.
    target = Store.open(target_store, driver=target_driver)
    out: list[InstalledImage] = []
    for image, record in zip(bound, records, strict=True):
        copied = copy_image(source, record.id, target, names=_target_names(image, record))
        out.append(InstalledImage(image=image.image, id=copied.id, digest=copied.digest))
    return InstallReport(images=tuple(out), mode="stored")


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
    from engine.bound import pull_requests_for
    from engine.pull import pull
    from store.containers_storage import Store

    bound = discover_bound_images(src_root)
    requests = pull_requests_for(bound, root=src_root)
    if not requests:
        return InstallReport(images=(), mode="pull")
    target = Store.open(target_store, driver=target_driver)
    report = await pull(list(requests), store=target, options=options, jobs=jobs, policy="newer", progress=progress)
    return InstallReport(
        images=tuple(
            InstalledImage(image=r.request.name, id=r.image_id, digest=r.manifest_digest, error=r.error)
            for r in report.results
        ),
        mode="pull",
    )
