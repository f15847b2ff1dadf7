"""The one boundary between httpx and the registry package.

Every request is sent, and every body read, through these functions: httpx exceptions become
:mod:`tether.registry.errors` exceptions here and nowhere else, error bodies are read with a cap, and the
``registry.http`` logger records each exchange at DEBUG with credentials redacted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
from collections.abc import AsyncGenerator, AsyncIterator

import httpcore
import httpx
import trio

from tether.registry.errors import (
    AuthenticationError,
    ConnectionFailedError,
    HTTPStatusError,
    RegistryError,
    TLSError,
    TransportError,
)

__all__ = [
    "MAX_ERROR_BODY",
    "aiter_raw",
    "display_url",
    "join",
    "log",
    "read_capped",
    "send",
    "status_error",
]

log = logging.getLogger("tether.registry.http")

#: Error bodies are read up to this many bytes (a hostile server cannot make us buffer more).
MAX_ERROR_BODY = 64 * 1024
_MAX_DETAIL = 300
#: How much of an unwanted HTTP/2 response body is read (and discarded) rather than cut (see _abandon).
MAX_H2_DISCARD = 16 * 1024 * 1024
#: Bytes asked of the socket per read of an HTTP/1.1 body (httpcore's default is 64 KiB).  A blob arriving
#: at hundreds of MB/s otherwise costs thousands of round trips a second through trio's socket layer, h11
#: and httpx on the one trio thread.  Measured on a 242 MB blob over loopback: 0.45 s of CPU with 64 KiB,
#: 0.29 s with 256 KiB, 0.21 s with 1 MiB; but 1 MiB buffers added ~10 MB to the peak RSS of a pull of five
#: images (four blobs at once).  (TLS gains less: a read still returns one record.)
BODY_READ_SIZE = 256 * 1024
httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = BODY_READ_SIZE
_ABANDON_STEPS = 1024
_SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})


def display_url(url: httpx.URL | str) -> str:
    """``host[:port]/path`` for messages: no scheme, no query (upload state, token parameters)."""
    u = httpx.URL(url) if isinstance(url, str) else url
    host = u.host if u.port is None else f"{u.host}:{u.port}"
    if ":" in u.host and not u.host.startswith("["):
        host = f"[{u.host}]" if u.port is None else f"[{u.host}]:{u.port}"
    return f"{host}{u.path}"


def join(base: httpx.URL, location: str) -> httpx.URL:
    """``location`` (a Location/Link target) resolved against ``base``; only http(s) URLs."""
    try:
        target = base.join(location)
    except (httpx.InvalidURL, ValueError):
        raise RegistryError(f"{display_url(base)}: invalid URL {location[:200]!r}") from None
    if target.scheme not in ("http", "https") or not target.host:
        raise RegistryError(f"{display_url(base)}: refusing to follow {target.scheme}: URL")
    return target


def _redacted(headers: httpx.Headers) -> str:
    return ", ".join(
        f"{k}: {'<redacted>' if k.lower() in _SECRET_HEADERS else v}" for k, v in headers.multi_items()
    )


def _describe_exception(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLError):
            return current
        current = current.__cause__ or current.__context__
    return None


def map_exception(method: str, url: httpx.URL, exc: httpx.HTTPError) -> RegistryError:
    """The :mod:`tether.registry.errors` exception for an httpx exception raised by ``method url``."""
    where = f"{method} {display_url(url)}"
    ssl_error = _ssl_cause(exc)
    if ssl_error is not None and isinstance(exc, httpx.ConnectError):
        if isinstance(ssl_error, ssl.SSLCertVerificationError):
            return TLSError(f"{where}: certificate verification failed: {ssl_error.verify_message}")
        reason = getattr(ssl_error, "reason", None) or ssl_error
        hint = ""
        if str(reason) in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST", "RECORD_LAYER_FAILURE"):
            # what Go reports as "server gave HTTP response to HTTPS client"
            hint = (" (the server seems to speak plain HTTP: mark the registry insecure in registries.conf "
                    "or use --tls-verify=false)")
        return TLSError(f"{where}: TLS handshake failed: {reason}{hint}")
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return ConnectionFailedError(f"{where}: cannot connect: {_describe_exception(exc)}")
    if isinstance(exc, httpx.TransportError):
        return TransportError(f"{where}: {_describe_exception(exc)}")
    return RegistryError(f"{where}: {_describe_exception(exc)}")


async def send(client: httpx.AsyncClient, request: httpx.Request) -> httpx.Response:
    """Send ``request`` and return the streaming response (headers read, body not yet)."""
    if log.isEnabledFor(logging.DEBUG):
        log.debug("> %s %s [%s]", request.method, request.url.copy_with(query=None), _redacted(request.headers))
    try:
        response = await client.send(request, stream=True)
    except httpx.HTTPError as exc:
        mapped = map_exception(request.method, request.url, exc)
        log.debug("! %s", mapped)
        raise mapped from None
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "< %s %s %s %s [%s]",
            request.method,
            request.url.copy_with(query=None),
            response.http_version,
            response.status_code,
            _redacted(response.headers),
        )
    return response


async def _abandon(response: httpx.Response, iterator: AsyncIterator[bytes]) -> None:
    """Close ``response`` whose body iterator was not exhausted, leaving no generator behind.

    httpx and httpcore nest async generators without ``aclosing()``: closing the outer one leaves the
    inner ones to the garbage collector (trio then warns). Driving the chain once more on the closed
    connection makes the innermost raise, which finishes every generator in it.
    """
    with trio.CancelScope(shield=True):
        if response.http_version == "HTTP/2":
            # httpcore's h2 does not credit the connection's flow-control window for data of a stream
            # closed early: enough of that stalls every other stream of the connection. Reading the
            # rest (up to a bound) returns the credit and ends the generators normally.
            discarded = 0
            with contextlib.suppress(Exception):
                async for chunk in iterator:
                    discarded += len(chunk)
                    if discarded > MAX_H2_DISCARD:
                        break
        await response.aclose()
        # Data already buffered may still come out after the close (a capped read stops mid-body): drive the
        # chain until the innermost generator raises, bounded, so that none is left to the collector.
        with contextlib.suppress(Exception):
            for _ in range(_ABANDON_STEPS):
                await iterator.__anext__()
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()


async def aiter_raw(response: httpx.Response) -> AsyncGenerator[bytes, None]:
    """The raw (not content-decoded) body chunks, with transport errors mapped.

    Closing this generator early closes the response.
    """
    request = response.request
    if response.is_stream_consumed:  # an in-memory response (httpx.MockTransport): already read
        if response.content:
            yield response.content
        return
    iterator = response.aiter_raw()
    finished = False
    try:
        while True:
            try:
                chunk = await iterator.__anext__()
            except StopAsyncIteration:
                finished = True
                return
            except httpx.HTTPError as exc:
                finished = True  # the exception ended every generator of the chain
                raise map_exception(request.method, request.url, exc) from None
            yield chunk
    finally:
        if not finished:
            await _abandon(response, iterator)


async def read_capped(response: httpx.Response, limit: int, *, what: str) -> tuple[bytes, bool]:
    """Read the (content-decoded) body up to ``limit`` bytes: ``(body, truncated)``; closes the response."""
    request = response.request
    parts: list[bytes] = []
    total = 0
    iterator = response.aiter_bytes()
    try:
        while True:
            try:
                chunk = await iterator.__anext__()
            except StopAsyncIteration:
                return b"".join(parts), False
            except httpx.HTTPError as exc:
                raise map_exception(request.method, request.url, exc) from None
            if total + len(chunk) > limit:
                parts.append(chunk[: limit - total])
                await _abandon(response, iterator)
                return b"".join(parts), True
            parts.append(chunk)
            total += len(chunk)
    finally:
        await response.aclose()


async def discard(response: httpx.Response) -> None:
    """Read (up to :data:`MAX_ERROR_BODY`) and close a response whose body is not wanted, so that an
    HTTP/2 connection's flow-control window gets its credit back and HTTP/1.1 connections are reused."""
    with contextlib.suppress(RegistryError):
        await read_capped(response, MAX_ERROR_BODY, what="body")
    await response.aclose()


def _error_code_and_detail(body: bytes) -> tuple[str | None, str | None]:
    # distribution spec "Error Codes": {"errors": [{"code": ..., "message": ..., "detail": ...}]}
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        text = body.decode("utf-8", "replace").strip()
        return None, (text[:_MAX_DETAIL] or None) if text and not text.startswith("<") else None
    if isinstance(obj, dict):
        errors = obj.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            code = errors[0].get("code")
            message = errors[0].get("message")
            return (
                code if isinstance(code, str) else None,
                message[:_MAX_DETAIL] if isinstance(message, str) and message else None,
            )
        # token servers: {"details": "..."} / {"error": "...", "error_description": "..."}
        for key in ("error_description", "details", "error", "message"):
            value = obj.get(key)
            if isinstance(value, str) and value:
                return None, value[:_MAX_DETAIL]
    return None, None


async def status_error(
    response: httpx.Response, *, what: str | None = None, cls: type[HTTPStatusError] = HTTPStatusError
) -> HTTPStatusError:
    """An error for an unexpected status: ``GET host/v2/app/manifests/1.0: 404 MANIFEST_UNKNOWN``.

    Reads (at most :data:`MAX_ERROR_BODY` of) the body and closes the response. ``what`` prefixes
    the message (``requesting a token for ...``).
    """
    request = response.request
    body = b""
    if request.method != "HEAD":
        try:
            body, _ = await read_capped(response, MAX_ERROR_BODY, what="error body")
        except RegistryError:
            body = b""
    else:
        await response.aclose()
    code, detail = _error_code_and_detail(body)
    message = f"{request.method} {display_url(request.url)}: {response.status_code} {code or response.reason_phrase}"
    if detail and detail.lower().replace(" ", "_") != (code or "").lower():
        message += f" ({detail})"
    if what:
        message = f"{what}: {message}"
    return cls(message, status=response.status_code, code=code)


async def authentication_error(response: httpx.Response, *, hint: str) -> AuthenticationError:
    """An :class:`AuthenticationError` for a 401/403 that re-authentication did not cure."""
    error = await status_error(response)
    return AuthenticationError(f"{error} ({hint})" if hint else str(error))
