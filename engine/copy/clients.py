"""The registry clients of one copy: registries.conf loaded once, one client per distinct connection setting.

Bound images may each name their own credentials file, certificate directory, TLS verification and retry
settings (quadlet ``AuthFile=``, ``CertDir=``, ``TLSVerify=``, ``Retry=``, ``RetryDelay=``); images that share
settings share a client, and so its connections and its bearer tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from tether.registry.auth import AuthEntry, AuthFile, AuthFiles, AuthPath, Credentials, load_auth_files
from tether.registry.client import DEFAULT_RETRY_POLICY, RateLimit, RegistryClient, open_registry_client
from tether.registry.registries_conf import load_registries_conf

if TYPE_CHECKING:
    from tether.engine.options import CommonOptions
    from tether.registry.registries_conf import RegistriesConf

ClientKey = tuple[tuple[AuthPath, ...], Path | None, bool | None, int | None, float | None, tuple[str, ...]]


def auth_with_credentials(auth: AuthFiles, credentials: Credentials, names: Sequence[str]) -> AuthFiles:
    """``auth`` with ``credentials`` (``pull --creds``) for exactly the repositories ``names`` (``host/path``).

    podman hands ``--creds`` to every registry it contacts for the image, mirrors included; here they go to
    the repositories named only: they are put in a first file of their own whose entries are keyed by the full
    repository names (the first file with credentials for a repository wins, and a full repository name is the
    most specific key: containers-auth.json(5)), and the ``credHelpers`` of their hosts, which c/image consults
    before any entry, are dropped. Mirrors and other hosts keep the auth files' own credentials.
    """
    keys = tuple(dict.fromkeys(names))
    hosts = {key.partition("/")[0] for key in keys}
    given = AuthFile(path=None, auths=tuple(AuthEntry(key, credentials) for key in keys))
    rest = tuple(replace(f, cred_helpers={h: v for h, v in f.cred_helpers.items() if h not in hosts})
                 for f in auth.files)
    return replace(auth, files=(given, *rest))


class RegistryClients:
    """Clients opened lazily into ``stack`` (closed with it). ``client`` replaces them all (tests).
    ``rate_limit`` is shared by every client: one cap for all the copy's blob streams (``--limit-rate``)."""

    def __init__(self, stack: AsyncExitStack, options: CommonOptions, *, connections: int,
                 client: RegistryClient | None = None, rate_limit: RateLimit | None = None) -> None:
        self.stack = stack
        self.rate_limit = rate_limit
        self.options = options
        self.connections = connections
        self._injected = client
        self._clients: dict[ClientKey, RegistryClient] = {}
        self._lock = trio.Lock()
        self._conf: RegistriesConf | None = None

    def registries(self) -> RegistriesConf:
        """registries.conf (``--registries-conf``, ``CONTAINERS_REGISTRIES_CONF``, the system's), its drop-ins
        (``--registries-conf-dir``, else the system's and the user's) and the alias cache
        (``--short-name-alias-conf``)."""
        if self._conf is None:
            options = self.options
            self._conf = load_registries_conf(path=options.registries_conf, environ=options.environ,
                                              dropin_dir=options.registries_conf_dir,
                                              aliases_path=options.short_name_alias_conf)
        return self._conf

    async def get(self, *, authfile: Path | None = None, cert_dir: Path | None = None,
                  tls_verify: bool | None = None, retries: int | None = None,
                  retry_delay: float | None = None, creds_for: Sequence[str] = ()) -> RegistryClient:
        """The client for these settings; ``None`` means the options' (``--authfile``, ``--cert-dir``, ...).

        ``creds_for``: the repositories (``host/path``) the options' ``creds`` (``pull --creds``) are for.
        """
        if self._injected is not None:
            return self._injected
        options = self.options
        key: ClientKey = (
            (AuthPath(authfile),) if authfile is not None else options.auth_paths(),
            cert_dir if cert_dir is not None else options.cert_dir,
            tls_verify if tls_verify is not None else options.tls_verify,
            retries,
            retry_delay,
            tuple(creds_for) if options.creds is not None else (),
        )
        # --authfile, quadlet AuthFile= and REGISTRY_AUTH_FILE name a file that must exist (podman checks it)
        explicit = (authfile is not None or options.authfile is not None
                    or bool(options.environ.get("REGISTRY_AUTH_FILE")))
        async with self._lock:
            client = self._clients.get(key)
            if client is None:
                policy = DEFAULT_RETRY_POLICY
                if retries is not None:
                    tries = max(1, retries + 1)
                    policy = replace(policy, attempts=tries, connect_attempts=min(2, tries))
                    if retries <= 0:  # no retries asked for: no waiting out an outage either
                        policy = replace(policy, outage_timeout=0.0)
                if retry_delay is not None:
                    # podman's --retry-delay is a fixed pause; here it bounds the jittered backoff.
                    delay = max(0.0, retry_delay)
                    policy = replace(policy, base_delay=delay, max_delay=delay)
                auth = load_auth_files(key[0], required=explicit)
                if options.creds is not None and key[5]:
                    auth = auth_with_credentials(auth, options.creds, key[5])
                client = await self.stack.enter_async_context(open_registry_client(
                    registries=self.registries(), auth=auth, cert_dir=key[1], tls_verify=key[2],
                    max_connections_per_host=self.connections, retry_policy=policy, rate_limit=self.rate_limit))
                self._clients[key] = client
            return client


__all__ = ["RegistryClients", "auth_with_credentials"]
