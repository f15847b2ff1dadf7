"""The concurrent streaming pull: plan (pure), then execute, all in one trio nursery.

1. **Resolve** every image at once (short names via registries.conf, transports, platform): one manifest
   request each (``--pull missing``: none when the store has the name already; ``newer``/``always``:
   nothing more when the store has the image with that digest), then the config.
2. **Policy**: the signature policy is enforced right after an image is resolved, before any of its layers
   is fetched or published (:func:`_check_signature_policy`, the single call site).
3. **Plan** (:func:`plan_pull`, pure) each image as soon as it is resolved: layer ids from
   ``rootfs.diff_ids`` as containers/image computes them; what the store has by layer id, diffID and
   compressed digest; what a job of this pull already makes. Every missing layer is made once, by one
   :class:`LayerJob`, however many images need it; the plan is a frozen value. Planning image by image
   means one slow registry does not hold the other images back.
4. **Execute**: each job streams its blob (``ImageSource.open_blob``) into ``Store.stage_layer``'s writer,
   hopping to a worker thread per ~1 MiB group of chunks (a bounded channel between the network and the
   writer gives backpressure end to end, no spooling); ``publish_layer`` checks the diffID and records the
   layer in parent order. Overlay layers stage concurrently (largest blob first); vfs stages a child only
   on its published parent. The image record is committed last. A failed layer fails the images that need
   it, and an image's failure cancels the jobs only it needed; other images carry on.
"""

from __future__ import annotations

import hashlib
import heapq
import importlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import trio

from tether.engine.copy.progress import LayerInfo, Progress
from tether.engine.copy.sources import ImageSource, RegistrySource, SourceError, SourceImage, open_layout_source
from tether.engine.errors import EngineError

if TYPE_CHECKING:
    from tether.engine.options import CommonOptions
    from tether.registry.client import RegistryClient
    from tether.registry.manifest import Descriptor, Platform
    from tether.registry.reference import Reference
    from tether.store.containers_storage import ImageRecord, LayerRecord, Store

log = logging.getLogger(__name__)

PullPolicy = Literal["always", "missing", "newer"]

#: Bytes of network chunks handed to the store's writer per thread hop (a hop costs ~100 us).
WRITE_GROUP_BYTES = 1 << 20
#: Groups buffered between the network and the writer, per layer: one is enough, since the extraction
#: child's pipe holds another MiB (F_SETPIPE_SZ); three cost ~10 MB more peak RSS with four jobs and gained
#: nothing measurable (benchmarks' five images).  Memory bound: ~3 MiB per job (the group being filled,
#: this one, the one being written).
CHANNEL_GROUPS = 1


def default_jobs() -> int:
    """Concurrent layer jobs: two per core (each job alternates network and CPU), at least 3, at most 12."""
    cpus = os.cpu_count() or 2
    return max(3, min(12, 2 * cpus))


# --------------------------------------------------------------------------------------------------
# Public values
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PullRequest:
    """One image to pull; per-image overrides come from quadlet ``.image`` keys."""

    name: str
    platform: Platform | None = None
    tls_verify: bool | None = None
    authfile: Path | None = None
    cert_dir: Path | None = None
    retries: int | None = None
    retry_delay: float | None = None  # seconds; quadlet RetryDelay=, podman pull --retry-delay


@dataclass(frozen=True)
class ImageResult:
    """What happened to one request. ``error`` is ``None`` on success."""

    request: PullRequest
    reference: str | None
    image_id: str | None
    manifest_digest: str | None
    error: str | None
    layers_pulled: int = 0
    layers_reused: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class PullReport:
    """The results of a pull, in request order."""

    results: tuple[ImageResult, ...]

    @property
    def ok(self) -> bool:
        """True when every image was pulled (or already present)."""
        return all(r.ok for r in self.results)

    @property
    def failed(self) -> tuple[ImageResult, ...]:
        return tuple(r for r in self.results if not r.ok)

    def summary(self) -> str:
        """One line per failed image ("NAME: why"), or an empty string."""
        return "\n".join(f"{r.request.name}: {r.error}" for r in self.failed)


# --------------------------------------------------------------------------------------------------
# Plan (pure)
# --------------------------------------------------------------------------------------------------


def layer_ids(diff_ids: Sequence[str]) -> tuple[str, ...]:
    """containers-storage layer ids of an image's layers, bottom first.

    containers/image storage_dest.go (commitLayer): the base layer's id is the hex of its DiffID; each
    next one is ``sha256hex(parentID + "+" + hex(DiffID))``.
    """
    ids: list[str] = []
    parent: str | None = None
    for diff_id in diff_ids:
        hex_ = diff_id.split(":", 1)[1]
        layer_id = hex_ if parent is None else hashlib.sha256(f"{parent}+{hex_}".encode()).hexdigest()
        ids.append(layer_id)
        parent = layer_id
    return tuple(ids)


LayerAction = Literal["present", "fetch", "copy"]


@dataclass(frozen=True)
class LayerStep:
    """One layer of one image in the plan."""

    layer_id: str
    parent: str | None
    diff_id: str
    descriptor: Descriptor
    action: LayerAction     # present in the store / made by a job of this pull
    owner: bool             # this image's job makes it (False: another image's job, or present)


@dataclass(frozen=True)
class LayerJob:
    """Making one missing layer: fetch its blob from ``source_key``'s source, or copy an existing layer.

    ``copy_from`` is a layer (already in the store, or made earlier in this pull: see ``after``) with the
    same diffID. ``after`` are layer ids that must be published before this job may start staging
    (vfs: the parent; a copy: its source when the pull makes it).
    """

    layer_id: str
    parent: str | None
    diff_id: str
    descriptor: Descriptor
    source_key: int
    copy_from: str | None
    after: tuple[str, ...]
    needed_by: frozenset[int]


@dataclass(frozen=True)
class ImagePlan:
    """One image: its layers bottom first, and whether it is already fully in the store."""

    key: int
    image: SourceImage
    steps: tuple[LayerStep, ...]

    @property
    def top_layer(self) -> str | None:
        return self.steps[-1].layer_id if self.steps else None


@dataclass(frozen=True)
class PullPlan:
    """A frozen plan: images (by request key) and the jobs that make their missing layers, in order."""

    images: tuple[ImagePlan, ...]
    jobs: tuple[LayerJob, ...]

    def job(self, layer_id: str) -> LayerJob | None:
        for job in self.jobs:
            if job.layer_id == layer_id:
                return job
        return None


class PlanError(EngineError):
    """An image cannot be planned (its config and manifest disagree)."""


def plan_pull(images: Sequence[tuple[int, SourceImage]], *, existing_layers: Sequence[LayerRecord],
              sequential: bool = False, scheduled: Mapping[str, LayerJob] | None = None) -> PullPlan:
    """Plan the layers to make for ``images`` (request key, resolved image) given the store's layers.

    A layer is *present* if the store has a complete layer with its id, *shared* if ``scheduled`` (the jobs
    of this pull planned earlier, by layer id) already makes it. Otherwise it is made by one new job: a
    **copy** when the store (or a job of this pull) has a layer with the same diffID, or the same
    compressed digest and diffID; else a **fetch**. ``sequential`` (vfs) makes every job wait for its
    parent. Raises :class:`PlanError` when a manifest and its config disagree on the number of layers.
    """
    scheduled = scheduled or {}
    complete = {rec.id: rec for rec in existing_layers if not rec.incomplete}
    by_diff: dict[str, str] = {}
    by_compressed: dict[str, tuple[str, str | None]] = {}
    for rec in complete.values():
        if rec.diff_digest:
            by_diff.setdefault(rec.diff_digest, rec.id)
        if rec.compressed_digest:
            by_compressed.setdefault(rec.compressed_digest, (rec.id, rec.diff_digest))

    jobs: dict[str, dict[str, Any]] = {}   # layer id -> fields (needed_by updated as images share it)
    made_by_diff: dict[str, str] = {}      # diffID -> first layer id fetched in this pull
    for earlier in scheduled.values():
        if earlier.copy_from is None:
            made_by_diff.setdefault(earlier.diff_id, earlier.layer_id)
    plans: list[ImagePlan] = []
    for key, image in images:
        diff_ids = image.config.diff_ids
        descriptors = image.manifest.layers
        if len(diff_ids) != len(descriptors):
            raise PlanError(f"{'/'.join(image.names) or image.manifest_digest}: the manifest lists "
                            f"{len(descriptors)} layers but the config's rootfs.diff_ids {len(diff_ids)}")
        ids = layer_ids(diff_ids)
        steps: list[LayerStep] = []
        parent: str | None = None
        for layer_id, diff_id, desc in zip(ids, diff_ids, descriptors, strict=True):
            if layer_id in complete:
                steps.append(LayerStep(layer_id, parent, diff_id, desc, "present", False))
            elif layer_id in scheduled:
                earlier_action: LayerAction = "copy" if scheduled[layer_id].copy_from else "fetch"
                steps.append(LayerStep(layer_id, parent, diff_id, desc, earlier_action, False))
            elif layer_id in jobs:
                jobs[layer_id]["needed_by"].add(key)
                steps.append(LayerStep(layer_id, parent, diff_id, desc, jobs[layer_id]["action"], False))
            else:
                after: list[str] = []
                copy_from: str | None = None
                if diff_id in by_diff:
                    copy_from = by_diff[diff_id]
                elif desc.digest in by_compressed and by_compressed[desc.digest][1] == diff_id:
                    copy_from = by_compressed[desc.digest][0]
                elif diff_id in made_by_diff:
                    copy_from = made_by_diff[diff_id]
                    after.append(copy_from)
                if sequential and parent is not None and parent not in complete:
                    after.append(parent)
                action: LayerAction = "copy" if copy_from is not None else "fetch"
                if copy_from is None:
                    made_by_diff[diff_id] = layer_id
                jobs[layer_id] = {
                    "layer_id": layer_id, "parent": parent, "diff_id": diff_id, "descriptor": desc,
                    "source_key": key, "copy_from": copy_from, "after": tuple(after), "needed_by": {key},
                    "action": action,
                }
                steps.append(LayerStep(layer_id, parent, diff_id, desc, action, True))
            parent = layer_id
        plans.append(ImagePlan(key=key, image=image, steps=tuple(steps)))
    frozen_jobs = tuple(
        LayerJob(layer_id=j["layer_id"], parent=j["parent"], diff_id=j["diff_id"], descriptor=j["descriptor"],
                 source_key=j["source_key"], copy_from=j["copy_from"], after=j["after"],
                 needed_by=frozenset(j["needed_by"]))
        for j in jobs.values()
    )
    return PullPlan(images=tuple(plans), jobs=frozen_jobs)


def layer_infos(plan: ImagePlan) -> tuple[LayerInfo, ...]:
    """The progress view of an image's plan."""
    out = []
    for step in plan.steps:
        if step.action == "present":
            state: Literal["fetch", "exists", "shared", "copy"] = "exists"
        elif not step.owner:
            state = "shared"
        elif step.action == "copy":
            state = "copy"
        else:
            state = "fetch"
        out.append(LayerInfo(step.descriptor.digest, step.descriptor.size, state))
    return tuple(out)


def image_up_to_date(records: Iterable[ImageRecord], *, names: Sequence[str], digest: str | None) -> ImageRecord | None:
    """The stored image that makes a pull unnecessary: it has one of ``names`` and (unless ``digest`` is
    ``None``, i.e. ``--pull missing``) the manifest ``digest``."""
    for rec in records:
        if not set(names) & set(rec.names):
            continue
        if digest is None:
            return rec
        if digest == rec.digest or digest in rec.digests:
            return rec
    return None


# --------------------------------------------------------------------------------------------------
# Execution
# --------------------------------------------------------------------------------------------------


class _ImageFailed(Exception):
    """Internal: an image's work stopped because a layer it needs failed."""


@dataclass
class _ImageRun:
    key: int
    request: PullRequest
    label: str
    source: ImageSource | None = None
    image: SourceImage | None = None
    result: ImageResult | None = None
    error: str | None = None


@dataclass
class _JobRun:
    job: LayerJob
    needed_by: set[int] = field(default_factory=set)
    published: trio.Event = field(default_factory=trio.Event)
    error: str | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    bytes_done: int = 0


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0] if text else type(exc).__name__


def _normalize(requests: Sequence[PullRequest | str]) -> list[PullRequest]:
    return [r if isinstance(r, PullRequest) else PullRequest(name=r) for r in requests]


def _created(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    text = str(value)
    try:
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        # Python 3.11 parses at most microseconds: trim nanoseconds.
        if "." in text:
            head, _, rest = text.partition(".")
            frac = "".join(ch for ch in rest if ch.isdigit())
            tz = rest[len(frac):]
            text = f"{head}.{frac[:6]}{tz}"
        return datetime.fromisoformat(text)
    except ValueError:
        return None


class _Clients:
    """Registry clients opened lazily, one per distinct (authfile, cert_dir, tls_verify, retries)."""

    def __init__(self, stack: AsyncExitStack, options: CommonOptions, *, connections: int) -> None:
        self.stack = stack
        self.options = options
        self.connections = connections
        self._clients: dict[tuple[Any, ...], RegistryClient] = {}
        self._lock = trio.Lock()
        self._conf: Any = None

    def registries(self) -> Any:
        if self._conf is None:
            from tether.registry.registries_conf import load_registries_conf

            self._conf = load_registries_conf(path=self.options.registries_conf, environ=self.options.environ)
        return self._conf

    async def get(self, request: PullRequest) -> RegistryClient:
        from tether.registry.auth import load_auth_file
        from tether.registry.client import open_registry_client

        authfile = request.authfile if request.authfile is not None else self.options.auth_file_path()
        cert_dir = request.cert_dir if request.cert_dir is not None else self.options.cert_dir
        tls_verify = request.tls_verify if request.tls_verify is not None else self.options.tls_verify
        key = (authfile, cert_dir, tls_verify, request.retries, request.retry_delay)
        async with self._lock:
            client = self._clients.get(key)
            if client is None:
                kwargs: dict[str, Any] = {
                    "registries": self.registries(),
                    "auth": load_auth_file(authfile),
                    "cert_dir": cert_dir,
                    "tls_verify": tls_verify,
                    "max_connections_per_host": self.connections,
                }
                if request.retries is not None or request.retry_delay is not None:
                    from tether.registry.client import DEFAULT_RETRY_POLICY

                    policy = DEFAULT_RETRY_POLICY
                    if request.retries is not None:
                        tries = max(1, request.retries + 1)
                        policy = replace(policy, attempts=tries, connect_attempts=min(2, tries))
                    if request.retry_delay is not None:
                        # podman's --retry-delay is a fixed pause; here it bounds the jittered backoff.
                        delay = max(0.0, request.retry_delay)
                        policy = replace(policy, base_delay=delay, max_delay=delay)
                    kwargs["retry_policy"] = policy
                cm = open_registry_client(**kwargs)
                client = await self.stack.enter_async_context(cm)
                self._clients[key] = client
            return client


async def open_source(request: PullRequest, *, clients: _Clients, stack: AsyncExitStack,
                      options: CommonOptions) -> ImageSource:
    """Turn a request's name into an :class:`ImageSource` (transport dispatch, short names)."""
    from tether.registry.reference import DockerName, parse_image_name
    from tether.registry.registries_conf import pull_sources, resolve_short_name

    parsed = parse_image_name(request.name)
    if not isinstance(parsed, DockerName):
        source: ImageSource = await stack.enter_async_context(open_layout_source(parsed, options=options))
        return source
    conf = clients.registries()
    if parsed.reference is not None:
        # podman pulls ":latest" for a name without tag or digest (reference.TagNameOnly).
        candidates: tuple[Reference, ...] = (parsed.reference.tag_name_only(),)
    else:
        candidates = tuple(resolve_short_name(conf, parsed.name, tty=False))
    client = await clients.get(request)
    return RegistrySource(client=client, candidates=candidates, name=request.name,
                          pull_sources=lambda ref: pull_sources(conf, ref))


async def _check_signature_policy(*, image: SourceImage, source: ImageSource, request: PullRequest,
                                  options: CommonOptions, policy_cache: dict[str, Any]) -> None:
    """THE signature-policy call site: after resolve, before any layer of ``image`` is fetched or published.

    Delegates to ``tether.engine.copy.verify.enforce_policy`` (issue 8) when that module exists; raises its
    ``PolicyError`` to fail the image.
    """
    try:
        verify = importlib.import_module("tether.engine.copy.verify")
    except ModuleNotFoundError as exc:
        if exc.name != "tether.engine.copy.verify":
            raise
        return
    if "policy" not in policy_cache:
        from tether.registry.policy import load_policy

        # --signature-policy, else $HOME/.config/containers/policy.json, else /etc/containers/policy.json
        home = options.environ.get("HOME")
        policy_cache["policy"] = await trio.to_thread.run_sync(
            lambda: load_policy(options.signature_policy, home=home))
    client = getattr(source, "client", None)
    await verify.enforce_policy(policy=policy_cache["policy"], image=image, name=request.name,
                                transport=image.transport, client=client)


async def pull(requests: Sequence[PullRequest | str], *, store: Store, options: CommonOptions,
               jobs: int | None = None, policy: PullPolicy = "newer",
               progress: Progress | None = None) -> PullReport:
    """Pull every image of ``requests`` into ``store``, all at once; never raises for one image's failure.

    ``policy`` as podman's ``--pull``: ``missing`` makes no request for an image the store has by name;
    ``newer`` and ``always`` fetch the manifest and stop there when the store has that digest under that
    name. Returns a :class:`PullReport` in request order (``.ok``, ``.summary()``).
    """
    reqs = _normalize(requests)
    progress = progress if progress is not None else Progress()
    limit = jobs if jobs is not None and jobs > 0 else default_jobs()
    runs = [_ImageRun(key=i, request=r, label=r.name) for i, r in enumerate(reqs)]
    try:
        async with AsyncExitStack() as stack:
            clients = _Clients(stack, options, connections=max(limit, 4))
            policy_cache: dict[str, Any] = {}
            listed = trio.Event()
            records: list[ImageRecord] = []
            layers: list[LayerRecord] = []

            async def list_store() -> None:
                # Read the store while the manifests are being fetched.
                got = await trio.to_thread.run_sync(lambda: (store.list_images(), store.list_layers()))
                records.extend(got[0])
                layers.extend(got[1])
                listed.set()

            async def resolve_one(run: _ImageRun, executor: _Executor) -> None:
                progress.image_started(run.label)
                try:
                    source = await open_source(run.request, clients=clients, stack=stack, options=options)
                    run.source = source
                    if policy == "missing":
                        await listed.wait()
                        found = image_up_to_date(records, names=source.local_names, digest=None)
                        if found is not None:
                            _finish_present(run, found, progress)
                            return
                    digest = await source.probe_digest()
                    await listed.wait()
                    if digest is not None:
                        found = image_up_to_date(records, names=source.local_names, digest=digest)
                        if found is not None:
                            _finish_present(run, found, progress)
                            return
                    platform = run.request.platform or options.wanted_platform()
                    image = await source.resolve(platform=platform)
                    await _check_signature_policy(image=image, source=source, request=run.request,
                                                  options=options, policy_cache=policy_cache)
                    run.image = image
                    executor.add(run.key, image)
                except Exception as exc:
                    executor.image_failed(run.key, _describe(exc))
                finally:
                    executor.resolved()

            # One nursery owns the whole pull: the store listing, every resolution, every layer job and
            # every commit; an image's layers start as soon as it is resolved and planned.
            async with trio.open_nursery() as nursery:
                executor = _Executor(nursery=nursery, runs=runs, store=store, limit=limit, progress=progress,
                                     layers=layers)
                nursery.start_soon(list_store)
                for run in runs:
                    nursery.start_soon(resolve_one, run, executor)
    finally:
        progress.close()
    results = []
    for run in runs:
        if run.result is None:
            run.result = ImageResult(request=run.request, reference=None, image_id=None, manifest_digest=None,
                                     error=run.error or "not pulled")
        results.append(run.result)
    return PullReport(results=tuple(results))


def _finish_present(run: _ImageRun, rec: ImageRecord, progress: Progress) -> None:
    local = run.source.local_names if run.source is not None else ()
    name = next((n for n in local if n in rec.names), rec.names[0] if rec.names else None)
    run.result = ImageResult(request=run.request, reference=name,
                             image_id=rec.id, manifest_digest=rec.digest, error=None,
                             layers_pulled=0, layers_reused=0)
    progress.image_done(run.label, image_id=rec.id, error=None, up_to_date=True)


def _fail(run: _ImageRun, exc: BaseException | str, progress: Progress) -> None:
    if run.result is not None:
        return
    message = exc if isinstance(exc, str) else _describe(exc)
    run.error = message
    image = run.image
    run.result = ImageResult(request=run.request, reference=image.names[0] if image and image.names else None,
                             image_id=image.image_id if image else None,
                             manifest_digest=image.manifest_digest if image else None, error=message)
    progress.image_done(run.label, image_id=None, error=message)


async def _write_groups(writer: Any, receive: trio.MemoryReceiveChannel[list[bytes]],
                        on_written: Callable[[int], None]) -> None:
    def write_all(group: list[bytes]) -> int:
        n = 0
        for chunk in group:
            writer.write(chunk)
            n += len(chunk)
        return n

    async with receive:
        async for group in receive:
            n = await trio.to_thread.run_sync(write_all, group)
            on_written(n)


async def _stream_blob(source: ImageSource, descriptor: Descriptor, writer: Any,
                       on_written: Callable[[int], None]) -> None:
    """Network -> writer with a bounded channel between them (backpressure both ways, no spooling)."""
    send, receive = trio.open_memory_channel[list[bytes]](CHANNEL_GROUPS)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_write_groups, writer, receive, on_written)
        async with send, source.open_blob(descriptor) as chunks:
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


class _LargestFirst:
    """A limit of ``slots`` concurrent layer jobs, granted to the largest waiting blob first.

    Largest-first (LPT scheduling) starts the longest layers at once and fills in small ones around them,
    so a pull ends close to when its largest layer does; trio's own limiter is FIFO in start order.
    A job asks only once its dependencies are published, so waiting never holds a slot.
    """

    def __init__(self, slots: int) -> None:
        self.free = slots
        self._waiting: list[tuple[int, int, trio.Event]] = []
        self._seq = 0

    def _grant(self) -> None:
        while self.free > 0 and self._waiting:
            _, _, event = heapq.heappop(self._waiting)
            self.free -= 1
            event.set()

    @asynccontextmanager
    async def slot(self, size: int) -> AsyncIterator[None]:
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


class _Executor:
    """Runs layer jobs and image commits in the pull's nursery; each image is planned as soon as it is
    resolved (against the store's layers and the jobs already scheduled), so one slow registry does not hold
    the others back, and a layer several images share is still made by one job."""

    def __init__(self, *, nursery: trio.Nursery, runs: list[_ImageRun], store: Store, limit: int,
                 progress: Progress, layers: Sequence[LayerRecord]) -> None:
        self.nursery = nursery
        self.runs = runs
        self.store = store
        self.progress = progress
        self.layers = layers
        self.limiter = _LargestFirst(limit)
        self.jobs: dict[str, _JobRun] = {}
        self.resolving = len(runs)
        self.largest_blob = 0

    # ---- scheduling

    def add(self, key: int, image: SourceImage) -> None:
        """Plan ``image`` (request ``key``) and start its new jobs and its commit."""
        try:
            plan = plan_pull([(key, image)], existing_layers=self.layers,
                             sequential=not self.store.concurrent_layers,
                             scheduled={layer_id: jr.job for layer_id, jr in self.jobs.items()})
        except PlanError as exc:
            self.image_failed(key, _describe(exc))
            return
        image_plan = plan.images[0]
        self.progress.image_planned(self.runs[key].label, layer_infos(image_plan))
        for step in image_plan.steps:
            if not step.owner and step.layer_id in self.jobs:
                self.jobs[step.layer_id].needed_by.add(key)
        new = [_JobRun(job, needed_by=set(job.needed_by)) for job in plan.jobs]
        for jr in new:  # every job is known before any task waits on one
            self.jobs[jr.job.layer_id] = jr
        fetched = [jr.job.descriptor.size for jr in new if jr.job.copy_from is None]
        self.largest_blob = max([self.largest_blob, *fetched])
        big = sum(1 for size in fetched if size > _PREWARM_ABOVE)
        if big:
            # Start the extraction children now, while the blobs' first bytes are in flight, instead of
            # when a layer's first 4 MiB arrived (~0.1 s of interpreter start-up on the critical path).
            self.nursery.start_soon(trio.to_thread.run_sync, _prewarm_extractors, big)
        for jr in new:
            self.nursery.start_soon(self.run_job, jr)
        self.nursery.start_soon(self.commit, image_plan)

    def resolved(self) -> None:
        """One request is past resolution (planned, up to date, or failed)."""
        self.resolving -= 1
        self._cancel_unneeded()

    def _cancel_unneeded(self) -> None:
        # Only once every image is resolved: an image still resolving may need a layer yet.
        if self.resolving > 0:
            return
        for jr in self.jobs.values():
            if jr.needed_by and all(self.runs[k].error is not None for k in jr.needed_by):
                jr.scope.cancel()

    def image_failed(self, key: int, message: str) -> None:
        run = self.runs[key]
        if run.result is not None:
            return
        _fail(run, message, self.progress)
        self._cancel_unneeded()

    # ---- tasks

    async def wait_published(self, layer_id: str) -> None:
        jr = self.jobs.get(layer_id)
        if jr is None:
            return  # present in the store
        await jr.published.wait()
        if jr.error is not None:
            raise _ImageFailed(jr.error)

    async def run_job(self, jr: _JobRun) -> None:
        job = jr.job
        store = self.store
        source = self.runs[job.source_key].source
        owner_label = self.runs[job.source_key].label
        staged: Any = None
        try:
            with jr.scope:
                for dep in job.after:
                    await self.wait_published(dep)
                async with self.limiter.slot(job.descriptor.size):
                    background = is_background_layer(job.descriptor.size, largest=self.largest_blob)
                    staged = await _stage(job, source, store, jr, owner_label, self.progress,
                                          background=background)
                if job.parent is not None:
                    await self.wait_published(job.parent)
                if not jr.scope.cancel_called:
                    await trio.to_thread.run_sync(lambda: store.publish_layer(
                        staged, expected_diff_digest=job.diff_id,
                        # c/image records the blob digest even for a layer copied from a stored one
                        # with the same diffID (storage_dest.go); the size is then the tar's.
                        compressed_digest=job.descriptor.digest,
                        compressed_size=None if job.copy_from else job.descriptor.size))
                    staged = None
                    for key in sorted(jr.needed_by):
                        self.progress.layer_done(self.runs[key].label, job.descriptor.digest)
                    jr.published.set()
                    return
            jr.error = "cancelled: no image needs this layer any more"
        except _ImageFailed as exc:
            jr.error = str(exc)
        except Exception as exc:
            jr.error = f"layer {job.descriptor.digest}: {_describe(exc)}"
            log.debug("layer job %s failed", job.layer_id, exc_info=True)
        finally:
            if staged is not None:
                await _discard_staged(store, staged)
        jr.published.set()
        for key in sorted(jr.needed_by):
            self.image_failed(key, jr.error or "failed")

    async def commit(self, image_plan: ImagePlan) -> None:
        run = self.runs[image_plan.key]
        image = image_plan.image
        try:
            for step in image_plan.steps:
                await self.wait_published(step.layer_id)
            if run.result is not None:
                return
            top = image_plan.top_layer
            if top is None:
                raise PlanError(f"{run.label}: the image has no layers")
            rec = await trio.to_thread.run_sync(lambda: self.store.commit_image(
                image_id=image.image_id, top_layer=top, names=image.names, manifest=image.manifest_raw,
                manifest_digest=image.manifest_digest, config=image.config_raw,
                created=_created(image.config.created), index_manifest=image.index_raw,
                index_digest=image.index_digest))
        except _ImageFailed as exc:
            self.image_failed(image_plan.key, str(exc))
            return
        except Exception as exc:
            self.image_failed(image_plan.key, _describe(exc))
            return
        if run.result is not None:
            return
        pulled = sum(1 for s in image_plan.steps if s.action != "present")
        run.result = ImageResult(request=run.request, reference=image.names[0] if image.names else None,
                                 image_id=rec.id, manifest_digest=image.manifest_digest, error=None,
                                 layers_pulled=pulled, layers_reused=len(image_plan.steps) - pulled)
        self.progress.image_done(run.label, image_id=rec.id, error=None)


#: Blobs above this size are extracted in a child process (tether.store.tar.workers.ProcessLayerExtractor's
#: spawn_threshold); smaller ones in this process, so they need no prewarmed child.
_PREWARM_ABOVE = 4 * 1024 * 1024


def _prewarm_extractors(count: int) -> None:
    """tether.store.tar.workers.prewarm_workers(count), best effort."""
    from tether.store.tar.workers import prewarm_workers

    try:
        prewarm_workers(count)
    except OSError as exc:  # the layer's own spawn reports a real problem
        log.debug("prewarming extraction workers failed: %s", exc)


def is_background_layer(size: int, *, largest: int) -> bool:
    """Whether a blob of ``size`` bytes is off the critical path of a pull whose largest blob is ``largest``.

    A pull ends when its longest layer does, and a layer's work grows with its blob: layers under two
    thirds of the largest are extracted in the background (lower CPU priority, one thread; see
    ``Store.stage_layer``), so that on a busy machine the largest ones get the cores and the others fill
    the gaps.  Blobs of similar size are all critical: none of them is favoured.
    """
    return size * 3 < largest * 2


async def _stage(job: LayerJob, source: ImageSource | None, store: Store, jr: _JobRun, label: str,
                 progress: Progress, *, background: bool = False) -> Any:
    """Make the staged layer of ``job``: stream its blob (or copy the same-diffID layer) into a writer."""
    writer = await trio.to_thread.run_sync(lambda: store.stage_layer(layer_id=job.layer_id, parent=job.parent,
                                                                     background=background))
    try:
        if job.copy_from is not None:
            copy_from = job.copy_from

            def copy() -> None:
                for chunk in store.export_layer(copy_from):
                    writer.write(chunk)

            await trio.to_thread.run_sync(copy)
        else:
            if source is None:
                raise SourceError(f"{label}: no source for layer {job.descriptor.digest}")

            def on_written(n: int) -> None:
                jr.bytes_done += n
                progress.layer_bytes(label, job.descriptor.digest, jr.bytes_done)

            await _stream_blob(source, job.descriptor, writer, on_written)
        return await trio.to_thread.run_sync(writer.finish)
    except BaseException:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(writer.abort)
        raise


async def _discard_staged(store: Store, staged: Any) -> None:
    """Remove a staged layer that will not be published (cancelled or failed after staging)."""
    with trio.CancelScope(shield=True):
        await trio.to_thread.run_sync(store.discard_staged, staged)


__all__ = [
    "ImagePlan",
    "ImageResult",
    "LayerJob",
    "LayerStep",
    "PlanError",
    "PullPlan",
    "PullPolicy",
    "PullReport",
    "PullRequest",
    "default_jobs",
    "image_up_to_date",
    "layer_ids",
    "plan_pull",
    "pull",
]

