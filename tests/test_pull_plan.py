"""The pure half of the pull: layer ids, the frozen plan, the up-to-date check."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import pytest

from tests.harness import images as factory
from tether.engine.copy.execute import SLOTLESS_BLOB, LargestFirst
from tether.engine.copy.image import SourceImage
from tether.engine.copy.plan import PlanError, image_up_to_date, is_background_layer, layer_ids, plan_pull
from tether.registry.manifest import ImageManifest, parse_image_config, parse_manifest
from tether.registry.resolve import RawManifest, ResolvedImage


@dataclass(frozen=True)
class FakeLayerRecord:
    id: str
    diff_digest: str | None
    compressed_digest: str | None
    incomplete: bool = False


@dataclass(frozen=True)
class FakeImageRecord:
    id: str
    names: tuple[str, ...]
    digest: str
    digests: tuple[str, ...]


def source_image(built: factory.BuiltImage, name: str = "127.0.0.1:5000/x:1") -> SourceImage:
    parsed = parse_manifest(built.manifest, built.media_type)
    assert isinstance(parsed, ImageManifest)
    manifest = RawManifest(built.manifest, built.media_type, built.manifest_digest)
    resolved = ResolvedImage(top=manifest, manifest=manifest, parsed=parsed, config_raw=built.config,
                             config=parse_image_config(built.config))
    return SourceImage(transport="docker", description=name, names=(name,), reference=None, resolved=resolved)


def layer(seed: int) -> factory.BuiltLayer:
    return factory.build_layer([factory.file(f"f{seed}", f"content {seed}\n")])


def test_layer_ids_follow_containers_image() -> None:
    d1 = "sha256:" + "a" * 64
    d2 = "sha256:" + "b" * 64
    ids = layer_ids([d1, d2])
    assert ids[0] == "a" * 64
    assert ids[1] == hashlib.sha256(("a" * 64 + "+" + "b" * 64).encode()).hexdigest()


def test_shared_base_is_fetched_once_across_images() -> None:
    base, mid = layer(1), layer(2)
    images = [factory.build_image([base, mid, layer(10 + n)]) for n in range(5)]
    plan = plan_pull([(n, source_image(img)) for n, img in enumerate(images)], existing_layers=[])
    fetched = [job for job in plan.jobs if job.copy_from is None]
    assert len(fetched) == 2 + 5
    base_id = layer_ids([base.diff_id])[0]
    base_job = plan.job(base_id)
    assert base_job is not None and base_job.needed_by == frozenset(range(5))
    assert base_job.source_key == 0
    # only image 0 owns the shared layers; the others see them as shared
    assert [s.owner for s in plan.images[1].steps] == [False, False, True]
    assert all(job.after == () for job in plan.jobs)


def test_present_layers_are_not_planned_and_vfs_waits_for_parents() -> None:
    base, top = layer(1), layer(2)
    img = factory.build_image([base, top])
    ids = layer_ids([base.diff_id, top.diff_id])
    existing: list[Any] = [FakeLayerRecord(ids[0], base.diff_id, base.digest)]
    plan = plan_pull([(0, source_image(img))], existing_layers=existing, sequential=True)
    assert [s.action for s in plan.images[0].steps] == ["present", "fetch"]
    assert len(plan.jobs) == 1 and plan.jobs[0].after == ()  # the parent is already there
    plan = plan_pull([(0, source_image(img))], existing_layers=[], sequential=True)
    assert [job.after for job in plan.jobs] == [(), (ids[0],)]


def test_incomplete_layers_count_as_missing() -> None:
    base = layer(1)
    img = factory.build_image([base])
    existing: list[Any] = [FakeLayerRecord(base.diff_id.split(":")[1], base.diff_id, base.digest, incomplete=True)]
    plan = plan_pull([(0, source_image(img))], existing_layers=existing)
    assert [s.action for s in plan.images[0].steps] == ["fetch"]


def test_same_diff_id_elsewhere_is_copied_not_fetched() -> None:
    base, shared = layer(1), layer(2)
    other_base = layer(3)
    # the store has `shared` on top of another base: same diffID, different layer id
    stored_ids = layer_ids([other_base.diff_id, shared.diff_id])
    existing: list[Any] = [FakeLayerRecord(stored_ids[0], other_base.diff_id, other_base.digest),
                FakeLayerRecord(stored_ids[1], shared.diff_id, shared.digest)]
    img = factory.build_image([base, shared])
    plan = plan_pull([(0, source_image(img))], existing_layers=existing)
    actions = {job.layer_id: (job.copy_from, job.after) for job in plan.jobs}
    new_ids = layer_ids([base.diff_id, shared.diff_id])
    assert actions[new_ids[0]] == (None, ())
    assert actions[new_ids[1]] == (stored_ids[1], ())


def test_repeated_diff_id_within_a_pull_is_fetched_once_then_copied() -> None:
    empty = factory.build_layer([])
    img = factory.build_image([layer(1), empty, layer(2), empty])
    plan = plan_pull([(0, source_image(img))], existing_layers=[])
    fetches = [job for job in plan.jobs if job.copy_from is None]
    copies = [job for job in plan.jobs if job.copy_from is not None]
    assert len(fetches) == 3 and len(copies) == 1
    first_empty = next(job for job in fetches if job.diff_id == empty.diff_id)
    assert copies[0].copy_from == first_empty.layer_id and copies[0].after == (first_empty.layer_id,)


def test_manifest_and_config_disagreeing_is_a_plan_error() -> None:
    img = factory.build_image([layer(1), layer(2)])
    liar = factory.build_image([layer(1)])
    src = source_image(img)
    bad = replace(src, resolved=replace(src.resolved, config_raw=liar.config, config=parse_image_config(liar.config)))
    with pytest.raises(PlanError, match=r"2 layers but the config.s rootfs\.diff_ids 1"):
        plan_pull([(0, bad)], existing_layers=[])


def test_up_to_date_by_name_and_digest() -> None:
    rec = FakeImageRecord("abc", ("127.0.0.1:5000/x:1",), "sha256:" + "1" * 64, ("sha256:" + "1" * 64,))

    def found(name: str, digest: str | None) -> object:  # image_up_to_date reads only these fields
        records: list[Any] = [rec]
        return image_up_to_date(records, names=(name,), digest=digest)

    assert found("127.0.0.1:5000/x:1", None) is rec
    assert found("127.0.0.1:5000/x:1", rec.digest) is rec
    assert found("127.0.0.1:5000/x:1", "sha256:" + "2" * 64) is None
    assert found("127.0.0.1:5000/x:2", None) is None


def test_source_image_ids_and_digests() -> None:
    img = factory.build_image([layer(1)])
    src = source_image(img)
    assert src.image_id == img.image_id
    assert src.digests == (img.manifest_digest,)
    assert isinstance(src.config.created, datetime)


#: A blob size that takes a slot.
BIG = SLOTLESS_BLOB + 1


async def test_layer_slots_go_to_the_largest_waiting_blob_first() -> None:
    import trio

    slots = LargestFirst(2)
    order: list[int] = []
    running = 0
    most = 0

    async def job(size: int) -> None:
        nonlocal running, most
        async with slots.slot(size):
            order.append(size)
            running += 1
            most = max(most, running)
            await trio.sleep(0.01)
            running -= 1

    async with trio.open_nursery() as nursery:
        for size in (5, 50, 1, 500, 20, 7):
            nursery.start_soon(job, BIG + size)
    # granted two at a time, largest first (the two granted together may start in either order)
    assert [{size - BIG for size in order[i:i + 2]} for i in (0, 2, 4)] == [{500, 50}, {20, 7}, {5, 1}]
    assert most == 2 and slots.free == 2


async def test_small_blobs_take_no_slot_when_the_job_count_is_the_machines() -> None:
    import trio

    slots = LargestFirst(1, slotless=SLOTLESS_BLOB)
    inside = trio.Event()
    small_done = trio.Event()

    async def big() -> None:
        async with slots.slot(BIG):
            inside.set()
            await small_done.wait()  # a small blob must not wait for this slot

    async def small() -> None:
        await inside.wait()
        async with slots.slot(SLOTLESS_BLOB):
            small_done.set()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(big)
            nursery.start_soon(small)
    assert slots.free == 1


async def test_a_cancelled_waiter_gives_its_turn_away() -> None:
    import trio

    slots = LargestFirst(1)
    got: list[int] = []

    async def job(size: int, scope: trio.CancelScope | None = None) -> None:
        with scope or trio.CancelScope():
            async with slots.slot(size):
                got.append(size)
                await trio.sleep(0.01)

    cancelled = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(job, BIG + 100)
        nursery.start_soon(job, BIG + 50, cancelled)
        nursery.start_soon(job, BIG + 10)
        await trio.sleep(0.001)
        cancelled.cancel()
    assert got == [BIG + 100, BIG + 10] and slots.free == 1


def test_images_planned_later_share_the_jobs_already_scheduled() -> None:
    base, empty = layer(1), factory.build_layer([])
    first = factory.build_image([base, empty])
    second = factory.build_image([base, layer(2), empty])
    plan1 = plan_pull([(0, source_image(first))], existing_layers=[])
    scheduled = {job.layer_id: job for job in plan1.jobs}
    plan2 = plan_pull([(1, source_image(second))], existing_layers=[], scheduled=scheduled)
    steps = plan2.images[0].steps
    assert [(s.action, s.owner) for s in steps] == [("fetch", False), ("fetch", True), ("copy", True)]
    # the empty layer sits on another parent in `second`: copied from the job of `first` that fetches it
    empty_first = next(job for job in plan1.jobs if job.diff_id == empty.diff_id)
    copy = next(job for job in plan2.jobs if job.diff_id == empty.diff_id)
    assert copy.copy_from == empty_first.layer_id and copy.after == (empty_first.layer_id,)
    assert {job.layer_id for job in plan2.jobs}.isdisjoint(scheduled)


@pytest.mark.parametrize(("size", "largest", "background"), [
    (100, 100, False),  # the largest itself
    (67, 100, False),  # within two thirds: as critical as the largest
    (66, 100, True),
    (1, 100, True),
    (0, 0, False),  # nothing to compare with
])
def test_layers_well_below_the_largest_blob_are_background(size: int, largest: int, background: bool) -> None:
    assert is_background_layer(size, largest=largest) is background
