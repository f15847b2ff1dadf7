"""``tether bound sync``, ``tether bound install`` and ``tether bound lock``: the ``bound`` subcommands that run
the copy engine (or, ``lock``, its registry sources).

Apart from :mod:`tether.engine.cli.bound` because they import trio, httpx and the copy engine, which
``bound status`` and ``bound gc`` do not need; the deployment and store arguments are read as there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import trio

from tether.engine.arguments import check_output_streams, check_pull_options, progress_on_stdout
from tether.engine.bound.deployments import list_sysroot_deployments
from tether.engine.bound.install import install_pulled, install_stored, record_installed
from tether.engine.bound.lock import lock_deployments
from tether.engine.bound.lockfile import LockFile, load_lock, write_lock
from tether.engine.bound.sync import sync_deployments
from tether.engine.cli.bound import bound_store_root, deployments_from_args
from tether.engine.cli.pull import (
    open_store_for,
    print_downloads,
    print_preview,
    pull_mode_from_args,
    rate_limit_from_args,
)
from tether.engine.copy.progress import make_progress
from tether.engine.errors import UsageError
from tether.engine.options import CommonOptions, common_options_from_args
from tether.engine.writable import require_writable_store
from tether.store.containers_storage import CRASH_ENV


def _options(args: argparse.Namespace) -> CommonOptions:
    """The common options, with the bootc store as root, bootc's auth-file lookup (the ostree pull secret, not
    podman's files) and ``--sysroot`` (when given) for it."""
    changes: dict[str, Any] = {"root": bound_store_root(args), "auth_lookup": "bootc"}
    sysroot: Path | None = getattr(args, "sysroot", None)
    if sysroot is not None:
        changes["sysroot"] = sysroot
    return dataclasses.replace(common_options_from_args(args), **changes)


# --------------------------------------------------------------------------- sync


def run_bound_sync(args: argparse.Namespace) -> int:
    """``tether bound sync``."""
    check_pull_options(args)
    check_output_streams(args)
    options = _options(args)
    limit = rate_limit_from_args(args)
    mode = pull_mode_from_args(args)
    lock: LockFile | None = load_lock(args.lock) if args.lock is not None else None
    if lock is not None and args.source is not None:
        raise UsageError("--lock pins registry digests; --source takes the images from a layout: give one of them")
    deployments = deployments_from_args(args)
    crash_at = os.environ.get(CRASH_ENV)  # the kill -9 tests' hook (tests/test_reconcile_kill.py)
    store = open_store_for(args, options.root, verb="bound sync", runroot=options.runroot,
                           driver=options.storage_driver)
    progress = make_progress("none" if mode == "preview" else args.progress, progress_fd=args.progress_fd)
    # With the progress JSON lines on stdout, stdout carries nothing else: the readiness lines are left out
    # (a deployment's readiness is the exit status and `bound status`), failures still go to stderr.
    quiet_stdout = progress_on_stdout(args)
    report = trio.run(
        lambda: sync_deployments(
            deployments, store=store, options=options, jobs=args.jobs, progress=progress, gc=not args.no_gc,
            source=args.source, crash_at=crash_at, mode=mode, rate_limit=limit, lock=lock,
        )
    )
    if mode == "preview":
        code = print_preview(report.pulled, store, json_format=options.format == "json",
                             download_only=args.download_only)
        return _report_unlocked(report.failures, lock) or code
    if mode == "download":
        code = print_downloads(report.pulled, json_format=options.format == "json", quiet=quiet_stdout)
        return _report_unlocked(report.failures, lock) or code
    if options.format == "json":
        out = {
            "deployments": [s.to_json() for s in report.statuses],
            "failures": [dataclasses.asdict(f) for f in report.failures],
            "removed": list(report.gc_removed),
        }
        print(json.dumps(out, indent=2))
    elif not quiet_stdout:
        for s in report.statuses:
            print(f"{s.deployment.name}: {'ready' if s.ready else 'NOT READY'}")
        if report.gc_removed:
            print(f"removed {len(report.gc_removed)} unbound image(s)")
    if report.gc_error:
        print(f"tether: garbage collection skipped: {report.gc_error}", file=sys.stderr)
    if not report.ok:
        not_ready = [s.deployment.name for s in report.statuses if not s.ready]
        print(f"tether: {len(not_ready)} deployment(s) not ready: {', '.join(not_ready)}", file=sys.stderr)
        summary = report.summary()
        if summary:
            print("  " + summary.replace("\n", "\n  "), file=sys.stderr)
        return 1
    return 0


def _report_unlocked(failures: Any, lock: LockFile | None) -> int:
    """Bindings a ``--lock`` file does not pin, on stderr (1 when any; the images' own failures are printed
    with the results)."""
    missing = [f for f in failures if lock is not None and f.error.startswith("not in the lock file")]
    for f in missing:
        print(f"tether: {f.deployment}: {f.image}: {f.error}", file=sys.stderr)
    return 1 if missing else 0


# --------------------------------------------------------------------------- lock


def run_bound_lock(args: argparse.Namespace) -> int:
    """``tether bound lock``: the lock file on stdout, or written to ``--output``."""
    options = dataclasses.replace(common_options_from_args(args), auth_lookup="bootc")
    sysroot: Path | None = getattr(args, "sysroot", None)
    if sysroot is not None:
        options = dataclasses.replace(options, sysroot=sysroot)
    deployments = deployments_from_args(args)
    entries = trio.run(lambda: lock_deployments(deployments, options=options))
    if args.output is None:
        sys.stdout.write(LockFile(entries).dumps())
    else:
        write_lock(args.output, entries)
        print(f"{args.output}: {len(entries)} image(s) pinned", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- install


def run_bound_install(args: argparse.Namespace) -> int:
    """``tether bound install``."""
    if args.bound_images == "skip":
        print("bound images skipped")
        return 0
    if args.deployment_root is None or args.root is None:
        raise UsageError("bound install needs --deployment-root SRCROOT and --root DIR (the new system's store)")
    target_store: Path = args.root
    target_driver: str | None = getattr(args, "storage_driver", None)
    if args.sysroot is not None:
        list_sysroot_deployments(args.sysroot)  # a wrong --sysroot fails before anything is copied
    require_writable_store(target_store, verb="bound install")
    if args.bound_images == "stored":
        report = trio.run(
            lambda: install_stored(
                args.deployment_root,
                source_store=args.source_store,
                target_store=target_store,
                target_driver=target_driver,
                jobs=args.jobs,
            )
        )
    else:
        options = dataclasses.replace(_options(args), root=target_store)
        report = trio.run(
            lambda: install_pulled(
                args.deployment_root,
                target_store=target_store,
                options=options,
                target_driver=target_driver,
                jobs=args.jobs,
                progress=make_progress("auto", progress_fd=None),
            )
        )
    for image in report.images:
        if image.error:
            print(f"tether: {image.image}: {image.error}", file=sys.stderr)
        else:
            print(f"{image.image} {image.id}")
    if not report.ok:
        return 1
    if args.sysroot is not None and report.images:
        records = record_installed(report, sysroot=args.sysroot, target_store=target_store,
                                   target_driver=target_driver)
        for name in records.ready:
            print(f"{name}: ready")
        for name, why in records.skipped:
            print(f"tether: {name}: not recorded ready: {why}", file=sys.stderr)
    return 0
