"""File-tree snapshots for comparing extractions (tether vs GNU tar vs podman): type, mode, owner, size,
content digest, link target, xattrs, device numbers, mtimes and hardlink groups, keyed by raw byte paths."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any


def _xattrs(path: bytes) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return out
    for name in names:
        if name == "security.selinux":
            continue
        try:
            out[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError:
            continue
    return out


def snapshot(root: Path | str, *, mtimes: bool = True, skip_root: bool = True) -> dict[bytes, dict[str, Any]]:
    """Describe every entry under ``root`` (relative raw paths; the root itself as ``b"."`` unless skipped)."""
    base = os.fsencode(os.path.abspath(root))
    entries: dict[bytes, dict[str, Any]] = {}
    inodes: dict[tuple[int, int], list[bytes]] = {}
    stack = [base]
    while stack:
        d = stack.pop()
        paths = [d] if d == base and not skip_root else []
        with os.scandir(d) as it:
            for child in it:
                paths.append(child.path)
                if child.is_dir(follow_symlinks=False):
                    stack.append(child.path)
        for p in paths:
            st = os.lstat(p)
            rel = os.path.relpath(p, base) if p != base else b"."
            info: dict[str, Any] = {
                "type": stat.S_IFMT(st.st_mode),
                "mode": stat.S_IMODE(st.st_mode),
                "uid": st.st_uid,
                "gid": st.st_gid,
                "xattrs": _xattrs(p),
            }
            if mtimes and not stat.S_ISDIR(st.st_mode):
                info["mtime"] = st.st_mtime_ns
            if stat.S_ISREG(st.st_mode):
                info["size"] = st.st_size
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                info["sha256"] = h.hexdigest()
                if st.st_nlink > 1:
                    inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
            elif stat.S_ISLNK(st.st_mode):
                info["target"] = os.readlink(p)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                info["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
            entries[rel] = info
    for group in inodes.values():
        first = min(group)
        for rel in group:
            entries[rel]["link_group"] = first
    return entries


def diff_snapshots(a: dict[bytes, dict[str, Any]], b: dict[bytes, dict[str, Any]]) -> list[str]:
    """Human-readable differences (empty when equal)."""
    out: list[str] = []
    for rel in sorted(set(a) | set(b)):
        if rel not in a:
            out.append(f"only in second: {rel!r}")
        elif rel not in b:
            out.append(f"only in first: {rel!r}")
        elif a[rel] != b[rel]:
            keys = sorted(set(a[rel]) | set(b[rel]))
            changes = {k: (a[rel].get(k), b[rel].get(k)) for k in keys if a[rel].get(k) != b[rel].get(k)}
            out.append(f"{rel!r}: {changes}")
    return out
