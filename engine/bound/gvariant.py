"""A reader of the GVariant values ostree writes to ``/run/ostree/staged-deployment`` (sans-IO).

ostree-sysroot-deploy.c (``ostree_sysroot_stage_tree_with_options``) serializes an ``a{sv}``: ``target``, the
staged deployment, itself an ``a{sv}`` of strings (``name`` = ``CSUM.SERIAL``, ``osname``, ``bootcsum``), and
optionally ``merge-deployment`` (the same shape), ``locked`` (``b``), ``kargs`` and ``overlay-initrds`` (``as``),
``bootconfig-extra`` (``a{ss}``).  It is written with ``g_variant_get_data``: GVariant's serialized form, in
the writing host's byte order (this host's).

The format (GLib ``gvariant-serialiser.c``; "GVariant Serialisation", Ryan Lortie): a string is its bytes and a
NUL; a variant is its child's bytes, a NUL and the child's type string; a container of variable-size children
ends with framing offsets, each ``offset_size(container size)`` bytes (1, 2, 4 or 8), little or big endian as
the host: an array has one per child (the end of each), a tuple or dict entry one per variable-size member
but the last (the end of each, stored in reverse order); children start aligned (``v`` and ``{sv}`` to 8, ``s``
to 1, ``b`` to 1).  Only the types above are decoded; any other child value is kept as its raw bytes.
"""

from __future__ import annotations

import sys
from typing import Final, Literal

from tether.engine.errors import EngineError

__all__ = ["GVariantError", "parse_asv"]

_ORDER: Final[Literal["little", "big"]] = sys.byteorder
_MAX_DEPTH: Final = 8

Value = str | bool | bytes | list[str] | dict[str, "Value"]


class GVariantError(EngineError):
    """Not a well-formed serialized GVariant of the expected type."""


def _offset_size(size: int) -> int:
    if size == 0:
        return 0
    if size <= 0xFF:
        return 1
    if size <= 0xFFFF:
        return 2
    if size <= 0xFFFFFFFF:
        return 4
    return 8


def _read_offset(data: bytes, at: int, width: int) -> int:
    return int.from_bytes(data[at : at + width], _ORDER)


def _align(n: int, alignment: int) -> int:
    return (n + alignment - 1) & ~(alignment - 1)


def _array_children(data: bytes, alignment: int) -> list[bytes]:
    """The children of an array of variable-size elements."""
    size = len(data)
    if size == 0:
        return []
    width = _offset_size(size)
    last_end = _read_offset(data, size - width, width)
    if last_end > size or (size - last_end) % width:
        raise GVariantError("array framing offsets out of bounds")
    children = []
    start = 0
    for i in range((size - last_end) // width):
        end = _read_offset(data, last_end + i * width, width)
        start = _align(start, alignment)
        if not start <= end <= last_end:
            raise GVariantError("array element out of bounds")
        children.append(data[start:end])
        start = end
    return children


def _string(data: bytes) -> str:
    if not data or data[-1] != 0 or 0 in data[:-1]:
        raise GVariantError("string without its one terminating NUL")
    return data[:-1].decode("utf-8", "replace")


def _variant(data: bytes, depth: int) -> Value:
    sep = data.rfind(b"\0")
    if sep < 0:
        raise GVariantError("variant without a type")
    child, type_string = data[:sep], data[sep + 1 :]
    if type_string == b"s":
        return _string(child)
    if type_string == b"b":
        return child == b"\x01"
    if type_string == b"as":
        return [_string(item) for item in _array_children(child, 1)]
    if type_string == b"a{sv}":
        return _asv(child, depth + 1)
    if type_string == b"a{ss}":
        return {key: _string(value) for key, value in _entries(child, 1)}
    return child


def _entries(data: bytes, alignment: int) -> list[tuple[str, bytes]]:
    """The (key, value bytes) of an ``a{s?}`` whose value is variable-size, entries aligned to ``alignment``."""
    entries = []
    for entry in _array_children(data, alignment):
        width = _offset_size(len(entry))
        if len(entry) < width:
            raise GVariantError("dict entry too short")
        key_end = _read_offset(entry, len(entry) - width, width)
        if key_end > len(entry) - width:
            raise GVariantError("dict entry key out of bounds")
        value_start = _align(key_end, alignment)
        entries.append((_string(entry[:key_end]), entry[value_start : len(entry) - width]))
    return entries


def _asv(data: bytes, depth: int) -> dict[str, Value]:
    if depth > _MAX_DEPTH:
        raise GVariantError("variants nested too deeply")
    return {key: _variant(value, depth) for key, value in _entries(data, 8)}  # {sv}: 8-aligned (v is)


def parse_asv(data: bytes) -> dict[str, Value]:
    """A serialized ``a{sv}`` (this host's byte order) -> ``{key: value}``; :class:`GVariantError` if malformed."""
    return _asv(data, 0)
