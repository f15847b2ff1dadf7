"""``tether pull``: pull every image given, all at once, into containers-storage.

stdout carries the image ids (``--format json``: one JSON document), or, with ``--progress json``, bootc's
progress JSON lines and nothing else; messages, warnings and failures go to stderr. ``--dry-run`` prints the
plan instead (:func:`print_preview`, shared with ``bound sync``), ``--download-only`` what was downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from tether.engine.arguments import check_output_streams, check_pull_options, progress_on_stdout
from tether.engine.cli.prompt import prompt_short_names, record_selections
from tether.engine.copy.image import PullRequest
from tether.engine.copy.progress import ProgressMode, make_progress
from tether.engine.copy.pull import ImageResult, PullMode, pull
from tether.engine.errors import UsageError
from tether.engine.options import common_options_from_args
from tether.engine.storelock import hold_store
from tether.engine.writable import require_writable_store
from tether.registry.client import RateLimit, parse_rate
from tether.store.containers_storage import CRASH_ENV, DiskReserve, Store
from tether.store.diskspace import free_bytes, human_size


def disk_reserve_from_args(args: argparse.Namespace) -> DiskReserve:
    """``--disk-reserve`` as the store takes it (:class:`UsageError` for a bad spelling)."""
    try:
        return DiskReserve.parse(args.disk_reserve)
    except ValueError as exc:
        raise UsageError(f"--disk-reserve: {exc}") from None


def rate_limit_from_args(args: argparse.Namespace) -> RateLimit | None:
    """``--limit-rate`` as the registry client takes it (:class:`UsageError` for a bad spelling)."""
    if args.limit_rate is None:
        return None
    try:
        return RateLimit(parse_rate(args.limit_rate))
    except ValueError as exc:
        raise UsageError(f"--limit-rate: {exc}") from None


def pull_mode_from_args(args: argparse.Namespace) -> PullMode:
    """``--dry-run`` (preview) wins over ``--download-only`` (download); a plain pull otherwise."""
    return "preview" if args.dry_run else "download" if args.download_only else "pull"


def open_store_for(args: argparse.Namespace, root: Path, *, verb: str, runroot: Path | None,
                   driver: str | None) -> Store:
    """The store a pull-like verb works on: read-only, created by nothing, for ``--dry-run``; else writable
    (refused in one line when it is not) with ``--disk-reserve``."""
    reserve = disk_reserve_from_args(args)
    if args.dry_run:
        return Store.open(root, runroot=runroot, driver=driver, read_only=True, disk_reserve=reserve)
    require_writable_store(root, verb=verb)
    return Store.open(root, runroot=runroot, driver=driver,
                      crash_at=os.environ.get(CRASH_ENV),  # the kill -9 tests' hook (tests/test_gc.py)
                      disk_reserve=reserve)


def run_pull(args: argparse.Namespace) -> int:
    """Run ``tether pull``; returns the exit status."""
    check_pull_options(args)
    check_output_streams(args)
    if args.retry is not None and args.retry < 0:
        raise UsageError("--retry must be 0 or more")
    options = common_options_from_args(args)
    limit = rate_limit_from_args(args)
    pull_mode = pull_mode_from_args(args)
    selections = prompt_short_names(args.images, options)  # before the live display takes the terminal
    mode: ProgressMode = "none" if args.quiet or pull_mode == "preview" else args.progress
    quiet_stdout = progress_on_stdout(args) and not args.quiet
    store = open_store_for(args, options.root, verb="pull", runroot=options.runroot, driver=options.storage_driver)
    progress = make_progress(mode, progress_fd=args.progress_fd)
    requests = [PullRequest(name=s.name, retries=args.retry, retry_delay=args.retry_delay) for s in selections]
    # Shared: several pulls may add to the store at once, but a gc or bound sync (exclusive) never runs
    # while this one has reused a layer it has not yet committed an image on. A dry run writes nothing, the
    # lock file included.
    with contextlib.nullcontext() if pull_mode == "preview" else hold_store(store.root, shared=True):
        report = trio.run(lambda: pull(requests, store=store, options=options, jobs=args.jobs,
                                       policy=args.pull_policy, progress=progress, mode=pull_mode,
                                       rate_limit=limit))
    for r in report.results:
        if r.warning:
            print(f"tether: warning: {r.request.name}: {r.warning}", file=sys.stderr)
    if pull_mode == "preview":
        return print_preview(report.results, store, json_format=options.format == "json",
                             download_only=args.download_only)
    if pull_mode == "download":
        return print_downloads(report.results, json_format=options.format == "json", quiet=quiet_stdout)
    # A choice at the prompt is remembered once its image is pulled (not by a dry run, which writes nothing,
    # nor by a download, which pulls nothing yet).
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


def print_downloads(results: Sequence[ImageResult], *, json_format: bool, quiet: bool) -> int:
    """What ``--download-only`` did, per image; exit status 1 when any failed."""
    if json_format:
        print(json.dumps([{"name": r.request.name, "reference": r.reference, "id": r.image_id,
                           "digest": r.manifest_digest, "error": r.error, "downloaded": r.downloaded,
                           "present": r.ok and not r.downloaded} for r in results], indent=2))
    elif not quiet:
        for r in results:
            if r.ok:
                state = "downloaded" if r.downloaded else "present in the store"
                print(f"{r.request.name}: {state} ({(r.image_id or '')[:12]})")
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"tether: {r.request.name}: {r.error}", file=sys.stderr)
    return 1 if failed else 0


def print_preview(results: Sequence[ImageResult], store: Store, *, json_format: bool, download_only: bool) -> int:
    """``--dry-run``'s report: per image what is present and what would be fetched, the totals, and whether the
    store's filesystem holds them above its disk reserve. Exit status 1 when an image cannot be pulled or the
    estimate does not fit."""
    root = Path(store.root)
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = free_bytes(probe)
    reserve = store.disk_reserve.bytes_for(probe) if store.disk_reserve.enabled else 0
    download = sum(r.preview.download for r in results if r.preview is not None)
    disk = sum(r.preview.disk_estimate for r in results if r.preview is not None)
    fits = free - reserve >= disk
    if json_format:
        images: list[dict[str, Any]] = []
        for r in results:
            item: dict[str, Any] = {"name": r.request.name, "reference": r.reference, "id": r.image_id,
                                    "digest": r.manifest_digest, "error": r.error, "warning": r.warning,
                                    "present": r.ok and (r.preview is None or r.preview.present)}
            item.update(r.preview.to_json() if r.preview is not None else {"layers": [], "download": 0,
                                                                           "diskEstimate": 0})
            images.append(item)
        print(json.dumps({"images": images, "download": download, "diskEstimate": disk, "downloadOnly": download_only,
                          "filesystem": {"path": str(root), "free": free, "reserve": reserve}, "fits": fits},
                         indent=2))
    else:
        for r in results:
            if not r.ok:
                continue
            if r.preview is None or r.preview.present:
                print(f"{r.request.name}: present")
                continue
            layers = r.preview.layers
            fetch = [layer for layer in layers if layer.action == "fetch"]
            held = sum(layer.held for layer in fetch)
            others = len(layers) - len(fetch)
            line = f"{r.request.name}: {len(fetch)} layer(s) to fetch, {human_size(r.preview.download)}"
            if held:
                line += f" ({human_size(held)} already downloaded)"
            if others:
                line += f", {others} from the store or another image"
            print(f"{line}; disk ~{human_size(r.preview.disk_estimate)}")
        print(f"total: download {human_size(download)}, disk ~{human_size(disk)}; {root}'s filesystem has "
              f"{human_size(free)} free and keeps {human_size(reserve)}: {'fits' if fits else 'DOES NOT FIT'}")
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"tether: {r.request.name}: {r.error}", file=sys.stderr)
    if not fits:
        print(f"tether: the estimate ({human_size(disk)}) does not fit on {root}'s filesystem: {human_size(free)} "
              f"free, {human_size(reserve)} of it the disk reserve", file=sys.stderr)
    return 1 if failed or not fits else 0
