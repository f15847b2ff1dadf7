"""Real ostree sysroots for bound-image tests, built as ostree's tests/libtest.sh builds them.

``ostree admin init-fs``, ``os-init``, ``commit`` a tree (``usr/etc``, a kernel under
``usr/lib/modules/VERSION``, ``usr/lib/bootc/bound-images.d`` symlinks to quadlet files), then
``ostree admin deploy --sysroot``. ``OSTREE_SYSROOT_DEBUG=mutable-deployments`` keeps deployment
directories free of the immutable bit so pytest can remove them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

OSNAME = "testos"
BRANCH = f"{OSNAME}/stable"
ENV = {**os.environ, "OSTREE_SYSROOT_DEBUG": "mutable-deployments"}


def run(*args: str) -> str:
    proc = subprocess.run(list(args), capture_output=True, text=True, env=ENV, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


@dataclass(frozen=True)
class Sysroot:
    path: Path
    work: Path

    @property
    def repo(self) -> Path:
        return self.path / "ostree" / "repo"

    def commit(self, images: dict[str, str], *, containers: dict[str, str] | None = None, tag: str = "") -> str:
        """Commit a tree binding ``images`` (``{"name.image": "IMAGE"}``) and ``containers``
        (``{"name.container": "[Container] body"}``); returns the commit checksum."""
        tree = self.work / f"tree-{len(list(self.work.glob('tree-*')))}"
        for d in (
            "usr/bin",
            "usr/etc",
            "usr/lib/modules/5.0",
            "usr/lib/bootc/bound-images.d",
            "usr/share/containers/systemd",
        ):
            (tree / d).mkdir(parents=True, exist_ok=True)
        release = "NAME=test\nID=test\nPRETTY_NAME=Test\n"
        (tree / "usr/etc/os-release").write_text(release)
        (tree / "usr/lib/os-release").write_text(release)
        (tree / "usr/lib/modules/5.0/vmlinuz").write_text("kernel\n")
        (tree / "usr/lib/modules/5.0/initramfs.img").write_text("initramfs\n")
        (tree / "usr/bin/version").write_text(tag + "\n")
        quadlets = tree / "usr/share/containers/systemd"
        bound = tree / "usr/lib/bootc/bound-images.d"
        for name, image in images.items():
            (quadlets / name).write_text(f"[Image]\nImage={image}\n")
            os.symlink(f"/usr/share/containers/systemd/{name}", bound / name)
        for name, body in (containers or {}).items():
            (quadlets / name).write_text(body)
            os.symlink(f"../../../share/containers/systemd/{name}", bound / name)
        out = run(
            "ostree",
            f"--repo={self.repo}",
            "commit",
            "-b",
            BRANCH,
            f"--tree=dir={tree}",
            "--no-bindings",
            "-s",
            tag or "commit",
        )
        shutil.rmtree(tree)
        return out.strip()

    def deploy(self, *, retain: bool = True) -> None:
        args = ["ostree", "admin", "deploy", f"--sysroot={self.path}", f"--os={OSNAME}"]
        if retain:
            args.append("--retain")
        run(*args, BRANCH)

    def undeploy(self, index: int) -> None:
        run("ostree", "admin", "undeploy", f"--sysroot={self.path}", str(index))

    def pin(self, index: int, *, unpin: bool = False) -> None:
        run("ostree", "admin", "pin", f"--sysroot={self.path}", *(["--unpin"] if unpin else []), str(index))

    def rollback(self) -> None:
        """Go back to the previous deployment: drop the default one (``ostree admin undeploy 0``; ostree
        2022.7 has no ``set-default``), as a rollback followed by cleanup leaves the sysroot."""
        self.undeploy(0)

    def deploy_dirs(self) -> list[Path]:
        base = self.path / "ostree" / "deploy" / OSNAME / "deploy"
        return sorted(p for p in base.iterdir() if p.is_dir())

    def stage(self, run_dir: Path) -> str:
        """Emulate ``ostree admin deploy --stage`` (which needs a booted host): deploy, keep the checkout,
        drop its boot entry, and write ``run_dir/ostree/staged-deployment`` naming its checksum.
        Returns the staged deployment directory name."""
        before = set(self.deploy_dirs())
        self.deploy()
        (new,) = set(self.deploy_dirs()) - before
        keep = self.work / "staged-copy"
        shutil.copytree(new, keep, symlinks=True)
        origin = new.parent / (new.name + ".origin")
        origin_text = origin.read_text()
        self.undeploy(0)
        shutil.move(str(keep), str(new))
        origin.write_text(origin_text)
        marker = run_dir / "ostree" / "staged-deployment"
        marker.parent.mkdir(parents=True, exist_ok=True)
        csum, serial = new.name.split(".")
        # Not a real GVariant, but the strings are there as in one: target = {name: "CSUM.SERIAL", ...}.
        marker.write_bytes(b"target\x00name\x00" + f"{csum}.{serial}".encode() + b"\x00osname\x00"
                           + OSNAME.encode() + b"\x00")
        return new.name

    def status(self) -> str:
        return run("ostree", "admin", "status", f"--sysroot={self.path}")


def make_sysroot(tmp: Path) -> Sysroot:
    path = tmp / "sysroot"
    path.mkdir(parents=True)
    work = tmp / "work"
    work.mkdir()
    run("ostree", "admin", "init-fs", str(path))
    run("ostree", "admin", "os-init", f"--sysroot={path}", OSNAME)
    return Sysroot(path=path, work=work)
