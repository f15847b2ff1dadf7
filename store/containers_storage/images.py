"""Writing images as containers/image's storage destination does, and removing them (delete, dangling layers).

Images are recorded last: big-data files first, then one atomic images.json write.  Lock order is
c/storage's: ``layers.lock`` before ``images.lock``.  Deleting follows store.go ``DeleteImage``, with a journal
so that a kill between removing the record and its layers leaves nothing unreferenced for ever.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from tether.store.containers_storage.base import Layers, StoreBase
from tether.store.containers_storage.drivers import layer_is_mounted, remove_tree
from tether.store.containers_storage.files import (
    atomic_write,
    digest_hex,
    read_json_array,
)
from tether.store.containers_storage.gojson import (
    format_go_time,
    go_json_dumps,
    go_json_string,
    normalize_go_time,
    now_go_time,
)
from tether.store.containers_storage.records import (
    IMAGE_FIELD_ORDER,
    MANIFEST_PREFIX,
    ImageRecord,
    add_image_names,
    big_data_file_name,
    image_from_raw,
    layer_incomplete,
    lookup_image,
    ordered,
    valid_digest,
)
from tether.store.containers_storage.staging import dead_sessions
from tether.store.errors import ImageUnknownError, LayerUnknownError, StoreError

__all__ = ["ImageWriting"]


class ImageWriting(StoreBase):
    """The image half of :class:`~tether.store.containers_storage.store.Store`: commit, names, delete, dangling
    layers."""

    def commit_image(
        self,
        *,
        image_id: str,
        top_layer: str,
        names: Sequence[str],
        manifest: bytes,
        manifest_digest: str,
        config: bytes,
        created: datetime | None,
        index_manifest: bytes | None = None,
        index_digest: str | None = None,
        signatures: Sequence[bytes] = (),
    ) -> ImageRecord:
        """Record an image as containers/image 5.23 ``storageImageDestination.Commit`` does.

        Big data, in c/image's order: the config under its digest, ``manifest-<index digest>`` when
        pulled through an index, ``manifest-<digest>``, ``manifest``, ``signatures`` (only when there
        are some) and ``signature-<manifest hex>`` (the concatenated signatures, empty without);
        ``metadata`` is ``{"signature-sizes":[...],"signatures-sizes":{"<digest>":[...]}}`` (the first
        key only with signatures); ``digest`` is the first manifest digest recorded; names are moved
        from other images. ``signatures`` are in c/image's ``signature.Blob`` form (simple signing: the
        OpenPGP bytes; sigstore: ``"\x00sigstore-json\n"`` + its JSON).
        """
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        if image_id != digest_hex(config_digest):
            raise StoreError(f"committing image {image_id} in {self.root}: id is not the config digest {config_digest}")
        big: list[tuple[str, bytes, str]] = [(config_digest, config, config_digest)]
        if index_manifest is not None and index_digest and index_manifest != manifest:
            big.append((f"{MANIFEST_PREFIX}-{index_digest}", index_manifest, index_digest))
        big.append((f"{MANIFEST_PREFIX}-{manifest_digest}", manifest, manifest_digest))
        big.append((MANIFEST_PREFIX, manifest, manifest_digest))
        sig_blob = b"".join(signatures)
        sig_digest = "sha256:" + hashlib.sha256(sig_blob).hexdigest()
        if sig_blob:
            big.append(("signatures", sig_blob, sig_digest))
        big.append((f"signature-{digest_hex(manifest_digest)}", sig_blob, sig_digest))
        sizes = [len(sig) for sig in signatures]
        meta: dict[str, Any] = {}
        if sizes:  # storageImageDestination.SignatureSizes, omitempty
            meta["signature-sizes"] = sizes
        meta["signatures-sizes"] = {manifest_digest: sizes}
        metadata = go_json_string(meta)
        created_text = _created_text(config, created)
        return self._write_image(
            image_id=image_id,
            top_layer=top_layer,
            names=names,
            big_data=big,
            metadata=metadata,
            created_text=created_text,
            digest=None,
        )

    def _write_image(
        self,
        *,
        image_id: str,
        top_layer: str,
        names: Sequence[str],
        big_data: Sequence[tuple[str, bytes, str]],
        metadata: str | None,
        created_text: str,
        digest: str | None,
    ) -> ImageRecord:
        for _key, _data, value in big_data:
            if not valid_digest(value):
                raise StoreError(f"committing image {image_id} in {self.root}: invalid digest {value!r}")
        with self._layers_lock.exclusive():
            layers = self._load_layers()
            top = layers.by_id().get(top_layer)
            if top is None or layer_incomplete(top):
                ro_top = None
                for extra in self._ro_stores():
                    ro_top = next((x for x in extra.list_layers() if x.id == top_layer), None)
                    if ro_top:
                        break
                if ro_top is None:
                    raise LayerUnknownError(
                        f"committing image {image_id} in {self.root}: top layer {top_layer} missing"
                    )
            with self._images_lock.exclusive():
                images = self._load_images()
                raw = next((r for r in images if r["id"] == image_id), None)
                if raw is not None and (raw.get("layer") or "") != top_layer:
                    raise StoreError(
                        f"committing image {image_id} in {self.root}: it exists with a different top layer "
                        f"{raw.get('layer')}"
                    )
                if raw is None:
                    raw = {"id": image_id}
                    if digest:
                        raw["digest"] = digest
                    raw["layer"] = top_layer
                    raw["big-data-names"] = []
                    raw["big-data-sizes"] = {}
                    raw["big-data-digests"] = {}
                    raw["created"] = created_text
                    new = True
                else:
                    new = False
                directory = self.images_dir / image_id
                directory.mkdir(mode=0o700, exist_ok=True)
                names_list = list(raw.get("big-data-names") or [])
                sizes = dict(raw.get("big-data-sizes") or {})
                digests = dict(raw.get("big-data-digests") or {})
                for key, data, value in big_data:
                    atomic_write(directory / big_data_file_name(key), data)
                    self._crash_point("image-after-big-data")
                    sizes[key] = len(data)
                    digests[key] = value
                    if key not in names_list:
                        names_list.append(key)
                    if not raw.get("digest") and key.startswith(MANIFEST_PREFIX):
                        raw["digest"] = value  # recomputeDigests: the first manifest digest sticks
                raw["big-data-names"] = names_list
                raw["big-data-sizes"] = sizes
                raw["big-data-digests"] = digests
                if metadata is not None:
                    raw["metadata"] = metadata
                add_image_names(images, raw, names)
                if new:
                    images.append(raw)
                ordered_images = [ordered(r, IMAGE_FIELD_ORDER) for r in images]
                self._crash_point("image-before-record")
                # Each file fdatasynced before its rename (c/image's storage destination, through
                # ioutils.AtomicWriteFile); no directory fsync, as c/storage: a rename lost to a power cut
                # leaves the image uncommitted, its layers published, which the next pull completes.
                atomic_write(self.images_dir / "images.json", go_json_dumps(ordered_images))
                self._images_lock.touch()
                self._crash_point("image-after-record")
                return image_from_raw(raw)

    def add_names(self, image_id: str, names: Sequence[str]) -> ImageRecord:
        """Tag an image (c/storage ``AddNames``: names moved from other images, history kept)."""
        with self._layers_lock.exclusive(), self._images_lock.exclusive():
            images = self._load_images()
            image = lookup_image([image_from_raw(r) for r in images], image_id)
            if image is None:
                raise ImageUnknownError(f"image {image_id!r} not found in {self.root}")
            raw = next(r for r in images if r["id"] == image.id)
            add_image_names(images, raw, names)
            data = go_json_dumps([ordered(r, IMAGE_FIELD_ORDER) for r in images])
            atomic_write(self.images_dir / "images.json", data)
            self._images_lock.touch()
            return image_from_raw(raw)

    def remove_names(self, image_id: str, names: Sequence[str]) -> ImageRecord:
        """Untag an image (c/storage ``RemoveNames``); the image itself stays."""
        with self._layers_lock.exclusive(), self._images_lock.exclusive():
            images = self._load_images()
            image = lookup_image([image_from_raw(r) for r in images], image_id)
            if image is None or image.read_only:
                raise ImageUnknownError(f"image {image_id!r} not found in {self.root}")
            raw = next(r for r in images if r["id"] == image.id)
            raw["names"] = [n for n in raw.get("names") or [] if n not in set(names)]
            data = go_json_dumps([ordered(r, IMAGE_FIELD_ORDER) for r in images])
            atomic_write(self.images_dir / "images.json", data)
            self._images_lock.touch()
            return image_from_raw(raw)

    def delete_image(self, image_id: str) -> tuple[str, ...]:
        """Delete an image and the layers no other image or container uses (store.go ``DeleteImage``).

        Crash safety beyond c/storage: the layers to remove are written to a journal
        (``R/tether/pending-deletes/<image-id>.json``) before the image record goes, so that a kill
        between the two leaves nothing unreferenced for ever: :meth:`open` finishes the job.
        """
        with self._layers_lock.exclusive():
            layers = self._load_layers()
            with self._images_lock.exclusive():
                images = self._load_images()
                image = lookup_image([image_from_raw(r) for r in images], image_id)
                if image is None or image.read_only:
                    raise ImageUnknownError(f"image {image_id!r} not found in {self.root}")
                containers = read_json_array(self.containers_dir / "containers.json")
                users = [str(c.get("id")) for c in containers if c.get("image") == image.id]
                if users:
                    raise StoreError(f"deleting image {image.id} in {self.root}: used by container {users[0]}")
                remaining = [r for r in images if r["id"] != image.id]
                chain = list(image.mapped_layers)
                current = image.top_layer or ""
                by_id = layers.by_id()
                while current and current not in chain:
                    chain.append(current)
                    current = str((by_id.get(current) or {}).get("parent") or "")
                to_remove = _removable_layers(chain, layers, remaining, containers)
                mounted = [x for x in to_remove if layer_is_mounted(self.root, self.driver, x)]
                if mounted:
                    raise StoreError(
                        f"deleting image {image.id} in {self.root}: layer {mounted[0]} is mounted (podman image "
                        "unmount it first)"
                    )
                journal = self._journal_dir / f"{image.id}.json"
                journal.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                atomic_write(journal, json.dumps({"image": image.id, "layers": chain}).encode())
                self._crash_point("delete-after-journal")
                atomic_write(
                    self.images_dir / "images.json", go_json_dumps([ordered(r, IMAGE_FIELD_ORDER) for r in remaining])
                )
                self._images_lock.touch()
                self._crash_point("delete-after-image-record")
                remove_tree(self.images_dir / image.id)
            for layer_id in to_remove:
                self._delete_layer_locked(layers, layer_id, save=True)
                self._crash_point("delete-after-layer")
            journal.unlink(missing_ok=True)
        return tuple(to_remove)

    @property
    def _journal_dir(self) -> Path:
        return self.root / "tether" / "pending-deletes"

    def _finish_pending_deletes(self, layers: Layers, images: list[dict[str, Any]]) -> bool:
        """Redo what a killed :meth:`delete_image` left (layers lock and images lock held)."""
        if not self._journal_dir.is_dir():
            return False
        changed = False
        for tmp in self._journal_dir.glob(".tmp-*"):
            tmp.unlink(missing_ok=True)
        image_ids = {str(r["id"]) for r in images}
        containers = read_json_array(self.containers_dir / "containers.json")
        for journal in sorted(self._journal_dir.glob("*.json")):
            try:
                entry = json.loads(journal.read_bytes())
                image_id, chain = str(entry["image"]), [str(x) for x in entry["layers"]]
            except (ValueError, KeyError, TypeError, OSError):
                journal.unlink(missing_ok=True)
                continue
            if image_id not in image_ids:  # the record went: finish removing its layers
                remove_tree(self.images_dir / image_id)
                removable = _removable_layers(chain, layers, images, containers)
                if any(layer_is_mounted(self.root, self.driver, x) for x in removable):
                    continue  # try again at the next open, once podman unmounted it
                for layer_id in removable:
                    self._delete_layer_locked(layers, layer_id, save=True)
                    changed = True
            journal.unlink(missing_ok=True)
        return changed

    def _forget_finished_sessions(self, layers: Layers, images: list[dict[str, Any]]) -> None:
        """Drop the records of dead sessions none of whose layers is dangling any more."""
        sessions = dead_sessions(self._sessions_dir)
        if not sessions:
            return
        dangling = set(_dangling(layers, images, read_json_array(self.containers_dir / "containers.json")))
        for lock, directory in sessions:
            try:
                listed = set((directory / "layers").read_text(encoding="ascii").split())
            except OSError:
                listed = set()
            if not listed & dangling:
                remove_tree(directory)
                lock.unlink(missing_ok=True)

    def dangling_layers(self) -> list[str]:
        """Complete layers no image (top or mapped layer) or container reaches, children first."""
        with self._layers_lock.shared(), self._images_lock.shared():
            layers = self._load_layers()
            images = self._load_images()
        return _dangling(layers, images, read_json_array(self.containers_dir / "containers.json"))

    def delete_dangling_layers(self) -> tuple[str, ...]:
        """Delete the dangling layers that tether processes now gone published (a pull killed or failed
        between publishing layers and committing its image). Layers podman creates, and those of live
        tether processes, are never touched; mounted ones are skipped. Returns the ids removed."""
        removed: list[str] = []
        with self._layers_lock.exclusive(), self._images_lock.exclusive():
            sessions = dead_sessions(self._sessions_dir)
            if not sessions:
                return ()
            layers = self._load_layers()
            images = self._load_images()
            containers = read_json_array(self.containers_dir / "containers.json")
            published: set[str] = set()
            for _lock, directory in sessions:
                with contextlib.suppress(OSError):
                    published.update((directory / "layers").read_text(encoding="ascii").split())
            for layer_id in _dangling(layers, images, containers):
                if layer_id in published and not layer_is_mounted(self.root, self.driver, layer_id):
                    self._delete_layer_locked(layers, layer_id, save=True)
                    removed.append(layer_id)
            for lock, directory in sessions:
                remove_tree(directory)
                lock.unlink(missing_ok=True)
        return tuple(removed)


def _removable_layers(chain: Sequence[str], layers: Layers, other_images: Sequence[Mapping[str, Any]],
                      containers: Sequence[Mapping[str, Any]]) -> list[str]:
    """store.go ``DeleteImage``'s walk: from the top of ``chain`` down, stop at the first layer another
    image uses as its top (or mapped) layer, a container uses, or that has a child not being removed.
    Layers of ``chain`` already gone are skipped."""
    present = layers.by_id()
    children: dict[str, list[str]] = {}
    for layer in layers.all():
        children.setdefault(str(layer.get("parent") or ""), []).append(str(layer["id"]))
    used: set[str] = set()
    for other in other_images:
        used.add(str(other.get("layer") or ""))
        used.update(str(x) for x in other.get("mapped-layers") or [])
    used.update(str(c.get("layer") or "") for c in containers)
    slated = set(chain)
    out: list[str] = []
    for layer_id in chain:
        if layer_id not in present:
            continue
        if layer_id in used or any(child not in slated for child in children.get(layer_id, [])):
            break
        out.append(layer_id)
    return out


def _dangling(layers: Layers, images: Sequence[Mapping[str, Any]],
              containers: Sequence[Mapping[str, Any]]) -> list[str]:
    by_id = layers.by_id()
    keep: set[str] = set()
    roots = [str(i.get("layer") or "") for i in images]
    roots += [str(x) for i in images for x in i.get("mapped-layers") or []]
    roots += [str(c.get("layer") or "") for c in containers]
    roots += [str(r["id"]) for r in layers.volatile]
    for root in roots:
        current = root
        while current and current not in keep:
            keep.add(current)
            current = str((by_id.get(current) or {}).get("parent") or "")
    candidates = [r for r in layers.records if str(r["id"]) not in keep and not layer_incomplete(r)]
    # children before parents: a layer's depth in its chain, deepest first
    def depth(layer_id: str) -> int:
        n = 0
        current = layer_id
        while current and n < 4096:
            current = str((by_id.get(current) or {}).get("parent") or "")
            n += 1
        return n

    return [str(r["id"]) for r in sorted(candidates, key=lambda r: -depth(str(r["id"])))]


def _created_text(config: bytes, created: datetime | None) -> str:
    """``created`` as c/image records it: the config's ``created`` whenever it has one (storage_dest.go
    ``Commit``: ``man.Inspect(...).Created``), re-marshalled as Go does (nanoseconds and offset kept);
    else the given time, else now."""
    with contextlib.suppress(ValueError, AttributeError):
        value = json.loads(config).get("created")
        if isinstance(value, str):
            config_text = normalize_go_time(value)
            if config_text is not None:
                return config_text
    if created is not None:
        return format_go_time(created)
    return now_go_time()
