"""Images from OCI layouts (``oci:DIR[:REF]``) and oci-archive files (``oci-archive:FILE[:REF]``).

:func:`open_layout_source` opens ``oci:DIR[:REF]``/``oci-archive:FILE[:REF]`` names for pulls and mirrors
(:func:`tether.engine.copy.sources.open_image_source` dispatches to it); :func:`open_bound_layout_source` serves
``bound sync --source oci:DIR`` (one bound image looked up in a layout by its full reference, the
``org.opencontainers.image.ref.name`` a ``tether mirror sync --to oci:DIR`` writes). :class:`LayoutReader` is the
async view of a layout or archive that the sources share.

Archives are read in place (:class:`tether.store.oci.OCIArchive`: tar headers indexed once, blobs read
at their offsets), not unpacked to a temporary directory as containers/image does. Every blob read is
verified against its digest and size; a mismatch raises :class:`tether.store.oci.BlobDigestError` at
the end of the stream, before the pull publishes anything.

Names recorded in containers-storage follow podman's libimage (``copyFromDefault``):

* ``oci:DIR:REF`` -> REF normalized as a docker reference (``app:1`` -> ``docker.io/library/app:1``,
  via containers/image ``storage.ParseStoreReference``); ``oci:DIR`` or ``oci:DIR:@N`` -> no name;
* ``oci-archive:FILE[:REF]`` -> the chosen entry's ref.name normalized by libimage ``NormalizeName``
  (short names get ``localhost/``); no annotation -> no name.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal

import trio

from tether.engine.copy.image import SourceError, SourceImage, Transport
from tether.registry.errors import InvalidReferenceError
from tether.registry.manifest import MAX_CONFIG_SIZE, Descriptor, Platform, parse_manifest
from tether.registry.reference import (
    OCIArchiveName,
    OCILayoutName,
    Reference,
    is_short_name,
    parse_image_name,
    parse_reference,
    parse_short_name,
)
from tether.registry.resolve import RawManifest, resolve_image
from tether.store.oci import MAX_MANIFEST_SIZE, IndexEntry, LayoutError, OCIArchive, OCILayout

if TYPE_CHECKING:
    from tether.registry.client import Hasher

__all__ = [
    "LayoutReader",
    "LayoutSource",
    "find_entry_for_image",
    "layout_pull_names",
    "normalize_layout_name",
    "open_bound_layout_source",
    "open_layout_reader",
    "open_layout_source",
]

#: Bytes read per thread hop while streaming a blob (a hop costs ~100 us; see performance notes).
READ_CHUNK = 1024 * 1024

LayoutTransport = Literal["oci", "oci-archive"]


class LayoutSourceError(SourceError):
    """A layout or archive does not hold the image asked for (names the layout and the image)."""


def normalize_layout_name(name: str, *, transport: LayoutTransport) -> Reference | None:
    """The docker reference podman records for a layout entry named ``name`` (see module doc).

    ``None`` when the name is not a valid docker reference (podman then records the image by id only).
    A reference without tag or digest gets ``:latest``.
    """
    try:
        if not is_short_name(name):
            return parse_reference(name).tag_name_only()
        short = parse_short_name(name)
    except InvalidReferenceError:
        return None
    if transport == "oci-archive":
        # libimage NormalizeName: a short name is a local image.
        domain, path = "localhost", short.path
    else:
        # reference.ParseNormalizedNamed: docker.io, and library/ for one-component paths.
        domain, path = "docker.io", short.path if "/" in short.path else f"library/{short.path}"
    try:
        return Reference(domain, path, short.tag, short.digest).tag_name_only()
    except InvalidReferenceError:
        return None


def find_entry_for_image(entries: Sequence[IndexEntry], image: str) -> IndexEntry | None:
    """The entry whose ref.name is ``image``: exactly, else equal once both are normalized as docker
    references (so ``quay.io/app`` finds ``quay.io/app:latest`` and ``docker.io/alpine`` finds
    ``docker.io/library/alpine:latest``)."""
    for entry in entries:
        if entry.ref_name == image:
            return entry
    wanted = normalize_layout_name(image, transport="oci")
    if wanted is None:
        return None
    for entry in entries:
        if entry.ref_name and normalize_layout_name(entry.ref_name, transport="oci") == wanted:
            return entry
    return None


@dataclass
class LayoutReader:
    """An OCI layout or oci-archive opened for reading, with async blob access (thread hops)."""

    transport: LayoutTransport
    path: Path
    _layout: OCILayout | None = None
    _archive: OCIArchive | None = None

    @property
    def description(self) -> str:
        return f"{self.transport}:{self.path}"

    def entries(self) -> tuple[IndexEntry, ...]:
        """The index.json entries (re-read for a directory layout)."""
        if self._archive is not None:
            return self._archive.entries()
        assert self._layout is not None
        return self._layout.entries()

    def resolve(self, ref: str | None) -> IndexEntry:
        """The entry ``ref`` names (``None``: the only one; ``@N``: entry N)."""
        if self._archive is not None:
            return self._archive.resolve(ref)
        assert self._layout is not None
        return self._layout.resolve(ref)

    def has_blob(self, digest: str, size: int | None = None) -> bool:
        """Whether the layout holds a blob."""
        store = self._archive if self._archive is not None else self._layout
        assert store is not None
        return store.has_blob(digest, size)

    def _open(self, digest: str, size: int | None) -> BinaryIO:
        store = self._archive if self._archive is not None else self._layout
        assert store is not None
        return store.open_blob(digest, size=size)

    def _read_small(self, digest: str, size: int | None, max_size: int) -> bytes:
        if size is not None and size > max_size:
            raise LayoutError(f"{self.description}: blob {digest} is {size} bytes, more than {max_size}")
        store = self._archive if self._archive is not None else self._layout
        assert store is not None
        actual = store.blob_size(digest)
        if size is not None and size >= 0 and actual != size:
            raise LayoutError(f"{self.description}: blob {digest} has {actual} bytes, its descriptor says {size}")
        return store.read_blob(digest, max_size=max_size)

    async def read_blob(self, digest: str, *, size: int | None = None, max_size: int = MAX_MANIFEST_SIZE) -> bytes:
        """A small blob (manifest, index, config) whole, verified, read in a worker thread."""
        data: bytes = await trio.to_thread.run_sync(self._read_small, digest, size, max_size)
        return data

    @asynccontextmanager
    async def open_blob(self, descriptor: Descriptor) -> AsyncIterator[AsyncIterator[bytes]]:
        """Stream a blob as chunks (one thread hop per :data:`READ_CHUNK`); verified at its end."""
        fh = await trio.to_thread.run_sync(self._open, descriptor.digest, descriptor.size)
        chunks = _chunks(fh)
        try:
            yield chunks
        finally:
            try:
                await chunks.aclose()  # no checkpoint: the generator is parked at a yield (or finished)
            finally:
                fh.close()

    def close(self) -> None:
        """Release the archive's file handle."""
        if self._archive is not None:
            self._archive.close()


async def _chunks(fh: BinaryIO) -> AsyncGenerator[bytes, None]:
    while True:
        chunk: bytes = await trio.to_thread.run_sync(fh.read, READ_CHUNK)
        if not chunk:
            return
        yield chunk


def _open_reader(transport: LayoutTransport, path: Path) -> LayoutReader:
    if transport == "oci-archive":
        return LayoutReader(transport, path, _archive=OCIArchive.open(path))
    return LayoutReader(transport, path, _layout=OCILayout.open(path))


@asynccontextmanager
async def open_layout_reader(transport: LayoutTransport, path: Path) -> AsyncIterator[LayoutReader]:
    """Open a layout (``oci``) or archive (``oci-archive``) for reading; closed on exit."""
    reader: LayoutReader = await trio.to_thread.run_sync(_open_reader, transport, Path(path))
    try:
        yield reader
    finally:
        reader.close()


class LayoutSource:
    """An :class:`~tether.engine.copy.image.ImageSource` for one entry of a layout or archive."""

    def __init__(self, *, reader: LayoutReader, entry: IndexEntry, description: str,
                 names: tuple[str, ...]) -> None:
        self.reader = reader
        self.entry = entry
        self.description = description
        self.local_names = names
        self.transport: Transport = reader.transport

    async def prepare(self) -> None:
        """Nothing to start: the layout is open."""

    async def top_digest(self) -> str | None:
        """The entry's digest, from index.json (already read)."""
        return self.entry.digest

    async def read_top(self) -> RawManifest:
        """The entry's manifest or index (index.json is already read: this is one file read)."""
        entry = self.entry
        raw = await self.reader.read_blob(entry.digest, size=entry.size)
        return RawManifest(raw, entry.media_type or parse_manifest(raw, None).media_type, entry.digest)

    async def read_manifest(self, descriptor: Descriptor) -> RawManifest:
        raw = await self.reader.read_blob(descriptor.digest, size=descriptor.size)
        return RawManifest(raw, descriptor.media_type or parse_manifest(raw, None).media_type, descriptor.digest)

    async def read_config(self, descriptor: Descriptor) -> bytes:
        return await self.reader.read_blob(descriptor.digest, size=descriptor.size, max_size=MAX_CONFIG_SIZE)

    async def resolve(self, *, platform: Platform | None, top: RawManifest | None = None) -> SourceImage:
        """The entry's image for ``platform``, through the one resolution path (every blob read verified)."""
        resolved = await resolve_image(self, platform=platform, top=top)
        return SourceImage(transport=self.transport, description=self.description, names=self.local_names,
                           reference=None, resolved=resolved)

    def open_blob(self, descriptor: Descriptor, *, offset: int = 0, hasher: Hasher | None = None
                  ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Stream a layer blob from the layout (verified); a local file is never resumed."""
        if offset or hasher is not None:
            raise SourceError(f"{self.description}: blob {descriptor.digest} is read whole from the layout")
        return self.reader.open_blob(descriptor)


def _podman_names(transport: LayoutTransport, ref: str | None, entry: IndexEntry) -> tuple[str, ...]:
    # oci: the REF given (podman ignores the annotation); oci-archive: the chosen entry's annotation.
    oci_name = ref if ref is not None and not ref.startswith("@") else None
    name = oci_name if transport == "oci" else entry.ref_name
    if not name:
        return ()
    normalized = normalize_layout_name(name, transport=transport)
    return (str(normalized),) if normalized is not None else ()


@asynccontextmanager
async def open_layout_source(name: OCILayoutName | OCIArchiveName) -> AsyncIterator[LayoutSource]:
    """The :class:`ImageSource` for ``oci:DIR[:REF]`` / ``oci-archive:FILE[:REF]`` (pull's hook)."""
    transport: LayoutTransport = "oci-archive" if isinstance(name, OCIArchiveName) else "oci"
    ref = name.reference
    if isinstance(name, OCILayoutName) and name.index is not None:
        ref = f"@{name.index}"
    async with open_layout_reader(transport, name.path) as reader:
        entry: IndexEntry = await trio.to_thread.run_sync(reader.resolve, ref)
        yield LayoutSource(reader=reader, entry=entry, description=str(name),
                           names=_podman_names(transport, ref, entry))


@asynccontextmanager
async def open_bound_layout_source(layout: str | OCILayoutName | OCIArchiveName, image: str
                                   ) -> AsyncIterator[LayoutSource]:
    """The source of bound image ``image`` (its ``Image=`` value) in a layout or archive.

    The entry is the one whose ref.name is ``image`` (see :func:`find_entry_for_image`), as
    ``tether mirror sync --to oci:DIR`` names entries; the image is recorded under ``image``
    normalized (the name the bound unit uses), so ``bound status`` finds it. ``LayoutSourceError``
    names the layout and the image if it is not there.
    """
    parsed = parse_image_name(layout) if isinstance(layout, str) else layout
    if not isinstance(parsed, OCILayoutName | OCIArchiveName):
        raise LayoutSourceError(f"{layout}: not an oci: or oci-archive: source")
    transport: LayoutTransport = "oci-archive" if isinstance(parsed, OCIArchiveName) else "oci"
    async with open_layout_reader(transport, parsed.path) as reader:
        entries: tuple[IndexEntry, ...] = await trio.to_thread.run_sync(reader.entries)
        entry = find_entry_for_image(entries, image)
        if entry is None:
            known = ", ".join(e.ref_name for e in entries if e.ref_name) or "no named images"
            raise LayoutSourceError(f"{transport}:{parsed.path} does not hold {image} (it holds: {known})")
        normalized = normalize_layout_name(image, transport="oci")
        names = (str(normalized),) if normalized is not None else ()
        yield LayoutSource(reader=reader, entry=entry, description=f"{transport}:{parsed.path}:{entry.ref_name}",
                           names=names)



def layout_pull_names(layout: str | OCILayoutName | OCIArchiveName, images: Sequence[str]) -> dict[str, str]:
    """Map bound images to ``oci:DIR:REF`` / ``oci-archive:FILE:REF`` pull names (blocking; reads index.json).

    For ``bound sync --source oci:DIR``: each image is looked up by :func:`find_entry_for_image`; the pull
    name uses the entry's ref.name, which podman (and tether) record as the image's name -- the bound
    image's own name, normalized, when the layout was written by ``tether mirror sync``. Raises
    :class:`LayoutSourceError` listing every image the layout does not hold.
    """
    parsed = parse_image_name(layout) if isinstance(layout, str) else layout
    if not isinstance(parsed, OCILayoutName | OCIArchiveName):
        raise LayoutSourceError(f"{layout}: not an oci: or oci-archive: source")
    if parsed.reference is not None or (isinstance(parsed, OCILayoutName) and parsed.index is not None):
        raise LayoutSourceError(f"{layout}: give the layout without :REF; images are looked up by their names")
    transport: LayoutTransport = "oci-archive" if isinstance(parsed, OCIArchiveName) else "oci"
    reader = _open_reader(transport, parsed.path)
    try:
        entries = reader.entries()
    finally:
        reader.close()
    out: dict[str, str] = {}
    missing: list[str] = []
    for image in images:
        entry = find_entry_for_image(entries, image)
        if entry is None or entry.ref_name is None:
            missing.append(image)
        else:
            out[image] = f"{transport}:{parsed.path}:{entry.ref_name}"
    if missing:
        known = ", ".join(e.ref_name for e in entries if e.ref_name) or "no named images"
        raise LayoutSourceError(f"{transport}:{parsed.path} does not hold {', '.join(missing)} (it holds: {known})")
    return out
