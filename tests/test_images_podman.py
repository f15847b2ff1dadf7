"""Issue 15 item 9: ``tether images``, ``rmi`` and ``inspect`` print what podman 4.3 and skopeo 1.9 print for the
same store: tether writes the store (``tether pull`` from docker-registry), then both read it with the same
arguments and stdout is compared byte for byte.

The store holds ``ns/app:1`` and ``ns/app:2`` (one image with labels), ``other/web:latest``, and the two images of
a two-platform index pulled one platform after the other (the first then has no name, "dangling"); each image has
its own creation time, so the newest-first order is the same for both tools.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import images as factory
from tests.harness.cli import StoreArgs, tether
from tests.harness.podman import Podman, short_runroot, skopeo
from tests.harness.registry import RunningRegistry

APP = factory.simple_image(1561, labels={"org.x": "1", "b": "two"}, created="2023-11-14T22:13:20Z")
WEB = factory.simple_image(1562, created="2024-01-02T03:04:05Z")
AMD = factory.simple_image(1563, architecture="amd64", created="2022-05-06T07:08:09Z")
ARM = factory.simple_image(1564, architecture="arm64", created="2021-05-06T07:08:09Z")


def populate(args: StoreArgs, host: str) -> None:
    for extra, ref in (((), "ns/app:1"), ((), "ns/app:2"), ((), "other/web:latest"),
                       (("--platform", "linux/arm64"), "multi/img:1"), (("--platform", "linux/amd64"), "multi/img:1")):
        done = tether("pull", *args.pull, "--progress", "none", *extra, f"{host}/{ref}")
        assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def store(registry: RunningRegistry, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[StoreArgs, Podman]]:
    """A store tether wrote, and podman on it."""
    host = registry.host
    for ref, image in (("ns/app:1", APP), ("ns/app:2", APP), ("other/web:latest", WEB)):
        factory.push_image(host, ref, image)
    factory.push_image(host, "multi/img:1", factory.build_index([AMD, ARM]))
    tmp = tmp_path_factory.mktemp("images")
    args = StoreArgs.make(tmp, host)
    populate(args, host)
    podman = Podman(root=args.root, runroot=short_runroot())
    try:
        yield args, podman
    finally:
        for mount in (podman.root / "overlay", podman.runroot):
            subprocess.run(["umount", "-R", "-l", str(mount)], capture_output=True)
        shutil.rmtree(podman.runroot, ignore_errors=True)


def compare(store: tuple[StoreArgs, Podman], cases: list[list[str]], *, verb: str = "images") -> None:
    args, podman = store
    mismatches = []
    for case in cases:
        ours = tether(verb, *args.store, *case)
        theirs = podman.run(verb, *case, check=False)
        if (ours.stdout, ours.returncode == 0) != (theirs.stdout, theirs.returncode == 0):
            mismatches.append(f"{verb} {case}:\n--- podman ({theirs.returncode})\n{theirs.stdout}{theirs.stderr}"
                              f"--- tether ({ours.returncode})\n{ours.stdout}{ours.stderr}")
    assert not mismatches, "\n".join(mismatches)


def test_the_listing_and_its_flags(store: tuple[StoreArgs, Podman]) -> None:
    compare(store, [[], ["--digests"], ["--no-trunc"], ["--digests", "--no-trunc"], ["-q"], ["-q", "--no-trunc"],
                    ["--quiet", "--digests"], ["--noheading"], ["-n", "--digests"], ["--all"],
                    ["--format", "json"], ["--format", "{{json .}}"]])


def test_go_templates(store: tuple[StoreArgs, Podman]) -> None:
    everything = ("{{.Repository}} {{.Tag}} {{.Digest}} {{.ID}} {{.Created}} {{.CreatedAt}} {{.CreatedSince}} "
                  "{{.Size}} {{.VirtualSize}} {{.SharedSize}} {{.Names}} {{.Labels}} {{.ReadOnly}} {{.Dangling}} "
                  "{{.Containers}} {{.History}} {{.RepoTags}} {{.RepoDigests}} {{.ParentId}} {{.Id}}")
    compare(store, [
        ["--format", "{{.Repository}}:{{.Tag}}"],
        ["--format", "{{.ID}}\\t{{.Repository}}"],
        ["--format", "{{.ID}}\t{{.Digest}}"],
        ["--format", "table {{.ID}}\\t{{.Repository}}:{{.Tag}}"],
        ["--format", "table {{.ID}} {{.Repository}}", "--noheading"],
        ["--format", "table " + everything],
        ["--format", everything],
        ["--no-trunc", "--format", "{{.ID}} {{.Id}}"],
        ["--format", "{{json .Labels}}|{{json .Names}}|{{json .ID}}|{{json .RepoDigests}}|{{json .Dangling}}"],
        ["--format", "{{upper .Repository}} {{lower .Tag}}"],
        ["--format", "x"],
        ["--format", "{{.Bogus}}"],
    ])


def test_filters_and_the_image_argument(store: tuple[StoreArgs, Podman]) -> None:
    args, _ = store
    host = args.registries_conf.read_text().split('"')[1]
    compare(store, [
        ["--filter", "reference=ns/app"], ["--filter", "reference=ns/app:2"], ["--filter", "reference=app"],
        ["--filter", "reference=app:1"], ["--filter", "reference=*app*"], ["--filter", f"reference={host}/ns/*"],
        ["--filter", "reference=web"], ["--filter", "reference=multi"], ["--filter", "reference=?eb"],
        ["--filter", "reference=ns/app", "--filter", "reference=other/web"],
        ["--filter", "label=b=two"], ["--filter", "label=org.x"], ["--filter", "label=b=three"],
        ["--filter", f"id={APP.image_id}"], ["--filter", f"id={APP.image_id[:6]}"],
        ["--filter", "dangling=true"], ["--filter", "dangling=false"],
        ["--filter", "reference=*app*", "--filter", "label=org.x"],
        ["--filter", "readonly=false", "-q"],
        ["--filter", "bogus=1"],
        ["app"], ["app:2"], ["web"], [f"{host}/multi/img"], [APP.image_id[:12]], ["nomatch:1"],
    ])


def test_rmi_as_podman_rmi(registry: RunningRegistry, tmp_path: Path) -> None:
    """The same removals on two stores tether wrote, one by tether rmi and one by podman rmi: same output, same
    failures, the same images left."""
    host = registry.host
    for ref, image in (("ns/app:1", APP), ("ns/app:2", APP), ("other/web:latest", WEB)):
        factory.push_image(host, ref, image)
    factory.push_image(host, "multi/img:1", factory.build_index([AMD, ARM]))
    ours, theirs = StoreArgs.make(tmp_path / "a", host), StoreArgs.make(tmp_path / "b", host)
    for args in (ours, theirs):
        args.root.parent.mkdir(parents=True, exist_ok=True)
        populate(args, host)
    podman = Podman(root=theirs.root, runroot=short_runroot())
    reader = Podman(root=ours.root, runroot=short_runroot())
    try:
        for case in (["app"], [APP.image_id[:12]], ["nosuch"], ["-i", "nosuch"], ["web"],
                     [f"{host}/ns/app:2"], ["-f", APP.image_id[:12]], [ARM.image_id], ["-a"]):
            mine = tether("rmi", *ours.store, *case)
            podmans = podman.run("rmi", *case, check=False)
            assert (mine.stdout, mine.returncode == 0) == (podmans.stdout, podmans.returncode == 0), (
                case, mine.stdout, mine.stderr, podmans.stdout, podmans.stderr)
            left = reader.run("images", "--format", "{{.Id}} {{.Repository}}:{{.Tag}}").stdout
            assert left == podman.run("images", "--format", "{{.Id}} {{.Repository}}:{{.Tag}}").stdout, case
        assert tether("check", *ours.store).returncode == 0
    finally:
        for instance in (podman, reader):
            for mount in (instance.root / "overlay", instance.runroot):
                subprocess.run(["umount", "-R", "-l", str(mount)], capture_output=True)
            shutil.rmtree(instance.runroot, ignore_errors=True)


def test_inspect_a_stored_image_as_skopeo_does(store: tuple[StoreArgs, Podman]) -> None:
    args, podman = store
    host = args.registries_conf.read_text().split('"')[1]
    for name in (f"{host}/ns/app:1", f"{host}/multi/img:1", APP.image_id[:12]):
        ours = tether("inspect", *args.store, f"containers-storage:{name}")
        assert ours.returncode == 0, ours.stderr
        mine = json.loads(ours.stdout)
        # skopeo reads the same store; with a store specifier, as c/image's storage transport takes it
        theirs = json.loads(skopeo("inspect", f"containers-storage:{podman.store_spec}{name}").stdout)
        assert {key: mine.get(key) for key in theirs} == theirs, name
        assert set(mine) - set(theirs) <= {"LayersData", "Endpoint", "Variant"}
    raw = tether("inspect", *args.store, "--raw", f"containers-storage:{host}/ns/app:2")
    assert raw.stdout.encode() == APP.manifest
    unknown = tether("inspect", *args.store, "containers-storage:nosuch:1")
    assert unknown.returncode == 1 and "image not known" in unknown.stderr


def test_inspect_format_as_skopeo(store: tuple[StoreArgs, Podman]) -> None:
    args, _ = store
    host = args.registries_conf.read_text().split('"')[1]
    template = "{{.Name}} {{.Digest}} {{.RepoTags}} {{.Architecture}} {{.Os}} {{.Layers}} {{.Labels}} {{.Created}}"
    for name in (f"docker://{host}/ns/app:1", f"docker://{host}/multi/img:1"):
        ours = tether("inspect", "--registries-conf", str(args.registries_conf), "--format", template, name)
        theirs = skopeo("inspect", "--tls-verify=false", "--format", template, name)
        assert ours.stdout == theirs.stdout, ours.stderr
    stored = tether("inspect", *args.store, "--format", "{{json .Labels}} {{.Digest}}",
                    f"containers-storage:{host}/ns/app:1")
    assert stored.stdout == f'{{"b":"two","org.x":"1"}} {APP.manifest_digest}\n'
