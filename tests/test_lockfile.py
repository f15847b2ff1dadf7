"""Lock files against docker-registry and podman: ``tether bound lock`` pins what every binding's tag points at,
``bound sync --lock`` pulls exactly that after the tag moved and stores it under the bound name, ``bound status
--lock`` says (exit status) whether a store matches a lock."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.harness import images as factory
from tests.harness.bound import make_root
from tests.harness.cli import StoreArgs, tether
from tests.harness.podman import Podman
from tests.harness.registry import RunningRegistry
from tether.engine.bound.discovery import discover_bound_images
from tether.engine.bound.records import binding_key


def multi_platform(seed: int) -> factory.BuiltIndex:
    return factory.build_index([factory.simple_image(seed, architecture="amd64"),
                                factory.simple_image(seed + 1, architecture="arm64")])


def podman_tags(podman: Podman) -> dict[str, str]:
    """Each name podman lists, with its image id."""
    return {name: i["Id"] for i in podman.images() for name in i.get("Names") or ()}


def test_a_lock_pins_a_moved_tag(tmp_path: Path, registry: RunningRegistry,
                                 podman_on: Callable[[Path], Podman]) -> None:
    v1, v2 = multi_platform(1670), multi_platform(1672)
    tool = factory.simple_image(1674)
    factory.push_image(registry.host, "lock/app:1", v1)
    factory.push_image(registry.host, "lock/tool:2", tool)
    app_name, tool_name = f"{registry.host}/lock/app:1", f"{registry.host}/lock/tool:2"
    root = make_root(tmp_path / "deploy", {"app.image": app_name, "tool.image": tool_name,
                                           "again.image": app_name})  # one binding, two entries
    args = StoreArgs.make(tmp_path, registry.host)
    deploy = ["--deployment-root", str(root)]
    creds = args.pull[4:]  # --registries-conf, --authfile

    shown = tether("bound", "lock", *deploy, *creds, "--platform", "linux/amd64")
    assert shown.returncode == 0, shown.stderr
    lock = tmp_path / "bound.lock"
    written = tether("bound", "lock", *deploy, *creds, "--platform", "linux/amd64", "--output", str(lock))
    assert written.returncode == 0, written.stderr
    assert lock.read_text() == shown.stdout  # the same digests give the same bytes
    doc = json.loads(lock.read_text())
    assert [e["image"] for e in doc["images"]] == [app_name, tool_name]
    keys = {binding_key(image) for image in discover_bound_images(root)}
    assert {e["binding"] for e in doc["images"]} == keys
    app, tl = doc["images"]
    # a multi-platform image is pinned by its index digest (one lock for every architecture of a fleet)
    assert (app["digest"], app["manifest"]) == (v1.manifest_digest, v1.images[0].manifest_digest)
    assert tl["digest"] == tl["manifest"] == tool.manifest_digest

    # the tag moves; the fleet's hosts still get what was locked, under the bound name
    factory.push_image(registry.host, "lock/app:1", v2)
    sync = tether("bound", "sync", *deploy, *args.pull, "--lock", str(lock), "--progress", "none")
    assert sync.returncode == 0, sync.stderr
    assert podman_tags(podman_on(args.root)) == {app_name: v1.images[0].image_id, tool_name: tool.image_id}
    status = tether("bound", "status", *deploy, *args.store, "--lock", str(lock))
    assert status.returncode == 0 and "matches the lock file" in status.stdout, status.stdout + status.stderr

    # a new lock (the tag's new digest): the store differs from it until a sync with it
    newer = tmp_path / "newer.lock"
    assert tether("bound", "lock", *deploy, *creds, "--output", str(newer)).returncode == 0
    differs = tether("bound", "status", *deploy, *args.store, "--lock", str(newer), "--format", "json")
    assert differs.returncode == 1
    (deployment,) = json.loads(differs.stdout)
    assert deployment["lock"]["matches"] is False
    # the store's digest of the image is the first manifest digest c/image records: the index it came through
    assert deployment["lock"]["differences"] == [
        f"{app_name}: the store has {v1.manifest_digest}, the lock pins {v2.manifest_digest}"]
    resync = tether("bound", "sync", *deploy, *args.pull, "--lock", str(newer), "--progress", "none")
    assert resync.returncode == 0, resync.stderr
    assert podman_tags(podman_on(args.root))[app_name] == v2.images[0].image_id
    assert tether("bound", "status", *deploy, *args.store, "--lock", str(newer)).returncode == 0
    assert tether("bound", "status", *deploy, *args.store, "--lock", str(lock)).returncode == 1


def test_a_binding_the_lock_does_not_pin_is_not_pulled(tmp_path: Path, registry: RunningRegistry) -> None:
    one, two = factory.simple_image(1675), factory.simple_image(1676)
    factory.push_image(registry.host, "lock/one:1", one)
    factory.push_image(registry.host, "lock/two:1", two)
    args = StoreArgs.make(tmp_path, registry.host)
    root = make_root(tmp_path / "deploy", {"one.image": f"{registry.host}/lock/one:1"})
    lock = tmp_path / "bound.lock"
    assert tether("bound", "lock", "--deployment-root", str(root), *args.pull[4:], "-o", str(lock)).returncode == 0
    make_root(root, {"two.image": f"{registry.host}/lock/two:1"})  # bound after the lock was made
    sync = tether("bound", "sync", "--deployment-root", str(root), *args.pull, "--lock", str(lock),
                  "--progress", "none")
    assert sync.returncode == 1
    assert f"{registry.host}/lock/two:1: not in the lock file {lock}" in sync.stderr, sync.stderr
    status = tether("bound", "status", "--deployment-root", str(root), *args.store, "--lock", str(lock))
    assert status.returncode == 1
    assert f"{registry.host}/lock/two:1: not in the lock file" in status.stdout


def test_no_lock_is_written_when_an_image_cannot_be_resolved(tmp_path: Path, registry: RunningRegistry) -> None:
    factory.push_image(registry.host, "lock/there:1", factory.simple_image(1677))
    args = StoreArgs.make(tmp_path, registry.host)
    root = make_root(tmp_path / "deploy", {"there.image": f"{registry.host}/lock/there:1",
                                           "gone.image": f"{registry.host}/lock/gone:1"})
    lock = tmp_path / "bound.lock"
    proc = tether("bound", "lock", "--deployment-root", str(root), *args.pull[4:], "-o", str(lock))
    assert proc.returncode == 1
    assert "no lock file written: 1 of 2 bound image(s)" in proc.stderr
    assert f"{registry.host}/lock/gone:1:" in proc.stderr
    assert not lock.exists()
