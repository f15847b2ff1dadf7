"""Manifests, indexes, image configs and platform choice, sans-IO.

Media types and their checks follow the OCI image spec (image-spec ``manifest.md``, ``image-index.md``,
``config.md``) and containers/image ``manifest/manifest.go`` (type guessing, schema1 handling).
Platform choice follows containers/image ``internal/pkg/platform/platform_matcher.go``
(``WantedPlatforms``, ``MatchesPlatform``) and ``internal/manifest/{oci_index,docker_schema2_list}.go``
(``chooseInstance``).
"""

from __future__ import annotations

import hashlib
import json
import platform as _pyplatform
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

from tether.registry.errors import ManifestError, PlatformError

__all__ = [
    "ACCEPTED_MANIFEST_TYPES",
    "DOCKER_CONFIG",
    "DOCKER_LAYER_GZIP",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "DOCKER_SCHEMA1",
    "DOCKER_SCHEMA1_SIGNED",
    "INDEX_TYPES",
    "MANIFEST_TYPES",
    "MAX_CONFIG_SIZE",
    "MAX_MANIFEST_SIZE",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER",
    "OCI_LAYER_GZIP",
    "OCI_LAYER_ZSTD",
    "OCI_MANIFEST",
    "Descriptor",
    "ImageConfig",
    "ImageIndex",
    "ImageManifest",
    "Platform",
    "choose_platform",
    "compute_digest",
    "host_platform",
    "parse_image_config",
    "parse_manifest",
    "parse_platform",
    "parse_rfc3339",
    "platform_of_descriptors",
    "validate_digest",
    "wanted_platforms",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})
#: The ``Accept`` list for manifest GETs. Schema1 is deliberately absent: a registry that can convert
#: (docker-registry does) then serves schema2, and one that cannot gets a clear refusal.
ACCEPTED_MANIFEST_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST)

#: containers/image docker/docker_image_src.go ``maxManifestBodySize`` (iolimits): 4 MiB.
MAX_MANIFEST_SIZE = 4 * 1024 * 1024
#: containers/image iolimits ``maxConfigBodySize``: 4 MiB.
MAX_CONFIG_SIZE = 4 * 1024 * 1024

# Content types that say nothing about the manifest: guess from the body (c/image GuessMIMEType).
_GENERIC_TYPES = frozenset({"", "text/plain", "application/json", "application/octet-stream"})

# OCI image-spec descriptor.md: algorithm ":" encoded; registered algorithms and their lengths.
_DIGEST_RE = re.compile(r"^(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")


def validate_digest(digest: object, *, what: str = "digest") -> str:
    """``digest`` if it is a valid ``sha256:``/``sha512:`` digest, else :class:`ManifestError`.

    Digests end up in URLs and file names; anything else is refused.
    """
    if not isinstance(digest, str) or not _DIGEST_RE.match(digest):
        raise ManifestError(f"invalid {what} {digest!r}")
    return digest


def compute_digest(data: bytes, algorithm: str = "sha256") -> str:
    """``algorithm:hex`` of ``data``."""
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


@dataclass(frozen=True)
class Platform:
    """An OCI platform (image-spec image-index.md ``platform``)."""

    os: str
    architecture: str
    variant: str | None = None

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base


@dataclass(frozen=True)
class Descriptor:
    """An OCI content descriptor."""

    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    platform: Platform | None = None


@dataclass(frozen=True)
class ImageManifest:
    """An OCI image manifest or Docker schema2 manifest."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class ImageIndex:
    """An OCI image index or Docker manifest list."""

    media_type: str
    manifests: tuple[Descriptor, ...]
    annotations: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image config (image-spec config.md) tether uses; ``raw`` is the whole object."""

    diff_ids: tuple[str, ...]
    created: datetime | None
    os: str
    architecture: str
    variant: str | None
    env: tuple[str, ...]
    labels: Mapping[str, str]
    raw: Mapping[str, Any]
    author: str | None = None
    docker_version: str | None = None


# ---------------------------------------------------------------------------------------------
# manifests


def _load_json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ManifestError(f"{what} is not a JSON object")
    return value


def _guess_media_type(obj: Mapping[str, Any]) -> str:
    """containers/image manifest.GuessMIMEType, for bodies served with a generic Content-Type."""
    declared = obj.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    version = obj.get("schemaVersion")
    if version == 1:
        return DOCKER_SCHEMA1_SIGNED if "signatures" in obj else DOCKER_SCHEMA1
    if version == 2:
        # OCI manifests and indexes may omit mediaType (it was optional before image-spec 1.0.2).
        if "manifests" in obj and "layers" not in obj and "config" not in obj:
            return OCI_INDEX
        if "layers" in obj or "config" in obj:
            config = obj.get("config")
            if isinstance(config, Mapping) and config.get("mediaType") == DOCKER_CONFIG:
                return DOCKER_MANIFEST
            return OCI_MANIFEST
    return ""


def _strip_parameters(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _schema1_error() -> ManifestError:
    return ManifestError(
        "the image uses a Docker schema1 manifest, which tether does not support (schema1 is deprecated "
        "and cannot carry a verifiable config); push the image again with a Docker schema2 or OCI manifest"
    )


def parse_manifest(raw: bytes, media_type: str | None) -> ImageManifest | ImageIndex:
    """Parse a manifest or index served with Content-Type ``media_type`` (``None`` if absent).

    The type comes from ``media_type`` unless that is generic, then from the body. A body whose
    ``mediaType`` field disagrees with the Content-Type, or whose fields belong to the other kind
    (c/image ``ValidateUnambiguousManifestFormat``), is refused; so are schema1 manifests and bodies
    larger than :data:`MAX_MANIFEST_SIZE`.
    """
    if len(raw) > MAX_MANIFEST_SIZE:
        raise ManifestError(f"manifest is {len(raw)} bytes, more than the {MAX_MANIFEST_SIZE} byte limit")
    header_type = _strip_parameters(media_type)
    if header_type in SCHEMA1_TYPES:
        raise _schema1_error()
    obj = _load_json_object(raw, "manifest")
    body_type = obj.get("mediaType")
    if body_type is not None and not isinstance(body_type, str):
        raise ManifestError("manifest mediaType is not a string")
    if header_type in _GENERIC_TYPES:
        kind = _guess_media_type(obj)
    else:
        kind = header_type
        if body_type and body_type != header_type:
            raise ManifestError(
                f"manifest served as {header_type} declares mediaType {body_type}; refusing an ambiguous manifest"
            )
    if kind in SCHEMA1_TYPES or obj.get("schemaVersion") == 1:
        raise _schema1_error()
    if kind not in MANIFEST_TYPES and kind not in INDEX_TYPES:
        raise ManifestError(f"unsupported manifest type {kind or '(unknown)'!r}")
    if obj.get("schemaVersion") != 2:
        raise ManifestError(f"manifest schemaVersion is {obj.get('schemaVersion')!r}, expected 2")
    annotations = _string_map(obj.get("annotations"), "manifest annotations")
    if kind in INDEX_TYPES:
        for forbidden in ("config", "layers"):
            if forbidden in obj:
                raise ManifestError(f"{kind} has a {forbidden!r} field; refusing an ambiguous manifest")
        entries = obj.get("manifests")
        if not isinstance(entries, list):
            raise ManifestError(f"{kind} has no manifests list")
        return ImageIndex(
            media_type=kind,
            manifests=tuple(_parse_descriptor(e, "manifests entry") for e in entries),
            annotations=annotations,
        )
    if "manifests" in obj:
        raise ManifestError(f"{kind} has a 'manifests' field; refusing an ambiguous manifest")
    layers = obj.get("layers")
    if not isinstance(layers, list):
        raise ManifestError(f"{kind} has no layers list")
    return ImageManifest(
        media_type=kind,
        config=_parse_descriptor(obj.get("config"), "config descriptor"),
        layers=tuple(_parse_descriptor(layer, "layer descriptor") for layer in layers),
        annotations=annotations,
    )


def _string_map(value: object, what: str) -> Mapping[str, str]:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ManifestError(f"{what} is not a map of strings")
    return MappingProxyType(dict(value))


def _parse_descriptor(value: object, what: str) -> Descriptor:
    if not isinstance(value, dict):
        raise ManifestError(f"{what} is not a JSON object")
    media_type = value.get("mediaType", "")
    if not isinstance(media_type, str):
        raise ManifestError(f"{what} mediaType is not a string")
    digest = validate_digest(value.get("digest"), what=f"{what} digest")
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"{what} {digest} has an invalid size {size!r}")
    urls = value.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise ManifestError(f"{what} {digest} has invalid urls")
    platform = None
    raw_platform = value.get("platform")
    if raw_platform is not None:
        if not isinstance(raw_platform, dict):
            raise ManifestError(f"{what} {digest} has an invalid platform")
        os_name = raw_platform.get("os", "")
        arch = raw_platform.get("architecture", "")
        variant = raw_platform.get("variant") or None
        if not all(isinstance(x, str) for x in (os_name, arch)) or not isinstance(variant, str | None):
            raise ManifestError(f"{what} {digest} has an invalid platform")
        platform = Platform(os=os_name, architecture=arch, variant=variant)
    return Descriptor(
        media_type=media_type,
        digest=digest,
        size=size,
        urls=tuple(urls),
        annotations=_string_map(value.get("annotations"), f"{what} {digest} annotations"),
        platform=platform,
    )


# ---------------------------------------------------------------------------------------------
# image config

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|z|[+-]\d{2}:\d{2})$"
)


def parse_rfc3339(text: str) -> tuple[datetime, int]:
    """Parse an RFC 3339 time as Go's ``time.RFC3339Nano`` parser does: ``(datetime, nanoseconds)``.

    ``datetime`` keeps microseconds; the exact nanoseconds are returned separately so that callers that
    re-format the time (``tether inspect``, as skopeo does) lose nothing. ValueError when malformed.
    """
    m = _RFC3339.match(text)
    if m is None:
        raise ValueError(f"invalid RFC 3339 time {text!r}")
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    frac = (m.group(7) or "")[:9].ljust(9, "0")
    nanos = int(frac)
    zone = m.group(8)
    if zone in ("Z", "z"):
        tz: timezone = UTC
    else:
        sign = 1 if zone[0] == "+" else -1
        tz = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    return datetime(year, month, day, hour, minute, second, nanos // 1000, tzinfo=tz), nanos


def parse_image_config(raw: bytes) -> ImageConfig:
    """Parse an image config (OCI or Docker); ``rootfs.diff_ids`` are required and validated."""
    if len(raw) > MAX_CONFIG_SIZE:
        raise ManifestError(f"image config is {len(raw)} bytes, more than the {MAX_CONFIG_SIZE} byte limit")
    obj = _load_json_object(raw, "image config")
    rootfs = obj.get("rootfs")
    if not isinstance(rootfs, dict):
        raise ManifestError("image config has no rootfs")
    if rootfs.get("type") != "layers":
        raise ManifestError(f"image config rootfs.type is {rootfs.get('type')!r}, expected 'layers'")
    raw_diff_ids = rootfs.get("diff_ids")
    if not isinstance(raw_diff_ids, list):
        raise ManifestError("image config has no rootfs.diff_ids list")
    diff_ids = tuple(validate_digest(d, what="rootfs.diff_ids entry") for d in raw_diff_ids)
    created = None
    raw_created = obj.get("created")
    if isinstance(raw_created, str) and raw_created:
        try:
            created = parse_rfc3339(raw_created)[0]
        except ValueError:
            raise ManifestError(f"image config created {raw_created!r} is not an RFC 3339 time") from None
    container_config = obj.get("config")
    if container_config is None:
        container_config = {}
    if not isinstance(container_config, dict):
        raise ManifestError("image config 'config' is not an object")
    env = container_config.get("Env") or []
    if not isinstance(env, list) or not all(isinstance(e, str) for e in env):
        raise ManifestError("image config Env is not a list of strings")
    labels = _string_map(container_config.get("Labels"), "image config Labels")

    def optional_str(key: str) -> str | None:
        value = obj.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise ManifestError(f"image config {key} is not a string")
        return value

    return ImageConfig(
        diff_ids=diff_ids,
        created=created,
        os=optional_str("os") or "",
        architecture=optional_str("architecture") or "",
        variant=optional_str("variant"),
        env=tuple(env),
        labels=labels,
        raw=MappingProxyType(obj),
        author=optional_str("author"),
        docker_version=optional_str("docker_version"),
    )


# ---------------------------------------------------------------------------------------------
# platforms

# containers/image internal/pkg/platform: compatibility, most compatible first.
_VARIANT_COMPATIBILITY: Mapping[str, tuple[str, ...]] = {
    "arm": ("v8", "v7", "v6", "v5"),
    "arm64": ("v8",),
}

# Go's GOARCH names for Python's platform.machine() values (and containerd's normalisation aliases).
_ARCH_ALIASES: Mapping[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None),
    "x86-64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "armv5tel": ("arm", "v5"),
    "i386": ("386", None),
    "i486": ("386", None),
    "i586": ("386", None),
    "i686": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
    "mips64": ("mips64", None),
}


def _cpu_arm_variant(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """c/image ``getCPUVariant``: "CPU architecture" of /proc/cpuinfo -> ``v5``..``v8``."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "CPU architecture":
            value = value.strip().lower()
            if value in ("aarch64", "8", "armv8"):
                return "v8"
            if value in ("5", "6", "7"):
                return f"v{value}"
            if value.isdigit() and int(value) > 8:
                return "v8"
    return None


def host_platform() -> Platform:
    """The platform of this host, as containers/image's WantedPlatforms computes it by default."""
    os_name = "linux" if sys.platform.startswith("linux") else sys.platform
    machine = _pyplatform.machine().lower()
    arch, variant = _ARCH_ALIASES.get(machine, (machine, None))
    if arch in ("arm", "arm64"):
        variant = _cpu_arm_variant() or variant or ("v8" if arch == "arm64" else None)
    return Platform(os=os_name, architecture=arch, variant=variant)


def parse_platform(text: str) -> Platform:
    """Parse ``--platform os/arch[/variant]`` (architecture aliases such as ``x86_64`` normalised)."""
    parts = text.strip().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise PlatformError(f"invalid platform {text!r}: expected os/arch[/variant]")
    os_name = parts[0].lower()
    arch, alias_variant = _ARCH_ALIASES.get(parts[1].lower(), (parts[1].lower(), None))
    variant: str | None = parts[2].lower() if len(parts) == 3 else alias_variant
    if variant is not None and variant.isdigit():
        variant = f"v{variant}"
    return Platform(os=os_name, architecture=arch, variant=variant)


def wanted_platforms(wanted: Platform) -> tuple[Platform, ...]:
    """containers/image ``WantedPlatforms``: the candidates, most wanted first.

    With a variant: that variant, the less capable compatible ones, then "" (any variant). Without:
    "" (any variant) then the architecture's whole compatibility list.
    """
    variants: list[str]
    compat = _VARIANT_COMPATIBILITY.get(wanted.architecture)
    if wanted.variant:
        if compat is not None and wanted.variant in compat:
            variants = list(compat[compat.index(wanted.variant) :])
        else:
            variants = [wanted.variant]
        variants.append("")
    else:
        variants = ["", *(compat or ())]
    return tuple(Platform(wanted.os, wanted.architecture, v or None) for v in variants)


def _matches(image: Platform, wanted: Platform) -> bool:
    # c/image MatchesPlatform: os and architecture exact; an empty wanted variant matches any.
    return (
        image.architecture == wanted.architecture
        and image.os == wanted.os
        and (not wanted.variant or image.variant == wanted.variant)
    )


def choose_platform(index: ImageIndex, wanted: Platform) -> Descriptor:
    """The index entry for ``wanted``, as containers/image chooses it.

    The best entry is the one matching the earliest of :func:`wanted_platforms`, ties broken by
    position. In an OCI index, entries without a platform are a last resort (c/image
    ``OCI1Index.chooseInstance``); a Docker manifest list requires platforms.
    """
    candidates = wanted_platforms(wanted)
    best: tuple[int, int, Descriptor] | None = None
    last_resort = len(candidates)
    for position, entry in enumerate(index.manifests):
        if entry.platform is None:
            if index.media_type != OCI_INDEX:
                continue
            rank = last_resort
        else:
            rank = next((i for i, c in enumerate(candidates) if _matches(entry.platform, c)), -1)
            if rank < 0:
                continue
        if best is None or (rank, position) < best[:2]:
            best = (rank, position, entry)
    if best is None:
        kind = "image index" if index.media_type == OCI_INDEX else "manifest list"
        first = candidates[0]
        raise PlatformError(
            f"no image found in {kind} for architecture {json.dumps(first.architecture)}, "
            f"variant {json.dumps(first.variant or '')}, OS {json.dumps(first.os)}"
        )
    return best[2]


def platform_of_descriptors(entries: Sequence[Descriptor]) -> tuple[Platform, ...]:
    """The platforms an index offers (entries without one skipped), for messages and ``inspect``."""
    return tuple(e.platform for e in entries if e.platform is not None)
