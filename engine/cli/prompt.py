"""The short-name prompt: ``? Please select an image:`` with arrow-key selection, as podman shows it.

containers/image (``pkg/shortnames/shortnames.go``, ``Resolve``) prompts when a short name has several
unqualified-search candidates, short-name-mode is ``enforcing`` or ``permissive``, and both stdin and stdout are
terminals; it uses promptui's ``Select`` (label ``Please select an image``, help hidden, five items shown at a time,
scrolled): ``?`` label, ``▸`` before the active item, ``✔ CHOICE`` once chosen; ↑/↓ (also ``k``/``j``, Ctrl-P/N)
move, ←/→ (``h``/``l``) page, Enter chooses. This is the same prompt, on the same streams (stdout for the
prompt, stdin for the keys), so that a podman user's fingers work here.

:func:`prompt_short_names` asks before the pull starts, for every short name given, one after the other: the
pull's live display (stderr) and concurrent resolution would otherwise draw over the prompt, and podman too
asks before it pulls anything. The chosen reference replaces the short name; once its pull succeeded,
:func:`record_selections` records the choice in the short-name-aliases.conf cache as podman does
(``PullCandidate.Record``), so the next pull of that name, by tether or podman, asks no more.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import termios
import tty
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO

from tether.engine.errors import EngineError
from tether.engine.options import CommonOptions
from tether.registry.errors import RegistryError
from tether.registry.reference import DockerName, Reference, parse_image_name, parse_short_name
from tether.registry.registries_conf import (
    RegistriesConf,
    default_aliases_path,
    load_registries_conf,
    record_short_name_alias,
    resolve_short_name_detailed,
)

LABEL = "Please select an image"
#: promptui's default Select.Size.
PAGE = 5

_UP = {b"\x1b[A", b"\x1bOA", b"k", b"\x10"}
_DOWN = {b"\x1b[B", b"\x1bOB", b"j", b"\x0e"}
_PAGE_UP = {b"\x1b[D", b"\x1bOD", b"h", b"\x02"}
_PAGE_DOWN = {b"\x1b[C", b"\x1bOC", b"l", b"\x06"}
_ENTER = {b"\r", b"\n"}


class PromptAborted(EngineError):
    """The prompt's input ended (Ctrl-D, or stdin closed) before a choice."""


def _glyphs(out: IO[str]) -> dict[str, str]:
    utf8 = (getattr(out, "encoding", None) or "").lower().replace("-", "") == "utf8"
    if utf8:
        return {"select": "▸", "good": "✔", "up": "↑", "down": "↓"}
    return {"select": ">", "good": "*", "up": "^", "down": "v"}


@contextlib.contextmanager
def _cbreak(fd: int) -> Iterator[None]:
    """Keys one at a time, not echoed; Ctrl-C still interrupts (ISIG stays on: KeyboardInterrupt)."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, saved)


def _read_key(fd: int) -> bytes:
    data = os.read(fd, 1)
    if data == b"\x1b":  # an escape sequence arrives in one write: take what follows, without blocking for more
        with contextlib.suppress(BlockingIOError):
            os.set_blocking(fd, False)
            try:
                data += os.read(fd, 8)
            finally:
                os.set_blocking(fd, True)
    return data


def select(items: Sequence[str], *, stdin_fd: int, out: IO[str], label: str = LABEL) -> int:
    """Show ``items`` as promptui's Select does and return the index chosen.

    Raises :class:`PromptAborted` when stdin ends, ``KeyboardInterrupt`` on Ctrl-C (the prompt is erased first).
    """
    if not items:
        raise ValueError("nothing to select from")
    glyph = _glyphs(out)
    columns = shutil.get_terminal_size((80, 24)).columns
    index, top, drawn = 0, 0, 0

    def draw(final: str | None = None) -> None:
        nonlocal drawn
        parts = []
        if drawn:
            parts.append(f"\r\x1b[{drawn}A")
        parts.append("\r\x1b[J")
        if final is not None:
            parts.append(f"\x1b[32m{glyph['good']}\x1b[0m \x1b[2m{final}\x1b[0m\n")
            drawn = 0
        else:
            # Lines cut to the terminal: a wrapped line would make the redraw move up too few lines.
            parts.append(f"\x1b[34m?\x1b[0m {label}: \n")
            window = items[top:top + PAGE]
            for i, item in enumerate(window):
                page = " "
                if i == 0 and top > 0:
                    page = glyph["up"]
                elif i == len(window) - 1 and top + PAGE < len(items):
                    page = glyph["down"]
                text = item if len(item) <= columns - 5 else item[: max(1, columns - 6)] + "…"
                if top + i == index:
                    parts.append(f"{page} \x1b[1m{glyph['select']}\x1b[0m \x1b[4m{text}\x1b[0m\n")
                else:
                    parts.append(f"{page}   {text}\n")
            drawn = 1 + len(window)
        out.write("".join(parts))
        out.flush()

    out.write("\x1b[?25l")  # promptui hides the cursor while the list is shown
    try:
        with _cbreak(stdin_fd):
            draw()
            while True:
                key = _read_key(stdin_fd)
                if not key or key == b"\x04":
                    draw("")
                    raise PromptAborted("short-name prompt: input ended before an image was selected")
                if key in _ENTER:
                    break
                if key in _UP:
                    index = max(0, index - 1)
                elif key in _DOWN:
                    index = min(len(items) - 1, index + 1)
                elif key in _PAGE_UP:
                    index = max(0, index - PAGE)
                elif key in _PAGE_DOWN:
                    index = min(len(items) - 1, index + PAGE)
                else:
                    continue
                top = min(top, index)
                top = max(top, index - PAGE + 1)
                draw()
        draw(items[index])
        return index
    except KeyboardInterrupt:
        if drawn:
            out.write(f"\r\x1b[{drawn}A\r\x1b[J")
        raise
    finally:
        out.write("\x1b[?25h")
        out.flush()


def terminal_chooser() -> Callable[[tuple[Reference, ...]], Reference] | None:
    """The prompt as ``resolve_short_name``'s ``choose``, when stdin and stdout are terminals (else ``None``)."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return None

    def choose(candidates: tuple[Reference, ...]) -> Reference:
        return candidates[select([str(c) for c in candidates], stdin_fd=sys.stdin.fileno(), out=sys.stdout)]

    return choose


@dataclass(frozen=True)
class Selection:
    """One name to pull: ``name`` as the pull takes it; when the user chose it at the prompt, ``short_name`` is
    what was typed without its tag and ``repository`` the chosen one (what a successful pull records)."""

    name: str
    short_name: str | None = None
    repository: Reference | None = None


def prompt_short_names(names: Sequence[str], options: CommonOptions, *,
                       choose: Callable[[tuple[Reference, ...]], Reference] | None = None) -> list[Selection]:
    """``names``, each short name the user picked a candidate for replaced by that reference.

    Only when a prompt can be shown (``choose``, else :func:`terminal_chooser`); a name that resolves without
    one (an alias, one search registry, short-name-mode ``disabled``) or fails to resolve (a bad registries.conf,
    no search registries) is left as given: the pull resolves it again and reports it per image.
    """
    choose = choose if choose is not None else terminal_chooser()
    if choose is None:
        return [Selection(name) for name in names]
    conf: RegistriesConf | None = None
    out = []
    for name in names:
        selection = Selection(name)
        try:
            parsed = parse_image_name(name)
            if isinstance(parsed, DockerName) and parsed.reference is None:
                if conf is None:
                    conf = load_registries_conf(path=options.registries_conf, environ=options.environ,
                                                dropin_dir=options.registries_conf_dir,
                                                aliases_path=options.short_name_alias_conf)
                resolved = resolve_short_name_detailed(conf, parsed.name, tty=True, choose=choose)
                if resolved.rationale == "selected":
                    chosen = resolved.candidates[0]
                    selection = Selection(str(chosen), short_name=parse_short_name(parsed.name).path,
                                          repository=chosen)
        except RegistryError:
            pass
        out.append(selection)
    return out


def record_selections(selections: Iterable[Selection], pulled: set[str], options: CommonOptions) -> list[str]:
    """Record every selection whose name is in ``pulled`` (pulled successfully) as a short-name alias; returns
    one warning per failed write (a pull that succeeded does not fail for its cache, as in podman)."""
    path = options.short_name_alias_conf or default_aliases_path(environ=options.environ)
    warnings = []
    for selection in selections:
        if selection.short_name is None or selection.repository is None or selection.name not in pulled:
            continue
        try:
            record_short_name_alias(path, selection.short_name, selection.repository)
        except RegistryError as exc:
            warnings.append(str(exc))
    return warnings


__all__ = ["LABEL", "PromptAborted", "Selection", "prompt_short_names", "record_selections", "select",
           "terminal_chooser"]
