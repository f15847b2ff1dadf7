"""Signing helpers for the signature-policy tests: throwaway GPG keys (gpg --batch in a temp GNUPGHOME),
cosign-style ECDSA P-256 keys, sigstore attachments pushed to a registry and lookaside files on disk.

Formats as containers/image writes them (``docker/docker_image_dest.go`` for attachments,
``docker/registries_d.go`` for lookaside paths).
"""

from __future__ import annotations

import base64
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

from registry.signatures import (
    SIGSTORE_PAYLOAD_TYPE,
    SIMPLE_SIGNING_TYPE,
    SigstoreSignature,
    make_signature_payload,
    sign_sigstore_payload,
)
from tests.harness.images import push_blob


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
