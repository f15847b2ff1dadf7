"""``signedIdentity`` rules of containers-policy.json(5): which signed references a pulled image accepts.

containers/image ``signature/policy_reference_match.go``. Every rule compares the reference a verified
payload names (``critical.identity.docker-reference``, normalised as ``reference.ParseNormalizedNamed`` does)
with the image as the user named it (its logical reference, not the mirror that served it). A signed
reference that does not parse never matches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tether.registry.reference import Reference, parse_canonical_reference, parse_normalized_named

__all__ = [
    "ExactReference",
    "ExactRepository",
    "IdentityMatch",
    "MatchExact",
    "MatchRepoDigestOrExact",
    "MatchRepository",
    "RemapIdentity",
    "identity_matches",
]


@dataclass(frozen=True)
class MatchExact:
    """``matchExact``: the signed reference equals the pulled one (both with a tag or digest)."""

    type: str = field(default="matchExact", init=False)


@dataclass(frozen=True)
class MatchRepoDigestOrExact:
    """``matchRepoDigestOrExact`` (the default): exact for tags; same repository for digest pulls."""

    type: str = field(default="matchRepoDigestOrExact", init=False)


@dataclass(frozen=True)
class MatchRepository:
    """``matchRepository``: same repository, any tag."""

    type: str = field(default="matchRepository", init=False)


@dataclass(frozen=True)
class ExactReference:
    """``exactReference``: the signature must name ``docker_reference`` exactly."""

    docker_reference: str
    type: str = field(default="exactReference", init=False)


@dataclass(frozen=True)
class ExactRepository:
    """``exactRepository``: the signature must name ``docker_repository`` (any tag)."""

    docker_repository: str
    type: str = field(default="exactRepository", init=False)


@dataclass(frozen=True)
class RemapIdentity:
    """``remapIdentity``: ``prefix`` of the pulled name is replaced by ``signed_prefix``, then like
    ``matchRepoDigestOrExact``."""

    prefix: str
    signed_prefix: str
    type: str = field(default="remapIdentity", init=False)


IdentityMatch = MatchExact | MatchRepoDigestOrExact | MatchRepository | ExactReference | ExactRepository | RemapIdentity


def _repo_digest_or_exact(intended: Reference, signed: Reference) -> bool:
    if signed.is_name_only:
        return False
    if intended.tag is not None:  # includes tag+digest
        return str(signed) == str(intended)
    if intended.digest is not None:
        # The digest itself is checked against the manifest separately (the signed digest must match it).
        return signed.name == intended.name
    return False


def _remap_matches_prefix(prefix: str, name: str) -> bool:
    if len(name) < len(prefix):
        return False
    if len(name) == len(prefix):
        return name == prefix
    return name.startswith(prefix) and name[len(prefix)] == "/"


def identity_matches(rule: IdentityMatch, image_ref: Reference | None, signed_reference: str) -> bool:
    """Whether ``signed_reference`` (from a verified payload) is acceptable for the pulled image.

    ``image_ref`` is the image's docker reference (``None`` for OCI layouts, which never match the
    image-relative rules, as in containers/image).
    """
    try:
        signed = parse_normalized_named(signed_reference)
    except ValueError:
        return False
    if isinstance(rule, ExactReference | ExactRepository):
        try:
            wanted = parse_normalized_named(
                rule.docker_reference if isinstance(rule, ExactReference) else rule.docker_repository)
        except ValueError:
            return False
        if isinstance(rule, ExactReference):
            return not wanted.is_name_only and not signed.is_name_only and str(signed) == str(wanted)
        return signed.name == wanted.name
    if image_ref is None:
        return False
    if isinstance(rule, MatchExact):
        if image_ref.is_name_only or signed.is_name_only:
            return False
        return str(signed) == str(image_ref)
    if isinstance(rule, MatchRepoDigestOrExact):
        return _repo_digest_or_exact(image_ref, signed)
    if isinstance(rule, MatchRepository):
        return signed.name == image_ref.name
    # RemapIdentity
    intended = image_ref
    if _remap_matches_prefix(rule.prefix, intended.name):
        rewritten = str(intended).replace(rule.prefix, rule.signed_prefix, 1)
        try:
            intended = parse_canonical_reference(rewritten)
        except ValueError:
            return False
    return _repo_digest_or_exact(intended, signed)
