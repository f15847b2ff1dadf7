"""containers-policy.json(5): the policy as data, strict parsing, the file lookup and scope selection (sans-IO).

Mirrors containers/image ``signature/policy_config.go`` (parsing, as strict: unknown keys, duplicate keys,
empty requirement lists and invalid values are errors naming the file and the key) and ``policy_eval.go``
``requirementsForImageRef`` (scope choice: the image's full identity, then its namespaces, then the
transport's ``""`` scope, then ``default``).

Transports: ``docker`` (identity ``host/repo:tag`` or ``host/repo@digest``; namespaces ``host/repo``,
its parents, ``host[:port]``, then ``*.domain`` wildcards: c/image ``policyconfiguration``), ``oci`` and
``oci-archive`` (the resolved path and its parent directories). Other transports' sections
(``docker-daemon``, ``atomic``, ...) are parsed and ignored, as tether never pulls from them.

Anything tether cannot evaluate (``signedBaseLayer``, ``keyType`` other than ``GPGKeys``) loads fine but
**rejects** the image when it applies (:mod:`tether.registry.trust.evaluate`), naming the requirement.
"""

from __future__ import annotations

import binascii
import json
import os
from collections.abc import Mapping, Sequence
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
    parse_normalized_named,
)
from tether.registry.trust.identity import (
    ExactReference,
    ExactRepository,
    IdentityMatch,
    MatchExact,
    MatchRepoDigestOrExact,
    MatchRepository,
    RemapIdentity,
)
from tether.registry.trust.signature import go_b64decode, is_valid_digest

__all__ = [
    "SYSTEM_POLICY_PATH",
    "InsecureAcceptAnything",
    "Policy",
    "PolicyScope",
    "Reject",
    "Requirement",
    "ScopeMatch",
    "SignedBaseLayer",
    "SignedBy",
    "SigstoreSigned",
    "docker_scope",
    "find_policy_file",
    "layout_scope",
    "load_policy",
    "parse_policy",
    "path_policy_namespaces",
    "requirements_for",
    "resolve_layout_path",
]

SYSTEM_POLICY_PATH = Path("/etc/containers/policy.json")
USER_POLICY_PATH = Path(".config/containers/policy.json")  # relative to $HOME


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
        """Whether Rekor public keys are configured (a Rekor SET is then required)."""
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


def _only_strings(table: Mapping[str, Any], key: str) -> None:
    # c/image unmarshals fulcio/pki into Go structs of strings ([]byte for *Data, from base64 strings): a value
    # of another JSON type is a parse error there, never something evaluation turns into a string.
    for name, value in table.items():
        _str(value, f"{key}.{name}")


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
        _only_strings(fulcio, f"{key}.fulcio")
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
        _only_strings(pki, f"{key}.pki")
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
