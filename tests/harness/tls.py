"""A throwaway PKI for TLS registries: a test CA, a server certificate for 127.0.0.1/localhost and a
client certificate, plus a containers certs.d directory that trusts them.

certs.d layout (containers-certs.d(5)): ``DIR/HOST:PORT/*.crt`` are CAs, ``*.cert`` + ``*.key`` pairs are
client certificates.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.harness.registry import RunningRegistry, TLSFiles, free_port, registry_config


@dataclass(frozen=True)
class PKIFiles:
    """PEM files of the CA, the server and the client."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    path.chmod(0o600)


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    sans: list[x509.GeneralName] | None = None,
    usage: list[x509.ObjectIdentifier] | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_pki(directory: Path) -> PKIFiles:
    """Create the CA, a server certificate (127.0.0.1, ::1, localhost) and a client certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca = _cert("tether test CA", ca_key, None, ca_key, ca=True)
    server_key = _key()
    server = _cert(
        "127.0.0.1",
        server_key,
        ca,
        ca_key,
        sans=[
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
            x509.DNSName("localhost"),
        ],
        usage=[ExtendedKeyUsageOID.SERVER_AUTH],
    )
    client_key = _key()
    client = _cert("tether test client", client_key, ca, ca_key, usage=[ExtendedKeyUsageOID.CLIENT_AUTH])
    pki = PKIFiles(
        ca_cert=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.cert",
        client_key=directory / "client.key",
    )
    pki.ca_cert.write_bytes(_pem(ca))
    pki.server_cert.write_bytes(_pem(server))
    _write_key(pki.server_key, server_key)
    pki.client_cert.write_bytes(_pem(client))
    _write_key(pki.client_key, client_key)
    return pki


def write_certs_d(certs_d: Path, host: str, pki: PKIFiles, *, client: bool = True) -> Path:
    """``certs_d/HOST/`` with the CA (``ca.crt``) and, if ``client``, ``client.cert`` + ``client.key``."""
    directory = certs_d / host
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.crt").write_bytes(pki.ca_cert.read_bytes())
    if client:
        (directory / "client.cert").write_bytes(pki.client_cert.read_bytes())
        (directory / "client.key").write_bytes(pki.client_key.read_bytes())
        (directory / "client.key").chmod(0o600)
    return directory


class _ClientCertRegistry(RunningRegistry):
    """A TLS registry whose readiness probe presents the client certificate (the registry requires it)."""

    pki: PKIFiles

    def start(self, *, timeout: float = 15.0) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        import subprocess

        from tests.harness.registry import REGISTRY_BINARY

        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        context.load_cert_chain(str(self.pki.client_cert), str(self.pki.client_key))
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"docker-registry exited with {self.process.returncode}: {self.log_tail()}")
            try:
                httpx.get(f"{self.url}/v2/", verify=context, timeout=1.0)
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"docker-registry did not answer on {self.url}: {self.log_tail()}") from None
                time.sleep(0.05)


def start_tls_registry(workdir: Path, pki: PKIFiles, *, require_client_cert: bool = True) -> RunningRegistry:
    """A TLS registry with ``pki``'s server certificate, requiring a client certificate if asked."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "data").mkdir(exist_ok=True)
    port = free_port()
    tls = TLSFiles(
        certificate=pki.server_cert, key=pki.server_key, client_ca=pki.ca_cert if require_client_cert else None
    )
    config_path = workdir / "config.yml"
    config_path.write_text(registry_config(port=port, data_dir=workdir / "data", tls=tls))
    running = _ClientCertRegistry(port=port, workdir=workdir, config_path=config_path, tls=True)
    running.pki = pki
    running.start()
    return running
