"""Manifests, configs and platform choice (sans-IO tables)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from tether.registry.errors import ManifestError, PlatformError
from tether.registry.manifest import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_SCHEMA1_SIGNED,
    MAX_MANIFEST_SIZE,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    Descriptor,
    ImageIndex,
    ImageManifest,
    Platform,
    choose_platform,
    host_platform,
    parse_image_config,
    parse_manifest,
    parse_platform,
    parse_rfc3339,
    wanted_platforms,
)

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


def manifest_obj(media_type: str | None = OCI_MANIFEST, config_type: str = OCI_CONFIG) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "schemaVersion": 2,
        "config": {"mediaType": config_type, "digest": D1, "size": 10},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": D2, "size": 20, "annotations": {"a": "b"}}],
    }
    if media_type is not None:
        obj["mediaType"] = media_type
    return obj


def index_obj(media_type: str | None = OCI_INDEX, entries: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "schemaVersion": 2,
        "manifests": entries
        if entries is not None
        else [
            {
                "mediaType": OCI_MANIFEST,
                "digest": D1,
                "size": 5,
                "platform": {"os": "linux", "architecture": "amd64"},
            }
        ],
    }
    if media_type is not None:
        obj["mediaType"] = media_type
    return obj


def raw(obj: object) -> bytes:
    return json.dumps(obj).encode()


# (body, Content-Type, expected kind) for manifests that parse
GOOD = [
    (manifest_obj(), OCI_MANIFEST, OCI_MANIFEST),
    (manifest_obj(None), OCI_MANIFEST, OCI_MANIFEST),  # mediaType optional in OCI manifests
    (manifest_obj(), "application/json", OCI_MANIFEST),  # generic Content-Type: from the body
    (manifest_obj(None), None, OCI_MANIFEST),  # guessed from the fields
    (manifest_obj(None, DOCKER_CONFIG), "text/plain", DOCKER_MANIFEST),
    (manifest_obj(DOCKER_MANIFEST, DOCKER_CONFIG), DOCKER_MANIFEST, DOCKER_MANIFEST),
    (manifest_obj(), OCI_MANIFEST + "; charset=utf-8", OCI_MANIFEST),
    (index_obj(), OCI_INDEX, OCI_INDEX),
    (index_obj(None), None, OCI_INDEX),
    (index_obj(DOCKER_MANIFEST_LIST), DOCKER_MANIFEST_LIST, DOCKER_MANIFEST_LIST),
]


@pytest.mark.parametrize(("body", "content_type", "kind"), GOOD)
def test_parse_manifest_good(body: dict[str, Any], content_type: str | None, kind: str) -> None:
    parsed = parse_manifest(raw(body), content_type)
    assert parsed.media_type == kind
    if isinstance(parsed, ImageManifest):
        assert parsed.config == Descriptor(parsed.config.media_type, D1, 10)
        assert parsed.layers[0].digest == D2 and parsed.layers[0].size == 20
        assert dict(parsed.layers[0].annotations) == {"a": "b"}
    else:
        assert isinstance(parsed, ImageIndex)
        assert parsed.manifests[0].platform == Platform("linux", "amd64")


# (body bytes, Content-Type, a fragment of the message)
BAD: list[tuple[bytes, str | None, str]] = [
    (raw(manifest_obj(OCI_MANIFEST)), DOCKER_MANIFEST, "declares mediaType"),
    (raw(index_obj(OCI_INDEX)), OCI_MANIFEST, "declares mediaType"),
    (raw({**manifest_obj(None), "manifests": []}), OCI_MANIFEST, "ambiguous"),
    (raw({**index_obj(None), "layers": []}), OCI_INDEX, "ambiguous"),
    (raw({"schemaVersion": 1, "name": "x", "fsLayers": []}), DOCKER_SCHEMA1_SIGNED, "schema1"),
    (raw({"schemaVersion": 1, "name": "x", "fsLayers": [], "signatures": []}), "application/json", "schema1"),
    (raw({"schemaVersion": 1, "name": "x"}), None, "schema1"),
    (b"not json", OCI_MANIFEST, "not valid JSON"),
    (b"[]", OCI_MANIFEST, "not a JSON object"),
    (raw(manifest_obj("application/vnd.oci.artifact.manifest.v1+json")), None, "unsupported manifest type"),
    (raw({**manifest_obj(), "schemaVersion": 3}), OCI_MANIFEST, "schemaVersion"),
    (raw({**manifest_obj(), "layers": [{"mediaType": "x", "digest": "sha256:abc", "size": 1}]}), None, "digest"),
    (raw({**manifest_obj(), "layers": [{"mediaType": "x", "digest": "md5:" + "0" * 32, "size": 1}]}), None,
     "digest"),
    (raw({**manifest_obj(), "layers": [{"mediaType": "x", "digest": D1, "size": -1}]}), None, "size"),
    (raw({**manifest_obj(), "layers": [{"mediaType": "x", "digest": D1, "size": "1"}]}), None, "size"),
    (raw({**manifest_obj(), "config": None}), None, "config descriptor"),
    (b" " * (MAX_MANIFEST_SIZE + 1), OCI_MANIFEST, "limit"),
]


@pytest.mark.parametrize(("body", "content_type", "fragment"), BAD)
def test_parse_manifest_refused(body: bytes, content_type: str | None, fragment: str) -> None:
    with pytest.raises(ManifestError, match=fragment):
        parse_manifest(body, content_type)


def test_schema1_message_says_so() -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(raw({"schemaVersion": 1}), "application/vnd.docker.distribution.manifest.v1+json")
    assert "schema1" in str(info.value) and "not support" in str(info.value)


def config_obj(**extra: Any) -> dict[str, Any]:
    return {
        "architecture": "arm64",
        "os": "linux",
        "variant": "v8",
        "created": "2024-05-06T07:08:09.123456789Z",
        "author": "me",
        "config": {"Env": ["PATH=/bin", "A=b"], "Labels": {"l": "v"}},
        "rootfs": {"type": "layers", "diff_ids": [D2, D3]},
        **extra,
    }


def test_parse_image_config() -> None:
    config = parse_image_config(raw(config_obj()))
    assert config.diff_ids == (D2, D3)
    assert config.created == datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    assert (config.os, config.architecture, config.variant) == ("linux", "arm64", "v8")
    assert config.env == ("PATH=/bin", "A=b")
    assert dict(config.labels) == {"l": "v"}
    assert config.author == "me" and config.docker_version is None
    assert config.raw["rootfs"]["type"] == "layers"


def test_parse_image_config_minimal() -> None:
    config = parse_image_config(raw({"rootfs": {"type": "layers", "diff_ids": []}}))
    assert config.created is None and config.env == () and dict(config.labels) == {}
    assert config.os == "" and config.variant is None


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        ({"rootfs": {"type": "other", "diff_ids": []}}, "rootfs.type"),
        ({}, "rootfs"),
        ({"rootfs": {"type": "layers", "diff_ids": ["sha256:zz"]}}, "diff_ids"),
        (config_obj(created="yesterday"), "RFC 3339"),
        (config_obj(config={"Env": "PATH=/"}), "Env"),
        (config_obj(config={"Labels": {"a": 1}}), "Labels"),
    ],
)
def test_parse_image_config_refused(obj: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ManifestError, match=fragment):
        parse_image_config(raw(obj))


@pytest.mark.parametrize(
    ("text", "nanos", "offset_minutes"),
    [
        ("2024-01-02T03:04:05Z", 0, 0),
        ("2024-01-02T03:04:05.5Z", 500_000_000, 0),
        ("2024-01-02T03:04:05.123456789+02:00", 123_456_789, 120),
        ("2024-01-02T03:04:05.000000001-01:30", 1, -90),
    ],
)
def test_parse_rfc3339(text: str, nanos: int, offset_minutes: int) -> None:
    when, got_nanos = parse_rfc3339(text)
    assert got_nanos == nanos
    offset = when.utcoffset()
    assert offset is not None and offset.total_seconds() == offset_minutes * 60


# ---- platforms


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("linux/amd64", Platform("linux", "amd64")),
        ("linux/arm64/v8", Platform("linux", "arm64", "v8")),
        ("linux/arm/7", Platform("linux", "arm", "v7")),
        ("Linux/x86_64", Platform("linux", "amd64")),
        ("linux/aarch64", Platform("linux", "arm64")),
        ("linux/armhf", Platform("linux", "arm", "v7")),
        ("windows/amd64", Platform("windows", "amd64")),
    ],
)
def test_parse_platform(text: str, expected: Platform) -> None:
    assert parse_platform(text) == expected


@pytest.mark.parametrize("text", ["linux", "linux/", "/amd64", "a/b/c/d", ""])
def test_parse_platform_refused(text: str) -> None:
    with pytest.raises(PlatformError, match="invalid platform"):
        parse_platform(text)


def test_host_platform_is_linux_with_a_go_architecture() -> None:
    host = host_platform()
    assert host.os == "linux"
    assert host.architecture in {"amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64"}


@pytest.mark.parametrize(
    ("wanted", "variants"),
    [
        (Platform("linux", "amd64"), [None]),
        (Platform("linux", "arm64", "v8"), ["v8", None]),
        (Platform("linux", "arm64"), [None, "v8"]),
        (Platform("linux", "arm", "v7"), ["v7", "v6", "v5", None]),
        (Platform("linux", "arm", "v8"), ["v8", "v7", "v6", "v5", None]),
        (Platform("linux", "arm"), [None, "v8", "v7", "v6", "v5"]),
        (Platform("linux", "riscv64", "rva23"), ["rva23", None]),
    ],
)
def test_wanted_platforms(wanted: Platform, variants: list[str | None]) -> None:
    assert [p.variant for p in wanted_platforms(wanted)] == variants


def entry(digest: str, platform: dict[str, str] | None) -> dict[str, Any]:
    e: dict[str, Any] = {"mediaType": OCI_MANIFEST, "digest": digest, "size": 1}
    if platform is not None:
        e["platform"] = platform
    return e


def index(entries: list[dict[str, Any]], media_type: str = OCI_INDEX) -> ImageIndex:
    parsed = parse_manifest(raw(index_obj(media_type, entries)), media_type)
    assert isinstance(parsed, ImageIndex)
    return parsed


AMD64 = {"os": "linux", "architecture": "amd64"}
ARM64 = {"os": "linux", "architecture": "arm64"}
ARM64V8 = {"os": "linux", "architecture": "arm64", "variant": "v8"}
ARMV6 = {"os": "linux", "architecture": "arm", "variant": "v6"}
ARMV7 = {"os": "linux", "architecture": "arm", "variant": "v7"}


@pytest.mark.parametrize(
    ("entries", "wanted", "chosen"),
    [
        ([entry(D1, ARM64), entry(D2, AMD64)], Platform("linux", "amd64"), D2),
        # exact variant beats the variant-less entry even when listed later
        ([entry(D1, ARM64), entry(D2, ARM64V8)], Platform("linux", "arm64", "v8"), D2),
        # arm64/v8 wanted, only a variant-less arm64 entry: taken
        ([entry(D1, AMD64), entry(D2, ARM64)], Platform("linux", "arm64", "v8"), D2),
        # arm v7 host: v7 > v6
        ([entry(D1, ARMV6), entry(D2, ARMV7)], Platform("linux", "arm", "v7"), D2),
        # arm v7 host, only v6: fallback down the list
        ([entry(D1, ARM64), entry(D2, ARMV6)], Platform("linux", "arm", "v7"), D2),
        # no variant wanted: first matching architecture
        ([entry(D1, ARMV6), entry(D2, ARMV7)], Platform("linux", "arm"), D1),
        # entries without platform: last resort only
        ([entry(D1, None), entry(D2, AMD64)], Platform("linux", "amd64"), D2),
        ([entry(D1, None), entry(D2, ARM64)], Platform("linux", "amd64"), D1),
        # first of equal matches
        ([entry(D1, AMD64), entry(D2, AMD64)], Platform("linux", "amd64"), D1),
    ],
)
def test_choose_platform(entries: list[dict[str, Any]], wanted: Platform, chosen: str) -> None:
    assert choose_platform(index(entries), wanted).digest == chosen


def test_choose_platform_errors_like_containers_image() -> None:
    with pytest.raises(PlatformError) as info:
        choose_platform(index([entry(D1, AMD64)]), Platform("linux", "arm", "v7"))
    assert str(info.value) == 'no image found in image index for architecture "arm", variant "v7", OS "linux"'
    # a Docker manifest list never picks an entry without a platform
    docker = [{**entry(D1, None), "mediaType": DOCKER_MANIFEST}]
    with pytest.raises(PlatformError) as info:
        choose_platform(index(docker, DOCKER_MANIFEST_LIST), Platform("linux", "amd64"))
    assert str(info.value) == 'no image found in manifest list for architecture "amd64", variant "", OS "linux"'


def test_docker_layer_type_constant() -> None:
    parsed = parse_manifest(
        raw({**manifest_obj(DOCKER_MANIFEST, DOCKER_CONFIG),
             "layers": [{"mediaType": DOCKER_LAYER_GZIP, "digest": D2, "size": 3}]}),
        DOCKER_MANIFEST,
    )
    assert isinstance(parsed, ImageManifest) and parsed.layers[0].media_type == DOCKER_LAYER_GZIP
