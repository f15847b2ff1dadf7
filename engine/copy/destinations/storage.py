"""containers-storage as a copy destination: layers extracted while their blobs stream, the image committed last.

Each job streams its blob (or a stored layer with the same diffID, or a ``containers-storage:`` source's layer)
into ``Store.stage_layer``'s writer from worker threads; ``publish_layer`` checks the diffID and records the
layer once its parent is published; the image record is committed when all its layers are (containers/image
``storageImageDestination``: layers first, the image last, so a reader never sees an image without layers).
Overlay stages every layer concurrently; vfs stages a child only on its published parent (the plan says so).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

import trio

from tether.engine.copy.execute import stream_blob
from tether.engine.copy.plan import ImagePlan, LayerJob, PlanError, PullPlan, plan_pull
from tether.store.containers_storage import copy_image, prewarm_extractors

if TYPE_CHECKING:
    from tether.engine.copy.image import ImageSource, SourceImage
    from tether.store.containers_storage import ImageRecord, LayerRecord, StagedLayer, Store

log = logging.getLogger(__name__)

#: Blobs above this size are extracted in a child process (``ProcessLayerExtractor``'s spawn_threshold);
#: smaller ones in this process, so they need no prewarmed child.
PREWARM_ABOVE = 4 * 1024 * 1024


def parse_created(value: object) -> datetime | None:
    """A config's ``created`` as a datetime (Python 3.11 parses at most microseconds: nanoseconds trimmed)."""
    if value is None or isinstance(value, datetime):
        return value
    text = str(value)
    try:
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        if "." in text:
            head, _, rest = text.partition(".")
            frac = "".join(ch for ch in rest if ch.isdigit())
            tz = rest[len(frac):]
            text = f"{head}.{frac[:6]}{tz}"
        return datetime.fromisoformat(text)
    except ValueError:
        return None


class StorageDestination:
    """A containers-storage store; ``layers`` is the store's layer list, read (by the caller, while manifests
    are fetched) before the first image is planned."""

    def __init__(self, store: Store, *, layers: Sequence[LayerRecord]) -> None:
        self.store = store
        self.layers = layers
        self.description = f"containers-storage:[{store.driver}@{store.root}]"

    def plan(self, key: int, image: SourceImage, *, scheduled: Mapping[str, LayerJob]) -> PullPlan:
        return plan_pull([(key, image)], existing_layers=self.layers, sequential=not self.store.concurrent_layers,
                         scheduled=scheduled)

    async def prepare(self, jobs: Sequence[LayerJob]) -> None:
        # Start the extraction children now, while the blobs' first bytes are in flight, instead of when a
        # layer's first 4 MiB arrived (~0.1 s of interpreter start-up on the critical path).
        big = sum(1 for job in jobs if job.copy_from is None and job.descriptor.size > PREWARM_ABOVE)
        if big:
            try:
                await trio.to_thread.run_sync(prewarm_extractors, big)
            except OSError as exc:  # the layer's own spawn reports a real problem
                log.debug("prewarming extraction workers failed: %s", exc)

    async def stage(self, job: LayerJob, image: SourceImage, source: ImageSource, *,
                    on_bytes: Callable[[int], None], background: bool) -> StagedLayer:
        store = self.store
        writer = await trio.to_thread.run_sync(
            lambda: store.stage_layer(layer_id=job.layer_id, parent=job.parent, background=background))
        try:
            # A layer with the same diffID in this store, or a containers-storage source's own layer: the exact
            # tar, rebuilt from its tar-split and its files.
            exporter: tuple[Store, str] | None = None
            if job.copy_from is not None:
                exporter = (store, job.copy_from)
            elif image.stored is not None:
                exporter = (image.stored.store, job.layer_id)
            if exporter is None:
                await stream_blob(source, job.descriptor, writer.write, on_bytes)
            else:
                from_store, layer_id = exporter

                def copy() -> None:
                    for chunk in from_store.export_layer(layer_id):
                        writer.write(chunk)

                await trio.to_thread.run_sync(copy)
            staged: StagedLayer = await trio.to_thread.run_sync(writer.finish)
            return staged
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(writer.abort)
            raise

    async def publish(self, job: LayerJob, image: SourceImage, staged: StagedLayer) -> None:
        compressed_digest: str | None = job.descriptor.digest
        # c/image records the blob digest even for a layer copied from a stored one with the same diffID
        # (storage_dest.go); the size is then the tar's.
        compressed_size: int | None = None if job.copy_from else job.descriptor.size
        if image.stored is not None:
            # From another store: keep what that store recorded (as copying a whole image does).
            source_layer = next(rec for rec in image.stored.layers if rec.id == job.layer_id)
            staged = replace(staged, compression=source_layer.compression)
            compressed_digest, compressed_size = source_layer.compressed_digest, source_layer.compressed_size
        await trio.to_thread.run_sync(lambda: self.store.publish_layer(
            staged, expected_diff_digest=job.diff_id, compressed_digest=compressed_digest,
            compressed_size=compressed_size))

    async def discard(self, staged: StagedLayer) -> None:
        await trio.to_thread.run_sync(self.store.discard_staged, staged)

    async def commit(self, plan: ImagePlan, image: SourceImage, source: ImageSource) -> ImageRecord:
        top = plan.top_layer
        if top is None:
            raise PlanError(f"{image.description}: the image has no layers")
        stored = image.stored
        if stored is not None:
            # Every layer is here now: copy_image writes the record with the source's big data, metadata,
            # created time and digest byte for byte.
            names = list(image.names)
            record: ImageRecord = await trio.to_thread.run_sync(
                lambda: copy_image(stored.store, stored.record.id, self.store, names=names))
            return record
        index = image.index
        record = await trio.to_thread.run_sync(lambda: self.store.commit_image(
            image_id=image.image_id, top_layer=top, names=image.names, manifest=image.manifest_raw,
            manifest_digest=image.manifest_digest, config=image.config_raw,
            created=parse_created(image.config.created),
            index_manifest=index.raw if index is not None else None,
            index_digest=index.digest if index is not None else None))
        return record


__all__ = ["PREWARM_ABOVE", "StorageDestination", "parse_created"]
