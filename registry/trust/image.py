"""The image as a signature policy sees it, and what every signature requirement checks of a verified payload.

containers/image ``signature/policy_eval.go`` evaluates a policy on the image *as named* (its logical reference
chooses the scope and is what ``signedIdentity`` rules compare with) and on the per-platform manifest pulled
(a signature must sign that manifest's digest): ``PolicyImage`` carries both. A payload whose signature verified
is accepted only if it names that manifest's digest and an acceptable identity (``policy_eval_simple.go``,
``policy_eval_sigstore.go``: ``verifyAndExtractSignature`` with ``validateSignedDockerManifestDigest`` and
``validateSignedDockerReference``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tether.registry.errors import InvalidSignatureError
from tether.registry.reference import Reference
from tether.registry.trust.config import PolicyScope
from tether.registry.trust.identity import IdentityMatch, identity_matches
from tether.registry.trust.signature import SignaturePayload, manifest_matches_digest

__all__ = ["NO_SIGNATURE", "PolicyImage", "check_payload", "read_key_files", "summarize_rejections"]

#: The rejection reason when no signature applies (c/image ``PolicyRequirementError``).
NO_SIGNATURE = "A signature was required, but no signature exists"


@dataclass(frozen=True, kw_only=True)
class PolicyImage:
    """What the policy looks at: the image as named, and its (per-platform) manifest."""

    description: str                        # "docker://quay.io/org/app:1.0", "oci:/srv/layout:app"
    scope: PolicyScope
    docker_reference: Reference | None  # None for OCI layouts
    manifest: bytes
    manifest_digest: str


def read_key_files(paths: Sequence[str]) -> list[bytes]:
    """The bytes of the policy's key (or CA) files; one that cannot be read is :class:`InvalidSignatureError`
    (the requirement then rejects, as c/image's does)."""
    out = []
    for path in paths:
        try:
            out.append(Path(path).read_bytes())
        except OSError as exc:
            raise InvalidSignatureError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    return out


def check_payload(payload: SignaturePayload, image: PolicyImage, rule: IdentityMatch) -> None:
    """:class:`InvalidSignatureError` unless a verified ``payload`` names the manifest pulled and an identity
    ``rule`` accepts for the image."""
    if not manifest_matches_digest(image.manifest, payload.docker_manifest_digest):
        raise InvalidSignatureError(f"Signature for digest {payload.docker_manifest_digest} does not match")
    if not identity_matches(rule, image.docker_reference, payload.docker_reference):
        raise InvalidSignatureError(f"Signature for identity {payload.docker_reference!r} is not accepted")


def summarize_rejections(rejections: list[str], none_message: str) -> str:
    """The reason a requirement gives when no signature passed: the one rejection, all of them, or
    ``none_message`` when there was no candidate signature at all."""
    if not rejections:
        return none_message
    if len(rejections) == 1:
        return rejections[0]
    return "None of the signatures were accepted, reasons: " + "; ".join(rejections)
