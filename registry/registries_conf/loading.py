"""Loading registries.conf: file selection, strict parsing, v1 conversion, drop-ins, merging, the alias cache.

Semantics are containers/image's (``pkg/sysregistriesv2/system_registries_v2.go``, ``shortnames.go``):

File selection (``newConfigWrapperWithHomeDir``)
    ``path`` argument, else ``$CONTAINERS_REGISTRIES_CONF`` (podman's override), else
    ``$HOME/.config/containers/registries.conf`` if it exists (then only the user drop-in dir is read),
    else ``/etc/containers/registries.conf``. An explicit file must exist; a missing default file is an
    empty configuration. Drop-ins: ``/etc/containers/registries.conf.d/*.conf`` then
    ``$HOME/.config/containers/registries.conf.d/*.conf``, lexical order, no recursion, v2 only.
    ``root`` (a sysroot or a test directory) prefixes the absolute paths; with ``root`` set, the
    per-user files are ignored (the sysroot's configuration is what counts).

Merge (``parsedConfig.updateWithConfigurationFrom``)
    ``[[registry]]`` tables are keyed by ``prefix``: a later file's table replaces the whole earlier
    one; within one file the first table of a prefix wins. ``unqualified-search-registries`` and
    ``credential-helpers`` are replaced when the key is present (``[]`` clears; empty
    ``credential-helpers`` then defaults to ``["containers-auth.json"]``). ``short-name-mode``
    is replaced when set (default ``permissive``). ``[aliases]`` merge key by key; ``""`` erases.

Where tether differs: invalid files name the file *and* the key (containers/image often only says what was
wrong).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, cast

from tether.registry.errors import ConfigError, InvalidReferenceError
from tether.registry.reference import ANCHORED_DOMAIN_RE, Reference, is_short_name, parse_reference, parse_short_name
from tether.registry.registries_conf.model import (
    AUTHENTICATION_FILE_HELPER,
    DEFAULT_SHORT_NAME_MODE,
    Alias,
    Mirror,
    PullFromMirror,
    RegistriesConf,
    RegistryEntry,
    ShortNameMode,
)

__all__ = ["default_aliases_path", "load_alias_cache", "load_registries_conf", "merge_parsed", "read_alias_table",
           "validate_alias_name"]

SYSTEM_REGISTRIES_CONF: Final = Path("etc/containers/registries.conf")
SYSTEM_REGISTRIES_CONF_D: Final = Path("etc/containers/registries.conf.d")
USER_REGISTRIES_CONF: Final = Path(".config/containers/registries.conf")
USER_REGISTRIES_CONF_D: Final = Path(".config/containers/registries.conf.d")
ROOT_ALIASES_CONF: Final = Path("var/cache/containers/short-name-aliases.conf")
_SHORT_NAME_MODES: Final = ("enforcing", "permissive", "disabled")
_PULL_FROM_MIRROR: Final = ("all", "digest-only", "tag-only")


@dataclass
class _Parsed:
    """One file after validation (``parsedConfig``); None fields were absent from the file."""

    path: Path
    registries: list[RegistryEntry]
    unqualified_search_registries: list[str] | None
    credential_helpers: list[str] | None
    short_name_mode: ShortNameMode | None
    aliases: dict[str, Alias]


_KEY_PART = re.compile(r"([A-Za-z0-9_.-]+?)(?:\[(\d+)\])?(?:\.|$)")


def key_line(text: str, key: str) -> int | None:
    """The line (1-based) of ``text`` where ``key`` (``registry[1].mirror[0].location``,
    ``unqualified-search-registries[2]``, ``short-name-mode``) is set, as far as a line-oriented look finds it:
    tomllib reports no positions for valid TOML, and a message naming the line spares a search of the file."""
    lines = text.splitlines()
    start, end = 0, len(lines)
    table = ""
    found: int | None = None
    for name, index in _KEY_PART.findall(key):
        if index:
            table = f"{table}.{name}" if table else name
            header = re.compile(r"^\s*\[\[\s*" + re.escape(table).replace(r"\.", r"\s*\.\s*") + r"\s*\]\]")
            hits = [i for i in range(start, end) if header.match(lines[i])]
            if int(index) >= len(hits):
                # an inline array (`key = [...]`) or array of inline tables: the key's own line
                assign = re.compile(r'^\s*"?' + re.escape(name) + r'"?\s*=')
                line = next((i for i in range(start, end) if assign.match(lines[i])), None)
                return line + 1 if line is not None else found
            start = hits[int(index)] + 1
            nxt = [i for i in range(start, end) if re.match(r"^\s*\[\[?\s*" + re.escape(table.split(".")[0]) +
                                                                r"\s*\]\]?", lines[i])]
            end = nxt[0] if nxt else end
            found = hits[int(index)] + 1
            continue
        assign = re.compile(r'^\s*"?' + re.escape(name) + r'"?\s*=')
        line = next((i for i in range(start, end) if assign.match(lines[i])), None)
        return line + 1 if line is not None else found
    return found


def _err(path: Path, key: str, message: str) -> ConfigError:
    try:
        line = key_line(path.read_text(errors="replace"), key)
    except OSError:
        line = None
    return ConfigError(f"{path}: {key}: {message}" + (f" (at line {line})" if line is not None else ""))


def _get_bool(path: Path, table: Mapping[str, Any], key: str, where: str) -> bool:
    value = table.get(key, False)
    if not isinstance(value, bool):
        raise _err(path, f"{where}{key}", f"expected a boolean, got {value!r}")
    return value


def _get_str(path: Path, table: Mapping[str, Any], key: str, where: str) -> str:
    value = table.get(key, "")
    if not isinstance(value, str):
        raise _err(path, f"{where}{key}", f"expected a string, got {value!r}")
    return value


def _get_str_list(path: Path, table: Mapping[str, Any], key: str, where: str) -> list[str] | None:
    if key not in table:
        return None
    value = table[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _err(path, f"{where}{key}", f"expected an array of strings, got {value!r}")
    return list(value)


def _parse_location(path: Path, key: str, value: str) -> str:
    """``parseLocation``: trailing ``/`` trimmed, URI schemes refused."""
    trimmed = value.rstrip("/")
    if trimmed.startswith(("http://", "https://")):
        raise _err(path, key, f"invalid location {value!r}: URI schemes are not supported")
    return trimmed


def validate_alias_name(name: str) -> str | None:
    """``validateShortName``: the error, or None."""
    if not is_short_name(name):
        try:
            parse_reference(name)
        except InvalidReferenceError as exc:
            return f"cannot parse short name {name!r}: {exc}"
        return f"invalid short name {name!r}: must not contain registry"
    short = parse_short_name(name)
    if short.digest is not None:
        return f"invalid short name {name!r}: must not contain digest"
    if short.tag is not None:
        return f"invalid short name {name!r}: must not contain tag"
    return None


def _parse_alias_value(value: str) -> Reference | str:
    """``parseShortNameValue``: a normalised, fully qualified name without tag/digest, or the error."""
    if is_short_name(value):
        return f"invalid alias {value!r}: must contain registry and repository"
    try:
        ref = parse_reference(value)
    except InvalidReferenceError as exc:
        return f"parsing alias {value!r}: {exc}"
    if ref.digest is not None:
        return f"invalid alias {value!r}: must not contain digest"
    if ref.tag is not None:
        return f"invalid alias {value!r}: must not contain tag"
    return ref


def _parse_aliases(path: Path, raw: object, where: str = "aliases") -> dict[str, Alias]:
    """``newShortNameAliasCache``: every malformed entry is reported, not just the first."""
    if not isinstance(raw, dict):
        raise _err(path, where, f"expected a table, got {raw!r}")
    out: dict[str, Alias] = {}
    errors: list[str] = []
    for name, value in raw.items():
        key = f"{where}.{name!r}" if not re.fullmatch(r"[A-Za-z0-9_-]+", name) else f"{where}.{name}"
        if not isinstance(value, str):
            errors.append(f"{key}: expected a string, got {value!r}")
            continue
        problem = validate_alias_name(name)
        if problem is not None:
            errors.append(f"{key}: {problem}")
            continue
        if value == "":
            out[name] = Alias(None, path)
            continue
        parsed = _parse_alias_value(value)
        if isinstance(parsed, str):
            errors.append(f"{key}: {parsed}")
        else:
            out[name] = Alias(parsed, path)
    if errors:
        raise ConfigError(f"{path}: invalid short-name aliases: " + "; ".join(errors))
    return out


def _parse_mirror(path: Path, raw: object, where: str, reg_prefix: str, digest_only: bool) -> Mirror:
    if not isinstance(raw, dict):
        raise _err(path, where.rstrip("."), f"expected a table, got {raw!r}")
    location = _parse_location(path, f"{where}location", _get_str(path, raw, "location", where))
    if not location:
        raise _err(path, f"{where}location", "invalid condition: mirror location is unset")
    insecure = _get_bool(path, raw, "insecure", where)
    pfm = _get_str(path, raw, "pull-from-mirror", where)
    if pfm and digest_only:
        raise _err(
            path,
            f"{where}pull-from-mirror",
            f"cannot set mirror usage mirror-by-digest-only for the registry ({reg_prefix!r}) and "
            f"pull-from-mirror for per-mirror ({location!r}) at the same time",
        )
    if pfm and pfm not in _PULL_FROM_MIRROR:
        raise _err(
            path,
            f"{where}pull-from-mirror",
            f"unsupported pull-from-mirror value {pfm!r} for mirror {location!r} "
            f"(expected one of {', '.join(_PULL_FROM_MIRROR)})",
        )
    return Mirror(location, insecure, cast("PullFromMirror", pfm) if pfm else None)


def _parse_registry(path: Path, raw: object, index: int) -> RegistryEntry:
    where = f"registry[{index}]."
    if not isinstance(raw, dict):
        raise _err(path, f"registry[{index}]", f"expected a table, got {raw!r}")
    location = _parse_location(path, f"{where}location", _get_str(path, raw, "location", where))
    prefix_raw = _get_str(path, raw, "prefix", where)
    if not prefix_raw:
        if not location:
            raise _err(path, f"registry[{index}]", "invalid condition: both location and prefix are unset")
        prefix = location
    else:
        prefix = _parse_location(path, f"{where}prefix", prefix_raw)
        if not prefix.startswith("*.") and not location:
            raise _err(
                path,
                f"{where}location",
                "invalid condition: location is unset and prefix is not in the format: *.example.com",
            )
    if prefix.startswith("*.") and any(c in prefix for c in "/@:"):
        raise _err(
            path,
            f"{where}prefix",
            f"wildcarded prefix should be in the format: *.example.com. Current prefix {prefix!r} "
            "is incorrectly formatted",
        )
    if "pull-from-mirror" in raw:
        raise _err(path, f"{where}pull-from-mirror", f"must not be set for a non-mirror registry {prefix!r}")
    digest_only = _get_bool(path, raw, "mirror-by-digest-only", where)
    raw_mirrors = raw.get("mirror", [])
    if not isinstance(raw_mirrors, list):
        raise _err(path, f"{where}mirror", "expected an array of tables ([[registry.mirror]])")
    mirrors = tuple(
        _parse_mirror(path, m, f"{where}mirror[{j}].", prefix, digest_only) for j, m in enumerate(raw_mirrors)
    )
    return RegistryEntry(
        prefix=prefix,
        location=location,
        insecure=_get_bool(path, raw, "insecure", where),
        blocked=_get_bool(path, raw, "blocked", where),
        mirror_by_digest_only=digest_only,
        mirrors=mirrors,
        origin=path,
    )


def _v1_present(data: Mapping[str, Any]) -> bool:
    # V1RegistriesConf.hasSetField: any registries.{search,insecure,block}.registries key, even [].
    v1 = data.get("registries")
    if not isinstance(v1, dict):
        return False
    return any(isinstance(v1.get(s), dict) and "registries" in v1[s] for s in ("search", "insecure", "block"))


def _v2_present(data: Mapping[str, Any]) -> bool:
    # V2RegistriesConf.hasSetField: arrays/maps present (even empty), strings non-empty.
    if any(k in data for k in ("registry", "unqualified-search-registries", "credential-helpers", "aliases")):
        return True
    return any(data.get(k) for k in ("short-name-mode", "additional-layer-store-auth-helper"))


def _convert_v1(path: Path, data: Mapping[str, Any]) -> dict[str, Any]:
    """``V1RegistriesConf.ConvertToV2``: blocked then insecure registries, one table per location."""
    v1 = data["registries"]
    lists: dict[str, list[str]] = {}
    for section in ("search", "insecure", "block"):
        table = v1.get(section, {})
        if not isinstance(table, dict):
            raise _err(path, f"registries.{section}", f"expected a table, got {table!r}")
        value = _get_str_list(path, table, "registries", f"registries.{section}.")
        lists[section] = value or []
    regs: dict[str, dict[str, Any]] = {}
    for section, flag in (("block", "blocked"), ("insecure", "insecure")):
        for location in lists[section]:
            loc = _parse_location(path, f"registries.{section}.registries", location)
            regs.setdefault(loc, {"location": loc, "prefix": loc})[flag] = True
    out: dict[str, Any] = {"registry": list(regs.values())}
    search = v1.get("search", {})
    if isinstance(search, dict) and "registries" in search:
        out["unqualified-search-registries"] = lists["search"]
    return out


def _parse_file(path: Path, *, force_v2: bool) -> _Parsed:
    """``loadConfigFile`` + ``postProcessRegistries``. FileNotFoundError propagates."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: invalid TOML: not UTF-8") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a registries.conf file") from None
    except PermissionError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if _v1_present(data):
        if force_v2:
            raise ConfigError(
                f"{path}: registries: registry must be in v2 format but is in v1 (drop-in files must be v2)"
            )
        if _v2_present(data):
            v2_keys = [
                k
                for k in (
                    "registry",
                    "unqualified-search-registries",
                    "credential-helpers",
                    "aliases",
                    "short-name-mode",
                    "additional-layer-store-auth-helper",
                )
                if k in data
            ]
            raise ConfigError(
                f"{path}: registries: mixing sysregistry v1/v2 is not supported "
                f"(v1 [registries.*] with v2 key {v2_keys[0]!r})"
            )
        data = _convert_v1(path, data)

    raw_regs = data.get("registry", [])
    if not isinstance(raw_regs, list):
        raise _err(path, "registry", "expected an array of tables ([[registry]]), got a single table ([registry])")
    entries = [_parse_registry(path, r, i) for i, r in enumerate(raw_regs)]

    # A registry mentioned several times must agree on insecure/blocked (postProcessRegistries).
    by_location: dict[str, RegistryEntry] = {}
    for e in entries:
        key = e.location or e.prefix
        other = by_location.setdefault(key, e)
        for attr in ("insecure", "blocked"):
            if getattr(other, attr) != getattr(e, attr):
                raise _err(
                    path,
                    f"registry[prefix={e.prefix!r}].{attr}",
                    f"registry {e.location!r} is defined multiple times with conflicting {attr!r} setting",
                )

    usr = _get_str_list(path, data, "unqualified-search-registries", "")
    if usr is not None:
        cleaned = []
        for i, value in enumerate(usr):
            reg = _parse_location(path, f"unqualified-search-registries[{i}]", value)
            if not ANCHORED_DOMAIN_RE.match(reg):
                raise _err(path, f"unqualified-search-registries[{i}]", f"invalid entry {reg!r}")
            cleaned.append(reg)
        usr = cleaned
    helpers = _get_str_list(path, data, "credential-helpers", "")
    mode_raw = _get_str(path, data, "short-name-mode", "")
    mode: ShortNameMode | None = None
    if mode_raw:
        if mode_raw not in _SHORT_NAME_MODES:
            raise _err(
                path,
                "short-name-mode",
                f"invalid short-name mode {mode_raw!r} (expected one of {', '.join(_SHORT_NAME_MODES)})",
            )
        mode = cast("ShortNameMode", mode_raw)
    _get_str(path, data, "additional-layer-store-auth-helper", "")  # type-checked, unused by tether
    aliases = _parse_aliases(path, data.get("aliases", {}))

    # Same prefix twice in one file: the first wins (then everything is kept sorted by prefix).
    unique: dict[str, RegistryEntry] = {}
    for e in entries:
        unique.setdefault(e.prefix, e)
    return _Parsed(
        path=path,
        registries=[unique[p] for p in sorted(unique)],
        unqualified_search_registries=usr,
        credential_helpers=helpers,
        short_name_mode=mode,
        aliases=aliases,
    )


def _drop_ins(dirs: Iterable[Path]) -> list[Path]:
    """``dropInConfigs``: ``*.conf`` entries of each directory, lexical order, no recursion."""
    out: list[Path] = []
    for d in dirs:
        try:
            names = sorted(os.listdir(d))
        except FileNotFoundError:
            continue
        except NotADirectoryError:
            raise ConfigError(f"{d}: reading registries.conf.d: not a directory") from None
        except PermissionError as exc:
            raise ConfigError(f"{d}: reading registries.conf.d: {exc.strerror}") from None
        for name in names:
            p = d / name
            if name.endswith(".conf") and not p.is_dir():
                out.append(p)
    return out


def merge_parsed(files: Sequence[_Parsed]) -> RegistriesConf:
    """``updateWithConfigurationFrom`` over ``files`` (the main file first), then the defaults."""
    registries: dict[str, RegistryEntry] = {}
    usr: list[str] = []
    usr_origin: Path | None = None
    helpers: list[str] = []
    mode: ShortNameMode | None = None
    aliases: dict[str, Alias] = {}
    for f in files:
        for e in f.registries:
            registries[e.prefix] = e
        if f.unqualified_search_registries is not None:
            usr = f.unqualified_search_registries
            usr_origin = f.path
        if f.credential_helpers is not None:
            helpers = f.credential_helpers
        if f.short_name_mode is not None:
            mode = f.short_name_mode
        aliases.update(f.aliases)
    return RegistriesConf(
        registries=tuple(registries[p] for p in sorted(registries)),
        unqualified_search_registries=tuple(usr),
        unqualified_search_registries_origin=usr_origin,
        short_name_mode=mode or DEFAULT_SHORT_NAME_MODE,
        credential_helpers=tuple(helpers) or (AUTHENTICATION_FILE_HELPER,),
        aliases=aliases,
        sources=tuple(f.path for f in files),
    )


def default_aliases_path(*, root: Path | None = None, environ: Mapping[str, str] = os.environ) -> Path:
    """Where the short-name-aliases.conf cache lives (``shortNameAliasesConfPath``):
    ``/var/cache/containers/`` for root (and under a sysroot), ``$XDG_CACHE_HOME/containers/``
    (default ``~/.cache``) for rootless users."""
    if root is not None:
        return root / ROOT_ALIASES_CONF
    if os.geteuid() == 0:
        return Path("/") / ROOT_ALIASES_CONF
    cache = environ.get("XDG_CACHE_HOME") or str(Path(environ.get("HOME", "/")) / ".cache")
    return Path(cache) / "containers/short-name-aliases.conf"


def _read_alias_file(path: Path) -> object:
    """The ``[aliases]`` table of the cache as written (``{}`` when the file is missing)."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: loading short-name aliases config file: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: loading short-name aliases config file: {exc.strerror}") from None
    return data.get("aliases", {})


def load_alias_cache(path: Path) -> dict[str, Alias]:
    """``loadShortNameAliasConf``: a missing file is empty; a corrupt one is a :class:`ConfigError`."""
    return _parse_aliases(path, _read_alias_file(path))


def read_alias_table(path: Path) -> dict[str, str]:
    """The cache's aliases as written (values not normalised, ``""`` kept), validated as
    :func:`load_alias_cache` validates them: what a writer puts back beside its new entry."""
    raw = _read_alias_file(path)
    _parse_aliases(path, raw)  # refuses a table that is not one of strings
    return dict(cast(dict[str, str], raw))


def load_registries_conf(
    *,
    path: Path | None = None,
    environ: Mapping[str, str] = os.environ,
    root: Path | None = None,
    dropin_dir: Path | None = None,
    aliases_path: Path | None = None,
) -> RegistriesConf:
    """Load registries.conf, its drop-ins and the short-name alias cache (see the module docs).

    ``path``: the main file (``--registries-conf``); else ``$CONTAINERS_REGISTRIES_CONF``; else the
    per-user or system default. ``root``: prefix for the default absolute paths (a sysroot, or a test
    directory); per-user files are only consulted when ``root`` is None and ``$HOME`` is set.
    ``dropin_dir``: use only this drop-in directory (containers/image ``SystemRegistriesConfDirPath``).
    ``aliases_path``: the short-name-aliases.conf cache (default :func:`default_aliases_path`).

    Raises :class:`ConfigError` naming the file and key for every invalid file, and for an explicitly
    chosen main file that does not exist.
    """
    base = root if root is not None else Path("/")
    home = Path(environ["HOME"]) if root is None and environ.get("HOME") else None
    explicit = (
        path
        if path is not None
        else (Path(environ["CONTAINERS_REGISTRIES_CONF"]) if environ.get("CONTAINERS_REGISTRIES_CONF") else None)
    )
    dirs: list[Path]
    if explicit is not None:
        main = explicit
        dirs = [dropin_dir] if dropin_dir is not None else [base / SYSTEM_REGISTRIES_CONF_D]
        if dropin_dir is None and home is not None:
            dirs.append(home / USER_REGISTRIES_CONF_D)
    elif home is not None and (home / USER_REGISTRIES_CONF).exists():
        main = home / USER_REGISTRIES_CONF
        dirs = [dropin_dir] if dropin_dir is not None else [home / USER_REGISTRIES_CONF_D]
    else:
        main = base / SYSTEM_REGISTRIES_CONF
        dirs = [dropin_dir] if dropin_dir is not None else [base / SYSTEM_REGISTRIES_CONF_D]
        if dropin_dir is None and home is not None:
            dirs.append(home / USER_REGISTRIES_CONF_D)

    files: list[_Parsed] = []
    try:
        files.append(_parse_file(main, force_v2=False))
    except FileNotFoundError:
        if explicit is not None:
            raise ConfigError(f"{main}: loading registries configuration: no such file") from None
    for p in _drop_ins(dirs):
        try:
            files.append(_parse_file(p, force_v2=True))
        except FileNotFoundError:  # removed between listing and reading: containers/image ignores it
            continue
    conf = merge_parsed(files)
    cache_path = aliases_path if aliases_path is not None else default_aliases_path(root=root, environ=environ)
    return replace(conf, alias_cache=load_alias_cache(cache_path))
