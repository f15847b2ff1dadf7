"""What blob destinations (an OCI layout, an archive, a registry) copy: a tree of manifests and their blobs.

A mirror copies what a name points at byte for byte: the top manifest (an index, possibly narrowed to the
chosen platforms, or an image manifest), the manifests under it, and every blob they reference, each once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from tether.registry.manifest import Descriptor, ImageManifest
    from tether.registry.reference import Reference
    from tether.registry.resolve import RawManifest

#: Layers that must not be pushed anywhere (Windows base layers): skopeo leaves them out too.
FOREIGN_LAYER_TYPES = frozenset(
    {
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    }
)


@dataclass(frozen=True, kw_only=True)
class ManifestTree:
    """One image as a mirror writes it.

    ``target`` is where it goes (the layout entry's ref.name, or the destination reference); ``top`` is what
    is written under that name (a narrowed index has a digest of its own), ``source_digest`` what the source
    name points at; ``children`` are written before ``top``, ``blobs`` before any manifest.
    """

    source_ref: Reference
    target: str
    dest_ref: Reference | None
    top: RawManifest
    source_digest: str
    children: tuple[RawManifest, ...]
    blobs: tuple[Descriptor, ...]
    platforms: tuple[str, ...] = ()

    @property
    def digests(self) -> tuple[str, ...]:
        """Every manifest digest written (children first)."""
        return (*(m.digest for m in self.children), self.top.digest)


@dataclass(frozen=True)
class BlobOutcome:
    """How one blob got to the destination."""

    how: Literal["copied", "present", "mounted"]
    size: int


def distributable_blobs(manifest: ImageManifest) -> Iterable[Descriptor]:
    """The config and layers of ``manifest`` that may be copied (foreign layers with ``urls`` are left out)."""
    for d in (manifest.config, *manifest.layers):
        if d.media_type in FOREIGN_LAYER_TYPES and d.urls:
            continue
        yield d


__all__ = ["FOREIGN_LAYER_TYPES", "BlobOutcome", "ManifestTree", "distributable_blobs"]
