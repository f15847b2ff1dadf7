"""containers-storage.conf(5) defaults, read as containers/storage 1.43 (``types/options.go``) does.

Path: ``$CONTAINERS_STORAGE_CONF``, else ``/etc/containers/storage.conf``, else
``/usr/share/containers/storage.conf``. Only what tether needs: driver, graph root, run root and
``additionalimagestores`` (read-only stores consulted after the primary one).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tether.store.errors import CorruptStoreError

__all__ = ["DEFAULT_GRAPHROOT", "DEFAULT_RUNROOT", "StorageConf", "find_storage_conf", "load_storage_conf"]

DEFAULT_GRAPHROOT = Path("/var/lib/containers/storage")
DEFAULT_RUNROOT = Path("/run/containers/storage")
SYSTEM_PATHS = (Path("/etc/containers/storage.conf"), Path("/usr/share/containers/storage.conf"))


@dataclass(frozen=True)
class StorageConf:
    """The parts of storage.conf tether uses; ``driver`` is ``None`` when unset (the store decides)."""

    driver: str | None = None
    graphroot: Path = DEFAULT_GRAPHROOT
    runroot: Path = DEFAULT_RUNROOT
    additional_image_stores: tuple[Path, ...] = ()
    path: Path | None = None


def find_storage_conf(environ: Mapping[str, str] = os.environ) -> Path | None:
    """The storage.conf c/storage would read, or ``None``."""
    env = environ.get("CONTAINERS_STORAGE_CONF")
    if env:
        return Path(env)
    for candidate in SYSTEM_PATHS:
        if candidate.exists():
            return candidate
    return None


def load_storage_conf(path: Path | None = None, *, environ: Mapping[str, str] = os.environ) -> StorageConf:
    """Parse storage.conf (rootful defaults when there is none)."""
    path = path or find_storage_conf(environ)
    if path is None or not path.exists():
        return StorageConf()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CorruptStoreError(f"reading storage configuration {path}: {exc}") from exc
    section = data.get("storage") or {}
    options = section.get("options") or {}
    stores = options.get("additionalimagestores") or section.get("additionalimagestores") or []
    driver = section.get("driver") or None
    return StorageConf(
        driver=str(driver) if driver else None,
        graphroot=Path(section.get("graphroot") or DEFAULT_GRAPHROOT),
        runroot=Path(section.get("runroot") or DEFAULT_RUNROOT),
        additional_image_stores=tuple(Path(str(s)) for s in stores if str(s)),
        path=path,
    )
