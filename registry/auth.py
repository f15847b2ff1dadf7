"""containers-auth.json(5): which file, what it says, and the credentials for one repository.

File choice: two lookups
    *podman's* (``tether pull``, :func:`podman_auth_paths`; c/image ``pkg/docker/config`` ``getAuthFilePaths``):
    ``--authfile`` or ``$REGISTRY_AUTH_FILE`` (podman passes it as ``--authfile``) alone; otherwise, in order,
    ``$XDG_RUNTIME_DIR/containers/auth.json`` (``/run/containers/$UID/auth.json`` when unset: what ``podman
    login`` writes), ``$XDG_CONFIG_HOME/containers/auth.json`` (``~/.config``), ``$DOCKER_CONFIG/config.json``
    else ``~/.docker/config.json``, and ``~/.dockercfg`` (docker's legacy format, read only); the first file
    with credentials for the repository wins, missing files are skipped.
    *bootc's* (the bound-image commands, :func:`bootc_auth_paths`): bootc pulls with a global pull secret
    (ostree-ext ``globals.rs``): the first existing of ``/run/ostree/auth.json``, ``/etc/ostree/auth.json``,
    ``/usr/lib/ostree/auth.json`` under the sysroot. When none exists bootc hands podman an empty ``{}``, so
    *nothing else* is read (:func:`find_bootc_auth_file`). ``--authfile`` and ``$REGISTRY_AUTH_FILE`` override it.
    :class:`AuthFiles` keeps every path consulted, so that a 401 can name them.

Lookup (containers/image ``pkg/docker/config/config.go``, ``findCredentialsInFile``)
    For ``ref.name`` = ``host/ns/repo``: a ``credHelpers[host]`` entry runs that helper; otherwise the
    ``auths`` keys ``host/ns/repo``, ``host/ns``, ``host`` are tried exactly, most specific first (every
    path prefix for deeper names); then, as a last resort, keys are normalised (``http(s)://`` and
    anything after the host dropped from URL-style keys, ``docker.io``/``registry-1.docker.io``/
    ``index.docker.io`` treated as one) and compared with the host. Global ``credential-helpers`` from
    registries.conf are consulted in order (``containers-auth.json`` meaning this file).

Entries
    An entry that cannot be decoded (not an object, ``auth`` not base64, ...) is kept as an error and reported,
    naming the file and the key, only when a lookup selects it (c/image decodes the matching entry only), so
    one bad entry does not break pulls from other registries. ``auth`` is base64 ``user:password`` (NULs trimmed
    from the password, as c/image does); an entry
    without a colon counts as "no credentials" and ends the search, as in containers/image.
    ``identitytoken`` is an OAuth2 refresh token for the Bearer flow. tether also uses an
    ``identitytoken`` whose ``auth`` is empty (containers/image ignores such entries).

Credential helpers run ``docker-credential-NAME get`` with the registry host on stdin (docker
credential-helpers protocol); ``credentials not found in native keychain`` means no credentials;
``Username == "<token>"`` means the secret is an identity token. These are blocking calls: the engine
runs :func:`lookup_credentials` in a worker thread.

Secrets never reach ``repr``/``str`` or error messages.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from tether.registry.errors import AuthenticationError, ConfigError
from tether.registry.reference import Reference
from tether.registry.registries_conf import AUTHENTICATION_FILE_HELPER

__all__ = [
    "BOOTC_AUTH_FILES",
    "AuthEntry",
    "AuthFile",
    "AuthFiles",
    "AuthLookup",
    "AuthPath",
    "Credentials",
    "auth_paths",
    "bootc_auth_paths",
    "find_bootc_auth_file",
    "load_auth_file",
    "load_auth_files",
    "lookup_credentials",
    "normalize_auth_key",
    "podman_auth_paths",
    "select_auth_file",
]

#: Which auth-file lookup applies: podman's (``tether pull``) or bootc's (bound images).
AuthLookup = Literal["podman", "bootc"]

#: ostree-ext's global authfile search order, relative to the sysroot.
BOOTC_AUTH_FILES: Final = (
    Path("run/ostree/auth.json"),
    Path("etc/ostree/auth.json"),
    Path("usr/lib/ostree/auth.json"),
)
#: docker-credential-helpers ``errCredentialsNotFoundMessage``.
CREDENTIALS_NOT_FOUND: Final = "credentials not found in native keychain"
HELPER_TIMEOUT: Final = 60.0


@dataclass(frozen=True)
class Credentials:
    """Credentials for one registry endpoint. ``repr``/``str`` never show the password or token."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        secret = "<redacted>" if self.password else "''"
        token = "<redacted>" if self.identity_token else "None"
        return f"Credentials(username={self.username!r}, password={secret}, identity_token={token})"

    __str__ = __repr__

    @property
    def is_empty(self) -> bool:
        return not (self.username or self.password or self.identity_token)


@dataclass(frozen=True)
class AuthEntry:
    """One ``auths`` entry, decoded. ``credentials`` is None for an entry without usable credentials
    (docker writes ``{}`` entries next to a credential helper); ``error`` says why an entry could not be
    decoded (file and key named, never the value): raised as :class:`ConfigError` when a lookup selects it."""

    key: str
    credentials: Credentials | None
    error: str | None = None

    def __repr__(self) -> str:
        return f"AuthEntry(key={self.key!r}, credentials={self.credentials!r}, error={self.error!r})"

    def usable(self) -> Credentials | None:
        """The credentials; :class:`ConfigError` for an entry that could not be decoded."""
        if self.error is not None:
            raise ConfigError(self.error)
        return self.credentials


@dataclass(frozen=True)
class AuthFile:
    """A parsed containers-auth.json (``path`` None: the empty ``{}`` bootc uses when it has none);
    ``legacy``: docker's ``~/.dockercfg`` format (entries at the top level, keys are registry URLs)."""

    path: Path | None = None
    auths: tuple[AuthEntry, ...] = ()
    cred_helpers: Mapping[str, str] = field(default_factory=dict)
    legacy: bool = False

    def entry(self, key: str) -> AuthEntry | None:
        for e in self.auths:
            if e.key == key:
                return e
        return None

    def describe(self) -> str:
        return str(self.path) if self.path is not None else "(no auth file)"


@dataclass(frozen=True)
class AuthPath:
    """One place a lookup reads credentials from; ``legacy`` for docker's ``~/.dockercfg`` format."""

    path: Path
    legacy: bool = False


@dataclass(frozen=True)
class AuthFiles:
    """The auth files of one lookup, in order: the first with credentials for a repository wins.

    ``files`` are those that exist (loaded); ``consulted`` every path looked at, for messages (a 401 names
    them: "after ``podman login`` tether gets a 401" is then one look away from its cause).
    """

    files: tuple[AuthFile, ...] = ()
    consulted: tuple[Path, ...] = ()

    def describe(self) -> str:
        """``auth files consulted: a, b (missing)``, or that none was."""
        if not self.consulted:
            return "no auth file consulted"
        present = {f.path for f in self.files}
        shown = ", ".join(str(p) if p in present else f"{p} (missing)" for p in self.consulted)
        return f"auth files consulted: {shown}"


def find_bootc_auth_file(*, sysroot: Path = Path("/")) -> Path | None:
    """The pull secret bootc would use: the first existing of /run/ostree/auth.json,
    /etc/ostree/auth.json and /usr/lib/ostree/auth.json under ``sysroot``, else None (then no
    credentials at all: :func:`load_auth_file` of None is empty)."""
    for rel in BOOTC_AUTH_FILES:
        candidate = sysroot / rel
        if candidate.exists():
            return candidate
    return None


def bootc_auth_paths(
    *, explicit: Path | None = None, environ: Mapping[str, str] = os.environ, sysroot: Path = Path("/")
) -> tuple[AuthPath, ...]:
    """bootc's lookup: ``explicit`` (``--authfile``), else ``$REGISTRY_AUTH_FILE``, else the first existing
    ostree pull secret under ``sysroot`` (:func:`find_bootc_auth_file`); nothing at all when none exists."""
    chosen = select_auth_file(explicit=explicit, environ=environ, sysroot=sysroot)
    return (AuthPath(chosen),) if chosen is not None else ()


def podman_auth_paths(
    *, explicit: Path | None = None, environ: Mapping[str, str] = os.environ, uid: int | None = None
) -> tuple[AuthPath, ...]:
    """podman's lookup, c/image ``pkg/docker/config`` ``getAuthFilePaths`` (see the module docstring).

    ``explicit`` or ``$REGISTRY_AUTH_FILE`` is the only file (podman's ``--authfile`` default is that variable,
    and a user-specified path ends c/image's list). ``$HOME`` unset: the home-relative files are left out.
    """
    if explicit is not None:
        return (AuthPath(explicit),)
    env_file = environ.get("REGISTRY_AUTH_FILE")
    if env_file:
        return (AuthPath(Path(env_file)),)
    paths: list[AuthPath] = []
    runtime_dir = environ.get("XDG_RUNTIME_DIR")
    if runtime_dir:
        # c/image getPathToAuthWithOS: a runtime dir that does not exist is warned about and skipped
        if Path(runtime_dir).is_dir():
            paths.append(AuthPath(Path(runtime_dir) / "containers/auth.json"))
    else:
        paths.append(AuthPath(Path(f"/run/containers/{os.getuid() if uid is None else uid}/auth.json")))
    home = environ.get("HOME")
    config_home = environ.get("XDG_CONFIG_HOME") or (f"{home}/.config" if home else None)
    if config_home:
        paths.append(AuthPath(Path(config_home) / "containers/auth.json"))
    docker_config = environ.get("DOCKER_CONFIG")
    if docker_config:
        paths.append(AuthPath(Path(docker_config) / "config.json"))
    elif home:
        paths.append(AuthPath(Path(home) / ".docker/config.json"))
    if home:
        paths.append(AuthPath(Path(home) / ".dockercfg", legacy=True))
    return tuple(paths)


def auth_paths(
    lookup: AuthLookup,
    *,
    explicit: Path | None = None,
    environ: Mapping[str, str] = os.environ,
    sysroot: Path = Path("/"),
) -> tuple[AuthPath, ...]:
    """The files ``lookup`` reads, in order: :func:`podman_auth_paths` or :func:`bootc_auth_paths`."""
    if lookup == "bootc":
        return bootc_auth_paths(explicit=explicit, environ=environ, sysroot=sysroot)
    return podman_auth_paths(explicit=explicit, environ=environ)


def select_auth_file(
    *, explicit: Path | None = None, environ: Mapping[str, str] = os.environ, sysroot: Path = Path("/")
) -> Path | None:
    """The auth file for a pull: ``--authfile`` (``explicit``), else ``$REGISTRY_AUTH_FILE``, else
    bootc's global pull secret under ``sysroot`` (:func:`find_bootc_auth_file`)."""
    if explicit is not None:
        return explicit
    env = environ.get("REGISTRY_AUTH_FILE")
    if env:
        return Path(env)
    return find_bootc_auth_file(sysroot=sysroot)


def _decode_auth(path: Path, key: str, raw: object, token: object) -> Credentials | None:
    """``decodeDockerAuth``; the error names the file and key, never the value (:class:`ConfigError`)."""
    if not isinstance(raw, str):
        raise ConfigError(f"{path}: auths[{key!r}].auth: expected a string")
    if token is not None and not isinstance(token, str):
        raise ConfigError(f"{path}: auths[{key!r}].identitytoken: expected a string")
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{path}: auths[{key!r}].auth: not valid base64") from None
    try:
        text = decoded.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: auths[{key!r}].auth: not UTF-8 once decoded") from None
    user, colon, password = text.partition(":")
    if not colon:
        if token:  # tether extension: an identity token on its own is usable
            return Credentials(identity_token=token)
        return None
    return Credentials(user, password.strip("\x00"), token or None)


def _entry(path: Path, key: str, value: object) -> AuthEntry:
    if not isinstance(value, dict):
        return AuthEntry(key, None, f"{path}: auths[{key!r}]: expected an object")
    try:
        return AuthEntry(key, _decode_auth(path, key, value.get("auth", ""), value.get("identitytoken")))
    except ConfigError as exc:
        return AuthEntry(key, None, str(exc))


def load_auth_file(path: Path | None, *, legacy: bool = False) -> AuthFile:
    """Parse a containers-auth.json (``legacy``: ``~/.dockercfg``); ``None`` gives the empty file. A missing
    or unreadable file, invalid JSON or a top level of the wrong shape is a :class:`ConfigError` naming the
    file; a bad entry is kept and reported when a lookup selects it (:attr:`AuthEntry.error`)."""
    if path is None:
        return AuthFile()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: auth file does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: auth file is a directory") from None
    except PermissionError as exc:
        raise ConfigError(f"{path}: cannot read the auth file: {exc.strerror}") from None
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        # The message of JSONDecodeError quotes no content, only the position.
        detail = (
            f"{exc.msg} at line {exc.lineno} column {exc.colno}"
            if isinstance(exc, json.JSONDecodeError)
            else "not UTF-8"
        )
        raise ConfigError(f"{path}: invalid JSON: {detail}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object at the top level")
    if legacy:
        return AuthFile(path, tuple(_entry(path, str(k), v) for k, v in data.items()), {}, legacy=True)
    auths_raw = data.get("auths")
    if auths_raw is None:
        auths_raw = {}
    if not isinstance(auths_raw, dict):
        raise ConfigError(f"{path}: auths: expected an object")
    entries = [_entry(path, key, value) for key, value in auths_raw.items()]
    helpers_raw = data.get("credHelpers")
    if helpers_raw is None:
        helpers_raw = {}
    if not isinstance(helpers_raw, dict) or not all(isinstance(v, str) for v in helpers_raw.values()):
        raise ConfigError(f"{path}: credHelpers: expected an object of strings")
    return AuthFile(path, tuple(entries), dict(helpers_raw))


def load_auth_files(paths: Sequence[AuthPath], *, required: bool = False) -> AuthFiles:
    """Load the files of a lookup (:func:`auth_paths`) that exist; ``required``: the first path must exist
    (an explicit ``--authfile``, as podman checks it)."""
    files: list[AuthFile] = []
    for index, entry in enumerate(paths):
        if not (required and index == 0) and not entry.path.exists():
            continue
        files.append(load_auth_file(entry.path, legacy=entry.legacy))
    return AuthFiles(tuple(files), tuple(p.path for p in paths))


def _normalize_registry(registry: str) -> str:
    """``normalizeRegistry``: the docker.io spellings are one registry."""
    return "index.docker.io" if registry in ("registry-1.docker.io", "docker.io") else registry


def normalize_auth_key(key: str, *, legacy: bool = False) -> str:
    """``normalizeAuthFileKey``: ``https://index.docker.io/v1/`` -> ``index.docker.io``; keys with a
    scheme (every key of a legacy file) lose everything after the host; docker.io spellings unified."""
    stripped = key.removeprefix("http://").removeprefix("https://")
    if legacy or stripped != key:
        stripped = stripped.partition("/")[0]
    return _normalize_registry(stripped)


def _lookup_keys(key: str) -> Iterator[str]:
    """``authKeyLookupOrder``: ``a/b/c/d`` -> ``a/b/c/d``, ``a/b/c``, ``a/b``, ``a``."""
    while True:
        yield key
        cut = key.rfind("/")
        if cut == -1:
            return
        key = key[:cut]


def _validate_key(key: str) -> None:
    """``validateKey``: a registry, namespace or repository; no scheme, tag or digest."""
    if key.startswith(("http://", "https://")):
        raise ValueError(f"credential lookup key {key!r} contains a http[s]:// prefix")
    if "@" in key:
        raise ValueError(f"credential lookup key {key!r} contains a '@' character")
    _host, slash, rest = key.partition("/")
    if slash and ":" in rest:
        raise ValueError(f"credential lookup key {key!r} contains a ':' character after host[:port]")


def run_credential_helper(
    helper: str, registry: str, *, environ: Mapping[str, str] | None = None
) -> Credentials | None:
    """``docker-credential-HELPER get`` for ``registry`` (docker credential-helpers protocol)."""
    program = f"docker-credential-{helper}"
    try:
        proc = subprocess.run(
            [program, "get"],
            input=registry.encode(),
            capture_output=True,
            timeout=HELPER_TIMEOUT,
            env=dict(environ) if environ is not None else None,
            check=False,
        )
    except FileNotFoundError:
        raise AuthenticationError(f"credential helper {program} for {registry}: not found in $PATH") from None
    except subprocess.TimeoutExpired:
        raise AuthenticationError(f"credential helper {program} for {registry}: timed out") from None
    except OSError as exc:
        raise AuthenticationError(f"credential helper {program} for {registry}: {exc.strerror}") from None
    out = proc.stdout.decode(errors="replace").strip()
    if proc.returncode != 0:
        if out == CREDENTIALS_NOT_FOUND:
            return None
        # Never echo the helper's output: it may contain secrets.
        raise AuthenticationError(f"credential helper {program} for {registry}: exited with status {proc.returncode}")
    try:
        data = json.loads(out)
    except json.JSONDecodeError:
        raise AuthenticationError(f"credential helper {program} for {registry}: output is not JSON") from None
    if not isinstance(data, dict):
        raise AuthenticationError(f"credential helper {program} for {registry}: output is not a JSON object")
    username = data.get("Username", "")
    secret = data.get("Secret", "")
    if not isinstance(username, str) or not isinstance(secret, str):
        raise AuthenticationError(f"credential helper {program} for {registry}: Username/Secret are not strings")
    if username == "<token>":
        return Credentials(identity_token=secret)
    creds = Credentials(username, secret)
    return None if creds.is_empty else creds


def _from_file(auth: AuthFile, key: str, registry: str, environ: Mapping[str, str] | None) -> Credentials | None:
    """``findCredentialsInFile``."""
    helper = auth.cred_helpers.get(registry)
    if helper is not None:
        return run_credential_helper(helper, registry, environ=environ)
    # legacy files hold registry keys only (c/image findCredentialsInFile)
    for candidate in (registry,) if auth.legacy else _lookup_keys(key):
        entry = auth.entry(candidate)
        if entry is not None:
            return entry.usable()
    normalized = _normalize_registry(registry)
    for entry in auth.auths:
        if normalize_auth_key(entry.key, legacy=auth.legacy) == normalized:
            return entry.usable()
    return None


def _from_files(
    auth: AuthFile | AuthFiles, key: str, registry: str, environ: Mapping[str, str] | None
) -> Credentials | None:
    """c/image ``getCredentialsFromAuthFiles``: the first file with credentials for ``key``."""
    for one in auth.files if isinstance(auth, AuthFiles) else (auth,):
        creds = _from_file(one, key, registry, environ)
        if creds is not None and not creds.is_empty:
            return creds
    return None


def lookup_credentials(
    auth: AuthFile | AuthFiles,
    ref_name: str | Reference,
    *,
    helpers: Sequence[str] = (AUTHENTICATION_FILE_HELPER,),
    environ: Mapping[str, str] | None = None,
) -> Credentials | None:
    """The credentials for ``ref_name`` (``Reference.name`` of the *physical* reference: mirrors use
    their own entries), or None for anonymous access.

    ``helpers`` is registries.conf's ``credential-helpers`` (``containers-auth.json`` = ``auth``);
    the first that has credentials wins. When none has any and some failed,
    :class:`AuthenticationError` lists the failures (``getCredentialsWithHomeDir``). An undecodable entry
    selected by the lookup is a :class:`ConfigError` naming its file and key.
    ``environ`` is the environment of credential helper processes (default: inherited).
    """
    key = ref_name.name if isinstance(ref_name, Reference) else ref_name
    _validate_key(key)
    registry = key.partition("/")[0]
    failures: list[str] = []
    for helper in helpers:
        try:
            if helper == AUTHENTICATION_FILE_HELPER:
                creds = _from_files(auth, key, registry, environ)
            else:
                creds = run_credential_helper(helper, registry, environ=environ)
        except AuthenticationError as exc:
            failures.append(str(exc))
            continue
        if creds is not None and not creds.is_empty:
            return creds
    if failures:
        raise AuthenticationError(f"looking up credentials for {key}: " + "; ".join(failures))
    return None
