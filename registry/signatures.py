"""Container image signatures: formats, cryptographic verification and fetching.

Two kinds, as containers/image knows them (``internal/signature``):

* **simple signing** ("atomic container signature"): an OpenPGP *signed message* (not detached) whose
  plaintext is the JSON payload; verified with the ``gpg`` tool in a throwaway ``GNUPGHOME``
  (containers/image ``signature/mechanism_gpgme.go`` does the same with gpgme).
* **sigstore** (cosign): a JSON payload (``application/vnd.dev.cosign.simplesigning.v1+json``) plus a
  base64 signature in the ``dev.cosignproject.cosign/signature`` annotation; verified with the
  ``cryptography`` package (ECDSA/SHA-256 as cosign signs, RSA PKCS#1 v1.5 and Ed25519 as sigstore's
  ``LoadVerifier`` also accepts).

Both payloads share one JSON shape (``signature/simple.go``, ``signature/internal/sigstore_payload.go``)::

    {"critical": {"type": "...", "image": {"docker-manifest-digest": "sha256:..."},
                  "identity": {"docker-reference": "host/repo:tag"}},
     "optional": {"creator": "...", "timestamp": 1700000000}}

parsed as paranoidly as containers/image parses it (duplicate keys, unknown critical keys, missing keys
and a non-integer timestamp are all rejected).

Fetching (``docker/docker_image_src.go``): lookaside stores (``<base>/<repo>@sha256=<hex>/signature-<n>``,
n = 1, 2, ... until the first missing one; ``file://`` and ``http(s)://``) and sigstore attachments
(the ``sha256-<hex>.sig`` tag: an OCI manifest whose layers are the signatures). Both are read from the
*physical* repository that served the image (a mirror, when a mirror served it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import subprocess
import tempfile
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.registry.errors import HTTPStatusError, PolicyError, RegistryError

if TYPE_CHECKING:
    import httpx

    from tether.registry.client import RegistryClient
    from tether.registry.reference import Reference
    from tether.registry.registries_conf import PullSource
    from tether.registry.registries_d import RegistriesD

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
#: A sanity cap on lookaside signatures per image (containers/image has none; a broken server must not loop us).
MAX_LOOKASIDE_SIGNATURES = 1024

OCI_MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"

_DIGEST_RE = re.compile(r"^([a-z0-9]+(?:[.+_-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")
_HASHES = {"sha256": (hashlib.sha256, 64), "sha384": (hashlib.sha384, 96), "sha512": (hashlib.sha512, 128)}


class InvalidSignatureError(RegistryError):
    """A signature or its payload is malformed or does not verify (a reason to reject, never to crash)."""


# ---------------------------------------------------------------------------------------------------------
# signature values


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


# ---------------------------------------------------------------------------------------------------------
# payloads


@dataclass(frozen=True)
class SignaturePayload:
    """The parsed (still untrusted until its signature verified) JSON payload of either kind."""

    docker_manifest_digest: str
    docker_reference: str
    creator: str | None = None
    timestamp: int | None = None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise InvalidSignatureError(f'Duplicate key "{key}"')
        out[key] = value
    return out


def _exact_object(value: Any, fields: Sequence[str], where: str) -> dict[str, Any]:
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
        top = json.loads(data, object_pairs_hook=_no_duplicates)
    except InvalidSignatureError:
        raise
    except ValueError as exc:
        raise InvalidSignatureError(f"payload is not JSON: {exc}") from None
    top = _exact_object(top, ("critical", "optional"), "payload")
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
    critical = _exact_object(top["critical"], ("type", "image", "identity"), "critical")
    kind = _string(critical["type"], "critical.type")
    if kind != expected_type:
        raise InvalidSignatureError(f"Unrecognized signature type {kind}")
    image = _exact_object(critical["image"], ("docker-manifest-digest",), "critical.image")
    digest = _string(image["docker-manifest-digest"], "critical.image.docker-manifest-digest")
    if not is_valid_digest(digest):
        raise InvalidSignatureError(f"invalid docker-manifest-digest value {digest!r}")
    identity = _exact_object(critical["identity"], ("docker-reference",), "critical.identity")
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


# ---------------------------------------------------------------------------------------------------------
# sigstore verification


def load_public_keys(pems: Sequence[bytes], *, what: str) -> list[Any]:
    """Parse PEM public keys (cosign.pub); a bad key is an error even if another would do (as c/image)."""
    from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key

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
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

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


def _exact_keys(value: Any, keys: Sequence[str], where: str) -> dict[str, Any]:
    return _exact_object(value, keys, where)


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
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        top = json.loads(untrusted_set, object_pairs_hook=_no_duplicates)
    except ValueError as exc:
        raise InvalidSignatureError(f"Rekor SET is not JSON: {exc}") from None
    top = _exact_keys(top, ("SignedEntryTimestamp", "Payload"), "Rekor SET")
    set_signature = _b64_field(top["SignedEntryTimestamp"], "Rekor SET SignedEntryTimestamp")
    set_payload = _exact_keys(top["Payload"], ("body", "integratedTime", "logIndex", "logID"), "Rekor SET Payload")
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


#: sigstore/fulcio ``certificate.OIDIssuer`` (v1, raw string) and ``OIDIssuerV2`` (DER string).
FULCIO_ISSUER_V1_OID = "1.3.6.1.4.1.57264.1.1"
FULCIO_ISSUER_V2_OID = "1.3.6.1.4.1.57264.1.8"


def _der_string(value: bytes) -> str:
    """Decode one DER UTF8String/PrintableString/IA5String with nothing after it (Go ``asn1.Unmarshal``)."""
    if len(value) < 2 or value[0] not in (0x0C, 0x13, 0x16):
        raise InvalidSignatureError("invalid ASN.1 in OIDC issuer v2 extension")
    length, offset = value[1], 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or len(value) < 2 + count:
            raise InvalidSignatureError("invalid ASN.1 in OIDC issuer v2 extension")
        length = int.from_bytes(value[2:2 + count], "big")
        offset = 2 + count
    if len(value) != offset + length:
        raise InvalidSignatureError("invalid ASN.1 in OIDC issuer v2 extension, trailing data")
    try:
        return value[offset:].decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidSignatureError("invalid ASN.1 in OIDC issuer v2 extension") from None


def fulcio_issuer(certificate: Any) -> str:
    """The OIDC issuer recorded in a Fulcio certificate (c/image ``fulcioIssuerInCertificate``)."""
    v1: str | None = None
    v2: str | None = None
    for ext in certificate.extensions:
        oid = ext.oid.dotted_string
        if oid == FULCIO_ISSUER_V1_OID:
            v1 = bytes(ext.value.value).decode("utf-8", errors="replace")
        elif oid == FULCIO_ISSUER_V2_OID:
            v2 = _der_string(bytes(ext.value.value))
    if v1 is not None and v2 is not None and v1 != v2:
        raise InvalidSignatureError(f"inconsistent OIDC issuer extension values: v1 {v1!r}, v2 {v2!r}")
    issuer = v1 if v1 is not None else v2
    if issuer is None:
        raise InvalidSignatureError("Fulcio certificate is missing the issuer extension")
    return issuer


def _load_certificates(pem: bytes | None, what: str) -> list[Any]:
    from cryptography import x509

    if not pem:
        return []
    try:
        return list(x509.load_pem_x509_certificates(pem))
    except ValueError as exc:
        raise InvalidSignatureError(f"{what}: {exc}") from None


def _leaf_certificate(certificate_pem: bytes) -> Any:
    leaves = _load_certificates(certificate_pem, "parsing leaf certificate")
    if len(leaves) != 1:
        raise InvalidSignatureError("unexpected multiple certificates present in signature certificate data"
                                    if leaves else "no certificate found in signature certificate data")
    return leaves[0]


def verify_code_signing_chain(*, roots: Sequence[Any], leaf: Any, intermediates: Sequence[Any], at: int | None) -> None:
    """Go ``x509.Certificate.Verify`` with ``KeyUsages: [CodeSigning]``, done by ``cryptography``'s RFC 5280
    verifier: a chain from ``leaf`` through ``intermediates`` to one of ``roots``, every signature, validity
    at ``at`` (Unix time; now if None), CA constraints; the leaf and every issuer must allow code signing."""
    import datetime

    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID
    from cryptography.x509.verification import (
        Criticality,
        ExtensionPolicy,
        PolicyBuilder,
        Store,
        VerificationError,
    )

    if not roots:
        raise InvalidSignatureError("no trusted CA certificates")

    # Go: a certificate without an EKU extension allows every usage; with one, it must list code signing
    # (or anyExtendedKeyUsage) -- for the leaf and for every issuer.
    def code_signing_eku(_policy: Any, _cert: Any, eku: Any) -> None:
        if eku is not None and ExtendedKeyUsageOID.CODE_SIGNING not in eku \
                and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in eku:
            raise ValueError("the certificate does not allow code signing")

    # Go: an issuer's KeyUsage, when present, must allow certificate signing; unlike the Web PKI profile
    # it may be absent (private PKIs made with openssl often omit it).
    def cert_sign_usage(_policy: Any, _cert: Any, usage: Any) -> None:
        if usage is not None and not usage.key_cert_sign:
            raise ValueError("an issuing certificate's key usage does not allow certificate signing")

    ca_policy = (ExtensionPolicy.webpki_defaults_ca()
                 .may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, code_signing_eku)
                 .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, cert_sign_usage))
    ee_policy = ExtensionPolicy.webpki_defaults_ee().may_be_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC,
                                                                   code_signing_eku)
    when = datetime.datetime.fromtimestamp(at, datetime.UTC) if at is not None else datetime.datetime.now(datetime.UTC)
    try:
        verifier = (PolicyBuilder().store(Store(list(roots))).time(when)
                    .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy).build_client_verifier())
        verifier.verify(leaf, list(intermediates))
    except (VerificationError, ValueError) as exc:
        raise InvalidSignatureError(f"veryfing leaf certificate failed: {exc}") from None


def _san_values(leaf: Any, kind: Any) -> list[Any]:
    from cryptography import x509

    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return list(san.get_values_for_type(kind))
    except x509.ExtensionNotFound:
        return []
    except (x509.DuplicateExtension, ValueError) as exc:
        raise InvalidSignatureError(f"invalid certificate extensions: {exc}") from None


def verify_fulcio_certificate(*, ca_pem: bytes, certificate_pem: bytes, chain_pem: bytes | None, at: int,
                              oidc_issuer: str, subject_email: str) -> Any:
    """Verify a Fulcio (keyless cosign) certificate as c/image ``verifyFulcioCertificateAtTime``: chained to
    the trusted CA certificates (intermediates from the signature's chain, minus its last = root entry),
    valid at ``at`` (the Rekor SET's integrated time), code-signing EKU, the OIDC issuer and the subject
    e-mail as the policy requires. Returns the certificate's public key.
    """
    from cryptography import x509

    try:
        roots = x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        raise InvalidSignatureError("error loading Fulcio CA certificates") from None
    leaf = _leaf_certificate(certificate_pem)
    chain = _load_certificates(chain_pem, "loading certificate chain")
    verify_code_signing_chain(roots=roots, leaf=leaf, intermediates=chain[:-1], at=at)
    try:
        issuer = fulcio_issuer(leaf)
    except (x509.DuplicateExtension, ValueError) as exc:
        raise InvalidSignatureError(f"invalid Fulcio certificate extensions: {exc}") from None
    if issuer != oidc_issuer:
        raise InvalidSignatureError(f"Unexpected Fulcio OIDC issuer {issuer!r}")
    emails = _san_values(leaf, x509.RFC822Name)
    if subject_email not in emails:
        raise InvalidSignatureError(f"Required email {subject_email!r} not found (got {emails!r})")
    return leaf.public_key()


def _hostname_matches(pattern: str, host: str) -> bool:
    """Go ``matchHostnames``: case-insensitive, a leading ``*`` label matches exactly one label."""
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if not pattern or not host:
        return False
    p_labels, h_labels = pattern.split("."), host.split(".")
    if len(p_labels) != len(h_labels):
        return False
    return all(p == h or (i == 0 and p == "*" and h) for i, (p, h) in enumerate(zip(p_labels, h_labels, strict=True)))


def verify_pki_certificate(*, roots_pem: bytes, intermediates_pem: bytes | None, certificate_pem: bytes,
                           chain_pem: bytes | None, subject_email: str | None, subject_hostname: str | None) -> Any:
    """c/image ``verifyPKI``: the signature's certificate chains (through the policy's and the signature's
    intermediates) to the policy's roots *now*, allows code signing, and names the required e-mail and/or
    hostname. Returns its public key."""
    import ipaddress

    from cryptography import x509

    roots = _load_certificates(roots_pem, "error loading PKI CA Roots certificates")
    if not roots:
        raise InvalidSignatureError("error loading PKI CA Roots certificates")
    intermediates = _load_certificates(intermediates_pem, "loading trusted intermediate certificates")
    intermediates += _load_certificates(chain_pem, "loading certificate chain")[:-1]
    leaf = _leaf_certificate(certificate_pem)
    verify_code_signing_chain(roots=roots, leaf=leaf, intermediates=intermediates, at=None)
    if subject_email:
        emails = _san_values(leaf, x509.RFC822Name)
        if subject_email not in emails:
            raise InvalidSignatureError(f"Required email {subject_email!r} not found (got {emails!r})")
    if subject_hostname:
        try:
            wanted_ip = ipaddress.ip_address(subject_hostname.strip("[]"))
        except ValueError:
            wanted_ip = None
        if wanted_ip is not None:
            ok = wanted_ip in _san_values(leaf, x509.IPAddress)
        else:
            ok = any(_hostname_matches(name, subject_hostname) for name in _san_values(leaf, x509.DNSName))
        if not ok:
            raise InvalidSignatureError(f"Unexpected subject hostname: certificate is not valid for {subject_hostname}")
    return leaf.public_key()


def public_key_pem(key: Any) -> bytes:
    """Re-marshal a public key as SubjectPublicKeyInfo PEM (what cosign logs in Rekor)."""
    from cryptography.hazmat.primitives import serialization

    pem: bytes = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem


def sign_sigstore_payload(private_key: Any, payload: bytes, *,
                          annotations: Mapping[str, str] | None = None) -> SigstoreSignature:
    """Sign ``payload`` as cosign does (ECDSA P-256/SHA-256 DER, base64 in the annotation). For tests/tools."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    raw = private_key.sign(payload, ec.ECDSA(hashes.SHA256()))
    ann = {SIGSTORE_SIGNATURE_ANNOTATION: base64.b64encode(raw).decode(), **(annotations or {})}
    return SigstoreSignature(SIGSTORE_SIGNATURE_MIME_TYPE, payload, ann)


# ---------------------------------------------------------------------------------------------------------
# GPG (simple signing) verification with the gpg tool


@dataclass(frozen=True)
class GPGVerified:
    """A verified simple-signing message: the plaintext and who signed it."""

    plaintext: bytes
    fingerprint: str                # the signing (sub)key
    primary_fingerprint: str        # its primary key (equal to ``fingerprint`` for a primary-key signature)


class GPGKeyring:
    """A throwaway GNUPGHOME holding only the trusted keys of one requirement.

    containers/image ``newEphemeralGPGSigningMechanism``: the trusted identities are exactly the
    fingerprints of the keys imported from the policy's key material. Keys are imported with ``gpg``
    (never starting an agent), signatures verified with ``gpgv`` against that keyring only.
    Use as a context manager.
    """

    def __init__(self, key_blobs: Sequence[bytes], *, gpg: str = "gpg", gpgv: str = "gpgv") -> None:
        self._gpg = gpg
        self._gpgv = gpgv
        self._home = tempfile.mkdtemp(prefix="tether-gpg-")
        self.fingerprints: tuple[str, ...] = ()
        try:
            found: list[str] = []
            for blob in key_blobs:
                status = self._run(["--import"], stdin=blob)
                for line in status.splitlines():
                    parts = line.split()
                    if len(parts) >= 4 and parts[0] == "[GNUPG:]" and parts[1] == "IMPORT_OK":
                        found.append(parts[3].upper())
            self.fingerprints = tuple(dict.fromkeys(found))
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> GPGKeyring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the temporary GNUPGHOME."""
        import shutil

        shutil.rmtree(self._home, ignore_errors=True)

    def _run(self, args: list[str], *, stdin: bytes | None = None, check: bool = False) -> str:
        # --no-autostart: importing public keys must not leave a gpg-agent behind.
        cmd = [self._gpg, "--homedir", self._home, "--batch", "--no-tty", "--no-autostart", "--no-auto-key-locate",
               "--no-auto-key-retrieve", "--trust-model", "always", "--status-fd", "1", *args]
        try:
            proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=60,
                                  env={**os.environ, "GNUPGHOME": self._home, "LC_ALL": "C"}, check=False)
        except FileNotFoundError:
            raise InvalidSignatureError(f"cannot verify GPG signatures: {self._gpg!r} is not installed") from None
        except subprocess.TimeoutExpired:
            raise InvalidSignatureError("gpg timed out") from None
        if check and proc.returncode != 0:
            raise InvalidSignatureError(f"gpg failed: {proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout.decode(errors="replace")

    def verify(self, blob: bytes) -> GPGVerified:
        """Verify an OpenPGP signed message; exactly one good signature by an imported key is required."""
        with tempfile.TemporaryDirectory(prefix="tether-sig-") as tmp:
            sig_path = Path(tmp, "signature")
            out_path = Path(tmp, "plaintext")
            sig_path.write_bytes(blob)
            # gpgv only verifies (no decryption, no agent); --output extracts the signed payload.
            cmd = [self._gpgv, "--homedir", self._home, "--keyring", str(Path(self._home, "pubring.kbx")),
                   "--status-fd", "1", "--output", str(out_path), str(sig_path)]
            try:
                proc = subprocess.run(cmd, capture_output=True, timeout=60, check=False,
                                      env={**os.environ, "GNUPGHOME": self._home, "LC_ALL": "C"})
            except FileNotFoundError:
                raise InvalidSignatureError(
                    f"cannot verify GPG signatures: {self._gpgv!r} is not installed") from None
            except subprocess.TimeoutExpired:
                raise InvalidSignatureError("gpg timed out") from None
            status = [line.split() for line in proc.stdout.decode(errors="replace").splitlines()
                      if line.startswith("[GNUPG:] ")]
            kinds = [parts[1] for parts in status if len(parts) > 1]
            results = [k for k in kinds if k in ("GOODSIG", "BADSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG", "ERRSIG")]
            if any(k in ("DECRYPTION_OKAY", "BEGIN_DECRYPTION", "ENC_TO") for k in kinds):
                raise InvalidSignatureError("Invalid GPG signature: the message is encrypted, not signed")
            if len(results) != 1:
                if not results and "NO_PUBKEY" not in kinds:
                    detail = proc.stderr.decode(errors="replace").strip().splitlines()
                    raise InvalidSignatureError(
                        "Invalid GPG signature: not a signed message" + (f" ({detail[-1]})" if detail else ""))
                if "NO_PUBKEY" in kinds or "ERRSIG" in results:
                    keyid = next((p[2] for p in status if len(p) > 2 and p[1] in ("ERRSIG", "NO_PUBKEY")), "?")
                    raise InvalidSignatureError(f"Signature by key {keyid} is not accepted (unknown key)")
                raise InvalidSignatureError(f"Unexpected GPG signature count {len(results)}")
            if results[0] != "GOODSIG" or proc.returncode != 0:
                if results[0] == "ERRSIG":
                    keyid = next((p[2] for p in status if len(p) > 2 and p[1] == "ERRSIG"), "?")
                    raise InvalidSignatureError(f"Signature by key {keyid} is not accepted (unknown key)")
                raise InvalidSignatureError(f"Invalid GPG signature: {results[0]}")
            valid = next((p for p in status if len(p) > 2 and p[1] == "VALIDSIG"), None)
            if valid is None:
                raise InvalidSignatureError("Invalid GPG signature: no VALIDSIG status")
            fingerprint = valid[2].upper()
            primary = valid[11].upper() if len(valid) > 11 else fingerprint
            try:
                plaintext = out_path.read_bytes()
            except OSError as exc:
                raise InvalidSignatureError(f"gpg produced no plaintext: {exc}") from None
            return GPGVerified(plaintext=plaintext, fingerprint=fingerprint, primary_fingerprint=primary)


def verify_simple_signing(signature: SimpleSigningSignature, keyring: GPGKeyring) -> SignaturePayload:
    """Verify a GPG simple signature against ``keyring`` and parse its payload (digest/identity NOT checked)."""
    verified = keyring.verify(signature.blob)
    trusted = set(keyring.fingerprints)
    if verified.fingerprint not in trusted and verified.primary_fingerprint not in trusted:
        raise InvalidSignatureError(f"Signature by key {verified.fingerprint} is not accepted")
    return parse_signature_payload(verified.plaintext, expected_type=SIMPLE_SIGNING_TYPE)


# ---------------------------------------------------------------------------------------------------------
# fetching


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


async def read_lookaside_blobs(base: str, manifest_digest: str, *, http: httpx.AsyncClient | None = None
                               ) -> tuple[bytes, ...]:
    """The raw lookaside signature files of one manifest: ``signature-1``, ``-2``... up to the first missing.

    ``file://`` is read from disk, ``http(s)://`` with GET (404 = missing, any other failure is an error).
    """
    import trio

    from tether.registry.registries_d import lookaside_signature_url

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
                    import httpx as _httpx

                    own_client = http = _httpx.AsyncClient(timeout=60, follow_redirects=True)
                try:
                    response = await http.get(url)
                except Exception as exc:
                    raise PolicyError(f"reading signature from {_redact(url)}: {exc}") from None
                if response.status_code == 404:
                    data = None
                elif response.status_code != 200:
                    raise PolicyError(f"reading signature from {_redact(url)}: status {response.status_code}")
                else:
                    data = response.content
                    if len(data) > MAX_SIGNATURE_SIZE:
                        raise PolicyError(f"reading signature from {_redact(url)}: too large")
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
    from tether.registry.registries_d import lookaside_signature_url

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
    layers: tuple[tuple[Any, bytes], ...]   # (Descriptor, payload)

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
    from tether.registry.manifest import ImageManifest, parse_manifest

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
    docker_ref = repository
    sigs: list[Signature] = []
    # The X-Registry-Supports-Signatures extension replaces lookaside when the registry offers it
    # (``fetch_signature_extension`` answers None when it is not offered).
    body = await client.fetch_signature_extension(repository, manifest_digest) if client is not None else None
    if body is not None:
        sigs.extend(parse_extension_signatures(body, where=f"signature list of {repository.name}@{manifest_digest}"))
    else:
        base = registries_d.lookaside_base(docker_ref)
        sigs.extend(await read_lookaside_signatures(base, manifest_digest, http=http))
    if sigstore and registries_d.use_sigstore_attachments(docker_ref):
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
    import trio

    from tether.registry.registries_d import lookaside_signature_url

    if urllib.parse.urlsplit(base).scheme != "file":
        raise PolicyError(f"writing signatures to {_redact(base)} is not supported (only file:// lookaside)")
    for index, blob in enumerate(blobs):
        await trio.to_thread.run_sync(_write_file_url, lookaside_signature_url(base, manifest_digest, index), blob)
    stale = urllib.parse.unquote(urllib.parse.urlsplit(
        lookaside_signature_url(base, manifest_digest, len(blobs))).path)
    await trio.to_thread.run_sync(lambda: Path(stale).unlink(missing_ok=True))


async def _single_chunk(data: bytes) -> Any:
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
    from tether.registry.manifest import Descriptor

    lookaside_count = 0
    src_ref = source_repository
    blobs = await read_lookaside_blobs(registries_d.lookaside_base(src_ref), manifest_digest, http=http)
    if blobs:
        target = dest_lookaside_base
        if target is None and dest_repository is not None:
            dst_ref = dest_repository
            if registries_d.lookaside_top_level(dst_ref, write=True) is not None:
                target = registries_d.lookaside_base(dst_ref, write=True)
        if target is not None:
            await write_lookaside_blobs(target, manifest_digest, blobs)
            lookaside_count = len(blobs)
    written: str | None = None
    if registries_d.use_sigstore_attachments(src_ref) and dest_client is not None and dest_repository is not None:
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
