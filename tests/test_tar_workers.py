"""tether.store.tar.workers and .scheduling: the child-process extractor, its pool of reusable children, and the
CPU priorities of background and critical layers."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import images
from tests.test_tar_apply import layer
from tether.store.tar.apply import ExtractResult
from tether.store.tar.scheduling import BACKGROUND_NICE, Scheduler, own_policy
from tether.store.tar.tarsplit import assemble_tar
from tether.store.tar.workers import ProcessLayerExtractor, Worker, WorkerPool

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="layer application needs root (chown, mknod)")


@pytest.fixture
def pool() -> Iterator[WorkerPool]:
    """A pool of its own (and its own scheduler): what a test does to it never reaches the next tests."""
    fresh = WorkerPool()
    yield fresh
    fresh.close_idle()


def extract_in(pool: WorkerPool, blob: bytes, target: Path) -> ExtractResult:
    target.mkdir(parents=True, exist_ok=True)
    x = ProcessLayerExtractor(target, mode="overlay", tar_split_path=target.with_name(target.name + ".ts.gz"),
                              spawn_threshold=0, pool=pool)
    try:
        x.feed(blob)
        return x.finish()
    except BaseException:
        x.abort()
        raise


def test_process_extractor_spawns_only_for_blobs_past_the_threshold(tmp_path: Path) -> None:
    small = gzip.compress(layer([images.file("s", b"small")]))
    big = gzip.compress(layer([images.large_file("big", 300_000)]), compresslevel=0)
    for name, blob, spawned in (("small", small, False), ("big", big, True)):
        target = tmp_path / name
        target.mkdir()
        x = ProcessLayerExtractor(target, mode="overlay", tar_split_path=tmp_path / f"{name}.ts.gz",
                                  spawn_threshold=100_000)
        for i in range(0, len(blob), 65536):
            x.feed(blob[i : i + 65536])
        result = x.finish()
        assert (x._proc is not None) == spawned
        assert result.diff_digest.startswith("sha256:")
        assert b"".join(assemble_tar(tmp_path / f"{name}.ts.gz", target)) == gzip.decompress(blob)


def test_child_never_finishes_a_layer_whose_feeder_died(tmp_path: Path) -> None:
    # An uncompressed blob cut on an entry boundary is a tar Go's reader accepts; when the feeding process is
    # killed there, the child must fail the layer rather than write a complete-looking tar-split.
    whole = layer(images.many_small_files("d", 20))
    cut = whole[: 512 * 4]  # header+data of the dir and the first file, no end-of-archive blocks
    script = f"""
import os, sys
from pathlib import Path
from tether.store.tar.workers import ProcessLayerExtractor
x = ProcessLayerExtractor(Path({str(tmp_path / 'diff')!r}), mode="overlay",
                          tar_split_path=Path({str(tmp_path / 'diff.ts.gz')!r}), spawn_threshold=0)
x.feed({cut!r})
print(x._proc.pid, flush=True)
os._exit(9)
"""
    (tmp_path / "diff").mkdir()
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    child = int(out.stdout.split()[0])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and os.path.exists(f"/proc/{child}"):
        try:
            with open(f"/proc/{child}/stat") as f:
                if f.read().split()[2] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.05)
    assert not (tmp_path / "diff.ts.gz").exists()


def test_prewarmed_workers_are_reused(tmp_path: Path, pool: WorkerPool) -> None:
    pool.prewarm(2)
    idle = pool.idle_pids()
    assert len(idle) >= 2
    blob = gzip.compress(layer([images.file("f", b"x")]))
    result = extract_in(pool, blob, tmp_path / "diff")
    assert result.diff_digest == images.sha256_digest(gzip.decompress(blob))
    assert pool.idle_pids() & idle  # the worker that applied the layer went back to the pool, or another stayed idle


def _nice(pid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, pid)


def _threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def _wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


class _Started:
    """A ProcessLayerExtractor fed half its blob (its child is running and busy until ``finish``)."""

    def __init__(self, tmp_path: Path, name: str, *, background: bool, pool: WorkerPool) -> None:
        self.files = 200
        self.tar = layer([images.file(f"{name}/f{i:03}", os.urandom(1500)) for i in range(self.files)])
        self.blob = gzip.compress(self.tar)
        self.target = tmp_path / name
        self.target.mkdir()
        self.x = ProcessLayerExtractor(self.target, mode="overlay", tar_split_path=tmp_path / f"{name}.ts.gz",
                                       spawn_threshold=0, background=background, pool=pool)
        self.x.feed(self.blob[: len(self.blob) // 2])
        assert self.x._proc is not None and self.x._worker is not None
        self.pid: int = self.x._proc.pid
        self.worker = self.x._worker

    def policy(self) -> int:
        return os.sched_getscheduler(self.pid)

    def finish(self) -> None:
        self.x.feed(self.blob[len(self.blob) // 2 :])
        assert self.x.finish().diff_digest == images.sha256_digest(self.tar)


@pytest.fixture
def start_layer(tmp_path: Path, pool: WorkerPool) -> Iterator[Callable[..., _Started]]:
    """Start layers half-fed, in the test's pool unless told; whatever a failing test left running is aborted
    (a no-op once finished)."""
    started: list[_Started] = []

    def start(name: str, *, background: bool, in_pool: WorkerPool | None = None) -> _Started:
        layer_ = _Started(tmp_path, name, background=background, pool=in_pool or pool)
        started.append(layer_)
        return layer_

    yield start
    for layer_ in started:
        layer_.x.abort()


@pytest.mark.parametrize("background", [True, False])
def test_background_layers_run_niced_on_one_thread_critical_ones_threaded(
        start_layer: Callable[..., _Started], background: bool) -> None:
    started = start_layer("d", background=background)
    files = started.target / "d"
    _wait_until(lambda: files.is_dir() and any(files.iterdir()), "the first files")
    base = _nice(0)
    assert _nice(started.pid) == (min(19, base + BACKGROUND_NICE) if background else base)
    # threaded: the applier thread beside the one reading and decompressing
    assert _threads(started.pid) == (1 if background else 2)
    started.finish()
    assert sorted(p.name for p in files.iterdir()) == [f"f{i:03}" for i in range(started.files)]


def test_an_idle_background_worker_is_brought_back_to_the_foreground_or_replaced(
        monkeypatch: pytest.MonkeyPatch, pool: WorkerPool) -> None:
    base = _nice(0)
    w = pool.take(background=True)
    assert w.background and _nice(w.pid) == min(19, base + BACKGROUND_NICE)
    pool.give_back(w)
    # root may lower a child's niceness again: the same worker serves a critical layer
    again = pool.take(background=False)
    assert again is w and not again.background and _nice(again.pid) == base
    pool.scheduler.set_background(again, True)
    pool.give_back(again)

    real = os.setpriority

    def unprivileged(which: int, who: int, prio: int) -> None:  # lowering niceness needs CAP_SYS_NICE
        if prio < os.getpriority(which, who):
            raise PermissionError(13, "Permission denied")
        real(which, who, prio)

    monkeypatch.setattr(os, "setpriority", unprivileged)
    fresh = pool.take(background=False)
    try:
        assert fresh is not w and fresh.pid != w.pid
        assert not fresh.background and _nice(fresh.pid) == base
        assert w.proc.poll() is not None  # the niced worker that could not be raised again was closed
    finally:
        fresh.close()


def test_background_layers_run_under_sched_idle_while_a_critical_layer_is_extracted(
        start_layer: Callable[..., _Started], pool: WorkerPool) -> None:
    base = _nice(0)
    early = start_layer("early", background=True)
    assert early.policy() == os.SCHED_OTHER  # nothing critical yet: merely niced
    critical = start_layer("critical", background=False)
    assert early.policy() == os.SCHED_IDLE  # sent behind the critical layer as it starts
    assert critical.policy() == os.SCHED_OTHER and _nice(critical.pid) == base
    late = start_layer("late", background=True)
    assert late.policy() == os.SCHED_IDLE  # starts behind it
    critical.finish()
    # the last critical layer ended: the others go back to SCHED_OTHER, still niced
    for bg in (early, late):
        assert bg.policy() == os.SCHED_OTHER
        assert _nice(bg.pid) == min(19, base + BACKGROUND_NICE)
    early.finish()
    late.finish()
    with pool._lock:
        pooled = list(pool._idle)
    assert early.worker in pooled  # reusable: idle workers kept for the next layers never stay SCHED_IDLE
    assert all(os.sched_getscheduler(w.pid) == os.SCHED_OTHER and not w.sched_idle for w in pooled)
    assert pool.scheduler._critical_running == 0 and not pool.scheduler._background_running


@pytest.mark.parametrize(("own", "restore"), [("SCHED_OTHER", "SCHED_OTHER"), ("SCHED_BATCH", "SCHED_BATCH"),
                                              ("SCHED_IDLE", None)])
def test_background_children_return_to_the_pulls_own_policy(own: str, restore: str | None) -> None:
    try:
        os.sched_setscheduler(0, getattr(os, own), os.sched_param(0))  # as a unit's CPUSchedulingPolicy= would
        assert own_policy() == (None if restore is None else getattr(os, restore))
    finally:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def test_under_sched_batch_background_layers_go_back_to_batch(start_layer: Callable[..., _Started]) -> None:
    batch = WorkerPool(scheduler=Scheduler(restore_policy=os.SCHED_BATCH))
    try:
        critical = start_layer("critical", background=False, in_pool=batch)
        bg = start_layer("bg", background=True, in_pool=batch)
        assert bg.policy() == os.SCHED_IDLE
        critical.finish()
        assert bg.policy() == os.SCHED_BATCH
        bg.finish()
    finally:
        batch.close_idle()  # its BATCH workers serve no other test


def test_a_worker_left_under_sched_idle_is_not_reused_and_the_scheme_turns_off(
        start_layer: Callable[..., _Started], monkeypatch: pytest.MonkeyPatch, pool: WorkerPool) -> None:
    real = os.sched_setscheduler

    def no_way_back(pid: int, policy: int, param: os.sched_param) -> None:  # root without CAP_SYS_NICE
        if policy != os.SCHED_IDLE:
            raise PermissionError(1, "Operation not permitted")
        real(pid, policy, param)

    monkeypatch.setattr(os, "sched_setscheduler", no_way_back)
    critical = start_layer("critical", background=False)
    stuck = start_layer("stuck", background=True)
    assert stuck.policy() == os.SCHED_IDLE
    critical.finish()
    assert stuck.policy() == os.SCHED_IDLE and pool.scheduler._idle_ok is False  # refused: the scheme is off
    stuck.finish()
    assert stuck.worker.proc.poll() is not None  # closed, never handed to another layer
    again = start_layer("again", background=False)
    plain = start_layer("plain", background=True)
    assert plain.policy() == os.SCHED_OTHER  # only niced from now on
    again.finish()
    plain.finish()
    assert pool.scheduler._critical_running == 0 and not pool.scheduler._background_running


def test_a_layer_starting_while_workers_are_prewarmed_takes_one_of_them() -> None:
    created: list[Worker] = []

    def slow_to_start() -> Worker:
        time.sleep(0.3)  # a slow fork/exec: the layer asks for a worker meanwhile
        w = Worker()
        created.append(w)
        return w

    pool = WorkerPool(start_worker=slow_to_start)
    warming = threading.Thread(target=pool.prewarm, args=(1,))
    warming.start()
    _wait_until(lambda: pool._starting == 1, "the prewarm to begin")
    taken = pool.take(background=False)
    warming.join()
    try:
        assert created == [taken]  # no second child started beside the prewarmed one
    finally:
        taken.close()
        pool.close_idle()
