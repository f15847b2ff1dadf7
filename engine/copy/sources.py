"""Where image bytes come from: the :class:`ImageSource` protocol and its registry implementation.

The pull engine (:mod:`tether.engine.copy.pull`) never talks to a registry or an OCI layout directly; it asks an
:class:`ImageSource` for a :class:`SourceImage` (manifest + config, already verified and parsed) and then
for the layer blobs, as verified streams of chunks.

Transports (containers-transports(5) names, parsed by :func:`tether.registry.reference.parse_image_name`):

* ``docker://`` or a plain reference -> :class:`RegistrySource` (this module);
* ``oci:DIR[:REF]`` and ``oci-archive:FILE[:REF]`` -> ``engine/layout_source.py`` (another module),
  reached through the hook :func:`open_layout_source`: that module must expose

  .. code-block:: python

     def open_layout_source(name: OCILayoutName | OCIArchiveName, *, options: CommonOptions
                            ) -> AbstractAsyncContextManager[ImageSource]

  (an async context manager because an ``oci-archive:`` is unpacked into a temporary directory that must be
  removed when the pull is over).
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from tether.engine.errors import EngineError

if TYPE_CHECKING:
    from tether.engine.options import CommonOptions
    from tether.registry.client import FetchedManifest, RegistryClient
    from tether.registry.manifest import Descriptor, ImageConfig, ImageManifest, Platform
    from tether.registry.reference import OCIArchiveName, OCILayoutName, Reference
    from tether.registry.registries_conf import PullSource

#: Largest config blob accepted (containers/image: iolimits.maxConfigBodySize is 4 MiB).
MAX_CONFIG_SIZE = 4 * 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class SourceImage:
    """One image as a source describes it, resolved to a single platform; everything verified.

    ``names`` are the names the image is recorded under in containers-storage (podman's choice for the
    transport: the fully qualified reference for a registry). ``digest`` is the digest of what the user's
    name points at (the index digest when the name points at an index, else the manifest digest),
    recorded as the image's ``digest``; ``manifest_digest`` the per-platform manifest actually pulled.
    """

    transport: str                      # "docker", "oci", "oci-archive"
    names: tuple[str, ...]
    reference: Reference | None         # the registry reference pulled (None for layouts)
    manifest_raw: bytes
    manifest_media_type: str
    manifest_digest: str
    manifest: ImageManifest
    index_raw: bytes | None
    index_digest: str | None
    config_raw: bytes
    config: ImageConfig
    #: Transport-specific extras (for a registry: the ``PullSource`` endpoints); for signature checks.
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def image_id(self) -> str:
        """containers-storage image id: the config digest's hex (containers/image storage_dest.go)."""
        return self.manifest.config.digest.split(":", 1)[1]

    @property
    def digest(self) -> str:
        """The digest the name resolves to (index digest if any, else the manifest digest)."""
        return self.index_digest or self.manifest_digest

    @property
    def digests(self) -> tuple[str, ...]:
        """Every manifest digest this image is known by."""
        if self.index_digest is not None and self.index_digest != self.manifest_digest:
            return (self.index_digest, self.manifest_digest)
        return (self.manifest_digest,)


@runtime_checkable
class ImageSource(Protocol):
    """A source of one image's manifest, config and layer blobs.

    ``description`` names the source in messages ("docker://quay.io/org/app:1.0", "oci:/srv/layout:app").
    ``local_names`` are the names under which the image would already be in the store (for
    ``--pull missing``: present by name means no request at all).
    """

    description: str
    local_names: tuple[str, ...]

    async def probe_digest(self) -> str | None:
        """The digest the name points at right now, as cheaply as possible (one manifest request).

        ``None`` if the source cannot tell without resolving. Used by ``--pull newer|always``: when the store
        already has an image with this digest under this name nothing else is fetched.
        """
        ...

    async def resolve(self, *, platform: Platform | None) -> SourceImage:
        """Fetch (and verify) the manifest, choosing ``platform`` from an index, and the config."""
        ...

    def open_blob(self, descriptor: Descriptor) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Stream a layer blob; the stream verifies digest and size and raises at its end on a mismatch."""
        ...


class SourceError(EngineError):
    """An image name cannot be turned into a source (unknown transport, missing layout support)."""


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class RegistrySource:
    """An image in a registry, through a shared :class:`RegistryClient`.

    ``candidates`` are the fully qualified references to try in order (one for a qualified name; the
    short-name candidates from registries.conf otherwise): the first that resolves wins, as
    containers/image's short-name resolution in permissive mode does.
    """

    transport = "docker"

    def __init__(self, *, client: RegistryClient, candidates: Sequence[Reference], name: str,
                 pull_sources: Any = None) -> None:
        if not candidates:
            raise SourceError(f"{name}: no registry to pull from")
        self.client = client
        self.candidates = tuple(candidates)
        self.name = name
        self.description = f"docker://{candidates[0]}" if len(candidates) == 1 else name
        self.local_names = tuple(str(ref) for ref in self.candidates)
        self._pull_sources = pull_sources  # callable(ref) -> tuple[PullSource, ...], for blob endpoints
        self._top: tuple[Reference, FetchedManifest] | None = None
        self._blob_sources: tuple[PullSource, ...] = ()

    async def _fetch_top(self) -> tuple[Reference, FetchedManifest]:
        if self._top is not None:
            return self._top
        last: Exception | None = None
        for ref in self.candidates:
            try:
                fetched = await self.client.fetch_manifest(ref)
            except Exception as exc:  # next candidate (containers/image tries every candidate)
                last = exc
                if len(self.candidates) == 1:
                    raise
                continue
            self._top = (ref, fetched)
            return self._top
        assert last is not None
        raise last

    async def probe_digest(self) -> str | None:
        _, fetched = await self._fetch_top()
        return fetched.digest

    async def resolve(self, *, platform: Platform | None) -> SourceImage:
        from tether.registry.errors import ManifestError
        from tether.registry.manifest import (
            ImageIndex,
            ImageManifest,
            choose_platform,
            host_platform,
            parse_image_config,
            parse_manifest,
        )

        ref, top = await self._fetch_top()
        parsed = parse_manifest(top.raw, top.media_type)
        index: FetchedManifest | None = None
        manifest = top
        if isinstance(parsed, ImageIndex):
            index = top
            chosen = choose_platform(parsed, platform or host_platform())
            manifest = await self.client.fetch_manifest(ref.with_digest(chosen.digest))
            parsed = parse_manifest(manifest.raw, manifest.media_type)
            if not isinstance(parsed, ImageManifest):
                raise ManifestError(f"{ref}: index entry {chosen.digest} is not an image manifest")
        sources = self._sources_for(ref, manifest)
        self._blob_sources = sources
        config_raw = await self.client.fetch_blob(sources, parsed.config, max_size=MAX_CONFIG_SIZE)
        config = parse_image_config(config_raw)
        # Record the name the user gave, fully qualified, with the tag (podman records "host/repo:tag";
        # a digest-only reference is recorded as "host/repo@sha256:...").
        return SourceImage(
            transport="docker",
            names=(str(ref),),
            reference=ref,
            manifest_raw=manifest.raw,
            manifest_media_type=manifest.media_type,
            manifest_digest=manifest.digest,
            manifest=parsed,
            index_raw=index.raw if index is not None else None,
            index_digest=index.digest if index is not None else None,
            config_raw=config_raw,
            config=config,
            extra={"sources": sources, "client": self.client},
        )

    def _sources_for(self, ref: Reference, served: FetchedManifest) -> tuple[PullSource, ...]:
        """Blob endpoints: the one that served the manifest first, then the other pull sources."""
        others: tuple[PullSource, ...] = ()
        if self._pull_sources is not None:
            try:
                others = tuple(self._pull_sources(ref))
            except Exception:  # blocked or unconfigured: the manifest's endpoint is enough
                others = ()
        rest = tuple(s for s in others if s != served.source)
        return (served.source, *rest)

    def open_blob(self, descriptor: Descriptor) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        if not self._blob_sources:
            raise SourceError(f"{self.description}: open_blob before resolve")
        return self.client.open_blob(self._blob_sources, descriptor)


def open_layout_source(name: OCILayoutName | OCIArchiveName, *, options: CommonOptions
                       ) -> AbstractAsyncContextManager[ImageSource]:
    """The hook for ``oci:``/``oci-archive:`` names: delegates to ``tether.engine.copy.layouts``.

    Kept as the single dispatch point so the pull engine needs no change when that module lands.
    """
    try:
        module = importlib.import_module("tether.engine.copy.layouts")
    except ModuleNotFoundError as exc:
        if exc.name != "tether.engine.copy.layouts":
            raise
        raise SourceError(f"{name}: OCI layout sources are not available in this build") from None
    factory = module.open_layout_source
    result: AbstractAsyncContextManager[ImageSource] = factory(name, options=options)
    return result


__all__ = [
    "MAX_CONFIG_SIZE",
    "ImageSource",
    "RegistrySource",
    "SourceError",
    "SourceImage",
    "open_layout_source",
]
