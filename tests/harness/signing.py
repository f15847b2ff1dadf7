"""Signing helpers for the signature-policy tests: throwaway GPG keys (gpg --batch in a temp GNUPGHOME),
cosign-style ECDSA P-256 keys, sigstore attachments pushed to a registry and lookaside files on disk.

Formats as containers/image writes them (``docker/docker_image_dest.go`` for attachments,
``docker/registries_d.go`` for lookaside paths).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.harness.images import push_blob
from tether.registry.trust.signature import (
    SIGSTORE_PAYLOAD_TYPE,
    SIMPLE_SIGNING_TYPE,
    SigstoreSignature,
    make_signature_payload,
)
from tether.registry.trust.sigstore import sign_sigstore_payload


class GPGSigner:
    """A throwaway GPG key (RSA 2048, sign only) in its own short-path GNUPGHOME."""

    def __init__(self, name: str = "tether test") -> None:
        self.home = tempfile.mkdtemp(prefix="tgpg.", dir="/tmp")
        self._gpg("--passphrase", "", "--quick-gen-key", f"{name} <{name.replace(' ', '.')}@example.com>",
                  "rsa2048", "sign", "never")
        out = self._gpg("--list-keys", "--with-colons").decode()
        self.fingerprint = next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))
        self.public_key = self._gpg("--armor", "--export", self.fingerprint)

    def _gpg(self, *args: str, stdin: bytes | None = None) -> bytes:
        proc = subprocess.run(["gpg", "--homedir", self.home, "--batch", "--yes", "--pinentry-mode", "loopback",
                               *args], input=stdin, capture_output=True, check=True, timeout=120)
        return proc.stdout

    def sign(self, payload: bytes) -> bytes:
        """An OpenPGP signed message (``gpg --sign``, binary), as simple signing stores it."""
        return self._gpg("--passphrase", "", "--sign", "--output", "-", stdin=payload)

    def sign_image(self, *, manifest_digest: str, docker_reference: str) -> bytes:
        return self.sign(make_signature_payload(manifest_digest=manifest_digest, docker_reference=docker_reference,
                                                kind=SIMPLE_SIGNING_TYPE, timestamp=1700000000))

    def write_public_key(self, path: Path) -> Path:
        path.write_bytes(self.public_key)
        return path

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", self.home, "--kill", "all"], capture_output=True, check=False)
        shutil.rmtree(self.home, ignore_errors=True)


@dataclass(frozen=True)
class CosignKey:
    """An ECDSA P-256 key pair as ``cosign generate-key-pair`` makes (public half as PEM)."""

    private: Any

    @classmethod
    def generate(cls) -> CosignKey:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @property
    def public_pem(self) -> bytes:
        return bytes(self.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                            serialization.PublicFormat.SubjectPublicKeyInfo))

    def write_public_key(self, path: Path) -> Path:
        path.write_bytes(self.public_pem)
        return path

    def sign_image(self, *, manifest_digest: str, docker_reference: str) -> SigstoreSignature:
        payload = make_signature_payload(manifest_digest=manifest_digest, docker_reference=docker_reference,
                                         kind=SIGSTORE_PAYLOAD_TYPE, timestamp=1700000000)
        return sign_sigstore_payload(self.private, payload)


def sigstore_attachment_manifest(signatures: Sequence[SigstoreSignature]) -> tuple[bytes, list[tuple[str, bytes]]]:
    """The OCI manifest of a ``sha256-<hex>.sig`` tag and its blobs (config + one layer per signature)."""
    layers = []
    blobs: list[tuple[str, bytes]] = []
    for sig in signatures:
        digest = "sha256:" + hashlib.sha256(sig.payload).hexdigest()
        layers.append({"mediaType": sig.mime_type, "size": len(sig.payload), "digest": digest,
                       "annotations": dict(sig.annotations)})
        blobs.append((digest, sig.payload))
    config = json.dumps({"architecture": "", "os": "", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]}}).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    blobs.append((config_digest, config))
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "size": len(config), "digest": config_digest},
                           "layers": layers}).encode()
    return manifest, blobs


def push_sigstore_attachments(host: str, repo: str, manifest_digest: str,
                              signatures: Sequence[SigstoreSignature]) -> str:
    """Push ``signatures`` as the sigstore attachment of ``manifest_digest`` in ``repo``; returns the tag."""
    manifest, blobs = sigstore_attachment_manifest(signatures)
    tag = manifest_digest.replace(":", "-", 1) + ".sig"
    base = f"http://{host}"
    with httpx.Client(timeout=60) as client:
        for digest, data in blobs:
            push_blob(client, base, repo, digest, data)
        resp = client.put(f"{base}/v2/{repo}/manifests/{tag}", content=manifest,
                          headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
        resp.raise_for_status()
    return tag


def write_lookaside(root: Path, repo_path: str, manifest_digest: str, blobs: Sequence[bytes]) -> list[Path]:
    """Write ``<root>/<repo>@sha256=<hex>/signature-<n>`` files (a ``file://`` lookaside store)."""
    algo, encoded = manifest_digest.split(":", 1)
    directory = root / f"{repo_path}@{algo}={encoded}"
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, blob in enumerate(blobs, start=1):
        path = directory / f"signature-{index}"
        path.write_bytes(blob)
        paths.append(path)
    return paths


def key_data(blob: bytes) -> str:
    """A policy.json ``keyData`` value."""
    return base64.b64encode(blob).decode()


def make_rekor_set(rekor: CosignKey, *, public_pem: bytes, signature: SigstoreSignature,
                   payload_hash: str | None = None,
                   integrated_time: int = 1700000000, log_index: int = 7) -> str:
    """A Rekor SignedEntryTimestamp for a hashedrekord entry (the ``dev.sigstore.cosign/bundle`` annotation)."""
    from cryptography.hazmat.primitives import hashes

    body = {"apiVersion": "0.0.1", "kind": "hashedrekord", "spec": {
        "data": {"hash": {"algorithm": "sha256",
                          "value": payload_hash or hashlib.sha256(signature.payload).hexdigest()}},
        "signature": {"content": signature.annotations["dev.cosignproject.cosign/signature"],
                      "publicKey": {"content": base64.b64encode(public_pem).decode()}}}}
    entry = {"body": base64.b64encode(json.dumps(body).encode()).decode(), "integratedTime": integrated_time,
             "logIndex": log_index, "logID": "c0d23d6ad406973f9559f3ba2d1ca01f84147d8ffc5b8445c224f98b9591801d"}
    canonical = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
    set_signature = rekor.private.sign(canonical, ec.ECDSA(hashes.SHA256()))
    return json.dumps({"SignedEntryTimestamp": base64.b64encode(set_signature).decode(), "Payload": entry})


@dataclass(frozen=True)
class FulcioCA:
    """A Fulcio-like CA (root + intermediate) issuing short-lived code-signing certificates for e-mails."""

    root_key: Any
    root: Any
    intermediate_key: Any
    intermediate: Any

    @staticmethod
    def _ca(subject: str, key: Any, issuer: Any | None, issuer_key: Any) -> Any:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import NameOID

        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tether.test"),
                          x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (x509.CertificateBuilder().subject_name(name)
                   .issuer_name(issuer.subject if issuer is not None else name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
                   .not_valid_after(datetime.datetime(2040, 1, 1, tzinfo=datetime.UTC))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None if issuer is None else 0),
                                  critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                                key_encipherment=False, data_encipherment=False, key_agreement=False,
                                                key_cert_sign=True, crl_sign=True, encipher_only=False,
                                                decipher_only=False), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                                  critical=False))
        if issuer is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CODE_SIGNING]),
                                            critical=False)
        return builder.sign(issuer_key, hashes.SHA384())

    @classmethod
    def generate(cls) -> FulcioCA:
        root_key = ec.generate_private_key(ec.SECP384R1())
        root = cls._ca("sigstore-test", root_key, None, root_key)
        inter_key = ec.generate_private_key(ec.SECP384R1())
        inter = cls._ca("sigstore-test-intermediate", inter_key, root, root_key)
        return cls(root_key, root, inter_key, inter)

    @property
    def ca_pem(self) -> bytes:
        return bytes(self.root.public_bytes(serialization.Encoding.PEM))

    @property
    def chain_pem(self) -> bytes:
        return bytes(self.intermediate.public_bytes(serialization.Encoding.PEM)) + self.ca_pem

    def issue(self, *, email: str, oidc_issuer: str, at: int, issuer_v2: bool = False,
              code_signing: bool = True, dns_names: Sequence[str] = ()) -> tuple[Any, bytes]:
        """A leaf key and its certificate (PEM), valid for 10 minutes from ``at`` - 60 s."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes

        key = ec.generate_private_key(ec.SECP256R1())
        start = datetime.datetime.fromtimestamp(at - 60, datetime.UTC)
        if issuer_v2:
            raw = oidc_issuer.encode()
            issuer_ext = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8"),
                                                    bytes([0x0C, len(raw)]) + raw)
        else:
            issuer_ext = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1"),
                                                    oidc_issuer.encode())
        eku = x509.oid.ExtendedKeyUsageOID.CODE_SIGNING if code_signing else x509.oid.ExtendedKeyUsageOID.SERVER_AUTH
        cert = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(self.intermediate.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(start + datetime.timedelta(minutes=10))
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                             crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.intermediate_key.public_key()),
                               critical=False)
                .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email),
                                                            *(x509.DNSName(n) for n in dns_names)]), critical=True)
                .add_extension(issuer_ext, critical=False)
                .sign(self.intermediate_key, hashes.SHA384()))
        return key, bytes(cert.public_bytes(serialization.Encoding.PEM))

    def sign_image(self, rekor: CosignKey, *, manifest_digest: str, docker_reference: str, email: str,
                   oidc_issuer: str, at: int = 1700000000, set_at: int | None = None, with_chain: bool = True,
                   **issue_options: Any) -> SigstoreSignature:
        """A keyless cosign signature: payload signed by a fresh leaf, certificate + chain + Rekor SET annotations."""
        key, cert_pem = self.issue(email=email, oidc_issuer=oidc_issuer, at=at, **issue_options)
        payload = make_signature_payload(manifest_digest=manifest_digest, docker_reference=docker_reference,
                                         kind=SIGSTORE_PAYLOAD_TYPE, timestamp=at)
        sig = sign_sigstore_payload(key, payload, annotations={"dev.sigstore.cosign/certificate": cert_pem.decode()})
        annotations = dict(sig.annotations)
        if with_chain:
            annotations["dev.sigstore.cosign/chain"] = self.chain_pem.decode()
        annotations["dev.sigstore.cosign/bundle"] = make_rekor_set(
            rekor, public_pem=cert_pem, signature=sig, integrated_time=set_at if set_at is not None else at)
        return SigstoreSignature(sig.mime_type, sig.payload, annotations)


def pki_sign_image(ca: FulcioCA, *, manifest_digest: str, docker_reference: str, email: str = "ci@example.com",
                   at: int | None = None, with_chain: bool = True, **issue_options: Any) -> SigstoreSignature:
    """A cosign signature with a certificate from a private X.509 PKI (no Rekor): sigstoreSigned ``pki``."""
    import time

    at = int(time.time()) if at is None else at
    key, cert_pem = ca.issue(email=email, oidc_issuer="https://unused.example", at=at, **issue_options)
    payload = make_signature_payload(manifest_digest=manifest_digest, docker_reference=docker_reference,
                                     kind=SIGSTORE_PAYLOAD_TYPE, timestamp=at)
    extra = {"dev.sigstore.cosign/certificate": cert_pem.decode()}
    if with_chain:
        extra["dev.sigstore.cosign/chain"] = ca.chain_pem.decode()
    return sign_sigstore_payload(key, payload, annotations=extra)
