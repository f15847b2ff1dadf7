"""store/ pieces that need no podman: ids, names, Go JSON/time text, the lock protocol, recovery."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from tether.store.containers_storage import Store, lookup_image
from tether.store.containers_storage.gojson import format_go_time, go_json_dumps, go_json_string, normalize_go_time
from tether.store.containers_storage.lockfile import LAST_WRITER_SIZE, get_lockfile, new_last_writer_token
from tether.store.containers_storage.records import add_image_names, big_data_file_name, chain_id, image_from_raw
from tether.store.containers_storage.staging import StagingDir
from tether.store.errors import ImageUnknownError, LockError
from tether.store.storage_conf import load_storage_conf

# Seen in a store podman 4.3 pulled: base layer id == diff id hex; the next is sha256(parent + "+" + diff hex).
BASE_DIFF = "sha256:1598d4e0353eb91367ac61882ad30b762fc8a78485c7f231c7fe6158e76a869b"
SECOND_DIFF = "sha256:32fdd8c9891f0ff67cdb26aebfff6263d90542b8e315f6da16edf80dd14e2813"
SECOND_ID = "d3161a9de555b30682a066c0bef942986041b8e403116b87193a7ccb40ca4a00"


def test_chain_id_matches_podman() -> None:
    base = chain_id(None, BASE_DIFF)
    assert base == BASE_DIFF[7:]
    assert chain_id(base, SECOND_DIFF) == SECOND_ID


def test_big_data_file_names_match_podman() -> None:
    assert big_data_file_name("manifest") == "manifest"
    assert big_data_file_name("sha256:51df44b5b73cf8273db0d0a80bcd8dd06497fd83c5786986c23026be4ead42df") == (
        "=c2hhMjU2OjUxZGY0NGI1YjczY2Y4MjczZGIwZDBhODBiY2Q4ZGQwNjQ5N2ZkODNjNTc4Njk4NmMyMzAyNmJlNGVhZDQyZGY=")
    assert big_data_file_name("signature-5f9161e27f47059fc62a52b10fb6c0ad531a823d268ba121b583cde75e7aa077") == (
        "=c2lnbmF0dXJlLTVmOTE2MWUyN2Y0NzA1OWZjNjJhNTJiMTBmYjZjMGFkNTMxYTgyM2QyNjhiYTEyMWI1ODNjZGU3NWU3YWEwNzc=")
    assert big_data_file_name("Manifest") == "=TWFuaWZlc3Q="


@pytest.mark.parametrize(("text", "expected"), [
    ("2023-11-14T22:13:20Z", "2023-11-14T22:13:20Z"),
    ("2023-11-14T22:13:20.000000000Z", "2023-11-14T22:13:20Z"),
    ("2023-11-14T22:13:20.123456789Z", "2023-11-14T22:13:20.123456789Z"),
    ("2023-11-14T22:13:20.1200Z", "2023-11-14T22:13:20.12Z"),
    ("2023-11-14T22:13:20+00:00", "2023-11-14T22:13:20Z"),
    ("2023-11-14T22:13:20.5-05:30", "2023-11-14T22:13:20.5-05:30"),
])
def test_go_time_text(text: str, expected: str) -> None:
    assert normalize_go_time(text) == expected


def test_format_go_time() -> None:
    when = datetime(2026, 11, 30, 1, 30, 14, 253211, tzinfo=UTC)
    assert format_go_time(when, 253211461) == "2026-11-30T01:30:14.253211461Z"
    assert format_go_time(when.replace(microsecond=0)) == "2026-11-30T01:30:14Z"
    east = when.astimezone(timezone(timedelta(hours=2)))
    assert format_go_time(east) == "2026-11-30T03:30:14.253211+02:00"


def test_go_json() -> None:
    records = [{"id": "a", "names": ["x<y>&z"], "big-data-sizes": {"b": 1, "a": 2}, "created": "t"}]
    text = go_json_dumps(records)
    assert text == b'[{"id":"a","names":["x\\u003cy\\u003e\\u0026z"],"big-data-sizes":{"a":2,"b":1},"created":"t"}]'
    assert go_json_string({"signatures-sizes": {"sha256:ab": []}}) == '{"signatures-sizes":{"sha256:ab":[]}}'


def test_add_names_moves_and_records_history() -> None:
    # images.go updateNames(addNames): new names first, then the old ones; history gets each in turn at the front.
    a: dict[str, Any] = {"id": "a", "names": ["r/x:1"], "names-history": ["r/x:1"]}
    b: dict[str, Any] = {"id": "b", "names": ["r/y:1", "r/x:2"], "names-history": ["r/y:1"]}
    images = [a, b]
    add_image_names(images, a, ["r/x:2"])
    assert a["names"] == ["r/x:2", "r/x:1"]
    assert a["names-history"] == ["r/x:1", "r/x:2"]
    assert b["names"] == ["r/y:1"]


def test_lookup_image() -> None:
    raws: list[dict[str, Any]] = [
        {"id": "a" * 64, "names": ["quay.io/org/app:1.0"], "digest": "sha256:" + "d" * 64,
         "big-data-digests": {"manifest-sha256:" + "e" * 64: "sha256:" + "e" * 64, "sha256:" + "a" * 64: "x"}},
        {"id": "ab" + "c" * 62, "names": ["localhost/other:latest"]},
    ]
    images = [image_from_raw(r) for r in raws]
    assert images[0].digests == ("sha256:" + "d" * 64, "sha256:" + "e" * 64)
    first, second = images
    assert lookup_image(images, "a" * 64) == first
    assert lookup_image(images, "sha256:" + "a" * 64) == first
    assert lookup_image(images, "quay.io/org/app:1.0") == first
    assert lookup_image(images, "localhost/other") == second
    assert lookup_image(images, "abc") == second
    assert lookup_image(images, "a") is None  # ambiguous prefix
    assert lookup_image(images, "sha256:" + "e" * 64) == first
    assert lookup_image(images, "quay.io/org/app@sha256:" + "d" * 64) == first
    assert lookup_image(images, "nothing") is None


def test_last_writer_token_layout() -> None:
    token = new_last_writer_token()
    assert len(token) == LAST_WRITER_SIZE
    _, counter, pid = struct.unpack("<QQI", token[:20])
    assert pid == os.getpid() and counter > 0
    assert new_last_writer_token()[8:16] != token[8:16]


LOCK_PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
kind = fcntl.LOCK_EX if sys.argv[2] == "ex" else fcntl.LOCK_SH
try:
    fcntl.lockf(fd, kind | fcntl.LOCK_NB)
    print("got")
except OSError:
    print("blocked")
"""


def probe(path: Path, kind: str) -> str:
    return subprocess.run([sys.executable, "-c", LOCK_PROBE, str(path), kind], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_posix_locks_exclude_other_processes(tmp_path: Path) -> None:
    path = tmp_path / "layers.lock"
    lock = get_lockfile(path)
    with lock.exclusive():
        assert probe(path, "sh") == "blocked"
        lock.touch()
        first = path.read_bytes()
        assert len(first) == 64
    with lock.shared():
        assert probe(path, "sh") == "got"
        assert probe(path, "ex") == "blocked"
        assert not lock.modified()  # we wrote the token we see
    assert probe(path, "ex") == "got"
    os.pwrite(os.open(path, os.O_RDWR), new_last_writer_token(), 0)  # another writer
    with lock.shared():
        assert lock.modified()
        assert not lock.modified()
        with pytest.raises(LockError):
            lock.touch()
    with lock.exclusive():
        lock.touch()
    assert path.read_bytes() != first
    assert get_lockfile(tmp_path / "layers.lock") is lock


def test_recovery_and_volatile_layers(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = Store.open(root)
    assert store.driver == "overlay"
    for name in ("storage.lock", "userns.lock", "overlay/l", "overlay-layers/layers.lock",
                 "overlay-images/images.lock"):
        assert (root / name).exists(), name
    # a live staging (held by another Store object of this process) survives an open; a dead one does not
    other = Store(root, driver="overlay")
    held = StagingDir(other.staging_base)
    dead = other.staging_base / "deadbeef"
    dead.mkdir()
    (other.staging_base / "deadbeef.lock").write_text("")
    no_lock = other.staging_base / "cafe"
    no_lock.mkdir()
    (other.staging_base / ".tmp-feed.lock").write_text("")
    orphan = root / "overlay" / ("f" * 64)
    (orphan / "diff").mkdir(parents=True)
    (orphan / "link").write_text("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    os.symlink(f"../{'f' * 64}/diff", root / "overlay" / "l" / "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    (root / "overlay-layers" / ".tmp-layers.json123").write_text("[")
    (root / "overlay-images" / ("e" * 64)).mkdir()
    incomplete = {"id": "c" * 64, "created": "2026-01-01T00:00:00Z", "diff-digest": "sha256:" + "c" * 64,
                  "flags": {"incomplete": True}}
    (root / "overlay" / ("c" * 64) / "diff").mkdir(parents=True)
    (root / "overlay-layers" / "layers.json").write_text(json.dumps([incomplete]))
    volatile = {"id": "b" * 64, "created": "2026-01-01T00:00:00Z"}
    (root / "overlay-layers" / "volatile-layers.json").write_text(json.dumps([volatile]))
    (root / "overlay" / ("b" * 64) / "diff").mkdir(parents=True)
    store = Store.open(root)
    assert held.path.exists() and held.lock_path.exists() and not dead.exists() and not no_lock.exists()
    assert sorted(p.name for p in other.staging_base.iterdir()) == sorted([held.path.name, held.lock_path.name])
    assert not orphan.exists() and not (root / "overlay" / "l" / "ABCDEFGHIJKLMNOPQRSTUVWXYZ").is_symlink()
    assert not (root / "overlay-layers" / ".tmp-layers.json123").exists()
    assert not (root / "overlay-images" / ("e" * 64)).exists()
    assert not (root / "overlay" / ("c" * 64)).exists()
    assert json.loads((root / "overlay-layers" / "layers.json").read_text()) == []
    assert [(layer.id, layer.volatile) for layer in store.list_layers()] == [("b" * 64, True)]
    assert (root / "overlay" / ("b" * 64)).exists()
    held.remove()
    with pytest.raises(ImageUnknownError):
        store.find_image("nothing")


def test_storage_conf(tmp_path: Path) -> None:
    conf = tmp_path / "storage.conf"
    conf.write_text('[storage]\ndriver = "vfs"\ngraphroot = "/g"\nrunroot = "/r"\n'
                    '[storage.options]\nadditionalimagestores = ["/usr/lib/bootc/storage", "/ro"]\n')
    parsed = load_storage_conf(environ={"CONTAINERS_STORAGE_CONF": str(conf)})
    assert parsed.driver == "vfs" and parsed.graphroot == Path("/g") and parsed.runroot == Path("/r")
    assert parsed.additional_image_stores == (Path("/usr/lib/bootc/storage"), Path("/ro"))
    assert load_storage_conf(tmp_path / "missing.conf").driver is None


def test_open_read_only_filesystem(tmp_path: Path) -> None:
    root = tmp_path / "root"
    Store.open(root, driver="vfs")
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "--bind", str(root), str(ro)], capture_output=True).returncode != 0:
        pytest.skip("bind mounts are not permitted here")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(ro)], capture_output=True).returncode != 0:
            pytest.skip("read-only remounts are not permitted here")
        store = Store.open(ro)
        assert store.read_only and store.driver == "vfs"
        assert store.list_images() == [] and store.list_layers() == []
        with pytest.raises(LockError):
            store.delete_image("x")
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


def test_unknown_fields_survive_rewrites(tmp_path: Path) -> None:
    """Records written by a newer podman keep the fields tether does not know when tether rewrites the file."""
    import gzip
    import hashlib
    import io
    import tarfile

    root = tmp_path / "root"
    Store.open(root)
    future = {"id": "d" * 64, "created": "2026-01-01T00:00:00.5Z", "diff-digest": "sha256:" + "d" * 64,
              "diff-size": 1024, "uidset": [0], "future-field": {"x": [1, 2]}}
    (root / "overlay" / ("d" * 64) / "diff").mkdir(parents=True)
    (root / "overlay-layers" / "layers.json").write_text(json.dumps([future]))
    store = Store.open(root)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("hello")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    data = buf.getvalue()
    diff_id = "sha256:" + hashlib.sha256(data).hexdigest()
    blob = gzip.compress(data)
    with store.stage_layer(layer_id=chain_id(None, diff_id), parent=None) as writer:
        writer.write(blob)
        staged = writer.finish()
    record = store.publish_layer(staged, expected_diff_digest=diff_id,
                                 compressed_digest="sha256:" + hashlib.sha256(blob).hexdigest(), compressed_size=None)
    assert record.compressed_size == len(blob) and record.compression == 2 and record.diff_size == len(data)
    written = json.loads((root / "overlay-layers" / "layers.json").read_text())
    assert written[0] == future
    assert list(written[1]) == ["id", "created", "compressed-diff-digest", "compressed-size", "diff-digest",
                                "diff-size", "compression", "uidset", "gidset"]
