"""A small bearer-token server for docker-registry's ``auth: token`` (distribution docs/spec/auth/).

It signs JWTs with a throwaway P-256 key whose self-signed certificate is both the ``x5c`` header of
every token and the registry's ``rootcertbundle`` (distribution registry/auth/token/token.go verifies
the chain with ``ExtKeyUsageAny``; claims ``iss``, ``aud``, ``exp``/``nbf`` with 60 s leeway, ``access``).

GET ``/token?service=&scope=...`` with Basic credentials (or none, if anonymous pulls are allowed) and
POST ``/token`` with ``grant_type=refresh_token`` (identity tokens) both answer ``{"token", "access_token",
"expires_in", "issued_at"}``. Every request is recorded; tokens can be made to expire early.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from tests.harness.loopback_server import LoopbackServer
from tests.harness.registry import TokenAuth

#: distribution registry/auth/token/token.go ``Leeway``
REGISTRY_LEEWAY = 60


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _first(query: dict[str, list[str]], key: str) -> str | None:
    """The first value of ``key`` in a parsed query or form, or None when absent."""
    values = query.get(key)
    return values[0] if values else None


@dataclass
class TokenRequest:
    """One request the token server received."""

    method: str
    service: str | None
    scopes: list[str]
    account: str | None
    authenticated_as: str | None
    grant_type: str | None = None


@dataclass
class TokenServer(LoopbackServer):
    """A threaded token server on 127.0.0.1; use as a context manager or call ``start``/``stop``."""

    workdir: Path
    users: dict[str, str] = field(default_factory=dict)
    refresh_tokens: dict[str, str] = field(default_factory=dict)  # identity token -> user
    anonymous_pull: bool = False
    service: str = "tether-test-registry"
    issuer: str = "tether-test-token-server"
    lifetime: int = 300
    #: refuse (400) a request asking for more scopes than this (a server that grants one repository at a time)
    max_scopes: int | None = None
    requests: list[TokenRequest] = field(default_factory=list)
    issued: int = 0
    last_short_lived_exp: int = 0

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tether test token signer")])
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .sign(self._key, hashes.SHA256())
        )
        self.rootcertbundle = self.workdir / "token-signer.crt"
        self.rootcertbundle.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))
        self._short_lived: list[float] = []  # JWT lifetimes (seconds) for the next tokens
        self._lock = threading.Lock()

    # ---- configuration

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self._port('token server')}/token"

    @property
    def token_auth(self) -> TokenAuth:
        """The registry's ``auth: token`` settings for this server."""
        return TokenAuth(realm=self.realm, service=self.service, issuer=self.issuer, rootcertbundle=self.rootcertbundle)

    def expire_next_tokens(self, count: int = 1, *, valid_for: float = 1.0) -> None:
        """The next ``count`` tokens really expire (at the registry) ``valid_for`` seconds after issue,
        while the answer still claims ``expires_in = lifetime`` (a token revoked or expired early)."""
        with self._lock:
            self._short_lived.extend([valid_for] * count)

    def short_lived_deadline(self) -> float:
        """Wall-clock time after which the registry refuses the last short-lived token issued."""
        return float(self.last_short_lived_exp + REGISTRY_LEEWAY)

    def scopes_requested(self) -> list[str]:
        return [s for r in self.requests for s in r.scopes]

    # ---- tokens

    def make_token(self, subject: str, scopes: list[str], *, valid_for: float | None = None) -> str:
        access: list[dict[str, object]] = []
        for scope in scopes:
            parts = scope.split(":")
            if len(parts) < 3:
                continue
            kind, name, actions = parts[0], ":".join(parts[1:-1]), parts[-1]
            access.append({"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]})
        now = int(time.time())
        # the registry accepts a token until exp + 60 s leeway (token.go); a short-lived one is made so
        exp = now + self.lifetime if valid_for is None else int(time.time() + valid_for) - REGISTRY_LEEWAY
        if valid_for is not None:
            self.last_short_lived_exp = exp
        header = {
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [base64.b64encode(self._cert.public_bytes(serialization.Encoding.DER)).decode("ascii")],
        }
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": exp,
            "nbf": now - 1,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        der = self._key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return f"{signing_input}.{_b64url(signature)}"

    def _issue(self, subject: str, scopes: list[str]) -> dict[str, object]:
        with self._lock:
            valid_for = self._short_lived.pop(0) if self._short_lived else None
            self.issued += 1
        token = self.make_token(subject, scopes, valid_for=valid_for)
        return {
            "token": token,
            "access_token": token,
            "expires_in": self.lifetime,
            "issued_at": dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z"),
        }

    # ---- server

    def start(self) -> TokenServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _reply(self, status: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 401:
                    self.send_header("WWW-Authenticate", 'Basic realm="tether-token-server"')
                self.end_headers()
                self.wfile.write(data)

            def _basic_user(self) -> tuple[str | None, bool]:
                header = self.headers.get("Authorization")
                if not header:
                    return None, True
                scheme, _, value = header.partition(" ")
                if scheme.lower() != "basic":
                    return None, False
                try:
                    user, _, password = base64.b64decode(value).decode().partition(":")
                except ValueError:
                    return None, False
                return (user, True) if server.users.get(user) == password else (None, False)

            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                user, ok = self._basic_user()
                scopes = query.get("scope", [])
                server.requests.append(
                    TokenRequest("GET", _first(query, "service"), scopes,
                                 _first(query, "account"), user)
                )
                if not ok or (user is None and not server.anonymous_pull):
                    self._reply(401, {"details": "authentication failed"})
                    return
                if server.max_scopes is not None and len(scopes) > server.max_scopes:
                    self._reply(400, {"details": "too many scopes"})
                    return
                if user is None:
                    scopes = [s for s in scopes if s.endswith(":pull")]
                self._reply(200, server._issue(user or "", scopes))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = parse_qs(self.rfile.read(length).decode())
                grant = _first(form, "grant_type")
                scopes = " ".join(form.get("scope", [])).split()
                refresh = (form.get("refresh_token") or [""])[0]
                user = server.refresh_tokens.get(refresh)
                server.requests.append(
                    TokenRequest("POST", _first(form, "service"), scopes, None, user, grant)
                )
                if grant != "refresh_token" or user is None:
                    self._reply(401, {"error": "invalid_grant"})
                    return
                self._reply(200, server._issue(user, scopes))

        self._serve(Handler)
        return self
