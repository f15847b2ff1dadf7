"""Writers sharing one store: podman pulling while tether writes, and two tether processes."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

from tests.harness import images as factory
from tests.harness.podman import Podman
from tests.harness.registry import RunningRegistry
from tests.harness.store_pull import pull_into_store
from tests.test_store_crash import assert_no_orphans, run_pull
from tether.store.containers_storage import Store


def images_sharing_a_base(count: int, seed: int) -> list[factory.BuiltImage]:
    base = factory.build_layer([factory.directory("etc"), *factory.many_small_files("base", 200, seed=seed)])
    return [
        factory.build_image([base, factory.build_layer(factory.many_small_files(f"app{n}", 100, seed=seed + n + 1))])
        for n in range(count)
    ]


def test_podman_pulls_while_tether_writes(registry: RunningRegistry, podman: Podman) -> None:
    ours, theirs, third = images_sharing_a_base(3, seed=500)
    factory.push_image(registry.host, "store/conc-a:v1", ours)
    factory.push_image(registry.host, "store/conc-b:v1", theirs)
    factory.push_image(registry.host, "store/conc-c:v1", third)
    store = Store.open(podman.root)
    proc = subprocess.Popen([*podman.base(), "pull", "-q", "--tls-verify=false",
                             f"{registry.host}/store/conc-b:v1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        pull_into_store(store, registry.host, "store/conc-a:v1")
        pull_into_store(store, registry.host, "store/conc-c:v1")
    finally:
        _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    ids = {i["Id"] for i in podman.images()}
    assert ids == {ours.image_id, theirs.image_id, third.image_id}
    assert {i.id for i in store.list_images()} == ids
    layers = json.loads((podman.root / "overlay-layers" / "layers.json").read_text())
    assert len(layers) == len({r["id"] for r in layers}) == 4  # the shared base exactly once
    assert_no_orphans(podman.root, "overlay")


def test_two_tethers_same_store(registry: RunningRegistry, tmp_path: Path) -> None:
    images = images_sharing_a_base(2, seed=900)
    factory.push_image(registry.host, "store/two-a:v1", images[0])
    factory.push_image(registry.host, "store/two-b:v1", images[1])
    root = tmp_path / "root"
    results: list[subprocess.CompletedProcess[str]] = []

    def run(ref: str) -> None:
        results.append(run_pull(root, registry.host, ref, "overlay"))

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
