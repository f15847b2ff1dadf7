"""engine/mirror.py pure parts: destinations, skopeo-sync naming, index filtering, the registries.conf drop-in."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tether.engine.copy.mirror_naming import (
    DestinationName,
    MirrorMapping,
    destination_reference,
    filter_index,
    mirror_repository,
    parse_destination,
    render_registries_conf,
    scoped_host_component,
)
from tether.engine.errors import UsageError
from tether.registry.reference import Reference, parse_reference
from tether.registry.registries_conf import load_registries_conf, pull_sources


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("oci:/srv/mirror", DestinationName(kind="oci", path=Path("/srv/mirror"))),
        ("oci-archive:/media/usb/m.tar", DestinationName(kind="oci-archive", path=Path("/media/usb/m.tar"))),
        ("docker://127.0.0.1:5000", DestinationName(kind="docker", host="127.0.0.1:5000")),
        ("docker://mirror.lan/ns/sub/", DestinationName(kind="docker", host="mirror.lan", namespace="ns/sub")),
    ],
)
def test_parse_destination(text: str, expected: DestinationName) -> None:
    assert parse_destination(text) == expected


@pytest.mark.parametrize(
    "text",
    ["oci:", "oci:/d:ref", "docker://", "docker://Bad_Host", "docker://mirror/ns", "docker://h.lan/UPPER", "dir:/x",
     "/plain"],
)
def test_parse_destination_refuses(text: str) -> None:
    with pytest.raises(UsageError):
        parse_destination(text)


def test_naming_as_skopeo_sync() -> None:
    ref = parse_reference("quay.io/org/team/app:1.0")
    # cmd/skopeo/sync.go: destSuffix = path.Base(ref.DockerReference().String()) unless --scoped.
    assert mirror_repository(ref) == "app"
    assert mirror_repository(ref, namespace="mirror") == "mirror/app"
    assert mirror_repository(ref, namespace="mirror", scoped=True) == "mirror/quay.io/org/team/app"
    ported = parse_reference("127.0.0.1:5000/org/app@sha256:" + "a" * 64)
    assert mirror_repository(ported, scoped=True) == "127.0.0.1_5000/org/app"
    dest = parse_destination("docker://mirror.lan:5001/ns")
    assert str(destination_reference(dest, ref)) == "mirror.lan:5001/ns/app:1.0"
    assert str(destination_reference(dest, ported, scoped=True)) == (
        "mirror.lan:5001/ns/127.0.0.1_5000/org/app@sha256:" + "a" * 64
    )
    assert scoped_host_component("Registry.Example.COM") == "registry.example.com"
    assert scoped_host_component("[fe80::1]:5000") == "fe80--1_5000"  # IPv6 literal: dashes, never a colon
    with pytest.raises(UsageError):
        scoped_host_component("[::1]:5000")


def test_filter_index_keeps_entries_verbatim() -> None:
    entries: list[dict[str, Any]] = [
        {"mediaType": "m", "digest": f"sha256:{c * 64}", "size": 1, "platform": {"os": "linux", "architecture": a},
         "annotations": {"x": a}} for c, a in (("a", "amd64"), ("b", "arm64"))]
    raw = json.dumps({"schemaVersion": 2, "mediaType": "i", "annotations": {"top": "1"}, "manifests": entries}).encode()
    assert filter_index(raw, [e["digest"] for e in entries]) is raw
    narrowed = json.loads(filter_index(raw, ["sha256:" + "b" * 64]))
    assert narrowed["manifests"] == [entries[1]]
    assert narrowed["annotations"] == {"top": "1"}


def test_registries_conf_dropin_routes_exactly_the_synced_repositories(tmp_path: Path) -> None:
    main = tmp_path / "registries.conf"
    main.write_text('[[registry]]\nlocation = "src.example:5000"\ninsecure = true\n')
    conf = load_registries_conf(path=main, environ={})
    text = render_registries_conf(
        [
            MirrorMapping(Reference("src.example:5000", "org/app"), "mirror.lan:5001/ns/app", by_tag=True,
                          by_digest=False),
            MirrorMapping(Reference("quay.io", "org/pinned"), "mirror.lan:5001/ns/pinned", by_tag=False,
                          by_digest=True),
        ],
        mirror_insecure=True,
        conf=conf,
    )
    parsed = tomllib.loads(text)
    assert [r["prefix"] for r in parsed["registry"]] == ["quay.io/org/pinned", "src.example:5000/org/app"]
    app = parsed["registry"][1]
    assert app["insecure"] is True  # carried over from the table the longer prefix replaces
    assert app["mirror"] == [{"location": "mirror.lan:5001/ns/app", "insecure": True, "pull-from-mirror": "all"}]
    assert parsed["registry"][0]["mirror"][0]["pull-from-mirror"] == "digest-only"
    # containers/image semantics, through tether's own registries.conf reader: mirror first, primary last.
    alone = tmp_path / "alone.conf"
    alone.write_text(text)
    conf2 = load_registries_conf(path=alone, environ={})
    sources = pull_sources(conf2, parse_reference("src.example:5000/org/app:1"))
    assert [str(s.reference) for s in sources] == ["mirror.lan:5001/ns/app:1", "src.example:5000/org/app:1"]
    assert [s.mirror for s in sources] == [True, False]
    other = pull_sources(conf2, parse_reference("src.example:5000/org/other:1"))
    assert [str(s.reference) for s in other] == ["src.example:5000/org/other:1"]
    tag_pull = pull_sources(conf2, parse_reference("quay.io/org/pinned:1"))
    assert [s.mirror for s in tag_pull] == [False]


def test_regenerating_the_dropin_with_the_previous_one_loaded_is_stable(tmp_path: Path) -> None:
    mapping = MirrorMapping(Reference("src.example:5000", "org/app"), "mirror.lan:5001/app", by_tag=True,
                            by_digest=False)
    first = render_registries_conf([mapping], mirror_insecure=False)
    loaded = tmp_path / "with-dropin.conf"
    loaded.write_text(first)
    again = render_registries_conf([mapping], mirror_insecure=False, conf=load_registries_conf(path=loaded, environ={}))
    assert tomllib.loads(again) == tomllib.loads(first)


@pytest.mark.system_defaults
def test_dropin_applies_as_a_registries_conf_d_file_over_the_hosts_main_file(tmp_path: Path) -> None:
    root = tmp_path / "host"
    etc = root / "etc/containers"
    (etc / "registries.conf.d").mkdir(parents=True)
    (etc / "registries.conf").write_text(
        'unqualified-search-registries = ["src.example:5000"]\n\n'
        '[[registry]]\nlocation = "src.example:5000"\ninsecure = true\n'
    )
    host_conf = load_registries_conf(root=root, environ={})
    text = render_registries_conf(
        [MirrorMapping(Reference("src.example:5000", "org/app"), "mirror.lan:5001/app", by_tag=True, by_digest=False)],
        mirror_insecure=True, conf=host_conf,
    )
    (etc / "registries.conf.d" / "50-tether-mirror.conf").write_text(text)
    merged = load_registries_conf(root=root, environ={})
    assert merged.unqualified_search_registries == ("src.example:5000",)  # the main file still applies
    sources = pull_sources(merged, parse_reference("src.example:5000/org/app:1"))
    assert [(str(s.reference), s.insecure, s.mirror) for s in sources] == [
        ("mirror.lan:5001/app:1", True, True),
        ("src.example:5000/org/app:1", True, False),
    ]
    others = pull_sources(merged, parse_reference("src.example:5000/org/other:1"))
    assert [(str(s.reference), s.insecure) for s in others] == [("src.example:5000/org/other:1", True)]
