"""containers-storage (overlay and vfs) written and read as containers/storage 1.43 and podman 4.3 do.

This module is the public surface: import from ``tether.store.containers_storage``.  Its parts:

================  ==================================================================================
``records``       layers.json/images.json records (``LayerRecord``, ``ImageRecord``, ``StagedLayer``),
                  ``chain_id``, image lookup by name/id/digest, big-data file names
``gojson``        JSON and time text as c/storage's Go code writes them
``lockfile``      c/storage's lock protocol: fcntl locks, 64-byte last-write token
``drivers``       overlay and vfs directory layouts (install, remove, copy a parent tree)
``files``         atomic writes (pkg/ioutils), moves across mounts, JSON arrays
``staging``       flock-held staging and session directories (live vs left by a killed writer)
``base``          ``StoreBase``: paths, locks, test hooks, layers.json I/O, every read-only query
``layers``        staging and publishing layers (``LayerWriter``), as c/storage ``Put``
``images``        committing images as c/image's storage destination, names, delete, dangling layers
``export``        a layer's exact tar from tar-split + files, ``check``
``store``         ``Store`` (the above together), ``open`` and crash recovery, ``detect_driver``
``copy``          ``copy_image`` between stores
================  ==================================================================================

Crash safety: see :mod:`.layers` (staging, publishing) and :mod:`.images` (commit, delete journal); what a
killed writer leaves is removed by podman's next write-locked load and by :meth:`Store.open`.  Lock order is
c/storage's: ``layers.lock`` before ``images.lock`` before ``containers.lock``.
"""

from __future__ import annotations

from tether.store.containers_storage.base import CRASH_ENV, DRIVERS, STAGING_SUBDIR, Extractor, ExtractorFactory
from tether.store.containers_storage.copy import copy_image
from tether.store.containers_storage.files import atomic_write, sync_filesystem
from tether.store.containers_storage.layers import LayerWriter, prewarm_extractors
from tether.store.containers_storage.records import ImageRecord, LayerRecord, StagedLayer, chain_id, lookup_image
from tether.store.containers_storage.store import Store, detect_driver
from tether.store.diskspace import DEFAULT_DISK_RESERVE, DiskReserve, SpaceGuard

__all__ = [
    "CRASH_ENV",
    "DEFAULT_DISK_RESERVE",
    "DRIVERS",
    "STAGING_SUBDIR",
    "DiskReserve",
    "Extractor",
    "ExtractorFactory",
    "ImageRecord",
    "LayerRecord",
    "LayerWriter",
    "SpaceGuard",
    "StagedLayer",
    "Store",
    "atomic_write",
    "chain_id",
    "copy_image",
    "detect_driver",
    "lookup_image",
    "prewarm_extractors",
    "sync_filesystem",
]
