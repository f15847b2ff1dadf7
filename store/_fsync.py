"""Durability: of renames (a new directory entry survives a power cut only once its directory is fsynced) and
of a whole store (``syncfs``: what no writer fsynced, as the files of extracted layers)."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """fsync the directory ``path`` (raises OSError, as the caller decides whether that may be ignored)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_filesystem(path: Path) -> None:
    """Write back every dirty page of the filesystem holding ``path`` (syncfs(2), as ostree syncs a deployment
    before it is final); ``sync()`` of every filesystem where libc has no ``syncfs``. Raises OSError."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
        if syncfs is None:
            os.sync()
        elif syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)
