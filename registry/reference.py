"""The docker image reference grammar, short names, and the transports tether understands.

The grammar is the one of github.com/distribution/reference (``regexp.go``, ``reference.go``,
``normalize.go``) as vendored by containers/image (``docker/reference``):

- ``name := [domain '/'] remote-name``; ``domain := host [':' port]``; ``host`` is a DNS-ish name
  (components ``[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]`` joined by ``.``) or an IPv6 literal
  in brackets (distribution/reference >= 0.6);
- ``remote-name := component ('/' component)*``, ``component := [a-z0-9]+ (separator [a-z0-9]+)*`` with
  separators ``.``, ``_``, ``__`` or any run of ``-``;
- ``tag := [\\w][\\w.-]{0,127}``; ``digest := algorithm ':' hex`` (go-digest: only sha256, sha384 and
  sha512, lowercase hex of the exact length, are accepted);
- the whole name (domain included) is at most 255 characters (containers/image's
  ``NameTotalLengthMax``; newer distribution/reference only limits the path, tether keeps the
  stricter rule so that it refuses exactly what podman refuses).

Normalisation (``ParseNormalizedNamed``/``splitDockerDomain``): the first component is a domain when it
contains ``.`` or ``:`` or is ``localhost``; ``index.docker.io`` is spelled ``docker.io``; one-component
paths on ``docker.io`` get ``library/``. A name without such a domain is a *short name*: tether never
silently adds ``docker.io`` to it; short names go through registries.conf
(:func:`tether.registry.registries_conf.resolve_short_name`), as podman does.

Transports (containers/image ``transports/alltransports``): ``docker://NAME`` (also the default when no
transport is given), ``oci:DIR[:REF]`` (or ``oci:DIR:@INDEX``) and ``oci-archive:FILE[:REF]``, the path
split from the reference at the first colon (``oci/internal.SplitPathAndImage``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Final

from tether.registry.errors import InvalidReferenceError

__all__ = [
    "DEFAULT_DOMAIN",
    "DOCKER_REGISTRY_HOST",
    "DockerName",
    "OCIArchiveName",
    "OCILayoutName",
    "Reference",
    "ShortName",
    "docker_policy_identity",
    "docker_policy_namespaces",
    "is_short_name",
    "parse_canonical_reference",
    "parse_image_name",
    "parse_normalized_named",
    "parse_reference",
    "parse_short_name",
    "split_docker_domain",
]

#: The user-visible name of Docker Hub (``defaultDomain``).
DEFAULT_DOMAIN: Final = "docker.io"
#: The legacy spelling normalised to :data:`DEFAULT_DOMAIN` (``legacyDefaultDomain``).
LEGACY_DEFAULT_DOMAIN: Final = "index.docker.io"
#: The host Docker Hub's API is actually served from (containers/image ``dockerRegistry``).
DOCKER_REGISTRY_HOST: Final = "registry-1.docker.io"
OFFICIAL_REPO_PREFIX: Final = "library/"
DEFAULT_TAG: Final = "latest"
#: containers/image ``reference.NameTotalLengthMax``.
NAME_TOTAL_LENGTH_MAX: Final = 255

# --- regexp.go, transcribed (Go's RE2 ``\w`` is ASCII, hence re.ASCII below) -------------------------
_ALPHANUMERIC = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_DOMAIN_NAME_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_OPTIONAL_PORT = r"(?::[0-9]+)?"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][0-9a-fA-F]{32,}"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN_NAME = _DOMAIN_NAME_COMPONENT + r"(?:\." + _DOMAIN_NAME_COMPONENT + r")*"
_HOST = r"(?:" + _DOMAIN_NAME + r"|" + _IPV6 + r")"
_DOMAIN_AND_PORT = _HOST + _OPTIONAL_PORT
_PATH_COMPONENT = _ALPHANUMERIC + r"(?:" + _SEPARATOR + _ALPHANUMERIC + r")*"
_REMOTE_NAME = _PATH_COMPONENT + r"(?:/" + _PATH_COMPONENT + r")*"
_NAME = r"(?:" + _DOMAIN_AND_PORT + r"/)?" + _REMOTE_NAME

REFERENCE_RE: Final = re.compile(r"^(" + _NAME + r")(?::(" + _TAG + r"))?(?:@(" + _DIGEST + r"))?$", re.ASCII)
ANCHORED_NAME_RE: Final = re.compile(r"^(?:(" + _DOMAIN_AND_PORT + r")/)?(" + _REMOTE_NAME + r")$", re.ASCII)
ANCHORED_DOMAIN_RE: Final = re.compile(r"^" + _DOMAIN_AND_PORT + r"$", re.ASCII)
ANCHORED_TAG_RE: Final = re.compile(r"^" + _TAG + r"$", re.ASCII)
ANCHORED_PATH_RE: Final = re.compile(r"^" + _REMOTE_NAME + r"$", re.ASCII)
_IDENTIFIER_RE: Final = re.compile(r"^[a-f0-9]{64}$")

# go-digest: the algorithms it can verify and their hex lengths.
_DIGEST_HEX_LENGTHS: Final = {"sha256": 64, "sha384": 96, "sha512": 128}
_DIGEST_FORMAT_RE: Final = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")


def _validate_digest(digest: str, *, text: str) -> None:
    """go-digest ``Digest.Validate``: known algorithm, lowercase hex of the right length."""
    if not _DIGEST_FORMAT_RE.match(digest):
        raise InvalidReferenceError(f"invalid reference {text!r}: invalid digest format {digest!r}")
    algorithm, _, encoded = digest.partition(":")
    length = _DIGEST_HEX_LENGTHS.get(algorithm)
    if length is None:
        raise InvalidReferenceError(f"invalid reference {text!r}: unsupported digest algorithm {algorithm!r}")
    if len(encoded) != length or not re.fullmatch(r"[a-f0-9]+", encoded):
        raise InvalidReferenceError(
            f"invalid reference {text!r}: invalid {algorithm} digest {digest!r} "
            f"(expected {length} lowercase hex characters)"
        )


def _is_domain(component: str) -> bool:
    """containers/image ``splitDockerDomain``: a first component is a registry when it has ``.``/``:``
    or is ``localhost``."""
    return "." in component or ":" in component or component == "localhost"


@dataclass(frozen=True)
class Reference:
    """A fully qualified, normalised docker reference: ``domain/path[:tag][@digest]``.

    ``domain`` is always set (``docker.io``, ``quay.io``, ``127.0.0.1:5000``, ``[::1]:5000``),
    ``path`` is the repository within it (``library/alpine``). Construction validates the grammar
    and normal form (``index.docker.io`` and ``docker.io/alpine`` are refused; use
    :func:`parse_reference`, which normalises them).
    """

    domain: str
    path: str
    tag: str | None = None
    digest: str | None = None

    def __post_init__(self) -> None:
        text = self._format()
        if not ANCHORED_DOMAIN_RE.match(self.domain) or not _is_domain(self.domain):
            raise InvalidReferenceError(f"invalid reference {text!r}: {self.domain!r} is not a registry domain")
        if self.domain == LEGACY_DEFAULT_DOMAIN:
            raise InvalidReferenceError(f"invalid reference {text!r}: not normalised (use {DEFAULT_DOMAIN})")
        if not ANCHORED_PATH_RE.match(self.path):
            raise InvalidReferenceError(f"invalid reference {text!r}: invalid repository path {self.path!r}")
        if self.domain == DEFAULT_DOMAIN and "/" not in self.path:
            raise InvalidReferenceError(
                f"invalid reference {text!r}: not normalised (use {DEFAULT_DOMAIN}/{OFFICIAL_REPO_PREFIX}{self.path})"
            )
        if len(self.name) > NAME_TOTAL_LENGTH_MAX:
            raise InvalidReferenceError(
                f"invalid reference {text[:80]!r}...: repository name must not be more than "
                f"{NAME_TOTAL_LENGTH_MAX} characters"
            )
        if self.tag is not None and not ANCHORED_TAG_RE.match(self.tag):
            raise InvalidReferenceError(f"invalid reference {text!r}: invalid tag {self.tag!r}")
        if self.digest is not None:
            _validate_digest(self.digest, text=text)

    def _format(self) -> str:
        out = f"{self.domain}/{self.path}"
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out

    def __str__(self) -> str:
        return self._format()

    @property
    def name(self) -> str:
        """``domain/path`` without tag or digest (containers/image ``Named.Name()``): what
        registries.conf prefixes and auth.json keys are matched against."""
        return f"{self.domain}/{self.path}"

    @property
    def registry_host(self) -> str:
        """The host[:port] the API is spoken to: ``registry-1.docker.io`` for ``docker.io``."""
        return DOCKER_REGISTRY_HOST if self.domain == DEFAULT_DOMAIN else self.domain

    @property
    def identifier(self) -> str:
        """What goes after ``/manifests/``: the digest if any, else the tag, else ``latest``."""
        return self.digest or self.tag or DEFAULT_TAG

    @property
    def is_name_only(self) -> bool:
        """Neither tag nor digest (``reference.IsNameOnly``)."""
        return self.tag is None and self.digest is None

    def with_tag(self, tag: str) -> Reference:
        """The same repository with ``tag`` (the digest is kept, as ``reference.WithTag`` does)."""
        return Reference(self.domain, self.path, tag, self.digest)

    def with_digest(self, digest: str) -> Reference:
        """The same repository with ``digest`` (the tag is kept, as ``reference.WithDigest`` does)."""
        return Reference(self.domain, self.path, self.tag, digest)

    def with_path(self, path: str) -> Reference:
        """Another repository on the same registry, with the same tag and digest."""
        return Reference(self.domain, path, self.tag, self.digest)

    def trimmed(self) -> Reference:
        """Name only (``reference.TrimNamed``)."""
        return Reference(self.domain, self.path)

    def tag_name_only(self) -> Reference:
        """``reference.TagNameOnly``: ``:latest`` added when there is neither tag nor digest."""
        return self.with_tag(DEFAULT_TAG) if self.is_name_only else self

    @property
    def familiar_name(self) -> str:
        """Docker's short display form (``alpine`` for ``docker.io/library/alpine``)."""
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        rest = self.path.removeprefix(OFFICIAL_REPO_PREFIX)
        return rest if rest != self.path and "/" not in rest else self.path


@dataclass(frozen=True)
class ShortName:
    """A name without a registry (``alpine``, ``library/fedora:39``, ``app@sha256:...``)."""

    path: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        out = self.path
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out


def _match(text: str) -> tuple[str | None, str, str | None, str | None]:
    """``reference.Parse``: (domain or None, path, tag, digest) without normalisation."""
    if not text:
        raise InvalidReferenceError("invalid reference '': repository name must have at least one component")
    m = REFERENCE_RE.match(text)
    if m is None:
        lowered = text.lower()
        if lowered != text and REFERENCE_RE.match(lowered):
            raise InvalidReferenceError(f"invalid reference {text!r}: repository name must be lowercase")
        raise InvalidReferenceError(f"invalid reference format: {text!r}")
    name, tag, digest = m.group(1), m.group(2), m.group(3)
    if len(name) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidReferenceError(
            f"invalid reference {text[:80]!r}...: repository name must not be more than "
            f"{NAME_TOTAL_LENGTH_MAX} characters"
        )
    if digest is not None:
        _validate_digest(digest, text=text)
    nm = ANCHORED_NAME_RE.match(name)
    assert nm is not None  # REFERENCE_RE matched the same name grammar
    return nm.group(1), nm.group(2), tag, digest


def split_docker_domain(name: str) -> tuple[str | None, str]:
    """containers/image ``splitDockerDomain`` without the docker.io default: ``(domain, rest)``,
    ``domain`` None for a short name; ``index.docker.io`` -> ``docker.io``; ``library/`` added to
    one-component docker.io paths."""
    first, sep, rest = name.partition("/")
    if not sep or not _is_domain(first):
        return None, name
    domain = DEFAULT_DOMAIN if first == LEGACY_DEFAULT_DOMAIN else first
    if domain == DEFAULT_DOMAIN and "/" not in rest.partition(":")[0].partition("@")[0]:
        rest = OFFICIAL_REPO_PREFIX + rest
    return domain, rest


def is_short_name(text: str) -> bool:
    """True if ``text`` parses as a reference whose first component is not a registry (no ``.``,
    no ``:``, not ``localhost``): containers/image ``shortnames.IsShortName``. Invalid text is not
    a short name (it is not a name at all)."""
    try:
        domain, _path, _tag, _digest = _match(text)
    except InvalidReferenceError:
        return False
    return domain is None or not _is_domain(domain)


def parse_short_name(text: str) -> ShortName:
    """Parse a short name (``InvalidReferenceError`` if ``text`` is invalid or fully qualified)."""
    domain, path, tag, digest = _match(text)
    if domain is not None and _is_domain(domain):
        raise InvalidReferenceError(f"{text!r} is not a short name: it names the registry {domain!r}")
    full_path = f"{domain}/{path}" if domain is not None else path
    if full_path.lower() != full_path:
        raise InvalidReferenceError(f"invalid reference {text!r}: repository name must be lowercase")
    return ShortName(full_path, tag, digest)


def parse_reference(text: str) -> Reference:
    """Parse a fully qualified reference and normalise it (``reference.ParseNormalizedNamed`` for
    names that carry a registry): ``docker.io/alpine`` -> ``docker.io/library/alpine``,
    ``index.docker.io/x/y`` -> ``docker.io/x/y``. No default tag is added (see
    :meth:`Reference.tag_name_only`).

    Short names (``alpine``, ``library/alpine:3``) raise :class:`InvalidReferenceError`: they must be
    resolved with registries.conf (:func:`tether.registry.registries_conf.resolve_short_name`).
    """
    if _IDENTIFIER_RE.match(text):
        raise InvalidReferenceError(f"invalid repository name ({text}), cannot specify 64-byte hexadecimal strings")
    raw_domain, _path, _tag, _digest = _match(text)
    if raw_domain is None or not _is_domain(raw_domain):
        raise InvalidReferenceError(
            f"{text!r} is a short name (no registry); it must be resolved through registries.conf "
            "or written fully qualified (e.g. quay.io/org/image:tag)"
        )
    domain, remainder = split_docker_domain(text)
    assert domain is not None
    remote = remainder.partition(":")[0].partition("@")[0]
    if remote.lower() != remote:
        raise InvalidReferenceError(f"invalid reference {text!r}: repository name ({remote}) must be lowercase")
    new_domain, path, tag, digest = _match(f"{domain}/{remainder}")
    assert new_domain == domain
    return Reference(domain, path, tag, digest)


def parse_normalized_named(text: str) -> Reference:
    """distribution/reference ``ParseNormalizedNamed``: like :func:`parse_reference`, but a name without a
    registry means Docker Hub (``busybox`` -> ``docker.io/library/busybox``). This is the normalisation
    containers-policy.json(5) identities and registries.d scopes use; image names given to a pull go
    through registries.conf instead.
    """
    first, sep, _rest = text.partition("/")
    if not sep or not _is_domain(first):
        if _IDENTIFIER_RE.match(text):
            raise InvalidReferenceError(
                f"invalid repository name ({text}), cannot specify 64-byte hexadecimal strings"
            )
        if first.lower() != first:
            # splitDockerDomain would take an upper-case first component for a registry; a
            # :class:`Reference` needs one with "." or ":" (or localhost), so such a name is refused.
            raise InvalidReferenceError(f"invalid reference {text!r}: repository name must be lowercase")
        text = f"{DEFAULT_DOMAIN}/{text}"
    return parse_reference(text)


def parse_canonical_reference(text: str) -> Reference:
    """``reference.ParseNamed``: like :func:`parse_reference` but the text must already be in normal
    form (``docker.io/alpine`` is refused), as containers/image requires of rewritten locations."""
    ref = parse_reference(text)
    if str(ref) != text:
        raise InvalidReferenceError(f"invalid reference {text!r}: repository name must be canonical ({ref})")
    return ref


def docker_policy_identity(ref: Reference) -> str:
    """containers/image ``policyconfiguration.DockerReferenceIdentity``: ``name:tag``, or ``name@digest`` when
    there is a digest (it wins over a tag); ``name:latest`` for a name-only reference. The most specific
    scope of containers-policy.json(5) and containers-registries.d(5)."""
    if ref.digest is not None:
        return f"{ref.name}@{ref.digest}"
    return f"{ref.name}:{ref.tag or DEFAULT_TAG}"


def docker_policy_namespaces(ref: Reference) -> tuple[str, ...]:
    """containers/image ``policyconfiguration.DockerReferenceNamespaces``: the repository, its parent
    namespaces, ``host[:port]``, then ``*.``-wildcards of the host's parent domains, most specific first."""
    out: list[str] = []
    name = ref.name
    while True:
        out.append(name)
        slash = name.rfind("/")
        if slash == -1:
            break
        name = name[:slash]
    host = name.partition(":")[0]
    while True:
        dot = host.find(".")
        if dot == -1:
            break
        host = host[dot + 1:]
        out.append("*." + host)
    return tuple(out)


# --- transports ---------------------------------------------------------------------------------------

# oci/internal/oci_util.go refRegexp: what may follow the path in oci: and oci-archive: names.
_OCI_REF_COMPONENT = r"(?:[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*)"
_OCI_REF_RE: Final = re.compile(r"^" + _OCI_REF_COMPONENT + r"(?:/" + _OCI_REF_COMPONENT + r")*$")

#: Transports containers/image knows that tether does not read from.
_UNSUPPORTED_TRANSPORTS: Final = frozenset(
    {"containers-storage", "dir", "docker-archive", "docker-daemon", "sif", "tarball", "ostree"}
)


@dataclass(frozen=True)
class DockerName:
    """``docker://NAME`` (or a bare name): an image on a registry.

    ``name`` is the text after the transport; ``reference`` is set when it is fully qualified,
    otherwise ``short`` is (podman resolves ``docker://alpine`` through registries.conf too).
    """

    transport: ClassVar[str] = "docker"
    name: str
    reference: Reference | None
    short: ShortName | None

    @property
    def is_short(self) -> bool:
        """A short name, to be resolved through registries.conf."""
        return self.reference is None

    def __str__(self) -> str:
        return f"docker://{self.name}"


@dataclass(frozen=True)
class OCILayoutName:
    """``oci:DIR[:REF]`` or ``oci:DIR:@INDEX`` (an OCI image layout directory)."""

    transport: ClassVar[str] = "oci"
    path: Path
    reference: str | None = None
    index: int | None = None

    def __str__(self) -> str:
        if self.index is not None:
            return f"oci:{self.path}:@{self.index}"
        return f"oci:{self.path}" + (f":{self.reference}" if self.reference else "")


@dataclass(frozen=True)
class OCIArchiveName:
    """``oci-archive:FILE[:REF]`` (a tar of an OCI image layout)."""

    transport: ClassVar[str] = "oci-archive"
    path: Path
    reference: str | None = None

    def __str__(self) -> str:
        return f"oci-archive:{self.path}" + (f":{self.reference}" if self.reference else "")


def _split_oci(text: str, within: str) -> tuple[Path, str | None]:
    # oci/internal.splitPathAndImageNonWindows: cut at the first colon; ValidateOCIPath then
    # forbids colons in the path (they cannot occur after the cut) and ValidateImageName checks REF.
    path, _, ref = within.partition(":")
    if not path:
        raise InvalidReferenceError(f"invalid image name {text!r}: the path is empty")
    if ref and not ref.startswith("@") and not _OCI_REF_RE.match(ref):
        raise InvalidReferenceError(f"invalid image name {text!r}: invalid image reference {ref!r}")
    return Path(path), ref or None


def parse_image_name(text: str) -> DockerName | OCILayoutName | OCIArchiveName:
    """Parse ``TRANSPORT:REFERENCE`` (containers/image ``alltransports.ParseImageName``), with the
    docker transport as default for text without a known transport (podman's behaviour for
    ``quay.io/x:1``, ``localhost:5000/x`` or ``alpine``).

    ``InvalidReferenceError`` for bad syntax and for transports tether does not pull from
    (``containers-storage:``, ``docker-archive:``, ``dir:``...).
    """
    if text.startswith("docker://"):
        return _docker_name(text, text[len("docker://") :])
    if text.startswith("docker:"):
        raise InvalidReferenceError(f"invalid image name {text!r}: docker: references start with docker://")
    if text.startswith("oci-archive:"):
        path, ref = _split_oci(text, text[len("oci-archive:") :])
        if ref is not None and ref.startswith("@"):
            raise InvalidReferenceError(f"invalid image name {text!r}: invalid image reference {ref!r}")
        return OCIArchiveName(path, ref)
    if text.startswith("oci:"):
        path, ref = _split_oci(text, text[len("oci:") :])
        if ref is not None and ref.startswith("@"):
            # oci/internal.parseOCIReferenceName: "@N" selects the N-th manifest of index.json.
            try:
                index = int(ref[1:], 10)
            except ValueError:
                raise InvalidReferenceError(
                    f"invalid image name {text!r}: invalid source index {ref!r}: not an integer"
                ) from None
            if index < 0 or not ref[1:].isdigit():
                raise InvalidReferenceError(f"invalid image name {text!r}: source index must not be negative")
            return OCILayoutName(path, None, index)
        return OCILayoutName(path, ref)
    transport, sep, _ = text.partition(":")
    if sep and transport in _UNSUPPORTED_TRANSPORTS:
        raise InvalidReferenceError(f"invalid image name {text!r}: transport {transport!r} is not supported")
    return _docker_name(text, text)


def _docker_name(text: str, name: str) -> DockerName:
    if is_short_name(name):
        return DockerName(name, None, parse_short_name(name))
    try:
        return DockerName(name, parse_reference(name), None)
    except InvalidReferenceError as exc:
        if text == name:
            raise
        raise InvalidReferenceError(f"invalid image name {text!r}: {exc}") from None
