"""systemd unit syntax as quadlet files use it (engine/quadlet.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.engine.bound.quadlet import (
    SpecifierError,
    UnitSyntaxError,
    expand_specifiers,
    parse_bool,
    parse_unit,
    unquote_value,
)
from tether.engine.errors import BoundImageError


def test_sections_keys_and_comments() -> None:
    unit = parse_unit(
        "# leading comment\n"
        "; another\n"
        "\n"
        "[Unit]\n"
        "Description=An app\n"
        "[Image]\n"
        "  Image = quay.io/foo/foo:latest  \n"
        "#Image=ignored\n"
        ";Image=ignored too\n"
        "Arch=arm64\n",
        path="/x.image",
    )
    assert unit.sections() == ("Unit", "Image")
    assert unit.get("Image", "Image") == "quay.io/foo/foo:latest"
    assert unit.get("Image", "Arch") == "arm64"
    assert unit.get("Unit", "Image") is None
    assert unit.get("Image", "Missing") is None
    entry = unit.last_entry("Image", "Image")
    assert entry is not None and entry.line == 7 and entry.path == "/x.image"


def test_repeated_key_last_wins_and_repeated_section_merges() -> None:
    unit = parse_unit("[Image]\nImage=a\n[Unit]\nX=1\n[Image]\nImage=b\nImage=c\n")
    assert unit.get("Image", "Image") == "c"
    assert unit.get_all("Image", "Image") == ("a", "b", "c")
    assert unit.sections() == ("Image", "Unit")


def test_line_continuation_replaces_backslash_with_space() -> None:
    unit = parse_unit("[Container]\nExec=/bin/sh \\\n  -c \\\n  true\nImage=quay.io/a/\\\nb\n")
    assert unit.get("Container", "Exec") == "/bin/sh  -c  true"
    # systemd.syntax(7): the backslash becomes a space, so a name split this way is not joined.
    assert unit.get("Container", "Image") == "quay.io/a/ b"


def test_comment_lines_inside_a_continuation_are_skipped() -> None:
    unit = parse_unit("[Container]\nExec=one \\\n# a comment\n; another\n two\nImage=x\n")
    assert unit.get("Container", "Exec") == "one  two"
    assert unit.get("Container", "Image") == "x"


def test_empty_line_ends_a_continuation_and_trailing_backslash_at_eof() -> None:
    unit = parse_unit("[Image]\nA=1 \\\n\nB=2 \\")
    assert unit.get("Image", "A") == "1"
    assert unit.get("Image", "B") == "2"


def test_bom_and_crlf() -> None:
    unit = parse_unit("\ufeff[Image]\r\nImage=quay.io/a/b:1\r\n")
    assert unit.get("Image", "Image") == "quay.io/a/b:1"


def test_assignment_outside_section_is_ignored() -> None:
    unit = parse_unit("Image=outside\n[Image]\n")
    assert unit.get("Image", "Image") is None
    assert unit.has_section("Image")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[Image\nImage=a\n", "invalid section header"),
        ("[]\n", "invalid section header"),
        ("[Image]\nImage\n", "missing '='"),
        ("[Image]\n=value\n", "missing key name"),
        ("[Im]age]\n", "invalid section name"),
    ],
)
def test_syntax_errors_name_file_and_line(text: str, fragment: str) -> None:
    with pytest.raises(UnitSyntaxError, match=fragment) as info:
        parse_unit(text, path="/usr/share/containers/systemd/a.image")
    assert str(info.value).startswith("/usr/share/containers/systemd/a.image:")
    assert isinstance(info.value, BoundImageError)


def test_lookup_unquotes() -> None:
    unit = parse_unit('[Image]\nA="quay.io/a/b:1"\nB=\'x y\'\nC="unmatched\nD=a"b"c\nE="say \\"hi\\""\nF=\n')
    assert unit.lookup("Image", "A") == "quay.io/a/b:1"
    assert unit.lookup("Image", "B") == "x y"
    assert unit.lookup("Image", "C") == '"unmatched'
    assert unit.lookup("Image", "D") == 'a"b"c'
    assert unit.lookup("Image", "E") == 'say "hi"'
    assert unit.lookup("Image", "F") == ""
    assert unquote_value('"') == '"'


def test_dropin_merge_wins() -> None:
    base = parse_unit("[Image]\nImage=a\nArch=amd64\n", path="/a.image")
    dropin = parse_unit("[Image]\nImage=b\n[Service]\nRestart=always\n", path="/a.image.d/10.conf")
    merged = base.merged(dropin)
    assert merged.get("Image", "Image") == "b"
    assert merged.get("Image", "Arch") == "amd64"
    assert merged.sections() == ("Image", "Service")
    assert merged.path == "/a.image"
    last = merged.last_entry("Image", "Image")
    assert last is not None and last.path == "/a.image.d/10.conf"


# bootc-dev/bootc crates/lib/src/boundimage.rs test_parse_spec_value, case by case.
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("quay.io/foo/foo:latest", "quay.io/foo/foo:latest"),
        ("quay.io/foo/%%foo:latest", "quay.io/foo/%foo:latest"),
        ("quay.io/foo/%%foo:%%latest", "quay.io/foo/%foo:%latest"),
        ("%%quay.io/foo/foo:latest%%", "%quay.io/foo/foo:latest%"),
        ("quay.io/foo/%%%%foo:latest", "quay.io/foo/%%foo:latest"),
        ("", ""),
    ],
)
def test_specifiers_accepted(value: str, expected: str) -> None:
    assert expand_specifiers(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "quay.io/foo/%foo:latest",
        "quay.io/foo/%%%foo:latest",
        "quay.io/foo/%f%ooo:latest",
        "%fquay.io/foo/foo:latest",
        "quay.io/foo/foo:latest%f",
        "quay.io/%n/app",
        "quay.io/%h",
    ],
)
def test_specifiers_refused(value: str) -> None:
    with pytest.raises(SpecifierError, match="Systemd specifiers are not supported by bound bootc images") as e:
        expand_specifiers(value)
    assert value in str(e.value)


@pytest.mark.parametrize("value", ["quay.io/foo/foo:latest%", "%", "a%%%"])
def test_unterminated_percent(value: str) -> None:
    with pytest.raises(SpecifierError, match="Unterminated %"):
        expand_specifiers(value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("yes", True), ("1", True), ("On", True), ("true", True), ("no", False), ("0", False), ("off", False)],
)
def test_parse_bool(text: str, expected: bool) -> None:
    assert parse_bool(text) is expected


def test_parse_bool_invalid() -> None:
    assert parse_bool("maybe") is None


# --- property: a model of sections/keys/values written with comments, blank lines, indentation and
# continuations (split at spaces: systemd turns "\<newline>" into a space) parses back, last value winning.

_names = st.text(alphabet=st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0-9_"), min_size=1,
                 max_size=8).filter(lambda s: s[0].isalpha())
_words = st.text(alphabet=st.sampled_from("abcxyz0123456789./:@%-_\"'"), min_size=1, max_size=10)


@settings(max_examples=100, deadline=None)
@given(
    entries=st.lists(st.tuples(st.sampled_from(["Image", "Container", "Unit"]), _names,
                               st.lists(_words, min_size=1, max_size=4)), max_size=12),
    data=st.data(),
)
def test_roundtrip_model(entries: list[tuple[str, str, list[str]]], data: st.DataObject) -> None:
    lines: list[str] = []
    expected: dict[tuple[str, str], str] = {}
    for section, key, words in entries:
        if data.draw(st.booleans()):
            lines.append(data.draw(st.sampled_from(["# comment", "; other", "", "   "])))
        lines.append(f"[{section}]")
        pieces = [words[0]]
        for word in words[1:]:
            if data.draw(st.booleans()):
                pieces.append(f"\\\n{data.draw(st.sampled_from(['', '  ', '# inside', '; inside']))}")
                if pieces[-1].endswith("inside"):
                    pieces.append("\n")
                pieces.append(word)
            else:
                pieces.append(" " + word)
        indent = data.draw(st.sampled_from(["", "  ", "\t"]))
        lines.append(f"{indent}{key} = {''.join(pieces)}")
        expected[(section, key)] = " ".join(words)
    unit = parse_unit("\n".join(lines) + "\n")
    for (section, key), value in expected.items():
        assert unit.get(section, key) == value
