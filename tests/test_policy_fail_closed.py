"""Policy evaluation fails closed: whatever goes wrong while a requirement is evaluated (an exception of any
kind, a key file that cannot be read, a missing or broken gpg, a malformed signature or certificate), the
image is rejected with a reason naming it; it is never allowed."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest

from tests.harness.signing import CosignKey, FulcioCA, GPGSigner, key_data, pki_sign_image
from tether.registry.errors import ConfigError
from tether.registry.reference import parse_normalized_named
from tether.registry.trust import sigstore_signed
from tether.registry.trust.config import Policy, docker_scope, parse_policy
from tether.registry.trust.evaluate import PolicyDecision, evaluate_policy
from tether.registry.trust.gpg import GPGKeyring, GPGVerified
from tether.registry.trust.image import PolicyImage
from tether.registry.trust.signature import (
    SIGSTORE_CERTIFICATE_ANNOTATION,
    SIGSTORE_SET_ANNOTATION,
    SIGSTORE_SIGNATURE_ANNOTATION,
    Signature,
    SigstoreSignature,
    SimpleSigningSignature,
)
from tether.registry.trust.sigstore import sign_sigstore_payload

MANIFEST = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}'
NAME = "example.com/ns/app:1"


def image() -> PolicyImage:
    ref = parse_normalized_named(NAME)
    return PolicyImage(description=f"docker://{ref}", scope=docker_scope(ref), docker_reference=ref,
                       manifest=MANIFEST, manifest_digest="sha256:" + hashlib.sha256(MANIFEST).hexdigest())


def policy_of(*requirements: dict[str, Any]) -> Policy:
    return parse_policy(json.dumps({"default": list(requirements)}))


def rejected(decision: PolicyDecision, reason: str) -> bool:
    return not decision.allowed and reason in decision.reason


@pytest.fixture(scope="module")
def cosign() -> CosignKey:
    return CosignKey.generate()


@pytest.fixture(scope="module")
def gpg_signer() -> Iterator[GPGSigner]:
    signer = GPGSigner("tether fail closed")
    try:
        yield signer
    finally:
        signer.close()


def good_sigstore(cosign: CosignKey) -> SigstoreSignature:
    return cosign.sign_image(manifest_digest=image().manifest_digest, docker_reference=NAME)


def sigstore_requirement(cosign: CosignKey, **extra: Any) -> dict[str, Any]:
    return {"type": "sigstoreSigned", "keyData": key_data(cosign.public_pem),
            "signedIdentity": {"type": "matchRepoDigestOrExact"}, **extra}


def test_key_files_that_cannot_be_read_reject(cosign: CosignKey, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    rekor = key_data(CosignKey.generate().public_pem)
    identity = {"type": "matchRepoDigestOrExact"}
    cases: list[tuple[dict[str, Any], Sequence[Signature]]] = [
        ({"type": "signedBy", "keyType": "GPGKeys", "keyPath": missing}, [SimpleSigningSignature(b"\xa3x")]),
        ({"type": "sigstoreSigned", "keyPaths": [missing], "signedIdentity": identity}, [good_sigstore(cosign)]),
        (sigstore_requirement(cosign, rekorPublicKeyPath=missing), [good_sigstore(cosign)]),
        ({"type": "sigstoreSigned", "rekorPublicKeyData": rekor, "signedIdentity": identity,
          "fulcio": {"caPath": missing, "oidcIssuer": "https://i", "subjectEmail": "a@b"}}, [good_sigstore(cosign)]),
        ({"type": "sigstoreSigned", "signedIdentity": identity,
          "pki": {"caRootsPath": missing, "subjectEmail": "a@b"}}, [good_sigstore(cosign)]),
        ({"type": "sigstoreSigned", "signedIdentity": identity,
          "pki": {"caRootsData": key_data(FulcioCA.generate().ca_pem), "caIntermediatesPath": missing,
                  "subjectEmail": "a@b"}}, [good_sigstore(cosign)]),
    ]
    for requirement, signatures in cases:
        decision = evaluate_policy(policy_of(requirement), image(), signatures)
        assert rejected(decision, f"cannot read key file {missing}"), (requirement, decision.reason)


def test_gpg_missing_or_broken_rejects(gpg_signer: GPGSigner, tmp_path: Path) -> None:
    img = image()
    good = SimpleSigningSignature(gpg_signer.sign_image(manifest_digest=img.manifest_digest, docker_reference=NAME))
    policy = policy_of({"type": "signedBy", "keyType": "GPGKeys", "keyData": key_data(gpg_signer.public_key)})
    assert evaluate_policy(policy, img, [good]).allowed
    no_gpg = evaluate_policy(policy, img, [good], keyring_factory=lambda keys: GPGKeyring(keys, gpg="/nonexistent/gpg"))
    assert rejected(no_gpg, "'/nonexistent/gpg' is not installed")
    no_gpgv = evaluate_policy(policy, img, [good],
                              keyring_factory=lambda keys: GPGKeyring(keys, gpgv="/nonexistent/gpgv"))
    assert rejected(no_gpgv, "'/nonexistent/gpgv' is not installed")
    # a gpgv that cannot be executed raises PermissionError, which nothing in the GPG code expects
    not_executable = tmp_path / "gpgv"
    not_executable.write_text("#!/bin/sh\nexit 0\n")
    broken = evaluate_policy(policy, img, [good],
                             keyring_factory=lambda keys: GPGKeyring(keys, gpgv=str(not_executable)))
    assert rejected(broken, "evaluating the requirement failed: PermissionError")
    assert broken.requirement_index == 0 and broken.requirement_type == "signedBy"


class _ExplodingKeyring(GPGKeyring):
    """A keyring whose verification breaks unexpectedly (after an import that found a key)."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        super().__init__(())
        self.fingerprints = ("0" * 40,)

    def verify(self, blob: bytes) -> GPGVerified:
        raise RuntimeError("gpgv crashed")


def test_unexpected_exceptions_reject(cosign: CosignKey, monkeypatch: pytest.MonkeyPatch) -> None:
    img = image()
    signed_by = policy_of({"type": "signedBy", "keyType": "GPGKeys", "keyData": key_data(b"k")})

    def no_space(keys: Sequence[bytes]) -> GPGKeyring:
        raise OSError(28, "No space left on device")

    assert rejected(evaluate_policy(signed_by, img, [SimpleSigningSignature(b"\xa3x")], keyring_factory=no_space),
                    "evaluating the requirement failed: OSError")
    assert rejected(evaluate_policy(signed_by, img, [SimpleSigningSignature(b"\xa3x")],
                                    keyring_factory=_ExplodingKeyring), "RuntimeError: gpgv crashed")

    sigstore = policy_of(sigstore_requirement(cosign))
    assert evaluate_policy(sigstore, img, [good_sigstore(cosign)]).allowed

    def crash(*args: Any, **kwargs: Any) -> Any:
        raise TypeError("unexpected key object")

    monkeypatch.setattr(sigstore_signed, "verify_sigstore_signature", crash)
    decision = evaluate_policy(sigstore, img, [good_sigstore(cosign)])
    assert rejected(decision, "evaluating the requirement failed: TypeError: unexpected key object")
    monkeypatch.undo()
    monkeypatch.setattr(sigstore_signed, "check_payload", crash)
    assert rejected(evaluate_policy(sigstore, img, [good_sigstore(cosign)]), "TypeError")


def test_an_accepting_requirement_does_not_hide_a_broken_one(cosign: CosignKey, tmp_path: Path) -> None:
    policy = policy_of({"type": "insecureAcceptAnything"},
                       {"type": "sigstoreSigned", "keyPath": str(tmp_path / "none.pub"),
                        "signedIdentity": {"type": "matchRepoDigestOrExact"}})
    decision = evaluate_policy(policy, image(), [good_sigstore(cosign)])
    assert rejected(decision, "cannot read key file") and decision.requirement_index == 1


def test_signatures_not_read_and_unknown_requirements_reject(cosign: CosignKey) -> None:
    img = image()
    decision = evaluate_policy(policy_of(sigstore_requirement(cosign)), img, None)
    assert rejected(decision, "sigstoreSigned needs the image's signatures, and they were not read")
    strange = Policy(default=(cast(Any, object()),), transports={})
    decision = evaluate_policy(strange, img, [good_sigstore(cosign)])
    assert rejected(decision, "unknown requirement type object")


def _with(sig: SigstoreSignature, **annotations: str) -> SigstoreSignature:
    return SigstoreSignature(sig.mime_type, sig.payload, {**sig.annotations, **annotations})


def test_malformed_signatures_reject(cosign: CosignKey) -> None:
    img = image()
    good = good_sigstore(cosign)
    rekor = CosignKey.generate()
    ca = FulcioCA.generate()
    keyed = policy_of(sigstore_requirement(cosign))
    with_rekor = policy_of(sigstore_requirement(cosign, rekorPublicKeyData=key_data(rekor.public_pem)))
    pki = policy_of({"type": "sigstoreSigned", "signedIdentity": {"type": "matchRepoDigestOrExact"},
                     "pki": {"caRootsData": key_data(ca.ca_pem), "subjectEmail": "ci@example.com"}})
    pki_good = pki_sign_image(ca, manifest_digest=img.manifest_digest, docker_reference=NAME)
    assert evaluate_policy(pki, img, [pki_good]).allowed
    cases: list[tuple[Policy, SigstoreSignature, str]] = [
        (keyed, _with(good, **{SIGSTORE_SIGNATURE_ANNOTATION: "not base64!"}), "base64 decoding"),
        (keyed, SigstoreSignature(good.mime_type, b"{not json", good.annotations),
         "cryptographic signature verification failed"),
        (with_rekor, _with(good, **{SIGSTORE_SET_ANNOTATION: "{not json"}), "Rekor SET is not JSON"),
        (with_rekor, _with(good, **{SIGSTORE_SET_ANNOTATION: json.dumps({"SignedEntryTimestamp": "x"})}),
         'Key "Payload" missing'),
        (pki, _with(pki_good, **{SIGSTORE_CERTIFICATE_ANNOTATION: "-----BEGIN CERTIFICATE-----\nxx\n"}),
         "parsing leaf certificate"),
        (pki, _with(pki_good, **{SIGSTORE_CERTIFICATE_ANNOTATION: ""}), "no certificate found"),
    ]
    for policy, sig, reason in cases:
        decision = evaluate_policy(policy, img, [sig])
        assert rejected(decision, reason), (reason, decision.reason)
    # a signature that verifies over something that is not a payload
    not_a_payload = sign_sigstore_payload(cosign.private, b'{"critical": 1}')
    assert rejected(evaluate_policy(keyed, img, [not_a_payload]), 'Key "optional" missing')


@pytest.mark.parametrize(("section", "field"), [
    ({"caData": key_data(b"ca"), "oidcIssuer": 1, "subjectEmail": "a@b"}, "fulcio.oidcIssuer"),
    ({"caPath": ["/ca.pem"], "oidcIssuer": "https://i", "subjectEmail": "a@b"}, "fulcio.caPath"),
    ({"caRootsData": key_data(b"ca"), "subjectEmail": True}, "pki.subjectEmail"),
    ({"caRootsData": key_data(b"ca"), "subjectHostname": None}, "pki.subjectHostname"),
])
def test_fulcio_and_pki_values_must_be_strings(section: dict[str, Any], field: str) -> None:
    kind = field.split(".")[0]
    requirement: dict[str, Any] = {"type": "sigstoreSigned", "signedIdentity": {"type": "matchRepository"},
                                   kind: section}
    if kind == "fulcio":
        requirement["rekorPublicKeyData"] = key_data(b"r")
    where = re.escape(f"at default[0].{field}: string expected")
    with pytest.raises(ConfigError, match=where):
        policy_of(requirement)
