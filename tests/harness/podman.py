"""Run podman and skopeo against throwaway stores (never the host's /var/lib/containers)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUN_DENIED = "setrlimit"  # crun in this sandbox: "setrlimit `RLIMIT_NOFILE`: Operation not permitted"

# This VM has hybrid cgroups and no CAP_SYS_RESOURCE-backed rlimit raise: crun refuses both. runc with the
# cgroupfs manager and containers.conf without podman's default ulimits (nofile=1048576) runs containers.
RUN_CONTAINERS_CONF = """[containers]
default_ulimits = []
"""


def container_env(runroot: Path) -> dict[str, str]:
    """The environment for podman here: a containers.conf that lets ``podman run`` work in this sandbox."""
    conf = runroot / "tether-tests-containers.conf"
    if not conf.exists():
        conf.write_text(RUN_CONTAINERS_CONF)
    return {**os.environ, "CONTAINERS_CONF": str(conf)}


def runtime_flags() -> list[str]:
    """Global podman flags for running containers on this VM (runc + cgroupfs when runc is installed)."""
    return ["--runtime", "runc", "--cgroup-manager", "cgroupfs"] if shutil.which("runc") else []


@dataclass(frozen=True)
class Podman:
    """``podman --root R --runroot RR --storage-driver D`` with no host configuration leaking in."""

    root: Path
    runroot: Path
    driver: str = "overlay"

    @property
    def store_spec(self) -> str:
        """The containers-storage transport's store specifier: ``[overlay@ROOT+RUNROOT]``."""
        return f"[{self.driver}@{self.root}+{self.runroot}]"

    def base(self) -> list[str]:
        return ["podman", "--root", str(self.root), "--runroot", str(self.runroot), "--storage-driver", self.driver,
                *runtime_flags()]

    def run(self, *args: str, check: bool = True, timeout: float = 300, input: str | None = None
            ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*self.base(), *args], capture_output=True, text=True, timeout=timeout, input=input,
                              env=container_env(self.runroot))
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args).stdout)

    def images(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.json("images", "--format", "json")
        return result

    def pull(self, ref: str, *extra: str) -> str:
        """Pull from a plain-HTTP loopback registry; returns the image id."""
        self.run("pull", "--quiet", "--tls-verify=false", *extra, ref)
        return str(self.json("image", "inspect", ref)[0]["Id"])


def short_runroot() -> Path:
    """A fresh run root: podman refuses run roots longer than 50 characters, so not under pytest's tmp."""
    return Path(tempfile.mkdtemp(prefix="trr", dir="/tmp"))


def podman_for(tmp: Path, driver: str = "overlay", *, runroot: Path | None = None) -> Podman:
    """podman on ``tmp/root``; the run root is short (see :func:`short_runroot`); remove it when done."""
    root = tmp / "root"
    root.mkdir(parents=True, exist_ok=True)
    return Podman(root=root, runroot=runroot or short_runroot(), driver=driver)


def skopeo(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"skopeo {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc
