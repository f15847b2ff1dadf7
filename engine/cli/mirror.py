"""``tether mirror sync`` and ``tether mirror prune`` (see :mod:`tether.engine.copy.mirror`)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import trio

from tether.engine.bound.deployments import list_sysroot_deployments
from tether.engine.bound.discovery import BoundImage, discover_bound_images, pull_requests_for
from tether.engine.copy.image import PullRequest
from tether.engine.copy.mirror import DEFAULT_JOBS, platforms_from_text, prune, sync
from tether.engine.copy.progress import make_progress
from tether.engine.errors import UsageError
from tether.engine.options import common_options_from_args


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
    if args.deployment_root is not None:
        return _requests_from_bound(discover_bound_images(args.deployment_root), root=args.deployment_root)

    found: list[PullRequest] = []
    for deployment in list_sysroot_deployments(args.sysroot):
        for req in _requests_from_bound(discover_bound_images(deployment.root), root=deployment.root):
            if req not in found:
                found.append(req)
    return found


def run_mirror_sync(args: argparse.Namespace) -> int:
    """Run ``tether mirror sync``; exit status 1 if any image failed or the result did not verify."""
    platforms = platforms_from_text(args.platform or ())
    common_args = argparse.Namespace(**{**vars(args), "platform": None, "root": None})
    options = common_options_from_args(common_args)
    if (args.deployment_root is not None or args.sysroot is not None) and args.images:
        raise UsageError("mirror sync: give IMAGEs or --deployment-root/--sysroot, not both")
    requests: list[PullRequest]
    if args.deployment_root is not None or args.sysroot is not None:
        requests = _bound_requests(args)
        if not requests:
            print("tether: no bound images found; nothing to mirror", file=sys.stderr)
            return 0
    else:
        if not args.images:
            raise UsageError("mirror sync: give IMAGEs, --deployment-root DIR or --sysroot DIR")
        requests = [PullRequest(name=name) for name in args.images]
    if args.jobs is not None and args.jobs < 1:
        raise UsageError("--jobs must be at least 1")

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


def run_mirror_prune(args: argparse.Namespace) -> int:
    """Run ``tether mirror prune``."""
    result = prune(args.target, remove=args.remove)
    if args.format == "json":
        print(json.dumps({"removed": list(result.removed), "freedBytes": result.freed_bytes,
                          "partialsRemoved": result.partials_removed}, indent=2))
    else:
        print(f"removed {len(result.removed)} blobs ({result.freed_bytes} bytes)"
              + (f" and {result.partials_removed} partial files" if result.partials_removed else ""))
    return 0
