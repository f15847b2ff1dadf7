"""Container image signatures as data: the two kinds, the lookaside blob format and the payload.

Two kinds, as containers/image knows them (``internal/signature``):

* **simple signing** ("atomic container signature"): an OpenPGP *signed message* (not detached) whose
  plaintext is the JSON payload (verified by :mod:`tether.registry.trust.gpg`);
* **sigstore** (cosign): a JSON payload (``application/vnd.dev.cosign.simplesigning.v1+json``) plus a
  base64 signature in the ``dev.cosignproject.cosign/signature`` annotation (verified by
  :mod:`tether.registry.trust.sigstore`).

Both payloads share one JSON shape (``signature/simple.go``, ``signature/internal/sigstore_payload.go``)::

    {"critical": {"type": "...", "image": {"docker-manifest-digest": "sha256:..."},
                  "identity": {"docker-reference": "host/repo:tag"}},
     "optional": {"creator": "...", "timestamp": 1700000000}}

parsed as paranoidly as containers/image parses it (duplicate keys, unknown critical keys, missing keys
and a non-integer timestamp are all rejected). Everything here is untrusted until a verifier says otherwise.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tether.registry.errors import InvalidSignatureError

__all__ = [
    "MAX_SIGNATURE_SIZE",
    "SIGSTORE_CERTIFICATE_ANNOTATION",
    "SIGSTORE_CHAIN_ANNOTATION",
    "SIGSTORE_PAYLOAD_TYPE",
    "SIGSTORE_SET_ANNOTATION",
    "SIGSTORE_SIGNATURE_ANNOTATION",
    "SIGSTORE_SIGNATURE_MIME_TYPE",
    "SIMPLE_SIGNING_TYPE",
    "Signature",
    "SignaturePayload",
    "SigstoreSignature",
    "SimpleSigningSignature",
    "go_b64decode",
    "is_valid_digest",
    "make_signature_payload",
    "manifest_matches_digest",
    "parse_signature_blob",
    "parse_signature_payload",
]

#: containers/image ``internal/signature/sigstore.go``.
SIGSTORE_SIGNATURE_MIME_TYPE = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGSTORE_SIGNATURE_ANNOTATION = "dev.cosignproject.cosign/signature"
SIGSTORE_CERTIFICATE_ANNOTATION = "dev.sigstore.cosign/certificate"
SIGSTORE_CHAIN_ANNOTATION = "dev.sigstore.cosign/chain"
SIGSTORE_SET_ANNOTATION = "dev.sigstore.cosign/bundle"

#: Payload ``critical.type`` values.
SIMPLE_SIGNING_TYPE = "atomic container signature"
SIGSTORE_PAYLOAD_TYPE = "cosign container image signature"

#: containers/image ``internal/iolimits``: MaxSignatureBodySize.
MAX_SIGNATURE_SIZE = 4 * 1024 * 1024

_DIGEST_RE = re.compile(r"^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")
_HASHES = {"sha256": (hashlib.sha256, 64), "sha384": (hashlib.sha384, 96), "sha512": (hashlib.sha512, 128)}


@dataclass(frozen=True)
class SimpleSigningSignature:
    """A GPG simple-signing signature: the OpenPGP signed message, untrusted until verified."""

    blob: bytes

    def to_blob(self) -> bytes:
        """Lookaside file bytes (containers/image writes the bare OpenPGP message, for compatibility)."""
        return self.blob


@dataclass(frozen=True)
class SigstoreSignature:
    """A sigstore attachment: media type, payload and annotations (all untrusted until verified)."""

    mime_type: str
    payload: bytes
    annotations: Mapping[str, str] = field(default_factory=dict)

    def to_blob(self) -> bytes:
        """The ``\\x00sigstore-json\\n`` lookaside form (containers/image ``internal/signature/sigstore.go``)."""
        body = json.dumps(
            {"mimeType": self.mime_type, "payload": base64.b64encode(self.payload).decode(),
             "annotations": dict(self.annotations)}, separators=(",", ":"))
        return b"\x00sigstore-json\n" + body.encode()


Signature = SimpleSigningSignature | SigstoreSignature


def go_b64decode(value: str | bytes) -> bytes:
    """Go's ``base64.StdEncoding`` decoding (also what ``encoding/json`` does for ``[]byte``): padded
    standard alphabet, strict, except that ``\\r`` and ``\\n`` are skipped (openssl and cosign wrap lines)."""
    if isinstance(value, str):
        value = value.encode("ascii", errors="strict") if value.isascii() else b"\xff"
    return base64.b64decode(value.replace(b"\r", b"").replace(b"\n", b""), validate=True)


def parse_signature_blob(blob: bytes, *, where: str = "signature") -> Signature:
    """Decode a lookaside signature file as containers/image's ``signature.FromBlob`` does.

    Bare OpenPGP packets are simple signing (the historical format); ``\\x00<format>\\n<data>`` names the
    format (``simple-signing`` or ``sigstore-json``).
    """
    if not blob:
        raise InvalidSignatureError(f"{where}: empty signature blob")
    first = blob[0]
    # OpenPGP compressed data, one-pass signature or signature packets, old and new packet formats.
    if first in (0xA0, 0xA1, 0xA2, 0xA3, 0xC8, 0x90, 0x91, 0x92, 0x3D, 0xC4, 0x88, 0x89, 0x8A, 0x8B, 0xC2):
        return SimpleSigningSignature(blob)
    if first != 0:
        raise InvalidSignatureError(f"{where}: unrecognized signature format, starting with binary {first:#x}")
    rest = blob[1:]
    newline = rest.find(b"\n")
    if newline == -1:
        raise InvalidSignatureError(f"{where}: invalid signature format, missing newline")
    fmt, chunk = rest[:newline], rest[newline + 1:]
    if any(b < 32 or b >= 0x7F for b in fmt):
        raise InvalidSignatureError(f"{where}: invalid signature format, non-ASCII format name")
    if fmt == b"simple-signing":
        return SimpleSigningSignature(chunk)
    if fmt == b"sigstore-json":
        try:
            obj = json.loads(chunk)
            mime = obj["mimeType"]
            payload = go_b64decode(obj["payload"])
            annotations = obj.get("annotations") or {}
            if not isinstance(mime, str) or not isinstance(annotations, dict):
                raise TypeError("bad field types")
            ann = {str(k): str(v) for k, v in annotations.items()}
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise InvalidSignatureError(f"{where}: invalid sigstore-json signature: {exc}") from None
        return SigstoreSignature(mime, payload, ann)
    raise InvalidSignatureError(f"{where}: unrecognized signature format {fmt.decode()!r}")


@dataclass(frozen=True)
class SignaturePayload:
    """The parsed (still untrusted until its signature verified) JSON payload of either kind."""

    docker_manifest_digest: str
    docker_reference: str
    creator: str | None = None
    timestamp: int | None = None


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads`` ``object_pairs_hook`` refusing duplicate keys (c/image ``paranoidUnmarshalJSONObject``)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise InvalidSignatureError(f'Duplicate key "{key}"')
        out[key] = value
    return out


def exact_object(value: Any, fields: Sequence[str], where: str) -> dict[str, Any]:
    """``value`` as a JSON object with exactly the keys ``fields``
    (c/image ``paranoidUnmarshalJSONObjectExactFields``)."""
    if not isinstance(value, dict):
        raise InvalidSignatureError(f"{where}: JSON object expected")
    for key in value:
        if key not in fields:
            raise InvalidSignatureError(f'{where}: Unknown key "{key}"')
    for key in fields:
        if key not in value:
            raise InvalidSignatureError(f'{where}: Key "{key}" missing in a JSON object')
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidSignatureError(f"{where}: string expected")
    return value


def parse_signature_payload(data: bytes, *, expected_type: str) -> SignaturePayload:
    """Parse a simple-signing or sigstore payload with containers/image's strictness.

    ``expected_type`` is :data:`SIMPLE_SIGNING_TYPE` or :data:`SIGSTORE_PAYLOAD_TYPE`. For sigstore,
    ``"optional": null`` is accepted (``/usr/bin/cosign`` writes it); for simple signing it is not.
    """
    try:
        top = json.loads(data, object_pairs_hook=no_duplicate_keys)
    except InvalidSignatureError:
        raise
    except ValueError as exc:
        raise InvalidSignatureError(f"payload is not JSON: {exc}") from None
    top = exact_object(top, ("critical", "optional"), "payload")
    optional = top["optional"]
    creator: str | None = None
    timestamp: int | None = None
    if optional is None and expected_type == SIGSTORE_PAYLOAD_TYPE:
        pass
    elif isinstance(optional, dict):
        if "creator" in optional:
            creator = _string(optional["creator"], "optional.creator")
        if "timestamp" in optional:
            ts = optional["timestamp"]
            if isinstance(ts, bool) or not isinstance(ts, int | float):
                raise InvalidSignatureError("optional.timestamp: number expected")
            if int(ts) != ts:
                raise InvalidSignatureError("Field optional.timestamp is not an integer")
            timestamp = int(ts)
    else:
        raise InvalidSignatureError("optional: JSON object expected")
    critical = exact_object(top["critical"], ("type", "image", "identity"), "critical")
    kind = _string(critical["type"], "critical.type")
    if kind != expected_type:
        raise InvalidSignatureError(f"Unrecognized signature type {kind}")
    image = exact_object(critical["image"], ("docker-manifest-digest",), "critical.image")
    digest = _string(image["docker-manifest-digest"], "critical.image.docker-manifest-digest")
    if not is_valid_digest(digest):
        raise InvalidSignatureError(f"invalid docker-manifest-digest value {digest!r}")
    identity = exact_object(critical["identity"], ("docker-reference",), "critical.identity")
    ref = _string(identity["docker-reference"], "critical.identity.docker-reference")
    return SignaturePayload(docker_manifest_digest=digest, docker_reference=ref, creator=creator,
                            timestamp=timestamp)


def make_signature_payload(*, manifest_digest: str, docker_reference: str, kind: str,
                           creator: str = "tether", timestamp: int | None = None) -> bytes:
    """Build a payload (for tests and for signing tools); ``kind`` is the ``critical.type``."""
    optional: dict[str, Any] = {"creator": creator}
    if timestamp is not None:
        optional["timestamp"] = timestamp
    return json.dumps({
        "critical": {"type": kind, "image": {"docker-manifest-digest": manifest_digest},
                     "identity": {"docker-reference": docker_reference}},
        "optional": optional,
    }).encode()


def is_valid_digest(digest: str) -> bool:
    """``algorithm:encoded`` with a known algorithm and the right hex length (go-digest's Validate)."""
    match = _DIGEST_RE.match(digest)
    if not match:
        return False
    algo, encoded = match.groups()
    known = _HASHES.get(algo)
    return known is not None and len(encoded) == known[1] and re.fullmatch(r"[a-f0-9]+", encoded) is not None


def manifest_matches_digest(manifest: bytes, digest: str) -> bool:
    """containers/image ``manifest.MatchesDigest``: hash ``manifest`` with the digest's algorithm.

    Docker schema1 signed manifests (whose digest excludes the JWS) are not pulled by tether, so the
    raw bytes are hashed.
    """
    if not is_valid_digest(digest):
        return False
    algo, encoded = digest.split(":", 1)
    return _HASHES[algo][0](manifest).hexdigest() == encoded
