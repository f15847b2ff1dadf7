"""Writers sharing one store: podman and the real ``tether pull`` contending for its lock files, and two tether
processes."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.harness import images as factory
from tests.harness.cli import tether_argv
from tests.harness.podman import Podman, container_env
from tests.harness.registry import RunningRegistry
from tests.harness.store_pull import pull_into_store
from tests.test_store_crash import assert_no_orphans, tether_pull
from tether.store.containers_storage import Store

REPO_ROOT = Path(__file__).resolve().parent.parent


def images_sharing_a_base(count: int, seed: int) -> list[factory.BuiltImage]:
    base = factory.build_layer([factory.directory("etc"), *factory.many_small_files("base", 200, seed=seed)])
    return [
        factory.build_image([base, factory.build_layer(factory.many_small_files(f"app{n}", 100, seed=seed + n + 1))])
        for n in range(count)
    ]


def store_lock_inodes(root: Path) -> set[int]:
    return {os.stat(root / name).st_ino for name in ("storage.lock", "overlay-layers/layers.lock",
                                                     "overlay-images/images.lock")}


def blocked_on(inodes: set[int]) -> set[int]:
    """Processes waiting (``->`` in /proc/locks) for a POSIX lock on one of ``inodes``."""
    waiting = set()
    with open("/proc/locks", encoding="ascii") as locks:
        for line in locks:
            fields = line.split()
            if len(fields) < 6 or fields[1] != "->":
                continue
            pid, device_inode = int(fields[5]), fields[6]
            if int(device_inode.rsplit(":", 1)[1]) in inodes:
                waiting.add(pid)
    return waiting


@pytest.mark.parametrize("round_", range(3))
def test_podman_and_tether_contend_for_the_layers_lock(round_: int, registry: RunningRegistry,
                                                       podman: Podman, tmp_path: Path) -> None:
    """Both start while the test holds layers.lock (an fcntl lock, as c/storage's): each blocks inside its lock
    acquisition (seen in /proc/locks) before the lock is released, so their writes of the shared base layer
    and of their own layers interleave; both images end complete, the base stored once."""
    ours, theirs = images_sharing_a_base(2, seed=500 + 10 * round_)
    factory.push_image(registry.host, f"store/conc{round_}-a:v1", ours)
    factory.push_image(registry.host, f"store/conc{round_}-b:v1", theirs)
    Store.open(podman.root)  # the lock files exist
    inodes = store_lock_inodes(podman.root)
    fd = os.open(podman.root / "overlay-layers" / "layers.lock", os.O_RDWR)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    try:
        theirs_proc = subprocess.Popen([*podman.base(), "pull", "-q", "--tls-verify=false",
                                        f"{registry.host}/store/conc{round_}-b:v1"], stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True, env=container_env(podman.runroot))
        conf = tmp_path / "registries.conf"
        conf.write_text(f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n')
        ours_proc = subprocess.Popen(tether_argv("pull", "--root", str(podman.root), "--registries-conf", str(conf),
                                                 "--tls-verify=false", "--progress", "none",
                                                 f"{registry.host}/store/conc{round_}-a:v1"), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT)
        deadline = time.monotonic() + 60
        while not {theirs_proc.pid, ours_proc.pid} <= blocked_on(inodes):
            assert theirs_proc.poll() is None and ours_proc.poll() is None, "a puller ended while the lock was held"
            assert time.monotonic() < deadline, f"not both waiting for the store's locks: {blocked_on(inodes)}"
            time.sleep(0.01)
    finally:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        os.close(fd)
    _, err = theirs_proc.communicate(timeout=300)
    assert theirs_proc.returncode == 0, err
    _, err = ours_proc.communicate(timeout=300)
    assert ours_proc.returncode == 0, err
    ids = {i["Id"] for i in podman.images()}
    assert ids == {ours.image_id, theirs.image_id}
    store = Store.open(podman.root)
    assert {i.id for i in store.list_images()} == ids
    layers = json.loads((podman.root / "overlay-layers" / "layers.json").read_text())
    assert len(layers) == len({r["id"] for r in layers}) == 3  # the shared base exactly once
    check = subprocess.run(tether_argv("check", "--root", str(podman.root)),
                           capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert check.returncode == 0, check.stdout
    for image in (ours, theirs):
        inspect = podman.json("image", "inspect", image.image_id)[0]
        assert inspect["RootFS"]["Layers"] == [layer.diff_id for layer in image.layers]
    assert_no_orphans(podman.root, "overlay")


def test_two_tethers_same_store(registry: RunningRegistry, tmp_path: Path) -> None:
    images = images_sharing_a_base(2, seed=900)
    factory.push_image(registry.host, "store/two-a:v1", images[0])
    factory.push_image(registry.host, "store/two-b:v1", images[1])
    root = tmp_path / "root"
    results: list[subprocess.CompletedProcess[str]] = []

    def run(ref: str) -> None:
        results.append(tether_pull(root, "overlay", registry, ref))

    threads = [threading.Thread(target=run, args=(ref,))
               for ref in ("store/two-a:v1", "store/two-b:v1", "store/two-a:v1")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3
    for proc in results:
        assert proc.returncode == 0, proc.stderr
    store = Store.open(root)
    assert {i.id for i in store.list_images()} == {images[0].image_id, images[1].image_id}
    assert len(store.list_layers()) == 3
    assert_no_orphans(root, "overlay")


def test_running_podman_service_sees_tether_changes(registry: RunningRegistry, podman: Podman) -> None:
    """A long-lived podman (``system service``) holding the store in memory reloads after tether writes:
    the 64-byte last-writer tokens in layers.lock/images.lock tell it the store changed."""
    import time

    import httpx

    image = factory.simple_image(77, files=3)
    factory.push_image(registry.host, "store/svc:v1", image)
    sock = podman.runroot / "api.sock"
    log = podman.runroot / "service.log"
    with open(log, "wb") as log_file:
        service = subprocess.Popen([*podman.base(), "system", "service", "--time", "0", f"unix://{sock}"],
                                   stdout=subprocess.DEVNULL, stderr=log_file)
    try:
        for _ in range(300):  # readiness, not timing: wait for the socket to appear
            if sock.exists() or service.poll() is not None:
                break
            time.sleep(0.05)
        assert sock.exists(), log.read_text()
        with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://d/v4.0.0/libpod",
                          timeout=60) as api:
            assert api.get("/images/json").json() == []
            store = Store.open(podman.root)
            pull_into_store(store, registry.host, "store/svc:v1")
            listed = api.get("/images/json").json()
            assert [i["Id"] for i in listed] == [image.image_id]
            inspect = api.get(f"/images/{image.image_id}/json").json()
            assert inspect["RootFS"]["Layers"] == [layer.diff_id for layer in image.layers]
            store.delete_image(image.image_id)
            assert api.get("/images/json").json() == []
    finally:
        service.terminate()
        service.wait(timeout=60)
