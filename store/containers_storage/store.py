"""The containers-storage store: :class:`Store`, opening and recovering what killed writers left.

Layout and formats: containers/storage ``layers.go``, ``images.go``, ``store.go``,
``drivers/overlay/overlay.go``, ``drivers/vfs/driver.go``, ``pkg/lockfile``, ``pkg/ioutils``;
containers/image 5.23 ``storage/storage_dest.go`` for what a pull records.  See
``shared/reference/containers-storage.md``.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Sequence
from pathlib import Path

from tether.store.containers_storage.base import DRIVERS, TAR_SPLIT_SUFFIX, ExtractorFactory
from tether.store.containers_storage.drivers import LAYER_ID_RE, layer_is_mounted, remove_layer_dirs, remove_tree
from tether.store.containers_storage.export import Exporting
from tether.store.containers_storage.files import read_json_array
from tether.store.containers_storage.images import ImageWriting
from tether.store.containers_storage.layers import LayerWriting
from tether.store.containers_storage.lockfile import get_lockfile
from tether.store.containers_storage.records import layer_incomplete
from tether.store.containers_storage.staging import clean_staging
from tether.store.diskspace import DEFAULT_DISK_RESERVE, DiskReserve
from tether.store.errors import CorruptStoreError, StoreError

__all__ = ["Store", "detect_driver"]


class Store(LayerWriting, ImageWriting, Exporting):
    """A containers-storage store (graph root ``root``) for one driver.

    Blocking; safe to use from several threads (the engine calls it via ``trio.to_thread``), and
    from several processes at once together with podman, through c/storage's lock files.  Reading:
    :class:`~tether.store.containers_storage.base.StoreBase`; layers: :class:`~tether.store.containers_storage.
    layers.LayerWriting`; images: :class:`~tether.store.containers_storage.images.ImageWriting`; export and
    check: :class:`~tether.store.containers_storage.export.Exporting`.
    """

    @classmethod
    def open(
        cls,
        root: Path,
        *,
        runroot: Path | None = None,
        driver: str | None = None,
        additional_image_stores: Sequence[Path] = (),
        crash_at: str | None = None,
        extractor_factory: ExtractorFactory | None = None,
        disk_reserve: DiskReserve = DEFAULT_DISK_RESERVE,
        read_only: bool = False,
    ) -> Store:
        """Open (creating if needed) the store at ``root``; clean what a killed writer left.

        ``driver``: the argument, else what the store already holds, else ``overlay``.  ``crash_at`` and
        ``extractor_factory``: the test hooks of :class:`~tether.store.containers_storage.base.StoreBase`.
        ``disk_reserve``: what layer writers leave free on the store's filesystem (default ``max(1 GiB, 5%)``,
        at most 10 GiB; ``DiskReserve.fixed(0)`` disables it; see :mod:`tether.store.diskspace`).
        ``read_only``: open it for reading only, creating and cleaning nothing (a dry run must change no file;
        a store that does not exist reads as empty).
        """
        root = Path(os.path.abspath(root))
        chosen = driver or detect_driver(root) or "overlay"
        if read_only or (root.is_dir() and not os.access(root, os.W_OK)):
            # A store on a read-only filesystem (or not ours to write): readable, like c/storage's
            # read-only stores; every write then fails naming the store.
            return cls(root, driver=chosen, runroot=runroot, additional_image_stores=additional_image_stores,
                       read_only=True, crash_at=crash_at, extractor_factory=extractor_factory,
                       disk_reserve=disk_reserve)
        store = cls(root, driver=chosen, runroot=runroot, additional_image_stores=additional_image_stores,
                    crash_at=crash_at, extractor_factory=extractor_factory,
                       disk_reserve=disk_reserve)
        try:
            store._create_layout()
            store._recover()
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM) or not (root / f"{chosen}-layers").is_dir():
                raise StoreError(f"opening store {root}: {exc}") from exc
            store = cls(root, driver=chosen, runroot=runroot, additional_image_stores=additional_image_stores,
                        read_only=True, crash_at=crash_at, extractor_factory=extractor_factory,
                       disk_reserve=disk_reserve)
        return store

    def _create_layout(self) -> None:
        # store.go GetStore + load(): graph root dirs 0700, storage.lock and userns.lock created.
        for directory in (self.root, self.root / "mounts", self.root / "tmp", self.root / self.driver,
                          self.layers_dir, self.images_dir):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name in ("storage.lock", "userns.lock"):
            path = self.root / name
            if not path.exists():
                os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644))
        if self.driver == "overlay":
            (self.root / "overlay" / "l").mkdir(mode=0o755, exist_ok=True)
        else:
            (self.root / "vfs" / "dir").mkdir(mode=0o700, exist_ok=True)
        for path in (self.layers_dir / "layers.lock", self.images_dir / "images.lock"):
            if not path.exists():
                os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644))
        if self.runroot is not None:
            (self.runroot / f"{self.driver}-layers").mkdir(mode=0o700, parents=True, exist_ok=True)

    def _recover(self) -> None:
        """Remove incomplete layers, orphaned layer/image dirs, temp files and dead staging dirs.

        Under ``storage.lock`` (held by c/storage while it (re)initialises the graph driver, e.g. podman's
        shutdown unmounting the overlay home), then ``layers.lock``, then ``images.lock``: c/storage's order.
        """
        with get_lockfile(self.root / "storage.lock").exclusive(), self._layers_lock.exclusive():
            layers = self._load_layers()
            changed = False
            for raw in list(layers.records):
                if layer_incomplete(raw):
                    self._delete_layer_locked(layers, str(raw["id"]), save=False)
                    changed = True
            if changed:
                self._save_layers(layers)
            known = set(layers.by_id())
            self._remove_orphan_layer_dirs(known)
            for tmp in self.layers_dir.glob(".tmp-*"):
                tmp.unlink(missing_ok=True)
            for split in self.layers_dir.glob(f"*{TAR_SPLIT_SUFFIX}"):
                if split.name[: -len(TAR_SPLIT_SUFFIX)] not in known:
                    split.unlink(missing_ok=True)
            clean_staging(self.staging_base)
            with self._images_lock.exclusive():
                images = read_json_array(self.images_dir / "images.json")
                self._finish_pending_deletes(layers, images)
                self._forget_finished_sessions(layers, images)
                ids = {str(r["id"]) for r in images}
                for entry in self.images_dir.iterdir():
                    if entry.name.startswith(".tmp-"):
                        entry.unlink(missing_ok=True)
                    elif entry.is_dir() and LAYER_ID_RE.match(entry.name):
                        if entry.name not in ids:
                            remove_tree(entry)
                        else:
                            for tmp in entry.glob(".tmp-*"):
                                tmp.unlink(missing_ok=True)

    def _remove_orphan_layer_dirs(self, known: set[str]) -> None:
        home = self.root / "overlay" if self.driver == "overlay" else self.root / "vfs" / "dir"
        if not home.is_dir():
            return
        for entry in home.iterdir():
            if (LAYER_ID_RE.match(entry.name) and entry.name not in known and entry.is_dir()
                    and not layer_is_mounted(self.root, self.driver, entry.name)):
                remove_layer_dirs(self.root, self.driver, entry.name)
        if self.driver == "overlay":
            links = home / "l"
            if links.is_dir():
                for link in links.iterdir():
                    try:
                        target = os.readlink(link)
                    except OSError:
                        continue
                    parts = target.split("/")
                    if len(parts) == 3 and parts[0] == ".." and parts[2] == "diff" and not (home / parts[1]).exists():
                        link.unlink(missing_ok=True)


def detect_driver(root: Path) -> str | None:
    """The driver a store already uses: the one whose layers.json has records, else whose home exists."""
    for driver in DRIVERS:
        path = root / f"{driver}-layers" / "layers.json"
        with contextlib.suppress(OSError, CorruptStoreError):
            if path.exists() and read_json_array(path):
                return driver
    for driver in DRIVERS:
        if (root / f"{driver}-images" / "images.json").exists() or (root / f"{driver}-layers").is_dir():
            return driver
    return None
