"""The serving half the harness's in-process HTTP servers share (the faulty proxy, the token server)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self


class LoopbackServer:
    """A ``ThreadingHTTPServer`` on a free 127.0.0.1 port, served from a daemon thread.

    Subclasses build their request handler in ``start()`` and hand it to :meth:`_serve`; ``stop()`` and the
    context manager (which starts the server unless it runs already) come from here.
    """

    _server: ThreadingHTTPServer | None = None

    def start(self) -> Self:
        raise NotImplementedError

    def _serve(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def _port(self, what: str) -> int:
        assert self._server is not None, f"start() the {what} first"
        return int(self._server.server_address[1])

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
