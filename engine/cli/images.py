"""``tether images``, ``tether rmi`` and ``tether check``: the store as podman shows it."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

from tether.engine.arguments import check_common_options, store_root
from tether.store.containers_storage import CRASH_ENV, Store, lookup_image
from tether.store.errors import StoreError

__all__ = ["image_json", "run_check", "run_images", "run_rmi"]


def _open(args: argparse.Namespace) -> Store:
    """The store ``--root``, ``--runroot`` and ``--storage-driver`` name, once the common options are checked.

    Not through :class:`tether.engine.options.CommonOptions`: these commands reach no registry, and that module
    imports :mod:`tether.registry` (~30 ms).
    """
    check_common_options(args)
    return Store.open(store_root(args), runroot=args.runroot, driver=args.storage_driver,
                      crash_at=os.environ.get(CRASH_ENV))  # the kill -9 tests' hook (tests/test_store_crash.py)


def _repository(name: str) -> str:
    """The repository part of a reference: without ``@digest`` and without ``:tag``."""
    base = name.split("@", 1)[0]
    last_slash = base.rfind("/")
    colon = base.rfind(":")
    return base[:colon] if colon > last_slash else base


def _tag(name: str) -> str:
    if "@" in name:
        return "<none>"
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    return name[colon + 1:] if colon > last_slash else "latest"


def _created_seconds(created: datetime | None) -> int:
    return int(created.timestamp()) if created else 0


def image_json(store: Any, image: Any) -> dict[str, Any]:
    """One image as ``podman images --format json`` prints it (podman 4.3 keys and order)."""
    labels: Any = None
    try:
        config = json.loads(store.image_big_data(image.id, f"sha256:{image.id}"))
        labels = (config.get("config") or {}).get("Labels") or None
    except Exception:  # a store without the config item: podman prints no labels either
        labels = None
    repo_digests: list[str] = []
    for name in image.names:
        for digest in (*image.digests, image.digest):
            if digest:
                value = f"{_repository(name)}@{digest}"
                if value not in repo_digests:
                    repo_digests.append(value)
    size = store.image_size(image)
    created = image.created
    return {
        "Id": image.id,
        "ParentId": "",
        "RepoTags": None,
        "RepoDigests": repo_digests,
        "Size": size,
        "SharedSize": 0,
        "VirtualSize": size,
        "Labels": labels,
        "Containers": 0,
        "Names": list(image.names),
        "Digest": image.digest or "",
        "History": list(image.names_history),
        "Created": _created_seconds(created),
        "CreatedAt": created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if created else "",
    }


def _human_size(size: int) -> str:
    """go-units ``HumanSizeWithPrecision(size, 3)`` as podman prints sizes ("8.64 kB")."""
    units = ["B", "kB", "MB", "GB", "TB", "PB"]
    value = float(size)
    unit = 0
    while value >= 1000 and unit < len(units) - 1:
        value /= 1000
        unit += 1
    return f"{value:.3g} {units[unit]}"


def _human_age(created: datetime | None) -> str:
    if created is None:
        return "unknown"
    seconds = max(0, int((datetime.now(UTC) - created).total_seconds()))
    for span, unit in ((365 * 86400, "year"), (30 * 86400, "month"), (7 * 86400, "week"), (86400, "day"),
                       (3600, "hour"), (60, "minute")):
        if seconds >= span:
            count = seconds // span
            return f"{count} {unit}{'s' if count > 1 else ''} ago"
    return "Less than a minute ago" if seconds < 60 else "now"


def run_images(args: argparse.Namespace) -> int:
    """``tether images``."""
    store = _open(args)
    images = sorted(store.list_images(), key=lambda i: i.created or datetime.min.replace(tzinfo=UTC), reverse=True)
    if args.format == "json":
        # podman 4.3 prints an image once per name (its table has a row per name; JSON follows it)
        entries = [image_json(store, image) for image in images]
        print(json.dumps([e for e, i in zip(entries, images, strict=True) for _ in (i.names or [""])], indent=4))
        return 0
    rows = [("REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE")]
    for image in images:
        size = _human_size(store.image_size(image))
        age = _human_age(image.created)
        for name in image.names or ["<none>"]:
            repo = _repository(name) if name != "<none>" else "<none>"
            tag = _tag(name) if name != "<none>" else "<none>"
            rows.append((repo, tag, image.id[:12], age, size))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])
    return 0


def run_rmi(args: argparse.Namespace) -> int:
    """``tether rmi IMAGE...``."""
    store = _open(args)
    status = 0
    for text in args.images:
        try:
            image = lookup_image(store.list_images(), text)
            if image is None or image.read_only:
                raise StoreError(f"removing {text!r}: image not known in {store.root}")
            if text in image.names and len(image.names) > 1:
                store.remove_names(image.id, [text])
                print(f"Untagged: {text}")
                continue
            store.delete_image(image.id)
            for name in image.names:
                print(f"Untagged: {name}")
            print(f"Deleted: {image.id}")
        except StoreError as exc:
            print(f"tether: {exc}", file=sys.stderr)
            status = 1
    return status


def run_check(args: argparse.Namespace) -> int:
    """``tether check``."""
    store = _open(args)
    problems = store.check()
    if args.format == "json":
        print(json.dumps({"root": str(store.root), "driver": store.driver, "problems": problems}, indent=4))
    else:
        for problem in problems:
            print(problem)
        if not problems:
            print(f"{store.root} ({store.driver}): {len(store.list_layers())} layers, "
                  f"{len(store.list_images())} images, no problems")
    return 1 if problems else 0
