"""``tether bound sync --source oci:DIR``: provisioning a host's bound images from a local layout with no
registry at all (bootc-dev/bootc#1166), recorded under the bound names so status, podman and GC agree."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.bound import make_root
from tests.harness.images import simple_image, write_oci_layout
from tests.harness.podman import Podman, short_runroot
from tether.engine.cli.main import main

# Names of a registry that does not exist: any network access would fail the sync.
APP = "registry.invalid/org/app:1"
DB = "registry.invalid/org/db:2"


@pytest.fixture
def store_podman(tmp_path: Path) -> Iterator[Podman]:
    podman = Podman(root=tmp_path / "store", runroot=short_runroot())
    try:
        yield podman
    finally:
        for mount in (podman.root / "overlay", podman.runroot):
            subprocess.run(["umount", "-R", "-l", str(mount)], capture_output=True)
        shutil.rmtree(podman.runroot, ignore_errors=True)


def test_sync_from_layout_makes_deployment_ready_without_network(
    tmp_path: Path, store_podman: Podman, capsys: pytest.CaptureFixture[str]
) -> None:
    app, db = simple_image(701), simple_image(702, layers=1)
    layout = tmp_path / "layout"
    write_oci_layout(layout, {APP: app, DB: db})
    root = make_root(tmp_path / "root", {"app.image": APP, "db.image": DB})
    args = ["--deployment-root", str(root), "--root", str(store_podman.root)]

    assert main(["bound", "sync", *args, "--source", f"oci:{layout}", "--progress", "none"]) == 0, (
        capsys.readouterr().err
    )
    capsys.readouterr()
    assert main(["bound", "status", *args, "--format", "json"]) == 0
    [status] = json.loads(capsys.readouterr().out)
    assert status["ready"] is True
    assert {i["image"]: i["id"] for i in status["images"]} == {APP: app.image_id, DB: db.image_id}
    listed = {i["Id"]: i["Names"] for i in store_podman.images()}
    assert listed == {app.image_id: [APP], db.image_id: [DB]}


def test_layout_lacking_an_image_fails_before_pulling_anything(
    tmp_path: Path, store_podman: Podman, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = tmp_path / "layout"
    write_oci_layout(layout, {APP: simple_image(703)})
    root = make_root(tmp_path / "root", {"app.image": APP, "db.image": DB})
    args = ["--deployment-root", str(root), "--root", str(store_podman.root)]

    assert main(["bound", "sync", *args, "--source", f"oci:{layout}", "--progress", "none"]) == 1
    err = capsys.readouterr().err
    assert DB in err and str(layout) in err
    assert store_podman.images() == []
    assert main(["bound", "status", *args, "--check", str(root)]) == 1
