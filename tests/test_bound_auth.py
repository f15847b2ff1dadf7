"""Credentials of the bound-image commands come from the sysroot's ostree pull secret only, end to end: ``bound
sync --sysroot`` against an htpasswd registry and a token-auth registry with ``SYSROOT/etc/ostree/auth.json``
(``/run/ostree/auth.json`` overriding it), podman's own files ignored; and anonymous bearer tokens (a token server
that grants anonymous pulls, as public registries do) used by ``tether pull``."""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import images as factory
from tests.harness.ostree_sysroot import Sysroot, make_sysroot
from tests.harness.registry import RunningRegistry
from tests.harness.token_server import TokenServer
from tether.engine.cli.main import main

pytestmark = pytest.mark.skipif(shutil.which("ostree") is None, reason="ostree not installed")

USER = ("dora", "explorer-pw")


def _auth(path: Path, entries: dict[str, tuple[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"auths": {k: {"auth": base64.b64encode(f"{u}:{p}".encode()).decode()}
                                          for k, (u, p) in entries.items()}}))


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[TokenServer]:
    with TokenServer(tmp_path / "token", users={USER[0]: USER[1]}) as server:
        yield server


def _sync(sysroot: Sysroot, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["bound", "sync", "--sysroot", str(sysroot.path), "--tls-verify=false", "--progress", "none",
                 "--format", "json"])
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.mark.parametrize("kind", ["htpasswd", "token"])
def test_bound_sync_uses_the_sysroot_pull_secret(
    registry_factory: Callable[..., RunningRegistry], token_server: TokenServer, tmp_path: Path, kind: str,
    capsys: pytest.CaptureFixture[str]
) -> None:
    if kind == "htpasswd":
        running = registry_factory(htpasswd={USER[0]: USER[1]})
        factory.push_image(running.host, "bound/app:1", factory.simple_image(seed=91, files=2, layers=1),
                           credentials=USER)
    else:
        running = registry_factory(token=token_server.token_auth)
        token = token_server.make_token(USER[0], ["repository:bound/app:pull,push"])
        factory.push_image(running.host, "bound/app:1", factory.simple_image(seed=92, files=2, layers=1),
                           headers={"Authorization": f"Bearer {token}"})
    sysroot = make_sysroot(tmp_path)
    sysroot.commit({"app.image": f"{running.host}/bound/app:1"}, tag="v1")
    sysroot.deploy()
    # podman's files have the right password: the bound commands must not read them
    _auth(Path(os.environ["XDG_RUNTIME_DIR"]) / "containers/auth.json", {running.host: USER})
    _auth(Path(os.environ["HOME"]) / ".docker/config.json", {running.host: USER})
    code, out = _sync(sysroot, capsys)
    assert code == 1 and "401" in out
    assert "no credentials configured for it; no auth file consulted" in out
    # /etc/ostree/auth.json under the sysroot; a wrong /run/ostree/auth.json overrides it, then a right one
    _auth(sysroot.path / "etc/ostree/auth.json", {running.host: USER})
    _auth(sysroot.path / "run/ostree/auth.json", {running.host: (USER[0], "wrong")})
    code, out = _sync(sysroot, capsys)
    assert code == 1 and "credentials refused" in out
    assert f"auth files consulted: {sysroot.path / 'run/ostree/auth.json'}" in out
    (sysroot.path / "run/ostree/auth.json").unlink()
    code, out = _sync(sysroot, capsys)
    assert code == 0, out
    assert [d["ready"] for d in json.loads(out)["deployments"]] == [True]
    if kind == "token":
        assert {r.authenticated_as for r in token_server.requests} >= {USER[0]}


def test_anonymous_bearer_tokens(registry_factory: Callable[..., RunningRegistry], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    with TokenServer(tmp_path / "token", users={USER[0]: USER[1]}, anonymous_pull=True) as server:
        running = registry_factory(token=server.token_auth)
        token = server.make_token(USER[0], ["repository:public/app:pull,push"])
        factory.push_image(running.host, "public/app:1", factory.simple_image(seed=93, files=2, layers=2),
                           headers={"Authorization": f"Bearer {token}"})
        code = main(["pull", "--root", str(tmp_path / "store"), "--runroot", str(tmp_path / "run"),
                     "--tls-verify=false", "--progress", "none", f"{running.host}/public/app:1"])
        assert code == 0, capsys.readouterr().err
        pulls = [r for r in server.requests if r.method == "GET"]
        assert pulls and all(r.authenticated_as is None and r.account is None for r in pulls)
        assert all(scope == "repository:public/app:pull" for r in pulls for scope in r.scopes)
