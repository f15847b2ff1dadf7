"""The part of Go's text/template that podman's and skopeo's ``--format`` users write, as c/common formats it.

``--format`` values are normalised as c/common ``pkg/report/template.go`` ``NormalizeFormat`` does: a ``table ``
prefix turns every space into a column break (``\\t``) and asks for a heading line, ``\\t`` and ``\\n`` typed
literally become a tab and a newline; output is then aligned as c/common's ``tabwriter.NewWriter(out, 12, 2, 2,
' ', 0)`` aligns it (each column as wide as its widest cell plus two, at least twelve). ``json`` or ``{{json .}}``
alone means the command's JSON document (``report.IsJSON``).

Supported actions: ``{{.Field}}`` (nested: ``{{.Labels.key}}``), ``{{.}}``, and the functions ``json``,
``upper``, ``lower``, ``title``, ``join LIST SEP``, ``truncate TEXT N`` with ``.Field``, ``.``, ``"string"`` or
integer arguments. Anything else (``range``, ``if``, pipes, variables) is refused with a message naming it.
Values print as Go's ``fmt`` prints them (``[a b]`` for a list, ``map[k:v]`` for a map, keys sorted).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tether.engine.errors import UsageError

__all__ = ["NilList", "NilMap", "Template", "TemplateError", "go_format", "is_json_format", "parse_template",
           "tabulate"]


class TemplateError(UsageError):
    """A ``--format`` template that cannot be parsed or executed (names the action and why)."""


class NilList(list[object]):
    """A Go nil slice: prints ``[]`` and marshals to ``null`` (an empty ``list`` marshals to ``[]``)."""


class NilMap(dict[str, object]):
    """A Go nil map: prints ``map[]`` and marshals to ``null``."""


_JSON_ONLY = re.compile(r"^\s*(json|\{\{\s*json\s*\.?\s*\}\})\s*$")
_ACTION = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_TOKEN = re.compile(r'\s*("(?:[^"\\]|\\.)*"|-?\d+|\.[A-Za-z0-9_.]*|[A-Za-z_][A-Za-z0-9_]*)')
_FUNCTIONS = {"json": 1, "upper": 1, "lower": 1, "title": 1, "join": 2, "truncate": 2}


def is_json_format(text: str) -> bool:
    """``json`` or ``{{json .}}``: the command's JSON document rather than a template (c/common report.IsJSON)."""
    return bool(_JSON_ONLY.match(text))


def _normalize(text: str) -> tuple[str, bool]:
    if text.startswith("table "):
        body = text.replace("table ", "").replace("\\t", "\t").replace("\\n", "\n").replace(" ", "\t")
        table = True
    else:
        body = text.replace("\\t", "\t").replace("\\n", "\n")
        table = False
    return body, table


@dataclass(frozen=True)
class _Action:
    source: str
    function: str | None
    args: tuple[str, ...]


@dataclass(frozen=True)
class Template:
    """A parsed ``--format``: literal text and actions; ``table`` when a heading line is wanted."""

    text: str
    table: bool
    parts: tuple[str | _Action, ...]

    def render(self, value: Mapping[str, object]) -> str:
        """The template executed on ``value`` (the fields a command offers), without the final newline."""
        return "".join(part if isinstance(part, str) else self._run(part, value) for part in self.parts)

    def heading(self, headers: Mapping[str, str]) -> str:
        """The heading line: each ``{{.Field}}`` replaced by ``headers[Field]`` (``<no value>`` when it has none,
        as Go prints a map's missing key)."""
        out = []
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
            elif part.function is None and part.args[0].startswith(".") and len(part.args[0]) > 1:
                out.append(headers.get(part.args[0][1:], "<no value>"))
            else:
                out.append("<no value>")
        return "".join(out)

    def _run(self, action: _Action, value: Mapping[str, object]) -> str:
        args = [self._argument(action, arg, value) for arg in action.args]
        if action.function is None:
            return go_format(args[0])
        name = action.function
        if name == "json":
            return _go_json(args[0])
        if name in ("upper", "lower", "title"):
            text = go_format(args[0])
            if name == "title":  # Go's strings.Title: the first letter of each word, the rest kept
                return re.sub(r"(^|[^\w'])(\w)", lambda m: m.group(1) + m.group(2).upper(), text)
            return text.upper() if name == "upper" else text.lower()
        if name == "join":
            items, sep = args
            if not isinstance(items, list) or not isinstance(sep, str):
                raise TemplateError(f"{{{{{action.source}}}}}: join takes a list and a string")
            return sep.join(go_format(item) for item in items)
        subject, width = args
        if not isinstance(width, int):
            raise TemplateError(f"{{{{{action.source}}}}}: truncate takes a text and a length")
        return go_format(subject)[:width]

    def _argument(self, action: _Action, arg: str, value: Mapping[str, object]) -> object:
        if arg.startswith('"'):
            return str(json.loads(arg))
        if arg.lstrip("-").isdigit():
            return int(arg)
        current: object = value
        for name in (part for part in arg[1:].split(".") if part):
            if not isinstance(current, Mapping) or name not in current:
                known = ", ".join(sorted(value)) if current is value else ""
                raise TemplateError(f"template {{{{{action.source}}}}}: can't evaluate field {name}"
                                    + (f" (fields: {known})" if known else ""))
            current = current[name]
        return current


def parse_template(text: str) -> Template:
    """Parse a ``--format`` value (see the module docstring); :class:`TemplateError` for what is unsupported."""
    body, table = _normalize(text)
    parts: list[str | _Action] = []
    pos = 0
    for match in _ACTION.finditer(body):
        if match.start() > pos:
            parts.append(body[pos:match.start()])
        parts.append(_parse_action(match.group(1)))
        pos = match.end()
    rest = body[pos:]
    if "{{" in rest or "}}" in rest:
        raise TemplateError(f"template {text!r}: unmatched {{{{ or }}}}")
    if rest:
        parts.append(rest)
    return Template(text=text, table=table, parts=tuple(parts))


def _parse_action(source: str) -> _Action:
    inner = source.strip()
    tokens: list[str] = []
    pos = 0
    while pos < len(inner):
        match = _TOKEN.match(inner, pos)
        if match is None or not match.group(1):
            raise TemplateError(f"template {{{{{source}}}}}: unsupported (fields, json, upper, lower, title, join "
                                "and truncate only)")
        tokens.append(match.group(1))
        pos = match.end()
        while pos < len(inner) and inner[pos].isspace():
            pos += 1
    if not tokens:
        raise TemplateError("template {{}}: empty action")
    head = tokens[0]
    if head.startswith("."):
        if len(tokens) != 1:
            raise TemplateError(f"template {{{{{source}}}}}: a field takes no arguments")
        return _Action(source=inner, function=None, args=(head,))
    arity = _FUNCTIONS.get(head)
    if arity is None:
        raise TemplateError(f"template {{{{{source}}}}}: {head!r} is not supported (fields, json, upper, lower, "
                            "title, join and truncate only)")
    if len(tokens) - 1 != arity:
        raise TemplateError(f"template {{{{{source}}}}}: {head} takes {arity} argument(s)")
    return _Action(source=inner, function=head, args=tuple(tokens[1:]))


def go_format(value: object) -> str:
    """``fmt.Sprint(value)`` for the values commands offer: strings, ints, bools, lists, maps, None."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "map[" + " ".join(f"{k}:{go_format(v)}" for k, v in sorted(value.items())) + "]"
    if isinstance(value, Sequence) and not isinstance(value, str):
        return "[" + " ".join(go_format(item) for item in value) + "]"
    return str(value)


def _plain(value: object) -> object:
    if isinstance(value, (NilList, NilMap)) and not value:
        return None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(item) for item in value]
    return value


def _go_json(value: object) -> str:
    # c/common's "json" template function: an encoder with SetEscapeHTML(false), compact, no trailing newline
    return json.dumps(_plain(value), separators=(",", ":"), ensure_ascii=False)


def tabulate(lines: Sequence[str], *, min_width: int = 12, padding: int = 2) -> list[str]:
    """Align tab-separated cells as c/common's tabwriter (minwidth 12, padding 2, spaces): every cell followed
    by a tab is padded to its column's width; the last cell of a line is not."""
    rows = [line.split("\t") for line in lines]
    widths: dict[int, int] = {}
    for row in rows:
        for index, cell in enumerate(row[:-1]):
            widths[index] = max(widths.get(index, 0), len(cell) + padding, min_width)
    return ["".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])) + row[-1] for row in rows]
