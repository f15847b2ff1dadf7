"""A registry as an image source (``docker://`` and plain references), through a shared registry client.

Endpoints (registries.conf mirrors, then the primary) are the client's business: the manifest comes from the
first endpoint that serves it, and blobs from that endpoint first, the others after it
(:meth:`tether.registry.client.RegistryClient.resolve_image`). A short name has several candidate references;
the first that resolves wins, as containers/image's short-name resolution in permissive mode does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

from tether.engine.copy.image import SourceError, SourceImage, Transport
from tether.registry.errors import RegistryError, TransportError
from tether.registry.resolve import RawManifest

if TYPE_CHECKING:
    from tether.registry.client import FetchedManifest, Hasher, RegistryClient
    from tether.registry.manifest import Descriptor, Platform
    from tether.registry.reference import Reference
    from tether.registry.registries_conf import PullSource


class RegistrySource:
    """An image in a registry; ``candidates`` are the fully qualified references to try, in order.

    ``pin`` (a lock file's digest): what each candidate is fetched by, while the image keeps the candidate's
    name (its tag) in the store, so that a tag that moved since the lock was made still names the locked image.
    """

    transport: Transport = "docker"

    def __init__(self, *, client: RegistryClient, candidates: Sequence[Reference], name: str,
                 pin: str | None = None) -> None:
        if not candidates:
            raise SourceError(f"{name}: no registry to pull from")
        self.client = client
        self.candidates = tuple(candidates)
        self.name = name
        self.pin = pin
        self.description = f"docker://{candidates[0]}" if len(candidates) == 1 else name
        self.local_names = tuple(str(ref) for ref in self.candidates)
        self._top: tuple[Reference, FetchedManifest] | None = None
        self._endpoints: tuple[PullSource, ...] = ()

    @property
    def reference(self) -> Reference:
        """The reference that served the top manifest (the first candidate before :meth:`read_top`)."""
        return self._top[0] if self._top is not None else self.candidates[0]

    @property
    def origin(self) -> tuple[str, str]:
        """(registry host, repository) of the reference, so a mirror on the same registry can mount blobs."""
        ref = self.reference
        return ref.registry_host, ref.path

    async def _fetch_top(self) -> tuple[Reference, FetchedManifest]:
        if self._top is not None:
            return self._top
        last: RegistryError | None = None
        for ref in self.candidates:
            try:
                fetched = await self.client.fetch_manifest(self._by_digest(ref))
            except RegistryError as exc:  # next candidate (containers/image tries every candidate)
                last = exc
                if len(self.candidates) == 1:
                    raise
                continue
            wanted = self.pin or ref.digest
            if wanted is not None and fetched.digest != wanted:
                raise SourceError(f"{self._by_digest(ref)}: the registry served a manifest with digest "
                                  f"{fetched.digest}")
            self._top = (ref, fetched)
            self._endpoints = (fetched.source,)
            return self._top
        assert last is not None
        raise last

    def _by_digest(self, ref: Reference) -> Reference:
        return ref.with_digest(self.pin) if self.pin is not None else ref

    async def prepare(self) -> None:
        """Announce the candidates to the client (one token for every repository of a registry) and ping
        their registry while the caller does local work (not for a digest, nor a lock file's pin: the store
        may answer alone)."""
        await self.client.prepare(self.candidates, ping=self.pin is None and any(
            ref.digest is None for ref in self.candidates))

    async def top_digest(self) -> str | None:
        """What the name points at, by digest: the reference's own digest (no request), else a ``HEAD`` of the
        first candidate that answers; ``None`` when none says (then :meth:`read_top` asks, and reports errors)."""
        if self._top is not None:
            return self._top[1].digest
        if self.pin is not None:
            return self.pin
        for ref in self.candidates:
            if ref.digest is not None:
                return ref.digest
            try:
                return await self.client.manifest_digest(ref)
            except TransportError:
                if len(self.candidates) == 1:  # waited out already: asking again with a GET would wait twice
                    raise
            except RegistryError:  # read_top asks again and names the error in its own words
                continue
        return None

    async def read_top(self) -> RawManifest:
        _, fetched = await self._fetch_top()
        return fetched

    async def read_manifest(self, descriptor: Descriptor) -> RawManifest:
        ref, _ = await self._fetch_top()
        fetched: FetchedManifest = await self.client.fetch_manifest(ref.with_digest(descriptor.digest))
        return fetched

    async def resolve(self, *, platform: Platform | None, top: RawManifest | None = None) -> SourceImage:
        ref, fetched = await self._fetch_top()
        resolved = await self.client.resolve_image(self._by_digest(ref), platform=platform, top=fetched)
        self._endpoints = resolved.sources
        # Recorded under the name the user gave, fully qualified, with the tag (podman records "host/repo:tag";
        # a digest-only reference is recorded as "host/repo@sha256:...").
        return SourceImage(transport="docker", description=self.description, names=(str(ref),), reference=ref,
                           resolved=resolved, endpoints=resolved.sources)

    def open_blob(self, descriptor: Descriptor, *, offset: int = 0, hasher: Hasher | None = None
                  ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        if not self._endpoints:
            raise SourceError(f"{self.description}: open_blob before read_top")
        return self.client.open_blob(self._endpoints, descriptor, offset=offset, hasher=hasher)


__all__ = ["RegistrySource"]
