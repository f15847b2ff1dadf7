"""Shared fixtures: real docker-registry processes and throwaway podman stores; the skip allowlist."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.podman import Podman, podman_for, short_runroot
from tests.harness.registry import RunningRegistry, start_registry

#: The only skips a run may have: (test id prefix, text the skip reason contains) -> why it may skip. Any other
#: skip fails its test (a tool missing from scripts/install-deps.sh, a fixture that quietly stopped working must
#: not pass CI as "skipped"). Add an entry only for what a machine may legitimately lack, and say why.
ALLOWED_SKIPS: dict[tuple[str, str], str] = {
    ("tests/test_auth.py::test_reads_what_podman_login_writes", "--get-login unsupported"):
        "podman older than 4.0 has no `login --get-login`",
    ("tests/test_store_podman.py::", "podman run is not permitted"):
        "sandboxes that refuse crun's setrlimit cannot run containers at all",
    ("tests/test_store_podman.py::", "no static busybox"):
        "busybox-static is what the runnable image is built from; install-deps.sh installs it",
    ("tests/test_store_unit.py::", "are not permitted here"):
        "containers without CAP_SYS_ADMIN cannot bind-mount or remount read-only",
    ("tests/test_causes_named.py::test_full_disk", "cannot mount a tmpfs"):
        "containers without CAP_SYS_ADMIN cannot mount the small filesystem that fills up",
    ("tests/test_registries_conf.py::", "shortnames.conf is not installed"):
        "containers-common's alias file is packaged separately on some distributions",
    ("tests/test_resume.py::", "network namespaces need root"):
        "the slow link is a veth pair into a network namespace: creating them needs root (CAP_NET_ADMIN)",
    ("tests/test_limit_rate.py::", "network namespaces need root"):
        "the slow link is a veth pair into a network namespace: creating them needs root (CAP_NET_ADMIN)",
}


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A skip not in :data:`ALLOWED_SKIPS` becomes a failure naming its reason."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    if any(item.nodeid.startswith(prefix) and text in reason for prefix, text in ALLOWED_SKIPS):
        return
    report.outcome = "failed"
    report.longrepr = f"skipped ({reason}) and not in tests/conftest.py ALLOWED_SKIPS: install what it needs"


# --- hermetic tests -------------------------------------------------------------------------------------------
#: What no test may read: the host's container and ostree configuration and the real user's files. The audit hook
#: below sees every file this process opens or lists (tether runs in-process in most tests; its extraction
#: children only read layers); podman/skopeo children are given the same environment.
_REAL_HOME = Path(os.path.expanduser("~"))
FORBIDDEN_PREFIXES = (
    "/etc/containers", "/etc/ostree", "/etc/docker", "/run/containers", "/run/ostree", "/usr/lib/ostree",
    "/var/cache/containers",
    *(str(_REAL_HOME / rel) for rel in (".config/containers", ".docker", ".dockercfg", ".cache/containers")),
)
_host_reads: list[str] = []


def _audit(event: str, args: tuple[object, ...]) -> None:
    if event not in ("open", "os.listdir", "os.scandir") or not args:
        return
    path = args[0]
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if isinstance(path, str | os.PathLike):
        text = os.path.abspath(os.fspath(path))
        if any(text == prefix or text.startswith(prefix + "/") for prefix in FORBIDDEN_PREFIXES):
            _host_reads.append(f"{event} {text}")


sys.addaudithook(_audit)


@pytest.fixture(autouse=True)
def hermetic(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test gets its own $HOME, $XDG_RUNTIME_DIR and registries.conf, no auth-file variables, and fails if
    it read the host's /etc/containers, /etc/ostree or the real user's container files (see FORBIDDEN_PREFIXES).
    Yields the fake home. ``@pytest.mark.system_defaults``: the tests of those default paths themselves (with
    explicit roots) keep the real constants; ``@pytest.mark.reads_host_config(reason)``: no guard."""
    home = tmp_path_factory.mktemp("home")
    runtime = tmp_path_factory.mktemp("xdg-run")
    registries = home / "registries.conf"
    registries.write_text("")
    policy = home / "policy.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    monkeypatch.setenv("CONTAINERS_REGISTRIES_CONF", str(registries))
    for name in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "DOCKER_CONFIG", "REGISTRY_AUTH_FILE", "CONTAINERS_STORAGE_CONF"):
        monkeypatch.delenv(name, raising=False)
    # the system-wide defaults no option names relocate into this test's home (in-process runs of tether)
    import tether.engine.arguments
    import tether.engine.options
    import tether.registry.certs
    import tether.registry.registries_conf.loading
    import tether.registry.trust.config
    import tether.registry.trust.registries_d

    if request.node.get_closest_marker("system_defaults") is not None:
        yield home
        return
    monkeypatch.setattr(tether.engine.arguments, "DEFAULT_POLICY", policy)
    monkeypatch.setattr(tether.engine.options, "DEFAULT_POLICY", policy)
    monkeypatch.setattr(tether.registry.trust.config, "SYSTEM_POLICY_PATH", policy)
    policy_defaults = tether.registry.trust.config.find_policy_file.__kwdefaults__
    registries_d_defaults = tether.registry.trust.registries_d.find_registries_d.__kwdefaults__
    assert policy_defaults is not None and registries_d_defaults is not None
    monkeypatch.setitem(policy_defaults, "system", policy)
    monkeypatch.setattr(tether.registry.trust.registries_d, "SYSTEM_REGISTRIES_D", home / "registries.d")
    monkeypatch.setitem(registries_d_defaults, "system", home / "registries.d")
    monkeypatch.setattr(tether.registry.registries_conf.loading, "SYSTEM_REGISTRIES_CONF_D",
                        home.relative_to("/") / "registries.conf.d")
    monkeypatch.setattr(tether.registry.certs, "SYSTEM_CERTS_D", (home.relative_to("/") / "certs.d",))
    monkeypatch.setattr(tether.registry.registries_conf.loading, "ROOT_ALIASES_CONF",
                        home.relative_to("/") / "short-name-aliases.conf")
    _host_reads.clear()
    yield home
    reads, _host_reads[:] = list(_host_reads), []
    if request.node.get_closest_marker("reads_host_config") is not None:
        return
    assert not reads, f"the test read the host's configuration: {sorted(set(reads))[:10]}"


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
