"""kill -9 at injected points through a layer commit and an image commit: podman still loads the store,
a rerun completes, and nothing is left orphaned."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.harness import images as factory
from tests.harness.podman import Podman, podman_for
from tests.harness.registry import RunningRegistry
from tests.harness.store_pull import pull_into_store, release_podman
from tether.store.containers_storage import Store, chain_id

REPO_ROOT = Path(__file__).resolve().parent.parent

PULL_SCRIPT = """
import sys
from pathlib import Path
from tether.store.containers_storage import Store
from tests.harness.store_pull import pull_into_store
store = Store.open(Path(sys.argv[1]), driver=sys.argv[4], crash_at=sys.argv[5] or None)
record = pull_into_store(store, sys.argv[2], sys.argv[3])
print(record.id)
"""

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


def run_pull(root: Path, host: str, ref: str, driver: str, crash_at: str | None = None
             ) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-c", PULL_SCRIPT, str(root), host, ref, driver, crash_at or ""],
                          capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120)



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
        _kill_and_recover(point, driver, podman, registry, crash_image)
    finally:
        release_podman(podman.root, podman.runroot)


def _kill_and_recover(point: str, driver: str, podman: Podman, registry: RunningRegistry,
                      image: factory.BuiltImage) -> None:
    proc = run_pull(podman.root, registry.host, "store/crash:v1", driver, crash_at=point)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    listed: list[dict[str, Any]]
    podman_first = POINTS.index(point) % 2 == 0
    if podman_first:
        # podman loads what the killed writer left (and removes incomplete layers itself)
        listed = podman.images()
        assert [i["Id"] for i in listed] in ([], [image.image_id])
        podman.run("image", "ls", "--all")
        layers_json = podman.root / f"{driver}-layers" / "layers.json"
        if layers_json.exists():  # c/storage deletes incomplete layers when it loads under the write lock
            assert not [r for r in json.loads(layers_json.read_text()) if r.get("flags", {}).get("incomplete")]
    record = pull_into_store(Store.open(podman.root, driver=driver), registry.host, "store/crash:v1")
    assert record.id == image.image_id
    listed = podman.images()
    assert [i["Id"] for i in listed] == [image.image_id]
    inspect = podman.json("image", "inspect", image.image_id)[0]
    assert inspect["RootFS"]["Layers"] == [layer.diff_id for layer in image.layers]
    Store.open(podman.root)  # a further open cleans nothing more and finds the store healthy
    assert_no_orphans(podman.root, driver)
    assert len(Store.open(podman.root).list_layers()) == 3


DELETE_SCRIPT = """
import sys
from pathlib import Path
from tether.store.containers_storage import Store
print(",".join(Store.open(Path(sys.argv[1]), crash_at=sys.argv[3]).delete_image(sys.argv[2])))
"""


@pytest.mark.parametrize("point", ["delete-after-journal", "delete-after-image-record", "delete-after-layer"])
def test_kill_during_delete(point: str, registry: RunningRegistry, tmp_path: Path) -> None:
    base = factory.build_layer([factory.file("base", "shared")])
    keep = factory.build_image([base, factory.build_layer([factory.file("keep", "k")])])
    gone = factory.build_image([base, factory.build_layer([factory.file("gone", "g")]),
                                factory.build_layer([factory.file("gone2", "g2")])])
    factory.push_image(registry.host, "store/del-keep:v1", keep)
    factory.push_image(registry.host, "store/del-gone:v1", gone)
    podman = podman_for(tmp_path)
    try:
        for ref in ("store/del-keep:v1", "store/del-gone:v1"):
            pull_into_store(Store.open(podman.root), registry.host, ref)
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        proc = subprocess.run([sys.executable, "-c", DELETE_SCRIPT, str(podman.root), gone.image_id, point],
                              capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        ids = {i["Id"] for i in podman.images()}  # podman loads whatever the kill left
        assert keep.image_id in ids
        store = Store.open(podman.root)  # finishes (or forgets) the interrupted delete
        if gone.image_id in {i.id for i in store.list_images()}:
            assert point == "delete-after-journal"
            assert len(store.delete_image(gone.image_id)) == 2
        assert {i["Id"] for i in podman.images()} == {keep.image_id}
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
        proc = run_pull(podman.root, registry.host, "store/crash:v1", "overlay", crash_at="image-before-record")
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
