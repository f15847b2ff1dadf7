"""Before a command writes a store: is it writable, and on a bootc host, make it so as ostree does.

A bootc host mounts ``/sysroot`` read-only (ostree's ``sysroot.readonly``: a read-only bind mount of a
file system that stays writable, since ``/var`` and ``/etc`` live on it), and the bootc store
(``/usr/lib/bootc/storage``) is ``/sysroot/ostree/bootc/storage``. bootc writes it from a private mount
namespace in which libostree has remounted ``/sysroot`` read-write (ostree-sysroot.c
``ostree_sysroot_initialize_with_mount_namespace``: ``unshare(CLONE_NEWNS)`` when still in pid 1's namespace,
then ``remount_writable``: ``mount(path, path, NULL, MS_REMOUNT | MS_RELATIME, "")``); the host's mount stays
read-only. :func:`require_writable_store` does the same for tether's writing commands, under the same
conditions (root, ``/run/ostree-booted``, a read-only mount of a writable file system), in a namespace of its
own whatever namespace it was started in, with that namespace's mounts made slaves first so that nothing
tether mounts could propagate back. It must run before the command starts threads or processes: ``unshare``
moves the calling thread only, and what it starts later inherits its namespace.

Any other read-only store is refused in one line naming it, before anything is written.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from tether.engine.errors import EngineError

__all__ = ["MountInfo", "ReadOnlyStoreError", "mount_of", "require_writable_store"]

log = logging.getLogger(__name__)

#: Present on a booted ostree (bootc) host (ostree-prepare-root / ostree-system-generator).
OSTREE_BOOTED = Path("/run/ostree-booted")

_CLONE_NEWNS = 0x00020000
_MS_REMOUNT = 0x20
_MS_REC = 0x4000
_MS_SLAVE = 0x80000
_MS_RELATIME = 0x200000


class ReadOnlyStoreError(EngineError):
    """The store a writing command needs is on a read-only file system (or mount)."""


@dataclass(frozen=True)
class MountInfo:
    """One line of /proc/self/mountinfo: where it is mounted and whether the mount and its file system are
    read-only (``ro`` in the per-mount options, and in the super block's)."""

    mount_point: Path
    read_only: bool
    fs_read_only: bool


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \\ooo (fs/proc_namespace.c mangle())
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit() and len(field[i + 1:i + 4]) == 3:
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_of(path: Path, *, mountinfo: Path = Path("/proc/self/mountinfo")) -> MountInfo | None:
    """The mount ``path`` (which must exist) is on: the last-mounted one with the longest mount point prefix."""
    target = os.path.realpath(path)
    best: MountInfo | None = None
    try:
        lines = mountinfo.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if len(fields) < sep + 4 or sep < 6:
            continue
        point = _unescape(fields[4])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if not inside:
            continue
        if best is None or len(point) >= len(str(best.mount_point)):
            best = MountInfo(mount_point=Path(point), read_only="ro" in fields[5].split(","),
                             fs_read_only="ro" in fields[sep + 3].split(","))
    return best


def _existing_ancestor(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _is_read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _remount_writable_privately(mount_point: Path) -> None:
    """ostree's ``remount_writable`` in a mount namespace of this process's own (see the module docstring)."""
    libc = ctypes.CDLL(None, use_errno=True)

    def check(result: int, what: str) -> None:
        if result != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    # Unlike ostree (which unshares only when still in pid 1's namespace), always a namespace of tether's own:
    # the caller's (a systemd unit's PrivateMounts=, a shell's `unshare -m`) keeps its mounts as they were.
    check(libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    # Copies of shared mounts stay in their peer groups: as slaves, mounts made here go nowhere.
    check(libc.mount(None, b"/", None, _MS_REC | _MS_SLAVE, None), "making / a slave mount")
    point = os.fsencode(str(mount_point))
    check(libc.mount(point, point, None, _MS_REMOUNT | _MS_RELATIME, b""), f"remounting {mount_point} read-write")


def require_writable_store(root: Path, *, verb: str, booted: Path = OSTREE_BOOTED) -> None:
    """Raise :class:`ReadOnlyStoreError` (one line naming the store and the mount) unless ``root`` (or the
    directory it will be created in) is on a writable mount; on a booted ostree host, as root, a read-only
    mount of a writable file system (``/sysroot``) is first remounted read-write for this process only."""
    where = _existing_ancestor(root)
    if not _is_read_only(where):
        return
    mount = mount_of(where)
    point = mount.mount_point if mount is not None else where
    if mount is not None and mount.read_only and not mount.fs_read_only and os.geteuid() == 0 and booted.exists():
        try:
            _remount_writable_privately(mount.mount_point)
        except OSError as exc:
            raise ReadOnlyStoreError(f"{verb}: the store {root} is on {point}, mounted read-only, and it could "
                                     f"not be remounted read-write for tether: {exc.strerror}") from None
        if not _is_read_only(where):
            log.info("remounted %s read-write in tether's own mount namespace (as ostree does for /sysroot)",
                     mount.mount_point)
            return
    raise ReadOnlyStoreError(f"{verb}: cannot write the store {root}: {os.strerror(errno.EROFS)} ({point} is "
                             "mounted read-only); nothing was written")
