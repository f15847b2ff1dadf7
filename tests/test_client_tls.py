"""TLS: a registry with a private CA and client-certificate authentication, trusted through certs.d."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.harness import images as factory
from tests.harness.client_env import client_for, read_blob, write_registries_conf
from tests.harness.registry import RunningRegistry
from tests.harness.tls import PKIFiles, make_pki, start_tls_registry, write_certs_d
from tether.registry.errors import TLSError, TransportError
from tether.registry.manifest import Descriptor
from tether.registry.reference import parse_reference


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKIFiles:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory, pki: PKIFiles) -> Iterator[RunningRegistry]:
    running = start_tls_registry(tmp_path_factory.mktemp("tls-registry"), pki, require_client_cert=True)
    try:
        yield running
    finally:
        running.stop()


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_private_ca_and_client_certificate_from_certs_d(
    tls_registry: RunningRegistry, pki: PKIFiles, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    certs_d = tmp_path / "certs.d"
    write_certs_d(certs_d, tls_registry.host, pki, client=True)
    image = factory.simple_image(200, files=3)
    ref = parse_reference(f"{tls_registry.host}/secure/app:1")
    caplog.set_level(logging.DEBUG, logger="tether.registry.http")
    async with client_for(write_registries_conf(tmp_path, ""), cert_search_dirs=[certs_d]) as client:
        for digest, data in image.blobs():
            await client.upload_blob(ref, Descriptor("application/octet-stream", digest, len(data)), _chunks(data))
        assert await client.put_manifest(ref, image.manifest, image.media_type) == image.manifest_digest
        resolved = await client.resolve_image(ref)
        assert resolved.manifest.digest == image.manifest_digest
        for layer, descriptor in zip(image.layers, resolved.parsed.layers, strict=True):
            assert await read_blob(client, resolved.sources, descriptor) == layer.blob
    # the registry (Go net/http) offers HTTP/2 over TLS: API requests use it, blob bodies HTTP/1.1
    responses = [r.getMessage() for r in caplog.records if r.getMessage().startswith("< ")]
    api = [line for line in responses if "/blobs/" not in line]
    bulk = [line for line in responses if "/blobs/" in line and line.startswith(("< GET", "< PUT"))]
    assert api and all(" HTTP/2 " in line for line in api)
    assert bulk and all(" HTTP/1.1 " in line for line in bulk)


async def test_unknown_ca_refused(tls_registry: RunningRegistry, tmp_path: Path) -> None:
    async with client_for(write_registries_conf(tmp_path, "")) as client:
        with pytest.raises(TLSError, match="certificate verification failed: unable to get local issuer certificate"):
            await client.fetch_manifest(parse_reference(f"{tls_registry.host}/secure/app:1"))


async def test_client_certificate_required(tls_registry: RunningRegistry, pki: PKIFiles, tmp_path: Path) -> None:
    certs_d = tmp_path / "certs.d"
    write_certs_d(certs_d, tls_registry.host, pki, client=False)
    async with client_for(write_registries_conf(tmp_path, ""), cert_search_dirs=[certs_d]) as client:
        # TLS 1.3: the server's "certificate required" alert arrives after the handshake
        with pytest.raises(TransportError, match=f"GET {tls_registry.host}/v2/: "):
            await client.fetch_manifest(parse_reference(f"{tls_registry.host}/secure/app:1"))


async def test_cert_dir_option_and_insecure(tls_registry: RunningRegistry, pki: PKIFiles, tmp_path: Path) -> None:
    image = factory.simple_image(201, files=2, layers=1)
    ref = parse_reference(f"{tls_registry.host}/secure/other:1")
    host_dir = write_certs_d(tmp_path / "certs.d", tls_registry.host, pki, client=True)
    # --cert-dir names the directory itself (c/image SystemContext.DockerCertPath)
    async with client_for(write_registries_conf(tmp_path / "a", ""), cert_dir=host_dir) as client:
        for digest, data in image.blobs():
            await client.upload_blob(ref, Descriptor("application/octet-stream", digest, len(data)), _chunks(data))
        await client.put_manifest(ref, image.manifest, image.media_type)
    # insecure = true: the server certificate is not verified (the client certificate is still sent)
    only_client = tmp_path / "client-only"
    only_client.mkdir()
    for name in ("client.cert", "client.key"):
        (only_client / name).write_bytes((host_dir / name).read_bytes())
    conf = write_registries_conf(tmp_path / "b", f'[[registry]]\nlocation = "{tls_registry.host}"\ninsecure = true\n')
    async with client_for(conf, cert_dir=only_client) as client:
        assert (await client.fetch_manifest(ref)).digest == image.manifest_digest


async def test_h2_body_cut_early_does_not_stall_other_streams(
    tls_registry: RunningRegistry, pki: PKIFiles, tmp_path: Path
) -> None:
    """httpcore's h2 does not return flow-control credit for a stream closed early; the boundary reads
    such bodies out instead, so concurrent streams on the same connection keep flowing."""
    import hashlib
    import os

    import trio

    from tether.registry.client import _http

    certs_d = tmp_path / "certs.d"
    write_certs_d(certs_d, tls_registry.host, pki, client=True)
    data = os.urandom(6 << 20)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    ref = parse_reference(f"{tls_registry.host}/secure/h2:1")
    async with client_for(write_registries_conf(tmp_path, ""), cert_search_dirs=[certs_d]) as client:
        await client.upload_blob(ref, Descriptor("application/octet-stream", digest, len(data)), _chunks(data))
        endpoint = client._connections.endpoint(tls_registry.host, False)
        results: dict[int, tuple[int, bool]] = {}

        async def read(k: int) -> None:
            # the API (h2) client, not the bulk one: every stream shares one HTTP/2 connection
            response = await client._auth.request(endpoint, "GET", f"/v2/secure/h2/blobs/{digest}",
                                                  repository=ref.name, scopes=())
            assert response.http_version == "HTTP/2"
            body, truncated = await _http.read_capped(response, 100_000 if k % 2 else 1 << 30, what="blob")
            results[k] = (len(body), truncated)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for k in range(4):
                    nursery.start_soon(read, k)
    assert results == {0: (len(data), False), 1: (100_000, True), 2: (len(data), False), 3: (100_000, True)}
