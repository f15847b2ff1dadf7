"""The engine's exception hierarchy; the CLI prints ``str(error)`` as its one-line message."""

from __future__ import annotations


class EngineError(Exception):
    """Base of the engine's own errors."""


class UsageError(EngineError):
    """A command line or input file is invalid (names the option, file and line)."""


class PullError(EngineError):
    """One or more images failed to pull; the message lists which and why."""


class BoundImageError(EngineError):
    """Bound-image discovery failed: names the entry under usr/lib/bootc/bound-images.d and the file."""


class DeploymentError(EngineError):
    """An ostree sysroot or deployment root cannot be read."""


class MirrorError(EngineError):
    """A mirror sync or prune failed."""
