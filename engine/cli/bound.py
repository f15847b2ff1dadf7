"""``tether bound status|gc``: logically bound images, done by tether.

Deployments come from an ostree sysroot (``--sysroot DIR``; the live ``/`` when ``/run/ostree-booted``
exists and nothing else is given) or from plain deployment roots (``--deployment-root DIR``, repeatable, the
first is the new one). The store is bootc's (``--root``, as for every command; default
``SYSROOT/ostree/bootc/storage`` for a ``--sysroot`` other than ``/``, else ``/usr/lib/bootc/storage``).
``status`` reads a store and never creates one; ``gc`` (and ``sync``) refuse a read-only store in one line,
after the remount a bootc host needs (:func:`tether.engine.writable.require_writable_store`).

The ``bound`` subcommands are three modules by what they import, so that none loads what it does not use:
``bound list`` reads bound-images.d only (:mod:`tether.engine.cli.bound_list`, no store: ~40 ms less);
``bound status`` (the gate before a reboot) and ``bound gc`` open the store and read the readiness records
(here); ``bound sync`` and ``bound install`` run the copy engine (:mod:`tether.engine.cli.bound_copy`: trio,
httpx, ~350 ms of imports). The deployment and store arguments of the last four are read here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from tether.engine.arguments import DEFAULT_ROOT
from tether.engine.bound.deployments import Deployment, find_deployment, list_sysroot_deployments, root_deployments
from tether.engine.bound.gc import collect_garbage
from tether.engine.bound.lockfile import differences, load_lock
from tether.engine.bound.records import DeploymentStatus, compute_status
from tether.engine.errors import UsageError
from tether.engine.writable import OSTREE_BOOTED, require_writable_store
from tether.store.containers_storage import Store, detect_driver
from tether.store.diskspace import human_size

BOOTC_STORE_IN_SYSROOT = Path("ostree/bootc/storage")


def bound_store_root(args: argparse.Namespace) -> Path:
    """The bootc store: ``--root``, else ``SYSROOT/ostree/bootc/storage`` for a ``--sysroot`` other than ``/``,
    else ``/usr/lib/bootc/storage``."""
    store: Path | None = getattr(args, "root", None)
    if store is not None:
        return store
    sysroot = getattr(args, "sysroot", None)
    if sysroot is not None and not _is_root(sysroot):
        return Path(sysroot) / BOOTC_STORE_IN_SYSROOT
    return DEFAULT_ROOT


def _is_root(path: Path) -> bool:
    try:
        return os.path.samefile(path, "/")
    except OSError:
        return False


def open_bound_store(args: argparse.Namespace) -> Store:
    """The store :func:`bound_store_root` names, with ``--runroot`` and ``--storage-driver``."""
    return Store.open(bound_store_root(args), runroot=getattr(args, "runroot", None),
                      driver=getattr(args, "storage_driver", None))


def deployments_from_args(args: argparse.Namespace) -> tuple[Deployment, ...]:
    """The deployments ``--deployment-root`` (repeatable) or ``--sysroot`` name; without either, those of the
    booted host."""
    roots = getattr(args, "deployment_roots", None)
    sysroot = getattr(args, "sysroot", None)
    if roots and sysroot is not None:
        raise UsageError("use either --sysroot or --deployment-root, not both")
    if roots:
        return root_deployments(roots)
    if sysroot is None:
        if not OSTREE_BOOTED.exists():
            raise UsageError("not a booted ostree host: pass --sysroot DIR or --deployment-root DIR")
        sysroot = Path("/")
    return list_sysroot_deployments(sysroot, run_dir=getattr(args, "run_dir", None))


# --------------------------------------------------------------------------- status


def _store_exists(root: Path, args: argparse.Namespace) -> bool:
    driver = getattr(args, "storage_driver", None)
    return detect_driver(root) is not None and (driver is None or (root / f"{driver}-layers").is_dir())


def run_bound_status(args: argparse.Namespace) -> int:
    """``tether bound status``."""
    root = bound_store_root(args)
    deployments = deployments_from_args(args)
    wanted = find_deployment(deployments, args.check) if args.check else None
    lock = load_lock(args.lock) if args.lock is not None else None
    store: Any
    if not _store_exists(root, args):
        # Status must not create the store: without one, no image is present.
        print(f"tether: bound status: no store at {root}: no bound image is present", file=sys.stderr)
        store = _EmptyStore(root)
    else:
        store = open_bound_store(args)
    statuses = compute_status(deployments, store)
    drift: dict[str, list[str]] = {}
    if lock is not None:
        images = store.list_images()
        drift = {s.deployment.name: differences(s, lock, images) for s in statuses
                 if wanted is None or s.deployment.name == wanted.name}
    if args.format == "json":
        out = [s.to_json() for s in statuses]
        for item in out:
            if item["deployment"] in drift:
                item["lock"] = {"file": str(args.lock), "matches": not drift[item["deployment"]],
                                "differences": drift[item["deployment"]]}
        print(json.dumps(out, indent=2))
    elif wanted is None:
        _print_statuses(statuses)
    if args.format != "json":
        for name, lines in drift.items():
            if not lines:
                print(f"{name}: matches the lock file {args.lock}")
            for line in lines:
                print(f"{name}: differs from the lock file: {line}")
    drifted = any(drift.values())
    if wanted is not None:
        status = next(s for s in statuses if s.deployment.name == wanted.name)
        if args.format != "json":
            print(f"{wanted.name}: {'ready' if status.ready else 'not ready'}")
        return 0 if status.ready and not drifted else 1
    return 1 if drifted else 0


class _EmptyStore:
    """Stands in for a store that does not exist yet (status must not create it)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def list_images(self) -> list[Any]:
        return []


def _print_statuses(statuses: tuple[DeploymentStatus, ...]) -> None:
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


# --------------------------------------------------------------------------- gc


def run_bound_gc(args: argparse.Namespace) -> int:
    """``tether bound gc``."""
    deployments = deployments_from_args(args)
    root = bound_store_root(args)
    if not _store_exists(root, args):
        print(f"tether: bound gc: no store at {root}: nothing to collect", file=sys.stderr)
        if args.format == "json":
            print(json.dumps({"dry_run": args.dry_run, "keep": [], "remove": [], "layers": [],
                              "stale_records": [], "orphan_layers": []}, indent=2))
        return 0
    require_writable_store(root, verb="bound gc")
    store = open_bound_store(args)
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
                    "downloads": {
                        "images": list(result.downloads.names if result.downloads else ()),
                        "blobs": list(result.downloads.blobs if result.downloads else ()),
                        "bytes": result.downloads.freed_bytes if result.downloads else 0,
                    },
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
    downloads = result.downloads
    if downloads is not None and (downloads.records or downloads.blobs):
        names = f" ({', '.join(downloads.names)})" if downloads.names else ""
        print(f"{verb} {len(downloads.records)} download(s){names} and {len(downloads.blobs)} downloaded blob(s), "
              f"{human_size(downloads.freed_bytes)}")
    return 0
