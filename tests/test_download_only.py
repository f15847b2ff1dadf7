"""``--download-only`` and the trickle mode, against docker-registry and podman: every blob fetched and verified into
the store's download cache with nothing committed, then applied by a later ``tether pull`` / ``tether bound sync``
with the registry stopped."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path

from tests.harness import images as factory
from tests.harness.bound import make_root
from tests.harness.cli import StoreArgs, tether
from tests.harness.podman import Podman, short_runroot
from tests.harness.registry import RunningRegistry
from tests.harness.store_pull import release_podman
from tether.store.containers_storage import Store


def two_layer_image(seed: int) -> factory.BuiltImage:
    return factory.build_image([
        factory.build_layer([factory.file("etc/os-release", f"ID=seed{seed}\n")]),
        factory.build_layer([factory.file("data/blob", random.Random(seed).randbytes(2 << 20))]),
    ])


def cache_state(root: Path) -> tuple[set[str], list[dict[str, object]]]:
    cache = root / "tether" / "cache"
    blobs = {p.name.replace("-", ":", 1) for p in (cache / "blobs").iterdir()} if (cache / "blobs").is_dir() else set()
    records = ([json.loads(p.read_text()) for p in (cache / "records").glob("*.json")]
               if (cache / "records").is_dir() else [])
    return blobs, records


def podman_ids(root: Path) -> set[str]:
    podman = Podman(root=root, runroot=short_runroot())
    try:
        return {i["Id"] for i in podman.images()}
    finally:
        release_podman(podman.root, podman.runroot)
        shutil.rmtree(podman.runroot, ignore_errors=True)


def test_download_only_then_apply_with_the_registry_stopped(
        tmp_path: Path, registry_factory: Callable[..., RunningRegistry]) -> None:
    registry = registry_factory()
    image = two_layer_image(1650)
    factory.push_image(registry.host, "trickle/app:1", image)
    args = StoreArgs.make(tmp_path, registry.host)
    name = f"{registry.host}/trickle/app:1"

    done = tether("pull", *args.pull, "--download-only", "--format", "json", "--progress", "none", name)
    assert done.returncode == 0, done.stderr
    (result,) = json.loads(done.stdout)
    assert result["downloaded"] is True and result["id"] == image.image_id and result["error"] is None
    assert Store.open(args.root).list_images() == [] and Store.open(args.root).list_layers() == []
    blobs, records = cache_state(args.root)
    wanted = {layer.digest for layer in image.layers} | {image.config_digest, image.manifest_digest}
    assert blobs == wanted
    (record,) = records
    assert record["complete"] is True and record["name"] == name
    # each blob file holds the whole verified blob
    for layer in image.layers:
        assert (args.root / "tether/cache/blobs" / layer.digest.replace(":", "-")).read_bytes() == layer.blob

    registry.stop()
    applied = tether("pull", *args.pull, "--progress", "none", name)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.split() == [image.image_id]
    assert cache_state(args.root) == (set(), [])  # applied: the download is gone
    assert Store.open(args.root).check() == []
    assert podman_ids(args.root) == {image.image_id}


def test_a_download_is_applied_as_downloaded_unless_policy_always(
        tmp_path: Path, registry: RunningRegistry) -> None:
    # As `bootc upgrade --from-downloaded`: what was downloaded is what is applied, even if the tag moved since;
    # --policy always asks the registry again (and the newer image supersedes the download).
    first, second = two_layer_image(1651), two_layer_image(1652)
    factory.push_image(registry.host, "trickle/moving:1", first)
    name = f"{registry.host}/trickle/moving:1"
    for store_name, policy, expected in (("a", "newer", first), ("b", "always", second)):
        args = StoreArgs.make(tmp_path / store_name, registry.host)
        factory.push_image(registry.host, "trickle/moving:1", first)
        assert tether("pull", *args.pull, "--download-only", "--progress", "none", name).returncode == 0
        factory.push_image(registry.host, "trickle/moving:1", second)
        applied = tether("pull", *args.pull, "--policy", policy, "--progress", "none", name)
        assert applied.returncode == 0, applied.stderr
        assert applied.stdout.split() == [expected.image_id], policy
        assert cache_state(args.root)[1] == []


def test_bound_sync_trickle_mode(tmp_path: Path, registry_factory: Callable[..., RunningRegistry]) -> None:
    registry = registry_factory()
    agent, logs = two_layer_image(1653), two_layer_image(1654)
    factory.push_image(registry.host, "trickle/agent:1", agent)
    factory.push_image(registry.host, "trickle/logs:1", logs)
    args = StoreArgs.make(tmp_path, registry.host)
    root = make_root(tmp_path / "deploy", {"agent.image": f"{registry.host}/trickle/agent:1",
                                           "logs.image": f"{registry.host}/trickle/logs:1"})
    deploy = ["--deployment-root", str(root), *args.pull]

    # the nightly timer: slowly, ahead of time; nothing is committed, nothing is recorded ready
    ahead = tether("bound", "sync", *deploy, "--download-only", "--limit-rate", "20M", "--progress", "none")
    assert ahead.returncode == 0, ahead.stderr
    assert "downloaded" in ahead.stdout
    status = tether("bound", "status", *deploy[:2], *args.store, "--format", "json")
    assert [d["ready"] for d in json.loads(status.stdout)] == [False]
    assert Store.open(args.root).list_images() == []
    assert len(cache_state(args.root)[1]) == 2

    # staging: the sync applies it without the network
    registry.stop()
    sync = tether("bound", "sync", *deploy, "--progress", "none")
    assert sync.returncode == 0, sync.stderr
    status = tether("bound", "status", *deploy[:2], *args.store, "--check", "new")
    assert status.returncode == 0, status.stdout + status.stderr
    assert cache_state(args.root) == (set(), [])
    assert podman_ids(args.root) == {agent.image_id, logs.image_id}


def test_download_only_of_what_the_store_has_downloads_nothing(tmp_path: Path, registry: RunningRegistry) -> None:
    image = two_layer_image(1655)
    factory.push_image(registry.host, "trickle/present:1", image)
    args = StoreArgs.make(tmp_path, registry.host)
    name = f"{registry.host}/trickle/present:1"
    assert tether("pull", *args.pull, "--progress", "none", name).returncode == 0
    before = len(registry.access_log())
    again = tether("pull", *args.pull, "--download-only", "--progress", "none", name)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"{name}: present in the store ({image.image_id[:12]})"
    assert not any("/blobs/" in line for line in registry.access_log()[before:])
    assert cache_state(args.root) == (set(), [])
