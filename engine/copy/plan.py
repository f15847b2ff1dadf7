"""Decide, then act: the pure planning half of every copy.

A plan says, for each image, which of its pieces the destination already has, which one job of this copy
makes, and which another image's job makes; every missing piece is made by exactly one :class:`LayerJob`
however many images need it. Two planners share these values:

* :func:`plan_pull` for a containers-storage destination: layers keyed by containers-storage layer id (the
  chain id containers/image computes from ``rootfs.diff_ids``), present by id, *copied* from a stored layer
  with the same diffID (or the same compressed digest and diffID), or *fetched*; vfs makes each layer wait for
  its parent's tree;
* :func:`plan_blobs` for blob destinations (an OCI layout, a registry): blobs keyed by where they land, every
  one a job whose presence the destination checks when it runs (a registry's ``HEAD`` is I/O).

Images are planned one at a time as they are resolved (``scheduled``: the jobs earlier images planned), so one
slow registry never holds the others back.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from tether.engine.copy.progress import LayerInfo, LayerState
from tether.engine.errors import EngineError

if TYPE_CHECKING:
    from tether.engine.copy.image import SourceImage
    from tether.registry.manifest import Descriptor
    from tether.store.containers_storage import ImageRecord, LayerRecord

LayerAction = Literal["present", "fetch", "copy"]


class PlanError(EngineError):
    """An image cannot be planned (its config and manifest disagree, it has no layers)."""


def layer_ids(diff_ids: Sequence[str]) -> tuple[str, ...]:
    """containers-storage layer ids of an image's layers, bottom first.

    containers/image storage_dest.go (commitLayer): the base layer's id is the hex of its DiffID; each
    next one is ``sha256hex(parentID + "+" + hex(DiffID))``.
    """
    ids: list[str] = []
    parent: str | None = None
    for diff_id in diff_ids:
        hex_ = diff_id.split(":", 1)[1]
        layer_id = hex_ if parent is None else hashlib.sha256(f"{parent}+{hex_}".encode()).hexdigest()
        ids.append(layer_id)
        parent = layer_id
    return tuple(ids)


@dataclass(frozen=True)
class LayerStep:
    """One piece (a layer, a blob) of one image in the plan, in manifest order."""

    layer_id: str           # the key of the piece at the destination (layer id, or where a blob lands)
    parent: str | None
    diff_id: str            # "" for a blob destination
    descriptor: Descriptor
    action: LayerAction     # present at the destination / fetched / copied from a stored layer
    owner: bool             # this image's job makes it (False: another image's job, or present)


@dataclass(frozen=True)
class LayerJob:
    """Making one missing piece: fetch its blob from ``source_key``'s source, or copy an existing layer.

    ``copy_from`` is a layer (already in the store, or made earlier in this copy: see ``after``) with the
    same diffID. ``after`` are keys that must be published before this job may start staging (vfs: the
    parent; a copy: its source when this copy makes it). ``parent`` must be published before this one is.
    """

    layer_id: str
    parent: str | None
    diff_id: str
    descriptor: Descriptor
    source_key: int
    copy_from: str | None
    after: tuple[str, ...]
    needed_by: frozenset[int]


@dataclass(frozen=True)
class ImagePlan:
    """One image's steps, bottom first."""

    key: int
    steps: tuple[LayerStep, ...]

    @property
    def top_layer(self) -> str | None:
        return self.steps[-1].layer_id if self.steps else None

    @property
    def made_here(self) -> int:
        """Steps this copy makes (fetched or copied), as opposed to present ones."""
        return sum(1 for s in self.steps if s.action != "present")

    def layer_infos(self) -> tuple[LayerInfo, ...]:
        """The progress view of the plan."""
        out = []
        for step in self.steps:
            state: LayerState
            if step.action == "present":
                state = "exists"
            elif not step.owner:
                state = "shared"
            elif step.action == "copy":
                state = "copy"
            else:
                state = "fetch"
            out.append(LayerInfo(step.descriptor.digest, step.descriptor.size, state))
        return tuple(out)


@dataclass(frozen=True)
class PullPlan:
    """A frozen plan: images (by request key) and the jobs that make their missing pieces."""

    images: tuple[ImagePlan, ...]
    jobs: tuple[LayerJob, ...]

    def job(self, layer_id: str) -> LayerJob | None:
        return next((job for job in self.jobs if job.layer_id == layer_id), None)


@dataclass
class _NewJob:
    layer_id: str
    parent: str | None
    diff_id: str
    descriptor: Descriptor
    source_key: int
    copy_from: str | None
    after: tuple[str, ...]
    action: LayerAction
    needed_by: set[int] = field(default_factory=set)

    def freeze(self) -> LayerJob:
        return LayerJob(layer_id=self.layer_id, parent=self.parent, diff_id=self.diff_id,
                        descriptor=self.descriptor, source_key=self.source_key, copy_from=self.copy_from,
                        after=self.after, needed_by=frozenset(self.needed_by))


def plan_pull(images: Sequence[tuple[int, SourceImage]], *, existing_layers: Sequence[LayerRecord],
              sequential: bool = False, scheduled: Mapping[str, LayerJob] | None = None) -> PullPlan:
    """Plan the layers a containers-storage destination lacks for ``images`` (request key, resolved image).

    A layer is *present* if the store has a complete layer with its id, *shared* if ``scheduled`` (the jobs
    of this copy planned earlier, by layer id) already makes it. Otherwise it is made by one new job: a
    **copy** when the store (or a job of this copy) has a layer with the same diffID, or the same
    compressed digest and diffID; else a **fetch**. An image from a ``containers-storage:`` source keeps its
    source's layer ids (its layers may not be chain ids). ``sequential`` (vfs) makes every job wait for its
    parent. Raises :class:`PlanError` when a manifest and its config disagree on the number of layers.
    """
    scheduled = scheduled or {}
    complete = {rec.id: rec for rec in existing_layers if not rec.incomplete}
    by_diff: dict[str, str] = {}
    by_compressed: dict[str, tuple[str, str | None]] = {}
    for rec in complete.values():
        if rec.diff_digest:
            by_diff.setdefault(rec.diff_digest, rec.id)
        if rec.compressed_digest:
            by_compressed.setdefault(rec.compressed_digest, (rec.id, rec.diff_digest))

    jobs: dict[str, _NewJob] = {}
    made_by_diff: dict[str, str] = {}      # diffID -> first layer id fetched in this copy
    for earlier in scheduled.values():
        if earlier.copy_from is None and earlier.diff_id:
            made_by_diff.setdefault(earlier.diff_id, earlier.layer_id)
    plans: list[ImagePlan] = []
    for key, image in images:
        diff_ids = image.config.diff_ids
        descriptors = image.manifest.layers
        if len(diff_ids) != len(descriptors):
            raise PlanError(f"{'/'.join(image.names) or image.manifest_digest}: the manifest lists "
                            f"{len(descriptors)} layers but the config's rootfs.diff_ids {len(diff_ids)}")
        if image.stored is not None:
            if len(image.stored.layers) != len(diff_ids):
                raise PlanError(f"{image.description}: the stored image has {len(image.stored.layers)} layers, "
                                f"its config {len(diff_ids)}")
            ids = tuple(rec.id for rec in image.stored.layers)
        else:
            ids = layer_ids(diff_ids)
        steps: list[LayerStep] = []
        parent: str | None = None
        for layer_id, diff_id, desc in zip(ids, diff_ids, descriptors, strict=True):
            if layer_id in complete:
                steps.append(LayerStep(layer_id, parent, diff_id, desc, "present", False))
            elif layer_id in scheduled:
                earlier_action: LayerAction = "copy" if scheduled[layer_id].copy_from else "fetch"
                steps.append(LayerStep(layer_id, parent, diff_id, desc, earlier_action, False))
            elif layer_id in jobs:
                jobs[layer_id].needed_by.add(key)
                steps.append(LayerStep(layer_id, parent, diff_id, desc, jobs[layer_id].action, False))
            else:
                after: list[str] = []
                copy_from: str | None = None
                if diff_id in by_diff:
                    copy_from = by_diff[diff_id]
                elif desc.digest in by_compressed and by_compressed[desc.digest][1] == diff_id:
                    copy_from = by_compressed[desc.digest][0]
                elif diff_id in made_by_diff:
                    copy_from = made_by_diff[diff_id]
                    after.append(copy_from)
                if sequential and parent is not None and parent not in complete:
                    after.append(parent)
                action: LayerAction = "copy" if copy_from is not None else "fetch"
                if copy_from is None:
                    made_by_diff[diff_id] = layer_id
                jobs[layer_id] = _NewJob(layer_id, parent, diff_id, desc, key, copy_from, tuple(after), action,
                                         {key})
                steps.append(LayerStep(layer_id, parent, diff_id, desc, action, True))
            parent = layer_id
        plans.append(ImagePlan(key=key, steps=tuple(steps)))
    return PullPlan(images=tuple(plans), jobs=tuple(job.freeze() for job in jobs.values()))


def plan_blobs(key: int, blobs: Iterable[Descriptor], *, destination_key: Callable[[str], str],
               scheduled: Mapping[str, LayerJob] | None = None) -> PullPlan:
    """Plan one image's blobs for a blob destination: one job per blob not already made by an earlier image.

    ``destination_key`` maps a digest to where the blob lands (a layout: the digest; a registry: the
    repository and the digest, since a blob pushed to one repository is not in another). Presence is the
    job's to check when it runs.
    """
    scheduled = scheduled or {}
    steps: list[LayerStep] = []
    jobs: dict[str, LayerJob] = {}
    for desc in blobs:
        where = destination_key(desc.digest)
        if where in jobs:
            continue
        owner = where not in scheduled
        steps.append(LayerStep(where, None, "", desc, "fetch", owner))
        if owner:
            jobs[where] = LayerJob(layer_id=where, parent=None, diff_id="", descriptor=desc, source_key=key,
                                   copy_from=None, after=(), needed_by=frozenset({key}))
    return PullPlan(images=(ImagePlan(key=key, steps=tuple(steps)),), jobs=tuple(jobs.values()))


def image_up_to_date(records: Iterable[ImageRecord], *, names: Sequence[str], digest: str | None
                     ) -> ImageRecord | None:
    """The stored image that makes a pull unnecessary: it has one of ``names`` and (unless ``digest`` is
    ``None``, i.e. ``--pull missing``) the manifest ``digest``."""
    for rec in records:
        if not set(names) & set(rec.names):
            continue
        if digest is None:
            return rec
        if digest == rec.digest or digest in rec.digests:
            return rec
    return None


def is_background_layer(size: int, *, largest: int) -> bool:
    """Whether a blob of ``size`` bytes is off the critical path of a copy whose largest blob is ``largest``.

    A pull ends when its longest layer does, and a layer's work grows with its blob: layers under two
    thirds of the largest are extracted in the background (lower CPU priority, one thread; see
    ``Store.stage_layer``), so that on a busy machine the largest ones get the cores and the others fill
    the gaps.  Blobs of similar size are all critical: none of them is favoured.
    """
    return size * 3 < largest * 2


__all__ = [
    "ImagePlan",
    "LayerAction",
    "LayerJob",
    "LayerStep",
    "PlanError",
    "PullPlan",
    "image_up_to_date",
    "is_background_layer",
    "layer_ids",
    "plan_blobs",
    "plan_pull",
]
