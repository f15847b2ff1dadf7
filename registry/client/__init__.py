"""The registry I/O: the OCI distribution protocol over httpx, under trio. This package's public surface.

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

Modules, one concern each: ``core`` (httpx clients, endpoints, pings, retries), ``auth`` (credentials, Basic and
Bearer, the token cache), ``manifests`` (GETs with caps, first success over endpoints, resolution), ``blobs``
(the verified, resuming stream), ``push``, ``registry_client`` (the class delegating to them); ``_http`` (the one
boundary with httpx), ``_retry``, ``_ratelimit`` (its :class:`RateLimit` and ``TokenBucket``) and ``_tokens`` (sans-IO).
"""

from tether.registry.client._ratelimit import RateLimit, parse_rate
from tether.registry.client._retry import RetryPolicy
from tether.registry.client.blobs import Hasher
from tether.registry.client.manifests import MAX_SIGNATURE_LIST_SIZE, FetchedManifest, RegistryImage
from tether.registry.client.registry_client import DEFAULT_RETRY_POLICY, RegistryClient, open_registry_client

__all__ = [
    "DEFAULT_RETRY_POLICY",
    "MAX_SIGNATURE_LIST_SIZE",
    "FetchedManifest",
    "Hasher",
    "RateLimit",
    "RegistryClient",
    "RegistryImage",
    "RetryPolicy",
    "open_registry_client",
    "parse_rate",
]
