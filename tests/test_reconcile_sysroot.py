"""A real ostree sysroot through upgrade, failed pull, retry, rollback and GC (engine/reconcile.py, gc.py).

The store is written by tether's pull engine and checked
with ``podman --root STORE images`` after each step: exactly the bound images of the deployments present
remain.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.bound import SpyPull
from tests.harness.images import push_image, simple_image
from tests.harness.ostree_sysroot import make_sysroot
from tests.harness.podman import short_runroot
from tests.harness.registry import RunningRegistry
from tether.engine.bound.deployments import list_sysroot_deployments
from tether.engine.bound.gc import collect_garbage
from tether.engine.bound.records import compute_status, load_record
from tether.engine.bound.sync import sync_deployments
from tether.engine.cli.main import main
from tether.engine.options import CommonOptions
from tether.store.containers_storage import Store

pytestmark = pytest.mark.skipif(shutil.which("ostree") is None, reason="ostree not installed")


@pytest.fixture
def runroot() -> Iterator[Path]:
    path = short_runroot()
    try:
        yield path
    finally:
        subprocess.run(["umount", "-R", str(path)], capture_output=True)
        shutil.rmtree(path, ignore_errors=True)


def podman_names(store: Path, runroot: Path) -> set[str]:
    out = subprocess.run(
        ["podman", "--root", str(store), "--runroot", str(runroot), "--storage-driver", "overlay",
         "images", "--format", "json"],
        capture_output=True, text=True, check=True,
    )
    names: set[str] = set()
    for image in json.loads(out.stdout):
        names.update(image.get("Names") or [f"<none>@{image['Id'][:12]}"])
    return names


def podman_additional_ids(empty: Path, store: Path, runroot: Path) -> set[str]:
    """Image ids podman lists on an empty store with ``store`` as an additional image store."""
    try:
        listed = subprocess.run(
            ["podman", "--root", str(empty), "--runroot", str(runroot), "--storage-driver", "overlay",
             "--storage-opt", f"additionalimagestore={store}", "images", "--format", "json"],
            capture_output=True, text=True, check=True,
        )
    finally:
        subprocess.run(["umount", "-R", str(empty / "overlay")], capture_output=True)
    return {str(i["Id"]) for i in json.loads(listed.stdout)}


async def test_sysroot_upgrade_failure_retry_rollback_gc(
    tmp_path: Path, registry_factory: object, runroot: Path
) -> None:
    reg: RunningRegistry = registry_factory()  # type: ignore[operator]
    host = reg.host
    for seed, ref in enumerate(["bt/app:1", "bt/app:2", "bt/db:1", "bt/tools:latest"], start=100):
        push_image(host, ref, simple_image(seed, files=2, layers=1))
    sysroot = make_sysroot(tmp_path)
    sysroot.commit({"app.image": f"{host}/bt/app:1", "db.image": f"{host}/bt/db:1"}, tag="v1")
    sysroot.deploy()
    c2 = sysroot.commit(
        {"app.image": f"{host}/bt/app:2", "db.image": f"{host}/bt/db:1", "tools.image": f"{host}/bt/tools"},
        tag="v2",
    )
    sysroot.deploy()
    store_root = tmp_path / "store"
    store = Store.open(store_root)
    options = CommonOptions(root=store_root, tls_verify=False)
    pull = SpyPull()

    deployments = list_sysroot_deployments(sysroot.path)
    assert deployments[0].checksum == c2
    report = await sync_deployments(deployments, store=store, options=options, pull_function=pull)
    assert report.ok, report.summary()
    assert [s.ready for s in report.statuses] == [True, True]
    # The new deployment's images come first; db:1 (bound by both) is pulled once.
    assert pull.calls == [[f"{host}/bt/app:2", f"{host}/bt/db:1", f"{host}/bt/tools", f"{host}/bt/app:1"]]
    assert podman_names(store_root, runroot) == {
        f"{host}/bt/app:1", f"{host}/bt/app:2", f"{host}/bt/db:1", f"{host}/bt/tools:latest",
    }
    record = load_record(store_root, deployments[0])
    assert record is not None and record.ready
    ids = {s.image: s.id for s in record.images}
    assert ids[f"{host}/bt/app:2"] == store.find_image(f"{host}/bt/app:2").id

    # Nothing to do the second time.
    report = await sync_deployments(deployments, store=store, options=options, pull_function=pull)
    assert report.ok and report.synced == () and len(pull.calls) == 1

    # Upgrade to v3, whose new image is not in the registry yet: v3 not ready, the others stay ready.
    c3 = sysroot.commit({"app.image": f"{host}/bt/app:3", "db.image": f"{host}/bt/db:1"}, tag="v3")
    sysroot.deploy()
    deployments = list_sysroot_deployments(sysroot.path)
    assert deployments[0].checksum == c3
    report = await sync_deployments(deployments, store=store, options=options, pull_function=pull)
    assert not report.ok
    assert [s.ready for s in report.statuses] == [False, True, True]
    assert [(f.deployment, f.image) for f in report.failures] == [(deployments[0].name, f"{host}/bt/app:3")]
    assert pull.calls[-1] == [f"{host}/bt/app:3", f"{host}/bt/db:1"]
    record = load_record(store_root, deployments[0])
    assert record is not None and not record.ready
    assert {s.image: s.id is not None for s in record.images} == {f"{host}/bt/app:3": False, f"{host}/bt/db:1": True}

    # The registry is down: still not ready; only the missing image is retried.
    push_image(host, "bt/app:3", simple_image(104, files=2, layers=1))
    reg.stop()
    report = await sync_deployments(deployments, store=store, options=options, pull_function=pull)
    assert not report.ok and pull.calls[-1] == [f"{host}/bt/app:3"]
    assert report.failures[0].image == f"{host}/bt/app:3"

    # Back up: the retry makes v3 ready, pulling only app:3.
    reg.start()
    report = await sync_deployments(deployments, store=store, options=options, pull_function=pull)
    assert report.ok, report.summary()
    assert pull.calls[-1] == [f"{host}/bt/app:3"]
    assert report.reused == 1
    assert all(s.ready for s in compute_status(deployments, store))

    # Rollback to v2 (v3 goes away): GC removes app:3 only.
    sysroot.rollback()
    deployments = list_sysroot_deployments(sysroot.path)
    assert deployments[0].checksum == c2
    dry = collect_garbage(deployments, store, dry_run=True)
    assert [i.names for i in dry.plan.remove] == [(f"{host}/bt/app:3",)]
    assert podman_names(store_root, runroot) >= {f"{host}/bt/app:3"}
    result = collect_garbage(deployments, store)
    assert len(result.removed_image_ids) == 1 and result.removed_layer_ids
    assert podman_names(store_root, runroot) == {
        f"{host}/bt/app:1", f"{host}/bt/app:2", f"{host}/bt/db:1", f"{host}/bt/tools:latest",
    }
    assert [p.name for p in result.plan.stale_records] == [f"testos-{c3}.0.json"]
    assert not (store_root / "tether/deployments" / f"testos-{c3}.0.json").exists()

    # The oldest deployment is removed (pinning keeps nothing extra: v2 and v1 both bind db:1).
    sysroot.undeploy(1)
    deployments = list_sysroot_deployments(sysroot.path)
    collect_garbage(deployments, store)
    assert podman_names(store_root, runroot) == {
        f"{host}/bt/app:2", f"{host}/bt/db:1", f"{host}/bt/tools:latest",
    }
    assert store.check() == []

    # A floating tag moves: the next deployment that binds it gets the new image (re-resolved), while the
    # ready deployment keeps the exact image its record pins; GC keeps both.
    old_tools = store.find_image(f"{host}/bt/tools:latest").id
    push_image(host, "bt/tools:latest", simple_image(105, files=2, layers=1))
    c4 = sysroot.commit({"tools.image": f"{host}/bt/tools"}, tag="v4")
    sysroot.deploy()
    deployments = list_sysroot_deployments(sysroot.path)
    assert deployments[0].checksum == c4
    report = await sync_deployments(deployments, store=store, options=options, pull_function=pull)
    assert report.ok, report.summary()
    assert pull.calls[-1] == [f"{host}/bt/tools"]
    new_tools = store.find_image(f"{host}/bt/tools:latest").id
    assert new_tools != old_tools
    statuses = {s.deployment.checksum: s for s in report.statuses}
    assert [i.id for i in statuses[c4].images] == [new_tools]
    assert {i.image: i.id for i in statuses[c2].images}[f"{host}/bt/tools"] == old_tools
    stored = {i.id for i in store.list_images()}
    assert {old_tools, new_tools} <= stored
    assert len(stored) == 4  # app:2, db:1, both tools

    # podman on an empty store sees the bootc store's images as an additional image store, as hosts use it.
    assert podman_additional_ids(tmp_path / "empty", store_root, runroot) == stored


def test_gc_keeps_what_only_the_staged_deployment_binds(tmp_path: Path, registry: RunningRegistry,
                                                        runroot: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``bootc upgrade`` stages the new deployment (ostree itself, here: /run/ostree/staged-deployment is its
    GVariant): an image bound by it alone survives ``bound gc``, which removes what nothing binds; an
    unreadable staged-deployment file stops GC instead of guessing."""
    host = registry.host
    for seed, ref in enumerate(["gcs/app:1", "gcs/app:2", "gcs/stray:1", "gcs/stray:2"], start=1901):
        push_image(host, ref, simple_image(seed, files=2, layers=1))
    sysroot = make_sysroot(tmp_path)
    sysroot.commit({"app.image": f"{host}/gcs/app:1"}, tag="v1")
    sysroot.deploy()
    store = tmp_path / "store"
    run_dir = tmp_path / "run"
    args = ["--sysroot", str(sysroot.path), "--root", str(store)]
    staged_args = [*args, "--run-dir", str(run_dir)]
    assert main(["bound", "sync", *staged_args, "--tls-verify=false", "--progress", "none"]) == 0

    # The upgrade moves app to :2; ostree stages it (no boot entry until shutdown) and tether syncs it.
    c2 = sysroot.commit({"app.image": f"{host}/gcs/app:2"}, tag="v2")
    assert sysroot.stage(run_dir).startswith(c2)
    deployments = list_sysroot_deployments(sysroot.path, run_dir=run_dir)
    assert (deployments[0].checksum, deployments[0].role) == (c2, "staged")
    assert main(["bound", "sync", *staged_args, "--tls-verify=false", "--progress", "none"]) == 0
    podman_pull = ["podman", "--root", str(store), "--runroot", str(runroot), "--storage-driver", "overlay", "pull",
                   "-q", "--tls-verify=false"]
    subprocess.run([*podman_pull, f"{host}/gcs/stray:1"], check=True, capture_output=True)
    assert podman_names(store, runroot) == {f"{host}/gcs/app:1", f"{host}/gcs/app:2", f"{host}/gcs/stray:1"}
    capsys.readouterr()

    # Blind to the staged deployment, GC would take app:2 with the stray image.
    assert main(["bound", "gc", *args, "--dry-run", "--format", "json"]) == 0
    blind = json.loads(capsys.readouterr().out)
    assert sorted(n for i in blind["remove"] for n in i["names"]) == [f"{host}/gcs/app:2", f"{host}/gcs/stray:1"]
    # Reading ostree's file, it keeps app:2, bound by the staged deployment only.
    assert main(["bound", "gc", *staged_args]) == 0
    assert podman_names(store, runroot) == {f"{host}/gcs/app:1", f"{host}/gcs/app:2"}
    assert Store.open(store).check() == []

    # A staged-deployment file tether cannot read: nothing is removed (the staged bound set is unknown).
    subprocess.run([*podman_pull, f"{host}/gcs/stray:2"], check=True, capture_output=True)
    marker = run_dir / "ostree" / "staged-deployment"
    marker.write_bytes(marker.read_bytes()[:-5])
    assert main(["bound", "gc", *staged_args]) == 1
    assert "cannot read the staged deployment" in capsys.readouterr().err
    assert f"{host}/gcs/stray:2" in podman_names(store, runroot)
