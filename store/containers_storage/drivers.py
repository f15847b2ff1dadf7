"""Graph-driver directory layouts (containers/storage drivers/overlay and drivers/vfs, v1.43).

overlay (``drivers/overlay/overlay.go`` ``create``)::

    R/overlay/<id>/            0700
    R/overlay/<id>/diff/       0555 root:root for a base layer, else the parent diff's mode/owner
    R/overlay/<id>/link        26 chars of base32, no newline, 0644
    R/overlay/<id>/lower       "l/<parentLink>[:<parent's lower>]" (only with a parent), 0644
    R/overlay/<id>/work/, merged/   0700
    R/overlay/<id>/empty/      0700, base layers only
    R/overlay/l/<link>  ->  ../<id>/diff
    R/overlay/l/               0755

vfs (``drivers/vfs/driver.go``): ``R/vfs/dir/<id>/`` is the whole tree, root 0555 for a base layer
or the parent's mode/owner, created by copying the parent tree (``copy.DirCopy``) and applying the
diff on top.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from tether.store.errors import StoreError

__all__ = [
    "LAYER_ID_RE",
    "generate_link_id",
    "layer_tree",
    "overlay_install",
    "remove_layer_dirs",
    "vfs_copy_tree",
    "vfs_install",
]

LAYER_ID_RE = re.compile(r"^[0-9a-f]{64}$")

LINK_ID_LENGTH = 26  # overlay.go idLength
DEFAULT_PERMS = 0o555  # overlay.go / vfs driver.go defaultPerms


def generate_link_id() -> str:
    """``generateID(idLength)``: base32 of random bytes, 26 characters."""
    size = (LINK_ID_LENGTH * 5 + 7) // 8
    return base64.b32encode(os.urandom(size)).decode("ascii")[:LINK_ID_LENGTH]


def driver_home(root: Path, driver: str) -> Path:
    return root / driver


def layer_tree(root: Path, driver: str, layer_id: str) -> Path:
    """The directory holding a layer's files: overlay ``diff/``, vfs the full tree."""
    if driver == "overlay":
        return root / "overlay" / layer_id / "diff"
    return root / "vfs" / "dir" / layer_id


def _write_small(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, mode)


def parent_diff_owner_mode(root: Path, driver: str, parent: str | None) -> tuple[int, int, int]:
    """(mode, uid, gid) a new layer's top directory gets, else 0555 root.

    overlay.go ``create``: the mode of the parent's ``diff``, the owner of the parent's layer
    directory; vfs ``create``: mode and owner of the parent's tree.
    """
    if parent:
        st = os.stat(layer_tree(root, driver, parent))
        if driver == "overlay":
            owner = os.stat(root / "overlay" / parent)
            return st.st_mode & 0o7777, owner.st_uid, owner.st_gid
        return st.st_mode & 0o7777, st.st_uid, st.st_gid
    return DEFAULT_PERMS, 0, 0


def _no_crash(point: str) -> None:
    del point


def overlay_install(root: Path, layer_id: str, parent: str | None, staged_diff: Path, *, diff_preset: bool,
                    crash_point: Callable[[str], None] = _no_crash) -> None:
    """Move a staged ``diff/`` into ``R/overlay/<id>/`` and create link, lower, work, merged, empty.

    ``diff_preset`` says the staged diff's top directory still has the mode/owner chosen before
    extraction; it is then set from the (now published) parent as overlay.go ``create`` does.
    The ``link`` file is written before the ``l/`` symlink so that removing a half-installed layer
    (which reads ``link``) never leaves a dangling symlink behind.  ``crash_point`` is the store's kill -9
    test hook, called with the name of each step done.
    """
    home = root / "overlay"
    links = home / "l"
    links.mkdir(mode=0o755, parents=True, exist_ok=True)
    layer_dir = home / layer_id
    if layer_dir.exists() or layer_dir.is_symlink():
        remove_layer_dirs(root, "overlay", layer_id)
    rootuid, rootgid = 0, 0
    if parent:
        st = os.stat(home / parent)
        rootuid, rootgid = st.st_uid, st.st_gid
    layer_dir.mkdir(mode=0o700)
    os.chown(layer_dir, rootuid, rootgid)
    if diff_preset:
        mode, uid, gid = parent_diff_owner_mode(root, "overlay", parent)
        os.chown(staged_diff, uid, gid)
        os.chmod(staged_diff, mode)
    crash_point("overlay-after-layer-dir")
    os.rename(staged_diff, layer_dir / "diff")
    crash_point("overlay-after-diff-rename")
    link = generate_link_id()
    while (links / link).is_symlink():
        link = generate_link_id()
    _write_small(layer_dir / "link", link.encode("ascii"), 0o644)
    crash_point("overlay-after-link-file")
    os.symlink(f"../{layer_id}/diff", links / link)
    crash_point("overlay-after-symlink")
    for name in ("work", "merged"):
        (layer_dir / name).mkdir(mode=0o700)
        os.chown(layer_dir / name, rootuid, rootgid)
    if not parent:
        (layer_dir / "empty").mkdir(mode=0o700)
        os.chown(layer_dir / "empty", rootuid, rootgid)
        return
    parent_link = (home / parent / "link").read_text(encoding="ascii").strip()
    lowers = [f"l/{parent_link}"]
    try:
        parent_lower = (home / parent / "lower").read_text(encoding="ascii")
    except FileNotFoundError:
        parent_lower = ""
    if parent_lower:
        lowers.extend(parent_lower.split(":"))
    _write_small(layer_dir / "lower", ":".join(lowers).encode("ascii"), 0o644)


def vfs_copy_tree(src: Path, dst: Path) -> None:
    """Copy a parent's tree as ``copy.DirCopy(..., copyXattrs=true)``: hardlinks, devices, owners,
    modes, times and xattrs preserved (``cp -a`` does all of these)."""
    proc = subprocess.run(
        ["cp", "-a", "--no-target-directory", str(src), str(dst)], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise StoreError(f"copying vfs parent layer {src} to {dst}: {proc.stderr.strip()}")


def vfs_install(root: Path, layer_id: str, parent: str | None, staged_tree: Path, *, tree_preset: bool) -> None:
    """Move a staged full tree to ``R/vfs/dir/<id>``."""
    dirs = root / "vfs" / "dir"
    dirs.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = dirs / layer_id
    if target.exists():
        remove_layer_dirs(root, "vfs", layer_id)
    # The root's mode/owner were set before extraction (0555 root, or the parent's by the copy) and
    # the diff's root entry, applied by the extractor, wins as in c/storage: nothing to adjust here.
    del tree_preset
    os.rename(staged_tree, target)


def _make_writable_and_remove(path: Path) -> None:
    def onerror(func: object, failed: str, exc: object) -> None:
        # Read-only directories (0555 diffs) are removable by root; retry after chmod for others.
        try:
            os.chmod(os.path.dirname(failed), 0o700)
            if os.path.isdir(failed) and not os.path.islink(failed):
                shutil.rmtree(failed, ignore_errors=True)
            else:
                os.unlink(failed)
        except OSError:
            pass

    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, onerror=onerror)


def layer_is_mounted(root: Path, driver: str, layer_id: str) -> bool:
    """Whether podman has the layer mounted (``podman image mount``, a container's ``merged``)."""
    if driver == "overlay":
        return os.path.ismount(root / "overlay" / layer_id / "merged")
    return os.path.ismount(root / "vfs" / "dir" / layer_id)


def remove_layer_dirs(root: Path, driver: str, layer_id: str) -> None:
    """Driver ``Remove``: the link symlink (read from ``link``) and the layer directory.

    Refuses a mounted layer: removing through a mount would delete (or whiteout) what it shows.
    """
    if layer_is_mounted(root, driver, layer_id):
        raise StoreError(f"removing layer {layer_id} in {root}: it is mounted")
    if driver == "overlay":
        layer_dir = root / "overlay" / layer_id
        try:
            link = (layer_dir / "link").read_text(encoding="ascii").strip()
        except OSError:
            link = ""
        if link and "/" not in link:
            (root / "overlay" / "l" / link).unlink(missing_ok=True)
        _make_writable_and_remove(layer_dir)
    else:
        _make_writable_and_remove(root / "vfs" / "dir" / layer_id)


def remove_tree(path: Path) -> None:
    """Remove a staging or orphaned tree whatever its permissions."""
    _make_writable_and_remove(path)
