"""Sigstore (cosign) verification: public keys, the payload's blob signature and Rekor SETs.

containers/image ``signature/sigstore`` and ``signature/internal``: cosign signs the payload with ECDSA
P-256/SHA-256; sigstore's ``LoadVerifier`` also accepts RSA PKCS#1 v1.5 and Ed25519 keys, so these are
verified too. A Rekor SignedEntryTimestamp (``signature/internal/rekor_set.go``) proves that the signature
was logged, and when. Certificates (Fulcio, PKI) are :mod:`tether.registry.trust.certificates`.
Verification here never looks at the payload's claims (digest, identity): :mod:`tether.registry.trust.image`
checks those.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key

from tether.registry.errors import InvalidSignatureError
from tether.registry.trust.signature import (
    SIGSTORE_PAYLOAD_TYPE,
    SIGSTORE_SIGNATURE_ANNOTATION,
    SIGSTORE_SIGNATURE_MIME_TYPE,
    SignaturePayload,
    SigstoreSignature,
    exact_object,
    go_b64decode,
    no_duplicate_keys,
    parse_signature_payload,
)

__all__ = [
    "load_public_keys",
    "public_key_pem",
    "sign_sigstore_payload",
    "verify_blob_signature",
    "verify_rekor_set",
    "verify_sigstore_signature",
]


def load_public_keys(pems: Sequence[bytes], *, what: str) -> list[Any]:
    """Parse PEM public keys (cosign.pub); a bad key is an error even if another would do (as c/image)."""
    keys: list[Any] = []
    for index, pem in enumerate(pems, start=1):
        try:
            if pem.lstrip().startswith(b"-----"):
                keys.append(load_pem_public_key(pem))
            else:
                keys.append(load_der_public_key(pem))
        except (ValueError, TypeError) as exc:
            raise InvalidSignatureError(f"parsing public key {index} of {what}: {exc}") from None
    return keys


def verify_blob_signature(public_keys: Sequence[Any], payload: bytes, signature: bytes) -> None:
    """Raise :class:`InvalidSignatureError` unless one of ``public_keys`` signed ``payload`` (SHA-256)."""
    if not public_keys:
        raise InvalidSignatureError("Need at least one public key to verify the sigstore payload, but got 0")
    failures: list[str] = []
    for key in public_keys:
        try:
            if isinstance(key, ec.EllipticCurvePublicKey):
                key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
            elif isinstance(key, rsa.RSAPublicKey):
                key.verify(signature, payload, padding.PKCS1v15(), hashes.SHA256())
            elif isinstance(key, ed25519.Ed25519PublicKey):
                key.verify(signature, payload)
            else:
                failures.append(f"unsupported public key type {type(key).__name__}")
                continue
        except InvalidSignature:
            failures.append("invalid signature")
            continue
        return
    raise InvalidSignatureError("cryptographic signature verification failed: " + ", ".join(failures))


def verify_sigstore_signature(signature: SigstoreSignature, public_keys: Sequence[Any]) -> SignaturePayload:
    """Verify a sigstore signature's blob signature and parse its payload (digest/identity NOT checked here)."""
    encoded = signature.annotations.get(SIGSTORE_SIGNATURE_ANNOTATION)
    if encoded is None:
        raise InvalidSignatureError(f"missing {SIGSTORE_SIGNATURE_ANNOTATION} annotation")
    try:
        raw = go_b64decode(encoded)
    except (binascii.Error, ValueError) as exc:
        raise InvalidSignatureError(f"base64 decoding: {exc}") from None
    verify_blob_signature(public_keys, signature.payload, raw)
    return parse_signature_payload(signature.payload, expected_type=SIGSTORE_PAYLOAD_TYPE)


def _canonical_json(value: Any) -> bytes:
    """RFC 8785 (JCS) for the JSON the Rekor SET signs (strings, integers, objects with ASCII keys)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _b64_field(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise InvalidSignatureError(f"{where}: base64 string expected")
    try:
        return go_b64decode(value)
    except (binascii.Error, ValueError) as exc:
        raise InvalidSignatureError(f"{where}: {exc}") from None


def _pem_body(data: bytes, what: str) -> bytes:
    """The DER inside exactly one PEM block (Go's ``pem.Decode`` with no trailing data)."""
    text = data.strip()
    match = re.fullmatch(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n(.*?)\r?\n?-----END \1-----", text, re.DOTALL)
    if match is None:
        raise InvalidSignatureError(f"{what} is not in PEM format (or has trailing data)")
    try:
        return base64.b64decode(b"".join(match.group(2).split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidSignatureError(f"{what} is not in PEM format") from None


def verify_rekor_set(rekor_keys: Sequence[Any], untrusted_set: bytes, key_or_cert_pem: bytes, base64_signature: str,
                     payload: bytes) -> int:
    """Verify a Rekor SignedEntryTimestamp (``dev.sigstore.cosign/bundle``) as containers/image
    ``signature/internal/rekor_set.go VerifyRekorSET`` does; returns the entry's integrated time.

    The SET is an ECDSA signature by a Rekor key over the canonical JSON of the log entry; the entry (a
    ``hashedrekord`` v0.0.1) must name exactly this public key, this signature and the payload's SHA-256.
    """
    try:
        top = json.loads(untrusted_set, object_pairs_hook=no_duplicate_keys)
    except ValueError as exc:
        raise InvalidSignatureError(f"Rekor SET is not JSON: {exc}") from None
    top = exact_object(top, ("SignedEntryTimestamp", "Payload"), "Rekor SET")
    set_signature = _b64_field(top["SignedEntryTimestamp"], "Rekor SET SignedEntryTimestamp")
    set_payload = exact_object(top["Payload"], ("body", "integratedTime", "logIndex", "logID"), "Rekor SET Payload")
    canonical = _canonical_json(set_payload)
    for key in rekor_keys:
        if not isinstance(key, ec.EllipticCurvePublicKey):
            continue
        try:
            key.verify(set_signature, canonical, ec.ECDSA(hashes.SHA256()))
            break
        except InvalidSignature:
            continue
    else:
        raise InvalidSignatureError("cryptographic signature verification of Rekor SET failed")
    integrated = set_payload["integratedTime"]
    if not isinstance(integrated, int) or isinstance(integrated, bool):
        raise InvalidSignatureError("Rekor SET Payload integratedTime is not an integer")
    try:
        body = json.loads(_b64_field(set_payload["body"], "Rekor SET Payload body"))
    except ValueError as exc:
        raise InvalidSignatureError(f"decoding the body of a Rekor SET payload: {exc}") from None
    if not isinstance(body, dict) or body.get("kind") != "hashedrekord":
        raise InvalidSignatureError("decoding the body of a Rekor SET payload: invalid kind value")
    if body.get("apiVersion") is None:
        raise InvalidSignatureError("missing Rekor SET Payload API version")
    if body["apiVersion"] != "0.0.1":
        raise InvalidSignatureError(f"unsupported Rekor SET Payload hashedrekord version {body['apiVersion']!r}")
    spec = body.get("spec")
    if not isinstance(spec, dict):
        raise InvalidSignatureError("decoding hashedrekord spec: object expected")
    sig = spec.get("signature")
    if not isinstance(sig, dict):
        raise InvalidSignatureError('Missing "signature" field in hashedrekord')
    public_key = sig.get("publicKey")
    if not isinstance(public_key, dict):
        raise InvalidSignatureError('Missing "signature.publicKey" field in hashedrekord')
    logged_key = _pem_body(_b64_field(public_key.get("content", ""), "signature.publicKey.content"),
                           "publicKey in Rekor SET")
    if logged_key != _pem_body(key_or_cert_pem, "public key or cert to be matched against publicKey in Rekor SET"):
        raise InvalidSignatureError("publicKey in Rekor SET does not match")
    try:
        raw_signature = go_b64decode(base64_signature)
    except (binascii.Error, ValueError) as exc:
        raise InvalidSignatureError(f"decoding signature base64: {exc}") from None
    if _b64_field(sig.get("content", ""), "signature.content") != raw_signature:
        raise InvalidSignatureError("signature in Rekor SET does not match")
    data = spec.get("data")
    hash_obj = data.get("hash") if isinstance(data, dict) else None
    if not isinstance(data, dict):
        raise InvalidSignatureError('Missing "data" field in hashedrekord')
    if not isinstance(hash_obj, dict):
        raise InvalidSignatureError('Missing "data.hash" field in hashedrekord')
    if hash_obj.get("algorithm") != "sha256":
        raise InvalidSignatureError(f'Unexpected "data.hash.algorithm" value {hash_obj.get("algorithm")!r}')
    value = hash_obj.get("value")
    if not isinstance(value, str):
        raise InvalidSignatureError('Missing "data.hash.value" field in hashedrekord')
    if value.lower() != hashlib.sha256(payload).hexdigest():
        raise InvalidSignatureError("payload in Rekor SET does not match")
    return integrated


def public_key_pem(key: Any) -> bytes:
    """Re-marshal a public key as SubjectPublicKeyInfo PEM (what cosign logs in Rekor)."""
    pem: bytes = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem


def sign_sigstore_payload(private_key: Any, payload: bytes, *,
                          annotations: Mapping[str, str] | None = None) -> SigstoreSignature:
    """Sign ``payload`` as cosign does (ECDSA P-256/SHA-256 DER, base64 in the annotation). For tests/tools."""
    raw = private_key.sign(payload, ec.ECDSA(hashes.SHA256()))
    ann = {SIGSTORE_SIGNATURE_ANNOTATION: base64.b64encode(raw).decode(), **(annotations or {})}
    return SigstoreSignature(SIGSTORE_SIGNATURE_MIME_TYPE, payload, ann)
