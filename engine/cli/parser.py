"""The ``tether`` command line's whole argument parser, and nothing that does the work.

Subcommands are grouped as podman users expect (``pull``, ``images``, ``inspect``, ``rmi``, ``check``,
``bound ...``, ``mirror ...``); options are spelled as podman/skopeo spell them, and podman's global options
(``--root``, ``--runroot``, ``--storage-driver``, ``--log-level``, ``--registries-conf``) are accepted before the
verb too (:func:`tether.engine.arguments.add_global_options`). ``--root`` is the containers-storage store
everywhere; the root of a deployment (a system's file tree) is ``--deployment-root``.

Every command's parser sets ``verb`` (``"pull"``, ``"bound sync"``, ...), which
:func:`tether.engine.cli.main.dispatch` turns into a call of that verb's implementation, and ``command_parser``
(itself), whose usage a bad option is reported with. A command group given without its subcommand (``tether
bound``) leaves ``verb`` ``None`` and ``command_parser`` naming the group's parser, whose help is then printed.

No option may be abbreviated (``allow_abbrev=False`` on every parser: ``--dest oci`` must not be read as
``--dest-tls-verify``), and ``--tls-verify`` alone means true, as Go's bool flags do.

This module imports argparse, pathlib and :mod:`tether.engine.arguments` only, so that ``--help``, a usage error
and the choice of a verb cost no engine, registry or store import. Shell completion and man pages are generated
from :func:`build_parser`: it is the single description of the command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether import __version__
from tether.engine.arguments import (
    DEFAULT_ROOT,
    PULL_POLICIES,
    add_common_options,
    add_global_options,
    add_platform_parts,
    add_pull_options,
    add_store_options,
    add_verb_globals,
    normalize_bool_flags,
    parse_bool,
    parse_duration,
)

#: Every verb the parser sets, in the order it defines them.
VERBS = (
    "pull", "inspect", "images", "rmi", "check",
    "bound list", "bound sync", "bound status", "bound gc", "bound install", "bound lock",
    "mirror sync", "mirror prune",
)

#: Verbs whose deployment root was ``--root`` before ``--root`` meant the store everywhere.
_DEPLOYMENT_ROOT_VERBS = ("bound list", "mirror sync")


class TetherParser(argparse.ArgumentParser):
    """An argument parser that never accepts abbreviated options (``allow_abbrev=False``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


class TopLevelParser(TetherParser):
    """``tether``'s own parser: bool flags as Go reads them, and a bad option reported with its verb's usage."""

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        argv = normalize_bool_flags(list(sys.argv[1:] if args is None else args))
        parsed, extras = self.parse_known_args(argv, namespace)
        if extras:
            # argparse reports options no subcommand took at the top level, with tether's usage; the verb's
            # own usage says what it does take.
            parser: argparse.ArgumentParser = getattr(parsed, "command_parser", None) or self
            message = f"unrecognized arguments: {' '.join(extras)}"
            if "--root" in extras and getattr(parsed, "verb", None) in _DEPLOYMENT_ROOT_VERBS:
                message += " (--root is the store; a deployment's root is --deployment-root DIR)"
            parser.error(message)
        return parsed


class _DeprecatedAlias(argparse.Action):
    """An old spelling of an option: stores into the new one's ``dest`` and says so on stderr."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, replacement: str, **kwargs: Any) -> None:
        self.replacement = replacement
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"tether: {option_string} is deprecated: use {self.replacement}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def build_parser() -> argparse.ArgumentParser:
    """Build the full argument parser (every subcommand)."""
    parser = TopLevelParser(
        prog="tether",
        description="Pull the images a bootc host binds into containers-storage, fast and never half-done.",
    )
    parser.add_argument("--version", action="version", version=f"tether {__version__}")
    add_global_options(parser)
    parser.set_defaults(verb=None, command_parser=parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=TetherParser)
    _add_pull(subparsers)
    _add_inspect(subparsers)
    _add_images(subparsers)
    _add_bound(subparsers)
    _add_mirror(subparsers)
    return parser


# The type of add_subparsers()'s result is private to argparse (argparse._SubParsersAction) and not subscriptable
# at run time: the alias exists for the type checker only (annotations are not evaluated).
if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[TetherParser]


def _verb(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.set_defaults(verb=verb, command_parser=parser)


def _add_pull(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "pull",
        help="pull images into containers-storage, all at once",
        description="Pull every IMAGE (docker://, oci:DIR[:REF], oci-archive:FILE[:REF], or a registry "
                    "reference; short names resolved by registries.conf) into the store, concurrently, streamed "
                    "once. Prints each image's id on stdout. Exit status 1 if any image failed; the summary "
                    "says which and why.",
    )
    add_common_options(parser, nested=True)
    add_platform_parts(parser)
    add_pull_options(parser)
    parser.add_argument("--policy", "--pull", dest="pull_policy", choices=PULL_POLICIES, default="newer",
                        help="always: resolve and copy every image (layers the store has are not fetched again); "
                             "newer: one manifest request, nothing more when the store has this platform's "
                             "image under the name (default); missing: no request for a name the store has "
                             "(with a platform given: newer); never: only what the store has")
    parser.add_argument("--creds", default=None, metavar="USER[:PASS]",
                        help="credentials for the registry of each IMAGE named (not its mirrors, nor other "
                             "hosts); without :PASS it is asked for on the terminal")
    parser.add_argument("--retry", type=int, default=None, metavar="N",
                        help="times to retry a failed request (default: 3; podman's --retry)")
    parser.add_argument("--retry-delay", type=parse_duration, default=None, metavar="DURATION",
                        help="pause between retries, a Go duration (500ms, 2s, 1m; default: exponential backoff)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress; print only the image ids")
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    _verb(parser, "pull")


def _add_inspect(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="show an image's manifest, config and layers (as skopeo inspect does)",
        description="Print IMAGE's metadata as skopeo inspect does (same JSON keys), plus Endpoint: the "
                    "repository actually used (a mirror, or the primary). IMAGE is docker://NAME or a "
                    "registry reference (short names resolved through registries.conf), oci:DIR[:REF], "
                    "oci-archive:FILE[:REF], or containers-storage:NAME|ID (an image of the store --root names).",
    )
    add_common_options(parser, nested=True, output_format=False)
    parser.add_argument("--format", "-f", default=None, metavar="TEMPLATE",
                        help="a Go template over the output's keys ({{.Digest}}, {{json .Labels}}, ...)")
    parser.add_argument("--raw", action="store_true",
                        help="print the manifest (with --config: the config) bytes exactly as served")
    parser.add_argument("--config", action="store_true", help="print the image's config")
    parser.add_argument("--no-tags", "-n", action="store_true", help="do not list the repository's tags")
    parser.add_argument("image", metavar="IMAGE")
    _verb(parser, "inspect")


def _add_images(subparsers: Subparsers) -> None:
    """``images``, ``rmi`` and ``check``: the store as podman shows it."""
    images = subparsers.add_parser(
        "images",
        help="list the images in the store",
        description="List the images of the store (and of its additional image stores), newest first, as "
                    "`podman images` does: one row per name; IMAGE (a name, short name or pattern) lists only "
                    "the images it matches, as --filter reference=IMAGE. A store that does not exist lists "
                    "nothing (and is not created).",
    )
    add_store_options(images, nested=True)
    add_verb_globals(images)
    images.add_argument("--format", default="table", metavar="FORMAT",
                        help="json, or a Go template over podman's fields ({{.Repository}}:{{.Tag}}, {{.ID}}, "
                             "{{.Digest}}, {{.Size}}, {{.Created}}, {{json .}}, ...); a 'table ' prefix adds "
                             "the column headings")
    images.add_argument("--quiet", "-q", action="store_true", help="print only the image ids")
    images.add_argument("--filter", "-f", action="append", default=[], metavar="KEY=VALUE",
                        help="reference=PATTERN (a name, path or name:tag, * and ? allowed), id=ID, "
                             "digest=DIGEST, label=KEY[=VALUE], dangling=BOOL, readonly=BOOL; repeatable")
    images.add_argument("--digests", action="store_true", help="show the digests")
    images.add_argument("--no-trunc", action="store_true", help="do not truncate the ids")
    images.add_argument("--noheading", "-n", action="store_true", help="no column headings")
    images.add_argument("--all", "-a", action="store_true",
                        help="accepted for podman's sake: every image is always listed")
    images.add_argument("image", nargs="?", default=None, metavar="IMAGE")
    _verb(images, "images")

    rmi = subparsers.add_parser(
        "rmi",
        help="remove images and the layers no other image uses",
        description="Remove each IMAGE (name, short name, id, short id or digest). Given by a name while the "
                    "image has other names, only that name is removed, as podman does; given by id, an image "
                    "with several names is removed only with --force. Exit status 1 if any failed.",
    )
    add_store_options(rmi, nested=True)
    add_verb_globals(rmi)
    rmi.add_argument("--force", "-f", action="store_true",
                     help="remove an image given by id even when it has several names")
    rmi.add_argument("--all", "-a", action="store_true", help="remove every image of the store")
    rmi.add_argument("--ignore", "-i", action="store_true", help="an IMAGE the store does not have is no error")
    rmi.add_argument("images", nargs="*", metavar="IMAGE")
    _verb(rmi, "rmi")

    check = subparsers.add_parser(
        "check",
        help="verify the store: every layer reproduces its diff digest",
        description="Rebuild every layer's tar from its tar-split and files and compare it with the recorded "
                    "diff digest and size; check overlay links, image top layers and big data. Exit status 1 "
                    "when anything is wrong, or when there is no store at --root.",
    )
    add_store_options(check, nested=True)
    add_verb_globals(check)
    check.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    _verb(check, "check")


def _deployment_root_option(p: argparse.ArgumentParser | argparse._ArgumentGroup, *, dest: str,
                            repeat: bool, **kwargs: Any) -> None:
    p.add_argument("--deployment-root", dest=dest, type=Path, metavar="DIR",
                   action="append" if repeat else "store", **kwargs)


def _add_bound(subparsers: Subparsers) -> None:
    """``bound list|sync|status|gc|install``: logically bound images (see :mod:`tether.engine.cli.bound`)."""
    bound = subparsers.add_parser(
        "bound",
        help="logically bound images: list, sync, status, gc, install",
        description="The images a bootc host binds (usr/lib/bootc/bound-images.d), kept in the bootc store.",
    )
    sub = bound.add_subparsers(dest="bound_command", metavar="SUBCOMMAND", parser_class=TetherParser)
    bound.set_defaults(verb=None, command_parser=bound)

    p = sub.add_parser("list", help="list the images a root binds (bootc image list --type logical)",
                       description="List the images a deployment root binds, as `bootc image list --type "
                                   "logical` does (REPOSITORY, TYPE; JSON: image_type, image), plus the "
                                   "file that binds each.")
    _deployment_root_option(p, dest="deployment_root", repeat=False, default=Path("/"),
                            help="the deployment root to read usr/lib/bootc/bound-images.d from (default: /)")
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    add_verb_globals(p)
    _verb(p, "bound list")

    p = sub.add_parser(
        "sync",
        help="pull every bound image of each not-ready deployment, then mark it ready",
        description="Pull, concurrently, every bound image of each deployment that is not ready (the new one "
        "first); mark a deployment ready only when all its images are committed. Exit status 1 if "
        "any deployment is not ready afterwards; a rerun retries only what is missing.",
    )
    _deployment_options(p)
    _store_options(p)
    add_common_options(p, store=False, nested=True)
    add_pull_options(p)
    p.add_argument("--no-gc", action="store_true", help="do not collect garbage after the sync")
    p.add_argument("--source", default=None, metavar="oci:DIR|oci-archive:FILE",
                   help="take every bound image from this OCI layout or archive instead of its registry")
    p.add_argument("--lock", type=Path, default=None, metavar="FILE",
                   help="pull exactly the digests this lock file (tether bound lock) pins, under the bound names, "
                        "even after their tags moved; a deployment whose images differ from it is synced again")
    _verb(p, "bound sync")

    p = sub.add_parser("status", help="show each deployment, its bound images and whether it is ready")
    _deployment_options(p)
    _store_options(p)
    add_verb_globals(p)
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    p.add_argument(
        "--check",
        metavar="DEPLOYMENT",
        default=None,
        help="exit 0 only if DEPLOYMENT is ready (name, CSUM.SERIAL, checksum prefix, index, or "
        "staged/booted/pending/rollback/default/new)",
    )
    p.add_argument("--lock", type=Path, default=None, metavar="FILE",
                   help="compare the store with this lock file: each bound image's stored digest against its pin; "
                        "exit 1 when any differs or is missing (with --check: that deployment's images only)")
    _verb(p, "bound status")

    p = sub.add_parser("gc", help="remove images no present deployment binds")
    _deployment_options(p)
    _store_options(p)
    add_verb_globals(p)
    p.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    _verb(p, "bound gc")

    p = sub.add_parser(
        "install",
        help="copy (or pull) the images a root binds into a new system's store",
        description="Put every image SRCROOT binds into the new system's store (--root): from the host's store "
        "without the network (stored: all must be there, checked before the target is touched), pulled, or "
        "not.",
    )
    _deployment_root_option(p, dest="deployment_root", repeat=False, default=None,
                            help="root of the system being installed (its usr/lib/bootc/bound-images.d); required")
    group = p.add_argument_group("store")
    group.add_argument("--root", type=Path, default=argparse.SUPPRESS, metavar="DIR",
                       help="the new system's bootc store (required)")
    group.add_argument("--target-store", dest="root", type=Path, default=argparse.SUPPRESS, metavar="DIR",
                       help=argparse.SUPPRESS)
    group.add_argument(
        "--source-store",
        type=Path,
        default=Path("/var/lib/containers/storage"),
        metavar="DIR",
        help="where the images are (default: /var/lib/containers/storage)",
    )
    group.add_argument("--storage-driver", choices=("overlay", "vfs"), default=argparse.SUPPRESS,
                       help="target store driver")
    p.add_argument(
        "--bound-images",
        choices=("stored", "pull", "skip"),
        default="stored",
        help="stored: copy from the source store (default); pull: from the registries; skip",
    )
    p.add_argument(
        "--sysroot",
        type=Path,
        default=None,
        metavar="DIR",
        help="the installed system's ostree sysroot: record each of its deployments whose bound images were "
        "all installed as ready, as a sync would, so that it boots ready without one",
    )
    add_common_options(p, store=False, nested=True)
    p.add_argument("--jobs", "-j", type=int, default=None, metavar="N", help="layers fetched at once (pull)")
    _verb(p, "bound install")

    p = sub.add_parser(
        "lock",
        help="pin every image the deployments bind to the digest its tag points at now (a lock file)",
        description="Resolve every image the deployments bind (one manifest request each) to the digest its "
        "tag points at now (the index digest of a multi-platform image) and write a lock file: JSON, sorted, "
        "with each image as the quadlet writes it and its binding. `tether bound sync --lock FILE` then pulls "
        "exactly those digests on every host, and `tether bound status --lock FILE` compares a store with it. "
        "Nothing is written when any image cannot be resolved.",
    )
    _deployment_options(p)
    add_common_options(p, store=False, nested=True, output_format=False)
    p.add_argument("--output", "-o", type=Path, default=None, metavar="FILE",
                   help="write the lock file here (atomically) instead of stdout")
    _verb(p, "bound lock")


def _deployment_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("deployments")
    group.add_argument(
        "--sysroot",
        type=Path,
        default=None,
        metavar="DIR",
        help="ostree sysroot whose deployments to use (default: / on a booted ostree host)",
    )
    _deployment_root_option(
        group, dest="deployment_roots", repeat=True, default=None,
        help="a plain deployment root (repeatable; the first is the new one). gc, also run after a sync, keeps "
        "only what the deployments given bind",
    )
    group.add_argument("--run-dir", type=Path, default=None, help=argparse.SUPPRESS)


def _store_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("store")
    add_store_options(group, nested=True, root_help=f"the bootc image store (default: SYSROOT/ostree/bootc/storage "
                                                    f"for a --sysroot other than /, else {DEFAULT_ROOT})")
    group.add_argument("--store", dest="root", type=Path, default=argparse.SUPPRESS, metavar="DIR",
                       action=_DeprecatedAlias, replacement="--root", help=argparse.SUPPRESS)


def _add_mirror(subparsers: Subparsers) -> None:
    """``mirror sync`` and ``mirror prune`` (see :mod:`tether.engine.copy.mirror`)."""
    mirror = subparsers.add_parser(
        "mirror",
        help="copy images to a mirror (OCI layout, oci-archive, registry) for offline and air-gapped hosts",
        description="Copy images, or every image a bootc root binds, to a mirror, byte for byte.",
    )
    commands = mirror.add_subparsers(dest="mirror_command", metavar="COMMAND", parser_class=TetherParser)
    mirror.set_defaults(verb=None, command_parser=mirror)

    sync = commands.add_parser(
        "sync",
        conflict_handler="resolve",
        help="copy images (or a root's bound images) to oci:DIR, oci-archive:FILE or docker://HOST[/NAMESPACE]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Copy IMAGEs (registry references, oci:DIR[:REF], oci-archive:FILE[:REF]), or the bound images of\n"
            "--deployment-root DIR or of every deployment of --sysroot DIR, to --to DEST:\n"
            "  oci:DIR                  one layout, entries named by full source reference, updated in place\n"
            "  oci-archive:FILE         written atomically\n"
            "  docker://HOST[:PORT][/NAMESPACE]\n"
            "                           NAMESPACE/<repository>:<tag> as skopeo sync names it (--scoped keeps\n"
            "                           the source host: NAMESPACE/<host>/<repository path>)\n"
            "\n"
            "Digests: every blob and every image manifest is copied byte for byte and keeps its digest. What a\n"
            "name points at keeps its digest too, except in one case: a multi-platform index filtered to the\n"
            "chosen platforms (the default: the host's, or --platform) when that choice leaves out some of its\n"
            "entries. The mirror then gets a new index holding only those entries (their descriptors as they\n"
            "were), so the index digest differs from the source's and a host resolving the tag gets the new one.\n"
            "The index is kept whole, with its digest, when --all-platforms is given, when the chosen platforms\n"
            "are all it has, and always for a reference pinned by digest (NAME@sha256:...): a new index would\n"
            "break the pin. Blobs already there are skipped; an interrupted sync resumes."
        ),
    )
    add_common_options(sync, store=False, nested=True)
    what = sync.add_mutually_exclusive_group()
    _deployment_root_option(what, dest="deployment_root", repeat=False, default=None,
                            help="mirror the images bound by this root's usr/lib/bootc/bound-images.d")
    what.add_argument("--sysroot", type=Path, default=None, metavar="DIR",
                      help="mirror the images bound by every deployment of this ostree sysroot")
    sync.add_argument("--to", required=True, metavar="DEST",
                      help="oci:DIR, oci-archive:FILE or docker://HOST[:PORT][/NAMESPACE]")
    plat = sync.add_mutually_exclusive_group()
    plat.add_argument("--all-platforms", action="store_true",
                      help="keep multi-platform indexes whole, with their digests (default: the chosen platforms "
                           "only; see above for when the index then gets a new digest)")
    plat.add_argument("--platform", action="append", default=None, metavar="OS/ARCH[/VARIANT]",
                      help="platforms to keep from multi-platform images (repeatable, or comma-separated; "
                           "default: the host's)")
    sync.add_argument("--scoped", action="store_true",
                      help="docker:// destinations: put the source registry host in front of the repository path")
    sync.add_argument("--registries-conf-out", type=Path, default=None, metavar="FILE",
                      help="write a registries.conf.d drop-in sending hosts to the mirror for exactly these images")
    sync.add_argument("--dest-tls-verify", type=parse_bool, nargs="?", const=True, default=None, metavar="BOOL",
                      help="TLS verification for the destination registry (alone: true; default: as --tls-verify)")
    sync.add_argument("--remove-signatures", action="store_true",
                      help="docker:// destinations: do not copy signatures (sigstore attachments, lookaside files)")
    sync.add_argument("--progress", choices=("auto", "bar", "plain", "none"), default="auto",
                      help="progress display on stderr: live on a TTY (auto), plain lines, none")
    sync.add_argument("--jobs", "-j", type=int, default=None, metavar="N", help="blobs copied at once (default: 6)")
    sync.add_argument("images", nargs="*", metavar="IMAGE")
    _verb(sync, "mirror sync")

    prune = commands.add_parser(
        "prune",
        help="remove blobs no reference of an OCI layout mirror uses any more",
        description="Remove blobs of oci:DIR that no index.json entry reaches (and leftovers of interrupted "
                    "writes); --remove drops references first.",
    )
    prune.add_argument("target", metavar="oci:DIR")
    prune.add_argument("--remove", action="append", default=[], metavar="REF",
                       help="drop this reference (its org.opencontainers.image.ref.name) before pruning; repeatable")
    prune.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    add_verb_globals(prune)
    _verb(prune, "mirror prune")

