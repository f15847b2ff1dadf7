"""Manifest (and blob) redirects against real docker-registry processes behind a redirecting proxy: followed on the
same host with the credentials, to another host without them, and a loop stopped with a message saying so."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import images as factory
from tests.harness.client_env import client_for, insecure_conf, read_blob, write_auth_file
from tests.harness.faulty_proxy import Fault, FaultyProxy
from tests.harness.registry import RunningRegistry
from tether.registry.client.auth import MAX_REDIRECTS
from tether.registry.errors import RegistryError
from tether.registry.reference import parse_reference

USER = ("alice", "wonder-land")


@pytest.fixture(scope="module")
def image() -> factory.BuiltImage:
    return factory.simple_image(seed=41, files=3, layers=2)


@pytest.fixture
def private(registry_factory: Callable[..., RunningRegistry], image: factory.BuiltImage) -> RunningRegistry:
    running = registry_factory(htpasswd={USER[0]: USER[1]})
    factory.push_image(running.host, "redir/app:1", image, credentials=USER)
    return running


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_same_host_manifest_redirect_keeps_credentials(
    private: RunningRegistry, image: factory.BuiltImage, tmp_path: Path, status: int
) -> None:
    with FaultyProxy(private.host) as proxy:
        # the registry "moves" the manifest to the same path with a query, once
        proxy.add(Fault("redirect", path_contains="/manifests/", status=status, location="{path}?moved=1"))
        conf = insecure_conf(tmp_path, proxy.host)
        auth = write_auth_file(tmp_path / "auth", basic={proxy.host: USER})
        async with client_for(conf, auth) as client:
            resolved = await client.resolve_image(parse_reference(f"{proxy.host}/redir/app:1"))
            assert resolved.manifest.digest == image.manifest_digest
            layer = resolved.parsed.layers[0]
            assert await read_blob(client, resolved.sources, layer) == image.layers[0].blob
    gets = [r for r in proxy.requests if r.method == "GET" and "/manifests/" in r.path]
    assert [(r.status, r.path.endswith("?moved=1"), r.authorization) for r in gets[:2]] == [
        (status, False, "Basic"), (200, True, "Basic")]


async def test_cross_host_manifest_redirect_drops_credentials(
    private: RunningRegistry, registry: RunningRegistry, image: factory.BuiltImage, tmp_path: Path
) -> None:
    # a CDN-like second host (an anonymous registry with the same content) serves what the private one points at
    factory.push_image(registry.host, "redir/app:1", image)
    with FaultyProxy(private.host) as front, FaultyProxy(registry.host) as cdn:
        front.add(Fault("redirect", path_contains="/manifests/", status=307, times=10,
                        location=f"http://{cdn.host}{{path}}"))
        conf = insecure_conf(tmp_path, front.host)
        auth = write_auth_file(tmp_path / "auth", basic={front.host: USER, cdn.host: ("leak", "leak")})
        async with client_for(conf, auth) as client:
            resolved = await client.resolve_image(parse_reference(f"{front.host}/redir/app:1"))
    assert resolved.manifest.digest == image.manifest_digest
    assert [r.status for r in front.requests if "/manifests/" in r.path] == [307]
    served = [r for r in cdn.requests if "/manifests/" in r.path]
    assert [r.status for r in served] == [200]
    assert all(r.authorization is None for r in cdn.requests), "credentials followed a redirect to another host"
    assert any(r.authorization == "Basic" for r in front.requests)


async def test_redirect_loop_named(registry: RunningRegistry, image: factory.BuiltImage, tmp_path: Path) -> None:
    factory.push_image(registry.host, "redir/loop:1", image)
    with FaultyProxy(registry.host) as proxy:
        host = proxy.host
        proxy.add(Fault("redirect", path_contains="/manifests/", status=302, times=1000))
        async with client_for(insecure_conf(tmp_path, host)) as client:
            with pytest.raises(RegistryError) as info:
                await client.fetch_manifest(parse_reference(f"{host}/redir/loop:1"))
    message = str(info.value)
    assert f"more than {MAX_REDIRECTS} redirects (a redirect loop?)" in message
    assert f"{host}/v2/redir/loop/manifests/1" in message
    assert proxy.count("GET", "/manifests/") == MAX_REDIRECTS + 1
