"""The ``sigstoreSigned`` requirement: public keys (optionally with Rekor), Fulcio + Rekor (keyless), X.509 PKI.

containers/image ``signature/policy_eval_sigstore.go``: with public keys, a signature verifies with one of
them (and, with ``rekorPublicKey*``, its Rekor SET proves that key's use was logged); with ``fulcio``, the
Rekor SET gives the time at which the Fulcio certificate must have been valid, and the certificate's key
signed the payload; with ``pki``, the certificate chains to the policy's roots now. Then the payload must name
the image's manifest digest and an acceptable identity. Each function returns ``None`` if the requirement
allows the image, else the reason.
"""

from __future__ import annotations

import binascii
from collections.abc import Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from tether.registry.errors import InvalidSignatureError
from tether.registry.trust.certificates import verify_fulcio_certificate, verify_pki_certificate
from tether.registry.trust.config import SigstoreSigned
from tether.registry.trust.image import NO_SIGNATURE, PolicyImage, check_payload, read_key_files, summarize_rejections
from tether.registry.trust.signature import (
    SIGSTORE_CERTIFICATE_ANNOTATION,
    SIGSTORE_CHAIN_ANNOTATION,
    SIGSTORE_SET_ANNOTATION,
    SIGSTORE_SIGNATURE_ANNOTATION,
    SIGSTORE_SIGNATURE_MIME_TYPE,
    Signature,
    SigstoreSignature,
    go_b64decode,
)
from tether.registry.trust.sigstore import load_public_keys, public_key_pem, verify_rekor_set, verify_sigstore_signature

__all__ = ["evaluate_sigstore_signed"]


def _rekor_keys(req: SigstoreSigned) -> list[Any]:
    if req.rekor_public_key_path is not None:
        pems = read_key_files([req.rekor_public_key_path])
    elif req.rekor_public_key_paths is not None:
        pems = read_key_files(req.rekor_public_key_paths)
    elif req.rekor_public_key_data is not None:
        pems = [req.rekor_public_key_data]
    else:
        pems = list(req.rekor_public_key_datas or ())
    keys = load_public_keys(pems, what="rekorPublicKey")
    for index, key in enumerate(keys, start=1):
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise InvalidSignatureError(f"Rekor public key {index} is not using ECDSA")
    return keys


def _keys_logged_in_rekor(sig: SigstoreSignature, keys: Sequence[Any], rekor_keys: Sequence[Any]) -> list[Any]:
    """policy_eval_sigstore.go: with Rekor keys, only a public key whose use the SET proves logged counts."""
    untrusted_set = sig.annotations.get(SIGSTORE_SET_ANNOTATION)
    if untrusted_set is None:
        raise InvalidSignatureError(f"missing {SIGSTORE_SET_ANNOTATION} annotation")
    encoded = sig.annotations.get(SIGSTORE_SIGNATURE_ANNOTATION, "")
    failures = []
    for key in keys:
        try:
            verify_rekor_set(rekor_keys, untrusted_set.encode(), public_key_pem(key), encoded, sig.payload)
        except InvalidSignatureError as exc:
            failures.append(str(exc))
            continue
        return [key]  # the SET names one key
    raise InvalidSignatureError("No public key verified against the RekorSET: " + ", ".join(failures))


def _sigstore_candidates(signatures: Sequence[Signature]) -> tuple[list[SigstoreSignature], str]:
    """The sigstore signature attachments, and the "no signature" message naming what else was found."""
    candidates: list[SigstoreSignature] = []
    non_sigstore = non_signature = 0
    for sig in signatures:
        if not isinstance(sig, SigstoreSignature):
            non_sigstore += 1
        elif sig.mime_type != SIGSTORE_SIGNATURE_MIME_TYPE:
            non_signature += 1
        else:
            candidates.append(sig)
    none = NO_SIGNATURE
    if non_sigstore or non_signature:
        none += f" ({non_sigstore} non-sigstore signatures, {non_signature} sigstore non-signature attachments)"
    return candidates, none


def _evaluate_fulcio(req: SigstoreSigned, fulcio: Mapping[str, Any], image: PolicyImage,
                     signatures: Sequence[Signature]) -> str | None:
    """Keyless: Rekor SET -> integrated time -> Fulcio certificate valid then -> its key signed the payload."""
    try:
        if "caPath" in fulcio:
            ca_pem = read_key_files([str(fulcio["caPath"])])[0]
        else:
            ca_pem = go_b64decode(str(fulcio.get("caData", "")))
        rekor_keys = _rekor_keys(req)
    except (InvalidSignatureError, binascii.Error, ValueError) as exc:
        return str(exc)
    candidates, none = _sigstore_candidates(signatures)
    rejections: list[str] = []
    for sig in candidates:
        try:
            untrusted_set = sig.annotations.get(SIGSTORE_SET_ANNOTATION)
            if untrusted_set is None:
                raise InvalidSignatureError(f"missing {SIGSTORE_SET_ANNOTATION} annotation")
            cert = sig.annotations.get(SIGSTORE_CERTIFICATE_ANNOTATION)
            if cert is None:
                raise InvalidSignatureError(f"missing {SIGSTORE_CERTIFICATE_ANNOTATION} annotation")
            chain = sig.annotations.get(SIGSTORE_CHAIN_ANNOTATION)
            integrated = verify_rekor_set(rekor_keys, untrusted_set.encode(), cert.encode(),
                                          sig.annotations.get(SIGSTORE_SIGNATURE_ANNOTATION, ""), sig.payload)
            key = verify_fulcio_certificate(ca_pem=ca_pem, certificate_pem=cert.encode(),
                                            chain_pem=chain.encode() if chain else None, at=integrated,
                                            oidc_issuer=str(fulcio["oidcIssuer"]),
                                            subject_email=str(fulcio["subjectEmail"]))
            payload = verify_sigstore_signature(sig, [key])
            check_payload(payload, image, req.signed_identity)
        except InvalidSignatureError as exc:
            rejections.append(str(exc))
            continue
        return None
    return summarize_rejections(rejections, none)


def _config_bytes(config: Mapping[str, Any], path_key: str, data_key: str) -> bytes | None:
    if path_key in config:
        return read_key_files([str(config[path_key])])[0]
    if data_key in config:
        try:
            return go_b64decode(str(config[data_key]))
        except (binascii.Error, ValueError) as exc:
            raise InvalidSignatureError(f"{data_key}: invalid base64: {exc}") from None
    return None


def _evaluate_pki(req: SigstoreSigned, pki: Mapping[str, Any], image: PolicyImage,
                  signatures: Sequence[Signature]) -> str | None:
    """X.509 PKI (c/image ``verifyPKI``): the certificate annotation chains to the policy's roots now."""
    try:
        roots = _config_bytes(pki, "caRootsPath", "caRootsData")
        if roots is None:
            raise InvalidSignatureError("At least one of caRootsPath and caRootsData must be specified")
        intermediates = _config_bytes(pki, "caIntermediatesPath", "caIntermediatesData")
    except InvalidSignatureError as exc:
        return str(exc)
    email = pki.get("subjectEmail")
    hostname = pki.get("subjectHostname")
    if not email and not hostname:
        return "At least one of subjectEmail, subjectHostname must be specified"
    candidates, none = _sigstore_candidates(signatures)
    rejections: list[str] = []
    for sig in candidates:
        try:
            cert = sig.annotations.get(SIGSTORE_CERTIFICATE_ANNOTATION)
            if cert is None:
                raise InvalidSignatureError(f"missing {SIGSTORE_CERTIFICATE_ANNOTATION} annotation")
            chain = sig.annotations.get(SIGSTORE_CHAIN_ANNOTATION)
            key = verify_pki_certificate(roots_pem=roots, intermediates_pem=intermediates,
                                         certificate_pem=cert.encode(), chain_pem=chain.encode() if chain else None,
                                         subject_email=str(email) if email else None,
                                         subject_hostname=str(hostname) if hostname else None)
            payload = verify_sigstore_signature(sig, [key])
            check_payload(payload, image, req.signed_identity)
        except InvalidSignatureError as exc:
            rejections.append(str(exc))
            continue
        return None
    return summarize_rejections(rejections, none)


def evaluate_sigstore_signed(req: SigstoreSigned, image: PolicyImage, signatures: Sequence[Signature]) -> str | None:
    """``None`` if one of ``signatures`` satisfies ``req`` (Fulcio, PKI or public keys) for ``image``, else why not."""
    if req.fulcio is not None:
        return _evaluate_fulcio(req, req.fulcio, image, signatures)
    if req.pki is not None:
        return _evaluate_pki(req, req.pki, image, signatures)
    try:
        if req.key_path is not None:
            pems = read_key_files([req.key_path])
        elif req.key_paths is not None:
            pems = read_key_files(req.key_paths)
        elif req.key_data is not None:
            pems = [req.key_data]
        else:
            pems = list(req.key_datas or ())
        keys = load_public_keys(pems, what="sigstoreSigned")
        rekor_keys = _rekor_keys(req) if req.uses_rekor else None
    except InvalidSignatureError as exc:
        return str(exc)
    rejections: list[str] = []
    candidates, none = _sigstore_candidates(signatures)
    for sig in candidates:
        try:
            usable = keys if rekor_keys is None else _keys_logged_in_rekor(sig, keys, rekor_keys)
            payload = verify_sigstore_signature(sig, usable)
            check_payload(payload, image, req.signed_identity)
        except InvalidSignatureError as exc:
            rejections.append(str(exc))
            continue
        return None
    return summarize_rejections(rejections, none)
