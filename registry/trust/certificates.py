"""X.509 certificates of sigstore signatures: Fulcio (keyless) and PKI (the policy's own roots).

containers/image ``signature/fulcio_cert.go`` (``verifyFulcioCertificateAtTime``, ``fulcioIssuerInCertificate``)
and ``signature/pki_cert.go`` (``verifyPKI``). Go's ``x509.Certificate.Verify`` with ``KeyUsages: [CodeSigning]``
is done by ``cryptography``'s RFC 5280 verifier with Go's extended-key-usage and key-usage rules added.
Each function returns the certificate's public key, which then must verify the signature
(:func:`tether.registry.trust.sigstore.verify_sigstore_signature`).
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store, VerificationError

from tether.registry.errors import InvalidSignatureError

__all__ = [
    "FULCIO_ISSUER_V1_OID",
    "FULCIO_ISSUER_V2_OID",
    "fulcio_issuer",
    "verify_code_signing_chain",
    "verify_fulcio_certificate",
    "verify_pki_certificate",
]

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
