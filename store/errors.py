"""The store package's one exception hierarchy."""

from __future__ import annotations


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


class DiffIDMismatchError(StoreError):
    """The uncompressed digest of a layer does not match the config's rootfs.diff_ids."""


class LockError(StoreError):
    """A store lock could not be taken."""


class UnsupportedError(StoreError):
    """The store uses a driver or feature tether does not handle."""
