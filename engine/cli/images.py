"""``tether images``, ``tether rmi`` and ``tether check``: the store as podman shows it.

``images`` prints what ``podman images`` (4.3) prints for the same store: one row per name, newest image first;
``--format`` Go templates over podman's fields (:mod:`tether.engine.cli.gotemplate`), ``-q``, ``--digests``,
``--no-trunc``, ``--noheading``, ``--filter`` and an IMAGE argument (podman turns it into ``reference=IMAGE``).
A filter keeps or drops a whole image, which then shows all its names, as podman 4.3 does; several filters of one
key keep what any of them keeps, filters of different keys must all keep it.

These commands read a store that exists and never create one: without a store, ``images`` lists nothing (as
podman does for an empty one), ``rmi`` finds nothing and ``check`` says so.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tether.engine.arguments import check_common_options, store_root
from tether.engine.cli.gotemplate import NilList, NilMap, is_json_format, parse_template, tabulate
from tether.engine.errors import EngineError, UsageError
from tether.engine.writable import require_writable_store
from tether.store.containers_storage import CRASH_ENV, ImageRecord, Store, detect_driver, lookup_image
from tether.store.errors import StoreError

__all__ = ["compile_filters", "find_local_image", "human_age", "human_size", "image_json", "open_existing_store",
           "open_store_if_exists", "run_check", "run_images", "run_rmi", "split_name"]

#: Column headings of podman's image fields (c/common report.Headers: the field name split at capitals,
#: upper-cased; podman's overrides for ID and ReadOnly). CreatedAt, CreatedSince and Id are methods: no heading.
HEADERS = {
    "Repository": "REPOSITORY", "Tag": "TAG", "Digest": "DIGEST", "ID": "IMAGE ID", "Created": "CREATED",
    "Size": "SIZE", "VirtualSize": "VIRTUAL SIZE", "SharedSize": "SHARED SIZE", "Names": "NAMES",
    "Labels": "LABELS", "ReadOnly": "R/O", "Dangling": "DANGLING", "Containers": "CONTAINERS",
    "History": "HISTORY", "RepoTags": "REPO TAGS", "RepoDigests": "REPO DIGESTS", "ParentId": "PARENT ID",
}
DEFAULT_FORMAT = "table {{.Repository}}\t{{.Tag}}\t{{.ID}}\t{{.Created}}\t{{.Size}}"
DIGESTS_FORMAT = "table {{.Repository}}\t{{.Tag}}\t{{.Digest}}\t{{.ID}}\t{{.Created}}\t{{.Size}}"
FILTER_KEYS = ("reference", "id", "digest", "label", "dangling", "readonly")


class ImageUnknownError(EngineError):
    """An image name or id the store does not have (podman: "NAME: image not known")."""


def open_existing_store(args: argparse.Namespace) -> Store | None:
    """The store ``--root``, ``--runroot`` and ``--storage-driver`` name, or ``None`` when there is none there
    (a read command creates nothing). Not through :class:`tether.engine.options.CommonOptions`: these commands
    reach no registry, and that module imports :mod:`tether.registry` (~30 ms)."""
    check_common_options(args)
    return open_store_if_exists(store_root(args), runroot=getattr(args, "runroot", None),
                                driver=getattr(args, "storage_driver", None),
                                crash_at=os.environ.get(CRASH_ENV))  # the kill -9 tests' hook (test_store_crash.py)


def open_store_if_exists(root: Path, *, runroot: Path | None = None, driver: str | None = None,
                         crash_at: str | None = None) -> Store | None:
    """The store at ``root``, or ``None`` when there is none (no ``<driver>-layers``: nothing is created)."""
    found = detect_driver(root)
    if found is None or (driver is not None and not (root / f"{driver}-layers").is_dir()):
        return None
    return Store.open(root, runroot=runroot, driver=driver, crash_at=crash_at)


def split_name(name: str) -> tuple[str, str]:
    """``(repository, ":tag" or "@digest")`` of a stored name (always fully qualified)."""
    if "@" in name:
        repo, _, digest = name.partition("@")
        return repo, "@" + digest
    last_slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > last_slash:
        return name[:colon], name[colon:]
    return name, ""


def _repository(name: str) -> str:
    return split_name(name)[0]


def _tag(name: str) -> str:
    suffix = split_name(name)[1]
    return suffix[1:] if suffix.startswith(":") else ("<none>" if suffix else "latest")


def _created_seconds(created: datetime | None) -> int:
    return int(created.timestamp()) if created else 0


def _labels(store: Store, image: ImageRecord) -> dict[str, str] | None:
    try:
        config = json.loads(store.image_big_data(image.id, f"sha256:{image.id}"))
        labels = (config.get("config") or {}).get("Labels") or None
    except Exception:  # a store without the config item: podman prints no labels either
        return None
    # sorted: Go marshals a map's keys in order
    return {str(k): str(v) for k, v in sorted(labels.items())} if isinstance(labels, dict) else None


def _repo_digests(image: ImageRecord) -> list[str]:
    """c/common ``Image.RepoDigests``: every name's repository with every digest, sorted."""
    found = {f"{_repository(name)}@{digest}" for name in image.names for digest in (*image.digests, image.digest)
             if digest}
    return sorted(found)


def image_json(store: Store, image: ImageRecord) -> dict[str, Any]:
    """One image as ``podman images --format json`` prints it (podman 4.3 keys and order)."""
    size = store.image_size(image)
    created = image.created
    out: dict[str, Any] = {
        "Id": image.id,
        "ParentId": "",
        "RepoTags": None,
        "RepoDigests": _repo_digests(image),
        "Size": size,
        "SharedSize": 0,
        "VirtualSize": size,
        "Labels": _labels(store, image),
        "Containers": 0,
    }
    if image.read_only:  # `json:",omitempty"`
        out["ReadOnly"] = True
    if not image.names:
        out["Dangling"] = True
    else:
        out["Names"] = list(image.names)
    out["Digest"] = image.digest or ""
    out["History"] = list(image.names_history)
    out["Created"] = _created_seconds(created)
    out["CreatedAt"] = created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if created else ""
    return out


def human_size(size: int) -> str:
    """go-units ``HumanSizeWithPrecision(size, 3)`` as podman prints sizes ("8.64 kB")."""
    units = ["B", "kB", "MB", "GB", "TB", "PB"]
    value = float(size)
    unit = 0
    while value >= 1000 and unit < len(units) - 1:
        value /= 1000
        unit += 1
    return f"{value:.3g} {units[unit]}"


def human_age(created: datetime | None, *, now: datetime | None = None) -> str:
    """go-units ``HumanDuration`` of the time since ``created``, plus " ago", as podman's CREATED column."""
    if created is None:
        return "unknown"
    seconds = max(0.0, ((now or datetime.now(UTC)) - created).total_seconds())
    minutes, hours = int(seconds // 60), round(seconds / 3600)
    if seconds < 1:
        text = "Less than a second"
    elif int(seconds) == 1:
        text = "1 second"
    elif seconds < 60:
        text = f"{int(seconds)} seconds"
    elif minutes == 1:
        text = "About a minute"
    elif minutes < 60:
        text = f"{minutes} minutes"
    elif hours == 1:
        text = "About an hour"
    elif hours < 48:
        text = f"{hours} hours"
    elif hours < 24 * 7 * 2:
        text = f"{hours // 24} days"
    elif hours < 24 * 30 * 2:
        text = f"{hours // 24 // 7} weeks"
    elif hours < 24 * 365 * 2:
        text = f"{hours // 24 // 30} months"
    else:
        text = f"{int(seconds // 3600) // 24 // 365} years"
    return f"{text} ago"


def _fields(store: Store, image: ImageRecord, name: str | None, *, no_trunc: bool) -> dict[str, object]:
    """podman's ``imageReporter`` for one row: what ``--format`` templates can name."""
    created = image.created
    size = store.image_size(image)
    age = human_age(created)
    labels = _labels(store, image)
    seconds = _created_seconds(created)
    return {
        "Repository": _repository(name) if name else "<none>",
        "Tag": _tag(name) if name else "<none>",
        "Digest": image.digest or "",
        "ID": f"sha256:{image.id}" if no_trunc else image.id[:12],
        "Id": image.id,
        "Created": age,
        "CreatedSince": age,
        "CreatedAt": datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S +0000 UTC"),
        "Size": human_size(size),
        "VirtualSize": size,
        "SharedSize": 0,
        "Containers": 0,
        "Names": list(image.names) if image.names else NilList(),
        "Labels": labels if labels is not None else NilMap(),
        "ReadOnly": image.read_only,
        "Dangling": not image.names,
        "History": ", ".join(image.names_history),
        "RepoTags": [n for n in image.names if "@" not in n] or NilList(),
        "RepoDigests": _repo_digests(image),
        "ParentId": "",
    }


# --------------------------------------------------------------------------- filters


def _go_path_match(pattern: str, text: str) -> bool:
    """Go's ``path.Match``: ``*`` and ``?`` never match ``/``; ``[...]`` classes (``^`` negates); ``\\`` escapes."""
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "\\" and i + 1 < len(pattern):
            i += 1
            out.append(re.escape(pattern[i]))
        elif char == "[":
            end = pattern.find("]", i + 1)
            if end < 0:
                return False  # Go: ErrBadPattern, which podman's filter treats as no match
            body = pattern[i + 1:end]
            negate = body.startswith("^")
            body = body[1:] if negate else body
            out.append(f"[{'^' if negate else ''}{body.replace(chr(92), chr(92) * 2)}]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    return re.fullmatch("".join(out), text) is not None


def _reference_candidates(name: str) -> list[str]:
    """c/common ``filterReferences``: a name, its path, its last component; with the tag or digest and without."""
    repo, suffix = split_name(name)
    path = repo.partition("/")[2] or repo
    out = [name, path, name[name.rfind("/") + 1:]]
    if suffix:
        out += [repo, path + suffix, repo[repo.rfind("/") + 1:]]
    return out


def compile_filters(texts: Sequence[str], *, labels: Callable[[ImageRecord], dict[str, str] | None]
                    ) -> Callable[[ImageRecord], bool]:
    """``--filter KEY=VALUE`` values as one predicate (see the module docstring); ``labels`` reads an image's."""
    by_key: dict[str, list[Callable[[ImageRecord], bool]]] = {}
    cache: dict[str, dict[str, str] | None] = {}

    def labels_of(image: ImageRecord) -> dict[str, str]:
        if image.id not in cache:
            cache[image.id] = labels(image)
        return cache[image.id] or {}

    for text in texts:
        key, sep, value = text.partition("=")
        if not sep:
            raise UsageError(f"invalid image filter {text!r}: must be in the format \"filter=value\"")
        check: Callable[[ImageRecord], bool]
        if key == "reference":
            def check(image: ImageRecord, pattern: str = value) -> bool:
                return any(_go_path_match(pattern, c) for n in image.names for c in _reference_candidates(n))
        elif key == "id":
            def check(image: ImageRecord, wanted: str = value.removeprefix("sha256:")) -> bool:
                return image.id == wanted
        elif key == "digest":
            def check(image: ImageRecord, wanted: str = value) -> bool:
                return any(d.startswith(wanted) for d in (*image.digests, image.digest) if d)
        elif key == "label":
            label, has_value, label_value = value.partition("=")

            def check(image: ImageRecord, k: str = label, v: str | None = label_value if has_value else None
                      ) -> bool:
                found = labels_of(image)
                return k in found and (v is None or found[k] == v)
        elif key in ("dangling", "readonly"):
            lowered = value.lower()
            if lowered not in ("true", "false", "1", "0"):
                raise UsageError(f"invalid image filter {text!r}: {key} takes true or false")
            wanted_bool = lowered in ("true", "1")

            def check(image: ImageRecord, k: str = key, want: bool = wanted_bool) -> bool:
                return (not image.names if k == "dangling" else image.read_only) == want
        else:
            raise UsageError(f"unsupported image filter {key!r} (supported: {', '.join(FILTER_KEYS)})")
        by_key.setdefault(key, []).append(check)
    return lambda image: all(any(c(image) for c in checks) for checks in by_key.values())


# --------------------------------------------------------------------------- images


def run_images(args: argparse.Namespace) -> int:
    """``tether images``."""
    filters = list(args.filter) + ([f"reference={args.image}"] if args.image else [])
    json_output = is_json_format(args.format)
    template = None
    if not args.quiet and not json_output:
        fmt = args.format if args.format != "table" else (DIGESTS_FORMAT if args.digests else DEFAULT_FORMAT)
        template = parse_template(fmt)  # before the store is read: a bad template is a usage error
    store = open_existing_store(args)
    keep = compile_filters(filters, labels=lambda image: _labels(store, image) if store is not None else None)
    images = [i for i in store.list_images() if keep(i)] if store is not None else []
    images.sort(key=lambda i: i.created or datetime.min.replace(tzinfo=UTC), reverse=True)
    if json_output:
        # podman 4.3 prints an image once per name (its table has a row per name; JSON follows it)
        entries = [(image_json(store, i) if store is not None else {}) for i in images]
        print(json.dumps([e for e, i in zip(entries, images, strict=True) for _ in (i.names or [""])], indent=4))
        return 0
    if args.quiet:
        for image_id in dict.fromkeys(i.id for i in images):
            print(f"sha256:{image_id}" if args.no_trunc else image_id[:12])
        return 0
    assert template is not None
    lines: list[str] = []
    if template.table and not args.noheading:
        lines.extend(template.heading(HEADERS).split("\n"))
    for image in images:
        for name in image.names or [None]:
            assert store is not None
            lines.extend(template.render(_fields(store, image, name, no_trunc=args.no_trunc)).split("\n"))
    # c/common aligns a table's columns (tabwriter); a plain template's tabs are printed as they are
    for line in tabulate(lines) if template.table else lines:
        print(line)
    return 0


# --------------------------------------------------------------------------- rmi


def find_local_image(images: Sequence[ImageRecord], text: str) -> tuple[ImageRecord, str | None] | None:
    """The image ``text`` names, as podman's ``LookupImage`` finds it (c/common libimage runtime.go), and the name
    it was found by (``None``: by id or digest).

    ``containers-storage:`` is dropped; then an id, ``sha256:`` id, full name, ``NAME`` as ``NAME:latest``, a
    digest or a unique id prefix (:func:`tether.store.containers_storage.lookup_image`); then a short name
    ``NAME[:TAG]`` (tag ``latest`` when none) against the names whose repository is ``NAME`` or ends with
    ``/NAME`` (``web`` finds ``quay.io/org/web:latest``, ``app`` does not find ``.../app:1``).
    """
    text = text.removeprefix("containers-storage:")
    found = lookup_image(images, text)
    if found is not None:
        if text in found.names:
            return found, text
        tagged = f"{text}:latest"
        return found, (tagged if tagged in found.names else None)
    first, slash, _ = text.partition("/")
    if "@" in text or (slash and (first == "localhost" or "." in first or ":" in first)):
        return None  # not a short name: lookup_image had every way to find it
    repo, tag = (text.rsplit(":", 1) if ":" in text.rsplit("/", 1)[-1] else (text, "latest"))
    for image in images:
        for name in image.names:
            name_repo, suffix = split_name(name)
            if suffix == f":{tag}" and (name_repo == repo or name_repo.endswith("/" + repo)):
                return image, name
    return None


def run_rmi(args: argparse.Namespace) -> int:
    """``tether rmi IMAGE...`` (``-a``: every image; ``-f``: an image given by id, whatever its names)."""
    if args.all == bool(args.images):
        raise UsageError("rmi: give IMAGEs or --all, not both" if args.all else "rmi: give at least one IMAGE")
    store = open_existing_store(args)
    if store is not None:
        require_writable_store(store.root, verb="rmi")
    images = store.list_images() if store is not None else []
    status = 0
    if args.all:
        targets: list[tuple[str, ImageRecord | None, str | None]] = [(i.id, i, None) for i in images
                                                                     if not i.read_only]
    else:
        targets = []
        for text in args.images:
            hit = find_local_image(images, text)
            targets.append((text, hit[0] if hit else None, hit[1] if hit else None))
    for text, image, by_name in targets:
        try:
            if image is None or image.read_only or store is None:
                if args.ignore:
                    continue
                raise ImageUnknownError(f"{text}: image not known" + ("" if store else
                                                                      f" (no store at {store_root(args)})"))
            if by_name is not None and len(image.names) > 1:
                store.remove_names(image.id, [by_name])
                print(f"Untagged: {by_name}")
                continue
            if by_name is None and len(image.names) > 1 and not args.force:
                raise ImageUnknownError(f"unable to delete image {image.id!r} by ID with more than one tag "
                                        f"([{' '.join(image.names)}]): please force removal")
            store.delete_image(image.id)
            for name in image.names:
                print(f"Untagged: {name}")
            print(f"Deleted: {image.id}")
        except (StoreError, EngineError) as exc:
            print(f"tether: {exc}", file=sys.stderr)
            status = 1
    return status


# --------------------------------------------------------------------------- check


def run_check(args: argparse.Namespace) -> int:
    """``tether check``."""
    store = open_existing_store(args)
    if store is None:
        raise EngineError(f"check: no containers-storage store at {store_root(args)} (nothing was created)")
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

