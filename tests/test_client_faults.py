"""Blob and manifest fetches through a misbehaving proxy in front of a real registry: cut streams,
500/429 answers, ignored Range, corrupted bytes, stalls, and an endpoint that keeps failing mid-blob."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import images as factory
from tests.harness.client_env import FAST_RETRIES, client_for, insecure_conf, read_blob, write_registries_conf
from tests.harness.faulty_proxy import Fault, FaultyProxy
from tests.harness.registry import RunningRegistry
from tether.registry.client import RetryPolicy
from tether.registry.errors import DigestMismatchError, HTTPStatusError, TransportError
from tether.registry.manifest import Descriptor
from tether.registry.reference import parse_reference

BIG = 3_000_000
CUT = 1_000_000


@pytest.fixture(scope="module")
def big_image(registry: RunningRegistry) -> factory.BuiltImage:
    layer = factory.build_layer([factory.large_file("payload.bin", BIG, seed=7)], "none")
    image = factory.build_image([layer])
    factory.push_image(registry.host, "faults/big:1", image)
    return image


@pytest.fixture
def proxy(registry: RunningRegistry) -> Iterator[FaultyProxy]:
    with FaultyProxy(registry.host) as running:
        yield running


def _layer(image: factory.BuiltImage) -> Descriptor:
    layer = image.layers[0]
    return Descriptor(factory.OCI_LAYER["none"], layer.digest, layer.size)


async def _resolve_via(proxy: FaultyProxy, tmp_path: Path, policy: RetryPolicy = FAST_RETRIES) -> object:
    async with client_for(insecure_conf(tmp_path, proxy.host), retry_policy=policy) as client:
        return await client.resolve_image(parse_reference(f"{proxy.host}/faults/big:1"))


def _blob_gets(proxy: FaultyProxy, digest: str) -> list[tuple[str | None, str | None, int | None]]:
    return [(r.range, r.fault, r.status) for r in proxy.requests if r.method == "GET" and digest in r.path]


async def test_cut_stream_resumed_with_range(proxy: FaultyProxy, big_image: factory.BuiltImage, tmp_path: Path) -> None:
    proxy.add(Fault("cut", path_contains=big_image.layers[0].digest, after=CUT))
    async with client_for(insecure_conf(tmp_path, proxy.host)) as client:
        resolved = await client.resolve_image(parse_reference(f"{proxy.host}/faults/big:1"))
        assert await read_blob(client, resolved.sources, resolved.parsed.layers[0]) == big_image.layers[0].blob
    gets = _blob_gets(proxy, big_image.layers[0].digest)
    assert gets[0] == (None, "cut", 200)
    assert gets[1][0] is not None and gets[1][0].startswith("bytes=") and gets[1][2] == 206
    assert int(gets[1][0].removeprefix("bytes=").rstrip("-")) >= CUT - 65536  # resumed near the cut, not at 0
    assert len(gets) == 2


async def test_range_ignored_after_a_cut(proxy: FaultyProxy, big_image: factory.BuiltImage, tmp_path: Path) -> None:
    # first GET cut mid-way; the resuming GET's Range is dropped so the registry answers 200 with everything
    digest = big_image.layers[0].digest
    proxy.add(Fault("cut", path_contains=digest, after=CUT), Fault("ignore_range", path_contains=digest))
    async with client_for(insecure_conf(tmp_path, proxy.host)) as client:
        resolved = await client.resolve_image(parse_reference(f"{proxy.host}/faults/big:1"))
        assert await read_blob(client, resolved.sources, resolved.parsed.layers[0]) == big_image.layers[0].blob
    gets = _blob_gets(proxy, big_image.layers[0].digest)
    assert [(fault, status) for _, fault, status in gets] == [("cut", 200), ("ignore_range", 200)]
    assert gets[1][0] is not None  # the client did ask for a range


async def test_500_and_429_retried(proxy: FaultyProxy, big_image: factory.BuiltImage, tmp_path: Path) -> None:
    proxy.add(
        Fault("status", path_contains="/manifests/", status=429, retry_after="0"),
        Fault("status", path_contains="/blobs/", status=500, times=2),
        Fault("status", path_contains="/blobs/", status=503, retry_after="0"),
    )
    async with client_for(insecure_conf(tmp_path, proxy.host)) as client:
        resolved = await client.resolve_image(parse_reference(f"{proxy.host}/faults/big:1"))
        assert resolved.manifest.digest == big_image.manifest_digest
        assert await read_blob(client, resolved.sources, resolved.parsed.layers[0]) == big_image.layers[0].blob
    assert proxy.count("GET", "/manifests/") == 2
    statuses = [r.status for r in proxy.requests if r.method == "GET" and "/blobs/" in r.path]
    # config: 500, 500, 503, 200; layer: 200
    assert statuses == [500, 500, 503, 200, 200]


async def test_retries_exhausted_names_the_status(
    proxy: FaultyProxy, big_image: factory.BuiltImage, tmp_path: Path
) -> None:
    proxy.add(Fault("status", path_contains="/manifests/", status=502, times=100))
    async with client_for(insecure_conf(tmp_path, proxy.host)) as client:
        with pytest.raises(HTTPStatusError, match=f"GET {proxy.host}/v2/faults/big/manifests/1: 502 UNAVAILABLE"):
            await client.fetch_manifest(parse_reference(f"{proxy.host}/faults/big:1"))
    assert proxy.count("GET", "/manifests/") == FAST_RETRIES.attempts


async def test_corrupted_blob_refused(proxy: FaultyProxy, big_image: factory.BuiltImage, tmp_path: Path) -> None:
    digest = big_image.layers[0].digest
    proxy.add(Fault("corrupt", path_contains=digest, after=BIG // 2))
    async with client_for(insecure_conf(tmp_path, proxy.host)) as client:
        resolved = await client.resolve_image(parse_reference(f"{proxy.host}/faults/big:1"))
        with pytest.raises(DigestMismatchError, match=f"blob {digest} .*: the bytes received have digest sha256:"):
            await read_blob(client, resolved.sources, resolved.parsed.layers[0])


async def test_corrupted_manifest_by_digest_refused(
    proxy: FaultyProxy, big_image: factory.BuiltImage, tmp_path: Path
) -> None:
    proxy.add(Fault("corrupt", path_contains="/manifests/", after=40))
    async with client_for(insecure_conf(tmp_path, proxy.host)) as client:
        with pytest.raises(DigestMismatchError, match=f"expected {big_image.manifest_digest}"):
            await client.fetch_manifest(parse_reference(f"{proxy.host}/faults/big@{big_image.manifest_digest}"))


async def test_descriptor_smaller_than_blob_never_overread(
    registry: RunningRegistry, big_image: factory.BuiltImage, tmp_path: Path
) -> None:
    layer = big_image.layers[0]
    lying = Descriptor(factory.OCI_LAYER["none"], layer.digest, layer.size - 10)
    async with client_for(insecure_conf(tmp_path, registry.host)) as client:
        resolved = await client.resolve_image(parse_reference(f"{registry.host}/faults/big:1"))
        with pytest.raises(DigestMismatchError, match="the descriptor says"):
            await read_blob(client, resolved.sources, lying)


async def test_stalled_stream_read_timeout_resumed(
    proxy: FaultyProxy, big_image: factory.BuiltImage, tmp_path: Path
) -> None:
    proxy.add(Fault("stall", path_contains=big_image.layers[0].digest, after=CUT, stall_seconds=3.0))
    policy = dataclasses.replace(FAST_RETRIES, read_timeout=0.5)
    async with client_for(insecure_conf(tmp_path, proxy.host), retry_policy=policy) as client:
        resolved = await client.resolve_image(parse_reference(f"{proxy.host}/faults/big:1"))
        assert await read_blob(client, resolved.sources, resolved.parsed.layers[0]) == big_image.layers[0].blob
    gets = _blob_gets(proxy, big_image.layers[0].digest)
    assert gets[0][1] == "stall" and gets[1][0] is not None and gets[1][2] == 206


async def test_failing_mirror_mid_blob_primary_serves_the_rest(
    registry: RunningRegistry, big_image: factory.BuiltImage, tmp_path: Path
) -> None:
    digest = big_image.layers[0].digest
    # the mirror and the primary are the same registry behind two proxies; the primary's records
    # what is asked of it
    with FaultyProxy(registry.host) as mirror, FaultyProxy(registry.host) as primary:
        # the mirror's proxy cuts the blob stream after CUT bytes, then answers 503 to every retry
        mirror.add(
            Fault("cut", path_contains=digest, after=CUT),
            Fault("status", path_contains=digest, status=503, times=1000),
        )
        conf = write_registries_conf(
            tmp_path,
            f'[[registry]]\nlocation = "{primary.host}"\ninsecure = true\n'
            f'[[registry.mirror]]\nlocation = "{mirror.host}"\ninsecure = true\n',
        )
        async with client_for(conf) as client:
            resolved = await client.resolve_image(parse_reference(f"{primary.host}/faults/big:1"))
            assert resolved.manifest.source.mirror is True
            assert await read_blob(client, resolved.sources, resolved.parsed.layers[0]) == big_image.layers[0].blob
        mirror_gets = _blob_gets(mirror, digest)
        primary_gets = _blob_gets(primary, digest)
    assert [status for _, _, status in mirror_gets] == [200] + [503] * FAST_RETRIES.attempts
    (primary_get,) = primary_gets
    assert primary_get[0] is not None and primary_get[2] == 206  # only the rest came from the primary


async def test_connection_refused_gives_up_quickly(tmp_path: Path) -> None:
    with FaultyProxy("127.0.0.1:9") as dead:
        host = dead.host
    # nothing listens there any more
    async with client_for(insecure_conf(tmp_path, host)) as client:
        with pytest.raises(TransportError, match=f"GET {host}/v2/: cannot connect"):
            await client.fetch_manifest(parse_reference(f"{host}/faults/big:1"))


async def test_consumer_stopping_early_leaves_nothing_behind(
    registry: RunningRegistry, big_image: factory.BuiltImage, tmp_path: Path
) -> None:
    # (pytest runs with warnings as errors: an unclosed httpx/httpcore generator would fail this test)
    async with client_for(insecure_conf(tmp_path, registry.host)) as client:
        resolved = await client.resolve_image(parse_reference(f"{registry.host}/faults/big:1"))
        for _ in range(3):
            async with client.open_blob(resolved.sources, resolved.parsed.layers[0]) as chunks:
                async for chunk in chunks:
                    assert chunk
                    break
        # the client is still usable afterwards
        assert await read_blob(client, resolved.sources, resolved.parsed.layers[0]) == big_image.layers[0].blob
    import gc

    gc.collect()


async def test_http_proxy_from_environment(
    registry: RunningRegistry, big_image: factory.BuiltImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY is honoured for non-loopback registries (as Go's ProxyFromEnvironment does for c/image):
    a name that does not resolve reaches the registry through the proxy."""
    with FaultyProxy(registry.host) as forward:
        monkeypatch.setenv("HTTP_PROXY", f"http://{forward.host}")
        monkeypatch.setenv("HTTPS_PROXY", f"http://{forward.host}")
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        name = "registry.invalid:5000"
        async with client_for(insecure_conf(tmp_path, name)) as client:
            fetched = await client.fetch_manifest(parse_reference(f"{name}/faults/big:1"))
        assert fetched.digest == big_image.manifest_digest
        assert any(r.path == f"http://{name}/v2/faults/big/manifests/1" for r in forward.requests)


async def test_cancelled_mid_blob_then_client_still_works(
    registry: RunningRegistry, big_image: factory.BuiltImage, tmp_path: Path
) -> None:
    import trio.lowlevel

    async with client_for(insecure_conf(tmp_path, registry.host)) as client:
        resolved = await client.resolve_image(parse_reference(f"{registry.host}/faults/big:1"))
        with trio.CancelScope() as scope:
            async with client.open_blob(resolved.sources, resolved.parsed.layers[0]) as chunks:
                async for _ in chunks:
                    scope.cancel()
                    await trio.lowlevel.checkpoint()  # the cancellation lands here, mid-stream
        assert scope.cancelled_caught
        assert await read_blob(client, resolved.sources, resolved.parsed.layers[0]) == big_image.layers[0].blob
