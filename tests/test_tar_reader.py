"""tether.store.tar.reader without any file: the headers it reports, the tar-split it records (segments + file
entries give back the exact stream), chunk boundaries, and the archives it refuses."""

from __future__ import annotations

import io
import tarfile

import pytest

from tests.harness import images
from tether.store.errors import HostileArchiveError, UnsupportedError
from tether.store.tar.reader import BLOCK, Entry, TarReader, parse_numeric, parse_pax, parse_pax_time
from tether.store.tar.tarsplit import crc64_iso


class Recorder:
    """A tar-split sink that keeps what it is given."""

    def __init__(self) -> None:
        self.items: list[tuple[str, bytes, int, int | None]] = []

    def add_segment(self, raw: bytes) -> None:
        self.items.append(("segment", raw, 0, None))

    def add_file(self, name: bytes, size: int, crc: int | None) -> None:
        self.items.append(("file", name, size, crc))


class Entries(TarReader):
    """The headers, in stream order, as the applier's hook would see them."""

    def __init__(self, sink: Recorder) -> None:
        super().__init__(sink)
        self.seen: list[Entry] = []
        self.ends = 0

    def _entry(self, e: Entry, data_size: int) -> None:
        self.seen.append(e)

    def _end_content(self) -> None:
        self.ends += 1


def read(tar: bytes, chunk: int = 65536) -> tuple[Entries, Recorder]:
    sink = Recorder()
    reader = Entries(sink)
    for i in range(0, len(tar), chunk):
        reader.consume(tar[i : i + chunk])
    reader.end()
    return reader, sink


def rebuild(sink: Recorder, contents: dict[bytes, bytes]) -> bytes:
    """What tar-split's assembler does: segments verbatim, each file's content in its place."""
    out = []
    for kind, raw, size, crc in sink.items:
        if kind == "segment":
            out.append(raw)
        elif size:
            data = contents[raw]
            assert crc == crc64_iso(data)
            out.append(data)
    return b"".join(out)


ENTRIES = [
    images.directory("etc", uid=1, gid=2),
    images.file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", mode=0o600, uid=10, gid=20),
    images.file("empty", b""),
    images.symlink("link", "etc/passwd"),
    images.hardlink("hard", "etc/passwd"),
    images.fifo("pipe"),
    images.char_device("null", 1, 3),
    images.file("d/" + "long-name-" * 20, b"x" * 1000),
    images.whiteout("gone"),
]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
@pytest.mark.parametrize("chunk", [1, 511, 513, 65536])
def test_headers_and_tar_split_match_pythons_tarfile(fmt: int, chunk: int) -> None:
    entries = ENTRIES if fmt != tarfile.USTAR_FORMAT else ENTRIES[:-2] + ENTRIES[-1:]  # no 200-char names
    tar = images.build_tar(entries, format=fmt)
    reader, sink = read(tar, chunk)
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        members = archive.getmembers()
        contents = {m.name.encode(): archive.extractfile(m).read()  # type: ignore[union-attr]
                    for m in members if m.isreg()}
    names = [m.name.encode() for m in members]  # Python's tarfile drops a directory's trailing slash; Go keeps it
    assert [e.name.rstrip(b"/") for e in reader.seen] == names
    assert [(e.mode & 0o7777, e.uid, e.gid, e.mtime_ns) for e in reader.seen] == \
        [(m.mode, m.uid, m.gid, int(m.mtime) * 1_000_000_000) for m in members]
    assert [e.linkname for e in reader.seen] == [m.linkname.encode() for m in members]
    assert reader.ends == len(members)
    assert [raw.rstrip(b"/") for kind, raw, _, _ in sink.items if kind == "file"] == names
    assert rebuild(sink, contents) == tar
    assert reader.uids == {0, 1, 10} and reader.gids == {0, 2, 20}  # .wh.gone's ids are not logged


def test_pax_records_override_the_header() -> None:
    info = tarfile.TarInfo("short")
    info.size = 3
    info.pax_headers = {"path": "a/" + "p" * 150, "mtime": "1700000000.123456789", "uid": "70000",
                        "SCHILY.xattr.user.k": "v"}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(info, io.BytesIO(b"abc"))
    reader, sink = read(out.getvalue())
    (e,) = reader.seen
    assert e.name == b"a/" + b"p" * 150 and e.uid == 70000
    assert e.mtime_ns == 1_700_000_000_123_456_789
    assert e.xattrs == {b"user.k": b"v"}
    assert ("file", e.name, 3, crc64_iso(b"abc")) in sink.items


def test_refused_archives() -> None:
    good = images.build_tar([images.file("f", b"data")])
    corrupt = bytearray(good)
    corrupt[0] ^= 1
    with pytest.raises(HostileArchiveError, match="checksum"):
        read(bytes(corrupt))
    with pytest.raises(HostileArchiveError, match="truncated"):
        read(good[: BLOCK + 2])
    with pytest.raises(HostileArchiveError, match="zero block followed"):
        read(bytes(BLOCK) + good)
    sparse = tarfile.TarInfo("s")
    sparse.pax_headers = {"GNU.sparse.major": "1"}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(sparse, io.BytesIO(b""))
    with pytest.raises(UnsupportedError):
        read(out.getvalue())


def test_field_parsers() -> None:
    assert parse_numeric(b"0000644\0", "mode") == 0o644
    assert parse_numeric(b"\x80\0\0\0\0\0\0\0\0\0\x01\0", "size") == 256  # base-256
    assert parse_numeric(b"\xff" * 8, "uid") == -1
    with pytest.raises(HostileArchiveError, match="invalid mode"):
        parse_numeric(b"12x4567\0", "mode")
    assert parse_pax(b"11 path=ab\n16 linkpath=xyz\n") == {b"path": b"ab", b"linkpath": b"xyz"}
    with pytest.raises(HostileArchiveError):
        parse_pax(b"99 path=ab\n")
    assert parse_pax_time(b"-1.5") == -1_500_000_000
    assert parse_pax_time(b"12") == 12_000_000_000
