"""Pushing to a registry (``tether mirror sync``): blob HEAD, cross-repository mount, upload, manifest PUT.

The OCI distribution spec's push flow, as c/image ``docker/docker_image_dest.go`` does it: ``HEAD`` a blob
first; else ``POST .../blobs/uploads/?mount=<digest>&from=<repo>`` (``201``: mounted); else upload it,
monolithically (``POST`` then one ``PUT ?digest=``) up to :data:`MONOLITHIC_UPLOAD_MAX`, in ``PATCH`` pieces of
:data:`UPLOAD_CHUNK` above; manifests last (``PUT .../manifests/<tag or digest>``). Pushes go to the
reference's own registry, never to a mirror.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterable

import httpx

import tether.registry.client._http as _http
from tether.registry.client.auth import Authenticator
from tether.registry.client.core import Connections, registry_endpoint, repository_scope
from tether.registry.errors import DigestMismatchError, RegistryError
from tether.registry.manifest import Descriptor
from tether.registry.reference import Reference
from tether.registry.registries_conf import RegistriesConf

__all__ = ["MONOLITHIC_UPLOAD_MAX", "UPLOAD_CHUNK", "Pusher"]

logger = logging.getLogger("tether.registry.client")

#: Blobs up to this size are uploaded with one PUT; larger ones with PATCH pieces of this size.
MONOLITHIC_UPLOAD_MAX = 32 * 1024 * 1024
UPLOAD_CHUNK = 32 * 1024 * 1024


def _upload_location(response: httpx.Response) -> httpx.URL:
    location = response.headers.get("location")
    if not location:
        raise RegistryError(
            f"{response.request.method} {_http.display_url(response.request.url)}: "
            f"{response.status_code} without a Location header"
        )
    return _http.join(response.request.url, location)


class Pusher:
    """The push half of one client."""

    def __init__(self, connections: Connections, auth: Authenticator, registries: RegistriesConf) -> None:
        self._connections = connections
        self._auth = auth
        self._registries = registries

    async def blob_exists(self, ref: Reference, digest: str) -> bool:
        """See :meth:`tether.registry.client.RegistryClient.blob_exists`."""
        response = await self._auth.request(
            registry_endpoint(self._connections, self._registries, ref),
            "HEAD",
            f"/v2/{ref.path}/blobs/{digest}",
            repository=ref.name,
            scopes=(repository_scope(ref.path, "pull,push"),),
        )
        if response.status_code == 200:
            await _http.discard(response)
            return True
        if response.status_code == 404:
            await _http.discard(response)
            return False
        raise await _http.status_error(response)

    async def mount_blob(self, ref: Reference, digest: str, *, from_repository: str) -> bool:
        """See :meth:`tether.registry.client.RegistryClient.mount_blob`."""
        endpoint = registry_endpoint(self._connections, self._registries, ref)
        url = httpx.URL(await self._connections.ping(endpoint) + f"/v2/{ref.path}/blobs/uploads/").copy_merge_params(
            {"mount": digest, "from": from_repository}
        )
        scopes = (repository_scope(ref.path, "pull,push"), repository_scope(from_repository, "pull"))
        response = await self._auth.request(endpoint, "POST", url, repository=ref.name, scopes=scopes)
        if response.status_code == 201:
            await _http.discard(response)
            return True
        if response.status_code == 202:
            location = response.headers.get("location")
            await _http.discard(response)
            if location:
                try:
                    target = _http.join(response.request.url, location)
                    cancel = await self._auth.request(
                        endpoint, "DELETE", target, repository=ref.name, scopes=scopes, retry=False
                    )
                    await _http.discard(cancel)
                except RegistryError as exc:  # the registry purges abandoned uploads anyway
                    logger.debug("cancelling the upload started instead of a mount: %s", exc)
            return False
        raise await _http.status_error(response)

    async def upload_blob(self, ref: Reference, descriptor: Descriptor, chunks: AsyncIterable[bytes]) -> None:
        """See :meth:`tether.registry.client.RegistryClient.upload_blob`."""
        endpoint = registry_endpoint(self._connections, self._registries, ref)
        scopes = (repository_scope(ref.path, "pull,push"),)
        response = await self._auth.request(
            endpoint, "POST", f"/v2/{ref.path}/blobs/uploads/", repository=ref.name, scopes=scopes
        )
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
            answer = await self._auth.request(
                endpoint,
                "PATCH",
                location,
                repository=ref.name,
                scopes=scopes,
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
        response = await self._auth.request(
            endpoint, "PUT", final, repository=ref.name, scopes=scopes, headers=headers, content=body, retry=False,
            bulk=True
        )
        if response.status_code != 201:
            raise await _http.status_error(response)
        await _http.discard(response)

    async def put_manifest(self, ref: Reference, raw: bytes, media_type: str) -> str:
        """See :meth:`tether.registry.client.RegistryClient.put_manifest`."""
        digest = f"sha256:{hashlib.sha256(raw).hexdigest()}"
        if ref.digest is not None and ref.tag is None and ref.digest != digest:
            raise DigestMismatchError(f"pushing {ref}: the manifest's digest is {digest}")
        identifier = ref.tag or ref.digest or "latest"
        response = await self._auth.request(
            registry_endpoint(self._connections, self._registries, ref),
            "PUT",
            f"/v2/{ref.path}/manifests/{identifier}",
            repository=ref.name,
            scopes=(repository_scope(ref.path, "pull,push"),),
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
