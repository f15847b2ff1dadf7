"""The tar-split format, as github.com/vbatts/tar-split writes and reads it (containers/storage's
``<layer-id>.tar-split.gz``).

A gzip-compressed stream of newline-terminated JSON objects, one per ``storage.Entry`` (tar/storage/entry.go)::

    {"type":2,"payload":"<base64 raw bytes>","position":0}                      SegmentType (2)
    {"type":1,"name":"etc/passwd","size":1234,"payload":"<base64 crc>","position":1}   FileType (1)

``FileType = 1 + iota``, ``SegmentType`` = 2.  Fields in struct order ``type, name, name_raw, size, payload,
position``; ``name``/``name_raw``/``size`` are ``omitempty``; ``name_raw`` (base64) replaces ``name`` when the
name is not valid UTF-8; ``payload`` is ``null`` for files of size 0 and otherwise the 8-byte big-endian
CRC-64 (``hash/crc64`` with the ``crc64.ISO`` table, tar/storage/getter.go ``CRCTable``) of the content.
Segments hold every byte of the stream that is not file content: the padding of the previous member, then
this member's header blocks (PAX and GNU long-name headers and their data included); the last segment is the
final padding and the end-of-archive blocks, and any bytes after those follow in segments of at most 1 MiB
(tar/asm/disassemble.go).  The packer refuses two file entries whose ``filepath.Clean``-ed names are equal
(``ErrDuplicatePath``), which is why containers/storage rejects such layers.

Reassembly (tar/asm/assemble.go): segments verbatim, file entries of size > 0 replaced by the file's content
read from the layer directory, checked against the CRC.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import posixpath
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from fastcrc import crc64
from isal import igzip, isal_zlib

from tether.store.errors import HostileArchiveError, StoreError, os_error_text, shown
from tether.store.tar.rootpath import RootResolver, confine

__all__ = [
    "FILE_TYPE",
    "SEGMENT_TYPE",
    "TarSplitEntry",
    "TarSplitError",
    "TarSplitWriter",
    "assemble_tar",
    "crc64_iso",
    "go_clean",
    "read_tar_split",
]

FILE_TYPE: Final = 1
SEGMENT_TYPE: Final = 2
_MAX_TRAILING_SEGMENT: Final = 1024 * 1024
_FLUSH_AT: Final = 256 * 1024

crc64_iso = crc64.go_iso
"""CRC-64 with Go's ``crc64.ISO`` table (reflected 0xD800000000000000, init/xorout all ones)."""


class TarSplitError(StoreError):
    """A tar-split file is unreadable, or the layer directory does not match it."""


# Go's encoding/json escapes <, >, & (HTML-safe), U+2028/U+2029, and control characters; \n \r \t short.
_NEEDS_ESCAPE = re.compile(rb'[\x00-\x1f"\\<>&\x7f-\xff]')
_GO_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t",
               "<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
# Not already filepath.Clean-ed (leading ".", "/.", "//", trailing "/") or needing JSON escapes.
_SLOW_NAME = re.compile(rb'^\.|/\.|//|/$|[\x00-\x1f"\\<>&\x7f-\xff]')
_GO_ESCAPE_RE = re.compile('[\x00-\x1f"\\\\<>&\u2028\u2029]')


def _go_escape(m: re.Match[str]) -> str:
    c = m.group(0)
    return _GO_ESCAPES.get(c) or f"\\u{ord(c):04x}"


def _name_field(name: bytes) -> bytes:
    """``"name":"..."`` or ``"name_raw":"<b64>"`` (with leading comma) as tar-split's packer writes it."""
    if not name:
        return b""
    if _NEEDS_ESCAPE.search(name) is None:
        return b',"name":"' + name + b'"'
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        return b',"name_raw":"' + base64.b64encode(name) + b'"'
    return b',"name":"' + _GO_ESCAPE_RE.sub(_go_escape, text).encode("utf-8") + b'"'


def go_clean(name: bytes) -> bytes:
    """Go's ``filepath.Clean`` (used for the duplicate-path check)."""
    if not name:
        return b"."
    out = posixpath.normpath(name)
    if out.startswith(b"//"):
        out = b"/" + out.lstrip(b"/")
    return out


class TarSplitWriter:
    """Writes ``<id>.tar-split.gz`` while a layer is extracted (in the same pass).

    ``add_segment(raw)`` and ``add_file(name, size, crc)`` in stream order; ``close()`` flushes and fsyncs;
    ``abort()`` removes the partial file.  Memory stays bounded: JSON lines are compressed every 256 KiB.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self._z = isal_zlib.compressobj(1, isal_zlib.DEFLATED, 31)
        self._lines: list[bytes] = []
        self._pending = 0
        self._pos = 0
        self._seen: set[bytes] = set()
        self._closed = False

    def add_segment(self, raw: bytes) -> None:
        line = b'{"type":2,"payload":"%s","position":%d}\n' % (binascii.b2a_base64(raw, newline=False), self._pos)
        self._lines.append(line)
        self._pos += 1
        self._pending += len(line)
        if self._pending >= _FLUSH_AT:
            self._flush()

    def add_file(self, name: bytes, size: int, crc: int | None) -> None:
        # storage/packer.go: duplicate filepath.Clean-ed names are refused.  Names that are already clean
        # and need no JSON escaping (nearly all) take the fast path: one regex search.
        if name and _SLOW_NAME.search(name) is None:
            key = name
            field = b',"name":"' + name + b'"'
        else:
            key = go_clean(name)
            field = _name_field(name)
        seen = self._seen
        if key in seen:
            raise HostileArchiveError(f"duplicate path in layer tar: {shown(name)} (tar-split refuses duplicates)")
        seen.add(key)
        if size:
            line = b'{"type":1%s,"size":%d,"payload":"%s","position":%d}\n' % (
                field, size, binascii.b2a_base64((crc or 0).to_bytes(8, "big"), newline=False), self._pos)
        else:
            line = b'{"type":1%s,"payload":null,"position":%d}\n' % (field, self._pos)
        self._lines.append(line)
        self._pos += 1
        self._pending += len(line)
        if self._pending >= _FLUSH_AT:
            self._flush()

    def _flush(self) -> None:
        if self._lines:
            data = self._z.compress(b"".join(self._lines))
            self._lines.clear()
            self._pending = 0
            self._write(data)

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    def close(self) -> None:
        """Finish the gzip stream, fdatasync (as c/storage writes its tar-split) and close the file."""
        if self._closed:
            return
        self._flush()
        self._write(self._z.flush())
        os.fdatasync(self._fd)
        os.close(self._fd)
        self._closed = True

    def abort(self) -> None:
        """Close and remove the partial file."""
        if not self._closed:
            self._closed = True
            os.close(self._fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


@dataclass(frozen=True, slots=True)
class TarSplitEntry:
    """One decoded entry: ``type`` 1 (file) or 2 (segment)."""

    type: int
    name: bytes
    size: int
    payload: bytes | None
    position: int


def read_tar_split(path: Path) -> Iterator[TarSplitEntry]:
    """Decode a ``.tar-split.gz`` (podman's or ours) entry by entry."""
    try:
        with igzip.open(path, "rb") as f:  # type: ignore[no-untyped-call]
            for lineno, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    raw = obj.get("name_raw")
                    name = base64.b64decode(raw) if raw else obj.get("name", "").encode("utf-8")
                    payload = obj.get("payload")
                    yield TarSplitEntry(int(obj["type"]), name, int(obj.get("size") or 0),
                                        base64.b64decode(payload) if payload is not None else None,
                                        int(obj.get("position", lineno)))
                except (ValueError, KeyError, TypeError, binascii.Error) as e:
                    raise TarSplitError(f"{path}: entry {lineno}: {e}") from None
    except (OSError, EOFError) as e:
        if isinstance(e, FileNotFoundError):
            raise TarSplitError(f"{path}: missing") from None
        raise TarSplitError(f"{path}: {e}") from None


def assemble_tar(tar_split: Path, layer_dir: Path, *, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
    """Rebuild the exact layer tar from a tar-split file and the extracted layer directory.

    File contents are read from ``layer_dir`` (names resolved inside it as the applier resolved them, so a
    hostile symlink cannot make us read outside) and checked against the recorded CRC-64; a mismatch or a
    missing file raises :class:`TarSplitError` naming the file.  Yields chunks of at most ``chunk_size``.
    """
    resolver = RootResolver(os.fsencode(layer_dir), create=False)
    out: list[bytes] = []
    out_len = 0
    seen: set[bytes] = set()
    for entry in read_tar_split(tar_split):
        if entry.type == SEGMENT_TYPE:
            if entry.payload:
                out.append(entry.payload)
                out_len += len(entry.payload)
        elif entry.type == FILE_TYPE:
            key = go_clean(entry.name)
            if key in seen:
                raise TarSplitError(f"{tar_split}: duplicate path {shown(entry.name)}")
            seen.add(key)
            if entry.size <= 0:
                continue
            expected = entry.payload or b""
            rel = confine(entry.name)
            try:
                path = resolver.resolve_follow(rel, entry=entry.name)
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            except (OSError, HostileArchiveError) as e:
                raise TarSplitError(f"{layer_dir}: cannot open {shown(entry.name)} for the layer tar: "
                                    f"{os_error_text(e) if isinstance(e, OSError) else e}") from None
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    # A header-only type (link, dir...) whose header carried a size: tar-split recorded the
                    # CRC of no content (Go's reader reads no data for those).
                    if expected == b"\0" * 8:
                        continue
                    raise TarSplitError(f"{layer_dir}: {shown(entry.name)} is not a regular file")
                if st.st_size > entry.size:
                    # Bytes appended after extraction would not change the CRC of the recorded prefix.
                    raise TarSplitError(
                        f"{layer_dir}: {shown(entry.name)} is longer than the {entry.size} bytes recorded"
                    )
                crc = 0
                left = entry.size
                while left:
                    if out_len >= chunk_size:
                        yield b"".join(out)
                        out.clear()
                        out_len = 0
                    piece = os.read(fd, min(left, chunk_size))
                    if not piece:
                        raise TarSplitError(
                            f"{layer_dir}: {shown(entry.name)} is shorter than the {entry.size} bytes recorded"
                        )
                    crc = crc64_iso(piece, crc)
                    out.append(piece)
                    out_len += len(piece)
                    left -= len(piece)
            finally:
                os.close(fd)
            if crc.to_bytes(8, "big") != expected:
                raise TarSplitError(f"{layer_dir}: file integrity checksum failed for {shown(entry.name)}")
        else:
            raise TarSplitError(f"{tar_split}: unknown entry type {entry.type}")
        if out_len >= chunk_size:
            yield b"".join(out)
            out.clear()
            out_len = 0
    if out:
        yield b"".join(out)
