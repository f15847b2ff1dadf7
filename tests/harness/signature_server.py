"""A registry front for the signature cases docker-registry cannot serve (tests/test_signature_caps.py).

``SignatureServer(upstream=HOST:PORT)`` forwards the pull API (GET and HEAD) to a plain-HTTP docker-registry, and:

* with ``extension=True`` announces the signature API extension (``X-Registry-Supports-Signatures: 1`` on the
  ``/v2/`` ping, OpenShift's; containers/image then reads ``/extensions/v2/<repo>/signatures/<digest>``
  instead of lookaside);
* answers every request whose path starts with a key of ``bodies`` with that :class:`Body` instead of
  forwarding it: a given number of bytes, with or without ``Content-Length``, or an endless stream (no length,
  never finished: it stops only when the client goes away, or at :data:`ENDLESS_LIMIT`, so that a client that
  reads everything shows up as bytes sent rather than as a hung test). Lookaside URLs are served that way too;
  other lookaside paths are 404 (the end of a signature list).

Every request is recorded with the bytes of body sent (:attr:`SignatureServer.requests`).
"""

from __future__ import annotations

import http.client
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from tests.harness.loopback_server import LoopbackServer

#: what an endless body sends at most (32 times the 4 MiB signature caps) before closing the connection
ENDLESS_LIMIT = 128 * 1024 * 1024
LOOKASIDE_PREFIX = "/lookaside/"
_CHUNK = b"s" * 65536


@dataclass(frozen=True)
class Body:
    """A response body: ``size`` bytes (``None``: endless), announced with ``Content-Length`` or not."""

    size: int | None
    content_length: bool = True
    content_type: str = "application/octet-stream"
    #: the exact bytes instead of ``size`` filler bytes (a real signature, for a control case)
    data: bytes | None = None


@dataclass
class Served:
    """One request and what was sent back."""

    method: str
    path: str
    status: int | None = None
    body_bytes: int = 0


@dataclass
class SignatureServer(LoopbackServer):
    """See the module docstring."""

    upstream: str
    extension: bool = False
    bodies: dict[str, Body] = field(default_factory=dict)
    requests: list[Served] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._port('signature server')}"

    @property
    def lookaside(self) -> str:
        """The base URL to give registries.d's ``lookaside``."""
        return f"http://{self.host}{LOOKASIDE_PREFIX.rstrip('/')}"

    def sent(self, path_contains: str) -> int:
        """Body bytes sent for requests whose path contains ``path_contains``."""
        with self._lock:
            return sum(r.body_bytes for r in self.requests if path_contains in r.path)

    def start(self) -> SignatureServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _handle(self) -> None:
                record = Served(self.command, self.path)
                with server._lock:
                    server.requests.append(record)
                body = next((b for prefix, b in server.bodies.items() if self.path.startswith(prefix)), None)
                if body is not None:
                    self._send_body(body, record)
                elif self.path.startswith(LOOKASIDE_PREFIX):
                    self._reply(404, b"", record)
                else:
                    self._forward(record)

            def _reply(self, status: int, data: bytes, record: Served, headers: dict[str, str] | None = None,
                       *, length: str | None = None) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", length if length is not None else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                record.status, record.body_bytes = status, len(data)

            def _send_body(self, body: Body, record: Served) -> None:
                record.status = 200
                self.send_response(200)
                self.send_header("Content-Type", body.content_type)
                if body.data is not None:
                    self.send_header("Content-Length", str(len(body.data)))
                elif body.content_length and body.size is not None:
                    self.send_header("Content-Length", str(body.size))
                else:  # delimited by the end of the connection (RFC 9112 6.3, item 8)
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                if self.command == "HEAD":
                    return
                if body.data is not None:
                    self.wfile.write(body.data)
                    record.body_bytes = len(body.data)
                    return
                left = body.size if body.size is not None else ENDLESS_LIMIT
                try:
                    while left > 0:
                        piece = _CHUNK[:left]
                        self.wfile.write(piece)
                        record.body_bytes += len(piece)
                        left -= len(piece)
                    self.wfile.flush()
                except OSError:  # the client stopped reading: what a capped reader does
                    self.close_connection = True

            def _forward(self, record: Served) -> None:
                headers: dict[str, str] = {}
                for key, value in self.headers.items():
                    if key.lower() not in ("connection", "keep-alive", "te", "transfer-encoding", "upgrade"):
                        headers[key] = f"{headers[key]}, {value}" if key in headers else value
                upstream = http.client.HTTPConnection(server.upstream, timeout=30)
                try:
                    upstream.request(self.command, self.path, headers=headers)
                    response = upstream.getresponse()
                    data = response.read()
                    extra = {k: v for k, v in response.getheaders()
                             if k.lower() not in ("content-length", "connection", "transfer-encoding", "keep-alive")}
                    if server.extension and self.path == "/v2/":
                        extra["X-Registry-Supports-Signatures"] = "1"
                    # a HEAD answer has no body but the length of the one a GET would have
                    length = response.getheader("Content-Length") if self.command == "HEAD" else None
                    self._reply(response.status, data, record, extra, length=length)
                finally:
                    upstream.close()

            do_GET = do_HEAD = _handle

        self._serve(Handler)
        return self
