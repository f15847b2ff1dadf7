"""Answers from a loaded registries.conf: where to pull a reference from, and what a short name means.

c/image ``pkg/sysregistriesv2`` (``PullSourcesFromReference``, ``rewriteReference``) and ``pkg/shortnames``
(``Resolve``): mirrors in file order, filtered by ``mirror-by-digest-only`` / ``pull-from-mirror``, then the
primary; endpoints under a ``blocked`` registry dropped. Short names: aliases first (the short-name-aliases.conf
cache has precedence over registries.conf's ``[aliases]``), then ``unqualified-search-registries`` in order,
``:latest`` added when there is neither tag nor digest. Without a TTY, ``enforcing`` refuses ambiguous names;
``permissive`` and ``disabled`` return every candidate. A blocked registry's error names the file that blocked it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tether.registry.errors import BlockedRegistryError, ConfigError, InvalidReferenceError, ShortNameError
from tether.registry.reference import (
    Reference,
    ShortName,
    is_short_name,
    parse_canonical_reference,
    parse_reference,
    parse_short_name,
)
from tether.registry.registries_conf.model import PullSource, RegistriesConf, RegistryEntry, ref_matching_prefix

__all__ = ["ShortNameResolution", "pull_sources", "resolve_short_name", "resolve_short_name_detailed"]


def _rewrite(ref: Reference, reg: RegistryEntry, location: str) -> Reference:
    """``Endpoint.rewriteReference``: ``location`` + what follows the prefix in ``str(ref)``."""
    text = str(ref)
    prefix_len = ref_matching_prefix(text, reg.prefix)
    if prefix_len == -1:  # pragma: no cover - find_registry matched the name, a prefix of text
        raise ConfigError(f"{reg.origin}: invalid prefix {reg.prefix!r} for reference {text!r}")
    if not location:  # only wildcard prefixes may omit the location (validated at load)
        return ref
    new = location + text[prefix_len:]
    try:
        return parse_canonical_reference(new)
    except InvalidReferenceError as exc:
        raise ConfigError(
            f"{reg.origin}: [[registry]] prefix={reg.prefix!r}: rewriting {text} with location "
            f"{location!r} gives an invalid reference {new!r}: {exc}"
        ) from None


def pull_sources(conf: RegistriesConf, ref: Reference) -> tuple[PullSource, ...]:
    """Where to pull ``ref`` from: mirrors in file order (filtered by ``mirror-by-digest-only`` /
    ``pull-from-mirror``), then the primary (``Registry.PullSourcesFromReference``).

    Endpoints whose physical reference falls under a ``blocked`` registry are dropped (containers/image
    refuses each such endpoint when it creates its client and moves on to the next one); when none is
    left, :class:`BlockedRegistryError` names the registry and the file that blocked it, before any
    request is made. A location that rewrites to an invalid reference is a :class:`ConfigError`.
    """
    reg = conf.find_registry(ref.name)
    if reg is None:
        candidates = [(ref, False, False)]
    else:
        digested = ref.digest is not None
        endpoints: list[tuple[str, bool, bool]] = []
        if reg.mirror_by_digest_only:
            if digested:
                endpoints.extend((m.location, m.insecure, True) for m in reg.mirrors)
        else:
            for m in reg.mirrors:
                if m.pull_from_mirror == "digest-only" and not digested:
                    continue
                if m.pull_from_mirror == "tag-only" and digested:
                    continue
                endpoints.append((m.location, m.insecure, True))
        endpoints.append((reg.location, reg.insecure, False))
        candidates = [(_rewrite(ref, reg, loc), insecure, mirror) for loc, insecure, mirror in endpoints]
    sources: list[PullSource] = []
    blocked: list[RegistryEntry] = []
    for physical, insecure, mirror in candidates:
        physical_reg = conf.find_registry(physical.name)
        if physical_reg is not None and physical_reg.blocked:
            blocked.append(physical_reg)
            continue
        sources.append(PullSource(physical, insecure, mirror))
    if not sources:
        b = blocked[-1]
        raise BlockedRegistryError(
            f"pull {ref}: registry {b.prefix} is blocked in {b.origin or conf.describe_sources()}"
        )
    return tuple(sources)


@dataclass(frozen=True)
class ShortNameResolution:
    """The result of :func:`resolve_short_name_detailed`.

    ``rationale`` is ``"fully-qualified"``, ``"alias"``, ``"search"`` or ``"selected"``;
    ``origin`` the file that defined the alias or the search registries.
    """

    candidates: tuple[Reference, ...]
    rationale: Literal["fully-qualified", "alias", "search", "selected"]
    origin: Path | None = None
    short_name: ShortName | None = None

    def description(self) -> str:
        """containers/image ``Resolved.Description`` (empty when there is nothing to say)."""
        if self.short_name is None:
            return ""
        name = self.short_name.path
        if self.rationale == "alias":
            return f"Resolved {name!r} as an alias ({self.origin})"
        if self.rationale == "search":
            return f"Resolving {name!r} using unqualified-search registries ({self.origin})"
        return ""


def _attach(ref: Reference, short: ShortName) -> Reference:
    if short.tag is not None:
        ref = ref.with_tag(short.tag)
    if short.digest is not None:
        ref = ref.with_digest(short.digest)
    return ref.tag_name_only()


def resolve_short_name_detailed(
    conf: RegistriesConf,
    text: str,
    *,
    tty: bool = False,
    choose: Callable[[tuple[Reference, ...]], Reference] | None = None,
) -> ShortNameResolution:
    """:func:`resolve_short_name` with the rationale and the file it came from."""
    if not is_short_name(text):
        try:
            ref = parse_reference(text)
        except InvalidReferenceError as exc:
            raise InvalidReferenceError(f"cannot parse input {text!r}: {exc}") from None
        return ShortNameResolution((ref.tag_name_only(),), "fully-qualified")
    short = parse_short_name(text)
    alias = conf.resolve_alias(short.path)
    if alias is not None and alias.value is not None:
        return ShortNameResolution((_attach(alias.value, short),), "alias", alias.origin, short)
    if not conf.unqualified_search_registries:
        where = conf.unqualified_search_registries_origin
        if where is not None:
            raise ShortNameError(
                f"short-name {text!r} did not resolve to an alias and no unqualified-search registries "
                f"are defined in {str(where)!r}"
            )
        if conf.sources:
            # Files were read, none sets the key: name them (c/image's message says none was found, which
            # misleads a user who passed --registries-conf).
            raise ShortNameError(
                f"short-name {text!r} did not resolve to an alias and no unqualified-search-registries are "
                f"defined in {conf.describe_sources()}"
            )
        raise ShortNameError(
            f"short-name {text!r} did not resolve to an alias and no containers-registries.conf(5) was found"
        )
    candidates: list[Reference] = []
    for reg in conf.unqualified_search_registries:
        try:
            candidates.append(_attach(parse_reference(f"{reg}/{short.path}"), short))
        except InvalidReferenceError as exc:
            raise ShortNameError(
                f"creating reference with unqualified-search registry {reg!r} for {text!r}: {exc}"
            ) from None
    origin = conf.unqualified_search_registries_origin
    result = ShortNameResolution(tuple(candidates), "search", origin, short)
    if conf.short_name_mode == "disabled" or len(candidates) == 1:
        return result
    if tty and choose is not None:
        chosen = choose(result.candidates)
        if chosen not in result.candidates:
            raise ShortNameError(f"short-name {text!r}: the selection {chosen} is not one of the candidates")
        return ShortNameResolution((chosen,), "selected", origin, short)
    if conf.short_name_mode == "permissive":
        return result
    raise ShortNameError(
        f"short-name resolution enforced but cannot prompt without a TTY: {text!r} could be any of "
        f'{", ".join(str(c) for c in candidates)} (short-name-mode="enforcing" in '
        f"{conf.describe_sources()}); use a fully qualified name or add an alias"
    )


def resolve_short_name(
    conf: RegistriesConf,
    text: str,
    *,
    tty: bool = False,
    choose: Callable[[tuple[Reference, ...]], Reference] | None = None,
) -> tuple[Reference, ...]:
    """The references to try, in order, for ``text`` (``shortnames.Resolve``).

    A fully qualified name gives itself (with ``:latest`` when it has neither tag nor digest). A short
    name gives its alias, else one candidate per unqualified-search registry. With several
    candidates: ``disabled`` and ``permissive`` return them all; with ``tty`` and a ``choose``
    callback (the prompt) the chosen one; otherwise ``enforcing`` raises :class:`ShortNameError`.
    tether never records aliases (podman only records a prompted choice).
    """
    return resolve_short_name_detailed(conf, text, tty=tty, choose=choose).candidates
