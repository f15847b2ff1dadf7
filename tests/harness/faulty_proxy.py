"""A loopback reverse proxy in front of a registry that misbehaves on demand.

Point a client (or a registries.conf location/mirror) at ``proxy.host`` instead of the registry's;
requests are forwarded unchanged (the ``Host`` header too, so upload ``Location`` URLs come back
through the proxy) until a queued :class:`Fault` matches:

* ``cut``: forward the response but close the connection after ``after`` body bytes;
* ``status``: answer ``status`` (e.g. 500, 429 with ``retry_after``) without asking the registry;
* ``ignore_range``: drop the ``Range`` header, so the registry answers 200 with the whole blob;
* ``corrupt``: flip the body byte at offset ``after``;
* ``stall``: send ``after`` body bytes, then keep the connection open without sending more for
  ``stall_seconds`` (a read timeout for the client);
* ``trickle``: send ``after`` body bytes at full speed, then one byte every ``stall_seconds`` (a transfer that
  never trips a read timeout: the low-speed limit's case);
* ``redirect``: answer ``status`` (a 3xx) with ``Location: location`` (``{path}`` replaced by the request's
  path and query) without asking the registry.

Each fault applies ``times`` times to requests whose method is ``method`` and whose path contains
``path_contains``. Every request is recorded in :attr:`FaultyProxy.requests`, with the body bytes sent back
(:meth:`FaultyProxy.body_bytes`). When the registry cannot be reached (stopped), the client's connection is
reset, as a registry that died mid-restart would.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Literal

from tests.harness.loopback_server import LoopbackServer

_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
     "transfer-encoding", "upgrade"}
)


@dataclass
class Fault:
    """One misbehaviour; see the module docstring."""

    kind: Literal["cut", "status", "ignore_range", "corrupt", "stall", "trickle", "redirect"]
    path_contains: str = "/blobs/"
    method: str = "GET"
    times: int = 1
    after: int = 0
    status: int = 500
    retry_after: str | None = None
    stall_seconds: float = 5.0
    location: str = "{path}"
    applied: int = 0


@dataclass
class ProxiedRequest:
    """One request as the proxy saw it, and what it did with it."""

    method: str
    path: str
    range: str | None
    fault: str | None
    status: int | None = None
    authorization: str | None = None    # the scheme of the Authorization header sent, if any
    body_bytes: int = 0                 # response body bytes sent to the client


@dataclass
class FaultyProxy(LoopbackServer):
    """Forward 127.0.0.1:PORT to ``upstream`` (``host:port`` of a plain-HTTP registry)."""

    upstream: str
    faults: list[Fault] = field(default_factory=list)
    requests: list[ProxiedRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._port('proxy')}"

    def add(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def count(self, method: str = "GET", path_contains: str = "") -> int:
        """How many requests with ``method`` whose path contains ``path_contains`` were received."""
        return sum(1 for r in self.requests if r.method == method and path_contains in r.path)

    def body_bytes(self, method: str = "GET", path_contains: str = "") -> int:
        """Response body bytes sent for requests with ``method`` whose path contains ``path_contains``."""
        return sum(r.body_bytes for r in self.requests if r.method == method and path_contains in r.path)

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.applied < fault.times and fault.method == method and fault.path_contains in path:
                    fault.applied += 1
                    return fault
        return None

    def start(self) -> FaultyProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _handle(self) -> None:
                fault = proxy._take_fault(self.command, self.path)
                auth = self.headers.get("Authorization")
                record = ProxiedRequest(self.command, self.path, self.headers.get("Range"),
                                        fault.kind if fault else None,
                                        authorization=auth.split(" ", 1)[0] if auth else None)
                proxy.requests.append(record)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if fault is not None and fault.kind == "status":
                    data = json.dumps(
                        {"errors": [{"code": "UNAVAILABLE", "message": "injected fault", "detail": None}]}
                    ).encode()
                    self.send_response(fault.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    if fault.retry_after is not None:
                        self.send_header("Retry-After", fault.retry_after)
                    self.end_headers()
                    self.wfile.write(data)
                    record.status = fault.status
                    return
                if fault is not None and fault.kind == "redirect":
                    self.send_response(fault.status)
                    self.send_header("Location", fault.location.replace("{path}", self.path))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    record.status = fault.status
                    return
                headers: dict[str, str] = {}
                for key, value in self.headers.items():
                    if key.lower() not in _HOP_BY_HOP:
                        # c/image sends one Accept header per media type: a list-valued header may be joined
                        # (RFC 9110 5.3), and keeping only the last would refuse OCI manifests to podman
                        headers[key] = f"{headers[key]}, {value}" if key in headers else value
                if fault is not None and fault.kind == "ignore_range":
                    headers = {k: v for k, v in headers.items() if k.lower() != "range"}
                upstream = http.client.HTTPConnection(proxy.upstream, timeout=30)
                try:
                    try:
                        upstream.request(self.command, self.path, body=body or None, headers=headers)
                        response = upstream.getresponse()
                    except OSError:  # the registry is down: reset the client's connection
                        self.close_connection = True
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        return
                    record.status = response.status
                    self.send_response_only(response.status, response.reason)
                    declared = response.getheader("Content-Length")
                    payload: bytes | None = None
                    if declared is None and self.command != "HEAD":
                        payload = response.read()
                    for key, value in response.getheaders():
                        if key.lower() in _HOP_BY_HOP or key.lower() == "content-length":
                            continue
                        self.send_header(key, value)
                    if declared is not None:
                        self.send_header("Content-Length", declared)
                    elif payload is not None:
                        self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command == "HEAD":
                        return
                    self._forward_body(response, payload, fault, record)
                finally:
                    upstream.close()

            def _forward_body(self, response: http.client.HTTPResponse, payload: bytes | None,
                              fault: Fault | None, record: ProxiedRequest) -> None:
                sent = 0
                while True:
                    if payload is not None:
                        chunk, payload = payload, b""
                    else:
                        try:
                            chunk = response.read1(65536)
                        except (OSError, http.client.HTTPException):  # the registry died mid-body, and so does this
                            self.close_connection = True
                            with contextlib.suppress(OSError):
                                self.connection.shutdown(socket.SHUT_RDWR)
                            return
                    record.body_bytes = sent
                    if not chunk:
                        return
                    if fault is not None and fault.kind == "corrupt" and sent <= fault.after < sent + len(chunk):
                        i = fault.after - sent
                        chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
                    if fault is not None and fault.kind == "trickle" and sent + len(chunk) > fault.after:
                        record.body_bytes += self._trickle(chunk, sent, fault)
                        return
                    if fault is not None and fault.kind in ("cut", "stall") and sent + len(chunk) >= fault.after:
                        self.wfile.write(chunk[: fault.after - sent])
                        self.wfile.flush()
                        record.body_bytes = fault.after
                        if fault.kind == "stall":
                            time.sleep(fault.stall_seconds)
                        self.close_connection = True
                        with contextlib.suppress(OSError):
                            self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    self.wfile.write(chunk)
                    sent += len(chunk)

            def _trickle(self, chunk: bytes, sent: int, fault: Fault) -> int:
                head = max(0, fault.after - sent)
                self.wfile.write(chunk[:head])
                self.wfile.flush()
                for i in range(head, len(chunk)):
                    time.sleep(fault.stall_seconds)
                    try:
                        self.wfile.write(chunk[i : i + 1])
                        self.wfile.flush()
                    except OSError:  # the client gave up on this transfer
                        self.close_connection = True
                        return i
                self.close_connection = True
                return len(chunk)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self._serve(Handler)
        return self
