"""The registry package's one exception hierarchy.

Messages name the operation, the registry and repository, and the status, e.g.
``GET 127.0.0.1:5000/v2/app/manifests/1.0: 404 MANIFEST_UNKNOWN``. Credentials and tokens never
appear in them.
"""

from __future__ import annotations


class RegistryError(Exception):
    """Base of every error raised by :mod:`registry`."""


class InvalidReferenceError(RegistryError, ValueError):
    """A string is not a valid image reference (or transport name)."""


class ConfigError(RegistryError):
    """A configuration file (registries.conf, auth.json, certs.d, policy.json) is invalid.

    The message names the file and the offending key or line.
    """


class ShortNameError(RegistryError):
    """A short name could not be resolved (enforcing mode without a TTY, no search registries...)."""


class BlockedRegistryError(RegistryError):
    """registries.conf marks the registry as blocked; raised before any request is made."""


class AuthenticationError(RegistryError):
    """Credentials were refused, a token could not be obtained, or a credential helper failed."""


class TransportError(RegistryError):
    """The connection failed (refused, reset, TLS, timeout) after all retries."""


class HTTPStatusError(RegistryError):
    """The registry answered with an error status.

    ``status`` is the HTTP status, ``code`` the first OCI error code of the body (or ``None``).
    """

    def __init__(self, message: str, *, status: int, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class ManifestError(RegistryError):
    """A manifest is malformed, too large, of an unsupported type (schema1), or lies about itself."""


class PlatformError(ManifestError):
    """No manifest in an index matches the wanted platform."""


class DigestMismatchError(RegistryError):
    """Content does not match the digest (or size) it was fetched by."""


class PolicyError(RegistryError):
    """The signature policy rejects an image, or a requirement cannot be evaluated (fails closed)."""


class InvalidSignatureError(RegistryError):
    """A signature or its payload is malformed or does not verify: a reason to reject, never to crash."""


class ConnectionFailedError(TransportError):
    """The endpoint could not be reached at all (refused, unreachable, connect timeout)."""


class TLSError(TransportError):
    """The TLS handshake or certificate verification failed; never retried."""
