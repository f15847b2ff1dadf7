"""``tether mirror sync`` and ``tether mirror prune`` (see :mod:`tether.engine.copy.mirror`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tether.engine.bound.deployments import list_sysroot_deployments
from tether.engine.bound.discovery import BoundImage, discover_bound_images, pull_requests_for
from tether.engine.copy.image import PullRequest
from tether.engine.errors import UsageError
from tether.engine.options import add_common_options, common_options_from_args, parse_bool


def register(subparsers: Any) -> None:
    """Add ``mirror sync`` and ``mirror prune`` to the CLI."""
    mirror = subparsers.add_parser(
        "mirror",
        help="copy images to a mirror (OCI layout, oci-archive, registry) for offline and air-gapped hosts",
        description="Copy images, or every image a bootc root binds, to a mirror, byte for byte.",
    )
    commands = mirror.add_subparsers(dest="mirror_command", metavar="COMMAND")
    mirror.set_defaults(func=lambda args: _help(mirror))

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
    sync.set_defaults(func=run_sync)

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
    prune.set_defaults(func=run_prune)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _requests_from_bound(images: Iterable[BoundImage], *, root: Path) -> list[PullRequest]:
    """:class:`tether.engine.bound.discovery.BoundImage` values of one deployment ``root`` -> requests, with the unit's
    ``Arch=``/``OS=``/``Variant=``, ``TLSVerify=``, ``AuthFile=``, ``CertDir=`` (files looked up inside
    ``root`` first, as :func:`tether.engine.bound.discovery.pull_request_for` does for a pull)."""
    out: list[PullRequest] = []
    for pr in pull_requests_for(tuple(images), root=root):
        req = PullRequest(name=pr.name, platform=pr.platform, tls_verify=pr.tls_verify, authfile=pr.authfile,
                          cert_dir=pr.cert_dir)
        if req not in out:
            out.append(req)
    return out


def _bound_requests(args: argparse.Namespace) -> list[PullRequest]:
    if args.root is not None:
        return _requests_from_bound(discover_bound_images(args.root), root=args.root)

    found: list[PullRequest] = []
    for deployment in list_sysroot_deployments(args.sysroot):
        for req in _requests_from_bound(discover_bound_images(deployment.root), root=deployment.root):
            if req not in found:
                found.append(req)
    return found


def run_sync(args: argparse.Namespace) -> int:
    """Run ``tether mirror sync``; exit status 1 if any image failed or the result did not verify."""
    import trio

    from tether.engine.copy.mirror import DEFAULT_JOBS, platforms_from_text, sync

    platforms = platforms_from_text(args.platform or ())
    common_args = argparse.Namespace(**{**vars(args), "platform": None, "root": None})
    options = common_options_from_args(common_args)
    if (args.root is not None or args.sysroot is not None) and args.images:
        raise UsageError("mirror sync: give IMAGEs or --root/--sysroot, not both")
    requests: list[PullRequest]
    if args.root is not None or args.sysroot is not None:
        requests = _bound_requests(args)
        if not requests:
            print("tether: no bound images found; nothing to mirror", file=sys.stderr)
            return 0
    else:
        if not args.images:
            raise UsageError("mirror sync: give IMAGEs, --root DIR or --sysroot DIR")
        requests = [PullRequest(name=name) for name in args.images]
    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs must be at least 1")

    from tether.engine.copy.progress import make_progress

    progress = make_progress("none" if args.format == "json" else args.progress)

    async def main() -> Any:
        return await sync(
            requests,
            to=args.to,
            options=options,
            all_platforms=args.all_platforms,
            platforms=platforms,
            scoped=args.scoped,
            jobs=args.jobs or DEFAULT_JOBS,
            dest_tls_verify=args.dest_tls_verify,
            registries_conf_out=args.registries_conf_out,
            remove_signatures=args.remove_signatures,
            progress=progress,
        )

    report = trio.run(main)
    if args.format == "json":
        print(json.dumps({
            "destination": report.destination,
            "ok": report.ok,
            "images": [vars(r) | {"platforms": list(r.platforms)} for r in report.images],
            "problems": list(report.problems),
            "registriesConf": str(report.registries_conf) if report.registries_conf else None,
        }, indent=2))
    else:
        print(report.summary(), file=sys.stderr)
        if report.registries_conf is not None:
            print(f"wrote {report.registries_conf}", file=sys.stderr)
    return 0 if report.ok else 1


def run_prune(args: argparse.Namespace) -> int:
    """Run ``tether mirror prune``."""
    from tether.engine.copy.mirror import prune

    result = prune(args.target, remove=args.remove)
    if args.format == "json":
        print(json.dumps({"removed": list(result.removed), "freedBytes": result.freed_bytes,
                          "partialsRemoved": result.partials_removed}, indent=2))
    else:
        print(f"removed {len(result.removed)} blobs ({result.freed_bytes} bytes)"
              + (f" and {result.partials_removed} partial files" if result.partials_removed else ""))
    return 0
