"""The Go template subset behind ``--format`` (engine/cli/gotemplate.py); podman's own output is compared in
tests/test_images_podman.py, these are the rules on their own."""

from __future__ import annotations

import pytest

from tether.engine.cli.gotemplate import (
    NilList,
    NilMap,
    TemplateError,
    go_format,
    is_json_format,
    parse_template,
    tabulate,
)

FIELDS = {"ID": "abc", "Names": ["a", "b"], "Labels": {"z": "1", "a": "2"}, "Size": 3, "RO": False,
          "None": NilList(), "NoLabels": NilMap(), "Nested": {"key": "value"}}


@pytest.mark.parametrize(("text", "out"), [
    ("{{.ID}}", "abc"),
    ("{{ .ID }}-{{.Size}}", "abc-3"),
    ("{{.Names}} {{.Labels}} {{.RO}} {{.None}} {{.NoLabels}}", "[a b] map[a:2 z:1] false [] map[]"),
    ("{{json .Names}} {{json .None}} {{json .NoLabels}} {{json .ID}}", '["a","b"] null null "abc"'),
    ("{{upper .ID}} {{lower \"X\"}} {{title \"hello world\"}}", "ABC x Hello World"),
    ("{{join .Names \", \"}}|{{truncate .ID 2}}", "a, b|ab"),
    ("{{.Nested.key}}", "value"),
    ("{{.ID}}\\t{{.Size}}\\n", "abc\t3\n"),
])
def test_render(text: str, out: str) -> None:
    assert parse_template(text).render(FIELDS) == out


@pytest.mark.parametrize(("text", "message"), [
    ("{{.Bogus}}", "can't evaluate field Bogus"),
    ("{{range .Names}}x{{end}}", "'range' is not supported"),
    ("{{.ID | upper}}", "unsupported"),
    ("{{.ID", "unmatched"),
    ("{{upper}}", "takes 1 argument"),
])
def test_what_is_refused_names_itself(text: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        parse_template(text).render(FIELDS)


def test_table_prefix_makes_columns_and_a_heading() -> None:
    template = parse_template("table {{.ID}} {{.Size}}")
    assert template.table
    assert template.heading({"ID": "IMAGE ID"}) == "IMAGE ID\t<no value>"
    assert tabulate([template.heading({"ID": "IMAGE ID", "Size": "SIZE"}), template.render(FIELDS)]) == [
        "IMAGE ID    SIZE", "abc         3"]
    assert tabulate(["a-long-cell-here\tx", "b\ty"]) == ["a-long-cell-here  x", "b                 y"]


@pytest.mark.parametrize(("text", "json"), [("json", True), (" {{ json . }} ", True), ("{{json .}}", True),
                                            ("{{json .ID}}", False), ("table json", False)])
def test_json_formats(text: str, json: bool) -> None:
    assert is_json_format(text) is json


def test_go_format_of_nothing() -> None:
    assert go_format(None) == "<nil>" and go_format(True) == "true" and go_format([]) == "[]"
