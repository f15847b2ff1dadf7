"""tether mirror sync into oci:DIR and oci-archive:FILE (from layouts), read back by skopeo; mirror prune."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from tests.harness.images import BuiltImage, build_index, simple_image, write_oci_layout
from tests.harness.podman import skopeo
from tether.engine.cli.main import main as tether
from tether.engine.copy.image import PullRequest
from tether.engine.copy.mirror import sync
from tether.engine.copy.progress import Progress
from tether.engine.errors import UsageError
from tether.engine.options import CommonOptions
from tether.registry.manifest import Platform
from tether.store.oci import OCIArchive, OCILayout

AMD = simple_image(21, files=2, architecture="amd64")
ARM = simple_image(22, files=2, architecture="arm64", variant="v8")
MULTI = build_index([AMD, ARM])
SINGLE = simple_image(23, files=2)


@pytest.fixture
def options(tmp_path: Path) -> CommonOptions:
    conf = tmp_path / "registries.conf"
    conf.write_text("")
    return CommonOptions(registries_conf=conf, environ={}, tls_verify=False)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    write_oci_layout(tmp_path / "src", {"quay.io/org/multi:1": MULTI, "registry.example:5000/app:2": SINGLE})
    return tmp_path / "src"


def blob_files(layout: Path) -> set[str]:
    return {p.name for p in (layout / "blobs" / "sha256").iterdir()}


async def test_sync_to_layout_filters_platforms_shares_blobs_and_skopeo_reads_it(
    source: Path, tmp_path: Path, options: CommonOptions
) -> None:
    dest = tmp_path / "mirror"
    report = await sync([f"oci:{source}"], to=f"oci:{dest}", options=options,
                        platforms=[Platform("linux", "arm64", "v8")])
    assert report.ok, report.summary()
    by_source = {r.source: r for r in report.images}
    multi = by_source["quay.io/org/multi:1"]
    assert multi.platforms == ("linux/arm64/v8",)
    assert multi.digest != MULTI.manifest_digest  # a new index with the arm64 entry only
    layout = OCILayout.open(dest)
    assert multi.digest is not None
    index = json.loads(layout.read_blob(multi.digest))
    assert [m["digest"] for m in index["manifests"]] == [ARM.manifest_digest]
    assert not layout.has_blob(AMD.config_digest)
    assert by_source["registry.example:5000/app:2"].digest == SINGLE.manifest_digest
    assert {e.ref_name for e in layout.entries()} == {"quay.io/org/multi:1", "registry.example:5000/app:2"}
    # skopeo reads both by their full source reference; the bytes are the source's.
    raw = skopeo("inspect", "--raw", f"oci:{dest}:registry.example:5000/app:2").stdout.encode()
    assert raw == SINGLE.manifest
    inspected = json.loads(skopeo("inspect", "--override-arch", "arm64", "--override-variant", "v8",
                                  f"oci:{dest}:quay.io/org/multi:1").stdout)
    assert inspected["Architecture"] == "arm64"
    copied = tmp_path / "copied"
    skopeo("copy", "--override-arch", "arm64", f"oci:{dest}:quay.io/org/multi:1", f"dir:{copied}")
    assert (copied / ARM.layers[0].digest.split(":")[1]).read_bytes() == ARM.layers[0].blob

    # Re-sync with every platform: the index keeps its digest, the arm64 blobs are not copied again.
    again = await sync(["oci:" + str(source) + ":quay.io/org/multi:1"], to=f"oci:{dest}", options=options,
                       all_platforms=True)
    assert again.ok, again.summary()
    (result,) = again.images
    assert result.digest == MULTI.manifest_digest
    assert result.blobs_present == len(ARM.blobs())
    assert result.blobs_copied == len(AMD.blobs())
    assert layout.resolve("quay.io/org/multi:1").digest == MULTI.manifest_digest
    assert len([e for e in layout.entries() if e.ref_name == "quay.io/org/multi:1"]) == 1

    # The filtered index is unreferenced now: prune drops it, and only it.
    before = blob_files(dest)
    assert tether(["mirror", "prune", f"oci:{dest}"]) == 0
    assert before - blob_files(dest) == {multi.digest.split(":")[1]}
    assert layout.verify() == []
    # --remove drops a reference and what only it used.
    assert tether(["mirror", "prune", f"oci:{dest}", "--remove", "registry.example:5000/app:2"]) == 0
    assert not layout.has_blob(SINGLE.config_digest)
    assert layout.has_blob(ARM.config_digest)


async def test_sync_to_archive_adds_to_it_and_resumes(source: Path, tmp_path: Path, options: CommonOptions) -> None:
    archive = tmp_path / "usb" / "mirror.tar"

    class Interrupt(BaseException):
        """What a Ctrl-C or a cancelled caller does: nothing inside the copy catches it."""

    class StopAfterFirstBlob(Progress):
        def layer_done(self, image: str, digest: str) -> None:
            raise Interrupt(digest)

    with pytest.raises(BaseExceptionGroup) as interrupted:
        await sync([f"oci:{source}:quay.io/org/multi:1"], to=f"oci-archive:{archive}", options=options,
                   all_platforms=True, jobs=1, progress=StopAfterFirstBlob())
    assert interrupted.group_contains(Interrupt, depth=None)
    assert not archive.exists()
    staging = archive.with_name(".mirror.tar.tether-staging")
    assert len(list((staging / "blobs" / "sha256").iterdir())) == 1

    report = await sync([f"oci:{source}:quay.io/org/multi:1"], to=f"oci-archive:{archive}", options=options,
                        all_platforms=True)
    assert report.ok, report.summary()
    (result,) = report.images
    assert result.blobs_present == 1  # what arrived before the interruption was not copied again
    assert result.blobs_copied == len(AMD.blobs()) + len(ARM.blobs()) - 1
    assert not staging.exists()
    assert sorted(p.name for p in archive.parent.iterdir()) == ["mirror.tar"]

    # A second sync adds to the archive.
    report = await sync([f"oci:{source}:registry.example:5000/app:2"], to=f"oci-archive:{archive}", options=options)
    assert report.ok, report.summary()
    with OCIArchive.open(archive) as arc:
        assert {e.ref_name for e in arc.entries()} == {"quay.io/org/multi:1", "registry.example:5000/app:2"}
    raw = skopeo("inspect", "--raw", f"oci-archive:{archive}:quay.io/org/multi:1").stdout.encode()
    assert raw == MULTI.manifest
    out = tmp_path / "out"
    skopeo("copy", f"oci-archive:{archive}:registry.example:5000/app:2", f"dir:{out}")
    assert (out / SINGLE.layers[1].digest.split(":")[1]).read_bytes() == SINGLE.layers[1].blob

    # podman pulls from the archive, and so does tether (read in place), into stores podman reads.
    from tests.harness.podman import Podman, short_runroot

    pm = Podman(root=tmp_path / "podman", runroot=short_runroot(), driver="vfs")
    pm.run("pull", "--quiet", f"oci-archive:{archive}:registry.example:5000/app:2")
    assert {i["Id"] for i in pm.images()} == {SINGLE.image_id}
    ours = Podman(root=tmp_path / "tether", runroot=short_runroot(), driver="vfs")
    argv = ["pull", "--root", str(ours.root), "--runroot", str(ours.runroot), "--storage-driver", "vfs",
            "--progress", "none", f"oci-archive:{archive}:registry.example:5000/app:2"]
    assert await trio.to_thread.run_sync(tether, argv) == 0
    assert {n for i in ours.images() for n in i.get("Names") or []} == {"registry.example:5000/app:2"}


async def test_corrupt_source_blob_fails_that_image_only(source: Path, tmp_path: Path,
                                                         options: CommonOptions) -> None:
    victim: BuiltImage = SINGLE
    (source / "blobs" / "sha256" / victim.layers[0].digest.split(":")[1]).write_bytes(b"\0" * victim.layers[0].size)
    dest = tmp_path / "mirror"
    report = await sync([f"oci:{source}"], to=f"oci:{dest}", options=options, all_platforms=True)
    assert not report.ok
    failed = {r.source: r.error for r in report.images}
    assert failed["quay.io/org/multi:1"] is None
    assert "corrupt" in (failed["registry.example:5000/app:2"] or "")
    layout = OCILayout.open(dest)
    assert [e.ref_name for e in layout.entries()] == ["quay.io/org/multi:1"]
    assert not layout.has_blob(victim.layers[0].digest)


async def test_usage_errors(source: Path, tmp_path: Path, options: CommonOptions) -> None:
    with pytest.raises(UsageError, match="registries-conf-out"):
        await sync([f"oci:{source}"], to=f"oci:{tmp_path}/m", options=options,
                   registries_conf_out=tmp_path / "x.conf")
    unnamed = tmp_path / "unnamed"
    write_oci_layout(unnamed, {"app:1": SINGLE})
    with pytest.raises(UsageError, match="not a full image reference"):
        await sync([f"oci:{unnamed}"], to=f"oci:{tmp_path}/m", options=options)
    with pytest.raises(UsageError, match="no images"):
        await sync([], to=f"oci:{tmp_path}/m", options=options)
    with pytest.raises(UsageError):
        await sync([PullRequest(name=f"oci:{source}")], to="oci:/x:ref", options=options)


def test_cli_sync_from_a_bound_root(source: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    units = root / "usr/share/containers/systemd"
    units.mkdir(parents=True)
    (units / "app.image").write_text("[Image]\nImage=registry.example:5000/app:2\n")
    bound = root / "usr/lib/bootc/bound-images.d"
    bound.mkdir(parents=True)
    (bound / "app.image").symlink_to("/usr/share/containers/systemd/app.image")
    conf = tmp_path / "registries.conf"
    conf.write_text('[[registry]]\nprefix = "registry.example:5000"\nlocation = "registry.example:5000"\n'
                    "blocked = true\n")
    # The source is blocked: --deployment-root finds the image, and the sync fails (nothing is fetched) with status 1.
    status = tether(["mirror", "sync", "--deployment-root", str(root), "--to", f"oci:{tmp_path}/m",
                     "--registries-conf", str(conf), "--format", "json"])
    assert status == 1
    assert not (tmp_path / "m" / "index.json").exists() or OCILayout.open(tmp_path / "m").entries() == ()


async def test_offline_provisioning_from_a_mirror_layout(source: Path, tmp_path: Path, options: CommonOptions) -> None:
    """``bound sync --source oci:DIR`` path: bound names -> layout entries -> tether pull, names kept."""
    from tests.harness.podman import Podman, short_runroot
    from tether.engine.copy.sources.layout import LayoutSourceError, layout_pull_names

    mirror = tmp_path / "mirror"
    report = await sync([f"oci:{source}"], to=f"oci:{mirror}", options=options, all_platforms=True)
    assert report.ok, report.summary()
    names = layout_pull_names(f"oci:{mirror}", ["registry.example:5000/app:2", "quay.io/org/multi:1"])
    assert names["registry.example:5000/app:2"] == f"oci:{mirror}:registry.example:5000/app:2"
    with pytest.raises(LayoutSourceError, match=r"does not hold quay\.io/org/absent:1"):
        layout_pull_names(f"oci:{mirror}", ["quay.io/org/absent:1"])
    store = Podman(root=tmp_path / "store", runroot=short_runroot(), driver="vfs")
    argv = ["pull", "--root", str(store.root), "--runroot", str(store.runroot), "--storage-driver", "vfs",
            "--progress", "none", "--platform", "linux/arm64/v8", *names.values()]
    status = await trio.to_thread.run_sync(tether, argv)
    assert status == 0
    found = {name: image["Id"] for image in store.images() for name in image.get("Names") or []}
    assert found == {"registry.example:5000/app:2": SINGLE.image_id, "quay.io/org/multi:1": ARM.image_id}


async def test_names_that_would_collide_on_a_registry_are_refused_before_copying(
    tmp_path: Path, options: CommonOptions
) -> None:
    layout = tmp_path / "two"
    write_oci_layout(layout, {"quay.io/a/app:1": SINGLE, "quay.io/b/app:1": AMD})
    # Nothing listens on port 9: the refusal must come before any request.
    with pytest.raises(UsageError, match=r"quay.io/a/app:1 and quay.io/b/app:1 would both be mirrored as "
                                         r"127.0.0.1:9/ns/app:1; use --scoped"):
        await sync([f"oci:{layout}"], to="docker://127.0.0.1:9/ns", options=options)


def test_cli_sync_reports_progress_and_json(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "registries.conf"
    conf.write_text("")
    dest = tmp_path / "m"
    argv = ["mirror", "sync", "--registries-conf", str(conf), f"oci:{source}:registry.example:5000/app:2",
            "--to", f"oci:{dest}"]
    assert tether([*argv, "--progress", "plain"]) == 0
    err = capsys.readouterr().err
    assert "registry.example:5000/app:2: 3 layers, 3 to fetch" in err
    assert f"synced registry.example:5000/app:2 -> registry.example:5000/app:2 ({SINGLE.manifest_digest}; " \
           "3 blobs copied" in err
    assert tether([*argv, "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True
    assert out["images"][0]["blobs_present"] == 3 and out["images"][0]["blobs_copied"] == 0


async def test_resumed_archive_sync_keeps_entries_replaced_before_the_interruption(
    source: Path, tmp_path: Path, options: CommonOptions
) -> None:
    from tether.store.oci import IndexEntry

    archive = tmp_path / "mirror.tar"
    report = await sync([f"oci:{source}:registry.example:5000/app:2"], to=f"oci-archive:{archive}", options=options)
    assert report.ok, report.summary()
    # The state an interrupted re-sync leaves: archive imported, app:2 already replaced by another image.
    staging = OCILayout.open(tmp_path / ".mirror.tar.tether-staging", create=True)
    with OCIArchive.open(archive) as existing:
        existing.copy_into(staging)
    (staging.path / ".tether-imported").write_bytes(b"")
    for digest, data in [*AMD.blobs(), (AMD.manifest_digest, AMD.manifest)]:
        staging.put_blob(data, expected_digest=digest)
    staging.add_entries([IndexEntry.build(media_type=AMD.media_type, digest=AMD.manifest_digest,
                                          size=len(AMD.manifest), ref_name="registry.example:5000/app:2")])
    report = await sync([f"oci:{source}:quay.io/org/multi:1"], to=f"oci-archive:{archive}", options=options,
                        all_platforms=True)
    assert report.ok, report.summary()
    with OCIArchive.open(archive) as arc:
        assert {e.ref_name: e.digest for e in arc.entries()} == {
            "registry.example:5000/app:2": AMD.manifest_digest,
            "quay.io/org/multi:1": MULTI.manifest_digest,
        }
        assert not arc.has_blob(SINGLE.config_digest)  # the replaced image's blobs are not archived
