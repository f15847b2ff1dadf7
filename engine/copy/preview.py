"""What a pull would do, without doing it (``--dry-run``): per image, what the store has, what would be fetched
(layers and their exact bytes), and how much disk it would take.

The bytes to download are exact: a blob's size is in its manifest, and what the download cache already holds of
it (kept by an interrupted run, or downloaded ahead) is subtracted. The disk an image takes once applied is not
knowable before its layers are decompressed: a layer's descriptor gives only the compressed size, the config's
``rootfs.diff_ids`` give digests and no sizes, and containers/image has no estimate either. So the estimate is

* a layer copied from one the store has (same diffID): that layer's recorded uncompressed size, exactly;
* a layer fetched: its compressed size times :data:`EXPANSION`, plus the compressed bytes themselves, which
  the download cache holds until the layer is published;
* with ``--download-only``: the compressed bytes only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from tether.engine.copy.image import SourceImage
    from tether.engine.copy.plan import PullPlan
    from tether.store.blobcache import BlobCache
    from tether.store.containers_storage import LayerRecord

#: Uncompressed bytes per compressed byte assumed for a fetched layer. Measured on the benchmark corpus (gzip
#: layers of /usr/bin, /usr/share, Python's stdlib: 412 MB -> 1.1 GB unpacked, 2.7x; the store adds its
#: tar-split and a block per small file); 3 is rounded up so that the estimate errs on the side of space.
EXPANSION: Final = 3.0


@dataclass(frozen=True)
class LayerPreview:
    """One layer of an image: ``present`` (in the store), ``copy`` (from a stored layer with its diffID),
    ``fetch`` (downloaded by this image), ``shared`` (downloaded for an earlier image of the same run)."""

    digest: str
    size: int
    action: str
    held: int = 0         # bytes the download cache already holds
    unpacked: int | None = None   # the uncompressed size, when known (a copied layer)

    @property
    def download(self) -> int:
        """Bytes this layer would fetch."""
        return max(0, self.size - self.held) if self.action == "fetch" else 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"digest": self.digest, "size": self.size, "action": self.action,
                               "download": self.download}
        if self.held:
            out["downloaded"] = self.held
        if self.unpacked is not None:
            out["unpacked"] = self.unpacked
        return out


@dataclass(frozen=True)
class ImagePreview:
    """One image as a dry run sees it: its layers and what fetching and applying them would take."""

    layers: tuple[LayerPreview, ...]
    disk_estimate: int

    @property
    def download(self) -> int:
        """Exact bytes to download."""
        return sum(layer.download for layer in self.layers)

    @property
    def present(self) -> bool:
        """Whether every layer is in the store already (only the image record would be written)."""
        return all(layer.action == "present" for layer in self.layers)

    def to_json(self) -> dict[str, Any]:
        return {"layers": [layer.to_json() for layer in self.layers], "download": self.download,
                "diskEstimate": self.disk_estimate}


def preview_of(plan: PullPlan, image: SourceImage, *, layers: Mapping[str, LayerRecord], cache: BlobCache | None,
               download_only: bool = False) -> ImagePreview:
    """The preview of one image's plan (blocking: reads how much of each blob the cache holds)."""
    out: list[LayerPreview] = []
    disk = 0.0
    jobs = {job.layer_id: job for job in plan.jobs}
    for step in plan.images[0].steps:
        desc = step.descriptor
        if step.action == "present":
            out.append(LayerPreview(desc.digest, desc.size, "present"))
            continue
        if not step.owner:
            out.append(LayerPreview(desc.digest, desc.size, "shared"))
            continue
        job = jobs.get(step.layer_id)
        source = layers.get(job.copy_from) if job is not None and job.copy_from is not None else None
        if step.action == "copy":
            unpacked = source.diff_size if source is not None and source.diff_size is not None else None
            out.append(LayerPreview(desc.digest, desc.size, "copy", unpacked=unpacked))
            if not download_only:
                disk += unpacked if unpacked is not None else desc.size * EXPANSION
            continue
        held = cache.held(desc.digest) if cache is not None else 0
        layer = LayerPreview(desc.digest, desc.size, "fetch", held=min(held, desc.size))
        out.append(layer)
        disk += layer.download if download_only else desc.size * EXPANSION + layer.download
    return ImagePreview(layers=tuple(out), disk_estimate=int(disk))


__all__ = ["EXPANSION", "ImagePreview", "LayerPreview", "preview_of"]
