"""Reading image signatures where containers/image stores them, and copying them to a mirror (the I/O half).

``docker/docker_image_src.go`` ``GetSignaturesWithFormat``: the registry's signature API extension when the ping
announced it (``X-Registry-Supports-Signatures: 1``, OpenShift), else lookaside stores
(``<base>/<repo>@<algo>=<hex>/signature-<n>``, n = 1, 2, ... until the first missing one; ``file://`` and
``http(s)://``; the base from :mod:`tether.registry.trust.registries_d`), then sigstore attachments (the
``sha256-<hex>.sig`` tag: an OCI manifest whose layers are the signatures). Everything is read from the
*physical* repository that served the image (a mirror, when a mirror served it). Nothing here verifies:
signatures are data for :mod:`tether.registry.trust.evaluate`.
"""

from __future__ import annotations

import binascii
import json
import os
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import trio

from tether.registry.client import RegistryClient
from tether.registry.client._http import read_capped
from tether.registry.errors import HTTPStatusError, InvalidSignatureError, PolicyError, RegistryError
from tether.registry.manifest import Descriptor, ImageManifest, parse_manifest
from tether.registry.reference import Reference
from tether.registry.registries_conf import PullSource
from tether.registry.trust.registries_d import RegistriesD, lookaside_signature_url
from tether.registry.trust.signature import (
    MAX_SIGNATURE_SIZE,
    Signature,
    SigstoreSignature,
    SimpleSigningSignature,
    go_b64decode,
    is_valid_digest,
    parse_signature_blob,
)

__all__ = [
    "CopiedSignatures",
    "SigstoreAttachments",
    "copy_signatures",
    "fetch_signatures",
    "fetch_sigstore_attachments",
    "parse_extension_signatures",
    "read_lookaside_blobs",
    "read_lookaside_signatures",
    "sigstore_attachment_tag",
    "write_lookaside_blobs",
]

#: A sanity cap on lookaside signatures per image (containers/image has none; a broken server must not loop us).
MAX_LOOKASIDE_SIGNATURES = 1024
OCI_MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"


def sigstore_attachment_tag(manifest_digest: str) -> str:
    """``sigstoreAttachmentTag``: ``sha256:<hex>`` -> ``sha256-<hex>.sig``."""
    if not is_valid_digest(manifest_digest):
        raise PolicyError(f"invalid manifest digest {manifest_digest!r}")
    return manifest_digest.replace(":", "-", 1) + ".sig"


def _read_file_url(url: str) -> bytes | None:
    path = urllib.parse.unquote(urllib.parse.urlsplit(url).path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SIGNATURE_SIZE + 1)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None
    except OSError as exc:
        raise PolicyError(f"reading signature {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_SIGNATURE_SIZE:
        raise PolicyError(f"reading signature {path}: larger than {MAX_SIGNATURE_SIZE} bytes")
    return data


def _redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        parts = parts._replace(netloc=f"***@{host}")
    return urllib.parse.urlunsplit(parts)


async def _read_http_signature(http: httpx.AsyncClient, url: str) -> bytes | None:
    """One lookaside signature over HTTP (None: 404, the end of the list), read up to MAX_SIGNATURE_SIZE and no
    further: a body over the cap, announced or not (one without Content-Length may never end), is refused as
    c/image's ``iolimits.ReadAtMost(res.Body, iolimits.MaxSignatureBodySize)`` refuses it."""
    where = f"reading signature from {_redact(url)}"
    try:
        async with http.stream("GET", url) as response:
            if response.status_code == 404:
                return None
            if response.status_code != 200:
                raise PolicyError(f"{where}: status {response.status_code}")
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > MAX_SIGNATURE_SIZE:
                raise PolicyError(f"{where}: signature is {declared} bytes, more than the {MAX_SIGNATURE_SIZE} "
                                  "byte limit")
            # the client's capped read: it also closes an abandoned body without leaving httpx's generators to
            # the garbage collector
            data, truncated = await read_capped(response, MAX_SIGNATURE_SIZE, what="signature")
            if truncated:
                raise PolicyError(f"{where}: signature is more than the {MAX_SIGNATURE_SIZE} byte limit")
            return data
    except PolicyError:
        raise
    except RegistryError as exc:  # read_capped's mapped transport errors
        raise PolicyError(f"{where}: {exc}") from None
    except Exception as exc:  # fail closed, whatever the HTTP stack raised
        raise PolicyError(f"{where}: {exc}") from None


async def read_lookaside_blobs(base: str, manifest_digest: str, *, http: httpx.AsyncClient | None = None
                               ) -> tuple[bytes, ...]:
    """The raw lookaside signature files of one manifest: ``signature-1``, ``-2``... up to the first missing.

    ``file://`` is read from disk, ``http(s)://`` with GET (404 = missing, any other failure is an error).
    """
    scheme = urllib.parse.urlsplit(base).scheme
    if scheme not in ("file", "http", "https"):
        raise PolicyError(f"Unsupported scheme when reading signature from {_redact(base)}")
    blobs: list[bytes] = []
    own_client = None
    try:
        for index in range(MAX_LOOKASIDE_SIGNATURES):
            url = lookaside_signature_url(base, manifest_digest, index)
            if scheme == "file":
                data = await trio.to_thread.run_sync(_read_file_url, url)
            else:
                if http is None:
                    own_client = http = httpx.AsyncClient(timeout=60, follow_redirects=True)
                data = await _read_http_signature(http, url)
            if data is None:
                break
            blobs.append(data)
    finally:
        if own_client is not None:
            await own_client.aclose()
    return tuple(blobs)


async def read_lookaside_signatures(base: str, manifest_digest: str, *, http: httpx.AsyncClient | None = None
                                    ) -> tuple[Signature, ...]:
    """:func:`read_lookaside_blobs`, decoded (an undecodable file is an error, as in containers/image)."""
    out = []
    for index, blob in enumerate(await read_lookaside_blobs(base, manifest_digest, http=http)):
        where = _redact(lookaside_signature_url(base, manifest_digest, index))
        try:
            out.append(parse_signature_blob(blob, where=f"parsing signature {where}"))
        except InvalidSignatureError as exc:
            raise PolicyError(str(exc)) from None
    return tuple(out)


def parse_extension_signatures(body: bytes, *, where: str = "signature list") -> tuple[SimpleSigningSignature, ...]:
    """The ``X-Registry-Supports-Signatures`` API extension's answer (OpenShift's registry):
    ``{"signatures": [{"schemaVersion": 2, "type": "atomic", "name": ..., "content": base64}]}``; entries of
    another version or type are skipped (containers/image ``getSignaturesFromAPIExtension``)."""
    if len(body) > MAX_SIGNATURE_SIZE:
        raise PolicyError(f"{where}: larger than {MAX_SIGNATURE_SIZE} bytes")
    try:
        obj = json.loads(body)
        entries = obj.get("signatures") or []
        if not isinstance(entries, list):
            raise TypeError("signatures is not a list")
        out = []
        for entry in entries:
            if not isinstance(entry, dict):
                raise TypeError("a signature entry is not an object")
            if entry.get("schemaVersion") == 2 and entry.get("type") == "atomic":
                out.append(SimpleSigningSignature(go_b64decode(entry.get("content") or "")))
    except (ValueError, TypeError, AttributeError, binascii.Error) as exc:
        raise PolicyError(f"decoding {where}: {exc}") from None
    return tuple(out)


@dataclass(frozen=True)
class SigstoreAttachments:
    """The ``sha256-<hex>.sig`` manifest of one image and its layers' bytes (in manifest order)."""

    reference: Reference          # the .sig tag reference it was read from
    manifest_raw: bytes
    media_type: str
    source: PullSource
    layers: tuple[tuple[Descriptor, bytes], ...]   # (descriptor, payload)

    def signatures(self) -> tuple[SigstoreSignature, ...]:
        """Every layer as a :class:`SigstoreSignature` (consumers filter on the MIME type)."""
        return tuple(SigstoreSignature(desc.media_type, payload, dict(desc.annotations))
                     for desc, payload in self.layers)


async def fetch_sigstore_attachments(client: RegistryClient, repository: Reference, manifest_digest: str, *,
                                     with_config: bool = False) -> SigstoreAttachments | None:
    """Read the sigstore attachment manifest (``getSigstoreAttachmentManifest``) and its layers.

    ``repository`` is the physical repository that served the image (tag/digest ignored). A 404 means
    no attachments (``None``); another media type than an OCI manifest is an error.
    ``with_config`` also fetches the config blob (for copying), returned as the first ``layers`` entry.
    """
    tag = sigstore_attachment_tag(manifest_digest)
    sig_ref = repository.trimmed().with_tag(tag)
    try:
        fetched = await client.fetch_manifest(sig_ref)
    except HTTPStatusError as exc:
        if exc.status == 404:
            return None
        raise
    media_type = fetched.media_type.split(";", 1)[0].strip()
    if media_type != OCI_MANIFEST_MEDIA_TYPE:
        raise PolicyError(f"unexpected MIME type for sigstore attachment manifest {sig_ref}: {media_type!r}")
    parsed = parse_manifest(fetched.raw, media_type)
    if not isinstance(parsed, ImageManifest):
        raise PolicyError(f"sigstore attachment manifest {sig_ref} is not an image manifest")
    descriptors = ((parsed.config,) if with_config else ()) + tuple(parsed.layers)
    layers = []
    for desc in descriptors:
        payload = await client.fetch_blob((fetched.source,), desc, max_size=MAX_SIGNATURE_SIZE)
        layers.append((desc, payload))
    return SigstoreAttachments(reference=sig_ref, manifest_raw=fetched.raw, media_type=media_type,
                               source=fetched.source, layers=tuple(layers))


async def fetch_signatures(*, client: RegistryClient | None, repository: Reference, manifest_digest: str,
                           registries_d: RegistriesD, sigstore: bool = True,
                           http: httpx.AsyncClient | None = None) -> tuple[Signature, ...]:
    """All signatures of one image manifest, as containers/image's ``GetSignaturesWithFormat`` collects them.

    ``repository`` is the *physical* repository that served the manifest. The registry's signature API
    extension if it offers one, else lookaside (configured for that repository in registries.d, else the
    built-in directory); then sigstore attachments when
    ``use-sigstore-attachments`` is on for it (and ``sigstore`` is true: skipping them is only an
    optimisation when no ``sigstoreSigned`` requirement applies).
    """
    sigs: list[Signature] = []
    # The X-Registry-Supports-Signatures extension replaces lookaside when the registry offers it
    # (``fetch_signature_extension`` answers None when it is not offered).
    body = await client.fetch_signature_extension(repository, manifest_digest) if client is not None else None
    if body is not None:
        sigs.extend(parse_extension_signatures(body, where=f"signature list of {repository.name}@{manifest_digest}"))
    else:
        base = registries_d.lookaside_base(repository)
        sigs.extend(await read_lookaside_signatures(base, manifest_digest, http=http))
    if sigstore and registries_d.use_sigstore_attachments(repository):
        if client is None:
            raise PolicyError(f"{repository}: sigstore attachments need a registry client")
        attachments = await fetch_sigstore_attachments(client, repository, manifest_digest)
        if attachments is not None:
            sigs.extend(attachments.signatures())
    return tuple(sigs)


# ---------------------------------------------------------------------------------------------------------
# copying (mirror sync)


@dataclass(frozen=True)
class CopiedSignatures:
    """What :func:`copy_signatures` copied for one manifest."""

    lookaside: int = 0
    sigstore_attachment: str | None = None   # the .sig tag written, if any


def _write_file_url(url: str, data: bytes) -> None:
    path = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


async def write_lookaside_blobs(base: str, manifest_digest: str, blobs: Sequence[bytes]) -> None:
    """Write ``signature-1..n`` under a ``file://`` lookaside base (http(s) writing is unsupported,
    as in containers/image), removing stale higher-numbered files so readers stop at n."""
    if urllib.parse.urlsplit(base).scheme != "file":
        raise PolicyError(f"writing signatures to {_redact(base)} is not supported (only file:// lookaside)")
    for index, blob in enumerate(blobs):
        await trio.to_thread.run_sync(_write_file_url, lookaside_signature_url(base, manifest_digest, index), blob)
    stale = urllib.parse.unquote(urllib.parse.urlsplit(
        lookaside_signature_url(base, manifest_digest, len(blobs))).path)
    await trio.to_thread.run_sync(lambda: Path(stale).unlink(missing_ok=True))


async def _single_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def copy_signatures(*, source_client: RegistryClient, source_repository: Reference,
                          dest_client: RegistryClient | None, dest_repository: Reference | None,
                          manifest_digest: str, registries_d: RegistriesD,
                          dest_lookaside_base: str | None = None,
                          http: httpx.AsyncClient | None = None) -> CopiedSignatures:
    """Copy one manifest's signatures from a source repository to a mirror (``tether mirror sync``).

    * sigstore attachments (when ``use-sigstore-attachments`` is on for the source in registries.d):
      the ``sha256-<hex>.sig`` manifest and its blobs are copied byte for byte to ``dest_repository``
      (so its digest, and every signature in it, stay valid);
    * lookaside signature files: read from the source's lookaside and written under
      ``dest_lookaside_base`` if given, else the destination's configured ``lookaside-staging`` /
      ``lookaside`` (``file://`` only); skipped when the destination has no lookaside configured.

    Signatures are copied, not verified: the host that pulls from the mirror verifies them.
    Call it for every manifest digest copied (each per-platform manifest and the index).
    """
    lookaside_count = 0
    blobs = await read_lookaside_blobs(registries_d.lookaside_base(source_repository), manifest_digest, http=http)
    if blobs:
        target = dest_lookaside_base
        if (target is None and dest_repository is not None
                and registries_d.lookaside_top_level(dest_repository, write=True) is not None):
            target = registries_d.lookaside_base(dest_repository, write=True)
        if target is not None:
            await write_lookaside_blobs(target, manifest_digest, blobs)
            lookaside_count = len(blobs)
    written: str | None = None
    if (registries_d.use_sigstore_attachments(source_repository) and dest_client is not None
            and dest_repository is not None):
        attachments = await fetch_sigstore_attachments(source_client, source_repository, manifest_digest,
                                                       with_config=True)
        if attachments is not None:
            dest_ref = dest_repository.trimmed()
            for desc, payload in attachments.layers:
                if not await dest_client.blob_exists(dest_ref, desc.digest):
                    plain = Descriptor(media_type=desc.media_type, digest=desc.digest, size=desc.size)
                    await dest_client.upload_blob(dest_ref, plain, _single_chunk(payload))
            tag = sigstore_attachment_tag(manifest_digest)
            await dest_client.put_manifest(dest_ref.with_tag(tag), attachments.manifest_raw, attachments.media_type)
            written = tag
    return CopiedSignatures(lookaside=lookaside_count, sigstore_attachment=written)
