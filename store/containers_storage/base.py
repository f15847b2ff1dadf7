"""The state of a containers-storage store and everything that only reads it.

:class:`StoreBase` holds the paths, the lock files and the test hooks of a store, reads and saves layers.json,
and answers the read-only questions (layers, images, chains, big data); :class:`~tether.store.containers_storage.
store.Store` adds writing to it (``layers.py``, ``images.py``, ``export.py``).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from tether.store.containers_storage.drivers import layer_tree, remove_layer_dirs, remove_tree
from tether.store.containers_storage.files import atomic_write, read_json_array
from tether.store.containers_storage.gojson import go_json_dumps
from tether.store.containers_storage.lockfile import LockFile, get_lockfile
from tether.store.containers_storage.records import (
    INCOMPLETE_FLAG,
    LAYER_FIELD_ORDER,
    ImageRecord,
    LayerRecord,
    big_data_file_name,
    image_from_raw,
    layer_from_raw,
    layer_incomplete,
    lookup_image,
    ordered,
)
from tether.store.containers_storage.staging import StagingDir
from tether.store.diskspace import DEFAULT_DISK_RESERVE, DiskReserve, SpaceGuard
from tether.store.errors import (
    CorruptStoreError,
    ImageUnknownError,
    LayerUnknownError,
    StoreError,
    UnsupportedError,
)

__all__ = ["CRASH_ENV", "DRIVERS", "STAGING_SUBDIR", "Extractor", "ExtractorFactory", "StoreBase"]

DRIVERS = ("overlay", "vfs")
#: Staging lives inside the driver's home: podman bind-mounts ``R/overlay`` onto itself
#: (overlay.go ``Init``, ``mount.MakePrivate``), so a rename from outside it fails with EXDEV.
#: Not ``R/overlay/staging``: podman's overlay ``Cleanup`` removes that one at every shutdown.
STAGING_NAME = "tether-staging"
#: The overlay staging base relative to the graph root (prefer :attr:`StoreBase.staging_base`).
STAGING_SUBDIR = Path("overlay") / STAGING_NAME
TAR_SPLIT_SUFFIX = ".tar-split.gz"  # layers.go tarSplitSuffix

#: The environment variable the CLI reads into ``Store.open(crash_at=...)``: the kill -9 tests name a step of
#: the write protocol there; never set in production.
CRASH_ENV = "TETHER_STORE_CRASH_AT"


class Extractor(Protocol):
    """What a :class:`~tether.store.containers_storage.layers.LayerWriter` feeds (the tar applier)."""

    def feed(self, chunk: bytes) -> None: ...
    def finish(self) -> Any: ...
    def abort(self) -> None: ...


#: ``(target_dir, driver, tar_split_path, background, space) -> Extractor``; ``space`` (a
#: :class:`~tether.store.diskspace.SpaceGuard` or None) must be checked as the extractor writes.
ExtractorFactory = Callable[[Path, str, Path, bool, SpaceGuard | None], Extractor]


@dataclass
class Layers:
    """layers.json (``records``, ours to rewrite) and volatile-layers.json (``volatile``, read only)."""

    records: list[dict[str, Any]]
    volatile: list[dict[str, Any]]

    def all(self) -> list[dict[str, Any]]:
        """Both files' records."""
        return self.records + self.volatile

    def by_id(self) -> dict[str, dict[str, Any]]:
        """Both files' records by layer id."""
        return {str(r["id"]): r for r in self.all()}


class _ReadOnlyStore:
    """An additional image store (storage.conf ``additionalimagestores``): read under read locks."""

    def __init__(self, root: Path, driver: str) -> None:
        self.root = root
        self.driver = driver

    def list_layers(self) -> list[LayerRecord]:
        lock = get_lockfile(self.root / f"{self.driver}-layers" / "layers.lock", read_only=True)
        with lock.shared():
            raws = read_json_array(self.root / f"{self.driver}-layers" / "layers.json")
        return [layer_from_raw(r, read_only=True) for r in raws]

    def list_images(self) -> list[ImageRecord]:
        lock = get_lockfile(self.root / f"{self.driver}-images" / "images.lock", read_only=True)
        with lock.shared():
            raws = read_json_array(self.root / f"{self.driver}-images" / "images.json")
        return [image_from_raw(r, read_only=True) for r in raws]


class StoreBase:
    """A containers-storage store (graph root ``root``) for one driver: its state and its reading half.

    ``crash_at`` names a step of the write protocol at which the process SIGKILLs itself (the kill -9 tests;
    see :data:`CRASH_ENV`); ``extractor_factory`` replaces the tar applier that staged layers are fed to.
    ``disk_reserve``: the free space layer writers leave on the store's filesystem (see
    :mod:`tether.store.diskspace`; ``DiskReserve.fixed(0)`` disables it).
    """

    root: Path
    driver: str
    concurrent_layers: bool

    def __init__(
        self,
        root: Path,
        *,
        driver: str,
        runroot: Path | None = None,
        additional_image_stores: Sequence[Path] = (),
        read_only: bool = False,
        crash_at: str | None = None,
        extractor_factory: ExtractorFactory | None = None,
        disk_reserve: DiskReserve = DEFAULT_DISK_RESERVE,
    ) -> None:
        if driver not in DRIVERS:
            raise UnsupportedError(f"storage driver {driver!r} is not supported (use overlay or vfs): {root}")
        self.root = root
        self.runroot = runroot
        self.driver = driver
        self.concurrent_layers = driver == "overlay"
        self.additional_image_stores = tuple(additional_image_stores)
        self.layers_dir = root / f"{driver}-layers"
        self.images_dir = root / f"{driver}-images"
        self.containers_dir = root / f"{driver}-containers"
        self.staging_base = root / driver / STAGING_NAME
        self.read_only = read_only
        self._layers_lock: LockFile = get_lockfile(self.layers_dir / "layers.lock", read_only=read_only)
        self._images_lock: LockFile = get_lockfile(self.images_dir / "images.lock", read_only=read_only)
        self._live_staging: dict[str, StagingDir] = {}
        self._session: StagingDir | None = None
        self._crash_at = crash_at
        self._extractor_factory = extractor_factory
        self.disk_reserve = disk_reserve

    def _crash_point(self, name: str) -> None:
        """The kill -9 test hook: SIGKILL this process at the step ``name`` when it is ``crash_at``."""
        if name == self._crash_at:
            os.kill(os.getpid(), signal.SIGKILL)

    def _load_layers(self) -> Layers:
        records = read_json_array(self.layers_dir / "layers.json")
        volatile = read_json_array(self.layers_dir / "volatile-layers.json")
        return Layers(records, volatile)

    def _save_layers(self, layers: Layers) -> None:
        # layers.go saveLayers: AtomicWriteFile(layers.json, 0600) then Touch the lock. As c/storage, the
        # directory is not fsynced: a rename a power cut loses leaves the previous layers.json, a state every
        # step of the write protocol passes through (what a kill leaves, which Store.open and podman clean).
        records = [ordered(r, LAYER_FIELD_ORDER) for r in layers.records]
        atomic_write(self.layers_dir / "layers.json", go_json_dumps(records))
        self._layers_lock.touch()

    def _tar_split_path(self, layer_id: str) -> Path:
        return self.layers_dir / f"{layer_id}{TAR_SPLIT_SUFFIX}"

    def _delete_layer_locked(self, layers: Layers, layer_id: str, *, save: bool) -> None:
        # layers.go deleteInternal: mark incomplete (saved) first, then remove driver data.
        raw = layers.by_id().get(layer_id)
        if raw is None:
            raise LayerUnknownError(f"deleting layer {layer_id} in {self.root}: no such layer")
        if raw in layers.volatile:
            raise StoreError(f"deleting layer {layer_id} in {self.root}: it is a volatile container layer")
        if not layer_incomplete(raw) and save:
            flags = dict(raw.get("flags") or {})
            flags[INCOMPLETE_FLAG] = True
            raw["flags"] = flags
            self._save_layers(layers)
        remove_layer_dirs(self.root, self.driver, layer_id)
        self._tar_split_path(layer_id).unlink(missing_ok=True)
        remove_tree(self.layers_dir / layer_id)  # layer big data dir
        layers.records = [r for r in layers.records if r["id"] != layer_id]
        if save:
            self._save_layers(layers)

    def list_layers(self) -> list[LayerRecord]:
        """Every layer of the primary store (layers.json and volatile-layers.json)."""
        with self._layers_lock.shared():
            layers = self._load_layers()
        return [layer_from_raw(r) for r in layers.records] + [layer_from_raw(r, volatile=True) for r in layers.volatile]

    def get_layer(self, layer_id: str) -> LayerRecord | None:
        """A layer by id (primary store, then additional image stores' layers), or ``None``."""
        for layer in self.list_layers():
            if layer.id == layer_id:
                return layer
        for extra in self._ro_stores():
            for layer in extra.list_layers():
                if layer.id == layer_id:
                    return replace(layer, read_only=True)
        return None

    def _ro_stores(self) -> list[_ReadOnlyStore]:
        return [_ReadOnlyStore(Path(p), self.driver) for p in self.additional_image_stores]

    def _load_images(self) -> list[dict[str, Any]]:
        return read_json_array(self.images_dir / "images.json")

    def list_images(self) -> list[ImageRecord]:
        """Images of the primary store, then those of additional image stores (read-only)."""
        with self._images_lock.shared():
            raws = self._load_images()
        images = [image_from_raw(r) for r in raws]
        seen = {i.id for i in images}
        for extra in self._ro_stores():
            for image in extra.list_images():
                if image.id not in seen:
                    seen.add(image.id)
                    images.append(image)
        return images

    def find_image(self, name_or_id: str) -> ImageRecord:
        """Look an image up as c/storage and podman do: full id, name, ``name:latest``, ``sha256:<id>``,
        manifest digest (``sha256:...`` or ``repo@sha256:...``), or a unique id prefix."""
        images = self.list_images()
        found = lookup_image(images, name_or_id)
        if found is None:
            raise ImageUnknownError(f"image {name_or_id!r} not found in {self.root}")
        return found

    def _image_dir(self, image: ImageRecord) -> Path:
        if image.read_only:
            for extra in self.additional_image_stores:
                candidate = Path(extra) / f"{self.driver}-images" / image.id
                if candidate.is_dir():
                    return candidate
        return self.images_dir / image.id

    def image_big_data(self, image_id: str, key: str) -> bytes:
        """The big-data item ``key`` (``manifest``, ``sha256:<config>``...) of an image."""
        image = self.find_image(image_id)
        path = self._image_dir(image) / big_data_file_name(key)
        try:
            return path.read_bytes()
        except FileNotFoundError as exc:
            raise StoreError(f"reading big data {key!r} of image {image.id} in {self.root}: missing") from exc

    def layer_chain(self, top_layer: str) -> list[LayerRecord]:
        """The layers from the base to ``top_layer`` (primary store, then additional stores)."""
        by_id = {layer.id: layer for layer in self.list_layers()}
        for extra in self._ro_stores():
            for layer in extra.list_layers():
                by_id.setdefault(layer.id, replace(layer, read_only=True))
        chain: list[LayerRecord] = []
        current: str | None = top_layer
        while current:
            link = by_id.get(current)
            if link is None:
                raise LayerUnknownError(f"layer {current} (of chain ending at {top_layer}) not found in {self.root}")
            chain.append(link)
            current = link.parent
            if len(chain) > 4096:
                raise CorruptStoreError(f"layer chain ending at {top_layer} in {self.root} loops")
        chain.reverse()
        return chain

    def layer_directory(self, layer: LayerRecord) -> Path:
        """Where the files of a layer are (overlay ``diff``, vfs full tree), additional stores included."""
        if layer.read_only:
            for extra in self.additional_image_stores:
                candidate = layer_tree(Path(extra), self.driver, layer.id)
                if candidate.is_dir():
                    return candidate
        return layer_tree(self.root, self.driver, layer.id)

    def tar_split_path(self, layer: LayerRecord) -> Path:
        """Where a layer's tar-split is (additional stores included)."""
        if layer.read_only:
            for extra in self.additional_image_stores:
                candidate = Path(extra) / f"{self.driver}-layers" / f"{layer.id}{TAR_SPLIT_SUFFIX}"
                if candidate.exists():
                    return candidate
        return self._tar_split_path(layer.id)

    def image_size(self, image: ImageRecord) -> int:
        """What podman reports as ``Size``: the layers' diff sizes plus the big-data sizes."""
        total = sum(image.big_data_sizes.values())
        if image.top_layer:
            total += sum(layer.diff_size or 0 for layer in self.layer_chain(image.top_layer))
        return total

    @property
    def _sessions_dir(self) -> Path:
        return self.root / "tether" / "sessions"
