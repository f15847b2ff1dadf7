"""Executing a copy: every job and every image commit of one copy in the caller's nursery.

The caller (pull, mirror, install) owns the nursery and resolves its images concurrently; each image is handed
to :meth:`Executor.add` as soon as it is resolved, planned against the destination and the jobs already
scheduled, and its new jobs start at once. A job waits for the pieces it needs (``after``), then for a slot
(:class:`LargestFirst`: the largest waiting blob first), stages its piece through the destination while the
blob streams, waits for its parent, and publishes. An image is committed once all its pieces are published.

Failures stay with the images they concern: a failed job fails the images that need it, and once every
image is resolved a job whose images have all failed is cancelled; the other images carry on.
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic

import trio

from tether.engine.copy.destinations import CommitT, Destination, ImageT, StagedT
from tether.engine.copy.plan import ImagePlan, LayerJob, PlanError, is_background_layer
from tether.engine.copy.progress import Progress

if TYPE_CHECKING:
    from tether.engine.copy.image import ImageSource
    from tether.registry.client import Hasher
    from tether.registry.manifest import Descriptor
    from tether.store.blobcache import CachedBlob

log = logging.getLogger(__name__)

#: Bytes of network chunks handed to a writer per thread hop (a hop costs ~100 us).
WRITE_GROUP_BYTES = 1 << 20
#: Groups buffered between the network and the writer, per job: one is enough, since the extraction
#: child's pipe holds another MiB (F_SETPIPE_SZ); three cost ~10 MB more peak RSS with four jobs and gained
#: nothing measurable (benchmarks' five images).  Memory bound: ~3 MiB per job (the group being filled,
#: this one, the one being written).
CHANNEL_GROUPS = 1
#: Bytes of a kept blob prefix fed per thread hop (progress is reported between hops).
FEED_GROUP = 8 << 20
#: Blobs this small take no slot unless the job count was given (``--jobs``: a hard limit). A slot bounds the CPU
#: and disk work of a layer, which such a blob hardly makes (applied in this process in a few ms); on a slow
#: link its job mostly waits for round trips, and slots held for that made the last layers of five small
#: images wait for a second wave of requests (40 ms RTT: ~1 RTT).
SLOTLESS_BLOB = 1 << 20


def default_jobs() -> int:
    """Concurrent jobs: two per core (each job alternates network and CPU), at least 3, at most 12."""
    cpus = os.cpu_count() or 2
    return max(3, min(12, 2 * cpus))


def describe_error(exc: BaseException) -> str:
    """One line naming what went wrong: the first leaf of an exception group, its message's first line."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0] if text else type(exc).__name__


class LargestFirst:
    """A limit of ``slots`` concurrent jobs, granted to the largest waiting blob first.

    Largest-first (LPT scheduling) starts the longest layers at once and fills in small ones around them,
    so a copy ends close to when its largest layer does; trio's own limiter is FIFO in start order.
    A job asks only once its dependencies are published, so waiting never holds a slot; a blob of at most
    ``slotless`` bytes takes none.
    """

    def __init__(self, slots: int, *, slotless: int = 0) -> None:
        self.free = slots
        self.slotless = slotless
        self._waiting: list[tuple[int, int, trio.Event]] = []
        self._seq = 0

    def _grant(self) -> None:
        while self.free > 0 and self._waiting:
            _, _, event = heapq.heappop(self._waiting)
            self.free -= 1
            event.set()

    @asynccontextmanager
    async def slot(self, size: int) -> AsyncIterator[None]:
        if size <= self.slotless:
            yield
            return
        event = trio.Event()
        self._seq += 1
        heapq.heappush(self._waiting, (-size, self._seq, event))
        try:
            # Let every job started in the same batch queue up before the first grant.
            await trio.lowlevel.checkpoint()
            self._grant()
            await event.wait()
        except BaseException:
            if event.is_set():
                self.free += 1
                self._grant()
            else:
                self._waiting = [w for w in self._waiting if w[2] is not event]
                heapq.heapify(self._waiting)
            raise
        try:
            yield
        finally:
            self.free += 1
            self._grant()


async def stream_blob(source: ImageSource, descriptor: Descriptor, write: Callable[[bytes], object] | None,
                      on_written: Callable[[int], None], *, offset: int = 0, hasher: Hasher | None = None,
                      tee: Callable[[list[bytes]], object] | None = None) -> None:
    """Network -> ``write`` (blocking, run in worker threads ~1 MiB at a time) with a bounded channel between
    them: backpressure both ways, no spooling, one thread hop per group instead of per chunk.

    ``offset``/``hasher``: the first ``offset`` bytes were already written (and hashed) from elsewhere; only the
    rest is asked of ``source``. ``tee`` gets every group too, before ``write`` (``write`` ``None``: only it).
    """
    send, receive = trio.open_memory_channel[list[bytes]](CHANNEL_GROUPS)

    def write_all(group: list[bytes]) -> int:
        # The copy kept for a later run first: a kill then loses the least (the consumer starts over anyway).
        if tee is not None:
            tee(group)
        if write is not None:
            for chunk in group:
                write(chunk)
        return sum(len(chunk) for chunk in group)

    async def writer() -> None:
        async with receive:
            async for group in receive:
                on_written(await trio.to_thread.run_sync(write_all, group))

    opened = (source.open_blob(descriptor, offset=offset, hasher=hasher) if offset or hasher is not None
              else source.open_blob(descriptor))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer)
        async with send, opened as chunks:
            group: list[bytes] = []
            size = 0
            async for chunk in chunks:
                group.append(chunk)
                size += len(chunk)
                if size >= WRITE_GROUP_BYTES:
                    await send.send(group)
                    group = []
                    size = 0
            if group:
                await send.send(group)


async def stream_cached(source: ImageSource, descriptor: Descriptor, *, write: Callable[[bytes], object] | None,
                        on_written: Callable[[int], None], blob: CachedBlob | None) -> None:
    """Stream ``descriptor``'s blob to ``write`` (blocking; ``None``: to ``blob`` only), resuming from ``blob``.

    The bytes ``blob`` holds are fed first (hashed: the registry stream continues that hash with ``Range`` and
    checks the digest over the whole blob), then the rest comes from ``source`` and is appended to ``blob``
    as it is written. A prefix that is not the blob's fails the digest at the end (or the consumer earlier).
    """
    hasher = hashlib.new(descriptor.digest.split(":", 1)[0])
    offset = 0
    if blob is not None and blob.held:
        pieces = blob.read()

        def feed() -> int:
            n = 0
            for data in pieces:
                if write is not None:
                    write(data)
                hasher.update(data)
                n += len(data)
                if n >= FEED_GROUP:
                    break
            return n

        while offset < blob.held:
            n = await trio.to_thread.run_sync(feed)
            if not n:
                break
            offset += n
            on_written(n)
        log.debug("blob %s: %d bytes kept from an earlier transfer, %d to fetch", descriptor.digest, offset,
                  descriptor.size - offset)
    await stream_blob(source, descriptor, write, on_written, offset=offset, hasher=hasher,
                      tee=blob.append if blob is not None else None)


class _ImageFailed(Exception):
    """Internal: an image's work stopped because a piece it needs failed."""


@dataclass
class ImageRun(Generic[ImageT, CommitT]):
    """One request of the copy: its source, its image once resolved, its plan, and how it ended."""

    key: int
    label: str
    source: ImageSource | None = None
    image: ImageT | None = None
    plan: ImagePlan | None = None
    committed: CommitT | None = None
    error: str | None = None
    finished: bool = False   # committed, failed, or found up to date by the caller


@dataclass
class JobRun(Generic[StagedT]):
    """One job in flight; ``outcome`` is what the destination's stage returned."""

    job: LayerJob
    needed_by: set[int] = field(default_factory=set)
    published: trio.Event = field(default_factory=trio.Event)
    error: str | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    bytes_done: int = 0
    outcome: StagedT | None = None


class Executor(Generic[ImageT, StagedT, CommitT]):
    """Runs the jobs and commits of one copy in the caller's ``nursery`` (see the module docstring)."""

    def __init__(self, *, nursery: trio.Nursery, destination: Destination[ImageT, StagedT, CommitT],
                 labels: Sequence[str], jobs: int, progress: Progress,
                 on_commit: Callable[[ImageRun[ImageT, CommitT]], None] | None = None,
                 small_blobs_free: bool = False) -> None:
        """``jobs`` layer jobs at once; ``small_blobs_free``: blobs of at most :data:`SLOTLESS_BLOB` bytes do not
        count (the job count was sized for the machine, not given)."""
        self.nursery = nursery
        self.on_commit = on_commit
        self.destination = destination
        self.progress = progress
        self.runs: list[ImageRun[ImageT, CommitT]] = [ImageRun(key=i, label=label) for i, label in enumerate(labels)]
        self.limiter = LargestFirst(jobs, slotless=SLOTLESS_BLOB if small_blobs_free else 0)
        self.jobs: dict[str, JobRun[StagedT]] = {}
        self.resolving = len(self.runs)
        self.largest_blob = 0

    # ---- what the caller tells it

    def add(self, key: int, image: ImageT) -> None:
        """Plan ``image`` (request ``key``) and start its new jobs and its commit."""
        run = self.runs[key]
        run.image = image
        try:
            plan = self.destination.plan(key, image, scheduled={k: jr.job for k, jr in self.jobs.items()})
        except PlanError as exc:
            self.image_failed(key, describe_error(exc))
            return
        image_plan = plan.images[0]
        run.plan = image_plan
        self.progress.image_planned(run.label, image_plan.layer_infos())
        for step in image_plan.steps:
            if not step.owner and step.layer_id in self.jobs:
                self.jobs[step.layer_id].needed_by.add(key)
        new = [JobRun[StagedT](job, needed_by=set(job.needed_by)) for job in plan.jobs]
        for jr in new:  # every job is known before any task waits on one
            self.jobs[jr.job.layer_id] = jr
        fetched = [jr.job.descriptor.size for jr in new if jr.job.copy_from is None]
        self.largest_blob = max([self.largest_blob, *fetched])
        if new:
            self.nursery.start_soon(self.destination.prepare, tuple(jr.job for jr in new))
        for jr in new:
            self.nursery.start_soon(self._run_job, jr)
        self.nursery.start_soon(self._commit, image_plan)

    def resolved(self) -> None:
        """One request is past resolution (planned, up to date, or failed)."""
        self.resolving -= 1
        self._cancel_unneeded()

    def finished(self, key: int) -> None:
        """The caller settled request ``key`` itself (up to date: nothing to copy)."""
        self.runs[key].finished = True

    def image_failed(self, key: int, message: str) -> None:
        run = self.runs[key]
        if run.finished:
            return
        run.finished = True
        run.error = message
        self.progress.image_done(run.label, image_id=None, error=message)
        self._cancel_unneeded()

    # ---- internals

    def _cancel_unneeded(self) -> None:
        # Only once every image is resolved: an image still resolving may need a piece yet.
        if self.resolving > 0:
            return
        for jr in self.jobs.values():
            if jr.needed_by and all(self.runs[k].error is not None for k in jr.needed_by):
                jr.scope.cancel()

    async def _wait_published(self, key: str) -> None:
        jr = self.jobs.get(key)
        if jr is None:
            return  # present at the destination
        await jr.published.wait()
        if jr.error is not None:
            raise _ImageFailed(jr.error)

    async def _run_job(self, jr: JobRun[StagedT]) -> None:
        job = jr.job
        owner = self.runs[job.source_key]
        staged: StagedT | None = None
        try:
            with jr.scope:
                for dep in job.after:
                    await self._wait_published(dep)
                if owner.source is None or owner.image is None:
                    raise PlanError(f"{owner.label}: no source for {job.descriptor.digest}")
                source, image = owner.source, owner.image

                def on_bytes(n: int) -> None:
                    jr.bytes_done += n
                    self.progress.layer_bytes(owner.label, job.descriptor.digest, jr.bytes_done)

                async with self.limiter.slot(job.descriptor.size):
                    background = is_background_layer(job.descriptor.size, largest=self.largest_blob)
                    staged = await self.destination.stage(job, image, source, on_bytes=on_bytes,
                                                          background=background)
                if job.parent is not None:
                    await self._wait_published(job.parent)
                if not jr.scope.cancel_called:
                    await self.destination.publish(job, image, staged)
                    jr.outcome, staged = staged, None
                    for key in sorted(jr.needed_by):
                        self.progress.layer_done(self.runs[key].label, job.descriptor.digest)
                    jr.published.set()
                    return
            jr.error = "cancelled: no image needs this layer any more"
        except _ImageFailed as exc:
            jr.error = str(exc)
        except Exception as exc:
            jr.error = f"layer {job.descriptor.digest}: {describe_error(exc)}"
            log.debug("job %s failed", job.layer_id, exc_info=True)
        finally:
            if staged is not None:
                with trio.CancelScope(shield=True):
                    await self.destination.discard(staged)
        jr.published.set()
        for key in sorted(jr.needed_by):
            self.image_failed(key, jr.error or "failed")

    async def _commit(self, image_plan: ImagePlan) -> None:
        run = self.runs[image_plan.key]
        try:
            for step in image_plan.steps:
                await self._wait_published(step.layer_id)
            if run.finished or run.image is None or run.source is None:
                return
            committed = await self.destination.commit(image_plan, run.image, run.source)
        except _ImageFailed as exc:
            self.image_failed(image_plan.key, str(exc))
            return
        except Exception as exc:
            log.debug("commit of %s failed", run.label, exc_info=True)
            self.image_failed(image_plan.key, describe_error(exc))
            return
        if run.finished:
            return
        run.committed = committed
        run.finished = True
        if self.on_commit is not None:
            self.on_commit(run)


__all__ = [
    "CHANNEL_GROUPS",
    "WRITE_GROUP_BYTES",
    "Executor",
    "ImageRun",
    "JobRun",
    "LargestFirst",
    "default_jobs",
    "describe_error",
    "stream_blob",
    "stream_cached",
]
