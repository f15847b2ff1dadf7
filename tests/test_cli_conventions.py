"""Issue 15 items 6-8: what a podman or skopeo user types works as they expect.

Global options before the verb, no abbreviations, a verb's own usage on a bad option, podman's log levels, a bare
``--tls-verify``, ``--root`` the store for every command (``--deployment-root`` for a deployment's tree), Go
durations; a broken registries.conf reported once with its line, short-name errors naming the files read, and
``mirror sync --help`` saying when digests change.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pytest

from tests.harness import images as factory
from tests.harness.cli import StoreArgs, tether
from tests.harness.registry import RunningRegistry
from tether.engine.arguments import LOG_LEVELS, parse_duration
from tether.engine.cli.main import main
from tether.engine.cli.parser import build_parser
from tether.engine.copy.clients import auth_with_credentials
from tether.engine.options import common_options_from_args, parse_creds, platform_from_args
from tether.registry.auth import AuthEntry, AuthFile, AuthFiles, Credentials, lookup_credentials


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


# --------------------------------------------------------------------------- item 7


def test_global_options_go_before_the_verb_or_after_it() -> None:
    before = parse("--root", "/s", "--runroot", "/r", "--storage-driver", "vfs", "--log-level", "debug",
                   "--registries-conf", "/c", "pull", "quay.io/a:1")
    after = parse("pull", "--root", "/s", "--runroot", "/r", "--storage-driver", "vfs", "--log-level", "debug",
                  "--registries-conf", "/c", "quay.io/a:1")
    for args in (before, after):
        assert (args.root, args.runroot, args.storage_driver) == (Path("/s"), Path("/r"), "vfs")
        assert (args.log_level, args.registries_conf) == ("debug", Path("/c"))
    # a verb's default never overwrites what was given before it
    assert parse("--root", "/s", "images").root == Path("/s")
    assert parse("--root", "/s", "bound", "status", "--deployment-root", "/d").root == Path("/s")
    assert parse("images").root is None and parse("images").log_level == "warning"


def test_global_root_before_the_verb_reaches_the_store(tmp_path: Path) -> None:
    done = tether("--root", str(tmp_path / "s"), "check")
    assert done.returncode == 1 and f"no containers-storage store at {tmp_path / 's'}" in done.stderr


@pytest.mark.parametrize(("argv", "bad"), [
    (["mirror", "sync", "--dest", "oci:/x", "--to", "oci:/y", "a"], "--dest"),  # not --dest-tls-verify
    (["pull", "--tls", "quay.io/a:1"], "--tls"),                                   # not --tls-verify
    (["images", "--dig"], "--dig"),                                                # not --digests
    (["bound", "sync", "--deployment", "/d"], "--deployment"),                     # not --deployment-root
])
def test_no_option_is_abbreviated(argv: list[str], bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(*argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"unrecognized arguments: {bad}" in err


def test_a_bad_option_prints_the_verbs_own_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("pull", "--bogus", "quay.io/a:1")
    err = capsys.readouterr().err
    assert err.startswith("usage: tether pull ") and "tether pull: error: unrecognized arguments: --bogus" in err
    with pytest.raises(SystemExit):
        parse("bound", "gc", "--bogus")
    assert "usage: tether bound gc " in capsys.readouterr().err


@pytest.mark.parametrize("level", ["trace", "debug", "info", "warn", "warning", "error", "fatal", "panic"])
def test_podmans_log_levels(level: str, tmp_path: Path) -> None:
    assert parse("--log-level", level, "images").log_level == level
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    try:
        root.handlers.clear()
        assert main(["--log-level", level, "images", "--root", str(tmp_path / "none")]) == 0
        assert root.level == LOG_LEVELS[level]
    finally:
        root.handlers[:] = saved[1]
        root.setLevel(saved[0])


def test_tls_verify_alone_means_true_and_its_value_needs_an_equals_sign() -> None:
    assert parse("pull", "--tls-verify", "quay.io/a:1").tls_verify is True
    assert parse("pull", "--tls-verify=false", "quay.io/a:1").tls_verify is False
    assert parse("pull", "quay.io/a:1").tls_verify is None
    # as Go's bool flags: "false" after a bare flag is an argument, not its value
    args = parse("pull", "--tls-verify", "false", "quay.io/a:1")
    assert (args.tls_verify, args.images) == (True, ["false", "quay.io/a:1"])
    sync = parse("mirror", "sync", "--to", "docker://h", "--dest-tls-verify", "a")
    assert sync.dest_tls_verify is True
    assert parse("pull", "--", "--tls-verify").images == ["--tls-verify"]


# --------------------------------------------------------------------------- item 8


def test_root_is_the_store_for_every_command() -> None:
    assert parse("pull", "--root", "/s", "a").root == Path("/s")
    for verb in ("sync", "status", "gc"):
        args = parse("bound", verb, "--deployment-root", "/d1", "--deployment-root", "/d2", "--root", "/s")
        assert (args.root, args.deployment_roots) == (Path("/s"), [Path("/d1"), Path("/d2")])
    install = parse("bound", "install", "--deployment-root", "/src", "--root", "/target")
    assert (install.deployment_root, install.root) == (Path("/src"), Path("/target"))
    assert parse("bound", "install", "--deployment-root", "/src", "--target-store", "/t").root == Path("/t")
    assert parse("bound", "list", "--deployment-root", "/d").deployment_root == Path("/d")
    assert parse("mirror", "sync", "--deployment-root", "/d", "--to", "oci:/m").deployment_root == Path("/d")


def test_the_old_store_option_still_works_and_says_it_is_deprecated(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse("bound", "status", "--deployment-root", "/d", "--store", "/s").root == Path("/s")
    assert "--store is deprecated: use --root" in capsys.readouterr().err


@pytest.mark.parametrize("verb", [["bound", "list"], ["mirror", "sync", "--to", "oci:/m"]])
def test_root_for_a_deployment_is_refused_with_the_new_name(verb: list[str], capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    with pytest.raises(SystemExit):
        parse(*verb, "--root", "/d")
    assert "a deployment's root is --deployment-root DIR" in capsys.readouterr().err


# --------------------------------------------------------------------------- item 9 (parsing)


@pytest.mark.parametrize(("text", "seconds"), [("0", 0.0), ("500ms", 0.5), ("2s", 2.0), ("1m30s", 90.0),
                                               ("1.5h", 5400.0), ("10us", 1e-5), ("+3s", 3.0)])
def test_retry_delay_is_a_go_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    assert parse("pull", "--retry-delay", text, "a").retry_delay == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["1", "s", "-1s", "1x", "1s2", ""])
def test_a_bad_duration_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)


def test_arch_os_variant_complete_the_hosts_platform() -> None:
    def platform(*argv: str) -> str | None:
        return platform_from_args(parse("pull", *argv, "a"))

    assert platform("--arch", "arm64") == "linux/arm64"
    assert platform("--arch", "arm", "--variant", "v7") == "linux/arm/v7"
    assert platform("--os", "freebsd", "--arch", "amd64") == "freebsd/amd64"
    assert platform("--platform", "linux/s390x") == "linux/s390x"
    assert platform() is None


def test_creds_are_parsed_never_shown_and_scoped_to_the_named_repositories() -> None:
    creds = parse_creds("me:s3cret:x")
    assert (creds.username, creds.password) == ("me", "s3cret:x")
    assert "s3cret" not in repr(creds)
    options = common_options_from_args(parse("pull", "--creds", "me:s3cret", "a"), environ={})
    assert "s3cret" not in repr(options)
    assert parse_creds("me", ask=lambda prompt: "typed").password == "typed"
    file_creds = Credentials("file", "filepw")
    auth = AuthFile(auths=(AuthEntry("quay.io", file_creds), AuthEntry("quay.io/org/app", file_creds)),
                    cred_helpers={"quay.io": "nonexistent-helper"})
    scoped = auth_with_credentials(AuthFiles(files=(auth,)), creds, ["quay.io/org/app"])
    assert lookup_credentials(scoped, "quay.io/org/app") == creds
    # a mirror (another repository, another host) keeps the file's credentials, or none
    assert lookup_credentials(scoped, "quay.io/mirror/app") == file_creds
    assert lookup_credentials(scoped, "mirror.example/org/app") is None


# --------------------------------------------------------------------------- item 6


def test_a_bad_registries_conf_fails_the_command_once_naming_file_and_line(
        tmp_path: Path, registry: RunningRegistry) -> None:
    args = StoreArgs.make(tmp_path, registry.host)
    conf = tmp_path / "broken.conf"
    conf.write_text('unqualified-search-registries = ["quay.io"]\n\n[[registry]]\nlocation = "x"\n'
                    'insecure = "yes"\n')
    names = [f"{registry.host}/conf/a:1", f"{registry.host}/conf/b:1", "short:1"]
    done = tether("pull", *args.store, "--registries-conf", str(conf), "--progress", "plain", *names)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if str(conf) in line]
    assert lines == [f"tether: {conf}: registry[0].insecure: expected a boolean, got 'yes' (at line 5)"], \
        done.stderr
    assert "resolving" not in done.stderr  # before any image was tried


def test_a_short_name_without_search_registries_names_the_file_read(tmp_path: Path) -> None:
    args = StoreArgs.make(tmp_path)
    conf = tmp_path / "no-search.conf"
    conf.write_text('short-name-mode = "permissive"\n')
    done = tether("pull", *args.store, "--registries-conf", str(conf), "--progress", "none", "app:1")
    assert done.returncode == 1
    assert "no unqualified-search-registries are defined in" in done.stderr and str(conf) in done.stderr
    assert "no containers-registries.conf(5) was found" not in done.stderr


def test_mirror_sync_help_says_when_digests_are_kept(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("mirror", "sync", "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "every blob and every image manifest is copied byte for byte and keeps its digest" in text
    assert "the index digest differs from the source's" in text
    assert "always for a reference pinned by digest (NAME@sha256:...)" in text


def test_a_digest_reference_keeps_the_index_whole(tmp_path: Path, registry: RunningRegistry) -> None:
    amd = factory.simple_image(1551, architecture="amd64")
    arm = factory.simple_image(1552, architecture="arm64")
    index = factory.build_index([amd, arm])
    factory.push_image(registry.host, "conf/multi:1", index)
    args = StoreArgs.make(tmp_path, registry.host)
    for name, expected in ((f"{registry.host}/conf/multi:1", None),
                           (f"{registry.host}/conf/multi@{index.manifest_digest}", index.manifest_digest)):
        target = tmp_path / f"layout-{expected is None}"
        done = tether("mirror", "sync", "--registries-conf", str(args.registries_conf), "--platform",
                      "linux/amd64", "--to", f"oci:{target}", "--format", "json", name)
        assert done.returncode == 0, done.stderr
        (image,) = json.loads(done.stdout)["images"]
        if expected is None:
            assert image["digest"] != index.manifest_digest  # a filtered index: a new digest
        else:
            assert image["digest"] == expected
