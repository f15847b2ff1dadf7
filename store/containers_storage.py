"""containers-storage (overlay and vfs) written and read as containers/storage 1.43 and podman 4.3 do.

Layout and formats: containers/storage ``layers.go``, ``images.go``, ``store.go``,
``drivers/overlay/overlay.go``, ``drivers/vfs/driver.go``, ``pkg/lockfile``, ``pkg/ioutils``;
containers/image 5.23 ``storage/storage_dest.go`` for what a pull records. See
``shared/reference/containers-storage.md``.

Crash safety: layers are extracted into ``R/<driver>/tether-staging/<random>/`` (held with an ``flock`` by
the writer so that a later run can tell a live staging dir from an orphan). Publishing happens
under ``layers.lock``: the record is saved with ``flags.incomplete`` (as c/storage ``Put`` does),
the staged tree is renamed into the driver's home, the tar-split moved beside layers.json, then the
flag is cleared. A kill at any point leaves either an orphan staging dir or an incomplete record;
both podman (on its next write-locked load) and :meth:`Store.open` remove them. Images are
recorded last: big-data files first, then one atomic images.json write.

Lock order is c/storage's: ``layers.lock`` before ``images.lock`` before ``containers.lock``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from tether.store import _drivers
from tether.store._fsync import fsync_dir
from tether.store._gojson import (
    format_go_time,
    go_json_dumps,
    go_json_string,
    normalize_go_time,
    now_go_time,
)
from tether.store._records import (
    IMAGE_FIELD_ORDER,
    INCOMPLETE_FLAG,
    LAYER_FIELD_ORDER,
    MANIFEST_PREFIX,
    ImageRecord,
    LayerRecord,
    StagedLayer,
    big_data_file_name,
    chain_id,
    compression_code,
    dedupe,
    image_from_raw,
    layer_from_raw,
    layer_incomplete,
    new_layer_raw,
    ordered,
    valid_digest,
)
from tether.store.errors import (
    CorruptStoreError,
    DiffIDMismatchError,
    ImageUnknownError,
    LayerUnknownError,
    StoreError,
    UnsupportedError,
)
from tether.store.lockfile import LockFile, get_lockfile
from tether.store.tar.tarsplit import assemble_tar

__all__ = [
    "DRIVERS",
    "ImageRecord",
    "LayerRecord",
    "LayerWriter",
    "StagedLayer",
    "Store",
    "chain_id",
    "copy_image",
]

DRIVERS = ("overlay", "vfs")
#: Staging lives inside the driver's home: podman bind-mounts ``R/overlay`` onto itself
#: (overlay.go ``Init``, ``mount.MakePrivate``), so a rename from outside it fails with EXDEV.
#: Not ``R/overlay/staging``: podman's overlay ``Cleanup`` removes that one at every shutdown.
STAGING_NAME = "tether-staging"
#: The overlay staging base relative to the graph root (prefer :attr:`Store.staging_base`).
STAGING_SUBDIR = Path("overlay") / STAGING_NAME
TAR_SPLIT_SUFFIX = ".tar-split.gz"  # layers.go tarSplitSuffix

#: Test hook: ``TETHER_STORE_CRASH_AT=<point>`` makes the process SIGKILL itself at that point
#: (see :func:`_crash_point`); used by the kill -9 tests, never set in production.
CRASH_ENV = "TETHER_STORE_CRASH_AT"


def _crash_point(name: str) -> None:
    wanted = os.environ.get(CRASH_ENV)
    if wanted and wanted == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


_drivers.crash_hook = _crash_point


class _Extractor(Protocol):
    def feed(self, chunk: bytes) -> None: ...
    def finish(self) -> Any: ...
    def abort(self) -> None: ...


ExtractorFactory = Callable[[Path, str, Path, bool], _Extractor]


def _default_extractor(target: Path, mode: str, tar_split_path: Path, background: bool) -> _Extractor:
    """The tar applier of :mod:`tether.store.tar`: a child process per layer (``background``: at a lower CPU
    priority, see :class:`tether.store.tar.workers.ProcessLayerExtractor`)."""
    from tether.store.tar.workers import ProcessLayerExtractor

    return ProcessLayerExtractor(target, mode=mode,  # type: ignore[arg-type]
                                 tar_split_path=tar_split_path, background=background)


#: Replaced in unit tests that must not depend on the applier.
extractor_factory: ExtractorFactory = _default_extractor


# --------------------------------------------------------------------------------------------
# small file helpers (pkg/ioutils AtomicWriteFile)


def atomic_write(path: Path, data: bytes, mode: int = 0o600, *, durable: bool = False) -> None:
    """``ioutils.AtomicWriteFile``: temp ``.tmp-<name>*`` in the same dir, fdatasync, chmod, rename.

    ``durable`` also fsyncs the directory, so the rename itself survives a power cut (c/storage does not
    for its JSON; tether's own records and OCI layouts want it).
    """
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fdatasync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def _move_file(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` (0600); across mounts (EXDEV) copy to a temp beside ``dst`` first."""
    os.chmod(src, 0o600)
    try:
        os.replace(src, dst)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{dst.name}", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as source:
            shutil.copyfileobj(source, out, 1024 * 1024)
            out.flush()
            os.fdatasync(out.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    src.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fsync_dir(path)


def _read_json_array(path: Path) -> list[dict[str, Any]]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    if not data.strip():
        return []
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise CorruptStoreError(f"reading {path}: {exc}") from exc
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) and "id" in v for v in value):
        raise CorruptStoreError(f"reading {path}: not an array of records")
    return value


def _digest_hex(digest: str) -> str:
    return digest.split(":", 1)[1] if ":" in digest else digest


# --------------------------------------------------------------------------------------------
# staging


class _Staging:
    """A staging directory ``R/<driver>/tether-staging/<name>/``, alive while ``<name>.lock`` beside it
    is ``flock``-ed by its writer.

    The lock file is created under a temporary name, locked, then renamed into place, and exists
    before the directory; removal goes the other way (tree, then lock file). So another process's
    :meth:`Store.open` can tell live staging (lock held) from a killed writer's (lock free, or a
    directory without lock file) without any timing guess.
    """

    def __init__(self, base: Path) -> None:
        while True:
            base.mkdir(mode=0o700, parents=True, exist_ok=True)
            name = secrets.token_hex(8)
            tmp = base / f".tmp-{name}.lock"
            try:
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:
                continue  # the (empty) base was removed by a concurrent recovery
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                os.rename(tmp, base / f"{name}.lock")
                (base / name).mkdir(mode=0o700)
            except FileNotFoundError:
                os.close(fd)  # a recovery took our not-yet-locked temp lock for a dead one
                continue
            break
        self.path = base / name
        self.lock_path = base / f"{name}.lock"
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def remove(self) -> None:
        _drivers.remove_tree(self.path)
        self.lock_path.unlink(missing_ok=True)
        self.release()


def _lock_is_free(path: Path) -> bool:
    """Whether nobody holds the ``flock`` on ``path`` (its writer is gone)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False  # already removed by its owner
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def _clean_staging(base: Path) -> None:
    """Remove what killed writers left in the staging base (see :class:`_Staging`)."""
    try:
        entries = list(base.iterdir())
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name.endswith(".lock"):
            if _lock_is_free(entry):
                if not entry.name.startswith(".tmp-"):
                    _drivers.remove_tree(base / entry.name[: -len(".lock")])
                entry.unlink(missing_ok=True)
        elif entry.is_dir() and not (base / f"{entry.name}.lock").exists():
            _drivers.remove_tree(entry)
    with contextlib.suppress(OSError):
        base.rmdir()  # only when empty


# --------------------------------------------------------------------------------------------
# the store


@dataclass
class _Layers:
    records: list[dict[str, Any]]
    volatile: list[dict[str, Any]]

    def all(self) -> list[dict[str, Any]]:
        return self.records + self.volatile

    def by_id(self) -> dict[str, dict[str, Any]]:
        return {str(r["id"]): r for r in self.all()}


class Store:
    """A containers-storage store (graph root ``root``) for one driver.

    Blocking; safe to use from several threads (the engine calls it via ``trio.to_thread``), and
    from several processes at once together with podman, through c/storage's lock files.
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
        self._live_staging: dict[str, _Staging] = {}
        self._session: _Staging | None = None

    # ---------------------------------------------------------------- opening

    @classmethod
    def open(
        cls,
        root: Path,
        *,
        runroot: Path | None = None,
        driver: str | None = None,
        additional_image_stores: Sequence[Path] = (),
    ) -> Store:
        """Open (creating if needed) the store at ``root``; clean what a killed writer left.

        ``driver``: the argument, else what the store already holds, else ``overlay``.
        """
        root = Path(os.path.abspath(root))
        chosen = driver or detect_driver(root) or "overlay"
        if root.is_dir() and not os.access(root, os.W_OK):
            # A store on a read-only filesystem (or not ours to write): readable, like c/storage's
            # read-only stores; every write then fails naming the store.
            return cls(root, driver=chosen, runroot=runroot, additional_image_stores=additional_image_stores,
                       read_only=True)
        store = cls(root, driver=chosen, runroot=runroot, additional_image_stores=additional_image_stores)
        try:
            store._create_layout()
            store._recover()
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM) or not (root / f"{chosen}-layers").is_dir():
                raise StoreError(f"opening store {root}: {exc}") from exc
            store = cls(root, driver=chosen, runroot=runroot, additional_image_stores=additional_image_stores,
                        read_only=True)
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
            _clean_staging(self.staging_base)
            with self._images_lock.exclusive():
                images = _read_json_array(self.images_dir / "images.json")
                self._finish_pending_deletes(layers, images)
                self._forget_finished_sessions(layers, images)
                ids = {str(r["id"]) for r in images}
                for entry in self.images_dir.iterdir():
                    if entry.name.startswith(".tmp-"):
                        entry.unlink(missing_ok=True)
                    elif entry.is_dir() and _drivers.LAYER_ID_RE.match(entry.name):
                        if entry.name not in ids:
                            _drivers.remove_tree(entry)
                        else:
                            for tmp in entry.glob(".tmp-*"):
                                tmp.unlink(missing_ok=True)

    def _remove_orphan_layer_dirs(self, known: set[str]) -> None:
        home = self.root / "overlay" if self.driver == "overlay" else self.root / "vfs" / "dir"
        if not home.is_dir():
            return
        for entry in home.iterdir():
            if (_drivers.LAYER_ID_RE.match(entry.name) and entry.name not in known and entry.is_dir()
                    and not _drivers.layer_is_mounted(self.root, self.driver, entry.name)):
                _drivers.remove_layer_dirs(self.root, self.driver, entry.name)
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

    # ---------------------------------------------------------------- layers.json

    def _load_layers(self) -> _Layers:
        records = _read_json_array(self.layers_dir / "layers.json")
        volatile = _read_json_array(self.layers_dir / "volatile-layers.json")
        return _Layers(records, volatile)

    def _save_layers(self, layers: _Layers) -> None:
        # layers.go saveLayers: AtomicWriteFile(layers.json, 0600) then Touch the lock.
        records = [ordered(r, LAYER_FIELD_ORDER) for r in layers.records]
        atomic_write(self.layers_dir / "layers.json", go_json_dumps(records))
        _fsync_dir(self.layers_dir)
        self._layers_lock.touch()

    def _tar_split_path(self, layer_id: str) -> Path:
        return self.layers_dir / f"{layer_id}{TAR_SPLIT_SUFFIX}"

    def _delete_layer_locked(self, layers: _Layers, layer_id: str, *, save: bool) -> None:
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
        _drivers.remove_layer_dirs(self.root, self.driver, layer_id)
        self._tar_split_path(layer_id).unlink(missing_ok=True)
        _drivers.remove_tree(self.layers_dir / layer_id)  # layer big data dir
        layers.records = [r for r in layers.records if r["id"] != layer_id]
        if save:
            self._save_layers(layers)

    # ---------------------------------------------------------------- reading

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
        return _read_json_array(self.images_dir / "images.json")

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
                candidate = _drivers.layer_tree(Path(extra), self.driver, layer.id)
                if candidate.is_dir():
                    return candidate
        return _drivers.layer_tree(self.root, self.driver, layer.id)

    def tar_split_path(self, layer: LayerRecord) -> Path:
        if layer.read_only:
            for extra in self.additional_image_stores:
                candidate = Path(extra) / f"{self.driver}-layers" / f"{layer.id}{TAR_SPLIT_SUFFIX}"
                if candidate.exists():
                    return candidate
        return self._tar_split_path(layer.id)

    # ---------------------------------------------------------------- writing layers

    def stage_layer(self, *, layer_id: str, parent: str | None, background: bool = False) -> LayerWriter:
        """Start extracting a layer into a private staging directory (nothing visible yet).

        overlay: independent of the parent, so several layers of one image can be staged at once.
        vfs: the parent must already be published (its tree is copied first).
        ``background``: the layer is off the caller's critical path (smaller than the layers that decide
        when it ends): extracted at a lower CPU priority, on one thread, leaving the CPU to the others.
        """
        staging = _Staging(self.staging_base)
        self._live_staging[str(staging.path)] = staging
        try:
            tar_split = staging.path / "tar-split.gz"
            if self.driver == "overlay":
                target = staging.path / "diff"
                mode, uid, gid = 0o555, 0, 0
                parent_published = False
                if parent:
                    parent_dir = _drivers.layer_tree(self.root, "overlay", parent)
                    if parent_dir.is_dir():
                        mode, uid, gid = _drivers.parent_diff_owner_mode(self.root, "overlay", parent)
                        parent_published = True
                target.mkdir()
                os.chown(target, uid, gid)
                os.chmod(target, mode)
                preset = not parent or not parent_published
            else:
                target = staging.path / "root"
                if parent:
                    parent_layer = self.get_layer(parent)
                    if parent_layer is None or parent_layer.incomplete:
                        raise LayerUnknownError(
                            f"staging vfs layer {layer_id} in {self.root}: parent {parent} is not published yet"
                        )
                    _drivers.vfs_copy_tree(self.layer_directory(parent_layer), target)
                else:
                    target.mkdir()
                    os.chmod(target, 0o555)
                preset = not parent
            (staging.path / "preset").write_text("1" if preset else "0")
            extractor = extractor_factory(target, self.driver, tar_split, background)
        except BaseException:
            self._live_staging.pop(str(staging.path), None)
            staging.remove()
            raise
        return LayerWriter(self, layer_id=layer_id, parent=parent, staging=staging, extractor=extractor)

    def discard_staged(self, staged: StagedLayer) -> None:
        """Remove a staged layer that will not be published."""
        staging = self._live_staging.pop(staged.staging_dir, None)
        if staging is not None:
            staging.remove()

    def publish_layer(
        self,
        staged: StagedLayer,
        *,
        expected_diff_digest: str,
        compressed_digest: str | None,
        compressed_size: int | None,
    ) -> LayerRecord:
        """Make a staged layer visible: checks the diffID, then records it as c/storage ``Put`` does.

        The parent must be published first (publish in parent order). If the layer already
        exists (another puller won), the staging is discarded and the existing record returned.
        """
        staging = self._live_staging.get(staged.staging_dir)
        if staging is None:
            raise StoreError(f"publishing layer {staged.layer_id} in {self.root}: unknown or already used staging")
        if staged.diff_digest != expected_diff_digest:
            self.discard_staged(staged)
            raise DiffIDMismatchError(
                f"layer {staged.layer_id} in {self.root}: uncompressed digest {staged.diff_digest} does not match "
                f"the config's diff id {expected_diff_digest}"
            )
        if compressed_digest is None and staged.compression == 0:
            # applyDiff digests what it is fed: an uncompressed blob's digest is its diff digest.
            compressed_digest, compressed_size = staged.diff_digest, staged.diff_size
        elif compressed_digest is not None and compressed_size is None:
            compressed_size = staged.input_size or None
        preset = (staging.path / "preset").read_text() == "1"
        try:
            with self._layers_lock.exclusive():
                layers = self._load_layers()
                by_id = layers.by_id()
                existing = by_id.get(staged.layer_id)
                if existing is not None and not layer_incomplete(existing):
                    return layer_from_raw(existing)
                if existing is not None:
                    self._delete_layer_locked(layers, staged.layer_id, save=True)
                if staged.parent:
                    parent = by_id.get(staged.parent)
                    if parent is None or layer_incomplete(parent):
                        raise LayerUnknownError(
                            f"publishing layer {staged.layer_id} in {self.root}: parent {staged.parent} is not "
                            "published (publish layers in parent order)"
                        )
                raw = new_layer_raw(
                    layer_id=staged.layer_id,
                    parent=staged.parent,
                    created=now_go_time(),
                    compressed_digest=compressed_digest,
                    compressed_size=compressed_size,
                    diff_digest=staged.diff_digest,
                    diff_size=staged.diff_size,
                    compression=staged.compression,
                    uidset=staged.uidset,
                    gidset=staged.gidset,
                    incomplete=True,
                )
                layers.records.append(raw)
                self._record_published(staged.layer_id)
                _crash_point("layer-before-incomplete-record")
                self._save_layers(layers)
                _crash_point("layer-after-incomplete-record")
                if self.driver == "overlay":
                    _drivers.overlay_install(
                        self.root, staged.layer_id, staged.parent, staging.path / "diff", diff_preset=preset
                    )
                else:
                    _drivers.vfs_install(
                        self.root, staged.layer_id, staged.parent, staging.path / "root", tree_preset=preset
                    )
                _crash_point("layer-after-install")
                split = staging.path / "tar-split.gz"
                if split.exists():
                    _move_file(split, self._tar_split_path(staged.layer_id))
                _crash_point("layer-after-tar-split")
                raw.pop("flags", None)
                self._save_layers(layers)
                _crash_point("layer-after-complete-record")
                return layer_from_raw(raw)
        finally:
            self.discard_staged(staged)

    # ---------------------------------------------------------------- writing images

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
        if image_id != _digest_hex(config_digest):
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
        big.append((f"signature-{_digest_hex(manifest_digest)}", sig_blob, sig_digest))
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
                    _crash_point("image-after-big-data")
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
                _fsync_dir(directory)
                _add_names(images, raw, names)
                if new:
                    images.append(raw)
                ordered_images = [ordered(r, IMAGE_FIELD_ORDER) for r in images]
                _crash_point("image-before-record")
                atomic_write(self.images_dir / "images.json", go_json_dumps(ordered_images))
                _fsync_dir(self.images_dir)
                self._images_lock.touch()
                _crash_point("image-after-record")
                return image_from_raw(raw)

    def add_names(self, image_id: str, names: Sequence[str]) -> ImageRecord:
        """Tag an image (c/storage ``AddNames``: names moved from other images, history kept)."""
        with self._layers_lock.exclusive(), self._images_lock.exclusive():
            images = self._load_images()
            image = lookup_image([image_from_raw(r) for r in images], image_id)
            if image is None:
                raise ImageUnknownError(f"image {image_id!r} not found in {self.root}")
            raw = next(r for r in images if r["id"] == image.id)
            _add_names(images, raw, names)
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

    def image_size(self, image: ImageRecord) -> int:
        """What podman reports as ``Size``: the layers' diff sizes plus the big-data sizes."""
        total = sum(image.big_data_sizes.values())
        if image.top_layer:
            total += sum(layer.diff_size or 0 for layer in self.layer_chain(image.top_layer))
        return total

    # ---------------------------------------------------------------- deleting

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
                containers = _read_json_array(self.containers_dir / "containers.json")
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
                mounted = [x for x in to_remove if _drivers.layer_is_mounted(self.root, self.driver, x)]
                if mounted:
                    raise StoreError(
                        f"deleting image {image.id} in {self.root}: layer {mounted[0]} is mounted (podman image "
                        "unmount it first)"
                    )
                journal = self._journal_dir / f"{image.id}.json"
                journal.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                atomic_write(journal, json.dumps({"image": image.id, "layers": chain}).encode())
                _crash_point("delete-after-journal")
                atomic_write(
                    self.images_dir / "images.json", go_json_dumps([ordered(r, IMAGE_FIELD_ORDER) for r in remaining])
                )
                self._images_lock.touch()
                _crash_point("delete-after-image-record")
                _drivers.remove_tree(self.images_dir / image.id)
            for layer_id in to_remove:
                self._delete_layer_locked(layers, layer_id, save=True)
                _crash_point("delete-after-layer")
            journal.unlink(missing_ok=True)
        return tuple(to_remove)

    @property
    def _journal_dir(self) -> Path:
        return self.root / "tether" / "pending-deletes"

    def _finish_pending_deletes(self, layers: _Layers, images: list[dict[str, Any]]) -> bool:
        """Redo what a killed :meth:`delete_image` left (layers lock and images lock held)."""
        if not self._journal_dir.is_dir():
            return False
        changed = False
        for tmp in self._journal_dir.glob(".tmp-*"):
            tmp.unlink(missing_ok=True)
        image_ids = {str(r["id"]) for r in images}
        containers = _read_json_array(self.containers_dir / "containers.json")
        for journal in sorted(self._journal_dir.glob("*.json")):
            try:
                entry = json.loads(journal.read_bytes())
                image_id, chain = str(entry["image"]), [str(x) for x in entry["layers"]]
            except (ValueError, KeyError, TypeError, OSError):
                journal.unlink(missing_ok=True)
                continue
            if image_id not in image_ids:  # the record went: finish removing its layers
                _drivers.remove_tree(self.images_dir / image_id)
                removable = _removable_layers(chain, layers, images, containers)
                if any(_drivers.layer_is_mounted(self.root, self.driver, x) for x in removable):
                    continue  # try again at the next open, once podman unmounted it
                for layer_id in removable:
                    self._delete_layer_locked(layers, layer_id, save=True)
                    changed = True
            journal.unlink(missing_ok=True)
        return changed

    # ---------------------------------------------------------------- dangling layers

    @property
    def _sessions_dir(self) -> Path:
        return self.root / "tether" / "sessions"

    def _record_published(self, layer_id: str) -> None:
        """Note a layer this process is about to publish (layers lock held): if the image that needs it
        is never committed (kill -9, failure), :meth:`delete_dangling_layers` can tell it from podman's."""
        if self._session is None:
            self._session = _Staging(self._sessions_dir)  # a flock'd "<name>.lock" + a dir for the list
        with open(self._session.path / "layers", "a", encoding="ascii") as handle:
            handle.write(layer_id + "\n")
            handle.flush()
            os.fdatasync(handle.fileno())

    def _forget_finished_sessions(self, layers: _Layers, images: list[dict[str, Any]]) -> None:
        """Drop the records of dead sessions none of whose layers is dangling any more."""
        sessions = _dead_sessions(self._sessions_dir)
        if not sessions:
            return
        dangling = set(_dangling(layers, images, _read_json_array(self.containers_dir / "containers.json")))
        for lock, directory in sessions:
            try:
                listed = set((directory / "layers").read_text(encoding="ascii").split())
            except OSError:
                listed = set()
            if not listed & dangling:
                _drivers.remove_tree(directory)
                lock.unlink(missing_ok=True)

    def dangling_layers(self) -> list[str]:
        """Complete layers no image (top or mapped layer) or container reaches, children first."""
        with self._layers_lock.shared(), self._images_lock.shared():
            layers = self._load_layers()
            images = self._load_images()
        return _dangling(layers, images, _read_json_array(self.containers_dir / "containers.json"))

    def delete_dangling_layers(self) -> tuple[str, ...]:
        """Delete the dangling layers that tether processes now gone published (a pull killed or failed
        between publishing layers and committing its image). Layers podman creates, and those of live
        tether processes, are never touched; mounted ones are skipped. Returns the ids removed."""
        removed: list[str] = []
        with self._layers_lock.exclusive(), self._images_lock.exclusive():
            sessions = _dead_sessions(self._sessions_dir)
            if not sessions:
                return ()
            layers = self._load_layers()
            images = self._load_images()
            containers = _read_json_array(self.containers_dir / "containers.json")
            published: set[str] = set()
            for _lock, directory in sessions:
                with contextlib.suppress(OSError):
                    published.update((directory / "layers").read_text(encoding="ascii").split())
            for layer_id in _dangling(layers, images, containers):
                if layer_id in published and not _drivers.layer_is_mounted(self.root, self.driver, layer_id):
                    self._delete_layer_locked(layers, layer_id, save=True)
                    removed.append(layer_id)
            for lock, directory in sessions:
                _drivers.remove_tree(directory)
                lock.unlink(missing_ok=True)
        return tuple(removed)

    # ---------------------------------------------------------------- export and check

    def export_layer(self, layer_id: str) -> Iterator[bytes]:
        """The layer's exact tar, rebuilt from its tar-split and files (digest == ``diff-digest``)."""
        layer = self.get_layer(layer_id)
        if layer is None:
            raise LayerUnknownError(f"exporting layer {layer_id} from {self.root}: no such layer")
        split = self.tar_split_path(layer)
        if not split.exists():
            raise StoreError(f"exporting layer {layer_id} from {self.root}: no tar-split file {split}")
        return assemble_tar(split, self.layer_directory(layer))

    def check(self) -> list[str]:
        """Verify the store: every layer's files reproduce its diff digest and size; images' top
        layers, chains and big data are intact. Returns the problems found (empty when healthy)."""
        problems: list[str] = []
        layers = self.list_layers()
        by_id = {layer.id: layer for layer in layers}
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
            try:
                digest = hashlib.sha256()
                size = 0
                for chunk in self.export_layer(layer.id):
                    digest.update(chunk)
                    size += len(chunk)
            except (OSError, StoreError, ValueError) as exc:
                problems.append(f"layer {layer.id}: cannot rebuild its tar: {exc}")
                continue
            if "sha256:" + digest.hexdigest() != layer.diff_digest:
                problems.append(
                    f"layer {layer.id}: rebuilt tar digest sha256:{digest.hexdigest()} "
                    f"!= diff-digest {layer.diff_digest}"
                )
            elif layer.diff_size is not None and size != layer.diff_size:
                problems.append(f"layer {layer.id}: rebuilt tar size {size} != diff-size {layer.diff_size}")
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


# --------------------------------------------------------------------------------------------
# the layer writer


class LayerWriter:
    """Feeds a layer blob (compressed or not) to the tar applier inside a staging directory.

    A context manager: leaving it with an exception aborts and removes the staging.
    """

    def __init__(self, store: Store, *, layer_id: str, parent: str | None, staging: _Staging,
                 extractor: _Extractor) -> None:
        self._store = store
        self.layer_id = layer_id
        self.parent = parent
        self._staging = staging
        self._extractor = extractor
        self._size = 0
        self._done = False

    @property
    def staging_dir(self) -> Path:
        return self._staging.path

    def write(self, chunk: bytes) -> None:
        """Feed bytes of the blob; blocking (decompression and extraction happen here or in a child)."""
        if self._done:
            raise StoreError(f"writing to finished layer writer for {self.layer_id}")
        if not self._size:
            _crash_point("layer-writing")
        self._size += len(chunk)
        self._extractor.feed(chunk)

    def finish(self) -> StagedLayer:
        """End of blob: returns the staged layer (diff digest, size, compression, uid/gid sets)."""
        result = self._extractor.finish()
        self._done = True
        _crash_point("layer-staged")
        return StagedLayer(
            layer_id=self.layer_id,
            parent=self.parent,
            diff_digest=str(result.diff_digest),
            diff_size=int(result.diff_size),
            compression=compression_code(result.compression),
            uidset=tuple(sorted(set(result.uidset))),
            gidset=tuple(sorted(set(result.gidset))),
            staging_dir=str(self._staging.path),
            input_size=self._size,
        )

    def abort(self) -> None:
        """Stop and remove the staging directory."""
        if not self._done:
            self._done = True
            with contextlib.suppress(Exception):
                self._extractor.abort()
        staging = self._store._live_staging.pop(str(self._staging.path), None)
        if staging is not None:
            staging.remove()

    def __enter__(self) -> LayerWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None:
            self.abort()


# --------------------------------------------------------------------------------------------
# helpers


class _ReadOnlyStore:
    """An additional image store (storage.conf ``additionalimagestores``): read under read locks."""

    def __init__(self, root: Path, driver: str) -> None:
        self.root = root
        self.driver = driver

    def list_layers(self) -> list[LayerRecord]:
        lock = get_lockfile(self.root / f"{self.driver}-layers" / "layers.lock", read_only=True)
        with lock.shared():
            raws = _read_json_array(self.root / f"{self.driver}-layers" / "layers.json")
        return [layer_from_raw(r, read_only=True) for r in raws]

    def list_images(self) -> list[ImageRecord]:
        lock = get_lockfile(self.root / f"{self.driver}-images" / "images.lock", read_only=True)
        with lock.shared():
            raws = _read_json_array(self.root / f"{self.driver}-images" / "images.json")
        return [image_from_raw(r, read_only=True) for r in raws]


def _removable_layers(chain: Sequence[str], layers: _Layers, other_images: Sequence[Mapping[str, Any]],
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


def _dead_sessions(base: Path) -> list[tuple[Path, Path]]:
    """(lock file, directory) of tether sessions whose process is gone (their flock is free)."""
    try:
        entries = list(base.iterdir())
    except FileNotFoundError:
        return []
    out = []
    for entry in entries:
        if entry.name.endswith(".lock") and not entry.name.startswith(".tmp-") and _lock_is_free(entry):
            out.append((entry, base / entry.name[: -len(".lock")]))
    return out


def _dangling(layers: _Layers, images: Sequence[Mapping[str, Any]],
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


def detect_driver(root: Path) -> str | None:
    """The driver a store already uses: the one whose layers.json has records, else whose home exists."""
    for driver in DRIVERS:
        path = root / f"{driver}-layers" / "layers.json"
        with contextlib.suppress(OSError, CorruptStoreError):
            if path.exists() and _read_json_array(path):
                return driver
    for driver in DRIVERS:
        if (root / f"{driver}-images" / "images.json").exists() or (root / f"{driver}-layers").is_dir():
            return driver
    return None


def _add_names(images: list[dict[str, Any]], raw: dict[str, Any], names: Sequence[str]) -> None:
    """images.go ``updateNames(addNames)``: new names first, old kept, deduped; each name removed from
    other images and pushed to the front of ``names-history``."""
    if not names:
        return
    result = dedupe([*names, *(raw.get("names") or [])])
    for name in result:
        for other in images:
            if other is not raw and name in (other.get("names") or []):
                other["names"] = [n for n in other["names"] if n != name]
        raw["names-history"] = dedupe([name, *(raw.get("names-history") or [])])
    raw["names"] = result


_SHORT_ID = re.compile(r"^[0-9a-f]{1,64}$")


def lookup_image(images: Sequence[ImageRecord], text: str) -> ImageRecord | None:
    """Resolve ``text`` against images: id, name, ``name:latest``, ``sha256:<id>``, digests, id prefix."""
    candidates = [text]
    if text.startswith("sha256:") and len(text) == 71:
        candidates.append(text[7:])
    for image in images:
        if image.id in candidates:
            return image
    for image in images:
        if text in image.names:
            return image
    last = text.rsplit("/", 1)[-1]
    if "@" not in text and ":" not in last:
        tagged = f"{text}:latest"
        for image in images:
            if tagged in image.names:
                return image
    if "@" in text:
        repo, _, digest = text.partition("@")
        for image in images:
            if digest in image.digests and any(n.rsplit("@", 1)[0].rpartition(":")[0] == repo
                                               or n.split("@")[0] == repo for n in image.names):
                return image
        for image in images:
            if digest in image.digests:
                return image
    elif text.startswith("sha256:"):
        for image in images:
            if text in image.digests:
                return image
    if _SHORT_ID.match(text):
        matches = [image for image in images if image.id.startswith(text)]
        if len(matches) == 1:
            return matches[0]
    return None


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
    for raw in _read_json_array(store.images_dir / "images.json"):
        if raw.get("id") == image.id and isinstance(raw.get("created"), str):
            return str(raw["created"])
    return None
