"""Caps and resumes inside whole pulls: a blob cut at several offsets is resumed with ``Range`` within one
``tether pull`` and the store then passes ``tether check``; a manifest sent without Content-Length (chunked) is
cut at the 4 MiB cap; a config declared larger than its cap is refused before it is fetched."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest
import trio

from tests.harness import images as factory
from tests.harness.client_env import client_for, insecure_conf
from tests.harness.faulty_proxy import Fault, FaultyProxy
from tests.harness.loopback_server import LoopbackServer
from tests.harness.registry import RunningRegistry
from tether.engine.cli.main import main
from tether.registry.errors import ManifestError, RegistryError
from tether.registry.manifest import MAX_CONFIG_SIZE, MAX_MANIFEST_SIZE
from tether.registry.reference import parse_reference


def test_range_resume_inside_a_pull_then_check(registry: RunningRegistry, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    layer = factory.build_layer([factory.large_file("big.bin", 2_500_000, seed=61)], "gzip")
    image = factory.build_image([factory.build_layer([factory.file("etc/a", "a\n")]), layer])
    factory.push_image(registry.host, "caps/resume:1", image)
    with FaultyProxy(registry.host) as proxy:
        host = proxy.host
        # three cuts: in the first answer, then inside two resumed (206) answers
        proxy.add(Fault("cut", path_contains=layer.digest, after=400_000, times=3))
        conf = tmp_path / "registries.conf"
        conf.write_text(f'[[registry]]\nlocation = "{host}"\ninsecure = true\n')
        store = ["--root", str(tmp_path / "store"), "--runroot", str(tmp_path / "run")]
        assert main(["pull", *store, "--registries-conf", str(conf), "--progress", "none",
                     f"{host}/caps/resume:1"]) == 0, capsys.readouterr().err
    gets = [r for r in proxy.requests if r.method == "GET" and layer.digest in r.path]
    assert [r.status for r in gets] == [200, 206, 206, 206]
    offsets = [int(r.range[6:].rstrip("-")) for r in gets[1:] if r.range]
    assert offsets == sorted(offsets) and offsets[0] >= 400_000 - 262_144
    capsys.readouterr()
    assert main(["check", *store]) == 0, capsys.readouterr()


class _ChunkedManifestServer(LoopbackServer):
    """A registry that answers every manifest GET with a body larger than the cap, chunked (no Content-Length)."""

    def start(self) -> _ChunkedManifestServer:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if self.path == "/v2/":
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                piece = b" " * 65536
                try:
                    for _ in range(MAX_MANIFEST_SIZE // len(piece) + 16):
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:  # the client stopped reading at the cap
                    pass
                self.close_connection = True

        self._serve(Handler)
        return self

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._port('server')}"


@pytest.fixture
def chunked() -> Iterator[_ChunkedManifestServer]:
    with _ChunkedManifestServer() as server:
        yield server


async def test_chunked_manifest_capped(chunked: _ChunkedManifestServer, tmp_path: Path) -> None:
    async with client_for(insecure_conf(tmp_path, chunked.host)) as client:
        with pytest.raises(ManifestError, match=f"manifest is more than the {MAX_MANIFEST_SIZE} byte limit"):
            await client.fetch_manifest(parse_reference(f"{chunked.host}/caps/huge:1"))


async def test_config_cap(registry: RunningRegistry, tmp_path: Path) -> None:
    image = factory.simple_image(seed=62, files=1, layers=1)
    factory.push_image(registry.host, "caps/config:real", image)
    manifest = json.loads(image.manifest)
    manifest["config"]["size"] = MAX_CONFIG_SIZE + 1
    def put() -> None:
        httpx.put(f"http://{registry.host}/v2/caps/config/manifests/1", content=json.dumps(manifest),
                  headers={"Content-Type": image.media_type}).raise_for_status()

    await trio.to_thread.run_sync(put)
    before = len(registry.access_log())
    async with client_for(insecure_conf(tmp_path, registry.host)) as client:
        with pytest.raises(RegistryError, match=f"more than the {MAX_CONFIG_SIZE} byte limit"):
            await client.resolve_image(parse_reference(f"{registry.host}/caps/config:1"))
    assert not any(image.config_digest in line for line in registry.access_log()[before:])
