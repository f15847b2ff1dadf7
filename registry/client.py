"""The registry I/O: the OCI distribution protocol over httpx, under trio.

:func:`open_registry_client` yields a :class:`RegistryClient` holding, per registry host, an
``httpx.AsyncClient`` (its own TLS context from certs.d, HTTP/2 when the server offers it over TLS,
at most ``max_connections_per_host`` connections), the result of the ``/v2/`` ping and a bearer-token
cache shared by every pull made through the client.

What it does beyond containers/image (docker/docker_client.go, docker/docker_image_src.go,
docker/body_reader.go), and why:

* every request is retried (connection errors, 408/429/5xx with ``Retry-After``) with backoff and
  jitter, where c/image retries whole copies;
* a blob is resumed with ``Range`` after a drop, reset or read timeout, and a ``200`` answer to a
  range request is handled by skipping what was already read (c/image fails: podman#24715);
* when an endpoint keeps failing mid-blob, the next source (mirror or primary) serves the rest of
  that blob (c/image takes every blob of an image from the endpoint that served the manifest);
* a ``401`` mid-pull (an expired token) is answered by one re-authentication.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable, Hashable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, aclosing, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import trio

from tether.registry import _http
from tether.registry._retry import RETRYABLE_STATUSES, RetryPolicy, parse_retry_after
from tether.registry._tokens import BearerToken, TokenCache, parse_token_response
from tether.registry.auth import AuthFile, Credentials, lookup_credentials
from tether.registry.certs import ssl_context_for
from tether.registry.challenge import Challenge, parse_www_authenticate
from tether.registry.errors import (
    AuthenticationError,
    ConnectionFailedError,
    DigestMismatchError,
    HTTPStatusError,
    ManifestError,
    RegistryError,
    TLSError,
    TransportError,
)
from tether.registry.manifest import (
    ACCEPTED_MANIFEST_TYPES,
    MAX_CONFIG_SIZE,
    MAX_MANIFEST_SIZE,
    Descriptor,
    ImageIndex,
    ImageManifest,
    Platform,
    choose_platform,
    host_platform,
    parse_image_config,
    parse_manifest,
)
from tether.registry.reference import DEFAULT_DOMAIN, DOCKER_REGISTRY_HOST, Reference
from tether.registry.registries_conf import AUTHENTICATION_FILE_HELPER, PullSource, RegistriesConf, pull_sources
from tether.registry.resolve import RawManifest, ResolvedImage

__all__ = [
    "DEFAULT_RETRY_POLICY",
    "FetchedManifest",
    "RegistryClient",
    "RegistryImage",
    "RetryPolicy",
    "open_registry_client",
]

logger = logging.getLogger("tether.registry.client")

USER_AGENT = "tether/0.1 (containers/image compatible)"
DEFAULT_RETRY_POLICY = RetryPolicy()
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_MAX_REDIRECTS = 10
#: Blobs up to this size are uploaded with one PUT; larger ones with PATCH pieces of this size.
MONOLITHIC_UPLOAD_MAX = 32 * 1024 * 1024
UPLOAD_CHUNK = 32 * 1024 * 1024
#: Seconds an endpoint that refused connections is tried last.
UNREACHABLE_PENALTY = 30.0
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


# ---------------------------------------------------------------------------------------------
# public values


@dataclass(frozen=True)
class FetchedManifest(RawManifest):
    """Manifest bytes as served, their media type (Content-Type, checked) and digest, and the endpoint."""

    source: PullSource


@dataclass(frozen=True, kw_only=True)
class RegistryImage(ResolvedImage):
    """An image resolved to one platform's manifest and its config, with the endpoints its blobs come from
    (the one that served the manifest first)."""

    top: FetchedManifest
    manifest: FetchedManifest
    reference: Reference
    sources: tuple[PullSource, ...]


# ---------------------------------------------------------------------------------------------
# credentials (adapter over tether.registry.auth)


#: Cap of the signature API extension's answer (c/image: iolimits.maxSignatureListBodySize, 4 MiB).
MAX_SIGNATURE_LIST_SIZE = 4 * 1024 * 1024


@dataclass(frozen=True)
class _Credentials:
    username: str | None
    password: str | None
    identity_token: str | None

    def __repr__(self) -> str:
        return f"_Credentials(username={self.username!r}, <secrets redacted>)"

    @property
    def identity(self) -> Hashable:
        # token-cache key part: who the token was issued to, without keeping the secret in the key
        secret = (self.password or "") + "\0" + (self.identity_token or "")
        return (self.username, hashlib.sha256(secret.encode()).hexdigest())


# ---------------------------------------------------------------------------------------------
# endpoints


class _Endpoint:
    """One registry host as one trust setting sees it: scheme and challenges found by the ping."""

    def __init__(self, host: str, insecure: bool) -> None:
        self.host = host
        self.insecure = insecure
        self.base: str | None = None
        self.challenges: tuple[Challenge, ...] = ()
        # OpenShift's registry announces its signature API in the ping (c/image: docker_client.go
        # detectPropertiesHelper, "X-Registry-Supports-Signatures: 1").
        self.supports_signatures = False
        self.lock = trio.Lock()


def _repository_scope(path: str, actions: str) -> str:
    return f"repository:{path}:{actions}"


class RegistryClient:
    """Pulls and pushes through one set of registries.conf, credentials and TLS settings.

    Use :func:`open_registry_client`; every method may be called concurrently from many tasks.
    """

    def __init__(
        self,
        *,
        registries: RegistriesConf,
        auth: AuthFile,
        cert_dir: Path | None,
        tls_verify: bool | None,
        max_connections_per_host: int,
        retry_policy: RetryPolicy,
        exit_stack: AsyncExitStack,
        cert_search_dirs: Sequence[Path] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._registries = registries
        self._auth = auth
        self._credentials_cache: dict[str, _Credentials | None] = {}
        self._cert_dir = cert_dir
        self._cert_search_dirs = tuple(cert_search_dirs) if cert_search_dirs is not None else None
        self._transport = transport
        self._tls_verify = tls_verify
        self._max_connections = max_connections_per_host
        self.retry_policy = retry_policy
        self._exit_stack = exit_stack
        self._clients: dict[tuple[str, bool, bool], httpx.AsyncClient] = {}
        self._endpoints: dict[tuple[str, bool], _Endpoint] = {}
        self._tokens = TokenCache(clock=trio.current_time)
        self._token_locks: dict[Hashable, trio.Lock] = {}
        #: tokens fetched from token servers so far (for tests and diagnostics)
        self.tokens_fetched = 0
        self._down_until: dict[tuple[str, bool], float] = {}

    # ---- plumbing

    async def _credentials(self, name: str) -> _Credentials | None:
        """Credentials for the repository ``name`` at an endpoint (cached; helpers run in a thread)."""
        if name in self._credentials_cache:
            return self._credentials_cache[name]
        helpers = tuple(self._registries.credential_helpers)

        def lookup() -> Credentials | None:
            return lookup_credentials(self._auth, name, helpers=helpers)

        if helpers == (AUTHENTICATION_FILE_HELPER,) and not self._auth.cred_helpers:
            found = lookup()
        else:  # credential helpers are processes
            found = await trio.to_thread.run_sync(lookup)
        creds = None
        if found is not None and not found.is_empty:
            creds = _Credentials(found.username or None, found.password or None, found.identity_token or None)
        self._credentials_cache[name] = creds
        return creds

    def _insecure(self, insecure: bool) -> bool:
        # --tls-verify overrides registries.conf's `insecure` either way (c/image
        # DockerInsecureSkipTLSVerify); unset, the registries.conf value applies.
        if self._tls_verify is None:
            return insecure
        return not self._tls_verify

    def _http_client(self, host: str, insecure: bool, *, bulk: bool = False) -> httpx.AsyncClient:
        """The httpx client for ``host``: HTTP/2 where the server offers it over TLS, except for
        ``bulk`` transfers (blob bodies), which use HTTP/1.1 connections.

        Measured on loopback TLS (2 cores): a blob GET over h2 (pure-Python framing, 16 KiB DATA
        frames, per-stream window updates) ran at 44 MB/s where HTTP/1.1 ran at 120-200 MB/s; API
        requests (ping, tokens, manifests, HEADs) keep h2's single multiplexed connection.
        """
        key = (host, insecure, bulk)
        client = self._clients.get(key)
        if client is None:
            # certs.d is keyed by the reference's domain as written: docker.io, not registry-1.docker.io
            cert_host = DEFAULT_DOMAIN if host == DOCKER_REGISTRY_HOST else host
            context = ssl_context_for(
                cert_host, cert_dir=self._cert_dir, verify=not insecure, search_dirs=self._cert_search_dirs
            )
            policy = self.retry_policy
            client = httpx.AsyncClient(
                http2=not bulk,
                verify=context,
                limits=httpx.Limits(
                    max_connections=self._max_connections, max_keepalive_connections=self._max_connections
                ),
                # pool=None: tasks beyond the connection limit wait for a connection, they do not fail.
                timeout=httpx.Timeout(
                    connect=policy.connect_timeout, read=policy.read_timeout, write=policy.read_timeout, pool=None
                ),
                headers={"User-Agent": USER_AGENT, "Docker-Distribution-API-Version": "registry/2.0"},
                follow_redirects=False,
                # HTTP(S)_PROXY/NO_PROXY as Go's ProxyFromEnvironment (c/image): never for loopback hosts
                trust_env=not _is_loopback(host),
                transport=self._transport,
            )
            self._exit_stack.push_async_callback(client.aclose)
            self._clients[key] = client
        return client

    def _source_key(self, source: PullSource) -> tuple[str, bool]:
        return (source.reference.registry_host, self._insecure(source.insecure))

    def _pinged(self, source: PullSource) -> bool:
        endpoint = self._endpoints.get(self._source_key(source))
        return endpoint is not None and endpoint.base is not None

    def _mark_unreachable(self, source: PullSource) -> None:
        """Remember for :data:`UNREACHABLE_PENALTY` seconds that ``source`` could not be connected to."""
        self._down_until[self._source_key(source)] = trio.current_time() + UNREACHABLE_PENALTY

    def _by_reachability(self, sources: Sequence[PullSource]) -> tuple[PullSource, ...]:
        """``sources`` with the endpoints recently found unreachable moved last (order otherwise kept):
        one dead mirror costs its connection attempts once, not once per blob."""
        now = trio.current_time()
        down = {s for s in sources if self._down_until.get(self._source_key(s), 0.0) > now}
        return tuple(s for s in sources if s not in down) + tuple(s for s in sources if s in down)

    def _endpoint(self, host: str, insecure: bool) -> _Endpoint:
        key = (host, self._insecure(insecure))
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            endpoint = self._endpoints[key] = _Endpoint(*key)
        return endpoint

    async def _with_retries(self, attempt: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
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

    async def _ping(self, endpoint: _Endpoint) -> str:
        """``GET /v2/`` once per endpoint: the base URL and the challenges (c/image detectProperties)."""
        if endpoint.base is not None:
            return endpoint.base
        async with endpoint.lock:
            if endpoint.base is not None:
                return endpoint.base
            client = self._http_client(endpoint.host, endpoint.insecure)
            schemes = ("https", "http") if endpoint.insecure else ("https",)
            last_error: RegistryError | None = None
            for scheme in schemes:
                url = f"{scheme}://{endpoint.host}/v2/"
                try:

                    def attempt(url: str = url) -> Awaitable[httpx.Response]:
                        return _http.send(client, client.build_request("GET", url))

                    if scheme == "https" and endpoint.insecure:
                        # an insecure registry may speak plain HTTP: one try, then http://
                        response = await attempt()
                    else:
                        response = await self._with_retries(attempt)
                except TransportError as exc:
                    last_error = exc
                    continue
                if response.status_code in (200, 401):
                    endpoint.challenges = parse_www_authenticate(response.headers.get_list("www-authenticate"))
                    endpoint.supports_signatures = response.headers.get("x-registry-supports-signatures") == "1"
                    await _http.discard(response)
                    endpoint.base = f"{scheme}://{endpoint.host}"
                    return endpoint.base
                last_error = await _http.status_error(response, what=f"pinging container registry {endpoint.host}")
            assert last_error is not None
            raise last_error

    async def _bearer_token(
        self, endpoint: _Endpoint, challenge: Challenge, scopes: tuple[str, ...], creds: _Credentials | None
    ) -> tuple[Hashable, str]:
        realm = challenge.get("realm")
        if not realm:
            raise AuthenticationError(f"{endpoint.host}: the Bearer challenge has no realm")
        service = challenge.get("service")
        key: Hashable = (realm, service, scopes, creds.identity if creds else None)
        cached = self._tokens.get(key)
        if cached is not None:
            return key, cached
        lock = self._token_locks.setdefault(key, trio.Lock())
        async with lock:
            cached = self._tokens.get(key)
            if cached is not None:
                return key, cached
            started = trio.current_time()
            token = await self._fetch_token(endpoint, realm, service, scopes, creds)
            self._tokens.put(key, token, received_at=started)
            self.tokens_fetched += 1
            return key, token.value

    async def _fetch_token(
        self, endpoint: _Endpoint, realm: str, service: str | None, scopes: tuple[str, ...], creds: _Credentials | None
    ) -> BearerToken:
        """distribution docs/spec/auth/token.md (GET) and oauth.md (POST refresh_token grant)."""
        try:
            realm_url = httpx.URL(realm)
            if realm_url.scheme not in ("https", "http") or not realm_url.host:
                raise ValueError(realm)
        except (httpx.InvalidURL, ValueError):
            raise AuthenticationError(f"{endpoint.host}: the Bearer challenge's realm is not a URL") from None
        realm_host = realm_url.netloc.decode("ascii")
        client = self._http_client(realm_host, endpoint.insecure if realm_host == endpoint.host else False)
        what = f"requesting a token for {endpoint.host} ({' '.join(scopes)})"
        if creds is not None and creds.identity_token:
            form = {
                "grant_type": "refresh_token",
                "refresh_token": creds.identity_token,
                "client_id": "tether",
                "scope": " ".join(scopes),
            }
            if service:
                form["service"] = service

            def attempt() -> Awaitable[httpx.Response]:
                return _http.send(client, client.build_request("POST", realm_url, data=form))
        else:
            params: list[tuple[str, str | int | float | bool | None]] = []
            if creds is not None and creds.username:
                params.append(("account", creds.username))
            if service:
                params.append(("service", service))
            params.extend(("scope", s) for s in scopes)
            headers = {}
            if creds is not None and creds.username is not None and creds.password is not None:
                headers["Authorization"] = _basic(creds.username, creds.password)
            url = realm_url.copy_merge_params(params)

            def attempt() -> Awaitable[httpx.Response]:
                return _http.send(client, client.build_request("GET", url, headers=headers))

        response = await self._with_retries(attempt)
        if response.status_code in (401, 403):
            error = await _http.status_error(response, what=what)
            hint = "credentials refused" if creds else "no credentials found for it"
            raise AuthenticationError(f"{error} ({hint})")
        if response.status_code != 200:
            raise await _http.status_error(response, what=what)
        body, truncated = await _http.read_capped(response, 1024 * 1024, what="token")
        if truncated:
            raise AuthenticationError(f"{what}: the token server's answer is too large")
        return parse_token_response(body, what=what)

    async def _authorization(
        self, endpoint: _Endpoint, scopes: tuple[str, ...], creds: _Credentials | None
    ) -> tuple[str | None, Hashable | None, str | None]:
        """The ``Authorization`` header for ``scopes``: ``(header, token key, token)``.

        The first Basic or Bearer challenge of the ping wins, as in c/image ``setupRequestAuth``.
        """
        for challenge in endpoint.challenges:
            if challenge.scheme == "basic":
                if creds is not None and creds.username is not None and creds.password is not None:
                    return _basic(creds.username, creds.password), None, None
                return None, None, None
            if challenge.scheme == "bearer":
                key, token = await self._bearer_token(endpoint, challenge, scopes, creds)
                return f"Bearer {token}", key, token
        return None, None, None

    async def _call(
        self,
        endpoint: _Endpoint,
        method: str,
        path_or_url: str | httpx.URL,
        *,
        scopes: tuple[str, ...],
        creds: _Credentials | None,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        retry: bool = True,
        bulk: bool = False,
    ) -> httpx.Response:
        """One authenticated request (streaming response), retried per policy; 401s cured once.

        A 401 is answered by fetching a fresh token (the cached one expired or was revoked) or, for
        ``error="insufficient_scope"``, a token for the scope the registry names; a second 401 is an
        :class:`AuthenticationError`.
        """
        base = await self._ping(endpoint)
        client = self._http_client(endpoint.host, endpoint.insecure, bulk=bulk)
        url = httpx.URL(base + path_or_url) if isinstance(path_or_url, str) else path_or_url
        scopes = tuple(dict.fromkeys(scopes))
        reauthenticated = False
        while True:
            authorization, token_key, token = await self._authorization(endpoint, scopes, creds)
            request_headers = dict(headers or {})
            if authorization:
                request_headers["Authorization"] = authorization

            def attempt(request_headers: dict[str, str] = request_headers) -> Awaitable[httpx.Response]:
                return _http.send(client, client.build_request(method, url, headers=request_headers, content=content))

            response = await (self._with_retries(attempt) if retry else attempt())
            if response.status_code != 401 or reauthenticated:
                if response.status_code == 401:
                    hint = "credentials refused" if creds else "no credentials configured for it"
                    raise await _http.authentication_error(response, hint=hint)
                return response
            reauthenticated = True
            challenges = parse_www_authenticate(response.headers.get_list("www-authenticate"))
            await _http.discard(response)
            bearer = next((c for c in challenges if c.scheme == "bearer"), None)
            if bearer is not None and bearer.get("error") == "insufficient_scope" and bearer.get("scope"):
                extra = tuple(s for s in (bearer.get("scope") or "").split(" ") if s)
                scopes = tuple(dict.fromkeys((*scopes, *extra)))
                logger.info("%s %s: insufficient_scope; asking for %s", method, _http.display_url(url), scopes)
            elif token_key is not None and token is not None:
                self._tokens.invalidate(token_key, token)
                logger.info("%s %s: token refused; re-authenticating once", method, _http.display_url(url))
            if challenges and (authorization is None or bearer is not None):
                endpoint.challenges = challenges

    # ---- manifests

    async def _fetch_manifest_at(self, source: PullSource, ref: Reference) -> FetchedManifest:
        endpoint = self._endpoint(ref.registry_host, source.insecure)
        creds = await self._credentials(ref.name)
        response = await self._call(
            endpoint,
            "GET",
            f"/v2/{ref.path}/manifests/{ref.identifier}",
            scopes=(_repository_scope(ref.path, "pull"),),
            creds=creds,
            headers={"Accept": ", ".join(ACCEPTED_MANIFEST_TYPES)},
        )
        if response.status_code != 200:
            raise await _http.status_error(response)
        where = f"GET {_http.display_url(response.request.url)}"
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_MANIFEST_SIZE:
            await _http.discard(response)
            raise ManifestError(f"{where}: manifest is {declared} bytes, more than the {MAX_MANIFEST_SIZE} byte limit")
        raw, truncated = await _http.read_capped(response, MAX_MANIFEST_SIZE, what="manifest")
        if truncated:
            raise ManifestError(f"{where}: manifest is more than the {MAX_MANIFEST_SIZE} byte limit")
        algorithm = ref.digest.split(":", 1)[0] if ref.digest else "sha256"
        digest = f"{algorithm}:{hashlib.new(algorithm, raw).hexdigest()}"
        if ref.digest is not None and digest != ref.digest:
            raise DigestMismatchError(f"{where}: manifest digest is {digest}, expected {ref.digest}")
        served = response.headers.get("docker-content-digest")
        if served and served.split(":", 1)[0] == algorithm and served != digest:
            raise DigestMismatchError(f"{where}: manifest digest is {digest}, the registry says {served}")
        media_type = response.headers.get("content-type", "")
        try:
            parsed = parse_manifest(raw, media_type)
        except ManifestError as exc:
            raise ManifestError(f"{where}: {exc}") from None
        return FetchedManifest(raw=raw, media_type=parsed.media_type, digest=digest, source=source)

    async def fetch_manifest(self, ref: Reference) -> FetchedManifest:
        """The manifest (or index) of ``ref`` from the first endpoint of ``pull_sources`` that serves it.

        Mirrors are tried first and the primary last; any error moves on to the next endpoint
        (c/image ``docker_image_src.go newImageSource``). ``BlockedRegistryError`` before any request.
        """
        sources = pull_sources(self._registries, ref)
        fetched: FetchedManifest = await self._first_success(sources, lambda s: self._fetch_manifest_at(s, s.reference))
        return fetched

    async def _first_success(
        self, sources: Sequence[PullSource], attempt: Callable[[PullSource], Awaitable[Any]]
    ) -> Any:
        errors: list[tuple[PullSource, RegistryError]] = []
        for source in self._by_reachability(sources):
            try:
                return await attempt(source)
            except RegistryError as exc:
                if isinstance(exc, ConnectionFailedError):
                    self._mark_unreachable(source)
                if len(sources) > 1:
                    logger.info("%s: %s; trying the next endpoint", source.reference.domain, exc)
                errors.append((source, exc))
        assert errors, "pull_sources returned no endpoint"
        last = errors[-1][1]
        if len(errors) == 1:
            raise last
        others = "; ".join(f"{s.reference.domain}: {e}" for s, e in errors[:-1])
        raise _with_message(last, f"{last} (also tried: {others})")

    async def resolve_image(self, ref: Reference, *, platform: Platform | None = None,
                            top: FetchedManifest | None = None) -> RegistryImage:
        """Manifest (via the index and the platform choice), then config, from one endpoint.

        ``platform`` defaults to :func:`host_platform`. The endpoint that served the manifest comes
        first in :attr:`ResolvedImage.sources`, then the others in ``pull_sources`` order.
        """
        sources = pull_sources(self._registries, ref)
        if top is not None and top.source in sources:
            sources = (top.source, *(s for s in sources if s != top.source))
        wanted = platform or host_platform()

        async def attempt(source: PullSource) -> RegistryImage:
            first = top if top is not None and top.source == source else await self._fetch_manifest_at(
                source, source.reference)
            parsed = parse_manifest(first.raw, first.media_type)
            manifest = first
            if isinstance(parsed, ImageIndex):
                chosen = choose_platform(parsed, wanted)
                by_digest = Reference(source.reference.domain, source.reference.path, None, chosen.digest)
                manifest = await self._fetch_manifest_at(source, by_digest)
                if len(manifest.raw) != chosen.size:
                    raise DigestMismatchError(
                        f"manifest {chosen.digest} of {source.reference.name} is {len(manifest.raw)} bytes, "
                        f"the index says {chosen.size}"
                    )
                parsed = parse_manifest(manifest.raw, manifest.media_type)
                if not isinstance(parsed, ImageManifest):
                    raise ManifestError(
                        f"{source.reference.name}@{chosen.digest}: an index inside an index is not supported"
                    )
            ordered = (source, *(s for s in sources if s != source))
            config_raw = await self.fetch_blob((source,), parsed.config, max_size=MAX_CONFIG_SIZE)
            try:
                config = parse_image_config(config_raw)
            except ManifestError as exc:
                raise ManifestError(f"config {parsed.config.digest} of {source.reference}: {exc}") from None
            return RegistryImage(
                reference=ref,
                top=first,
                manifest=manifest,
                parsed=parsed,
                config_raw=config_raw,
                config=config,
                sources=ordered,
            )

        result: RegistryImage = await self._first_success(sources, attempt)
        return result

    async def list_tags(self, source: PullSource, *, max_pages: int = 100) -> tuple[str, ...]:
        """The repository's tags at ``source`` (``GET /v2/<name>/tags/list``, ``Link`` pages followed).

        c/image ``docker.GetRepositoryTags`` asks the reference's registry; tether asks the endpoint
        given (the one that served the manifest), so ``inspect`` shows what that endpoint has.
        """
        ref = source.reference
        endpoint = self._endpoint(ref.registry_host, source.insecure)
        creds = await self._credentials(ref.name)
        scopes = (_repository_scope(ref.path, "pull"),)
        url: str | httpx.URL = f"/v2/{ref.path}/tags/list"
        tags: list[str] = []
        for _ in range(max_pages):
            response = await self._call(endpoint, "GET", url, scopes=scopes, creds=creds)
            if response.status_code != 200:
                raise await _http.status_error(response)
            link = response.headers.get("link")
            request_url = response.request.url
            body, truncated = await _http.read_capped(response, MAX_MANIFEST_SIZE, what="tag list")
            where = f"GET {_http.display_url(request_url)}"
            if truncated:
                raise RegistryError(f"{where}: the tag list is larger than {MAX_MANIFEST_SIZE} bytes")
            try:
                page = json.loads(body)
            except ValueError:
                raise RegistryError(f"{where}: the tag list is not JSON") from None
            page_tags = page.get("tags") if isinstance(page, dict) else None
            if page_tags is not None and (
                not isinstance(page_tags, list) or not all(isinstance(tag, str) for tag in page_tags)
            ):
                raise RegistryError(f"{where}: the tag list is malformed")
            tags.extend(page_tags or ())
            # distribution spec: Link: </v2/<name>/tags/list?n=..&last=..>; rel="next"
            match = re.match(r'\s*<([^>]+)>\s*;\s*rel="?next"?', link or "")
            if match is None:
                return tuple(tags)
            url = _join(request_url, match.group(1))
        raise RegistryError(f"listing tags of {ref.name}: more than {max_pages} pages")

    # ---- blobs

    def open_blob(
        self, sources: Sequence[PullSource], descriptor: Descriptor, *, chunk_size: int = 0
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Stream a blob, verified: its bytes as received (``chunk_size`` > 0: joined into pieces of at
        least that size, which costs a copy; measured ~15% more client CPU for 1 MiB pieces).

        Never more than ``descriptor.size`` bytes are accepted; the digest is checked when the
        last byte has arrived (:class:`DigestMismatchError` from the iterator then). Drops are
        resumed with ``Range``, retryable failures retried, and an endpoint that keeps failing is
        replaced by the next of ``sources`` for the rest of the blob.
        """
        return _open_blob(self, tuple(sources), descriptor, chunk_size)

    async def fetch_blob(self, sources: Sequence[PullSource], descriptor: Descriptor, *, max_size: int) -> bytes:
        """A whole (small) blob, verified; :class:`RegistryError` if it is declared larger than ``max_size``."""
        if descriptor.size > max_size:
            raise RegistryError(
                f"blob {descriptor.digest} is {descriptor.size} bytes, more than the {max_size} byte limit"
            )
        parts: list[bytes] = []
        async with self.open_blob(sources, descriptor) as chunks:
            async for chunk in chunks:
                parts.append(chunk)
        return b"".join(parts)

    async def _blob_response(
        self, source: PullSource, descriptor: Descriptor, offset: int
    ) -> httpx.Response:
        """GET the blob from ``source`` from ``offset`` on, following redirects by hand.

        Redirects to another host (a CDN) are followed without ``Authorization`` (c/image
        ``docker_client.go`` relies on Go's same-host rule; httpx's is the same).
        """
        ref = source.reference
        endpoint = self._endpoint(ref.registry_host, source.insecure)
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        creds = await self._credentials(ref.name)
        scopes = (_repository_scope(ref.path, "pull"),)
        # retry=False: the blob reader counts failures itself (and resumes where it stopped)
        response = await self._call(
            endpoint,
            "GET",
            f"/v2/{ref.path}/blobs/{descriptor.digest}",
            scopes=scopes,
            creds=creds,
            headers=headers,
            retry=False,
            bulk=True,
        )
        for _ in range(_MAX_REDIRECTS):
            if response.status_code not in _REDIRECTS:
                return response
            location = response.headers.get("location")
            await _http.discard(response)
            if not location:
                raise RegistryError(f"GET {_http.display_url(response.request.url)}: redirect without Location")
            target = _join(response.request.url, location)
            base = httpx.URL(await self._ping(endpoint))
            if (target.scheme, target.host, target.port) == (base.scheme, base.host, base.port):
                response = await self._call(
                    endpoint, "GET", target, scopes=scopes, creds=creds, headers=headers, retry=False, bulk=True
                )
            else:
                netloc = target.netloc.decode("ascii")
                client = self._http_client(netloc, False, bulk=True)

                response = await _http.send(client, client.build_request("GET", target, headers=headers))
        await _http.discard(response)
        raise RegistryError(f"GET {_http.display_url(response.request.url)}: too many redirects")

    async def _external_blob_response(self, url: httpx.URL, offset: int) -> httpx.Response:
        """GET a descriptor ``urls`` entry: anonymous, TLS verified, redirects followed by hand."""
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        target = url
        for _ in range(_MAX_REDIRECTS):
            client = self._http_client(target.netloc.decode("ascii"), False, bulk=True)
            response = await _http.send(client, client.build_request("GET", target, headers=headers))
            if response.status_code not in _REDIRECTS:
                return response
            location = response.headers.get("location")
            await _http.discard(response)
            if not location:
                raise RegistryError(f"GET {_http.display_url(target)}: redirect without Location")
            target = _join(target, location)
        raise RegistryError(f"GET {_http.display_url(url)}: too many redirects")

    # ---- signatures

    async def fetch_signature_extension(self, repository: Reference, digest: str) -> bytes | None:
        """The signature list of ``repository@digest`` from the registry's API extension, or ``None`` when
        the ping did not announce ``X-Registry-Supports-Signatures: 1`` (then lookaside stores apply).

        ``GET /extensions/v2/<name>/signatures/<digest>`` (c/image: docker_image_src.go
        getSignaturesFromAPIExtension); the body is capped at :data:`MAX_SIGNATURE_LIST_SIZE`.
        """
        endpoint = self._push_endpoint(repository)
        await self._ping(endpoint)
        if not endpoint.supports_signatures:
            return None
        response = await self._call(
            endpoint,
            "GET",
            f"/extensions/v2/{repository.path}/signatures/{digest}",
            scopes=(_repository_scope(repository.path, "pull"),),
            creds=await self._credentials(repository.name),
        )
        if response.status_code != 200:
            raise await _http.status_error(response)
        body, truncated = await _http.read_capped(response, MAX_SIGNATURE_LIST_SIZE, what="signature list")
        if truncated:
            raise ManifestError(
                f"GET {_http.display_url(response.request.url)}: signature list is more than "
                f"{MAX_SIGNATURE_LIST_SIZE} bytes"
            )
        return body

    # ---- push

    def _push_endpoint(self, ref: Reference) -> _Endpoint:
        entry = self._registries.find_registry(ref.name)
        return self._endpoint(ref.registry_host, bool(entry is not None and entry.insecure))

    async def blob_exists(self, ref: Reference, digest: str) -> bool:
        """``HEAD /v2/<name>/blobs/<digest>``: whether the repository has the blob."""
        response = await self._call(
            self._push_endpoint(ref),
            "HEAD",
            f"/v2/{ref.path}/blobs/{digest}",
            scopes=(_repository_scope(ref.path, "pull,push"),),
            creds=await self._credentials(ref.name),
        )
        if response.status_code == 200:
            await _http.discard(response)
            return True
        if response.status_code == 404:
            await _http.discard(response)
            return False
        raise await _http.status_error(response)

    async def mount_blob(self, ref: Reference, digest: str, *, from_repository: str) -> bool:
        """Cross-repository mount (``POST .../blobs/uploads/?mount=&from=``): True if mounted (201).

        A 202 means the registry started an upload instead; that upload is cancelled and False returned.
        """
        endpoint = self._push_endpoint(ref)
        url = httpx.URL(await self._ping(endpoint) + f"/v2/{ref.path}/blobs/uploads/").copy_merge_params(
            {"mount": digest, "from": from_repository}
        )
        creds = await self._credentials(ref.name)
        scopes = (_repository_scope(ref.path, "pull,push"), _repository_scope(from_repository, "pull"))
        response = await self._call(endpoint, "POST", url, scopes=scopes, creds=creds)
        if response.status_code == 201:
            await _http.discard(response)
            return True
        if response.status_code == 202:
            location = response.headers.get("location")
            await _http.discard(response)
            if location:
                try:
                    target = _join(response.request.url, location)
                    cancel = await self._call(endpoint, "DELETE", target, scopes=scopes, creds=creds, retry=False)
                    await _http.discard(cancel)
                except RegistryError as exc:  # the registry purges abandoned uploads anyway
                    logger.debug("cancelling the upload started instead of a mount: %s", exc)
            return False
        raise await _http.status_error(response)

    async def upload_blob(self, ref: Reference, descriptor: Descriptor, chunks: AsyncIterable[bytes]) -> None:
        """Upload a blob: ``POST`` then one ``PUT`` (small), or ``PATCH`` pieces then ``PUT`` (large).

        The bytes are checked against ``descriptor`` (size and digest) before the final ``PUT``.
        """
        endpoint = self._push_endpoint(ref)
        creds = await self._credentials(ref.name)
        scopes = (_repository_scope(ref.path, "pull,push"),)
        response = await self._call(endpoint, "POST", f"/v2/{ref.path}/blobs/uploads/", scopes=scopes, creds=creds)
        if response.status_code != 202:
            raise await _http.status_error(response)
        location = _upload_location(response)
        await _http.discard(response)
        algorithm = descriptor.digest.split(":", 1)[0]
        hasher = hashlib.new(algorithm)
        total = 0
        pending: list[bytes] = []
        pending_size = 0
        monolithic = descriptor.size <= MONOLITHIC_UPLOAD_MAX

        async def patch(data: bytes, start: int) -> httpx.URL:
            headers = {
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{start}-{start + len(data) - 1}",
            }
            answer = await self._call(
                endpoint,
                "PATCH",
                location,
                scopes=scopes,
                creds=creds,
                headers=headers,
                content=data,
                retry=False,
                bulk=True,
            )
            if answer.status_code != 202:
                raise await _http.status_error(answer)
            new_location = _upload_location(answer)
            await _http.discard(answer)
            return new_location

        async for chunk in chunks:
            total += len(chunk)
            if total > descriptor.size:
                raise DigestMismatchError(
                    f"uploading {descriptor.digest} to {ref.name}: more than the declared {descriptor.size} bytes"
                )
            hasher.update(chunk)
            pending.append(chunk)
            pending_size += len(chunk)
            if not monolithic and pending_size >= UPLOAD_CHUNK:
                location = await patch(b"".join(pending), total - pending_size)
                pending, pending_size = [], 0
        digest = f"{algorithm}:{hasher.hexdigest()}"
        if total != descriptor.size or digest != descriptor.digest:
            raise DigestMismatchError(
                f"uploading {descriptor.digest} to {ref.name}: the bytes are {total} bytes with digest {digest}"
            )
        body = b"".join(pending)
        if not monolithic and body:
            location = await patch(body, total - len(body))
            body = b""
        final = location.copy_merge_params({"digest": descriptor.digest})
        headers = {"Content-Type": "application/octet-stream"}
        response = await self._call(
            endpoint, "PUT", final, scopes=scopes, creds=creds, headers=headers, content=body, retry=False, bulk=True
        )
        if response.status_code != 201:
            raise await _http.status_error(response)
        await _http.discard(response)

    async def put_manifest(self, ref: Reference, raw: bytes, media_type: str) -> str:
        """``PUT`` a manifest under ``ref``'s tag (else its digest); returns the manifest digest."""
        digest = f"sha256:{hashlib.sha256(raw).hexdigest()}"
        if ref.digest is not None and ref.tag is None and ref.digest != digest:
            raise DigestMismatchError(f"pushing {ref}: the manifest's digest is {digest}")
        identifier = ref.tag or ref.digest or "latest"
        response = await self._call(
            self._push_endpoint(ref),
            "PUT",
            f"/v2/{ref.path}/manifests/{identifier}",
            scopes=(_repository_scope(ref.path, "pull,push"),),
            creds=await self._credentials(ref.name),
            headers={"Content-Type": media_type},
            content=raw,
        )
        if response.status_code not in (200, 201):
            raise await _http.status_error(response)
        served = response.headers.get("docker-content-digest")
        await _http.discard(response)
        if served and served.startswith("sha256:") and served != digest:
            raise DigestMismatchError(f"PUT {ref}: the registry stored digest {served}, expected {digest}")
        return digest


def _is_loopback(host: str) -> bool:
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


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def _upload_location(response: httpx.Response) -> httpx.URL:
    location = response.headers.get("location")
    if not location:
        raise RegistryError(
            f"{response.request.method} {_http.display_url(response.request.url)}: "
            f"{response.status_code} without a Location header"
        )
    return _join(response.request.url, location)


def _join(base: httpx.URL, location: str) -> httpx.URL:
    """``location`` (a Location/Link target) resolved against ``base``; only http(s) URLs."""
    try:
        target = base.join(location)
    except (httpx.InvalidURL, ValueError):
        raise RegistryError(f"{_http.display_url(base)}: invalid URL {location[:200]!r}") from None
    if target.scheme not in ("http", "https") or not target.host:
        raise RegistryError(f"{_http.display_url(base)}: refusing to follow {target.scheme}: URL")
    return target


def _with_message(error: RegistryError, message: str) -> RegistryError:
    """A copy of ``error`` (same class, status and code) with another message."""
    if isinstance(error, HTTPStatusError):
        return type(error)(message, status=error.status, code=error.code)
    try:
        return type(error)(message)
    except TypeError:  # pragma: no cover - every class of the hierarchy takes a message
        return RegistryError(message)


# ---------------------------------------------------------------------------------------------
# the verified, resuming blob stream


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


class _SourceFailed(Exception):
    """This endpoint cannot serve (the rest of) the blob; try the next source."""

    def __init__(self, error: RegistryError) -> None:
        super().__init__(str(error))
        self.error = error


@asynccontextmanager
async def _open_blob(
    client: RegistryClient, sources: tuple[PullSource, ...], descriptor: Descriptor, chunk_size: int
) -> AsyncIterator[AsyncIterator[bytes]]:
    if not sources:
        raise RegistryError(f"no endpoint to fetch blob {descriptor.digest} from")
    reader = _BlobReader(client, sources, descriptor, chunk_size)
    chunks = reader.chunks()
    try:
        yield chunks
    finally:
        await chunks.aclose()
        await reader.close_response()


class _BlobReader:
    def __init__(
        self, client: RegistryClient, sources: tuple[PullSource, ...], descriptor: Descriptor, chunk_size: int
    ) -> None:
        self.client = client
        self.sources = sources
        self.descriptor = descriptor
        self.chunk_size = chunk_size
        self.algorithm = descriptor.digest.split(":", 1)[0]
        self.hasher = hashlib.new(self.algorithm)
        self.offset = 0
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
        return (*urls, *self.client._by_reachability(self.sources))

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        size = self.descriptor.size
        policy = self.client.retry_policy
        errors: list[tuple[str, RegistryError]] = []
        for source in self._ordered_sources():
            failures = 0
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
                    failures = 0 if self.offset > before else failures + 1
                    limit = policy.connect_attempts if isinstance(exc, ConnectionFailedError) else policy.attempts
                    if (
                        isinstance(exc, ConnectionFailedError)
                        and isinstance(source, PullSource)
                        and not self.client._pinged(source)
                    ):
                        limit = 1  # the ping has already spent its connection attempts
                    if failures >= limit:
                        errors.append((_label(source), exc))
                        logger.info("%s; giving up on this endpoint", exc)
                        if isinstance(exc, ConnectionFailedError) and isinstance(source, PullSource):
                            self.client._mark_unreachable(source)
                        break
                    logger.info("%s; resuming at byte %d", exc, self.offset)
                    retry_after = exc.retry_after if isinstance(exc, _RetryableStatus) else None
                    await trio.sleep(policy.delay(max(1, failures), retry_after=retry_after))
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
            raise _with_message(last, f"fetching blob {self.descriptor.digest} failed at every endpoint: {detail}")
        digest = f"{self.algorithm}:{self.hasher.hexdigest()}"
        if digest != self.descriptor.digest:
            served = ", ".join(f"{d} ({n} bytes)" for d, n in self.served)
            raise DigestMismatchError(
                f"blob {self.descriptor.digest} ({size} bytes): the bytes received have digest {digest} "
                f"(served by {served})"
            )

    async def _stream_from(self, source: _BlobSource) -> AsyncGenerator[bytes, None]:
        """The rest of the blob from ``source``, hashing as it goes; raises _SourceFailed or TransportError."""
        size = self.descriptor.size
        what = self._what(source)
        try:
            if isinstance(source, _URLSource):
                response = await self.client._external_blob_response(source.url, self.offset)
            else:
                response = await self.client._blob_response(source, self.descriptor, self.offset)
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
        try:
            async with aclosing(_http.aiter_raw(response)) as raw_chunks:
                async for chunk in raw_chunks:
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
            # what was verified-so-far is kept: hand it out before the caller resumes
            if pending:
                yield pending[0] if len(pending) == 1 else b"".join(pending)
                pending = []
            raise
        finally:
            if served_here:
                self.served.append((_label(source), served_here))
        if pending:
            yield pending[0] if len(pending) == 1 else b"".join(pending)


@asynccontextmanager
async def open_registry_client(
    *,
    registries: RegistriesConf,
    auth: AuthFile,
    cert_dir: Path | None = None,
    tls_verify: bool | None = None,
    max_connections_per_host: int = 8,
    retry_policy: RetryPolicy = DEFAULT_RETRY_POLICY,
    cert_search_dirs: Sequence[Path] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncIterator[RegistryClient]:
    """A :class:`RegistryClient` for one configuration; its connections close on exit.

    ``auth`` is a loaded containers-auth.json (:func:`tether.registry.auth.load_auth_file`); ``cert_dir``
    replaces the certs.d lookup (``--cert-dir``); ``tls_verify`` overrides registries.conf's
    ``insecure`` either way when set. ``retry_policy`` tunes retries and timeouts;
    ``cert_search_dirs`` replaces the certs.d parents searched for ``HOST[:PORT]/`` (default
    :func:`tether.registry.certs.cert_search_dirs`). ``transport`` replaces the network for every host
    (``httpx.MockTransport`` in protocol tests).
    """
    async with AsyncExitStack() as stack:
        yield RegistryClient(
            registries=registries,
            auth=auth,
            cert_dir=cert_dir,
            tls_verify=tls_verify,
            max_connections_per_host=max_connections_per_host,
            retry_policy=retry_policy,
            exit_stack=stack,
            cert_search_dirs=cert_search_dirs,
            transport=transport,
        )
