"""The network between the benchmarked tools and the registry: loopback, or an emulated WAN.

The WAN (see the README: "The WAN profile") is built as these VMs allow (no ``netem``): a network namespace
joined to the host by a veth pair, ``tbf`` on both ends for the rate, docker-registry inside the namespace on
its loopback, and :mod:`benchmarks.delayproxy` in the namespace adding the delay.  Every tool reaches the
registry at ``10.77.N.2:5000``, so every byte crosses both the rate limit and the delay.  Setting it up needs
root; :func:`wan_link` removes the namespace, the veth pair and the processes it started on any exit
(Ctrl-C and SIGTERM included, when :func:`exit_on_sigterm` is installed).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import select
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
#: docker-registry inside the namespace listens on its loopback; the proxy on the veth address.
REGISTRY_PORT = 5001
PROXY_PORT = 5000
NAMESPACE_PREFIX = "tbench-"
#: Bytes on the wire per full TCP segment (Ethernet header + IP + TCP with timestamps + MSS): what tbf counts.
WIRE_BYTES_PER_SEGMENT = 14 + 20 + 32 + 1448


class LinkError(RuntimeError):
    """The emulated link could not be set up or measured."""


@dataclass(frozen=True)
class WanSpec:
    """The emulated link: rate (each direction), round-trip time, and what the delay proxy models."""

    rate_mbit: float = 200.0
    rtt_ms: float = 40.0
    connect_rtt: bool = True
    slow_start: bool = True
    #: tbf's bucket (256 KiB lets a 64 KiB GSO packet through) and its queue, as the reference method sets them.
    burst: str = "256kb"
    queue_latency: str = "100ms"

    def describe(self) -> dict[str, Any]:
        """The parameters, for the results file."""
        return {"rate_mbit": self.rate_mbit, "rtt_ms": self.rtt_ms, "connect_rtt": self.connect_rtt,
                "slow_start": self.slow_start, "tbf_burst": self.burst, "tbf_latency": self.queue_latency,
                "goodput_limit_bytes_per_s": round(self.goodput_limit())}

    def goodput_limit(self) -> float:
        """Payload bytes/s the rate allows with full segments: tbf counts headers too."""
        return self.rate_mbit * 1e6 / 8 * 1448 / WIRE_BYTES_PER_SEGMENT


@dataclass
class Link:
    """Where the registry is reached (``host``), and how: ``network`` is ``loopback`` or ``wan``."""

    network: str
    host: str
    spec: WanSpec | None = None
    namespace: str | None = None
    namespace_device: str | None = None
    calibration: dict[str, Any] = field(default_factory=dict)

    def registry_sent_bytes(self) -> int | None:
        """Bytes the registry side has put on the wire so far (tbf's counter), None on loopback: the
        difference over a run shows what a tool downloaded, re-downloads included."""
        if self.namespace is None or self.namespace_device is None:
            return None
        out = subprocess.run(["tc", "-n", self.namespace, "-s", "-j", "qdisc", "show", "dev",
                              self.namespace_device], capture_output=True, text=True, check=True, timeout=30).stdout
        return sum(int(q["bytes"]) for q in json.loads(out) if q.get("root"))

    def describe(self) -> dict[str, Any]:
        """The link's parameters and its measured check, for the results file."""
        return {"network": self.network, "host": self.host, **(self.spec.describe() if self.spec else {}),
                "calibration": self.calibration}


def _run(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise LinkError(f"setting up the WAN link: {' '.join(argv)} failed: {proc.stderr.strip()}")


def _quiet(*argv: str) -> None:
    subprocess.run(argv, capture_output=True, timeout=60, check=False)


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def remove_stale_namespaces() -> list[str]:
    """Delete namespaces an interrupted earlier run left (``tbench-PID`` whose PID is gone); returns them."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False, timeout=30).stdout
    stale = []
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        pid = name[len(NAMESPACE_PREFIX):]
        if name.startswith(NAMESPACE_PREFIX) and pid.isdigit() and not _alive(int(pid)):
            _quiet("ip", "link", "del", f"tbh{pid}")
            _quiet("ip", "netns", "del", name)
            stale.append(name)
    return stale


def _free_subnet(start: int) -> str:
    """A ``10.77.N`` /24 no interface of the host uses (parallel runs pick different ones)."""
    used = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True,
                          timeout=30).stdout
    for k in range(250):
        prefix = f"10.77.{(start + k) % 250 + 1}"
        if f" {prefix}." not in used:
            return prefix
    raise LinkError("setting up the WAN link: no free 10.77.N.0/24 subnet")


@contextlib.contextmanager
def _uninterruptible() -> Iterator[None]:
    """Ignore Ctrl-C while tearing down, so a second one does not leave the namespace behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit in the main thread, so that ``finally`` blocks tear the link down."""
    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, handler)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_for_line(proc: subprocess.Popen[bytes], prefix: bytes, timeout: float) -> bytes:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            line = proc.stdout.readline()
            if line.startswith(prefix):
                return line
            if not line:
                break
    raise LinkError(f"setting up the WAN link: {proc.args!r} did not print {prefix!r} (exit {proc.poll()})")


def wait_for_registry(host: str, *, timeout: float = 30.0) -> None:
    """Poll ``/v2/`` until the registry answers (through the link)."""
    deadline = time.monotonic() + timeout
    while True:
        conn = http.client.HTTPConnection(host, timeout=5)
        try:
            conn.request("GET", "/v2/")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        if time.monotonic() > deadline:
            raise LinkError(f"the registry at {host} did not answer /v2/ within {timeout:.0f} s")
        time.sleep(0.1)


@contextlib.contextmanager
def wan_link(spec: WanSpec, *, workdir: Path, registry_data: Path) -> Iterator[Link]:
    """Set up the emulated WAN with docker-registry serving ``registry_data`` behind it; tear it all down on
    exit.  Root only."""
    from tests.harness.registry import registry_config

    remove_stale_namespaces()
    pid = os.getpid()
    namespace, host_dev, ns_dev = f"{NAMESPACE_PREFIX}{pid}", f"tbh{pid}", f"tbn{pid}"
    prefix = _free_subnet(pid % 250)
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "config.yml"
    config.write_text(registry_config(port=REGISTRY_PORT, data_dir=registry_data))
    processes: list[subprocess.Popen[bytes]] = []
    tbf = ["root", "tbf", "rate", f"{spec.rate_mbit:g}mbit", "burst", spec.burst, "latency", spec.queue_latency]
    try:
        _run("ip", "netns", "add", namespace)
        _run("ip", "link", "add", host_dev, "type", "veth", "peer", "name", ns_dev)
        _run("ip", "link", "set", ns_dev, "netns", namespace)
        _run("ip", "addr", "add", f"{prefix}.1/24", "dev", host_dev)
        _run("ip", "link", "set", host_dev, "up")
        _run("ip", "-n", namespace, "addr", "add", f"{prefix}.2/24", "dev", ns_dev)
        _run("ip", "-n", namespace, "link", "set", ns_dev, "up")
        _run("ip", "-n", namespace, "link", "set", "lo", "up")
        _run("tc", "-n", namespace, "qdisc", "add", "dev", ns_dev, *tbf)  # registry -> host
        _run("tc", "qdisc", "add", "dev", host_dev, *tbf)  # host -> registry
        with open(workdir / "registry.log", "ab") as log:
            processes.append(subprocess.Popen(
                ["ip", "netns", "exec", namespace, "docker-registry", "serve", str(config)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "OTEL_TRACES_EXPORTER": "none"}))
        proxy_argv = ["ip", "netns", "exec", namespace, sys.executable, "-m", "benchmarks.delayproxy",
                      "--listen", f"{prefix}.2:{PROXY_PORT}", "--to", f"127.0.0.1:{REGISTRY_PORT}",
                      "--one-way-ms", f"{spec.rtt_ms / 2:g}",
                      *([] if spec.connect_rtt else ["--no-connect-rtt"]),
                      *([] if spec.slow_start else ["--no-slow-start"])]
        processes.append(subprocess.Popen(proxy_argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}))
        _wait_for_line(processes[-1], b"listening ", 30)
        link = Link("wan", f"{prefix}.2:{PROXY_PORT}", spec, namespace, ns_dev)
        wait_for_registry(link.host)
        yield link
    finally:
        with _uninterruptible():
            for proc in reversed(processes):
                _stop(proc)
                if proc.stdout is not None:
                    proc.stdout.close()
            # Deleting a namespace is asynchronous in the kernel; deleting the veth first removes both ends now.
            _quiet("ip", "link", "del", host_dev)
            _quiet("ip", "netns", "del", namespace)


def calibrate(host: str, blob_repository: str, blob: Path, *, small_requests: int = 7) -> dict[str, Any]:
    """Measure the link as the tools will see it: the time of a small request on a new connection and on a
    kept-alive one (median), and the bytes/s of one large blob fetched by curl (its file read once first, so
    the registry's disk is not what is measured)."""
    conn = http.client.HTTPConnection(host, timeout=30)
    times = []
    try:
        for _ in range(1 + small_requests):
            start = time.perf_counter()
            conn.request("GET", "/v2/")
            conn.getresponse().read()
            times.append(time.perf_counter() - start)
    finally:
        conn.close()
    with open(blob, "rb") as f:
        while f.read(1 << 22):
            pass
    url = f"http://{host}/v2/{blob_repository}/blobs/sha256:{blob.name}"
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", url],
                         capture_output=True, text=True, check=True, timeout=600).stdout.split()
    size, seconds = int(out[0]), float(out[1])
    if size != blob.stat().st_size:
        raise LinkError(f"calibration: curl got {size} bytes of {url}, expected {blob.stat().st_size}")
    return {"new_connection_request_ms": round(times[0] * 1000, 1),
            "request_rtt_ms": round(statistics.median(times[1:]) * 1000, 1),
            "transfer_bytes": size, "transfer_seconds": round(seconds, 3),
            "transfer_bytes_per_s": round(size / seconds)}
