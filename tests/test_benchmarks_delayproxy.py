"""benchmarks/delayproxy.py: the WAN's delay, a new connection's handshake and slow start, bytes intact.

The window model is checked with a fake clock; the proxy itself as the benchmark runs it, a process in front of
a real docker-registry (and of a small recording server where the arrival times are what is checked).  Time
is only ever checked against the delays the proxy must add, with margins of hundreds of milliseconds.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from benchmarks.delayproxy import MSS, CongestionWindow, DelaySpec, first_release, release_time
from tests.harness.images import push_blob
from tests.harness.registry import RunningRegistry

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_slow_start_doubles_the_window_every_round_trip() -> None:
    spec = DelaySpec(one_way=0.02)
    window = CongestionWindow(spec)
    assert window.room(0.0) == 10 * MSS  # RFC 6928's initial window
    window.sent(0.0, 10 * MSS)
    assert window.room(0.0) == 0
    assert window.room(0.039) == 0
    assert window.next_acknowledgement() == 0.04
    assert window.room(0.04) == 20 * MSS  # every acknowledged byte grows the window by one
    window.sent(0.04, 20 * MSS)
    assert window.room(0.08) == 40 * MSS


def test_the_window_stops_at_the_receivers_limit() -> None:
    spec = DelaySpec(one_way=0.02, max_window=50 * MSS)
    window = CongestionWindow(spec)
    now = 0.0
    for _ in range(6):
        window.sent(now, window.room(now))
        now += spec.rtt
    assert window.room(now) == 50 * MSS


def test_an_idle_connection_restarts_from_the_initial_window() -> None:
    spec = DelaySpec(one_way=0.02)  # RTO = 40 ms + 200 ms
    window = CongestionWindow(spec)
    now = 0.0
    for _ in range(5):
        window.sent(now, window.room(now))
        now += spec.rtt
    grown = window.room(now)
    assert grown == 320 * MSS
    # Idle for less than an RTO after the last bytes were acknowledged: the window is kept.
    assert window.room(now + 0.1) == grown
    # Idle for more than two RTOs: halved once per RTO elapsed (Linux tcp_cwnd_restart), asked twice or not.
    last_send = now - spec.rtt
    assert window.room(last_send + 2 * 0.24 + 0.01) == grown // 4
    assert window.room(last_send + 2 * 0.24 + 0.02) == grown // 4
    # Long idle: back to the initial window, not below.
    assert window.room(last_send + 100.0) == 10 * MSS


def test_a_new_connections_first_bytes_wait_for_the_handshake() -> None:
    spec = DelaySpec(one_way=0.02)
    start = first_release(10.0, spec)
    assert start == 10.0 + 3 * 0.02
    assert release_time(10.0, spec, start) == start
    assert release_time(10.5, spec, start) == 10.52  # later bytes: only the one-way delay
    plain = DelaySpec(one_way=0.02, connect_rtt=False)
    assert release_time(10.0, plain, first_release(10.0, plain)) == 10.02


@contextmanager
def delay_proxy(target: str, one_way_ms: float, *flags: str) -> Iterator[str]:
    """The proxy as a process on a free loopback port; yields its HOST:PORT."""
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.delayproxy", "--listen", "127.0.0.1:0", "--to", target,
                             "--one-way-ms", str(one_way_ms), *flags], stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("listening "), line
        yield line.split()[1]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def _request_times(host: str, count: int) -> list[float]:
    """Seconds for ``count`` GET /v2/ on one new connection."""
    conn = http.client.HTTPConnection(host, timeout=30)
    times = []
    try:
        for _ in range(count):
            start = time.perf_counter()
            conn.request("GET", "/v2/")
            response = conn.getresponse()
            response.read()
            times.append(time.perf_counter() - start)
            assert response.status == 200
    finally:
        conn.close()
    return times


def test_requests_pay_the_round_trip_and_new_connections_the_handshake(registry: RunningRegistry) -> None:
    with delay_proxy(registry.host, 100) as host:
        first, second, third = _request_times(host, 3)
    assert first >= 0.4  # SYN/SYN-ACK, then the request and its answer: two round trips of 200 ms
    assert second >= 0.2 and third >= 0.2
    with delay_proxy(registry.host, 100, "--no-connect-rtt") as host:
        plain_first, _ = _request_times(host, 2)
    assert plain_first >= 0.2


def test_blobs_cross_intact_both_ways(registry: RunningRegistry) -> None:
    """A 6 MB blob uploaded through the proxy (client to registry) and read back through it: slow start and
    the delay split and hold the bytes, they must arrive complete and in order."""
    data = os.urandom(6 * 2**20)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    repo = "bench-proxy/intact"
    with delay_proxy(registry.host, 5) as host, httpx.Client(timeout=60) as client:
        push_blob(client, f"http://{host}", repo, digest, data)
        through_proxy = client.get(f"http://{host}/v2/{repo}/blobs/{digest}")
    assert through_proxy.status_code == 200
    assert hashlib.sha256(through_proxy.content).hexdigest() == digest.split(":")[1]
    direct = httpx.get(f"{registry.url}/v2/{repo}/blobs/{digest}", timeout=60)
    assert direct.content == data


def test_the_delay_is_pipelined_not_paid_per_chunk() -> None:
    """Two chunks sent 0.2 s apart reach the server about 0.2 s apart: the proxy reads the second while it
    holds the first.  Forwarding one chunk at a time would space them by the whole one-way delay (1 s)."""
    arrivals: list[tuple[float, bytes]] = []
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]

        def record() -> None:
            conn, _ = server.accept()
            with conn:
                while data := conn.recv(65536):
                    arrivals.append((time.perf_counter(), data))

        recorder = threading.Thread(target=record)
        recorder.start()
        with delay_proxy(f"127.0.0.1:{port}", 1000, "--no-connect-rtt") as host:
            address, _, proxy_port = host.rpartition(":")
            with socket.create_connection((address, int(proxy_port))) as client:
                sent = time.perf_counter()
                client.sendall(b"first")
                time.sleep(0.2)
                client.sendall(b"second")
                client.shutdown(socket.SHUT_WR)
            recorder.join(timeout=30)
    assert b"".join(data for _, data in arrivals) == b"firstsecond"
    first_at = next(t for t, data in arrivals if data.startswith(b"first"))
    second_at = next(t for t, data in arrivals if data.endswith(b"second"))
    assert first_at - sent >= 1.0
    assert second_at - first_at < 0.7
