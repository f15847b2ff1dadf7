"""containers-policy.json(5): loading, scope matching and evaluation (sans-IO apart from key files and gpg).

Mirrors containers/image ``signature/policy_config.go`` (parsing, as strict: unknown keys, duplicate keys,
empty requirement lists and invalid values are errors naming the file and the key),
``policy_eval.go`` (scope choice: the image's full identity, then its namespaces, then the transport's
``""`` scope, then ``default``; every requirement must allow the image), ``policy_reference_match.go``
(``signedIdentity`` rules), ``policy_eval_signedby.go`` and ``policy_eval_sigstore.go``.

Transports: ``docker`` (identity ``host/repo:tag`` or ``host/repo@digest``; namespaces ``host/repo``,
its parents, ``host[:port]``, then ``*.domain`` wildcards), ``oci`` and ``oci-archive`` (the resolved
path and its parent directories). Other transports' sections (``docker-daemon``, ``atomic``, ...) are
parsed and ignored, as tether never pulls from them.

Anything tether cannot evaluate (``signedBaseLayer``, ``keyType`` other than ``GPGKeys``) loads fine but
**rejects** the image when it applies, naming the requirement. Sigstore public keys (optionally with
Rekor), Fulcio + Rekor (keyless) and X.509 PKI certificates are evaluated.
"""

from __future__ import annotations

import binascii
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether.registry.errors import ConfigError
from tether.registry.reference import (
    ANCHORED_DOMAIN_RE,
    ANCHORED_NAME_RE,
    Reference,
    docker_policy_identity,
    docker_policy_namespaces,
    parse_canonical_reference,
    parse_normalized_named,
)
from tether.registry.signatures import (
    SIGSTORE_CERTIFICATE_ANNOTATION,
    SIGSTORE_CHAIN_ANNOTATION,
    SIGSTORE_SET_ANNOTATION,
    SIGSTORE_SIGNATURE_ANNOTATION,
    SIGSTORE_SIGNATURE_MIME_TYPE,
    GPGKeyring,
    InvalidSignatureError,
    Signature,
    SignaturePayload,
    SigstoreSignature,
    SimpleSigningSignature,
    go_b64decode,
    is_valid_digest,
    load_public_keys,
    manifest_matches_digest,
    public_key_pem,
    verify_fulcio_certificate,
    verify_pki_certificate,
    verify_rekor_set,
    verify_sigstore_signature,
    verify_simple_signing,
)

SYSTEM_POLICY_PATH = Path("/etc/containers/policy.json")
USER_POLICY_PATH = Path(".config/containers/policy.json")  # relative to $HOME

# ---------------------------------------------------------------------------------------------------------
# layout paths


def path_policy_namespaces(resolved: str) -> tuple[str, ...]:
    """oci/oci-archive ``PolicyConfigurationNamespaces``: the path and its parents, without ``/``."""
    out: list[str] = []
    path = resolved
    while True:
        slash = path.rfind("/")
        if slash == -1 or path == "/":
            break
        out.append(path)
        path = path[:slash]
    return tuple(out)


def resolve_layout_path(path: str) -> str:
    """``explicitfilepath.ResolvePathToFullyExplicit``: absolute, symlinks resolved, cleaned."""
    return os.path.realpath(os.path.abspath(path))


# ---------------------------------------------------------------------------------------------------------
# signedIdentity rules


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


# ---------------------------------------------------------------------------------------------------------
# requirements


@dataclass(frozen=True)
class InsecureAcceptAnything:
    """``insecureAcceptAnything``: allows the image (signatures are not looked at)."""

    type: str = field(default="insecureAcceptAnything", init=False)


@dataclass(frozen=True)
class Reject:
    """``reject``: refuses the image."""

    type: str = field(default="reject", init=False)


@dataclass(frozen=True, kw_only=True)
class SignedBy:
    """``signedBy``: a GPG simple signature by one of the keys, for an acceptable identity."""

    key_type: str
    key_path: str | None = None
    key_paths: tuple[str, ...] | None = None
    key_data: bytes | None = None
    signed_identity: IdentityMatch = field(default_factory=MatchRepoDigestOrExact)
    type: str = field(default="signedBy", init=False)


@dataclass(frozen=True, kw_only=True)
class SignedBaseLayer:
    """``signedBaseLayer``: not implemented by containers/image either; always rejects."""

    base_layer_identity: IdentityMatch
    type: str = field(default="signedBaseLayer", init=False)


@dataclass(frozen=True, kw_only=True)
class SigstoreSigned:
    """``sigstoreSigned``: a sigstore (cosign) signature by one of the public keys.

    Public keys may be combined with ``rekorPublicKey*`` (the signature's Rekor SET must then prove the key's
    use was logged); ``fulcio`` (keyless: certificate chained to the Fulcio CA at the Rekor SET's time, OIDC
    issuer and e-mail checked) needs them; ``pki`` (certificate chained to the policy's X.509 roots now,
    e-mail/hostname checked) must not have them.
    """

    key_path: str | None = None
    key_paths: tuple[str, ...] | None = None
    key_data: bytes | None = None
    key_datas: tuple[bytes, ...] | None = None
    fulcio: Mapping[str, Any] | None = None
    pki: Mapping[str, Any] | None = None
    rekor_public_key_path: str | None = None
    rekor_public_key_paths: tuple[str, ...] | None = None
    rekor_public_key_data: bytes | None = None
    rekor_public_key_datas: tuple[bytes, ...] | None = None
    signed_identity: IdentityMatch = field(default_factory=MatchRepoDigestOrExact)
    type: str = field(default="sigstoreSigned", init=False)

    @property
    def uses_rekor(self) -> bool:
        return any(v is not None for v in (self.rekor_public_key_path, self.rekor_public_key_paths,
                                            self.rekor_public_key_data, self.rekor_public_key_datas))


Requirement = InsecureAcceptAnything | Reject | SignedBy | SignedBaseLayer | SigstoreSigned


@dataclass(frozen=True)
class Policy:
    """A loaded policy. ``source`` names the file (or ``"<bytes>"``) for messages."""

    default: tuple[Requirement, ...]
    transports: Mapping[str, Mapping[str, tuple[Requirement, ...]]]
    source: str = "<policy>"


# ---------------------------------------------------------------------------------------------------------
# parsing


class _Fail(Exception):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


def _pairs_no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Fail("", f'Duplicate key "{key}"')
        out[key] = value
    return out


def _obj(value: Any, key: str, *, allowed: Sequence[str], required: Sequence[str] = ()) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Fail(key, "JSON object expected")
    for k in value:
        if k not in allowed:
            raise _Fail(f"{key}.{k}" if key else k, f'Unknown key "{k}"')
    for k in required:
        if k not in value:
            raise _Fail(key, f'Key "{k}" missing in a JSON object')
    return value


def _str(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise _Fail(key, "string expected")
    return value


def _str_list(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Fail(key, "list of strings expected")
    return tuple(value)


def _b64(value: Any, key: str) -> bytes:
    # Go's encoding/json decodes []byte from standard base64.
    if not isinstance(value, str):
        raise _Fail(key, "base64 string expected")
    try:
        return go_b64decode(value)
    except (binascii.Error, ValueError) as exc:
        raise _Fail(key, f"invalid base64: {exc}") from None


def _b64_list(value: Any, key: str) -> tuple[bytes, ...]:
    if not isinstance(value, list):
        raise _Fail(key, "list of base64 strings expected")
    return tuple(_b64(v, f"{key}[{i}]") for i, v in enumerate(value))


#: Identity rules that take no parameters besides their type.
_SIMPLE_IDENTITIES: dict[str, type[MatchExact | MatchRepoDigestOrExact | MatchRepository]] = {
    "matchExact": MatchExact,
    "matchRepoDigestOrExact": MatchRepoDigestOrExact,
    "matchRepository": MatchRepository,
}


def _parse_identity(value: Any, key: str) -> IdentityMatch:
    if not isinstance(value, dict):
        raise _Fail(key, "JSON object expected")
    kind = value.get("type")
    simple = _SIMPLE_IDENTITIES.get(kind) if isinstance(kind, str) else None
    if simple is not None:
        _obj(value, key, allowed=("type",))
        return simple()
    if kind == "exactReference":
        _obj(value, key, allowed=("type", "dockerReference"), required=("dockerReference",))
        text = _str(value["dockerReference"], f"{key}.dockerReference")
        try:
            ref = parse_normalized_named(text)
        except ValueError as exc:
            raise _Fail(f"{key}.dockerReference", f"Invalid format of dockerReference {text!r}: {exc}") from None
        if ref.is_name_only:
            raise _Fail(f"{key}.dockerReference", f"dockerReference {text!r} contains neither a tag nor digest")
        return ExactReference(text)
    if kind == "exactRepository":
        _obj(value, key, allowed=("type", "dockerRepository"), required=("dockerRepository",))
        text = _str(value["dockerRepository"], f"{key}.dockerRepository")
        try:
            parse_normalized_named(text)
        except ValueError as exc:
            raise _Fail(f"{key}.dockerRepository", f"Invalid format of dockerRepository {text!r}: {exc}") from None
        return ExactRepository(text)
    if kind == "remapIdentity":
        _obj(value, key, allowed=("type", "prefix", "signedPrefix"), required=("prefix", "signedPrefix"))
        prefix = _str(value["prefix"], f"{key}.prefix")
        signed_prefix = _str(value["signedPrefix"], f"{key}.signedPrefix")
        for k, p in (("prefix", prefix), ("signedPrefix", signed_prefix)):
            head, slash, _ = p.partition("/")
            if not (ANCHORED_DOMAIN_RE.match(p)
                    or (ANCHORED_NAME_RE.match(p) and slash and ANCHORED_DOMAIN_RE.match(head))):
                raise _Fail(f"{key}.{k}", f"prefix {p!r} is not valid")
        return RemapIdentity(prefix, signed_prefix)
    raise _Fail(f"{key}.type", f"Unknown policy reference match type {kind!r}")


_SIGNED_BY_KEY_TYPES = ("GPGKeys", "signedByGPGKeys", "X509Certificates", "signedByX509CAs")


def _parse_requirement(value: Any, key: str) -> Requirement:
    if not isinstance(value, dict):
        raise _Fail(key, "JSON object expected")
    kind = value.get("type")
    if kind in ("insecureAcceptAnything", "reject"):
        _obj(value, key, allowed=("type",))
        return InsecureAcceptAnything() if kind == "insecureAcceptAnything" else Reject()
    if kind == "signedBy":
        _obj(value, key, allowed=("type", "keyType", "keyPath", "keyPaths", "keyData", "signedIdentity"))
        key_type = _str(value.get("keyType", ""), f"{key}.keyType")
        if key_type not in _SIGNED_BY_KEY_TYPES:
            raise _Fail(f"{key}.keyType", f"Unrecognized keyType value {key_type!r}")
        sources = [k for k in ("keyPath", "keyPaths", "keyData") if k in value]
        if len(sources) != 1:
            raise _Fail(key, "Exactly one of keyPath, keyPaths and keyData must be specified, "
                             + ("none of them present" if not sources else "more than one present"))
        identity: IdentityMatch = (_parse_identity(value["signedIdentity"], f"{key}.signedIdentity")
                                   if "signedIdentity" in value else MatchRepoDigestOrExact())
        return SignedBy(
            key_type=key_type,
            key_path=_str(value["keyPath"], f"{key}.keyPath") if "keyPath" in value else None,
            key_paths=_str_list(value["keyPaths"], f"{key}.keyPaths") if "keyPaths" in value else None,
            key_data=_b64(value["keyData"], f"{key}.keyData") if "keyData" in value else None,
            signed_identity=identity,
        )
    if kind == "signedBaseLayer":
        _obj(value, key, allowed=("type", "baseLayerIdentity"), required=("baseLayerIdentity",))
        return SignedBaseLayer(base_layer_identity=_parse_identity(value["baseLayerIdentity"],
                                                                   f"{key}.baseLayerIdentity"))
    if kind == "sigstoreSigned":
        return _parse_sigstore(value, key)
    raise _Fail(f"{key}.type", f"Unknown policy requirement type {kind!r}")


def _parse_sigstore(value: dict[str, Any], key: str) -> SigstoreSigned:
    _obj(value, key, allowed=("type", "keyPath", "keyPaths", "keyData", "keyDatas", "fulcio", "pki",
                              "rekorPublicKeyPath", "rekorPublicKeyPaths", "rekorPublicKeyData",
                              "rekorPublicKeyDatas", "signedIdentity"))
    key_paths = _str_list(value["keyPaths"], f"{key}.keyPaths") if "keyPaths" in value else None
    if key_paths is not None and not key_paths:
        raise _Fail(f"{key}.keyPaths", '"keyPaths" contains no entries')
    key_datas = _b64_list(value["keyDatas"], f"{key}.keyDatas") if "keyDatas" in value else None
    if key_datas is not None and not key_datas:
        raise _Fail(f"{key}.keyDatas", '"keyDatas" contains no entries')
    fulcio = value.get("fulcio")
    if fulcio is not None:
        fulcio = _obj(fulcio, f"{key}.fulcio", allowed=("caPath", "caData", "oidcIssuer", "subjectEmail"))
        if "caPath" in fulcio and "caData" in fulcio:
            raise _Fail(f"{key}.fulcio", "caPath and caData cannot be used simultaneously")
        if "caPath" not in fulcio and "caData" not in fulcio:
            raise _Fail(f"{key}.fulcio", "At least one of caPath and caData must be specified")
        for required in ("oidcIssuer", "subjectEmail"):
            if required not in fulcio:
                raise _Fail(f"{key}.fulcio", f"{required} not specified")
    pki = value.get("pki")
    if pki is not None:
        pki = _obj(pki, f"{key}.pki", allowed=("caRootsPath", "caRootsData", "caIntermediatesPath",
                                               "caIntermediatesData", "subjectEmail", "subjectHostname"))
    sources = [k for k in ("keyPath", "keyPaths", "keyData", "keyDatas", "fulcio", "pki") if k in value]
    if len(sources) != 1:
        raise _Fail(key, "exactly one of keyPath, keyPaths, keyData, keyDatas, fulcio, and pki must be specified")
    rekor = [k for k in ("rekorPublicKeyPath", "rekorPublicKeyPaths", "rekorPublicKeyData", "rekorPublicKeyDatas")
             if k in value]
    if len(rekor) > 1:
        raise _Fail(key, "at most one of rekorPublicKeyPath, rekorPublicKeyPaths, rekorPublicKeyData and "
                         "rekorPublicKeyDatas can be used simultaneously")
    if fulcio is not None and not rekor:
        raise _Fail(key, "At least one of rekorPublicKeyPath, rekorPublicKeyPaths, rekorPublicKeyData and "
                         "rekorPublicKeyDatas must be specified if fulcio is used")
    if pki is not None and rekor:
        raise _Fail(key, "rekorPublicKeyPath, rekorPublicKeyPaths, rekorPublicKeyData and rekorPublicKeyDatas "
                         "are not supported for pki")
    if "signedIdentity" not in value:
        raise _Fail(key, "signedIdentity not specified")
    return SigstoreSigned(
        key_path=_str(value["keyPath"], f"{key}.keyPath") if "keyPath" in value else None,
        key_paths=key_paths,
        key_data=_b64(value["keyData"], f"{key}.keyData") if "keyData" in value else None,
        key_datas=key_datas,
        fulcio=fulcio,
        pki=pki,
        rekor_public_key_path=(_str(value["rekorPublicKeyPath"], f"{key}.rekorPublicKeyPath")
                               if "rekorPublicKeyPath" in value else None),
        rekor_public_key_paths=(_str_list(value["rekorPublicKeyPaths"], f"{key}.rekorPublicKeyPaths")
                                if "rekorPublicKeyPaths" in value else None),
        rekor_public_key_data=(_b64(value["rekorPublicKeyData"], f"{key}.rekorPublicKeyData")
                               if "rekorPublicKeyData" in value else None),
        rekor_public_key_datas=(_b64_list(value["rekorPublicKeyDatas"], f"{key}.rekorPublicKeyDatas")
                                if "rekorPublicKeyDatas" in value else None),
        signed_identity=_parse_identity(value["signedIdentity"], f"{key}.signedIdentity"),
    )


def _parse_requirements(value: Any, key: str) -> tuple[Requirement, ...]:
    if not isinstance(value, list):
        raise _Fail(key, "JSON array of requirements expected")
    if not value:
        raise _Fail(key, "List of verification policy requirements must not be empty")
    return tuple(_parse_requirement(item, f"{key}[{i}]") for i, item in enumerate(value))


def _validate_scope(transport: str, scope: str, key: str) -> None:
    if scope == "":
        return
    if transport in ("oci", "oci-archive", "dir"):
        # oci/internal ValidateScope: absolute, not "/", canonical.
        if not scope.startswith("/"):
            raise _Fail(key, f"Invalid scope {scope}: must be an absolute path")
        if scope == "/":
            raise _Fail(key, 'Invalid scope "/": Use the generic default scope ""')
        if os.path.normpath(scope) != scope:
            raise _Fail(key, f"Invalid scope {scope}: Uses non-canonical path format, perhaps try with path "
                             f"{os.path.normpath(scope)}")
    elif transport == "docker-daemon" and is_valid_digest(scope):
        raise _Fail(key, f"docker-daemon: can not use algo:digest value {scope} as a namespace")


def parse_policy(data: bytes | str, *, source: str = "<policy>") -> Policy:
    """Parse policy JSON; :class:`ConfigError` names ``source`` and the offending key."""
    try:
        try:
            top = json.loads(data, object_pairs_hook=_pairs_no_duplicates)
        except ValueError as exc:
            if isinstance(exc, _Fail):
                raise
            raise _Fail("", f"invalid JSON: {exc}") from None
        top = _obj(top, "", allowed=("default", "transports"))
        if "default" not in top:
            raise _Fail("default", "Default policy is missing")
        default = _parse_requirements(top["default"], "default")
        transports: dict[str, dict[str, tuple[Requirement, ...]]] = {}
        raw_transports = top.get("transports")
        if raw_transports is not None:
            if not isinstance(raw_transports, dict):
                raise _Fail("transports", "JSON object expected")
            for transport, scopes in raw_transports.items():
                tkey = f"transports.{transport}"
                if not isinstance(scopes, dict):
                    raise _Fail(tkey, "JSON object expected")
                parsed: dict[str, tuple[Requirement, ...]] = {}
                for scope, reqs in scopes.items():
                    skey = f'{tkey}["{scope}"]'
                    _validate_scope(transport, scope, skey)
                    parsed[scope] = _parse_requirements(reqs, skey)
                transports[transport] = parsed
    except _Fail as fail:
        where = f" at {fail.key}" if fail.key else ""
        raise ConfigError(f"invalid policy in {source}{where}: {fail.message}") from None
    return Policy(default=default, transports=transports, source=source)


def find_policy_file(*, explicit: Path | None = None, home: str | None = None,
                     system: Path = SYSTEM_POLICY_PATH) -> Path:
    """containers/image ``defaultPolicyPath``: ``--signature-policy``; else ``$HOME/.config/containers/
    policy.json`` if it exists; else ``/etc/containers/policy.json``; none -> :class:`ConfigError`."""
    if explicit is not None:
        return explicit
    home = home if home is not None else os.environ.get("HOME")
    user = Path(home) / USER_POLICY_PATH if home else None
    if user is not None and user.exists():
        return user
    if system.exists():
        return system
    raise ConfigError(f"no policy.json file found at any of the following: {str(user)!r}, {str(system)!r}")


def load_policy(path: Path | None = None, *, home: str | None = None) -> Policy:
    """Load the policy: ``path`` if given (``--signature-policy``), else the default lookup (see
    :func:`find_policy_file`). Errors (missing file, invalid JSON or values) are :class:`ConfigError`."""
    chosen = find_policy_file(explicit=path, home=home)
    try:
        data = chosen.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read signature policy {chosen}: {exc.strerror or exc}") from None
    return parse_policy(data, source=str(chosen))


# ---------------------------------------------------------------------------------------------------------
# scope selection


@dataclass(frozen=True)
class PolicyScope:
    """An image's identity for policy purposes: ``transport``, full ``identity`` and wider ``namespaces``."""

    transport: str
    identity: str
    namespaces: tuple[str, ...]


def docker_scope(ref: Reference) -> PolicyScope:
    """The scope of a registry image (the logical reference, as named by the user)."""
    return PolicyScope("docker", docker_policy_identity(ref), docker_policy_namespaces(ref))


def layout_scope(transport: str, path: str) -> PolicyScope:
    """The scope of an ``oci:``/``oci-archive:`` image: its resolved path (the ref inside is not part of it)."""
    resolved = resolve_layout_path(path)
    return PolicyScope(transport, resolved, path_policy_namespaces(resolved))


@dataclass(frozen=True)
class ScopeMatch:
    """The requirements that apply and where they come from (``label``, e.g. ``transports.docker["quay.io"]``)."""

    requirements: tuple[Requirement, ...]
    label: str


def requirements_for(policy: Policy, scope: PolicyScope) -> ScopeMatch:
    """containers/image ``requirementsForImageRef``: identity, namespaces, ``""``, then ``default``."""
    scopes = policy.transports.get(scope.transport)
    if scopes is not None:
        for name in (scope.identity, *scope.namespaces):
            if name in scopes:
                return ScopeMatch(scopes[name], f'transports.{scope.transport}["{name}"]')
        if "" in scopes:
            return ScopeMatch(scopes[""], f'transports.{scope.transport}[""]')
    return ScopeMatch(policy.default, "default")


# ---------------------------------------------------------------------------------------------------------
# evaluation


@dataclass(frozen=True, kw_only=True)
class PolicyImage:
    """What the policy looks at: the image as named, and its (per-platform) manifest."""

    description: str                        # "docker://quay.io/org/app:1.0", "oci:/srv/layout:app"
    scope: PolicyScope
    docker_reference: Reference | None  # None for OCI layouts
    manifest: bytes
    manifest_digest: str


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


def _read_key_files(paths: Sequence[str]) -> list[bytes]:
    out = []
    for path in paths:
        try:
            out.append(Path(path).read_bytes())
        except OSError as exc:
            raise InvalidSignatureError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    return out


def _check_payload(payload: SignaturePayload, image: PolicyImage, rule: IdentityMatch) -> None:
    if not manifest_matches_digest(image.manifest, payload.docker_manifest_digest):
        raise InvalidSignatureError(f"Signature for digest {payload.docker_manifest_digest} does not match")
    if not identity_matches(rule, image.docker_reference, payload.docker_reference):
        raise InvalidSignatureError(f"Signature for identity {payload.docker_reference!r} is not accepted")


def _summary(rejections: list[str], none_message: str) -> str:
    if not rejections:
        return none_message
    if len(rejections) == 1:
        return rejections[0]
    return "None of the signatures were accepted, reasons: " + "; ".join(rejections)


KeyringFactory = Callable[[Sequence[bytes]], GPGKeyring]


def _evaluate_signed_by(req: SignedBy, image: PolicyImage, signatures: Sequence[Signature],
                        keyring_factory: KeyringFactory) -> str | None:
    """None if allowed, else the reason."""
    if req.key_type != "GPGKeys":
        return f'Unimplemented "keyType" value "{req.key_type}"'
    simple = [s for s in signatures if isinstance(s, SimpleSigningSignature)]
    if not simple:
        # containers/image imports the keys first; with no signature the answer is the same.
        return "A signature was required, but no signature exists"
    try:
        if req.key_path is not None:
            blobs = _read_key_files([req.key_path])
        elif req.key_paths is not None:
            blobs = _read_key_files(req.key_paths)
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
                _check_payload(payload, image, req.signed_identity)
            except InvalidSignatureError as exc:
                rejections.append(str(exc))
                continue
            return None
    return _summary(rejections, "A signature was required, but no signature exists")


def _rekor_keys(req: SigstoreSigned) -> list[Any]:
    from cryptography.hazmat.primitives.asymmetric import ec

    if req.rekor_public_key_path is not None:
        pems = _read_key_files([req.rekor_public_key_path])
    elif req.rekor_public_key_paths is not None:
        pems = _read_key_files(req.rekor_public_key_paths)
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
    none = "A signature was required, but no signature exists"
    if non_sigstore or non_signature:
        none += f" ({non_sigstore} non-sigstore signatures, {non_signature} sigstore non-signature attachments)"
    return candidates, none


def _evaluate_fulcio(req: SigstoreSigned, fulcio: Mapping[str, Any], image: PolicyImage,
                     signatures: Sequence[Signature]) -> str | None:
    """Keyless: Rekor SET -> integrated time -> Fulcio certificate valid then -> its key signed the payload."""
    try:
        if "caPath" in fulcio:
            ca_pem = _read_key_files([str(fulcio["caPath"])])[0]
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
            _check_payload(payload, image, req.signed_identity)
        except InvalidSignatureError as exc:
            rejections.append(str(exc))
            continue
        return None
    return _summary(rejections, none)


def _config_bytes(config: Mapping[str, Any], path_key: str, data_key: str) -> bytes | None:
    if path_key in config:
        return _read_key_files([str(config[path_key])])[0]
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
            _check_payload(payload, image, req.signed_identity)
        except InvalidSignatureError as exc:
            rejections.append(str(exc))
            continue
        return None
    return _summary(rejections, none)


def _evaluate_sigstore(req: SigstoreSigned, image: PolicyImage, signatures: Sequence[Signature]) -> str | None:
    if req.fulcio is not None:
        return _evaluate_fulcio(req, req.fulcio, image, signatures)
    if req.pki is not None:
        return _evaluate_pki(req, req.pki, image, signatures)
    try:
        if req.key_path is not None:
            pems = _read_key_files([req.key_path])
        elif req.key_paths is not None:
            pems = _read_key_files(req.key_paths)
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
            _check_payload(payload, image, req.signed_identity)
        except InvalidSignatureError as exc:
            rejections.append(str(exc))
            continue
        return None
    return _summary(rejections, none)


def evaluate_policy(policy: Policy, image: PolicyImage, signatures: Sequence[Signature] | None, *,
                    keyring_factory: KeyringFactory = GPGKeyring) -> PolicyDecision:
    """Decide whether ``policy`` allows ``image`` given its (untrusted) ``signatures``.

    Requirements of the matching scope are evaluated in order; the first that does not allow the image
    decides (containers/image ``IsRunningImageAllowed``). ``signatures`` may be ``None`` only when
    :func:`needs_signatures` is false. Blocking (runs ``gpg`` for ``signedBy``): call from a worker thread.
    """
    match = requirements_for(policy, image.scope)
    if not match.requirements:
        return PolicyDecision(False, match.label, None, None,
                              "List of verification policy requirements must not be empty")
    for index, req in enumerate(match.requirements):
        reason: str | None
        if isinstance(req, InsecureAcceptAnything):
            reason = None
        elif isinstance(req, Reject):
            reason = f"Running image {image.description} is rejected by policy."
        elif isinstance(req, SignedBaseLayer):
            reason = "signedBaseLayer is not implemented (by containers/image nor tether)"
        elif signatures is None:
            raise ValueError("evaluate_policy: signatures are needed for " + req.type)
        elif isinstance(req, SignedBy):
            reason = _evaluate_signed_by(req, image, signatures, keyring_factory)
        else:
            reason = _evaluate_sigstore(req, image, signatures)
        if reason is not None:
            return PolicyDecision(False, match.label, index, req.type, reason)
    return PolicyDecision(True, match.label)


__all__ = [
    "SYSTEM_POLICY_PATH",
    "ExactReference",
    "ExactRepository",
    "IdentityMatch",
    "InsecureAcceptAnything",
    "MatchExact",
    "MatchRepoDigestOrExact",
    "MatchRepository",
    "Policy",
    "PolicyDecision",
    "PolicyImage",
    "PolicyScope",
    "Reject",
    "RemapIdentity",
    "Requirement",
    "ScopeMatch",
    "SignedBaseLayer",
    "SignedBy",
    "SigstoreSigned",
    "docker_scope",
    "evaluate_policy",
    "find_policy_file",
    "identity_matches",
    "layout_scope",
    "load_policy",
    "needs_signatures",
    "needs_sigstore_signatures",
    "parse_policy",
    "requirements_for",
]
