"""containers-storage as a copy destination: layers extracted while their blobs stream, the image committed last.

Each job streams its blob (or a stored layer with the same diffID, or a ``containers-storage:`` source's layer)
into ``Store.stage_layer``'s writer from worker threads; ``publish_layer`` checks the diffID and records the
layer once its parent is published; the image record is committed when all its layers are (containers/image
``storageImageDestination``: layers first, the image last, so a reader never sees an image without layers).
Overlay stages every layer concurrently; vfs stages a child only on its published parent (the plan says so).

A blob fetched from a registry is also kept in the store's download cache as it streams
(:mod:`tether.engine.copy.downloads`): a later run resumes it from there, and it is removed once its layer is
published. Before an image's blobs are fetched, :meth:`StorageDestination.plan` refuses the image when the
store's filesystem cannot hold them above the disk reserve.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import trio

from tether.engine.copy.execute import stream_blob, stream_cached
from tether.engine.copy.plan import ImagePlan, LayerJob, PlanError, PullPlan, plan_pull
from tether.registry.errors import DigestMismatchError, TransportError
from tether.store.containers_storage import copy_image, prewarm_extractors
from tether.store.errors import DiskReserveError, StoreError

if TYPE_CHECKING:
    from tether.engine.copy.image import ImageSource, SourceImage
    from tether.registry.manifest import Descriptor
    from tether.store.blobcache import BlobCache, CachedBlob
    from tether.store.containers_storage import ImageRecord, LayerRecord, StagedLayer, Store

log = logging.getLogger(__name__)
T = TypeVar("T")

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


class NoSpaceError(PlanError):
    """The store's filesystem cannot hold an image's downloads above the disk reserve."""


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def keeps_partial(exc: BaseException) -> bool:
    """Whether the bytes a failed stream kept are worth keeping: it was stopped (cancelled, interrupted, killed
    by the pull) or the network failed; anything else (a digest, a full disk, a refused layer) discards them."""
    return all(isinstance(leaf, TransportError | KeyboardInterrupt | trio.Cancelled) for leaf in _leaves(exc))


def blames_prefix(exc: BaseException) -> bool:
    """Whether a failure of a blob resumed from kept bytes may be those bytes' fault: the whole blob's digest
    failed, or the layer's bytes could not be applied (a full disk is not their fault)."""
    leaves = _leaves(exc)
    return any(isinstance(leaf, DigestMismatchError) or (isinstance(leaf, StoreError)
                                                         and not isinstance(leaf, DiskReserveError))
               for leaf in leaves) and not any(isinstance(leaf, KeyboardInterrupt | trio.Cancelled) for leaf in leaves)


async def fetch_resuming(cache: BlobCache, descriptor: Descriptor, on_bytes: Callable[[int], None],
                         transfer: Callable[[CachedBlob | None, Callable[[int], None]], Awaitable[T]]) -> T:
    """Run ``transfer`` with the download cache's file for ``descriptor`` (``None`` while another process holds
    it), counting its bytes through ``on_bytes``. The file is closed after success, kept after a failure that
    leaves it good (:func:`keeps_partial`), else discarded; when the bytes an earlier run kept turn out not to
    be the blob's own (:func:`blames_prefix`), they are dropped, their count taken back, and ``transfer`` runs
    once more, from the first byte."""
    digest, size = descriptor.digest, descriptor.size
    for attempt in (1, 2):
        blob: CachedBlob | None = await trio.to_thread.run_sync(lambda: cache.open_blob(digest, size=size))
        resumed = blob.held if blob is not None else 0
        done = 0

        def count(n: int) -> None:
            nonlocal done
            done += n
            on_bytes(n)

        try:
            result = await transfer(blob, count)
        except BaseException as exc:
            retry = attempt == 1 and resumed > 0 and blames_prefix(exc)
            if blob is not None:
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(
                        blob.truncate if retry else blob.close if keeps_partial(exc) else blob.discard)
            if not retry:
                raise
            log.info("blob %s: the %d bytes kept from an earlier transfer are not its own (%s); fetching it whole",
                     digest, resumed, exc)
            on_bytes(-done)
            if blob is not None:
                await trio.to_thread.run_sync(blob.close)
            continue
        if blob is not None:
            await trio.to_thread.run_sync(blob.close)
        return result
    raise AssertionError("unreachable: the second attempt returns or raises")


def preflight(store: Store, cache: BlobCache | None, *, label: str, jobs: Sequence[LayerJob],
              pending: int = 0) -> int:
    """Refuse (:class:`NoSpaceError`) an image whose blobs (``jobs``' fetched ones, less what the cache holds)
    and ``pending`` bytes of earlier images still to come would leave the store's filesystem below its disk
    reserve; returns the bytes ``jobs`` will download."""
    needed = 0
    for job in jobs:
        if job.copy_from is None:
            held = cache.held(job.descriptor.digest) if cache is not None else 0
            needed += max(0, job.descriptor.size - held)
    root = Path(store.root)
    probe = root if root.exists() else root.parent
    try:
        store.disk_reserve.check(probe, needed=needed + pending, where=root)
    except DiskReserveError as exc:
        raise NoSpaceError(f"{label}: its layers cannot be downloaded: {exc}") from None
    except FileNotFoundError:
        pass
    return needed


class StorageDestination:
    """A containers-storage store; ``layers`` is the store's layer list, read (by the caller, while manifests
    are fetched) before the first image is planned. ``cache``: the store's download cache (registry blobs are
    kept there while they stream, resumed from there), ``None`` to keep nothing."""

    def __init__(self, store: Store, *, layers: Sequence[LayerRecord], cache: BlobCache | None = None) -> None:
        self.store = store
        self.layers = layers
        self.cache = cache
        self.description = f"containers-storage:[{store.driver}@{store.root}]"
        self._downloading: dict[str, int] = {}   # layer id -> bytes its job still has to download

    def plan(self, key: int, image: SourceImage, *, scheduled: Mapping[str, LayerJob]) -> PullPlan:
        plan = plan_pull([(key, image)], existing_layers=self.layers, sequential=not self.store.concurrent_layers,
                         scheduled=scheduled)
        if image.stored is None and plan.jobs:
            label = "/".join(image.names) or image.description
            preflight(self.store, self.cache, label=label, jobs=plan.jobs, pending=sum(self._downloading.values()))
            for job in plan.jobs:
                if job.copy_from is None:
                    self._downloading[job.layer_id] = job.descriptor.size
        return plan

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
        # A layer with the same diffID in this store, or a containers-storage source's own layer: the exact
        # tar, rebuilt from its tar-split and its files.
        exporter: tuple[Store, str] | None = None
        if job.copy_from is not None:
            exporter = (self.store, job.copy_from)
        elif image.stored is not None:
            exporter = (image.stored.store, job.layer_id)
        try:
            if exporter is not None:
                return await self._stage_export(job, exporter, background)
            if self.cache is None or source.transport != "docker":
                return await self._stage_stream(job, source, on_bytes, background, None)
            return await fetch_resuming(
                self.cache, job.descriptor, on_bytes,
                lambda blob, count: self._stage_stream(job, source, count, background, blob))
        finally:
            self._downloading.pop(job.layer_id, None)

    async def _stage_stream(self, job: LayerJob, source: ImageSource, on_bytes: Callable[[int], None],
                            background: bool, blob: CachedBlob | None) -> StagedLayer:
        store = self.store
        writer = await trio.to_thread.run_sync(
            lambda: store.stage_layer(layer_id=job.layer_id, parent=job.parent, background=background))
        try:
            if blob is None:
                await stream_blob(source, job.descriptor, writer.write, on_bytes)
            else:
                await stream_cached(source, job.descriptor, write=writer.write, on_written=on_bytes, blob=blob)
            staged: StagedLayer = await trio.to_thread.run_sync(writer.finish)
            return staged
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(writer.abort)
            raise

    async def _stage_export(self, job: LayerJob, exporter: tuple[Store, str], background: bool) -> StagedLayer:
        store = self.store
        writer = await trio.to_thread.run_sync(
            lambda: store.stage_layer(layer_id=job.layer_id, parent=job.parent, background=background))
        try:
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
        cache = self.cache
        if cache is not None and job.copy_from is None and image.stored is None:
            # The layer is in the store: its kept blob bytes have served their purpose.
            await trio.to_thread.run_sync(cache.remove_blob, job.descriptor.digest)

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


__all__ = ["PREWARM_ABOVE", "NoSpaceError", "StorageDestination", "blames_prefix", "keeps_partial", "parse_created",
           "preflight"]
