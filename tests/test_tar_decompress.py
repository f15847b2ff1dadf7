"""tether.store.tar.decompress: compression detected by magic bytes, multi-member gzip, multi-frame zstd, bounded
output, truncation and trailing-garbage refusal."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import subprocess

import pytest
import zstandard

from tether.store.tar.decompress import (
    COMPRESSION_CODES,
    OUTPUT_PIECE,
    CorruptCompressedStreamError,
    Decompressor,
    detect_compression,
)

PAYLOAD = os.urandom(50_000) + b"compressible " * 100_000


def run(blob: bytes, chunk: int = 4096) -> tuple[bytes, str | None, list[int]]:
    pieces: list[bytes] = []
    d = Decompressor(pieces.append)
    for i in range(0, len(blob), chunk):
        d.feed(blob[i : i + chunk])
    d.finish()
    return b"".join(pieces), d.compression, [len(p) for p in pieces]


@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_gzip_multi_member(chunk: int) -> None:
    blob = gzip.compress(PAYLOAD[:1000]) + gzip.compress(PAYLOAD[1000:]) + gzip.compress(b"")
    out, name, _ = run(blob, chunk if chunk > 1 else 1)
    assert out == PAYLOAD and name == "gzip"


def test_gzip_from_gnu_gzip_and_pigz_style_streams() -> None:
    gz = subprocess.run(["gzip", "-c", "-9"], input=PAYLOAD, capture_output=True, check=True).stdout
    assert run(gz)[0] == PAYLOAD


def test_zstd_multiple_frames_and_skippable_frames() -> None:
    c = zstandard.ZstdCompressor(level=3, write_checksum=True)
    skippable = (0x184D2A5E).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"skip!"
    blob = c.compress(PAYLOAD[:70_000]) + skippable + c.compress(PAYLOAD[70_000:])
    for chunk in (3, 4096, 1 << 20):
        out, name, _ = run(blob, chunk)
        assert out == PAYLOAD and name == "zstd"


def test_zstd_streamed_frame_without_content_size() -> None:
    c = zstandard.ZstdCompressor(level=1)
    obj = c.compressobj()
    blob = obj.compress(PAYLOAD) + obj.flush()
    assert run(blob)[0] == PAYLOAD


def test_uncompressed_passthrough_and_tiny_inputs() -> None:
    assert run(b"ustar-ish bytes")[0:2] == (b"ustar-ish bytes", "none")
    assert run(b"ab")[0:2] == (b"ab", "none")
    assert run(b"")[0:2] == (b"", "none")


def test_bzip2_and_xz_as_containers_storage_detects_them() -> None:
    assert run(bz2.compress(PAYLOAD) + bz2.compress(b"more"))[0:2] == (PAYLOAD + b"more", "bzip2")
    assert run(lzma.compress(PAYLOAD))[0:2] == (PAYLOAD, "xz")
    assert COMPRESSION_CODES == {"none": 0, "bzip2": 1, "gzip": 2, "xz": 3, "zstd": 4}


def test_detection_ignores_media_types_and_uses_magic() -> None:
    assert detect_compression(b"\x1f\x8b\x08\x00") == "gzip"
    assert detect_compression(b"\x28\xb5\x2f\xfd") == "zstd"
    assert detect_compression(b"\x1f\x8b\x07") == "none"  # gzip magic needs deflate (8), as DetectCompression
    assert detect_compression(b"\xfd7zXZ\x00") == "xz"


@pytest.mark.parametrize("kind", ["gzip", "zstd", "bzip2", "xz"])
def test_truncated_streams_are_refused(kind: str) -> None:
    compressors = {"gzip": gzip.compress, "zstd": zstandard.ZstdCompressor().compress,
                   "bzip2": bz2.compress, "xz": lzma.compress}
    blob = compressors[kind](PAYLOAD)
    for cut in (len(blob) // 2, len(blob) - 1):
        with pytest.raises(CorruptCompressedStreamError):
            run(blob[:cut])


def test_garbage_after_gzip_member_is_refused_like_gos_multistream_reader() -> None:
    with pytest.raises(CorruptCompressedStreamError):
        run(gzip.compress(b"data") + b"\0" * 16)
    with pytest.raises(CorruptCompressedStreamError):
        run(gzip.compress(b"data") + b"\x1f")  # a partial second header


def test_corrupt_data_is_refused() -> None:
    blob = bytearray(gzip.compress(PAYLOAD))
    blob[len(blob) // 2] ^= 0xFF
    with pytest.raises(CorruptCompressedStreamError):
        run(bytes(blob))
    with pytest.raises(CorruptCompressedStreamError):
        run(b"\x28\xb5\x2f\xfd" + b"\xff" * 64)


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_output_pieces_are_bounded_whatever_the_ratio(kind: str) -> None:
    zeros = bytes(32 * 1024 * 1024)
    blob = gzip.compress(zeros, 9) if kind == "gzip" else zstandard.ZstdCompressor(level=19).compress(zeros)
    assert len(blob) < 64 * 1024
    total = 0
    biggest = 0

    def sink(piece: bytes) -> None:
        nonlocal total, biggest
        total += len(piece)
        biggest = max(biggest, len(piece))

    d = Decompressor(sink)
    d.feed(blob)  # one feed of the whole bomb
    d.finish()
    assert total == len(zeros)
    assert biggest <= OUTPUT_PIECE
