"""Does a layer directory hold exactly what its tar says?  The check behind ``tether check``.

Rebuilding a layer's tar from its tar-split reads every regular file's content (CRC-checked), but says nothing
of what else is in the directory: a file created beside or under the layer's entries, a directory where the
tar has a symlink, a missing symlink or device all rebuild the same tar.  containers/storage's ``Check``
(check.go, ``LayerContents``) answers it by replaying the headers of every layer of the chain into an
expected tree and comparing it with the mounted layer.  We compare each layer's own directory instead,
without mounting: an overlay ``diff`` holds one layer (its whiteouts as 0:0 character devices, opaque
directories marked by ``trusted.overlay.opaque``), a vfs directory the whole chain.

:class:`TreeModel` replays headers as :class:`tether.store.tar.apply.TarApplier` applies them (names confined,
symlinks followed inside the root, missing directories of an entry's own name created, hard links sharing
their target, whiteouts per driver); :meth:`TreeModel.compare` walks the directory (never following a link)
and names every difference by path.  Compared: the file type, symlink targets, regular file sizes, device
numbers, permission bits and (as root) owners of the entries the tar names, hard links sharing one inode,
opaque markers; directories the tar never names are compared by type only (their attributes are the
applier's).  Times are not compared: a directory's changes whenever an entry is added to it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from typing import Final, Literal

from tether.store.errors import shown
from tether.store.tar.reader import (
    TYPE_BLOCK,
    TYPE_CHAR,
    TYPE_DIR,
    TYPE_FIFO,
    TYPE_LINK,
    TYPE_REG,
    TYPE_SYMLINK,
    WH_META_PREFIX,
    WH_OPAQUE,
    WH_PREFIX,
    Entry,
    TarReader,
)
from tether.store.tar.rootpath import confine
from tether.store.tar.tarsplit import go_clean

__all__ = ["HeaderReader", "TreeModel"]

_MAX_SYMLINKS: Final = 40
_OPAQUE_XATTRS: Final = (b"trusted.overlay.opaque", b"user.overlay.opaque")
_KINDS: Final = {stat.S_IFDIR: "directory", stat.S_IFREG: "regular file", stat.S_IFLNK: "symlink",
                 stat.S_IFCHR: "character device", stat.S_IFBLK: "block device", stat.S_IFIFO: "fifo",
                 stat.S_IFSOCK: "socket"}
_TYPE_KIND: Final = {TYPE_REG: stat.S_IFREG, TYPE_DIR: stat.S_IFDIR, TYPE_SYMLINK: stat.S_IFLNK,
                     TYPE_CHAR: stat.S_IFCHR, TYPE_BLOCK: stat.S_IFBLK, TYPE_FIFO: stat.S_IFIFO}


class _NullSink:
    def add_segment(self, raw: bytes) -> None:
        pass

    def add_file(self, name: bytes, size: int, crc: int | None) -> None:
        pass


class HeaderReader(TarReader):
    """A :class:`~tether.store.tar.reader.TarReader` that keeps every member's header (``entries``), in order."""

    def __init__(self) -> None:
        super().__init__(_NullSink())
        self.entries: list[Entry] = []

    def _entry(self, e: Entry, data_size: int) -> None:
        self.entries.append(e)


class _Node:
    """An expected file.  ``explicit``: a tar entry made it (else a directory created for an entry's name);
    ``layer``: the index of the layer whose entry last wrote it (vfs opaque directories keep those)."""

    __slots__ = ("children", "explicit", "gid", "kind", "layer", "link", "mode", "opaque", "rdev", "size", "uid")

    def __init__(self, kind: int, *, explicit: bool = False, mode: int = 0, uid: int = 0, gid: int = 0,
                 size: int = 0, link: bytes = b"", rdev: int = 0, layer: int = -1) -> None:
        self.kind = kind
        self.explicit = explicit
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
        self.link = link
        self.rdev = rdev
        self.layer = layer
        self.opaque = False
        self.children: dict[bytes, _Node] | None = {} if kind == stat.S_IFDIR else None


class _Unresolvable(Exception):
    """A parent the applier could not have resolved either (it refused such a layer)."""


class TreeModel:
    """The tree the headers of one or more layers produce (``mode``: the driver's whiteout semantics).

    :meth:`apply` each layer's headers in order (base first: a vfs directory is the whole chain; an overlay
    ``diff`` one layer), then :meth:`compare` with the directory.
    """

    def __init__(self, mode: Literal["overlay", "vfs"]) -> None:
        self._overlay = mode == "overlay"
        self.root = _Node(stat.S_IFDIR)
        self.notes: list[str] = []  # entries the model could not place (the applier would have refused them)

    # ------------------------------------------------------------------ replaying headers
    def apply(self, entries: Iterable[Entry], *, layer: int = 0) -> None:
        """Replay one layer's headers (``layer``: its index in the chain, base first)."""
        for e in entries:
            try:
                self._apply_one(e, layer)
            except _Unresolvable as exc:
                self.notes.append(f"{shown(e.name)}: {exc}")

    def _apply_one(self, e: Entry, layer: int) -> None:
        rel = confine(e.name)
        parent, _, base = rel.rpartition(b"/")
        if (WH_PREFIX in rel and base.startswith(WH_PREFIX)) or rel.startswith(WH_META_PREFIX):
            self._whiteout(e, rel, parent, base, layer)
            return
        if not rel:
            if e.type == TYPE_DIR and not (self._overlay and go_clean(e.name) == b"."):
                self.root.layer = layer
            return
        kind = _TYPE_KIND.get(e.type)
        if kind is None and e.type != TYPE_LINK:
            return
        directory = self._resolve_dir(parent, create=True)
        assert directory.children is not None
        existing = directory.children.get(base)
        mode = e.mode & 0o7777
        if e.type == TYPE_LINK:
            target = self._resolve_link_target(e.linkname)
            target.uid, target.gid = e.uid, e.gid  # pkg/archive: lchown (and chmod) the shared inode
            if target.kind != stat.S_IFLNK:
                target.mode = mode
            target.layer = layer
            directory.children[base] = target
            return
        if kind == stat.S_IFDIR and existing is not None and existing.kind == stat.S_IFDIR:
            existing.explicit, existing.mode, existing.uid, existing.gid = True, mode, e.uid, e.gid
            existing.layer = layer
            return
        assert kind is not None
        node = _Node(kind, explicit=True, mode=mode, uid=e.uid, gid=e.gid, layer=layer)
        if kind == stat.S_IFREG:
            node.size = e.size
        elif kind == stat.S_IFLNK:
            node.link = e.linkname
        elif kind in (stat.S_IFCHR, stat.S_IFBLK):
            node.rdev = os.makedev(e.devmajor, e.devminor)
        directory.children[base] = node

    def _whiteout(self, e: Entry, rel: bytes, parent: bytes, base: bytes, layer: int) -> None:
        if rel.startswith(WH_META_PREFIX) and rel != WH_OPAQUE:
            return
        if base.startswith(WH_META_PREFIX) and base != WH_OPAQUE:
            return
        if b"/" + WH_META_PREFIX in rel and not rel.endswith(b"/" + WH_OPAQUE):
            return
        try:
            directory = self._resolve_dir(parent, create=True)
        except _Unresolvable:
            # What a stored layer can hold here: overlay ignores a whiteout under a whited-out parent (mknod
            # ENOTDIR), vfs one under a symlink to nothing (RemoveAll of a missing path); others were refused.
            return
        assert directory.children is not None
        if self._overlay:
            if base == WH_OPAQUE:
                directory.opaque = True
            else:
                directory.children[base[4:]] = _Node(stat.S_IFCHR, explicit=True, uid=e.uid, gid=e.gid,
                                                     layer=layer)
            return
        if base != WH_OPAQUE:
            directory.children.pop(base[4:], None)
            return
        # vfs opaque: everything below not unpacked from this layer goes (UnpackLayer's walk)
        stack = [directory]
        while stack:
            d = stack.pop()
            assert d.children is not None
            for name, child in list(d.children.items()):
                if child.layer == layer:
                    if child.kind == stat.S_IFDIR:
                        stack.append(child)
                    continue
                del d.children[name]

    def _resolve_dir(self, rel: bytes, *, create: bool) -> _Node:
        """The directory node ``rel`` names, following symlinks inside the model (see rootpath)."""
        stack = [self.root]
        todo = [c for c in reversed(rel.split(b"/")) if c] if rel else []
        linked = 0
        hops = 0
        while todo:
            comp = todo.pop()
            from_link = linked > 0
            if from_link:
                linked -= 1
            if comp == b".":
                continue
            if comp == b"..":
                if len(stack) > 1:
                    stack.pop()
                continue
            cur = stack[-1]
            assert cur.children is not None
            child = cur.children.get(comp)
            if child is None:
                if not create or from_link:
                    raise _Unresolvable(f"its parent goes through a missing {shown(comp)}")
                child = cur.children[comp] = _Node(stat.S_IFDIR)
            if child.kind == stat.S_IFDIR:
                stack.append(child)
            elif child.kind == stat.S_IFLNK:
                hops += 1
                if hops > _MAX_SYMLINKS:
                    raise _Unresolvable("too many levels of symbolic links")
                if child.link.startswith(b"/"):
                    del stack[1:]
                pieces = [c for c in reversed(child.link.split(b"/")) if c]
                todo.extend(pieces)
                linked += len(pieces)
            else:
                raise _Unresolvable(f"a parent ({shown(comp)}) is not a directory")
        return stack[-1]

    def _resolve_link_target(self, linkname: bytes) -> _Node:
        rel = confine(linkname)
        tparent, _, tbase = rel.rpartition(b"/")
        directory = self._resolve_dir(tparent, create=False)
        assert directory.children is not None
        target = directory.children.get(tbase)
        if target is None or not tbase:
            raise _Unresolvable(f"hard link target {shown(linkname)} is not in the layer")
        return target

    # ------------------------------------------------------------------ comparing with a directory
    def compare(self, root: bytes | str | os.PathLike[str], *, ownership: bool = True, limit: int = 50) -> list[str]:
        """The differences between the model and the directory ``root`` (paths relative to it), at most
        ``limit`` of them (then a last line says how many more).  ``ownership``: compare owners (as root)."""
        problems: list[str] = [f"cannot place {note}" for note in self.notes]
        more = 0
        for problem in self._differences(os.fsencode(root), ownership):
            if len(problems) < limit:
                problems.append(problem)
            else:
                more += 1
        if more:
            problems.append(f"... and {more} more differences")
        return problems

    def _differences(self, root: bytes, ownership: bool) -> Iterator[str]:
        inodes: dict[int, tuple[int, int, bytes]] = {}  # id(node) -> (dev, ino, first path) for hard links
        stack: list[tuple[bytes, _Node]] = [(b"", self.root)]
        while stack:
            rel, node = stack.pop()
            directory = root + b"/" + rel if rel else root
            if node.opaque and not any(_xattr(directory, name) == b"y" for name in _OPAQUE_XATTRS):
                yield f"{shown(rel or b'.')}: not marked opaque, the tar has {shown(WH_OPAQUE)} there"
            assert node.children is not None
            try:
                with os.scandir(directory) as it:
                    present = {entry.name: entry for entry in it}
            except OSError as exc:
                yield f"{shown(rel or b'.')}: cannot list it: {exc.strerror}"
                continue
            for name in sorted(node.children.keys() | present.keys()):
                path = rel + b"/" + name if rel else name
                want = node.children.get(name)
                entry = present.get(name)
                if entry is None:
                    assert want is not None
                    yield f"missing {shown(path)} ({_KINDS.get(want.kind, '?')})"
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError as exc:
                    yield f"{shown(path)}: {exc.strerror}"
                    continue
                kind = stat.S_IFMT(st.st_mode)
                if want is None:
                    yield f"unexpected {shown(path)} ({_KINDS.get(kind, '?')}): not in the layer's tar"
                    continue
                if kind != want.kind:
                    yield (f"{shown(path)} is a {_KINDS.get(kind, '?')}, the tar has a "
                           f"{_KINDS.get(want.kind, '?')}")
                    continue
                yield from _attributes(path, entry.path, st, want, ownership)
                if want.kind == stat.S_IFREG:
                    seen = inodes.setdefault(id(want), (st.st_dev, st.st_ino, path))
                    if seen[:2] != (st.st_dev, st.st_ino):
                        yield f"{shown(path)} is not a hard link to {shown(seen[2])} as the tar says"
                elif want.kind == stat.S_IFDIR:
                    stack.append((path, want))


def _attributes(path: bytes, real: bytes, st: os.stat_result, want: _Node, ownership: bool) -> Iterator[str]:
    if want.kind == stat.S_IFLNK:
        try:
            target = os.readlink(real)
        except OSError as exc:
            yield f"{shown(path)}: {exc.strerror}"
            return
        if target != want.link:
            yield f"{shown(path)} points at {shown(target)}, the tar says {shown(want.link)}"
        return
    if not want.explicit:
        return
    if want.kind == stat.S_IFREG and st.st_size != want.size:
        yield f"{shown(path)} has {st.st_size} bytes, the tar says {want.size}"
    if want.kind in (stat.S_IFCHR, stat.S_IFBLK) and st.st_rdev != want.rdev:
        yield (f"{shown(path)} is device {os.major(st.st_rdev)}:{os.minor(st.st_rdev)}, the tar says "
               f"{os.major(want.rdev)}:{os.minor(want.rdev)}")
    if stat.S_IMODE(st.st_mode) != want.mode:
        yield f"{shown(path)} has mode {stat.S_IMODE(st.st_mode):04o}, the tar says {want.mode:04o}"
    if ownership and (st.st_uid, st.st_gid) != (want.uid, want.gid):
        yield f"{shown(path)} is owned by {st.st_uid}:{st.st_gid}, the tar says {want.uid}:{want.gid}"


def _xattr(path: bytes, name: bytes) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None
