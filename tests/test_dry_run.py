"""``--dry-run`` and the disk checks of a pull's downloads, against docker-registry, a small tmpfs and podman.

A dry run reports, per image, what the store has and what would be fetched, to the byte (what the download
cache already holds subtracted), and an estimate of the disk, and changes no file of the store (not even a lock
file; a store that does not exist is not created). A real pull refuses up front an image whose downloads the
filesystem cannot hold above the disk reserve, and a download that the filesystem runs out under (another
writer filling it) stops before the reserve, removing what it had kept."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import images as factory
from tests.harness.cli import StoreArgs, popen_tether, tether
from tests.harness.registry import RunningRegistry
from tether.engine.copy.preview import EXPANSION
from tether.store.containers_storage import Store
from tether.store.diskspace import MIB, free_bytes

TMPFS_SIZE = 64 * MIB


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file and directory under ``root``: (mode, size, sha256 of its bytes), and mtimes of files."""
    out: dict[str, tuple[int, int, str]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        digest = ""
        if path.is_file() and not path.is_symlink():
            digest = hashlib.sha256(path.read_bytes()).hexdigest() + f"@{st.st_mtime_ns}"
        out[str(path.relative_to(root))] = (st.st_mode, st.st_size if not path.is_dir() else 0, digest)
    return out


def layer(seed: int, size: int = 256 * 1024) -> factory.BuiltLayer:
    return factory.build_layer([factory.file(f"data/{seed}", random.Random(seed).randbytes(size))])


def test_dry_run_reports_exact_bytes_and_writes_nothing(tmp_path: Path, registry: RunningRegistry) -> None:
    base0, base1, new2, new3 = layer(1660), layer(1661), layer(1662), layer(1663)
    base = factory.build_image([base0, base1])
    app = factory.build_image([base0, base1, new2, new3])
    sibling = factory.build_image([base0, base1, new2, layer(1664)])
    # the same tar as base1 under another compression: the store can copy it from base1's layer, no download
    recompressed = factory.build_layer(base1.tar, "zstd")
    copied = factory.build_image([recompressed])
    for repo, image in (("base", base), ("app", app), ("sibling", sibling), ("copied", copied)):
        factory.push_image(registry.host, f"dry/{repo}:1", image)
    args = StoreArgs.make(tmp_path, registry.host)
    names = {repo: f"{registry.host}/dry/{repo}:1" for repo in ("base", "app", "sibling", "copied")}
    assert tether("pull", *args.pull, "--progress", "none", names["base"]).returncode == 0
    # an interrupted run kept the first 1000 bytes of new3
    blobs = args.root / "tether" / "cache" / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    (blobs / new3.digest.replace(":", "-")).write_bytes(new3.blob[:1000])
    before = snapshot(args.root)
    log_before = len(registry.access_log())

    proc = tether("pull", *args.pull, "--dry-run", "--format", "json", names["base"], names["app"],
                  names["sibling"], names["copied"])
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    images = {item["name"]: item for item in doc["images"]}
    assert images[names["base"]]["present"] is True and images[names["base"]]["layers"] == []
    got = images[names["app"]]
    assert [(lay["digest"], lay["action"], lay["download"]) for lay in got["layers"]] == [
        (base0.digest, "present", 0), (base1.digest, "present", 0), (new2.digest, "fetch", new2.size),
        (new3.digest, "fetch", new3.size - 1000)]
    assert got["layers"][3]["downloaded"] == 1000
    assert got["download"] == new2.size + new3.size - 1000
    assert got["diskEstimate"] == int(EXPANSION * (new2.size + new3.size) + new2.size + new3.size - 1000)
    # the sibling's new2 comes with app's: counted once
    shared = images[names["sibling"]]["layers"][2]
    assert (shared["action"], shared["download"]) == ("shared", 0)
    assert images[names["sibling"]]["download"] == sibling.layers[3].size
    copy = images[names["copied"]]["layers"][0]
    assert copy["action"] == "copy" and copy["download"] == 0 and copy["unpacked"] == len(base1.tar)
    assert doc["download"] == new2.size + new3.size - 1000 + sibling.layers[3].size
    assert doc["fits"] is True and doc["filesystem"]["path"] == str(args.root)

    assert snapshot(args.root) == before  # not a byte, not a file, not a lock file
    # manifests and configs only: not one layer blob was asked for
    assert not any(lay.digest in line for line in registry.access_log()[log_before:]
                   for lay in (new2, new3, sibling.layers[3], recompressed))

    table = tether("pull", *args.pull, "--dry-run", names["app"])
    assert table.returncode == 0, table.stderr
    assert f"{names['app']}: 2 layer(s) to fetch" in table.stdout and "1000 B already downloaded" in table.stdout
    assert snapshot(args.root) == before

    missing = tmp_path / "no-store"
    none = tether("pull", "--root", str(missing), *args.pull[2:], "--dry-run", names["app"])
    assert none.returncode == 0, none.stderr
    assert not missing.exists()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-R", "-l", str(mnt)], capture_output=True)


def test_a_download_the_disk_cannot_hold_is_refused_before_any_byte(
        tmp_path: Path, tmpfs: Path, registry: RunningRegistry) -> None:
    big = layer(1665, 60 * MIB)
    small = factory.build_image([layer(1666)])
    factory.push_image(registry.host, "dry/huge:1", factory.build_image([big]))
    factory.push_image(registry.host, "dry/small:1", small)
    args = StoreArgs.make(tmp_path, registry.host)
    root = tmpfs / "store"
    store_args = ["--root", str(root), *args.pull[2:], "--disk-reserve", "16M", "--progress", "none"]
    huge, fine = f"{registry.host}/dry/huge:1", f"{registry.host}/dry/small:1"

    preview = tether("pull", *store_args, "--dry-run", "--format", "json", huge)
    assert preview.returncode == 1
    doc = json.loads(preview.stdout)
    assert doc["fits"] is False and doc["download"] == big.size and doc["filesystem"]["reserve"] == 16 * MIB
    assert "does not fit" in preview.stderr

    log_before = len(registry.access_log())
    proc = tether("pull", *store_args, "--format", "json", huge, fine)
    assert proc.returncode == 1
    results = {r["name"]: r["error"] for r in json.loads(proc.stdout)}
    error = results[huge] or ""
    assert "its layers cannot be downloaded" in error, error
    # its own 60 MiB, plus the small image's layer when that one's preflight came first (the images resolve at
    # once; a preflight counts what earlier images have still to download)
    to_write = re.search(r"([0-9.]+) MiB to write", error)
    assert to_write is not None, error
    assert big.size / MIB - 0.05 <= float(to_write.group(1)) <= (big.size + small.layers[0].size) / MIB + 0.05, error
    assert "disk reserve of 16.0 MiB" in error and str(root) in error
    assert results[fine] is None  # the other image is pulled
    assert not any(big.digest in line for line in registry.access_log()[log_before:])
    store = Store.open(root)
    assert {i.id for i in store.list_images()} == {small.image_id} and store.check() == []


def test_a_download_stops_before_the_reserve_when_the_disk_fills_under_it(
        tmp_path: Path, tmpfs: Path, registry: RunningRegistry) -> None:
    blob = layer(1667, 24 * MIB)
    factory.push_image(registry.host, "dry/fills:1", factory.build_image([blob]))
    args = StoreArgs.make(tmp_path, registry.host)
    root = tmpfs / "store"
    cached = root / "tether" / "cache" / "blobs" / blob.digest.replace(":", "-")
    proc = popen_tether("pull", "--root", str(root), *args.pull[2:], "--disk-reserve", "16M", "--progress", "none",
                        "--download-only", "--limit-rate", "4M", f"{registry.host}/dry/fills:1")
    lowest = [free_bytes(tmpfs)]
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.001):
            lowest[0] = min(lowest[0], free_bytes(tmpfs))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        deadline = time.monotonic() + 60
        while not (cached.exists() and cached.stat().st_size > 2 * MIB):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        # another writer takes the room the download was counted on
        (tmpfs / "filler").write_bytes(bytes(free_bytes(tmpfs) - 24 * MIB))
        out, err = proc.communicate(timeout=120)
    finally:
        stop.set()
        watcher.join()
    assert proc.returncode == 1, out + err
    assert "disk reserve of 16.0 MiB" in err and blob.digest in err, err
    assert lowest[0] >= 16 * MIB, f"the filesystem went down to {lowest[0]} bytes free"
    assert not cached.exists()  # what the failed download kept is removed: the room is given back


def test_a_shared_layer_is_reported_by_the_first_image_asking_for_it() -> None:
    """Images plan as their registries answer; the report attributes a shared layer in request order."""
    from tether.engine.copy.preview import ImagePreview, LayerPreview, in_request_order

    fetched = LayerPreview("sha256:aa", 100, "fetch", held=10, key="L1", disk=390)
    copied = LayerPreview("sha256:bb", 50, "copy", unpacked=70, key="L2", disk=70)
    # the second request planned first: it owns both layers
    first = ImagePreview(layers=(LayerPreview("sha256:aa", 100, "shared", key="L1"),), disk_estimate=0)
    second = ImagePreview(layers=(fetched, copied), disk_estimate=460)
    third = ImagePreview(layers=(LayerPreview("sha256:bb", 50, "shared", key="L2"),
                                 LayerPreview("sha256:cc", 9, "present", key="L3")), disk_estimate=0)
    a, none, b, c = in_request_order([first, None, second, third])
    assert none is None
    assert a is not None and a.layers == (fetched,) and a.download == 90 and a.disk_estimate == 390
    assert b is not None and [lay.action for lay in b.layers] == ["shared", "copy"] and b.disk_estimate == 70
    assert b.download == 0
    assert c is not None and [lay.action for lay in c.layers] == ["shared", "present"] and c.disk_estimate == 0
