"""The pull against real parts: docker-registry serving, tether writing the store, podman reading it."""

from __future__ import annotations

import collections
import gzip
import hashlib
import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import images as factory
from tests.harness.cli import tether_argv
from tests.harness.podman import Podman, short_runroot
from tests.harness.registry import RunningRegistry
from tests.test_progress import validate_line
from tether.engine.copy.progress import Progress
from tether.engine.copy.pull import PullRequest, pull
from tether.engine.options import CommonOptions
from tether.store.containers_storage import STAGING_SUBDIR, LayerWriter, Store
from tether.store.tar.workers import default_pool

# --------------------------------------------------------------------------------------------------
# helpers


def make_options(tmp: Path, registry: RunningRegistry, *, driver: str = "overlay", root: Path | None = None
                 ) -> CommonOptions:
    conf = tmp / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n')
    auth = tmp / "auth.json"
    auth.write_text('{"auths": {}}')
    return CommonOptions(root=root or tmp / "store", runroot=tmp / "run", storage_driver=driver,
                         registries_conf=conf, authfile=auth, tls_verify=False,
                         environ={"PATH": "/usr/bin:/bin"})


def open_store(options: CommonOptions) -> Store:
    return Store.open(options.root, runroot=options.runroot, driver=options.storage_driver)


def assert_store_clean(store: Store) -> None:
    """No incomplete layers, no staging left behind, every layer reproduces its diff digest."""
    assert [layer.id for layer in store.list_layers() if layer.incomplete] == []
    staging = store.root / STAGING_SUBDIR
    assert not staging.exists() or list(staging.iterdir()) == []
    assert store.check() == []


def open_sockets() -> int:
    """Sockets this process holds open."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            continue
    return count


def extractor_children() -> list[int]:
    """Extraction workers of this process still alive, other than the idle ones the store keeps pooled
    for the next layers (earlier tests in the same process may have left some there)."""
    idle = default_pool().idle_pids()
    mine = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if int(fields[1]) != mine or fields[0] == b"Z":
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if b"tether.store.tar._worker_main" in cmdline and int(entry) not in idle:
            found.append(int(entry))
    return found


def blob_gets(registry: RunningRegistry, repos: set[str]) -> collections.Counter[str]:
    """Blob digests GET'd (status 200/206) from ``repos``, counted from the registry's access log."""
    counts: collections.Counter[str] = collections.Counter()
    pattern = re.compile(r'"GET /v2/(?P<repo>.+?)/blobs/(?P<digest>sha256:[0-9a-f]{64}) HTTP/[\d.]+" (?P<st>\d{3})')
    for line in registry.access_log():
        m = pattern.search(line)
        if m and m["repo"] in repos and m["st"] in ("200", "206"):
            counts[m["digest"]] += 1
    return counts


def requests_for(registry: RunningRegistry, repo: str) -> list[str]:
    return [line for line in registry.access_log() if f"/v2/{repo}/" in line]


@pytest.fixture
def podman_on() -> Iterator[Callable[[Store], Podman]]:
    """podman on a store tether wrote (its own short run root, removed afterwards)."""
    made: list[Podman] = []

    def make(store: Store) -> Podman:
        instance = Podman(root=store.root, runroot=short_runroot(), driver=store.driver)
        made.append(instance)
        return instance

    try:
        yield make
    finally:
        for instance in made:
            subprocess.run(["umount", "-R", str(instance.runroot)], capture_output=True)
            subprocess.run(["rm", "-rf", str(instance.runroot)], capture_output=True)


# --------------------------------------------------------------------------------------------------
# image-factory cases


def case_images() -> dict[str, factory.BuiltImage | factory.BuiltIndex]:
    base = factory.build_layer([
        factory.directory("etc"),
        factory.file("etc/hostname", "tether\n"),
        factory.file("etc/shadow", "root:*:1::::::\n", mode=0o640, gid=42),
        factory.directory("usr/bin", mode=0o755),
        factory.file("usr/bin/tool", b"\x7fELF" + bytes(range(256)) * 64, mode=0o755),
        factory.hardlink("usr/bin/tool2", "usr/bin/tool"),
        factory.symlink("usr/bin/t", "tool"),
        factory.symlink("etc/abs", "/usr/bin/tool"),
        factory.fifo("run-fifo"),
        factory.char_device("dev-null", 1, 3),
        factory.block_device("dev-loop", 7, 0),
        factory.file("srv/owned", "x", uid=1000, gid=1000, mode=0o600),
        factory.file("srv/xattr", "x", xattrs={"user.tether": b"yes"}),
        factory.file("srv/" + "long-name-" * 12 + "end", "long\n"),
        factory.directory("var/cache/app"),
        factory.file("var/cache/app/a", "a"),
        factory.file("var/cache/app/b", "b"),
    ])
    upper = factory.build_layer([
        factory.whiteout("etc/hostname"),
        factory.opaque("var/cache/app"),
        factory.file("var/cache/app/c", "c"),
        factory.file("usr/bin/tool", "replaced\n", mode=0o755),
    ], "zstd")
    plain = factory.build_layer([factory.file("plain", "uncompressed layer\n")], "none")
    arm = factory.simple_image(31, architecture="arm64", variant="v8")
    amd = factory.simple_image(32)
    return {
        "cases/oci:entries": factory.build_image([base, upper, plain]),
        "cases/docker:schema2": factory.build_image([base, factory.build_layer([factory.file("d", "d")])],
                                                    docker=True),
        "cases/index:multi": factory.build_index([arm, amd]),
        "cases/zstd:only": factory.simple_image(33, compression="zstd", layers=3),
    }


@pytest.fixture(scope="module")
def pushed_cases(registry: RunningRegistry) -> dict[str, factory.BuiltImage | factory.BuiltIndex]:
    cases = case_images()
    for ref, image in cases.items():
        factory.push_image(registry.host, ref, image)
    return cases


def expected_image(image: factory.BuiltImage | factory.BuiltIndex) -> factory.BuiltImage:
    if isinstance(image, factory.BuiltIndex):
        return next(i for i in image.images if i.platform.get("architecture") == "amd64")
    return image


@pytest.mark.parametrize("driver", ["overlay", "vfs"])
async def test_factory_cases_pull_and_podman_reads_them(
        driver: str, tmp_path: Path, registry: RunningRegistry,
        pushed_cases: dict[str, factory.BuiltImage | factory.BuiltIndex],
        podman_on: Callable[[Store], Podman]) -> None:
    options = make_options(tmp_path, registry, driver=driver)
    store = open_store(options)
    refs = [f"{registry.host}/{ref}" for ref in pushed_cases]
    report = await pull(refs, store=store, options=options, jobs=4)
    assert report.ok, report.summary()
    assert_store_clean(store)
    podman = podman_on(store)
    listed = {img["Id"]: img for img in podman.images()}
    for ref, image in pushed_cases.items():
        want = expected_image(image)
        assert want.image_id in listed, ref
        inspect = podman.json("image", "inspect", f"{registry.host}/{ref}")[0]
        assert inspect["Id"] == want.image_id
        assert inspect["RootFS"]["Layers"] == [layer.diff_id for layer in want.layers]
        assert inspect["Digest"] == image.manifest_digest
    result = {r.request.name: r for r in report.results}
    entries = result[f"{registry.host}/cases/oci:entries"]
    assert entries.image_id == expected_image(pushed_cases["cases/oci:entries"]).image_id
    # the shared base of oci:entries and docker:schema2 is in the store once
    layer_ids = [layer.id for layer in store.list_layers()]
    assert len(layer_ids) == len(set(layer_ids))
    # podman rebuilds each layer from tar-split + files: the diffIDs must come out identical
    out = tmp_path / "saved"
    podman.run("save", "--format", "oci-dir", "-o", str(out), f"{registry.host}/cases/oci:entries")
    saved = json.loads((out / "index.json").read_text())["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((out / "blobs" / "sha256" / saved).read_text())
    want = expected_image(pushed_cases["cases/oci:entries"])
    rebuilt = []
    for layer in manifest["layers"]:
        blob = (out / "blobs" / "sha256" / layer["digest"].split(":")[1]).read_bytes()
        if blob[:2] == b"\x1f\x8b":  # podman 4.3 saves oci-dir layers gzip-compressed
            blob = gzip.decompress(blob)
        rebuilt.append("sha256:" + hashlib.sha256(blob).hexdigest())
    assert rebuilt == [layer.diff_id for layer in want.layers]


async def test_overlay_tree_has_whiteouts_as_podman_writes_them(
        tmp_path: Path, registry: RunningRegistry,
        pushed_cases: dict[str, factory.BuiltImage | factory.BuiltIndex]) -> None:
    options = make_options(tmp_path, registry)
    store = open_store(options)
    report = await pull([f"{registry.host}/cases/oci:entries"], store=store, options=options)
    assert report.ok, report.summary()
    image = store.find_image(f"{registry.host}/cases/oci:entries")
    assert image.top_layer is not None
    chain = store.layer_chain(image.top_layer)
    upper = store.layer_directory(chain[-2])  # the whiteout layer (chain is bottom first or top first)
    if not (upper / "var").exists():
        upper = store.layer_directory(chain[1])
    import os
    import stat

    st = os.lstat(upper / "etc" / "hostname")
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 0 and os.minor(st.st_rdev) == 0
    assert os.getxattr(upper / "var" / "cache" / "app", "trusted.overlay.opaque") == b"y"


# --------------------------------------------------------------------------------------------------
# several images at once


async def test_shared_layers_are_fetched_once_across_images(tmp_path: Path, registry: RunningRegistry) -> None:
    base = factory.build_layer([*factory.many_small_files("base", 50, seed=501), factory.large_file("b", 300_000)])
    mid = factory.build_layer(factory.many_small_files("mid", 30, seed=502))
    repos = {f"shared/app{n}" for n in range(4)}
    images = {}
    for n in range(4):
        top = factory.build_layer([factory.file(f"top{n}", f"{n}\n")])
        images[f"shared/app{n}"] = factory.build_image([base, mid, top])
        factory.push_image(registry.host, f"shared/app{n}:1", images[f"shared/app{n}"])
    options = make_options(tmp_path, registry)
    store = open_store(options)
    progress_lines: list[bytes] = []
    from tether.engine.copy.progress import JsonLinesProgress

    report = await pull([f"{registry.host}/{repo}:1" for repo in sorted(repos)], store=store, options=options,
                        jobs=8, progress=JsonLinesProgress(write=progress_lines.append))
    assert report.ok, report.summary()
    counts = blob_gets(registry, repos)
    layer_digests = {layer.digest for image in images.values() for layer in image.layers}
    assert {d: counts[d] for d in layer_digests} == dict.fromkeys(layer_digests, 1)
    assert len(store.list_layers()) == 2 + 4
    assert sorted(r.layers_pulled for r in report.results) == [3, 3, 3, 3]
    assert all(validate_line(line) for line in progress_lines)
    assert_store_clean(store)
    # a second pull: one manifest request per image, no blob requests
    before = len(registry.access_log())
    again = await pull([f"{registry.host}/{repo}:1" for repo in sorted(repos)], store=store, options=options)
    assert again.ok
    new = registry.access_log()[before:]
    assert len([line for line in new if "/manifests/" in line]) == 4
    assert [line for line in new if "/blobs/" in line] == []
    # --pull missing: no request at all
    before = len(registry.access_log())
    missing = await pull([f"{registry.host}/{repo}:1" for repo in sorted(repos)], store=store, options=options,
                         policy="missing")
    assert missing.ok and len(registry.access_log()) == before


async def test_layers_well_below_the_largest_are_extracted_in_the_background(
        tmp_path: Path, registry: RunningRegistry, monkeypatch: pytest.MonkeyPatch,
        podman_on: Callable[[Store], Podman]) -> None:
    # Incompressible files: the blob sizes are the file sizes (12, 9 and 5 MB: 9 is within two thirds of
    # the largest, 5 is not; the 8-byte top layer is applied in process, but is still "background").
    sizes = {"large": 12_000_000, "close": 9_000_000, "small": 5_000_000}
    layers = {name: factory.build_layer([factory.large_file(name, size, seed=900 + n)])
              for n, (name, size) in enumerate(sizes.items())}
    top = factory.build_layer([factory.file("top", "t")])
    image = factory.build_image([*layers.values(), top])
    factory.push_image(registry.host, "prio/app:1", image)
    options = make_options(tmp_path, registry)
    store = open_store(options)
    staged: dict[str, bool] = {}
    real = store.stage_layer

    def recording(*, layer_id: str, parent: str | None, background: bool = False) -> LayerWriter:
        staged[layer_id] = background
        return real(layer_id=layer_id, parent=parent, background=background)

    monkeypatch.setattr(store, "stage_layer", recording)
    report = await pull([f"{registry.host}/prio/app:1"], store=store, options=options)
    assert report.ok, report.summary()
    by_digest = {layer.compressed_digest: layer.id for layer in store.list_layers()}
    assert {name: staged[by_digest[built.digest]] for name, built in layers.items()} == {
        "large": False, "close": False, "small": True}
    assert staged[by_digest[top.digest]] is True
    assert_store_clean(store)
    assert [img["Id"] for img in podman_on(store).images()] == [image.image_id]


async def test_new_tag_with_changed_top_fetches_only_the_top(tmp_path: Path, registry: RunningRegistry) -> None:
    base = factory.build_layer(factory.many_small_files("base", 40, seed=601))
    v1 = factory.build_image([base, factory.build_layer([factory.file("v", "1")])])
    v2 = factory.build_image([base, factory.build_layer([factory.file("v", "2")])])
    factory.push_image(registry.host, "newtag/app:1", v1)
    options = make_options(tmp_path, registry)
    store = open_store(options)
    assert (await pull([f"{registry.host}/newtag/app:1"], store=store, options=options)).ok
    factory.push_image(registry.host, "newtag/app:1", v2)  # the tag moves
    report = await pull([f"{registry.host}/newtag/app:1"], store=store, options=options, policy="newer")
    assert report.ok and report.results[0].image_id == v2.image_id
    assert (report.results[0].layers_pulled, report.results[0].layers_reused) == (1, 1)
    assert blob_gets(registry, {"newtag/app"})[base.digest] == 1
    # the old image lost its name to the new one, as podman moves names
    assert store.find_image(f"{registry.host}/newtag/app:1").id == v2.image_id


# --------------------------------------------------------------------------------------------------
# failures


def corrupt_blob(registry: RunningRegistry, digest: str) -> bytes:
    """Flip bytes of a blob in the registry's storage (same size); returns the original content."""
    hex_ = digest.split(":")[1]
    path = registry.data_dir / "docker" / "registry" / "v2" / "blobs" / "sha256" / hex_[:2] / hex_ / "data"
    original = path.read_bytes()
    bad = bytearray(original)
    middle = len(bad) // 2
    bad[middle:middle + 16] = bytes(b ^ 0xFF for b in bad[middle:middle + 16])
    path.write_bytes(bytes(bad))
    return original


async def test_digest_mismatch_fails_one_image_others_complete_rerun_finishes(
        tmp_path: Path, registry_factory: Callable[..., RunningRegistry]) -> None:
    reg = registry_factory()
    shared = factory.build_layer(factory.many_small_files("shared", 30, seed=701))
    good = factory.build_image([shared, factory.build_layer([factory.file("good", "g")])])
    bad_top = factory.build_layer([factory.large_file("bad", 400_000, seed=702)])
    bad = factory.build_image([shared, factory.build_layer([factory.file("ok", "o")]), bad_top])
    factory.push_image(reg.host, "fail/good:1", good)
    factory.push_image(reg.host, "fail/bad:1", bad)
    original = corrupt_blob(reg, bad_top.digest)
    options = make_options(tmp_path, reg)
    store = open_store(options)
    sockets = open_sockets()
    report = await pull([f"{reg.host}/fail/good:1", f"{reg.host}/fail/bad:1"], store=store, options=options)
    assert not report.ok
    by_name = {r.request.name: r for r in report.results}
    assert by_name[f"{reg.host}/fail/good:1"].ok
    failed = by_name[f"{reg.host}/fail/bad:1"]
    assert failed.error is not None and bad_top.digest in failed.error
    assert f"{reg.host}/fail/bad:1" in report.summary()
    assert open_sockets() == sockets and extractor_children() == []
    assert_store_clean(store)
    assert [img.id for img in store.list_images()] == [good.image_id]
    # repair the blob; the rerun keeps what was completed and fetches only the missing layer
    hex_ = bad_top.digest.split(":")[1]
    (reg.data_dir / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data").write_bytes(original)
    before = blob_gets(reg, {"fail/bad"})
    rerun = await pull([f"{reg.host}/fail/bad:1"], store=store, options=options)
    assert rerun.ok, rerun.summary()
    after = blob_gets(reg, {"fail/bad"})
    assert after[bad_top.digest] - before[bad_top.digest] == 1
    assert after[shared.digest] == before[shared.digest]  # shared came from fail/good, kept
    assert_store_clean(store)


class KillOnFirstBytes(Progress):
    def __init__(self, registry: RunningRegistry) -> None:
        self.registry = registry
        self.killed = False

    def layer_bytes(self, image: str, digest: str, done: int) -> None:
        if not self.killed:
            self.killed = True
            self.registry.kill()


async def test_registry_killed_mid_pull_leaves_store_clean_and_rerun_completes(
        tmp_path: Path, registry_factory: Callable[..., RunningRegistry]) -> None:
    reg = registry_factory()
    layers = [factory.build_layer([factory.large_file(f"big{n}", 3_000_000, seed=800 + n)]) for n in range(3)]
    image = factory.build_image(layers)
    factory.push_image(reg.host, "kill/app:1", image)
    options = make_options(tmp_path, reg)
    store = open_store(options)
    killer = KillOnFirstBytes(reg)
    sockets = open_sockets()
    report = await pull([PullRequest(f"{reg.host}/kill/app:1", retries=0)], store=store, options=options,
                        jobs=1, progress=killer)
    assert killer.killed
    assert not report.ok and report.results[0].error
    assert open_sockets() == sockets and extractor_children() == []
    assert_store_clean(store)
    assert store.list_images() == []
    reg.start()
    rerun = await pull([f"{reg.host}/kill/app:1"], store=store, options=options)
    assert rerun.ok, rerun.summary()
    assert rerun.results[0].image_id == image.image_id
    assert_store_clean(store)


async def test_unknown_image_is_reported_by_name(tmp_path: Path, registry: RunningRegistry) -> None:
    options = make_options(tmp_path, registry)
    store = open_store(options)
    factory.push_image(registry.host, "exists/app:1", factory.simple_image(901))
    report = await pull([f"{registry.host}/exists/app:1", f"{registry.host}/nope/app:1"], store=store,
                        options=options)
    assert [r.ok for r in report.results] == [True, False]
    assert "nope/app" in (report.results[1].error or "") or "404" in (report.results[1].error or "")


# --------------------------------------------------------------------------------------------------
# the CLI


def test_cli_pull_json_progress_fd_and_exit_status(tmp_path: Path, registry: RunningRegistry) -> None:
    import os

    factory.push_image(registry.host, "cli/app:1", factory.simple_image(951))
    options = make_options(tmp_path, registry)
    read_fd, write_fd = os.pipe()
    cmd = tether_argv("pull", "--root", str(options.root), "--runroot", str(options.runroot),
                      "--storage-driver", "overlay", "--registries-conf", str(options.registries_conf),
                      "--authfile", str(options.authfile), "--tls-verify=false", "--progress", "plain",
                      "--progress-fd", str(write_fd), f"{registry.host}/cli/app:1", f"{registry.host}/cli/missing:1")
    proc = subprocess.Popen(cmd, pass_fds=(write_fd,), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as reader:
        lines = reader.read().splitlines(keepends=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert factory.simple_image(951).image_id in out.decode()
    assert "1 of 2 images failed" in err.decode() and "cli/missing:1" in err.decode()
    events = [validate_line(line) for line in lines]
    assert events[0]["type"] == "Start"
    assert {e["type"] for e in events} >= {"ProgressBytes", "ProgressSteps"}


# --------------------------------------------------------------------------------------------------
# names: short names through registries.conf, oci: layouts through the layout-source hook


async def test_short_name_tries_each_search_registry_in_order(tmp_path: Path, registry: RunningRegistry,
                                                              registry_factory: Callable[..., RunningRegistry]) -> None:
    empty = registry_factory()
    image = factory.simple_image(961)
    factory.push_image(registry.host, "short/app:1", image)
    options = make_options(tmp_path, registry)
    assert options.registries_conf is not None
    options.registries_conf.write_text(
        'short-name-mode = "permissive"\n'
        f'unqualified-search-registries = ["{empty.host}", "{registry.host}"]\n'
        f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n'
        f'[[registry]]\nlocation = "{empty.host}"\ninsecure = true\n')
    store = open_store(options)
    report = await pull(["short/app:1"], store=store, options=options)
    assert report.ok, report.summary()
    assert report.results[0].reference == f"{registry.host}/short/app:1"
    assert store.find_image(f"{registry.host}/short/app:1").id == image.image_id
    assert any("/v2/short/app/manifests/1" in line for line in empty.access_log())


async def test_oci_layout_names_go_through_the_layout_source(tmp_path: Path, registry: RunningRegistry) -> None:
    image = factory.simple_image(971)
    factory.write_oci_layout(tmp_path / "layout", {"app:1": image})
    options = make_options(tmp_path, registry)
    store = open_store(options)
    report = await pull([f"oci:{tmp_path / 'layout'}:app:1"], store=store, options=options)
    assert report.ok, report.summary()
    assert report.results[0].image_id == image.image_id
    assert_store_clean(store)


class DoneWatcher(Progress):
    def __init__(self, name: str, on_done: Callable[[], None]) -> None:
        self.name = name
        self.on_done = on_done
        self.order: list[str] = []

    def image_done(self, image: str, *, image_id: str | None, error: str | None, up_to_date: bool = False) -> None:
        self.order.append(image)
        if image == self.name:
            self.on_done()


async def test_an_image_whose_registry_hangs_does_not_hold_the_others_back(
        tmp_path: Path, registry: RunningRegistry) -> None:
    import socket

    import trio

    image = factory.simple_image(981)
    factory.push_image(registry.host, "prompt/app:1", image)
    # A registry that accepts connections and never answers.
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)
    hung = f"127.0.0.1:{hole.getsockname()[1]}"
    options = make_options(tmp_path, registry)
    assert options.registries_conf is not None
    with options.registries_conf.open("a") as conf:
        conf.write(f'[[registry]]\nlocation = "{hung}"\ninsecure = true\n')
    store = open_store(options)
    good = f"{registry.host}/prompt/app:1"
    watcher = DoneWatcher(good, hole.close)  # the hung image can only end once the good one is done
    with trio.move_on_after(120) as guard:  # a hang here is the failure: never reached when correct
        report = await pull([PullRequest(f"{hung}/slow/app:1", retries=0), good], store=store,
                            options=options, progress=watcher)
    hole.close()
    assert not guard.cancelled_caught
    assert watcher.order[0] == good
    assert [r.ok for r in report.results] == [False, True]
    assert report.results[1].image_id == image.image_id
