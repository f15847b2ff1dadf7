"""The store package's one exception hierarchy, and how names appear in its messages."""

from __future__ import annotations

from typing import Final

#: The longest a name (a tar member, a path) is shown in a message, quotes included.
NAME_LIMIT: Final = 200


def shown(name: object, *, limit: int = NAME_LIMIT) -> str:
    """``repr(name)`` for a message, at most about ``limit`` characters: a longer one keeps its head and tail and
    says how many characters were left out (a layer can name a member 10,000 directories deep; one message line
    must stay readable, and a log line bounded)."""
    text = repr(name)
    if len(text) <= limit:
        return text
    keep = max(8, (limit - 40) // 2)
    return f"{text[:keep]}...[{len(text) - 2 * keep} characters left out]...{text[-keep:]}"


def os_error_text(exc: OSError) -> str:
    """An OS error's message with its file names :func:`shown` (``str(exc)`` repeats them in full)."""
    text = exc.strerror or type(exc).__name__
    if exc.filename is not None:
        text += f": {shown(exc.filename)}"
    if exc.filename2 is not None:
        text += f" -> {shown(exc.filename2)}"
    return text


class StoreError(Exception):
    """Base of every error raised by :mod:`store`."""


class CorruptStoreError(StoreError):
    """A metadata file (layers.json, images.json, index.json...) cannot be parsed; names the file."""


class LayerUnknownError(StoreError, KeyError):
    """No layer with that id."""


class ImageUnknownError(StoreError, KeyError):
    """No image matches that name, id or digest."""


class HostileArchiveError(StoreError):
    """A layer tar tried to escape its directory, lied about sizes, or is otherwise refused."""


class DanglingLinkError(HostileArchiveError):
    """An entry's parent goes through a symbolic link whose target is missing: containers/storage's chrooted
    applier fails there with ENOENT. ``final``: the link is the parent's last component (c/storage's ``Lstat`` of
    the parent then succeeds, and only the entry's own creation fails)."""

    def __init__(self, message: str, *, final: bool) -> None:
        super().__init__(message)
        self.final = final


class DiffIDMismatchError(StoreError):
    """The uncompressed digest of a layer does not match the config's rootfs.diff_ids."""


class LockError(StoreError):
    """A store lock could not be taken."""


class UnsupportedError(StoreError):
    """The store uses a driver or feature tether does not handle."""


class DiskReserveError(StoreError):
    """A write stopped because the filesystem would fall below the free space it must keep
    (:class:`tether.store.diskspace.DiskReserve`)."""
