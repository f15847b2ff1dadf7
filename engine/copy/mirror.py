"""``tether mirror sync`` and ``tether mirror prune``: copy images to a mirror, byte for byte, through the copy
engine.

Sources are registry references (``quay.io/org/app:1.0``, ``docker://...``), ``oci:DIR[:REF]`` and
``oci-archive:FILE[:REF]`` (without REF: every named entry), or the bound images of a root or of every
deployment of an ostree sysroot. Destinations and naming: :mod:`tether.engine.copy.mirror_naming`.

What is copied: the manifest a reference points at, byte for byte (digests preserved). An index is kept whole
with ``--all-platforms`` (and always for references pinned by digest: a new index would break the pin);
otherwise a new index holding the chosen platforms' entries (their descriptors verbatim) is written, unless
that selection is the whole index, whose bytes are then kept. Every blob is verified while it streams and
written verified.

Each image is read (its manifests, :func:`read_tree`) and handed to the copy engine's executor as soon as it is
known; blobs move concurrently (``--jobs``) and once each, however many images share them; the destination
skips what it has, mounts what its registry holds elsewhere, and writes manifests after their blobs. At the end
the destination is checked (:meth:`verify`) and finished (an archive is written). ``--registries-conf-out``
writes a registries.conf.d drop-in (:func:`~tether.engine.copy.mirror_naming.render_registries_conf`) that
sends exactly the synced repositories to the mirror.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import trio

from tether.engine.copy.clients import RegistryClients
from tether.engine.copy.destinations import Destination
from tether.engine.copy.destinations.blobs import BlobOutcome, ManifestTree, distributable_blobs
from tether.engine.copy.destinations.layout import ArchiveDestination, LayoutDestination
from tether.engine.copy.destinations.registry import RegistryDestination
from tether.engine.copy.execute import Executor, describe_error
from tether.engine.copy.image import ImageSource, PullRequest
from tether.engine.copy.mirror_naming import (
    DestinationName,
    MirrorMapping,
    filter_index,
    parse_destination,
    render_registries_conf,
)
from tether.engine.copy.progress import Progress
from tether.engine.copy.sources.layout import LayoutSource, LayoutTransport, open_layout_reader
from tether.engine.copy.sources.registry import RegistrySource
from tether.engine.errors import MirrorError, UsageError
from tether.registry.errors import InvalidReferenceError, RegistryError
from tether.registry.manifest import (
    Descriptor,
    ImageIndex,
    ImageManifest,
    Platform,
    choose_platform,
    compute_digest,
    host_platform,
    parse_manifest,
    parse_platform,
)
from tether.registry.reference import OCIArchiveName, OCILayoutName, Reference, parse_image_name, parse_reference
from tether.registry.registries_conf import resolve_short_name
from tether.registry.resolve import RawManifest, read_child
from tether.registry.trust.registries_d import load_registries_d
from tether.store.errors import StoreError
from tether.store.oci import OCILayout, PruneResult

if TYPE_CHECKING:
    from tether.engine.options import CommonOptions
    from tether.registry.client import RegistryClient

#: Blobs copied at once across all images (containers/image copies up to 6 per image, images in turn).
DEFAULT_JOBS = 6


@dataclass(frozen=True)
class ImageSyncResult:
    """What happened to one image."""

    source: str
    destination: str | None
    digest: str | None
    platforms: tuple[str, ...] = ()
    blobs_copied: int = 0
    blobs_present: int = 0
    blobs_mounted: int = 0
    bytes_copied: int = 0
    signatures_copied: int = 0
    error: str | None = None


@dataclass(frozen=True)
class SyncReport:
    """Every image's result; ``ok`` when all succeeded and the destination verified."""

    destination: str
    images: tuple[ImageSyncResult, ...]
    problems: tuple[str, ...] = ()
    registries_conf: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.problems and all(r.error is None for r in self.images)

    def summary(self) -> str:
        lines = []
        for r in self.images:
            if r.error is not None:
                lines.append(f"FAILED {r.source}: {r.error}")
            else:
                lines.append(
                    f"synced {r.source} -> {r.destination} ({r.digest}; {r.blobs_copied} blobs copied, "
                    f"{r.blobs_mounted} mounted, {r.blobs_present} already there, {r.bytes_copied} bytes"
                    + (f", {r.signatures_copied} signatures" if r.signatures_copied else "")
                    + ")"
                )
        lines += [f"PROBLEM {p}" for p in self.problems]
        return "\n".join(lines)


class MirrorDestination(Destination[ManifestTree, BlobOutcome, int], Protocol):
    """A blob destination as a mirror uses it: naming, then a check and a finish once every image is written."""

    def target_for(self, source_ref: Reference) -> tuple[str, Reference | None]: ...

    async def verify(self, images: Sequence[ManifestTree]) -> list[str]: ...

    async def finish(self, images: Sequence[ManifestTree]) -> None: ...


@dataclass(frozen=True)
class _Entry:
    """One image to mirror: the request it came from, its full source name, where it is read from."""

    request: PullRequest
    source_ref: Reference
    source: ImageSource


def _platform_text(p: Platform | None) -> str:
    if p is None:
        return "unknown"
    return f"{p.os}/{p.architecture}" + (f"/{p.variant}" if p.variant else "")


async def read_tree(source: ImageSource, *, source_ref: Reference, target: str, dest_ref: Reference | None,
                    request_platform: Platform | None, all_platforms: bool, platforms: Sequence[Platform]
                    ) -> ManifestTree:
    """Read what a mirror writes for one image: the top manifest (an index narrowed to the chosen platforms
    unless kept whole), every manifest under it (each verified against its index entry) and their blobs."""
    top = await source.read_top()
    parsed = parse_manifest(top.raw, top.media_type)
    source_digest = top.digest
    if isinstance(parsed, ImageManifest):
        return ManifestTree(source_ref=source_ref, target=target, dest_ref=dest_ref, top=top,
                            source_digest=source_digest, children=(), blobs=tuple(distributable_blobs(parsed)))
    if all_platforms or source_ref.digest is not None:
        chosen = list(parsed.manifests)
    else:
        wanted = list(platforms) or [host_platform()]
        if request_platform is not None and request_platform not in wanted:
            wanted.append(request_platform)
        chosen = []
        for p in wanted:
            d = choose_platform(parsed, p)  # PlatformError names the platform and the image
            if d not in chosen:
                chosen.append(d)
        raw = filter_index(top.raw, [d.digest for d in chosen])
        if raw is not top.raw:
            top = RawManifest(raw, top.media_type, compute_digest(raw))
    children: list[RawManifest] = []
    blobs: dict[str, Descriptor] = {}

    async def read_children(entries: Sequence[Descriptor]) -> None:
        for d in entries:
            child = await read_child(source, d)
            manifest = parse_manifest(child.raw, d.media_type or child.media_type)
            if isinstance(manifest, ImageIndex):  # nested index: everything under it
                await read_children(manifest.manifests)
            else:
                for blob in distributable_blobs(manifest):
                    blobs.setdefault(blob.digest, blob)
            if all(c.digest != d.digest for c in children):
                children.append(RawManifest(child.raw, d.media_type or manifest.media_type, d.digest))

    await read_children(chosen)
    return ManifestTree(source_ref=source_ref, target=target, dest_ref=dest_ref, top=top,
                        source_digest=source_digest, children=tuple(children), blobs=tuple(blobs.values()),
                        platforms=tuple(_platform_text(d.platform) for d in chosen))


async def _expand_requests(requests: Sequence[PullRequest], stack: AsyncExitStack,
                           clients: RegistryClients) -> list[_Entry]:
    """Each request -> the images it names. Layout names without REF expand to every named entry; registry
    short names need exactly one candidate."""
    out: list[_Entry] = []
    for req in requests:
        parsed = parse_image_name(req.name)
        if isinstance(parsed, OCILayoutName | OCIArchiveName):
            transport: LayoutTransport = "oci-archive" if isinstance(parsed, OCIArchiveName) else "oci"
            reader = await stack.enter_async_context(open_layout_reader(transport, parsed.path))
            if parsed.reference is None and not (isinstance(parsed, OCILayoutName) and parsed.index is not None):
                entries = [e for e in reader.entries() if e.ref_name]
                if not entries:
                    raise UsageError(f"{req.name}: holds no named images to mirror")
            else:
                ref_text = parsed.reference
                if isinstance(parsed, OCILayoutName) and parsed.index is not None:
                    ref_text = f"@{parsed.index}"
                entries = [reader.resolve(ref_text)]
            for entry in entries:
                if not entry.ref_name:
                    raise UsageError(f"{req.name}: the entry has no org.opencontainers.image.ref.name to mirror it as")
                try:
                    source_ref = parse_reference(entry.ref_name)
                except InvalidReferenceError as exc:
                    raise UsageError(
                        f"{req.name}: entry {entry.ref_name!r} is not a full image reference: {exc}"
                    ) from None
                source = LayoutSource(reader=reader, entry=entry, names=(),
                                      description=f"{reader.description}:{entry.ref_name or entry.digest}")
                out.append(_Entry(req, source_ref, source))
            continue
        if parsed.reference is not None:
            ref = parsed.reference.tag_name_only()
        else:
            candidates = resolve_short_name(clients.registries(), parsed.name, tty=False)
            if len(candidates) != 1:
                raise UsageError(
                    f"{req.name}: short name with {len(candidates)} candidates; mirror sync needs a fully qualified "
                    f"name (one of {', '.join(str(c) for c in candidates)})"
                )
            ref = candidates[0].tag_name_only()
        client = await clients.get(authfile=req.authfile, cert_dir=req.cert_dir, tls_verify=req.tls_verify)
        out.append(_Entry(req, ref, RegistrySource(client=client, candidates=(ref,), name=req.name)))
    return out


def _check_collisions(entries: Sequence[tuple[_Entry, str]]) -> None:
    seen: dict[str, str] = {}
    for entry, target in entries:
        other = seen.setdefault(target, str(entry.source_ref))
        if other != str(entry.source_ref):
            raise UsageError(
                f"{other} and {entry.source_ref} would both be mirrored as {target}; use --scoped "
                "(or a namespace) to keep them apart"
            )


async def _open_destination(dest: DestinationName, *, clients: RegistryClients, options: CommonOptions,
                            scoped: bool, dest_tls_verify: bool | None, remove_signatures: bool
                            ) -> MirrorDestination:
    if dest.kind == "oci":
        assert dest.path is not None
        return await LayoutDestination.open(dest.path)
    if dest.kind == "oci-archive":
        assert dest.path is not None
        return await ArchiveDestination.open_archive(dest.path)
    client = await clients.get(tls_verify=dest_tls_verify if dest_tls_verify is not None else options.tls_verify)
    registries_d = None
    if not remove_signatures:
        registries_d = load_registries_d(options.registries_d, home=options.environ.get("HOME"))
    return RegistryDestination(dest, client, scoped=scoped, registries_d=registries_d)


async def sync(
    requests: Sequence[PullRequest | str],
    *,
    to: str | DestinationName,
    options: CommonOptions,
    all_platforms: bool = False,
    platforms: Sequence[Platform] = (),
    scoped: bool = False,
    jobs: int = DEFAULT_JOBS,
    dest_tls_verify: bool | None = None,
    registries_conf_out: Path | None = None,
    remove_signatures: bool = False,
    progress: Progress | None = None,
    client: RegistryClient | None = None,
) -> SyncReport:
    """Mirror ``requests`` to ``to`` (see the module doc). Returns a report; raises only for usage errors found
    before anything is copied. ``client`` replaces the registry clients of both sides (tests)."""
    dest = parse_destination(to) if isinstance(to, str) else to
    reqs = [r if isinstance(r, PullRequest) else PullRequest(name=r) for r in requests]
    if not reqs:
        raise UsageError("mirror sync: no images to mirror")
    if registries_conf_out is not None and dest.kind != "docker":
        raise UsageError("--registries-conf-out needs a docker:// destination (registries.conf mirrors are registries)")
    progress = progress if progress is not None else Progress()
    async with AsyncExitStack() as stack:
        clients = RegistryClients(stack, options, connections=8, client=client)
        entries = await _expand_requests(reqs, stack, clients)
        destination = await _open_destination(dest, clients=clients, options=options, scoped=scoped,
                                              dest_tls_verify=dest_tls_verify, remove_signatures=remove_signatures)
        unique: list[tuple[_Entry, str, Reference | None]] = []
        seen_sources: set[str] = set()
        for entry in entries:
            if str(entry.source_ref) not in seen_sources:
                seen_sources.add(str(entry.source_ref))
                unique.append((entry, *destination.target_for(entry.source_ref)))
        _check_collisions([(e, target) for e, target, _ in unique])

        try:
            async with trio.open_nursery() as nursery:
                executor: Executor[ManifestTree, BlobOutcome, int] = Executor(
                    nursery=nursery, destination=destination, labels=[str(e.source_ref) for e, _, _ in unique],
                    jobs=max(1, jobs), progress=progress,
                    on_commit=lambda run: progress.image_done(
                        run.label, image_id=run.image.top.digest.split(":", 1)[-1] if run.image else None,
                        error=None))

                async def read_one(key: int, entry: _Entry, target: str, dest_ref: Reference | None) -> None:
                    progress.image_started(str(entry.source_ref))
                    executor.runs[key].source = entry.source
                    try:
                        async with executor.limiter.slot(0):
                            tree = await read_tree(entry.source, source_ref=entry.source_ref, target=target,
                                                   dest_ref=dest_ref, request_platform=entry.request.platform,
                                                   all_platforms=all_platforms, platforms=platforms)
                        executor.add(key, tree)
                    except (RegistryError, StoreError, MirrorError, UsageError) as exc:
                        executor.image_failed(key, describe_error(exc))
                    finally:
                        executor.resolved()

                for key, (entry, target, dest_ref) in enumerate(unique):
                    nursery.start_soon(read_one, key, entry, target, dest_ref)
        finally:
            progress.close()

        good = [run.image for run in executor.runs if run.committed is not None and run.image is not None]
        problems: list[str] = []
        if good:
            try:
                problems = await destination.verify(good)
                if not problems:
                    await destination.finish(good)
            except (RegistryError, StoreError, MirrorError) as exc:
                problems.append(f"{destination.description}: {exc}")
        results = []
        for run, (entry, target, _) in zip(executor.runs, unique, strict=True):
            tree = run.image
            if run.committed is None or tree is None:
                results.append(ImageSyncResult(source=str(entry.source_ref), destination=target, digest=None,
                                               error=run.error or "not copied"))
                continue
            owned = [jr.outcome for jr in executor.jobs.values()
                     if jr.job.source_key == run.key and jr.outcome is not None]
            results.append(ImageSyncResult(
                source=str(entry.source_ref), destination=target, digest=tree.top.digest, platforms=tree.platforms,
                blobs_copied=sum(1 for o in owned if o.how == "copied"),
                blobs_present=sum(1 for o in owned if o.how == "present"),
                blobs_mounted=sum(1 for o in owned if o.how == "mounted"),
                bytes_copied=sum(o.size for o in owned if o.how == "copied"),
                signatures_copied=run.committed))
        written_conf: Path | None = None
        if registries_conf_out is not None and good and not problems:
            mappings = [
                MirrorMapping(
                    source=Reference(t.source_ref.domain, t.source_ref.path),
                    mirror=f"{t.dest_ref.domain}/{t.dest_ref.path}" if t.dest_ref else "",
                    by_tag=t.source_ref.tag is not None,
                    by_digest=t.source_ref.digest is not None,
                )
                for t in good
            ]
            conf = clients.registries()
            insecure = dest_tls_verify is False or (dest_tls_verify is None and options.tls_verify is False)
            if not insecure and dest.host is not None:
                registry = conf.find_registry(dest.host)
                insecure = bool(registry and registry.insecure)
            text = render_registries_conf(mappings, mirror_insecure=insecure, conf=conf)
            await trio.to_thread.run_sync(_write_text_atomically, registries_conf_out, text)
            written_conf = registries_conf_out
    return SyncReport(destination=str(dest), images=tuple(results), problems=tuple(problems),
                      registries_conf=written_conf)


def _write_text_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def prune(target: str, *, remove: Sequence[str] = ()) -> PruneResult:
    """``mirror prune oci:DIR``: drop the ``remove`` references, then every unreferenced blob."""
    if not target.startswith("oci:"):
        raise UsageError(f"mirror prune {target}: expected oci:DIR (an oci-archive is always written pruned)")
    path = target[len("oci:") :]
    if not path or ":" in path:
        raise UsageError(f"mirror prune {target}: expected oci:DIR without :REF")
    layout = OCILayout.open(Path(path))
    if remove:
        names = {e.ref_name for e in layout.entries()}
        missing = [r for r in remove if r not in names]
        if missing:
            raise MirrorError(f"{target}: no such references: {', '.join(missing)}")
        layout.remove_references(remove)
    return layout.prune()


def platforms_from_text(values: Iterable[str]) -> tuple[Platform, ...]:
    """``--platform`` values (``os/arch[/variant]``, also comma-separated) parsed."""
    out: list[Platform] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            if part.count("/") not in (1, 2):
                raise UsageError(f"--platform {part!r}: expected OS/ARCH or OS/ARCH/VARIANT")
            out.append(parse_platform(part))
    return tuple(out)



__all__ = [
    "DEFAULT_JOBS",
    "ImageSyncResult",
    "SyncReport",
    "platforms_from_text",
    "prune",
    "read_tree",
    "sync",
]
