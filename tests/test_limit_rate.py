"""``--limit-rate``: one cap across every blob stream of a run, measured where it matters, on the link.

docker-registry sits in a network namespace behind a veth pair (tests/harness/slowlink.py) whose tbf rate is far
above the limit; ``tc -s qdisc`` is sampled every 0.1 s while the real ``tether pull`` / ``tether bound sync``
runs, and the rate is taken between the first and the last layer byte (process start-up and manifests left out).
The link carries TCP/IP headers too (~3.5% on a 1500-byte MTU) and the kernel's receive buffers fill once at the
start: both are within the 10% the issue allows.

The issue's bar is a 400 MB pull held within 10% of 10 MiB/s: that takes ~45 s, so it is marked ``long`` and left
out of the default run (``pytest -m long tests/test_limit_rate.py``); the CI versions move 16-40 MiB.
"""

from __future__ import annotations

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
        self.base = self.link.sent_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append((time.monotonic(), self.link.sent_bytes() - self.base))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.monotonic(), self.link.sent_bytes() - self.base))

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
    print(f"\nlimit {rate / MIB:g} MiB/s: {measured / MIB:.2f} MiB/s on the link ({measured / rate:.3f}x); "
          f"1-second windows {min(windows) / MIB:.2f}-{max(windows) / MIB:.2f} MiB/s over {len(windows)} samples")
    return measured, windows


def test_pull_holds_the_limit_across_its_streams(tmp_path: Path, link: SlowLink) -> None:
    image = random_image(1620, 4, 10 * MIB)
    factory.push_image(link.host, "limit/app:1", image)
    args = StoreArgs.make(tmp_path, link.host)
    rate = 10 * MIB
    measured, windows = run_limited(
        link, ["pull", *args.pull, "--progress", "none", "--limit-rate", "10M", f"{link.host}/limit/app:1"],
        rate=rate)
    assert 0.9 * rate <= measured <= 1.1 * rate
    # smooth, not bursty: no second carries a quarter more or less than the limit
    assert 0.75 * rate <= min(windows) and max(windows) <= 1.25 * rate


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
    assert 0.75 * rate <= min(windows) and max(windows) <= 1.25 * rate


def test_a_rate_is_spelled_as_curl_spells_it(tmp_path: Path) -> None:
    args = StoreArgs.make(tmp_path)
    for bad in ("0", "10X", "fast"):
        proc = tether("pull", *args.pull, "--limit-rate", bad, "127.0.0.1:1/none:1")
        assert proc.returncode != 0 and f"--limit-rate: invalid rate {bad!r}" in proc.stderr, proc.stderr
    assert not args.root.exists()
