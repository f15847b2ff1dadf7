"""Real ostree sysroots for bound-image tests, built as ostree's tests/libtest.sh builds them.

``ostree admin init-fs``, ``os-init``, ``commit`` a tree (``usr/etc``, a kernel under
``usr/lib/modules/VERSION``, ``usr/lib/bootc/bound-images.d`` symlinks to quadlet files), then
``ostree admin deploy --sysroot``. ``OSTREE_SYSROOT_DEBUG=mutable-deployments`` keeps deployment
directories free of the immutable bit so pytest can remove them.

Staging (``ostree admin deploy --stage``, what ``bootc upgrade`` does) is done by ostree itself, which only
stages on a booted system: :meth:`Sysroot.stage` boots the default deployment the way ostree recognizes one, in
a new mount and PID namespace (``/`` is the deployment's directory, the sysroot bind-mounted at ``/sysroot``
and reached through the deployment's ``/ostree -> sysroot/ostree``, ``/run/ostree-booted``), so ostree writes
the real ``/run/ostree/staged-deployment`` GVariant and checks out the staged deployment as on a host.  Every
committed tree carries what that needs (the top-level directories and links of an ostree OS tree).
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
#: Directories of an OS tree that booting it (and so :meth:`Sysroot.stage`) mounts over.
MOUNT_POINTS = ("sysroot", "boot", "proc", "dev", "tmp", "run")
#: The top-level links of an ostree OS tree (the deployment's /ostree reaches the sysroot's repo and deploy/).
TOP_LINKS = {"ostree": "sysroot/ostree", "bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib",
             "lib64": "usr/lib64"}


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
            *MOUNT_POINTS,
        ):
            (tree / d).mkdir(parents=True, exist_ok=True)
        for link, target in TOP_LINKS.items():
            os.symlink(target, tree / link)
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

    def default_deployment(self) -> Path:
        """The directory of the deployment the next boot starts (the first ``ostree admin status`` lists)."""
        for line in self.status().splitlines():
            fields = line.replace("*", " ").split()
            if len(fields) >= 2 and fields[0] == OSNAME:
                return self.path / "ostree" / "deploy" / OSNAME / "deploy" / fields[1]
        raise AssertionError(f"no deployment in {self.path}")

    def stage(self, run_dir: Path) -> str:
        """``ostree admin deploy --stage`` of the branch's head, run by ostree on the default deployment booted
        (see the module docstring); ``run_dir`` is that system's ``/run``, where ostree writes
        ``ostree/staged-deployment``.  Returns the staged deployment's directory name."""
        before = set(self.deploy_dirs())
        booted = self.default_deployment()
        run_dir.mkdir(parents=True, exist_ok=True)
        stub = self.work / "stub-bin"
        stub.mkdir(exist_ok=True)
        # ostree starts ostree-finalize-staged.service (to finalize at shutdown): there is no systemd here.
        (stub / "systemctl").write_text("#!/bin/sh\nexit 0\n")
        os.chmod(stub / "systemctl", 0o755)
        script = "\n".join([
            "set -e",
            f'D="{booted}"',
            "mount --bind /usr \"$D/usr\"",  # ostree and its libraries, from the host
            f'mount --bind "{self.path}" "$D/sysroot"',
            f'mount --bind "{self.path}/boot" "$D/boot"',
            "mount -t proc proc \"$D/proc\"",  # this PID namespace's: ostree reads /proc/1/ns/mnt
            "mount --bind /dev \"$D/dev\"",
            "mount -t tmpfs tmpfs \"$D/tmp\"",
            f'mount --bind "{run_dir}" "$D/run"',
            f'mkdir "$D/tmp/bin" && cp "{stub}/systemctl" "$D/tmp/bin/"',
            "touch \"$D/run/ostree-booted\"",
            f"chroot \"$D\" env PATH=/tmp/bin:/usr/bin:/bin OSTREE_SYSROOT_DEBUG=mutable-deployments "
            f"ostree admin deploy --stage --os={OSNAME} {BRANCH}",
        ])
        proc = subprocess.run(["unshare", "--mount", "--pid", "--fork", "--propagation", "private", "sh", "-c",
                               script], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise AssertionError(f"ostree admin deploy --stage failed ({proc.returncode}): {proc.stderr.strip()}")
        (new,) = set(self.deploy_dirs()) - before
        assert (run_dir / "ostree" / "staged-deployment").exists()
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
