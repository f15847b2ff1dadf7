"""``pull``: every image of a request list into containers-storage, all at once, each blob streamed once.

1. **Resolve** every image at once (:mod:`tether.engine.copy.sources`: transports, short names): one manifest
   request each (``--pull missing``/``never``: none when the store has the name already; ``newer``: nothing
   more when the store has, under that name, the manifest the wanted platform gets: an index's entry is
   chosen without a request, :func:`tether.registry.resolve.choose_instance`), then the platform's manifest
   and the config (:func:`tether.registry.resolve.resolve_image`, the one resolution path).
2. **Policy**: the signature policy is enforced right after an image is resolved, before any of its layers is
   fetched or published (:class:`tether.engine.copy.verify.PolicyCheck`; a failure to evaluate rejects).
3. **Plan and execute** through the copy engine (:mod:`tether.engine.copy.execute`) into a
   :class:`~tether.engine.copy.destinations.storage.StorageDestination`: each image is planned as soon as it
   is resolved, its missing layers stream into the store concurrently, the image record is committed last.

One nursery owns the whole pull; one image's failure never fails the others.

The same pipeline, in ``mode="download"`` (``--download-only``), fetches every blob into the store's download
cache and commits nothing, and in ``mode="preview"`` (``--dry-run``) plans and writes nothing
(:mod:`tether.engine.copy.destinations.cache`). A name whose complete download is in the cache is applied from
there without a request (:mod:`tether.engine.copy.sources.cached`); what the cache keeps, and when it is cleaned,
is :mod:`tether.engine.copy.downloads`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import trio

from tether.engine.copy.clients import RegistryClients
from tether.engine.copy.destinations.cache import DownloadDestination, PreviewDestination
from tether.engine.copy.destinations.storage import StorageDestination
from tether.engine.copy.downloads import (
    DownloadRecord,
    blob_cache,
    clean_cache,
    find_download,
    platform_text,
    record_key,
)
from tether.engine.copy.execute import Executor, ImageRun, default_jobs, describe_error
from tether.engine.copy.image import ImageSource, PullRequest, SourceImage
from tether.engine.copy.plan import image_up_to_date
from tether.engine.copy.preview import ImagePreview, in_request_order
from tether.engine.copy.progress import Progress
from tether.engine.copy.sources import open_image_source
from tether.engine.copy.sources.cached import CachedRegistrySource
from tether.engine.copy.sources.registry import RegistrySource
from tether.engine.copy.verify import PolicyCheck
from tether.engine.errors import EngineError
from tether.registry.errors import ManifestError, PlatformError
from tether.registry.manifest import compute_digest, host_platform
from tether.registry.resolve import RawManifest, choose_instance
from tether.store.errors import StoreError

if TYPE_CHECKING:
    from typing import TypeAlias

    from tether.engine.copy.destinations import Destination
    from tether.engine.options import CommonOptions
    from tether.registry.client import RateLimit, RegistryClient
    from tether.registry.manifest import ImageConfig, Platform
    from tether.store.containers_storage import ImageRecord, LayerRecord, Store

    StorageRun: TypeAlias = ImageRun[SourceImage, Any]

log = logging.getLogger(__name__)

PullPolicy = Literal["always", "missing", "newer", "never"]
#: ``pull``: into the store; ``download``: into its download cache only; ``preview``: plan, write nothing.
PullMode = Literal["pull", "download", "preview"]

#: c/image storage_dest.go: each manifest is the big data item ``manifest-<digest>``.
MANIFEST_BIG_DATA = "manifest"


class PullPolicyError(EngineError):
    """The pull policy forbids what the image needs (``never`` and the store does not have it)."""


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
    warning: str | None = None  # e.g. the image is for another platform (podman warns too)
    preview: ImagePreview | None = None    # mode "preview": what the image would take (None: present)
    downloaded: bool = False               # mode "download": its blobs are in the download cache
    from_download: bool = False            # applied from a complete download, without the network

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


def _result(request: PullRequest, run: StorageRun, present: ImageRecord | None) -> ImageResult:
    image = run.image
    if present is not None:
        local = run.source.local_names if run.source is not None else ()
        name = next((n for n in local if n in present.names), present.names[0] if present.names else None)
        return ImageResult(request=request, reference=name, image_id=present.id, manifest_digest=present.digest,
                           error=None)
    reference = image.names[0] if image is not None and image.names else None
    if run.committed is not None and run.error is None and image is not None and run.plan is not None:
        made = run.plan.made_here
        committed = run.committed
        return ImageResult(request=request, reference=reference, image_id=getattr(committed, "id", image.image_id),
                           manifest_digest=image.manifest_digest, error=None, layers_pulled=made,
                           layers_reused=len(run.plan.steps) - made,
                           preview=committed if isinstance(committed, ImagePreview) else None,
                           downloaded=isinstance(committed, DownloadRecord),
                           from_download=isinstance(run.source, CachedRegistrySource))
    return ImageResult(request=request, reference=reference, image_id=image.image_id if image else None,
                       manifest_digest=image.manifest_digest if image else None, error=run.error or "not pulled")


SourceOpener = Callable[[PullRequest, RegistryClients, AsyncExitStack], Awaitable[ImageSource]]


async def _open_by_name(request: PullRequest, clients: RegistryClients, stack: AsyncExitStack) -> ImageSource:
    return await open_image_source(request, clients=clients, stack=stack)


async def pull(requests: Sequence[PullRequest | str], *, store: Store, options: CommonOptions,
               jobs: int | None = None, policy: PullPolicy = "newer", progress: Progress | None = None,
               client: RegistryClient | None = None, mode: PullMode = "pull", rate_limit: RateLimit | None = None,
               keep_downloads: Callable[[str], bool] | None = None) -> PullReport:
    """Pull every image of ``requests`` into ``store``, all at once; never raises for one image's failure.

    ``policy`` as podman's ``--pull``: ``missing`` makes no request for an image the store has by name (unless
    a platform is asked for: then as ``newer``); ``newer`` fetches what the name points at and stops there when
    the store has, under that name, the manifest the wanted platform gets from it; ``always`` resolves and
    copies every image (layers the store has are not fetched again; the name moves to the image); ``never``
    asks no registry and fails an image the store does not have by name. ``client`` replaces the registry
    clients (tests). Returns a :class:`PullReport` in request order.

    A name with a complete download in the store's cache (``mode="download"`` made it) is applied from there
    without a request, unless ``policy`` is ``always``. ``mode``, ``rate_limit`` and ``keep_downloads``: see
    :func:`copy_into_store`.
    """
    reqs = [r if isinstance(r, PullRequest) else PullRequest(name=r) for r in requests]
    registries = any(not r.name.startswith(("oci:", "oci-archive:")) for r in reqs)
    return await copy_into_store(reqs, _open_by_name, store=store, options=options, jobs=jobs, policy=policy,
                                 progress=progress, client=client, load_registries=registries, mode=mode,
                                 rate_limit=rate_limit, keep_downloads=keep_downloads)


async def copy_into_store(requests: Sequence[PullRequest], open_source: SourceOpener, *, store: Store,
                          options: CommonOptions, jobs: int | None = None, policy: PullPolicy = "newer",
                          progress: Progress | None = None, client: RegistryClient | None = None,
                          check_signatures: bool = True, load_registries: bool = False, mode: PullMode = "pull",
                          rate_limit: RateLimit | None = None, keep_downloads: Callable[[str], bool] | None = None
                          ) -> PullReport:
    """The pull pipeline for sources ``open_source`` opens (by name for :func:`pull`; a store's images for
    ``bound install``). ``check_signatures`` False: the sources were verified when they were stored.

    ``load_registries``: read registries.conf before any image is tried, so that a broken one fails the whole
    copy once (:class:`~tether.registry.errors.ConfigError`, naming the file and line or key) instead of every
    image that needs it, each in its own words.

    ``mode``: ``pull`` (into the store), ``download`` (every blob into the store's download cache, verified, and
    a record of each image; nothing committed) or ``preview`` (resolve and plan, write nothing: each result's
    ``preview``). ``rate_limit`` paces every blob stream of the copy together. ``keep_downloads`` (only under
    the exclusive store lock: ``bound sync``) says by image name which download records stay; every cache file
    no record lists is then removed (:func:`tether.engine.copy.downloads.clean_cache`).
    """
    reqs = list(requests)
    progress = progress if progress is not None else Progress()
    limit = jobs if jobs is not None and jobs > 0 else default_jobs()
    present: dict[int, ImageRecord] = {}
    warnings: dict[int, str | None] = {}
    platforms: dict[int, str] = {}
    records: list[ImageRecord] = []
    layers: list[LayerRecord] = []
    listed = trio.Event()
    cache = blob_cache(store)
    destination: Destination[SourceImage, Any, Any]
    if mode == "preview":
        destination = PreviewDestination(store, layers=layers, cache=cache)
    elif mode == "download":
        destination = DownloadDestination(store, layers=layers, cache=cache, platforms=platforms)
    else:
        destination = StorageDestination(store, layers=layers, cache=cache)
    policy_check = PolicyCheck(options)

    def committed(run: StorageRun) -> None:
        assert run.committed is not None
        image_id = getattr(run.committed, "id", None) or (run.image.image_id if run.image is not None else None)
        progress.image_done(run.label, image_id=image_id, error=None)

    try:
        async with AsyncExitStack() as stack:
            clients = RegistryClients(stack, options, connections=max(limit, 4), client=client, rate_limit=rate_limit)
            if load_registries and client is None:
                clients.registries()

            async def list_store() -> None:
                # Read the store while the manifests are being fetched.
                images, stored_layers = await trio.to_thread.run_sync(lambda: (store.list_images(),
                                                                               store.list_layers()))
                records.extend(images)
                layers.extend(stored_layers)
                listed.set()

            def finish_present(run: StorageRun, record: ImageRecord) -> None:
                present[run.key] = record
                executor.finished(run.key)
                progress.image_done(run.label, image_id=record.id, error=None, up_to_date=True)

            async def resolve_one(run: StorageRun, request: PullRequest) -> None:
                progress.image_started(run.label)
                try:
                    source = await open_source(request, clients, stack)
                    wanted = request.platform or options.wanted_platform()
                    platforms[run.key] = platform_text(wanted)
                    if mode != "download" and policy != "always" and isinstance(source, RegistrySource):
                        # Downloaded ahead (--download-only): applied as it was downloaded, without a request.
                        record = await trio.to_thread.run_sync(
                            find_download, cache, source.local_names, platforms[run.key])
                        if record is not None and request.digest in (None, record.top):
                            source = CachedRegistrySource(source, record, cache)
                    run.source = source
                    # podman (c/common libimage pull.go): a platform asked for turns "missing" into "newer",
                    # as the image stored under the name may be another platform's; "never" never asks.
                    if policy == "never" or (policy == "missing" and wanted is None):
                        await listed.wait()
                        found = image_up_to_date(records, names=source.local_names, digest=None)
                        if found is not None:
                            finish_present(run, found)
                            return
                        if policy == "never" and not isinstance(source, CachedRegistrySource):
                            raise PullPolicyError(f"not in the store {store.root} (pull policy never: no "
                                                  "registry is asked)")
                    nursery.start_soon(source.prepare)  # the ping overlaps the store listing
                    if policy != "always":
                        await listed.wait()
                        # podman asks what the name points at with a GET (c/common libimage
                        # hasDifferentDigest); a HEAD says as much for an unchanged tag when the store holds
                        # the bytes it names, and moves no manifest (nor, on Docker Hub, a rate-limit token).
                        if any(set(source.local_names) & set(r.names) for r in records):
                            digest = await source.top_digest()
                            if digest is not None:
                                found = await trio.to_thread.run_sync(lambda: stored_up_to_date(
                                    store, records, names=source.local_names, digest=digest, platform=wanted))
                                if found is not None:
                                    finish_present(run, found)
                                    return
                    top = await source.read_top()
                    if policy != "always":
                        # Up to date only when the store has, under the name, the manifest this platform gets
                        # from what the name points at now (an index's entry; the manifest itself otherwise):
                        # the index digest alone would keep another platform's image.
                        instance = choose_instance(top, wanted)
                        await listed.wait()
                        found = image_up_to_date(records, names=source.local_names,
                                                 digest=instance.digest if instance is not None else top.digest)
                        if found is not None:
                            finish_present(run, found)
                            return
                    image = await source.resolve(platform=wanted, top=top)
                    warnings[run.key] = platform_mismatch(image.config, wanted)
                    if check_signatures:
                        await policy_check.enforce(image=image, source=source, name=request.name)
                    if mode != "preview" and image.transport == "docker" and not isinstance(
                            source, CachedRegistrySource):
                        # Before any blob is kept: whose blobs they are, for the cleaners (not durable: a hint).
                        pending = DownloadRecord.of(image, platform=platforms[run.key], complete=False)
                        await trio.to_thread.run_sync(lambda: cache.write_record(pending.key, pending.to_json()))
                    executor.add(run.key, image)
                except Exception as exc:
                    executor.image_failed(run.key, describe_error(exc))
                finally:
                    executor.resolved()

            # One nursery owns the whole pull: the store listing, every resolution, every layer job and
            # every commit; an image's layers start as soon as it is resolved and planned.
            async with trio.open_nursery() as nursery:
                executor: Executor[SourceImage, Any, Any] = Executor(
                    nursery=nursery, destination=destination, labels=[r.name for r in reqs], jobs=limit,
                    progress=progress, on_commit=committed, small_blobs_free=limit != jobs)
                nursery.start_soon(list_store)
                for run, request in zip(executor.runs, reqs, strict=True):
                    nursery.start_soon(resolve_one, run, request)
        if mode != "preview":
            await _clean(cache, executor.runs, platforms, present, mode=mode, keep=keep_downloads)
    finally:
        progress.close()
    results = [replace(_result(request, run, present.get(run.key)), warning=warnings.get(run.key))
               for request, run in zip(reqs, executor.runs, strict=True)]
    if mode == "preview":
        ordered = in_request_order([r.preview for r in results])
        results = [replace(r, preview=p) for r, p in zip(results, ordered, strict=True)]
    return PullReport(results=tuple(results))


async def _clean(cache: Any, runs: Sequence[StorageRun], platforms: dict[int, str], present: dict[int, ImageRecord],
                 *, mode: PullMode, keep: Callable[[str], bool] | None) -> None:
    """Records of the images now in the store go (with their files), then what :func:`clean_cache` says."""
    done: list[str] = []
    if mode == "pull":
        for run in runs:
            names: Sequence[str] = ()
            if run.image is not None and run.committed is not None:
                names = run.image.names
            elif run.key in present and run.source is not None:
                names = run.source.local_names
            done.extend(record_key(name, platforms[run.key]) for name in names if run.key in platforms)
    try:
        with trio.CancelScope(shield=True):
            report = await trio.to_thread.run_sync(lambda: clean_cache(cache, done=done, wanted=keep))
    except (OSError, StoreError) as exc:  # the pull itself is done; a cleaner that fails costs space only
        log.warning("cleaning the download cache %s: %s", cache.directory, exc)
        return
    if report.records or report.blobs:
        log.info("download cache: %d record(s) and %d blob file(s) removed", len(report.records), len(report.blobs))


def stored_up_to_date(store: Store, records: Sequence[ImageRecord], *, names: Sequence[str], digest: str,
                      platform: Platform | None) -> ImageRecord | None:
    """The stored image that makes a ``newer`` pull unnecessary, knowing only the ``digest`` the name points at:
    the store's own copy of that manifest (big data ``manifest-DIGEST``, checked against the digest) decides
    as the registry's bytes would (an index's entry for ``platform``, :func:`choose_instance`); ``None`` when
    the store does not hold it (then the registry is asked). Blocking: reads big data.
    """
    key = f"{MANIFEST_BIG_DATA}-{digest}"
    for record in records:
        if not set(names) & set(record.names) or key not in record.big_data_names:
            continue
        try:
            raw = store.image_big_data(record.id, key)
        except StoreError:
            continue
        if compute_digest(raw, digest.split(":", 1)[0]) != digest:
            continue
        try:
            instance = choose_instance(RawManifest(raw, "", digest), platform)
        except PlatformError:
            raise
        except ManifestError:
            continue
        return image_up_to_date(records, names=names, digest=instance.digest if instance is not None else digest)
    return None


def platform_mismatch(config: ImageConfig, wanted: Platform | None) -> str | None:
    """podman's warning when the image pulled is not for the platform asked for (a single-platform image for
    another architecture, or an index entry without a platform): ``None`` when it matches.

    c/common libimage (``matchesPlatform``) compares OS and architecture, and the variant only when both name
    one."""
    want = wanted or host_platform()
    variant_differs = bool(want.variant and config.variant and want.variant != config.variant)
    if (config.os, config.architecture) == (want.os, want.architecture) and not variant_differs:
        return None
    have = "/".join(p for p in (config.os, config.architecture, config.variant) if p)
    expected = "/".join(p for p in (want.os, want.architecture, want.variant) if p)
    return f"image platform ({have}) does not match the expected platform ({expected})"


__all__ = ["ImageResult", "PullMode", "PullPolicy", "PullPolicyError", "PullReport", "PullRequest", "SourceOpener",
           "copy_into_store", "platform_mismatch", "pull", "stored_up_to_date"]
