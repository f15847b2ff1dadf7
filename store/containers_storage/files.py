"""Files as containers/storage writes them (pkg/ioutils): atomic replacement, moves across mounts, JSON arrays."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tether.store._fsync import fsync_dir, sync_filesystem
from tether.store.errors import CorruptStoreError

__all__ = ["atomic_write", "digest_hex", "move_file", "read_json_array", "sync_filesystem"]


def atomic_write(path: Path, data: bytes, mode: int = 0o600, *, durable: bool = False, sync: bool = True) -> None:
    """``ioutils.AtomicWriteFile``: temp ``.tmp-<name>*`` in the same dir, fdatasync, chmod, rename.

    The fdatasync is c/storage's: after a power cut the file is the old one or the whole new one, never a
    truncated one podman cannot parse. ``durable`` also fsyncs the directory, so the rename itself survives a
    power cut (c/storage does not for its JSON; tether's readiness records want it). ``sync=False`` skips the
    fdatasync, for files a reader checks anyway (the download cache's records): a kill still sees old or new.
    """
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if sync or durable:
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


def move_file(src: Path, dst: Path) -> None:
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


def read_json_array(path: Path) -> list[dict[str, Any]]:
    """A layers.json/images.json/containers.json array of records (``[]`` when missing, empty or ``null``);
    :class:`~tether.store.errors.CorruptStoreError` naming the file otherwise."""
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


def digest_hex(digest: str) -> str:
    """``sha256:<hex>`` -> ``<hex>``."""
    return digest.split(":", 1)[1] if ":" in digest else digest
