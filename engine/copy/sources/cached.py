"""A registry image downloaded ahead of time (``--download-only``), applied from the store's download cache.

A complete :class:`~tether.engine.copy.downloads.DownloadRecord` holds what the registry served when the image
was downloaded: its manifests and config (kept whole in the cache) and every layer blob (verified then, and
verified again as they are applied). A pull of that name then applies exactly that image, asking the registry
nothing, as ``bootc upgrade --from-downloaded`` applies a staged download "without fetching from the image
source"; ``--policy always`` asks the registry instead. The registry is still the source of what the cache no
longer holds (a blob file removed meanwhile) and of signatures a policy requires.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING

import trio

from tether.engine.copy.image import SourceError, SourceImage
from tether.engine.copy.sources.registry import RegistrySource
from tether.registry.errors import DigestMismatchError
from tether.registry.manifest import MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE, compute_digest
from tether.registry.resolve import RawManifest, resolve_image

if TYPE_CHECKING:
    from tether.engine.copy.downloads import DownloadRecord
    from tether.registry.client import Hasher
    from tether.registry.manifest import Descriptor, Platform
    from tether.store.blobcache import BlobCache


class CachedRegistrySource(RegistrySource):
    """``source``'s image as ``record`` downloaded it; see the module docstring."""

    def __init__(self, source: RegistrySource, record: DownloadRecord, cache: BlobCache) -> None:
        super().__init__(client=source.client, candidates=source.candidates, name=source.name, pin=source.pin)
        self.record = record
        self.cache = cache
        self._ref = next((ref for ref in source.candidates if str(ref) == record.name), source.candidates[0])

    async def _read(self, digest: str, limit: int) -> bytes:
        data = await trio.to_thread.run_sync(lambda: self.cache.read_blob(digest, limit=limit))
        if data is None or compute_digest(data) != digest:
            state = "missing" if data is None else "damaged"
            raise SourceError(f"{self.description}: {digest} of its download is {state} (download it again, or "
                              "pull with --policy always)")
        return data

    async def prepare(self) -> None:
        """Nothing to announce or ping: the download is applied without the network."""
        return None

    async def top_digest(self) -> str | None:
        """What the name pointed at when it was downloaded (no request)."""
        return self.record.top

    async def read_top(self) -> RawManifest:
        raw = await self._read(self.record.top, MAX_MANIFEST_SIZE)
        return RawManifest(raw=raw, media_type=self.record.top_media_type, digest=self.record.top)

    async def read_manifest(self, descriptor: Descriptor) -> RawManifest:
        raw = await self._read(descriptor.digest, MAX_MANIFEST_SIZE)
        media_type = self.record.manifest_media_type if descriptor.digest == self.record.manifest else (
            descriptor.media_type)
        return RawManifest(raw=raw, media_type=media_type, digest=descriptor.digest)

    async def read_config(self, descriptor: Descriptor) -> bytes:
        return await self._read(descriptor.digest, MAX_CONFIG_SIZE)

    async def resolve(self, *, platform: Platform | None, top: RawManifest | None = None) -> SourceImage:
        resolved = await resolve_image(self, platform=platform, top=top)
        return SourceImage(transport="docker", description=self.description, names=(str(self._ref),),
                           reference=self._ref, resolved=resolved)

    def open_blob(self, descriptor: Descriptor, *, offset: int = 0, hasher: Hasher | None = None
                  ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        return self._open_blob(descriptor, offset, hasher)

    @asynccontextmanager
    async def _open_blob(self, descriptor: Descriptor, offset: int, hasher: Hasher | None
                         ) -> AsyncIterator[AsyncIterator[bytes]]:
        if hasher is not None and offset == descriptor.size:
            # The caller fed the whole blob from the cache: only the digest is left to check.
            actual = f"{hasher.name}:{hasher.hexdigest()}"
            if actual != descriptor.digest:
                raise DigestMismatchError(f"blob {descriptor.digest} ({descriptor.size} bytes): its download "
                                          f"has digest {actual}")
            yield _nothing()
            return
        # What the cache lost comes from the registry, by digest, from the endpoints the name has now.
        await self._fetch_top()
        async with super().open_blob(descriptor, offset=offset, hasher=hasher) as chunks:
            yield chunks


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


__all__ = ["CachedRegistrySource"]
