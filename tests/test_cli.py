"""The CLI skeleton: help, version, option spelling, and one-line errors."""

from __future__ import annotations

import argparse
import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from tether import __version__
from tether.engine.arguments import add_common_options, parse_bool
from tether.engine.cli.main import dispatch, main
from tether.engine.cli.parser import VERBS, build_parser
from tether.engine.errors import UsageError
from tether.engine.options import CommonOptions, common_options_from_args


def run_tether(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tether", *args], capture_output=True, text=True, timeout=60)


def test_version_and_help_from_the_console_entry_point() -> None:
    version = run_tether("--version")
    assert version.returncode == 0
    assert version.stdout.strip() == f"tether {__version__}"
    helped = run_tether("--help")
    assert helped.returncode == 0
    assert "usage: tether" in helped.stdout


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: tether" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "value"), [("true", True), ("1", True), ("FALSE", False), ("off", False)])
def test_bool_values_parse_as_go_does(text: str, value: bool) -> None:
    assert parse_bool(text) is value


def test_bad_bool_is_refused() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="maybe"):
        parse_bool("maybe")


def parse_common(*argv: str, environ: dict[str, str] | None = None) -> CommonOptions:
    parser = argparse.ArgumentParser()
    add_common_options(parser)
    return common_options_from_args(parser.parse_args(list(argv)), environ=environ or {})


def test_common_options_are_spelled_as_podman_spells_them(tmp_path: Path) -> None:
    options = parse_common("--root", str(tmp_path), "--storage-driver", "vfs", "--tls-verify=false",
                           "--authfile", "/a.json", "--registries-conf", "/r.conf", "--cert-dir", "/certs",
                           "--signature-policy", "/p.json", "--platform", "linux/arm64/v8", "--format", "json",
                           "--log-level", "debug")
    assert options.root == tmp_path
    assert options.storage_driver == "vfs"
    assert options.tls_verify is False
    assert options.authfile == Path("/a.json")
    assert options.registries_conf == Path("/r.conf")
    assert options.cert_dir == Path("/certs")
    assert options.policy_path() == Path("/p.json")
    assert options.platform == "linux/arm64/v8"
    assert (options.format, options.log_level) == ("json", "debug")


@pytest.mark.system_defaults
def test_defaults_point_at_the_bootc_store_and_system_policy() -> None:
    options = parse_common()
    assert options.root == Path("/usr/lib/bootc/storage")
    assert options.tls_verify is None
    assert options.policy_path() == Path("/etc/containers/policy.json")


def test_registry_auth_file_env_wins_over_bootc_lookup_but_not_over_the_flag() -> None:
    assert parse_common(environ={"REGISTRY_AUTH_FILE": "/env.json"}).auth_file_path() == Path("/env.json")
    flagged = parse_common("--authfile", "/flag.json", environ={"REGISTRY_AUTH_FILE": "/env.json"})
    assert flagged.auth_file_path() == Path("/flag.json")


def test_malformed_platform_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--platform 'linux'"):
        parse_common("--platform", "linux")


def test_parser_builds_with_every_registered_command() -> None:
    parser = build_parser()
    assert parser.prog == "tether"


def _verbs(parser: argparse.ArgumentParser) -> set[str]:
    """The verbs the commands under ``parser`` set (argparse keeps its subparsers in a private action type)."""
    found = {verb} if (verb := parser.get_default("verb")) else set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _verbs(sub)
    return found


def test_every_verb_the_parser_sets_is_dispatched() -> None:
    assert _verbs(build_parser()) == set(VERBS)
    cases = {node.pattern.value.value for node in ast.walk(ast.parse(inspect.getsource(dispatch)))
             if isinstance(node, ast.match_case) and isinstance(node.pattern, ast.MatchValue)
             and isinstance(node.pattern.value, ast.Constant)}
    assert cases == set(VERBS)


@pytest.mark.parametrize("group", ["bound", "mirror"])
def test_a_group_without_its_subcommand_prints_its_help_and_fails(
    group: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([group]) == 2
    assert f"usage: tether {group}" in capsys.readouterr().err
