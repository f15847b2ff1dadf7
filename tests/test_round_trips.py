"""Issue 14 item 3: the requests a pull makes, counted in a real docker-registry's access log (and a token
server's), so that a regression in round trips fails here.

- a cold pull: one ping per registry, then per image its manifest and config, and each distinct layer once;
- ``--pull newer`` on unchanged tags: the ping and one ``HEAD`` per image, nothing else (podman GETs);
  a moved tag: the HEAD, then only what changed; a digest the store holds: no request at all;
- bearer tokens: one token request carries every repository of the pull (c/image asks once per repository);
  a token server that refuses several scopes at once gets one request per repository;
- an insecure registry is pinged over https and plain http at once (c/image tries one, then the other).
"""

from __future__ import annotations

import json
import select
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import images as factory
from tests.harness.cli import StoreArgs, tether
from tests.harness.client_env import client_for, insecure_conf, read_blob
from tests.harness.registry import RunningRegistry
from tests.harness.token_server import TokenServer
from tether.registry.reference import parse_reference

Factory = Callable[..., RunningRegistry]

BASE = factory.build_layer([factory.directory("usr"), *factory.many_small_files("usr/base", 4, seed=1400)])


def app_image(seed: int, *, base: factory.BuiltLayer = BASE) -> factory.BuiltImage:
    """Two layers: the shared ``BASE`` and one of its own."""
    top = factory.build_layer([factory.directory("app"), factory.file(f"app/seed-{seed}", f"{seed}\n")])
    return factory.build_image([base, top], labels={"seed": str(seed)})


def pull(args: StoreArgs, *refs: str, extra: tuple[str, ...] = ()) -> list[dict[str, object]]:
    done = tether("pull", *args.pull, "--progress", "none", "--format", "json", *extra, *refs)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert isinstance(results, list)
    return results


def test_a_cold_pull_asks_each_piece_once(tmp_path: Path, registry: RunningRegistry) -> None:
    images = [app_image(1401 + n) for n in range(3)]
    refs = []
    for n, image in enumerate(images):
        factory.push_image(registry.host, f"trips/cold-{n}:1", image)
        refs.append(f"{registry.host}/trips/cold-{n}:1")
    args = StoreArgs.make(tmp_path, registry.host)
    before = len(registry.access_log())
    pull(args, *refs)
    asked = registry.exchanges()[before:]
    expected = ["GET /v2/"]
    for n, image in enumerate(images):
        expected += [f"GET /v2/trips/cold-{n}/manifests/1", f"GET /v2/trips/cold-{n}/blobs/{image.config_digest}",
                     f"GET /v2/trips/cold-{n}/blobs/{image.layers[1].digest}"]
    # the shared base layer once, from whichever image asked first
    base_gets = [line for line in asked if line.endswith(f"/blobs/{BASE.digest}")]
    assert len(base_gets) == 1, asked
    assert asked[0] == "GET /v2/" and sorted(set(asked) - set(base_gets)) == sorted(expected), asked
    assert len(asked) == len(expected) + 1


def test_unchanged_tags_cost_one_head_each(tmp_path: Path, registry: RunningRegistry) -> None:
    images = [app_image(1411 + n) for n in range(3)]
    index_images = [app_image(1420, base=BASE), factory.simple_image(1421, architecture="arm64", variant="v8")]
    index = factory.build_index(index_images)
    refs = []
    for n, image in enumerate(images):
        factory.push_image(registry.host, f"trips/same-{n}:1", image)
        refs.append(f"{registry.host}/trips/same-{n}:1")
    factory.push_image(registry.host, "trips/same-multi:1", index)
    refs.append(f"{registry.host}/trips/same-multi:1")
    args = StoreArgs.make(tmp_path, registry.host)
    first = pull(args, *refs, extra=("--arch", "amd64"))
    before = len(registry.access_log())
    again = pull(args, *refs, extra=("--arch", "amd64"))
    assert [(r["id"], r["layersPulled"]) for r in again] == [(r["id"], 0) for r in first]
    assert again[-1]["id"] == index_images[0].image_id
    # the index's amd64 entry is decided from the store's copy of the index the HEAD names
    asked = registry.exchanges()[before:]
    assert asked[0] == "GET /v2/" and sorted(asked[1:]) == sorted(
        [f"HEAD /v2/trips/same-{n}/manifests/1" for n in range(3)] + ["HEAD /v2/trips/same-multi/manifests/1"])


def test_a_moved_tag_fetches_only_what_changed(tmp_path: Path, registry: RunningRegistry) -> None:
    old, new = app_image(1431), app_image(1432)
    factory.push_image(registry.host, "trips/moved:1", old)
    ref = f"{registry.host}/trips/moved:1"
    args = StoreArgs.make(tmp_path, registry.host)
    pull(args, ref)
    factory.push_image(registry.host, "trips/moved:1", new)
    before = len(registry.access_log())
    (result,) = pull(args, ref)
    assert (result["id"], result["layersPulled"], result["layersReused"]) == (new.image_id, 1, 1)
    assert registry.exchanges()[before:] == [
        "GET /v2/", "HEAD /v2/trips/moved/manifests/1", "GET /v2/trips/moved/manifests/1",
        f"GET /v2/trips/moved/blobs/{new.config_digest}", f"GET /v2/trips/moved/blobs/{new.layers[1].digest}"]


def test_a_stored_digest_costs_no_request(tmp_path: Path, registry: RunningRegistry) -> None:
    image = app_image(1441)
    factory.push_image(registry.host, "trips/pinned:1", image)
    ref = f"{registry.host}/trips/pinned@{image.manifest_digest}"
    args = StoreArgs.make(tmp_path, registry.host)
    pull(args, ref)
    before = len(registry.access_log())
    (result,) = pull(args, ref)
    assert result["id"] == image.image_id
    assert registry.exchanges()[before:] == []


@pytest.fixture
def token_registry(registry_factory: Factory, tmp_path: Path) -> Iterator[tuple[TokenServer, RunningRegistry]]:
    server = TokenServer(tmp_path / "token", users={"bob": "bob-password"})
    server.start()
    try:
        yield server, registry_factory(token=server.token_auth)
    finally:
        server.stop()


def _pushed_with_token(server: TokenServer, running: RunningRegistry, count: int) -> list[str]:
    refs = []
    for n in range(count):
        token = server.make_token("bob", [f"repository:team/app-{n}:pull,push"])
        factory.push_image(running.host, f"team/app-{n}:1", app_image(1450 + n),
                           headers={"Authorization": f"Bearer {token}"})
        refs.append(f"{running.host}/team/app-{n}:1")
    return refs


def _bob(args: StoreArgs, host: str) -> None:
    auth = args.runroot.parent / "auth.json"
    auth.write_text(json.dumps({"auths": {host: {"auth": "Ym9iOmJvYi1wYXNzd29yZA=="}}}))  # bob:bob-password


def test_one_token_request_carries_every_repository(
        tmp_path: Path, token_registry: tuple[TokenServer, RunningRegistry]) -> None:
    server, running = token_registry
    refs = _pushed_with_token(server, running, 3)
    args = StoreArgs.make(tmp_path, running.host)
    _bob(args, running.host)
    server.requests.clear()
    assert [r["error"] for r in pull(args, *refs)] == [None] * 3
    (request,) = server.requests
    assert sorted(request.scopes) == [f"repository:team/app-{n}:pull" for n in range(3)]
    assert request.authenticated_as == "bob"


def test_a_token_server_that_grants_one_repository_at_a_time_is_asked_one_at_a_time(
        tmp_path: Path, token_registry: tuple[TokenServer, RunningRegistry]) -> None:
    server, running = token_registry
    refs = _pushed_with_token(server, running, 3)
    server.max_scopes = 1
    args = StoreArgs.make(tmp_path, running.host)
    _bob(args, running.host)
    server.requests.clear()
    assert [r["error"] for r in pull(args, *refs)] == [None] * 3
    asked = [sorted(r.scopes) for r in server.requests]
    # the first, batched request is refused; then one per repository, never batched again
    assert len(asked[0]) == 3 and all(len(scopes) == 1 for scopes in asked[1:])
    assert sorted(s for scopes in asked[1:] for s in scopes) == [f"repository:team/app-{n}:pull" for n in range(3)]


class _TwoFacedServer:
    """One port, two protocols: a TLS ClientHello is answered (as Go's server answers plain HTTP on a TLS
    port: ``400``, then close) only once a plain-HTTP ``GET /v2/`` has arrived on another connection, or after
    ``patience`` seconds; plain HTTP serves ``/v2/`` and one manifest."""

    def __init__(self, manifest: bytes, media_type: str, digest: str, *, patience: float = 30.0) -> None:
        self.manifest, self.media_type, self.digest = manifest, media_type, digest
        self.patience = patience
        self.plain_ping = threading.Event()
        self.tls_waited: list[bool] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            first = conn.recv(1, socket.MSG_PEEK)
            if first == b"\x16":  # TLS handshake record
                self.tls_waited.append(self.plain_ping.wait(self.patience))
                conn.sendall(b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
                return
            data = b""
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                head, _, data = data.partition(b"\r\n\r\n")
                method, path = head.split(b" ")[:2]
                if path == b"/v2/":
                    self.plain_ping.set()
                    body, headers = b"{}", b"Content-Type: application/json\r\n"
                elif path == b"/v2/two/faced/manifests/1":
                    body = self.manifest if method == b"GET" else b""
                    headers = (f"Content-Type: {self.media_type}\r\nDocker-Content-Digest: {self.digest}\r\n"
                               f"Content-Length: {len(self.manifest)}\r\n").encode()
                    conn.sendall(b"HTTP/1.1 200 OK\r\n" + headers + b"\r\n" + body)
                    continue
                else:
                    body, headers = b'{"errors": []}', b"Content-Type: application/json\r\n"
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\n" + headers
                                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
                    continue
                conn.sendall(b"HTTP/1.1 200 OK\r\n" + headers + f"Content-Length: {len(body)}\r\n\r\n".encode()
                             + body)

    def close(self) -> None:
        self._sock.close()


async def test_an_insecure_registry_is_pinged_over_https_and_http_at_once(tmp_path: Path) -> None:
    image = app_image(1461)
    server = _TwoFacedServer(image.manifest, image.media_type, image.manifest_digest)
    try:
        async with client_for(insecure_conf(tmp_path, server.host)) as client:
            ref = parse_reference(f"{server.host}/two/faced:1")
            assert await client.manifest_digest(ref) == image.manifest_digest
            assert (await client.fetch_manifest(ref)).digest == image.manifest_digest
    finally:
        server.close()
    # the TLS attempt was still open when the plain ping arrived: they ran at once, https was not waited for
    assert server.tls_waited == [True]


class _CountingForwarder:
    """A TCP forwarder to ``target`` (host:port) that counts the connections it accepted."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self.connections = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._forward, args=(conn,), daemon=True).start()

    def _forward(self, conn: socket.socket) -> None:
        with conn, socket.create_connection(self._target) as upstream:
            peer = {conn: upstream, upstream: conn}
            while True:
                ready, _, _ = select.select(list(peer), [], [])
                for sock in ready:
                    try:
                        data = sock.recv(65536)
                        if data:
                            peer[sock].sendall(data)
                    except OSError:
                        data = b""
                    if not data:
                        return

    def close(self) -> None:
        self._sock.close()


async def test_a_plain_http_registry_serves_manifests_configs_and_blobs_on_one_connection(
        tmp_path: Path, registry: RunningRegistry) -> None:
    image = app_image(1471)
    factory.push_image(registry.host, "trips/oneconn:1", image)
    forwarder = _CountingForwarder(registry.host)
    try:
        async with client_for(insecure_conf(tmp_path, forwarder.host)) as client:
            resolved = await client.resolve_image(parse_reference(f"{forwarder.host}/trips/oneconn:1"))
            for descriptor, layer in zip(resolved.parsed.layers, image.layers, strict=True):
                assert await read_blob(client, resolved.sources, descriptor) == layer.blob
    finally:
        forwarder.close()
    # the https attempt of the ping, then one keep-alive connection for the ping, manifest, config and both
    # blobs (HTTP/2 and separate blob connections are for TLS: plain HTTP gains nothing from a second pool)
    assert forwarder.connections == 2
