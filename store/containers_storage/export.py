"""Reading layers back as tars (from tar-split + files, as c/storage's ``Diff`` does) and checking a store."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from tether.store.containers_storage.base import StoreBase
from tether.store.containers_storage.records import MANIFEST_PREFIX, LayerRecord, big_data_file_name
from tether.store.errors import LayerUnknownError, StoreError

if TYPE_CHECKING:
    from tether.store.tar.reader import Entry
    from tether.store.tar.treecheck import TreeModel

__all__ = ["Exporting"]


class Exporting(StoreBase):
    """Layer export and ``check`` for :class:`~tether.store.containers_storage.store.Store`."""

    def export_layer(self, layer_id: str) -> Iterator[bytes]:
        """The layer's exact tar, rebuilt from its tar-split and files (digest == ``diff-digest``)."""
        layer = self.get_layer(layer_id)
        if layer is None:
            raise LayerUnknownError(f"exporting layer {layer_id} from {self.root}: no such layer")
        split = self.tar_split_path(layer)
        if not split.exists():
            raise StoreError(f"exporting layer {layer_id} from {self.root}: no tar-split file {split}")
        # Imported on the first export (tether check, bound install): every command opening a Store would
        # otherwise pay ~4.4 ms of start-up for tar-split, ISA-L and fastcrc (python -X importtime; the
        # store's own import is ~34 ms).
        from tether.store.tar.tarsplit import assemble_tar

        return assemble_tar(split, self.layer_directory(layer))

    def check(self) -> list[str]:
        """Verify the store: every layer's files reproduce its diff digest and size, and its directory holds
        exactly what its tar-split describes (:mod:`tether.store.tar.treecheck`: nothing missing, nothing added,
        no file of another type); images' top layers, chains and big data are intact.  Returns the problems
        found (empty when healthy), each naming its layer or image and, for a tree, the path."""
        # Imported here, as in export_layer: the tar reader and tar-split with their libraries are ~14 ms of
        # python -X importtime that every command opening a Store would pay otherwise.
        from tether.store.tar.treecheck import HeaderReader, TreeModel

        problems: list[str] = []
        layers = self.list_layers()
        by_id = {layer.id: layer for layer in layers}
        headers: dict[str, list[Entry]] = {}  # vfs: each layer's headers, for the chains above it
        ownership = os.geteuid() == 0  # as another user, files we could not chown keep our ids
        for layer in layers:
            if layer.incomplete:
                problems.append(f"layer {layer.id}: marked incomplete")
                continue
            if layer.parent and layer.parent not in by_id:
                problems.append(f"layer {layer.id}: parent {layer.parent} missing")
            if not self.layer_directory(layer).is_dir():
                problems.append(f"layer {layer.id}: directory {self.layer_directory(layer)} missing")
                continue
            if self.driver == "overlay":
                problems.extend(self._check_overlay_links(layer))
            if layer.volatile or not layer.diff_digest:
                continue
            reader = HeaderReader()
            try:
                digest = hashlib.sha256()
                size = 0
                for chunk in self.export_layer(layer.id):
                    digest.update(chunk)
                    size += len(chunk)
                    reader.consume(chunk)
                reader.end()
            except (OSError, StoreError, ValueError) as exc:
                problems.append(f"layer {layer.id}: cannot rebuild its tar: {exc}")
                continue
            if "sha256:" + digest.hexdigest() != layer.diff_digest:
                problems.append(
                    f"layer {layer.id}: rebuilt tar digest sha256:{digest.hexdigest()} "
                    f"!= diff-digest {layer.diff_digest}"
                )
                continue
            if layer.diff_size is not None and size != layer.diff_size:
                problems.append(f"layer {layer.id}: rebuilt tar size {size} != diff-size {layer.diff_size}")
                continue
            if self.driver == "overlay":
                model = TreeModel("overlay")
                model.apply(reader.entries)
                problems.extend(self._tree_problems(layer, model, ownership))
            else:
                headers[layer.id] = reader.entries
        for layer in layers:
            if layer.id not in headers:
                continue
            # vfs: the directory is the whole chain, as c/storage's Check replays every layer's headers.
            try:
                chain = self.layer_chain(layer.id)
            except StoreError:
                continue  # reported above (a parent is missing)
            if not all(link.id in headers for link in chain):
                continue  # a layer below could not be read (reported above)
            model = TreeModel("vfs")
            for index, link in enumerate(chain):
                model.apply(headers[link.id], layer=index)
            problems.extend(self._tree_problems(layer, model, ownership))
        for image in self.list_images():
            if image.read_only:
                continue
            if not image.top_layer or image.top_layer not in by_id:
                problems.append(f"image {image.id}: top layer {image.top_layer} missing")
            directory = self._image_dir(image)
            for key in image.big_data_names:
                path = directory / big_data_file_name(key)
                try:
                    data = path.read_bytes()
                except OSError:
                    problems.append(f"image {image.id}: big data {key!r} missing")
                    continue
                expected = image.big_data_digests.get(key)
                actual = "sha256:" + hashlib.sha256(data).hexdigest()
                if expected and not key.startswith(MANIFEST_PREFIX) and actual != expected:
                    problems.append(f"image {image.id}: big data {key!r} does not match {expected}")
        return problems

    def _tree_problems(self, layer: LayerRecord, model: TreeModel, ownership: bool) -> list[str]:
        return [f"layer {layer.id}: tree does not match its tar-split: {difference}"
                for difference in model.compare(self.layer_directory(layer), ownership=ownership)]

    def _check_overlay_links(self, layer: LayerRecord) -> list[str]:
        home = self.root / "overlay" / layer.id
        try:
            link = (home / "link").read_text(encoding="ascii")
        except OSError:
            return [f"layer {layer.id}: overlay link file missing"]
        target = self.root / "overlay" / "l" / link
        try:
            if os.readlink(target) != f"../{layer.id}/diff":
                return [f"layer {layer.id}: overlay l/{link} points elsewhere"]
        except OSError:
            return [f"layer {layer.id}: overlay l/{link} missing"]
        return []
