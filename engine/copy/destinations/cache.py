"""The store's download cache as a copy destination (``--download-only``), and a destination that only plans
(``--dry-run``).

:class:`DownloadDestination` plans an image against the store as a pull would (layers the store has, or can
copy from a layer with the same diffID, are not downloaded), fetches every other blob whole into the download
cache (:mod:`tether.engine.copy.downloads`; resumed from what an earlier run kept, digest verified), and commits
a complete :class:`~tether.engine.copy.downloads.DownloadRecord` with the image's manifests and config. Nothing
is written to containers-storage: a later pull of the name applies the download without the network.

:class:`PreviewDestination` plans the same way and stops there: its jobs are never run, its commit returns
what the image would take (:class:`~tether.engine.copy.preview.ImagePreview`); nothing is written anywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import trio

from tether.engine.copy.destinations.storage import fetch_resuming, preflight
from tether.engine.copy.downloads import DownloadRecord
from tether.engine.copy.execute import stream_cached
from tether.engine.copy.plan import ImagePlan, LayerJob, PlanError, PullPlan, plan_pull
from tether.engine.copy.preview import ImagePreview, preview_of
from tether.engine.errors import EngineError

if TYPE_CHECKING:
    from tether.engine.copy.image import ImageSource, SourceImage
    from tether.store.blobcache import BlobCache, CachedBlob
    from tether.store.containers_storage import LayerRecord, Store

log = logging.getLogger(__name__)


class DownloadBusyError(EngineError):
    """Another process is downloading the same blob into the same cache."""


class DownloadDestination:
    """Blobs into ``cache``, records of complete downloads; ``platforms`` maps a request key to the platform
    text its record is kept under (what a later pull of the name looks it up by)."""

    def __init__(self, store: Store, *, layers: Sequence[LayerRecord], cache: BlobCache,
                 platforms: Mapping[int, str]) -> None:
        self.store = store
        self.layers = layers
        self.cache = cache
        self.platforms = platforms
        self.description = f"the download cache of {store.root}"

    def plan(self, key: int, image: SourceImage, *, scheduled: Mapping[str, LayerJob]) -> PullPlan:
        if image.transport != "docker":
            raise PlanError(f"{image.description}: only registry images are downloaded ahead (this one is local)")
        plan = plan_pull([(key, image)], existing_layers=self.layers, sequential=False, scheduled=scheduled)
        pending = sum(self.cache.held(job.descriptor.digest) < job.descriptor.size for job in plan.jobs)
        if pending:
            preflight(self.store, self.cache, label="/".join(image.names), jobs=plan.jobs)
        return plan

    async def prepare(self, jobs: Sequence[LayerJob]) -> None:
        return None

    async def stage(self, job: LayerJob, image: SourceImage, source: ImageSource, *,
                    on_bytes: Callable[[int], None], background: bool) -> bool:
        """Fetch the job's blob into the cache (True), or nothing for a layer the store can copy (False)."""
        if job.copy_from is not None:
            return False
        cache = self.cache

        async def fetch(blob: CachedBlob | None, count: Callable[[int], None]) -> bool:
            if blob is None:
                raise DownloadBusyError(f"blob {job.descriptor.digest} is being downloaded by another process into "
                                        f"{cache.directory}")
            await stream_cached(source, job.descriptor, write=None, on_written=count, blob=blob)
            return True

        return await fetch_resuming(cache, job.descriptor, on_bytes, fetch)

    async def publish(self, job: LayerJob, image: SourceImage, staged: bool) -> None:
        return None

    async def discard(self, staged: bool) -> None:
        return None

    async def commit(self, plan: ImagePlan, image: SourceImage, source: ImageSource) -> DownloadRecord:
        record = DownloadRecord.of(image, platform=self.platforms[plan.key], complete=True)
        resolved = image.resolved
        small = {resolved.top.digest: resolved.top.raw, resolved.manifest.digest: resolved.manifest.raw,
                 image.manifest.config.digest: resolved.config_raw}

        def keep() -> None:
            for digest, data in small.items():
                self.cache.put_blob(digest, data)
            # durable: the trickle mode relies on finding this after a reboot
            self.cache.write_record(record.key, record.to_json(), durable=True)

        await trio.to_thread.run_sync(keep)
        return record


class PreviewDestination:
    """Plans like a pull into ``store`` (or, ``download_only``, like a download) and runs nothing."""

    def __init__(self, store: Store, *, layers: Sequence[LayerRecord], cache: BlobCache | None,
                 download_only: bool = False) -> None:
        self.store = store
        self.layers = layers
        self.cache = cache
        self.download_only = download_only
        self.description = f"a dry run against containers-storage:[{store.driver}@{store.root}]"
        self._scheduled: dict[str, LayerJob] = {}
        self._plans: dict[int, PullPlan] = {}

    def plan(self, key: int, image: SourceImage, *, scheduled: Mapping[str, LayerJob]) -> PullPlan:
        real = plan_pull([(key, image)], existing_layers=self.layers, scheduled=self._scheduled,
                         sequential=not self.store.concurrent_layers and not self.download_only)
        for job in real.jobs:
            self._scheduled[job.layer_id] = job
        self._plans[key] = real
        return PullPlan(images=real.images, jobs=())

    async def prepare(self, jobs: Sequence[LayerJob]) -> None:
        return None

    async def stage(self, job: LayerJob, image: SourceImage, source: ImageSource, *,
                    on_bytes: Callable[[int], None], background: bool) -> None:
        raise AssertionError("a dry run stages nothing")

    async def publish(self, job: LayerJob, image: SourceImage, staged: None) -> None:
        raise AssertionError("a dry run publishes nothing")

    async def discard(self, staged: None) -> None:
        return None

    async def commit(self, plan: ImagePlan, image: SourceImage, source: ImageSource) -> ImagePreview:
        layers = {rec.id: rec for rec in self.layers}
        cache = self.cache
        return await trio.to_thread.run_sync(lambda: preview_of(
            self._plans[plan.key], image, layers=layers, cache=cache, download_only=self.download_only))


__all__ = ["DownloadBusyError", "DownloadDestination", "PreviewDestination"]
