"""The values the copy engine passes between its stages, and the contract of an image source.

containers/image's ``copy`` package serves every transport through ``types.ImageSource`` and
``types.ImageDestination``; tether's copy engine does the same with :class:`ImageSource` (registry, ``oci:``,
``oci-archive:``, ``containers-storage:``) and :class:`tether.engine.copy.destinations.Destination`. A source
is asked for what its name points at (:meth:`ImageSource.read_top`, one request), for the image resolved to
one platform (:meth:`ImageSource.resolve`, through :func:`tether.registry.resolve.resolve_image`, the one
resolution path), for child manifests and for blobs as verified streams.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from tether.engine.errors import EngineError

if TYPE_CHECKING:
    from tether.registry.client import Hasher
    from tether.registry.manifest import Descriptor, ImageConfig, ImageManifest, Platform
    from tether.registry.reference import Reference
    from tether.registry.registries_conf import PullSource
    from tether.registry.resolve import RawManifest, ResolvedImage
    from tether.store.containers_storage import ImageRecord, LayerRecord, Store

Transport = Literal["docker", "oci", "oci-archive", "containers-storage"]


class SourceError(EngineError):
    """An image name cannot be turned into a source, or the source does not hold the image asked for."""


@dataclass(frozen=True)
class PullRequest:
    """One image to copy, by name (``quay.io/org/app:1.0``, ``oci:/dir:ref``, a short name), with the
    per-image settings a bound image's quadlet ``.image`` keys give (``None``: the command's options)."""

    name: str
    platform: Platform | None = None
    tls_verify: bool | None = None
    authfile: Path | None = None
    cert_dir: Path | None = None
    retries: int | None = None
    retry_delay: float | None = None  # seconds; quadlet RetryDelay=, podman pull --retry-delay
    #: fetch exactly this manifest (or index) digest, still recording the image under ``name`` (a lock file's
    #: pin: ``bound sync --lock``); registry names only
    digest: str | None = None


@dataclass(frozen=True, kw_only=True)
class StoredImage:
    """Where a ``containers-storage:`` source's image lives: its store, its record and its layers (base first).

    Such a source has no compressed blobs, only layers' trees: a destination store rebuilds each layer from
    the source store's tar-split (:meth:`Store.export_layer`) and keeps the record's big data as they are.
    """

    store: Store
    record: ImageRecord
    layers: tuple[LayerRecord, ...]


@dataclass(frozen=True, kw_only=True)
class SourceImage:
    """One image as a source resolved it, for one platform; every byte verified.

    ``names`` are the names a containers-storage destination records (podman's choice for the transport: the
    fully qualified reference for a registry). ``endpoints`` (registry sources) are the blob endpoints, the
    one that served the manifest first: signatures are read from that physical repository. ``stored`` is set
    for a ``containers-storage:`` source.
    """

    transport: Transport
    description: str
    names: tuple[str, ...]
    reference: Reference | None
    resolved: ResolvedImage
    endpoints: tuple[PullSource, ...] = ()
    stored: StoredImage | None = None

    @property
    def manifest(self) -> ImageManifest:
        """The chosen platform's image manifest, parsed."""
        return self.resolved.parsed

    @property
    def manifest_raw(self) -> bytes:
        return self.resolved.manifest.raw

    @property
    def manifest_digest(self) -> str:
        """The digest of the per-platform manifest pulled."""
        return self.resolved.manifest.digest

    @property
    def manifest_media_type(self) -> str:
        return self.resolved.manifest.media_type

    @property
    def index(self) -> RawManifest | None:
        """The index the manifest was chosen from, if the name points at one."""
        return self.resolved.index

    @property
    def config_raw(self) -> bytes:
        return self.resolved.config_raw

    @property
    def config(self) -> ImageConfig:
        return self.resolved.config

    @property
    def image_id(self) -> str:
        """containers-storage image id: the config digest's hex (containers/image storage_dest.go)."""
        return self.manifest.config.digest.split(":", 1)[1]

    @property
    def digest(self) -> str:
        """The digest the name resolves to (the index digest if any, else the manifest digest)."""
        return self.resolved.top.digest

    @property
    def digests(self) -> tuple[str, ...]:
        """Every manifest digest this image is known by."""
        index = self.index
        if index is not None:
            return (index.digest, self.manifest_digest)
        return (self.manifest_digest,)

    @property
    def physical_reference(self) -> Reference | None:
        """The repository that served the manifest (a mirror's when a mirror did), for signatures."""
        return self.endpoints[0].reference if self.endpoints else self.reference


@runtime_checkable
class ImageSource(Protocol):
    """A source of one image's manifests and blobs (containers/image ``types.ImageSource``).

    ``description`` names the source in messages (``docker://quay.io/org/app:1.0``, ``oci:/srv/layout:app``);
    ``local_names`` are the names under which a store would already hold the image (``--pull missing``).
    """

    @property
    def transport(self) -> Transport: ...

    @property
    def description(self) -> str: ...

    @property
    def local_names(self) -> tuple[str, ...]: ...

    async def prepare(self) -> None:
        """Start what the first request will need (a registry's ping; its repository joins the registry's
        first token request), so that it overlaps the store listing; never raises."""
        ...

    async def top_digest(self) -> str | None:
        """The digest of what the name points at right now when it costs less than :meth:`read_top` (a
        registry's ``HEAD``, a name that pins a digest: no request); ``None``: ask :meth:`read_top`."""
        ...

    async def read_top(self) -> RawManifest:
        """What the name points at right now (an index or a manifest), with one request at most."""
        ...

    async def read_manifest(self, descriptor: Descriptor) -> RawManifest:
        """A child manifest of the top, by digest (the caller verifies it against ``descriptor``)."""
        ...

    async def resolve(self, *, platform: Platform | None, top: RawManifest | None = None) -> SourceImage:
        """The image for ``platform`` (default: the host's), verified; ``top`` when :meth:`read_top` ran."""
        ...

    def open_blob(self, descriptor: Descriptor, *, offset: int = 0, hasher: Hasher | None = None
                  ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Stream a blob; the stream checks digest and size and raises at its end on a mismatch.

        ``offset``: the caller holds the first ``offset`` bytes, which ``hasher`` has hashed (kept from an
        earlier run): only the rest is streamed, and the digest is checked over the whole. Sources that cannot
        resume (layouts, stores) raise :class:`SourceError` for an ``offset``."""
        ...


__all__ = ["ImageSource", "PullRequest", "SourceError", "SourceImage", "StoredImage", "Transport"]
