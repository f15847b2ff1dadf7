"""Issue 15 item 3, read-only stores: writing commands refuse one in one line (no traceback, nothing written),
reading commands work on one, and on a booted ostree host a read-only bind mount of a writable file system (what
bootc hosts make of /sysroot) is remounted read-write for tether alone, as libostree remounts it for bootc.

The stores live on a tmpfs mounted for the test and remounted read-only (root only). The ostree-host case runs
in a mount namespace of its own (``unshare -m``) with a private /run holding ``/run/ostree-booted``, so nothing of
the host changes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import images as factory
from tests.harness.bound import make_root
from tests.harness.cli import REPO, StoreArgs, tether, tether_argv
from tests.harness.registry import RunningRegistry
from tether.engine.writable import mount_of

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                reason="mounts a tmpfs (root) and uses unshare(1)")

IMAGE = factory.simple_image(1541, files=3)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "mnt"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_writing_commands_refuse_a_read_only_store_and_reading_ones_work(
        tmp_path: Path, tmpfs: Path, registry: RunningRegistry) -> None:
    factory.push_image(registry.host, "readonly/app:1", IMAGE)
    ref = f"{registry.host}/readonly/app:1"
    args = StoreArgs(root=tmpfs / "store", runroot=tmp_path / "run",
                     registries_conf=StoreArgs.make(tmp_path, registry.host).registries_conf)
    root = make_root(tmp_path / "deploy", {"app.image": ref})
    # the 64 MiB tmpfs is far below the default disk reserve (1 GiB): off, this test is about read-only mounts
    bound = ["--deployment-root", str(root), *args.pull, "--disk-reserve", "0"]
    assert tether("bound", "sync", *bound, "--progress", "none").returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    mount = mount_of(args.root)
    assert mount is not None and mount.read_only and mount.fs_read_only

    for command in (["pull", *args.pull, "--progress", "none", ref],
                    ["bound", "sync", *bound, "--progress", "none"],
                    ["bound", "gc", "--deployment-root", str(root), *args.store],
                    ["rmi", *args.store, ref]):
        done = tether(*command)
        verb = " ".join(command[:2]) if command[0] == "bound" else command[0]
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        assert done.stderr == (f"tether: {verb}: cannot write the store {args.root}: Read-only file system "
                               f"({tmpfs} is mounted read-only); nothing was written\n"), done.stderr

    listed = tether("images", *args.store, "--format", "{{.Repository}}:{{.Tag}} {{.Id}}")
    assert (listed.returncode, listed.stdout) == (0, f"{ref} {IMAGE.image_id}\n"), listed.stderr
    status = tether("bound", "status", "--deployment-root", str(root), *args.store, "--check", str(root))
    assert status.returncode == 0 and status.stdout.strip().endswith(": ready"), status.stderr
    assert tether("check", *args.store).returncode == 0
    inspected = tether("inspect", *args.store, f"containers-storage:{ref}")
    assert json.loads(inspected.stdout)["Digest"] == IMAGE.manifest_digest, inspected.stderr


def test_a_read_only_bind_mount_on_a_booted_ostree_host_is_remounted_for_tether_only(
        tmp_path: Path, registry: RunningRegistry) -> None:
    factory.push_image(registry.host, "readonly/app:2", IMAGE)
    ref = f"{registry.host}/readonly/app:2"
    args = StoreArgs.make(tmp_path, registry.host)
    sysroot = tmp_path / "sysroot"
    sysroot.mkdir()
    store = sysroot / "ostree/bootc/storage"
    pull = " ".join(tether_argv("pull", "--root", str(store), "--runroot", str(args.runroot), "--registries-conf",
                                str(args.registries_conf), "--progress", "none", "--disk-reserve", "0", ref))
    # As on a bootc host: /sysroot a read-only bind mount of a writable file system, /run/ostree-booted present.
    script = f"""
set -e
mount -t tmpfs tmpfs /run
touch /run/ostree-booted
mount -t tmpfs -o size=64m tmpfs {sysroot}
mount --bind {sysroot} {sysroot}
mount -o remount,bind,ro {sysroot}
{pull}
touch {sysroot}/probe 2>/dev/null && echo "writable here" || echo "read-only here"
"""
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    # the image was pulled into the read-only mounted store, and the caller's mount is still read-only
    assert done.stdout.split("\n")[:2] == [IMAGE.image_id, "read-only here"], done.stdout + done.stderr
    assert not Path("/run/ostree-booted").exists()
