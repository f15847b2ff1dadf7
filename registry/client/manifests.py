"""Manifests: GET with caps and checks, the first endpoint that serves, resolution per endpoint, tag lists.

A manifest is read whole, at most :data:`~tether.registry.manifest.MAX_MANIFEST_SIZE` bytes (c/image
``iolimits.maxManifestBodySize``), its digest checked against the reference's digest and the registry's
``Docker-Content-Digest``, its media type taken from ``Content-Type`` unless generic
(:func:`~tether.registry.manifest.parse_manifest`). Endpoints are tried as c/image ``docker_image_src.go``
``newImageSource`` tries them: mirrors first, the primary last, any error moving on to the next; endpoints found
unreachable lately go last. An image is resolved (:func:`tether.registry.resolve.resolve_image`) with everything
from the one endpoint that served its top manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import httpx
import trio

import tether.registry.client._http as _http
from tether.registry.client.auth import Authenticator
from tether.registry.client.blobs import Blobs
from tether.registry.client.core import (
    Connections,
    gave_up,
    outage_waited,
    registry_endpoint,
    repository_scope,
    with_message,
)
from tether.registry.errors import (
    ConnectionFailedError,
    DigestMismatchError,
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
    Platform,
    parse_manifest,
    validate_digest,
)
from tether.registry.reference import Reference
from tether.registry.registries_conf import PullSource, RegistriesConf, pull_sources
from tether.registry.resolve import RawManifest, ResolvedImage, resolve_image

__all__ = ["MAX_SIGNATURE_LIST_SIZE", "FetchedManifest", "Manifests", "RegistryImage", "first_success"]

logger = logging.getLogger("tether.registry.client")

#: Cap of the signature API extension's answer (c/image: iolimits.maxSignatureListBodySize, 4 MiB).
MAX_SIGNATURE_LIST_SIZE = 4 * 1024 * 1024

_T = TypeVar("_T")


@dataclass(frozen=True)
class FetchedManifest(RawManifest):
    """A manifest or index as a registry served it: its bytes, media type (Content-Type, checked against the
    body) and digest, and the endpoint (``source``) that served it."""

    source: PullSource


@dataclass(frozen=True)
class RegistryImage(ResolvedImage):
    """An image resolved to one platform's manifest and its config, every piece from one endpoint.

    ``top`` is what ``reference`` points at (an index, or the manifest itself), ``manifest`` the image
    manifest chosen (:attr:`index` is ``top`` when they differ), both as served. ``sources`` are the blob
    endpoints: the one that served the manifest first, then the other ``pull_sources`` in order.
    """

    top: FetchedManifest
    manifest: FetchedManifest
    reference: Reference
    sources: tuple[PullSource, ...]

    @property
    def index(self) -> FetchedManifest | None:
        """The index the manifest was chosen from, if ``reference`` points at one."""
        return self.top if self.top.digest != self.manifest.digest else None


def _fetched(manifest: RawManifest) -> FetchedManifest:
    if not isinstance(manifest, FetchedManifest):  # pragma: no cover - _EndpointReader returns nothing else
        raise TypeError(f"expected a FetchedManifest, got {type(manifest).__name__}")
    return manifest


async def first_success(
    connections: Connections,
    sources: Sequence[PullSource],
    attempt: Callable[[PullSource], Awaitable[_T]],
    *,
    first: PullSource | None = None,
) -> _T:
    """``attempt`` at each of ``sources`` until one succeeds (``first``, if given, before the others; recently
    unreachable endpoints last); the last error, naming the others, when none does.

    The last endpoint, when it refuses or drops connections, is retried for the retry policy's
    ``outage_timeout`` (a registry being restarted), as blobs are.
    """
    order = connections.by_reachability(sources)
    if first is not None:
        order = (first, *(s for s in order if s != first))
    errors: list[tuple[PullSource, RegistryError]] = []
    policy = connections.retry_policy
    for index, source in enumerate(order):
        down_since: float | None = None
        failures = 0
        while True:
            try:
                return await attempt(source)
            except RegistryError as exc:
                now = trio.current_time()
                if (
                    isinstance(exc, TransportError)
                    and not isinstance(exc, TLSError)
                    and not outage_waited(exc)  # a blob of the resolution waited already
                    and index == len(order) - 1
                ):
                    down_since = now if down_since is None else down_since
                    failures += 1
                    if now - down_since < policy.outage_timeout:
                        logger.info("%s: %s; the registry seems down, retrying for up to %.0f s more",
                                    source.reference.domain, exc, policy.outage_timeout - (now - down_since))
                        await trio.sleep(policy.outage_delay(failures))
                        continue
                    exc = gave_up(exc, now - down_since)
                if isinstance(exc, ConnectionFailedError):
                    connections.mark_unreachable(source)
                if len(order) > 1:
                    logger.info("%s: %s; trying the next endpoint", source.reference.domain, exc)
                errors.append((source, exc))
                break
    assert errors, "pull_sources returned no endpoint"
    last = errors[-1][1]
    if len(errors) == 1:
        raise last
    others = "; ".join(f"{s.reference.domain}: {e}" for s, e in errors[:-1])
    raise with_message(last, f"{last} (also tried: {others})")


class _EndpointReader:
    """A :class:`tether.registry.resolve.ImageReader` bound to one endpoint: the top manifest, the children by
    digest and the config all come from ``source``."""

    def __init__(self, manifests: Manifests, blobs: Blobs, source: PullSource) -> None:
        self._manifests = manifests
        self._blobs = blobs
        self._source = source

    @property
    def description(self) -> str:
        return str(self._source.reference)

    async def read_top(self) -> FetchedManifest:
        return await self._manifests.fetch_at(self._source, self._source.reference)

    async def read_manifest(self, descriptor: Descriptor) -> FetchedManifest:
        ref = self._source.reference
        return await self._manifests.fetch_at(self._source, Reference(ref.domain, ref.path, None, descriptor.digest))

    async def read_config(self, descriptor: Descriptor) -> bytes:
        return await self._blobs.fetch((self._source,), descriptor, max_size=MAX_CONFIG_SIZE)


class Manifests:
    """The manifest half of one client (and the other small GETs: tag lists, the signature extension)."""

    def __init__(self, connections: Connections, auth: Authenticator, blobs: Blobs, registries: RegistriesConf) -> None:
        self._connections = connections
        self._auth = auth
        self._blobs = blobs
        self._registries = registries

    async def _request(self, source: PullSource, ref: Reference, method: str) -> httpx.Response:
        """``method`` of ``ref``'s manifest at the endpoint of ``source``, redirects followed; a status other
        than 200 is raised as the registry's error."""
        endpoint = self._connections.endpoint(ref.registry_host, source.insecure)
        scopes = (repository_scope(ref.path, "pull"),)
        headers = {"Accept": ", ".join(ACCEPTED_MANIFEST_TYPES)}
        response = await self._auth.request(
            endpoint, method, f"/v2/{ref.path}/manifests/{ref.identifier}", repository=ref.name, scopes=scopes,
            headers=headers,
        )
        # podman follows a manifest request's redirects (Go's http.Client); so does tether, as for blobs
        response = await self._auth.follow_redirects(endpoint, response, repository=ref.name, scopes=scopes,
                                                     headers=headers)
        if response.status_code != 200:
            raise await _http.status_error(response)
        return response

    async def fetch_at(self, source: PullSource, ref: Reference) -> FetchedManifest:
        """``ref``'s manifest from the endpoint of ``source`` (``ref`` is a physical reference there)."""
        response = await self._request(source, ref, "GET")
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

    async def digest_at(self, source: PullSource, ref: Reference) -> str | None:
        """``HEAD`` of ``ref``'s manifest at the endpoint of ``source``: the ``Docker-Content-Digest`` it
        answers with (the digest a GET would serve, same ``Accept``), or ``None`` when it sends none usable."""
        response = await self._request(source, ref, "HEAD")
        served = response.headers.get("docker-content-digest")
        await response.aclose()
        try:
            return validate_digest(served)
        except ManifestError:
            return None

    async def digest(self, ref: Reference) -> str | None:
        """See :meth:`tether.registry.client.RegistryClient.manifest_digest`."""
        sources = pull_sources(self._registries, ref)
        return await first_success(self._connections, sources, lambda s: self.digest_at(s, s.reference))

    async def fetch(self, ref: Reference) -> FetchedManifest:
        """See :meth:`tether.registry.client.RegistryClient.fetch_manifest`."""
        sources = pull_sources(self._registries, ref)
        return await first_success(self._connections, sources, lambda s: self.fetch_at(s, s.reference))

    async def resolve(self, ref: Reference, *, platform: Platform | None = None,
                      top: FetchedManifest | None = None) -> RegistryImage:
        """See :meth:`tether.registry.client.RegistryClient.resolve_image`."""
        sources = pull_sources(self._registries, ref)

        async def attempt(source: PullSource) -> RegistryImage:
            reader = _EndpointReader(self, self._blobs, source)
            given = top if top is not None and top.source == source else None
            resolved = await resolve_image(reader, platform=platform, top=given)
            return RegistryImage(
                top=_fetched(resolved.top),
                manifest=_fetched(resolved.manifest),
                parsed=resolved.parsed,
                config_raw=resolved.config_raw,
                config=resolved.config,
                reference=ref,
                sources=(source, *(s for s in sources if s != source)),
            )

        return await first_success(self._connections, sources, attempt, first=top.source if top is not None else None)

    async def list_tags(self, source: PullSource, *, max_pages: int = 100) -> tuple[str, ...]:
        """See :meth:`tether.registry.client.RegistryClient.list_tags`."""
        ref = source.reference
        endpoint = self._connections.source_endpoint(source)
        scopes = (repository_scope(ref.path, "pull"),)
        url: str | httpx.URL = f"/v2/{ref.path}/tags/list"
        tags: list[str] = []
        for _ in range(max_pages):
            response = await self._auth.request(endpoint, "GET", url, repository=ref.name, scopes=scopes)
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
            url = _http.join(request_url, match.group(1))
        raise RegistryError(f"listing tags of {ref.name}: more than {max_pages} pages")

    async def signature_extension(self, repository: Reference, digest: str) -> bytes | None:
        """See :meth:`tether.registry.client.RegistryClient.fetch_signature_extension`."""
        endpoint = registry_endpoint(self._connections, self._registries, repository)
        await self._connections.ping(endpoint)
        if not endpoint.supports_signatures:
            return None
        response = await self._auth.request(
            endpoint,
            "GET",
            f"/extensions/v2/{repository.path}/signatures/{digest}",
            repository=repository.name,
            scopes=(repository_scope(repository.path, "pull"),),
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
