"""``tether pull``: pull every image given, all at once, into containers-storage.

stdout carries the image ids (``--format json``: one JSON document), or, with ``--progress json``, bootc's
progress JSON lines and nothing else; messages, warnings and failures go to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import trio

from tether.engine.arguments import check_output_streams, check_pull_options, progress_on_stdout
from tether.engine.cli.prompt import prompt_short_names, record_selections
from tether.engine.copy.image import PullRequest
from tether.engine.copy.progress import ProgressMode, make_progress
from tether.engine.copy.pull import pull
from tether.engine.errors import UsageError
from tether.engine.options import common_options_from_args
from tether.engine.storelock import hold_store
from tether.engine.writable import require_writable_store
from tether.store.containers_storage import CRASH_ENV, DiskReserve, Store


def disk_reserve_from_args(args: argparse.Namespace) -> DiskReserve:
    """``--disk-reserve`` as the store takes it (:class:`UsageError` for a bad spelling)."""
    try:
        return DiskReserve.parse(args.disk_reserve)
    except ValueError as exc:
        raise UsageError(f"--disk-reserve: {exc}") from None


def run_pull(args: argparse.Namespace) -> int:
    """Run ``tether pull``; returns the exit status."""
    check_pull_options(args)
    check_output_streams(args)
    if args.retry is not None and args.retry < 0:
        raise UsageError("--retry must be 0 or more")
    options = common_options_from_args(args)
    selections = prompt_short_names(args.images, options)  # before the live display takes the terminal
    mode: ProgressMode = "none" if args.quiet else args.progress
    quiet_stdout = progress_on_stdout(args) and not args.quiet
    require_writable_store(options.root, verb="pull")
    progress = make_progress(mode, progress_fd=args.progress_fd)
    store = Store.open(options.root, runroot=options.runroot, driver=options.storage_driver,
                       crash_at=os.environ.get(CRASH_ENV),  # the kill -9 tests' hook (tests/test_gc.py)
                       disk_reserve=disk_reserve_from_args(args))
    requests = [PullRequest(name=s.name, retries=args.retry, retry_delay=args.retry_delay) for s in selections]
    # Shared: several pulls may add to the store at once, but a gc or bound sync (exclusive) never runs
    # while this one has reused a layer it has not yet committed an image on.
    with hold_store(store.root, shared=True):
        report = trio.run(lambda: pull(requests, store=store, options=options, jobs=args.jobs,
                                       policy=args.pull_policy, progress=progress))
    for r in report.results:
        if r.warning:
            print(f"tether: warning: {r.request.name}: {r.warning}", file=sys.stderr)
    for warning in record_selections(selections, {r.request.name for r in report.results if r.ok}, options):
        print(f"tether: warning: {warning}", file=sys.stderr)
    if options.format == "json":
        out = [
            {"name": r.request.name, "reference": r.reference, "id": r.image_id, "digest": r.manifest_digest,
             "error": r.error, "layersPulled": r.layers_pulled, "layersReused": r.layers_reused,
             "warning": r.warning}
            for r in report.results
        ]
        print(json.dumps(out, indent=2))
    elif not quiet_stdout:
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
