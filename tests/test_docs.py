"""Man pages and bash completion: generated from the parser, checked in, current, and working in man and bash."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tether.engine.cli.docs import differences, render_all, walk
from tether.engine.cli.parser import build_parser

ROOT = Path(__file__).resolve().parents[1]
CONTRIB = ROOT / "contrib"
BASH_COMPLETION = CONTRIB / "completion" / "bash" / "tether"
REGENERATE = "run: python -m tether.engine.cli.docs --write"

# The pages document the system's default paths (/etc/containers/policy.json, ...), which the hermetic fixture
# otherwise relocates into each test's home.
pytestmark = pytest.mark.system_defaults


def test_the_checked_in_files_are_what_the_parser_generates() -> None:
    assert differences(CONTRIB, render_all()) == [], REGENERATE


def test_a_flag_added_without_regenerating_is_caught() -> None:
    parser = build_parser()
    pull = next(c for c in walk(parser) if c.path == ("pull",))
    pull.parser.add_argument("--brand-new-flag", action="store_true", help="a flag nobody regenerated for")
    problems = differences(CONTRIB, render_all(parser))
    assert problems == ["completion/bash/tether: differs from what the parser says",
                        "man/tether-pull.1: differs from what the parser says"]
    assert "brand\\-new\\-flag" in render_all(parser)["man/tether-pull.1"]


def test_a_command_added_without_regenerating_is_caught() -> None:
    parser = build_parser()
    bound = next(c for c in walk(parser) if c.path == ("bound",))
    sub = next(a for a in bound.parser._actions if isinstance(a, argparse._SubParsersAction))
    sub.add_parser("frobnicate", help="a verb without pages")
    problems = differences(CONTRIB, render_all(parser))
    assert "man/tether-bound-frobnicate.1: missing" in problems


def test_the_check_command_exits_1_on_a_stale_tree(tmp_path: Path) -> None:
    shutil.copytree(CONTRIB / "man", tmp_path / "man")
    shutil.copytree(CONTRIB / "completion", tmp_path / "completion")
    check = [sys.executable, "-m", "tether.engine.cli.docs", "--check", str(tmp_path)]
    assert subprocess.run(check, capture_output=True).returncode == 0
    (tmp_path / "man" / "tether-rmi.1").write_text(".TH OLD 1\n")
    (tmp_path / "man" / "tether-gone.1").write_text(".TH GONE 1\n")
    proc = subprocess.run(check, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "man/tether-rmi.1: differs" in proc.stderr and "man/tether-gone.1: not generated any more" in proc.stderr
    subprocess.run([sys.executable, "-m", "tether.engine.cli.docs", "--write", str(tmp_path)], check=True)
    assert subprocess.run(check, capture_output=True).returncode == 0


def complete(*words: str) -> list[str]:
    """What bash offers for the last word, with the generated script sourced (as bash-completion does)."""
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    script = (f"source {BASH_COMPLETION}\n"
              "complete -p tether\n"
              f"COMP_WORDS=({quoted}); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 ))\n"
              "_tether\n"
              'printf "%s\\n" "${COMPREPLY[@]}"\n')
    proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True,
                          cwd=ROOT, check=True)
    registration, *offers = proc.stdout.splitlines()
    assert registration == "complete -F _tether tether"
    assert proc.stderr == ""
    return sorted(o for o in offers if o)


def test_bash_completes_verbs_subverbs_and_flags() -> None:
    verbs = {c.path[0] for c in walk(build_parser()) if c.path}
    assert set(complete("tether", "")) == verbs
    assert complete("tether", "bo") == ["bound"]
    assert complete("tether", "bound", "s") == ["status", "sync"]
    assert complete("tether", "mirror", "") == ["prune", "sync"]
    assert complete("tether", "pull", "--ro") == ["--root"]
    assert complete("tether", "bound", "sync", "--no") == ["--no-gc"]
    # a subcommand's own flags, after options and their values
    assert complete("tether", "bound", "sync", "--sysroot", "/tmp", "--jobs", "4", "--so") == ["--source"]
    assert "--check" not in complete("tether", "bound", "sync", "--")  # bound status's, not sync's


def test_bash_completes_option_values_from_choices_files_and_directories() -> None:
    assert complete("tether", "pull", "--storage-driver", "") == ["overlay", "vfs"]
    assert complete("tether", "pull", "--storage-driver", "=", "v") == ["vfs"]  # bash splits at '='
    assert complete("tether", "bound", "sync", "--progress", "j") == ["json"]
    assert complete("tether", "pull", "--authfile", "pyproject.t") == ["pyproject.toml"]
    assert complete("tether", "bound", "sync", "--sysroot", "contr") == ["contrib"]
    assert complete("tether", "pull", "--jobs", "") == []  # a number: nothing to offer


@pytest.mark.skipif(shutil.which("man") is None, reason="man-db is not installed")
@pytest.mark.parametrize("page", sorted(p.name for p in (CONTRIB / "man").glob("*.1")))
def test_man_renders_each_page_without_warnings(page: str) -> None:
    proc = subprocess.run(["man", "--warnings", "-l", str(CONTRIB / "man" / page)], capture_output=True,
                          text=True, env={**os.environ, "MANWIDTH": "80"}, check=True)
    assert proc.stderr == ""
    text = re.sub(".\x08", "", proc.stdout)  # grotty's overstrike bold and underline, as less shows them
    name = page.removesuffix(".1")
    assert text.splitlines()[0].startswith(name.upper() + "(1)")
    assert re.search(rf"\nNAME\n +{re.escape(name)} +- +\S", text)
    assert all(len(line) <= 80 for line in text.splitlines())
    command = next(c for c in walk(build_parser()) if c.page == name)
    for action in command.options():
        assert action.option_strings[0] in text
