"""The options every ``tether`` command shares, as spelled on its command line (as podman and skopeo spell them).

The argparse helpers that add them, their defaults, and the checks of their values that need nothing of the
engine. The parsed value the engine takes is :class:`tether.engine.options.CommonOptions`; it is kept apart
because it resolves values through :mod:`tether.registry` (platforms, auth files), whose import costs
~30 ms: the parser, ``--help`` and commands that only open the store (``images``) never pay for it. For the same
reason this module imports nothing beyond argparse, os, re and pathlib (no dataclasses, no typing).

*Global* options (podman's persistent flags: ``--root``, ``--runroot``, ``--storage-driver``, ``--log-level``,
``--registries-conf``; buildah's ``--registries-conf-dir`` and ``--short-name-alias-conf``; skopeo's
``--registries.d``) are accepted before the verb (``tether --root DIR images``) and after it. A verb's parser
adds them with ``nested=True``: their default is then ``argparse.SUPPRESS``, so that a value given before the
verb is not overwritten by the verb's default (argparse copies every attribute of the subcommand's namespace
onto the top-level one); the top-level parser holds the defaults.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from tether.engine.errors import UsageError

#: The bootc image store (bootc: crates/lib/src/podstorage.rs) and its runroot.
DEFAULT_ROOT = Path("/usr/lib/bootc/storage")
DEFAULT_RUNROOT = Path("/run/bootc/storage")
DEFAULT_POLICY = Path("/etc/containers/policy.json")
#: podman's ``--log-level`` values (logrus levels, cmd/podman/root.go ``LogLevels``), mapped to Python's.
LOG_LEVELS = {"trace": 5, "debug": 10, "info": 20, "warn": 30, "warning": 30, "error": 40, "fatal": 50,
              "panic": 50}
#: Options that take an optional boolean value, as Go's pflag bool flags do: ``--tls-verify`` alone is true, a
#: value only with ``=`` (``--tls-verify=false``); ``--tls-verify false`` leaves ``false`` to the positionals.
BOOL_FLAGS = ("--tls-verify", "--dest-tls-verify")
#: Pull policies, as podman spells them (``--pull`` / ``--policy``).
PULL_POLICIES = ("always", "missing", "never", "newer")
#: The destinations of the global options (see the module docstring).
GLOBAL_DESTS = ("root", "runroot", "storage_driver", "log_level", "registries_conf", "registries_conf_dir",
                "short_name_alias_conf", "registries_d")


def parse_bool(text: str) -> bool:
    """Parse ``--tls-verify=false`` style values as Go's strconv.ParseBool does."""
    lowered = text.strip().lower()
    if lowered in {"1", "t", "true", "yes", "on"}:
        return True
    if lowered in {"0", "f", "false", "no", "off"}:
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean value {text!r} (use true or false)")


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """A Go ``time.ParseDuration`` string (``1.5s``, ``2m30s``, ``300ms``; podman's ``--retry-delay``) in seconds.

    Like Go, a bare ``0`` is accepted and every other number needs a unit; negative durations are refused here
    (a delay cannot be).
    """
    value = text.strip()
    if value in ("0", "+0"):
        return 0.0
    body = value[1:] if value.startswith("+") else value
    if not body or body.startswith("-"):
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (e.g. 500ms, 2s, 1m30s)")
    total = 0.0
    pos = 0
    for match in _DURATION_PART.finditer(body):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(body):
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (e.g. 500ms, 2s, 1m30s)")
    return total


def normalize_bool_flags(argv: list[str]) -> list[str]:
    """``--tls-verify`` (no ``=``) -> ``--tls-verify=true``, up to ``--``: see :data:`BOOL_FLAGS`."""
    out: list[str] = []
    for index, arg in enumerate(argv):
        if arg == "--":
            return out + argv[index:]
        out.append(f"{arg}=true" if arg in BOOL_FLAGS else arg)
    return out


def _default(value: object, nested: bool) -> object:
    return argparse.SUPPRESS if nested else value


def add_store_options(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, nested: bool = False,
                      root_help: str | None = None) -> None:
    """``--root``, ``--runroot``, ``--storage-driver``: the containers-storage store, as podman's global flags."""
    parser.add_argument("--root", type=Path, default=_default(None, nested), metavar="DIR",
                        help=root_help or f"containers-storage graph root: the store (default: {DEFAULT_ROOT})")
    parser.add_argument("--runroot", type=Path, default=_default(None, nested), metavar="DIR",
                        help="containers-storage run root")
    parser.add_argument("--storage-driver", choices=("overlay", "vfs"), default=_default(None, nested),
                        help="storage driver (default: the store's, else overlay)")


def add_log_level(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, nested: bool = False) -> None:
    """``--log-level``, with podman's values (``warn`` and ``warning`` alike; ``trace`` below ``debug``)."""
    parser.add_argument("--log-level", choices=tuple(LOG_LEVELS), default=_default("warning", nested),
                        metavar="LEVEL",
                        help="trace, debug, info, warn, error, fatal or panic (default: warn); debug shows HTTP "
                             "exchanges with secrets redacted")


def add_verb_globals(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` and ``--registries-conf`` after the verb, for a verb without the common options: global
    options are accepted there too, as podman accepts its persistent flags (the store options only where a
    store is used: :func:`add_store_options`)."""
    group = parser.add_argument_group("global options")
    add_log_level(group, nested=True)
    group.add_argument("--registries-conf", type=Path, default=argparse.SUPPRESS, metavar="FILE",
                       help=argparse.SUPPRESS)
    add_config_locations(group, nested=True, hidden=True)


def add_config_locations(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, nested: bool = False,
                         hidden: bool = False) -> None:
    """Where the host's container configuration is read from, for the files no other option names:
    buildah's global ``--registries-conf-dir`` and ``--short-name-alias-conf`` (c/image
    ``SystemContext.SystemRegistriesConfDirPath`` and ``UserShortNameAliasConfPath``) and skopeo's global
    ``--registries.d`` (``RegistriesDirPath``). A test tree, or an image build, points them away from /etc and
    /var/cache. ``hidden``: after a verb that does not read them (accepted, as podman accepts persistent flags)."""
    def shown(text: str) -> str:
        return argparse.SUPPRESS if hidden else text

    parser.add_argument("--registries-conf-dir", type=Path, default=_default(None, nested), metavar="DIR",
                        help=shown("registries.conf drop-in directory, read instead of "
                                   "/etc/containers/registries.conf.d and the user's"))
    parser.add_argument("--short-name-alias-conf", type=Path, default=_default(None, nested), metavar="FILE",
                        help=shown("short-name alias cache (default: /var/cache/containers/short-name-aliases.conf "
                                   "for root, else ~/.cache/containers/short-name-aliases.conf)"))
    parser.add_argument("--registries.d", dest="registries_d", type=Path, default=_default(None, nested),
                        metavar="DIR",
                        help=shown("registries.d directory: where signatures are looked up (default: "
                                   "~/.config/containers/registries.d if it exists, else "
                                   "/etc/containers/registries.d)"))


def add_global_options(parser: argparse.ArgumentParser) -> None:
    """The options ``tether`` accepts before the verb, with their defaults (see the module docstring)."""
    group = parser.add_argument_group("global options (also accepted after the command)")
    add_store_options(group)
    add_log_level(group)
    group.add_argument("--registries-conf", type=Path, default=None, metavar="FILE",
                       help="registries.conf (default: $CONTAINERS_REGISTRIES_CONF, else the system file)")
    add_config_locations(group)


def add_common_options(parser: argparse.ArgumentParser, *, store: bool = True, nested: bool = False,
                       output_format: bool = True) -> None:
    """Add the podman-style common options to a subcommand's parser (``nested``: it is a verb of ``tether``)."""
    group = parser.add_argument_group("common options")
    if store:
        add_store_options(group, nested=nested)
    group.add_argument("--authfile", type=Path, default=None,
                       help="credentials file (default: $REGISTRY_AUTH_FILE, else bootc's ostree auth.json lookup)")
    group.add_argument("--registries-conf", type=Path, default=_default(None, nested), metavar="FILE",
                       help="registries.conf (default: $CONTAINERS_REGISTRIES_CONF, else the system file)")
    add_config_locations(group, nested=nested)
    group.add_argument("--cert-dir", type=Path, default=None,
                       help="directory of *.crt, *.cert and *.key files, used instead of /etc/containers/certs.d "
                            "and /etc/docker/certs.d")
    group.add_argument("--tls-verify", type=parse_bool, nargs="?", const=True, default=None, metavar="BOOL",
                       help="require HTTPS and verify certificates (alone: true; --tls-verify=false turns it off; "
                            "default: as registries.conf says)")
    group.add_argument("--signature-policy", type=Path, default=None,
                       help=f"signature policy file (default: {DEFAULT_POLICY})")
    group.add_argument("--platform", default=None, metavar="OS/ARCH[/VARIANT]",
                       help="platform to choose from multi-platform images (default: the host's)")
    if output_format:
        group.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    add_log_level(group, nested=nested)


def add_platform_parts(parser: argparse.ArgumentParser) -> None:
    """podman's ``--arch``, ``--os``, ``--variant``: parts of the platform, the others the host's."""
    parser.add_argument("--arch", default=None, metavar="ARCH",
                        help="use ARCH instead of the host's architecture to choose images (conflicts with "
                             "--platform)")
    parser.add_argument("--os", default=None, metavar="OS",
                        help="use OS instead of the host's to choose images (conflicts with --platform)")
    parser.add_argument("--variant", default=None, metavar="VARIANT",
                        help="use VARIANT instead of the host's architecture variant to choose images")


def add_pull_options(parser: argparse.ArgumentParser) -> None:
    """``--jobs``, ``--progress``, ``--progress-fd``, ``--disk-reserve``, ``--limit-rate``, ``--download-only``
    and ``--dry-run``: shared by ``pull`` and ``bound sync`` (the verb parses ``--disk-reserve`` and
    ``--limit-rate``: their types are the store's and the registry client's)."""
    parser.add_argument("--jobs", "-j", type=int, default=None, metavar="N",
                        help="layers fetched and extracted at once, across all images (default: sized for the "
                             "machine, layers of 1 MiB or less not counted)")
    parser.add_argument("--progress", choices=("auto", "bar", "plain", "json", "none"), default="auto",
                        help="progress display on stderr: live on a TTY (auto), plain lines, none; json: bootc's "
                             "JSON lines on stdout, which then carries nothing else (see --progress-fd)")
    parser.add_argument("--progress-fd", type=int, default=None, metavar="FD",
                        help="write progress as bootc's JSON lines (progress-v0 schema) to this file descriptor")
    parser.add_argument("--disk-reserve", default="default", metavar="SIZE",
                        help="free space downloads and layer extraction leave on the store's filesystem: a size "
                             "(512M, 2G), a percentage of the filesystem (5%%), 0 to turn the check off, or default "
                             "(max(1 GiB, 5%%), at most 10 GiB)")
    parser.add_argument("--limit-rate", default=None, metavar="RATE",
                        help="at most RATE bytes per second for all downloads together, curl's spelling: 500K, "
                             "10M, 1G (1024-based)")
    parser.add_argument("--download-only", action="store_true",
                        help="fetch and verify every blob into the store's download cache, commit nothing; a "
                             "later run without it applies the download without the network")
    parser.add_argument("--dry-run", action="store_true",
                        help="resolve and plan only: per image what the store has, the layers and exact bytes "
                             "that would be fetched, the disk it would take; writes nothing (with --format json: "
                             "one JSON document)")


def check_common_options(args: argparse.Namespace) -> None:
    """Refuse a ``--platform`` that is not OS/ARCH or OS/ARCH/VARIANT, or one given with ``--arch``/``--os``,
    before any work starts.

    Every command taking the common options refuses it, also one that chooses no platform (``images``).
    """
    platform = getattr(args, "platform", None)
    if platform is not None and platform.count("/") not in (1, 2):
        raise UsageError(f"--platform {platform!r}: expected OS/ARCH or OS/ARCH/VARIANT")
    parts = [f"--{name}" for name in ("arch", "os", "variant") if getattr(args, name, None)]
    if platform is not None and parts:
        raise UsageError(f"--platform conflicts with {' and '.join(parts)}: give one or the other")


def check_pull_options(args: argparse.Namespace) -> None:
    """Refuse a ``--jobs`` below 1, a ``--progress-fd`` that is not open and a ``--dry-run`` with JSON progress
    lines on stdout, before any work starts."""
    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    if getattr(args, "dry_run", False) and getattr(args, "progress", None) == "json":
        raise UsageError("--dry-run fetches nothing: it has no progress to report (use --format json for its plan)")
    if args.progress_fd is not None:
        try:
            os.fstat(args.progress_fd)
        except OSError as exc:
            raise UsageError(f"--progress-fd {args.progress_fd}: {exc.strerror}") from None


def progress_on_stdout(args: argparse.Namespace) -> bool:
    """Whether the progress JSON lines go to stdout (``--progress json`` without ``--progress-fd``, or an fd
    that is stdout itself): stdout then carries nothing else (image ids, tables and documents are not printed;
    ``--format json`` is refused by :func:`check_output_streams`)."""
    if getattr(args, "progress", None) == "json" and args.progress_fd is None:
        return True
    fd = getattr(args, "progress_fd", None)
    if fd is None:
        return False
    try:
        mine, stdout = os.fstat(fd), os.fstat(1)
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (stdout.st_dev, stdout.st_ino)


def check_output_streams(args: argparse.Namespace) -> None:
    """Refuse ``--format json`` when the progress JSON lines go to stdout: one stream, one kind of document."""
    if getattr(args, "format", None) == "json" and progress_on_stdout(args):
        raise UsageError("--format json and the JSON progress lines would both go to stdout: send the progress "
                         "elsewhere with --progress-fd FD")


def store_root(args: argparse.Namespace) -> Path:
    """The containers-storage graph root the arguments name: ``--root``, else the bootc store."""
    root = getattr(args, "root", None)
    return root if root is not None else DEFAULT_ROOT
