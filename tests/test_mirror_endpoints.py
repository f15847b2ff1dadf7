"""registries.conf mirrors against real registries: tether asks the endpoints podman asks, in podman's order.

containers-registries.conf(5): a pull tries the mirrors in file order, then the primary, and the first endpoint
that serves the manifest serves everything else (c/image ``docker_image_src.go newImageSource``: each
``PullSource`` is tried with a ping and a manifest GET; the client of the one that answers reads the config and
the layers). ``pull-from-mirror = "digest-only" | "tag-only"`` drops a mirror for tag (digest) references;
``mirror-by-digest-only = true`` drops every mirror for tags.

Three docker-registry processes (primary ``P``, mirrors ``M1`` and ``M2``, the mirrors under another namespace so
locations are rewritten) sit behind counting proxies sharing one sequence; images are pushed so that each is on
some endpoints only, one tag names a different image on each endpoint, and a multi-platform index lives on ``M1``
and ``P``. For three registries.conf files (per-mirror ``pull-from-mirror``, ``mirror-by-digest-only``, plain
mirrors), every image is pulled by tag and by digest by ``podman pull`` and by ``tether pull`` with the same
file: the requests each tool made (endpoint, method, path, status, in order) must be the same, match the order
registries.conf prescribes, stop at the first endpoint that serves the manifest, and fetch every blob (and an
index's child manifest) from that endpoint; both store the same image, or both fail.

``tether mirror sync --registries-conf-out`` writes a drop-in that, placed in the user's registries.conf.d next
to the same main file, makes podman and tether pull through the mirror (by tag and by digest) with the source
registry stopped.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import images as factory
from tests.harness.faulty_proxy import FaultyProxy, ProxiedRequest
from tests.harness.podman import Podman, short_runroot
from tests.harness.registry import RunningRegistry, start_registry
from tether.engine.cli.main import main as tether
from tether.store.containers_storage import Store

ENDPOINTS = ("P", "M1", "M2")
#: The repository of image NAME on each endpoint: mirrors keep theirs under another namespace.
NAMESPACE = {"P": "team", "M1": "cache", "M2": "cache"}

AMD64 = factory.simple_image(1901, files=1, layers=1, architecture="amd64")
ARM64 = factory.simple_image(1902, files=1, layers=1, architecture="arm64", variant="v8")
SAME = factory.simple_image(1903, files=1, layers=1)
#: image name -> what each endpoint holds under the tag ``1`` (absent: nothing)
CONTENT: dict[str, dict[str, factory.BuiltImage | factory.BuiltIndex]] = {
    "primary-only": {"P": factory.simple_image(1904, files=1, layers=1)},
    "everywhere": {"P": SAME, "M1": SAME, "M2": SAME},
    "mirrors-only": dict.fromkeys(("M1", "M2"), factory.simple_image(1905, files=1, layers=1)),
    "second-mirror": {"M2": factory.simple_image(1906, files=1, layers=1)},
    # the tag names a different image on each endpoint: which one a tool got says where it pulled from
    "drift": {"P": factory.simple_image(1907, files=1, layers=1), "M1": factory.simple_image(1908, files=1, layers=1),
              "M2": factory.simple_image(1909, files=1, layers=1)},
    "multi": dict.fromkeys(("M1", "P"), factory.build_index([AMD64, ARM64])),
}
#: registries.conf variants: the lines of the [[registry]] table and of each mirror
CONFIGS = {
    "pull-from-mirror": ("", 'pull-from-mirror = "digest-only"', 'pull-from-mirror = "tag-only"'),
    "mirror-by-digest-only": ("mirror-by-digest-only = true", "", ""),
    "all": ("", 'pull-from-mirror = "all"', ""),
}
#: the endpoints each variant allows, in the order containers-registries.conf(5) prescribes
ORDER = {
    ("pull-from-mirror", "tag"): ("M2", "P"),
    ("pull-from-mirror", "digest"): ("M1", "P"),
    ("mirror-by-digest-only", "tag"): ("P",),
    ("mirror-by-digest-only", "digest"): ("M1", "M2", "P"),
    ("all", "tag"): ("M1", "M2", "P"),
    ("all", "digest"): ("M1", "M2", "P"),
}


class _Sequenced(list[ProxiedRequest]):
    """A proxy's request list that numbers each request from a counter the proxies share, so that requests to
    different endpoints can be put in the order they were made."""

    def __init__(self, endpoint: str, counter: Iterator[int], order: dict[int, tuple[int, str]]) -> None:
        super().__init__()
        self.endpoint, self.counter, self.order = endpoint, counter, order

    def append(self, request: ProxiedRequest) -> None:
        self.order[id(request)] = (next(self.counter), self.endpoint)
        super().append(request)


@dataclass
class Mirrors:
    """The three registries behind their proxies, and what each proxy saw."""

    registries: dict[str, RunningRegistry]
    proxies: dict[str, FaultyProxy]
    order: dict[int, tuple[int, str]]

    def host(self, endpoint: str) -> str:
        return self.proxies[endpoint].host

    def name(self, image: str, form: str) -> str:
        """The logical name pulled: the primary's, by tag or by the digest of the primary's image (or, when the
        primary has none, the first mirror's)."""
        content = CONTENT[image]
        owner = "P" if "P" in content else next(e for e in ENDPOINTS if e in content)
        repo = f"{self.host('P')}/{NAMESPACE['P']}/{image}"
        return f"{repo}:1" if form == "tag" else f"{repo}@{content[owner].manifest_digest}"

    def write_conf(self, path: Path, variant: str) -> Path:
        registry_line, m1_line, m2_line = CONFIGS[variant]
        lines = ["[[registry]]", f'prefix = "{self.host("P")}/{NAMESPACE["P"]}"',
                 f'location = "{self.host("P")}/{NAMESPACE["P"]}"', "insecure = true", registry_line]
        for endpoint, extra in (("M1", m1_line), ("M2", m2_line)):
            lines += ["[[registry.mirror]]", f'location = "{self.host(endpoint)}/{NAMESPACE[endpoint]}"',
                      "insecure = true", extra]
        path.write_text("\n".join(line for line in lines if line) + "\n")
        return path

    def take(self) -> list[tuple[str, str, str, int | None]]:
        """``(endpoint, method, path, status)`` of every request since the last call, in the order made."""
        requests = [(self.order[id(r)], r) for proxy in self.proxies.values() for r in proxy.requests]
        for proxy in self.proxies.values():
            proxy.requests.clear()
        self.order.clear()
        return [(endpoint, r.method, r.path, r.status) for (_, endpoint), r in sorted(requests, key=lambda x: x[0])]


@pytest.fixture(scope="module")
def mirrors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirrors]:
    tmp = tmp_path_factory.mktemp("mirror-endpoints")
    registries: dict[str, RunningRegistry] = {}
    proxies: dict[str, FaultyProxy] = {}
    counter = itertools.count()
    order: dict[int, tuple[int, str]] = {}
    try:
        for endpoint in ENDPOINTS:
            registries[endpoint] = start_registry(tmp / endpoint)
            proxies[endpoint] = FaultyProxy(upstream=registries[endpoint].host,
                                            requests=_Sequenced(endpoint, counter, order)).start()
        for image, held in CONTENT.items():
            for endpoint, built in held.items():
                factory.push_image(registries[endpoint].host, f"{NAMESPACE[endpoint]}/{image}:1", built)
        yield Mirrors(registries, proxies, order)
    finally:
        for proxy in proxies.values():
            proxy.stop()
        for running in registries.values():
            running.stop()


def podman_pull(tmp: Path, conf: Path, name: str, *, home: Path) -> tuple[int, str, str]:
    """``podman pull NAME`` into a fresh vfs store with ``conf`` as registries.conf: (status, image id, stderr)."""
    podman = Podman(root=tmp / "root", runroot=short_runroot(), driver="vfs")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "CONTAINERS_REGISTRIES_CONF": str(conf)}
    try:
        proc = subprocess.run([*podman.base(), "pull", "--quiet", "--signature-policy", str(home / "policy.json"),
                               name], capture_output=True, text=True, env=env, timeout=120)
    finally:
        shutil.rmtree(podman.runroot, ignore_errors=True)
    return proc.returncode, proc.stdout.strip(), proc.stderr


def tether_pull(tmp: Path, conf: Path, name: str, *extra: str) -> tuple[int, str]:
    """``tether pull NAME`` (in process) into a fresh store: (status, image id)."""
    status = tether(["pull", "--root", str(tmp / "root"), "--runroot", str(tmp / "run"), "--registries-conf",
                     str(conf), "--progress", "none", "--policy", "always", *extra, name])
    if status != 0:
        return status, ""
    return status, Store.open(tmp / "root").find_image(name).id


def expected_manifest_gets(variant: str, form: str, image: str) -> tuple[list[str], str | None]:
    """The endpoints whose manifest is asked for, in order, and the one that serves it (None: none does)."""
    asked: list[str] = []
    digest_owner = "P" if "P" in CONTENT[image] else next(e for e in ENDPOINTS if e in CONTENT[image])
    for endpoint in ORDER[variant, form]:
        asked.append(endpoint)
        held = CONTENT[image].get(endpoint)
        if held is not None and (form == "tag" or held.manifest_digest == CONTENT[image][digest_owner].manifest_digest):
            return asked, endpoint
    return asked, None


@pytest.mark.parametrize("variant", list(CONFIGS))
def test_tether_asks_the_endpoints_podman_asks(mirrors: Mirrors, variant: str, tmp_path: Path,
                                               hermetic: Path) -> None:
    conf = mirrors.write_conf(tmp_path / "registries.conf", variant)
    mirrors.take()
    for image, form in itertools.product(CONTENT, ("tag", "digest")):
        name = mirrors.name(image, form)
        case = f"{variant}: {image} by {form}"
        theirs_status, theirs_id, theirs_err = podman_pull(tmp_path / f"podman-{image}-{form}", conf, name,
                                                           home=hermetic)
        theirs = mirrors.take()
        ours_status, ours_id = tether_pull(tmp_path / f"tether-{image}-{form}", conf, name)
        ours = mirrors.take()
        assert ours == theirs, f"{case}: tether asked\n{_show(ours)}\npodman asked\n{_show(theirs)}"

        asked, server = expected_manifest_gets(variant, form, image)
        manifest_gets = [(endpoint, status) for endpoint, method, path, status in ours if "/manifests/" in path]
        top = [(endpoint, status) for endpoint, status in manifest_gets if endpoint != server or status != 200]
        assert [endpoint for endpoint, _ in top] == [e for e in asked if e != server], (case, ours)
        assert all(status == 404 for _, status in top), (case, ours)
        if server is None:
            assert theirs_status != 0 and ours_status != 0, (case, theirs_err)
            assert not any("/blobs/" in path for _, _, path, _ in ours), case
            continue
        assert theirs_status == 0 and ours_status == 0, (case, theirs_err)
        assert ours_id == theirs_id == _image_id(CONTENT[image][server]), case
        # everything after the serving manifest (an index's child, the config, the layers) from that endpoint
        served_at = ours.index(next(r for r in ours if r[0] == server and "/manifests/" in r[2] and r[3] == 200))
        rest = [r for r in ours[served_at:] if r[2] != "/v2/"]
        assert rest and {endpoint for endpoint, *_ in rest} == {server}, (case, ours)
        assert all(path.startswith(f"/v2/{NAMESPACE[server]}/{image}/") for _, _, path, _ in rest), (case, ours)
        assert sum("/blobs/" in path for _, _, path, _ in rest) == _blob_count(CONTENT[image][server]), case


def _image_id(built: factory.BuiltImage | factory.BuiltIndex) -> str:
    one = next(i for i in built.images if i is AMD64) if isinstance(built, factory.BuiltIndex) else built
    return one.config_digest.split(":", 1)[1]


def _blob_count(built: factory.BuiltImage | factory.BuiltIndex) -> int:
    one = AMD64 if isinstance(built, factory.BuiltIndex) else built
    return len(list(one.blobs()))


def _show(requests: list[tuple[str, str, str, int | None]]) -> str:
    return "\n".join(f"  {endpoint} {method} {path} {status}" for endpoint, method, path, status in requests)


def test_a_mirror_sync_dropin_serves_podman_and_tether_with_the_source_stopped(
        registry_factory: Callable[..., RunningRegistry], tmp_path: Path, hermetic: Path) -> None:
    source, dest = registry_factory(), registry_factory()
    app = factory.simple_image(1910, files=2, layers=2)
    other = factory.simple_image(1911, files=1, layers=1)
    factory.push_image(source.host, "org/app:1", app)
    factory.push_image(source.host, "org/other:1", other)
    main_conf = tmp_path / "registries.conf"
    main_conf.write_text(f'[[registry]]\nlocation = "{source.host}"\ninsecure = true\n')
    # the user's drop-in directory: podman reads it beside $CONTAINERS_REGISTRIES_CONF (c/image
    # newConfigWrapperWithHomeDir), tether too
    dropin = hermetic / ".config/containers/registries.conf.d/50-tether-mirror.conf"
    status = tether(["mirror", "sync", "--registries-conf", str(main_conf), "--dest-tls-verify=false",
                     "--to", f"docker://{dest.host}/mirror", "--registries-conf-out", str(dropin),
                     f"{source.host}/org/app:1"])
    assert status == 0
    assert f'prefix = "{source.host}/org/app"' in dropin.read_text()
    source.stop()
    before = len(dest.access_log())

    for name in (f"{source.host}/org/app:1", f"{source.host}/org/app@{app.manifest_digest}"):
        theirs_status, theirs_id, err = podman_pull(tmp_path / f"podman-{len(name)}", main_conf, name,
                                                    home=hermetic)
        assert theirs_status == 0, err
        ours_status, ours_id = tether_pull(tmp_path / f"tether-{len(name)}", main_conf, name)
        assert ours_status == 0
        assert ours_id == theirs_id == app.config_digest.split(":", 1)[1]
    served = dest.access_log()[before:]
    manifest_gets = [line for line in served if '"GET /v2/mirror/app/manifests/' in line]
    assert len(manifest_gets) == 4, served  # two names, two tools, each from the mirror
    # what was not synced is not on the mirror: its only endpoint is the stopped source, for both
    assert podman_pull(tmp_path / "podman-other", main_conf, f"{source.host}/org/other:1", home=hermetic)[0] != 0
    # (--retry 0: no outage wait for the stopped source)
    assert tether_pull(tmp_path / "tether-other", main_conf, f"{source.host}/org/other:1", "--retry", "0")[0] != 0
