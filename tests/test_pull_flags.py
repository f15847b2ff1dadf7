"""Issue 15 item 9: podman's everyday ``pull`` flags against real registries.

``--creds`` against an htpasswd docker-registry (never printed, even at debug level), ``--retry`` and
``--retry-delay`` against a registry behind a proxy that fails the first requests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import images as factory
from tests.harness.cli import StoreArgs, tether
from tests.harness.faulty_proxy import Fault, FaultyProxy
from tests.harness.registry import RunningRegistry

IMAGE = factory.simple_image(1571, files=2)
SECRET = "s3cret-pw"


def test_creds_authenticate_the_named_registry_and_are_never_printed(
        tmp_path: Path, registry_factory: object) -> None:
    locked: RunningRegistry = registry_factory(htpasswd={"alice": SECRET})  # type: ignore[operator]
    factory.push_image(locked.host, "creds/app:1", IMAGE, credentials=("alice", SECRET))
    args = StoreArgs.make(tmp_path, locked.host)
    ref = f"{locked.host}/creds/app:1"
    anonymous = tether("pull", *args.pull, "--progress", "none", ref)
    assert anonymous.returncode == 1 and "401" in anonymous.stderr + anonymous.stdout
    done = tether("--log-level", "debug", "pull", *args.pull, "--progress", "plain", "--creds", f"alice:{SECRET}", ref)
    assert done.returncode == 0 and done.stdout.split() == [IMAGE.image_id], done.stderr
    assert SECRET not in done.stdout + done.stderr
    wrong = tether("pull", *args.pull, "--progress", "none", "--policy", "always", "--creds", "alice:nope", ref)
    assert wrong.returncode == 1 and "nope" not in wrong.stdout + wrong.stderr


@pytest.fixture
def flaky(registry: RunningRegistry) -> Iterator[FaultyProxy]:
    factory.push_image(registry.host, "retry/app:1", IMAGE)
    with FaultyProxy(upstream=registry.host) as running:
        yield running


def test_retry_and_retry_delay(tmp_path: Path, flaky: FaultyProxy) -> None:
    args = StoreArgs.make(tmp_path, flaky.host)
    ref = f"{flaky.host}/retry/app:1"
    flaky.add(Fault("status", path_contains="/manifests/", status=500, times=1))
    once = tether("pull", *args.pull, "--progress", "none", "--retry", "0", ref)
    assert once.returncode == 1 and "500" in once.stderr, once.stderr
    flaky.add(Fault("status", path_contains="/manifests/", status=500, times=2))
    retried = tether("pull", *args.pull, "--progress", "none", "--retry", "2", "--retry-delay", "10ms", ref)
    assert retried.returncode == 0 and retried.stdout.split() == [IMAGE.image_id], retried.stderr
    failed = [r for r in flaky.requests if r.fault == "status"]
    assert len(failed) == 1 + 2  # the first pull's one try, then the second pull's two failed tries
    refused = tether("pull", *args.pull, "--retry", "-1", ref)
    assert refused.returncode == 1 and "--retry must be 0 or more" in refused.stderr
