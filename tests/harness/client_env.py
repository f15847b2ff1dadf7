"""Helpers for registry-client tests: real registries.conf / auth.json files and a fast retry policy."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

from tether.registry.auth import AuthFile, load_auth_file
from tether.registry.client import RegistryClient, RetryPolicy, open_registry_client
from tether.registry.registries_conf import RegistriesConf, load_registries_conf

#: Retries without real waiting, so fault tests stay fast; no outage persistence (tests of it set their own).
FAST_RETRIES = RetryPolicy(attempts=4, connect_attempts=2, base_delay=0.01, max_delay=0.05, read_timeout=5.0,
                           outage_timeout=0.0)


def write_registries_conf(directory: Path, text: str) -> RegistriesConf:
    """Write ``registries.conf`` with ``text`` under ``directory`` and load it (no system drop-ins)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "registries.conf"
    path.write_text(text)
    return load_registries_conf(path=path, environ={}, root=directory, dropin_dir=directory / "registries.conf.d",
                                aliases_path=directory / "short-name-aliases.conf")


def insecure_conf(directory: Path, *hosts: str, extra: str = "") -> RegistriesConf:
    """registries.conf marking ``hosts`` insecure (plain-HTTP test registries)."""
    tables = "".join(f'[[registry]]\nlocation = "{h}"\ninsecure = true\n\n' for h in hosts)
    return write_registries_conf(directory, extra + "\n" + tables)


def write_auth_file(
    directory: Path,
    *,
    basic: Mapping[str, tuple[str, str]] | None = None,
    identity_tokens: Mapping[str, str] | None = None,
) -> AuthFile:
    """A containers-auth.json with ``auth`` (base64 user:password) and ``identitytoken`` entries."""
    directory.mkdir(parents=True, exist_ok=True)
    auths: dict[str, dict[str, str]] = {}
    for key, (user, password) in (basic or {}).items():
        auths[key] = {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
    for key, token in (identity_tokens or {}).items():
        auths.setdefault(key, {})["identitytoken"] = token
        auths[key].setdefault("auth", "")
    path = directory / "auth.json"
    path.write_text(json.dumps({"auths": auths}))
    return load_auth_file(path)


@asynccontextmanager
async def client_for(
    registries: RegistriesConf | None = None,
    auth: AuthFile | None = None,
    *,
    tls_verify: bool | None = None,
    cert_dir: Path | None = None,
    cert_search_dirs: list[Path] | None = None,
    retry_policy: RetryPolicy = FAST_RETRIES,
) -> AsyncIterator[RegistryClient]:
    async with open_registry_client(
        registries=registries or RegistriesConf(),
        auth=auth or AuthFile(),
        tls_verify=tls_verify,
        cert_dir=cert_dir,
        retry_policy=retry_policy,
        cert_search_dirs=cert_search_dirs if cert_search_dirs is not None else [],
    ) as client:
        yield client


async def read_blob(client: RegistryClient, sources: object, descriptor: object) -> bytes:
    """All bytes of a blob through ``open_blob``."""
    parts: list[bytes] = []
    async with client.open_blob(sources, descriptor) as chunks:  # type: ignore[arg-type]
        async for chunk in chunks:
            parts.append(chunk)
    return b"".join(parts)
