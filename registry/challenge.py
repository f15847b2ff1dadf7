"""``WWW-Authenticate`` parsing (RFC 7235 section 4.1 and 2.1), sans-IO.

A header value holds one or more challenges separated by commas::

    WWW-Authenticate: Bearer realm="https://auth.example/token",service="reg",scope="repository:a:pull",
                      Basic realm="x"

Each challenge is an auth-scheme followed by either a token68 or a comma-separated list of
``name=value`` parameters whose values are tokens or quoted strings (with ``\\`` escapes). A comma
that is followed by ``token=`` continues the parameter list; a comma followed by a bare token starts
the next challenge. containers/image (``docker/wwwauthenticate.go``) keeps only the parameters of
each header's first scheme; this parser keeps every challenge of every header.

Parsing is lenient, as clients must be: a malformed challenge ends the parse of that header value
and the challenges before it are kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = ["Challenge", "parse_www_authenticate"]

# RFC 7230 tchar: "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~"
# / DIGIT / ALPHA
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 7235 token68: 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_OWS = re.compile(r"[ \t]*")


@dataclass(frozen=True)
class Challenge:
    """One authentication challenge: ``scheme`` lower-cased, parameter names lower-cased.

    ``token68`` is set for the rare ``Scheme token68`` form (then ``params`` is empty).
    """

    scheme: str
    params: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    token68: str | None = None

    def get(self, name: str, default: str | None = None) -> str | None:
        """The parameter ``name`` (case-insensitive), or ``default``."""
        return self.params.get(name.lower(), default)


def parse_www_authenticate(values: str | Iterable[str]) -> tuple[Challenge, ...]:
    """All challenges of one or several ``WWW-Authenticate`` header values, in order."""
    if isinstance(values, str):
        values = (values,)
    challenges: list[Challenge] = []
    for value in values:
        challenges.extend(_parse_one_header(value))
    return tuple(challenges)


class _Malformed(Exception):
    pass


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def skip_ows(self) -> None:
        m = _OWS.match(self.text, self.pos)
        assert m is not None
        self.pos = m.end()

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def take(self, pattern: re.Pattern[str]) -> str | None:
        m = pattern.match(self.text, self.pos)
        if m is None:
            return None
        self.pos = m.end()
        return m.group(0)

    def skip_commas(self) -> bool:
        """Skip ``OWS *( "," OWS )``; True if at least one comma was skipped."""
        seen = False
        while True:
            self.skip_ows()
            if self.peek() == ",":
                self.pos += 1
                seen = True
            else:
                return seen

    def quoted_string(self) -> str:
        # RFC 7230 3.2.6: quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE
        assert self.peek() == '"'
        self.pos += 1
        out: list[str] = []
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            if ch == "\\":
                if self.pos + 1 >= len(self.text):
                    raise _Malformed("dangling backslash")
                out.append(self.text[self.pos + 1])
                self.pos += 2
            elif ch == '"':
                self.pos += 1
                return "".join(out)
            else:
                out.append(ch)
                self.pos += 1
        raise _Malformed("unterminated quoted string")

    def looks_like_param(self) -> bool:
        """At ``token OWS "="`` but not at a token68 (``token=`` followed by end or comma)."""
        m = _TOKEN.match(self.text, self.pos)
        if m is None:
            return False
        rest = _OWS.match(self.text, m.end())
        assert rest is not None
        if rest.end() >= len(self.text) or self.text[rest.end()] != "=":
            return False
        # "abc==" (token68 padding) or "realm=" at the end is not a parameter.
        value = _OWS.match(self.text, rest.end() + 1)
        assert value is not None
        nxt = self.text[value.end() : value.end() + 1]
        return nxt == '"' or _TOKEN.match(nxt) is not None


def _parse_one_header(value: str) -> list[Challenge]:
    s = _Scanner(value)
    out: list[Challenge] = []
    try:
        s.skip_commas()
        while not s.at_end():
            scheme = s.take(_TOKEN)
            if scheme is None:
                raise _Malformed("expected an auth-scheme")
            out.append(_parse_challenge_body(s, scheme.lower()))
            # The next challenge must follow a comma; anything else ends the parse leniently.
            if not s.skip_commas() and not s.at_end():
                raise _Malformed("junk after a challenge")
    except _Malformed:
        pass
    return out


def _parse_challenge_body(s: _Scanner, scheme: str) -> Challenge:
    params: dict[str, str] = {}
    if s.peek() not in (" ", "\t"):
        # The scheme alone (end of header or a comma): a challenge without parameters.
        return Challenge(scheme)
    s.skip_ows()
    if s.at_end() or s.peek() == ",":
        return Challenge(scheme)
    if not s.looks_like_param():
        start = s.pos
        token68 = s.take(_TOKEN68)
        if token68 is not None:
            after = s.pos
            s.skip_ows()
            if s.at_end() or s.peek() == ",":
                return Challenge(scheme, MappingProxyType({}), token68)
            s.pos = after
        s.pos = start
        raise _Malformed("expected auth-param or token68")
    while True:
        name = s.take(_TOKEN)
        if name is None:
            raise _Malformed("expected a parameter name")
        s.skip_ows()
        if s.peek() != "=":
            raise _Malformed("expected '='")
        s.pos += 1
        s.skip_ows()
        if s.peek() == '"':
            param_value = s.quoted_string()
        else:
            token = s.take(_TOKEN)
            if token is None:
                raise _Malformed("expected a token or quoted string")
            param_value = token
        # RFC 7235 2.1: each parameter name MUST only occur once per challenge; keep the first.
        params.setdefault(name.lower(), param_value)
        # Another parameter of this challenge follows only after a comma and a "name=".
        save = s.pos
        if not s.skip_commas():
            break
        if s.at_end():
            break
        if s.looks_like_param():
            continue
        s.pos = save
        break
    return Challenge(scheme, MappingProxyType(params))
