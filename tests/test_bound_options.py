"""The ``.image`` keys bootc ignores, honoured by tether's sync against real registries:
``Arch`` picks the instance of a multi-platform image, ``AuthFile`` (read inside the deployment root)
authenticates, ``TLSVerify``/``Retry`` reach the pull request."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.bound import QUADLET_DIR, make_root
from tests.harness.faulty_proxy import Fault, FaultyProxy
from tests.harness.images import build_image, build_index, build_layer, file, push_image, simple_image
from tests.harness.registry import RunningRegistry
from tether.engine.bound.deployments import root_deployments
from tether.engine.bound.discovery import discover_bound_images, pull_request_for, pull_requests_for
from tether.engine.bound.sync import sync_deployments
from tether.engine.options import CommonOptions
from tether.registry.manifest import Platform
from tether.store.containers_storage import Store


def write_unit(root: Path, name: str, text: str) -> None:
    (root / QUADLET_DIR / name).write_text(text)


def test_pull_request_carries_the_options(tmp_path: Path) -> None:
    root = make_root(tmp_path / "r", {"a.image": "x"})
    (root / "etc/auth").mkdir(parents=True)
    (root / "etc/auth/auth.json").write_text("{}")
    write_unit(
        root,
        "a.image",
        "[Image]\nImage=quay.io/a/a:1\nArch=aarch64\nVariant=v8\nTLSVerify=false\nAuthFile=/etc/auth/auth.json\n"
        "CertDir=/etc/certs.d\nRetry=7\nRetryDelay=2s\n",
    )
    (image,) = discover_bound_images(root)
    request = pull_request_for(image, root=root)
    assert request.name == "quay.io/a/a:1"
    assert request.platform == Platform(os="linux", architecture="arm64", variant="v8")
    assert request.tls_verify is False
    assert request.authfile == root / "etc/auth/auth.json"  # found inside the deployment root
    assert request.cert_dir == Path("/etc/certs.d")  # not in the root: the host's path
    assert request.retries == 7
    assert request.retry_delay == 2.0
    plain = make_root(tmp_path / "p", {"b.image": "quay.io/a/b:1"})
    (other,) = pull_requests_for(discover_bound_images(plain), root=plain)
    assert (other.platform, other.tls_verify, other.authfile, other.cert_dir, other.retries, other.retry_delay) == (
        None, None, None, None, None, None,
    )


def test_platform_text_defaults_from_host(tmp_path: Path) -> None:
    root = make_root(tmp_path / "r", {"a.image": "x"})
    write_unit(root, "a.image", "[Image]\nImage=quay.io/a/a:1\nOS=freebsd\n")
    (image,) = discover_bound_images(root)
    assert image.platform_text is not None and image.platform_text.startswith("freebsd/")


async def test_arch_selects_the_instance(tmp_path: Path, registry: RunningRegistry) -> None:
    host = registry.host
    amd = build_image([build_layer([file("arch", "amd64\n")])], architecture="amd64")
    arm = build_image([build_layer([file("arch", "arm64\n")])], architecture="arm64", variant="v8")
    push_image(host, "op1/multi:1", build_index([amd, arm]))
    root = make_root(tmp_path / "r", {"m.image": "x"})
    write_unit(root, "m.image", f"[Image]\nImage={host}/op1/multi:1\nArch=arm64\nTLSVerify=false\n")
    store = Store.open(tmp_path / "store")
    report = await sync_deployments(root_deployments([root]), store=store, options=CommonOptions(root=store.root))
    assert report.ok, report.summary()
    (status,) = report.statuses
    assert [i.id for i in status.images] == [arm.image_id]
    assert store.find_image(f"{host}/op1/multi:1").id == arm.image_id


@pytest.fixture(scope="module")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    from tests.harness.registry import start_registry

    running = start_registry(tmp_path_factory.mktemp("authreg"), htpasswd={"bound": "s3cret"})
    try:
        yield running
    finally:
        running.stop()


async def test_authfile_inside_the_root_is_used(tmp_path: Path, auth_registry: RunningRegistry) -> None:
    host = auth_registry.host
    image = build_image([build_layer([file("secret", "only with credentials\n")])])
    push_image(host, "op2/private:1", image, credentials=("bound", "s3cret"))
    token = base64.b64encode(b"bound:s3cret").decode()
    root = make_root(tmp_path / "r", {"p.image": "x"})
    (root / "etc/containers").mkdir(parents=True)
    (root / "etc/containers/bound-auth.json").write_text(json.dumps({"auths": {host: {"auth": token}}}))
    store = Store.open(tmp_path / "store")
    options = CommonOptions(root=store.root, tls_verify=False, authfile=tmp_path / "empty-auth.json")
    (tmp_path / "empty-auth.json").write_text("{}")
    deployments = root_deployments([root])

    write_unit(root, "p.image", f"[Image]\nImage={host}/op2/private:1\n")
    report = await sync_deployments(deployments, store=store, options=options)
    assert not report.ok
    assert report.failures[0].image == f"{host}/op2/private:1"

    write_unit(root, "p.image", f"[Image]\nImage={host}/op2/private:1\nAuthFile=/etc/containers/bound-auth.json\n")
    report = await sync_deployments(deployments, store=store, options=options)
    assert report.ok, report.summary()
    assert [i.id for i in report.statuses[0].images] == [image.image_id]


@pytest.mark.parametrize(("retry", "ready"), [("Retry=0\nRetryDelay=0s\n", False), ("Retry=3\nRetryDelay=0s\n", True)])
async def test_retry_keys_decide_whether_a_flaky_registry_is_retried(
    tmp_path: Path, registry: RunningRegistry, retry: str, ready: bool
) -> None:
    push_image(registry.host, "bo-retry/app:1", simple_image(961, files=1, layers=1))
    with FaultyProxy(registry.host).start() as proxy:
        proxy.add(Fault("status", path_contains="/manifests/", status=503, times=2))
        root = make_root(tmp_path / "r", {"app.image": "x"})
        write_unit(root, "app.image", f"[Image]\nImage={proxy.host}/bo-retry/app:1\nTLSVerify=false\n{retry}")
        store = Store.open(tmp_path / "store")
        report = await sync_deployments(root_deployments([root]), store=store, options=CommonOptions(root=store.root))
        assert report.ok is ready
        # Retry=0: one try and the 503 is final; Retry=3: the two 503s are retried away.
        assert proxy.count("GET", "/manifests/") == (1 if not ready else 3)
