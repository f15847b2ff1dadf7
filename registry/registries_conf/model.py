"""The merged registries.conf as data, and prefix matching (c/image ``sysregistriesv2`` types, ``FindRegistry``).

A prefix matches a name when equal, or followed by ``/``, ``:`` or ``@``; ``*.example.com`` matches any subdomain
depth of example.com (not example.com itself). The longest prefix wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from tether.registry.reference import Reference

__all__ = [
    "AUTHENTICATION_FILE_HELPER",
    "DEFAULT_SHORT_NAME_MODE",
    "Alias",
    "Mirror",
    "PullFromMirror",
    "PullSource",
    "RegistriesConf",
    "RegistryEntry",
    "ShortNameMode",
    "ref_matching_prefix",
]

ShortNameMode = Literal["enforcing", "permissive", "disabled"]
PullFromMirror = Literal["all", "digest-only", "tag-only"]

#: ``sysregistriesv2.AuthenticationFileHelper``: the credential helper meaning "read auth.json".
AUTHENTICATION_FILE_HELPER: Final = "containers-auth.json"
DEFAULT_SHORT_NAME_MODE: Final[ShortNameMode] = "permissive"


@dataclass(frozen=True)
class Mirror:
    """One ``[[registry.mirror]]``."""

    location: str
    insecure: bool = False
    pull_from_mirror: PullFromMirror | None = None


@dataclass(frozen=True)
class RegistryEntry:
    """One ``[[registry]]`` table after validation (``prefix`` defaulted to ``location``)."""

    prefix: str
    location: str
    insecure: bool = False
    blocked: bool = False
    mirror_by_digest_only: bool = False
    mirrors: tuple[Mirror, ...] = ()
    origin: Path | None = None  # the file that defined this table

    def matches(self, name: str) -> bool:
        """Whether ``prefix`` matches ``name`` (:func:`ref_matching_prefix`)."""
        return ref_matching_prefix(name, self.prefix) != -1


@dataclass(frozen=True)
class Alias:
    """A short-name alias: ``value`` is None when the alias was erased with ``""``."""

    value: Reference | None
    origin: Path


@dataclass(frozen=True)
class PullSource:
    """One endpoint to pull ``reference`` from (containers/image ``sysregistriesv2.PullSource``).

    ``reference`` is the physical reference at this endpoint (location rewritten); ``insecure``
    allows plain HTTP and unverified TLS for this endpoint (its own ``insecure`` key: a mirror's
    setting, not the primary's); ``mirror`` is False for the primary.
    """

    reference: Reference
    insecure: bool
    mirror: bool


@dataclass(frozen=True)
class RegistriesConf:
    """The merged configuration. Build it with :func:`load_registries_conf` (or directly in tests)."""

    registries: tuple[RegistryEntry, ...] = ()
    unqualified_search_registries: tuple[str, ...] = ()
    unqualified_search_registries_origin: Path | None = None
    short_name_mode: ShortNameMode = DEFAULT_SHORT_NAME_MODE
    credential_helpers: tuple[str, ...] = (AUTHENTICATION_FILE_HELPER,)
    aliases: Mapping[str, Alias] = field(default_factory=dict)
    #: the machine-written short-name-aliases.conf; consulted before :attr:`aliases`.
    alias_cache: Mapping[str, Alias] = field(default_factory=dict)
    #: every file that contributed, in the order read (for messages).
    sources: tuple[Path, ...] = ()

    def find_registry(self, name: str) -> RegistryEntry | None:
        """The ``[[registry]]`` with the longest prefix matching ``name`` (a registry, namespace,
        repository or reference string starting with a host), or None (``FindRegistry``)."""
        best: RegistryEntry | None = None
        for reg in self.registries:
            if ref_matching_prefix(name, reg.prefix) != -1 and (best is None or len(reg.prefix) > len(best.prefix)):
                best = reg
        return best

    def resolve_alias(self, name: str) -> Alias | None:
        """The alias for a short name (no tag/digest), the cache file first (``ResolveShortNameAlias``)."""
        alias = self.alias_cache.get(name)
        if alias is not None:
            return alias
        return self.aliases.get(name)

    def describe_sources(self) -> str:
        """The files read, for messages."""
        return ", ".join(str(p) for p in self.sources) or "(no registries.conf found)"


def _ref_matching_subdomain_prefix(ref: str, prefix: str) -> int:
    # refMatchingSubdomainPrefix: ".example.com" must occur in the host part and be followed by
    # the end, ':', '/' or '@'.
    suffix = prefix[1:]
    index = ref.find(suffix)
    if index == -1 or "/" in ref[:index]:
        return -1
    index += len(suffix)
    if index == len(ref) or ref[index] in ":/@":
        return index
    return -1


def ref_matching_prefix(ref: str, prefix: str) -> int:
    """containers/image ``refMatchingPrefix``: the length of ``ref`` that ``prefix`` matches, or -1.

    Note that containers/image lets ``example.com`` match ``example.com:5000`` (the ``:`` rule);
    tether keeps that so that the same file selects the same registry.
    """
    if prefix.startswith("*."):
        return _ref_matching_subdomain_prefix(ref, prefix)
    if len(ref) < len(prefix):
        return -1
    if len(ref) == len(prefix):
        return len(prefix) if ref == prefix else -1
    if not ref.startswith(prefix):
        return -1
    return len(prefix) if ref[len(prefix)] in ":/@" else -1
