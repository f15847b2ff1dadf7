"""store/ against the real podman 4.3 / skopeo 1.9: podman reads what tether writes, tether reads what
podman pulls, and both agree field by field on the same image."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import images as factory
from tests.harness.podman import RUN_DENIED, Podman, podman_for, skopeo
from tests.harness.registry import RunningRegistry
from tests.harness.store_pull import pull_into_store, release_podman
from tether.store import containers_storage
from tether.store.containers_storage import Store
from tether.store.errors import StoreError


def rich_image(seed: int) -> factory.BuiltImage:
    """Three layers exercising owners, modes, links, devices and whiteouts."""
    base = factory.build_layer([
        factory.directory("etc"),
        factory.file("etc/os-release", f"ID=tether-{seed}\n"),
        factory.file("etc/shadow", "root:*:1::::::\n", mode=0o640, gid=42),
        factory.directory("usr/bin", mode=0o755),
        factory.file("usr/bin/tool", b"\x7fELF" + bytes(range(256)) * 8, mode=0o4755),
        factory.symlink("usr/bin/alias", "tool"),
        factory.hardlink("usr/bin/tool2", "usr/bin/tool"),
        factory.directory("tmp", mode=0o1777),
        factory.directory("home/user", uid=1000, gid=1000),
        factory.file("home/user/.profile", "export A=1\n", uid=1000, gid=1000),
        factory.fifo("run-fifo"),
        factory.char_device("dev-null", 1, 3),
        factory.directory("var/cache"),
        factory.file("var/cache/old", "stale"),
        factory.file("var/cache/keep", "keep"),
    ])
    middle = factory.build_layer([
        factory.directory("etc"),
        factory.file("etc/os-release", f"ID=tether-{seed}\nVERSION=2\n"),
        factory.whiteout("var/cache/old"),
        factory.directory("opt/app", uid=1000),
        factory.file("opt/app/data", b"x" * 5000, uid=1000, gid=100),
    ], compression="zstd")
    top = factory.build_layer([
        factory.opaque("var/cache"),
        factory.file("var/cache/new", "fresh"),
    ], compression="none")
    return factory.build_image([base, middle, top], labels={"seed": str(seed)})


@pytest.fixture(scope="module")
def pushed(registry: RunningRegistry) -> dict[str, Any]:
    image = rich_image(1)
    factory.push_image(registry.host, "store/rich:v1", image)
    simple = factory.simple_image(7, files=3)
    factory.push_image(registry.host, "store/simple:v1", simple)
    index = factory.build_index([factory.simple_image(8, files=2), factory.simple_image(9, files=2,
                                                                                        architecture="arm64")])
    factory.push_image(registry.host, "store/multi:v1", index)
    docker = factory.build_image([image.layers[0], factory.build_layer([factory.file("docker", "schema2")])],
                                 docker=True, created="2023-11-14T22:13:20.123456789+02:00")
    factory.push_image(registry.host, "store/docker:v1", docker)
    return {"rich": image, "simple": simple, "index": index, "docker": docker}


def tree_listing(root: Path) -> dict[str, tuple[Any, ...]]:
    """type, mode, owner, size, content digest, link target, device, xattrs of every entry under root."""
    out: dict[str, tuple[Any, ...]] = {}
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = path.lstat()
            kind = stat.S_IFMT(st.st_mode)
            content = None
            link = None
            if stat.S_ISREG(st.st_mode):
                content = hashlib.sha256(path.read_bytes()).hexdigest()
                if st.st_nlink > 1:
                    link = inodes.setdefault(st.st_ino, rel)
            elif stat.S_ISLNK(st.st_mode):
                link = os.readlink(path)
            try:
                xattrs = tuple(sorted((k, os.getxattr(path, k, follow_symlinks=False))
                                      for k in os.listxattr(path, follow_symlinks=False)
                                      if not k.startswith("security.selinux")))
            except OSError:
                xattrs = ()
            rdev = st.st_rdev if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else 0
            mtime = None if stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode) else int(st.st_mtime)
            out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                        st.st_size if kind == stat.S_IFREG else 0, content, link, rdev, xattrs, mtime)
    return out


@pytest.fixture
def tether_podman(tmp_path: Path) -> Iterator[Podman]:
    instance = podman_for(tmp_path / "tether")
    try:
        yield instance
    finally:
        release_podman(instance.root, instance.runroot)


def test_podman_reads_what_tether_wrote(registry: RunningRegistry, pushed: dict[str, Any],
                                        tether_podman: Podman) -> None:
    image = pushed["rich"]
    store = Store.open(tether_podman.root)
    record = pull_into_store(store, registry.host, "store/rich:v1")
    assert record.id == image.image_id
    listed = tether_podman.images()
    assert [i["Id"] for i in listed] == [image.image_id]
    assert listed[0]["Names"] == [f"{registry.host}/store/rich:v1"]
    assert listed[0]["Digest"] == image.manifest_digest
    inspect = tether_podman.json("image", "inspect", f"{registry.host}/store/rich:v1")[0]
    assert inspect["RootFS"]["Layers"] == [layer.diff_id for layer in image.layers]
    assert inspect["Labels"] == {"seed": "1"}
    assert inspect["Digest"] == image.manifest_digest


def test_same_image_same_records(registry: RunningRegistry, pushed: dict[str, Any], podman: Podman,
                                 tether_podman: Podman) -> None:
    """Pulled by podman into store A, by tether into store B: layers.json/images.json agree on every
    field but times and link ids, and the big-data files are byte-identical."""
    for ref in ("store/rich:v1", "store/multi:v1", "store/docker:v1"):
        podman.pull(f"{registry.host}/{ref}")
        pull_into_store(Store.open(tether_podman.root), registry.host, ref)
    a, b = podman.root, tether_podman.root

    def layers(root: Path) -> list[dict[str, Any]]:
        records = json.loads((root / "overlay-layers" / "layers.json").read_text())
        for r in records:
            assert r.pop("created")
        return sorted(records, key=lambda r: r["id"])

    def images(root: Path) -> list[dict[str, Any]]:
        return sorted(json.loads((root / "overlay-images" / "images.json").read_text()), key=lambda r: r["id"])

    assert layers(b) == layers(a)
    assert images(b) == images(a)
    for image in images(a):
        for name in sorted(os.listdir(a / "overlay-images" / image["id"])):
            assert (b / "overlay-images" / image["id"] / name).read_bytes() == \
                (a / "overlay-images" / image["id"] / name).read_bytes(), name
    # field order (struct order, omitempty) as in podman's files
    a_layers = json.loads((a / "overlay-layers" / "layers.json").read_text())
    b_by_id = {r["id"]: r for r in json.loads((b / "overlay-layers" / "layers.json").read_text())}
    for rec in a_layers:
        assert list(b_by_id[rec["id"]]) == list(rec)
    b_images = {r["id"]: r for r in json.loads((b / "overlay-images" / "images.json").read_text())}
    for rec in json.loads((a / "overlay-images" / "images.json").read_text()):
        assert list(b_images[rec["id"]]) == list(rec)
        assert list(b_images[rec["id"]]["big-data-sizes"]) == list(rec["big-data-sizes"])
    # overlay layout
    for rec in a_layers:
        for name in ("diff", "link", "work", "merged", "empty", "lower"):
            pa, pb = a / "overlay" / rec["id"] / name, b / "overlay" / rec["id"] / name
            assert pa.exists() == pb.exists(), (rec["id"], name)
            if pa.exists():
                sa, sb = pa.lstat(), pb.lstat()
                assert (stat.S_IMODE(sa.st_mode), sa.st_uid, sa.st_gid) == \
                       (stat.S_IMODE(sb.st_mode), sb.st_uid, sb.st_gid), (rec["id"], name)
        link_b = (b / "overlay" / rec["id"] / "link").read_text()
        assert len(link_b) == 26 and os.readlink(b / "overlay" / "l" / link_b) == f"../{rec['id']}/diff"
        if "parent" in rec:
            lower_a = (a / "overlay" / rec["id"] / "lower").read_text().split(":")
            lower_b = (b / "overlay" / rec["id"] / "lower").read_text().split(":")
            assert len(lower_a) == len(lower_b)
        assert tree_listing(b / "overlay" / rec["id"] / "diff") == _without_whiteout_mtimes(
            tree_listing(a / "overlay" / rec["id"] / "diff"), tree_listing(b / "overlay" / rec["id"] / "diff"))
    # and the mounted root filesystems (overlayfs merging lower layers, whiteouts, opaque dirs)
    name = f"{registry.host}/store/rich:v1"
    mounted_a = Path(podman.run("image", "mount", name).stdout.strip())
    mounted_b = Path(tether_podman.run("image", "mount", name).stdout.strip())
    try:
        tree_a, tree_b = tree_listing(mounted_a), tree_listing(mounted_b)
        assert tree_b == tree_a
        assert "var/cache/new" in tree_b and "var/cache/keep" not in tree_b and "var/cache/old" not in tree_b
    finally:
        podman.run("image", "unmount", name, check=False)
        tether_podman.run("image", "unmount", name, check=False)


def _without_whiteout_mtimes(a: dict[str, tuple[Any, ...]], b: dict[str, tuple[Any, ...]]) -> dict[str, Any]:
    # c/storage gives whiteout devices mtime "now": take b's for those entries only.
    out = dict(a)
    for key, value in a.items():
        if stat.S_ISCHR(value[0]) and value[7] == 0 and key in b:
            out[key] = (*value[:-1], b[key][-1])
    return out


def test_tether_reads_what_podman_pulled(registry: RunningRegistry, pushed: dict[str, Any], podman: Podman) -> None:
    image = pushed["rich"]
    podman.pull(f"{registry.host}/store/rich:v1")
    podman.pull(f"{registry.host}/store/multi:v1")
    store = Store.open(podman.root)
    assert store.driver == "overlay"
    ids = {i.id for i in store.list_images()}
    assert image.image_id in ids and len(ids) == 2
    found = store.find_image(f"{registry.host}/store/rich:v1")
    assert found.id == image.image_id
    assert store.find_image(image.image_id[:12]).id == image.image_id
    assert store.find_image(f"sha256:{image.image_id}").id == image.image_id
    assert store.find_image(image.manifest_digest).id == image.image_id
    assert store.find_image(f"{registry.host}/store/rich@{image.manifest_digest}").id == image.image_id
    multi = store.find_image(f"{registry.host}/store/multi:v1")
    assert multi.digest == pushed["index"].manifest_digest
    assert pushed["index"].images[0].manifest_digest in multi.digests
    assert store.image_big_data(image.image_id, "manifest") == image.manifest
    assert store.image_big_data(image.image_id, image.config_digest) == image.config
    chain = store.layer_chain(found.top_layer or "")
    assert [layer.diff_digest for layer in chain] == [layer.diff_id for layer in image.layers]
    assert [layer.compressed_digest for layer in chain] == [layer.digest for layer in image.layers]
    assert chain[0].compression == 2 and chain[1].compression == 4 and chain[2].compression == 0


def test_export_and_check_on_podman_store(registry: RunningRegistry, pushed: dict[str, Any], podman: Podman) -> None:
    image = pushed["rich"]
    podman.pull(f"{registry.host}/store/rich:v1")
    store = Store.open(podman.root)
    chain = store.layer_chain(store.find_image(image.image_id).top_layer or "")
    for layer, built in zip(chain, image.layers, strict=True):
        data = b"".join(store.export_layer(layer.id))
        assert data == built.tar
    assert store.check() == []


def test_podman_save_skopeo_copy_and_mount(registry: RunningRegistry, pushed: dict[str, Any],
                                          tether_podman: Podman, tmp_path: Path) -> None:
    image = pushed["rich"]
    store = Store.open(tether_podman.root)
    pull_into_store(store, registry.host, "store/rich:v1")
    name = f"{registry.host}/store/rich:v1"
    out = tmp_path / "dir-copy"
    skopeo("copy", f"containers-storage:{tether_podman.store_spec}{name}", f"dir:{out}")
    manifest = json.loads((out / "manifest.json").read_text())
    for desc, built in zip(manifest["layers"], image.layers, strict=True):
        blob = (out / desc["digest"].split(":")[1]).read_bytes()
        assert "sha256:" + hashlib.sha256(blob).hexdigest() == built.diff_id
    tether_podman.run("save", "--format", "oci-archive", "-o", str(tmp_path / "saved.tar"), name)
    assert (tmp_path / "saved.tar").stat().st_size > 0
    mount = tether_podman.run("image", "mount", name, check=False)
    if mount.returncode == 0:
        try:
            mounted = Path(mount.stdout.strip())
            assert (mounted / "var/cache/new").read_text() == "fresh"
            assert not (mounted / "var/cache/keep").exists() and not (mounted / "var/cache/old").exists()
            assert (mounted / "etc/os-release").read_text().endswith("VERSION=2\n")
        finally:
            tether_podman.run("image", "unmount", name, check=False)
    assert store.check() == []


@pytest.mark.parametrize("as_additional_store", [False, True], ids=["primary", "additionalimagestore"])
def test_podman_run_tether_image(as_additional_store: bool, registry: RunningRegistry, tether_podman: Podman,
                                 tmp_path: Path) -> None:
    """podman runs a container from an image tether committed (static busybox, overlay lower layers), from
    the store itself and, as on a bootc host, with the store as an additional image store."""
    busybox = Path("/usr/bin/busybox")
    if not busybox.exists():
        pytest.skip("no static busybox on this host to build a runnable image")
    image = factory.build_image([
        factory.build_layer([factory.directory("bin"), factory.file("bin/busybox", busybox.read_bytes(), mode=0o755)]),
        factory.build_layer([factory.directory("etc"), factory.file("etc/message", "hello from tether\n")]),
    ])
    factory.push_image(registry.host, "store/runnable:v1", image)
    pull_into_store(Store.open(tether_podman.root), registry.host, "store/runnable:v1")
    runner: Podman = tether_podman
    extra: tuple[str, ...] = ()
    if as_additional_store:
        runner = podman_for(tmp_path / "primary")
        extra = ("--storage-opt", f"additionalimagestore={tether_podman.root}")
    try:
        proc = runner.run(*extra, "run", "--rm", "--network=none", f"{registry.host}/store/runnable:v1",
                          "/bin/busybox", "cat", "/etc/message", check=False)
        if RUN_DENIED in proc.stderr:
            pytest.skip("podman run is not permitted in this sandbox (crun setrlimit RLIMIT_NOFILE)")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "hello from tether\n"
    finally:
        if runner is not tether_podman:
            release_podman(runner.root, runner.runroot)


def test_delete_image_keeps_shared_layers(registry: RunningRegistry, pushed: dict[str, Any],
                                          tether_podman: Podman) -> None:
    base = factory.build_layer([factory.file("shared", "base")])
    one = factory.build_image([base, factory.build_layer([factory.file("one", "1")])])
    two = factory.build_image([base, factory.build_layer([factory.file("two", "2")])])
    factory.push_image(registry.host, "store/del-one:v1", one)
    factory.push_image(registry.host, "store/del-two:v1", two)
    store = Store.open(tether_podman.root)
    pull_into_store(store, registry.host, "store/del-one:v1")
    pull_into_store(store, registry.host, "store/del-two:v1")
    removed = store.delete_image(f"{registry.host}/store/del-one:v1")
    assert len(removed) == 1 and removed[0] != base.diff_id.split(":")[1]
    assert not (tether_podman.root / "overlay" / removed[0]).exists()
    assert [i["Id"] for i in tether_podman.images()] == [two.image_id]
    removed = store.delete_image(two.image_id[:10])
    assert len(removed) == 2
    assert tether_podman.images() == []
    assert store.list_layers() == []
    assert os.listdir(tether_podman.root / "overlay" / "l") == []


def test_vfs_store(registry: RunningRegistry, pushed: dict[str, Any], tmp_path: Path) -> None:
    image = pushed["rich"]
    ours = podman_for(tmp_path / "ours", driver="vfs")
    theirs = podman_for(tmp_path / "theirs", driver="vfs")
    store = Store.open(ours.root, driver="vfs")
    assert not store.concurrent_layers
    pull_into_store(store, registry.host, "store/rich:v1")
    theirs.pull(f"{registry.host}/store/rich:v1")
    assert Store.open(ours.root).driver == "vfs"
    assert [i["Id"] for i in ours.images()] == [image.image_id]
    top = store.find_image(image.image_id).top_layer or ""
    a = tree_listing(theirs.root / "vfs" / "dir" / top)
    b = tree_listing(ours.root / "vfs" / "dir" / top)
    assert b == a
    a_layers = {r["id"]: r for r in json.loads((theirs.root / "vfs-layers" / "layers.json").read_text())}
    for rec in json.loads((ours.root / "vfs-layers" / "layers.json").read_text()):
        rec.pop("created")
        a_layers[rec["id"]].pop("created")
        assert rec == a_layers[rec["id"]]


def test_additional_image_store(registry: RunningRegistry, pushed: dict[str, Any], tether_podman: Podman,
                                tmp_path: Path) -> None:
    """bootc's setup: podman --storage-opt additionalimagestore=<tether's store> finds tether's images."""
    image = pushed["simple"]
    pull_into_store(Store.open(tether_podman.root), registry.host, "store/simple:v1")
    primary = podman_for(tmp_path / "primary")
    try:
        opt = ("--storage-opt", f"additionalimagestore={tether_podman.root}")
        listed = json.loads(primary.run(*opt, "images", "--format", "json").stdout)
        assert [i["Id"] for i in listed] == [image.image_id]
        inspect = json.loads(primary.run(*opt, "image", "inspect", image.image_id).stdout)[0]
        assert inspect["RootFS"]["Layers"] == [layer.diff_id for layer in image.layers]
        # and tether reads the same arrangement
        store = Store.open(primary.root, additional_image_stores=[tether_podman.root])
        found = store.find_image(f"{registry.host}/store/simple:v1")
        assert found.read_only and found.id == image.image_id
        assert store.image_big_data(found.id, "manifest") == image.manifest
        chain = store.layer_chain(found.top_layer or "")
        assert all(layer.read_only for layer in chain)
        assert store.layer_directory(chain[0]).is_relative_to(tether_podman.root)
    finally:
        release_podman(primary.root, primary.runroot)


def test_copy_image_between_stores(registry: RunningRegistry, pushed: dict[str, Any], podman: Podman,
                                   tether_podman: Podman) -> None:
    image = pushed["rich"]
    podman.pull(f"{registry.host}/store/rich:v1")
    src = Store.open(podman.root)
    dst = Store.open(tether_podman.root)
    copied = containers_storage.copy_image(src, image.image_id, dst, names=["localhost/copied:1"])
    assert copied.names == ("localhost/copied:1",)
    listed = tether_podman.images()
    assert [(i["Id"], i["Names"], i["Digest"]) for i in listed] == [
        (image.image_id, ["localhost/copied:1"], image.manifest_digest)]
    a = {r["id"]: r for r in json.loads((podman.root / "overlay-layers" / "layers.json").read_text())}
    for rec in json.loads((tether_podman.root / "overlay-layers" / "layers.json").read_text()):
        rec.pop("created")
        a[rec["id"]].pop("created")
        assert rec == a[rec["id"]]
    src_img = json.loads((podman.root / "overlay-images" / "images.json").read_text())[0]
    dst_img = json.loads((tether_podman.root / "overlay-images" / "images.json").read_text())[0]
    for key in ("digest", "layer", "metadata", "big-data-names", "big-data-sizes", "big-data-digests", "created"):
        assert dst_img[key] == src_img[key], key
    assert dst.check() == []


def test_podman_reuses_tether_layers(registry: RunningRegistry, pushed: dict[str, Any], tether_podman: Podman) -> None:
    """podman pulling an image tether already committed finds every layer (by chain id / digests) and
    downloads nothing; its records stay as tether wrote them."""
    image = pushed["rich"]
    pull_into_store(Store.open(tether_podman.root), registry.host, "store/rich:v1")
    layers_before = json.loads((tether_podman.root / "overlay-layers" / "layers.json").read_text())

    def layer_gets() -> int:
        return sum(1 for line in registry.access_log() for layer in image.layers
                   if f'"GET /v2/store/rich/blobs/{layer.digest}' in line)

    before = layer_gets()
    assert before >= len(image.layers)  # tether fetched them (the log does record blob GETs)
    tether_podman.run("pull", "--tls-verify=false", f"{registry.host}/store/rich:v1")
    assert layer_gets() == before
    assert json.loads((tether_podman.root / "overlay-layers" / "layers.json").read_text()) == layers_before
    assert [i["Id"] for i in tether_podman.images()] == [image.image_id]


def test_delete_refuses_mounted_image(registry: RunningRegistry, pushed: dict[str, Any],
                                      tether_podman: Podman) -> None:
    image = pushed["simple"]
    store = Store.open(tether_podman.root)
    pull_into_store(store, registry.host, "store/simple:v1")
    name = f"{registry.host}/store/simple:v1"
    mounted = Path(tether_podman.run("image", "mount", name).stdout.strip())
    try:
        with pytest.raises(StoreError, match="mounted"):
            store.delete_image(image.image_id)
        assert [i["Id"] for i in tether_podman.images()] == [image.image_id]
        assert any(mounted.iterdir())
    finally:
        tether_podman.run("image", "unmount", name)
    assert len(store.delete_image(image.image_id)) == len(image.layers)
    assert tether_podman.images() == []


def test_copy_image_overlay_to_vfs(registry: RunningRegistry, pushed: dict[str, Any], tether_podman: Podman,
                                   tmp_path: Path) -> None:
    image = pushed["rich"]
    src = Store.open(tether_podman.root)
    pull_into_store(src, registry.host, "store/rich:v1")
    target = podman_for(tmp_path / "vfs-target", driver="vfs")
    dst = Store.open(target.root, driver="vfs")
    containers_storage.copy_image(src, image.image_id, dst)
    inspect = target.json("image", "inspect", image.image_id)[0]
    assert inspect["RootFS"]["Layers"] == [layer.diff_id for layer in image.layers]
    assert inspect["RepoTags"] == [f"{registry.host}/store/rich:v1"]
    assert dst.check() == []
    top = dst.find_image(image.image_id).top_layer or ""
    assert (target.root / "vfs" / "dir" / top / "var/cache/new").read_text() == "fresh"
    assert not (target.root / "vfs" / "dir" / top / "var/cache/keep").exists()


def test_commit_with_signatures(registry: RunningRegistry, pushed: dict[str, Any], tether_podman: Podman) -> None:
    """Signatures recorded as c/image does: ``signatures`` + ``signature-<hex>`` big data, sizes in metadata."""
    image = pushed["simple"]
    store = Store.open(tether_podman.root)
    record = pull_into_store(store, registry.host, "store/simple:v1")
    sigs = [b"\x89first-signature", b"\x00sigstore-json\n{}"]
    store.commit_image(image_id=record.id, top_layer=record.top_layer or "", names=list(record.names),
                       manifest=image.manifest, manifest_digest=image.manifest_digest, config=image.config,
                       created=None, signatures=sigs)
    raw = json.loads((tether_podman.root / "overlay-images" / "images.json").read_text())[0]
    hexd = image.manifest_digest.split(":")[1]
    assert raw["big-data-names"] == [image.config_digest, f"manifest-{image.manifest_digest}", "manifest",
                                     f"signature-{hexd}", "signatures"]
    assert json.loads(raw["metadata"]) == {"signature-sizes": [16, 17],
                                           "signatures-sizes": {image.manifest_digest: [16, 17]}}
    assert raw["metadata"].startswith('{"signature-sizes":[16,17],')
    assert store.image_big_data(record.id, "signatures") == b"".join(sigs)
    assert store.image_big_data(record.id, f"signature-{hexd}") == b"".join(sigs)
    assert tether_podman.json("image", "inspect", record.id)[0]["Id"] == record.id
