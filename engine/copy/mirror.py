"""``tether mirror sync`` and ``tether mirror prune``: copy images to a mirror, byte for byte.

Sources are registry references (``quay.io/org/app:1.0``, ``docker://...``), ``oci:DIR[:REF]`` and
``oci-archive:FILE[:REF]`` (without REF: every named entry), or the bound images of a root or of
every deployment of an ostree sysroot. Destinations (:func:`parse_destination`):

* ``oci:DIR`` -- one OCI layout for every image, blobs shared, updated in place; each image's entry
  carries its full source reference as ``org.opencontainers.image.ref.name`` (re-syncing replaces
  the entry of the same name, ``mirror prune`` reclaims blobs nothing refers to any more);
* ``oci-archive:FILE`` -- the same, as one tar written atomically; the work happens in a staging
  layout beside FILE (``.FILE.tether-staging``) that an interrupted run resumes from;
* ``docker://HOST[:PORT][/NAMESPACE]`` -- a registry; each image goes to
  ``NAMESPACE/<last component of its repository>:<tag>`` exactly as ``skopeo sync`` names it
  (``cmd/skopeo/sync.go``: ``path.Base`` of the source reference), or with ``--scoped`` to
  ``NAMESPACE/<host>/<repository path>:<tag>``. skopeo writes the source host verbatim there, which
  is not a valid repository path for a host with a port (``127.0.0.1:5000``); tether writes the
  port after an underscore (``127.0.0.1_5000``), which cannot occur in a host name, so the
  mapping stays unambiguous.

What is copied: the manifest a reference points at, byte for byte (digests preserved). An index is
kept whole with ``--all-platforms`` (and always for references pinned by digest: a new index would
break the pin); otherwise a new index holding the chosen platforms' entries (their descriptors
verbatim) is written, unless that selection is the whole index, whose bytes are then kept. Every
blob is verified while it streams (the registry client and the layout reader check digest and
size) and written verified (layout blobs: temp file, fsync, rename).

Blobs already at the destination are skipped (layout: present with the right size; registry: a
``HEAD``), a blob already pushed to another repository of the destination registry during the run
(or living in the source repository on the same registry) is cross-repository mounted, and blobs
move concurrently (``--jobs``) and once each, however many images share them. Manifests are written
after all their blobs, children before the index, and a layout's index.json entry last, so an
interrupted sync leaves no reference to a partial image; a re-run skips every blob that arrived.
At the end the destination is checked: a registry's manifests are read back and compared by digest and
every blob is HEADed; a layout's entries must name the written digests and every blob they reach must be
present with its size (its content was hashed when written). Signatures (sigstore attachments, lookaside
files) are copied along for registry -> registry, unless ``remove_signatures``.

``--registries-conf-out`` writes a registries.conf.d drop-in (:func:`render_registries_conf`) that
sends exactly the synced repositories to the mirror.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, aclosing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import trio

from tether.engine.copy.layouts import LayoutReader, open_layout_reader
from tether.engine.copy.progress import Progress
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
)
from tether.registry.reference import (
    OCIArchiveName,
    OCILayoutName,
    Reference,
    parse_image_name,
    parse_reference,
)
from tether.store.errors import StoreError
from tether.store.oci import IndexEntry, OCIArchive, OCILayout, PruneResult, write_oci_archive

if TYPE_CHECKING:
    from tether.engine.options import CommonOptions
    from tether.registry.client import RegistryClient
    from tether.registry.registries_conf import PullSource, RegistriesConf
    from tether.registry.registries_d import RegistriesD

log = logging.getLogger(__name__)

__all__ = [
    "Destination",
    "ImageSyncResult",
    "MirrorMapping",
    "SyncReport",
    "SyncRequest",
    "destination_reference",
    "filter_index",
    "mirror_repository",
    "parse_destination",
    "prune",
    "render_registries_conf",
    "scoped_host_component",
    "sync",
]

#: Blobs copied at once across all images (containers/image copies up to 6 per image, images in turn).
DEFAULT_JOBS = 6
#: Read-back checks (manifest GETs, blob HEADs) in flight at once.
VERIFY_JOBS = 8
#: Bytes gathered from the network before one thread hop writes them to a layout blob.
WRITE_GROUP_BYTES = 1024 * 1024
#: A manifest or index is at most this big (containers/image: 4 MiB).
MAX_MANIFEST_SIZE = 4 * 1024 * 1024

INDEX_TYPES = frozenset(
    {"application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"}
)
#: Layers that must not be pushed anywhere (Windows base layers): skopeo leaves them out too.
FOREIGN_LAYER_TYPES = frozenset(
    {
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    }
)

# distribution/reference: host (domain or IP, optional port) and path components.
_HOST_RE = re.compile(
    r"^(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*"
    r"|\[[a-fA-F0-9:]+\])(?::[0-9]+)?$"
)
_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*$")


# ---------------------------------------------------------------------------------------------------
# destinations and naming (pure)


@dataclass(frozen=True, kw_only=True)
class Destination:
    """Where a sync writes: an OCI layout, an oci-archive, or a registry (host + namespace)."""

    kind: Literal["oci", "oci-archive", "docker"]
    path: Path | None = None
    host: str | None = None
    namespace: str = ""

    def __str__(self) -> str:
        if self.kind == "docker":
            return f"docker://{self.host}" + (f"/{self.namespace}" if self.namespace else "")
        return f"{self.kind}:{self.path}"


def parse_destination(text: str) -> Destination:
    """Parse ``--to``: ``oci:DIR``, ``oci-archive:FILE`` or ``docker://HOST[:PORT][/NAMESPACE]``."""
    if text.startswith("docker://"):
        rest = text[len("docker://") :].rstrip("/")
        host, _, namespace = rest.partition("/")
        if not host or not _HOST_RE.match(host):
            raise UsageError(f"--to {text}: {host!r} is not a registry host[:port]")
        try:
            Reference(host, "probe")  # the reference grammar's idea of a registry: a dot, a port, or localhost
        except InvalidReferenceError:
            raise UsageError(
                f"--to {text}: {host!r} is not a registry host (write it with a domain, a :port, or as localhost)"
            ) from None
        if namespace and not all(_COMPONENT_RE.match(c) for c in namespace.split("/")):
            raise UsageError(
                f"--to {text}: namespace {namespace!r} is not a valid repository path (lowercase letters, digits, "
                "separators . _ __ -)"
            )
        return Destination(kind="docker", host=host, namespace=namespace)
    for kind in ("oci-archive", "oci"):
        if text.startswith(f"{kind}:"):
            rest = text[len(kind) + 1 :]
            if not rest:
                raise UsageError(f"--to {text}: the path is empty")
            if ":" in rest:
                raise UsageError(
                    f"--to {text}: a mirror destination takes no :REF (each image is named by its source reference)"
                )
            return Destination(kind=kind, path=Path(rest))
    raise UsageError(f"--to {text}: expected oci:DIR, oci-archive:FILE or docker://HOST[:PORT][/NAMESPACE]")


def scoped_host_component(domain: str) -> str:
    """The source host as one repository path component: ``127.0.0.1:5000`` -> ``127.0.0.1_5000``.

    skopeo's ``--scoped`` writes the host verbatim, which a port makes invalid; ``_`` cannot occur in
    a host name, so this is reversible. Upper case (host names are case-insensitive) is lowered.
    """
    host = domain.lower()
    if host.startswith("["):  # [v6addr]:port
        addr, _, port = host[1:].partition("]")
        host = addr.replace(":", "-") + (f"_{port[1:]}" if port.startswith(":") else "")
    else:
        host = host.replace(":", "_")
    if not _COMPONENT_RE.match(host):
        raise UsageError(f"--scoped: the registry host {domain!r} cannot be written as a repository path component")
    return host


def mirror_repository(ref: Reference, *, namespace: str = "", scoped: bool = False) -> str:
    """The repository an image goes to on a mirror registry, as ``skopeo sync`` names it.

    ``quay.io/org/app`` -> ``NAMESPACE/app``; with ``scoped``, ``NAMESPACE/quay.io/org/app``
    (a host with a port written as :func:`scoped_host_component` does).
    """
    tail = f"{scoped_host_component(ref.domain)}/{ref.path}" if scoped else ref.path.rsplit("/", 1)[-1]
    return f"{namespace}/{tail}" if namespace else tail


def destination_reference(dest: Destination, ref: Reference, *, scoped: bool = False) -> Reference:
    """The reference an image is pushed as: same tag (and digest if pinned), mirror repository."""
    assert dest.host is not None
    repo = mirror_repository(ref, namespace=dest.namespace, scoped=scoped)
    try:
        return Reference(dest.host, repo, ref.tag, ref.digest)
    except InvalidReferenceError as exc:
        raise UsageError(f"cannot mirror {ref} to {dest}: {exc}") from None


def filter_index(raw: bytes, keep: Iterable[str]) -> bytes:
    """A new index: ``raw``'s top-level fields kept, ``manifests`` narrowed to the digests in ``keep``
    (entries verbatim, original order). Returns ``raw`` itself when nothing is dropped."""
    wanted = set(keep)
    obj = json.loads(raw)
    manifests = obj.get("manifests") or []
    kept = [m for m in manifests if isinstance(m, dict) and m.get("digest") in wanted]
    if len(kept) == len(manifests):
        return raw
    obj["manifests"] = kept
    return json.dumps(obj, indent=3).encode()


@dataclass(frozen=True)
class MirrorMapping:
    """One repository sent to a mirror: ``source`` (name only) is served by ``mirror`` (host/repo)."""

    source: Reference
    mirror: str
    by_tag: bool
    by_digest: bool


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_registries_conf(
    mappings: Sequence[MirrorMapping],
    *,
    mirror_insecure: bool,
    conf: RegistriesConf | None = None,
    generated_by: str = "tether mirror sync",
) -> str:
    """A registries.conf.d drop-in (containers-registries.conf(5) v2) sending exactly these
    repositories to their mirror.

    One ``[[registry]]`` per source repository (the prefix is the repository, so nothing else is
    redirected), its mirror first. ``pull-from-mirror`` is ``all`` when a tag was synced (a tag pull
    may use the mirror), ``digest-only`` when only digests were. What the current configuration says
    about the primary (``location`` rewrite, ``insecure``, ``blocked``) and its existing mirrors is
    carried over, because a longer prefix replaces the table that applied before.
    """
    merged: dict[str, MirrorMapping] = {}
    for m in mappings:
        key = m.source.name
        old = merged.get(key)
        if old is None:
            merged[key] = m
        else:
            merged[key] = replace(old, by_tag=old.by_tag or m.by_tag, by_digest=old.by_digest or m.by_digest)
    lines = [f"# Generated by {generated_by}: {len(merged)} repositories served by a mirror.", ""]
    for name, m in sorted(merged.items()):
        entry = conf.find_registry(name) if conf is not None else None
        location = name
        insecure = False
        blocked = False
        extra_mirrors: list[tuple[str, bool, str | None]] = []
        if entry is not None:
            insecure, blocked = entry.insecure, entry.blocked
            if not entry.prefix.startswith("*.") and entry.location:
                rest = name[len(entry.prefix) :]
                location = entry.location + rest
                extra_mirrors = [(mm.location + rest, mm.insecure, mm.pull_from_mirror) for mm in entry.mirrors]
                if entry.mirror_by_digest_only:
                    extra_mirrors = [(loc, ins, "digest-only") for loc, ins, _ in extra_mirrors]
        lines += ["[[registry]]", f"prefix = {_toml_str(name)}", f"location = {_toml_str(location)}"]
        if insecure:
            lines.append("insecure = true")
        if blocked:
            lines.append("blocked = true")
        lines += ["", "[[registry.mirror]]", f"location = {_toml_str(m.mirror)}"]
        if mirror_insecure:
            lines.append("insecure = true")
        lines.append(f"pull-from-mirror = {_toml_str('all' if m.by_tag else 'digest-only')}")
        for loc, ins, pfm in extra_mirrors:
            if loc == m.mirror:  # a drop-in written by an earlier sync is already loaded
                continue
            lines += ["", "[[registry.mirror]]", f"location = {_toml_str(loc)}"]
            if ins:
                lines.append("insecure = true")
            if pfm:
                lines.append(f"pull-from-mirror = {_toml_str(pfm)}")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# requests, results


@dataclass(frozen=True, kw_only=True)
class SyncRequest:
    """One image to mirror: a name (registry reference, ``oci:``/``oci-archive:`` name) and, for bound
    images, what their unit asks for: ``Arch=`` (a platform added to the chosen ones), ``TLSVerify=``,
    ``AuthFile=``, ``CertDir=`` (how the source is reached)."""

    name: str
    platform: Platform | None = None
    tls_verify: bool | None = None
    authfile: Path | None = None
    cert_dir: Path | None = None


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


class SyncObserver(Protocol):
    """Optional hooks (progress displays, tests)."""

    def blob_bytes(self, digest: str, done: int) -> None: ...
    def blob_done(self, digest: str, how: str) -> None: ...


class _NullObserver:
    def blob_bytes(self, digest: str, done: int) -> None:
        pass

    def blob_done(self, digest: str, how: str) -> None:
        pass


# ---------------------------------------------------------------------------------------------------
# sources of manifests and blobs


class _Fetcher(Protocol):
    description: str
    #: For registry sources: (registry host, repository path), so a mirror on the same registry can mount.
    origin: tuple[str, str] | None

    async def top(self) -> tuple[bytes, str, str]: ...
    async def child(self, descriptor: Descriptor) -> bytes: ...
    def open_blob(self, descriptor: Descriptor) -> AbstractAsyncContextManager[AsyncIterator[bytes]]: ...


class _RegistryFetcher:
    def __init__(self, client: RegistryClient, ref: Reference, conf: RegistriesConf) -> None:
        from tether.registry.registries_conf import pull_sources

        self.client = client
        self.ref = ref
        self.description = f"docker://{ref}"
        self.origin: tuple[str, str] | None = (ref.registry_host, ref.path)
        self._conf = conf
        self._sources: tuple[PullSource, ...] = ()
        self._pull_sources = pull_sources

    async def top(self) -> tuple[bytes, str, str]:
        self._sources = tuple(self._pull_sources(self._conf, self.ref))  # BlockedRegistryError before any request
        fetched = await self.client.fetch_manifest(self.ref)
        # Blobs from the endpoint that served the manifest first (registries.conf mirrors), then the rest.
        self._sources = (fetched.source, *(s for s in self._sources if s != fetched.source))
        if self.ref.digest is not None and fetched.digest != self.ref.digest:
            raise MirrorError(f"{self.ref}: the registry served a manifest with digest {fetched.digest}")
        return fetched.raw, fetched.media_type, fetched.digest

    async def child(self, descriptor: Descriptor) -> bytes:
        fetched = await self.client.fetch_manifest(self.ref.with_digest(descriptor.digest))
        if fetched.digest != descriptor.digest:
            raise MirrorError(f"{self.ref}: manifest {descriptor.digest} came back as {fetched.digest}")
        return fetched.raw

    def open_blob(self, descriptor: Descriptor) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self.client.open_blob(self._sources, descriptor)


class _LayoutFetcher:
    def __init__(self, reader: LayoutReader, entry: IndexEntry) -> None:
        self.origin: tuple[str, str] | None = None
        self.reader = reader
        self.entry = entry
        self.description = f"{reader.description}:{entry.ref_name or entry.digest}"

    async def top(self) -> tuple[bytes, str, str]:
        raw = await self.reader.read_blob(self.entry.digest, size=self.entry.size)
        media_type = self.entry.media_type or parse_manifest(raw, None).media_type
        return raw, media_type, self.entry.digest

    async def child(self, descriptor: Descriptor) -> bytes:
        return await self.reader.read_blob(descriptor.digest, size=descriptor.size)

    def open_blob(self, descriptor: Descriptor) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self.reader.open_blob(descriptor)


# ---------------------------------------------------------------------------------------------------
# plans


@dataclass(frozen=True)
class _Manifest:
    digest: str
    media_type: str
    raw: bytes


@dataclass
class _ImagePlan:
    key: int
    request: SyncRequest
    source_ref: Reference  # the image's full name (registry reference, or a layout entry's ref.name)
    fetcher: _Fetcher
    top: _Manifest | None = None
    children: list[_Manifest] = field(default_factory=list)  # written before top, in order
    blobs: dict[str, Descriptor] = field(default_factory=dict)
    platforms: tuple[str, ...] = ()
    target: str = ""  # oci ref name, or the docker destination reference
    dest_ref: Reference | None = None
    result: ImageSyncResult | None = None
    source_top_digest: str | None = None  # what the source reference points at (differs when filtered)
    copied: int = 0
    present: int = 0
    mounted: int = 0
    nbytes: int = 0
    signatures: int = 0


def _platform_text(p: Platform | None) -> str:
    if p is None:
        return "unknown"
    return f"{p.os}/{p.architecture}" + (f"/{p.variant}" if p.variant else "")


async def _plan_image(plan: _ImagePlan, *, all_platforms: bool, platforms: Sequence[Platform]) -> None:
    """Fetch the manifests of one image and decide what to write (network/disk reads only)."""
    raw, media_type, digest = await plan.fetcher.top()
    plan.source_top_digest = digest
    parsed = parse_manifest(raw, media_type)
    if isinstance(parsed, ImageManifest):
        plan.top = _Manifest(digest, media_type, raw)
        _add_blobs(plan, parsed)
        return
    keep_whole = all_platforms or plan.source_ref.digest is not None
    chosen: list[Descriptor] = []
    if keep_whole:
        chosen = list(parsed.manifests)
    else:
        wanted = list(platforms) or [host_platform()]
        if plan.request.platform is not None and plan.request.platform not in wanted:
            wanted.append(plan.request.platform)
        for p in wanted:
            d = choose_platform(parsed, p)  # PlatformError names the platform and the image
            if d not in chosen:
                chosen.append(d)
        raw = filter_index(raw, [d.digest for d in chosen])
        digest = compute_digest(raw)
    plan.platforms = tuple(_platform_text(d.platform) for d in chosen)
    await _plan_children(plan, chosen)
    plan.top = _Manifest(digest, media_type, raw)


async def _plan_children(plan: _ImagePlan, chosen: Sequence[Descriptor]) -> None:
    for d in chosen:
        if d.size > MAX_MANIFEST_SIZE:
            raise MirrorError(f"{plan.fetcher.description}: manifest {d.digest} is {d.size} bytes")
        child_raw = await plan.fetcher.child(d)
        if compute_digest(child_raw) != d.digest or len(child_raw) != d.size:
            raise MirrorError(f"{plan.fetcher.description}: manifest {d.digest} does not match its descriptor")
        child = parse_manifest(child_raw, d.media_type)
        if isinstance(child, ImageIndex):  # nested index: everything under it
            await _plan_children(plan, child.manifests)
        else:
            _add_blobs(plan, child)
        if all(c.digest != d.digest for c in plan.children):
            plan.children.append(_Manifest(d.digest, d.media_type or child.media_type, child_raw))


def _add_blobs(plan: _ImagePlan, manifest: ImageManifest) -> None:
    for d in (manifest.config, *manifest.layers):
        if d.media_type in FOREIGN_LAYER_TYPES and d.urls:
            log.info("%s: leaving out non-distributable layer %s", plan.fetcher.description, d.digest)
            continue
        plan.blobs.setdefault(d.digest, d)


# ---------------------------------------------------------------------------------------------------
# destinations


class _Writer(Protocol):
    description: str

    def target_for(self, plan: _ImagePlan) -> str: ...
    async def has_blob(self, plan: _ImagePlan, d: Descriptor) -> bool: ...
    async def mount_blob(self, plan: _ImagePlan, d: Descriptor) -> bool: ...
    async def write_blob(self, plan: _ImagePlan, d: Descriptor, chunks: AsyncIterator[bytes],
                         on_bytes: Callable[[int], None]) -> None: ...
    def blob_key(self, plan: _ImagePlan, digest: str) -> tuple[str, str]: ...
    async def write_manifests(self, plan: _ImagePlan) -> None: ...
    async def copy_signatures(self, plan: _ImagePlan) -> None: ...
    async def verify(self, plans: Sequence[_ImagePlan]) -> list[str]: ...
    async def finish(self, plans: Sequence[_ImagePlan]) -> None: ...


class _LayoutWriter:
    """oci:DIR (and the staging layout of an oci-archive)."""

    def __init__(self, layout: OCILayout, description: str) -> None:
        self.layout = layout
        self.description = description

    def target_for(self, plan: _ImagePlan) -> str:
        return str(plan.source_ref)

    def blob_key(self, plan: _ImagePlan, digest: str) -> tuple[str, str]:
        return ("", digest)

    async def has_blob(self, plan: _ImagePlan, d: Descriptor) -> bool:
        present: bool = await trio.to_thread.run_sync(self.layout.has_blob, d.digest, d.size)
        return present

    async def mount_blob(self, plan: _ImagePlan, d: Descriptor) -> bool:
        return False

    async def write_blob(self, plan: _ImagePlan, d: Descriptor, chunks: AsyncIterator[bytes],
                         on_bytes: Callable[[int], None]) -> None:
        writer = await trio.to_thread.run_sync(
            lambda: self.layout.blob_writer(expected_digest=d.digest, expected_size=d.size)
        )
        try:
            group: list[bytes] = []
            size = 0

            def flush(parts: list[bytes]) -> None:
                for part in parts:
                    writer.write(part)

            async for chunk in chunks:
                group.append(chunk)
                size += len(chunk)
                if size >= WRITE_GROUP_BYTES:
                    await trio.to_thread.run_sync(flush, group)
                    on_bytes(size)
                    group, size = [], 0
            if group:
                await trio.to_thread.run_sync(flush, group)
                on_bytes(size)
            await trio.to_thread.run_sync(writer.commit)
        finally:
            if writer.digest is None:
                writer.abort()  # synchronous: it must run even when this task is being cancelled

    async def write_manifests(self, plan: _ImagePlan) -> None:
        assert plan.top is not None
        top = plan.top

        def write() -> None:
            for m in (*plan.children, top):
                self.layout.put_blob(m.raw, expected_digest=m.digest)
            self.layout.add_entries(
                [IndexEntry.build(media_type=top.media_type, digest=top.digest, size=len(top.raw),
                                  ref_name=plan.target)]
            )

        await trio.to_thread.run_sync(write)

    async def copy_signatures(self, plan: _ImagePlan) -> None:
        # containers/image cannot store signatures in an OCI layout either ("Pushing signatures to OCI layout
        # is not supported"); the host that pulls from the layout has none to verify.
        pass

    async def verify(self, plans: Sequence[_ImagePlan]) -> list[str]:
        def check() -> list[str]:
            problems = []
            entries = {e.ref_name: e for e in self.layout.entries()}
            for plan in plans:
                assert plan.top is not None
                entry = entries.get(plan.target)
                if entry is None or entry.digest != plan.top.digest:
                    problems.append(f"{self.description}: {plan.target} is not (or no longer) {plan.top.digest}")
                    continue
                for digest, size in self.layout.reachable([entry]).items():
                    if not self.layout.has_blob(digest, size):
                        problems.append(f"{self.description}: {plan.target}: blob {digest} missing or truncated")
            return problems

        problems: list[str] = await trio.to_thread.run_sync(check)
        return problems

    async def finish(self, plans: Sequence[_ImagePlan]) -> None:
        pass


class _ArchiveWriter(_LayoutWriter):
    """oci-archive:FILE: a staging layout beside FILE, then the archive written atomically."""

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

    async def finish(self, plans: Sequence[_ImagePlan]) -> None:
        await trio.to_thread.run_sync(write_oci_archive, self.layout, self.archive)

        def check_and_clean() -> None:
            with OCIArchive.open(self.archive) as written:
                names = {e.ref_name: e.digest for e in written.entries()}
                for plan in plans:
                    assert plan.top is not None
                    if names.get(plan.target) != plan.top.digest:
                        raise MirrorError(f"{self.description}: {plan.target} missing from the written archive")
            shutil.rmtree(self.staging)

        await trio.to_thread.run_sync(check_and_clean)


class _RegistryWriter:
    """docker://HOST[/NAMESPACE]."""

    def __init__(self, dest: Destination, client: RegistryClient, *, scoped: bool,
                 registries_d: RegistriesD | None = None) -> None:
        self.dest = dest
        self.client = client
        self.scoped = scoped
        self.registries_d = registries_d  # None: signatures are not copied (--remove-signatures)
        self.description = str(dest)
        #: digest -> a repository of the destination registry known to hold it (for mounts)
        self.known: dict[str, str] = {}

    def target_for(self, plan: _ImagePlan) -> str:
        plan.dest_ref = destination_reference(self.dest, plan.source_ref, scoped=self.scoped)
        return str(plan.dest_ref)

    def blob_key(self, plan: _ImagePlan, digest: str) -> tuple[str, str]:
        assert plan.dest_ref is not None
        return (plan.dest_ref.path, digest)

    def _repo_ref(self, plan: _ImagePlan) -> Reference:
        assert plan.dest_ref is not None
        return Reference(self.dest.host or "", plan.dest_ref.path)

    async def has_blob(self, plan: _ImagePlan, d: Descriptor) -> bool:
        if await self.client.blob_exists(self._repo_ref(plan), d.digest):
            self.known.setdefault(d.digest, self._repo_ref(plan).path)
            return True
        return False

    async def mount_blob(self, plan: _ImagePlan, d: Descriptor) -> bool:
        ref = self._repo_ref(plan)
        candidates = []
        if d.digest in self.known and self.known[d.digest] != ref.path:
            candidates.append(self.known[d.digest])
        origin = plan.fetcher.origin
        if origin is not None and origin[0] == self.dest.host and origin[1] != ref.path:
            candidates.append(origin[1])
        for repo in candidates:
            if await self.client.mount_blob(ref, d.digest, from_repository=repo):
                self.known.setdefault(d.digest, ref.path)
                return True
        return False

    async def write_blob(self, plan: _ImagePlan, d: Descriptor, chunks: AsyncIterator[bytes],
                         on_bytes: Callable[[int], None]) -> None:
        async def counted() -> AsyncGenerator[bytes, None]:
            async for chunk in chunks:
                on_bytes(len(chunk))
                yield chunk

        async with aclosing(counted()) as stream:  # closed even when the upload fails half-way
            await self.client.upload_blob(self._repo_ref(plan), d, stream)
        self.known.setdefault(d.digest, self._repo_ref(plan).path)

    async def write_manifests(self, plan: _ImagePlan) -> None:
        assert plan.top is not None and plan.dest_ref is not None
        repo = self._repo_ref(plan)
        for m in plan.children:
            got = await self.client.put_manifest(repo.with_digest(m.digest), m.raw, m.media_type)
            _check_digest(got, m.digest, f"{repo}@{m.digest}")
        target = plan.dest_ref
        if target.tag is not None:
            # Push by tag (a pinned digest alongside a tag is kept by the bytes being identical).
            target = Reference(target.domain, target.path, target.tag)
        got = await self.client.put_manifest(target, plan.top.raw, plan.top.media_type)
        _check_digest(got, plan.top.digest, str(target))

    async def copy_signatures(self, plan: _ImagePlan) -> None:
        """Copy each copied manifest's signatures (sigstore attachments, lookaside files) as skopeo copies
        them; the index's only when it was copied unchanged (a new index has no signatures)."""
        fetcher = plan.fetcher
        if self.registries_d is None or not isinstance(fetcher, _RegistryFetcher) or plan.dest_ref is None:
            return
        from tether.registry.signatures import copy_signatures

        assert plan.top is not None
        digests = [m.digest for m in plan.children]
        if plan.top.digest == plan.source_top_digest:
            digests.append(plan.top.digest)
        for digest in digests:
            copied = await copy_signatures(
                source_client=fetcher.client, source_repository=fetcher.ref, dest_client=self.client,
                dest_repository=plan.dest_ref, manifest_digest=digest, registries_d=self.registries_d,
            )
            plan.signatures += copied.lookaside + (1 if copied.sigstore_attachment else 0)

    async def verify(self, plans: Sequence[_ImagePlan]) -> list[str]:
        """Read every pushed manifest back (by tag or digest) and HEAD every blob, concurrently."""
        problems: list[str] = []
        limiter = trio.CapacityLimiter(VERIFY_JOBS)

        async def check_manifest(plan: _ImagePlan) -> None:
            assert plan.top is not None and plan.dest_ref is not None
            target = plan.dest_ref if plan.dest_ref.tag is None else Reference(
                plan.dest_ref.domain, plan.dest_ref.path, plan.dest_ref.tag)
            async with limiter:
                try:
                    fetched = await self.client.fetch_manifest(target)
                except RegistryError as exc:
                    problems.append(f"{target}: cannot be read back: {exc}")
                    return
            if fetched.digest != plan.top.digest:
                problems.append(f"{target}: serves {fetched.digest}, expected {plan.top.digest}")

        async def check_blob(plan: _ImagePlan, digest: str) -> None:
            async with limiter:
                try:
                    present = await self.client.blob_exists(self._repo_ref(plan), digest)
                except RegistryError as exc:
                    problems.append(f"{self._repo_ref(plan)}: blob {digest}: {exc}")
                    return
            if not present:
                problems.append(f"{self._repo_ref(plan)}: blob {digest} is missing")

        async with trio.open_nursery() as nursery:
            for plan in plans:
                nursery.start_soon(check_manifest, plan)
                for digest in plan.blobs:
                    nursery.start_soon(check_blob, plan, digest)
        return sorted(problems)

    async def finish(self, plans: Sequence[_ImagePlan]) -> None:
        pass


def _check_digest(got: str | None, expected: str, what: str) -> None:
    if got and got != expected:
        raise MirrorError(f"PUT {what}: the registry stored digest {got}, expected {expected}")


# ---------------------------------------------------------------------------------------------------
# the sync


async def _expand_requests(requests: Sequence[SyncRequest], stack: AsyncExitStack,
                           conf: RegistriesConf | None) -> list[tuple[SyncRequest, Reference, Any]]:
    """Each request -> (request, full source reference, how to fetch it). Layout names without REF
    expand to every named entry; registry short names need exactly one candidate."""
    out: list[tuple[SyncRequest, Reference, Any]] = []
    for req in requests:
        parsed = parse_image_name(req.name)
        if isinstance(parsed, OCILayoutName | OCIArchiveName):
            transport: Literal["oci", "oci-archive"] = "oci-archive" if isinstance(parsed, OCIArchiveName) else "oci"
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
                out.append((req, source_ref, ("layout", reader, entry)))
            continue
        if parsed.reference is not None:
            out.append((req, parsed.reference.tag_name_only(), ("registry",)))
            continue
        if conf is None:
            raise UsageError(f"{req.name}: a short name needs registries.conf")
        from tether.registry.registries_conf import resolve_short_name

        candidates = resolve_short_name(conf, parsed.name, tty=False)
        if len(candidates) != 1:
            raise UsageError(
                f"{req.name}: short name with {len(candidates)} candidates; mirror sync needs a fully qualified name "
                f"(one of {', '.join(str(c) for c in candidates)})"
            )
        out.append((req, candidates[0].tag_name_only(), ("registry",)))
    return out


def _check_collisions(plans: Sequence[_ImagePlan]) -> None:
    seen: dict[str, str] = {}
    for plan in plans:
        other = seen.setdefault(plan.target, str(plan.source_ref))
        if other != str(plan.source_ref):
            raise UsageError(
                f"{other} and {plan.source_ref} would both be mirrored as {plan.target}; use --scoped "
                "(or a namespace) to keep them apart"
            )


async def sync(
    requests: Sequence[SyncRequest | str],
    *,
    to: str | Destination,
    options: CommonOptions,
    all_platforms: bool = False,
    platforms: Sequence[Platform] = (),
    scoped: bool = False,
    jobs: int = DEFAULT_JOBS,
    dest_tls_verify: bool | None = None,
    registries_conf_out: Path | None = None,
    remove_signatures: bool = False,
    observer: SyncObserver | None = None,
    progress: Progress | None = None,
    client: RegistryClient | None = None,
) -> SyncReport:
    """Mirror ``requests`` to ``to`` (see the module doc). Returns a report; raises only for usage
    errors found before anything is copied. ``client`` lets tests inject a registry client used for
    both sides."""
    dest = parse_destination(to) if isinstance(to, str) else to
    reqs = [r if isinstance(r, SyncRequest) else SyncRequest(name=r) for r in requests]
    if not reqs:
        raise UsageError("mirror sync: no images to mirror")
    if registries_conf_out is not None and dest.kind != "docker":
        raise UsageError("--registries-conf-out needs a docker:// destination (registries.conf mirrors are registries)")
    obs = observer or _NullObserver()
    from tether.engine.options import load_registry_config

    conf, auth = load_registry_config(options)
    async with AsyncExitStack() as stack:
        expanded = await _expand_requests(reqs, stack, conf)
        clients: dict[tuple[Any, ...], RegistryClient] = {}

        async def client_for(authfile: Path | None, cert_dir: Path | None, tls_verify: bool | None) -> RegistryClient:
            """One client per distinct (credentials file, cert dir, TLS verification), opened lazily."""
            if client is not None:
                return client
            key = (authfile, cert_dir, tls_verify)
            found = clients.get(key)
            if found is None:
                from tether.registry.auth import load_auth_file
                from tether.registry.client import open_registry_client

                the_auth = auth if authfile == options.auth_file_path() else load_auth_file(authfile)
                found = await stack.enter_async_context(
                    open_registry_client(registries=conf, auth=the_auth, cert_dir=cert_dir, tls_verify=tls_verify)
                )
                clients[key] = found
            return found

        async def source_client(req: SyncRequest) -> RegistryClient:
            return await client_for(
                req.authfile if req.authfile is not None else options.auth_file_path(),
                req.cert_dir if req.cert_dir is not None else options.cert_dir,
                req.tls_verify if req.tls_verify is not None else options.tls_verify,
            )

        dst_client: RegistryClient | None = None
        if dest.kind == "docker":
            dst_client = await client_for(
                options.auth_file_path(), options.cert_dir,
                dest_tls_verify if dest_tls_verify is not None else options.tls_verify,
            )

        writer: _Writer
        if dest.kind == "oci":
            assert dest.path is not None
            dest_path = dest.path
            layout = await trio.to_thread.run_sync(lambda: OCILayout.open(dest_path, create=True))
            writer = _LayoutWriter(layout, str(dest))
        elif dest.kind == "oci-archive":
            assert dest.path is not None
            writer = await trio.to_thread.run_sync(_ArchiveWriter, dest.path)
        else:
            assert dst_client is not None
            registries_d = None
            if not remove_signatures:
                from tether.registry.registries_d import load_registries_d

                registries_d = load_registries_d(home=options.environ.get("HOME"))
            writer = _RegistryWriter(dest, dst_client, scoped=scoped, registries_d=registries_d)

        plans: list[_ImagePlan] = []
        seen_sources: set[str] = set()
        for key, (req, source_ref, how) in enumerate(expanded):
            if str(source_ref) in seen_sources:
                continue
            seen_sources.add(str(source_ref))
            fetcher: _Fetcher
            if how[0] == "layout":
                fetcher = _LayoutFetcher(how[1], how[2])
            else:
                fetcher = _RegistryFetcher(await source_client(req), source_ref, conf)
            plan = _ImagePlan(key=key, request=req, source_ref=source_ref, fetcher=fetcher)
            plan.target = writer.target_for(plan)
            plans.append(plan)
        _check_collisions(plans)

        try:
            await _run(plans, writer, all_platforms=all_platforms, platforms=platforms, jobs=jobs, observer=obs,
                       progress=progress or Progress())
        finally:
            if progress is not None:
                progress.close()

        good = [p for p in plans if p.result is None]
        problems: list[str] = []
        if good:
            try:
                problems = await writer.verify(good)
                if not problems:
                    await writer.finish(good)
            except (RegistryError, StoreError, MirrorError) as exc:
                problems.append(f"{writer.description}: {exc}")
        for plan in good:
            assert plan.top is not None
            plan.result = ImageSyncResult(
                source=str(plan.source_ref), destination=plan.target, digest=plan.top.digest,
                platforms=plan.platforms, blobs_copied=plan.copied, blobs_present=plan.present,
                blobs_mounted=plan.mounted, bytes_copied=plan.nbytes, signatures_copied=plan.signatures,
            )
        written_conf: Path | None = None
        if registries_conf_out is not None and good and not problems:
            mappings = [
                MirrorMapping(
                    source=Reference(p.source_ref.domain, p.source_ref.path),
                    mirror=f"{p.dest_ref.domain}/{p.dest_ref.path}" if p.dest_ref else "",
                    by_tag=p.source_ref.tag is not None,
                    by_digest=p.source_ref.digest is not None,
                )
                for p in good
            ]
            insecure = dest_tls_verify is False or (dest_tls_verify is None and options.tls_verify is False)
            if not insecure and dest.host is not None:
                entry = conf.find_registry(dest.host)
                insecure = bool(entry and entry.insecure)
            text = render_registries_conf(mappings, mirror_insecure=insecure, conf=conf)
            await trio.to_thread.run_sync(_write_text_atomically, registries_conf_out, text)
            written_conf = registries_conf_out
    results = tuple(p.result for p in plans if p.result is not None)
    return SyncReport(destination=str(dest), images=results, problems=tuple(problems), registries_conf=written_conf)


def _write_text_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


async def _run(plans: list[_ImagePlan], writer: _Writer, *, all_platforms: bool, platforms: Sequence[Platform],
               jobs: int, observer: SyncObserver, progress: Progress) -> None:
    """Plan every image, then copy every blob once (concurrently), then write each image's manifests."""
    from tether.engine.copy.progress import LayerInfo
    limiter = trio.CapacityLimiter(max(1, jobs))
    done: set[tuple[str, str]] = set()
    inflight: dict[str, trio.Event] = {}
    failed_blobs: dict[str, str] = {}

    def fail(plan: _ImagePlan, exc: BaseException) -> None:
        if plan.result is None:
            plan.result = ImageSyncResult(source=str(plan.source_ref), destination=plan.target, digest=None,
                                          error=_describe(exc))
            progress.image_done(str(plan.source_ref), image_id=None, error=plan.result.error)

    async def plan_one(plan: _ImagePlan) -> None:
        progress.image_started(str(plan.source_ref))
        async with limiter:
            try:
                await _plan_image(plan, all_platforms=all_platforms, platforms=platforms)
            except (RegistryError, StoreError, MirrorError, UsageError) as exc:
                fail(plan, exc)
                return
        progress.image_planned(str(plan.source_ref),
                               [LayerInfo(digest=d.digest, size=d.size, state="fetch") for d in plan.blobs.values()])

    async with trio.open_nursery() as nursery:
        for plan in plans:
            nursery.start_soon(plan_one, plan)

    async def ensure_blob(plan: _ImagePlan, d: Descriptor) -> None:
        key = writer.blob_key(plan, d.digest)
        while True:
            if key in done:
                progress.layer_done(str(plan.source_ref), d.digest)
                return
            if d.digest in failed_blobs:
                raise MirrorError(f"blob {d.digest}: {failed_blobs[d.digest]}")
            event = inflight.get(d.digest)
            if event is None:
                break
            await event.wait()  # the same blob is moving for another image: then mount or skip
        event = trio.Event()
        inflight[d.digest] = event
        try:
            async with limiter:
                if await writer.has_blob(plan, d):
                    plan.present += 1
                    how = "present"
                elif await writer.mount_blob(plan, d):
                    plan.mounted += 1
                    how = "mounted"
                else:
                    sent = 0

                    def on_bytes(n: int) -> None:
                        nonlocal sent
                        sent += n
                        observer.blob_bytes(d.digest, sent)
                        progress.layer_bytes(str(plan.source_ref), d.digest, sent)

                    async with plan.fetcher.open_blob(d) as chunks:
                        await writer.write_blob(plan, d, chunks, on_bytes)
                    plan.copied += 1
                    plan.nbytes += d.size
                    how = "copied"
            done.add(key)
            observer.blob_done(d.digest, how)
            progress.layer_done(str(plan.source_ref), d.digest)
        except (RegistryError, StoreError, MirrorError, OSError) as exc:
            failed_blobs[d.digest] = _describe(exc)
            raise
        finally:
            del inflight[d.digest]
            event.set()

    async def copy_image(plan: _ImagePlan) -> None:
        try:
            async with trio.open_nursery() as inner:
                for d in plan.blobs.values():
                    inner.start_soon(ensure_blob, plan, d)
            await writer.write_manifests(plan)
            await writer.copy_signatures(plan)
        except* (RegistryError, StoreError, MirrorError, OSError) as group:
            fail(plan, group.exceptions[0])
        else:
            assert plan.top is not None
            progress.image_done(str(plan.source_ref), image_id=plan.top.digest.split(":", 1)[-1], error=None)

    async with trio.open_nursery() as nursery:
        for plan in plans:
            if plan.result is None:
                nursery.start_soon(copy_image, plan)


def _describe(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return str(exc) or type(exc).__name__


# ---------------------------------------------------------------------------------------------------
# prune


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


def print_report(report: SyncReport, *, stream: Any = None) -> None:
    """Print a report's summary lines (stderr by default)."""
    print(report.summary(), file=stream or sys.stderr)


def platforms_from_text(values: Iterable[str]) -> tuple[Platform, ...]:
    """``--platform`` values (``os/arch[/variant]``, also comma-separated) parsed."""
    from tether.registry.manifest import parse_platform

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


def requests_from_bound(images: Iterable[Any], *, root: Path) -> list[SyncRequest]:
    """:class:`tether.engine.bound.discovery.BoundImage` values of one deployment ``root`` -> requests, with the unit's
    ``Arch=``/``OS=``/``Variant=``, ``TLSVerify=``, ``AuthFile=``, ``CertDir=`` (files looked up inside
    ``root`` first, as :func:`tether.engine.bound.discovery.pull_request_for` does for a pull)."""
    from tether.engine.bound.discovery import pull_requests_for

    out: list[SyncRequest] = []
    for pr in pull_requests_for(tuple(images), root=root):
        req = SyncRequest(name=pr.name, platform=pr.platform, tls_verify=pr.tls_verify, authfile=pr.authfile,
                          cert_dir=pr.cert_dir)
        if req not in out:
            out.append(req)
    return out

