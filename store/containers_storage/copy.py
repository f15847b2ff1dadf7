"""Copying an image between stores without the network (``tether bound install``)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace

from tether.store.containers_storage.files import read_json_array
from tether.store.containers_storage.gojson import format_go_time, now_go_time
from tether.store.containers_storage.records import ImageRecord, big_data_file_name
from tether.store.containers_storage.store import Store
from tether.store.errors import StoreError

__all__ = ["copy_image"]


def copy_image(src: Store, image_id: str, dst: Store, *, names: Sequence[str] | None = None) -> ImageRecord:
    """Copy an image between stores without the network (used by ``bound install``).

    Layers the destination lacks are rebuilt from the source's tar-split + files and applied in
    the destination (parent order); the image record keeps the source's big data, metadata,
    ``created`` and ``digest``. ``names`` defaults to the source image's names.
    """
    image = src.find_image(image_id)
    if not image.top_layer:
        raise StoreError(f"copying image {image.id} from {src.root}: it has no layers")
    for layer in src.layer_chain(image.top_layer):
        existing = dst.get_layer(layer.id)
        if existing is not None and not existing.incomplete:
            continue
        with dst.stage_layer(layer_id=layer.id, parent=layer.parent) as writer:
            for chunk in src.export_layer(layer.id):
                writer.write(chunk)
            staged = writer.finish()
        staged = replace(staged, compression=layer.compression)
        dst.publish_layer(
            staged,
            expected_diff_digest=layer.diff_digest or staged.diff_digest,
            compressed_digest=layer.compressed_digest,
            compressed_size=layer.compressed_size,
        )
    big: list[tuple[str, bytes, str]] = []
    directory = src._image_dir(image)
    for key in image.big_data_names:
        data = (directory / big_data_file_name(key)).read_bytes()
        value = image.big_data_digests.get(key) or "sha256:" + hashlib.sha256(data).hexdigest()
        big.append((key, data, value))
    src_raw_created = None
    if image.created is not None:
        src_raw_created = format_go_time(image.created)
    created_text = _source_created_text(src, image) or src_raw_created or now_go_time()
    return dst._write_image(
        image_id=image.id,
        top_layer=image.top_layer,
        names=list(image.names) if names is None else list(names),
        big_data=big,
        metadata=image.metadata,
        created_text=created_text,
        digest=image.digest,
    )


def _source_created_text(store: Store, image: ImageRecord) -> str | None:
    """The exact ``created`` text of an image record (keeps nanoseconds)."""
    if image.read_only:
        return None
    for raw in read_json_array(store.images_dir / "images.json"):
        if raw.get("id") == image.id and isinstance(raw.get("created"), str):
            return str(raw["created"])
    return None
