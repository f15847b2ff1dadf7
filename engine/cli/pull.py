"""``tether pull``: pull every image given, all at once, into containers-storage."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from tether.engine.options import add_common_options, add_pull_options, check_pull_options, common_options_from_args


def register(subparsers: Any) -> None:
    """Add ``pull`` to the CLI."""
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
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``tether pull``; returns the exit status."""
    from tether.engine.cli.main import skip_httpx_cli

    skip_httpx_cli()  # tether.engine.cli.main.main did it already; kept for callers of run() that bypass it
    import trio

    from tether.engine.copy.progress import ProgressMode, make_progress
    from tether.engine.copy.pull import PullRequest, pull
    from tether.engine.storelock import hold_store
    from tether.store.containers_storage import CRASH_ENV, Store

    options = common_options_from_args(args)
    check_pull_options(args)
    mode: ProgressMode = "none" if args.quiet else args.progress
    progress = make_progress(mode, progress_fd=args.progress_fd)
    store = Store.open(options.root, runroot=options.runroot, driver=options.storage_driver,
                       crash_at=os.environ.get(CRASH_ENV))  # the kill -9 tests' hook (tests/test_gc.py)
    requests = [PullRequest(name=name) for name in args.images]
    # Shared: several pulls may add to the store at once, but a gc or bound sync (exclusive) never runs
    # while this one has reused a layer it has not yet committed an image on.
    with hold_store(store.root, shared=True):
        report = trio.run(lambda: pull(requests, store=store, options=options, jobs=args.jobs,
                                       policy=args.pull_policy, progress=progress))
    if options.format == "json":
        out = [
            {"name": r.request.name, "reference": r.reference, "id": r.image_id, "digest": r.manifest_digest,
             "error": r.error, "layersPulled": r.layers_pulled, "layersReused": r.layers_reused}
            for r in report.results
        ]
        print(json.dumps(out, indent=2))
    else:
        for r in report.results:
            if r.ok and r.image_id:
                print(r.image_id)
    if not report.ok:
        failed = report.failed
        print(f"tether: {len(failed)} of {len(report.results)} images failed:", file=sys.stderr)
        for r in failed:
            print(f"  {r.request.name}: {r.error}", file=sys.stderr)
        return 1
    return 0
