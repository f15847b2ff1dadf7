"""Issue 15 item 1: the platform's manifest decides whether a stored image is up to date, side by side with
podman 4.3 on the same images (docker-registry serving a two-platform index and a one-platform image)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import images as factory
from tests.harness.bound import BOUND_DIR, QUADLET_DIR
from tests.harness.cli import StoreArgs, tether
from tests.harness.podman import Podman
from tests.harness.registry import RunningRegistry, exchanges
from tether.store.containers_storage import Store

AMD = factory.simple_image(1501, architecture="amd64")
ARM = factory.simple_image(1502, architecture="arm64", variant="v8")
INDEX = factory.build_index([AMD, ARM])


@pytest.fixture(scope="module")
def pushed(registry: RunningRegistry) -> dict[str, str]:
    """``multi``: an amd64 + arm64 index; ``armonly``: an arm64 image without an index."""
    factory.push_image(registry.host, "platform/multi:1", INDEX)
    factory.push_image(registry.host, "platform/armonly:1", ARM)
    return {"multi": f"{registry.host}/platform/multi:1", "armonly": f"{registry.host}/platform/armonly:1"}


PodmanOn = Callable[[Path], Podman]


def listing(podman: Podman) -> list[str]:
    """``ID NAME`` per row, as podman lists its store."""
    return sorted(podman.run("images", "--format", "{{.Id}} {{.Repository}}:{{.Tag}}").stdout.splitlines())


def pull_json(args: StoreArgs, *extra: str) -> dict[str, object]:
    done = tether("pull", *args.pull, "--progress", "none", "--format", "json", *extra)
    assert done.returncode == 0, done.stderr
    (result,) = json.loads(done.stdout)
    assert isinstance(result, dict)
    return result


def test_a_later_pull_replaces_another_platforms_image_as_podman_does(
        tmp_path: Path, registry: RunningRegistry, pushed: dict[str, str], podman: Podman,
        podman_on: PodmanOn) -> None:
    args = StoreArgs.make(tmp_path, registry.host)
    ref = pushed["multi"]
    assert pull_json(args, "--platform", "linux/arm64", ref)["id"] == ARM.image_id
    # the index digest is the one stored, but the amd64 manifest is not: not up to date, the amd64 image pulled
    second = pull_json(args, "--platform", "linux/amd64", ref)
    assert (second["id"], second["layersPulled"]) == (AMD.image_id, len(AMD.layers))
    podman.pull(ref, "--platform", "linux/arm64")
    podman.pull(ref, "--platform", "linux/amd64")
    assert listing(podman_on(args.root)) == listing(podman) == sorted(
        [f"{AMD.image_id} {ref}", f"{ARM.image_id} <none>:<none>"])
    # and back: --arch is podman's spelling of the same choice
    assert pull_json(args, "--arch", "arm64", ref)["id"] == ARM.image_id
    podman.pull(ref, "--arch", "arm64")
    assert listing(podman_on(args.root)) == listing(podman)


def test_newer_stops_at_the_top_manifest_when_the_platforms_image_is_stored(
        tmp_path: Path, registry: RunningRegistry, pushed: dict[str, str]) -> None:
    args = StoreArgs.make(tmp_path, registry.host)
    ref = pushed["multi"]
    pull_json(args, "--platform", "linux/amd64", ref)
    before = len(registry.access_log())
    again = pull_json(args, "--platform", "linux/amd64", ref)
    assert (again["id"], again["layersPulled"], again["layersReused"]) == (AMD.image_id, 0, 0)
    # one HEAD: its digest is the index the store holds, whose amd64 entry is the image stored (issue 14)
    assert exchanges(registry.access_log()[before:]) == ["GET /v2/", "HEAD /v2/platform/multi/manifests/1"]


def test_policy_always_re_resolves_an_unchanged_image_as_podman_pull_does(
        tmp_path: Path, registry: RunningRegistry, pushed: dict[str, str], podman: Podman,
        podman_on: PodmanOn) -> None:
    args = StoreArgs.make(tmp_path, registry.host)
    ref = pushed["multi"]
    pull_json(args, "--platform", "linux/amd64", ref)
    for spelling in ("--policy", "--pull"):
        before = len(registry.access_log())
        again = pull_json(args, "--platform", "linux/amd64", spelling, "always", ref)
        # resolved again (the platform's manifest and config fetched), its layers found in the store
        assert (again["id"], again["layersPulled"], again["layersReused"]) == (AMD.image_id, 0, len(AMD.layers))
        assert any(AMD.manifest_digest in line for line in registry.access_log()[before:])
    # podman pull (its policy is always) twice: the same image under the name, nothing else
    podman.pull(ref, "--platform", "linux/amd64")
    podman.pull(ref, "--platform", "linux/amd64")
    assert listing(podman_on(args.root)) == listing(podman) == [f"{AMD.image_id} {ref}"]
    assert Store.open(args.root).check() == []


def test_an_image_only_for_another_platform_is_pulled_with_podmans_warning(
        tmp_path: Path, registry: RunningRegistry, pushed: dict[str, str], podman: Podman) -> None:
    args = StoreArgs.make(tmp_path, registry.host)
    ref = pushed["armonly"]
    done = tether("pull", *args.pull, "--progress", "none", "--platform", "linux/amd64", ref)
    assert done.returncode == 0 and done.stdout.split() == [ARM.image_id], done.stderr
    assert (f"tether: warning: {ref}: image platform (linux/arm64/v8) does not match the expected platform "
            "(linux/amd64)") in done.stderr
    theirs = podman.run("pull", "--tls-verify=false", "--platform", "linux/amd64", ref)
    assert "WARNING: image platform" in theirs.stderr and "does not match the expected platform" in theirs.stderr
    # asked for, it is no surprise: neither warns
    done = tether("pull", *args.pull, "--progress", "none", "--arch", "arm64", ref)
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr
    assert "WARNING" not in podman.run("pull", "--tls-verify=false", "--arch", "arm64", ref).stderr


def test_platform_flags_conflict_as_podman_says(tmp_path: Path, pushed: dict[str, str]) -> None:
    args = StoreArgs.make(tmp_path)
    done = tether("pull", *args.pull, "--platform", "linux/arm64", "--arch", "arm64", pushed["multi"])
    assert done.returncode == 1 and "--platform conflicts with --arch" in done.stderr
    assert not args.root.exists()


def test_policy_never_and_missing(tmp_path: Path, registry: RunningRegistry, pushed: dict[str, str]) -> None:
    args = StoreArgs.make(tmp_path, registry.host)
    ref = pushed["multi"]
    before = len(registry.access_log())
    never = tether("pull", *args.pull, "--progress", "none", "--policy", "never", ref)
    assert never.returncode == 1 and "pull policy never" in never.stderr
    assert registry.access_log()[before:] == []
    pull_json(args, "--platform", "linux/arm64", ref)
    before = len(registry.access_log())
    # never and missing take what the store has under the name, asking nothing ...
    assert pull_json(args, "--policy", "never", ref)["id"] == ARM.image_id
    assert pull_json(args, "--policy", "missing", ref)["id"] == ARM.image_id
    assert registry.access_log()[before:] == []
    # ... but a platform asked for turns missing into newer (c/common libimage), so the name gets amd64's
    assert pull_json(args, "--policy", "missing", "--platform", "linux/amd64", ref)["id"] == AMD.image_id


def test_bound_sync_pulls_the_platform_a_unit_asks_for(
        tmp_path: Path, registry: RunningRegistry, pushed: dict[str, str]) -> None:
    args = StoreArgs.make(tmp_path, registry.host)
    ref = pushed["multi"]
    pull_json(args, "--platform", "linux/amd64", ref)  # the name holds the amd64 image
    root = tmp_path / "deploy"
    (root / QUADLET_DIR).mkdir(parents=True)
    (root / BOUND_DIR).mkdir(parents=True)
    (root / QUADLET_DIR / "app.image").write_text(f"[Image]\nImage={ref}\nArch=arm64\n")
    os.symlink(f"/{QUADLET_DIR}/app.image", root / BOUND_DIR / "app.image")
    sync = tether("bound", "sync", "--deployment-root", str(root), *args.pull, "--progress", "none", "--no-gc")
    assert sync.returncode == 0, sync.stderr
    status = tether("bound", "status", "--deployment-root", str(root), *args.store, "--format", "json")
    (deployment,) = json.loads(status.stdout)
    assert deployment["ready"] and [i["id"] for i in deployment["images"]] == [ARM.image_id]
