"""Path confinement for layer trees: tar names and symlinks resolved as if the layer directory were ``/``.

containers/storage applies layers inside a chroot of the layer directory (pkg/chrootarchive re-execs
``storage-untar``, which chroots and then calls ``archive.Unpack(..., "/")``): a name is
``filepath.Clean``-ed and joined to ``/``, so absolute names and ``..`` stay inside; symlinks met while
resolving a path are resolved by the kernel *inside the chroot*, so ``evil -> /etc`` followed by
``evil/passwd`` writes ``<layer>/etc/passwd``.  We reproduce those semantics without a chroot: names are
cleaned lexically (``confine``) and directories are resolved component by component with ``lstat`` and
``readlink`` (like openat2's ``RESOLVE_IN_ROOT``), so nothing is ever created, written, linked or removed
outside the root.  Resolutions are cached per lexical directory; the cache is dropped whenever a
directory or symlink is removed or replaced.

Missing directories are created as c/storage creates them, and only those (pkg/archive ``Unpack`` and
``UnpackLayer``): when ``Lstat`` of an entry's parent says it does not exist, ``MkdirAll`` creates each
missing component of the entry's *own* name, following symlinks that resolve to existing directories; a
symlink whose target is missing is never completed (``mkdir`` of the link fails with EEXIST, and when the link
is the parent itself ``open``/``mkdir`` under it fail with ENOENT).  So ``l -> /missing/dir`` followed by
``l/x`` is refused (:class:`~tether.store.errors.DanglingLinkError`), as podman refuses it.
"""

from __future__ import annotations

import os
import stat
from typing import Final

from tether.store.errors import DanglingLinkError, HostileArchiveError, shown

__all__ = ["RootResolver", "confine"]

_MAX_SYMLINKS: Final = 40  # Linux's MAXSYMLINKS, what the kernel would allow inside the chroot
_MAX_PATH: Final = 4096  # PATH_MAX: no longer name can be created inside the chroot either


def confine(name: bytes) -> bytes:
    """``filepath.Join("/", filepath.Clean(name))`` relative to the root: b"" is the root itself.

    ``/a``, ``./a``, ``a/``, ``../a``, ``a/../../a`` all give ``a``.
    """
    if name.startswith(b"./"):
        name = name[2:]
    if name.endswith(b"/"):
        name = name.rstrip(b"/")
    if not name or b"/." in name or b"//" in name or name[0] in b"/.":
        parts: list[bytes] = []
        for comp in name.split(b"/"):
            if not comp or comp == b".":
                continue
            if comp == b"..":
                if parts:
                    parts.pop()
                continue
            parts.append(comp)
        return b"/".join(parts)
    return name


class RootResolver:
    """Resolves lexical directory paths under ``root`` to real directories, never leaving ``root``.

    ``resolve_dir(rel)`` returns the absolute real directory path with a trailing slash and whether that
    directory has the set-group-ID bit (children inherit its group).  With ``create=True`` missing
    directories are created as containers/storage's ``MkdirAll`` creates them (0755, owned by root).
    """

    __slots__ = ("_cache", "_create", "cache", "root")

    def __init__(self, root: bytes, *, create: bool) -> None:
        self.root = root.rstrip(b"/") or b"/"
        self._create = create
        self._cache: dict[bytes, tuple[bytes, bool]] = {}
        self.cache = self._cache  # read-only view for hot paths: lexical dir -> (real dir + "/", setgid)

    def invalidate(self) -> None:
        """Forget every resolution (a directory or symlink was removed or replaced)."""
        self._cache.clear()

    def remember(self, rel: bytes, real_abs: bytes, sgid: bool) -> None:
        """Record a directory we just created or verified (``real_abs`` without trailing slash)."""
        self._cache[rel] = (real_abs + b"/", sgid)

    def resolve_dir(self, rel: bytes, *, entry: bytes = b"", create: bool | None = None) -> tuple[bytes, bool]:
        """The real directory ``rel`` names (absolute, with a trailing slash) and whether it is set-group-ID.

        ``create`` (default: the resolver's) creates the missing components of ``rel`` itself; without it a
        missing component raises :class:`FileNotFoundError`.  A symlink whose target is missing raises
        :class:`~tether.store.errors.DanglingLinkError` when creating, :class:`FileNotFoundError` otherwise.
        """
        hit = self._cache.get(rel)
        if hit is not None:
            return hit
        if len(rel) > _MAX_PATH:
            raise HostileArchiveError(f"path of {shown(entry)} is longer than PATH_MAX")
        make = self._create if create is None else create
        cache = self._cache
        root_hit = cache.get(b"")
        if root_hit is None:
            st = os.lstat(self.root)
            root_hit = ((self.root + b"/") if self.root != b"/" else b"/", bool(st.st_mode & stat.S_ISGID))
            cache[b""] = root_hit
        if not rel:
            return root_hit
        # Walk down from the deepest cached ancestor, caching every level (iterative: names can be deep).
        parts = rel.split(b"/")
        i = len(parts) - 1
        cur = root_hit
        while i > 0:
            anc = cache.get(b"/".join(parts[:i]))
            if anc is not None:
                cur = anc
                break
            i -= 1
        last = len(parts) - 1
        for j in range(i, len(parts)):
            try:
                cur = self._walk(cur[0], [parts[j]], entry, make)
            except DanglingLinkError as exc:
                if j != last:
                    exc.final = False
                raise
            cache[b"/".join(parts[: j + 1])] = cur
        return cur

    def _walk(self, start: bytes, comps: list[bytes], entry: bytes, create: bool = False) -> tuple[bytes, bool]:
        """Physically resolve ``comps`` from the real directory ``start`` (trailing slash) inside the root.

        ``create``: a missing component of ``comps`` is made; one of a symlink's target never is.
        """
        root_dir = self.root + b"/" if self.root != b"/" else b"/"
        cur = start
        sgid = False
        hops = 0
        todo = list(reversed(comps))
        # The components on top of ``todo`` that came from symlink targets (always above the caller's own).
        linked = 0
        link = link_target = b""  # the first symlink met from ``comps`` (for the message)
        while todo:
            comp = todo.pop()
            from_link = linked > 0
            if from_link:
                linked -= 1
            if not comp or comp == b".":
                continue
            if comp == b"..":
                if cur != root_dir:
                    cur = cur[:-1].rpartition(b"/")[0] + b"/"
                    if len(cur) < len(root_dir):
                        cur = root_dir
                st = os.lstat(cur)
                sgid = bool(st.st_mode & stat.S_ISGID)
                continue
            path = cur + comp
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                if not create:
                    raise
                if from_link:
                    raise DanglingLinkError(
                        f"{shown(entry)}: its parent goes through the symbolic link {shown(link)} -> "
                        f"{shown(link_target)}, whose target does not exist in the layer (containers/storage's "
                        "applier fails there too: it never creates a link's missing target)", final=True) from None
                os.mkdir(path, 0o755)
                # MkdirAll's umask-filtered 0755; chmod in case our umask is stricter or the parent is setgid.
                os.chmod(path, 0o755)
                cur = path + b"/"
                sgid = False
                continue
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                cur = path + b"/"
                sgid = bool(mode & stat.S_ISGID)
            elif stat.S_ISLNK(mode):
                hops += 1
                if hops > _MAX_SYMLINKS:
                    raise HostileArchiveError(
                        f"too many levels of symbolic links resolving the parent of {shown(entry)}"
                    )
                target = os.readlink(path)
                if not from_link:
                    link, link_target = path[len(root_dir) :], target
                if target.startswith(b"/"):
                    cur = root_dir
                pieces = target.split(b"/")
                todo.extend(reversed(pieces))
                linked += len(pieces)
            else:
                raise HostileArchiveError(
                    f"a parent of {shown(entry)} is not a directory ({shown(path[len(root_dir):])})"
                )
        return cur, sgid

    def resolve_path(self, rel: bytes, *, entry: bytes = b"") -> bytes:
        """The absolute path of ``rel`` with its directory resolved; the last component is not followed."""
        parent, _, base = rel.rpartition(b"/")
        d, _ = self.resolve_dir(parent, entry=entry)
        return d + base

    def resolve_follow(self, rel: bytes, *, entry: bytes = b"") -> bytes:
        """The absolute real path of ``rel`` following every symlink inside the root (for reading)."""
        parent, _, base = rel.rpartition(b"/")
        d, _ = self.resolve_dir(parent, entry=entry)
        path = d + base
        hops = 0
        while True:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                return path
            if not stat.S_ISLNK(st.st_mode):
                return path
            hops += 1
            if hops > _MAX_SYMLINKS:
                raise HostileArchiveError(f"too many levels of symbolic links resolving {shown(entry)}")
            target = os.readlink(path)
            start = d if not target.startswith(b"/") else self.root + b"/"
            comps = target.split(b"/")
            last = comps.pop()
            d, _ = self._walk(start, comps, entry)
            path = d + last if last not in (b"", b".", b"..") else self._walk(d, [last], entry)[0][:-1]
