"""Free space a store's writers leave on its filesystem: :class:`DiskReserve` (how much) and :class:`SpaceGuard`
(checked while writing).

A layer blob says nothing reliable about what it inflates to: 52 MB of gzip can hold 50 GB of zeros, and a
tar of tiny files takes a block per file.  So space is never planned from sizes alone; the writer checks the
filesystem itself (``statvfs``) as it goes and stops while the reserve is still free.  The check runs where the
bytes land (the extraction child for a layer), every :data:`CHECK_EVERY` bytes of *estimated* use: each byte of
the uncompressed stream, plus :data:`ENTRY_COST` per tar entry (a file, directory or device can take a block
and an inode of its own whatever its size).  A writer stops when less than the reserve plus one interval is
free, so one writer never takes the filesystem below the reserve; several writers at once each keep that
margin for themselves.

Why ``max(1 GiB, 5%)``, at most 10 GiB, by default: the store is on the host's root filesystem (bootc's
``/usr/lib/bootc/storage`` is under ``/sysroot``), and a host whose root filesystem is full cannot log, stage an
update or let anyone log in.  5% is what ext4 keeps back for root (``mke2fs -m 5``) for exactly that, but
tether runs as root and bootc hosts mostly use XFS (Fedora CoreOS, RHEL image mode), which keeps nothing back;
``statvfs``'s ``f_bavail`` is what is left for unprivileged users, so on ext4 the two add up.  1 GiB is the
floor for small disks (journald alone may keep up to 4 GiB of logs, ``SystemMaxUse``); 10 GiB the cap, so a
large disk is not held back by tens of gigabytes.  ``DiskReserve.fixed(0)`` disables the check.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tether.store.errors import DiskReserveError

__all__ = ["CHECK_EVERY", "DEFAULT_DISK_RESERVE", "ENTRY_COST", "DiskReserve", "SpaceGuard", "human_size"]

KIB: Final = 1024
MIB: Final = 1024 * KIB
GIB: Final = 1024 * MIB
#: Estimated bytes written between two ``statvfs`` calls (a call costs ~1 us; a MiB takes ~1 ms to apply).
CHECK_EVERY: Final = 1 * MIB
#: What one tar entry may take beyond its content: a filesystem block (a directory's, a small file's tail).
ENTRY_COST: Final = 4 * KIB

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS: Final = {"": 1, "k": KIB, "m": MIB, "g": GIB, "t": 1024 * GIB}


def human_size(n: int) -> str:
    """``1.5 GiB``, ``12.0 MiB``, ``512 B``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True, kw_only=True)
class DiskReserve:
    """How much of a filesystem writers leave free: ``fraction`` of its size, at least ``floor`` and at most
    ``cap`` bytes (the floor wins over the cap).  See the module docstring for the default."""

    floor: int = GIB
    fraction: float = 0.05
    cap: int = 10 * GIB

    def __post_init__(self) -> None:
        if self.floor < 0 or self.cap < 0 or not 0 <= self.fraction < 1:
            raise ValueError(f"invalid disk reserve {self!r}: sizes must be >= 0 and the fraction in [0, 1)")

    @classmethod
    def fixed(cls, size: int) -> DiskReserve:
        """Exactly ``size`` bytes whatever the filesystem's size; ``fixed(0)`` disables the check."""
        return cls(floor=size, fraction=0.0, cap=size)

    @classmethod
    def parse(cls, text: str) -> DiskReserve:
        """The spelling of a command-line option or configuration value: ``0`` (off), ``512M``, ``2GiB``,
        ``5%`` (of the filesystem, with the default floor and cap) or ``default``."""
        text = text.strip()
        if text.lower() == "default":
            return cls()
        if text.endswith("%"):
            try:
                percent = float(text[:-1])
            except ValueError:
                raise ValueError(f"invalid disk reserve {text!r}: expected a size or a percentage") from None
            return cls(fraction=percent / 100)
        match = _SIZE.match(text)
        if match is None:
            raise ValueError(f"invalid disk reserve {text!r}: expected a size (0, 512M, 2G) or a percentage (5%)")
        return cls.fixed(int(float(match.group(1)) * _UNITS[match.group(2).lower()]))

    @property
    def enabled(self) -> bool:
        """Whether anything is kept free."""
        return self.floor > 0 or self.fraction > 0

    def describe(self) -> str:
        """``max(1.0 GiB, 5% of the filesystem), at most 10.0 GiB`` or ``16.0 MiB``."""
        if not self.fraction:
            return human_size(self.floor)
        return (f"max({human_size(self.floor)}, {self.fraction * 100:g}% of the filesystem), "
                f"at most {human_size(max(self.cap, self.floor))}")

    def bytes_for(self, path: Path) -> int:
        """The reserve, in bytes, on the filesystem holding ``path``."""
        if not self.fraction:
            return self.floor
        st = os.statvfs(path)
        share = int(st.f_blocks * st.f_frsize * self.fraction)
        return max(self.floor, min(share, self.cap))

    def check(self, path: Path, *, needed: int = 0, where: Path | None = None) -> None:
        """Before writing ``needed`` bytes under ``path``: raise :class:`DiskReserveError` if they would leave
        less than the reserve free (a preflight; :meth:`guard` checks while writing).  The message names
        ``where`` (default ``path``)."""
        if not self.enabled:
            return
        reserve = self.bytes_for(path)
        free = free_bytes(path)
        if free - needed < reserve:
            what = f"{human_size(needed)} to write, " if needed else ""
            raise DiskReserveError(
                f"not enough space on the filesystem of {where or path}: {what}{human_size(free)} free, and the "
                f"store's disk reserve of {human_size(reserve)}{_detail(self.describe(), reserve)} must stay free")

    def guard(self, path: Path, *, where: Path | None = None) -> SpaceGuard | None:
        """A :class:`SpaceGuard` for a writer under ``path`` (``None`` when the reserve is disabled); its
        messages name ``where`` (say, the store's root) instead of ``path``."""
        if not self.enabled:
            return None
        return SpaceGuard(path, self.bytes_for(path), describe=self.describe(), where=where)


DEFAULT_DISK_RESERVE: Final = DiskReserve()


def free_bytes(path: Path | str) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding ``path`` (``f_bavail``)."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class SpaceGuard:
    """Counts what a writer puts on the filesystem of ``path`` and stops it (:class:`DiskReserveError`) before
    less than ``reserve`` bytes are left: :meth:`wrote` after each write, :meth:`check` at any time.

    Serializable (:meth:`to_json`) to the child process that extracts a layer.  Not thread-safe.
    """

    def __init__(self, path: Path | str, reserve: int, *, every: int = CHECK_EVERY, describe: str = "",
                 where: Path | str | None = None) -> None:
        self.path = os.fspath(path)
        self.reserve = reserve
        self.every = every
        self.describe = describe
        self.where = os.fspath(where) if where is not None else self.path
        self.written = 0
        self._pending = 0

    def wrote(self, n: int) -> None:
        """``n`` more bytes (estimated) are on their way to the filesystem."""
        self.written += n
        self._pending += n
        if self._pending >= self.every:
            self.check()

    def check(self) -> None:
        """Raise :class:`DiskReserveError` if the next :attr:`every` bytes could take the filesystem below the
        reserve."""
        self._pending = 0
        free = free_bytes(self.path)
        if free < self.reserve + self.every:
            raise DiskReserveError(
                f"stopped after writing {human_size(self.written)}: the filesystem of {self.where} has "
                f"{human_size(free)} free and must keep the store's disk reserve of {human_size(self.reserve)}"
                f"{_detail(self.describe, self.reserve)} (an oversized or decompression-bomb layer, or a full disk)")

    def to_json(self) -> dict[str, object]:
        """For the extraction child's parameters."""
        return {"path": self.path, "reserve": self.reserve, "every": self.every, "describe": self.describe,
                "where": self.where}

    @classmethod
    def from_json(cls, obj: dict[str, object]) -> SpaceGuard:
        """The inverse of :meth:`to_json`."""
        return cls(str(obj["path"]), int(obj["reserve"]), every=int(obj["every"]),  # type: ignore[call-overload]
                   describe=str(obj.get("describe", "")), where=str(obj.get("where") or obj["path"]))


def _detail(describe: str, reserve: int) -> str:
    return f" ({describe})" if describe and describe != human_size(reserve) else ""
