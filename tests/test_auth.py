"""containers-auth.json: bootc's file choice, parsing, key matching, credential helpers, redaction;
and the file ``podman login`` writes, read back."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import stat
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.registry import RunningRegistry, start_registry
from tether.registry.auth import (
    AuthFile,
    AuthPath,
    Credentials,
    auth_paths,
    find_bootc_auth_file,
    load_auth_file,
    load_auth_files,
    lookup_credentials,
    normalize_auth_key,
    podman_auth_paths,
    select_auth_file,
)
from tether.registry.errors import AuthenticationError, ConfigError
from tether.registry.reference import parse_reference


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write_auth(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


# --- file choice ---------------------------------------------------------------------------------------

BOOTC = ["run/ostree/auth.json", "etc/ostree/auth.json", "usr/lib/ostree/auth.json"]


@pytest.mark.parametrize(
    ("present", "expected"),
    [
        ([], None),
        (BOOTC, "run/ostree/auth.json"),
        (BOOTC[1:], "etc/ostree/auth.json"),
        (BOOTC[2:], "usr/lib/ostree/auth.json"),
        ([BOOTC[0], BOOTC[2]], "run/ostree/auth.json"),
        # podman's own files are never a fallback for bootc
        (["root/.config/containers/auth.json", "run/containers/0/auth.json"], None),
    ],
)
def test_find_bootc_auth_file(tmp_path: Path, present: list[str], expected: str | None) -> None:
    for rel in present:
        write_auth(tmp_path / rel, {})
    found = find_bootc_auth_file(sysroot=tmp_path)
    assert found == (tmp_path / expected if expected else None)


def test_select_auth_file(tmp_path: Path) -> None:
    bootc = write_auth(tmp_path / "etc/ostree/auth.json", {})
    explicit = tmp_path / "explicit.json"
    env = {"REGISTRY_AUTH_FILE": str(tmp_path / "env.json")}
    assert select_auth_file(explicit=explicit, environ=env, sysroot=tmp_path) == explicit
    assert select_auth_file(environ=env, sysroot=tmp_path) == tmp_path / "env.json"
    assert select_auth_file(environ={}, sysroot=tmp_path) == bootc
    assert select_auth_file(environ={"REGISTRY_AUTH_FILE": ""}, sysroot=tmp_path / "empty") is None


def test_no_file_means_no_credentials() -> None:
    auth = load_auth_file(None)
    assert auth == AuthFile()
    assert lookup_credentials(auth, "quay.io/a/b") is None


# --- parsing -------------------------------------------------------------------------------------------

BAD_FILES = [
    (b"{not json", "invalid JSON: Expecting property name"),
    (b"[]", "expected a JSON object"),
    (b'{"auths": []}', "auths: expected an object"),
    (b'{"credHelpers": {"quay.io": 1}}', "credHelpers: expected an object of strings"),
    (b"\xff\xfe", "invalid JSON"),
]

BAD_ENTRIES = [
    ('"x"', "auths['quay.io']: expected an object"),
    ('{"auth": "%%%"}', "auths['quay.io'].auth: not valid base64"),
    ('{"auth": 5}', "auths['quay.io'].auth: expected a string"),
    ('{"auth": "", "identitytoken": 1}', "identitytoken: expected a string"),
]


@pytest.mark.parametrize(("raw", "message"), BAD_FILES)
def test_bad_auth_files(tmp_path: Path, raw: bytes, message: str) -> None:
    path = tmp_path / "auth.json"
    path.write_bytes(raw)
    with pytest.raises(ConfigError) as info:
        load_auth_file(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


@pytest.mark.parametrize(("entry", "message"), BAD_ENTRIES)
def test_bad_entry_reported_only_when_its_registry_is_used(tmp_path: Path, entry: str, message: str) -> None:
    # c/image decodes only the entry a lookup selects: a bad quay.io entry must not break other registries
    path = tmp_path / "auth.json"
    path.write_text(f'{{"auths": {{"quay.io": {entry}, "good.io": {{"auth": "{b64("u:p")}"}}}}}}')
    auth = load_auth_file(path)
    assert lookup_credentials(auth, "good.io/app") == Credentials("u", "p")
    assert lookup_credentials(auth, "other.io/app") is None
    with pytest.raises(ConfigError) as info:
        lookup_credentials(auth, "quay.io/org/app")
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_bad_base64_error_does_not_leak_the_value(tmp_path: Path) -> None:
    path = write_auth(tmp_path / "a.json", {"auths": {"quay.io": {"auth": "c2VjcmV0LXBhc3N3b3Jk!"}}})
    auth = load_auth_file(path)
    with pytest.raises(ConfigError) as info:
        lookup_credentials(auth, "quay.io/a")
    assert "c2VjcmV0" not in str(info.value)
    assert "c2VjcmV0" not in repr(auth)


# --- podman's lookup ------------------------------------------------------------------------------------


def test_podman_auth_paths_order(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    env = {"XDG_RUNTIME_DIR": str(run), "HOME": str(tmp_path / "home")}
    assert podman_auth_paths(environ=env) == (
        AuthPath(run / "containers/auth.json"),
        AuthPath(tmp_path / "home/.config/containers/auth.json"),
        AuthPath(tmp_path / "home/.docker/config.json"),
        AuthPath(tmp_path / "home/.dockercfg", legacy=True),
    )
    env2 = {**env, "XDG_CONFIG_HOME": str(tmp_path / "cfg"), "DOCKER_CONFIG": str(tmp_path / "dc")}
    assert [p.path for p in podman_auth_paths(environ=env2)][1:3] == [
        tmp_path / "cfg/containers/auth.json", tmp_path / "dc/config.json"]
    # no XDG_RUNTIME_DIR: /run/containers/$UID (what podman login writes as root); a missing one is skipped
    assert podman_auth_paths(environ={}, uid=0) == (AuthPath(Path("/run/containers/0/auth.json")),)
    assert podman_auth_paths(environ={"XDG_RUNTIME_DIR": str(tmp_path / "nope")}) == ()
    # --authfile and REGISTRY_AUTH_FILE end the list (c/image: a user-specified path)
    assert podman_auth_paths(explicit=tmp_path / "x.json", environ=env) == (AuthPath(tmp_path / "x.json"),)
    assert podman_auth_paths(environ={**env, "REGISTRY_AUTH_FILE": "/e.json"}) == (AuthPath(Path("/e.json")),)
    # bootc's lookup never reads podman's files
    assert auth_paths("bootc", environ=env, sysroot=tmp_path) == ()


def test_podman_lookup_first_file_with_credentials_wins(tmp_path: Path) -> None:
    run = tmp_path / "run"
    home = tmp_path / "home"
    write_auth(run / "containers/auth.json", {"auths": {"a.io": {"auth": b64("run:1")}, "b.io": {}}})
    write_auth(home / ".docker/config.json", {"auths": {"b.io": {"auth": b64("docker:2")},
                                                        "a.io": {"auth": b64("docker:x")}}})
    write_auth(home / ".dockercfg", {"https://c.io/v1/": {"auth": b64("legacy:3"), "email": "x@y"}})
    paths = podman_auth_paths(environ={"XDG_RUNTIME_DIR": str(run), "HOME": str(home)})
    files = load_auth_files(paths)
    assert [f.path for f in files.files] == [run / "containers/auth.json", home / ".docker/config.json",
                                             home / ".dockercfg"]
    assert lookup_credentials(files, "a.io/app") == Credentials("run", "1")
    assert lookup_credentials(files, "b.io/app") == Credentials("docker", "2")  # {} in the first: next file
    assert lookup_credentials(files, "c.io/app") == Credentials("legacy", "3")
    assert lookup_credentials(files, "d.io/app") is None
    described = files.describe()
    assert str(run / "containers/auth.json") in described
    assert f"{home / '.config/containers/auth.json'} (missing)" in described


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'nope.json'}: auth file does not exist")):
        load_auth_file(tmp_path / "nope.json")


def test_empty_object_and_empty_entries(tmp_path: Path) -> None:
    assert load_auth_file(write_auth(tmp_path / "a.json", {})).auths == ()
    auth = load_auth_file(write_auth(tmp_path / "b.json", {"auths": {"quay.io": {}, "x.io": {"auth": b64("nocolon")}}}))
    assert lookup_credentials(auth, "quay.io/a") is None
    assert lookup_credentials(auth, "x.io/a") is None


# --- key matching --------------------------------------------------------------------------------------

MATCH_FILE = {
    "auths": {
        "quay.io": {"auth": b64("host:pw")},
        "quay.io/ns": {"auth": b64("ns:pw")},
        "quay.io/ns/repo": {"auth": b64("repo:pw")},
        "quay.io/deep/a/b": {"auth": b64("deep:pw")},
        "https://index.docker.io/v1/": {"auth": b64("hub:pw")},
        "http://legacy.example.com/v2/": {"auth": b64("legacy:pw")},
        "localhost:5000": {"auth": b64("local:pw\x00\x00")},
        "localhost:5000/private": {"auth": b64("private:pa:ss")},
        "token.example.com": {"auth": b64("00000000-0000-0000-0000-000000000000:"), "identitytoken": "refresh"},
        "tokenonly.example.com": {"auth": "", "identitytoken": "refresh2"},
        "ghcr.io/org": {"auth": b64("org:pw")},
    }
}

MATCH_CASES = [
    ("quay.io/ns/repo", "repo"),
    ("quay.io/ns/other", "ns"),
    ("quay.io/nsx/other", "host"),
    ("quay.io/other", "host"),
    ("quay.io/deep/a/b/c", "deep"),
    ("quay.io/deep/a/c", "host"),
    ("docker.io/library/alpine", "hub"),
    ("legacy.example.com/app", "legacy"),
    ("localhost:5000/app", "local"),
    ("localhost:5000/private/x", "private"),
    ("ghcr.io/org/app", "org"),
    ("ghcr.io/other/app", None),
    ("localhost/app", None),
    ("quay.io.evil.com/ns/repo", None),
]


@pytest.mark.parametrize(("name", "user"), MATCH_CASES)
def test_key_matching(tmp_path: Path, name: str, user: str | None) -> None:
    auth = load_auth_file(write_auth(tmp_path / "auth.json", MATCH_FILE))
    creds = lookup_credentials(auth, name)
    assert (creds.username if creds else None) == user


def test_password_details_and_identity_tokens(tmp_path: Path) -> None:
    auth = load_auth_file(write_auth(tmp_path / "auth.json", MATCH_FILE))
    assert lookup_credentials(auth, "localhost:5000/app") == Credentials("local", "pw")  # NULs trimmed
    assert lookup_credentials(auth, "localhost:5000/private/x") == Credentials("private", "pa:ss")
    assert lookup_credentials(auth, "token.example.com/a") == Credentials(
        "00000000-0000-0000-0000-000000000000", "", "refresh"
    )
    assert lookup_credentials(auth, "tokenonly.example.com/a") == Credentials(identity_token="refresh2")


@pytest.mark.parametrize(
    "key",
    ["docker.io", "index.docker.io", "registry-1.docker.io", "https://index.docker.io/v1/", "http://docker.io/"],
)
def test_docker_hub_spellings(tmp_path: Path, key: str) -> None:
    auth = load_auth_file(write_auth(tmp_path / "auth.json", {"auths": {key: {"auth": b64("hub:pw")}}}))
    assert lookup_credentials(auth, parse_reference("docker.io/library/alpine:3")) == Credentials("hub", "pw")
    assert lookup_credentials(auth, "quay.io/library/alpine") is None


@pytest.mark.parametrize(
    ("key", "normalized"),
    [
        ("https://index.docker.io/v1/", "index.docker.io"),
        ("docker.io", "index.docker.io"),
        ("https://quay.io/v2/", "quay.io"),
        ("http://localhost:5000", "localhost:5000"),
        ("quay.io/ns", "quay.io/ns"),  # no scheme: kept as is
    ],
)
def test_normalize_auth_key(key: str, normalized: str) -> None:
    assert normalize_auth_key(key) == normalized


def test_exact_keys_win_over_normalised_ones(tmp_path: Path) -> None:
    data = {"auths": {"https://quay.io/v1/": {"auth": b64("url:pw")}, "quay.io": {"auth": b64("exact:pw")}}}
    auth = load_auth_file(write_auth(tmp_path / "auth.json", data))
    assert lookup_credentials(auth, "quay.io/a") == Credentials("exact", "pw")


@pytest.mark.parametrize("key", ["https://quay.io/a", "quay.io/a@sha256:00", "quay.io/a:tag"])
def test_invalid_lookup_keys(key: str) -> None:
    with pytest.raises(ValueError):
        lookup_credentials(AuthFile(), key)


def test_credentials_never_show_secrets() -> None:
    creds = Credentials("alice", "hunter2", "tok-secret")
    for text in (repr(creds), str(creds), f"{creds}", repr(AuthFile(None, ()))):
        assert "hunter2" not in text
        assert "tok-secret" not in text
    assert "alice" in repr(creds)
    assert "<redacted>" in repr(creds)


# --- credential helpers --------------------------------------------------------------------------------

HELPER = textwrap.dedent(
    """\
    #!/bin/sh
    read -r host
    echo "$host" >> "$HELPER_LOG"
    case "$host" in
      helper.io) echo '{"ServerURL": "helper.io", "Username": "hu", "Secret": "hs"}' ;;
      token.io) echo '{"ServerURL": "token.io", "Username": "<token>", "Secret": "idtok"}' ;;
      missing.io) echo 'credentials not found in native keychain'; exit 1 ;;
      garbage.io) echo 'not json' ;;
      *) echo "leaked-secret-in-output"; exit 3 ;;
    esac
    """
)


@pytest.fixture
def helper_env(tmp_path: Path) -> dict[str, str]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "docker-credential-fake"
    script.write_text(HELPER)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return {"PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}", "HELPER_LOG": str(tmp_path / "log")}


def helper_calls(env: dict[str, str]) -> list[str]:
    log = Path(env["HELPER_LOG"])
    return log.read_text().split() if log.exists() else []


def test_cred_helpers_in_auth_file(tmp_path: Path, helper_env: dict[str, str]) -> None:
    data = {
        "auths": {"helper.io": {"auth": b64("file:pw")}, "other.io": {"auth": b64("o:pw")}},
        "credHelpers": {h: "fake" for h in ("helper.io", "token.io", "missing.io", "garbage.io", "broken.io")},
    }
    auth = load_auth_file(write_auth(tmp_path / "auth.json", data))
    # the helper has precedence over an auths entry for the same registry, and gets the host only
    assert lookup_credentials(auth, "helper.io/ns/app", environ=helper_env) == Credentials("hu", "hs")
    assert lookup_credentials(auth, "token.io/app", environ=helper_env) == Credentials(identity_token="idtok")
    assert lookup_credentials(auth, "missing.io/app", environ=helper_env) is None
    assert lookup_credentials(auth, "other.io/app", environ=helper_env) == Credentials("o", "pw")
    with pytest.raises(AuthenticationError, match="output is not JSON"):
        lookup_credentials(auth, "garbage.io/app", environ=helper_env)
    with pytest.raises(AuthenticationError, match="exited with status 3") as info:
        lookup_credentials(auth, "broken.io/app", environ=helper_env)
    assert "leaked-secret" not in str(info.value)
    assert helper_calls(helper_env) == ["helper.io", "token.io", "missing.io", "garbage.io", "broken.io"]


def test_global_credential_helpers(tmp_path: Path, helper_env: dict[str, str]) -> None:
    auth = load_auth_file(write_auth(tmp_path / "auth.json", {"auths": {"file.io": {"auth": b64("f:pw")}}}))
    helpers = ("fake", "containers-auth.json")
    assert lookup_credentials(auth, "helper.io/a", helpers=helpers, environ=helper_env) == Credentials("hu", "hs")
    # the fake helper fails for file.io, but the auth file (next) has credentials: that wins
    assert lookup_credentials(auth, "file.io/a", helpers=helpers, environ=helper_env) == Credentials("f", "pw")
    # nothing found and a failure: the failure is reported
    with pytest.raises(AuthenticationError, match=re.escape("looking up credentials for nothing.io/a")):
        lookup_credentials(auth, "nothing.io/a", helpers=helpers, environ=helper_env)
    assert lookup_credentials(auth, "missing.io/a", helpers=helpers, environ=helper_env) is None
    with pytest.raises(AuthenticationError, match=re.escape("docker-credential-absent for file.io: not found")):
        lookup_credentials(auth, "file.io/a", helpers=("absent",), environ=helper_env)


# --- against podman login --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def htpasswd_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRegistry]:
    running = start_registry(tmp_path_factory.mktemp("authreg"), htpasswd={"alice": "s3cret:pass", "bob": "b0b"})
    try:
        yield running
    finally:
        running.stop()


@pytest.mark.skipif(shutil.which("podman") is None, reason="podman not installed")
def test_reads_what_podman_login_writes(tmp_path: Path, htpasswd_registry: RunningRegistry) -> None:
    authfile = tmp_path / "auth.json"
    host = htpasswd_registry.host

    def login(target: str, user: str, password: str) -> None:
        proc = subprocess.run(
            [
                "podman",
                "login",
                "--authfile",
                str(authfile),
                "--tls-verify=false",
                "-u",
                user,
                "--password-stdin",
                target,
            ],
            input=password,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "REGISTRY_AUTH_FILE": ""},
        )
        assert proc.returncode == 0, proc.stderr

    login(host, "alice", "s3cret:pass")
    login(f"{host}/team", "bob", "b0b")
    auth = load_auth_file(authfile)
    assert lookup_credentials(auth, f"{host}/app") == Credentials("alice", "s3cret:pass")
    assert lookup_credentials(auth, f"{host}/team/app") == Credentials("bob", "b0b")
    assert lookup_credentials(auth, f"{host}/teamx/app") == Credentials("alice", "s3cret:pass")
    # and podman agrees about which entry serves which repository
    for repo, user in (("app", "alice"), ("team/app", "bob")):
        proc = subprocess.run(
            ["podman", "login", "--authfile", str(authfile), "--get-login", f"{host}/{repo}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode != 0 and "unknown flag" in proc.stderr:  # pragma: no cover - older podman
            pytest.skip("podman login --get-login unsupported")
        assert proc.stdout.strip() == user, proc.stderr
