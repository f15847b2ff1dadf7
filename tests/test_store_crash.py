"""kill -9 of the real ``tether pull`` (and ``tether rmi``) at every injected point of the store's write protocol:
podman reads the state each kill left, the rerun is the real ``tether pull`` and completes, ``tether check``
passes after every recovery, and nothing is left orphaned."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.harness import images as factory
from tests.harness.cli import tether_argv
from tests.harness.podman import Podman, podman_for, short_runroot
from tests.harness.registry import RunningRegistry
from tests.harness.store_pull import release_podman
from tether.store.containers_storage import CRASH_ENV, Store, chain_id

REPO_ROOT = Path(__file__).resolve().parent.parent

POINTS = [
    "layer-writing",
    "layer-staged",
    "layer-before-incomplete-record",
    "layer-after-incomplete-record",
    "overlay-after-layer-dir",
    "overlay-after-diff-rename",
    "overlay-after-link-file",
    "overlay-after-symlink",
    "layer-after-install",
    "layer-after-tar-split",
    "layer-after-complete-record",
    "image-after-big-data",
    "image-before-record",
    "image-after-record",
]
DELETE_POINTS = ["delete-after-journal", "delete-after-image-record", "delete-after-layer"]


def tether(*args: str, crash_at: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The real ``tether`` command; ``crash_at``: the store step at which it SIGKILLs itself."""
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    if crash_at is not None:
        env[CRASH_ENV] = crash_at
    return subprocess.run(tether_argv(*args), capture_output=True, text=True, env=env,
                          cwd=REPO_ROOT, timeout=timeout)


def store_args(root: Path, driver: str) -> list[str]:
    return ["--root", str(root), "--runroot", str(root.parent / "tether-run"), "--storage-driver", driver]


def tether_pull(root: Path, driver: str, registry: RunningRegistry, *names: str,
                crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    conf = root.parent / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n')
    return tether("pull", *store_args(root, driver), "--registries-conf", str(conf), "--tls-verify=false",
                  "--progress", "none", *(f"{registry.host}/{name}" for name in names), crash_at=crash_at)


def assert_check_passes(root: Path, driver: str) -> None:
    proc = tether("check", *store_args(root, driver))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def podman_reads_copy(root: Path, driver: str, work: Path) -> list[dict[str, Any]]:
    """podman's view of exactly what a kill left, read from a copy (podman's first write-locked load cleans the
    store as c/storage does, and the original is left for tether's own recovery)."""
    copy = work / "podman-copy"
    subprocess.run(["cp", "-a", str(root), str(copy)], check=True)
    podman = Podman(root=copy, runroot=short_runroot(), driver=driver)
    try:
        listed: list[dict[str, Any]] = podman.images()
        for image in listed:
            podman.run("image", "inspect", image["Id"])
        layers_json = copy / f"{driver}-layers" / "layers.json"
        if layers_json.exists():  # c/storage deletes incomplete layers when it loads under the write lock
            assert not [r for r in json.loads(layers_json.read_text()) if r.get("flags", {}).get("incomplete")]
        return listed
    finally:
        release_podman(podman.root, podman.runroot)
        shutil.rmtree(podman.runroot, ignore_errors=True)
        shutil.rmtree(copy, ignore_errors=True)


@pytest.fixture(scope="module")
def crash_image(registry: RunningRegistry) -> factory.BuiltImage:
    image = factory.simple_image(31, files=20, layers=3)
    factory.push_image(registry.host, "store/crash:v1", image)
    return image


def assert_no_orphans(root: Path, driver: str) -> None:
    layers = json.loads((root / f"{driver}-layers" / "layers.json").read_text())
    ids = {r["id"] for r in layers}
    assert not any(r.get("flags", {}).get("incomplete") for r in layers)
    staging = root / driver / "tether-staging"
    assert not staging.exists() or os.listdir(staging) == []
    home = root / "overlay" if driver == "overlay" else root / "vfs" / "dir"
    dirs = {p.name for p in home.iterdir() if len(p.name) == 64}
    assert dirs == ids
    if driver == "overlay":
        for link in (home / "l").iterdir():
            assert (home / "l" / link).resolve().exists(), link
        assert len(list((home / "l").iterdir())) == len(ids)
    for sub in (f"{driver}-layers", f"{driver}-images"):
        assert not [p for p in (root / sub).rglob(".tmp-*")]
    splits = {p.name.split(".")[0] for p in (root / f"{driver}-layers").glob("*.tar-split.gz")}
    assert splits <= ids
    images = json.loads((root / f"{driver}-images" / "images.json").read_text() or "[]") \
        if (root / f"{driver}-images" / "images.json").exists() else []
    image_dirs = {p.name for p in (root / f"{driver}-images").iterdir() if p.is_dir()}
    assert image_dirs == {i["id"] for i in images}


@pytest.mark.parametrize("point", POINTS)
def test_kill_during_pull(point: str, registry: RunningRegistry, crash_image: factory.BuiltImage,
                          tmp_path: Path) -> None:
    driver = "vfs" if point in ("layer-after-install", "image-before-record") else "overlay"
    podman = podman_for(tmp_path, driver=driver)
    try:
        _kill_and_recover(point, driver, podman, registry, crash_image, tmp_path)
    finally:
        release_podman(podman.root, podman.runroot)


def _kill_and_recover(point: str, driver: str, podman: Podman, registry: RunningRegistry,
                      image: factory.BuiltImage, work: Path) -> None:
    proc = tether_pull(podman.root, driver, registry, "store/crash:v1", crash_at=point)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    listed = podman_reads_copy(podman.root, driver, work)
    assert [i["Id"] for i in listed] == ([image.image_id] if point == "image-after-record" else [])
    if POINTS.index(point) % 2 == 0:
        # podman's own load of the original cleans what the kill left; at the other points tether's does
        assert [i["Id"] for i in podman.images()] in ([], [image.image_id])
    rerun = tether_pull(podman.root, driver, registry, "store/crash:v1")
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.split() == [image.image_id]
    assert_check_passes(podman.root, driver)
    assert [i["Id"] for i in podman.images()] == [image.image_id]
    inspect = podman.json("image", "inspect", image.image_id)[0]
    assert inspect["RootFS"]["Layers"] == [layer.diff_id for layer in image.layers]
    Store.open(podman.root)  # a further open cleans nothing more and finds the store healthy
    assert_no_orphans(podman.root, driver)
    assert len(Store.open(podman.root).list_layers()) == 3


@pytest.mark.parametrize("point", DELETE_POINTS)
def test_kill_during_delete(point: str, registry: RunningRegistry, tmp_path: Path) -> None:
    base = factory.build_layer([factory.file("base", "shared")])
    keep = factory.build_image([base, factory.build_layer([factory.file("keep", "k")])])
    gone = factory.build_image([base, factory.build_layer([factory.file("gone", "g")]),
                                factory.build_layer([factory.file("gone2", "g2")])])
    factory.push_image(registry.host, "store/del-keep:v1", keep)
    factory.push_image(registry.host, "store/del-gone:v1", gone)
    podman = podman_for(tmp_path)
    try:
        pulled = tether_pull(podman.root, "overlay", registry, "store/del-keep:v1", "store/del-gone:v1")
        assert pulled.returncode == 0, pulled.stderr
        proc = tether("rmi", *store_args(podman.root, "overlay"), gone.image_id, crash_at=point)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        assert keep.image_id in {i["Id"] for i in podman_reads_copy(podman.root, "overlay", tmp_path)}
        ids = {i["Id"] for i in podman.images()}  # podman loads whatever the kill left
        assert keep.image_id in ids
        # The next tether command finishes (or forgets) the interrupted delete; rmi again if the record stayed.
        listed = tether("images", *store_args(podman.root, "overlay"), "--format", "json")
        assert listed.returncode == 0, listed.stderr
        if gone.image_id in {i["Id"] for i in json.loads(listed.stdout)}:
            assert point == "delete-after-journal"
            again = tether("rmi", *store_args(podman.root, "overlay"), gone.image_id)
            assert again.returncode == 0, again.stderr
        assert_check_passes(podman.root, "overlay")
        assert {i["Id"] for i in podman.images()} == {keep.image_id}
        store = Store.open(podman.root)
        assert len(store.list_layers()) == 2  # the shared base and keep's own layer
        assert not (podman.root / "tether" / "pending-deletes").exists() or \
            os.listdir(podman.root / "tether" / "pending-deletes") == []
        assert_no_orphans(podman.root, "overlay")
    finally:
        release_podman(podman.root, podman.runroot)


def test_dangling_layers_of_a_killed_pull_are_collected(registry: RunningRegistry, crash_image: factory.BuiltImage,
                                                        tmp_path: Path) -> None:
    podman = podman_for(tmp_path)
    try:
        proc = tether_pull(podman.root, "overlay", registry, "store/crash:v1", crash_at="image-before-record")
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        store = Store.open(podman.root)
        chain_ids = [layer.id for layer in store.list_layers()]
        assert len(chain_ids) == 3 and store.list_images() == []
        assert sorted(store.dangling_layers()) == sorted(chain_ids)
        # a layer this (live) process published but has not committed yet is left alone
        other = factory.simple_image(32, files=2, layers=1)
        factory.push_image(registry.host, "store/live:v1", other)
        live_id = chain_id(None, other.layers[0].diff_id)
        with store.stage_layer(layer_id=live_id, parent=None) as writer:
            writer.write(other.layers[0].blob)
            staged = writer.finish()
        store.publish_layer(staged, expected_diff_digest=other.layers[0].diff_id,
                            compressed_digest=other.layers[0].digest, compressed_size=other.layers[0].size)
        removed = store.delete_dangling_layers()
        assert sorted(removed) == sorted(chain_ids)  # children first, only the dead session's
        assert [layer.id for layer in store.list_layers()] == [live_id]
        assert podman.images() == []
        assert_no_orphans(podman.root, "overlay")
        # the dead session's record is gone; a fresh open keeps the live one's
        assert len(list((podman.root / "tether" / "sessions").glob("*.lock"))) == 1
    finally:
        release_podman(podman.root, podman.runroot)
