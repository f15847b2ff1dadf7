"""OCI layouts (``oci:DIR``) and oci-archive files (``oci-archive:FILE``) as copy destinations.

Blobs are verified while they stream into the layout (temp file, digest and size checked, fsync, rename),
manifests are written after their blobs, children before the index, and the ``index.json`` entry last, so an
interrupted copy leaves no reference to a partial image; a re-run finds the blobs that arrived. An archive is
built in a staging layout beside FILE (``.FILE.tether-staging``, resumable) and written atomically at the end.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from tether.engine.copy.destinations.blobs import BlobOutcome, ManifestTree
from tether.engine.copy.execute import stream_blob
from tether.engine.copy.plan import ImagePlan, LayerJob, PullPlan, plan_blobs
from tether.engine.errors import MirrorError
from tether.store.oci import IndexEntry, OCIArchive, OCILayout, write_oci_archive

if TYPE_CHECKING:
    from tether.engine.copy.image import ImageSource
    from tether.registry.reference import Reference


class LayoutDestination:
    """``oci:DIR`` (and the staging layout of an archive): every image's blobs shared in one layout."""

    def __init__(self, layout: OCILayout, description: str) -> None:
        self.layout = layout
        self.description = description

    @classmethod
    async def open(cls, path: Path) -> LayoutDestination:
        layout = await trio.to_thread.run_sync(lambda: OCILayout.open(path, create=True))
        return cls(layout, f"oci:{path}")

    def target_for(self, source_ref: Reference) -> tuple[str, Reference | None]:
        """An image is named by its full source reference (``org.opencontainers.image.ref.name``)."""
        return str(source_ref), None

    def plan(self, key: int, image: ManifestTree, *, scheduled: Mapping[str, LayerJob]) -> PullPlan:
        return plan_blobs(key, image.blobs, destination_key=lambda digest: digest, scheduled=scheduled)

    async def prepare(self, jobs: Sequence[LayerJob]) -> None:
        pass

    async def stage(self, job: LayerJob, image: ManifestTree, source: ImageSource, *,
                    on_bytes: Callable[[int], None], background: bool) -> BlobOutcome:
        d = job.descriptor
        if await trio.to_thread.run_sync(self.layout.has_blob, d.digest, d.size):
            return BlobOutcome("present", d.size)
        writer = await trio.to_thread.run_sync(
            lambda: self.layout.blob_writer(expected_digest=d.digest, expected_size=d.size))
        try:
            await stream_blob(source, d, writer.write, on_bytes)
            await trio.to_thread.run_sync(writer.commit)
        finally:
            if writer.digest is None:
                writer.abort()  # synchronous: it must run even when this task is being cancelled
        return BlobOutcome("copied", d.size)

    async def publish(self, job: LayerJob, image: ManifestTree, staged: BlobOutcome) -> None:
        pass

    async def discard(self, staged: BlobOutcome) -> None:
        pass

    async def commit(self, plan: ImagePlan, image: ManifestTree, source: ImageSource) -> int:
        top = image.top

        def write() -> None:
            for m in (*image.children, top):
                self.layout.put_blob(m.raw, expected_digest=m.digest)
            self.layout.add_entries([IndexEntry.build(media_type=top.media_type, digest=top.digest, size=len(top.raw),
                                                      ref_name=image.target)])

        await trio.to_thread.run_sync(write)
        # containers/image cannot store signatures in an OCI layout either ("Pushing signatures to OCI layout
        # is not supported"); the host that pulls from the layout has none to verify.
        return 0

    async def verify(self, images: Sequence[ManifestTree]) -> list[str]:
        """Each entry names the digest written, and every blob it reaches is present with its size."""

        def check() -> list[str]:
            problems = []
            entries = {e.ref_name: e for e in self.layout.entries()}
            for image in images:
                entry = entries.get(image.target)
                if entry is None or entry.digest != image.top.digest:
                    problems.append(f"{self.description}: {image.target} is not (or no longer) {image.top.digest}")
                    continue
                for digest, size in self.layout.reachable([entry]).items():
                    if not self.layout.has_blob(digest, size):
                        problems.append(f"{self.description}: {image.target}: blob {digest} missing or truncated")
            return problems

        problems: list[str] = await trio.to_thread.run_sync(check)
        return problems

    async def finish(self, images: Sequence[ManifestTree]) -> None:
        pass


class ArchiveDestination(LayoutDestination):
    """``oci-archive:FILE``: a staging layout beside FILE, then the archive written atomically."""

    def __init__(self, archive: Path) -> None:
        self.archive = archive
        self.staging = archive.with_name(f".{archive.name}.tether-staging")
        layout = OCILayout.open(self.staging, create=True)
        # Re-syncing adds to (and replaces in) the archive: its content is imported into the staging layout
        # once; the marker keeps a resumed run from importing again over entries it has since replaced.
        marker = self.staging / ".tether-imported"
        if archive.exists() and not marker.exists():
            with OCIArchive.open(archive) as existing:
                existing.copy_into(layout)
            marker.write_bytes(b"")
        super().__init__(layout, f"oci-archive:{archive}")

    @classmethod
    async def open_archive(cls, path: Path) -> ArchiveDestination:
        destination: ArchiveDestination = await trio.to_thread.run_sync(cls, path)
        return destination

    async def finish(self, images: Sequence[ManifestTree]) -> None:
        await trio.to_thread.run_sync(write_oci_archive, self.layout, self.archive)

        def check_and_clean() -> None:
            with OCIArchive.open(self.archive) as written:
                names = {e.ref_name: e.digest for e in written.entries()}
                for image in images:
                    if names.get(image.target) != image.top.digest:
                        raise MirrorError(f"{self.description}: {image.target} missing from the written archive")
            shutil.rmtree(self.staging)

        await trio.to_thread.run_sync(check_and_clean)


__all__ = ["ArchiveDestination", "LayoutDestination"]
