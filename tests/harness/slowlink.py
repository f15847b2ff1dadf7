"""A registry behind an emulated slow link: docker-registry in a network namespace, reached through a veth pair
whose namespace side is shaped by ``tbf`` (these VMs have no ``netem``; the recipe is
/work/shared/reference/performance-notes.md, "Emulating a WAN").

Only the registry's direction is shaped (pushes from the host stay fast), and ``tc -s qdisc`` on that side counts
every byte the registry sent: what a pull moved over the link, retransmissions and headers included.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.harness.registry import REGISTRY_BINARY, registry_config

_SENT = re.compile(r"Sent (\d+) bytes")
_counter = itertools.count()


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def can_make_links() -> str | None:
    """Why a slow link cannot be made here (``None``: it can): root, ``ip`` and ``tc`` are needed."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "iproute2 (ip, tc) is not installed"
    return None


@dataclass
class SlowLink:
    """One namespace, one veth pair, ``tbf`` at ``rate`` on the namespace side. Use as a context manager."""

    rate: str
    burst: str = "256kb"
    latency: str = "100ms"
    namespace: str = ""
    host_if: str = ""
    ns_if: str = ""
    host_ip: str = ""
    ns_ip: str = ""
    registry: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    port: int = 5000
    workdir: Path | None = None

    def __enter__(self) -> SlowLink:
        for _ in range(50):
            idx = (os.getpid() * 31 + next(_counter)) % 16384
            self.namespace, self.host_if, self.ns_if = f"tether-slow-{idx}", f"tsl{idx}h", f"tsl{idx}n"
            third, fourth = idx // 64, (idx % 64) * 4
            self.host_ip, self.ns_ip = f"10.216.{third}.{fourth + 1}", f"10.216.{third}.{fourth + 2}"
            if _run("ip", "netns", "add", self.namespace, check=False).returncode != 0:
                continue
            if _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if,
                    check=False).returncode != 0:
                _run("ip", "netns", "delete", self.namespace, check=False)
                continue
            break
        else:
            raise RuntimeError("no free namespace or interface name for a slow link")
        try:
            ns = ("ip", "netns", "exec", self.namespace)
            _run("ip", "link", "set", self.ns_if, "netns", self.namespace)
            _run("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
            _run("ip", "link", "set", self.host_if, "up")
            _run(*ns, "ip", "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if)
            _run(*ns, "ip", "link", "set", self.ns_if, "up")
            _run(*ns, "ip", "link", "set", "lo", "up")
            _run(*ns, "tc", "qdisc", "add", "dev", self.ns_if, "root", "tbf", "rate", self.rate, "burst",
                 self.burst, "latency", self.latency)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def host(self) -> str:
        """``IP:PORT`` of the registry, as image references name it."""
        return f"{self.ns_ip}:{self.port}"

    def set_rate(self, rate: str) -> None:
        """Change the link's rate (``tc qdisc change``)."""
        _run("ip", "netns", "exec", self.namespace, "tc", "qdisc", "change", "dev", self.ns_if, "root", "tbf",
             "rate", rate, "burst", self.burst, "latency", self.latency)
        self.rate = rate

    def sent_bytes(self) -> int:
        """Bytes the namespace side has sent so far (``tc -s qdisc``): the registry's answers, headers included."""
        out = _run("ip", "netns", "exec", self.namespace, "tc", "-s", "qdisc", "show", "dev", self.ns_if).stdout
        match = _SENT.search(out)
        if match is None:
            raise RuntimeError(f"no byte counter in tc's output: {out!r}")
        return int(match.group(1))

    def received_bytes(self) -> int:
        """Bytes the host side of the pair has received so far (its ``rx_bytes``): what :meth:`sent_bytes`
        counts once it is through the link, read from sysfs (microseconds, where ``tc`` takes a process that can
        take tens of milliseconds on a busy machine: for sampling rates over short windows)."""
        return int(Path(f"/sys/class/net/{self.host_if}/statistics/rx_bytes").read_text())

    def start_registry(self, workdir: Path, *, timeout: float = 15.0) -> None:
        """docker-registry in the namespace on ``ns_ip:port``, its data, config and log under ``workdir``
        (kept when it is stopped and started again)."""
        if self.registry is not None and self.registry.poll() is None:
            return
        self.workdir = workdir
        (workdir / "data").mkdir(parents=True, exist_ok=True)
        config = registry_config(port=self.port, data_dir=workdir / "data").replace(
            f"addr: 127.0.0.1:{self.port}", f"addr: {self.ns_ip}:{self.port}")
        (workdir / "config.yml").write_text(config)
        with open(workdir / "registry.log", "ab") as log:
            self.registry = subprocess.Popen(
                ["ip", "netns", "exec", self.namespace, REGISTRY_BINARY, "serve", str(workdir / "config.yml")],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "OTEL_TRACES_EXPORTER": "none"})
        deadline = time.monotonic() + timeout
        while True:
            if self.registry.poll() is not None:
                raise RuntimeError(f"docker-registry exited with {self.registry.returncode}")
            try:
                httpx.get(f"http://{self.host}/v2/", timeout=1.0)
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"docker-registry did not answer on {self.host}") from None
                time.sleep(0.05)

    def stop_registry(self) -> None:
        """Stop the registry (SIGTERM, then SIGKILL); the link and the data stay."""
        proc, self.registry = self.registry, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        """Stop the registry, delete the veth pair and the namespace."""
        self.stop_registry()
        _run("ip", "link", "delete", self.host_if, check=False)
        _run("ip", "netns", "delete", self.namespace, check=False)
