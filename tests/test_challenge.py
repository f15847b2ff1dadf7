"""WWW-Authenticate parsing: a table of header values and the challenges they hold."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether.registry.challenge import Challenge, parse_www_authenticate

CASES: list[tuple[str | list[str], list[tuple[str, dict[str, str]]]]] = [
    # docker-registry's token auth
    (
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:app:pull"',
        [
            (
                "bearer",
                {
                    "realm": "https://auth.example/token",
                    "service": "registry.example",
                    "scope": "repository:app:pull",
                },
            )
        ],
    ),
    # htpasswd
    ('Basic realm="Registry Realm"', [("basic", {"realm": "Registry Realm"})]),
    # insufficient_scope with a multi-action scope containing commas inside the quotes
    (
        'Bearer realm="r",service="s",scope="repository:a:pull,push",error="insufficient_scope"',
        [
            (
                "bearer",
                {"realm": "r", "service": "s", "scope": "repository:a:pull,push", "error": "insufficient_scope"},
            )
        ],
    ),
    # two challenges in one header value
    (
        'Basic realm="simple", Bearer realm="https://t/", service="x"',
        [("basic", {"realm": "simple"}), ("bearer", {"realm": "https://t/", "service": "x"})],
    ),
    # two header values
    (
        ['Basic realm="a"', 'Bearer realm="b"'],
        [("basic", {"realm": "a"}), ("bearer", {"realm": "b"})],
    ),
    # quoted-pair escapes
    (r'Basic realm="a \"quoted\" \\ realm"', [("basic", {"realm": 'a "quoted" \\ realm'})]),
    # case-insensitive scheme and parameter names; token values; OWS around "="
    ("BEARER Realm = tok , Service=svc", [("bearer", {"realm": "tok", "service": "svc"})]),
    # empty list elements (RFC 7230 7: "#rule" allows them)
    (', ,Basic realm="x",,  ,', [("basic", {"realm": "x"})]),
    # a scheme with no parameters followed by another challenge
    ("Negotiate, Basic realm=x", [("negotiate", {}), ("basic", {"realm": "x"})]),
    # a duplicate parameter: the first one is kept
    ('Basic realm="one", realm="two"', [("basic", {"realm": "one"})]),
    # empty quoted string
    ('Bearer realm=""', [("bearer", {"realm": ""})]),
    # malformed: unterminated quote -> nothing
    ('Basic realm="never ends', []),
    # malformed after a good challenge: the good one is kept
    ('Basic realm="ok", Bearer realm="unterminated', [("basic", {"realm": "ok"})]),
    ('Bearer realm="ok" "junk"', [("bearer", {"realm": "ok"})]),
    # empty header
    ("", []),
]


@pytest.mark.parametrize(("header", "expected"), CASES)
def test_parse_www_authenticate(
    header: str | list[str], expected: list[tuple[str, dict[str, str]]]
) -> None:
    got = parse_www_authenticate(header)
    assert [(c.scheme, dict(c.params)) for c in got] == expected


def test_token68() -> None:
    (challenge,) = parse_www_authenticate("Custom abc+/def==")
    assert challenge == Challenge("custom", {}, "abc+/def==")
    assert parse_www_authenticate("Custom abc==, Basic realm=r")[1].get("REALM") == "r"


def test_get_is_case_insensitive_with_default() -> None:
    (challenge,) = parse_www_authenticate('Bearer Realm="r"')
    assert challenge.get("realm") == "r"
    assert challenge.get("service") is None
    assert challenge.get("service", "d") == "d"


# ---- properties

_TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_tokens = st.text(alphabet=_TCHARS, min_size=1, max_size=12)
_values = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from("\t€"),
                  max_size=30)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@given(st.lists(st.tuples(_tokens, st.dictionaries(_tokens, _values, min_size=1, max_size=4)), min_size=1,
                max_size=4))
def test_round_trip(challenges: list[tuple[str, dict[str, str]]]) -> None:
    header = ", ".join(
        scheme + " " + ", ".join(f"{name}={_quote(value)}" for name, value in params.items())
        for scheme, params in challenges
    )
    parsed = parse_www_authenticate(header)
    expected = []
    for scheme, params in challenges:
        first: dict[str, str] = {}
        for name, value in params.items():
            first.setdefault(name.lower(), value)
        expected.append((scheme.lower(), first))
    assert [(c.scheme, dict(c.params)) for c in parsed] == expected


@given(st.text(max_size=80))
def test_never_raises(text: str) -> None:
    for challenge in parse_www_authenticate(text):
        assert challenge.scheme
