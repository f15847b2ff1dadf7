"""The registry client against real docker-registry processes: anonymous, Basic, Bearer (token server),
mirrors from registries.conf, blocked registries, short names, and push read back by skopeo."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import tether.registry.client as client_module
import tether.registry.client.push as push_module
from tests.harness import images as factory
from tests.harness.client_env import client_for, insecure_conf, read_blob, write_auth_file, write_registries_conf
from tests.harness.registry import RunningRegistry
from tests.harness.token_server import TokenServer
from tether.registry.errors import (
    AuthenticationError,
    BlockedRegistryError,
    HTTPStatusError,
    PlatformError,
    TransportError,
)
from tether.registry.manifest import DOCKER_MANIFEST_LIST, OCI_INDEX, Descriptor, ImageManifest, Platform
from tether.registry.reference import parse_reference
from tether.registry.registries_conf import resolve_short_name

Factory = Callable[..., RunningRegistry]


def _image(seed: int, **options: Any) -> factory.BuiltImage:
    return factory.simple_image(seed, files=3, **options)


# ---- anonymous


async def test_anonymous_resolve_and_verified_blobs(registry: RunningRegistry, tmp_path: Path) -> None:
    image = _image(101, labels={"org.example": "yes"})
    factory.push_image(registry.host, "client/anon:1.0", image)
    conf = insecure_conf(tmp_path, registry.host)
    async with client_for(conf) as client:
        resolved = await client.resolve_image(parse_reference(f"{registry.host}/client/anon:1.0"))
        assert resolved.manifest.digest == image.manifest_digest
        assert resolved.manifest.raw == image.manifest
        assert resolved.index is None
        assert resolved.config_raw == image.config
        assert resolved.config.diff_ids == tuple(layer.diff_id for layer in image.layers)
        assert dict(resolved.config.labels) == {"org.example": "yes"}
        assert resolved.manifest.source.mirror is False
        assert resolved.sources[0].reference.domain == registry.host
        for layer, descriptor in zip(image.layers, resolved.parsed.layers, strict=True):
            assert await read_blob(client, resolved.sources, descriptor) == layer.blob
        # the same image by digest: the digest is verified and recorded
        by_digest = await client.fetch_manifest(
            parse_reference(f"{registry.host}/client/anon@{image.manifest_digest}")
        )
        assert by_digest.digest == image.manifest_digest and by_digest.raw == image.manifest


async def test_http_needs_insecure_or_tls_verify_false(registry: RunningRegistry, tmp_path: Path) -> None:
    image = _image(102)
    factory.push_image(registry.host, "client/plain:1", image)
    ref = parse_reference(f"{registry.host}/client/plain:1")
    async with client_for(write_registries_conf(tmp_path, "")) as client:
        with pytest.raises(TransportError, match=r"TLS handshake failed: .*plain HTTP.*--tls-verify=false"):
            await client.fetch_manifest(ref)
    async with client_for(write_registries_conf(tmp_path, ""), tls_verify=False) as client:
        assert (await client.fetch_manifest(ref)).digest == image.manifest_digest


async def test_error_messages_name_operation_registry_and_code(registry: RunningRegistry, tmp_path: Path) -> None:
    conf = insecure_conf(tmp_path, registry.host)
    async with client_for(conf) as client:
        with pytest.raises(HTTPStatusError) as info:
            await client.fetch_manifest(parse_reference(f"{registry.host}/client/missing:1.0"))
    assert str(info.value) == f"GET {registry.host}/v2/client/missing/manifests/1.0: 404 MANIFEST_UNKNOWN"
    assert info.value.status == 404 and info.value.code == "MANIFEST_UNKNOWN"
    factory.push_image(registry.host, "client/present:1.0", _image(103))
    async with client_for(conf) as client:
        with pytest.raises(HTTPStatusError) as info:
            await client.fetch_manifest(parse_reference(f"{registry.host}/client/present:2.0"))
    assert str(info.value) == f"GET {registry.host}/v2/client/present/manifests/2.0: 404 MANIFEST_UNKNOWN"


@pytest.mark.parametrize("docker", [False, True])
async def test_index_platform_choice(registry: RunningRegistry, tmp_path: Path, docker: bool) -> None:
    amd64 = _image(110, docker=docker, architecture="amd64")
    arm64 = _image(111, docker=docker, architecture="arm64", variant="v8")
    armv6 = _image(112, docker=docker, architecture="arm", variant="v6")
    index = factory.build_index([amd64, arm64, armv6], docker=docker)
    repo = f"client/multi-{'docker' if docker else 'oci'}"
    factory.push_image(registry.host, f"{repo}:1", index)
    ref = parse_reference(f"{registry.host}/{repo}:1")
    async with client_for(insecure_conf(tmp_path, registry.host)) as client:
        chosen = await client.resolve_image(ref, platform=Platform("linux", "arm", "v7"))
        assert chosen.manifest.digest == armv6.manifest_digest  # v7 falls back to v6
        assert chosen.index is not None and chosen.index.digest == index.manifest_digest
        assert chosen.index.media_type == (DOCKER_MANIFEST_LIST if docker else OCI_INDEX)
        assert chosen.config.architecture == "arm"
        assert (await client.resolve_image(ref, platform=Platform("linux", "arm64"))).manifest.digest == (
            arm64.manifest_digest
        )
        assert (await client.resolve_image(ref, platform=Platform("linux", "amd64"))).config_raw == amd64.config
        with pytest.raises(PlatformError, match='architecture "s390x", variant "", OS "linux"'):
            await client.resolve_image(ref, platform=Platform("linux", "s390x"))


# ---- Basic (htpasswd)


async def test_basic_auth(registry_factory: Factory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secured = registry_factory(htpasswd={"alice": "s3cret-pw"})
    image = _image(120)
    factory.push_image(secured.host, "private/app:1", image, credentials=("alice", "s3cret-pw"))
    conf = insecure_conf(tmp_path / "conf", secured.host)
    ref = parse_reference(f"{secured.host}/private/app:1")
    caplog.set_level(logging.DEBUG, logger="tether.registry")
    good = write_auth_file(tmp_path / "good", basic={f"{secured.host}/private": ("alice", "s3cret-pw")})
    async with client_for(conf, good) as client:
        resolved = await client.resolve_image(ref)
        assert await read_blob(client, resolved.sources, resolved.parsed.layers[0]) == image.layers[0].blob
    async with client_for(conf) as client:
        with pytest.raises(AuthenticationError, match=f"GET {secured.host}/v2/private/app/manifests/1: 401"):
            await client.fetch_manifest(ref)
    bad = write_auth_file(tmp_path / "bad", basic={secured.host: ("alice", "wrong-pw")})
    async with client_for(conf, bad) as client:
        with pytest.raises(AuthenticationError, match="credentials refused") as info:
            await client.fetch_manifest(ref)
    assert "wrong-pw" not in str(info.value)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "GET http" in logged and "<redacted>" in logged
    assert "s3cret-pw" not in logged and "wrong-pw" not in logged and "YWxpY2" not in logged


# ---- Bearer (token server)


@pytest.fixture
def token_registry(registry_factory: Factory, tmp_path: Path) -> Iterator[tuple[TokenServer, RunningRegistry]]:
    server = TokenServer(tmp_path / "token", users={"bob": "bob-password"}, refresh_tokens={"id-tok-1": "bob"})
    server.start()
    running = registry_factory(token=server.token_auth)
    yield server, running
    server.stop()


def _push_with_token(server: TokenServer, running: RunningRegistry, repo_tag: str, image: object) -> None:
    repo = repo_tag.partition(":")[0]
    token = server.make_token("bob", [f"repository:{repo}:pull,push"])
    factory.push_image(running.host, repo_tag, image, headers={"Authorization": f"Bearer {token}"})  # type: ignore[arg-type]


async def test_bearer_tokens_cached_per_scope(
    token_registry: tuple[TokenServer, RunningRegistry], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server, running = token_registry
    image = _image(130)
    _push_with_token(server, running, "team/app:1", image)
    conf = insecure_conf(tmp_path / "conf", running.host)
    auth = write_auth_file(tmp_path / "auth", basic={running.host: ("bob", "bob-password")})
    caplog.set_level(logging.DEBUG, logger="tether.registry")
    async with client_for(conf, auth) as client:
        ref = parse_reference(f"{running.host}/team/app:1")
        resolved = await client.resolve_image(ref)
        async with trio.open_nursery() as nursery:  # concurrent blobs share one token
            for layer in resolved.parsed.layers:
                nursery.start_soon(read_blob, client, resolved.sources, layer)
        again = await client.resolve_image(ref)
        assert again.manifest.digest == image.manifest_digest
        assert client.tokens_fetched == 1
    (request,) = server.requests
    assert request.scopes == ["repository:team/app:pull"]
    assert request.account == "bob" and request.authenticated_as == "bob"
    assert request.service == server.service
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "bob-password" not in logged and "Bearer ey" not in logged


async def test_bearer_wrong_password(token_registry: tuple[TokenServer, RunningRegistry], tmp_path: Path) -> None:
    _server, running = token_registry
    auth = write_auth_file(tmp_path / "auth", basic={running.host: ("bob", "not-it")})
    async with client_for(insecure_conf(tmp_path / "conf", running.host), auth) as client:
        with pytest.raises(AuthenticationError, match=r"requesting a token for .*: 401") as info:
            await client.fetch_manifest(parse_reference(f"{running.host}/team/app:1"))
    assert "not-it" not in str(info.value)


async def test_bearer_expired_token_mid_pull(
    token_registry: tuple[TokenServer, RunningRegistry], tmp_path: Path
) -> None:
    server, running = token_registry
    image = _image(131)
    _push_with_token(server, running, "team/expiring:1", image)
    # The first token is accepted by the registry for 2-3 s although the answer says 300 s.
    server.expire_next_tokens(1, valid_for=3.0)
    auth = write_auth_file(tmp_path / "auth", basic={running.host: ("bob", "bob-password")})
    async with client_for(insecure_conf(tmp_path / "conf", running.host), auth) as client:
        resolved = await client.resolve_image(parse_reference(f"{running.host}/team/expiring:1"))
        assert client.tokens_fetched == 1
        # wait (wall clock) until the registry refuses the first token: exp + 60 s leeway has passed
        await trio.sleep(max(0.0, server.short_lived_deadline() - time.time()) + 0.3)
        for layer, descriptor in zip(image.layers, resolved.parsed.layers, strict=True):
            assert await read_blob(client, resolved.sources, descriptor) == layer.blob
        assert client.tokens_fetched == 2  # one re-authentication, then the new token is reused
    assert len(server.requests) == 2


async def test_bearer_identity_token_refresh_grant(
    token_registry: tuple[TokenServer, RunningRegistry], tmp_path: Path
) -> None:
    server, running = token_registry
    image = _image(132)
    _push_with_token(server, running, "team/idtok:1", image)
    auth = write_auth_file(tmp_path / "auth", identity_tokens={running.host: "id-tok-1"})
    async with client_for(insecure_conf(tmp_path / "conf", running.host), auth) as client:
        resolved = await client.resolve_image(parse_reference(f"{running.host}/team/idtok:1"))
    assert resolved.manifest.digest == image.manifest_digest
    (request,) = server.requests
    assert request.method == "POST" and request.grant_type == "refresh_token"
    assert request.authenticated_as == "bob" and request.scopes == ["repository:team/idtok:pull"]


async def test_bearer_push_scope(token_registry: tuple[TokenServer, RunningRegistry], tmp_path: Path) -> None:
    server, running = token_registry
    image = _image(133)
    auth = write_auth_file(tmp_path / "auth", basic={running.host: ("bob", "bob-password")})
    ref = parse_reference(f"{running.host}/team/pushed:1")
    async with client_for(insecure_conf(tmp_path / "conf", running.host), auth) as client:
        await _push(client, ref, image)
        resolved = await client.resolve_image(ref)
        other = parse_reference(f"{running.host}/team/mounted:1")
        assert await client.mount_blob(other, image.layers[0].digest, from_repository="team/pushed")
    assert resolved.manifest.digest == image.manifest_digest
    assert "repository:team/pushed:pull,push" in server.scopes_requested()
    # a mount needs push on the target and pull on the source, in one token
    assert ["repository:team/mounted:pull,push", "repository:team/pushed:pull"] in [r.scopes for r in server.requests]


# ---- mirrors, blocked registries, short names


async def test_mirror_first_then_primary(registry_factory: Factory, tmp_path: Path) -> None:
    primary = registry_factory()
    mirror = registry_factory()
    image = _image(140)
    only_primary = _image(141)
    for host in (primary.host, mirror.host):
        factory.push_image(host, "mirrored/app:1", image)
    factory.push_image(primary.host, "mirrored/other:1", only_primary)
    conf = write_registries_conf(
        tmp_path,
        f'[[registry]]\nlocation = "{primary.host}"\ninsecure = true\n'
        f'[[registry.mirror]]\nlocation = "{mirror.host}"\ninsecure = true\n',
    )
    ref = parse_reference(f"{primary.host}/mirrored/app:1")
    async with client_for(conf) as client:
        resolved = await client.resolve_image(ref)
        assert resolved.manifest.source.mirror is True
        assert resolved.manifest.source.reference.domain == mirror.host
        assert [s.reference.domain for s in resolved.sources] == [mirror.host, primary.host]
        # the mirror lacks this one: the primary serves it
        other = await client.resolve_image(parse_reference(f"{primary.host}/mirrored/other:1"))
        assert other.manifest.source.mirror is False and other.manifest.digest == only_primary.manifest_digest
        assert [s.reference.domain for s in other.sources] == [primary.host, mirror.host]
        # the mirror dies between the manifest and the blobs: every blob comes from the primary
        mirror.stop()
        for layer, descriptor in zip(image.layers, resolved.parsed.layers, strict=True):
            assert await read_blob(client, resolved.sources, descriptor) == layer.blob
    async with client_for(conf) as client:  # a fresh client with the mirror stopped
        resolved = await client.resolve_image(ref)
        assert resolved.manifest.source.mirror is False
        assert resolved.manifest.source.reference.domain == primary.host
    primary_gets = [line for line in primary.access_log() if "\"GET /v2/mirrored/app/manifests/1 " in line]
    assert len(primary_gets) == 1


async def test_blocked_registry_refused_before_any_request(registry: RunningRegistry, tmp_path: Path) -> None:
    factory.push_image(registry.host, "client/blocked:1", _image(150))
    conf = write_registries_conf(
        tmp_path, f'[[registry]]\nlocation = "{registry.host}/client/blocked"\nblocked = true\n'
    )
    before = len(registry.access_log())
    async with client_for(conf, tls_verify=False) as client:
        with pytest.raises(BlockedRegistryError, match="blocked"):
            await client.resolve_image(parse_reference(f"{registry.host}/client/blocked:1"))
    assert len(registry.access_log()) == before


async def test_short_names_alias_and_search(registry_factory: Factory, tmp_path: Path) -> None:
    first = registry_factory()  # searched first, lacks the image
    second = registry_factory()
    image = _image(160)
    factory.push_image(second.host, "tools/app:latest", image)
    aliased = _image(161)
    factory.push_image(first.host, "vendor/thing:2", aliased)
    conf = write_registries_conf(
        tmp_path,
        f'unqualified-search-registries = ["{first.host}", "{second.host}"]\n'
        'short-name-mode = "permissive"\n'
        f'[aliases]\n"thing" = "{first.host}/vendor/thing"\n'
        f'[[registry]]\nlocation = "{first.host}"\ninsecure = true\n'
        f'[[registry]]\nlocation = "{second.host}"\ninsecure = true\n',
    )
    async with client_for(conf) as client:
        (alias_ref,) = resolve_short_name(conf, "thing:2")
        assert (await client.resolve_image(alias_ref)).manifest.digest == aliased.manifest_digest
        candidates = resolve_short_name(conf, "tools/app")
        assert [c.domain for c in candidates] == [first.host, second.host]
        found = None
        errors = []
        for candidate in candidates:  # permissive: the first candidate that resolves wins
            try:
                found = await client.resolve_image(candidate)
                break
            except HTTPStatusError as exc:
                errors.append(exc)
        assert found is not None and found.manifest.digest == image.manifest_digest
        assert errors and errors[0].status == 404


# ---- push


async def _push(client: client_module.RegistryClient, ref: object, image: factory.BuiltImage) -> str:
    async def chunks(data: bytes) -> object:
        for i in range(0, len(data), 300):
            yield data[i : i + 300]

    for digest, data in image.blobs():
        if not await client.blob_exists(ref, digest):  # type: ignore[arg-type]
            descriptor = Descriptor("application/octet-stream", digest, len(data))
            await client.upload_blob(ref, descriptor, chunks(data))  # type: ignore[arg-type]
    return await client.put_manifest(ref, image.manifest, image.media_type)  # type: ignore[arg-type]


async def test_push_then_skopeo_reads_back(
    registry: RunningRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # small thresholds so that both the monolithic PUT and the chunked PATCH paths run
    monkeypatch.setattr(push_module, "MONOLITHIC_UPLOAD_MAX", 600)
    monkeypatch.setattr(push_module, "UPLOAD_CHUNK", 1000)
    image = factory.simple_image(170, files=40, layers=2)
    assert any(layer.size > 2000 for layer in image.layers) and len(image.config) <= 600
    ref = parse_reference(f"{registry.host}/client/pushed:1.0")
    async with client_for(insecure_conf(tmp_path, registry.host)) as client:
        assert await _push(client, ref, image) == image.manifest_digest
        assert await client.blob_exists(ref, image.layers[0].digest)
        # cross-repository mount: present -> 201; absent -> 202 answered by cancelling the upload
        other = parse_reference(f"{registry.host}/client/mounted:1.0")
        assert await client.mount_blob(other, image.layers[0].digest, from_repository="client/pushed")
        assert await client.blob_exists(other, image.layers[0].digest)
        missing = "sha256:" + "0" * 64
        assert not await client.mount_blob(other, missing, from_repository="client/pushed")
        assert not await client.blob_exists(other, missing)
    patches = [line for line in registry.access_log() if '"PATCH /v2/client/pushed/blobs/uploads/' in line]
    assert len(patches) >= 2
    out = await trio.run_process(
        ["skopeo", "inspect", "--tls-verify=false", f"docker://{ref}"], capture_stdout=True
    )
    assert json.loads(out.stdout)["Digest"] == image.manifest_digest
    # skopeo copy verifies every blob's digest
    await trio.run_process(
        ["skopeo", "copy", "--src-tls-verify=false", f"docker://{ref}", f"oci:{tmp_path / 'layout'}:x"],
        capture_stdout=True,
        capture_stderr=True,
    )
    assert isinstance((await _resolve_plain(registry, tmp_path, ref)).parsed, ImageManifest)


async def _resolve_plain(registry: RunningRegistry, tmp_path: Path, ref: object) -> client_module.RegistryImage:
    async with client_for(insecure_conf(tmp_path / "again", registry.host)) as client:
        return await client.resolve_image(ref)  # type: ignore[arg-type]
