"""Issue 15 item 4: commands that read a store never create one.

Without a store, ``images`` prints what podman 4.3 prints for an empty one (podman creates the store first; tether
creates nothing), ``check``, ``rmi`` and ``inspect containers-storage:`` fail naming the missing store, ``bound
status`` and ``bound gc`` say there is none; the directory given stays absent every time.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.harness.bound import make_root
from tests.harness.cli import tether
from tests.harness.podman import Podman


def test_read_commands_on_a_missing_store_create_nothing(tmp_path: Path, podman: Podman) -> None:
    root = tmp_path / "no" / "store"
    store = ["--root", str(root), "--runroot", str(tmp_path / "run")]

    listed = tether("images", *store)
    assert (listed.returncode, listed.stderr) == (0, "")
    assert listed.stdout == podman.run("images").stdout  # podman on its own, empty, store
    as_json = tether(*store, "images", "--format", "json")
    assert json.loads(as_json.stdout) == json.loads(podman.run("images", "--format", "json").stdout) == []
    assert tether("images", *store, "-q").stdout == ""

    checked = tether("check", *store)
    assert checked.returncode == 1 and f"no containers-storage store at {root}" in checked.stderr

    removed = tether("rmi", *store, "quay.io/a/b:1")
    assert removed.returncode == 1 and "quay.io/a/b:1: image not known" in removed.stderr
    assert tether("rmi", *store, "--ignore", "quay.io/a/b:1").returncode == 0
    assert tether("rmi", *store, "--all").returncode == 0

    inspected = tether("inspect", *store, "containers-storage:quay.io/a/b:1")
    assert inspected.returncode == 1 and f"no containers-storage store at {root}" in inspected.stderr

    deployment = make_root(tmp_path / "deploy", {"b.image": "quay.io/a/b:1"})
    bound = ["--deployment-root", str(deployment), *store]
    status = tether("bound", "status", *bound, "--format", "json")
    assert status.returncode == 0 and f"no store at {root}" in status.stderr
    assert [d["ready"] for d in json.loads(status.stdout)] == [False]
    assert tether("bound", "status", *bound, "--check", str(deployment)).returncode == 1
    collected = tether("bound", "gc", *bound, "--format", "json")
    assert collected.returncode == 0 and "nothing to collect" in collected.stderr
    assert json.loads(collected.stdout)["remove"] == []

    assert not root.exists() and not root.parent.exists()
