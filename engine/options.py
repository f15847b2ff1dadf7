"""Options shared by every ``tether`` command, spelled as podman and skopeo spell them.

:class:`CommonOptions` is the frozen result of parsing; the engine builds registry objects
(registries.conf, auth file) from it at one place, :func:`load_registry_config`.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tether.engine.errors import UsageError

if TYPE_CHECKING:
    from tether.registry.auth import AuthFile
    from tether.registry.manifest import Platform
    from tether.registry.registries_conf import RegistriesConf

#: The bootc image store (bootc: crates/lib/src/podstorage.rs) and its runroot.
DEFAULT_ROOT = Path("/usr/lib/bootc/storage")
DEFAULT_RUNROOT = Path("/run/bootc/storage")
DEFAULT_POLICY = Path("/etc/containers/policy.json")
LOG_LEVELS = ("debug", "info", "warning", "error")


def parse_bool(text: str) -> bool:
    """Parse ``--tls-verify=false`` style values as Go's strconv.ParseBool does."""
    lowered = text.strip().lower()
    if lowered in {"1", "t", "true", "yes", "on"}:
        return True
    if lowered in {"0", "f", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value {text!r} (use true or false)")


@dataclass(frozen=True, kw_only=True)
class CommonOptions:
    """Options every command accepts. ``None`` means "as podman/bootc would default it"."""

    root: Path = DEFAULT_ROOT
    runroot: Path | None = None
    storage_driver: str | None = None
    authfile: Path | None = None
    registries_conf: Path | None = None
    cert_dir: Path | None = None
    tls_verify: bool | None = None
    signature_policy: Path | None = None
    platform: str | None = None
    format: str = "table"
    log_level: str = "warning"
    sysroot: Path = Path("/")
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ), repr=False, compare=False)

    def wanted_platform(self) -> Platform | None:
        """The ``--platform`` value parsed, or ``None`` for the host's platform."""
        if self.platform is None:
            return None
        from tether.registry.manifest import parse_platform

        return parse_platform(self.platform)

    def auth_file_path(self) -> Path | None:
        """The credentials file: ``--authfile``, ``REGISTRY_AUTH_FILE``, else bootc's lookup.

        bootc (crates/lib/src/podstorage.rs) uses the first existing of /run/ostree/auth.json,
        /etc/ostree/auth.json and /usr/lib/ostree/auth.json, and hands podman an empty ``{}`` when none
        exists so that nothing else is read; ``None`` here means exactly that.
        """
        from tether.registry.auth import select_auth_file

        return select_auth_file(explicit=self.authfile, environ=self.environ, sysroot=self.sysroot)

    def policy_path(self) -> Path:
        """The signature policy: ``--signature-policy``, else /etc/containers/policy.json."""
        return self.signature_policy if self.signature_policy is not None else DEFAULT_POLICY


def add_common_options(parser: argparse.ArgumentParser, *, store: bool = True) -> None:
    """Add the podman-style common options to a subcommand's parser."""
    group = parser.add_argument_group("common options")
    if store:
        group.add_argument("--root", type=Path, default=None,
                           help=f"containers-storage graph root (default: {DEFAULT_ROOT})")
        group.add_argument("--runroot", type=Path, default=None, help="containers-storage run root")
        group.add_argument("--storage-driver", choices=("overlay", "vfs"), default=None,
                           help="storage driver (default: the store's, else overlay)")
    group.add_argument("--authfile", type=Path, default=None,
                       help="credentials file (default: $REGISTRY_AUTH_FILE, else bootc's ostree auth.json lookup)")
    group.add_argument("--registries-conf", type=Path, default=None,
                       help="registries.conf (default: $CONTAINERS_REGISTRIES_CONF, else the system file)")
    group.add_argument("--cert-dir", type=Path, default=None, help="directory of *.crt, *.cert and *.key files")
    group.add_argument("--tls-verify", type=parse_bool, nargs="?", const=True, default=None, metavar="BOOL",
                       help="require HTTPS and verify certificates (default: as registries.conf says)")
    group.add_argument("--signature-policy", type=Path, default=None,
                       help=f"signature policy file (default: {DEFAULT_POLICY})")
    group.add_argument("--platform", default=None, metavar="OS/ARCH[/VARIANT]",
                       help="platform to choose from multi-platform images (default: the host's)")
    group.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    group.add_argument("--log-level", choices=LOG_LEVELS, default="warning",
                       help="log level; debug shows HTTP exchanges with secrets redacted")


def add_pull_options(parser: argparse.ArgumentParser) -> None:
    """``--jobs``, ``--progress`` and ``--progress-fd``: shared by ``pull`` and ``bound sync``."""
    parser.add_argument("--jobs", "-j", type=int, default=None, metavar="N",
                        help="layers fetched and extracted at once, across all images (default: sized for the "
                             "machine)")
    parser.add_argument("--progress", choices=("auto", "bar", "plain", "json", "none"), default="auto",
                        help="progress display: a live display on a TTY (auto), plain lines, bootc JSON lines, "
                             "none")
    parser.add_argument("--progress-fd", type=int, default=None, metavar="FD",
                        help="write progress as bootc's JSON lines (progress-v0 schema) to this file descriptor")


def check_pull_options(args: argparse.Namespace) -> None:
    """Refuse a ``--jobs`` below 1 and a ``--progress-fd`` that is not open, before any work starts."""
    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    if args.progress_fd is not None:
        try:
            os.fstat(args.progress_fd)
        except OSError as exc:
            raise UsageError(f"--progress-fd {args.progress_fd}: {exc.strerror}") from None


def common_options_from_args(args: argparse.Namespace, *, environ: Mapping[str, str] | None = None) -> CommonOptions:
    """Build :class:`CommonOptions` from parsed arguments (missing attributes take defaults)."""
    env = dict(os.environ if environ is None else environ)
    platform = getattr(args, "platform", None)
    if platform is not None and platform.count("/") not in (1, 2):
        raise UsageError(f"--platform {platform!r}: expected OS/ARCH or OS/ARCH/VARIANT")
    root = getattr(args, "root", None)
    return CommonOptions(
        root=root if root is not None else DEFAULT_ROOT,
        runroot=getattr(args, "runroot", None),
        storage_driver=getattr(args, "storage_driver", None),
        authfile=getattr(args, "authfile", None),
        registries_conf=getattr(args, "registries_conf", None),
        cert_dir=getattr(args, "cert_dir", None),
        tls_verify=getattr(args, "tls_verify", None),
        signature_policy=getattr(args, "signature_policy", None),
        platform=platform,
        format=getattr(args, "format", "table") or "table",
        log_level=getattr(args, "log_level", "warning") or "warning",
        environ=env,
    )


def load_registry_config(options: CommonOptions) -> tuple[RegistriesConf, AuthFile]:
    """Load registries.conf (+ drop-ins) and the credentials file the options select."""
    from tether.registry.auth import load_auth_file
    from tether.registry.registries_conf import load_registries_conf

    root = None if options.sysroot == Path("/") else options.sysroot
    conf = load_registries_conf(path=options.registries_conf, environ=options.environ, root=root)
    auth = load_auth_file(options.auth_file_path())
    return conf, auth
