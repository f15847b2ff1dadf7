"""Authenticated requests: credentials, challenges -> Basic or Bearer, the per-scope token cache, 401 cures.

The credentials of a repository come from containers-auth.json and credential helpers
(:mod:`tether.registry.auth`, looked up once per repository name). The first Basic or Bearer challenge of the
endpoint's ping decides how they are used (c/image ``docker_client.go`` ``setupRequestAuth``): Basic sends them
with every request; Bearer trades them for a token per (realm, service, scopes, identity), from the token
endpoint (distribution docs/spec/auth/token.md, GET) or, with an identity token, by the OAuth2 refresh-token
grant (oauth.md, POST). A ``401`` mid-pull is answered by one re-authentication: a fresh token, or a token for
the scope an ``insufficient_scope`` error names (c/image does not re-authenticate; tokens expire mid-pull).
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Awaitable, Hashable, Sequence
from dataclasses import dataclass

import httpx
import trio

import tether.registry.client._http as _http
from tether.registry.auth import AuthFile, AuthFiles, Credentials, lookup_credentials
from tether.registry.challenge import Challenge, parse_www_authenticate
from tether.registry.client._tokens import BearerToken, TokenCache, parse_token_response
from tether.registry.client.core import Connections, Endpoint, repository_scope
from tether.registry.errors import AuthenticationError, HTTPStatusError, RegistryError
from tether.registry.registries_conf import AUTHENTICATION_FILE_HELPER, PullSource, RegistriesConf

__all__ = ["MAX_BATCHED_SCOPES", "MAX_REDIRECTS", "REDIRECT_STATUSES", "Authenticator"]

logger = logging.getLogger("tether.registry.client")

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: Hops followed for one request: Go's http.Client (c/image's) stops after 10.
MAX_REDIRECTS = 10
#: Other repositories' scopes one token request carries at most (the URL stays a few KiB).
MAX_BATCHED_SCOPES = 50


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


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


class Authenticator:
    """Sends requests with the credentials of one registries.conf + auth.json; shared by every pull."""

    def __init__(
        self, connections: Connections, *, registries: RegistriesConf, auth: AuthFile | AuthFiles
    ) -> None:
        self._connections = connections
        self._registries = registries
        self._auth = auth
        self._credentials_cache: dict[str, _Credentials | None] = {}
        self._tokens = TokenCache(clock=trio.current_time)
        self._token_locks: dict[Hashable, trio.Lock] = {}
        #: per endpoint (host, insecure): the repositories announced (``Reference.name`` -> pull scope)
        self._announced: dict[tuple[str, bool], dict[str, str]] = {}
        #: token servers that refused a token for several repositories at once (realm, service, identity)
        self._unbatched: set[Hashable] = set()
        #: tokens fetched from token servers so far (for tests and diagnostics)
        self.tokens_fetched = 0

    async def _credentials(self, name: str) -> _Credentials | None:
        """Credentials for the repository ``name`` at an endpoint (cached; helpers run in a thread)."""
        if name in self._credentials_cache:
            return self._credentials_cache[name]
        helpers = tuple(self._registries.credential_helpers)

        def lookup() -> Credentials | None:
            return lookup_credentials(self._auth, name, helpers=helpers)

        files = self._auth.files if isinstance(self._auth, AuthFiles) else (self._auth,)
        if helpers == (AUTHENTICATION_FILE_HELPER,) and not any(f.cred_helpers for f in files):
            found = lookup()
        else:  # credential helpers are processes
            found = await trio.to_thread.run_sync(lookup)
        creds = None
        if found is not None and not found.is_empty:
            creds = _Credentials(found.username or None, found.password or None, found.identity_token or None)
        self._credentials_cache[name] = creds
        return creds

    def announce(self, sources: Sequence[PullSource]) -> None:
        """Repositories about to be read: their pull scopes join the first token request to their endpoint."""
        for source in sources:
            endpoint = self._connections.source_endpoint(source)
            ref = source.reference
            self._announced.setdefault((endpoint.host, endpoint.insecure), {})[ref.name] = repository_scope(
                ref.path, "pull")

    async def _batched_scopes(self, endpoint: Endpoint, realm: str, service: str | None, scopes: tuple[str, ...],
                              creds: _Credentials | None) -> tuple[str, ...]:
        """The announced pull scopes of ``endpoint`` that one token request for ``scopes`` can also carry:
        same credentials, no token cached yet, at most :data:`MAX_BATCHED_SCOPES`.

        The token spec lets a client repeat ``scope`` (distribution docs/spec/auth/scope.md); c/image asks one
        token per repository, so a pull of many images paid one token round trip each.
        """
        identity = creds.identity if creds else None
        extra: list[str] = []
        for name, scope in self._announced.get((endpoint.host, endpoint.insecure), {}).items():
            if len(extra) >= MAX_BATCHED_SCOPES:
                break
            if scope in scopes or self._tokens.get((realm, service, (scope,), identity)) is not None:
                continue
            theirs = await self._credentials(name)
            if (theirs.identity if theirs else None) == identity:
                extra.append(scope)
        return tuple(extra)

    def _hint(self, creds: _Credentials | None) -> str:
        """Why a 401 may have happened, naming where credentials were looked for."""
        auth = self._auth
        if isinstance(auth, AuthFiles):
            consulted = auth.describe()
        else:
            consulted = f"auth file: {auth.path}" if auth.path is not None else "no auth file"
        what = "credentials refused" if creds else "no credentials configured for it"
        return f"{what}; {consulted}"

    async def _bearer_token(
        self, endpoint: Endpoint, challenge: Challenge, scopes: tuple[str, ...], creds: _Credentials | None
    ) -> tuple[Hashable, str]:
        realm = challenge.get("realm")
        if not realm:
            raise AuthenticationError(f"{endpoint.host}: the Bearer challenge has no realm")
        service = challenge.get("service")
        identity = creds.identity if creds else None
        key: Hashable = (realm, service, scopes, identity)
        cached = self._tokens.get(key)
        if cached is not None:
            return key, cached
        # One lock per token server and identity: the images of a pull ask at once, and the first request
        # carries every announced repository's scope, so the others find their token cached.
        server: Hashable = (realm, service, identity)
        lock = self._token_locks.setdefault(server, trio.Lock())
        async with lock:
            cached = self._tokens.get(key)
            if cached is not None:
                return key, cached
            extra = () if server in self._unbatched else await self._batched_scopes(
                endpoint, realm, service, scopes, creds)
            started = trio.current_time()
            try:
                token = await self._fetch_token(endpoint, realm, service, (*scopes, *extra), creds)
            except (AuthenticationError, HTTPStatusError):
                if not extra:
                    raise
                # a token server that will not grant them all at once: one token per repository from now on
                logger.info("%s: no token for several repositories at once; asking one at a time", endpoint.host)
                self._unbatched.add(server)
                extra = ()
                started = trio.current_time()
                token = await self._fetch_token(endpoint, realm, service, scopes, creds)
            self._tokens.put(key, token, received_at=started)
            for scope in extra:
                self._tokens.put((realm, service, (scope,), identity), token, received_at=started)
            self.tokens_fetched += 1
            return key, token.value

    async def _fetch_token(
        self, endpoint: Endpoint, realm: str, service: str | None, scopes: tuple[str, ...], creds: _Credentials | None
    ) -> BearerToken:
        """distribution docs/spec/auth/token.md (GET) and oauth.md (POST refresh_token grant)."""
        try:
            realm_url = httpx.URL(realm)
            if realm_url.scheme not in ("https", "http") or not realm_url.host:
                raise ValueError(realm)
        except (httpx.InvalidURL, ValueError):
            raise AuthenticationError(f"{endpoint.host}: the Bearer challenge's realm is not a URL") from None
        realm_host = realm_url.netloc.decode("ascii")
        client = self._connections.http_client(realm_host, endpoint.insecure if realm_host == endpoint.host else False)
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

        response = await self._connections.with_retries(attempt)
        if response.status_code in (401, 403):
            error = await _http.status_error(response, what=what)
            raise AuthenticationError(f"{error} ({self._hint(creds)})")
        if response.status_code != 200:
            raise await _http.status_error(response, what=what)
        body, truncated = await _http.read_capped(response, 1024 * 1024, what="token")
        if truncated:
            raise AuthenticationError(f"{what}: the token server's answer is too large")
        return parse_token_response(body, what=what)

    async def _authorization(
        self, endpoint: Endpoint, scopes: tuple[str, ...], creds: _Credentials | None
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

    async def request(
        self,
        endpoint: Endpoint,
        method: str,
        path_or_url: str | httpx.URL,
        *,
        repository: str,
        scopes: tuple[str, ...],
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        retry: bool = True,
        bulk: bool = False,
    ) -> httpx.Response:
        """One request with the credentials of ``repository`` (a ``Reference.name``), retried per policy
        (``retry=False``: one try, for callers that count failures themselves), its streaming response.

        A 401 is answered by fetching a fresh token (the cached one expired or was revoked) or, for
        ``error="insufficient_scope"``, a token for the scope the registry names; a second 401 is an
        :class:`AuthenticationError`. ``bulk`` uses the HTTP/1.1 client (blob bodies).
        """
        creds = await self._credentials(repository)
        base = await self._connections.ping(endpoint)
        client = self._connections.http_client(endpoint.host, endpoint.insecure, bulk=bulk)
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

            response = await (self._connections.with_retries(attempt) if retry else attempt())
            if response.status_code != 401 or reauthenticated:
                if response.status_code == 401:
                    raise await _http.authentication_error(response, hint=self._hint(creds))
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

    async def follow_redirects(
        self,
        endpoint: Endpoint,
        response: httpx.Response,
        *,
        repository: str,
        scopes: tuple[str, ...],
        headers: dict[str, str] | None = None,
        retry: bool = True,
        bulk: bool = False,
    ) -> httpx.Response:
        """``response`` (to a GET or HEAD), or where its redirects lead, at most :data:`MAX_REDIRECTS` hops.

        c/image sends its requests through Go's ``http.Client``, which follows redirects and drops
        ``Authorization`` when the target is another host (``shouldCopyHeaderOnRedirect``); so here: the
        endpoint's own origin (scheme, host and port: stricter than Go, which ignores the port) is asked with
        the credentials again, any other host anonymously (a CDN's signed URL needs none).
        """
        method = response.request.method
        first = response.request.url
        for _ in range(MAX_REDIRECTS):
            if response.status_code not in REDIRECT_STATUSES:
                return response
            location = response.headers.get("location")
            current = response.request.url
            await _http.discard(response)
            if not location:
                raise RegistryError(f"{method} {_http.display_url(current)}: redirect without Location")
            target = _http.join(current, location)
            base = httpx.URL(await self._connections.ping(endpoint))
            if (target.scheme, target.host, target.port) == (base.scheme, base.host, base.port):
                response = await self.request(endpoint, method, target, repository=repository, scopes=scopes,
                                              headers=headers, retry=retry, bulk=bulk)
                continue
            client = self._connections.http_client(target.netloc.decode("ascii"), False, bulk=bulk)

            def attempt(target: httpx.URL = target, client: httpx.AsyncClient = client) -> Awaitable[httpx.Response]:
                return _http.send(client, client.build_request(method, target, headers=headers))

            response = await (self._connections.with_retries(attempt) if retry else attempt())
        last = response.request.url
        await _http.discard(response)
        raise RegistryError(
            f"{method} {_http.display_url(first)}: more than {MAX_REDIRECTS} redirects (a redirect loop?), "
            f"the last to {_http.display_url(last)}"
        )
