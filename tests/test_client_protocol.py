"""Protocol edge cases without sockets: retry/backoff and token-cache rules (sans-IO tables), and the
client over ``httpx.MockTransport`` for what a real docker-registry never does (CDN redirects,
insufficient_scope, schema1, lying Content-Type)."""

from __future__ import annotations

import base64
import hashlib
import json
import random
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest

from tether.registry.auth import AuthEntry, AuthFile, Credentials
from tether.registry.client import open_registry_client
from tether.registry.client._retry import RetryPolicy, parse_retry_after
from tether.registry.client._tokens import MIN_TOKEN_LIFETIME, BearerToken, TokenCache, parse_token_response
from tether.registry.errors import AuthenticationError, DigestMismatchError, ManifestError
from tether.registry.manifest import OCI_INDEX, OCI_MANIFEST, Descriptor, Platform
from tether.registry.reference import parse_reference
from tether.registry.registries_conf import Mirror, PullSource, RegistriesConf, RegistryEntry

# ---- retry policy


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0.0),
        ("120", 120.0),
        (" 7 ", 7.0),
        ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # in the past
        ("soon", None),
        (None, None),
        ("-1", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)) == expected


def test_backoff_is_jittered_exponential_and_capped() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0)
    rng = random.Random(1)
    for failures, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 8.0)):
        delays = [policy.delay(failures, rng=rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # full jitter spreads over the whole range
    assert policy.delay(1, retry_after=5.0, rng=rng) >= 5.0
    assert policy.delay(1, retry_after=500.0, rng=rng) == 8.0  # Retry-After capped
    assert RetryPolicy(base_delay=0).delay(3) == 0.0


# ---- tokens


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_cache_refreshes_before_expiry() -> None:
    clock = Clock()
    cache = TokenCache(clock=clock, refresh_margin=0.1)
    cache.put("k", BearerToken("t1", 300.0))
    assert cache.get("k") == "t1"
    clock.now += 269.0  # 300 s lifetime, 30 s margin
    assert cache.get("k") == "t1"
    clock.now += 2.0
    assert cache.get("k") is None and len(cache) == 0
    # a short token keeps at least a 5 s margin
    cache.put("s", BearerToken("t2", 60.0))
    clock.now += 54.5
    assert cache.get("s") is None


def test_token_cache_invalidate_only_the_refused_token() -> None:
    cache = TokenCache(clock=Clock())
    cache.put("k", BearerToken("new", 300.0))
    cache.invalidate("k", "old")  # another task already replaced the refused token
    assert cache.get("k") == "new"
    cache.invalidate("k", "new")
    assert cache.get("k") is None


@pytest.mark.parametrize(
    ("body", "value", "lifetime"),
    [
        ({"token": "a", "expires_in": 300}, "a", 300.0),
        ({"access_token": "b"}, "b", MIN_TOKEN_LIFETIME),  # default 60 s
        ({"token": "c", "access_token": "d", "expires_in": 10}, "c", MIN_TOKEN_LIFETIME),  # raised to 60 s
        ({"token": "e", "expires_in": "300"}, "e", MIN_TOKEN_LIFETIME),
    ],
)
def test_parse_token_response(body: dict[str, object], value: str, lifetime: float) -> None:
    token = parse_token_response(json.dumps(body).encode(), what="x")
    assert (token.value, token.lifetime) == (value, lifetime)
    assert repr(token).startswith("BearerToken(<redacted>")


@pytest.mark.parametrize("body", [b"nope", b"[]", b'{"token": ""}', b'{"expires_in": 3}'])
def test_parse_token_response_refused(body: bytes) -> None:
    with pytest.raises(AuthenticationError, match="requesting"):
        parse_token_response(body, what="requesting a token")


# ---- the client over MockTransport

HOST = "registry.test"
D = "sha256:" + hashlib.sha256(b"layer-bytes").hexdigest()


def _source(path: str = "app", tag: str = "1") -> PullSource:
    return PullSource(parse_reference(f"{HOST}/{path}:{tag}"), insecure=False, mirror=False)


Handler = Callable[[httpx.Request], httpx.Response]


async def _client(handler: Handler, auth: AuthFile | None = None) -> object:
    return open_registry_client(
        registries=RegistriesConf(),
        auth=auth or AuthFile(),
        transport=httpx.MockTransport(handler),
        retry_policy=RetryPolicy(attempts=2, base_delay=0),
        cert_search_dirs=[],
    )


def _auth_for(user: str, password: str) -> AuthFile:
    return AuthFile(auths=(AuthEntry(HOST, Credentials(user, password)),))


async def test_redirect_to_another_host_drops_authorization() -> None:
    seen: list[tuple[str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("authorization")))
        if request.url.path == "/v2/":
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        if request.url.host == HOST:
            return httpx.Response(307, headers={"Location": "https://cdn.test/blob?sig=abc"})
        return httpx.Response(200, content=b"layer-bytes")

    async with await _client(handler, _auth_for("u", "p")) as client:  # type: ignore[attr-defined]
        parts = []
        async with client.open_blob([_source()], Descriptor("x", D, 11)) as chunks:
            async for chunk in chunks:
                parts.append(chunk)
    assert b"".join(parts) == b"layer-bytes"
    assert seen[1][1] is not None and seen[1][1].startswith("Basic ")
    assert seen[2] == ("https://cdn.test/blob?sig=abc", None)


async def test_insufficient_scope_asks_for_the_named_scope_once() -> None:
    token_scopes: list[list[str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="https://auth.test/t",service="s"'})
        if request.url.host == "auth.test":
            scopes = request.url.params.get_list("scope")
            token_scopes.append(scopes)
            return httpx.Response(200, json={"token": "tok-" + "+".join(scopes), "expires_in": 300})
        authorization = request.headers.get("authorization", "")
        if "repository:other:pull" not in authorization:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="https://auth.test/t",service="s",'
                                                                     'scope="repository:other:pull",'
                                                                     'error="insufficient_scope"'})
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()
        return httpx.Response(200, content=body, headers={"Content-Type": OCI_INDEX})

    async with await _client(handler) as client:  # type: ignore[attr-defined]
        fetched = await client.fetch_manifest(parse_reference(f"{HOST}/app:1"))
    assert fetched.media_type == OCI_INDEX
    assert token_scopes == [["repository:app:pull"], ["repository:app:pull", "repository:other:pull"]]


async def test_second_401_is_an_authentication_error_without_secrets() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.test":
            return httpx.Response(200, json={"token": "SECRET-TOKEN"})
        return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="https://auth.test/t"'},
                              json={"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]})

    async with await _client(handler, _auth_for("u", "PASSWORD")) as client:  # type: ignore[attr-defined]
        with pytest.raises(AuthenticationError) as info:
            await client.fetch_manifest(parse_reference(f"{HOST}/app:1"))
    message = str(info.value)
    assert message.startswith(f"GET {HOST}/v2/app/manifests/1: 401 UNAUTHORIZED")
    assert "SECRET-TOKEN" not in message and "PASSWORD" not in message
    assert base64.b64encode(b"u:PASSWORD").decode() not in message


@pytest.mark.parametrize(
    ("content_type", "body", "error", "fragment"),
    [
        ("application/vnd.docker.distribution.manifest.v1+prettyjws", {"schemaVersion": 1}, ManifestError,
         "schema1"),
        (OCI_MANIFEST, {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}, ManifestError,
         "declares mediaType"),
    ],
)
async def test_manifest_content_checks(content_type: str, body: object, error: type[Exception], fragment: str
                                       ) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return httpx.Response(200)
        return httpx.Response(200, content=json.dumps(body).encode(), headers={"Content-Type": content_type})

    async with await _client(handler) as client:  # type: ignore[attr-defined]
        with pytest.raises(error, match=fragment) as info:
            await client.fetch_manifest(parse_reference(f"{HOST}/app:1"))
    assert str(info.value).startswith(f"GET {HOST}/v2/app/manifests/1: ")


async def test_oversized_manifest_refused_from_content_length() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return httpx.Response(200)
        return httpx.Response(200, content=b" " * (4 * 1024 * 1024 + 1), headers={"Content-Type": OCI_MANIFEST})

    async with await _client(handler) as client:  # type: ignore[attr-defined]
        with pytest.raises(ManifestError, match="limit"):
            await client.fetch_manifest(parse_reference(f"{HOST}/app:1"))


async def test_registry_digest_header_must_match() -> None:
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return httpx.Response(200)
        return httpx.Response(200, content=body, headers={"Content-Type": OCI_INDEX,
                                                          "Docker-Content-Digest": "sha256:" + "0" * 64})

    async with await _client(handler) as client:  # type: ignore[attr-defined]
        with pytest.raises(DigestMismatchError, match="the registry says sha256:0000"):
            await client.fetch_manifest(parse_reference(f"{HOST}/app:1"))


async def test_wrong_content_range_moves_on() -> None:
    calls: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return httpx.Response(200)
        calls.append(request.headers.get("range"))
        if request.headers.get("range") is None:
            return httpx.Response(200, content=b"layer-", headers={"Content-Length": "11"})  # cut short
        return httpx.Response(206, content=b"bytes", headers={"Content-Range": "bytes 3-7/11"})

    async with await _client(handler) as client:  # type: ignore[attr-defined]
        with pytest.raises(Exception, match="asked for bytes 6-, got Content-Range 'bytes 3-7/11'"):
            async with client.open_blob([_source()], Descriptor("x", D, 11)) as chunks:
                async for _ in chunks:
                    pass
    assert calls[0] is None and calls[1] == "bytes=6-"


async def test_unreachable_mirror_costs_its_attempts_once() -> None:
    mirror_calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal mirror_calls
        if request.url.host == "mirror.test":
            mirror_calls += 1
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/v2/":
            return httpx.Response(200)
        return httpx.Response(200, content=b"layer-bytes")

    mirror = PullSource(parse_reference("mirror.test/app:1"), insecure=False, mirror=True)
    async with await _client(handler) as client:  # type: ignore[attr-defined]
        for _ in range(3):
            async with client.open_blob([mirror, _source()], Descriptor("x", D, 11)) as chunks:
                assert b"".join([chunk async for chunk in chunks]) == b"layer-bytes"
    assert mirror_calls == RetryPolicy(attempts=2, base_delay=0).connect_attempts


async def test_list_tags_follows_link_pages() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return httpx.Response(200)
        if request.url.params.get("last") is None:
            return httpx.Response(200, json={"name": "app", "tags": ["a", "b"]},
                                  headers={"Link": '</v2/app/tags/list?n=2&last=b>; rel="next"'})
        assert request.url.params.get("last") == "b"
        return httpx.Response(200, json={"name": "app", "tags": ["c"]})

    async with await _client(handler) as client:  # type: ignore[attr-defined]
        assert await client.list_tags(_source()) == ("a", "b", "c")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1:5000", True), ("localhost", True), ("localhost:80", True), ("[::1]:5000", True),
     ("::1", True), ("quay.io", False), ("10.0.0.1:5000", False), ("registry-1.docker.io", False)],
)
def test_proxies_never_for_loopback(host: str, loopback: bool) -> None:
    from tether.registry.client.core import is_loopback

    assert is_loopback(host) is loopback


async def test_foreign_layer_urls_first_then_the_registry() -> None:
    seen: list[tuple[str, str | None, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("authorization"), request.headers.get("range")))
        if request.url.host == "dead.test":
            return httpx.Response(404)
        if request.url.host == "foreign.test":
            # cut short (and Range ignored on the retry): the registry serves the rest
            return httpx.Response(200, content=b"layer-", headers={"Content-Length": "11"})
        if request.url.path == "/v2/":
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        assert request.headers.get("range") == "bytes=6-"
        return httpx.Response(206, content=b"bytes", headers={"Content-Range": "bytes 6-10/11"})

    descriptor = Descriptor("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", D, 11,
                            urls=("ftp://ignored.test/x", "https://dead.test/l", "https://foreign.test/l"))
    async with (
        await _client(handler, _auth_for("u", "p")) as client,  # type: ignore[attr-defined]
        client.open_blob([_source()], descriptor) as chunks,
    ):
        assert b"".join([chunk async for chunk in chunks]) == b"layer-bytes"
    hosts = [httpx.URL(url).host for url, _, _ in seen]
    assert hosts[:2] == ["dead.test", "foreign.test"] and "ignored.test" not in hosts
    assert all(auth is None for url, auth, _ in seen if "registry.test" not in url)  # never credentials


@pytest.mark.parametrize("announced", [True, False])
async def test_signature_extension_is_used_only_when_the_ping_announces_it(announced: bool) -> None:
    seen: list[str] = []
    body = json.dumps({"signatures": [{"schemaVersion": 2, "type": "atomic", "name": "n", "content": "eA=="}]})

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        if request.url.path == "/v2/":
            headers = {"X-Registry-Supports-Signatures": "1"} if announced else {}
            return httpx.Response(200, headers=headers)
        return httpx.Response(200, content=body.encode())

    async with await _client(handler) as client:  # type: ignore[attr-defined]
        got = await client.fetch_signature_extension(parse_reference(f"{HOST}/org/app"), D)
    if announced:
        assert got == body.encode()
        assert seen == ["/v2/", f"/extensions/v2/org/app/signatures/{D}"]
    else:
        assert got is None
        assert seen == ["/v2/"]


# ---- resolve_image: one endpoint for the whole image, a given top reused


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _image_served_by(hosts: dict[str, set[str]]) -> tuple[Handler, list[tuple[str, str]], bytes, bytes]:
    """An index -> amd64 manifest -> config image; ``hosts`` maps a host to the paths it answers 404 for."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}},
                        separators=(",", ":")).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [],
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": _sha(config), "size": len(config)}}).encode()
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": _sha(manifest), "size": len(manifest),
         "platform": {"os": "linux", "architecture": "amd64"}}]}).encode()
    seen: list[tuple[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        host, path = request.url.host, request.url.path
        seen.append((host, path))
        if path == "/v2/":
            return httpx.Response(200)
        if path in hosts[host]:
            return httpx.Response(404)
        if path == "/v2/app/manifests/1":
            return httpx.Response(200, content=index, headers={"Content-Type": OCI_INDEX})
        if path == f"/v2/app/manifests/{_sha(manifest)}":
            return httpx.Response(200, content=manifest, headers={"Content-Type": OCI_MANIFEST})
        assert path == f"/v2/app/blobs/{_sha(config)}", path
        return httpx.Response(200, content=config)

    return handler, seen, index, config


def _mirrored(handler: Handler) -> object:
    conf = RegistriesConf(registries=(RegistryEntry(prefix=HOST, location=HOST, mirrors=(Mirror("mirror.test"),)),))
    return open_registry_client(registries=conf, auth=AuthFile(), transport=httpx.MockTransport(handler),
                                retry_policy=RetryPolicy(attempts=1, base_delay=0), cert_search_dirs=[])


async def test_resolve_reuses_the_top_it_is_given() -> None:
    handler, seen, index, config = _image_served_by({"mirror.test": set(), HOST: set()})
    ref = parse_reference(f"{HOST}/app:1")
    async with _mirrored(handler) as client:  # type: ignore[attr-defined]
        top = await client.fetch_manifest(ref)
        assert top.source.mirror and top.raw == index
        seen.clear()
        resolved = await client.resolve_image(ref, platform=Platform("linux", "amd64"), top=top)
    assert resolved.top is top and resolved.index is top and resolved.config_raw == config
    assert resolved.manifest.source == top.source and resolved.reference == ref
    assert [s.reference.domain for s in resolved.sources] == ["mirror.test", HOST]
    assert seen == [("mirror.test", f"/v2/app/manifests/{resolved.manifest.digest}"),
                    ("mirror.test", f"/v2/app/blobs/{resolved.parsed.config.digest}")]


async def test_resolve_moves_on_when_the_endpoint_of_the_top_fails_later() -> None:
    config_digest = _sha(json.dumps({"architecture": "amd64", "os": "linux",
                                     "rootfs": {"type": "layers", "diff_ids": []}}, separators=(",", ":")).encode())
    handler, seen, index, config = _image_served_by({"mirror.test": {f"/v2/app/blobs/{config_digest}"}, HOST: set()})
    ref = parse_reference(f"{HOST}/app:1")
    async with _mirrored(handler) as client:  # type: ignore[attr-defined]
        top = await client.fetch_manifest(ref)
        assert top.source.mirror
        resolved = await client.resolve_image(ref, platform=Platform("linux", "amd64"), top=top)
    # the primary served everything itself, its own top included
    assert resolved.top is not top and resolved.top.raw == index and not resolved.top.source.mirror
    assert resolved.manifest.source == resolved.top.source and resolved.config_raw == config
    assert [s.reference.domain for s in resolved.sources] == [HOST, "mirror.test"]
    assert (HOST, "/v2/app/manifests/1") in seen


async def test_resolve_starts_with_the_endpoint_that_served_the_top() -> None:
    handler, seen, _, _ = _image_served_by({"mirror.test": set(), HOST: set()})
    ref = parse_reference(f"{HOST}/app:1")
    async with _mirrored(handler) as client:  # type: ignore[attr-defined]
        primary = PullSource(ref, insecure=False, mirror=False)
        top = await client._manifests.fetch_at(primary, ref)
        seen.clear()
        resolved = await client.resolve_image(ref, platform=Platform("linux", "amd64"), top=top)
    assert resolved.top is top and [s.reference.domain for s in resolved.sources] == [HOST, "mirror.test"]
    assert {host for host, _ in seen} == {HOST}


@pytest.mark.parametrize("served", [None, "md5:abc", "sha256:NOTHEX"])
async def test_a_head_without_a_usable_digest_says_nothing(served: str | None) -> None:
    # c/image's GetDigest fails without Docker-Content-Digest; tether's up-to-date check then asks a GET
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return httpx.Response(200)
        assert (request.method, request.url.path) == ("HEAD", "/v2/app/manifests/1")
        assert OCI_INDEX in request.headers["accept"]  # the digest of what a GET with this Accept serves
        return httpx.Response(200, headers={"Docker-Content-Digest": served} if served else {})

    async with await _client(handler) as client:  # type: ignore[attr-defined]
        assert await client.manifest_digest(parse_reference(f"{HOST}/app:1")) is None


async def test_a_head_goes_to_the_mirror_first() -> None:
    digest = "sha256:" + "ab" * 32
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/":
            return httpx.Response(200)
        asked.append(f"{request.method} {request.url.host}")
        return httpx.Response(200, headers={"Docker-Content-Digest": digest})

    async with _mirrored(handler) as client:  # type: ignore[attr-defined]
        assert await client.manifest_digest(parse_reference(f"{HOST}/app:1")) == digest
    assert asked == ["HEAD mirror.test"]
