"""Issue 14 item 2: the syncs a pull makes, each for a reason (ARCHITECTURE.md, "What is synced").

A kill never needs a sync (the page cache outlives the process: tests/test_store_crash.py, test_reconcile_kill.py);
a power cut does. A pull fdatasyncs the files containers/storage fdatasyncs (layers.json, images.json, each
big-data file, each tar-split: podman 4.3 does the same, strace shows it), so that no file podman parses is
ever found truncated; it fsyncs no directory (c/storage does not) and not its own session journal. A bound
readiness record is written after one syncfs of the store's filesystem: a record that survives a power cut
never claims layers whose files did not.
"""

from __future__ import annotations

import collections
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import tether.engine.bound.records as records_module
from tests.harness import images as factory
from tests.harness.registry import RunningRegistry
from tests.test_pull_registry import make_options, open_store
from tether.engine.bound.deployments import Deployment
from tether.engine.copy.pull import pull
from tether.store.containers_storage import atomic_write

SyncLog = list[tuple[str, str]]


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[SyncLog]:
    """Every fsync/fdatasync of this process, as (call, path of the descriptor)."""
    log: SyncLog = []

    def recording(name: str, real: Callable[[int], None]) -> Callable[[int], None]:
        def sync(fd: int) -> None:
            log.append((name, os.readlink(f"/proc/self/fd/{fd}")))
            real(fd)
        return sync

    monkeypatch.setattr(os, "fsync", recording("fsync", os.fsync))
    monkeypatch.setattr(os, "fdatasync", recording("fdatasync", os.fdatasync))
    yield log


def kind(path: str, root: Path) -> str:
    """What a synced file is, in the store at ``root``."""
    rel = os.path.relpath(path, root)
    if os.path.isdir(path):
        return f"directory {rel}"
    name = os.path.basename(rel)
    if rel.startswith("overlay-layers/") and name.startswith(".tmp-layers.json"):
        return "layers.json"
    if rel.startswith("overlay-images/") and name.startswith(".tmp-images.json"):
        return "images.json"
    if re.match(r"overlay-images/[0-9a-f]{64}/\.tmp-", rel):
        return "big data"
    if name == "tar-split.gz":
        return "tar-split"
    return rel


async def test_a_pull_syncs_what_podman_syncs_and_no_directory(
        tmp_path: Path, registry: RunningRegistry, syncs: SyncLog) -> None:
    base = factory.build_layer([factory.directory("usr"), factory.file("usr/base", "base\n")])
    images = [factory.build_image([base, factory.build_layer([factory.file(f"app-{n}", f"{n}\n")])])
              for n in range(2)]
    for n, image in enumerate(images):
        factory.push_image(registry.host, f"syncs/app-{n}:1", image)
    options = make_options(tmp_path, registry)
    store = open_store(options)
    syncs.clear()
    report = await pull([f"{registry.host}/syncs/app-{n}:1" for n in range(2)], store=store, options=options)
    assert report.ok, report.summary()
    counted = collections.Counter(kind(path, store.root) for _, path in syncs)
    layers, committed = 3, 2  # the base is shared
    big_data = sum(len(store.find_image(image.image_id).big_data_names) for image in images)
    assert counted == {"layers.json": 2 * layers,  # incomplete, then complete (c/storage's Put)
                       "tar-split": layers, "big data": big_data, "images.json": committed}, counted
    assert all(call == "fdatasync" for call, _ in syncs)


def test_a_readiness_record_is_written_once_the_store_is_synced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []
    monkeypatch.setattr(records_module, "sync_filesystem", lambda path: order.append(f"syncfs {path}"))
    real_write = atomic_write

    def write(path: Path, data: bytes, mode: int = 0o600, *, durable: bool = False) -> None:
        order.append(f"write {path.name} durable={durable}")
        real_write(path, data, mode, durable=durable)

    monkeypatch.setattr(records_module, "atomic_write", write)
    deployment = Deployment(name="abc.0", root=tmp_path / "sysroot")
    record = records_module.ReadinessRecord(deployment="abc.0", root=str(deployment.root), ready=True, images=(),
                                            updated="2026-12-08T00:00:00Z")
    path = records_module.write_record(tmp_path / "store", deployment, record)
    assert order == [f"syncfs {path.parent}", f"write {path.name} durable=True"]
