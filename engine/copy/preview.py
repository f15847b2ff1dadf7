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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
    key: str = field(default="", compare=False)   # the layer at the destination (the plan's layer id)
    disk: int = field(default=0, compare=False)   # what this layer adds to its image's disk estimate

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
    jobs = {job.layer_id: job for job in plan.jobs}
    for step in plan.images[0].steps:
        desc = step.descriptor
        if step.action == "present":
            out.append(LayerPreview(desc.digest, desc.size, "present", key=step.layer_id))
            continue
        if not step.owner:
            out.append(LayerPreview(desc.digest, desc.size, "shared", key=step.layer_id))
            continue
        job = jobs.get(step.layer_id)
        source = layers.get(job.copy_from) if job is not None and job.copy_from is not None else None
        if step.action == "copy":
            unpacked = source.diff_size if source is not None and source.diff_size is not None else None
            disk = 0 if download_only else unpacked if unpacked is not None else int(desc.size * EXPANSION)
            out.append(LayerPreview(desc.digest, desc.size, "copy", unpacked=unpacked, key=step.layer_id,
                                    disk=disk))
            continue
        held = min(cache.held(desc.digest) if cache is not None else 0, desc.size)
        download = desc.size - held
        disk = download if download_only else int(desc.size * EXPANSION) + download
        out.append(LayerPreview(desc.digest, desc.size, "fetch", held=held, key=step.layer_id, disk=disk))
    return ImagePreview(layers=tuple(out), disk_estimate=sum(layer.disk for layer in out))


def in_request_order(previews: Sequence[ImagePreview | None]) -> list[ImagePreview | None]:
    """``previews`` with each layer several images need attributed to the first of them in request order.

    Images are planned as they resolve, in whatever order their registries answer, so the image that happens
    to plan a shared layer first owns it (``fetch``/``copy``) and the others show it ``shared``. A report
    should not depend on that race: the owner's entry moves to the earliest image that needs the layer, and
    the disk estimates follow it.
    """
    owned = {layer.key: layer for p in previews if p is not None for layer in p.layers
             if layer.action in ("fetch", "copy")}
    seen: set[str] = set()
    out: list[ImagePreview | None] = []
    for p in previews:
        if p is None:
            out.append(None)
            continue
        layers: list[LayerPreview] = []
        for layer in p.layers:
            owner = owned.get(layer.key)
            if owner is None or layer.action == "present":
                layers.append(layer)
            elif layer.key in seen:
                layers.append(LayerPreview(layer.digest, layer.size, "shared", key=layer.key))
            else:
                seen.add(layer.key)
                layers.append(owner)  # the blob the owner would fetch (the same layer, maybe another blob of it)
        out.append(ImagePreview(layers=tuple(layers), disk_estimate=sum(layer.disk for layer in layers)))
    return out


__all__ = ["EXPANSION", "ImagePreview", "LayerPreview", "in_request_order", "preview_of"]
