"""LayerExtractor's threaded mode (used in the extraction child): the applier in its own thread behind a
bounded queue must give exactly the in-line results, errors in stream order, and no thread left behind."""

from __future__ import annotations

import gzip
import hashlib
import os
import threading
from pathlib import Path

import pytest

from tests.harness import images
from tests.harness.trees import diff_snapshots, snapshot
from tests.test_tar_apply import compress, extract, layer
from tether.store.errors import HostileArchiveError
from tether.store.tar.apply import LayerExtractor
from tether.store.tar.decompress import CorruptCompressedStreamError
from tether.store.tar.tarsplit import assemble_tar

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="layer application needs root (chown, mknod)")


def _tar() -> bytes:
    big = hashlib.sha512(b"x").digest() * (3 * 1024 * 1024 // 64 + 7)  # > one 1 MiB queue piece
    return layer([*images.many_small_files("d", 300), images.file("big", big, uid=7),
                  images.symlink("l", "big"), images.hardlink("h", "big")])


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_threaded_matches_inline(tmp_path: Path, compression: str) -> None:
    tar = _tar()
    blob = compress(tar, compression)
    before = threading.active_count()
    a = extract(blob, tmp_path / "a", threaded=False)
    b = extract(blob, tmp_path / "b", threaded=True, chunk=5 << 20)  # uncompressed: one chunk split into pieces
    assert a == b and a.diff_digest == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert diff_snapshots(snapshot(tmp_path / "a"), snapshot(tmp_path / "b")) == []
    assert b"".join(assemble_tar(tmp_path / "b.tar-split.gz", tmp_path / "b")) == tar
    assert threading.active_count() == before


def test_threaded_reports_errors_in_stream_order(tmp_path: Path) -> None:
    before = threading.active_count()
    # A refused entry early in the stream, then compressed garbage: the refusal is what the layer reports.
    big = os.urandom(3 * 1024 * 1024)  # the decompressor runs pieces ahead of the applier
    dup = layer([images.file("a", b"1"), images.file("a", b"2"), images.file("big", big)])
    blob = gzip.compress(dup, compresslevel=1)
    cut = 3 * 1024 * 1024 // 2  # inside the second MiB of output: fails before a second piece is queued
    blob = blob[:cut] + bytes(4096) + blob[cut:]
    for threaded in (False, True):
        with pytest.raises(HostileArchiveError, match="duplicate"):
            extract(blob, tmp_path / f"dup{threaded}", threaded=threaded, chunk=4 << 20)
        assert not (tmp_path / f"dup{threaded}.tar-split.gz").exists()
    with pytest.raises(CorruptCompressedStreamError, match="truncated"):
        extract(gzip.compress(_tar())[:-20], tmp_path / "trunc", threaded=True)
    assert not (tmp_path / "trunc.tar-split.gz").exists()
    assert threading.active_count() == before


def test_threaded_abort_mid_stream_stops_the_thread(tmp_path: Path) -> None:
    before = threading.active_count()
    target = tmp_path / "ab"
    target.mkdir()
    x = LayerExtractor(target, mode="overlay", tar_split_path=tmp_path / "ab.tar-split.gz", threaded=True)
    x.feed(gzip.compress(_tar())[: 300_000])
    x.abort()
    x.abort()
    assert not (tmp_path / "ab.tar-split.gz").exists()
    assert threading.active_count() == before
