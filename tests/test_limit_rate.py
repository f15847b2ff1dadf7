"""``--limit-rate``: one cap across every blob stream of a run, measured where it matters, on the link.

docker-registry sits in a network namespace behind a veth pair (tests/harness/slowlink.py) whose tbf rate is far
above the limit; the bytes that came through it (the host side's ``rx_bytes``, read from sysfs: ``tc -s qdisc``
takes a process whose start-up, tens of ms on a busy machine, would blur 1-second windows) are sampled every 0.1 s
while the real ``tether pull`` / ``tether bound sync`` runs, and the rate is taken between the first and the last
layer byte (process start-up and manifests left out).
The link carries TCP/IP headers too (~3.5% on a 1500-byte MTU) and the kernel's receive buffers fill once at the
start: both are within the 10% the issue allows.

The issue's bar is a 400 MB pull held within 10% of 10 MiB/s: that takes ~45 s, so it is marked ``long`` and left
out of the default run (``pytest -m long tests/test_limit_rate.py``); the CI versions move 16-40 MiB.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.harness import images as factory
from tests.harness.bound import make_root
from tests.harness.cli import REPO, StoreArgs, tether
from tests.harness.slowlink import SlowLink, can_make_links

MIB = 1 << 20


@pytest.fixture
def link(tmp_path: Path) -> Iterator[SlowLink]:
    reason = can_make_links()
    if reason is not None:
        pytest.skip(reason)
    with SlowLink("1gbit", burst="1mb") as made:
        made.start_registry(tmp_path / "registry")
        yield made


def random_image(seed: int, layers: int, layer_bytes: int) -> factory.BuiltImage:
    return factory.build_image([
        factory.build_layer([factory.file(f"data/blob{i}", random.Random(seed + i).randbytes(layer_bytes))])
        for i in range(layers)])


@dataclass
class Sampler:
    """The link's byte counter every ``every`` seconds, in a thread, until stopped."""

    link: SlowLink
    every: float = 0.1
    samples: list[tuple[float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.base = self.link.received_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append((time.monotonic(), self.link.received_bytes() - self.base))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.monotonic(), self.link.received_bytes() - self.base))

    def transfer(self, start_after: int) -> tuple[float, list[float]]:
        """The rate (bytes/s) from the first sample past ``start_after`` bytes (the manifests) to the one that
        reached the final count, and the rates of the 1-second windows inside that span."""
        final = self.samples[-1][1]
        t0, b0 = next((t, b) for t, b in self.samples if b > start_after)
        t1 = next(t for t, b in self.samples if b >= final - 64 * 1024)
        windows = []
        for ta, ba in self.samples:
            if t0 <= ta <= t1 - 1.0:
                tb, bb = next((t, b) for t, b in self.samples if t >= ta + 1.0)
                windows.append((bb - ba) / (tb - ta))
        return (final - b0) / (t1 - t0), windows


def run_limited(link: SlowLink, argv: list[str], *, rate: int) -> tuple[float, list[float]]:
    with Sampler(link) as sampler:
        proc = subprocess.run([sys.executable, "-m", "tether", *argv], cwd=REPO, capture_output=True, text=True,
                              timeout=600)
    assert proc.returncode == 0, proc.stderr
    measured, windows = sampler.transfer(start_after=MIB // 2)
    if os.environ.get("TETHER_TEST_WINDOWS"):
        print(" ".join(f"{w / MIB:.2f}" for w in windows))
    inside = sum(0.9 * rate <= w <= 1.1 * rate for w in windows)
    print(f"\nlimit {rate / MIB:g} MiB/s: {measured / MIB:.2f} MiB/s on the link ({measured / rate:.3f}x); "
          f"1-second windows {min(windows) / MIB:.2f}-{max(windows) / MIB:.2f} MiB/s, {inside} of {len(windows)} "
          "within 10%")
    return measured, windows


def assert_smooth(windows: list[float], rate: int) -> None:
    """Smooth, not bursty: four in five 1-second windows within 10% of the rate (measured: 95% over the 400 MB
    pull, 89-96% over the CI pulls' 20-30 windows, where the first second weighs more), none above 1.4x. Two things
    leave the 10%: a blob stream's connection starting fills its kernel receive buffer at the link's speed
    (SO_RCVBUF ~0.05 s of the rate, which the kernel doubles: ~1 MiB each at 10 MiB/s, measured as a 1.2-1.3x
    window when two start together), and the moment between one blob's end and the next one's start, when
    nothing is read (a dip: the limit does not let a stream make up for time nobody asked for bytes, as curl's
    does not)."""
    inside = sum(0.9 * rate <= w <= 1.1 * rate for w in windows)
    assert inside >= 0.8 * len(windows), f"{inside} of {len(windows)} 1-second windows within 10% of the rate"
    assert max(windows) <= 1.4 * rate


def test_pull_holds_the_limit_across_its_streams(tmp_path: Path, link: SlowLink) -> None:
    image = random_image(1620, 4, 10 * MIB)
    factory.push_image(link.host, "limit/app:1", image)
    args = StoreArgs.make(tmp_path, link.host)
    rate = 10 * MIB
    measured, windows = run_limited(
        link, ["pull", *args.pull, "--progress", "none", "--limit-rate", "10M", f"{link.host}/limit/app:1"],
        rate=rate)
    assert 0.9 * rate <= measured <= 1.1 * rate
    assert_smooth(windows, rate)


def test_bound_sync_takes_the_limit_too(tmp_path: Path, link: SlowLink) -> None:
    image = random_image(1630, 2, 8 * MIB)
    factory.push_image(link.host, "limit/bound:1", image)
    args = StoreArgs.make(tmp_path, link.host)
    root = make_root(tmp_path / "deploy", {"agent.image": f"{link.host}/limit/bound:1"})
    rate = 5 * MIB
    measured, _ = run_limited(
        link, ["bound", "sync", "--deployment-root", str(root), *args.pull, "--progress", "none",
               "--limit-rate", "5M"], rate=rate)
    assert 0.9 * rate <= measured <= 1.1 * rate


@pytest.mark.long
def test_a_400_mb_pull_holds_10_mib_per_second(tmp_path: Path, link: SlowLink) -> None:
    image = random_image(1640, 8, 50 * MIB)
    factory.push_image(link.host, "limit/big:1", image)
    args = StoreArgs.make(tmp_path, link.host)
    rate = 10 * MIB
    measured, windows = run_limited(
        link, ["pull", *args.pull, "--progress", "none", "--limit-rate", "10M", f"{link.host}/limit/big:1"],
        rate=rate)
    assert sum(layer.size for layer in image.layers) > 400 * 10**6
    assert 0.9 * rate <= measured <= 1.1 * rate
    assert_smooth(windows, rate)


def test_a_rate_is_spelled_as_curl_spells_it(tmp_path: Path) -> None:
    args = StoreArgs.make(tmp_path)
    for bad in ("0", "10X", "fast"):
        proc = tether("pull", *args.pull, "--limit-rate", bad, "127.0.0.1:1/none:1")
        assert proc.returncode != 0 and f"--limit-rate: invalid rate {bad!r}" in proc.stderr, proc.stderr
    assert not args.root.exists()
