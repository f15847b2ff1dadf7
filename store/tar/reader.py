"""Tar stream reading: a push parser of an uncompressed tar stream, with no file system access of its own.

The header parser follows Go's ``archive/tar`` reader (and tar-split's fork of it, whose raw accounting
defines the tar-split segments): V7, USTAR, PAX (``path``, ``linkpath``, ``size``, ``uid``, ``gid``,
``mtime``, ``atime``, ``SCHILY.xattr.*``), GNU (long names ``L``/``K``), STAR prefixes, base-256 numbers,
checksum (unsigned or signed), ``TypeRegA`` with a trailing slash as a directory, header-only types carrying
no data whatever their size field says, at most 1 MiB of PAX/GNU long-name data.  Sparse files are refused.

:class:`TarReader` is fed chunks of any size on any boundary (no seeking).  For each member it calls the
``_entry`` hook with the merged header (:class:`Entry`) and, once the member's content has gone by, the
``_end_content`` hook; every byte that is not member content goes to the tar-split sink as segments, and
every member as a file entry with the CRC-64 of its content (tar/asm/disassemble.go).  The reader opens
nothing: an ``_entry`` hook that wants the content sets ``_fd`` and the reader writes the content there
(:class:`tether.store.tar.apply.TarApplier` does; without a hook the content is only checksummed).  It also
collects the uid/gid sets containers/storage records.
"""

from __future__ import annotations

import os
import zlib
from typing import Final, Protocol

from fastcrc import crc64

from tether.store.errors import HostileArchiveError, UnsupportedError, shown

__all__ = [
    "BLOCK",
    "MAX_SPECIAL",
    "Entry",
    "TarReader",
    "TarSplitSink",
    "parse_numeric",
    "parse_pax",
    "parse_pax_time",
]

BLOCK: Final = 512
MAX_SPECIAL: Final = 1 << 20  # Go archive/tar maxSpecialFileSize: PAX and GNU long name/link data
_ZERO_BLOCK: Final = bytes(BLOCK)
_TRAILING_SEGMENT: Final = 1 << 20
_MAX_ID: Final = (1 << 32) - 2

#: Whiteout names (pkg/archive whiteouts.go ``WhiteoutPrefix``, ``WhiteoutMetaPrefix``, ``WhiteoutOpaqueDir``).
WH_PREFIX: Final = b".wh."
WH_META_PREFIX: Final = b".wh..wh."
WH_OPAQUE: Final = b".wh..wh..opq"

# type flags (Go archive/tar common.go)
TYPE_REG: Final = b"0"
TYPE_REGA: Final = b"\0"
TYPE_LINK: Final = b"1"
TYPE_SYMLINK: Final = b"2"
TYPE_CHAR: Final = b"3"
TYPE_BLOCK: Final = b"4"
TYPE_DIR: Final = b"5"
TYPE_FIFO: Final = b"6"
TYPE_CONT: Final = b"7"
TYPE_XHEADER: Final = b"x"
TYPE_XGLOBAL: Final = b"g"
TYPE_GNU_LONGNAME: Final = b"L"
TYPE_GNU_LONGLINK: Final = b"K"
TYPE_GNU_SPARSE: Final = b"S"
HEADER_ONLY_TYPES: Final = frozenset((TYPE_LINK, TYPE_SYMLINK, TYPE_CHAR, TYPE_BLOCK, TYPE_DIR, TYPE_FIFO))


def parse_numeric(field: bytes, what: str) -> int:
    """Go ``parser.parseNumeric``: base-256 when the high bit is set, else octal trimmed of spaces/NULs."""
    if field and field[0] & 0x80:
        if field[0] & 0x40:
            return int.from_bytes(field, "big", signed=True)
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    s = field.strip(b" \0")
    i = s.find(b"\0")
    if i >= 0:
        s = s[:i]
    if not s:
        return 0
    try:
        if not s.isdigit():
            raise ValueError(s)
        return int(s, 8)
    except ValueError:
        raise HostileArchiveError(f"invalid {what} field {field!r} in tar header") from None


def cstr(field: bytes) -> bytes:
    """A NUL-terminated header field (the whole field when it has no NUL)."""
    i = field.find(b"\0")
    return field if i < 0 else field[:i]


def parse_pax_time(v: bytes) -> int:
    """Go ``parsePAXTime`` -> nanoseconds."""
    ss, _, sn = v.partition(b".")
    try:
        secs = int(ss)
    except ValueError:
        raise HostileArchiveError(f"invalid PAX time {v!r}") from None
    if sn and not sn.isdigit():
        raise HostileArchiveError(f"invalid PAX time {v!r}")
    ns = int((sn + b"000000000")[:9])
    if ss.startswith(b"-"):
        return secs * 1_000_000_000 - ns
    return secs * 1_000_000_000 + ns


def parse_pax(data: bytes) -> dict[bytes, bytes]:
    """Go ``parsePAX``/``parsePAXRecord``: ``"%d %s=%s\\n"`` records, strictly."""
    recs: dict[bytes, bytes] = {}
    pos = 0
    n = len(data)
    while pos < n:
        sp = data.find(b" ", pos, pos + 21)
        if sp < 0:
            raise HostileArchiveError("malformed PAX record (no length)")
        try:
            length = int(data[pos:sp])
        except ValueError:
            raise HostileArchiveError("malformed PAX record length") from None
        end = pos + length
        if length < 5 or end > n or end <= sp + 1 or data[end - 1] != 0x0A:
            raise HostileArchiveError("malformed PAX record")
        key, eq, value = data[sp + 1 : end - 1].partition(b"=")
        if not eq or not key:
            raise HostileArchiveError("malformed PAX record (no key)")
        if key in (b"path", b"linkpath", b"uname", b"gname"):
            if b"\0" in value:
                raise HostileArchiveError(f"NUL in PAX {key.decode()} record")
        elif b"\0" in key:
            raise HostileArchiveError("NUL in PAX record key")
        if key.startswith(b"GNU.sparse."):
            raise UnsupportedError("sparse files (GNU PAX sparse headers) in a layer tar are not supported")
        recs[key] = value
        pos = end
    return recs


class Entry:
    """One member's header as Go's reader returns it, PAX and GNU long-name records merged in (only the fields
    applying a layer needs)."""

    __slots__ = ("atime_ns", "devmajor", "devminor", "gid", "linkname", "mode", "mtime_ns", "name", "size",
                 "type", "uid", "xattrs")

    name: bytes
    type: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    atime_ns: int
    linkname: bytes
    devmajor: int
    devminor: int
    xattrs: dict[bytes, bytes] | None

    def __init__(self) -> None:
        self.xattrs = None


class TarSplitSink(Protocol):
    """Where :class:`TarReader` records the stream (:class:`tether.store.tar.tarsplit.TarSplitWriter`)."""

    def add_segment(self, raw: bytes) -> None: ...

    def add_file(self, name: bytes, size: int, crc: int | None) -> None: ...


class TarReader:
    """Push parser of an uncompressed tar stream: ``consume(data)`` any number of times, then ``end()``.

    Subclasses override the hooks ``_entry(e, data_size)`` (a member's header was read; ``data_size``
    content bytes follow; set ``self._fd`` to receive them) and ``_end_content()`` (the member's content
    ended; called for every member).  ``uids``/``gids`` collect the header ids of every member whose base
    name does not start with ``.wh.`` (containers/storage's uid/gid logger).  Raises
    :class:`~tether.store.errors.HostileArchiveError` for malformed or lying headers.
    """

    def __init__(self, tar_split: TarSplitSink) -> None:
        self._ts = tar_split
        self._pending = b""  # partial header block
        self._seg: list[bytes] = []  # raw bytes of the current segment
        self._seg_len = 0
        self._file_left = 0  # content bytes still to come for the current file
        self._pad = 0  # padding bytes still to come
        self._special: bytearray | None = None  # PAX / GNU long name data being collected
        self._special_left = 0
        self._special_type = b""
        self._pax: dict[bytes, bytes] | None = None
        self._gnu_name: bytes | None = None
        self._gnu_link: bytes | None = None
        self._zero_seen = False
        self._ended = False
        self._oct_cache: dict[bytes, int] = {}
        # the current member
        self._fd = -1  # where its content goes (set by the _entry hook), -1: nowhere
        self._crc = 0
        self._cur_name = b""
        self._cur_size = 0
        self.uids: set[int] = set()
        self.gids: set[int] = set()

    # ---------------------------------------------------------------- hooks
    def _entry(self, e: Entry, data_size: int) -> None:
        """A member's header was read; ``data_size`` bytes of content follow (0 for header-only types)."""

    def _end_content(self) -> None:
        """The current member's content ended (right after ``_entry`` when it has none)."""

    @property
    def current(self) -> bytes:
        """The name of the member being read (for error messages)."""
        return self._cur_name

    # ---------------------------------------------------------------- stream
    def consume(self, data: bytes) -> None:
        """Parse the next bytes of the uncompressed tar stream (any length, any boundary)."""
        pos = 0
        n = len(data)
        if self._pending:
            need = BLOCK - len(self._pending)
            if n < need:
                self._pending += data
                return
            block = self._pending + data[:need]
            self._pending = b""
            pos = need
            self._block(block)
        mv: memoryview | None = None
        while pos < n:
            if self._file_left:
                take = self._file_left if self._file_left <= n - pos else n - pos
                if mv is None:
                    mv = memoryview(data)
                piece = mv[pos : pos + take]
                self._crc = crc64.go_iso(piece, self._crc)
                fd = self._fd
                if fd >= 0:
                    while piece:
                        w = os.write(fd, piece)
                        piece = piece[w:]
                pos += take
                self._file_left -= take
                if not self._file_left:
                    self._end_content()
                    self._ts.add_file(self._cur_name, self._cur_size, self._crc if self._cur_size else None)
                continue
            if self._pad:
                take = self._pad if self._pad <= n - pos else n - pos
                self._seg.append(data[pos : pos + take])
                self._seg_len += take
                pos += take
                self._pad -= take
                continue
            if self._special is not None:
                take = self._special_left if self._special_left <= n - pos else n - pos
                raw = data[pos : pos + take]
                self._special += raw
                self._seg.append(raw)  # raw-accounted: part of the segment (tar-split's parsePAX)
                self._seg_len += take
                pos += take
                self._special_left -= take
                if not self._special_left:
                    self._end_special()
                continue
            if self._ended:
                self._trailing(data[pos:] if pos else data)
                return
            if n - pos < BLOCK:
                self._pending = data[pos:]
                return
            self._block(data[pos : pos + BLOCK])
            pos += BLOCK

    def _trailing(self, data: bytes) -> None:
        # Bytes after the end-of-archive blocks: kept (tar-split stores them, the diffID covers them).
        self._seg.append(data)
        self._seg_len += len(data)
        if self._seg_len >= _TRAILING_SEGMENT:
            raw = b"".join(self._seg)
            self._seg.clear()
            for i in range(0, len(raw) - len(raw) % _TRAILING_SEGMENT, _TRAILING_SEGMENT):
                self._ts.add_segment(raw[i : i + _TRAILING_SEGMENT])
            rest = raw[len(raw) - len(raw) % _TRAILING_SEGMENT :]
            self._seg_len = len(rest)
            if rest:
                self._seg.append(rest)

    def _flush_segment(self) -> None:
        if self._seg_len:
            self._ts.add_segment(b"".join(self._seg))
        self._seg.clear()
        self._seg_len = 0

    def end(self) -> None:
        """End of the uncompressed stream: refuse truncation, write the last segment."""
        if self._file_left:
            raise HostileArchiveError(
                f"layer tar truncated: {shown(self._cur_name)} is {self._file_left} bytes short of its header's size"
            )
        if self._special is not None:
            raise HostileArchiveError("layer tar truncated inside a PAX or GNU long-name header")
        if self._pending:
            raise HostileArchiveError("layer tar truncated inside a header block")
        if self._pad:
            raise HostileArchiveError("layer tar truncated inside the padding of the last member")
        # tar-split v0.11.2 (containers/storage 1.43): after the tar reader's EOF, whatever remains of the
        # stream is read in chunks of up to 1 MiB, each recorded as a segment, and the final read (0 bytes,
        # EOF) adds an empty segment (Go's decompressors may return the last bytes together with EOF, which
        # saves that empty segment; it carries no bytes either way).
        self._flush_segment()
        self._ts.add_segment(b"")

    # ---------------------------------------------------------------- headers

    # ---------------------------------------------------------------- headers
    def _block(self, block: bytes) -> None:
        self._seg.append(block)
        self._seg_len += BLOCK
        if block[0] == 0 and block == _ZERO_BLOCK:
            if self._zero_seen:
                self._ended = True
                self._flush_segment()
            else:
                self._zero_seen = True
            return
        if self._zero_seen:
            raise HostileArchiveError("invalid tar: a zero block followed by a non-zero block")
        # Checksum (Go block.GetFormat): unsigned sum with the checksum field as spaces; signed accepted.
        chk = block[148:156]
        try:  # GNU tar and Go write "%06o\0 "
            want = int(chk[:6], 8) if chk[6] == 0 and chk[7] == 0x20 else parse_numeric(chk, "checksum")
        except ValueError:
            want = parse_numeric(chk, "checksum")
        field_sum = sum(chk)
        # adler32's low half is 1 + sum(bytes) mod 65521: the unsigned sum in one C call.
        if want % 65521 != ((zlib.adler32(block) & 0xFFFF) - 1 - field_sum + 256) % 65521:
            signed = 256 + sum(b - 256 if b >= 128 else b for b in block[:148] + block[156:])
            if want != signed:
                raise HostileArchiveError("invalid tar header checksum (corrupt stream or not a tar)")
        magic = block[257:263]
        typeflag = block[156:157]
        oc = self._oct_cache
        size_f = block[124:136]
        try:
            size = int(size_f[:11], 8) if size_f[11] == 0 and size_f[0] == 0x30 else parse_numeric(size_f, "size")
        except ValueError:
            size = parse_numeric(size_f, "size")
        if size < 0:
            raise HostileArchiveError(f"negative size in tar header {shown(cstr(block[:100]))}")
        # Meta headers: their data is collected (raw-accounted: part of the segment).
        if typeflag in (TYPE_XHEADER, TYPE_XGLOBAL, TYPE_GNU_LONGNAME, TYPE_GNU_LONGLINK):
            if size > MAX_SPECIAL:
                raise HostileArchiveError(
                    f"tar {typeflag.decode()} header data of {size} bytes exceeds the {MAX_SPECIAL} byte limit"
                )
            self._special_type = typeflag
            self._special_pad = -size % BLOCK
            if typeflag == TYPE_XGLOBAL:
                self._global_block = block
            self._special = bytearray()
            self._special_left = size
            if not size:
                self._end_special()
            return
        e = Entry()
        i = block.find(b"\0", 0, 100)
        name = block[: i if i >= 0 else 100]
        fmt_v7 = True
        if magic == b"ustar\x00":
            fmt_v7 = False
            if block[345]:
                # STAR archives end the header with "tar\0" and keep a shorter prefix.
                prefix = cstr(block[345:476]) if block[508:512] == b"tar\x00" else cstr(block[345:500])
                name = prefix + b"/" + name
        elif magic == b"ustar " and block[263:265] == b" \x00":
            fmt_v7 = False
        if len(oc) > 4096:
            oc.clear()
        mode_f = block[100:108]
        mode = oc.get(mode_f)
        if mode is None:
            mode = oc[mode_f] = parse_numeric(mode_f, "mode")
        uid_f = block[108:116]
        uid = oc.get(uid_f)
        if uid is None:
            uid = oc[uid_f] = parse_numeric(uid_f, "uid")
        gid_f = block[116:124]
        gid = oc.get(gid_f)
        if gid is None:
            gid = oc[gid_f] = parse_numeric(gid_f, "gid")
        mt = block[136:148]
        try:
            mtime_ns = (int(mt[:11], 8) if mt[11] == 0 else parse_numeric(mt, "mtime")) * 1_000_000_000
        except ValueError:
            mtime_ns = parse_numeric(mt, "mtime") * 1_000_000_000
        atime_ns = 0
        linkname = cstr(block[157:257]) if block[157] else b""
        if not fmt_v7 and typeflag in (TYPE_CHAR, TYPE_BLOCK):
            e.devmajor = parse_numeric(block[329:337], "devmajor")
            e.devminor = parse_numeric(block[337:345], "devminor")
        else:
            e.devmajor = e.devminor = 0
        pax = self._pax
        if pax is not None:
            self._pax = None
            v = pax.get(b"path")
            if v:
                name = v
            v = pax.get(b"linkpath")
            if v:
                linkname = v
            try:
                v = pax.get(b"size")
                if v:
                    size = int(v)
                v = pax.get(b"uid")
                if v:
                    uid = int(v)
                v = pax.get(b"gid")
                if v:
                    gid = int(v)
            except ValueError:
                raise HostileArchiveError(f"invalid numeric PAX record for {shown(name)}") from None
            v = pax.get(b"mtime")
            if v:
                mtime_ns = parse_pax_time(v)
            v = pax.get(b"atime")
            if v:
                atime_ns = parse_pax_time(v)
            for k, v in pax.items():
                if k.startswith(b"SCHILY.xattr."):
                    if e.xattrs is None:
                        e.xattrs = {}
                    e.xattrs[k[13:]] = v
        if self._gnu_name is not None:
            name = self._gnu_name
            self._gnu_name = None
        if self._gnu_link is not None:
            linkname = self._gnu_link
            self._gnu_link = None
        if typeflag == TYPE_REGA:
            typeflag = TYPE_DIR if name.endswith(b"/") else TYPE_REG
        if size < 0:
            raise HostileArchiveError(f"negative size for {shown(name)}")
        if not (0 <= uid <= _MAX_ID and 0 <= gid <= _MAX_ID):
            raise HostileArchiveError(f"uid/gid out of range for {shown(name)}")
        e.name = name
        e.type = typeflag
        e.mode = mode
        e.uid = uid
        e.gid = gid
        e.size = size
        e.mtime_ns = mtime_ns
        e.atime_ns = atime_ns
        e.linkname = linkname
        # c/storage's uid/gid logger: every header whose base name does not start with .wh.
        if WH_PREFIX not in name or not name.rstrip(b"/").rpartition(b"/")[2].startswith(WH_PREFIX):
            self.uids.add(uid)
            self.gids.add(gid)
        if typeflag == TYPE_GNU_SPARSE:
            raise UnsupportedError(f"sparse file {shown(name)} in a layer tar is not supported")
        data_size = 0 if typeflag in HEADER_ONLY_TYPES else size
        self._flush_segment()
        self._cur_name = name
        self._cur_size = size
        self._crc = 0
        self._fd = -1
        self._entry(e, data_size)
        if data_size:
            self._file_left = data_size
            self._pad = -data_size % BLOCK
        else:
            self._end_content()
            self._ts.add_file(name, size, self._crc if size else None)

    _global_block: bytes

    _special_pad = 0

    def _end_special(self) -> None:
        data = bytes(self._special or b"")
        self._special = None
        t = self._special_type
        if t == TYPE_XHEADER:
            self._pax = parse_pax(data)
        elif t == TYPE_XGLOBAL:
            # Go returns a global header as an entry of its own (name from the header or its path record,
            # ids 0), before its padding is read: tar-split records a file entry right after the header and
            # its data, the uid/gid logger logs 0:0, the applier ignores it (pkg/archive).
            recs = parse_pax(data)
            self._pax = None
            gname = recs.get(b"path") or cstr(self._global_block[:100])
            if not gname.rstrip(b"/").rpartition(b"/")[2].startswith(WH_PREFIX):
                self.uids.add(0)
                self.gids.add(0)
            self._flush_segment()
            self._ts.add_file(gname, 0, None)
        elif t == TYPE_GNU_LONGNAME:
            self._gnu_name = cstr(data)
        else:
            self._gnu_link = cstr(data)
        self._pad = self._special_pad

    # ---------------------------------------------------------------- content
