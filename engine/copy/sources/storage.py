"""A containers-storage image as a copy source (``bound install --bound-images=stored``).

bootc copies a bound image from the host's podman store into the new system's store with
``podman image push containers-storage:[...]IMAGE``; tether reads the source store directly. A store keeps no
compressed blobs: each layer is rebuilt from its tar-split and its files (``Store.export_layer``), and the
record's big data (manifests, config, signatures), metadata, created time and digest are carried over as
they are, so the copy is the same image byte for byte, with the same ids.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

import trio

from tether.engine.copy.image import SourceError, SourceImage, StoredImage, Transport
from tether.registry.errors import ManifestError
from tether.registry.manifest import MAX_CONFIG_SIZE, compute_digest, parse_manifest
from tether.registry.resolve import RawManifest, resolve_image

if TYPE_CHECKING:
    from tether.registry.client import Hasher
    from tether.registry.manifest import Descriptor, Platform
    from tether.store.containers_storage import ImageRecord, Store

#: c/image storage_image.go: the image's own manifest is the big data item ``manifest``.
MANIFEST_KEY = "manifest"


class StorageSource:
    """One image of a store; ``names`` are the names its copy is recorded under."""

    transport: Transport = "containers-storage"

    def __init__(self, *, store: Store, record: ImageRecord, names: tuple[str, ...]) -> None:
        self.store = store
        self.record = record
        self.local_names = names
        self.description = f"containers-storage:[{store.driver}@{store.root}]{record.id}"

    def _big_data(self, key: str) -> bytes:
        if key not in self.record.big_data_names:
            raise SourceError(f"{self.description}: the image has no {key!r} big data item")
        return self.store.image_big_data(self.record.id, key)

    async def prepare(self) -> None:
        """Nothing to start: the store is local."""

    async def top_digest(self) -> str | None:
        """``None``: :meth:`read_top` is a local read already."""
        return None

    async def read_top(self) -> RawManifest:
        """The image's manifest (a stored image is one platform's: its index, if any, is not what it runs)."""
        raw: bytes = await trio.to_thread.run_sync(self._big_data, MANIFEST_KEY)
        try:
            media_type = parse_manifest(raw, None).media_type
        except ManifestError as exc:
            raise SourceError(f"{self.description}: {exc}") from None
        return RawManifest(raw, media_type, compute_digest(raw))

    async def read_manifest(self, descriptor: Descriptor) -> RawManifest:
        raw: bytes = await trio.to_thread.run_sync(self._big_data, f"{MANIFEST_KEY}-{descriptor.digest}")
        return RawManifest(raw, descriptor.media_type or parse_manifest(raw, None).media_type, compute_digest(raw))

    async def read_config(self, descriptor: Descriptor) -> bytes:
        raw: bytes = await trio.to_thread.run_sync(self._big_data, descriptor.digest)
        if len(raw) > MAX_CONFIG_SIZE or compute_digest(raw) != descriptor.digest:
            raise SourceError(f"{self.description}: config {descriptor.digest} does not match its manifest")
        return raw

    async def resolve(self, *, platform: Platform | None, top: RawManifest | None = None) -> SourceImage:
        resolved = await resolve_image(self, platform=platform, top=top)
        record = self.record
        layers = await trio.to_thread.run_sync(
            lambda: tuple(self.store.layer_chain(record.top_layer)) if record.top_layer else ())
        return SourceImage(transport=self.transport, description=self.description, names=self.local_names,
                           reference=None, resolved=resolved,
                           stored=StoredImage(store=self.store, record=record, layers=layers))

    def open_blob(self, descriptor: Descriptor, *, offset: int = 0, hasher: Hasher | None = None
                  ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        raise SourceError(f"{self.description}: a store holds no compressed blobs (its layers are copied)")


__all__ = ["StorageSource"]
