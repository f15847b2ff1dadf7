"""Deployments read from a real ostree sysroot (engine/deployments.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.harness.ostree_sysroot import OSNAME, make_sysroot
from tether.engine.bound.deployments import find_deployment, list_sysroot_deployments, root_deployments
from tether.engine.bound.discovery import discover_bound_images
from tether.engine.errors import DeploymentError

pytestmark = pytest.mark.skipif(shutil.which("ostree") is None, reason="ostree not installed")


def test_sysroot_order_roles_pins_and_bound_sets(tmp_path: Path) -> None:
    sysroot = make_sysroot(tmp_path)
    c1 = sysroot.commit({"a.image": "quay.io/t/a:1"}, tag="v1")
    sysroot.deploy()
    c2 = sysroot.commit({"a.image": "quay.io/t/a:2", "b.image": "quay.io/t/b:1"}, tag="v2")
    sysroot.deploy()
    deployments = list_sysroot_deployments(sysroot.path)
    assert [d.checksum for d in deployments] == [c2, c1]
    assert [d.index for d in deployments] == [0, 1]
    assert [d.role for d in deployments] == ["default", "other"]
    assert deployments[0].name == f"{OSNAME}-{c2}.0"
    assert deployments[0].origin == f"{OSNAME}/stable"
    assert deployments[0].root == sysroot.path / "ostree/deploy" / OSNAME / "deploy" / f"{c2}.0"
    assert not any(d.pinned for d in deployments)
    assert [i.image for i in discover_bound_images(deployments[0].root)] == ["quay.io/t/a:2", "quay.io/t/b:1"]
    assert [i.image for i in discover_bound_images(deployments[1].root)] == ["quay.io/t/a:1"]
    # ostree's own view agrees on order
    status = sysroot.status()
    assert status.index(c2) < status.index(c1)

    sysroot.pin(1)
    deployments = list_sysroot_deployments(sysroot.path)
    assert [d.pinned for d in deployments] == [False, True]

    assert find_deployment(deployments, c1[:10]).checksum == c1
    assert find_deployment(deployments, f"{c2}.0").checksum == c2
    assert find_deployment(deployments, "default").checksum == c2
    assert find_deployment(deployments, "1").checksum == c1
    assert find_deployment(deployments, "new").checksum == c2
    assert find_deployment(deployments, deployments[1].name).checksum == c1
    with pytest.raises(DeploymentError, match="no deployment matches"):
        find_deployment(deployments, "deadbeefdead")


def test_staged_booted_pending_rollback(tmp_path: Path) -> None:
    sysroot = make_sysroot(tmp_path)
    c1 = sysroot.commit({"a.image": "quay.io/t/a:1"}, tag="v1")
    sysroot.deploy()
    c2 = sysroot.commit({"a.image": "quay.io/t/a:2"}, tag="v2")
    sysroot.deploy()
    run_dir = tmp_path / "run"
    c3 = sysroot.commit({"c.image": "quay.io/t/c:3"}, tag="v3")
    staged_name = sysroot.stage(run_dir)
    assert staged_name.startswith(c3)

    # Without the run dir, the staged checkout is not a deployment (as ostree would ignore it).
    assert [d.checksum for d in list_sysroot_deployments(sysroot.path)] == [c2, c1]

    booted_root = sysroot.path / "ostree/deploy" / OSNAME / "deploy" / f"{c1}.0"
    deployments = list_sysroot_deployments(sysroot.path, run_dir=run_dir, booted_root=booted_root)
    assert [d.checksum for d in deployments] == [c3, c2, c1]
    assert [d.role for d in deployments] == ["staged", "pending", "booted"]
    assert deployments[0].index is None
    assert [i.image for i in discover_bound_images(deployments[0].root)] == ["quay.io/t/c:3"]
    assert find_deployment(deployments, "staged").checksum == c3
    assert find_deployment(deployments, "booted").checksum == c1

    booted_root = sysroot.path / "ostree/deploy" / OSNAME / "deploy" / f"{c2}.0"
    deployments = list_sysroot_deployments(sysroot.path, run_dir=run_dir, booted_root=booted_root)
    assert [d.role for d in deployments] == ["staged", "booted", "rollback"]


def test_not_a_sysroot(tmp_path: Path) -> None:
    with pytest.raises(DeploymentError, match="not an ostree sysroot"):
        list_sysroot_deployments(tmp_path)


def test_empty_sysroot_has_no_deployments(tmp_path: Path) -> None:
    sysroot = make_sysroot(tmp_path)
    assert list_sysroot_deployments(sysroot.path) == ()


def test_broken_boot_entry(tmp_path: Path) -> None:
    sysroot = make_sysroot(tmp_path)
    sysroot.commit({}, tag="v1")
    sysroot.deploy()
    (deployment,) = sysroot.deploy_dirs()
    os.rename(deployment, deployment.with_name("moved"))
    with pytest.raises(DeploymentError, match="does not resolve"):
        list_sysroot_deployments(sysroot.path)


def test_plain_roots(tmp_path: Path) -> None:
    (tmp_path / "new").mkdir()
    (tmp_path / "old").mkdir()
    deployments = root_deployments([tmp_path / "new", tmp_path / "old"])
    assert [d.role for d in deployments] == ["root", "root"]
    assert deployments[0].name == f"root:{tmp_path / 'new'}"
    assert deployments[0].record_name != deployments[1].record_name
    assert "/" not in deployments[0].record_name
    assert find_deployment(deployments, str(tmp_path / "old")).root == tmp_path / "old"
    assert find_deployment(deployments, "new").root == tmp_path / "new"
    with pytest.raises(DeploymentError, match="not a directory"):
        root_deployments([tmp_path / "missing"])
