"""Where a mirror sends each image, and the registries.conf drop-in that sends hosts there (pure).

Destinations (:func:`parse_destination`):

* ``oci:DIR`` -- one OCI layout for every image, blobs shared, updated in place; each image's entry carries
  its full source reference as ``org.opencontainers.image.ref.name``;
* ``oci-archive:FILE`` -- the same, as one tar written atomically;
* ``docker://HOST[:PORT][/NAMESPACE]`` -- a registry; each image goes to ``NAMESPACE/<last component of its
  repository>:<tag>`` exactly as ``skopeo sync`` names it (``cmd/skopeo/sync.go``: ``path.Base`` of the source
  reference), or with ``--scoped`` to ``NAMESPACE/<host>/<repository path>:<tag>``. skopeo writes the source
  host verbatim there, which is not a valid repository path for a host with a port (``127.0.0.1:5000``);
  tether writes the port after an underscore (``127.0.0.1_5000``), which cannot occur in a host name, so the
  mapping stays unambiguous.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from tether.engine.errors import UsageError
from tether.registry.errors import InvalidReferenceError
from tether.registry.reference import Reference

if TYPE_CHECKING:
    from tether.registry.registries_conf import RegistriesConf

# distribution/reference: host (domain or IP, optional port) and path components.
_HOST_RE = re.compile(
    r"^(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:\.(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*"
    r"|\[[a-fA-F0-9:]+\])(?::[0-9]+)?$"
)
_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*$")




@dataclass(frozen=True, kw_only=True)
class DestinationName:
    """Where a sync writes: an OCI layout, an oci-archive, or a registry (host + namespace)."""

    kind: Literal["oci", "oci-archive", "docker"]
    path: Path | None = None
    host: str | None = None
    namespace: str = ""

    def __str__(self) -> str:
        if self.kind == "docker":
            return f"docker://{self.host}" + (f"/{self.namespace}" if self.namespace else "")
        return f"{self.kind}:{self.path}"


def parse_destination(text: str) -> DestinationName:
    """Parse ``--to``: ``oci:DIR``, ``oci-archive:FILE`` or ``docker://HOST[:PORT][/NAMESPACE]``."""
    if text.startswith("docker://"):
        rest = text[len("docker://") :].rstrip("/")
        host, _, namespace = rest.partition("/")
        if not host or not _HOST_RE.match(host):
            raise UsageError(f"--to {text}: {host!r} is not a registry host[:port]")
        try:
            Reference(host, "probe")  # the reference grammar's idea of a registry: a dot, a port, or localhost
        except InvalidReferenceError:
            raise UsageError(
                f"--to {text}: {host!r} is not a registry host (write it with a domain, a :port, or as localhost)"
            ) from None
        if namespace and not all(_COMPONENT_RE.match(c) for c in namespace.split("/")):
            raise UsageError(
                f"--to {text}: namespace {namespace!r} is not a valid repository path (lowercase letters, digits, "
                "separators . _ __ -)"
            )
        return DestinationName(kind="docker", host=host, namespace=namespace)
    for kind in ("oci-archive", "oci"):
        if text.startswith(f"{kind}:"):
            rest = text[len(kind) + 1 :]
            if not rest:
                raise UsageError(f"--to {text}: the path is empty")
            if ":" in rest:
                raise UsageError(
                    f"--to {text}: a mirror destination takes no :REF (each image is named by its source reference)"
                )
            return DestinationName(kind=kind, path=Path(rest))
    raise UsageError(f"--to {text}: expected oci:DIR, oci-archive:FILE or docker://HOST[:PORT][/NAMESPACE]")


def scoped_host_component(domain: str) -> str:
    """The source host as one repository path component: ``127.0.0.1:5000`` -> ``127.0.0.1_5000``.

    skopeo's ``--scoped`` writes the host verbatim, which a port makes invalid; ``_`` cannot occur in
    a host name, so this is reversible. Upper case (host names are case-insensitive) is lowered.
    """
    host = domain.lower()
    if host.startswith("["):  # [v6addr]:port
        addr, _, port = host[1:].partition("]")
        host = addr.replace(":", "-") + (f"_{port[1:]}" if port.startswith(":") else "")
    else:
        host = host.replace(":", "_")
    if not _COMPONENT_RE.match(host):
        raise UsageError(f"--scoped: the registry host {domain!r} cannot be written as a repository path component")
    return host


def mirror_repository(ref: Reference, *, namespace: str = "", scoped: bool = False) -> str:
    """The repository an image goes to on a mirror registry, as ``skopeo sync`` names it.

    ``quay.io/org/app`` -> ``NAMESPACE/app``; with ``scoped``, ``NAMESPACE/quay.io/org/app``
    (a host with a port written as :func:`scoped_host_component` does).
    """
    tail = f"{scoped_host_component(ref.domain)}/{ref.path}" if scoped else ref.path.rsplit("/", 1)[-1]
    return f"{namespace}/{tail}" if namespace else tail


def destination_reference(dest: DestinationName, ref: Reference, *, scoped: bool = False) -> Reference:
    """The reference an image is pushed as: same tag (and digest if pinned), mirror repository."""
    assert dest.host is not None
    repo = mirror_repository(ref, namespace=dest.namespace, scoped=scoped)
    try:
        return Reference(dest.host, repo, ref.tag, ref.digest)
    except InvalidReferenceError as exc:
        raise UsageError(f"cannot mirror {ref} to {dest}: {exc}") from None


def filter_index(raw: bytes, keep: Iterable[str]) -> bytes:
    """A new index: ``raw``'s top-level fields kept, ``manifests`` narrowed to the digests in ``keep``
    (entries verbatim, original order). Returns ``raw`` itself when nothing is dropped."""
    wanted = set(keep)
    obj = json.loads(raw)
    manifests = obj.get("manifests") or []
    kept = [m for m in manifests if isinstance(m, dict) and m.get("digest") in wanted]
    if len(kept) == len(manifests):
        return raw
    obj["manifests"] = kept
    return json.dumps(obj, indent=3).encode()


@dataclass(frozen=True)
class MirrorMapping:
    """One repository sent to a mirror: ``source`` (name only) is served by ``mirror`` (host/repo)."""

    source: Reference
    mirror: str
    by_tag: bool
    by_digest: bool


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_registries_conf(
    mappings: Sequence[MirrorMapping],
    *,
    mirror_insecure: bool,
    conf: RegistriesConf | None = None,
    generated_by: str = "tether mirror sync",
) -> str:
    """A registries.conf.d drop-in (containers-registries.conf(5) v2) sending exactly these
    repositories to their mirror.

    One ``[[registry]]`` per source repository (the prefix is the repository, so nothing else is
    redirected), its mirror first. ``pull-from-mirror`` is ``all`` when a tag was synced (a tag pull
    may use the mirror), ``digest-only`` when only digests were. What the current configuration says
    about the primary (``location`` rewrite, ``insecure``, ``blocked``) and its existing mirrors is
    carried over, because a longer prefix replaces the table that applied before.
    """
    merged: dict[str, MirrorMapping] = {}
    for m in mappings:
        key = m.source.name
        old = merged.get(key)
        if old is None:
            merged[key] = m
        else:
            merged[key] = replace(old, by_tag=old.by_tag or m.by_tag, by_digest=old.by_digest or m.by_digest)
    lines = [f"# Generated by {generated_by}: {len(merged)} repositories served by a mirror.", ""]
    for name, m in sorted(merged.items()):
        entry = conf.find_registry(name) if conf is not None else None
        location = name
        insecure = False
        blocked = False
        extra_mirrors: list[tuple[str, bool, str | None]] = []
        if entry is not None:
            insecure, blocked = entry.insecure, entry.blocked
            if not entry.prefix.startswith("*.") and entry.location:
                rest = name[len(entry.prefix) :]
                location = entry.location + rest
                extra_mirrors = [(mm.location + rest, mm.insecure, mm.pull_from_mirror) for mm in entry.mirrors]
                if entry.mirror_by_digest_only:
                    extra_mirrors = [(loc, ins, "digest-only") for loc, ins, _ in extra_mirrors]
        lines += ["[[registry]]", f"prefix = {_toml_str(name)}", f"location = {_toml_str(location)}"]
        if insecure:
            lines.append("insecure = true")
        if blocked:
            lines.append("blocked = true")
        lines += ["", "[[registry.mirror]]", f"location = {_toml_str(m.mirror)}"]
        if mirror_insecure:
            lines.append("insecure = true")
        lines.append(f"pull-from-mirror = {_toml_str('all' if m.by_tag else 'digest-only')}")
        for loc, ins, pfm in extra_mirrors:
            if loc == m.mirror:  # a drop-in written by an earlier sync is already loaded
                continue
            lines += ["", "[[registry.mirror]]", f"location = {_toml_str(loc)}"]
            if ins:
                lines.append("insecure = true")
            if pfm:
                lines.append(f"pull-from-mirror = {_toml_str(pfm)}")
        lines.append("")
    return "\n".join(lines)


__all__ = [
    "DestinationName",
    "MirrorMapping",
    "destination_reference",
    "filter_index",
    "mirror_repository",
    "parse_destination",
    "render_registries_conf",
    "scoped_host_component",
]
