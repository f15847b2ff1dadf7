"""``tether bound gc``: what is kept (normalised names, digests, short names, records) and what goes,
checked against a store podman populated."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.bound import make_root
from tests.harness.cli import tether_argv
from tests.harness.images import build_image, build_layer, directory, file, push_image, simple_image
from tests.harness.podman import Podman, short_runroot
from tests.harness.registry import RunningRegistry
from tether.engine.bound.deployments import root_deployments
from tether.engine.bound.gc import collect_garbage, image_matches
from tether.engine.cli.main import main
from tether.engine.errors import EngineError
from tether.store.containers_storage import ImageRecord, Store

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def record(*names: str, digest: str | None = None) -> ImageRecord:
    return ImageRecord(
        id="f" * 64,
        names=names,
        digest=digest,
        digests=(digest,) if digest else (),
        top_layer=None,
        created=None,
        metadata=None,
        big_data_names=(),
    )


@pytest.mark.parametrize(
    ("names", "digest", "bound", "kept"),
    [
        (("quay.io/a/b:1",), None, "quay.io/a/b:1", True),
        (("quay.io/a/b:1",), None, "quay.io/a/b:2", False),
        (("quay.io/a/b:latest",), None, "quay.io/a/b", True),
        (("docker.io/library/alpine:latest",), None, "docker.io/alpine", True),
        (("docker.io/library/alpine:latest",), None, "alpine", True),  # short name
        (("quay.io/x/alpine:3",), None, "alpine:3", True),  # short name, any search registry
        (("quay.io/x/alpine:3",), None, "alpine", False),
        (("quay.io/x/notalpine:latest",), None, "alpine", False),
        (("quay.io/a/b:1",), D1, f"quay.io/a/b@{D1}", True),  # pulled by tag, bound by digest
        (("quay.io/a/b:1",), D1, f"quay.io/a/b:1@{D2}", False),
        ((), D1, f"quay.io/a/b@{D1}", True),  # untagged (tag moved away) but the digest is bound
        ((f"quay.io/a/b@{D1}",), D1, f"quay.io/a/b@{D1}", True),
        (("localhost/x:latest",), None, "localhost/x", True),
    ],
)
def test_image_matches(names: tuple[str, ...], digest: str | None, bound: str, kept: bool) -> None:
    assert image_matches(record(*names, digest=digest), bound) is kept


@pytest.fixture
def podman_store(tmp_path: Path) -> Iterator[Podman]:
    podman = Podman(root=tmp_path / "store", runroot=short_runroot())
    try:
        yield podman
    finally:
        for path in (podman.runroot, podman.root / "overlay"):
            subprocess.run(["umount", "-R", str(path)], capture_output=True)
        shutil.rmtree(podman.runroot, ignore_errors=True)


def names_in(podman: Podman) -> set[str]:
    out: set[str] = set()
    for image in podman.images():
        out.update(image.get("Names") or [f"<none>:{image['Id'][:12]}"])
    return out


def test_gc_against_podman_store(
    tmp_path: Path, registry: RunningRegistry, podman_store: Podman, capsys: pytest.CaptureFixture[str]
) -> None:
    host = registry.host
    base = build_layer([directory("usr"), file("usr/base", "shared base\n")])
    keep_img = build_image([base, build_layer([file("keep", "keep\n")])])
    gone_img = build_image([base, build_layer([file("gone", "gone\n")])])
    push_image(host, "gc1/keep:1", keep_img)
    digest_ref = push_image(host, "gc1/bydigest:1", simple_image(301, files=1, layers=1))
    push_image(host, "gc1/gone:1", gone_img)
    push_image(host, "gc1/other:1", simple_image(302, files=1, layers=1))
    for ref in ("gc1/keep:1", "gc1/bydigest:1", "gc1/gone:1", "gc1/other:1"):
        podman_store.pull(f"{host}/{ref}")
    # Bound: by tag; by digest (podman stored it by tag: bootc's string match would prune it); by a
    # spelling podman does not store (":latest" omitted) for an image pulled as :latest.
    push_image(host, "gc1/latest:latest", simple_image(303, files=1, layers=1))
    podman_store.pull(f"{host}/gc1/latest:latest")
    root = make_root(tmp_path / "r", {
        "keep.image": f"{host}/gc1/keep:1",
        "bydigest.image": f"{host}/gc1/bydigest@{digest_ref}",
        "latest.image": f"{host}/gc1/latest",
    })
    args = ["bound", "gc", "--deployment-root", str(root), "--root", str(podman_store.root)]
    store = Store.open(podman_store.root)
    layers_before = {layer.id for layer in store.list_layers()}

    assert main([*args, "--dry-run", "--format", "json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["dry_run"] is True
    assert sorted(n for i in plan["remove"] for n in i["names"]) == [f"{host}/gc1/gone:1", f"{host}/gc1/other:1"]
    assert sorted(n for i in plan["keep"] for n in i["names"]) == [
        f"{host}/gc1/bydigest:1", f"{host}/gc1/keep:1", f"{host}/gc1/latest:latest",
    ]
    # The shared base layer is not in the list of layers to remove.
    assert base.diff_id.split(":")[1] not in plan["layers"]
    assert len(plan["layers"]) == 2
    assert plan["orphan_layers"] == []
    assert names_in(podman_store) >= {f"{host}/gc1/gone:1", f"{host}/gc1/other:1"}  # dry run removed nothing

    assert main(args) == 0
    assert "removed 2 image(s), 2 layer(s); kept 3 image(s)" in capsys.readouterr().out
    assert names_in(podman_store) == {f"{host}/gc1/keep:1", f"{host}/gc1/bydigest:1", f"{host}/gc1/latest:latest"}
    layers_after = {layer.id for layer in store.list_layers()}
    assert base.diff_id.split(":")[1] in layers_after
    assert len(layers_before - layers_after) == 2
    podman_store.run("image", "inspect", f"{host}/gc1/keep:1")  # podman still reads the store
    assert store.check() == []


def test_gc_refuses_when_a_deployment_is_unreadable(tmp_path: Path) -> None:
    good = make_root(tmp_path / "good", {})
    bad = make_root(tmp_path / "bad", {})
    (bad / "usr/lib/bootc/bound-images.d/x.image").write_text("")
    store = Store.open(tmp_path / "store")
    with pytest.raises(EngineError, match=r"(?s)refusing to collect garbage.*Not a symlink: x\.image"):
        collect_garbage(root_deployments([good, bad]), store)


def test_gc_keeps_recorded_ids_and_drops_stale_records(tmp_path: Path) -> None:
    from tether.engine.bound.records import ImageState, ReadinessRecord, record_path, write_record

    a = make_root(tmp_path / "a", {})
    gone = make_root(tmp_path / "gone", {})
    store = Store.open(tmp_path / "store")
    (da,) = root_deployments([a])
    (dgone,) = root_deployments([gone])
    write_record(store.root, da, ReadinessRecord(da.name, str(a), True, (ImageState("x", "k", "0" * 64, None),)))
    write_record(store.root, dgone, ReadinessRecord(dgone.name, str(gone), True, ()))
    result = collect_garbage([da], store, dry_run=True)
    assert result.plan.stale_records == (record_path(store.root, dgone),)
    assert record_path(store.root, dgone).exists()
    collect_garbage([da], store)
    assert not record_path(store.root, dgone).exists()
    assert record_path(store.root, da).exists()


def test_find_image_for_short_names() -> None:
    from dataclasses import replace

    from tether.engine.bound.records import find_image_for

    a = replace(record("docker.io/library/alpine:latest"), id="a" * 64)
    b = replace(record("quay.io/x/app:1"), id="b" * 64)
    c = replace(record("quay.io/y/app:1"), id="c" * 64)
    assert find_image_for([a, b], "alpine") == a
    assert find_image_for([a, b], "docker.io/alpine") == a
    assert find_image_for([a, b], "app:1") == b
    assert find_image_for([a, b, c], "app:1") is None  # ambiguous: not guessed
    assert find_image_for([a, b, c], "x/app:1") == b
    assert find_image_for([a], "alpine:3") is None


def test_gc_removes_layers_a_killed_pull_published_without_an_image(
    tmp_path: Path, registry: RunningRegistry
) -> None:
    import os

    image = simple_image(951, files=2, layers=2)
    push_image(registry.host, "gc-killed/app:1", image)
    store_root = tmp_path / "store"
    killed = subprocess.run(
        tether_argv("pull", "--root", str(store_root), "--tls-verify=false",
                    "--progress", "none", f"{registry.host}/gc-killed/app:1"),
        env={**os.environ, "TETHER_STORE_CRASH_AT": "image-before-record"}, capture_output=True, text=True,
    )
    assert killed.returncode == -9, killed.stderr
    store = Store.open(store_root)
    assert len(store.list_layers()) == 2 and store.list_images() == []

    root = make_root(tmp_path / "r", {})
    assert main(["bound", "gc", "--deployment-root", str(root), "--root", str(store_root)]) == 0
    assert Store.open(store_root).list_layers() == []
    assert Store.open(store_root).check() == []
