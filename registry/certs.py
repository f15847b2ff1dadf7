"""containers-certs.d(5): the TLS configuration for one registry host, as an :class:`ssl.SSLContext`.

Directory choice (containers/image ``docker/docker_client.go`` ``dockerCertDir``)
    ``--cert-dir`` (``cert_dir``) is used as is, for every host. Otherwise the first existing of
    ``$HOME/.config/containers/certs.d/HOST``, ``/etc/containers/certs.d/HOST`` and
    ``/etc/docker/certs.d/HOST`` (HOST = ``host[:port]`` as written in the reference, so
    ``docker.io`` for Docker Hub), the absolute ones under ``root`` for a sysroot.

Contents (``pkg/tlsclientconfig.SetupCertificates``)
    ``*.crt``: CA certificates added to the system trust store; ``NAME.cert`` + ``NAME.key``: a client
    certificate and its key (Python's ssl presents one chain: the first pair in name order); a ``.cert``
    without its ``.key`` (or the reverse) is an error. tether also
    refuses a ``.crt`` that holds no certificate (containers/image silently skips it and the handshake
    then fails with an unrelated-looking "unknown authority").

Verification is skipped only for ``insecure`` registries or ``--tls-verify=false``
(:func:`skip_tls_verify`); client certificates are still presented then.

Usage from the client::

    ctx = ssl_context_for(ref.domain, cert_dir=cert_dir, verify=not skip_tls_verify(source.insecure, tls_verify))
    httpx.AsyncClient(verify=ctx, http2=True, ...)

Building a context reads the system trust store (tens of milliseconds): build one per host and reuse
it for every connection to that host.
"""

from __future__ import annotations

import os
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tether.registry.errors import ConfigError

__all__ = [
    "CertDir",
    "cert_search_dirs",
    "find_cert_dir",
    "scan_cert_dir",
    "skip_tls_verify",
    "ssl_context_for",
]

USER_CERTS_D: Final = Path(".config/containers/certs.d")
SYSTEM_CERTS_D: Final = (Path("etc/containers/certs.d"), Path("etc/docker/certs.d"))


@dataclass(frozen=True)
class CertDir:
    """What a certs.d host directory holds: CA files and (certificate, key) pairs, in name order."""

    path: Path
    ca_files: tuple[Path, ...] = ()
    client_pairs: tuple[tuple[Path, Path], ...] = ()


def cert_search_dirs(*, root: Path = Path("/"), home: Path | None = None) -> tuple[Path, ...]:
    """The per-host certs.d parents, in containers/image's order (``home`` first when given)."""
    dirs = [home / USER_CERTS_D] if home is not None else []
    dirs += [root / d for d in SYSTEM_CERTS_D]
    return tuple(dirs)


def _check_host(host: str) -> None:
    if not host or "/" in host or host.startswith(".") or "\x00" in host:
        raise ValueError(f"invalid registry host {host!r} for a certs.d lookup")


def find_cert_dir(host: str, *, cert_dir: Path | None = None, search_dirs: Sequence[Path] | None = None) -> Path | None:
    """``cert_dir`` if given, else the first existing ``DIR/HOST`` of ``search_dirs``
    (default :func:`cert_search_dirs`), else None."""
    if cert_dir is not None:
        return cert_dir
    _check_host(host)
    for parent in search_dirs if search_dirs is not None else cert_search_dirs():
        candidate = parent / host
        if candidate.exists():
            return candidate
    return None


def scan_cert_dir(path: Path) -> CertDir:
    """List a certs.d directory (``SetupCertificates``). A missing or unreadable directory is empty
    (as in containers/image); a lone ``.cert`` or ``.key`` is a :class:`ConfigError`."""
    try:
        names = sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return CertDir(path)
    present = set(names)
    cas: list[Path] = []
    pairs: list[tuple[Path, Path]] = []
    for name in names:
        if name.endswith(".crt"):
            cas.append(path / name)
        elif name.endswith(".cert"):
            key = name[: -len(".cert")] + ".key"
            if key not in present:
                raise ConfigError(
                    f"{path}: missing key {key} for client certificate {name}. "
                    "Note that CA certificates should use the extension .crt"
                )
            pairs.append((path / name, path / key))
        elif name.endswith(".key"):
            cert = name[: -len(".key")] + ".cert"
            if cert not in present:
                raise ConfigError(f"{path}: missing client certificate {cert} for key {name}")
    return CertDir(path, tuple(cas), tuple(pairs))


def _load_ca(context: ssl.SSLContext, path: Path) -> None:
    try:
        data = path.read_bytes()
    except FileNotFoundError:  # removed since the listing: containers/image ignores it too
        return
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read CA certificate: {exc.strerror}") from None
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            context.load_verify_locations(cadata=data.decode("ascii", errors="replace"))
        else:  # DER
            context.load_verify_locations(cadata=data)
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"{path}: not a CA certificate (PEM or DER): {exc}") from None


def ssl_context_for(
    host: str,
    *,
    cert_dir: Path | None = None,
    verify: bool = True,
    search_dirs: Sequence[Path] | None = None,
) -> ssl.SSLContext:
    """The TLS client context for ``host`` (``host[:port]`` as in the reference, e.g. ``docker.io``,
    ``127.0.0.1:5000``): system trust plus the certs.d CAs, client certificates from certs.d, and
    verification off when ``verify`` is False. Hand it to httpx as ``verify=``.

    :class:`ConfigError` names the file for a lone ``.cert``/``.key``, an unreadable key pair or a
    ``.crt`` without a certificate.
    """
    if verify:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    else:
        # What create_default_context builds, minus the system trust store: with verification off it is
        # never consulted, and loading it (set_default_verify_paths) costs ~25 ms per context, paid by
        # every pull from an insecure (plain-HTTP fallback) registry.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        keylog = os.environ.get("SSLKEYLOGFILE")
        if keylog and not sys.flags.ignore_environment:
            context.keylog_filename = keylog
    directory = find_cert_dir(host, cert_dir=cert_dir, search_dirs=search_dirs)
    if directory is None:
        return context
    contents = scan_cert_dir(directory)
    if verify:
        for ca in contents.ca_files:
            _load_ca(context, ca)
    # Go's tls.Config offers every pair and picks by the server's acceptable CAs; an ssl.SSLContext holds
    # one chain, so the first pair in name order is presented.
    for cert, key in contents.client_pairs[:1]:
        try:
            context.load_cert_chain(certfile=cert, keyfile=key)
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or "invalid"
            raise ConfigError(f"{cert}: cannot load client certificate with key {key.name}: {reason}") from None
    return context


def skip_tls_verify(insecure: bool, tls_verify: bool | None) -> bool:
    """Whether to skip TLS verification (and allow the plain-HTTP fallback) for an endpoint:
    ``--tls-verify`` when given, either way, overrides the registries.conf ``insecure`` of the endpoint
    (containers/image ``detectPropertiesHelper`` with ``DockerInsecureSkipTLSVerify``)."""
    return (not tls_verify) if tls_verify is not None else insecure
