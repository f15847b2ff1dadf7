"""Blobs, streamed and verified: ``Range`` resume, retries, fallback to the next endpoint, foreign ``urls``.

What it does beyond containers/image (``docker/docker_image_src.go`` ``GetBlob``, ``docker/body_reader.go``), and
why:

* a blob is resumed with ``Range`` after a drop, reset or read timeout, and a ``200`` answer to a range request
  is handled by skipping what was already read (c/image fails: podman#24715);
* failures are counted *without progress* (:class:`~tether.registry.client._retry.RetryPolicy`), so a stream
  cut every few MB still completes;
* when an endpoint keeps failing mid-blob, the next source (mirror or primary) serves the rest of that blob
  (c/image takes every blob of an image from the endpoint that served the manifest);
* a descriptor's ``urls`` (image-spec descriptor.md, "foreign" layers) are tried first, anonymously, as c/image
  ``getExternalBlob`` does; unlike c/image the registry endpoints follow;
* a caller that kept the first bytes of a blob from an earlier run (c/image keeps nothing across runs, podman#14616)
  passes them in as ``offset`` and the hash of those bytes: the stream continues with ``Range`` and verifies the
  digest over the whole blob;
* a :class:`~tether.registry.client._ratelimit.RateLimit` caps the bytes per second of every stream of a run
  together (``--limit-rate``); time spent waiting on it is not held against the registry by the low-speed limit.

Never more than ``descriptor.size`` bytes are accepted and the digest is checked when the last byte arrived.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import httpx
import trio

import tether.registry.client._http as _http
from tether.registry.client._ratelimit import RateLimit
from tether.registry.client._retry import RETRYABLE_STATUSES, parse_retry_after
from tether.registry.client.auth import MAX_REDIRECTS, REDIRECT_STATUSES, Authenticator
from tether.registry.client.core import Connections, gave_up, repository_scope, with_message
from tether.registry.errors import (
    ConnectionFailedError,
    DigestMismatchError,
    RegistryError,
    TLSError,
    TransportError,
)
from tether.registry.manifest import Descriptor
from tether.registry.registries_conf import PullSource

__all__ = ["Blobs", "Hasher"]

logger = logging.getLogger("tether.registry.client")

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class Hasher(Protocol):
    """A running digest (``hashlib.new(...)``): what a caller resuming a blob hands over with its offset."""

    @property
    def name(self) -> str: ...

    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


@dataclass(frozen=True)
class _URLSource:
    """A descriptor ``urls`` entry (image-spec descriptor.md; "foreign" layers): fetched anonymously."""

    url: httpx.URL

    @property
    def label(self) -> str:
        return _http.display_url(self.url)


_BlobSource = PullSource | _URLSource


def _label(source: _BlobSource) -> str:
    return source.label if isinstance(source, _URLSource) else source.reference.domain


class _RetryableStatus(TransportError):
    """A 408/429/5xx answer to a blob GET (retried like a dropped connection)."""

    def __init__(self, message: str, *, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _TooSlow(TransportError):
    """The transfer fell under the low-speed limit (:class:`~tether.registry.client._retry.SpeedFloor`)."""


def _is_outage(exc: TransportError) -> bool:
    """A refused or reset connection, a body cut short: what a registry being restarted looks like."""
    return not isinstance(exc, TLSError | _RetryableStatus | _TooSlow)


class _SourceFailed(Exception):
    """This endpoint cannot serve (the rest of) the blob; try the next source."""

    def __init__(self, error: RegistryError) -> None:
        super().__init__(str(error))
        self.error = error


class Blobs:
    """Blob GETs of one client: the verified stream and the whole-blob convenience."""

    def __init__(self, connections: Connections, auth: Authenticator, *, rate_limit: RateLimit | None = None) -> None:
        self._connections = connections
        self._auth = auth
        self.rate_limit = rate_limit

    def open(
        self,
        sources: Sequence[PullSource],
        descriptor: Descriptor,
        *,
        chunk_size: int = 0,
        offset: int = 0,
        hasher: Hasher | None = None,
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """See :meth:`tether.registry.client.RegistryClient.open_blob`."""
        if not 0 <= offset <= descriptor.size:
            raise ValueError(f"blob {descriptor.digest}: offset {offset} outside its {descriptor.size} bytes")
        if offset and hasher is None:
            raise ValueError(f"blob {descriptor.digest}: resuming at {offset} needs the hash of the bytes before it")
        return self._open(tuple(sources), descriptor, chunk_size, offset, hasher)

    @asynccontextmanager
    async def _open(
        self,
        sources: tuple[PullSource, ...],
        descriptor: Descriptor,
        chunk_size: int,
        offset: int,
        hasher: Hasher | None,
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        if not sources:
            raise RegistryError(f"no endpoint to fetch blob {descriptor.digest} from")
        reader = _BlobReader(self, self._connections, sources, descriptor, chunk_size, offset=offset, hasher=hasher)
        chunks = reader.chunks()
        try:
            yield chunks
        finally:
            await chunks.aclose()
            await reader.close_response()

    async def fetch(self, sources: Sequence[PullSource], descriptor: Descriptor, *, max_size: int) -> bytes:
        """A whole (small) blob, verified; :class:`RegistryError` if it is declared larger than ``max_size``."""
        if descriptor.size > max_size:
            raise RegistryError(
                f"blob {descriptor.digest} is {descriptor.size} bytes, more than the {max_size} byte limit"
            )
        parts: list[bytes] = []
        async with self.open(sources, descriptor) as chunks:
            async for chunk in chunks:
                parts.append(chunk)
        return b"".join(parts)

    async def response(self, source: PullSource, descriptor: Descriptor, offset: int) -> httpx.Response:
        """GET the blob from ``source`` from ``offset`` on, redirects followed
        (:meth:`~tether.registry.client.auth.Authenticator.follow_redirects`: no credentials to another host)."""
        ref = source.reference
        endpoint = self._connections.source_endpoint(source)
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        scopes = (repository_scope(ref.path, "pull"),)
        # retry=False: the blob reader counts failures itself (and resumes where it stopped)
        response = await self._auth.request(
            endpoint,
            "GET",
            f"/v2/{ref.path}/blobs/{descriptor.digest}",
            repository=ref.name,
            scopes=scopes,
            headers=headers,
            retry=False,
            bulk=True,
        )
        return await self._auth.follow_redirects(
            endpoint, response, repository=ref.name, scopes=scopes, headers=headers, retry=False, bulk=True
        )

    async def external_response(self, url: httpx.URL, offset: int) -> httpx.Response:
        """GET a descriptor ``urls`` entry: anonymous, TLS verified, redirects followed by hand."""
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        target = url
        for _ in range(MAX_REDIRECTS):
            client = self._connections.http_client(target.netloc.decode("ascii"), False, bulk=True)
            response = await _http.send(client, client.build_request("GET", target, headers=headers))
            if response.status_code not in REDIRECT_STATUSES:
                return response
            location = response.headers.get("location")
            await _http.discard(response)
            if not location:
                raise RegistryError(f"GET {_http.display_url(target)}: redirect without Location")
            target = _http.join(target, location)
        raise RegistryError(f"GET {_http.display_url(url)}: more than {MAX_REDIRECTS} redirects (a redirect loop?)")


class _BlobReader:
    """One blob's stream: its sources in order, the offset reached, the running hash."""

    def __init__(
        self,
        blobs: Blobs,
        connections: Connections,
        sources: tuple[PullSource, ...],
        descriptor: Descriptor,
        chunk_size: int,
        *,
        offset: int = 0,
        hasher: Hasher | None = None,
    ) -> None:
        self.blobs = blobs
        self.connections = connections
        self.sources = sources
        self.descriptor = descriptor
        self.chunk_size = chunk_size
        self.algorithm = descriptor.digest.split(":", 1)[0]
        if hasher is not None and hasher.name != self.algorithm:
            raise ValueError(f"blob {descriptor.digest}: a {hasher.name} hash cannot check a {self.algorithm} digest")
        self.hasher: Hasher = hasher if hasher is not None else hashlib.new(self.algorithm)
        #: bytes the caller had before this stream (kept from an earlier run): hashed, never fetched
        self.kept = offset
        self.offset = offset
        self.response: httpx.Response | None = None
        #: (source domain, bytes it served) in order, for messages and tests
        self.served: list[tuple[str, int]] = []

    async def close_response(self) -> None:
        if self.response is not None:
            response, self.response = self.response, None
            with trio.CancelScope(shield=True):  # also when the pull is being cancelled
                await response.aclose()

    def _what(self, source: _BlobSource) -> str:
        where = source.label if isinstance(source, _URLSource) else source.reference.name
        return f"blob {self.descriptor.digest} of {where}"

    def _ordered_sources(self) -> tuple[_BlobSource, ...]:
        """The descriptor's ``urls`` first (c/image ``getExternalBlob``; c/image then stops, tether falls
        back to the registry endpoints), then the endpoints, recently unreachable ones last."""
        urls: list[_BlobSource] = []
        for text in self.descriptor.urls:
            try:
                url = httpx.URL(text)
            except (httpx.InvalidURL, ValueError):
                continue
            if url.scheme in ("http", "https") and url.host:
                urls.append(_URLSource(url))
        return (*urls, *self.connections.by_reachability(self.sources))

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        size = self.descriptor.size
        policy = self.connections.retry_policy
        errors: list[tuple[str, RegistryError]] = []
        ordered = self._ordered_sources()
        for index, source in enumerate(ordered):
            failures = 0
            outage_since: float | None = None   # when this endpoint's current streak of failures began
            while self.offset < size:
                before = self.offset
                try:
                    async with aclosing(self._stream_from(source)) as pieces:
                        async for piece in pieces:
                            yield piece
                    if self.offset < size:
                        raise TransportError(
                            f"{self._what(source)}: the connection ended at byte {self.offset} of {size}"
                        )
                except _SourceFailed as exc:
                    errors.append((_label(source), exc.error))
                    logger.info("%s; trying the next endpoint", exc.error)
                    break
                except TLSError as exc:
                    errors.append((_label(source), exc))
                    break
                except TransportError as exc:
                    await self.close_response()
                    # a stall counts even if it moved a few bytes: a trickle must not retry forever
                    progressed = self.offset > before and not isinstance(exc, _TooSlow)
                    failures = 0 if progressed else failures + 1
                    now = trio.current_time()
                    if progressed or outage_since is None:
                        outage_since = now
                    limit = policy.connect_attempts if isinstance(exc, ConnectionFailedError) else policy.attempts
                    if (
                        isinstance(exc, ConnectionFailedError)
                        and isinstance(source, PullSource)
                        and not self.connections.pinged(source)
                    ):
                        limit = 1  # the ping has already spent its connection attempts
                    outage = (
                        failures >= limit
                        and index == len(ordered) - 1
                        and _is_outage(exc)
                        and now - outage_since < policy.outage_timeout
                    )
                    if failures >= limit and not outage:
                        given_up: RegistryError = exc
                        if _is_outage(exc) and index == len(ordered) - 1 and policy.outage_timeout > 0:
                            given_up = gave_up(exc, now - outage_since)
                        errors.append((_label(source), given_up))
                        logger.info("%s; giving up on this endpoint", exc)
                        if isinstance(exc, ConnectionFailedError) and isinstance(source, PullSource):
                            self.connections.mark_unreachable(source)
                        break
                    retry_after = exc.retry_after if isinstance(exc, _RetryableStatus) else None
                    if outage:
                        wait = policy.outage_delay(failures)
                        logger.info("%s; the registry seems down, retrying for up to %.0f s more (resuming at byte %d)",
                                    exc, policy.outage_timeout - (now - outage_since), self.offset)
                    else:
                        wait = policy.delay(max(1, failures), retry_after=retry_after)
                        logger.info("%s; resuming at byte %d", exc, self.offset)
                    await trio.sleep(wait)
                finally:
                    await self.close_response()
            if self.offset >= size:
                break
        if self.offset < size:
            if not errors:  # pragma: no cover - every way out of the loop above records an error
                raise TransportError(f"fetching blob {self.descriptor.digest}: no endpoint served it")
            last = errors[-1][1]
            if len(errors) == 1:
                raise last
            detail = "; ".join(f"{domain}: {exc}" for domain, exc in errors)
            raise with_message(last, f"fetching blob {self.descriptor.digest} failed at every endpoint: {detail}")
        digest = f"{self.algorithm}:{self.hasher.hexdigest()}"
        if digest != self.descriptor.digest:
            served = [f"{d} ({n} bytes)" for d, n in self.served]
            if self.kept:
                served.insert(0, f"an earlier transfer ({self.kept} bytes kept)")
            raise DigestMismatchError(
                f"blob {self.descriptor.digest} ({size} bytes): the bytes received have digest {digest} "
                f"(served by {', '.join(served)})"
            )

    async def _stream_from(self, source: _BlobSource) -> AsyncGenerator[bytes, None]:
        """The rest of the blob from ``source``, hashing as it goes; raises _SourceFailed or TransportError."""
        size = self.descriptor.size
        what = self._what(source)
        try:
            if isinstance(source, _URLSource):
                response = await self.blobs.external_response(source.url, self.offset)
            else:
                response = await self.blobs.response(source, self.descriptor, self.offset)
        except TransportError:
            raise
        except RegistryError as exc:
            raise _SourceFailed(exc) from None
        self.response = response
        status = response.status_code
        skip = 0
        if status == 206 and self.offset:
            match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
            if match is None or int(match.group(1)) != self.offset:
                raise _SourceFailed(
                    RegistryError(
                        f"{what}: asked for bytes {self.offset}-, got Content-Range "
                        f"{response.headers.get('content-range')!r}"
                    )
                )
            if match.group(3) != "*" and int(match.group(3)) != size:
                raise _SourceFailed(
                    DigestMismatchError(f"{what}: the registry says it is {match.group(3)} bytes, not {size}")
                )
        elif status == 200 or (status == 206 and not self.offset):
            # a 200 to a range request: the whole blob again; skip what we already have
            skip = self.offset
            if self.offset:
                logger.info("%s: the server ignored Range; skipping %d bytes already read", what, self.offset)
        elif status in RETRYABLE_STATUSES:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            raise _RetryableStatus(str(await _http.status_error(response)), retry_after=retry_after)
        else:
            raise _SourceFailed(await _http.status_error(response))
        remaining = size - self.offset + skip
        length = response.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) != remaining:
            raise _SourceFailed(
                DigestMismatchError(
                    f"{what}: the registry sends {length} bytes, the descriptor says {remaining} (of {size})"
                )
            )
        served_here = 0
        pending: list[bytes] = []
        pending_size = 0
        policy = self.connections.retry_policy
        limit = self.blobs.rate_limit
        # The low-speed limit judges the registry, not our own rate limit: it runs on a clock that stops
        # while this stream waits on the limit (curl, by contrast, lets --speed-limit override --limit-rate).
        paused = 0.0
        floor = policy.speed_floor(trio.current_time())
        try:
            async with aclosing(_http.aiter_raw(response)) as raw_chunks:
                while True:
                    if floor is None:
                        chunk = await anext(raw_chunks, None)
                    else:
                        with trio.move_on_at(floor.deadline() + paused) as waited:
                            chunk = await anext(raw_chunks, None)
                        if waited.cancelled_caught:
                            raise _TooSlow(
                                f"{what}: slower than {policy.low_speed_limit} bytes/s for "
                                f"{policy.low_speed_time:g} s ({floor.received()} bytes in that time, "
                                f"at byte {self.offset} of {size})"
                            )
                        if chunk is not None:
                            floor.add(trio.current_time() - paused, len(chunk))
                    if chunk is None:
                        break
                    if limit is not None:
                        paused += await limit.take(len(chunk))
                    if skip:
                        if len(chunk) <= skip:
                            skip -= len(chunk)
                            continue
                        chunk = chunk[skip:]
                        skip = 0
                    if self.offset + len(chunk) > size:
                        # never accept more than declared (the digest cannot match then anyway)
                        raise DigestMismatchError(f"{what}: the registry sends more than the declared {size} bytes")
                    self.hasher.update(chunk)
                    self.offset += len(chunk)
                    served_here += len(chunk)
                    pending.append(chunk)
                    pending_size += len(chunk)
                    if pending_size >= self.chunk_size:
                        out = pending[0] if len(pending) == 1 else b"".join(pending)
                        pending, pending_size = [], 0
                        yield out
        except TransportError:
            # what was verified so far is kept: hand it out before the caller resumes
            if pending:
                yield pending[0] if len(pending) == 1 else b"".join(pending)
                pending = []
            raise
        finally:
            if served_here:
                self.served.append((_label(source), served_here))
        if pending:
            yield pending[0] if len(pending) == 1 else b"".join(pending)
