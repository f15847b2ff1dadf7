"""The core every registry request goes through: httpx clients per host, endpoints and their ping, retries.

One :class:`Connections` per :class:`~tether.registry.client.RegistryClient` holds, per registry host, an
``httpx.AsyncClient`` for API requests (its own TLS context from certs.d, HTTP/2 when the server offers it over
TLS) and one for blob bodies (HTTP/1.1), at most ``max_connections_per_host`` connections each; the
:class:`Endpoint` of each host and trust setting with what its ``/v2/`` ping found (c/image
``docker_client.go`` ``detectProperties``); which endpoints were recently unreachable; and the retry loop
(:data:`~tether.registry.client._retry.RETRYABLE_STATUSES`, ``Retry-After``). Authentication is
:mod:`tether.registry.client.auth`; this module never sends credentials.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

import tether.registry.client._http as _http
from tether.registry.certs import ssl_context_for
from tether.registry.challenge import Challenge, parse_www_authenticate
from tether.registry.client._retry import RETRYABLE_STATUSES, RetryPolicy, parse_retry_after
from tether.registry.errors import ConnectionFailedError, HTTPStatusError, RegistryError, TLSError, TransportError
from tether.registry.reference import DEFAULT_DOMAIN, DOCKER_REGISTRY_HOST, Reference
from tether.registry.registries_conf import PullSource, RegistriesConf

__all__ = [
    "UNREACHABLE_PENALTY",
    "USER_AGENT",
    "Connections",
    "Endpoint",
    "gave_up",
    "is_loopback",
    "outage_waited",
    "registry_endpoint",
    "repository_scope",
    "with_message",
]

logger = logging.getLogger("tether.registry.client")

USER_AGENT = "tether/0.1 (containers/image compatible)"
#: Seconds an endpoint that refused connections is tried last.
UNREACHABLE_PENALTY = 30.0


class Endpoint:
    """One registry host as one trust setting sees it: scheme and challenges found by the ping."""

    def __init__(self, host: str, insecure: bool) -> None:
        self.host = host
        self.insecure = insecure
        self.base: str | None = None
        self.challenges: tuple[Challenge, ...] = ()
        self.supports_signatures = False
        self.lock = trio.Lock()


def repository_scope(path: str, actions: str) -> str:
    """A token scope (distribution docs/spec/auth/scope.md): ``repository:<path>:<actions>``."""
    return f"repository:{path}:{actions}"


def with_message(error: RegistryError, message: str) -> RegistryError:
    """A copy of ``error`` (same class, status and code) with another message."""
    if isinstance(error, HTTPStatusError):
        return type(error)(message, status=error.status, code=error.code)
    try:
        return type(error)(message)
    except TypeError:  # pragma: no cover - every class of the hierarchy takes a message
        return RegistryError(message)


def gave_up(error: RegistryError, seconds: float) -> RegistryError:
    """``error`` saying its endpoint kept failing for ``seconds`` (an outage waited out in vain); marked so that
    an outer retry loop does not wait once more (:func:`outage_waited`)."""
    out = with_message(error, f"{error} (given up after {seconds:.0f} s of failures)")
    setattr(out, "_tether_outage_waited", True)  # noqa: B010 - an attribute the hierarchy does not declare
    return out


def outage_waited(error: BaseException) -> bool:
    """Whether ``error`` comes from :func:`gave_up`."""
    return bool(getattr(error, "_tether_outage_waited", False))


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address, with or without a port (Go httpproxy ``useProxy``)."""
    name = host
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Connections:
    """The httpx clients, endpoints and retry loop of one client configuration; safe for concurrent tasks."""

    def __init__(
        self,
        *,
        cert_dir: Path | None,
        cert_search_dirs: Sequence[Path] | None,
        tls_verify: bool | None,
        max_connections_per_host: int,
        retry_policy: RetryPolicy,
        exit_stack: AsyncExitStack,
        transport: httpx.AsyncBaseTransport | None,
        receive_buffer: int | None = None,
    ) -> None:
        self.retry_policy = retry_policy
        #: SO_RCVBUF of blob connections (set under a rate limit, see :func:`receive_buffer_for`)
        self.receive_buffer = receive_buffer
        self._cert_dir = cert_dir
        self._cert_search_dirs = tuple(cert_search_dirs) if cert_search_dirs is not None else None
        self._tls_verify = tls_verify
        self._max_connections = max_connections_per_host
        self._exit_stack = exit_stack
        self._transport = transport
        self._clients: dict[tuple[str, bool, bool], httpx.AsyncClient] = {}
        self._endpoints: dict[tuple[str, bool], Endpoint] = {}
        self._down_until: dict[tuple[str, bool], float] = {}

    def insecure(self, insecure: bool) -> bool:
        """Whether an endpoint registries.conf marks ``insecure`` is treated as insecure."""
        # --tls-verify overrides registries.conf's `insecure` either way (c/image
        # DockerInsecureSkipTLSVerify); unset, the registries.conf value applies.
        if self._tls_verify is None:
            return insecure
        return not self._tls_verify

    def http_client(self, host: str, insecure: bool, *, bulk: bool = False) -> httpx.AsyncClient:
        """The httpx client for ``host``: HTTP/2 where the server offers it over TLS, except for
        ``bulk`` transfers (blob bodies), which use HTTP/1.1 connections.

        Measured on loopback TLS (2 cores): a blob GET over h2 (pure-Python framing, 16 KiB DATA
        frames, per-stream window updates) ran at 44 MB/s where HTTP/1.1 ran at 120-200 MB/s; API
        requests (ping, tokens, manifests, HEADs) keep h2's single multiplexed connection.

        An endpoint the ping found on plain HTTP speaks HTTP/1.1 either way: there both kinds share one
        pool (twice the connections), so a config or layer GET reuses the connection a manifest GET left
        open instead of paying a new connection's round trip.
        """
        endpoint = self._endpoints.get((host, insecure))
        if bulk and endpoint is not None and endpoint.base is not None and endpoint.base.startswith("http://"):
            bulk = False
        key = (host, insecure, bulk)
        client = self._clients.get(key)
        if client is None:
            # certs.d is keyed by the reference's domain as written: docker.io, not registry-1.docker.io
            cert_host = DEFAULT_DOMAIN if host == DOCKER_REGISTRY_HOST else host
            context = ssl_context_for(
                cert_host, cert_dir=self._cert_dir, verify=not insecure, search_dirs=self._cert_search_dirs
            )
            policy = self.retry_policy
            connections = self._max_connections * (1 if bulk else 2)
            limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
            transport = self._transport
            if transport is None and self.receive_buffer is not None:
                # A rate-limited reader leaves bytes in the kernel: a small receive buffer keeps the link from
                # bursting ahead of the limit (Linux's autotuning would let each connection queue megabytes).
                # Every pool, not only the bulk one: on plain HTTP the blobs share the API requests' pool, which
                # may be made (by the ping) before the scheme is known; API answers are small either way.
                transport = httpx.AsyncHTTPTransport(
                    verify=context, http2=not bulk, limits=limits, trust_env=not is_loopback(host),
                    socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)])
            client = httpx.AsyncClient(
                http2=not bulk,
                verify=context,
                limits=limits,
                # pool=None: tasks beyond the connection limit wait for a connection, they do not fail.
                timeout=httpx.Timeout(
                    connect=policy.connect_timeout, read=policy.read_timeout, write=policy.read_timeout, pool=None
                ),
                headers={"User-Agent": USER_AGENT, "Docker-Distribution-API-Version": "registry/2.0"},
                follow_redirects=False,
                # HTTP(S)_PROXY/NO_PROXY as Go's ProxyFromEnvironment (c/image): never for loopback hosts
                trust_env=not is_loopback(host),
                transport=transport,
            )
            self._exit_stack.push_async_callback(client.aclose)
            self._clients[key] = client
        return client

    def endpoint(self, host: str, insecure: bool) -> Endpoint:
        """The endpoint of ``host`` with registries.conf's ``insecure`` (``--tls-verify`` applied)."""
        key = (host, self.insecure(insecure))
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            endpoint = self._endpoints[key] = Endpoint(*key)
        return endpoint

    def source_endpoint(self, source: PullSource) -> Endpoint:
        """The endpoint serving ``source``."""
        return self.endpoint(source.reference.registry_host, source.insecure)

    def _source_key(self, source: PullSource) -> tuple[str, bool]:
        return (source.reference.registry_host, self.insecure(source.insecure))

    def pinged(self, source: PullSource) -> bool:
        """Whether the endpoint of ``source`` answered its ping."""
        endpoint = self._endpoints.get(self._source_key(source))
        return endpoint is not None and endpoint.base is not None

    def mark_unreachable(self, source: PullSource) -> None:
        """Remember for :data:`UNREACHABLE_PENALTY` seconds that ``source`` could not be connected to."""
        self._down_until[self._source_key(source)] = trio.current_time() + UNREACHABLE_PENALTY

    def by_reachability(self, sources: Sequence[PullSource]) -> tuple[PullSource, ...]:
        """``sources`` with the endpoints recently found unreachable moved last (order otherwise kept):
        one dead mirror costs its connection attempts once, not once per blob."""
        now = trio.current_time()
        down = {s for s in sources if self._down_until.get(self._source_key(s), 0.0) > now}
        return tuple(s for s in sources if s not in down) + tuple(s for s in sources if s in down)

    async def with_retries(self, attempt: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
        """Run ``attempt`` until it yields a non-retryable status or the policy gives up.

        The last retryable response is returned (the caller turns it into an error); transport
        errors are re-raised once exhausted, TLS errors at once.
        """
        policy = self.retry_policy
        failures = 0
        while True:
            try:
                response = await attempt()
            except TLSError:
                raise
            except TransportError as exc:
                failures += 1
                limit = policy.connect_attempts if isinstance(exc, ConnectionFailedError) else policy.attempts
                if failures >= limit:
                    raise
                logger.info("%s; retrying (%d/%d)", exc, failures, limit - 1)
                await trio.sleep(policy.delay(failures))
                continue
            if response.status_code not in RETRYABLE_STATUSES:
                return response
            failures += 1
            if failures >= policy.attempts:
                return response
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            logger.info(
                "%s %s: %d; retrying (%d/%d)",
                response.request.method,
                _http.display_url(response.request.url),
                response.status_code,
                failures,
                policy.attempts - 1,
            )
            await _http.discard(response)
            await trio.sleep(policy.delay(failures, retry_after=retry_after))

    async def ping(self, endpoint: Endpoint, *, retry: bool = True) -> str:
        """``GET /v2/`` once per endpoint: the base URL and the challenges (c/image detectProperties).

        An insecure endpoint may speak plain HTTP: c/image asks https, then http; here both are asked at once
        and https still wins when it answers, so a plain HTTP registry no longer waits for the TLS attempt to
        fail first (a connection and a handshake: two round trips). ``retry=False``: one try per scheme (a
        ping ahead of time: the request that needs the endpoint retries).
        """
        if endpoint.base is not None:
            return endpoint.base
        async with endpoint.lock:
            if endpoint.base is not None:
                return endpoint.base
            if endpoint.insecure:
                pinged = await self._ping_either(endpoint, retry=retry)
            else:
                pinged = await self._ping_scheme(endpoint, "https", retry=retry)
            endpoint.challenges = pinged.challenges
            endpoint.supports_signatures = pinged.supports_signatures
            endpoint.base = f"{pinged.scheme}://{endpoint.host}"
            return endpoint.base

    async def _ping_scheme(self, endpoint: Endpoint, scheme: str, *, retry: bool) -> _Pinged:
        client = self.http_client(endpoint.host, endpoint.insecure)
        url = f"{scheme}://{endpoint.host}/v2/"

        def attempt() -> Awaitable[httpx.Response]:
            return _http.send(client, client.build_request("GET", url))

        response = await (self.with_retries(attempt) if retry else attempt())
        try:
            if response.status_code not in (200, 401):
                raise await _http.status_error(response, what=f"pinging container registry {endpoint.host}")
            pinged = _Pinged(
                scheme=scheme,
                challenges=parse_www_authenticate(response.headers.get_list("www-authenticate")),
                # OpenShift's registry announces its signature API here (c/image: docker_client.go
                # detectPropertiesHelper, "X-Registry-Supports-Signatures: 1").
                supports_signatures=response.headers.get("x-registry-supports-signatures") == "1",
            )
            await _http.discard(response)
            return pinged
        finally:
            with trio.CancelScope(shield=True):  # the plain-HTTP ping is cancelled when https answered
                await response.aclose()

    async def _ping_either(self, endpoint: Endpoint, *, retry: bool) -> _Pinged:
        plain: list[_Pinged | RegistryError] = []

        async def ask_plain() -> None:
            try:
                plain.append(await self._ping_scheme(endpoint, "http", retry=retry))
            except RegistryError as exc:
                plain.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask_plain)
            try:
                # one try: a registry that speaks plain HTTP fails the handshake at once
                secure = await self._ping_scheme(endpoint, "https", retry=False)
            except RegistryError:
                pass
            else:
                nursery.cancel_scope.cancel()
                return secure
        if isinstance(plain[0], RegistryError):
            raise plain[0]
        return plain[0]


@dataclass(frozen=True)
class _Pinged:
    """What a ping found at one scheme."""

    scheme: str
    challenges: tuple[Challenge, ...]
    supports_signatures: bool


def registry_endpoint(connections: Connections, registries: RegistriesConf, ref: Reference) -> Endpoint:
    """The endpoint of ``ref``'s own registry (never a mirror: pushes, the signature extension), insecure
    as its ``[[registry]]`` table says."""
    entry = registries.find_registry(ref.name)
    return connections.endpoint(ref.registry_host, bool(entry is not None and entry.insecure))
