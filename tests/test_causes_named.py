"""Every failure reads as one line naming the image, the layer and the cause (issue 17 item 2), end to end: the
CLI's stderr, ``--format json`` and the bound-image readiness record, for a digest mismatch, a lying size, a
redirect loop and a full disk (real docker-registry, the faulty proxy, a small tmpfs); a truncated blob and a
registry that died, through the copy engine with a short retry policy (the same executor and messages)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.harness import images as factory
from tests.harness.bound import make_root
from tests.harness.client_env import FAST_RETRIES, client_for, insecure_conf
from tests.harness.faulty_proxy import Fault, FaultyProxy
from tests.harness.registry import RunningRegistry
from tether.engine.bound.deployments import root_deployments
from tether.engine.bound.records import load_record
from tether.engine.cli.main import main
from tether.engine.copy.pull import pull
from tether.engine.options import CommonOptions
from tether.registry.manifest import Descriptor
from tether.store.containers_storage import Store

HIDDEN = ("Trio nursery", "sub-exception", "ExceptionGroup")


@pytest.fixture(scope="module")
def image() -> factory.BuiltImage:
    layer = factory.build_layer([factory.large_file("payload.bin", 3_000_000, seed=77)], "gzip")
    return factory.build_image([factory.build_layer([factory.file("etc/hello", "hi\n")], "gzip"), layer])


@pytest.fixture
def proxy(registry: RunningRegistry) -> Iterator[FaultyProxy]:
    with FaultyProxy(registry.host) as running:
        yield running


def _cli_pull(tmp: Path, host: str, name: str, capsys: pytest.CaptureFixture[str], *, root: Path | None = None
              ) -> tuple[str, dict[str, object]]:
    conf = tmp / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "{host}"\ninsecure = true\n')
    code = main(["pull", "--root", str(root or tmp / "store"), "--runroot", str(tmp / "run"), "--registries-conf",
                 str(conf), "--progress", "none", "--format", "json",
                 # a full disk, not the disk reserve (test_disk_reserve.py), is the cause under test
                 "--disk-reserve", "0", name])
    out, err = capsys.readouterr()
    assert code == 1
    (result,) = json.loads(out)
    lines = err.strip().splitlines()
    assert lines[0] == "tether: 1 of 1 images failed:"
    assert len(lines) == 2  # one line per image
    assert lines[1] == f"  {name}: {result['error']}"
    return lines[1], result


def _assert_named(line: str, *, layer: str | tuple[str, ...], cause: str) -> None:
    layers = (layer,) if isinstance(layer, str) else layer
    assert any(f"layer {one}: " in line for one in layers), line
    assert cause in line
    assert not any(word in line for word in HIDDEN), line


def test_digest_mismatch(registry: RunningRegistry, proxy: FaultyProxy, image: factory.BuiltImage,
                         tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    factory.push_image(registry.host, "causes/digest:1", image)
    digest = image.layers[1].digest
    proxy.add(Fault("corrupt", path_contains=digest, after=5000, times=100))
    line, _ = _cli_pull(tmp_path, proxy.host, f"{proxy.host}/causes/digest:1", capsys)
    _assert_named(line, layer=digest, cause="the bytes received have digest sha256:")


def test_lying_size(registry: RunningRegistry, image: factory.BuiltImage, tmp_path: Path,
                    capsys: pytest.CaptureFixture[str]) -> None:
    layer = image.layers[1]
    factory.push_image(registry.host, "causes/size:real", image)
    # the registry holds the real blob; this manifest says it is 100 bytes shorter
    manifest = json.loads(image.manifest)
    manifest["layers"][1]["size"] = layer.size - 100
    response = httpx.put(f"http://{registry.host}/v2/causes/size/manifests/1", content=json.dumps(manifest),
                         headers={"Content-Type": image.media_type})
    response.raise_for_status()
    line, _ = _cli_pull(tmp_path, registry.host, f"{registry.host}/causes/size:1", capsys)
    _assert_named(line, layer=layer.digest,
                  cause=f"the registry sends {layer.size} bytes, the descriptor says {layer.size - 100}")


def test_redirect_loop(registry: RunningRegistry, proxy: FaultyProxy, image: factory.BuiltImage,
                       tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    factory.push_image(registry.host, "causes/loop:1", image)
    digest = image.layers[1].digest
    proxy.add(Fault("redirect", path_contains=digest, status=307, times=1000))
    line, _ = _cli_pull(tmp_path, proxy.host, f"{proxy.host}/causes/loop:1", capsys)
    _assert_named(line, layer=digest, cause="more than 10 redirects (a redirect loop?)")


def test_full_disk(registry: RunningRegistry, image: factory.BuiltImage, tmp_path: Path,
                   capsys: pytest.CaptureFixture[str]) -> None:
    factory.push_image(registry.host, "causes/enospc:1", image)
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        line, _ = _cli_pull(tmp_path, registry.host, f"{registry.host}/causes/enospc:1", capsys, root=small / "s")
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)
    # Whichever layer's write meets the full disk first is named: layer 1's blob fills it (kept in the download
    # cache as it streams, and extracted), and layer 0, extracted meanwhile, may be the one that hits ENOSPC.
    _assert_named(line, layer=(image.layers[0].digest, image.layers[1].digest), cause="No space left on device")


def test_readiness_record_error(registry: RunningRegistry, proxy: FaultyProxy, image: factory.BuiltImage,
                                tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    factory.push_image(registry.host, "causes/bound:1", image)
    digest = image.layers[1].digest
    proxy.add(Fault("corrupt", path_contains=digest, after=5000, times=100))
    name = f"{proxy.host}/causes/bound:1"
    root = make_root(tmp_path / "root", {"app.image": name})
    store = tmp_path / "store"
    code = main(["bound", "sync", "--deployment-root", str(root), "--root", str(store), "--tls-verify=false",
                 "--progress", "none", "--format", "json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 1
    (failure,) = out["failures"]
    _assert_named(failure["error"], layer=digest, cause="the bytes received have digest")
    (deployment,) = root_deployments([root])
    record = load_record(store, deployment)
    assert record is not None and not record.ready
    (state,) = record.images
    assert state.error == failure["error"]


@pytest.mark.parametrize("kind", ["truncated", "died"])
async def test_truncated_blob_and_dead_registry(
    registry_factory: Callable[..., RunningRegistry], image: factory.BuiltImage, tmp_path: Path, kind: str
) -> None:
    running = registry_factory()
    factory.push_image(running.host, "causes/gone:1", image)
    digest = image.layers[1].digest
    policy = dataclasses.replace(FAST_RETRIES, outage_timeout=0.5, outage_max_delay=0.1)
    with FaultyProxy(running.host) as proxy:
        host = proxy.host
        if kind == "truncated":  # every answer ends before its first byte: no progress
            proxy.add(Fault("cut", path_contains=digest, after=0, times=1000))
        name = f"{host}/causes/gone:1"
        options = CommonOptions(root=tmp_path / "store", runroot=tmp_path / "run", registries_conf=tmp_path / "r.conf",
                                signature_policy=tmp_path / "policy.json", environ={})
        (tmp_path / "policy.json").write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
        (tmp_path / "r.conf").write_text(f'[[registry]]\nlocation = "{host}"\ninsecure = true\n')
        store = Store.open(options.root, runroot=options.runroot)
        async with client_for(insecure_conf(tmp_path / "c", host), retry_policy=policy) as client:
            if kind == "died":
                original = client._blobs.open  # kill the registry when the layer is first asked for

                def open_then_kill(sources: object, descriptor: Descriptor, **kwargs: object) -> object:
                    if descriptor.digest == digest:
                        running.kill()
                    return original(sources, descriptor, **kwargs)  # type: ignore[arg-type]

                client._blobs.open = open_then_kill  # type: ignore[method-assign,assignment]
            report = await pull([name], store=store, options=options, client=client)
    (result,) = report.results
    assert result.error is not None
    # the proxy in front resets connections once its registry is gone
    cause = "peer closed connection without sending complete message body" if kind == "truncated" else (
        "Server disconnected without sending a response")
    # once the registry is gone, whichever layer fails first names the image's failure
    layers = (digest,) if kind == "truncated" else tuple(layer.digest for layer in image.layers)
    _assert_named(result.error, layer=layers, cause=cause)
    assert "of failures)" in result.error  # how long it was tried
