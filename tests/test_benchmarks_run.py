"""benchmarks/run.py, corpus.py and wan.py against the real tools: the five-tiny case run by tether, podman,
skopeo and GNU tar on loopback, and over the emulated WAN (root: a network namespace, tbf, docker-registry in
the namespace, the delay proxy), whose every tool must cross the link and which must leave nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import corpus, run, wan
from benchmarks.run import Env, Measurement, summarize_case
from tests.harness.registry import RunningRegistry

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the WAN link needs root (netns, veth, tc)")


def test_a_case_summary_has_medians_failures_bytes_and_ratios() -> None:
    summary = summarize_case({
        "tether": [Measurement(1.0, 40_000_000, 0, 1000), Measurement(3.0, 50_000_000, 0, 1000),
                   Measurement(2.0, 45_000_000, 0, 1000)],
        "podman": [Measurement(4.0, 90_000_000, 0, 2000), Measurement(9.0, 90_000_000, 1, 0),
                   Measurement(5.0, 90_000_000, 0, 2000)],
        "skopeo": [Measurement(1.0, 20_000_000, 0, 1000, cpu_seconds=0.5, others_cpu_seconds=0.25)] * 3,
    })
    tether, podman = summary["tools"]["tether"], summary["tools"]["podman"]
    assert (tether["median"], tether["min"], tether["max"], tether["peak_rss_mb"]) == (2.0, 1.0, 3.0, 50.0)
    assert tether["registry_sent_bytes"] == [1000, 1000, 1000]
    assert podman["failed_runs"] == 1 and podman["median"] == 4.5  # the failed run is left out
    assert summary["ratios"] == {"tether/podman": 0.444, "tether/skopeo": 2.0}
    assert summary["tools"]["skopeo"]["cpu_s"] == [0.5] * 3 and summary["tools"]["skopeo"]["others_cpu_s"] == [0.25] * 3
    assert "cpu_s" not in tether
    loopback = summarize_case({"tether": [Measurement(1.0, 1, 0)], "tar-floor": [Measurement(0.5, 1, 0)]})
    assert "registry_sent_bytes" not in loopback["tools"]["tether"]
    assert loopback["ratios"] == {"tether/tar-floor": 2.0}


def test_a_run_counts_its_own_cpu_apart_from_the_machines() -> None:
    spin = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    measured = run.run_measured([sys.executable, "-c", spin])
    assert measured.returncode == 0
    assert measured.cpu_seconds is not None and measured.cpu_seconds >= 0.3
    assert measured.others_cpu_seconds is not None and measured.others_cpu_seconds >= 0.0
    assert measured.peak_rss > 0


def test_the_wan_option_reads_rate_and_rtt() -> None:
    assert run._wan_spec("200,40") == (200.0, 40.0)
    assert run._wan_spec("1000,2.5") == (1000.0, 2.5)
    with pytest.raises(Exception, match="RATE_MBIT,RTT_MS"):
        run._wan_spec("fast")
    with pytest.raises(Exception, match="positive"):
        run._wan_spec("0,40")


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory, registry: RunningRegistry) -> Path:
    """The five tiny images built into an OCI layout and pushed to the session registry; the work directory."""
    work = tmp_path_factory.mktemp("bench-work")
    layout = corpus.build_layout(work, {ref: corpus.IMAGES[ref] for ref in corpus.TINY})
    corpus.push_corpus(layout, registry.host, env=dict(os.environ), refs=corpus.TINY)
    return work


def test_the_tiny_images_are_tiny_share_their_base_and_are_rebuilt_identically(tiny_corpus: Path,
                                                                               tmp_path: Path) -> None:
    layout = tiny_corpus / "layout"
    layers = [corpus.layer_blobs(layout, ref) for ref in corpus.TINY]
    assert all(len(image) == 2 for image in layers)
    assert len({image[0] for image in layers}) == 1  # one base
    assert len({image[1] for image in layers}) == 5
    for image in layers:
        assert 60_000 <= sum(blob.stat().st_size for blob in image) <= 100_000
    again = corpus.build_layout(tmp_path, {"bench/tiny-3:v1": corpus.IMAGES["bench/tiny-3:v1"]})
    assert [b.name for b in corpus.layer_blobs(again, "bench/tiny-3:v1")] == [b.name for b in layers[3]]


@pytest.fixture
def bench_env(tiny_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[
        tuple[Path, list[Env]]]:
    """Envs made by the test share a fresh work directory; their stores are unmounted and removed after."""
    monkeypatch.setattr(run, "MIN_FREE_BYTES", 0)  # never the settling pause of a full disk
    envs: list[Env] = []
    try:
        yield tmp_path, envs
    finally:
        for env in envs:
            env.clear_stores(settle=False)


def _env(work: Path, link: wan.Link, layout: Path, envs: list[Env]) -> Env:
    conf = work / "registries.conf"
    run.write_registries_conf(conf, link.host)
    # The module's tests share the bytecode tether compiles on its first run (seconds, not the point here).
    environ = {**run.tool_environment(work, conf), "PYTHONPYCACHEPREFIX": str(layout.parent / "pycache")}
    env = Env(work=work, link=link, layout=layout, registries_conf=conf, env=environ, drop_page_cache=False)
    envs.append(env)
    return env


def test_five_tiny_on_loopback_runs_every_tool(registry: RunningRegistry, tiny_corpus: Path,
                                               bench_env: tuple[Path, list[Env]]) -> None:
    work, envs = bench_env
    env = _env(work, wan.Link("loopback", registry.host), tiny_corpus / "layout", envs)
    results = run.run_cases(env, ["five-tiny"], 1)["five-tiny"]
    assert set(results["tools"]) == {"tether", "podman", "skopeo", "tar-floor"}
    assert all(tool["failed_runs"] == 0 for tool in results["tools"].values()), results
    assert set(results["ratios"]) == {"tether/podman", "tether/skopeo", "tether/tar-floor"}
    # Each run wrote a store of its own; tether's holds the five images.
    images = subprocess.run([*env.tether, "images", "--root", str(work / "stores" / "five-tiny-tether-0"),
                             "--storage-driver", "overlay", "--format", "json"], env=env.env, capture_output=True,
                            text=True, check=True).stdout
    assert sorted(name for image in json.loads(images) for name in image["Names"]) == sorted(
        f"{registry.host}/{ref}" for ref in corpus.TINY)


def _namespace_pids(namespace: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, check=True).stdout
    return [int(pid) for pid in out.split()]


def _gone(namespace: str, device: str, pids: list[int]) -> bool:
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    link = subprocess.run(["ip", "link", "show", device], capture_output=True, check=False)
    return namespace not in names and link.returncode != 0 and not any(os.path.exists(f"/proc/{p}") for p in pids)


@needs_root
def test_five_tiny_over_the_wan_sends_every_tool_through_the_link(registry: RunningRegistry, tiny_corpus: Path,
                                                                  bench_env: tuple[Path, list[Env]]) -> None:
    work, envs = bench_env
    layout = tiny_corpus / "layout"
    layers = {blob for ref in corpus.TINY for blob in corpus.layer_blobs(layout, ref)}
    layer_bytes = sum(blob.stat().st_size for blob in layers)
    spec = wan.WanSpec(rate_mbit=100, rtt_ms=10)
    with wan.wan_link(spec, workdir=work / "registry-wan", registry_data=registry.data_dir) as link:
        namespace, pids = link.namespace, _namespace_pids(link.namespace or "")
        assert len(pids) == 2  # docker-registry and the delay proxy
        assert link.host.endswith(f":{wan.PROXY_PORT}") and not link.host.startswith("127.")
        base = corpus.layer_blobs(layout, corpus.TINY[0])[0]
        calibration = wan.calibrate(link.host, "bench/tiny-0", base, small_requests=3)
        assert calibration["transfer_bytes"] == base.stat().st_size
        assert calibration["request_rtt_ms"] >= 10 and calibration["new_connection_request_ms"] >= 20
        env = _env(work, link, layout, envs)
        results = run.run_cases(env, ["five-tiny"], 1)["five-tiny"]
        assert set(results["tools"]) == {"tether", "podman", "skopeo"}  # GNU tar does not use the network
        for name, tool in results["tools"].items():
            assert tool["failed_runs"] == 0, (name, tool)
            assert tool["registry_sent_bytes"][0] >= layer_bytes, (name, tool)
        description = link.describe()
        assert description["network"] == "wan" and description["rate_mbit"] == 100 and description["rtt_ms"] == 10
    assert _gone(namespace or "", f"tbh{os.getpid()}", pids)


@needs_root
def test_the_wan_link_is_torn_down_when_the_run_fails(registry: RunningRegistry, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="a case failed"), \
            wan.wan_link(wan.WanSpec(rtt_ms=2), workdir=tmp_path, registry_data=registry.data_dir) as link:
        namespace, pids = link.namespace or "", _namespace_pids(link.namespace or "")
        raise RuntimeError("a case failed")
    assert _gone(namespace, f"tbh{os.getpid()}", pids)


@needs_root
def test_namespaces_left_by_a_dead_run_are_removed() -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    name, device = f"{wan.NAMESPACE_PREFIX}{dead.pid}", f"tbh{dead.pid}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "link", "add", device, "type", "veth", "peer", "name", f"tbn{dead.pid}"], check=True)
    live = f"{wan.NAMESPACE_PREFIX}{os.getpid()}"
    subprocess.run(["ip", "netns", "add", live], check=True)
    try:
        assert wan.remove_stale_namespaces() == [name]
        assert _gone(name, device, [])
        assert live in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    finally:
        subprocess.run(["ip", "link", "del", device], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["ip", "netns", "del", live], capture_output=True)
