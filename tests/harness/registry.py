"""Start real CNCF distribution registries (Debian's ``docker-registry``) on loopback for tests.

Each registry gets a throwaway config and data directory and a free 127.0.0.1 port; variants with
htpasswd basic auth, bearer-token auth and TLS are built from the same config writer.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REGISTRY_BINARY = "docker-registry"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class TLSFiles:
    """Server certificate and key (PEM); ``client_ca`` makes the registry require client certificates."""

    certificate: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True)
class TokenAuth:
    """docker-registry's ``auth: token`` settings (the token server runs in the tests)."""

    realm: str
    service: str
    issuer: str
    rootcertbundle: Path


def _yaml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def registry_config(
    *,
    port: int,
    data_dir: Path,
    htpasswd_file: Path | None = None,
    tls: TLSFiles | None = None,
    token: TokenAuth | None = None,
    proxy_remote: str | None = None,
    proxy_username: str | None = None,
    proxy_password: str | None = None,
) -> str:
    """The YAML config of one registry (distribution 2.8 format)."""
    lines = [
        "version: 0.1",
        "log:",
        "  level: info",
        "  accesslog:",
        "    disabled: false",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {_yaml_str(str(data_dir))}",
        "  delete:",
        "    enabled: true",
        "  maintenance:",
        "    uploadpurging:",
        "      enabled: false",
        "http:",
        f"  addr: 127.0.0.1:{port}",
        "  secret: tether-tests",
    ]
    if tls is not None:
        lines += [
            "  tls:",
            f"    certificate: {_yaml_str(str(tls.certificate))}",
            f"    key: {_yaml_str(str(tls.key))}",
        ]
        if tls.client_ca is not None:
            lines += ["    clientcas:", f"      - {_yaml_str(str(tls.client_ca))}"]
    if htpasswd_file is not None:
        lines += [
            "auth:",
            "  htpasswd:",
            "    realm: tether-tests",
            f"    path: {_yaml_str(str(htpasswd_file))}",
        ]
    elif token is not None:
        lines += [
            "auth:",
            "  token:",
            f"    realm: {_yaml_str(token.realm)}",
            f"    service: {_yaml_str(token.service)}",
            f"    issuer: {_yaml_str(token.issuer)}",
            f"    rootcertbundle: {_yaml_str(str(token.rootcertbundle))}",
        ]
    if proxy_remote is not None:
        lines += ["proxy:", f"  remoteurl: {_yaml_str(proxy_remote)}"]
        if proxy_username is not None:
            lines += [f"  username: {_yaml_str(proxy_username)}", f"  password: {_yaml_str(proxy_password or '')}"]
    return "\n".join(lines) + "\n"


def write_htpasswd(path: Path, users: dict[str, str]) -> None:
    """Write an htpasswd file with bcrypt hashes (the only kind distribution accepts)."""
    entries = []
    for user, password in users.items():
        out = subprocess.run(
            ["htpasswd", "-Bbn", "-C", "4", user, password], check=True, capture_output=True, text=True
        ).stdout.strip()
        entries.append(out)
    path.write_text("\n".join(entries) + "\n")


@dataclass
class RunningRegistry:
    """One ``docker-registry serve`` process; ``stop()``/``start()`` keep the port and the data."""

    port: int
    workdir: Path
    config_path: Path
    tls: bool
    requires_client_cert: bool = False
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / "registry.log"

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``: the registry part of image references."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    def start(self, *, timeout: float = 15.0) -> None:
        """Start (or restart) the process and wait until ``/v2/`` answers."""
        if self.process is not None and self.process.poll() is None:
            return
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it open
        try:
            self.process = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "OTEL_TRACES_EXPORTER": "none"},
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"docker-registry exited with {self.process.returncode}: {self.log_tail()}")
            try:
                if self.requires_client_cert:
                    # The probe has no client certificate; a listening socket is proof enough.
                    socket.create_connection(("127.0.0.1", self.port), timeout=1.0).close()
                else:
                    httpx.get(f"{self.url}/v2/", verify=False, timeout=1.0)
                return
            except (httpx.HTTPError, OSError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"docker-registry did not answer on {self.url}: {self.log_tail()}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL the process, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def access_log(self) -> list[str]:
        """The request lines the registry logged so far (``"GET /v2/... HTTP/1.1" 200``)."""
        return [line for line in self.log_path.read_text(errors="replace").splitlines() if '"GET ' in line
                or '"HEAD ' in line or '"PUT ' in line or '"POST ' in line or '"PATCH ' in line]

    def exchanges(self) -> list[str]:
        """``METHOD PATH`` (query dropped) of every request logged so far, in order."""
        return exchanges(self.access_log())

    def __enter__(self) -> RunningRegistry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_REQUEST_LINE = re.compile(r'"([A-Z]+) ([^ ?"]+)[^ "]* HTTP/[0-9.]+"')


def exchanges(lines: list[str]) -> list[str]:
    """``METHOD PATH`` (query dropped) of each access-log line (:meth:`RunningRegistry.access_log`)."""
    return [f"{m[1]} {m[2]}" for line in lines if (m := _REQUEST_LINE.search(line))]


def start_registry(
    workdir: Path,
    *,
    htpasswd: dict[str, str] | None = None,
    tls: TLSFiles | None = None,
    token: TokenAuth | None = None,
    proxy_remote: str | None = None,
    proxy_username: str | None = None,
    proxy_password: str | None = None,
    port: int | None = None,
) -> RunningRegistry:
    """Start a registry whose config, data and log live under ``workdir`` (created)."""
    if shutil.which(REGISTRY_BINARY) is None:
        raise RuntimeError("docker-registry is not installed (apt-get install docker-registry)")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "data").mkdir(exist_ok=True)
    htpasswd_file = None
    if htpasswd is not None:
        htpasswd_file = workdir / "htpasswd"
        write_htpasswd(htpasswd_file, htpasswd)
    chosen = port if port is not None else free_port()
    config = registry_config(
        port=chosen,
        data_dir=workdir / "data",
        htpasswd_file=htpasswd_file,
        tls=tls,
        token=token,
        proxy_remote=proxy_remote,
        proxy_username=proxy_username,
        proxy_password=proxy_password,
    )
    config_path = workdir / "config.yml"
    config_path.write_text(config)
    running = RunningRegistry(port=chosen, workdir=workdir, config_path=config_path, tls=tls is not None,
                              requires_client_cert=tls is not None and tls.client_ca is not None)
    running.start()
    return running
