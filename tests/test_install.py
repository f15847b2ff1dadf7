"""``tether bound install``: copy the bound images from a store podman populated, without the network;
podman reads the result, also as an additional image store (the way bootc hosts use the bootc store)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness.bound import make_root
from tests.harness.images import build_image, build_layer, busybox_entries, push_image, simple_image
from tests.harness.ostree_sysroot import make_sysroot
from tests.harness.podman import Podman, short_runroot
from tests.harness.registry import RunningRegistry
from tether.engine.bound.deployments import list_sysroot_deployments
from tether.engine.bound.records import load_record
from tether.engine.cli.main import main
from tether.store.containers_storage import Store


def release(podman: Podman) -> None:
    """Unmount what podman left mounted (its run root, and the bind mount of ROOT/overlay)."""
    for path in (podman.runroot, podman.root / "overlay"):
        subprocess.run(["umount", "-R", str(path)], capture_output=True)
    shutil.rmtree(podman.runroot, ignore_errors=True)


@pytest.fixture
def podmen(tmp_path: Path) -> Iterator[tuple[Podman, Podman]]:
    """podman on the source store and on the target store."""
    src = Podman(root=tmp_path / "src", runroot=short_runroot())
    dst = Podman(root=tmp_path / "target", runroot=short_runroot())
    try:
        yield src, dst
    finally:
        for p in (src, dst):
            release(p)


@pytest.fixture
def own_registry(registry_factory: Callable[..., RunningRegistry]) -> RunningRegistry:
    """A registry of the test's own, which it stops to show that what follows needs no network."""
    return registry_factory()


def test_install_stored_copies_without_network(
    tmp_path: Path, own_registry: RunningRegistry, podmen: tuple[Podman, Podman], capsys: pytest.CaptureFixture[str]
) -> None:
    src, dst = podmen
    host = own_registry.host
    app = simple_image(401, files=3)
    runnable = build_layer(busybox_entries())
    push_image(host, "in1/app:1", build_image([*app.layers, runnable]))
    push_image(host, "in1/db:1", simple_image(402, files=2, layers=1))
    app_id = src.pull(f"{host}/in1/app:1")
    db_id = src.pull(f"{host}/in1/db:1")
    src_app = src.json("image", "inspect", f"{host}/in1/app:1")[0]
    root = make_root(tmp_path / "sysroot-src", {"app.image": f"{host}/in1/app:1", "db.image": f"{host}/in1/db:1"})
    own_registry.stop()  # no network: everything must come from the source store

    code = main(["bound", "install", "--deployment-root", str(root), "--root", str(dst.root),
                 "--source-store", str(src.root)])
    assert code == 0, capsys.readouterr().err
    images = {i["Id"]: i for i in dst.images()}
    assert set(images) == {app_id, db_id}
    assert images[app_id]["Names"] == [f"{host}/in1/app:1"]
    dst_app = dst.json("image", "inspect", f"{host}/in1/app:1")[0]
    assert dst_app["Digest"] == src_app["Digest"]
    assert dst_app["RootFS"] == src_app["RootFS"]
    assert Store.open(dst.root).check() == []
    # Idempotent: a second install changes nothing.
    assert main(["bound", "install", "--deployment-root", str(root), "--root", str(dst.root),
                 "--source-store", str(src.root)]) == 0
    assert {i["Id"]: i["Names"] for i in dst.images()} == {k: v["Names"] for k, v in images.items()}
    assert Store.open(dst.root).check() == []
    # podman can export it again (tar-split + files reassemble to the same diffIDs).
    out = tmp_path / "app.tar"
    dst.run("save", "--format", "oci-archive", "-o", str(out), f"{host}/in1/app:1")
    assert out.stat().st_size > 0

    # The target as a read-only additional image store of an empty podman, as bootc hosts use it.
    empty = Podman(root=tmp_path / "empty", runroot=short_runroot())
    try:
        listed = empty.json("--storage-opt", f"additionalimagestore={dst.root}", "images", "--format", "json")
        assert {i["Id"] for i in listed} == {app_id, db_id}
        assert all(i.get("ReadOnly") for i in listed)
        run = empty.run("--storage-opt", f"additionalimagestore={dst.root}", "run", "--rm", "--net=none",
                        f"{host}/in1/app:1", "cat", "/etc/seed-401-0", check=False)
        assert run.returncode == 0, run.stderr
        assert run.stdout == "seed 401 layer 0\n"
    finally:
        release(empty)


def test_install_fails_before_touching_target_when_one_is_missing(
    tmp_path: Path, registry: RunningRegistry, podmen: tuple[Podman, Podman], capsys: pytest.CaptureFixture[str]
) -> None:
    src, dst = podmen
    host = registry.host
    push_image(host, "in2/app:1", simple_image(411, files=1, layers=1))
    src.pull(f"{host}/in2/app:1")
    root = make_root(tmp_path / "r", {"app.image": f"{host}/in2/app:1", "nope.image": f"{host}/in2/nope:1"})
    code = main(["bound", "install", "--deployment-root", str(root), "--root", str(dst.root),
                 "--source-store", str(src.root)])
    assert code == 1
    err = capsys.readouterr().err
    assert f"{host}/in2/nope:1 (bound by usr/lib/bootc/bound-images.d/nope.image)" in err
    assert "app:1" not in err
    assert not dst.root.exists()


def test_install_from_missing_source_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_root(tmp_path / "r", {"app.image": "quay.io/a/app:1"})
    code = main(["bound", "install", "--deployment-root", str(root), "--root", str(tmp_path / "t"),
                 "--source-store", str(tmp_path / "nothing")])
    assert code == 1
    assert "holds no containers-storage images" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
    assert not (tmp_path / "nothing").exists()


def test_install_skip_and_pull(
    tmp_path: Path, registry: RunningRegistry, podmen: tuple[Podman, Podman], capsys: pytest.CaptureFixture[str]
) -> None:
    _, dst = podmen
    host = registry.host
    image = simple_image(421, files=1, layers=1)
    push_image(host, "in3/app:1", image)
    sysroot = make_sysroot(tmp_path)
    sysroot.commit({"app.image": f"{host}/in3/app:1"}, tag="v1")
    sysroot.deploy()
    (deployment,) = list_sysroot_deployments(sysroot.path)
    install = ["bound", "install", "--deployment-root", str(deployment.root), "--root", str(dst.root)]
    assert main([*install, "--bound-images", "skip"]) == 0
    assert not dst.root.exists()
    pulled = [*install, "--bound-images", "pull", "--tls-verify=false"]
    assert main([*pulled, "--sysroot", str(tmp_path / "not-a-sysroot")]) != 0
    assert "is not an ostree sysroot" in capsys.readouterr().err
    assert not dst.root.exists()  # refused before anything was pulled
    assert main([*pulled, "--sysroot", str(sysroot.path)]) == 0
    assert [i["Id"] for i in dst.images()] == [image.image_id]
    assert f"{deployment.name}: ready" in capsys.readouterr().out
    record = load_record(dst.root, deployment)
    assert record is not None and [(i.image, i.id) for i in record.images] == [(f"{host}/in3/app:1", image.image_id)]


def test_install_nothing_bound(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    assert main(["bound", "install", "--deployment-root", str(root), "--root", str(tmp_path / "t"),
                 "--source-store", str(tmp_path / "none")]) == 0
    assert not (tmp_path / "t").exists()


def test_install_records_its_deployments_ready_so_they_boot_without_a_sync(
    tmp_path: Path, own_registry: RunningRegistry, podmen: tuple[Podman, Podman], capsys: pytest.CaptureFixture[str]
) -> None:
    src, dst = podmen
    host = own_registry.host
    push_image(host, "in5/app:1", simple_image(431, files=2, layers=1))
    push_image(host, "in5/db:1", simple_image(432, files=2, layers=1))
    app_id = src.pull(f"{host}/in5/app:1")
    db_id = src.pull(f"{host}/in5/db:1")
    sysroot = make_sysroot(tmp_path)
    sysroot.commit({"app.image": f"{host}/in5/app:1", "other.image": f"{host}/in5/other:1"}, tag="old")
    sysroot.deploy()
    sysroot.commit({"app.image": f"{host}/in5/app:1", "db.image": f"{host}/in5/db:1"}, tag="new")
    sysroot.deploy()
    new, old = list_sysroot_deployments(sysroot.path)
    own_registry.stop()  # the install and the first boot's check need no registry

    code = main(["bound", "install", "--deployment-root", str(new.root), "--root", str(dst.root),
                 "--source-store", str(src.root), "--sysroot", str(sysroot.path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"{new.name}: ready" in out
    assert f"{old.name}: not recorded ready: it binds {host}/in5/other:1" in err
    record = load_record(dst.root, new)
    assert record is not None and record.ready
    assert {(i.image, i.id) for i in record.images} == {(f"{host}/in5/app:1", app_id), (f"{host}/in5/db:1", db_id)}
    assert load_record(dst.root, old) is None

    status = ["bound", "status", "--sysroot", str(sysroot.path), "--root", str(dst.root), "--check"]
    assert main([*status, new.name]) == 0  # ready on first boot, no sync
    assert main([*status, old.name]) == 1
    # A sync finds nothing to do for it: no registry is running, yet the new deployment stays ready.
    capsys.readouterr()
    main(["bound", "sync", "--sysroot", str(sysroot.path), "--root", str(dst.root), "--no-gc",
          "--progress", "none"])
    assert f"{new.name}: ready" in capsys.readouterr().out
    assert load_record(dst.root, new) == record

