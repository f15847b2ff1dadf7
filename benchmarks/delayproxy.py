"""A TCP proxy that adds a WAN's delay to every byte, for the benchmark's emulated link (see benchmarks/wan.py).

    python -m benchmarks.delayproxy --listen 10.77.5.2:5000 --to 127.0.0.1:5001 --one-way-ms 20

These VMs have no ``netem``, so the delay is added here, in user space, while ``tbf`` on the veth pair limits
the rate.  Each direction of each connection is a pipeline: a reader takes bytes as they arrive and stamps
them, a writer forwards each chunk ``one_way`` seconds after it arrived, in order; the reader keeps reading
meanwhile (up to :data:`QUEUE_LIMIT` bytes held), so the delay does not cap the throughput: a window of data
is in flight as on a real long link.

The proxy splits each TCP connection in two, and the client's half has the veth's near-zero RTT, so two things
a real long path costs would otherwise vanish.  Both are modelled (:class:`DelaySpec`, on by default):

* the handshake: ``connect()`` returns at once here, but on a real path a new connection's first request
  leaves one RTT later; the client's first bytes are held until three one-way delays after the accept;
* slow start: a real sender may have only ``cwnd`` unacknowledged bytes in flight, starting from 10 segments
  (RFC 6928) and growing by the bytes acknowledged (RFC 5681 §3.1), an acknowledgement coming one RTT after
  the bytes left; an idle connection restarts from the initial window (RFC 5681 §4.1, as Linux's
  ``tcp_cwnd_restart`` does: the window halves per RTO of idleness, net/ipv4/tcp_output.c).
  There is no loss, so the window only grows, up to :attr:`DelaySpec.max_window`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import sys
from collections.abc import Sequence
from dataclasses import dataclass

#: Bytes one direction of a connection may hold before its reader pauses (the sender then sees back-pressure).
#: Far above a 1 Gbit/s link's bandwidth-delay product at 20 ms (2.5 MB), so it never limits the emulated link.
QUEUE_LIMIT = 16 * 2**20
CHUNK = 1 * 2**20
#: A full Ethernet segment's TCP payload (1500 - 20 IP - 20 TCP - 12 timestamp option).
MSS = 1448


@dataclass(frozen=True)
class DelaySpec:
    """What the proxy emulates: a one-way delay, and optionally a new connection's handshake and slow start."""

    one_way: float
    connect_rtt: bool = True
    slow_start: bool = True
    initial_window: int = 10 * MSS
    #: Linux's default ``tcp_rmem`` max (6 MiB) lets a receiver advertise about this much.
    max_window: int = 3 * 2**20
    #: Linux's ``TCP_RTO_MIN``; the RTO of a steady connection is about RTT + 200 ms.
    min_rto: float = 0.2

    @property
    def rtt(self) -> float:
        return 2 * self.one_way


def first_release(accepted: float, spec: DelaySpec) -> float:
    """The earliest time the client's first bytes may reach the server: a real client sends them only after
    the SYN/SYN-ACK round trip, so they arrive one RTT plus one way after its SYN reached the listener."""
    return accepted + 3 * spec.one_way if spec.connect_rtt else accepted


def release_time(arrived: float, spec: DelaySpec, not_before: float) -> float:
    """When bytes read at ``arrived`` are forwarded."""
    return max(arrived + spec.one_way, not_before)


class CongestionWindow:
    """A loss-free TCP sender's congestion window (sans-IO: the caller passes the clock).

    :meth:`room` says how many bytes may be sent now, :meth:`sent` records a send; bytes count as acknowledged
    one RTT after they were sent.
    """

    def __init__(self, spec: DelaySpec) -> None:
        self.spec = spec
        self.cwnd = spec.initial_window
        self._inflight: collections.deque[tuple[float, int]] = collections.deque()
        self._inflight_bytes = 0
        self._last_send: float | None = None

    def _acknowledge(self, now: float) -> None:
        while self._inflight and self._inflight[0][0] <= now:
            _, size = self._inflight.popleft()
            self._inflight_bytes -= size
            self.cwnd = min(self.spec.max_window, self.cwnd + size)

    def room(self, now: float) -> int:
        """Bytes that may be sent at ``now``."""
        self._acknowledge(now)
        if not self._inflight and self._last_send is not None:
            # Linux tcp_slow_start_after_idle_check / tcp_cwnd_restart: idle for more than one RTO (nothing in
            # flight), the window halves for every further RTO, down to the initial window.
            rto = self.spec.rtt + self.spec.min_rto
            idle = now - self._last_send
            restart = min(self.spec.initial_window, self.cwnd)
            if idle > rto:
                while idle - rto > 0 and self.cwnd > restart:
                    idle -= rto
                    self.cwnd >>= 1
                self.cwnd = max(self.cwnd, restart)
                self._last_send = now  # restarted once: asking again before sending must not halve again
        return max(0, self.cwnd - self._inflight_bytes)

    def sent(self, now: float, size: int) -> None:
        """Record ``size`` bytes sent at ``now``."""
        self._inflight.append((now + self.spec.rtt, size))
        self._inflight_bytes += size
        self._last_send = now

    def next_acknowledgement(self) -> float | None:
        """When the oldest bytes in flight are acknowledged (None: nothing in flight)."""
        return self._inflight[0][0] if self._inflight else None


async def _send(writer: asyncio.StreamWriter, data: bytes, window: CongestionWindow | None) -> None:
    loop = asyncio.get_running_loop()
    if window is None:
        writer.write(data)
        await writer.drain()
        return
    view = memoryview(data)
    while view:
        now = loop.time()
        room = window.room(now)
        if room <= 0:
            ack = window.next_acknowledgement()
            await asyncio.sleep(max(0.0, (ack if ack is not None else now) - now))
            continue
        part, view = view[:room], view[room:]
        writer.write(part)
        window.sent(now, len(part))
        await writer.drain()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, spec: DelaySpec,
                not_before: float) -> None:
    """Forward one direction: each chunk ``spec.one_way`` after it arrived (not before ``not_before``), in
    order, while the next chunks are read."""
    loop = asyncio.get_running_loop()
    # (arrival, data); b"" is the end of the stream, None a broken connection.
    queue: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue()
    held = 0
    room = asyncio.Event()
    room.set()

    async def read() -> None:
        nonlocal held
        try:
            while True:
                data = await reader.read(CHUNK)
                queue.put_nowait((loop.time(), data))
                if not data:
                    return
                held += len(data)
                while held >= QUEUE_LIMIT:
                    room.clear()
                    await room.wait()
        except OSError:
            queue.put_nowait((loop.time(), None))

    window = CongestionWindow(spec) if spec.slow_start else None
    reading = asyncio.create_task(read())
    try:
        while True:
            arrived, data = await queue.get()
            wait = release_time(arrived, spec, not_before) - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if data is None:
                writer.transport.abort()
                return
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            await _send(writer, data, window)
            held -= len(data)
            if held < QUEUE_LIMIT:
                room.set()
    finally:
        reading.cancel()


async def _connection(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter, *,
                      target: tuple[str, int], spec: DelaySpec) -> None:
    accepted = asyncio.get_running_loop().time()
    try:
        server_reader, server_writer = await asyncio.open_connection(*target, limit=CHUNK)
    except OSError:
        client_writer.transport.abort()
        return
    tasks = [asyncio.create_task(_pump(client_reader, server_writer, spec, first_release(accepted, spec))),
             asyncio.create_task(_pump(server_reader, client_writer, spec, 0.0))]
    try:
        await asyncio.gather(*tasks)
    except OSError:
        pass  # a reset by either side ends the connection: the other side sees its end below
    finally:
        for task in tasks:
            task.cancel()
        for writer in (client_writer, server_writer):
            writer.close()


async def serve(listen: tuple[str, int], target: tuple[str, int], spec: DelaySpec) -> None:
    """Accept connections on ``listen`` and forward each to ``target`` with the delay of ``spec``; prints
    ``listening HOST:PORT`` on stdout once connections are accepted (PORT is the bound port for port 0)."""
    server = await asyncio.start_server(functools.partial(_connection, target=target, spec=spec), *listen,
                                        limit=CHUNK, backlog=1024)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"listening {host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.delayproxy``: run the proxy until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.delayproxy", description=__doc__.split("\n")[0])
    parser.add_argument("--listen", type=_address, required=True, metavar="HOST:PORT")
    parser.add_argument("--to", type=_address, required=True, metavar="HOST:PORT", dest="target")
    parser.add_argument("--one-way-ms", type=float, required=True, help="delay added in each direction")
    parser.add_argument("--no-connect-rtt", action="store_true", help="do not charge a new connection's handshake")
    parser.add_argument("--no-slow-start", action="store_true", help="no congestion window: full rate at once")
    args = parser.parse_args(argv)
    spec = DelaySpec(one_way=args.one_way_ms / 1000, connect_rtt=not args.no_connect_rtt,
                     slow_start=not args.no_slow_start)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.listen, args.target, spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
