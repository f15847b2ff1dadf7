"""systemd unit file syntax, as podman quadlet ``.image`` / ``.container`` files use it.

Sans-IO: :func:`parse_unit` takes text and returns a frozen :class:`UnitFile`.

The grammar follows systemd.syntax(7) and systemd's ``src/shared/conf-parser.c``:

- each line is stripped of leading and trailing whitespace; a UTF-8 BOM at the start is skipped;
- empty lines and lines starting with ``#`` or ``;`` are comments;
- a line ending in a backslash is joined with the next one, the backslash replaced by a space;
  comment lines inside such a continuation are skipped (the continued line goes on after them);
- ``[Section]`` starts a section (a section may appear several times: its entries are merged);
- ``Key=Value``: key and value stripped; an assignment outside any section is ignored, as systemd
  does ("Assignment outside of section. Ignoring.");
- a key repeated in a section: the last assignment wins for single-valued keys (podman's
  ``UnitFile.Lookup`` looks up the last one); drop-ins (:meth:`UnitFile.merged`) append after the
  main file so they win too.

Values are kept raw; :meth:`UnitFile.lookup` removes one pair of matching outer quotes (podman's
``Lookup`` strips matched double quotes; systemd's ``extract_first_word`` accepts single quotes as
well) and :func:`expand_specifiers` applies bootc's rule for ``%`` specifiers
(bootc-dev/bootc ``crates/lib/src/boundimage.rs``: ``parse_spec_value``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from tether.engine.errors import BoundImageError

COMMENT_CHARS = "#;"
BOM = "\ufeff"


class UnitSyntaxError(BoundImageError):
    """A line of a unit file is neither a comment, a section header nor ``Key=Value``."""


class SpecifierError(BoundImageError):
    """A value uses a systemd specifier (``%n``, ``%h``...) or ends in a lone ``%``."""


@dataclass(frozen=True)
class UnitEntry:
    """One ``Key=Value`` assignment, where it came from (file and first line)."""

    section: str
    key: str
    value: str
    path: str
    line: int


@dataclass(frozen=True)
class UnitFile:
    """A parsed unit file (plus any drop-ins merged into it), in file order."""

    path: str
    entries: tuple[UnitEntry, ...]
    section_names: tuple[str, ...]

    def sections(self) -> tuple[str, ...]:
        """Section names in first-seen order (each once)."""
        return self.section_names

    def has_section(self, section: str) -> bool:
        """Whether ``[section]`` appears (even empty)."""
        return section in self.section_names

    def entries_of(self, section: str) -> Iterator[UnitEntry]:
        """Entries of one section in order."""
        return (e for e in self.entries if e.section == section)

    def get_all(self, section: str, key: str) -> tuple[str, ...]:
        """All raw values of ``key`` in ``section``, in order."""
        return tuple(e.value for e in self.entries if e.section == section and e.key == key)

    def last_entry(self, section: str, key: str) -> UnitEntry | None:
        """The last assignment of ``key`` in ``section`` (the one that wins), or None."""
        for entry in reversed(self.entries):
            if entry.section == section and entry.key == key:
                return entry
        return None

    def get(self, section: str, key: str) -> str | None:
        """The raw value of the last assignment of ``key`` in ``section``, or None."""
        entry = self.last_entry(section, key)
        return None if entry is None else entry.value

    def lookup(self, section: str, key: str) -> str | None:
        """The last value of ``key`` with one pair of matching outer quotes removed, or None.

        Like podman's ``UnitFile.Lookup``; an empty value is returned as ``""`` (callers treat it
        as unset, as quadlet does for ``Image=``).
        """
        raw = self.get(section, key)
        return None if raw is None else unquote_value(raw)

    def merged(self, other: UnitFile) -> UnitFile:
        """This file with ``other``'s entries appended (a drop-in: its assignments win)."""
        names = self.section_names + tuple(n for n in other.section_names if n not in self.section_names)
        return UnitFile(path=self.path, entries=self.entries + other.entries, section_names=names)


def _logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Yield ``(first line number, logical line)`` after joining continuations (systemd rules)."""
    if text.startswith(BOM):
        text = text[len(BOM) :]
    pending: str | None = None
    pending_line = 0
    for number, physical in enumerate(text.splitlines(), start=1):
        stripped = physical.strip()
        if pending is not None and stripped and stripped[0] in COMMENT_CHARS:
            # systemd.syntax(7): a comment block inside a continuation is ignored.
            continue
        if pending is None:
            pending_line = number
            if not stripped or stripped[0] in COMMENT_CHARS:
                continue
            current = stripped
        else:
            current = pending + stripped
        if current.endswith("\\"):
            pending = current[:-1] + " "
            continue
        pending = None
        yield pending_line, current
    if pending is not None:
        # A final line ending in a backslash: systemd parses what it has.
        yield pending_line, pending


def parse_unit(text: str, *, path: str = "<unit>") -> UnitFile:
    """Parse systemd unit syntax; :class:`UnitSyntaxError` names ``path`` and the line."""
    entries: list[UnitEntry] = []
    sections: list[str] = []
    section: str | None = None
    for number, line in _logical_lines(text):
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise UnitSyntaxError(f"{path}:{number}: invalid section header {line!r}")
            name = line[1:-1]
            if "[" in name or "]" in name or any(ord(c) < 32 for c in name):
                raise UnitSyntaxError(f"{path}:{number}: invalid section name {name!r}")
            section = name
            if name not in sections:
                sections.append(name)
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise UnitSyntaxError(f"{path}:{number}: missing '=' in {line!r}")
        key = key.strip()
        if not key:
            raise UnitSyntaxError(f"{path}:{number}: missing key name in {line!r}")
        if section is None:
            continue  # conf-parser.c: "Assignment outside of section. Ignoring."
        entries.append(UnitEntry(section=section, key=key, value=value.strip(), path=path, line=number))
    return UnitFile(path=path, entries=tuple(entries), section_names=tuple(sections))


def unquote_value(value: str) -> str:
    """Remove one pair of matching outer ``"`` or ``'`` quotes; inside them ``\\"``, ``\\'`` and
    ``\\\\`` are unescaped. Anything else (unmatched quotes, inner quotes) is kept as written."""
    value = value.rstrip()
    if len(value) >= 2 and value[0] in "\"'" and value[-1] == value[0]:
        inner = value[1:-1]
        out: list[str] = []
        i = 0
        while i < len(inner):
            c = inner[i]
            if c == "\\" and i + 1 < len(inner) and inner[i + 1] in "\\\"'":
                out.append(inner[i + 1])
                i += 2
                continue
            out.append(c)
            i += 1
        return "".join(out)
    return value


def expand_specifiers(value: str) -> str:
    """Resolve ``%%`` to ``%``; refuse any other specifier, as bootc does.

    bootc-dev/bootc ``boundimage.rs`` ``parse_spec_value``: any ``%x`` other than ``%%`` fails with
    "Systemd specifiers are not supported by bound bootc images: VALUE"; a trailing lone ``%``
    fails with "Unterminated %". (The host's ``%n``/``%h`` meaning is unknowable for an image
    that is not yet booted.)
    """
    out: list[str] = []
    i = 0
    while i < len(value):
        c = value[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        if i + 1 >= len(value):
            raise SpecifierError(f"Unterminated %: {value}")
        if value[i + 1] != "%":
            raise SpecifierError(f"Systemd specifiers are not supported by bound bootc images: {value}")
        out.append("%")
        i += 2
    return "".join(out)


def parse_bool(value: str) -> bool | None:
    """systemd's ``parse_boolean``: 1/yes/y/true/t/on and 0/no/n/false/f/off; None otherwise."""
    lowered = value.strip().lower()
    if lowered in ("1", "yes", "y", "true", "t", "on"):
        return True
    if lowered in ("0", "no", "n", "false", "f", "off"):
        return False
    return None
