"""The harness builds images that the real tools accept, so the rest of the suite stands on solid ground."""

from __future__ import annotations

import json
from pathlib import Path

from tests.harness import images as im
from tests.harness.podman import Podman, skopeo
from tests.harness.registry import RunningRegistry


def every_entry_kind() -> list[im.Entry]:
    return [
        im.directory("etc"),
        im.file("etc/hostname", "tether\n"),
        im.file("etc/secret", b"x", mode=0o4755, uid=1000, gid=1001),
        im.symlink("etc/link", "hostname"),
        im.hardlink("etc/hard", "etc/hostname"),
        im.fifo("etc/fifo"),
        im.char_device("etc/null", 1, 3),
        im.file("etc/" + "long" * 40, b"long name"),
        im.file("etc/cap", b"\x7fELF", mode=0o755, xattrs={"user.tether": b"yes"}),
        im.directory("tmp", mode=0o1777),
    ]


def test_every_entry_kind_roundtrips_through_podman(registry: RunningRegistry, podman: Podman, tmp_path: Path) -> None:
    base = im.build_layer(every_entry_kind(), "gzip")
    top = im.build_layer([im.whiteout("etc/fifo"), im.opaque("tmp"), im.file("tmp/x", "y")], "zstd")
    image = im.build_image([base, top], labels={"case": "harness"})
    digest = im.push_image(registry.host, "harness/every:1", image)
    assert digest == image.manifest_digest

    image_id = podman.pull(f"{registry.host}/harness/every:1")
    assert image_id == image.image_id
    inspected = podman.json("image", "inspect", image_id)[0]
    assert inspected["RootFS"]["Layers"] == [base.diff_id, top.diff_id]
    assert inspected["Labels"] == {"case": "harness"}


def test_index_and_docker_media_types_inspect_with_skopeo(registry: RunningRegistry, tmp_path: Path) -> None:
    amd = im.simple_image(1, architecture="amd64")
    arm = im.simple_image(2, architecture="arm64", variant="v8")
    index = im.build_index([amd, arm])
    im.push_image(registry.host, "harness/multi:1", index)
    raw = skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{registry.host}/harness/multi:1").stdout
    assert json.loads(raw)["manifests"][1]["platform"] == {"os": "linux", "architecture": "arm64", "variant": "v8"}
    out = skopeo("inspect", "--tls-verify=false", "--override-arch", "arm64",
                 f"docker://{registry.host}/harness/multi:1").stdout
    # skopeo reports the digest of what the tag names (the index) and the chosen image's layers.
    assert json.loads(out)["Digest"] == index.manifest_digest
    assert json.loads(out)["Layers"] == [layer.digest for layer in arm.layers]

    docker = im.simple_image(3, docker=True)
    im.push_image(registry.host, "harness/docker:1", docker)
    raw = skopeo("inspect", "--tls-verify=false", "--raw", f"docker://{registry.host}/harness/docker:1").stdout
    assert json.loads(raw)["mediaType"] == im.DOCKER_MANIFEST


def test_oci_layout_is_readable_by_skopeo(tmp_path: Path) -> None:
    image = im.simple_image(4)
    im.write_oci_layout(tmp_path / "layout", {"app:1": image})
    out = skopeo("inspect", f"oci:{tmp_path / 'layout'}:app:1").stdout
    assert json.loads(out)["Digest"] == image.manifest_digest


def test_registry_restarts_on_same_port_with_its_data(registry_factory: object, tmp_path: Path) -> None:
    from collections.abc import Callable

    assert callable(registry_factory)
    make: Callable[..., RunningRegistry] = registry_factory
    reg = make(htpasswd={"alice": "s3cret"})
    image = im.simple_image(5)
    im.push_image(reg.host, "auth/app:1", image, credentials=("alice", "s3cret"))
    reg.stop()
    reg.start()
    out = skopeo("inspect", "--tls-verify=false", "--creds", "alice:s3cret", f"docker://{reg.host}/auth/app:1").stdout
    assert json.loads(out)["Digest"] == image.manifest_digest
    denied = skopeo("inspect", "--tls-verify=false", f"docker://{reg.host}/auth/app:1", check=False)
    assert denied.returncode != 0


def test_podman_runs_a_container_from_a_factory_image(registry: RunningRegistry, podman: Podman) -> None:
    layer = im.build_layer([*im.busybox_entries(), im.file("etc/motd", "bound and ready\n")])
    image = im.build_image([layer], cmd=["/bin/cat", "/etc/motd"])
    im.push_image(registry.host, "harness/run:1", image)
    podman.pull(f"{registry.host}/harness/run:1")
    out = podman.run("run", "--rm", "--net=none", f"{registry.host}/harness/run:1")
    assert out.stdout == "bound and ready\n"
