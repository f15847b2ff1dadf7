"""The options every ``tether`` command shares, as the engine takes them: :class:`CommonOptions`.

Their command-line spelling (argparse helpers, defaults) is :mod:`tether.engine.arguments`. This module resolves
values through :mod:`tether.registry` (``--platform``, the auth file, registries.conf), so only the commands that
reach a registry import it; the copy engine builds registry objects from them in one place
(:class:`tether.engine.copy.clients.RegistryClients`).
"""

from __future__ import annotations

import argparse
import getpass
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from tether.engine.arguments import DEFAULT_POLICY, DEFAULT_ROOT, check_common_options, store_root
from tether.engine.errors import UsageError
from tether.registry.auth import AuthLookup, AuthPath, Credentials, auth_paths
from tether.registry.manifest import Platform, host_platform, parse_platform

# DEFAULT_ROOT and DEFAULT_POLICY are CommonOptions' defaults, so they are part of what this module offers (the
# Python API, tether.DEFAULT_ROOT, takes it from here), though defined with their command-line spelling.
__all__ = ["DEFAULT_POLICY", "DEFAULT_ROOT", "CommonOptions", "common_options_from_args", "parse_creds",
           "platform_from_args"]


@dataclass(frozen=True, kw_only=True)
class CommonOptions:
    """Options every command accepts. ``None`` means "as podman/bootc would default it"."""

    root: Path = DEFAULT_ROOT
    runroot: Path | None = None
    storage_driver: str | None = None
    authfile: Path | None = None
    registries_conf: Path | None = None
    #: ``--registries-conf-dir``: the only registries.conf drop-in directory read (buildah's option)
    registries_conf_dir: Path | None = None
    #: ``--short-name-alias-conf``: the short-name alias cache (buildah's option)
    short_name_alias_conf: Path | None = None
    #: ``--registries.d``: the registries.d directory (skopeo's option)
    registries_d: Path | None = None
    cert_dir: Path | None = None
    tls_verify: bool | None = None
    signature_policy: Path | None = None
    platform: str | None = None
    format: str = "table"
    log_level: str = "warning"
    sysroot: Path = Path("/")
    #: podman's auth-file lookup (``tether pull``, mirrors) or bootc's (the bound-image commands)
    auth_lookup: AuthLookup = "podman"
    #: ``pull --creds``: used for the registry of each image named, instead of the auth file's entries
    #: (:meth:`tether.engine.copy.clients.RegistryClients.get`); never shown (``repr`` hides it).
    creds: Credentials | None = field(default=None, repr=False)
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ), repr=False, compare=False)

    def wanted_platform(self) -> Platform | None:
        """The ``--platform`` value parsed, or ``None`` for the host's platform."""
        if self.platform is None:
            return None
        return parse_platform(self.platform)

    def auth_paths(self) -> tuple[AuthPath, ...]:
        """The credentials files, in lookup order (:func:`tether.registry.auth.auth_paths`).

        ``auth_lookup="podman"``: ``--authfile`` or ``REGISTRY_AUTH_FILE`` alone, else podman's files
        (``$XDG_RUNTIME_DIR/containers/auth.json``, ``~/.config/containers/auth.json``, ``~/.docker/config.json``,
        ``~/.dockercfg``). ``"bootc"``: ``--authfile``, ``REGISTRY_AUTH_FILE``, else the first existing of
        /run/ostree/auth.json, /etc/ostree/auth.json and /usr/lib/ostree/auth.json under ``sysroot`` (bootc's
        crates/lib/src/podstorage.rs hands podman an empty ``{}`` when none exists: then nothing is read).
        """
        return auth_paths(self.auth_lookup, explicit=self.authfile, environ=self.environ, sysroot=self.sysroot)

    def auth_file_path(self) -> Path | None:
        """The first credentials file of :meth:`auth_paths` (the only one for ``--authfile`` and bootc)."""
        paths = self.auth_paths()
        return paths[0].path if paths else None

    def policy_path(self) -> Path:
        """The signature policy: ``--signature-policy``, else /etc/containers/policy.json."""
        return self.signature_policy if self.signature_policy is not None else DEFAULT_POLICY


def common_options_from_args(args: argparse.Namespace, *, environ: Mapping[str, str] | None = None) -> CommonOptions:
    """Build :class:`CommonOptions` from parsed arguments (missing attributes take defaults)."""
    env = dict(os.environ if environ is None else environ)
    check_common_options(args)
    creds = getattr(args, "creds", None)
    return CommonOptions(
        root=store_root(args),
        runroot=getattr(args, "runroot", None),
        storage_driver=getattr(args, "storage_driver", None),
        authfile=getattr(args, "authfile", None),
        registries_conf=getattr(args, "registries_conf", None),
        registries_conf_dir=getattr(args, "registries_conf_dir", None),
        short_name_alias_conf=getattr(args, "short_name_alias_conf", None),
        registries_d=getattr(args, "registries_d", None),
        cert_dir=getattr(args, "cert_dir", None),
        tls_verify=getattr(args, "tls_verify", None),
        signature_policy=getattr(args, "signature_policy", None),
        platform=platform_from_args(args),
        format=getattr(args, "format", "table") or "table",
        log_level=getattr(args, "log_level", "warning") or "warning",
        creds=parse_creds(creds) if creds is not None else None,
        environ=env,
    )


def platform_from_args(args: argparse.Namespace) -> str | None:
    """``--platform``, else the platform ``--arch``/``--os``/``--variant`` make with the host's other parts
    (podman: ``--arch arm64`` on an amd64 host is ``linux/arm64``); ``None`` when none is given."""
    platform: str | None = getattr(args, "platform", None)
    arch, os_name, variant = (getattr(args, name, None) for name in ("arch", "os", "variant"))
    if platform is not None or not (arch or os_name or variant):
        return platform
    host = host_platform()
    parts = [os_name or host.os, arch or host.architecture]
    if variant:
        parts.append(variant)
    elif not arch and host.variant:
        parts.append(host.variant)
    return "/".join(parts)


def parse_creds(text: str, *, ask: Callable[[str], str] | None = None) -> Credentials:
    """``--creds USER[:PASS]`` as podman reads it: without ``:PASS`` the password is asked for on the terminal
    (``ask``, default :func:`getpass.getpass`, which reads /dev/tty); an empty user name is refused."""
    user, sep, password = text.partition(":")
    if not user:
        raise UsageError("--creds: the user name is empty (USER[:PASS])")
    if not sep:
        prompt = ask if ask is not None else getpass.getpass
        try:
            password = prompt("Password: ")
        except (EOFError, OSError) as exc:
            raise UsageError(f"--creds {user}: no password given and none could be asked for ({exc})") from None
    return Credentials(username=user, password=password)
