"""Outages and stalls against real docker-registry processes: a registry stopped and started again is waited
for (bounded), blobs resume from their offsets; a transfer under the low-speed limit is resumed or fails naming
the blob. The end-to-end case runs ``tether pull`` while its registry is killed and restarted ~10 s later."""

from __future__ import annotations

import dataclasses
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import images as factory
from tests.harness.cli import tether_argv
from tests.harness.client_env import FAST_RETRIES, client_for, insecure_conf, read_blob
from tests.harness.faulty_proxy import Fault, FaultyProxy
from tests.harness.podman import Podman, short_runroot
from tests.harness.registry import RunningRegistry
from tether.registry.errors import ConnectionFailedError, TransportError
from tether.registry.reference import parse_reference
from tether.store.containers_storage import Store

BIG = 3_000_000
CUT = 1_000_000
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def big_image() -> factory.BuiltImage:
    layer = factory.build_layer([factory.large_file("payload.bin", BIG, seed=11)], "none")
    return factory.build_image([layer])


def _restart_later(registry: RunningRegistry, seconds: float) -> threading.Thread:
    def restart() -> None:
        time.sleep(seconds)
        registry.start()

    thread = threading.Thread(target=restart, daemon=True)
    thread.start()
    return thread


async def test_restarted_registry_is_waited_for(
    registry_factory: Callable[..., RunningRegistry], big_image: factory.BuiltImage, tmp_path: Path
) -> None:
    running = registry_factory()
    factory.push_image(running.host, "outage/app:1", big_image)
    policy = dataclasses.replace(FAST_RETRIES, outage_timeout=30.0, outage_max_delay=0.3)
    async with client_for(insecure_conf(tmp_path, running.host), retry_policy=policy) as client:
        ref = parse_reference(f"{running.host}/outage/app:1")
        resolved = await client.resolve_image(ref)
        # refused connections for ~3 s, for a manifest and then for a blob: both wait the restart out
        running.kill()
        restart = _restart_later(running, 3.0)
        assert (await client.fetch_manifest(ref)).digest == big_image.manifest_digest
        restart.join()
        running.kill()
        restart = _restart_later(running, 3.0)
        assert await read_blob(client, resolved.sources, resolved.parsed.layers[0]) == big_image.layers[0].blob
        restart.join()


async def test_outage_bounded(
    registry_factory: Callable[..., RunningRegistry], big_image: factory.BuiltImage, tmp_path: Path
) -> None:
    running = registry_factory()
    factory.push_image(running.host, "outage/app:1", big_image)
    policy = dataclasses.replace(FAST_RETRIES, outage_timeout=1.0, outage_max_delay=0.2)
    async with client_for(insecure_conf(tmp_path, running.host), retry_policy=policy) as client:
        resolved = await client.resolve_image(parse_reference(f"{running.host}/outage/app:1"))
        running.kill()
        with pytest.raises(ConnectionFailedError) as info:
            await read_blob(client, resolved.sources, resolved.parsed.layers[0])
    message = str(info.value)
    assert f"{running.host}/v2/outage/app/blobs/{big_image.layers[0].digest}: cannot connect" in message
    assert "given up after 1 s of failures" in message


async def test_stalled_blob_resumed_from_its_offset(
    registry: RunningRegistry, big_image: factory.BuiltImage, tmp_path: Path
) -> None:
    factory.push_image(registry.host, "stall/app:1", big_image)
    digest = big_image.layers[0].digest
    policy = dataclasses.replace(FAST_RETRIES, low_speed_limit=50_000, low_speed_time=1.5)
    with FaultyProxy(registry.host) as proxy:
        host = proxy.host
        proxy.add(Fault("trickle", path_contains=digest, after=CUT, stall_seconds=0.5))
        async with client_for(insecure_conf(tmp_path, host), retry_policy=policy) as client:
            resolved = await client.resolve_image(parse_reference(f"{host}/stall/app:1"))
            assert await read_blob(client, resolved.sources, resolved.parsed.layers[0]) == big_image.layers[0].blob
    gets = [r for r in proxy.requests if r.method == "GET" and digest in r.path]
    assert [(r.fault, r.status) for r in gets] == [("trickle", 200), (None, 206)]
    assert gets[1].range is not None
    assert int(gets[1].range.removeprefix("bytes=").rstrip("-")) >= CUT  # resumed at its offset, not at 0


async def test_stall_everywhere_fails_naming_the_blob(
    registry: RunningRegistry, big_image: factory.BuiltImage, tmp_path: Path
) -> None:
    factory.push_image(registry.host, "stall/app:1", big_image)
    digest = big_image.layers[0].digest
    policy = dataclasses.replace(FAST_RETRIES, attempts=2, low_speed_limit=50_000, low_speed_time=1.0)
    with FaultyProxy(registry.host) as proxy:
        host = proxy.host
        proxy.add(Fault("trickle", path_contains=digest, after=CUT, stall_seconds=0.3, times=10))
        async with client_for(insecure_conf(tmp_path, host), retry_policy=policy) as client:
            resolved = await client.resolve_image(parse_reference(f"{host}/stall/app:1"))
            with pytest.raises(TransportError) as info:
                await read_blob(client, resolved.sources, resolved.parsed.layers[0])
    message = str(info.value)
    assert f"blob {digest} of {host}/stall/app" in message
    assert "slower than 50000 bytes/s for 1 s" in message
    assert proxy.count("GET", digest) == 2


def test_pull_survives_a_registry_restart(
    registry_factory: Callable[..., RunningRegistry], tmp_path: Path
) -> None:
    """``tether pull`` with its default retry policy: the registry is killed in the middle of the largest blob
    and started again ~10 s later; the pull completes, each blob resumed where it stopped (the bytes served
    are about the image's size), and the store passes ``tether check`` and is read by podman."""
    running = registry_factory()
    big = factory.build_layer([factory.large_file("big.bin", 6_000_000, seed=21)], "gzip")
    small = factory.build_layer([factory.large_file("small.bin", 200_000, seed=22)], "gzip")
    image = factory.build_image([small, big])
    factory.push_image(running.host, "outage/pull:1", image)
    with FaultyProxy(running.host) as proxy:
        host = proxy.host
        # hold the big blob after 2 MB so that the registry can be killed mid-transfer
        proxy.add(Fault("stall", path_contains=big.digest, after=2_000_000, stall_seconds=2.0))
        conf = tmp_path / "registries.conf"
        conf.write_text(f'[[registry]]\nlocation = "{host}"\ninsecure = true\n')
        store = tmp_path / "store"
        proc = subprocess.Popen(
            tether_argv("pull", "--root", str(store), "--runroot", str(tmp_path / "run"),
                        "--registries-conf", str(conf), "--progress", "none", f"{host}/outage/pull:1"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        try:
            deadline = time.monotonic() + 60
            while not any(r.fault == "stall" and r.body_bytes for r in proxy.requests):  # 2 MB sent, held
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "the big blob never reached the proxy"
                time.sleep(0.02)
            running.kill()
            time.sleep(10)
            assert proc.poll() is None, f"the pull gave up during the outage: {proc.communicate()}"
            running.start()
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, err
    served = proxy.body_bytes("GET", "/blobs/")
    blobs = sum(len(data) for _, data in image.blobs())
    assert blobs <= served <= blobs + 300_000, (served, blobs)  # resumed, not restarted
    resumed = [r for r in proxy.requests if big.digest in r.path and r.status == 206]
    assert resumed, [(r.method, r.path[-20:], r.range, r.fault, r.status, r.body_bytes) for r in proxy.requests]
    assert all(r.range and int(r.range[6:].rstrip("-")) >= 2_000_000 for r in resumed)
    check = subprocess.run(tether_argv("check", "--root", str(store), "--runroot",
                                       str(tmp_path / "run")), capture_output=True, text=True, cwd=REPO)
    assert check.returncode == 0, check.stdout + check.stderr
    assert Store.open(store).find_image(f"{host}/outage/pull:1").id == image.config_digest.split(":")[1]
    podman = Podman(root=store, runroot=short_runroot())
    try:
        assert podman.json("image", "inspect", f"{host}/outage/pull:1")[0]["Id"] == image.config_digest[7:]
    finally:
        for path in (podman.runroot, store / "overlay"):
            subprocess.run(["umount", "-R", "-l", str(path)], capture_output=True)
