"""Writing layers: staging (extraction into a private directory) and publishing as containers/storage ``Put`` does.

A layer is extracted into ``R/<driver>/tether-staging/<random>/`` (held with an ``flock`` by the writer so
that a later run can tell a live staging dir from an orphan, see :mod:`.staging`).  Publishing happens under
``layers.lock``: the record is saved with ``flags.incomplete`` (as c/storage ``Put`` does), the staged tree is
renamed into the driver's home, the tar-split moved beside layers.json, then the flag is cleared.  A kill at
any point leaves either an orphan staging dir or an incomplete record; both podman (on its next write-locked
load) and ``Store.open`` remove them.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from types import TracebackType

from tether.store.containers_storage.base import Extractor, StoreBase
from tether.store.containers_storage.drivers import (
    layer_tree,
    overlay_install,
    parent_diff_owner_mode,
    vfs_copy_tree,
    vfs_install,
)
from tether.store.containers_storage.files import move_file
from tether.store.containers_storage.gojson import now_go_time
from tether.store.containers_storage.records import (
    LayerRecord,
    StagedLayer,
    compression_code,
    layer_from_raw,
    layer_incomplete,
    new_layer_raw,
)
from tether.store.containers_storage.staging import StagingDir
from tether.store.diskspace import SpaceGuard
from tether.store.errors import DiffIDMismatchError, LayerUnknownError, StoreError

__all__ = ["LayerWriter", "LayerWriting", "prewarm_extractors", "process_extractor"]


def process_extractor(target: Path, mode: str, tar_split_path: Path, background: bool,
                      space: SpaceGuard | None) -> Extractor:
    """The tar applier of :mod:`tether.store.tar`: a child process per layer (``background``: at a lower CPU
    priority, see :class:`tether.store.tar.workers.ProcessLayerExtractor`), checking ``space`` as it writes."""
    # Imported on the first staged layer: tether images/inspect/rmi/bound status open a Store but never
    # stage a layer, and the applier, its worker pool and their libraries would add ~3.6 ms to each of their
    # start-ups (python -X importtime; the store's own import is ~34 ms).
    from tether.store.tar.workers import ProcessLayerExtractor

    return ProcessLayerExtractor(target, mode=mode,  # type: ignore[arg-type]
                                 tar_split_path=tar_split_path, background=background, space=space)


def prewarm_extractors(count: int) -> None:
    """Start ``count`` extraction children for the layers about to be staged (while their blobs' first bytes
    are in flight), instead of when each layer's first bytes arrived."""
    # Imported here for the reason process_extractor gives: a pull that stages nothing (every image up to date)
    # does not load the applier and its pool either.
    from tether.store.tar.workers import prewarm_workers

    prewarm_workers(count)


class LayerWriting(StoreBase):
    """The layer half of :class:`~tether.store.containers_storage.store.Store`."""

    def stage_layer(self, *, layer_id: str, parent: str | None, background: bool = False) -> LayerWriter:
        """Start extracting a layer into a private staging directory (nothing visible yet).

        overlay: independent of the parent, so several layers of one image can be staged at once.
        vfs: the parent must already be published (its tree is copied first).
        ``background``: the layer is off the caller's critical path (smaller than the layers that decide
        when it ends): extracted at a lower CPU priority, on one thread, leaving the CPU to the others.
        The store's :attr:`disk_reserve` is checked now and as the layer is written: the writer raises
        :class:`~tether.store.errors.DiskReserveError` before the filesystem falls below it.
        """
        staging = StagingDir(self.staging_base)
        self._live_staging[str(staging.path)] = staging
        try:
            # The reserve is checked as the child writes; fail at once when the filesystem is already below it.
            space = self.disk_reserve.guard(staging.path, where=self.root)
            if space is not None:
                space.check()
            tar_split = staging.path / "tar-split.gz"
            if self.driver == "overlay":
                target = staging.path / "diff"
                mode, uid, gid = 0o555, 0, 0
                parent_published = False
                if parent:
                    parent_dir = layer_tree(self.root, "overlay", parent)
                    if parent_dir.is_dir():
                        mode, uid, gid = parent_diff_owner_mode(self.root, "overlay", parent)
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
                    # A copy of the parent's whole tree: about the chain's uncompressed size.
                    chain_size = sum(link.diff_size or 0 for link in self.layer_chain(parent))
                    self.disk_reserve.check(staging.path, needed=chain_size, where=self.root)
                    vfs_copy_tree(self.layer_directory(parent_layer), target)
                else:
                    target.mkdir()
                    os.chmod(target, 0o555)
                preset = not parent
            (staging.path / "preset").write_text("1" if preset else "0")
            extractor = (self._extractor_factory or process_extractor)(target, self.driver, tar_split, background,
                                                                       space)
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
                self._crash_point("layer-before-incomplete-record")
                self._save_layers(layers)
                self._crash_point("layer-after-incomplete-record")
                if self.driver == "overlay":
                    overlay_install(
                        self.root, staged.layer_id, staged.parent, staging.path / "diff", diff_preset=preset,
                        crash_point=self._crash_point,
                    )
                else:
                    vfs_install(
                        self.root, staged.layer_id, staged.parent, staging.path / "root", tree_preset=preset
                    )
                self._crash_point("layer-after-install")
                split = staging.path / "tar-split.gz"
                if split.exists():
                    move_file(split, self._tar_split_path(staged.layer_id))
                self._crash_point("layer-after-tar-split")
                raw.pop("flags", None)
                self._save_layers(layers)
                self._crash_point("layer-after-complete-record")
                return layer_from_raw(raw)
        finally:
            self.discard_staged(staged)

    def _record_published(self, layer_id: str) -> None:
        """Note a layer this process is about to publish (layers lock held): if the image that needs it
        is never committed (kill -9, failure), :meth:`delete_dangling_layers` can tell it from podman's."""
        if self._session is None:
            self._session = StagingDir(self._sessions_dir)  # a flock'd "<name>.lock" + a dir for the list
        # Not fdatasynced: a kill leaves the line in the page cache; a power cut may lose it, and then the
        # layer (published, complete) is reused by the next pull or removed by podman's prune, not by tether's GC.
        with open(self._session.path / "layers", "a", encoding="ascii") as handle:
            handle.write(layer_id + "\n")


class LayerWriter:
    """Feeds a layer blob (compressed or not) to the tar applier inside a staging directory.

    A context manager: leaving it with an exception aborts and removes the staging.
    """

    def __init__(self, store: LayerWriting, *, layer_id: str, parent: str | None, staging: StagingDir,
                 extractor: Extractor) -> None:
        self._store = store
        self.layer_id = layer_id
        self.parent = parent
        self._staging = staging
        self._extractor = extractor
        self._size = 0
        self._done = False

    @property
    def staging_dir(self) -> Path:
        """Where the layer is being extracted."""
        return self._staging.path

    def write(self, chunk: bytes) -> None:
        """Feed bytes of the blob; blocking (decompression and extraction happen here or in a child)."""
        if self._done:
            raise StoreError(f"writing to finished layer writer for {self.layer_id}")
        if not self._size:
            self._store._crash_point("layer-writing")
        self._size += len(chunk)
        self._extractor.feed(chunk)

    def finish(self) -> StagedLayer:
        """End of blob: returns the staged layer (diff digest, size, compression, uid/gid sets)."""
        result = self._extractor.finish()
        self._done = True
        self._store._crash_point("layer-staged")
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
