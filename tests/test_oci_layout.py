"""store/oci/: OCI image layouts and oci-archive files, against skopeo as the reference reader/writer."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.harness.images import BuiltImage, BuiltIndex, build_index, sha256_digest, simple_image
from tests.harness.podman import skopeo
from tether.store.errors import CorruptStoreError, ImageUnknownError
from tether.store.oci import (
    REF_NAME_ANNOTATION,
    BlobDigestError,
    IndexEntry,
    LayoutError,
    OCIArchive,
    OCILayout,
    child_descriptors,
    merge_entries,
    parse_index,
    select_entry,
    split_layout_reference,
    write_oci_archive,
)

# --- pure parts -------------------------------------------------------------------------------------


def entry(digest_seed: str, name: str | None = None, media_type: str = "application/vnd.oci.image.manifest.v1+json"
          ) -> IndexEntry:
    return IndexEntry.build(media_type=media_type, digest=sha256_digest(digest_seed.encode()), size=3, ref_name=name)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/srv/layout", ("/srv/layout", None)),
        ("/srv/layout:", ("/srv/layout", None)),
        ("/srv/layout:app", ("/srv/layout", "app")),
        ("/srv/layout:quay.io/org/app:1.0", ("/srv/layout", "quay.io/org/app:1.0")),
        ("/srv/layout:127.0.0.1:5000/app@sha256:" + "a" * 64, ("/srv/layout", "127.0.0.1:5000/app@sha256:" + "a" * 64)),
        ("rel:@2", ("rel", "@2")),
    ],
)
def test_split_layout_reference_cuts_at_the_first_colon(text: str, expected: tuple[str, str | None]) -> None:
    assert split_layout_reference(text) == expected


@pytest.mark.parametrize("text", [":x", "/d:bad ref", "/d:-leading", "/d:@-1", "/d:@x", "/d:a//b"])
def test_split_layout_reference_refuses_bad_names(text: str) -> None:
    with pytest.raises(LayoutError):
        split_layout_reference(text)


def test_select_entry_by_name_index_and_only_entry() -> None:
    a, b = entry("a", "app:1"), entry("b", "quay.io/x/y:2")
    assert select_entry([a, b], "quay.io/x/y:2", where="oci:/d") == b
    assert select_entry([a, b], "@0", where="oci:/d") == a
    assert select_entry([a], None, where="oci:/d") == a
    with pytest.raises(ImageUnknownError, match="holds 2 images"):
        select_entry([a, b], None, where="oci:/d")
    with pytest.raises(ImageUnknownError, match="no image named"):
        select_entry([a, b], "other", where="oci:/d")
    with pytest.raises(ImageUnknownError, match="too large"):
        select_entry([a, b], "@2", where="oci:/d")
    config = entry("c", "cfg", media_type="application/vnd.oci.image.config.v1+json")
    with pytest.raises(LayoutError, match="unsupported media types"):
        select_entry([config], "cfg", where="oci:/d")


def test_merge_entries_replaces_same_name_and_same_unnamed_digest() -> None:
    old = entry("old", "app:1")
    unnamed = entry("u")
    other = entry("o", "app:2")
    new = entry("new", "app:1")
    merged = merge_entries([old, unnamed, other, entry("dup", "app:1")], [new, entry("u"), entry("z")])
    assert [e.ref_name for e in merged] == ["app:1", None, "app:2", None]
    assert merged[0] == new
    assert merged[3].digest == sha256_digest(b"z")


def test_index_round_trip_keeps_unknown_fields() -> None:
    raw = json.dumps({
        "schemaVersion": 2,
        "annotations": {"top": "x"},
        "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": sha256_digest(b"i"),
                       "size": 10, "platform": {"os": "linux", "architecture": "arm64"}, "artifactType": "t",
                       "annotations": {REF_NAME_ANNOTATION: "app:1", "other": "y"}}],
    }).encode()
    top, entries = parse_index(raw, where="index.json")
    assert entries[0].ref_name == "app:1"
    assert entries[0].to_json()["platform"] == {"os": "linux", "architecture": "arm64"}
    assert entries[0].to_json()["artifactType"] == "t"
    assert top["annotations"] == {"top": "x"}


@pytest.mark.parametrize(
    "raw",
    [b"{", b"[]", b'{"schemaVersion":1,"manifests":[]}', b'{"schemaVersion":2}',
     b'{"schemaVersion":2,"manifests":[{"digest":"sha256:zz","size":1}]}',
     b'{"schemaVersion":2,"manifests":[{"digest":"sha256:' + b"a" * 64 + b'","size":-1}]}'],
)
def test_parse_index_refuses_corrupt_files(raw: bytes) -> None:
    with pytest.raises(CorruptStoreError, match=r"index\.json"):
        parse_index(raw, where="index.json")


def test_child_descriptors_of_manifest_and_index() -> None:
    image = simple_image(1, files=1, layers=2)
    children = child_descriptors(image.manifest, image.media_type)
    assert {d for _, d, _ in children} == {image.config_digest, *(layer.digest for layer in image.layers)}
    index = build_index([image])
    assert [d for _, d, _ in child_descriptors(index.manifest, index.media_type)] == [image.manifest_digest]
    assert child_descriptors(b"not json", None) == ()
    assert child_descriptors(image.config, "application/vnd.oci.image.config.v1+json") == ()


# --- layouts on disk ----------------------------------------------------------------------------------


def store_image(layout: OCILayout, image: BuiltImage | BuiltIndex, name: str | None) -> IndexEntry:
    for one in image.images if isinstance(image, BuiltIndex) else (image,):
        for digest, data in one.blobs():
            layout.put_blob(data, expected_digest=digest)
        layout.put_blob(one.manifest, expected_digest=one.manifest_digest)
    layout.put_blob(image.manifest, expected_digest=image.manifest_digest)
    new = IndexEntry.build(media_type=image.media_type, digest=image.manifest_digest, size=len(image.manifest),
                           ref_name=name)
    layout.add_entries([new])
    return new


def test_create_open_and_refuse_non_layouts(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="no such OCI layout"):
        OCILayout.open(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(LayoutError, match="no oci-layout"):
        OCILayout.open(tmp_path / "plain")
    layout = OCILayout.open(tmp_path / "new", create=True)
    assert json.loads((layout.path / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    assert layout.entries() == ()
    assert OCILayout.open(tmp_path / "new").path == layout.path
    (layout.path / "oci-layout").write_text('{"imageLayoutVersion":"2.0.0"}')
    with pytest.raises(LayoutError, match="unsupported imageLayoutVersion"):
        OCILayout.open(layout.path)


def test_blob_writer_verifies_and_leaves_nothing_behind(tmp_path: Path) -> None:
    layout = OCILayout.open(tmp_path / "l", create=True)
    data = b"hello blob"
    digest = sha256_digest(data)
    with layout.blob_writer(expected_digest=digest, expected_size=len(data)) as writer:
        writer.write(data[:4])
        writer.write(data[4:])
        assert writer.commit() == digest
    assert layout.blob_path(digest).read_bytes() == data
    with pytest.raises(BlobDigestError, match="content has digest"), layout.blob_writer(
        expected_digest=sha256_digest(b"other"), expected_size=len(data)
    ) as writer:
        writer.write(data)
        writer.commit()
    with pytest.raises(BlobDigestError, match="more than the 3 bytes"), layout.blob_writer(
        expected_digest=digest, expected_size=3
    ) as writer:
        writer.write(data)
    with pytest.raises(BlobDigestError, match="got 4 bytes"), layout.blob_writer(
        expected_digest=digest, expected_size=len(data)
    ) as writer:
        writer.write(data[:4])
        writer.commit()
    with pytest.raises(RuntimeError), layout.blob_writer(expected_digest=digest) as writer:
        writer.write(b"x")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in layout.path.iterdir()) == ["blobs", "index.json", "oci-layout"]
    assert not layout.has_blob(sha256_digest(b"other"))


def test_reading_a_corrupted_blob_fails_at_the_end(tmp_path: Path) -> None:
    layout = OCILayout.open(tmp_path / "l", create=True)
    digest = layout.put_blob(b"x" * 100)
    layout.blob_path(digest).write_bytes(b"y" * 100)
    with pytest.raises(BlobDigestError, match="corrupt"), layout.open_blob(digest, size=100) as fh:
        fh.read()
    with layout.open_blob(digest, verify=False) as fh:
        assert fh.read() == b"y" * 100


def test_add_replace_remove_and_prune(tmp_path: Path) -> None:
    layout = OCILayout.open(tmp_path / "l", create=True)
    one, two = simple_image(1, files=2), simple_image(2, files=2)
    store_image(layout, one, "quay.io/org/app:1.0")
    store_image(layout, two, "quay.io/org/other:2")
    assert layout.resolve("quay.io/org/app:1.0").digest == one.manifest_digest
    # Re-tagging app:1.0 to the second image replaces the entry; the first image's blobs become unreferenced.
    store_image(layout, two, "quay.io/org/app:1.0")
    assert [e.ref_name for e in layout.entries()] == ["quay.io/org/app:1.0", "quay.io/org/other:2"]
    assert layout.resolve("quay.io/org/app:1.0").digest == two.manifest_digest
    (layout.path / ".tether-blob-0123.partial").write_bytes(b"half")
    result = layout.prune()
    assert set(result.removed) == {one.manifest_digest, one.config_digest, *(x.digest for x in one.layers)}
    assert result.partials_removed == 1
    assert layout.verify() == []
    assert all(layout.has_blob(d) for d, _ in two.blobs())
    layout.remove_references(["quay.io/org/app:1.0", "quay.io/org/other:2"])
    layout.prune()
    assert list(layout.iter_blob_digests()) == []
    with pytest.raises(LayoutError, match="blob missing"):
        layout.add_entries([IndexEntry.build(media_type=one.media_type, digest=one.manifest_digest,
                                             size=len(one.manifest), ref_name="x")])


def test_verify_reports_missing_and_corrupt_blobs(tmp_path: Path) -> None:
    layout = OCILayout.open(tmp_path / "l", create=True)
    image = simple_image(3, files=1)
    store_image(layout, image, "app")
    layout.blob_path(image.layers[0].digest).unlink()
    layout.blob_path(image.config_digest).write_bytes(b"{}" + image.config[2:])
    problems = layout.verify()
    assert any("missing" in p and image.layers[0].digest in p for p in problems)
    assert any("corrupt" in p and image.config_digest in p for p in problems)


def test_skopeo_reads_what_tether_wrote_and_tether_reads_what_skopeo_wrote(tmp_path: Path) -> None:
    layout = OCILayout.open(tmp_path / "l", create=True)
    image = simple_image(4, files=2)
    other = simple_image(5, files=2, architecture="arm64")
    index = build_index([image, other])
    store_image(layout, image, "quay.io/org/app:1.0")
    store_image(layout, index, "127.0.0.1:5000/multi:2")
    out = json.loads(skopeo("inspect", "--raw", f"oci:{layout.path}:quay.io/org/app:1.0").stdout)
    assert out["config"]["digest"] == image.config_digest
    inspected = json.loads(skopeo("inspect", "--override-arch", "arm64", f"oci:{layout.path}:127.0.0.1:5000/multi:2"
                                  ).stdout)
    assert inspected["Digest"] == index.manifest_digest
    # skopeo writes an archive from our layout; we read it in place and find the same bytes.
    archive = tmp_path / "skopeo.tar"
    skopeo("copy", "--preserve-digests", f"oci:{layout.path}:quay.io/org/app:1.0", f"oci-archive:{archive}:app:1")
    with OCIArchive.open(archive) as arc:
        found = arc.resolve("app:1")
        assert found.digest == image.manifest_digest
        assert arc.read_blob(image.config_digest) == image.config
        with arc.open_blob(image.layers[1].digest, size=image.layers[1].size) as fh:
            assert fh.read() == image.layers[1].blob


def test_write_archive_atomically_and_skopeo_reads_it(tmp_path: Path) -> None:
    layout = OCILayout.open(tmp_path / "l", create=True)
    image = simple_image(6, files=2)
    unreferenced = layout.put_blob(b"left over")
    store_image(layout, image, "quay.io/org/app:1.0")
    archive = tmp_path / "out" / "mirror.tar"
    write_oci_archive(layout, archive)
    assert sorted(os.listdir(archive.parent)) == ["mirror.tar"]
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert names[:2] == ["oci-layout", "index.json"]
        assert f"blobs/sha256/{unreferenced.split(':')[1]}" not in names
        assert all(m.uid == 0 and m.mtime == 0 for m in tar.getmembers())
    out = json.loads(skopeo("inspect", "--raw", f"oci-archive:{archive}:quay.io/org/app:1.0").stdout)
    assert out["config"]["digest"] == image.config_digest
    # Our reader, and copying an archive back into a fresh layout.
    with OCIArchive.open(archive) as arc:
        assert arc.resolve(None).ref_name == "quay.io/org/app:1.0"
        copy = OCILayout.open(tmp_path / "copy", create=True)
        assert arc.copy_into(copy) == len(image.blobs()) + 1
        assert arc.copy_into(copy) == 0
    assert copy.verify() == []
    assert copy.resolve("quay.io/org/app:1.0").digest == image.manifest_digest
    # A layout with a corrupted blob cannot be archived, and leaves no partial file behind.
    layout.blob_path(image.layers[0].digest).write_bytes(b"\0" * image.layers[0].size)
    with pytest.raises(BlobDigestError):
        write_oci_archive(layout, archive)
    assert sorted(os.listdir(archive.parent)) == ["mirror.tar"]


def test_archive_refuses_non_archives(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="no such file"):
        OCIArchive.open(tmp_path / "none.tar")
    (tmp_path / "junk.tar").write_bytes(b"\x01" * 1024)
    with pytest.raises(LayoutError):
        OCIArchive.open(tmp_path / "junk.tar")
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w"):
        pass
    with pytest.raises(LayoutError, match="not an OCI archive"):
        OCIArchive.open(empty)


_names_strategy = st.sampled_from(["a:1", "a:2", "quay.io/x/y:1", None])


@given(existing=st.lists(st.tuples(_names_strategy, st.integers(0, 5)), max_size=8),
       new=st.lists(st.tuples(_names_strategy, st.integers(0, 5)), max_size=5))
def test_merge_entries_properties(existing: list[tuple[str | None, int]], new: list[tuple[str | None, int]]) -> None:
    def make(name: str | None, seed: int) -> IndexEntry:
        return entry(str(seed), name)

    before = [make(n, d) for n, d in existing]
    added = [make(n, d) for n, d in new]
    merged = merge_entries(before, added)
    # The last added entry of each name is there, once; every unnamed added entry is there.
    last = {e.ref_name: e for e in added if e.ref_name is not None}
    for name, e in last.items():
        assert [m for m in merged if m.ref_name == name] == [e]
    assert all(e in merged for e in added if e.ref_name is None)
    # Names the merge did not touch keep all their entries, in order.
    touched = {e.ref_name for e in added}
    assert [e for e in before if e.ref_name not in touched and e.ref_name is not None] == [
        e for e in merged if e.ref_name not in touched and e.ref_name is not None]
    # Merging the same entries again changes nothing.
    assert merge_entries(merged, added) == merged
