"""Start-up with a cold page cache: the files a command loads, read ahead while it imports them.

An upgrade runs ``tether`` after the page cache has long forgotten it: importing trio, httpx and the engine then
waits on the disk for a few hundred small files, one after another (python -X importtime: ~0.3 s cold against
~0.15 s warm for trio and httpx alone). After a command, :func:`record` writes the list of files it loaded
(bytecode and sources of its modules, its shared libraries) under the user's cache directory; the next run of
the same command hands the whole list to the kernel at once (:func:`start`: ``posix_fadvise(WILLNEED)`` from
a thread, the sources only opened for their inodes), so the disk reads them in parallel while the main thread
imports. Measured on the benchmark VM with the page cache dropped: a no-op pull of ten images 0.08-0.1 s
faster. A missing, foreign (not owned by this user, or writable by others) or stale list costs nothing but
the read ahead it would have bought.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

#: At most this many files are read ahead (a no-op pull loads ~550).
MAX_FILES = 4000
#: The list is read up to this many bytes.
MAX_LIST_BYTES = 1 << 20
#: Larger files are left to page faults: a shared object is mapped, and only the pages it runs are read (a whole
#: libcrypto or zstandard's backend, 5-12 MB, would take the disk's time from the files the imports wait for).
MAX_FILE_BYTES = 2 << 20


def list_path(verb: str, environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_CACHE_HOME/tether/readahead-VERB`` (default ``~/.cache``; a verb of two words joined by ``-``)."""
    base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tether" / f"readahead-{verb.replace(' ', '-')}"


def read_list(path: Path) -> list[str]:
    """The paths ``path`` lists, or none when it is missing, too large, or not this user's alone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return []
    try:
        info = os.fstat(fd)
        if (not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o022
                or info.st_size > MAX_LIST_BYTES):
            return []
        data = os.read(fd, MAX_LIST_BYTES)
    except OSError:
        return []
    finally:
        os.close(fd)
    return [line for line in data.decode("utf-8", "replace").splitlines() if line.startswith("/")][:MAX_FILES]


def read_ahead(paths: Iterable[str]) -> None:
    """Ask the kernel to read every regular file of ``paths`` of at most :data:`MAX_FILE_BYTES`, but sources
    (``*.py``: only opened, for their inodes) and the shared objects this process has mapped already."""
    mapped = mapped_files()
    for path in paths:
        if path in mapped:
            continue
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        except OSError:
            continue
        try:
            info = os.fstat(fd)
            if not path.endswith(".py") and stat.S_ISREG(info.st_mode) and info.st_size <= MAX_FILE_BYTES:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


def mapped_files() -> set[str]:
    """The shared objects (``*.so*``) this process has mapped."""
    found: set[str] = set()
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].startswith("/") and ".so" in fields[5]:
                    found.add(fields[5].rstrip("\n"))
    except OSError:
        pass
    return found


def start(verb: str, environ: Mapping[str, str] = os.environ) -> list[str]:
    """Start reading ahead what the last run of ``verb`` loaded (a daemon thread); the list, for :func:`record`."""
    listed = read_list(list_path(verb, environ))
    if listed:
        threading.Thread(target=read_ahead, args=(listed,), name="tether-readahead", daemon=True).start()
    return listed


def loaded_files() -> list[str]:
    """The files this process loaded: each module's source and bytecode, and the shared objects it mapped."""
    found: set[str] = set()
    for module in list(sys.modules.values()):
        spec = getattr(module, "__spec__", None)
        for name in (getattr(spec, "origin", None), getattr(spec, "cached", None)):
            if isinstance(name, str) and name.startswith("/"):
                found.add(name)
    return sorted(found | mapped_files())


def record(verb: str, listed: list[str], environ: Mapping[str, str] = os.environ) -> None:
    """Write what this run loaded as ``verb``'s list, unless the list read at start covers it already (a run
    that loaded less, e.g. without the live display, keeps the list; new paths, e.g. after an upgrade,
    replace it). Errors are ignored: it is a cache."""
    files = loaded_files()[:MAX_FILES]
    if set(files) <= set(listed):
        return
    path = list_path(verb, environ)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write("".join(f"{name}\n" for name in files))
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


__all__ = ["list_path", "loaded_files", "read_ahead", "read_list", "record", "start"]
