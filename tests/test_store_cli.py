"""``tether images``, ``tether rmi`` and ``tether check`` against stores podman wrote."""

from __future__ import annotations

import json

import pytest

from tests.harness import images as factory
from tests.harness.podman import Podman
from tests.harness.registry import RunningRegistry
from tether.engine.cli.main import main
from tether.store.containers_storage import Store


def test_images_json_matches_podman(registry: RunningRegistry, podman: Podman,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    one = factory.simple_image(41, files=2, labels={"org.example": "one"})
    index = factory.build_index([factory.simple_image(42, files=2), factory.simple_image(43, files=2,
                                                                                         architecture="arm64")])
    factory.push_image(registry.host, "store/cli-one:v1", one)
    factory.push_image(registry.host, "store/cli-multi:v1", index)
    podman.pull(f"{registry.host}/store/cli-one:v1")
    podman.pull(f"{registry.host}/store/cli-multi:v1")
    podman.run("tag", f"{registry.host}/store/cli-one:v1", "localhost/extra:two")
    expected = sorted(podman.images(), key=lambda i: i["Id"])  # equal Created: podman's order is arbitrary
    assert main(["images", "--root", str(podman.root), "--format", "json"]) == 0
    got = sorted(json.loads(capsys.readouterr().out), key=lambda i: i["Id"])
    keys = ("Id", "Names", "Digest", "Size", "Created", "CreatedAt", "Labels", "History", "VirtualSize")
    assert [{k: i[k] for k in keys} for i in got] == [{k: i[k] for k in keys} for i in expected]
    assert [sorted(i["RepoDigests"]) for i in got] == [sorted(i["RepoDigests"]) for i in expected]
    assert [list(i) for i in got] == [list(i) for i in expected]

    assert main(["images", "--root", str(podman.root)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert any(line.startswith("localhost/extra ") and one.image_id[:12] in line for line in table)

    # rmi by one of two names only untags; by id deletes image and its layers
    assert main(["rmi", "--root", str(podman.root), "localhost/extra:two"]) == 0
    assert capsys.readouterr().out == "Untagged: localhost/extra:two\n"
    assert main(["rmi", "--root", str(podman.root), one.image_id[:12], "no-such-image"]) == 1
    out = capsys.readouterr()
    assert f"Deleted: {one.image_id}" in out.out and "no-such-image" in out.err
    remaining = podman.images()
    assert [i["Id"] for i in remaining] == [index.images[0].image_id]
    assert len(Store.open(podman.root).list_layers()) == 2


def test_check_finds_tampering(registry: RunningRegistry, podman: Podman, capsys: pytest.CaptureFixture[str]) -> None:
    image = factory.simple_image(44, files=3)
    factory.push_image(registry.host, "store/cli-check:v1", image)
    podman.pull(f"{registry.host}/store/cli-check:v1")
    assert main(["check", "--root", str(podman.root)]) == 0
    assert "no problems" in capsys.readouterr().out
    store = Store.open(podman.root)
    top = store.layer_chain(store.find_image(image.image_id).top_layer or "")[-1]
    victim = next(p for p in (podman.root / "overlay" / top.id / "diff").rglob("*") if p.is_file())
    data = bytearray(victim.read_bytes())
    data[0] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert main(["check", "--root", str(podman.root), "--format", "json"]) == 1
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert len(problems) == 1 and top.id in problems[0]
