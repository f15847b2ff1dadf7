"""A ``tether bound sync`` killed (SIGKILL) in the middle of a layer leaves the deployment not ready and the
store consistent; the next sync completes it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.bound import make_root
from tests.harness.faulty_proxy import Fault, FaultyProxy
from tests.harness.images import push_image, simple_image
from tests.harness.podman import Podman, short_runroot
from tests.harness.registry import RunningRegistry
from tether.engine.bound.deployments import root_deployments
from tether.engine.bound.records import load_record
from tether.store.containers_storage import Store


@pytest.fixture
def proxy(registry: RunningRegistry) -> Iterator[FaultyProxy]:
    with FaultyProxy(upstream=registry.host) as running:
        yield running


def tether(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tether", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )


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
    status = subprocess.run([sys.executable, "-m", "tether", "bound", "status", "--deployment-root", str(root),
                             "--root", str(store), "--check", str(root)], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
    assert status.returncode == 1

    # podman reads what the killed sync left (and cleans like c/storage); tether's check agrees.
    podman = Podman(root=store, runroot=short_runroot())
    try:
        listed = podman.json("images", "--format", "json")
        assert f"{host}/kill1/b:1" not in {n for i in listed for n in i.get("Names") or []}
    finally:
        for path in (podman.runroot, store / "overlay"):
            subprocess.run(["umount", "-R", str(path)], capture_output=True)
        shutil.rmtree(podman.runroot, ignore_errors=True)
    assert Store.open(store).check() == []

    rerun = tether(*args)
    _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    status = subprocess.run([sys.executable, "-m", "tether", "bound", "status", "--deployment-root", str(root),
                             "--root", str(store), "--format", "json"], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parent.parent)
    (doc,) = json.loads(status.stdout)
    assert doc["ready"] is True
    assert {i["id"] for i in doc["images"]} >= {slow.image_id}
