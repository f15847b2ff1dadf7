"""``tether bound list|sync|status|gc|install``: logically bound images, done by tether.

Deployments come from an ostree sysroot (``--sysroot DIR``; the live ``/`` when ``/run/ostree-booted``
exists and nothing else is given) or from plain deployment roots (``--root DIR``, repeatable, the first is
the new one). The store is bootc's (``--store``; default ``SYSROOT/ostree/bootc/storage`` for a
``--sysroot`` other than ``/``, else ``/usr/lib/bootc/storage``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from tether.engine.errors import UsageError
from tether.engine.options import (
    DEFAULT_ROOT,
    CommonOptions,
    add_common_options,
    add_pull_options,
    check_pull_options,
    common_options_from_args,
)

BOOTC_STORE_IN_SYSROOT = Path("ostree/bootc/storage")


def register(subparsers: Any) -> None:
    """Add ``bound`` and its subcommands to the CLI."""
    bound = subparsers.add_parser(
        "bound",
        help="logically bound images: list, sync, status, gc, install",
        description="The images a bootc host binds (usr/lib/bootc/bound-images.d), kept in the bootc store.",
    )
    sub = bound.add_subparsers(dest="bound_command", metavar="SUBCOMMAND")
    bound.set_defaults(func=lambda args: _help(bound))

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
    p.set_defaults(func=run_list)

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
    p.set_defaults(func=run_sync)

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
    p.set_defaults(func=run_status)

    p = sub.add_parser("gc", help="remove images no present deployment binds")
    _deployment_options(p)
    _store_options(p)
    p.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    p.set_defaults(func=run_gc)

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
    p.set_defaults(func=run_install)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


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


def _options(args: argparse.Namespace) -> CommonOptions:
    options = common_options_from_args(args)
    store = getattr(args, "store", None)
    if store is None:
        sysroot = getattr(args, "sysroot", None)
        store = DEFAULT_ROOT
        if sysroot is not None and not _is_root(sysroot):
            store = Path(sysroot) / BOOTC_STORE_IN_SYSROOT
    changes: dict[str, Any] = {"root": store}
    sysroot = getattr(args, "sysroot", None)
    if sysroot is not None:
        changes["sysroot"] = sysroot
    return dataclasses.replace(options, **changes)


def _is_root(path: Path) -> bool:
    try:
        return os.path.samefile(path, "/")
    except OSError:
        return False


def _deployments(args: argparse.Namespace) -> tuple[Any, ...]:
    from tether.engine.bound.deployments import list_sysroot_deployments, root_deployments

    roots = getattr(args, "deployment_roots", None)
    sysroot = getattr(args, "sysroot", None)
    if roots and sysroot is not None:
        raise UsageError("use either --sysroot or --root, not both")
    if roots:
        return root_deployments(roots)
    if sysroot is None:
        if not Path("/run/ostree-booted").exists():
            raise UsageError("not a booted ostree host: pass --sysroot DIR or --root DIR")
        sysroot = Path("/")
    return list_sysroot_deployments(sysroot, run_dir=getattr(args, "run_dir", None))


def _open_store(options: CommonOptions) -> Any:
    from tether.store.containers_storage import Store

    return Store.open(options.root, runroot=options.runroot, driver=options.storage_driver)


# --------------------------------------------------------------------------- list


def run_list(args: argparse.Namespace) -> int:
    """``tether bound list``."""
    from tether.engine.bound.discovery import discover_bound_images

    images = discover_bound_images(args.deployment_root)
    if args.format == "json":
        print(json.dumps([i.to_json() for i in images], indent=2))
        return 0
    rows: list[tuple[str, ...]] = [("IMAGE", "SOURCE")]
    rows.extend((i.image, i.source_file) for i in images)
    _print_table(rows)
    return 0


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


# --------------------------------------------------------------------------- status


def run_status(args: argparse.Namespace) -> int:
    """``tether bound status``."""
    from tether.engine.bound.deployments import find_deployment
    from tether.engine.bound.records import compute_status

    options = _options(args)
    deployments = _deployments(args)
    wanted = find_deployment(deployments, args.check) if args.check else None
    if not options.root.exists():
        statuses = compute_status(deployments, _EmptyStore(options.root))  # type: ignore[arg-type]
    else:
        statuses = compute_status(deployments, _open_store(options))
    if args.format == "json":
        print(json.dumps([s.to_json() for s in statuses], indent=2))
    elif wanted is None:
        _print_statuses(statuses)
    if wanted is not None:
        status = next(s for s in statuses if s.deployment.name == wanted.name)
        if args.format != "json":
            print(f"{wanted.name}: {'ready' if status.ready else 'not ready'}")
        return 0 if status.ready else 1
    return 0


class _EmptyStore:
    """Stands in for a store that does not exist yet (status must not create it)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def list_images(self) -> list[Any]:
        return []


def _print_statuses(statuses: Any) -> None:
    for s in statuses:
        flags = [s.deployment.role]
        if s.deployment.pinned:
            flags.append("pinned")
        state = "ready" if s.ready else "NOT READY"
        print(f"{s.deployment.name} ({', '.join(flags)}): {state}")
        print(f"  root: {s.deployment.root}")
        if s.error:
            print(f"  error: {s.error}")
        for i in s.images:
            present = "present" if i.present else "missing"
            ident = (i.id or "-")[:12]
            print(f"  {i.image}  {ident}  {i.digest or '-'}  {present}" + (f"  ({i.error})" if i.error else ""))


# --------------------------------------------------------------------------- sync


def run_sync(args: argparse.Namespace) -> int:
    """``tether bound sync``."""
    import trio

    from tether.engine.bound.sync import sync_deployments
    from tether.engine.copy.progress import make_progress

    options = _options(args)
    check_pull_options(args)
    deployments = _deployments(args)
    store = _open_store(options)
    progress = make_progress(args.progress, progress_fd=args.progress_fd)
    report = trio.run(
        lambda: sync_deployments(
            deployments, store=store, options=options, jobs=args.jobs, progress=progress, gc=not args.no_gc,
            source=args.source,
        )
    )
    if options.format == "json":
        out = {
            "deployments": [s.to_json() for s in report.statuses],
            "failures": [dataclasses.asdict(f) for f in report.failures],
            "removed": list(report.gc_removed),
        }
        print(json.dumps(out, indent=2))
    else:
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


# --------------------------------------------------------------------------- gc


def run_gc(args: argparse.Namespace) -> int:
    """``tether bound gc``."""
    from tether.engine.bound.gc import collect_garbage

    options = _options(args)
    deployments = _deployments(args)
    store = _open_store(options)
    result = collect_garbage(deployments, store, dry_run=args.dry_run)
    plan = result.plan
    if args.format == "json":
        print(
            json.dumps(
                {
                    "dry_run": result.dry_run,
                    "keep": [{"id": i.id, "names": list(i.names), "bound_by": list(why)} for i, why in plan.keep],
                    "remove": [{"id": i.id, "names": list(i.names)} for i in plan.remove],
                    "layers": list(result.removed_layer_ids if not result.dry_run else plan.layers),
                    "stale_records": [str(p) for p in plan.stale_records],
                    "orphan_layers": list(plan.orphans),
                },
                indent=2,
            )
        )
        return 0
    verb = "would remove" if result.dry_run else "removed"
    for image in plan.remove:
        print(f"{verb} {image.id[:12]} {' '.join(image.names) or '<none>'}")
    layers = plan.layers if result.dry_run else result.removed_layer_ids
    print(f"{verb} {len(plan.remove)} image(s), {len(layers)} layer(s); kept {len(plan.keep)} image(s)")
    return 0


# --------------------------------------------------------------------------- install


def run_install(args: argparse.Namespace) -> int:
    """``tether bound install``."""
    import trio

    from tether.engine.bound.install import install_pulled, install_stored, record_installed
    from tether.engine.copy.progress import make_progress

    if args.bound_images == "skip":
        print("bound images skipped")
        return 0
    if args.sysroot is not None:
        from tether.engine.bound.deployments import list_sysroot_deployments

        list_sysroot_deployments(args.sysroot)  # a wrong --sysroot fails before anything is copied
    if args.bound_images == "stored":
        report = trio.run(
            lambda: install_stored(
                args.deployment_root,
                source_store=args.source_store,
                target_store=args.target_store,
                target_driver=args.storage_driver,
                jobs=args.jobs,
            )
        )
    else:
        options = dataclasses.replace(_options(args), root=args.target_store)
        report = trio.run(
            lambda: install_pulled(
                args.deployment_root,
                target_store=args.target_store,
                options=options,
                target_driver=args.storage_driver,
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
        records = record_installed(report, sysroot=args.sysroot, target_store=args.target_store,
                                   target_driver=args.storage_driver)
        for name in records.ready:
            print(f"{name}: ready")
        for name, why in records.skipped:
            print(f"tether: {name}: not recorded ready: {why}", file=sys.stderr)
    return 0
