"""``tether inspect`` against ``skopeo inspect`` on the same registry images."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.harness import images as factory
from tests.harness.registry import RunningRegistry
from tether.engine.cli.inspect import go_json, go_time, oci_config_view
from tether.engine.cli.main import main

#: keys skopeo 1.9 prints (newer skopeo adds Variant and LayersData, which tether prints too)
SKOPEO_KEYS = ("Name", "Digest", "RepoTags", "Created", "DockerVersion", "Labels", "Architecture", "Os", "Layers",
               "Env")


def _skopeo(*args: str) -> bytes:
    return subprocess.run(["skopeo", "inspect", "--tls-verify=false", *args], check=True, capture_output=True).stdout


def _tether(capsysbinary: pytest.CaptureFixture[bytes], tmp_path: Path, *args: str) -> bytes:
    auth = tmp_path / "auth.json"
    auth.write_text('{"auths": {}}')
    conf = tmp_path / "registries.conf"
    conf.write_text("")
    capsysbinary.readouterr()
    assert main(["inspect", "--tls-verify=false", "--authfile", str(auth), "--registries-conf", str(conf),
                 *args]) == 0
    return capsysbinary.readouterr().out


@pytest.fixture(scope="module")
def pushed(registry: RunningRegistry) -> dict[str, Any]:
    oci = factory.simple_image(301, files=2, labels={"org.opencontainers.image.title": "a <b> & c"},
                               created="2024-01-02T03:04:05.123456780+02:00", env=("A=1", "PATH=/bin"))
    docker = factory.simple_image(302, files=2, docker=True, cmd=("/bin/sh",))
    arm = factory.simple_image(303, files=1, architecture="arm64", variant="v8")
    index = factory.build_index([docker, arm], docker=True)
    factory.push_image(registry.host, "inspect/app:1.0", oci)
    factory.push_image(registry.host, "inspect/app:latest", oci)
    factory.push_image(registry.host, "inspect/docker:1", docker)
    factory.push_image(registry.host, "inspect/multi:1", index)
    return {"oci": oci, "docker": docker, "arm": arm, "index": index}


@pytest.mark.parametrize("repo_tag", ["inspect/app:1.0", "inspect/docker:1", "inspect/multi:1"])
def test_inspect_matches_skopeo(
    registry: RunningRegistry, pushed: dict[str, Any], repo_tag: str, tmp_path: Path,
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    ref = f"{registry.host}/{repo_tag}"
    ours = json.loads(_tether(capsysbinary, tmp_path, f"docker://{ref}"))
    theirs = json.loads(_skopeo(f"docker://{ref}"))
    assert {k: ours[k] for k in SKOPEO_KEYS} == {k: theirs[k] for k in SKOPEO_KEYS}
    assert ours["Endpoint"] == ref.rsplit(":", 1)[0]
    assert [d["Digest"] for d in ours["LayersData"]] == ours["Layers"]
    assert all(d["Size"] > 0 and d["MIMEType"].startswith("application/vnd.") for d in ours["LayersData"])


def test_inspect_output_bytes_like_skopeo(
    registry: RunningRegistry, pushed: dict[str, Any], tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """Formatting too: Go's indentation, HTML escapes and time format (nanoseconds, offsets)."""
    ref = f"docker://{registry.host}/inspect/app:1.0"
    ours = json.loads(_tether(capsysbinary, tmp_path, ref))
    theirs = _skopeo(ref)
    trimmed = {k: ours[k] for k in SKOPEO_KEYS}
    assert go_json(trimmed) + b"\n" == theirs
    assert ours["Created"] == "2024-01-02T03:04:05.12345678+02:00"


def test_inspect_raw_and_config(
    registry: RunningRegistry, pushed: dict[str, Any], tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    for repo_tag, image in (("inspect/multi:1", pushed["index"]), ("inspect/docker:1", pushed["docker"])):
        ref = f"{registry.host}/{repo_tag}"
        assert _tether(capsysbinary, tmp_path, "--raw", ref) == image.manifest
        assert _tether(capsysbinary, tmp_path, "--config", "--raw", ref) == pushed["docker"].config
        assert _tether(capsysbinary, tmp_path, "--config", ref) == _skopeo("--config", f"docker://{ref}")
    arm = f"{registry.host}/inspect/multi:1"
    assert _tether(capsysbinary, tmp_path, "--platform", "linux/arm64", "--config", "--raw", arm) == (
        pushed["arm"].config
    )
    variant = json.loads(_tether(capsysbinary, tmp_path, "--platform", "linux/arm64/v8", "--no-tags", arm))
    assert variant["Variant"] == "v8" and variant["Architecture"] == "arm64" and variant["RepoTags"] == []


def test_inspect_errors_one_line(
    registry: RunningRegistry, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    auth = tmp_path / "auth.json"
    auth.write_text('{"auths": {}}')
    status = main(["inspect", "--tls-verify=false", "--authfile", str(auth), "--registries-conf",
                   str(tmp_path / "missing.conf"), f"{registry.host}/inspect/none:1"])
    assert status == 1
    status = main(["inspect", "--tls-verify=false", "--authfile", str(auth), f"{registry.host}/inspect/none:1"])
    err = capsysbinary.readouterr().err.decode()
    assert status == 1
    assert f"tether: GET {registry.host}/v2/inspect/none/manifests/1: 404 MANIFEST_UNKNOWN\n" in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-01-02T03:04:05Z", "2024-01-02T03:04:05Z"),
        ("2024-01-02T03:04:05.000000000Z", "2024-01-02T03:04:05Z"),
        ("2024-01-02T03:04:05.5+00:00", "2024-01-02T03:04:05.5Z"),
        ("2024-01-02T03:04:05.120-05:30", "2024-01-02T03:04:05.12-05:30"),
        ("garbage", None),
        (None, None),
    ],
)
def test_go_time(text: str | None, expected: str | None) -> None:
    assert go_time(text) == expected


def test_oci_config_view_drops_docker_fields() -> None:
    view = oci_config_view({"docker_version": "20", "container_config": {}, "os": "linux", "architecture": "amd64",
                            "config": {"Cmd": ["x"], "Env": ["A=1"], "Hostname": "h"},
                            "rootfs": {"type": "layers", "diff_ids": []}})
    assert list(view) == ["architecture", "os", "config", "rootfs"]
    assert list(view["config"]) == ["Env", "Cmd"]


def test_inspect_through_a_mirror_names_the_endpoint(
    registry_factory: Any, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    primary, mirror = registry_factory(), registry_factory()
    image = factory.simple_image(310, files=1, layers=1)
    factory.push_image(mirror.host, "inspect/mirrored:1", image)
    conf = tmp_path / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "{primary.host}"\ninsecure = true\n'
                    f'[[registry.mirror]]\nlocation = "{mirror.host}"\ninsecure = true\n')
    auth = tmp_path / "auth.json"
    auth.write_text('{"auths": {}}')
    capsysbinary.readouterr()
    assert main(["inspect", "--authfile", str(auth), "--registries-conf", str(conf),
                 f"{primary.host}/inspect/mirrored:1"]) == 0
    out = json.loads(capsysbinary.readouterr().out)
    assert out["Name"] == f"{primary.host}/inspect/mirrored"
    assert out["Endpoint"] == f"{mirror.host}/inspect/mirrored"
    assert out["Digest"] == image.manifest_digest and out["RepoTags"] == ["1"]


def test_inspect_oci_layout_matches_skopeo(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    image = factory.simple_image(320, files=1, labels={"k": "v"})
    index = factory.build_index([image, factory.simple_image(321, files=1, architecture="arm64")])
    layout = tmp_path / "layout"
    factory.write_oci_layout(layout, {"one": image, "multi": index})
    for ref, raw in ((f"oci:{layout}:one", image.manifest), (f"oci:{layout}:multi", index.manifest)):
        ours = json.loads(_tether(capsysbinary, tmp_path, ref))
        theirs = json.loads(subprocess.run(["skopeo", "inspect", ref], check=True, capture_output=True).stdout)
        keys = [k for k in SKOPEO_KEYS if k != "Name"]
        assert "Name" not in ours and "Name" not in theirs
        assert {k: ours[k] for k in keys} == {k: theirs[k] for k in keys}
        assert ours["Endpoint"] == ref
        assert _tether(capsysbinary, tmp_path, "--raw", ref) == raw
    assert _tether(capsysbinary, tmp_path, "--config", "--raw", f"oci:{layout}:multi") == image.config
