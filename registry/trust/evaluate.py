"""Evaluating a containers-policy.json(5) policy for one image (sans-IO apart from key files and ``gpg``).

containers/image ``signature/policy_eval.go`` ``IsRunningImageAllowed``: the requirements of the image's scope
(:func:`tether.registry.trust.config.requirements_for`) are evaluated in order and the first that does not allow
the image decides; ``signedBy`` as ``policy_eval_signedby.go`` (GPG keys only), ``sigstoreSigned`` in
:mod:`tether.registry.trust.sigstore_signed`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tether.registry.errors import InvalidSignatureError
from tether.registry.trust.config import (
    InsecureAcceptAnything,
    Policy,
    Reject,
    Requirement,
    SignedBaseLayer,
    SignedBy,
    SigstoreSigned,
    requirements_for,
)
from tether.registry.trust.gpg import GPGKeyring, verify_simple_signing
from tether.registry.trust.image import NO_SIGNATURE, PolicyImage, check_payload, read_key_files, summarize_rejections
from tether.registry.trust.signature import Signature, SimpleSigningSignature

__all__ = ["KeyringFactory", "PolicyDecision", "evaluate_policy", "needs_signatures", "needs_sigstore_signatures"]


@dataclass(frozen=True)
class PolicyDecision:
    """The outcome: ``allowed``, and for a rejection which rule (``label`` + requirement index) and why."""

    allowed: bool
    label: str
    requirement_index: int | None = None
    requirement_type: str | None = None
    reason: str = ""

    def message(self, image: PolicyImage, source: str) -> str:
        """One line for the user: which image, which policy file and rule, and why."""
        rule = self.label if self.requirement_index is None else f"{self.label}[{self.requirement_index}]"
        kind = f" ({self.requirement_type})" if self.requirement_type else ""
        return f"{image.description}: rejected by signature policy {source} rule {rule}{kind}: {self.reason}"


def needs_signatures(requirements: Sequence[Requirement]) -> bool:
    """Whether evaluating ``requirements`` in order reaches one that reads signatures."""
    for req in requirements:
        if isinstance(req, Reject | SignedBaseLayer):
            return False
        if isinstance(req, SignedBy | SigstoreSigned):
            return True
    return False


def needs_sigstore_signatures(requirements: Sequence[Requirement]) -> bool:
    """Whether any ``sigstoreSigned`` requirement applies (sigstore attachments are worth fetching)."""
    return any(isinstance(r, SigstoreSigned) for r in requirements)


KeyringFactory = Callable[[Sequence[bytes]], GPGKeyring]


def _evaluate_signed_by(req: SignedBy, image: PolicyImage, signatures: Sequence[Signature],
                        keyring_factory: KeyringFactory) -> str | None:
    """None if allowed, else the reason."""
    if req.key_type != "GPGKeys":
        return f'Unimplemented "keyType" value "{req.key_type}"'
    simple = [s for s in signatures if isinstance(s, SimpleSigningSignature)]
    if not simple:
        # containers/image imports the keys first; with no signature the answer is the same.
        return NO_SIGNATURE
    try:
        if req.key_path is not None:
            blobs = read_key_files([req.key_path])
        elif req.key_paths is not None:
            blobs = read_key_files(req.key_paths)
        else:
            blobs = [req.key_data or b""]
        keyring = keyring_factory(blobs)
    except InvalidSignatureError as exc:
        return str(exc)
    with keyring:
        if not keyring.fingerprints:
            return "No public keys imported"
        rejections: list[str] = []
        for sig in simple:
            try:
                payload = verify_simple_signing(sig, keyring)
                check_payload(payload, image, req.signed_identity)
            except InvalidSignatureError as exc:
                rejections.append(str(exc))
                continue
            return None
    return summarize_rejections(rejections, NO_SIGNATURE)


def _evaluate_requirement(req: Requirement, image: PolicyImage, signatures: Sequence[Signature] | None,
                          keyring_factory: KeyringFactory) -> str | None:
    """None if ``req`` allows ``image``, else the reason; anything not known to allow it rejects."""
    if isinstance(req, InsecureAcceptAnything):
        return None
    if isinstance(req, Reject):
        return f"Running image {image.description} is rejected by policy."
    if isinstance(req, SignedBaseLayer):
        return "signedBaseLayer is not implemented (by containers/image nor tether)"
    if signatures is None:
        return f"{req.type} needs the image's signatures, and they were not read"
    if isinstance(req, SignedBy):
        return _evaluate_signed_by(req, image, signatures, keyring_factory)
    if isinstance(req, SigstoreSigned):
        # Imported on first use: with cryptography (x509, hazmat) it costs 50-70 ms (python -X importtime,
        # tether.registry.trust.sigstore_signed cumulative) that policies without sigstoreSigned never need.
        from tether.registry.trust.sigstore_signed import evaluate_sigstore_signed

        return evaluate_sigstore_signed(req, image, signatures)
    return f"unknown requirement type {type(req).__name__}"


def evaluate_policy(policy: Policy, image: PolicyImage, signatures: Sequence[Signature] | None, *,
                    keyring_factory: KeyringFactory = GPGKeyring) -> PolicyDecision:
    """Decide whether ``policy`` allows ``image`` given its (untrusted) ``signatures``.

    Requirements of the matching scope are evaluated in order; the first that does not allow the image
    decides (containers/image ``IsRunningImageAllowed``). ``signatures`` may be ``None`` only when
    :func:`needs_signatures` is false (else the requirement that needs them rejects). Fails closed: any
    exception while evaluating a requirement (unreadable key file, missing ``gpg``, malformed signature or
    certificate, a bug) is a rejection naming it; the image is allowed only when every requirement said so.
    Blocking (runs ``gpg`` for ``signedBy``): call from a worker thread.
    """
    match = requirements_for(policy, image.scope)
    if not match.requirements:
        return PolicyDecision(False, match.label, None, None,
                              "List of verification policy requirements must not be empty")
    for index, req in enumerate(match.requirements):
        try:
            reason = _evaluate_requirement(req, image, signatures, keyring_factory)
        except Exception as exc:  # fail closed: an evaluation that breaks is a rejection, never an acceptance
            reason = f"evaluating the requirement failed: {type(exc).__name__}: {exc}"
        if reason is not None:
            return PolicyDecision(False, match.label, index, getattr(req, "type", type(req).__name__), reason)
    return PolicyDecision(True, match.label)
