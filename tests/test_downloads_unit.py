"""The parts of issue 16 that need no registry: the rate schedule, the blob cache's files and locks, the download
records and their cleaning, the lock file's format, the disk estimate."""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

import pytest

from tether.engine.bound.lockfile import LockEntry, LockFile, LockFileError, load_lock, write_lock
from tether.engine.copy.downloads import DownloadRecord, clean_cache, find_download, load_records, record_key
from tether.registry.client import RateLimit, parse_rate
from tether.registry.client._ratelimit import RECEIVE_BOUNDS, TokenBucket
from tether.store.blobcache import BlobCache, CacheError
from tether.store.diskspace import MIB, DiskReserve, free_bytes
from tether.store.errors import DiskReserveError

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


def test_parse_rate_is_curls() -> None:
    # curl's --limit-rate: bytes per second, k/M/G/T/P suffixes 1024-based (docs/cmdline-opts/limit-rate.d)
    assert parse_rate("500000") == 500000
    assert parse_rate("200K") == parse_rate("200k") == 200 * 1024
    assert parse_rate("10M") == 10 * 1024 * 1024
    assert parse_rate("1.5G") == int(1.5 * 1024**3)
    for bad in ("0", "10X", "-1M", "M", "10 MB/s", ""):
        with pytest.raises(ValueError, match="rate"):
            parse_rate(bad)


def test_token_bucket_holds_the_rate_over_many_readers() -> None:
    # 6 streams taking 64 KiB reads as fast as the schedule lets them: over 60 simulated seconds the bytes
    # taken stay within one burst of rate * time, whatever the interleaving.
    rate = 10 * MIB
    bucket = TokenBucket(rate)
    ready = [0.0] * 6
    taken = 0
    now = 0.0
    while now < 60:
        stream = min(range(6), key=lambda i: ready[i])
        now = ready[stream]
        taken += 64 * 1024
        ready[stream] = now + bucket.delay(now, 64 * 1024)
        # a reader takes its bytes before it waits: each stream may be one read ahead of the schedule
        assert taken <= rate * now + bucket.burst + 6 * 64 * 1024 + 1
    assert taken >= rate * 59
    # an idle schedule does not save credit beyond one burst
    assert bucket.delay(1000.0, int(bucket.burst)) == 0.0
    assert bucket.delay(1000.0, 64 * 1024) > 0


def test_receive_buffer_follows_the_rate() -> None:
    low, high = RECEIVE_BOUNDS
    assert RateLimit(1024).receive_buffer == low
    assert RateLimit(10 * MIB).receive_buffer == int(10 * MIB * 0.05)
    assert RateLimit(10**12).receive_buffer == high


def test_blob_cache_keeps_prefixes_and_locks_writers(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache", reserve=DiskReserve.fixed(0))
    assert cache.held(D1) == 0 and cache.blobs() == {}
    assert not (tmp_path / "cache").exists()  # nothing is created by a read
    blob = cache.open_blob(D1, size=10)
    assert blob is not None and blob.held == 0
    blob.append([b"abc", b"de"])
    assert cache.held(D1) == 5
    # one writer per blob: another open (this process or another) gets None and does without
    assert cache.open_blob(D1, size=10) is None
    assert not cache.remove_blob(D1)  # a cleaner never removes a file being written
    with pytest.raises(CacheError, match="would pass"):
        blob.append([b"123456"])
    blob.close()
    again = cache.open_blob(D1, size=10)
    assert again is not None and again.held == 5 and b"".join(again.read()) == b"abcde"
    again.append([b"fghij"])
    assert again.complete
    again.close()
    # a file longer than the blob is not this blob's prefix: truncated when opened
    path = cache.blob_path(D2)
    path.write_bytes(b"x" * 20)
    longer = cache.open_blob(D2, size=10)
    assert longer is not None and longer.held == 0
    longer.close()
    assert cache.remove_blobs_except({D1}) == (D2,)
    assert cache.blobs() == {D1: 10}
    with pytest.raises(CacheError, match="not a blob digest"):
        cache.blob_path("sha256:../../etc")


def test_blob_cache_lock_is_an_flock_other_processes_see(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path, reserve=DiskReserve.fixed(0))
    blob = cache.open_blob(D1, size=4)
    assert blob is not None
    fd = os.open(cache.blob_path(D1), os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        blob.close()
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_appends_stop_before_the_reserve(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path, reserve=DiskReserve.fixed(free_bytes(tmp_path) + 64 * MIB), where=Path("/store"))
    blob = cache.open_blob(D1, size=64 * MIB)
    assert blob is not None
    with pytest.raises(DiskReserveError, match="/store"):
        blob.append([b"\0" * (2 * MIB)])
    assert blob.held == 0
    blob.discard()
    assert not cache.blob_path(D1).exists()


def _record(name: str, *layers: str, complete: bool = False) -> DownloadRecord:
    return DownloadRecord(name=name, platform="linux/amd64", complete=complete, top=D3, top_media_type="x",
                          manifest=D3, manifest_media_type="x", config=D3, config_size=1,
                          layers=tuple((d, 10) for d in layers))


def test_records_round_trip_and_cleaning(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path, reserve=DiskReserve.fixed(0))
    a, b = _record("r/a:1", D1, complete=True), _record("r/b:1", D2)
    for record in (a, b):
        cache.write_record(record.key, record.to_json())
        for digest in record.digests:
            blob = cache.open_blob(digest, size=10)
            assert blob is not None
            if not blob.complete:
                blob.append([b"0123456789"])
            blob.close()
    assert DownloadRecord.from_json(json.loads(json.dumps(a.to_json()))) == a
    assert find_download(cache, ["r/x:1", "r/a:1"], "linux/amd64") == a
    assert find_download(cache, ["r/a:1"], "linux/arm64") is None
    assert find_download(cache, ["r/b:1"], "linux/amd64") is None  # not complete: never applied
    # a pull that committed b: its record goes, and its layer's file; the config/manifest file a still lists stays
    report = clean_cache(cache, done=[b.key])
    assert report.records == (b.key,) and report.blobs == (D2,)
    assert set(cache.blobs()) == {D1, D3}
    # an orphan file (no record lists it) stays for a plain pull until it is old
    orphan = cache.open_blob(D2, size=10)
    assert orphan is not None
    orphan.close()
    assert clean_cache(cache).blobs == ()
    old = time.time() - 8 * 24 * 3600
    os.utime(cache.blob_path(D2), (old, old))
    assert clean_cache(cache).blobs == (D2,)
    # under the exclusive lock: records whose image no deployment binds go, with every file no record lists
    dry = clean_cache(cache, wanted=lambda name: False, dry_run=True)
    assert dry.names == ("r/a:1",) and set(dry.blobs) == {D1, D3} and dry.freed_bytes == 20
    assert load_records(cache)[a.key][0] == a
    assert clean_cache(cache, wanted=lambda name: name == "r/a:1").records == ()
    assert clean_cache(cache, wanted=lambda name: False).records == (a.key,)
    assert cache.blobs() == {} and load_records(cache) == {}


def test_unreadable_records_are_dropped(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path, reserve=DiskReserve.fixed(0))
    key = record_key("r/a:1", "linux/amd64")
    cache.records_dir.mkdir(parents=True)
    (cache.records_dir / f"{key}.json").write_text("{not json")
    assert load_records(cache)[key][0] is None
    assert clean_cache(cache).records == (key,)


def test_lock_file_is_stable_sorted_and_checked(tmp_path: Path) -> None:
    entries = [LockEntry(image="q/b:1", name="quay.io/q/b:1", binding='["b"]', digest=D2, media_type="m"),
               LockEntry(image="q/a:1", name="quay.io/q/a:1", binding='["a"]', digest=D1, media_type="m",
                         manifest=D3, platform="linux/amd64")]
    path = tmp_path / "lock.json"
    lock = write_lock(path, entries)
    text = path.read_text()
    assert text == LockFile(tuple(reversed(entries))).dumps()  # the order given does not matter
    raw = json.loads(text)
    assert [e["image"] for e in raw["images"]] == ["q/a:1", "q/b:1"]
    assert list(raw) == sorted(raw) and all(list(e) == sorted(e) for e in raw["images"])
    assert set(load_lock(path).entries) == set(lock.entries)
    assert load_lock(path).entry_for('["a"]') == entries[1]
    assert entries[1].matches([None, D3, D1]) and not entries[1].matches([D3])
    path.write_text(json.dumps({"version": 1, "images": [entries[0].to_json(), entries[0].to_json()]}))
    with pytest.raises(LockFileError, match="pinned twice"):
        load_lock(path)
    path.write_text('{"version": 2, "images": []}')
    with pytest.raises(LockFileError, match=str(path)):
        load_lock(path)
    with pytest.raises(LockFileError, match="No such file"):
        load_lock(tmp_path / "missing.json")
