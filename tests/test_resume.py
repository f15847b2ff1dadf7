"""Resume across runs, against the real parts: docker-registry in a network namespace behind a tbf-shaped veth pair
(tests/harness/slowlink.py), the real ``tether pull`` killed with SIGKILL (its whole process group: the extraction
children too) at points chosen by the bytes the link has carried, rerun, and the registry's bytes counted by
``tc -s qdisc`` across every run; podman reads the result.

The bar (issue 16): a pull killed after half its bytes and rerun moves at most ~1.15x the image's bytes.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import images as factory
from tests.harness.cli import REPO, StoreArgs, tether
from tests.harness.podman import Podman, short_runroot
from tests.harness.registry import RunningRegistry
from tests.harness.slowlink import SlowLink, can_make_links
from tests.harness.store_pull import release_podman
from tether.store.containers_storage import Store

LAYERS = 4
LAYER_BYTES = 16 << 20
RATE = "200mbit"
#: The issue's bar for one kill after half the bytes. Each kill also loses what was between the socket and the
#: file: the kernel's receive buffers and up to ~3 MiB per stream in the process (the group being filled, one in
#: the channel, the one being written), four streams here: measured 3.5-10 MB a kill (0.05-0.15 of the image,
#: more on a busy machine), 1.14-1.19x in all for three kills. 0.05 more is allowed per further kill.
BOUND = 1.15
PER_KILL = 0.05
#: What one kill may lose of the bytes the link carried, for the check that each run kept what it received.
LOST_PER_KILL = 0.12


@pytest.fixture(scope="module")
def big_image() -> factory.BuiltImage:
    """Four layers of incompressible data (64 MiB): a pull long enough on the link to be killed at chosen points."""
    layers = [factory.build_layer([factory.file(f"data/blob{i}", random.Random(1600 + i).randbytes(LAYER_BYTES))])
              for i in range(LAYERS)]
    return factory.build_image(layers)


def image_bytes(image: factory.BuiltImage) -> int:
    return sum(layer.size for layer in image.layers) + len(image.config) + len(image.manifest)


@pytest.fixture(scope="module")
def link(tmp_path_factory: pytest.TempPathFactory, big_image: factory.BuiltImage) -> Iterator[SlowLink]:
    reason = can_make_links()
    if reason is not None:
        pytest.skip(reason)
    with SlowLink(RATE) as made:
        made.start_registry(tmp_path_factory.mktemp("slow-registry"))
        factory.push_image(made.host, "resume/app:1", big_image)
        yield made


def cache_files(root: Path) -> dict[str, int]:
    blobs = root / "tether" / "cache" / "blobs"
    return {p.name: p.stat().st_size for p in blobs.iterdir()} if blobs.is_dir() else {}


def kill_after(link: SlowLink, argv: list[str], *, bytes_sent: int, since: int) -> None:
    """Run ``tether ARGV`` until the link has carried ``bytes_sent`` more bytes than ``since``, then SIGKILL its
    process group (tether and its extraction children), as an OOM kill or a power cut would stop it."""
    proc = subprocess.Popen([sys.executable, "-m", "tether", *argv], cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while link.sent_bytes() - since < bytes_sent:
            if proc.poll() is not None:
                raise AssertionError(f"tether ended before it was killed ({proc.returncode}): "
                                     f"{proc.stderr.read().decode() if proc.stderr else ''}")
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


def podman_ids(root: Path) -> set[str]:
    podman = Podman(root=root, runroot=short_runroot())
    try:
        return {i["Id"] for i in podman.images()}
    finally:
        release_podman(podman.root, podman.runroot)
        shutil.rmtree(podman.runroot, ignore_errors=True)


@pytest.mark.parametrize("kills", [(0.5,), (0.2, 0.45, 0.7)], ids=["half", "three-times"])
def test_a_killed_pull_resumes_where_it_stopped(tmp_path: Path, link: SlowLink, big_image: factory.BuiltImage,
                                                kills: tuple[float, ...]) -> None:
    args = StoreArgs.make(tmp_path, link.host)
    name = f"{link.host}/resume/app:1"
    total = image_bytes(big_image)
    start = link.sent_bytes()
    argv = ["pull", *args.pull, "--progress", "none", name]
    kept = 0
    for number, fraction in enumerate(kills, 1):
        kill_after(link, argv, bytes_sent=int(fraction * total), since=start)
        # what arrived is kept, less what was between the network and the file at each kill so far
        kept, before = sum(cache_files(args.root).values()), kept
        print(f"\nkill {number} after {fraction} of the bytes: {kept} kept ({kept / total:.3f} of the image)")
        assert kept > before and kept >= (fraction - LOST_PER_KILL * number) * total, (fraction, kept, total)
    done = tether(*argv, timeout=300)
    assert done.returncode == 0, done.stderr
    moved = link.sent_bytes() - start
    print(f"\nkilled at {kills} of {total} bytes: the registry sent {moved} bytes in all, {moved / total:.3f}x")
    assert moved <= (BOUND + PER_KILL * (len(kills) - 1)) * total
    # the rerun asked for the rest of each blob
    log = (link.workdir / "registry.log").read_text() if link.workdir else ""
    assert re.search(r'"GET /v2/resume/app/blobs/sha256:[0-9a-f]+ HTTP/1.1" 206', log), log[-2000:]
    assert cache_files(args.root) == {}  # published layers leave nothing behind
    assert not any((args.root / "tether" / "cache" / "records").iterdir())
    assert Store.open(args.root).check() == []
    assert podman_ids(args.root) == {big_image.image_id}


def test_a_prefix_that_is_not_the_blob_is_thrown_away(tmp_path: Path, registry: RunningRegistry) -> None:
    # A power cut can leave garbage in a file written without fsync: its bytes fail the whole blob's digest (or
    # its decompression), and the blob is fetched whole once more; nothing of it is published.
    layers = [factory.build_layer([factory.file("a", random.Random(1610).randbytes(1 << 20))]),
              factory.build_layer([factory.file("b", random.Random(1611).randbytes(1 << 20))])]
    image = factory.build_image(layers)
    factory.push_image(registry.host, "resume/garbage:1", image)
    args = StoreArgs.make(tmp_path, registry.host)
    blobs = args.root / "tether" / "cache" / "blobs"
    blobs.mkdir(parents=True)
    first, second = layers
    # the right length, the wrong bytes; and a file longer than its blob
    (blobs / first.digest.replace(":", "-")).write_bytes(bytes(len(first.blob) // 2))
    (blobs / second.digest.replace(":", "-")).write_bytes(second.blob + b"more")
    before = len(registry.access_log())
    done = tether("pull", *args.pull, "--progress", "none", f"{registry.host}/resume/garbage:1")
    assert done.returncode == 0, done.stderr
    lines = registry.access_log()[before:]
    # the first blob: a Range request for the rest (206), then the whole blob (200); the second fetched whole
    assert [re.search(r" (\d{3}) ", line).group(1) for line in lines if first.digest in line] == ["206", "200"]  # type: ignore[union-attr]
    assert [re.search(r" (\d{3}) ", line).group(1) for line in lines if second.digest in line] == ["200"]  # type: ignore[union-attr]
    assert Store.open(args.root).check() == []
    assert cache_files(args.root) == {}
