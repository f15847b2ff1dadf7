"""``tether bound sync`` / ``bound status`` on plain deployment roots, with tether's own pull engine and a
real registry; the store is then read back by podman."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.bound import QUADLET_DIR, SpyPull, make_root
from tests.harness.images import push_image, simple_image
from tests.harness.podman import short_runroot
from tests.harness.registry import RunningRegistry
from tether.engine.bound.deployments import root_deployments
from tether.engine.bound.records import load_record, record_path
from tether.engine.bound.sync import sync_deployments
from tether.engine.cli.main import main
from tether.engine.options import CommonOptions
from tether.engine.storelock import StoreBusyError, hold_store
from tether.store.containers_storage import Store


@pytest.fixture
def runroot() -> Iterator[Path]:
    path = short_runroot()
    try:
        yield path
    finally:
        subprocess.run(["umount", "-R", str(path)], capture_output=True)
        shutil.rmtree(path, ignore_errors=True)


def podman_inspect(store: Path, runroot: Path, name: str) -> dict[str, Any]:
    out = subprocess.run(
        ["podman", "--root", str(store), "--runroot", str(runroot), "--storage-driver", "overlay",
         "image", "inspect", name],
        capture_output=True, text=True, check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout)[0]
    return result


def test_cli_sync_status_check_and_record(
    tmp_path: Path, registry: RunningRegistry, runroot: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = registry.host
    push_image(host, "rc1/app:1", simple_image(201, files=2))
    push_image(host, "rc1/db:1", simple_image(202, files=2, layers=1))
    new = make_root(tmp_path / "new", {"app.image": f"{host}/rc1/app:1", "db.image": f"{host}/rc1/db:1"})
    old = make_root(tmp_path / "old", {"db.image": f"{host}/rc1/db:1"})
    store = tmp_path / "store"
    roots = ["--deployment-root", str(new), "--deployment-root", str(old), "--root", str(store)]

    # Before any sync: the store does not exist, status says not ready and does not create it.
    assert main(["bound", "status", *roots, "--format", "json"]) == 0
    before = json.loads(capsys.readouterr().out)
    assert [d["ready"] for d in before] == [False, False]
    assert not store.exists()
    assert main(["bound", "status", *roots, "--check", str(new)]) == 1

    assert main(["bound", "sync", *roots, "--tls-verify=false", "--progress", "none"]) == 0
    capsys.readouterr()
    assert main(["bound", "status", *roots, "--format", "json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [set(d) for d in status] == [{"deployment", "root", "ready", "images", "role"}] * 2
    assert status[0]["deployment"] == f"root:{new}"
    assert status[0]["root"] == str(new)
    assert [d["ready"] for d in status] == [True, True]
    app = podman_inspect(store, runroot, f"{host}/rc1/app:1")
    db = podman_inspect(store, runroot, f"{host}/rc1/db:1")
    assert status[0]["images"] == [
        {"image": f"{host}/rc1/app:1", "id": app["Id"], "digest": app["Digest"], "present": True},
        {"image": f"{host}/rc1/db:1", "id": db["Id"], "digest": db["Digest"], "present": True},
    ]
    assert main(["bound", "status", *roots, "--check", str(new)]) == 0
    assert main(["bound", "status", *roots, "--check", f"root:{old}"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"root:{old}: ready"

    # The record names the deployment and the exact ids and digests; written atomically (no temp left).
    deployment = root_deployments([new])[0]
    path = record_path(store, deployment)
    raw = json.loads(path.read_text())
    assert raw["deployment"] == f"root:{new}" and raw["ready"] is True
    assert {(i["image"], i["id"], i["digest"]) for i in raw["images"]} == {
        (f"{host}/rc1/app:1", app["Id"], app["Digest"]), (f"{host}/rc1/db:1", db["Id"], db["Digest"]),
    }
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []

    # An image removed behind tether's back makes the deployment not ready again.
    subprocess.run(
        ["podman", "--root", str(store), "--runroot", str(runroot), "--storage-driver", "overlay",
         "rmi", f"{host}/rc1/app:1"], capture_output=True, check=True,
    )
    assert main(["bound", "status", *roots, "--check", str(new)]) == 1
    assert main(["bound", "status", *roots, "--check", str(old)]) == 0
    assert main(["bound", "sync", *roots, "--tls-verify=false", "--progress", "none"]) == 0
    assert main(["bound", "status", *roots, "--check", "new"]) == 0


def test_cli_failure_names_images_and_exits_nonzero(
    tmp_path: Path, registry: RunningRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    host = registry.host
    push_image(host, "rc2/ok:1", simple_image(211, files=1, layers=1))
    root = make_root(tmp_path / "r", {"ok.image": f"{host}/rc2/ok:1", "missing.image": f"{host}/rc2/missing:1"})
    store = tmp_path / "store"
    code = main(["bound", "sync", "--deployment-root", str(root), "--root", str(store), "--tls-verify=false",
                 "--progress", "none"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"root:{root}: {host}/rc2/missing:1:" in err
    assert "ok:1" not in err.split("not ready", 1)[1]
    record = load_record(store, root_deployments([root])[0])
    assert record is not None and record.ready is False
    states = {s.image: s for s in record.images}
    assert states[f"{host}/rc2/ok:1"].id is not None
    assert states[f"{host}/rc2/missing:1"].id is None and states[f"{host}/rc2/missing:1"].error


async def test_retry_pulls_only_what_is_missing(tmp_path: Path, registry: RunningRegistry) -> None:
    host = registry.host
    push_image(host, "rc3/a:1", simple_image(221, files=1, layers=1))
    root = make_root(tmp_path / "r", {"a.image": f"{host}/rc3/a:1", "b.image": f"{host}/rc3/b:1"})
    (root / QUADLET_DIR / "c.container").write_text("[Container]\nImage=a.image\n")
    os.symlink(f"/{QUADLET_DIR}/c.container", root / "usr/lib/bootc/bound-images.d/c.container")
    store = Store.open(tmp_path / "store")
    options = CommonOptions(root=store.root, tls_verify=False)
    deployments = root_deployments([root])
    spy = SpyPull()
    report = await sync_deployments(deployments, store=store, options=options, pull_function=spy)
    assert not report.ok
    # a.image bound twice (directly and through c.container's Image=a.image) is one request.
    assert spy.calls == [[f"{host}/rc3/a:1", f"{host}/rc3/b:1"]]
    assert [f.image for f in report.failures] == [f"{host}/rc3/b:1"]
    push_image(host, "rc3/b:1", simple_image(222, files=1, layers=1))
    report = await sync_deployments(deployments, store=store, options=options, pull_function=spy)
    assert report.ok, report.summary()
    assert spy.calls[-1] == [f"{host}/rc3/b:1"]
    assert report.reused == 1
    # Ready: a third sync pulls nothing at all.
    report = await sync_deployments(deployments, store=store, options=options, pull_function=spy)
    assert report.ok and len(spy.calls) == 2 and report.synced == ()


async def test_sync_refuses_while_another_tether_holds_the_store(tmp_path: Path) -> None:
    root = make_root(tmp_path / "r", {})
    store = Store.open(tmp_path / "store")
    with hold_store(store.root), pytest.raises(StoreBusyError, match=f"pid {os.getpid()}"):
        await sync_deployments(root_deployments([root]), store=store, options=CommonOptions(root=store.root))
    # Released: works (no bound images: ready at once).
    report = await sync_deployments(root_deployments([root]), store=store, options=CommonOptions(root=store.root))
    assert report.ok


def test_shared_holders_exclude_sync_and_gc(tmp_path: Path) -> None:
    def take(*, shared: bool) -> None:
        with hold_store(tmp_path, shared=shared):
            pass

    with hold_store(tmp_path, shared=True), hold_store(tmp_path, shared=True):
        take(shared=True)
        with pytest.raises(StoreBusyError, match="another tether"):
            take(shared=False)
    with hold_store(tmp_path), pytest.raises(StoreBusyError):
        take(shared=True)


def test_cli_lock_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_root(tmp_path / "r", {})
    store = tmp_path / "store"
    Store.open(store)
    with hold_store(store):
        assert main(["bound", "sync", "--deployment-root", str(root), "--root", str(store), "--progress", "none"]) == 1
        assert main(["bound", "gc", "--deployment-root", str(root), "--root", str(store)]) == 1
    err = capsys.readouterr().err
    assert err.count("another tether") == 2


def test_discovery_error_is_reported_not_ready(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_root(tmp_path / "r", {})
    (root / "usr/lib/bootc/bound-images.d/plain.image").write_text("[Image]\nImage=x\n")
    store = tmp_path / "store"
    assert main(["bound", "sync", "--deployment-root", str(root), "--root", str(store), "--progress", "none"]) == 1
    err = capsys.readouterr().err
    assert "Not a symlink: plain.image" in err
    assert main(["bound", "status", "--deployment-root", str(root), "--root", str(store), "--format", "json"]) == 0
    (status,) = json.loads(capsys.readouterr().out)
    assert status["ready"] is False and "Not a symlink" in status["error"]


def test_empty_deployment_is_ready(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    store = tmp_path / "store"
    # Nothing bound: ready without any sync (a reboot into it needs nothing).
    assert main(["bound", "status", "--deployment-root", str(root), "--root", str(store), "--check", str(root)]) == 0
    assert main(["bound", "sync", "--deployment-root", str(root), "--root", str(store), "--progress", "none"]) == 0
    assert main(["bound", "status", "--deployment-root", str(root), "--root", str(store), "--check", str(root)]) == 0


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_root(tmp_path / "r", {})
    assert main(["bound", "status", "--deployment-root", str(root), "--root", str(tmp_path / "s"),
                 "--check", "nope"]) == 1
    assert "no deployment matches 'nope'" in capsys.readouterr().err
    assert main(["bound", "status", "--deployment-root", str(root), "--sysroot", str(tmp_path)]) == 1
    assert "either --sysroot or --deployment-root" in capsys.readouterr().err
