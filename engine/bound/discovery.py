"""Discovery of logically bound images in a deployment root.

bootc's design (bootc-dev/bootc ``crates/lib/src/boundimage.rs``, ``query_bound_images``): every entry
of ``usr/lib/bootc/bound-images.d/`` in the deployment root is a symlink to a podman quadlet ``.image``
or ``.container`` file; ``Image=`` is read from ``[Image]`` or ``[Container]``. Symlink targets are
resolved *inside* that root (bootc opens the root with ``RESOLVE_IN_ROOT``): an absolute target names a
file of the deployment, never one of the running host.

bootc's errors keep their meaning here (each names the entry and the file): ``Not a symlink``, a
dangling link, ``Invalid file extension``, ``Missing Image field``, systemd specifiers other than ``%%``
and ``Unterminated %``, non-UTF-8 names. Beyond bootc:

- drop-ins (``NAME.image.d/*.conf``, ``NAME.container.d/*.conf``, systemd's truncated-prefix
  ``foo-.container.d`` and the type-wide ``container.d``/``image.d``) are merged as quadlet merges them;
- ``Image=NAME.image`` in a ``.container`` file resolves to that ``.image`` unit's image and options;
- the ``.image`` keys that change what is pulled are honoured: ``Arch``, ``OS``, ``Variant``,
  ``TLSVerify``, ``AuthFile`` (bootc refuses it: "AuthFile is not supported by bound bootc images"),
  ``CertDir``, ``Retry``, ``RetryDelay``;
- symlink loops are refused (``ELOOP``-like, 40 links as the kernel allows);
- all problems of a root are reported together, not only the first.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from tether.engine.bound.quadlet import UnitFile, expand_specifiers, parse_bool, parse_unit
from tether.engine.copy.image import PullRequest
from tether.engine.errors import BoundImageError
from tether.registry.manifest import host_platform, parse_platform
from tether.registry.reference import is_short_name, parse_reference

BOUND_IMAGE_DIR = "usr/lib/bootc/bound-images.d"
#: Quadlet's system unit search directories inside a root, highest priority first
#: (podman ``pkg/systemd/quadlet``: ``/etc/containers/systemd`` overrides ``/usr/share/...``).
QUADLET_DIRS = ("etc/containers/systemd", "usr/share/containers/systemd")
#: Linux follows at most 40 symlinks in one resolution (``MAXSYMLINKS``); more is ``ELOOP``.
MAX_SYMLINKS = 40

UnitKind = Literal["image", "container"]


class SymlinkLoopError(BoundImageError):
    """Resolving a path inside a root followed more than :data:`MAX_SYMLINKS` links."""


class NotFoundInRootError(BoundImageError):
    """A path (or a symlink's target) does not exist inside the root."""


@dataclass(frozen=True)
class BoundImage:
    """One image bound by one entry of ``usr/lib/bootc/bound-images.d``, with its pull options.

    Paths (``source_file``, ``image_file``, ``authfile``, ``cert_dir``) are as seen from inside the
    deployment root (absolute, ``/``-rooted); :func:`host_path_in_root` maps them to the host.
    """

    image: str
    entry: str  # "usr/lib/bootc/bound-images.d/NAME"
    source_file: str  # the quadlet file the entry resolves to, e.g. "/usr/share/containers/systemd/a.image"
    kind: UnitKind
    image_file: str | None = None  # for a .container with Image=NAME.image: that .image file
    dropins: tuple[str, ...] = ()
    arch: str | None = None
    os: str | None = None
    variant: str | None = None
    tls_verify: bool | None = None
    authfile: str | None = None
    cert_dir: str | None = None
    retries: int | None = None
    retry_delay: float | None = None  # seconds
    image_tag: str | None = None  # quadlet ImageTag= (the name dependants use)

    @property
    def platform_text(self) -> str | None:
        """``os/arch[/variant]`` when ``OS``/``Arch``/``Variant`` ask for a non-host platform."""
        if self.arch is None and self.os is None and self.variant is None:
            return None
        host = host_platform()
        os_name = self.os or host.os
        arch = self.arch or host.architecture
        variant = self.variant if self.variant is not None else (None if self.arch else host.variant)
        return f"{os_name}/{arch}" + (f"/{variant}" if variant else "")

    def pull_options_key(self) -> tuple[object, ...]:
        """What makes two bindings the same pull: name, platform and the transport options."""
        return (
            normalize_image_name(self.image),
            self.arch,
            self.os,
            self.variant,
            self.tls_verify,
            self.authfile,
            self.cert_dir,
        )

    def to_json(self) -> dict[str, object]:
        """``bootc image list --type logical --format json`` element, plus where it came from."""
        out: dict[str, object] = {"image_type": "logical", "image": self.image, "source": self.source_file}
        out["entry"] = self.entry
        if self.image_file:
            out["image_file"] = self.image_file
        extra = {
            "arch": self.arch,
            "os": self.os,
            "variant": self.variant,
            "tls_verify": self.tls_verify,
            "authfile": self.authfile,
            "cert_dir": self.cert_dir,
            "retry": self.retries,
            "retry_delay": self.retry_delay,
        }
        out.update({k: v for k, v in extra.items() if v is not None})
        return out


@dataclass(frozen=True)
class BoundGroup:
    """One pull: every binding of the same image with the same options (pulled once)."""

    image: BoundImage
    bindings: tuple[BoundImage, ...] = field(default=())


# --------------------------------------------------------------------------- paths inside a root


def _split(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def resolve_in_root(root: Path, path: str, *, follow_final: bool = True) -> str:
    """Resolve ``path`` (absolute or root-relative) inside ``root`` like ``openat2(RESOLVE_IN_ROOT)``.

    Absolute symlink targets restart at ``root``; ``..`` never leaves it. Returns the resolved path
    relative to ``root`` (``""`` for the root itself). Raises :class:`NotFoundInRootError` when a
    component is missing and :class:`SymlinkLoopError` after :data:`MAX_SYMLINKS` links.
    """
    pending = _split(path)
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            raise NotFoundInRootError(f"/{'/'.join([*resolved, part])} does not exist in {root}") from None
        except NotADirectoryError:
            raise NotFoundInRootError(f"/{'/'.join(resolved)} is not a directory in {root}") from None
        if stat.S_ISLNK(st.st_mode) and (pending or follow_final):
            links += 1
            if links > MAX_SYMLINKS:
                raise SymlinkLoopError(f"too many levels of symbolic links resolving {path} in {root}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            pending = _split(target) + pending
            continue
        if pending and not stat.S_ISDIR(st.st_mode):
            raise NotFoundInRootError(f"/{'/'.join([*resolved, part])} is not a directory in {root}")
        resolved.append(part)
    return "/".join(resolved)


def host_path_in_root(root: Path, path: str) -> Path:
    """The host path of ``path`` (as seen inside ``root``), symlinks resolved inside ``root``."""
    return root / resolve_in_root(root, path)


# --------------------------------------------------------------------------- value parsing

_ARCH_ALIASES = {"x86_64": "amd64", "aarch64": "arm64", "armhfp": "arm", "armv7l": "arm", "i386": "386"}
_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_go_duration(text: str) -> float:
    """Go's ``time.ParseDuration`` (podman's ``--retry-delay``), in seconds; ValueError if invalid."""
    value = text.strip()
    if value in ("0", "+0", "-0"):
        return 0.0
    sign = -1.0 if value.startswith("-") else 1.0
    value = value.lstrip("+-")
    pos = 0
    total = 0.0
    while pos < len(value):
        match = _GO_DURATION.match(value, pos)
        if match is None:
            raise ValueError(f"invalid duration {text!r}")
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        pos = match.end()
    if pos == 0:
        raise ValueError(f"invalid duration {text!r}")
    return sign * total


def normalize_arch(arch: str) -> str:
    """Map uname/RPM spellings to GOARCH as podman's ``--arch`` does (x86_64 -> amd64)."""
    return _ARCH_ALIASES.get(arch, arch)


def normalize_image_name(name: str) -> str:
    """The fully qualified form of a reference (docker.io/library/, :latest) when it is one.

    Short names (which need registries.conf to resolve) and transport names (``oci:...``) are
    returned unchanged.
    """
    try:
        if is_short_name(name):
            return name
        ref = parse_reference(name)
    except Exception:
        return name
    if ref.tag is None and ref.digest is None:
        ref = ref.with_tag("latest")
    return str(ref)


def short_name_matches(names: Iterable[str], bound: str) -> bool:
    """Whether any stored name could be what the short name ``bound`` resolves to (``alpine`` ->
    ``*/alpine:latest``, ``app:1`` -> ``*/app:1``): any search registry, so a conservative match."""
    try:
        if "@" in bound or not is_short_name(bound):
            return False
    except Exception:
        return False
    last = bound.rsplit("/", 1)[-1]
    suffix = "/" + bound if ":" in last else "/" + bound + ":latest"
    return any(n.endswith(suffix) for n in names)


# --------------------------------------------------------------------------- quadlet units


def _read_text(root: Path, rel: str, what: str) -> str:
    data = (root / rel).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BoundImageError(f"{what} /{rel} is not valid UTF-8: {exc}") from None


def _dropin_dir_names(unit_name: str) -> list[str]:
    """Drop-in directory names for ``unit_name``, lowest priority first (systemd + quadlet).

    ``foo-bar-baz.container`` -> ``container.d``, ``foo-.container.d``, ``foo-bar-.container.d``,
    ``foo-bar-baz.container.d`` (systemd.unit(5) "truncated prefix" drop-ins; podman quadlet >= 5.0).
    """
    stem, _, suffix = unit_name.rpartition(".")
    names = [f"{suffix}.d"]
    parts = stem.split("-")
    for i in range(1, len(parts)):
        names.append("-".join(parts[:i]) + f"-.{suffix}.d")
    names.append(f"{unit_name}.d")
    return names


def _load_unit(root: Path, rel: str, what: str) -> tuple[UnitFile, tuple[str, ...]]:
    """Parse the unit at root-relative ``rel`` and merge its drop-ins; return it and the drop-ins used."""
    unit = parse_unit(_read_text(root, rel, what), path="/" + rel)
    unit_dir = str(PurePosixPath(rel).parent)
    search_dirs: list[str] = []
    for d in (QUADLET_DIRS[0], unit_dir, *QUADLET_DIRS[1:]):
        if d not in search_dirs:
            search_dirs.append(d)
    used: list[str] = []
    for dir_name in _dropin_dir_names(PurePosixPath(rel).name):
        chosen: dict[str, str] = {}
        for base in search_dirs:
            try:
                d_rel = resolve_in_root(root, f"{base}/{dir_name}")
            except BoundImageError:
                continue
            if not (root / d_rel).is_dir():
                continue
            for name in sorted(os.listdir(root / d_rel)):
                if name.endswith(".conf") and name not in chosen:
                    chosen[name] = f"{d_rel}/{name}"
        for name in sorted(chosen):
            try:
                f_rel = resolve_in_root(root, chosen[name])
            except BoundImageError:
                continue  # a dangling drop-in symlink is skipped, as systemd does
            if not (root / f_rel).is_file():
                continue
            unit = unit.merged(parse_unit(_read_text(root, f_rel, "drop-in"), path="/" + f_rel))
            used.append("/" + f_rel)
    return unit, tuple(used)


def _find_image_unit(root: Path, name: str, near: str) -> str | None:
    """Where quadlet finds ``NAME.image`` for ``Image=NAME.image``: beside the unit, then its dirs."""
    candidates = [str(PurePosixPath(near).parent), *QUADLET_DIRS]
    for base in candidates:
        try:
            base_rel = resolve_in_root(root, base)
        except BoundImageError:
            continue
        base_path = root / base_rel if base_rel else root
        if not base_path.is_dir():
            continue
        if base in QUADLET_DIRS:
            for dirpath, dirnames, filenames in os.walk(base_path):
                dirnames.sort()
                if name in filenames:
                    rel = os.path.relpath(os.path.join(dirpath, name), root)
                    return resolve_in_root(root, rel)
        elif (base_path / name).exists() or (base_path / name).is_symlink():
            return resolve_in_root(root, f"{base_rel}/{name}")
    return None


def _value(unit: UnitFile, section: str, key: str) -> str | None:
    """A looked-up value with specifiers expanded; empty counts as unset (quadlet's rule)."""
    raw = unit.lookup(section, key)
    if raw is None or raw == "":
        return None
    return expand_specifiers(raw)


@dataclass(frozen=True)
class ImageOptions:
    """The ``[Image]`` keys tether honours (podman-systemd.unit(5), "Image units")."""

    arch: str | None = None
    os: str | None = None
    variant: str | None = None
    tls_verify: bool | None = None
    authfile: str | None = None
    cert_dir: str | None = None
    retries: int | None = None
    retry_delay: float | None = None
    image_tag: str | None = None


def _abs_path(unit: UnitFile, key: str) -> str | None:
    value = _value(unit, "Image", key)
    if value is not None and not value.startswith("/"):
        raise BoundImageError(f"{key}={value!r} must be an absolute path")
    return value


def _image_options(unit: UnitFile) -> ImageOptions:
    arch = _value(unit, "Image", "Arch")
    tls = _value(unit, "Image", "TLSVerify")
    tls_verify = None
    if tls is not None:
        tls_verify = parse_bool(tls)
        if tls_verify is None:
            raise BoundImageError(f"invalid TLSVerify={tls!r} (expected a boolean)")
    retries = None
    retry = _value(unit, "Image", "Retry")
    if retry is not None:
        try:
            retries = int(retry)
        except ValueError:
            raise BoundImageError(f"invalid Retry={retry!r} (expected a number)") from None
        if retries < 0:
            raise BoundImageError(f"invalid Retry={retry!r} (negative)")
    retry_delay = None
    delay = _value(unit, "Image", "RetryDelay")
    if delay is not None:
        try:
            retry_delay = parse_go_duration(delay)
        except ValueError:
            raise BoundImageError(f"invalid RetryDelay={delay!r} (expected a duration like 5s)") from None
    return ImageOptions(
        arch=normalize_arch(arch) if arch is not None else None,
        os=_value(unit, "Image", "OS"),
        variant=_value(unit, "Image", "Variant"),
        tls_verify=tls_verify,
        authfile=_abs_path(unit, "AuthFile"),
        cert_dir=_abs_path(unit, "CertDir"),
        retries=retries,
        retry_delay=retry_delay,
        image_tag=_value(unit, "Image", "ImageTag"),
    )


def _bound(
    *,
    image: str,
    entry: str,
    source: str,
    kind: UnitKind,
    dropins: tuple[str, ...],
    opts: ImageOptions | None = None,
    image_file: str | None = None,
) -> BoundImage:
    o = opts or ImageOptions()
    return BoundImage(
        image=image,
        entry=entry,
        source_file=source,
        kind=kind,
        image_file=image_file,
        dropins=dropins,
        arch=o.arch,
        os=o.os,
        variant=o.variant,
        tls_verify=o.tls_verify,
        authfile=o.authfile,
        cert_dir=o.cert_dir,
        retries=o.retries,
        retry_delay=o.retry_delay,
        image_tag=o.image_tag,
    )


def _parse_image_unit(root: Path, rel: str) -> tuple[str, ImageOptions, tuple[str, ...]]:
    unit, dropins = _load_unit(root, rel, "quadlet file")
    image = _value(unit, "Image", "Image")
    if image is None:
        raise BoundImageError("Missing Image field")
    return image, _image_options(unit), dropins


def _parse_entry(root: Path, dir_rel: str, name: str) -> BoundImage:
    """One entry; ``dir_rel`` is where ``bound-images.d`` really is (it may be reached via links)."""
    entry = f"{BOUND_IMAGE_DIR}/{name}"
    real = f"{dir_rel}/{name}"
    suffix = PurePosixPath(name).suffix
    if not os.path.islink(root / real):
        raise BoundImageError(f"Not a symlink: {name}")
    if suffix not in (".image", ".container"):
        raise BoundImageError(f"Invalid file extension: {name}")
    target = os.readlink(root / real)
    try:
        rel = resolve_in_root(root, real)
    except NotFoundInRootError as exc:
        raise BoundImageError(f"dangling symlink {name} -> {target}: {exc}") from None
    except SymlinkLoopError as exc:
        raise BoundImageError(f"symlink loop at {name} -> {target}: {exc}") from None
    if not (root / rel).is_file():
        raise BoundImageError(f"{name} -> {target}: /{rel} is not a regular file")
    source = "/" + rel
    try:
        if suffix == ".image":
            image, opts, dropins = _parse_image_unit(root, rel)
            return _bound(image=image, entry=entry, source=source, kind="image", dropins=dropins, opts=opts)
        unit, dropins = _load_unit(root, rel, "quadlet file")
        container_image = _value(unit, "Container", "Image")
        if container_image is None:
            raise BoundImageError("Missing Image field")
        image = container_image
        if image.endswith(".build"):
            raise BoundImageError(f"Image={image}: images built by a quadlet .build unit cannot be bound")
        if not image.endswith(".image"):
            return _bound(image=image, entry=entry, source=source, kind="container", dropins=dropins)
        image_rel = _find_image_unit(root, image, rel)
        if image_rel is None:
            raise BoundImageError(
                f"Image={image}: no such quadlet .image unit beside {source} or in "
                + ", ".join("/" + d for d in QUADLET_DIRS)
            )
        try:
            ref, opts, more = _parse_image_unit(root, image_rel)
        except BoundImageError as exc:
            raise BoundImageError(f"Image={image} (/{image_rel}): {exc}") from None
        return _bound(
            image=ref,
            entry=entry,
            source=source,
            kind="container",
            dropins=dropins + more,
            opts=opts,
            image_file="/" + image_rel,
        )
    except BoundImageError as exc:
        raise BoundImageError(f"Parsing {entry} ({source}): {exc}") from None
    except OSError as exc:
        raise BoundImageError(f"Parsing {entry} ({source}): {exc}") from None


def discover_bound_images(root: Path | str) -> tuple[BoundImage, ...]:
    """Every image bound by ``root``'s ``usr/lib/bootc/bound-images.d`` (sorted by entry name).

    A missing directory means no bound images. Any invalid entry fails the whole discovery (as in
    bootc); the :class:`BoundImageError` lists every invalid entry, one per line.
    """
    root = Path(root)
    try:
        dir_rel = resolve_in_root(root, BOUND_IMAGE_DIR)
    except NotFoundInRootError:
        return ()
    except OSError as exc:
        raise BoundImageError(f"Querying bound images in {root}: {exc}") from None
    directory = root / dir_rel if dir_rel else root
    if not directory.is_dir():
        return ()
    images: list[BoundImage] = []
    problems: list[str] = []
    try:
        names = sorted(os.listdir(os.fsencode(directory)))
    except OSError as exc:
        raise BoundImageError(f"Querying bound images in {root}: reading {BOUND_IMAGE_DIR}: {exc}") from None
    for raw in names:
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(f"Invalid non-UTF8 filename: {raw!r} in {BOUND_IMAGE_DIR}")
            continue
        try:
            images.append(_parse_entry(root, dir_rel, name))
        except BoundImageError as exc:
            problems.append(str(exc))
        except OSError as exc:
            problems.append(f"{name}: {exc}")
    if problems:
        raise BoundImageError(f"Querying bound images in {root}: " + "\n  ".join(["", *problems]).lstrip())
    return tuple(images)


def group_bound_images(images: Iterable[BoundImage]) -> tuple[BoundGroup, ...]:
    """Deduplicate: the same image with the same pull options is pulled once (first binding wins)."""
    groups: dict[tuple[object, ...], list[BoundImage]] = {}
    for image in images:
        groups.setdefault(image.pull_options_key(), []).append(image)
    return tuple(BoundGroup(image=members[0], bindings=tuple(members)) for members in groups.values())


def pull_request_for(image: BoundImage, *, root: Path) -> PullRequest:
    """The :class:`tether.engine.copy.pull.PullRequest` for one binding; files named by the unit are looked up
    inside the deployment ``root`` first (its ``/etc`` and ``/usr`` are what the host will run), then
    on the host (``/run``, shared ``/var``)."""

    platform = None
    text = image.platform_text
    if text is not None:
        platform = parse_platform(text)
    return PullRequest(
        name=image.image,
        platform=platform,
        tls_verify=image.tls_verify,
        authfile=_file_for(root, image.authfile),
        cert_dir=_file_for(root, image.cert_dir),
        retries=image.retries,
        retry_delay=image.retry_delay,
    )


def _file_for(root: Path, path: str | None) -> Path | None:
    if path is None:
        return None
    try:
        inside = host_path_in_root(root, path)
    except BoundImageError:
        return Path(path)
    return inside if inside.exists() else Path(path)


def pull_requests_for(images: Sequence[BoundImage], *, root: Path) -> tuple[PullRequest, ...]:
    """One request per distinct image (see :func:`group_bound_images`)."""
    return tuple(pull_request_for(g.image, root=root) for g in group_bound_images(images))
