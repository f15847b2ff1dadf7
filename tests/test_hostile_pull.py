"""Hostile and broken layers pushed to a real docker-registry and pulled by the real ``tether pull`` together
with good images: each bad image fails alone with a one-line cause, the others complete, no staging is left,
the store passes ``tether check``, and podman reads it.  Layers that write through symlinks are refused
exactly where podman (containers/storage's chrooted applier) refuses them, on both drivers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import hostile
from tests.harness import images as factory
from tests.harness.cli import tether_argv
from tests.harness.podman import Podman, podman_for, short_runroot
from tests.harness.registry import RunningRegistry
from tests.harness.store_pull import release_podman
from tether.store.containers_storage import Store

REPO_ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="layer application and podman stores need root")


def registries_conf(tmp: Path, registry: RunningRegistry) -> Path:
    conf = tmp / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n')
    return conf


def tether(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(tether_argv(*args), capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=timeout)


def tether_pull(tmp: Path, registry: RunningRegistry, root: Path, driver: str, names: list[str],
                *extra: str) -> dict[str, dict[str, Any]]:
    """``tether pull --format json`` of ``names`` into ``root``: each name's JSON result."""
    auth = tmp / "auth.json"
    auth.write_text('{"auths": {}}')
    proc = tether("pull", "--root", str(root), "--runroot", str(tmp / "run"), "--storage-driver", driver,
                  "--registries-conf", str(registries_conf(tmp, registry)), "--authfile", str(auth),
                  "--tls-verify=false", "--progress", "none", "--format", "json", *extra, *names)
    assert proc.returncode in (0, 1), proc.stderr
    results = {r["name"]: r for r in json.loads(proc.stdout)}
    assert set(results) == set(names)
    failed = [n for n, r in results.items() if r["error"]]
    assert (proc.returncode == 1) == bool(failed), proc.stderr
    for name in failed:  # the same causes, one line each, on stderr
        assert f"  {name}: {results[name]['error']}\n" in proc.stderr
    return results


def assert_store_sound(root: Path, driver: str, *, ok_ids: set[str]) -> None:
    """No staging, no incomplete layer; ``tether check`` passes; podman lists exactly the committed images."""
    staging = root / driver / "tether-staging"
    assert not staging.exists() or os.listdir(staging) == []
    store = Store.open(root, driver=driver)
    assert not [layer.id for layer in store.list_layers() if layer.incomplete]
    check = tether("check", "--root", str(root), "--storage-driver", driver)
    assert check.returncode == 0, check.stdout + check.stderr
    # podman's database remembers the run root it was first given: one per store.
    podman = Podman(root=root, runroot=_RUNROOTS.setdefault(root, short_runroot()), driver=driver)
    try:
        assert {i["Id"] for i in podman.images()} == ok_ids
        for image_id in ok_ids:
            podman.run("image", "inspect", image_id)
    finally:
        release_podman(podman.root, podman.runroot)


_RUNROOTS: dict[Path, Path] = {}


@pytest.fixture(autouse=True)
def _remove_runroots() -> Iterator[None]:
    yield
    for runroot in _RUNROOTS.values():
        shutil.rmtree(runroot, ignore_errors=True)
    _RUNROOTS.clear()


UNSAVEABLE = {"link-to-own-dir", "link-to-lower-dir"}


@pytest.fixture(scope="module")
def dangling(registry: RunningRegistry) -> dict[str, factory.BuiltImage]:
    built = {name: factory.build_image(layers) for name, layers in hostile.dangling_link_cases().items()}
    for name, image in built.items():
        factory.push_image(registry.host, f"hostile/{name}:1", image)
    factory.push_image(registry.host, "hostile/good:1", factory.simple_image(1701, files=3))
    return built


@pytest.fixture
def podman_store(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Podman]:
    podman = podman_for(tmp_path / "podman", driver=request.param)
    try:
        yield podman
    finally:
        release_podman(podman.root, podman.runroot)


@pytest.mark.parametrize("podman_store", ["overlay", "vfs"], indirect=True)
def test_writes_through_dangling_links_fail_where_podman_fails(
        tmp_path: Path, registry: RunningRegistry, dangling: dict[str, factory.BuiltImage],
        podman_store: Podman) -> None:
    driver = podman_store.driver
    names = {case: f"{registry.host}/hostile/{case}:1" for case in dangling}
    podman_refuses = {}
    for case, name in names.items():
        proc = podman_store.run("pull", "--quiet", "--tls-verify=false", name, check=False)
        podman_refuses[case] = proc.returncode != 0
    assert podman_refuses == {case: verdict[driver] for case, verdict in hostile.PODMAN_REFUSES.items()}
    # What podman stored of the layers it accepted matches their tar-splits (the check models its applier).
    check = tether("check", "--root", str(podman_store.root), "--storage-driver", driver)
    assert check.returncode == 0, check.stdout

    good = f"{registry.host}/hostile/good:1"
    root = tmp_path / "tether"
    results = tether_pull(tmp_path, registry, root, driver, [*names.values(), good])
    assert results[good]["error"] is None
    tether_refuses = {case: results[name]["error"] is not None for case, name in names.items()}
    assert tether_refuses == podman_refuses
    for case, name in names.items():
        error = results[name]["error"]
        if error is not None and case != "link-to-lower-dir":  # that one: "a parent ... is not a directory"
            assert "does not exist in the layer" in error, error
        if error is not None:
            assert "\n" not in error and dangling[case].layers[-1].digest in error, error
    ok_ids = {dangling[case].image_id for case, refused in tether_refuses.items() if not refused}
    assert_store_sound(root, driver, ok_ids=ok_ids | {factory.simple_image(1701, files=3).image_id})
    # podman saves from tether's store what it saves from its own: a layer whose files sit under a link to an
    # absolute path ("link-to-own-dir", vfs "link-to-lower-dir") cannot be saved from either (podman reads
    # diff/l/a/x on the host, following the link out of the layer: a podman limitation tether cannot change
    # without refusing layers podman accepts).
    theirs = podman_store
    ours = Podman(root=root, runroot=_RUNROOTS[root], driver=driver)
    try:
        for case, refused in tether_refuses.items():
            if refused:
                continue
            saved = [p.run("save", "--quiet", "-o", str(tmp_path / f"{case}-{i}.tar"), names[case], check=False)
                     for i, p in enumerate((theirs, ours))]
            assert saved[0].returncode == saved[1].returncode, (case, saved[0].stderr, saved[1].stderr)
            assert (saved[1].returncode == 0) == (case not in UNSAVEABLE), saved[1].stderr
        ours.run("save", "--quiet", "-o", str(tmp_path / "good.tar"), good)
    finally:
        release_podman(ours.root, ours.runroot)
    # Nothing was created through a link's missing target: no "some/missing" in any layer.
    store = Store.open(root, driver=driver)
    for layer in store.list_layers():
        assert not (store.layer_directory(layer) / "some").exists()


@pytest.fixture(scope="module")
def broken(registry: RunningRegistry) -> dict[str, factory.BuiltImage]:
    base = factory.build_layer([factory.directory("etc"), factory.file("etc/base", "base")])
    content = [factory.directory("app"), factory.file("app/one", "1" * 3000), factory.file("app/two", "2" * 3000)]
    images = {
        "diffid-lie": factory.build_image([base, hostile.lying_diff_id(factory.build_layer(content))]),
        "corrupt-gzip": factory.build_image([base, hostile.corrupt_gzip_layer(
            [factory.large_file("noise", 200_000, seed=1702)])]),
        "truncated": factory.build_image([base, hostile.truncated_layer(content)]),
        "hardlink-out": factory.build_image([base, factory.build_layer(
            [factory.hardlink("h", "../../../../etc/passwd")])]),
        "deep-path": factory.build_image([base, hostile.deep_path_layer()]),
        "good-a": factory.simple_image(1703, files=4, layers=2),
        "good-b": factory.build_image([base, factory.build_layer([factory.file("b", "b")])]),
    }
    for name, image in images.items():
        factory.push_image(registry.host, f"broken/{name}:1", image)
    return images


CAUSES = {
    "diffid-lie": "does not match the config's diff id",
    "corrupt-gzip": "gzip",
    "truncated": "is 1500 bytes short of its header's size",
    "hardlink-out": "target not in this layer",
    "deep-path": "longer than PATH_MAX",
}


@pytest.mark.parametrize("driver", ["overlay", "vfs"])
def test_bad_layers_fail_their_image_alone(tmp_path: Path, registry: RunningRegistry,
                                           broken: dict[str, factory.BuiltImage], driver: str) -> None:
    names = {case: f"{registry.host}/broken/{case}:1" for case in broken}
    root = tmp_path / "store"
    results = tether_pull(tmp_path, registry, root, driver, list(names.values()))
    for case, name in names.items():
        error = results[name]["error"]
        if case.startswith("good"):
            assert error is None and results[name]["id"] == broken[case].image_id
            continue
        assert error is not None, case
        bad_layer = broken[case].layers[-1]
        assert bad_layer.digest in error and CAUSES[case] in error, error
        assert "\n" not in error and len(error) < 1000, error  # one line, names capped
        assert "Exceptions from Trio nursery" not in error
    assert "characters left out" in results[names["deep-path"]]["error"]
    assert_store_sound(root, driver, ok_ids={broken["good-a"].image_id, broken["good-b"].image_id})
    # The shared base stays (good-b needs it) and a rerun of the bad ones fails the same way, quickly.
    rerun = tether_pull(tmp_path, registry, root, driver, [names["diffid-lie"], names["truncated"]])
    assert all(r["error"] for r in rerun.values())
    assert_store_sound(root, driver, ok_ids={broken["good-a"].image_id, broken["good-b"].image_id})
