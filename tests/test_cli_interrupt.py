"""Issue 15 item 3, Ctrl-C: ``tether pull`` and ``tether bound sync`` interrupted mid-layer exit 130 without a
traceback, after their cleanup: the store passes ``tether check`` and podman lists what was committed.

The SIGINT goes to the whole process group, as a terminal's Ctrl-C does: tether and its extraction children.
A layer held back by the proxy (``stall`` after 6 MiB of a 12 MiB layer) is being extracted in a child when the
signal arrives; another image has been committed.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import images as factory
from tests.harness.bound import make_root
from tests.harness.cli import StoreArgs, popen_tether, tether
from tests.harness.faulty_proxy import Fault, FaultyProxy
from tests.harness.podman import Podman
from tests.harness.registry import RunningRegistry

SMALL = factory.simple_image(1531, files=2, layers=1)
BIG = factory.build_image([factory.build_layer([factory.large_file("big.bin", 12 * 1024 * 1024, seed=1532)],
                                               "none")])


@pytest.fixture
def proxy(registry: RunningRegistry) -> Iterator[FaultyProxy]:
    factory.push_image(registry.host, "interrupt/small:1", SMALL)
    factory.push_image(registry.host, "interrupt/big:1", BIG)
    with FaultyProxy(upstream=registry.host) as running:
        running.add(Fault("stall", path_contains=BIG.layers[0].digest, after=6 * 1024 * 1024, stall_seconds=60))
        yield running


def interrupt_when_stalled(args: list[str], proxy: FaultyProxy) -> tuple[int, str, str]:
    proc = popen_tether(*args)
    try:
        deadline = time.monotonic() + 60
        while not any(r.fault == "stall" for r in proxy.requests):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the big layer never reached the proxy"
            time.sleep(0.05)
        time.sleep(0.5)  # the first 6 MiB are in the extraction child
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err


def assert_quiet_and_consistent(code: int, err: str, store: Path, podman: Podman) -> None:
    assert code == 130, err
    assert "Traceback" not in err and "ExceptionGroup" not in err and "KeyboardInterrupt" not in err, err
    check = tether("check", "--root", str(store))
    assert check.returncode == 0 and "no problems" in check.stdout, check.stdout + check.stderr
    listed = podman.run("images", "--format", "json")
    assert [i["Id"] for i in json.loads(listed.stdout)] == [SMALL.image_id]
    staging = store / "overlay" / "tether-staging"
    assert not staging.exists() or not any(staging.iterdir())


def test_ctrl_c_during_pull(tmp_path: Path, proxy: FaultyProxy, podman_on: Callable[[Path], Podman]) -> None:
    args = StoreArgs.make(tmp_path, proxy.host)
    code, _, err = interrupt_when_stalled(
        ["pull", *args.pull, "--progress", "plain", f"{proxy.host}/interrupt/small:1",
         f"{proxy.host}/interrupt/big:1"], proxy)
    assert f"{proxy.host}/interrupt/small:1: done" in err
    assert_quiet_and_consistent(code, err, args.root, podman_on(args.root))


def test_ctrl_c_during_bound_sync(tmp_path: Path, proxy: FaultyProxy,
                                  podman_on: Callable[[Path], Podman]) -> None:
    args = StoreArgs.make(tmp_path, proxy.host)
    root = make_root(tmp_path / "deploy", {"small.image": f"{proxy.host}/interrupt/small:1",
                                           "big.image": f"{proxy.host}/interrupt/big:1"})
    code, _, err = interrupt_when_stalled(
        ["bound", "sync", "--deployment-root", str(root), *args.pull, "--progress", "none"], proxy)
    assert_quiet_and_consistent(code, err, args.root, podman_on(args.root))
    status = tether("bound", "status", "--deployment-root", str(root), *args.store, "--format", "json")
    assert [d["ready"] for d in json.loads(status.stdout)] == [False]
