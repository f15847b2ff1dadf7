"""``tether bound gc``: remove from the bootc store every image no present deployment binds.

bootc (crates/lib/src/boundimage.rs + podstorage.rs ``prune``) keeps the images whose *names* equal, as
strings, the bound images of the deployments ostree lists, and removes the rest: a short name, a tag
written differently (``docker.io/library/x`` vs ``x``) or an ``@sha256:`` reference can make it remove an
image that is still bound. Here an image is kept when any present deployment binds it by:

- the exact image id its readiness record pins (``engine/reconcile.py``), even if its tag has moved since;
- a name equal after normalisation (``docker.io/library/``, ``:latest``);
- a digest: a bound ``NAME@sha256:...`` keeps every image with that manifest digest;
- a short name (``alpine``, ``app:1``): any image with a name ending in ``/alpine:latest`` / ``/app:1``
  (conservative: short-name resolution may pick any search registry).

If discovery fails for any present deployment nothing is removed (its bound set is unknown). Images go
with :meth:`tether.store.containers_storage.Store.delete_image`, which also removes the layers no other image
(or container) uses. Records of deployments that no longer exist are removed too, and so is what the download
cache keeps for images no present deployment binds (:func:`tether.engine.copy.downloads.clean_cache`: download
records by image name, then every blob file no remaining record lists).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tether.engine.bound.deployments import Deployment
from tether.engine.bound.discovery import BoundImage, normalize_image_name, short_name_matches
from tether.engine.bound.records import (
    deployment_status,
    list_record_files,
    load_record,
)
from tether.engine.copy.downloads import CleanReport, blob_cache, clean_cache
from tether.engine.errors import EngineError
from tether.engine.storelock import hold_store

if TYPE_CHECKING:
    from tether.store.containers_storage import ImageRecord, LayerRecord, Store


class GCError(EngineError):
    """Garbage collection refused (unknown bound set) or failed."""


@dataclass(frozen=True)
class GCPlan:
    """What a collection keeps and removes (``--dry-run`` prints it)."""

    keep: tuple[tuple[ImageRecord, tuple[str, ...]], ...]  # image, why (deployment: binding)
    remove: tuple[ImageRecord, ...]
    layers: tuple[str, ...]  # layer ids that go with the removed images
    stale_records: tuple[Path, ...]
    orphans: tuple[str, ...] = ()  # layers no image or container uses (left by an interrupted writer)
    bound_names: tuple[str, ...] = ()  # every image a present deployment binds, as written


@dataclass(frozen=True)
class GCResult:
    """What a collection did (or would do, with ``dry_run``)."""

    plan: GCPlan
    removed_image_ids: tuple[str, ...]
    removed_layer_ids: tuple[str, ...]
    dry_run: bool
    downloads: CleanReport | None = None   # what went (would go) from the download cache


def _split_digest(name: str) -> tuple[str, str | None]:
    base, at, digest = name.partition("@")
    return (base, digest) if at else (name, None)


def image_matches(record: ImageRecord, bound: str) -> bool:
    """Whether a store image is (one of) the images ``bound`` designates; see the module docstring."""
    _, digest = _split_digest(bound)
    if digest is not None and (digest == record.digest or digest in record.digests):
        return True
    return names_match(record.names, bound)


def names_match(names: Sequence[str], bound: str) -> bool:
    """Whether an image with ``names`` is the one ``bound`` designates by name (normalised, or as a short name)."""
    base, digest = _split_digest(bound)
    normalized = normalize_image_name(bound)
    known = set(names) | {normalize_image_name(n) for n in names}
    if bound in known or normalized in known:
        return True
    return digest is None and short_name_matches(known, base)


def _layer_chain(layer_id: str | None, layers: dict[str, LayerRecord]) -> set[str]:
    chain: set[str] = set()
    current = layer_id
    while current and current not in chain:
        chain.add(current)
        parent = layers.get(current)
        current = parent.parent if parent is not None else None
    return chain


def plan_gc(deployments: Sequence[Deployment], store: Store) -> GCPlan:
    """Decide what to keep and remove (blocking: reads roots, records and the store)."""
    images = [i for i in store.list_images() if not i.read_only]
    keep_why: dict[str, list[str]] = {}
    problems: list[str] = []
    bound_by: list[tuple[str, BoundImage]] = []
    for deployment in deployments:
        status = deployment_status(deployment, images, store.root)
        if status.error is not None:
            problems.append(f"{deployment.name}: {status.error}")
            continue
        record = load_record(store.root, deployment)
        for state in record.images if record else ():
            if state.id is not None:
                keep_why.setdefault(state.id, []).append(f"{deployment.name}: {state.image} (recorded)")
        bound_by.extend((deployment.name, image) for image in status.bound)
    if problems:
        raise GCError(
            "refusing to collect garbage: the bound images of a deployment are unknown:\n  " + "\n  ".join(problems)
        )
    for stored in images:
        for name, bound in bound_by:
            if image_matches(stored, bound.image):
                keep_why.setdefault(stored.id, []).append(f"{name}: {bound.image}")
    keep = tuple((i, tuple(keep_why[i.id])) for i in images if i.id in keep_why)
    remove = tuple(i for i in images if i.id not in keep_why)
    layers = {layer.id: layer for layer in store.list_layers()}
    kept_layers: set[str] = set()
    for kept, _ in keep:
        kept_layers |= _layer_chain(kept.top_layer, layers)
    # Layers of the removed images that no kept image (nor a container) uses.
    containers_layers = _container_layers(store)
    gone: set[str] = set()
    for removed in remove:
        gone |= _layer_chain(removed.top_layer, layers)
    gone -= kept_layers
    gone -= containers_layers
    present = {d.record_name for d in deployments}
    stale = tuple(p for p in list_record_files(store.root) if p.stem not in present)
    used: set[str] = set(containers_layers)
    for image in images:
        used |= _layer_chain(image.top_layer, layers)
        used.update(image.mapped_layers)
    # Reported, not removed: the store offers no layer deletion, and such a layer may be one a concurrent
    # podman pull has published but not yet committed an image for.
    orphans = tuple(sorted(lid for lid, layer in layers.items() if lid not in used and not layer.incomplete))
    return GCPlan(keep=keep, remove=remove, layers=tuple(sorted(gone)), stale_records=stale, orphans=orphans,
                  bound_names=tuple(dict.fromkeys(image.image for _, image in bound_by)))


def downloads_wanted(bound_names: Sequence[str]) -> Callable[[str], bool]:
    """Whether a download record's image name is bound (by name, normalised or short: as images are kept)."""
    return lambda name: any(names_match((name,), bound) for bound in bound_names)


def _container_layers(store: Store) -> set[str]:
    path = store.root / f"{store.driver}-containers" / "containers.json"
    try:
        raw = json.loads(path.read_bytes())
    except (FileNotFoundError, ValueError):
        return set()
    out: set[str] = set()
    layers = {layer.id: layer for layer in store.list_layers()}
    for c in raw if isinstance(raw, list) else ():
        if isinstance(c, dict) and c.get("layer"):
            out |= _layer_chain(str(c["layer"]), layers)
    return out


def collect_garbage(
    deployments: Sequence[Deployment], store: Store, *, dry_run: bool = False, locked: bool = False
) -> GCResult:
    """Remove every image no present deployment binds, and the layers that go with them.

    Takes the tether store lock (:class:`tether.engine.storelock.StoreBusyError` if another tether holds it)
    unless ``locked`` says the caller holds it already.
    """
    with contextlib.ExitStack() as stack:
        if not locked:
            stack.enter_context(hold_store(store.root))
        plan = plan_gc(deployments, store)
        cache = blob_cache(store)
        wanted = downloads_wanted(plan.bound_names)
        if dry_run:
            return GCResult(plan=plan, removed_image_ids=(), removed_layer_ids=(), dry_run=True,
                            downloads=clean_cache(cache, wanted=wanted, dry_run=True))
        removed_images: list[str] = []
        removed_layers: list[str] = []
        for image in plan.remove:
            removed_layers.extend(store.delete_image(image.id))
            removed_images.append(image.id)
        # Layers a killed or failed tether pull published but never committed an image over; the store
        # removes only those of dead tether sessions, never podman's nor a live process's.
        removed_layers.extend(store.delete_dangling_layers())
        for path in plan.stale_records:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return GCResult(
            plan=plan,
            removed_image_ids=tuple(removed_images),
            removed_layer_ids=tuple(removed_layers),
            dry_run=False,
            downloads=clean_cache(cache, wanted=wanted),
        )
