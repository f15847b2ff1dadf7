""":class:`RegistryClient`, the one object the engine talks to a registry through, and :func:`open_registry_client`.

The client holds one configuration (registries.conf, credentials, TLS settings, retry policy) and delegates
each concern to one object: :class:`~tether.registry.client.core.Connections` (httpx clients, endpoints, pings,
retries), :class:`~tether.registry.client.auth.Authenticator` (credentials, tokens, 401s),
:class:`~tether.registry.client.manifests.Manifests`, :class:`~tether.registry.client.blobs.Blobs` and
:class:`~tether.registry.client.push.Pusher`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path

import httpx

from tether.registry.auth import AuthFile, AuthFiles
from tether.registry.client._ratelimit import RateLimit
from tether.registry.client._retry import RetryPolicy
from tether.registry.client.auth import Authenticator
from tether.registry.client.blobs import Blobs, Hasher
from tether.registry.client.core import Connections
from tether.registry.client.manifests import FetchedManifest, Manifests, RegistryImage
from tether.registry.client.push import Pusher
from tether.registry.errors import RegistryError
from tether.registry.manifest import Descriptor, Platform
from tether.registry.reference import Reference
from tether.registry.registries_conf import PullSource, RegistriesConf, pull_sources

__all__ = ["DEFAULT_RETRY_POLICY", "RegistryClient", "open_registry_client"]

DEFAULT_RETRY_POLICY = RetryPolicy()


class RegistryClient:
    """Pulls and pushes through one set of registries.conf, credentials and TLS settings.

    Use :func:`open_registry_client`; every method may be called concurrently from many tasks.
    """

    def __init__(
        self,
        *,
        registries: RegistriesConf,
        auth: AuthFile | AuthFiles,
        cert_dir: Path | None,
        tls_verify: bool | None,
        max_connections_per_host: int,
        retry_policy: RetryPolicy,
        exit_stack: AsyncExitStack,
        cert_search_dirs: Sequence[Path] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        rate_limit: RateLimit | None = None,
    ) -> None:
        self._connections = Connections(
            cert_dir=cert_dir,
            cert_search_dirs=cert_search_dirs,
            tls_verify=tls_verify,
            max_connections_per_host=max_connections_per_host,
            retry_policy=retry_policy,
            exit_stack=exit_stack,
            transport=transport,
            receive_buffer=rate_limit.receive_buffer if rate_limit is not None else None,
        )
        self._registries = registries
        self._auth = Authenticator(self._connections, registries=registries, auth=auth)
        self._blobs = Blobs(self._connections, self._auth, rate_limit=rate_limit)
        self._manifests = Manifests(self._connections, self._auth, self._blobs, registries)
        self._pusher = Pusher(self._connections, self._auth, registries)

    @property
    def retry_policy(self) -> RetryPolicy:
        """How hard each endpoint is tried."""
        return self._connections.retry_policy

    @property
    def tokens_fetched(self) -> int:
        """Tokens fetched from token servers so far (for tests and diagnostics)."""
        return self._auth.tokens_fetched

    # ---- manifests

    async def prepare(self, refs: Sequence[Reference], *, ping: bool = True) -> None:
        """Announce the references about to be read and (``ping``) ping their first endpoint now; never raises
        (the requests that follow report what fails).

        Announced repositories of one registry share its token requests: the first carries every
        repository's ``scope`` (c/image asks one token per repository). Pinging ahead lets a caller's local
        work (the store listing) overlap the ping's round trips; it tries once, the next request retries.
        """
        first: list[PullSource] = []
        for ref in refs:
            try:
                sources = pull_sources(self._registries, ref)
            except RegistryError:  # blocked: the request says so
                continue
            self._auth.announce(sources)
            ordered = self._connections.by_reachability(sources)
            if ordered:
                first.append(ordered[0])
        for source in first if ping else ():
            with contextlib.suppress(RegistryError):
                await self._connections.ping(self._connections.source_endpoint(source), retry=False)

    async def fetch_manifest(self, ref: Reference) -> FetchedManifest:
        """The manifest (or index) of ``ref`` from the first endpoint of ``pull_sources`` that serves it.

        Mirrors are tried first and the primary last; any error moves on to the next endpoint
        (c/image ``docker_image_src.go newImageSource``). ``BlockedRegistryError`` before any request.
        """
        return await self._manifests.fetch(ref)

    async def manifest_digest(self, ref: Reference) -> str | None:
        """The digest of what ``ref`` points at, from a ``HEAD`` of its manifest (endpoints as
        :meth:`fetch_manifest` tries them); ``None`` when the registry answers without a usable
        ``Docker-Content-Digest`` (then only :meth:`fetch_manifest` tells).

        A HEAD moves no manifest and, on Docker Hub, does not count against the pull rate limit (c/image
        ``docker.GetDigest``); an up-to-date check needs nothing more when the store has that digest.
        """
        return await self._manifests.digest(ref)

    async def resolve_image(self, ref: Reference, *, platform: Platform | None = None,
                            top: FetchedManifest | None = None) -> RegistryImage:
        """``ref`` resolved to one platform's manifest and its config (:func:`tether.registry.resolve.resolve_image`),
        everything from one endpoint: mirrors, then the primary, the first that serves all of it.

        ``platform`` defaults to the host's. ``top`` is ``ref``'s manifest or index when the caller already
        fetched it (:meth:`fetch_manifest`, e.g. for an up-to-date check): its endpoint is tried first with those
        bytes; if it fails later, the other endpoints are tried, each fetching its own. The endpoint that served
        the manifest comes first in :attr:`RegistryImage.sources`, then the others in ``pull_sources`` order.
        """
        return await self._manifests.resolve(ref, platform=platform, top=top)

    async def list_tags(self, source: PullSource, *, max_pages: int = 100) -> tuple[str, ...]:
        """The repository's tags at ``source`` (``GET /v2/<name>/tags/list``, ``Link`` pages followed).

        c/image ``docker.GetRepositoryTags`` asks the reference's registry; tether asks the endpoint
        given (the one that served the manifest), so ``inspect`` shows what that endpoint has.
        """
        return await self._manifests.list_tags(source, max_pages=max_pages)

    async def fetch_signature_extension(self, repository: Reference, digest: str) -> bytes | None:
        """The signature list of ``repository@digest`` from the registry's API extension, or ``None`` when
        the ping did not announce ``X-Registry-Supports-Signatures: 1`` (then lookaside stores apply).

        ``GET /extensions/v2/<name>/signatures/<digest>`` (c/image: docker_image_src.go
        getSignaturesFromAPIExtension); the body is capped at
        :data:`~tether.registry.client.manifests.MAX_SIGNATURE_LIST_SIZE`.
        """
        return await self._manifests.signature_extension(repository, digest)

    # ---- blobs

    def open_blob(
        self,
        sources: Sequence[PullSource],
        descriptor: Descriptor,
        *,
        chunk_size: int = 0,
        offset: int = 0,
        hasher: Hasher | None = None,
    ) -> AbstractAsyncContextManager[AsyncIterator[bytes]]:
        """Stream a blob, verified: its bytes as received (``chunk_size`` > 0: joined into pieces of at
        least that size, which costs a copy; measured ~15% more client CPU for 1 MiB pieces).

        Never more than ``descriptor.size`` bytes are accepted; the digest is checked when the
        last byte has arrived (:class:`DigestMismatchError` from the iterator then). Drops are
        resumed with ``Range``, retryable failures retried, and an endpoint that keeps failing is
        replaced by the next of ``sources`` for the rest of the blob.

        ``offset``: the caller has the blob's first ``offset`` bytes already (kept from an earlier run) and
        ``hasher`` has hashed exactly those; only the rest is fetched (``Range``, no request at all when
        ``offset`` is the size) and the digest is checked over the whole. The run's ``rate_limit`` (see
        :func:`open_registry_client`) paces every stream.
        """
        return self._blobs.open(sources, descriptor, chunk_size=chunk_size, offset=offset, hasher=hasher)

    async def fetch_blob(self, sources: Sequence[PullSource], descriptor: Descriptor, *, max_size: int) -> bytes:
        """A whole (small) blob, verified; :class:`RegistryError` if it is declared larger than ``max_size``."""
        return await self._blobs.fetch(sources, descriptor, max_size=max_size)

    # ---- push

    async def blob_exists(self, ref: Reference, digest: str) -> bool:
        """``HEAD /v2/<name>/blobs/<digest>``: whether the repository has the blob."""
        return await self._pusher.blob_exists(ref, digest)

    async def mount_blob(self, ref: Reference, digest: str, *, from_repository: str) -> bool:
        """Cross-repository mount (``POST .../blobs/uploads/?mount=&from=``): True if mounted (201).

        A 202 means the registry started an upload instead; that upload is cancelled and False returned.
        """
        return await self._pusher.mount_blob(ref, digest, from_repository=from_repository)

    async def upload_blob(self, ref: Reference, descriptor: Descriptor, chunks: AsyncIterable[bytes]) -> None:
        """Upload a blob: ``POST`` then one ``PUT`` (small), or ``PATCH`` pieces then ``PUT`` (large).

        The bytes are checked against ``descriptor`` (size and digest) before the final ``PUT``.
        """
        await self._pusher.upload_blob(ref, descriptor, chunks)

    async def put_manifest(self, ref: Reference, raw: bytes, media_type: str) -> str:
        """``PUT`` a manifest under ``ref``'s tag (else its digest); returns the manifest digest."""
        return await self._pusher.put_manifest(ref, raw, media_type)


@asynccontextmanager
async def open_registry_client(
    *,
    registries: RegistriesConf,
    auth: AuthFile | AuthFiles,
    cert_dir: Path | None = None,
    tls_verify: bool | None = None,
    max_connections_per_host: int = 8,
    retry_policy: RetryPolicy = DEFAULT_RETRY_POLICY,
    cert_search_dirs: Sequence[Path] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    rate_limit: RateLimit | None = None,
) -> AsyncIterator[RegistryClient]:
    """A :class:`RegistryClient` for one configuration; its connections close on exit.

    ``auth`` is a loaded containers-auth.json (:func:`tether.registry.auth.load_auth_file`) or the files of a
    lookup (:func:`tether.registry.auth.load_auth_files`; a 401 names them); ``cert_dir``
    replaces the certs.d lookup (``--cert-dir``); ``tls_verify`` overrides registries.conf's
    ``insecure`` either way when set. ``retry_policy`` tunes retries and timeouts;
    ``cert_search_dirs`` replaces the certs.d parents searched for ``HOST[:PORT]/`` (default
    :func:`tether.registry.certs.cert_search_dirs`). ``transport`` replaces the network for every host
    (``httpx.MockTransport`` in protocol tests). ``rate_limit`` caps the bytes per second of every blob
    stream together; one :class:`~tether.registry.client._ratelimit.RateLimit` may be shared by several clients.
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
            rate_limit=rate_limit,
        )
