"""The ``tether`` command line's whole argument parser, and nothing that does the work.

Subcommands are grouped as podman users expect (``pull``, ``images``, ``inspect``, ``rmi``, ``check``,
``bound ...``, ``mirror ...``); common options are spelled as podman/skopeo spell them. Every command's parser
sets ``verb`` (``"pull"``, ``"bound sync"``, ...), which :func:`tether.engine.cli.main.dispatch` turns into a call
of that verb's implementation. A command group given without its subcommand (``tether bound``) leaves ``verb``
``None`` and ``command_parser`` naming the group's parser, whose help is then printed.

This module imports argparse, pathlib and :mod:`tether.engine.arguments` only, so that ``--help``, a usage error
and the choice of a verb cost no engine, registry or store import.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tether import __version__
from tether.engine.arguments import DEFAULT_ROOT, add_common_options, add_pull_options, parse_bool

#: Every verb the parser sets, in the order it defines them.
VERBS = (
    "pull", "inspect", "images", "rmi", "check",
    "bound list", "bound sync", "bound status", "bound gc", "bound install",
    "mirror sync", "mirror prune",
)


def build_parser() -> argparse.ArgumentParser:
    """Build the full argument parser (every subcommand)."""
    parser = argparse.ArgumentParser(
        prog="tether",
        description="Pull the images a bootc host binds into containers-storage, fast and never half-done.",
    )
    parser.add_argument("--version", action="version", version=f"tether {__version__}")
    parser.set_defaults(verb=None, command_parser=parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_pull(subparsers)
    _add_inspect(subparsers)
    _add_images(subparsers)
    _add_bound(subparsers)
    _add_mirror(subparsers)
    return parser


# The type of add_subparsers()'s result is private to argparse (argparse._SubParsersAction); annotations are not
# evaluated at run time (from __future__ import annotations), so naming it costs nothing.


def _add_pull(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "pull",
        help="pull images into containers-storage, all at once",
        description="Pull every IMAGE (docker://, oci:DIR[:REF], oci-archive:FILE[:REF], or a registry "
                    "reference; short names resolved by registries.conf) into the store, concurrently, streamed "
                    "once. Exit status 1 if any image failed; the summary says which and why.",
    )
    add_common_options(parser)
    add_pull_options(parser)
    parser.add_argument("--pull", dest="pull_policy", choices=("always", "missing", "newer"), default="newer",
                        help="missing: nothing is requested for an image the store has by name; newer/always: "
                             "one manifest request, nothing more if the digest is the stored one (default: newer)")
    parser.add_argument("--quiet", "-q", action="store_true", help="print only the image ids")
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.set_defaults(verb="pull")


def _add_inspect(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="show an image's manifest, config and layers in a registry (as skopeo inspect does)",
        description="Print IMAGE's metadata as skopeo inspect does (same JSON keys), plus Endpoint: the "
                    "repository actually used (a mirror, or the primary). IMAGE is docker://NAME or a "
                    "registry reference (short names resolved through registries.conf), oci:DIR[:REF] or "
                    "oci-archive:FILE[:REF].",
    )
    add_common_options(parser, store=False)
    parser.add_argument("--raw", action="store_true",
                        help="print the manifest (with --config: the config) bytes exactly as served")
    parser.add_argument("--config", action="store_true", help="print the image's config")
    parser.add_argument("--no-tags", "-n", action="store_true", help="do not list the repository's tags")
    parser.add_argument("image", metavar="IMAGE")
    parser.set_defaults(verb="inspect")


def _add_images(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``images``, ``rmi`` and ``check``: the store as podman shows it."""
    images = subparsers.add_parser(
        "images",
        help="list the images in the store",
        description="List the images of the store (and of its additional image stores), newest first, as "
                    "`podman images` does; --format json prints podman's JSON keys (Id, Names, Digest, Size, "
                    "Created, ...).",
    )
    add_common_options(images)
    images.set_defaults(verb="images")

    rmi = subparsers.add_parser(
        "rmi",
        help="remove images and the layers no other image uses",
        description="Remove each IMAGE (name, id, short id or digest). Given by a name while the image has "
                    "other names, only that name is removed, as podman does. Exit status 1 if any failed.",
    )
    add_common_options(rmi)
    rmi.add_argument("images", nargs="+", metavar="IMAGE")
    rmi.set_defaults(verb="rmi")

    check = subparsers.add_parser(
        "check",
        help="verify the store: every layer reproduces its diff digest",
        description="Rebuild every layer's tar from its tar-split and files and compare it with the recorded "
                    "diff digest and size; check overlay links, image top layers and big data. Exit status 1 "
                    "when anything is wrong.",
    )
    add_common_options(check)
    check.set_defaults(verb="check")


def _add_bound(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``bound list|sync|status|gc|install``: logically bound images (see :mod:`tether.engine.cli.bound`)."""
    bound = subparsers.add_parser(
        "bound",
        help="logically bound images: list, sync, status, gc, install",
        description="The images a bootc host binds (usr/lib/bootc/bound-images.d), kept in the bootc store.",
    )
    sub = bound.add_subparsers(dest="bound_command", metavar="SUBCOMMAND")
    bound.set_defaults(verb=None, command_parser=bound)

    p = sub.add_parser("list", help="list the images a root binds (bootc image list --type logical)")
    p.add_argument(
        "--root",
        dest="deployment_root",
        type=Path,
        default=Path("/"),
        metavar="DIR",
        help="deployment root to read usr/lib/bootc/bound-images.d from (default: /)",
    )
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    p.set_defaults(verb="bound list")

    p = sub.add_parser(
        "sync",
        help="pull every bound image of each not-ready deployment, then mark it ready",
        description="Pull, concurrently, every bound image of each deployment that is not ready (the new one "
        "first); mark a deployment ready only when all its images are committed. Exit status 1 if "
        "any deployment is not ready afterwards; a rerun retries only what is missing.",
    )
    _deployment_options(p)
    _store_options(p)
    add_common_options(p, store=False)
    add_pull_options(p)
    p.add_argument("--no-gc", action="store_true", help="do not collect garbage after the sync")
    p.add_argument("--source", default=None, metavar="oci:DIR|oci-archive:FILE",
                   help="take every bound image from this OCI layout or archive instead of its registry")
    p.set_defaults(verb="bound sync")

    p = sub.add_parser("status", help="show each deployment, its bound images and whether it is ready")
    _deployment_options(p)
    _store_options(p)
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    p.add_argument(
        "--check",
        metavar="DEPLOYMENT",
        default=None,
        help="exit 0 only if DEPLOYMENT is ready (name, CSUM.SERIAL, checksum prefix, index, or "
        "staged/booted/pending/rollback/default/new)",
    )
    p.set_defaults(verb="bound status")

    p = sub.add_parser("gc", help="remove images no present deployment binds")
    _deployment_options(p)
    _store_options(p)
    p.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    p.set_defaults(verb="bound gc")

    p = sub.add_parser(
        "install",
        help="copy (or pull) the images a root binds into a new system's store",
        description="Put every image SRCROOT binds into the target store: from the host's store without the "
        "network (stored: all must be there, checked before the target is touched), pulled, or not.",
    )
    p.add_argument(
        "--root",
        dest="deployment_root",
        type=Path,
        required=True,
        metavar="SRCROOT",
        help="root of the system being installed (its usr/lib/bootc/bound-images.d)",
    )
    p.add_argument("--target-store", type=Path, required=True, metavar="DIR", help="the new system's bootc store")
    p.add_argument(
        "--source-store",
        type=Path,
        default=Path("/var/lib/containers/storage"),
        metavar="DIR",
        help="where the images are (default: /var/lib/containers/storage)",
    )
    p.add_argument(
        "--bound-images",
        choices=("stored", "pull", "skip"),
        default="stored",
        help="stored: copy from the source store (default); pull: from the registries; skip",
    )
    p.add_argument("--storage-driver", choices=("overlay", "vfs"), default=None, help="target store driver")
    p.add_argument(
        "--sysroot",
        type=Path,
        default=None,
        metavar="DIR",
        help="the installed system's ostree sysroot: record each of its deployments whose bound images were "
        "all installed as ready, as a sync would, so that it boots ready without one",
    )
    add_common_options(p, store=False)
    p.add_argument("--jobs", "-j", type=int, default=None, metavar="N", help="layers fetched at once (pull)")
    p.set_defaults(verb="bound install")


def _deployment_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("deployments")
    group.add_argument(
        "--sysroot",
        type=Path,
        default=None,
        metavar="DIR",
        help="ostree sysroot whose deployments to use (default: / on a booted ostree host)",
    )
    group.add_argument(
        "--root",
        dest="deployment_roots",
        type=Path,
        action="append",
        default=None,
        metavar="DIR",
        help="a plain deployment root (repeatable; the first is the new one). gc, also run after a sync, keeps "
        "only what the deployments given bind",
    )
    group.add_argument("--run-dir", type=Path, default=None, help=argparse.SUPPRESS)


def _store_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("store")
    group.add_argument(
        "--store",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"the bootc image store (default: SYSROOT/ostree/bootc/storage, else {DEFAULT_ROOT})",
    )
    group.add_argument("--runroot", type=Path, default=None, help="containers-storage run root")
    group.add_argument("--storage-driver", choices=("overlay", "vfs"), default=None, help="storage driver")


def _add_mirror(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``mirror sync`` and ``mirror prune`` (see :mod:`tether.engine.copy.mirror`)."""
    mirror = subparsers.add_parser(
        "mirror",
        help="copy images to a mirror (OCI layout, oci-archive, registry) for offline and air-gapped hosts",
        description="Copy images, or every image a bootc root binds, to a mirror, byte for byte.",
    )
    commands = mirror.add_subparsers(dest="mirror_command", metavar="COMMAND")
    mirror.set_defaults(verb=None, command_parser=mirror)

    sync = commands.add_parser(
        "sync",
        conflict_handler="resolve",
        help="copy images (or a root's bound images) to oci:DIR, oci-archive:FILE or docker://HOST[/NAMESPACE]",
        description=(
            "Copy IMAGEs (registry references, oci:DIR[:REF], oci-archive:FILE[:REF]), or the bound images of "
            "--root DIR or of every deployment of --sysroot DIR, to --to DEST: oci:DIR (one layout, entries named "
            "by full source reference, updated in place), oci-archive:FILE (written atomically), or "
            "docker://HOST[:PORT][/NAMESPACE] (NAMESPACE/<repository>:<tag> as skopeo sync names it; --scoped "
            "keeps the source host: NAMESPACE/<host>/<repository path>). Blobs and manifests keep their digests; "
            "blobs already there are skipped; an interrupted sync resumes."
        ),
    )
    add_common_options(sync, store=False)
    what = sync.add_mutually_exclusive_group()
    what.add_argument("--root", type=Path, default=None, metavar="DIR",
                      help="mirror the images bound by this root's usr/lib/bootc/bound-images.d")
    what.add_argument("--sysroot", type=Path, default=None, metavar="DIR",
                      help="mirror the images bound by every deployment of this ostree sysroot")
    sync.add_argument("--to", required=True, metavar="DEST",
                      help="oci:DIR, oci-archive:FILE or docker://HOST[:PORT][/NAMESPACE]")
    plat = sync.add_mutually_exclusive_group()
    plat.add_argument("--all-platforms", action="store_true",
                      help="keep multi-platform indexes whole (default: the chosen platforms only, in a new index)")
    plat.add_argument("--platform", action="append", default=None, metavar="OS/ARCH[/VARIANT]",
                      help="platforms to keep from multi-platform images (repeatable, or comma-separated; "
                           "default: the host's)")
    sync.add_argument("--scoped", action="store_true",
                      help="docker:// destinations: put the source registry host in front of the repository path")
    sync.add_argument("--registries-conf-out", type=Path, default=None, metavar="FILE",
                      help="write a registries.conf.d drop-in sending hosts to the mirror for exactly these images")
    sync.add_argument("--dest-tls-verify", type=parse_bool, nargs="?", const=True, default=None, metavar="BOOL",
                      help="TLS verification for the destination registry (default: as --tls-verify)")
    sync.add_argument("--remove-signatures", action="store_true",
                      help="docker:// destinations: do not copy signatures (sigstore attachments, lookaside files)")
    sync.add_argument("--progress", choices=("auto", "bar", "plain", "none"), default="auto",
                      help="progress display: live on a TTY (auto), plain lines, none")
    sync.add_argument("--jobs", "-j", type=int, default=None, metavar="N", help="blobs copied at once (default: 6)")
    sync.add_argument("images", nargs="*", metavar="IMAGE")
    sync.set_defaults(verb="mirror sync")

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
    prune.set_defaults(verb="mirror prune")
