"""``tether bound list`` and ``bound sync/status --sysroot`` through the CLI."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.harness.bound import QUADLET_DIR, make_root
from tests.harness.images import push_image, simple_image
from tests.harness.ostree_sysroot import make_sysroot
from tests.harness.registry import RunningRegistry
from tether.engine.cli.main import main


def test_list_json_like_bootc_plus_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_root(tmp_path / "r", {"a.image": "quay.io/a/a:1"})
    (root / QUADLET_DIR / "db.image").write_text("[Image]\nImage=quay.io/a/db:2\nArch=arm64\n")
    (root / QUADLET_DIR / "app.container").write_text("[Container]\nImage=db.image\n")
    os.symlink(f"/{QUADLET_DIR}/app.container", root / "usr/lib/bootc/bound-images.d/app.container")
    assert main(["bound", "list", "--deployment-root", str(root), "--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(i["image_type"], i["image"], i["source"]) for i in listed] == [
        ("logical", "quay.io/a/a:1", f"/{QUADLET_DIR}/a.image"),
        ("logical", "quay.io/a/db:2", f"/{QUADLET_DIR}/app.container"),
    ]
    assert listed[1]["image_file"] == f"/{QUADLET_DIR}/db.image"
    assert listed[1]["arch"] == "arm64"
    assert main(["bound", "list", "--deployment-root", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    # bootc image list --type logical: REPOSITORY and TYPE (bootc crates/lib/src/image.rs), then the source
    assert lines[0].split() == ["REPOSITORY", "TYPE", "SOURCE"]
    assert lines[1].split() == ["quay.io/a/a:1", "logical", f"/{QUADLET_DIR}/a.image"]


def test_list_error_names_entry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_root(tmp_path / "r", {})
    os.symlink("/nowhere.image", root / "usr/lib/bootc/bound-images.d/gone.image")
    assert main(["bound", "list", "--deployment-root", str(root)]) == 1
    assert "dangling symlink gone.image -> /nowhere.image" in capsys.readouterr().err


def test_list_empty_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bound", "list", "--deployment-root", str(tmp_path), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


@pytest.mark.skipif(shutil.which("ostree") is None, reason="ostree not installed")
def test_sysroot_cli_default_store_progress_fd_and_check(
    tmp_path: Path, registry: RunningRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    host = registry.host
    push_image(host, "cli1/app:1", simple_image(501, files=1, layers=1))
    sysroot = make_sysroot(tmp_path)
    c1 = sysroot.commit({"app.image": f"{host}/cli1/app:1"}, tag="v1")
    sysroot.deploy()
    args = ["--sysroot", str(sysroot.path)]
    assert main(["bound", "status", *args, "--check", c1[:12]]) == 1
    capsys.readouterr()
    progress = tmp_path / "progress.jsonl"
    with open(progress, "wb") as f:
        code = main(["bound", "sync", *args, "--tls-verify=false", "--progress", "none",
                     "--progress-fd", str(f.fileno()), "--format", "json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [d["ready"] for d in out["deployments"]] == [True]
    assert out["failures"] == []
    # bootc's store location inside the sysroot
    store = sysroot.path / "ostree/bootc/storage"
    assert (store / "overlay-images/images.json").exists()
    assert (store / f"tether/deployments/testos-{c1}.0.json").exists()
    events = [json.loads(line) for line in progress.read_text().splitlines()]
    assert events[0]["type"] == "Start"
    assert main(["bound", "status", *args, "--check", c1[:12]]) == 0
    assert main(["bound", "status", *args, "--check", "default"]) == 0
    assert main(["bound", "gc", *args, "--dry-run"]) == 0
    assert "would remove 0 image(s)" in capsys.readouterr().out

    # An upgrade is staged (as bootc upgrade does): the gate fails until its images are synced.
    push_image(host, "cli1/app:2", simple_image(502, files=1, layers=1))
    run_dir = tmp_path / "run"
    c2 = sysroot.commit({"app.image": f"{host}/cli1/app:2"}, tag="v2")
    sysroot.stage(run_dir)
    staged = [*args, "--run-dir", str(run_dir)]
    assert main(["bound", "status", *staged, "--check", "staged"]) == 1
    assert capsys.readouterr().out.strip() == f"testos-{c2}.0: not ready"
    assert main(["bound", "sync", *staged, "--tls-verify=false", "--progress", "none"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"testos-{c2}.0: ready", f"testos-{c1}.0: ready"]
    assert main(["bound", "status", *staged, "--check", "staged"]) == 0
