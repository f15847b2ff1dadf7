"""Simple signing verification with the ``gpg`` and ``gpgv`` tools, in a throwaway keyring per requirement.

containers/image verifies simple signatures with gpgme (``signature/mechanism_gpgme.go``) in an ephemeral
GNUPGHOME holding only the policy's keys (``newEphemeralGPGSigningMechanism``); tether does the same with
the command-line tools: ``gpg --import`` (never starting an agent), then ``gpgv`` against that keyring only,
parsing ``--status-fd`` lines (doc/DETAILS of GnuPG). Blocking (subprocesses): call from a worker thread.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tether.registry.errors import InvalidSignatureError
from tether.registry.trust.signature import (
    SIMPLE_SIGNING_TYPE,
    SignaturePayload,
    SimpleSigningSignature,
    parse_signature_payload,
)

__all__ = ["GPGKeyring", "GPGVerified", "verify_simple_signing"]


@dataclass(frozen=True)
class GPGVerified:
    """A verified simple-signing message: the plaintext and who signed it."""

    plaintext: bytes
    fingerprint: str                # the signing (sub)key
    primary_fingerprint: str        # its primary key (equal to ``fingerprint`` for a primary-key signature)


class GPGKeyring:
    """A throwaway GNUPGHOME holding only the trusted keys of one requirement.

    containers/image ``newEphemeralGPGSigningMechanism``: the trusted identities are exactly the
    fingerprints of the keys imported from the policy's key material. Keys are imported with ``gpg``
    (never starting an agent), signatures verified with ``gpgv`` against that keyring only.
    Use as a context manager.
    """

    def __init__(self, key_blobs: Sequence[bytes], *, gpg: str = "gpg", gpgv: str = "gpgv") -> None:
        self._gpg = gpg
        self._gpgv = gpgv
        self._home = tempfile.mkdtemp(prefix="tether-gpg-")
        self.fingerprints: tuple[str, ...] = ()
        try:
            found: list[str] = []
            for blob in key_blobs:
                status = self._run(["--import"], stdin=blob)
                for line in status.splitlines():
                    parts = line.split()
                    if len(parts) >= 4 and parts[0] == "[GNUPG:]" and parts[1] == "IMPORT_OK":
                        found.append(parts[3].upper())
            self.fingerprints = tuple(dict.fromkeys(found))
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> GPGKeyring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the temporary GNUPGHOME."""
        shutil.rmtree(self._home, ignore_errors=True)

    def _run(self, args: list[str], *, stdin: bytes | None = None, check: bool = False) -> str:
        # --no-autostart: importing public keys must not leave a gpg-agent behind.
        cmd = [self._gpg, "--homedir", self._home, "--batch", "--no-tty", "--no-autostart", "--no-auto-key-locate",
               "--no-auto-key-retrieve", "--trust-model", "always", "--status-fd", "1", *args]
        try:
            proc = subprocess.run(cmd, input=stdin, capture_output=True, timeout=60,
                                  env={**os.environ, "GNUPGHOME": self._home, "LC_ALL": "C"}, check=False)
        except FileNotFoundError:
            raise InvalidSignatureError(f"cannot verify GPG signatures: {self._gpg!r} is not installed") from None
        except subprocess.TimeoutExpired:
            raise InvalidSignatureError("gpg timed out") from None
        if check and proc.returncode != 0:
            raise InvalidSignatureError(f"gpg failed: {proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout.decode(errors="replace")

    def verify(self, blob: bytes) -> GPGVerified:
        """Verify an OpenPGP signed message; exactly one good signature by an imported key is required."""
        with tempfile.TemporaryDirectory(prefix="tether-sig-") as tmp:
            sig_path = Path(tmp, "signature")
            out_path = Path(tmp, "plaintext")
            sig_path.write_bytes(blob)
            # gpgv only verifies (no decryption, no agent); --output extracts the signed payload.
            cmd = [self._gpgv, "--homedir", self._home, "--keyring", str(Path(self._home, "pubring.kbx")),
                   "--status-fd", "1", "--output", str(out_path), str(sig_path)]
            try:
                proc = subprocess.run(cmd, capture_output=True, timeout=60, check=False,
                                      env={**os.environ, "GNUPGHOME": self._home, "LC_ALL": "C"})
            except FileNotFoundError:
                raise InvalidSignatureError(
                    f"cannot verify GPG signatures: {self._gpgv!r} is not installed") from None
            except subprocess.TimeoutExpired:
                raise InvalidSignatureError("gpg timed out") from None
            status = [line.split() for line in proc.stdout.decode(errors="replace").splitlines()
                      if line.startswith("[GNUPG:] ")]
            kinds = [parts[1] for parts in status if len(parts) > 1]
            results = [k for k in kinds if k in ("GOODSIG", "BADSIG", "EXPSIG", "EXPKEYSIG", "REVKEYSIG", "ERRSIG")]
            if any(k in ("DECRYPTION_OKAY", "BEGIN_DECRYPTION", "ENC_TO") for k in kinds):
                raise InvalidSignatureError("Invalid GPG signature: the message is encrypted, not signed")
            if len(results) != 1:
                if not results and "NO_PUBKEY" not in kinds:
                    detail = proc.stderr.decode(errors="replace").strip().splitlines()
                    raise InvalidSignatureError(
                        "Invalid GPG signature: not a signed message" + (f" ({detail[-1]})" if detail else ""))
                if "NO_PUBKEY" in kinds or "ERRSIG" in results:
                    keyid = next((p[2] for p in status if len(p) > 2 and p[1] in ("ERRSIG", "NO_PUBKEY")), "?")
                    raise InvalidSignatureError(f"Signature by key {keyid} is not accepted (unknown key)")
                raise InvalidSignatureError(f"Unexpected GPG signature count {len(results)}")
            if results[0] != "GOODSIG" or proc.returncode != 0:
                if results[0] == "ERRSIG":
                    keyid = next((p[2] for p in status if len(p) > 2 and p[1] == "ERRSIG"), "?")
                    raise InvalidSignatureError(f"Signature by key {keyid} is not accepted (unknown key)")
                raise InvalidSignatureError(f"Invalid GPG signature: {results[0]}")
            valid = next((p for p in status if len(p) > 2 and p[1] == "VALIDSIG"), None)
            if valid is None:
                raise InvalidSignatureError("Invalid GPG signature: no VALIDSIG status")
            fingerprint = valid[2].upper()
            primary = valid[11].upper() if len(valid) > 11 else fingerprint
            try:
                plaintext = out_path.read_bytes()
            except OSError as exc:
                raise InvalidSignatureError(f"gpg produced no plaintext: {exc}") from None
            return GPGVerified(plaintext=plaintext, fingerprint=fingerprint, primary_fingerprint=primary)


def verify_simple_signing(signature: SimpleSigningSignature, keyring: GPGKeyring) -> SignaturePayload:
    """Verify a GPG simple signature against ``keyring`` and parse its payload (digest/identity NOT checked)."""
    verified = keyring.verify(signature.blob)
    trusted = set(keyring.fingerprints)
    if verified.fingerprint not in trusted and verified.primary_fingerprint not in trusted:
        raise InvalidSignatureError(f"Signature by key {verified.fingerprint} is not accepted")
    return parse_signature_payload(verified.plaintext, expected_type=SIMPLE_SIGNING_TYPE)
