"""The one resolution path: from what a name points at to one platform's image manifest and its config.

Every transport resolves through :func:`resolve_image`: a registry (one endpoint at a time, see
:meth:`tether.registry.client.RegistryClient.resolve_image`), an OCI layout or archive, a containers-storage
image. A transport only says how to read a top manifest, a child manifest and a config blob
(:class:`ImageReader`); the decisions are made here, once, as the OCI image spec and containers/image
(``image.FromUnparsedImage`` + ``manifest.List.ChooseInstance``) make them:

1. the top manifest is parsed (type from the reader's media type unless generic, else from the body);
2. an index chooses the wanted platform's entry (:func:`tether.registry.manifest.choose_platform`; the
   host's platform by default), whose manifest is read by digest and must match the entry's digest and size
   (:func:`read_child`, also what a mirror uses for every entry it keeps); an index inside an index is refused;
3. the config is read (at most :data:`~tether.registry.manifest.MAX_CONFIG_SIZE`), checked against the
   manifest's config descriptor and parsed.

:func:`choose_instance` is the pure half of step 2, for callers that already hold the top manifest and want to
know which manifest a platform would get (an up-to-date check costs no request).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tether.registry.errors import DigestMismatchError, ManifestError
from tether.registry.manifest import (
    MAX_CONFIG_SIZE,
    MAX_MANIFEST_SIZE,
    Descriptor,
    ImageConfig,
    ImageIndex,
    ImageManifest,
    Platform,
    choose_platform,
    compute_digest,
    host_platform,
    parse_image_config,
    parse_manifest,
)

__all__ = [
    "ImageReader",
    "ManifestReader",
    "RawManifest",
    "ResolvedImage",
    "choose_instance",
    "read_child",
    "resolve_image",
]


@dataclass(frozen=True)
class RawManifest:
    """A manifest or index exactly as stored: its bytes, its media type and the digest of the bytes."""

    raw: bytes
    media_type: str
    digest: str


class ManifestReader(Protocol):
    """How one transport reads a manifest by digest (what :func:`read_child` needs)."""

    @property
    def description(self) -> str:
        """The image as messages name it (``quay.io/org/app:1``, ``oci:/srv/mirror:app``)."""
        ...

    async def read_manifest(self, descriptor: Descriptor) -> RawManifest:
        """The manifest ``descriptor`` (an index entry) names, read by digest."""
        ...


class ImageReader(ManifestReader, Protocol):
    """How one transport reads the pieces :func:`resolve_image` asks for; it decides nothing itself."""

    async def read_top(self) -> RawManifest:
        """The manifest or index the name points at (digest verified when the name pins one)."""
        ...

    async def read_config(self, descriptor: Descriptor) -> bytes:
        """The config blob, whole, verified against ``descriptor`` (at most ``MAX_CONFIG_SIZE`` bytes)."""
        ...


@dataclass(frozen=True)
class ResolvedImage:
    """One image resolved to one platform: what the name points at, the manifest chosen, its config."""

    top: RawManifest
    manifest: RawManifest
    parsed: ImageManifest
    config_raw: bytes
    config: ImageConfig

    @property
    def index(self) -> RawManifest | None:
        """The index the manifest was chosen from, if the name points at one."""
        return self.top if self.top.digest != self.manifest.digest else None


def choose_instance(top: RawManifest, platform: Platform | None) -> Descriptor | None:
    """The index entry ``platform`` (default: the host's) gets from ``top``; ``None`` if ``top`` is a manifest.

    Raises :class:`~tether.registry.errors.PlatformError` when the index has no entry for the platform.
    """
    parsed = parse_manifest(top.raw, top.media_type)
    if isinstance(parsed, ImageManifest):
        return None
    return choose_platform(parsed, platform or host_platform())


async def read_child(reader: ManifestReader, descriptor: Descriptor) -> RawManifest:
    """The manifest an index entry names, checked against the entry's digest and size (OCI image-spec
    descriptor.md: content must be verified against its descriptor) and its declared size capped."""
    if descriptor.size > MAX_MANIFEST_SIZE:
        raise ManifestError(f"{reader.description}: manifest {descriptor.digest} is {descriptor.size} bytes, "
                            f"more than the {MAX_MANIFEST_SIZE} byte limit")
    manifest = await reader.read_manifest(descriptor)
    actual = compute_digest(manifest.raw)
    if manifest.digest != descriptor.digest or actual != descriptor.digest:
        raise DigestMismatchError(f"{reader.description}: manifest {descriptor.digest} of the index came back "
                                  f"as {actual}")
    if len(manifest.raw) != descriptor.size:
        raise DigestMismatchError(f"{reader.description}: manifest {descriptor.digest} is {len(manifest.raw)} "
                                  f"bytes, the index says {descriptor.size}")
    return manifest


async def resolve_image(reader: ImageReader, *, platform: Platform | None = None,
                        top: RawManifest | None = None) -> ResolvedImage:
    """Resolve ``reader``'s image for ``platform`` (default: the host's); ``top`` if already read.

    Raises :class:`~tether.registry.errors.ManifestError` (unparsable, nested index, config that does not
    parse), :class:`~tether.registry.errors.DigestMismatchError` (a child that is not what its index entry
    says), :class:`~tether.registry.errors.PlatformError`, and whatever the reader raises.
    """
    if top is None:
        top = await reader.read_top()
    parsed = parse_manifest(top.raw, top.media_type)
    manifest = top
    if isinstance(parsed, ImageIndex):
        chosen = choose_platform(parsed, platform or host_platform())
        manifest = await read_child(reader, chosen)
        child = parse_manifest(manifest.raw, manifest.media_type or chosen.media_type)
        if not isinstance(child, ImageManifest):
            raise ManifestError(f"{reader.description}: index entry {chosen.digest} is an index itself "
                                "(an index inside an index is not supported)")
        parsed = child
    if parsed.config.size > MAX_CONFIG_SIZE:
        raise ManifestError(f"{reader.description}: config {parsed.config.digest} is {parsed.config.size} bytes, "
                            f"more than the {MAX_CONFIG_SIZE} byte limit")
    config_raw = await reader.read_config(parsed.config)
    try:
        config = parse_image_config(config_raw)
    except ManifestError as exc:
        raise ManifestError(f"{reader.description}: config {parsed.config.digest}: {exc}") from None
    return ResolvedImage(top=top, manifest=manifest, parsed=parsed, config_raw=config_raw, config=config)
