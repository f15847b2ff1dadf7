"""Issue 15 item 2: a stream that carries JSON lines carries nothing else.

With ``--progress json`` (or ``--progress-fd`` naming stdout) stdout holds bootc's progress JSON lines only: image
ids, readiness lines and documents are left out (as podman's ``--quiet`` leaves its progress out), failures and
warnings go to stderr, and ``--format json`` on the same stream is refused. Every stdout line must parse.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.harness import images as factory
from tests.harness.bound import make_root
from tests.harness.cli import REPO, StoreArgs, tether, tether_argv
from tests.harness.registry import RunningRegistry
from tests.test_progress import validate_line


@pytest.fixture(scope="module")
def refs(registry: RunningRegistry) -> list[str]:
    out = []
    for seed, name in ((1521, "streams/a:1"), (1522, "streams/b:1")):
        factory.push_image(registry.host, name, factory.simple_image(seed, files=3))
        out.append(f"{registry.host}/{name}")
    return out


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of ``text`` as JSON (fails on any other line), each valid against bootc's progress-v0 schema."""
    return [validate_line(line.encode() + b"\n") for line in text.splitlines()]


def test_pull_progress_json_leaves_stdout_to_the_json_lines(tmp_path: Path, registry: RunningRegistry,
                                                             refs: list[str]) -> None:
    args = StoreArgs.make(tmp_path, registry.host)
    done = tether("pull", *args.pull, "--progress", "json", *refs)
    assert done.returncode == 0, done.stderr
    events = json_lines(done.stdout)
    assert events[0]["type"] == "Start" and len(events) > 2
    # the ids printed otherwise are not lost: the store has the images
    listed = tether("images", *args.store, "--format", "{{.Repository}}:{{.Tag}}")
    assert sorted(listed.stdout.split()) == sorted(refs)
    # again, up to date (a different code path), and with --progress-fd naming stdout itself
    again = tether("pull", *args.pull, "--progress", "none", "--progress-fd", "1", *refs)
    assert again.returncode == 0 and json_lines(again.stdout), again.stderr


def test_failures_go_to_stderr_while_stdout_stays_json(tmp_path: Path, registry: RunningRegistry,
                                                       refs: list[str]) -> None:
    args = StoreArgs.make(tmp_path, registry.host)
    done = tether("pull", *args.pull, "--progress", "json", refs[0], f"{registry.host}/streams/missing:1")
    assert done.returncode == 1
    json_lines(done.stdout)
    assert "streams/missing:1" in done.stderr and "1 of 2 images failed" in done.stderr


def test_format_json_is_refused_on_the_progress_stream_and_kept_with_progress_fd(
        tmp_path: Path, registry: RunningRegistry, refs: list[str]) -> None:
    args = StoreArgs.make(tmp_path, registry.host)
    refused = tether("pull", *args.pull, "--progress", "json", "--format", "json", refs[0])
    assert refused.returncode == 1 and "--progress-fd" in refused.stderr and refused.stdout == ""
    assert not args.root.exists()
    # the document on stdout, the progress on fd 3: each stream one kind of JSON
    reader, writer = os.pipe()
    try:
        proc = subprocess.run(tether_argv("pull", *args.pull, "--format", "json",
                                          "--progress", "none", "--progress-fd", str(writer), refs[0]),
                              capture_output=True, text=True, cwd=REPO, pass_fds=(writer,), timeout=120)
        os.close(writer)
        writer = -1
        with os.fdopen(reader, "r") as progress:
            reader = -1
            events = json_lines(progress.read())
    finally:
        for fd in (reader, writer):
            if fd >= 0:
                os.close(fd)
    assert proc.returncode == 0, proc.stderr
    assert [r["reference"] for r in json.loads(proc.stdout)] == [refs[0]]
    assert events and events[0]["type"] == "Start"


def test_bound_sync_progress_json_leaves_stdout_to_the_json_lines(tmp_path: Path, registry: RunningRegistry,
                                                                  refs: list[str]) -> None:
    args = StoreArgs.make(tmp_path, registry.host)
    root = make_root(tmp_path / "deploy", {"a.image": refs[0], "b.image": refs[1]})
    sync = ["bound", "sync", "--deployment-root", str(root), *args.pull]
    done = tether(*sync, "--progress", "json")
    assert done.returncode == 0, done.stderr
    assert json_lines(done.stdout)
    # without JSON progress the readiness lines are there, as before
    plain = tether(*sync, "--progress", "none")
    assert plain.stdout.strip().endswith(": ready"), plain.stdout
    refused = tether(*sync, "--progress", "json", "--format", "json")
    assert refused.returncode == 1 and refused.stdout == "" and "--progress-fd" in refused.stderr
