"""``tether check`` finds a layer tree that no longer matches its tar-split, naming the layer and the path: on
stores written by the real ``tether pull`` and by podman, overlay and vfs, tampered the ways that rebuild the
same tar (a file beside or under an entry, a directory where the tar has a symlink, a missing entry, another
mode, owner or link target, a broken hard link, a lost opaque marker); the untampered stores pass."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import images as factory
from tests.harness.cli import tether_argv
from tests.harness.podman import Podman, podman_for
from tests.harness.registry import RunningRegistry
from tests.harness.store_pull import release_podman
from tests.test_store_podman import rich_image
from tether.store.containers_storage import LayerRecord, Store

REPO_ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="layer trees with owners and devices need root")


@pytest.fixture(scope="module")
def rich(registry: RunningRegistry) -> factory.BuiltImage:
    image = rich_image(17)
    factory.push_image(registry.host, "check/rich:1", image)
    return image


def run_check(root: Path, driver: str) -> tuple[int, list[str]]:
    proc = subprocess.run(tether_argv("check", "--root", str(root), "--storage-driver", driver),
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    return proc.returncode, proc.stdout.splitlines()


@pytest.fixture(params=["tether-overlay", "tether-vfs", "podman-overlay", "podman-vfs"])
def pulled(request: pytest.FixtureRequest, tmp_path: Path, registry: RunningRegistry,
           rich: factory.BuiltImage) -> Iterator[tuple[Store, list[LayerRecord]]]:
    writer, driver = request.param.split("-")
    name = f"{registry.host}/check/rich:1"
    podman: Podman | None = None
    if writer == "podman":
        podman = podman_for(tmp_path / "p", driver=driver)
        podman.pull(name)
        root = podman.root
    else:
        root = tmp_path / "store"
        conf = tmp_path / "registries.conf"
        conf.write_text(f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n')
        proc = subprocess.run(tether_argv("pull", "--root", str(root), "--storage-driver", driver,
                                          "--registries-conf", str(conf), "--tls-verify=false", "--progress",
                                          "none", name), capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
        assert proc.returncode == 0, proc.stderr
    try:
        store = Store.open(root, driver=driver)
        image = store.find_image(rich.image_id)
        yield store, store.layer_chain(image.top_layer or "")
    finally:
        if podman is not None:
            release_podman(podman.root, podman.runroot)


def _replace_link_with_dir(d: Path) -> None:
    os.unlink(d / "usr/bin/alias")
    os.mkdir(d / "usr/bin/alias")
    (d / "usr/bin/alias/inside").write_text("x")


def _break_hard_link(d: Path) -> None:
    data = (d / "usr/bin/tool2").read_bytes()
    st = os.lstat(d / "usr/bin/tool2")
    os.unlink(d / "usr/bin/tool2")
    (d / "usr/bin/tool2").write_bytes(data)
    os.chown(d / "usr/bin/tool2", st.st_uid, st.st_gid)
    os.chmod(d / "usr/bin/tool2", st.st_mode & 0o7777)


def _retarget(d: Path) -> None:
    os.unlink(d / "usr/bin/alias")
    os.symlink("/etc/shadow", d / "usr/bin/alias")


#: Tamperings that can be made together, each: (layer index, tampering, what its problem line says); paths are
#: relative to the layer's directory.  Two groups, as both change the one symlink.
TAMPERING: dict[str, dict[str, tuple[int, Callable[[Path], object], str]]] = {
    "entries": {
        "file beside": (0, lambda d: (d / "etc" / "planted").write_text("x"),
                        "unexpected b'etc/planted' (regular file)"),
        "file under": (1, lambda d: (d / "opt/app/new").write_text("x"), "unexpected b'opt/app/new'"),
        "dir for a symlink": (0, _replace_link_with_dir, "b'usr/bin/alias' is a directory, the tar has a symlink"),
        "missing fifo": (0, lambda d: os.unlink(d / "run-fifo"), "missing b'run-fifo' (fifo)"),
        "missing directory": (0, lambda d: os.rmdir(d / "tmp"), "missing b'tmp' (directory)"),
        "mode": (0, lambda d: os.chmod(d / "etc/shadow", 0o644), "b'etc/shadow' has mode 0644, the tar says 0640"),
        "owner": (0, lambda d: os.chown(d / "home/user/.profile", 0, 0),
                  "b'home/user/.profile' is owned by 0:0, the tar says 1000:1000"),
        "hard link": (0, _break_hard_link, "b'usr/bin/tool2' is not a hard link to b'usr/bin/tool'"),
    },
    "links": {
        "link target": (0, _retarget, "b'usr/bin/alias' points at b'/etc/shadow', the tar says b'tool'"),
        "opaque": (2, lambda d: os.removexattr(d / "var/cache", "trusted.overlay.opaque"),
                   "b'var/cache': not marked opaque, the tar has b'.wh..wh..opq' there"),
    },
}


@pytest.mark.parametrize("group", list(TAMPERING))
def test_check_names_the_layer_and_path_of_a_tampered_tree(pulled: tuple[Store, list[LayerRecord]],
                                                            group: str) -> None:
    store, chain = pulled
    assert run_check(store.root, store.driver) == (0, [f"{store.root} ({store.driver}): 3 layers, 1 images, "
                                                        "no problems"])
    expected: dict[str, list[str]] = {}
    for case, (index, tamper, says) in TAMPERING[group].items():
        if store.driver == "vfs":
            if case == "opaque":
                continue  # vfs applies an opaque directory by deleting below it: there is nothing to mark
            index = 2  # the top layer's directory is the whole tree (the lower ones are checked the same way)
        layer = chain[index]
        tamper(store.layer_directory(layer))
        expected.setdefault(layer.id, []).append(says)
    status, lines = run_check(store.root, store.driver)
    assert status == 1
    assert all(line.startswith("layer ") for line in lines), lines
    for layer_id, texts in expected.items():
        mine = [line for line in lines if line.startswith(f"layer {layer_id}: tree does not match its tar-split: ")]
        for text in texts:
            assert any(text in line for line in mine), (text, lines)
