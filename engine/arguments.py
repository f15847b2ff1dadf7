"""The options every ``tether`` command shares, as spelled on its command line (as podman and skopeo spell them).

The argparse helpers that add them, their defaults, and the checks of their values that need nothing of the
engine. The parsed value the engine takes is :class:`tether.engine.options.CommonOptions`; it is kept apart
because it resolves values through :mod:`tether.registry` (platforms, auth files), whose import costs
~30 ms: the parser, ``--help`` and commands that only open the store (``images``) never pay for it. For the same
reason this module imports nothing beyond argparse, os and pathlib (no dataclasses, no typing).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from tether.engine.errors import UsageError

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
    """``--jobs``, ``--progress``, ``--progress-fd`` and ``--disk-reserve``: shared by ``pull`` and ``bound
    sync`` (the verb parses ``--disk-reserve``: its type is the store's)."""
    parser.add_argument("--jobs", "-j", type=int, default=None, metavar="N",
                        help="layers fetched and extracted at once, across all images (default: sized for the "
                             "machine)")
    parser.add_argument("--progress", choices=("auto", "bar", "plain", "json", "none"), default="auto",
                        help="progress display: a live display on a TTY (auto), plain lines, bootc JSON lines, "
                             "none")
    parser.add_argument("--progress-fd", type=int, default=None, metavar="FD",
                        help="write progress as bootc's JSON lines (progress-v0 schema) to this file descriptor")
    parser.add_argument("--disk-reserve", default="default", metavar="SIZE",
                        help="free space layer extraction leaves on the store's filesystem: a size (512M, 2G), "
                             "a percentage of the filesystem (5%%), 0 to turn the check off, or default "
                             "(max(1 GiB, 5%%), at most 10 GiB)")


def check_common_options(args: argparse.Namespace) -> None:
    """Refuse a ``--platform`` that is not OS/ARCH or OS/ARCH/VARIANT, before any work starts.

    Every command taking the common options refuses it, also one that chooses no platform (``images``).
    """
    platform = getattr(args, "platform", None)
    if platform is not None and platform.count("/") not in (1, 2):
        raise UsageError(f"--platform {platform!r}: expected OS/ARCH or OS/ARCH/VARIANT")


def check_pull_options(args: argparse.Namespace) -> None:
    """Refuse a ``--jobs`` below 1 and a ``--progress-fd`` that is not open, before any work starts."""
    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    if args.progress_fd is not None:
        try:
            os.fstat(args.progress_fd)
        except OSError as exc:
            raise UsageError(f"--progress-fd {args.progress_fd}: {exc.strerror}") from None


def store_root(args: argparse.Namespace) -> Path:
    """The containers-storage graph root the arguments name: ``--root``, else the bootc store."""
    root = getattr(args, "root", None)
    return root if root is not None else DEFAULT_ROOT
