"""certs.d: directory choice, contents rules, and SSL contexts that really handshake (a Python TLS server
on loopback and a real TLS docker-registry requiring a client certificate)."""

from __future__ import annotations

import re
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.harness.registry import RunningRegistry
from tests.harness.tls import PKIFiles as PKI
from tests.harness.tls import make_pki, start_tls_registry, write_certs_d
from tether.registry.certs import (
    CertDir,
    cert_search_dirs,
    find_cert_dir,
    scan_cert_dir,
    skip_tls_verify,
    ssl_context_for,
)
from tether.registry.errors import ConfigError

# these tests are of the default system paths, each with an explicit root
pytestmark = pytest.mark.system_defaults


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("other-pki"))


# --- directory choice ----------------------------------------------------------------------------------


def test_cert_search_dirs(tmp_path: Path) -> None:
    assert cert_search_dirs(root=tmp_path) == (tmp_path / "etc/containers/certs.d", tmp_path / "etc/docker/certs.d")
    assert cert_search_dirs(root=tmp_path, home=tmp_path / "h")[0] == tmp_path / "h/.config/containers/certs.d"


@pytest.mark.parametrize(
    ("present", "expected"),
    [
        ([], None),
        (["etc/docker/certs.d/reg:5000"], "etc/docker/certs.d/reg:5000"),
        (["etc/containers/certs.d/reg:5000", "etc/docker/certs.d/reg:5000"], "etc/containers/certs.d/reg:5000"),
        (
            ["home/.config/containers/certs.d/reg:5000", "etc/containers/certs.d/reg:5000"],
            "home/.config/containers/certs.d/reg:5000",
        ),
        (["etc/containers/certs.d/reg"], None),  # host:port is part of the name
    ],
)
def test_find_cert_dir(tmp_path: Path, present: list[str], expected: str | None) -> None:
    for rel in present:
        (tmp_path / rel).mkdir(parents=True)
    dirs = cert_search_dirs(root=tmp_path, home=tmp_path / "home")
    assert find_cert_dir("reg:5000", search_dirs=dirs) == (tmp_path / expected if expected else None)
    # --cert-dir wins, whether or not it exists, and is used for every host
    assert find_cert_dir("reg:5000", cert_dir=tmp_path / "cli", search_dirs=dirs) == tmp_path / "cli"


@pytest.mark.parametrize("host", ["", "../etc", "a/b", ".hidden"])
def test_find_cert_dir_refuses_path_tricks(host: str) -> None:
    with pytest.raises(ValueError):
        find_cert_dir(host, search_dirs=[Path("/nonexistent")])


SCAN_CASES = [
    ([], [], []),
    (["ca.crt", "b.crt", "README"], ["b.crt", "ca.crt"], []),
    (["c.cert", "c.key", "ca.crt"], ["ca.crt"], [("c.cert", "c.key")]),
    (["a.cert", "a.key", "b.cert", "b.key"], [], [("a.cert", "a.key"), ("b.cert", "b.key")]),
]


@pytest.mark.parametrize(("files", "cas", "pairs"), SCAN_CASES)
def test_scan_cert_dir(tmp_path: Path, files: list[str], cas: list[str], pairs: list[tuple[str, str]]) -> None:
    for name in files:
        (tmp_path / name).write_text("x")
    assert scan_cert_dir(tmp_path) == CertDir(
        tmp_path, tuple(tmp_path / c for c in cas), tuple((tmp_path / a, tmp_path / b) for a, b in pairs)
    )


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (["client.cert"], "missing key client.key for client certificate client.cert. Note that CA certificates"),
        (["client.key"], "missing client certificate client.cert for key client.key"),
        (["ca.crt", "ca.key"], "missing client certificate ca.cert for key ca.key"),
    ],
)
def test_lone_cert_or_key(tmp_path: Path, files: list[str], message: str) -> None:
    for name in files:
        (tmp_path / name).write_text("x")
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path}: {message}")):
        scan_cert_dir(tmp_path)


def test_missing_dir_is_empty(tmp_path: Path) -> None:
    assert scan_cert_dir(tmp_path / "nope") == CertDir(tmp_path / "nope")


def test_bad_files_name_themselves(tmp_path: Path, pki: PKI) -> None:
    (tmp_path / "bad.crt").write_text("not a certificate")
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'bad.crt'}: not a CA certificate")):
        ssl_context_for("h", cert_dir=tmp_path)
    (tmp_path / "bad.crt").unlink()
    (tmp_path / "c.cert").write_bytes(pki.client_cert.read_bytes())
    (tmp_path / "c.key").write_text("garbage")
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'c.cert'}: cannot load client certificate")):
        ssl_context_for("h", cert_dir=tmp_path)


def test_der_ca_is_accepted(tmp_path: Path, pki: PKI) -> None:
    cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    (tmp_path / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.DER))
    ctx = ssl_context_for("h", cert_dir=tmp_path)
    subjects = [c.get("subject") for c in ctx.get_ca_certs()]
    assert ((("commonName", "tether test CA"),),) in subjects


@pytest.mark.parametrize(
    ("insecure", "tls_verify", "skip"),
    [(False, None, False), (True, None, True), (True, True, False), (False, False, True), (True, False, True)],
)
def test_skip_tls_verify(insecure: bool, tls_verify: bool | None, skip: bool) -> None:
    assert skip_tls_verify(insecure, tls_verify) is skip


# --- real handshakes: a Python TLS server on loopback --------------------------------------------------


class TLSServer:
    """Accepts TLS connections on 127.0.0.1, records the client certificate subject, answers one line."""

    def __init__(self, pki: PKI, *, require_client_cert: bool) -> None:
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(pki.server_cert, pki.server_key)
        if require_client_cert:
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(cafile=pki.ca_cert)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.peers: list[object] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.settimeout(5)
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    self.peers.append(tls.getpeercert())
                    tls.sendall(b"hello\n")
            except (ssl.SSLError, OSError):
                conn.close()

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() in the server thread
        self.sock.close()
        self.thread.join(timeout=5)


@pytest.fixture
def server(pki: PKI) -> Iterator[TLSServer]:
    srv = TLSServer(pki, require_client_cert=True)
    try:
        yield srv
    finally:
        srv.close()


def handshake(context: ssl.SSLContext, port: int) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return tls.recv(16)


def test_certs_d_context_verifies_server_and_presents_client_cert(tmp_path: Path, pki: PKI, server: TLSServer) -> None:
    host = f"127.0.0.1:{server.port}"
    certs_d = tmp_path / "etc/containers/certs.d"
    write_certs_d(certs_d, host, pki)
    ctx = ssl_context_for(host, search_dirs=cert_search_dirs(root=tmp_path))
    assert handshake(ctx, server.port) == b"hello\n"
    subject = server.peers[-1]["subject"]  # type: ignore[index]
    assert subject == ((("commonName", "tether test client"),),)


def test_without_the_ca_the_server_is_refused(tmp_path: Path, server: TLSServer) -> None:
    ctx = ssl_context_for(f"127.0.0.1:{server.port}", search_dirs=cert_search_dirs(root=tmp_path))
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(ctx, server.port)


def test_a_ca_for_another_port_is_not_used(tmp_path: Path, pki: PKI, server: TLSServer) -> None:
    write_certs_d(tmp_path / "etc/containers/certs.d", "127.0.0.1", pki)
    ctx = ssl_context_for(f"127.0.0.1:{server.port}", search_dirs=cert_search_dirs(root=tmp_path))
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(ctx, server.port)


def test_verify_false_skips_verification_but_keeps_client_cert(
    tmp_path: Path, pki: PKI, other_pki: PKI, server: TLSServer
) -> None:
    # the CA in certs.d is the wrong one, but verification is off; the client certificate still goes out
    host = f"127.0.0.1:{server.port}"
    cli = tmp_path / "cli"
    cli.mkdir()
    (cli / "ca.crt").write_bytes(other_pki.ca_cert.read_bytes())
    (cli / "me.cert").write_bytes(pki.client_cert.read_bytes())
    (cli / "me.key").write_bytes(pki.client_key.read_bytes())
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(ssl_context_for(host, cert_dir=cli), server.port)
    assert handshake(ssl_context_for(host, cert_dir=cli, verify=False), server.port) == b"hello\n"


def test_server_requiring_client_cert_refuses_a_context_without_one(
    tmp_path: Path, pki: PKI, server: TLSServer
) -> None:
    host = f"127.0.0.1:{server.port}"
    write_certs_d(tmp_path / "certs.d", host, pki, client=False)
    ctx = ssl_context_for(host, search_dirs=[tmp_path / "certs.d"])
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        data = handshake(ctx, server.port)
        if not data:  # TLS 1.3: the refusal can arrive as a closed connection after the handshake
            raise ConnectionError("closed")


# --- a real TLS docker-registry requiring a client certificate, through httpx ----------------------------


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory, pki: PKI) -> Iterator[RunningRegistry]:
    running = start_tls_registry(tmp_path_factory.mktemp("tlsreg"), pki, require_client_cert=True)
    try:
        yield running
    finally:
        running.stop()


def test_httpx_with_certs_d_context_against_docker_registry(
    tmp_path: Path, pki: PKI, tls_registry: RunningRegistry
) -> None:
    write_certs_d(tmp_path / "etc/docker/certs.d", tls_registry.host, pki)
    ctx = ssl_context_for(tls_registry.host, search_dirs=cert_search_dirs(root=tmp_path))
    with httpx.Client(verify=ctx, timeout=10) as client:
        response = client.get(f"https://{tls_registry.host}/v2/")
    assert response.status_code == 200
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    # the system trust alone does not know the test CA
    with (
        httpx.Client(verify=ssl_context_for(tls_registry.host, search_dirs=[]), timeout=10) as client,
        pytest.raises(httpx.ConnectError),
    ):
        client.get(f"https://{tls_registry.host}/v2/")


def test_unverified_context_skips_the_system_trust_store_but_keeps_tls_client_defaults(tmp_path: Path) -> None:
    # verification off: the system CAs would never be consulted, so they are not loaded (~25 ms each)
    ctx = ssl_context_for("h", cert_dir=tmp_path, verify=False)
    assert ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname
    assert ctx.cert_store_stats()["x509_ca"] == 0
    assert ctx.protocol == ssl.PROTOCOL_TLS_CLIENT
    assert ctx.minimum_version == ssl.create_default_context().minimum_version
    verified = ssl_context_for("h", cert_dir=tmp_path)
    assert verified.verify_mode == ssl.CERT_REQUIRED and verified.check_hostname
