"""A ``tether bound sync`` killed (SIGKILL) in the middle of a layer, or between committing the images and
writing the readiness record, leaves the deployment not ready and the store consistent (podman reads it,
``tether check`` passes); the next real ``bound sync`` completes it, pulling nothing it already committed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.bound import make_root
from tests.harness.cli import tether_argv
from tests.harness.faulty_proxy import Fault, FaultyProxy
from tests.harness.images import push_image, simple_image
from tests.harness.podman import Podman, short_runroot
from tests.harness.registry import RunningRegistry
from tests.test_pull_registry import blob_gets
from tether.engine.bound.deployments import root_deployments
from tether.engine.bound.records import load_record
from tether.store.containers_storage import CRASH_ENV, Store


@pytest.fixture
def proxy(registry: RunningRegistry) -> Iterator[FaultyProxy]:
    with FaultyProxy(upstream=registry.host) as running:
        yield running


def tether(*args: str, crash_at: str | None = None) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    if crash_at is not None:
        env[CRASH_ENV] = crash_at
    return subprocess.Popen(
        tether_argv(*args),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        cwd=Path(__file__).resolve().parent.parent,
    )


def check_store(store: Path) -> None:
    """``tether check`` (the real command) finds nothing wrong."""
    proc = tether("check", "--root", str(store))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err


def podman_image_names(store: Path) -> set[str]:
    podman = Podman(root=store, runroot=short_runroot())
    try:
        listed = podman.json("images", "--format", "json")
        return {n for i in listed for n in i.get("Names") or []}
    finally:
        for path in (podman.runroot, store / "overlay"):
            subprocess.run(["umount", "-R", str(path)], capture_output=True)
        shutil.rmtree(podman.runroot, ignore_errors=True)


def test_killed_sync_leaves_not_ready_then_completes(
    tmp_path: Path, registry: RunningRegistry, proxy: FaultyProxy
) -> None:
    push_image(registry.host, "kill1/a:1", simple_image(601, files=2, layers=1))
    slow = simple_image(602, files=40, layers=1)
    push_image(registry.host, "kill1/b:1", slow)
    host = proxy.host
    root = make_root(tmp_path / "r", {"a.image": f"{host}/kill1/a:1", "b.image": f"{host}/kill1/b:1"})
    store = tmp_path / "store"
    layer = slow.layers[0].digest
    proxy.add(Fault("stall", path_contains=layer, after=16, stall_seconds=60))
    args = ["bound", "sync", "--deployment-root", str(root), "--root", str(store), "--tls-verify=false",
            "--progress", "none"]
    proc = tether(*args)
    try:
        deadline = time.monotonic() + 60
        while not any(r.fault == "stall" for r in proxy.requests):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the layer request never reached the proxy"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        proc.communicate()

    (deployment,) = root_deployments([root])
    record = load_record(store, deployment)
    assert record is None or not record.ready
    status = subprocess.run(tether_argv("bound", "status", "--deployment-root", str(root),
                                        "--root", str(store), "--check", str(root)), capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
    assert status.returncode == 1

    # podman reads what the killed sync left (and cleans like c/storage); tether's check agrees.
    assert f"{host}/kill1/b:1" not in podman_image_names(store)
    check_store(store)

    rerun = tether(*args)
    _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    status = subprocess.run(tether_argv("bound", "status", "--deployment-root", str(root),
                                        "--root", str(store), "--format", "json"), capture_output=True, text=True,
                            check=True,
                            cwd=Path(__file__).resolve().parent.parent)
    (doc,) = json.loads(status.stdout)
    assert doc["ready"] is True
    assert {i["id"] for i in doc["images"]} >= {slow.image_id}
    check_store(store)


def test_kill_between_commit_and_record_ends_ready_without_pulling_again(tmp_path: Path,
                                                                         registry: RunningRegistry) -> None:
    images = {"a": simple_image(611, files=3, layers=2), "b": simple_image(612, files=3, layers=1)}
    for name, image in images.items():
        push_image(registry.host, f"kill2/{name}:1", image)
    root = make_root(tmp_path / "r", {f"{name}.image": f"{registry.host}/kill2/{name}:1" for name in images})
    store = tmp_path / "store"
    args = ["bound", "sync", "--deployment-root", str(root), "--root", str(store), "--tls-verify=false",
            "--progress", "none"]
    killed = tether(*args, crash_at="sync-before-records")
    killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL

    (deployment,) = root_deployments([root])
    assert load_record(store, deployment) is None  # the images are committed, nothing says so yet
    assert {i.id for i in Store.open(store).list_images()} == {i.image_id for i in images.values()}
    assert podman_image_names(store) == {f"{registry.host}/kill2/{name}:1" for name in images}
    check_store(store)

    blobs_before = blob_gets(registry, {"kill2/a", "kill2/b"})
    rerun = tether(*args)
    _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert blob_gets(registry, {"kill2/a", "kill2/b"}) == blobs_before  # not a layer (nor config) again
    record = load_record(store, deployment)
    assert record is not None and record.ready
    assert {state.id for state in record.images} == {i.image_id for i in images.values()}
    status = tether("bound", "status", "--deployment-root", str(root), "--root", str(store), "--check", str(root))
    status.communicate(timeout=120)
    assert status.returncode == 0
    check_store(store)
