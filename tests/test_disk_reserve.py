"""The disk reserve: a decompression bomb pushed to docker-registry and pulled by ``tether pull`` into a store on
a small tmpfs stops before the filesystem falls below the reserve (a watcher samples ``statvfs`` the whole
time), fails its image with one line naming image, layer and reserve, lets the other images complete, and
leaves a store podman loads and ``tether check`` passes.  With the reserve off, the same bomb fills the disk."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import hostile
from tests.harness import images as factory
from tests.harness.cli import tether_argv
from tests.harness.podman import Podman, short_runroot
from tests.harness.registry import RunningRegistry
from tests.harness.store_pull import release_podman
from tether.store.containers_storage import DiskReserve, SpaceGuard, Store
from tether.store.diskspace import GIB, MIB, free_bytes
from tether.store.errors import DiskReserveError

REPO_ROOT = Path(__file__).resolve().parent.parent
TMPFS_SIZE = 64 * MIB
RESERVE = 16 * MIB


def test_parse_and_sizes(tmp_path: Path) -> None:
    assert DiskReserve.parse("default") == DiskReserve()
    assert DiskReserve.parse("0") == DiskReserve.fixed(0) and not DiskReserve.parse("0").enabled
    assert DiskReserve.parse("512M") == DiskReserve.fixed(512 * MIB)
    assert DiskReserve.parse("2GiB") == DiskReserve.fixed(2 * GIB)
    assert DiskReserve.parse("1.5g") == DiskReserve.fixed(int(1.5 * GIB))
    assert DiskReserve.parse("7%") == DiskReserve(fraction=0.07)
    for bad in ("lots", "-1G", "5%%", "120%"):
        with pytest.raises(ValueError, match="disk reserve"):
            DiskReserve.parse(bad)
    st = os.statvfs(tmp_path)
    size = st.f_blocks * st.f_frsize
    share = int(size * 0.05)
    assert DiskReserve().bytes_for(tmp_path) == max(GIB, min(share, 10 * GIB))
    assert DiskReserve(floor=1, fraction=0.5, cap=2).bytes_for(tmp_path) == 2  # the cap
    assert DiskReserve(floor=3 * size, fraction=0.5, cap=2).bytes_for(tmp_path) == 3 * size  # the floor wins
    guard = SpaceGuard(tmp_path, 123, every=456, describe="d", where="/store")
    again = SpaceGuard.from_json(json.loads(json.dumps(guard.to_json())))
    assert (again.path, again.reserve, again.every, again.describe, again.where) == (
        str(tmp_path), 123, 456, "d", "/store")


def test_preflight_and_guard_name_the_reserve(tmp_path: Path) -> None:
    free = free_bytes(tmp_path)
    DiskReserve.fixed(0).check(tmp_path, needed=10 * free)  # disabled: never refuses
    with pytest.raises(DiskReserveError, match=r"must stay free") as info:
        DiskReserve.fixed(free // 2).check(tmp_path, needed=free, where=Path("/the/store"))
    assert "/the/store" in str(info.value)
    guard = DiskReserve.fixed(free + GIB).guard(tmp_path)
    assert guard is not None
    guard.wrote(100)  # below one interval: not checked yet
    with pytest.raises(DiskReserveError, match=r"stopped after writing .*disk reserve of"):
        guard.wrote(guard.every)
    assert DiskReserve.fixed(0).guard(tmp_path) is None


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
        # podman mounts ROOT/overlay on itself; the tmpfs goes lazily (this process may hold lock files open).
        subprocess.run(["umount", "-R", "-l", str(mnt)], capture_output=True)


class LowWater:
    """Samples the free space of a filesystem in a thread until stopped; ``lowest`` is the least it saw."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lowest = free_bytes(path)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.0005):
            self.lowest = min(self.lowest, free_bytes(self.path))
            self.samples += 1

    def __enter__(self) -> LowWater:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def bomb_images(registry: RunningRegistry) -> dict[str, factory.BuiltImage]:
    bomb = hostile.gzip_bomb_layer(4 * TMPFS_SIZE)
    assert bomb.size < 2 * MIB
    images = {
        "bomb": factory.build_image([factory.build_layer([factory.file("etc/os-release", "ID=bomb\n")]), bomb]),
        "small-a": factory.simple_image(1801, files=5, layers=2),
        "small-b": factory.simple_image(1802, files=5, layers=1),
    }
    for name, image in images.items():
        factory.push_image(registry.host, f"reserve/{name}:1", image)
    return images


def pull_cli(tmp: Path, registry: RunningRegistry, root: Path, names: list[str], reserve: str,
             driver: str = "overlay") -> tuple[int, dict[str, str | None], str]:
    conf = tmp / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n')
    (tmp / "auth.json").write_text('{"auths": {}}')
    proc = subprocess.run(
        tether_argv("pull", "--root", str(root), "--runroot", str(tmp / "run"),
                    "--storage-driver", driver, "--registries-conf", str(conf), "--authfile", str(tmp / "auth.json"),
                    "--tls-verify=false", "--progress", "none", "--format", "json", "--disk-reserve", reserve, *names),
        capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    results = {r["name"]: r["error"] for r in json.loads(proc.stdout)} if proc.stdout.strip() else {}
    return proc.returncode, results, proc.stderr


def podman_image_ids(root: Path, driver: str) -> set[str]:
    podman = Podman(root=root, runroot=short_runroot(), driver=driver)
    try:
        return {i["Id"] for i in podman.images()}
    finally:
        release_podman(podman.root, podman.runroot)
        shutil.rmtree(podman.runroot, ignore_errors=True)


@pytest.mark.parametrize("driver", ["overlay", "vfs"])
def test_a_decompression_bomb_stops_at_the_reserve(tmp_path: Path, tmpfs: Path, registry: RunningRegistry,
                                                   bomb_images: dict[str, factory.BuiltImage],
                                                   driver: str) -> None:
    names = {key: f"{registry.host}/reserve/{key}:1" for key in bomb_images}
    root = tmpfs / "store"
    with LowWater(tmpfs) as water:
        status, results, stderr = pull_cli(tmp_path, registry, root, list(names.values()), "16M", driver)
    assert water.samples > 10
    assert water.lowest >= RESERVE, f"the filesystem went down to {water.lowest} bytes free"
    assert status == 1, stderr
    error = results[names["bomb"]]
    assert error is not None
    bomb_layer = bomb_images["bomb"].layers[-1]
    assert bomb_layer.digest in error and "disk reserve of 16.0 MiB" in error and str(root) in error, error
    line = f"  {names['bomb']}: {error}"
    assert line in stderr.splitlines()  # one line naming the image, the layer and the reserve
    assert results[names["small-a"]] is None and results[names["small-b"]] is None
    staging = root / driver / "tether-staging"
    assert not staging.exists() or os.listdir(staging) == []
    store = Store.open(root, driver=driver)
    assert store.check() == []
    ok = {bomb_images["small-a"].image_id, bomb_images["small-b"].image_id}
    assert {i.id for i in store.list_images()} == ok
    assert podman_image_ids(root, driver) == ok
    # What the bomb's base layer left (published, never committed) is the next run's to reuse or collect.
    assert free_bytes(tmpfs) > TMPFS_SIZE // 2


def test_without_a_reserve_the_bomb_fills_the_disk(tmp_path: Path, tmpfs: Path, registry: RunningRegistry,
                                                   bomb_images: dict[str, factory.BuiltImage]) -> None:
    name = f"{registry.host}/reserve/bomb:1"
    root = tmpfs / "store"
    with LowWater(tmpfs) as water:
        status, results, stderr = pull_cli(tmp_path, registry, root, [name], "0")
    assert status == 1
    assert "No space left on device" in (results[name] or ""), stderr
    assert water.lowest < RESERVE  # what the reserve prevents in the test above
    staging = root / "overlay" / "tether-staging"
    assert not staging.exists() or os.listdir(staging) == []  # the failed layer's staging is still removed
    assert Store.open(root).check() == []


def test_a_vfs_parent_copy_is_refused_before_it_starts(tmp_path: Path, tmpfs: Path) -> None:
    store = Store.open(tmpfs / "store", driver="vfs", disk_reserve=DiskReserve.fixed(0))
    base = factory.build_layer([factory.large_file("big", 20 * MIB, seed=1803)], compression="none")
    from tether.store.containers_storage import chain_id

    base_id = chain_id(None, base.diff_id)
    with store.stage_layer(layer_id=base_id, parent=None) as writer:
        writer.write(base.blob)
        staged = writer.finish()
    store.publish_layer(staged, expected_diff_digest=base.diff_id, compressed_digest=None, compressed_size=None)
    free = free_bytes(tmpfs)
    tight = Store.open(tmpfs / "store", driver="vfs", disk_reserve=DiskReserve.fixed(free - 10 * MIB))
    child = factory.build_layer([factory.file("small", "s")])
    with pytest.raises(DiskReserveError, match=r"20\.0 MiB to write"):
        tight.stage_layer(layer_id=chain_id(base_id, child.diff_id), parent=base_id)
    assert os.listdir(tmpfs / "store" / "vfs" / "tether-staging") == []
    assert free_bytes(tmpfs) == free
