"""tether mirror sync between real docker-registry processes; oras, skopeo and podman as independent readers.

Also: a host pulling (tether and podman) through the generated registries.conf drop-in while the source
registry is stopped; a sync interrupted by killing the destination registry mid-upload, then resumed; and
tether pulling through a docker-registry configured as a pull-through cache.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import oras.provider
import pytest

from tests.harness.images import (
    build_image,
    build_index,
    build_layer,
    file,
    push_image,
    simple_image,
)
from tests.harness.podman import Podman, short_runroot, skopeo
from tests.harness.registry import RunningRegistry
from tether.engine.cli.main import main as tether
from tether.engine.copy.mirror import sync
from tether.engine.copy.progress import Progress
from tether.engine.options import CommonOptions
from tether.registry.manifest import Platform
from tether.store.oci import OCILayout

AMD64 = Platform("linux", "amd64")
SHARED = build_layer([file("shared/base", "the layer both images share\n" * 50)])
APP = build_image([SHARED, build_layer([file("app/bin", "app\n")])])
TOOL = build_image([SHARED, build_layer([file("tool/bin", "tool\n")])])
MULTI_AMD = simple_image(31, files=2, architecture="amd64")
MULTI_ARM = simple_image(32, files=2, architecture="arm64", variant="v8")
MULTI = build_index([MULTI_AMD, MULTI_ARM])


@pytest.fixture
def options(tmp_path: Path) -> CommonOptions:
    conf = tmp_path / "registries.conf"
    conf.write_text("")
    return CommonOptions(registries_conf=conf, environ={}, tls_verify=False)


@pytest.fixture
def source(registry_factory: Callable[..., RunningRegistry]) -> RunningRegistry:
    src = registry_factory()
    push_image(src.host, "org/app:1", APP)
    push_image(src.host, "tools/tool:2", TOOL)
    push_image(src.host, "team/multi:3", MULTI)
    return src


def oras_client() -> oras.provider.Registry:
    return oras.provider.Registry(insecure=True, tls_verify=False)


def uploads(reg: RunningRegistry) -> list[str]:
    """Completed blob uploads (the final PUT of an upload session) in the registry's access log."""
    return [line for line in reg.access_log() if '"PUT ' in line and "/blobs/uploads/" in line]


async def test_sync_to_registry_byte_for_byte_with_mounts_and_skips(
    source: RunningRegistry, registry_factory: Callable[..., RunningRegistry], options: CommonOptions
) -> None:
    dest = registry_factory()
    names = [f"{source.host}/org/app:1", f"{source.host}/tools/tool:2", f"{source.host}/team/multi:3"]
    report = await sync(names, to=f"docker://{dest.host}/mirror", options=options, platforms=[AMD64])
    assert report.ok, report.summary()
    by_source = {r.source: r for r in report.images}
    assert by_source[names[0]].destination == f"{dest.host}/mirror/app:1"  # skopeo sync: path.Base
    assert by_source[names[1]].destination == f"{dest.host}/mirror/tool:2"
    # The shared layer moved once and was mounted into the second repository.
    app, tool = by_source[names[0]], by_source[names[1]]
    assert app.blobs_mounted + tool.blobs_mounted == 1
    assert app.blobs_copied + tool.blobs_copied == 5
    assert len(uploads(dest)) == 5 + len(MULTI_AMD.blobs())

    # oras, an independent client, reads the same bytes back.
    client = oras_client()
    manifest = client.get_manifest(f"{dest.host}/mirror/app:1")
    assert manifest == json.loads(APP.manifest)
    for digest, data in APP.blobs():
        assert client.get_blob(f"{dest.host}/mirror/app:1", digest).content == data
    index = client.get_manifest(f"{dest.host}/mirror/multi:3",
                                allowed_media_type=["application/vnd.oci.image.index.v1+json"])
    assert [m["digest"] for m in index["manifests"]] == [MULTI_AMD.manifest_digest]
    assert index["manifests"][0] == json.loads(MULTI.manifest)["manifests"][0]  # the descriptor verbatim
    # skopeo agrees on the digests (app: the source's manifest digest; multi: the new index's).
    inspected = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{dest.host}/mirror/app:1").stdout)
    assert inspected["Digest"] == APP.manifest_digest
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{dest.host}/mirror/multi:3").stdout
    assert by_source[names[2]].digest == "sha256:" + hashlib.sha256(raw.encode()).hexdigest()

    # Re-syncing sends nothing: every blob is found with a HEAD.
    before = len(uploads(dest))
    again = await sync(names, to=f"docker://{dest.host}/mirror", options=options, platforms=[AMD64])
    assert again.ok, again.summary()
    assert sum(r.blobs_copied for r in again.images) == 0
    assert len(uploads(dest)) == before

    # A reference pinned by digest keeps its index whole (a new index would break the pin) and is pushed by digest.
    pinned = f"{source.host}/team/multi@{MULTI.manifest_digest}"
    report = await sync([pinned], to=f"docker://{dest.host}/pinned", options=options, platforms=[AMD64])
    assert report.ok, report.summary()
    assert report.images[0].destination == f"{dest.host}/pinned/multi@{MULTI.manifest_digest}"
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{report.images[0].destination}").stdout
    assert raw.encode() == MULTI.manifest

    # --scoped --all-platforms: the index is kept whole (same digest), the host keeps its port after "_".
    scoped = await sync([names[2]], to=f"docker://{dest.host}", options=options, scoped=True, all_platforms=True)
    assert scoped.ok, scoped.summary()
    (result,) = scoped.images
    host_component = source.host.replace(":", "_")
    assert result.destination == f"{dest.host}/{host_component}/team/multi:3"
    assert result.digest == MULTI.manifest_digest
    inspected = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{result.destination}").stdout)
    assert len(inspected["manifests"]) == 2


async def test_registry_to_layout_and_layout_to_registry(
    source: RunningRegistry, registry_factory: Callable[..., RunningRegistry], options: CommonOptions,
    tmp_path: Path,
) -> None:
    """The sneakernet round trip: registry -> oci-archive -> an air-gapped registry, digests intact."""
    archive = tmp_path / "usb" / "mirror.tar"
    name = f"{source.host}/team/multi:3"
    report = await sync([name, f"{source.host}/org/app:1"], to=f"oci-archive:{archive}", options=options,
                        all_platforms=True)
    assert report.ok, report.summary()
    airgap = registry_factory()
    report = await sync([f"oci-archive:{archive}"], to=f"docker://{airgap.host}", options=options, scoped=True,
                        all_platforms=True)
    assert report.ok, report.summary()
    dest = {r.source: r for r in report.images}[name].destination
    assert dest == f"{airgap.host}/{source.host.replace(':', '_')}/team/multi:3"
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{dest}").stdout.encode()
    assert raw == MULTI.manifest
    # And registry -> oci:DIR names entries by their full source reference.
    layout_dir = tmp_path / "layout"
    report = await sync([f"{source.host}/org/app:1"], to=f"oci:{layout_dir}", options=options)
    assert report.ok, report.summary()
    assert OCILayout.open(layout_dir).resolve(f"{source.host}/org/app:1").digest == APP.manifest_digest


def tether_pull(store: Path, conf: Path, *names: str) -> Podman:
    """``tether pull`` into a vfs store under ``store``; the Podman view of that store (short run root)."""
    pulled = Podman(root=store / "root", runroot=short_runroot(), driver="vfs")
    status = tether(["pull", "--root", str(pulled.root), "--runroot", str(pulled.runroot), "--storage-driver",
                     "vfs", "--registries-conf", str(conf), "--progress", "none", *names])
    assert status == 0
    return pulled


def _podman_pull(podman: Podman, conf: Path, name: str) -> subprocess.CompletedProcess[str]:
    auth = conf.with_name("auth.json")
    auth.write_text("{}")
    env = {**os.environ, "CONTAINERS_REGISTRIES_CONF": str(conf), "REGISTRY_AUTH_FILE": str(auth)}
    return subprocess.run([*podman.base(), "pull", "--quiet", name], capture_output=True, text=True, env=env,
                          timeout=300)


def test_hosts_pull_from_the_mirror_with_the_dropin_while_the_source_is_down(
    source: RunningRegistry, registry_factory: Callable[..., RunningRegistry], tmp_path: Path,
    podman: Podman,
) -> None:
    dest = registry_factory()
    base_conf = tmp_path / "registries.conf"
    base_conf.write_text(f'[[registry]]\nlocation = "{source.host}"\ninsecure = true\n')
    dropin = tmp_path / "registries.conf.d" / "50-tether-mirror.conf"
    status = tether(["mirror", "sync", "--registries-conf", str(base_conf), "--dest-tls-verify=false",
                     "--platform", "linux/amd64", "--to", f"docker://{dest.host}/mirror",
                     "--registries-conf-out", str(dropin),
                     f"{source.host}/org/app:1", f"{source.host}/team/multi:3"])
    assert status == 0
    text = dropin.read_text()
    assert f'prefix = "{source.host}/org/app"' in text and f'location = "{dest.host}/mirror/app"' in text
    assert f"{source.host}/tools/tool" not in text  # exactly the synced images
    source.stop()

    # tether, as a host configured with the drop-in, pulls from the mirror.
    tether_podman = tether_pull(tmp_path / "tether-store", dropin, f"{source.host}/org/app:1",
                                f"{source.host}/team/multi:3")
    tags = {tag for image in tether_podman.images() for tag in image.get("Names") or []}
    assert {f"{source.host}/org/app:1", f"{source.host}/team/multi:3"} <= tags

    # podman too (the drop-in is a complete registries.conf v2 file).
    proc = _podman_pull(podman, dropin, f"{source.host}/org/app:1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == APP.image_id
    # An image that was not mirrored is not served: its only endpoint is the stopped source.
    proc = _podman_pull(podman, dropin, f"{source.host}/tools/tool:2")
    assert proc.returncode != 0


async def test_sync_interrupted_by_a_registry_crash_resumes(
    source: RunningRegistry, registry_factory: Callable[..., RunningRegistry], options: CommonOptions
) -> None:
    dest = registry_factory()
    # 33 MiB: above the client's 32 MiB monolithic limit, so it goes up in PATCHed pieces.
    big = build_layer([file("big/blob", os.urandom(33 * 1024 * 1024))], compression="none")
    image = build_image([SHARED, big, build_layer([file("top", "x\n")])])
    push_image(source.host, "org/big:1", image)
    name = f"{source.host}/org/big:1"
    finished: list[str] = []

    class KillMidUpload(Progress):
        def layer_bytes(self, image: str, digest: str, done: int) -> None:
            # The registry dies once a blob has arrived, while the next one's upload session is open
            # and its bytes are flowing (blobs go one at a time, in an order trio chooses).
            if finished and dest.process is not None:
                dest.kill()

        def layer_done(self, image: str, digest: str) -> None:
            finished.append(digest)

    report = await sync([name], to=f"docker://{dest.host}", options=options, jobs=1, progress=KillMidUpload())
    assert not report.ok
    (failed,) = report.images
    assert failed.error is not None
    arrived = len(finished)
    assert 1 <= arrived < len(image.blobs())

    dest.start()
    before = len(uploads(dest))
    report = await sync([name], to=f"docker://{dest.host}", options=options, jobs=1)
    assert report.ok, report.summary()
    (result,) = report.images
    assert result.blobs_present == arrived  # what arrived before the crash was not sent again
    assert result.blobs_copied == len(image.blobs()) - arrived
    assert len(uploads(dest)) - before == len(image.blobs()) - arrived
    assert any('"PATCH ' in line for line in dest.access_log())  # the big blob went up in pieces
    client = oras_client()
    assert hashlib.sha256(client.get_blob(f"{dest.host}/big:1", big.digest).content).hexdigest() == (
        big.digest.split(":")[1]
    )
    assert client.get_manifest(f"{dest.host}/big:1") == json.loads(image.manifest)


async def test_push_credentials_are_looked_up_as_for_pulls(
    source: RunningRegistry, registry_factory: Callable[..., RunningRegistry], tmp_path: Path
) -> None:
    dest = registry_factory(htpasswd={"mirror": "s3cret"})
    conf = tmp_path / "registries.conf"
    conf.write_text("")
    anonymous = CommonOptions(registries_conf=conf, environ={}, tls_verify=False)
    report = await sync([f"{source.host}/org/app:1"], to=f"docker://{dest.host}", options=anonymous)
    assert not report.ok
    auth = tmp_path / "auth.json"
    token = base64.b64encode(b"mirror:s3cret").decode()
    auth.write_text(json.dumps({"auths": {dest.host: {"auth": token}}}))
    with_auth = CommonOptions(registries_conf=conf, environ={}, tls_verify=False, authfile=auth)
    report = await sync([f"{source.host}/org/app:1"], to=f"docker://{dest.host}", options=with_auth)
    assert report.ok, report.summary()
    inspected = json.loads(skopeo("inspect", "--tls-verify=false", "--creds", "mirror:s3cret",
                                  f"docker://{dest.host}/app:1").stdout)
    assert inspected["Digest"] == APP.manifest_digest


def test_mirror_the_bound_images_of_every_deployment(
    source: RunningRegistry, registry_factory: Callable[..., RunningRegistry], tmp_path: Path
) -> None:
    from tests.harness.ostree_sysroot import make_sysroot

    sysroot = make_sysroot(tmp_path)
    sysroot.commit({"app.image": f"{source.host}/org/app:1"}, tag="v1")
    sysroot.deploy()
    sysroot.commit({"app.image": f"{source.host}/org/app:1", "tool.image": f"{source.host}/tools/tool:2"},
                   tag="v2")
    sysroot.deploy()
    conf = tmp_path / "registries.conf"
    conf.write_text("")
    layout_dir = tmp_path / "mirror"
    status = tether(["mirror", "sync", "--sysroot", str(sysroot.path), "--to", f"oci:{layout_dir}",
                     "--registries-conf", str(conf), "--tls-verify=false"])
    assert status == 0
    layout = OCILayout.open(layout_dir)
    assert {e.ref_name: e.digest for e in layout.entries()} == {
        f"{source.host}/org/app:1": APP.manifest_digest,
        f"{source.host}/tools/tool:2": TOOL.manifest_digest,
    }
    assert layout.verify() == []


def test_tether_pulls_through_a_pull_through_cache(
    source: RunningRegistry, registry_factory: Callable[..., RunningRegistry], tmp_path: Path
) -> None:
    proxy = registry_factory(proxy_remote=source.url)
    conf = tmp_path / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "{proxy.host}"\ninsecure = true\n')
    pulled = tether_pull(tmp_path / "store", conf, f"{proxy.host}/org/app:1", f"{proxy.host}/team/multi:3",
                         "--platform", "linux/arm64/v8")
    ids = {image["Id"] for image in pulled.images()}
    assert ids == {APP.image_id, MULTI_ARM.image_id}
    # The proxy fetched from the source and now holds the blobs in its own storage.
    assert any("/v2/org/app/manifests/1" in line for line in source.access_log())
    proxied = {p.name for p in (proxy.data_dir / "docker/registry/v2/blobs/sha256").glob("*/*")}
    assert {d.split(":")[1] for d, _ in APP.blobs()} <= proxied
    # A fleet host names images by their source and has the cache as a registries.conf mirror; with the
    # source down, the cache serves what it holds.
    source.stop()
    fleet = tmp_path / "fleet.conf"
    fleet.write_text(f'[[registry]]\nlocation = "{source.host}"\ninsecure = true\n\n'
                     f'[[registry.mirror]]\nlocation = "{proxy.host}"\ninsecure = true\n')
    again = tether_pull(tmp_path / "store2", fleet, f"{source.host}/org/app:1")
    assert {n: i["Id"] for i in again.images() for n in i.get("Names") or []} == {
        f"{source.host}/org/app:1": APP.image_id}



async def test_sigstore_signatures_travel_with_the_image(
    source: RunningRegistry, registry_factory: Callable[..., RunningRegistry], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.harness.signing import CosignKey, push_sigstore_attachments

    dest = registry_factory()
    key = CosignKey.generate()
    tag = push_sigstore_attachments(source.host, "org/app", APP.manifest_digest, [
        key.sign_image(manifest_digest=APP.manifest_digest, docker_reference=f"{source.host}/org/app:1")])
    home = tmp_path / "home"
    regd = home / ".config/containers/registries.d"
    regd.mkdir(parents=True)
    (regd / "sigstore.yaml").write_text(f'docker:\n  "{source.host}":\n    use-sigstore-attachments: true\n')
    monkeypatch.setenv("HOME", str(home))  # registries.d is found through $HOME, as by skopeo
    conf = tmp_path / "registries.conf"
    conf.write_text("")
    options = CommonOptions(registries_conf=conf, environ={"HOME": str(home)}, tls_verify=False)
    name = f"{source.host}/org/app:1"
    report = await sync([name], to=f"docker://{dest.host}/plain", options=options, remove_signatures=True)
    assert report.ok and report.images[0].signatures_copied == 0
    report = await sync([name], to=f"docker://{dest.host}/signed", options=options)
    assert report.ok, report.summary()
    assert report.images[0].signatures_copied == 1
    client = oras_client()
    source_sig = client.get_manifest(f"{source.host}/org/app:{tag}")
    assert client.get_manifest(f"{dest.host}/signed/app:{tag}") == source_sig
    for layer in source_sig["layers"]:
        assert client.get_blob(f"{dest.host}/signed/app:{tag}", layer["digest"]).status_code == 200
    with pytest.raises(ValueError):
        client.get_manifest(f"{dest.host}/plain/app:{tag}")


def test_bound_units_pull_keys_are_honoured(source: RunningRegistry, tmp_path: Path) -> None:
    """``--root``: each unit's TLSVerify= and Arch= apply to its image (no global --tls-verify given)."""
    root = tmp_path / "root"
    units = root / "usr/share/containers/systemd"
    units.mkdir(parents=True)
    (units / "multi.image").write_text(f"[Image]\nImage={source.host}/team/multi:3\nTLSVerify=false\nArch=arm64\n")
    (units / "app.image").write_text(f"[Image]\nImage={source.host}/org/app:1\nTLSVerify=false\n")
    bound = root / "usr/lib/bootc/bound-images.d"
    bound.mkdir(parents=True)
    for name in ("multi.image", "app.image"):
        (bound / name).symlink_to(f"/usr/share/containers/systemd/{name}")
    conf = tmp_path / "registries.conf"
    conf.write_text("")
    layout_dir = tmp_path / "mirror"
    status = tether(["mirror", "sync", "--deployment-root", str(root), "--to", f"oci:{layout_dir}", "--registries-conf",
                     str(conf), "--platform", "linux/amd64"])
    assert status == 0
    layout = OCILayout.open(layout_dir)
    entry = layout.resolve(f"{source.host}/team/multi:3")
    kept = [m["digest"] for m in json.loads(layout.read_blob(entry.digest))["manifests"]]
    assert kept == [MULTI_AMD.manifest_digest, MULTI_ARM.manifest_digest]  # --platform plus the unit's Arch=
    assert layout.resolve(f"{source.host}/org/app:1").digest == APP.manifest_digest
