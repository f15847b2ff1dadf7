"""engine/copy/sources/layout.py: oci: and oci-archive: image sources (layouts written by the harness and skopeo)."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from tests.harness.images import build_index, sha256_digest, simple_image, write_oci_layout
from tests.harness.podman import skopeo
from tether.engine.copy.clients import RegistryClients
from tether.engine.copy.image import ImageSource, PullRequest
from tether.engine.copy.sources import open_image_source
from tether.engine.copy.sources.layout import (
    LayoutSourceError,
    find_entry_for_image,
    normalize_layout_name,
    open_bound_layout_source,
    open_layout_source,
)
from tether.engine.options import CommonOptions
from tether.registry.manifest import Platform
from tether.registry.reference import OCIArchiveName, OCILayoutName, parse_image_name
from tether.store.errors import ImageUnknownError
from tether.store.oci import BlobDigestError, IndexEntry, OCILayout, write_oci_archive


@pytest.mark.parametrize(
    ("name", "transport", "expected"),
    [
        ("quay.io/org/app:1.0", "oci", "quay.io/org/app:1.0"),
        ("quay.io/org/app", "oci", "quay.io/org/app:latest"),
        ("app:1", "oci", "docker.io/library/app:1"),
        ("org/app", "oci", "docker.io/org/app:latest"),
        ("app:1", "oci-archive", "localhost/app:1"),
        ("127.0.0.1:5000/app@sha256:" + "a" * 64, "oci", "127.0.0.1:5000/app@sha256:" + "a" * 64),
        ("Not_A_Reference", "oci", None),
    ],
)
def test_normalize_layout_name_as_podman_names_pulled_images(name: str, transport: str, expected: str | None) -> None:
    got = normalize_layout_name(name, transport=transport)  # type: ignore[arg-type]
    assert (str(got) if got is not None else None) == expected


def test_find_entry_for_image_exact_then_normalized() -> None:
    def e(name: str, seed: str) -> IndexEntry:
        return IndexEntry.build(media_type="application/vnd.oci.image.manifest.v1+json",
                                digest=sha256_digest(seed.encode()), size=1, ref_name=name)

    entries = [e("quay.io/org/app:latest", "a"), e("docker.io/library/alpine:3", "b"), e("x", "c")]
    assert find_entry_for_image(entries, "quay.io/org/app") == entries[0]
    assert find_entry_for_image(entries, "docker.io/alpine:3") == entries[1]
    assert find_entry_for_image(entries, "x") == entries[2]
    assert find_entry_for_image(entries, "quay.io/org/app:2") is None


def layout_name(text: str) -> OCILayoutName | OCIArchiveName:
    parsed = parse_image_name(text)
    assert isinstance(parsed, OCILayoutName | OCIArchiveName)
    return parsed


@pytest.fixture
def layout_dir(tmp_path: Path) -> Path:
    amd = simple_image(11, files=2, architecture="amd64")
    arm = simple_image(12, files=2, architecture="arm64", variant="v8")
    write_oci_layout(tmp_path / "layout", {
        "quay.io/org/multi:1": build_index([amd, arm]),
        "app:2": simple_image(13, files=2),
    })
    return tmp_path / "layout"


async def read_all(source: ImageSource, platform: Platform | None) -> tuple[bytes, list[bytes]]:
    image = await source.resolve(platform=platform)
    blobs = []
    for layer in image.manifest.layers:
        async with source.open_blob(layer) as chunks:
            blobs.append(b"".join([c async for c in chunks]))
    return image.config_raw, blobs


async def test_a_pull_resolves_platforms_from_a_layout(layout_dir: Path) -> None:
    arm = simple_image(12, files=2, architecture="arm64", variant="v8")
    async with AsyncExitStack() as stack:
        # the copy engine's dispatch: an oci: name opens a layout source (no registry client is opened)
        clients = RegistryClients(stack, CommonOptions(), connections=1)
        source = await open_image_source(PullRequest(name=f"oci:{layout_dir}:quay.io/org/multi:1"), clients=clients,
                                         stack=stack)
        assert isinstance(source, ImageSource)
        assert source.local_names == ("quay.io/org/multi:1",)
        image = await source.resolve(platform=Platform("linux", "arm64", "v8"))
        assert image.manifest_digest == arm.manifest_digest
        assert image.index is not None
        assert image.index.digest == build_index([simple_image(11, files=2), arm]).manifest_digest
        assert image.transport == "oci"
        config, blobs = await read_all(source, Platform("linux", "arm64", "v8"))
        assert config == arm.config
        assert blobs == [layer.blob for layer in arm.layers]


async def test_archive_source_names_and_refusals(layout_dir: Path, tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    write_oci_archive(OCILayout.open(layout_dir), archive)
    async with open_layout_source(layout_name(f"oci-archive:{archive}:app:2")) as source:
        assert source.local_names == ("localhost/app:2",)
        config, blobs = await read_all(source, None)
        assert config == simple_image(13, files=2).config
        assert blobs == [layer.blob for layer in simple_image(13, files=2).layers]
    async with open_layout_source(layout_name(f"oci:{layout_dir}:@1")) as source:
        assert source.local_names == ()
        assert (await source.read_top()).digest == simple_image(13, files=2).manifest_digest
    with pytest.raises(ImageUnknownError, match="holds 2 images"):
        async with open_layout_source(layout_name(f"oci:{layout_dir}")):
            pass
    with pytest.raises(ImageUnknownError, match="no image named"):
        async with open_layout_source(layout_name(f"oci-archive:{archive}:nope")):
            pass


async def test_corrupt_layer_fails_at_the_end_of_the_stream(layout_dir: Path) -> None:
    image = simple_image(13, files=2)
    blob = layout_dir / "blobs" / "sha256" / image.layers[0].digest.split(":")[1]
    blob.write_bytes(bytes(len(image.layers[0].blob)))
    async with open_layout_source(layout_name(f"oci:{layout_dir}:app:2")) as source:
        resolved = await source.resolve(platform=None)
        with pytest.raises(BlobDigestError):
            async with source.open_blob(resolved.manifest.layers[0]) as chunks:
                async for _ in chunks:
                    pass


async def test_bound_layout_source_finds_images_by_their_full_reference(layout_dir: Path, tmp_path: Path) -> None:
    async with open_bound_layout_source(f"oci:{layout_dir}", "quay.io/org/multi:1") as source:
        assert source.local_names == ("quay.io/org/multi:1",)
        image = await source.resolve(platform=Platform("linux", "amd64"))
        assert image.manifest_digest == simple_image(11, files=2).manifest_digest
    with pytest.raises(LayoutSourceError, match=r"does not hold quay.io/org/other:1 \(it holds: quay.io/org/multi:1"):
        async with open_bound_layout_source(f"oci:{layout_dir}", "quay.io/org/other:1"):
            pass
    # A layout skopeo wrote (skopeo names the entry with the REF we give it).
    skopeo_dir = tmp_path / "skopeo"
    skopeo("copy", f"oci:{layout_dir}:app:2", f"oci:{skopeo_dir}:registry.example/app:2")
    async with open_bound_layout_source(f"oci:{skopeo_dir}", "registry.example/app:2") as source:
        config, _ = await read_all(source, None)
        assert config == simple_image(13, files=2).config
