"""Credentials as podman finds them, end to end: ``podman login`` then ``tether pull`` (podman's auth-file lookup),
a 401 naming the files consulted, and one bad auth.json entry breaking only its own registry, with podman pulling
side by side from the same real docker-registry processes."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import images as factory
from tests.harness.podman import Podman, podman_for
from tests.harness.registry import RunningRegistry
from tether.engine.cli.main import main

USER = ("carol", "c4r0l-pw")


@pytest.fixture
def private(registry_factory: Callable[..., RunningRegistry]) -> RunningRegistry:
    running = registry_factory(htpasswd={USER[0]: USER[1]})
    factory.push_image(running.host, "login/app:1", factory.simple_image(seed=81, files=2, layers=1),
                       credentials=USER)
    return running


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[Podman]:
    instance = podman_for(tmp_path / "podman")
    yield instance
    os.system(f"umount -R -l {instance.runroot} {instance.root / 'overlay'} 2>/dev/null")


def _pull(tmp: Path, name: str, *extra: str) -> int:
    return main(["pull", "--root", str(tmp / "store"), "--runroot", str(tmp / "run"), "--tls-verify=false",
                 "--progress", "none", *extra, name])


def test_podman_login_then_tether_pull(private: RunningRegistry, pod: Podman, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    runtime = Path(os.environ["XDG_RUNTIME_DIR"])
    home = Path(os.environ["HOME"])
    name = f"{private.host}/login/app:1"
    # not logged in: the 401 names every file podman's lookup consulted
    assert _pull(tmp_path, name) == 1
    err = capsys.readouterr().err
    assert "401" in err and "no credentials configured for it" in err
    for path in (runtime / "containers/auth.json", home / ".config/containers/auth.json",
                 home / ".docker/config.json", home / ".dockercfg"):
        assert f"{path} (missing)" in err
    # podman login writes $XDG_RUNTIME_DIR/containers/auth.json; tether pull reads it there
    login = pod.run("login", "--tls-verify=false", "-u", USER[0], "--password-stdin", private.host, check=False,
                    input=USER[1])
    assert login.returncode == 0, login.stderr
    assert (runtime / "containers/auth.json").exists()
    assert _pull(tmp_path, name) == 0, capsys.readouterr().err
    # podman, with the same login, gets the same image
    assert pod.pull(name) == _stored_id(tmp_path, name)


def _stored_id(tmp: Path, name: str) -> str:
    from tether.store.containers_storage import Store

    return Store.open(tmp / "store").find_image(name).id


def test_one_bad_entry_breaks_only_its_registry(
    registry: RunningRegistry, private: RunningRegistry, pod: Podman, tmp_path: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    factory.push_image(registry.host, "login/open:1", factory.simple_image(seed=82, files=2, layers=1))
    authfile = tmp_path / "auth.json"
    authfile.write_text(json.dumps({"auths": {"quay.io": {"auth": "%%% not base64"},
                                              private.host: {"auth": "%%% not base64"}}}))
    good = f"{registry.host}/login/open:1"
    bad = f"{private.host}/login/app:1"
    # podman pulls from the other registry, and so does tether
    assert pod.run("pull", "--quiet", "--tls-verify=false", "--authfile", str(authfile), good, check=False
                   ).returncode == 0
    assert _pull(tmp_path, good, "--authfile", str(authfile)) == 0
    capsys.readouterr()
    # the registry whose entry is bad: both fail, tether naming the file and the key
    assert pod.run("pull", "--quiet", "--tls-verify=false", "--authfile", str(authfile), bad, check=False
                   ).returncode != 0
    assert _pull(tmp_path, bad, "--authfile", str(authfile)) == 1
    err = capsys.readouterr().err
    assert f"{authfile}: auths['{private.host}'].auth: not valid base64" in err
    assert "%%%" not in err
