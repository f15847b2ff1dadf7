"""Shared fixtures: real docker-registry processes and throwaway podman stores."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.podman import Podman, podman_for, short_runroot
from tests.harness.registry import RunningRegistry, start_registry


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    """One anonymous plain-HTTP registry for the whole session; use unique repository names per test."""
    running = start_registry(tmp_path_factory.mktemp("registry"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def registry_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RunningRegistry]]:
    """Start more registries (``start_registry`` keyword arguments); all stopped after the test."""
    started: list[RunningRegistry] = []

    def make(**kwargs: Any) -> RunningRegistry:
        running = start_registry(tmp_path_factory.mktemp("registry"), **kwargs)
        started.append(running)
        return running

    try:
        yield make
    finally:
        for running in started:
            running.stop()


@pytest.fixture
def podman(tmp_path: Path) -> Iterator[Podman]:
    """podman on a throwaway overlay store under the test's tmp dir (short run root under /tmp)."""
    instance = podman_for(tmp_path / "podman")
    try:
        yield instance
    finally:
        # podman mounts ROOT/overlay on itself and tmpfs-like state under the run root.
        for mount in (instance.root / "overlay", instance.runroot):
            subprocess.run(["umount", "-R", "-l", str(mount)], capture_output=True)
        shutil.rmtree(instance.runroot, ignore_errors=True)


@pytest.fixture
def podman_on() -> Iterator[Callable[[Path], Podman]]:
    """podman reading (or writing) an existing store, tether's, with a short run root of its own (one per store:
    podman records the run root in the store and refuses another)."""
    opened: dict[tuple[Path, str], Podman] = {}

    def make(root: Path, driver: str = "overlay") -> Podman:
        if (root, driver) not in opened:
            opened[root, driver] = Podman(root=root, runroot=short_runroot(), driver=driver)
        return opened[root, driver]

    try:
        yield make
    finally:
        for instance in opened.values():
            for mount in (instance.root / "overlay", instance.runroot):
                subprocess.run(["umount", "-R", "-l", str(mount)], capture_output=True)
            shutil.rmtree(instance.runroot, ignore_errors=True)
