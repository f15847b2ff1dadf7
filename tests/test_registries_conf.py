"""registries.conf v2/v1 loading, drop-in merging, prefix matching, pull sources and short names, as
containers/image's pkg/sysregistriesv2 and pkg/shortnames define them; a few cases checked against podman."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.harness.images import push_image, simple_image
from tests.harness.podman import Podman, podman_for
from tests.harness.registry import RunningRegistry
from tether.registry.errors import BlockedRegistryError, ConfigError, ShortNameError
from tether.registry.reference import Reference, parse_reference
from tether.registry.registries_conf import (
    Alias,
    Mirror,
    PullSource,
    RegistriesConf,
    RegistryEntry,
    load_registries_conf,
    pull_sources,
    ref_matching_prefix,
    resolve_short_name,
    resolve_short_name_detailed,
)
from tether.registry.registries_conf.loading import key_line

# these tests are of the default system paths, each with an explicit root
pytestmark = pytest.mark.system_defaults

D = "sha256:" + "ab" * 32


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def load(root: Path, **kwargs: object) -> RegistriesConf:
    return load_registries_conf(root=root, environ={}, **kwargs)  # type: ignore[arg-type]


def conf_from(tmp_path: Path, text: str) -> RegistriesConf:
    write(tmp_path, "etc/containers/registries.conf", text)
    return load(tmp_path)


# --- prefix matching ----------------------------------------------------------------------------------

MATCHING = [
    # (ref, prefix, expected length)
    ("example.com", "example.com", 11),
    ("example.com/foo", "example.com", 11),
    ("example.com:5000/foo", "example.com", 11),  # c/image quirk, kept for parity
    ("example.com@" + D, "example.com", 11),
    ("example.comfoo/bar", "example.com", -1),
    ("example.co", "example.com", -1),
    ("example.com/foobar", "example.com/foo", -1),
    ("example.com/foo/bar:1", "example.com/foo", 15),
    ("a.example.com/x", "*.example.com", 13),
    ("a.b.example.com", "*.example.com", 15),
    ("a.b.example.com:5000/x", "*.example.com", 15),
    ("example.com/x", "*.example.com", -1),
    ("a.example.community/x", "*.example.com", -1),
    ("evil.com/a.example.com", "*.example.com", -1),
]


@pytest.mark.parametrize(("ref", "prefix", "expected"), MATCHING)
def test_ref_matching_prefix(ref: str, prefix: str, expected: int) -> None:
    assert ref_matching_prefix(ref, prefix) == expected


FIND_CONF = """
[[registry]]
location = "example.com"
[[registry]]
prefix = "example.com/foo"
location = "mirror.local/foo"
[[registry]]
prefix = "example.com/foo/bar"
location = "other.local/bar"
[[registry]]
prefix = "*.example.org"
[[registry]]
prefix = "*.sub.example.org"
location = "sub.local"
[[registry]]
location = "localhost:5000"
"""

FIND_CASES = [
    ("example.com/x", "example.com"),
    ("example.com/foo", "example.com/foo"),
    ("example.com/foo/x", "example.com/foo"),
    ("example.com/foo/bar/x", "example.com/foo/bar"),
    ("example.com/foobar", "example.com"),
    ("a.example.org/x", "*.example.org"),
    ("a.sub.example.org/x", "*.sub.example.org"),
    ("sub.example.org/x", "*.example.org"),
    ("example.org/x", None),
    ("localhost:5000/x", "localhost:5000"),
    ("localhost/x", None),
    ("quay.io/x", None),
]


@pytest.mark.parametrize(("name", "prefix"), FIND_CASES)
def test_find_registry_longest_prefix(tmp_path: Path, name: str, prefix: str | None) -> None:
    conf = conf_from(tmp_path, FIND_CONF)
    found = conf.find_registry(name)
    assert (found.prefix if found else None) == prefix


# --- pull sources --------------------------------------------------------------------------------------

MIRRORS_CONF = """
[[registry]]
prefix = "example.com/app"
location = "primary.local/team/app"
[[registry.mirror]]
location = "mirror-all.local/app"
[[registry.mirror]]
location = "mirror-digest.local/app"
pull-from-mirror = "digest-only"
insecure = true
[[registry.mirror]]
location = "mirror-tag.local/app"
pull-from-mirror = "tag-only"

[[registry]]
location = "digestonly.com"
mirror-by-digest-only = true
[[registry.mirror]]
location = "m1.local"
[[registry.mirror]]
location = "m2.local/"

[[registry]]
prefix = "*.wild.com"
insecure = true
[[registry.mirror]]
location = "wildmirror.local/cache"

[[registry]]
prefix = "*.moved.com"
location = "newhome.local"

[[registry]]
location = "blocked.com"
blocked = true

[[registry]]
prefix = "blocked-with-mirror.com"
location = "blocked-with-mirror.com"
blocked = true
[[registry.mirror]]
location = "goodmirror.local"

[[registry]]
prefix = "quay.io/org"
location = "quay.io/org"
[[registry.mirror]]
location = "blockedmirror.com/org"

[[registry]]
location = "blockedmirror.com"
blocked = true

[[registry]]
prefix = "docker.io"
location = "docker.io"
[[registry.mirror]]
location = "hubcache.local:5000"
"""


def S(ref: str, *, insecure: bool = False, mirror: bool = True) -> PullSource:
    return PullSource(parse_reference(ref), insecure, mirror)


PULL_CASES: list[tuple[str, list[PullSource]]] = [
    # no [[registry]] matches: the reference itself
    ("quay.io/other/x:1", [S("quay.io/other/x:1", mirror=False)]),
    # tag pull: "all" and "tag-only" mirrors, then the rewritten primary
    (
        "example.com/app:1",
        [
            S("mirror-all.local/app:1"),
            S("mirror-tag.local/app:1"),
            S("primary.local/team/app:1", mirror=False),
        ],
    ),
    (
        "example.com/app/sub:1",
        [
            S("mirror-all.local/app/sub:1"),
            S("mirror-tag.local/app/sub:1"),
            S("primary.local/team/app/sub:1", mirror=False),
        ],
    ),
    # digest pull: "all" and "digest-only" (with its own insecure)
    (
        f"example.com/app@{D}",
        [
            S(f"mirror-all.local/app@{D}"),
            S(f"mirror-digest.local/app@{D}", insecure=True),
            S(f"primary.local/team/app@{D}", mirror=False),
        ],
    ),
    # mirror-by-digest-only: no mirrors for tags, all of them for digests; trailing "/" trimmed
    ("digestonly.com/a:1", [S("digestonly.com/a:1", mirror=False)]),
    (
        f"digestonly.com/a@{D}",
        [S(f"m1.local/a@{D}"), S(f"m2.local/a@{D}"), S(f"digestonly.com/a@{D}", mirror=False)],
    ),
    # wildcard prefix without location: the reference is kept, mirrors get the rest after the match
    (
        "a.b.wild.com/x/y:2",
        [S("wildmirror.local/cache/x/y:2"), S("a.b.wild.com/x/y:2", insecure=True, mirror=False)],
    ),
    ("a.moved.com/x:1", [S("newhome.local/x:1", mirror=False)]),
    # a blocked primary with a mirror: the mirror is still used (c/image checks each endpoint)
    ("blocked-with-mirror.com/a:1", [S("goodmirror.local/a:1")]),
    # a mirror under a blocked registry is skipped
    ("quay.io/org/a:1", [S("quay.io/org/a:1", mirror=False)]),
    # docker.io: names are normalised before matching
    (
        "docker.io/library/alpine:3",
        [S("hubcache.local:5000/library/alpine:3"), S("docker.io/library/alpine:3", mirror=False)],
    ),
]


@pytest.mark.parametrize(("ref", "expected"), PULL_CASES, ids=[c[0][:40] for c in PULL_CASES])
def test_pull_sources(tmp_path: Path, ref: str, expected: list[PullSource]) -> None:
    conf = conf_from(tmp_path, MIRRORS_CONF)
    assert list(pull_sources(conf, parse_reference(ref))) == expected


def test_blocked_registry_names_the_file(tmp_path: Path) -> None:
    write(tmp_path, "etc/containers/registries.conf", "")
    dropin = write(tmp_path, "etc/containers/registries.conf.d/50-block.conf", MIRRORS_CONF)
    conf = load(tmp_path)
    with pytest.raises(BlockedRegistryError, match=re.escape(f"registry blocked.com is blocked in {dropin}")):
        pull_sources(conf, parse_reference("blocked.com/a/b:1"))


def test_rewrite_to_invalid_reference_is_a_config_error(tmp_path: Path) -> None:
    # ParseNamed requires the rewritten name to be canonical: "docker.io/x" is not.
    conf = conf_from(tmp_path, '[[registry]]\nprefix = "example.com/x"\nlocation = "docker.io"\n')
    with pytest.raises(ConfigError, match=re.escape("invalid reference 'docker.io/x:1'")):
        pull_sources(conf, parse_reference("example.com/x/x:1"))
    conf = conf_from(tmp_path, '[[registry]]\nprefix = "example.com"\nlocation = "UPPER.com/Bad"\n')
    with pytest.raises(ConfigError, match=re.escape("registries.conf")):
        pull_sources(conf, parse_reference("example.com/x:1"))


# --- file selection, drop-ins and merging ----------------------------------------------------------------


def test_missing_default_file_is_empty(tmp_path: Path) -> None:
    conf = load(tmp_path)
    assert conf.registries == ()
    assert conf.unqualified_search_registries == ()
    assert conf.short_name_mode == "permissive"
    assert conf.credential_helpers == ("containers-auth.json",)
    assert conf.sources == ()


def test_explicit_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path / "nope.conf"))):
        load(tmp_path, path=tmp_path / "nope.conf")
    with pytest.raises(ConfigError, match=re.escape("nope2.conf")):
        load_registries_conf(environ={"CONTAINERS_REGISTRIES_CONF": str(tmp_path / "nope2.conf")}, root=tmp_path)


def test_file_selection_order(tmp_path: Path) -> None:
    system = write(tmp_path, "etc/containers/registries.conf", 'unqualified-search-registries = ["system.io"]\n')
    env = write(tmp_path, "env.conf", 'unqualified-search-registries = ["env.io"]\n')
    arg = write(tmp_path, "arg.conf", 'unqualified-search-registries = ["arg.io"]\n')
    assert load(tmp_path).sources == (system,)
    by_env = load_registries_conf(root=tmp_path, environ={"CONTAINERS_REGISTRIES_CONF": str(env)})
    assert by_env.unqualified_search_registries == ("env.io",)
    by_arg = load_registries_conf(path=arg, root=tmp_path, environ={"CONTAINERS_REGISTRIES_CONF": str(env)})
    assert by_arg.unqualified_search_registries == ("arg.io",)
    assert by_arg.unqualified_search_registries_origin == arg


def test_explicit_file_still_reads_system_drop_ins(tmp_path: Path) -> None:
    # newConfigWrapperWithHomeDir: SystemRegistriesConfPath does not change the drop-in directory.
    arg = write(tmp_path, "arg.conf", 'unqualified-search-registries = ["arg.io"]\n')
    dropin = write(tmp_path, "etc/containers/registries.conf.d/10.conf", 'short-name-mode = "enforcing"\n')
    conf = load(tmp_path, path=arg)
    assert conf.sources == (arg, dropin)
    assert conf.short_name_mode == "enforcing"
    only = write(tmp_path, "other.d/1.conf", 'short-name-mode = "disabled"\n')
    assert load(tmp_path, path=arg, dropin_dir=only.parent).short_name_mode == "disabled"


def test_user_file_replaces_system_files(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write(tmp_path, "etc/containers/registries.conf", 'unqualified-search-registries = ["system.io"]\n')
    user = write(home, ".config/containers/registries.conf", 'unqualified-search-registries = ["user.io"]\n')
    user_dropin = write(home, ".config/containers/registries.conf.d/1.conf", 'short-name-mode = "disabled"\n')
    # Per-user files are a host feature: with root= (a sysroot) they are ignored.
    assert load_registries_conf(root=tmp_path, environ={"HOME": str(home)}).unqualified_search_registries == (
        "system.io",
    )
    # On the host, an existing per-user file replaces /etc/containers/registries.conf *and* the system
    # drop-ins (this machine's /etc/containers/registries.conf.d has aliases: none may leak in).
    conf = load_registries_conf(environ={"HOME": str(home)}, aliases_path=tmp_path / "none")
    assert conf.sources == (user, user_dropin)
    assert conf.unqualified_search_registries == ("user.io",)
    assert conf.short_name_mode == "disabled"
    assert conf.aliases == {}


MAIN = """
unqualified-search-registries = ["main.io", "other.io"]
credential-helpers = ["pass"]
short-name-mode = "enforcing"

[aliases]
"app" = "main.io/org/app"
"tool" = "main.io/org/tool"
"gone" = "main.io/org/gone"

[[registry]]
location = "a.com"
insecure = true

[[registry]]
prefix = "b.com"
location = "b.com"
[[registry.mirror]]
location = "bm.local"
"""

DROPIN_1 = """
[[registry]]
prefix = "a.com"
location = "a-replaced.com"

[aliases]
"gone" = ""
"tool" = "dropin.io/tool"
"""

DROPIN_2 = """
unqualified-search-registries = []
credential-helpers = []

[[registry]]
location = "c.com"
blocked = true
"""


def test_drop_ins_merge_in_lexical_order(tmp_path: Path) -> None:
    main = write(tmp_path, "etc/containers/registries.conf", MAIN)
    d = "etc/containers/registries.conf.d/"
    first = write(tmp_path, d + "10-first.conf", DROPIN_1)
    second = write(tmp_path, d + "20-second.conf", DROPIN_2)
    write(tmp_path, d + "05-ignored.toml", "this is not read = [")
    write(tmp_path, d + "sub/00-nested.conf", "not read either = [")
    (tmp_path / d / "30-dir.conf").mkdir()
    conf = load(tmp_path)
    assert conf.sources == (main, first, second)
    # [[registry]] keyed by prefix: the drop-in's a.com table replaced the whole table (insecure gone)
    assert [(r.prefix, r.location, r.insecure, r.blocked, r.origin) for r in conf.registries] == [
        ("a.com", "a-replaced.com", False, False, first),
        ("b.com", "b.com", False, False, main),
        ("c.com", "c.com", False, True, second),
    ]
    assert conf.registries[1].mirrors == (Mirror("bm.local"),)
    # arrays present in a later file replace, [] clears (credential helpers then default)
    assert conf.unqualified_search_registries == ()
    assert conf.unqualified_search_registries_origin == second
    assert conf.credential_helpers == ("containers-auth.json",)
    assert conf.short_name_mode == "enforcing"
    # aliases merge key by key; "" erases
    assert conf.aliases["app"] == Alias(parse_reference("main.io/org/app"), main)
    assert conf.aliases["tool"] == Alias(parse_reference("dropin.io/tool"), first)
    assert conf.aliases["gone"] == Alias(None, first)


def test_same_prefix_twice_in_one_file_first_wins(tmp_path: Path) -> None:
    conf = conf_from(
        tmp_path,
        """
        [[registry]]
        prefix = "x.com"
        location = "first.com"
        [[registry]]
        prefix = "x.com"
        location = "second.com"
        """,
    )
    assert [r.location for r in conf.registries] == ["first.com"]


def test_v1_conversion(tmp_path: Path) -> None:
    conf = conf_from(
        tmp_path,
        """
        [registries.search]
        registries = ["search1.io", "search2.io/"]
        [registries.insecure]
        registries = ["insecure.io", "both.io"]
        [registries.block]
        registries = ["blocked.io", "both.io"]
        """,
    )
    assert conf.unqualified_search_registries == ("search1.io", "search2.io")
    assert [(r.prefix, r.location, r.insecure, r.blocked) for r in conf.registries] == [
        ("blocked.io", "blocked.io", False, True),
        ("both.io", "both.io", True, True),
        ("insecure.io", "insecure.io", True, False),
    ]


# --- invalid files: every one names the file and the key ------------------------------------------------

INVALID = [
    ("registry = [", "invalid TOML"),
    ("[registry]\nlocation = 'x.com'\n", "registry: expected an array of tables"),
    (
        "[[registry]]\nlocation = 'https://x.com'\n",
        "registry[0].location: invalid location 'https://x.com': URI schemes",
    ),
    ("[[registry]]\nprefix = 'http://x.com'\nlocation='x.com'\n", "registry[0].prefix: invalid location"),
    ("[[registry]]\ninsecure = true\n", "registry[0]: invalid condition: both location and prefix are unset"),
    ("[[registry]]\nprefix = 'x.com'\n", "registry[0].location: invalid condition: location is unset"),
    ("[[registry]]\nprefix = '*.x.com/foo'\n", "registry[0].prefix: wildcarded prefix"),
    ("[[registry]]\nprefix = '*.x.com:5000'\n", "registry[0].prefix: wildcarded prefix"),
    ("[[registry]]\nlocation = 'x.com'\ninsecure = 'yes'\n", "registry[0].insecure: expected a boolean"),
    ("[[registry]]\nlocation = 'x.com'\nblocked = 1\n", "registry[0].blocked: expected a boolean"),
    ("[[registry]]\nlocation = 5\n", "registry[0].location: expected a string"),
    (
        "[[registry]]\nlocation = 'x.com'\npull-from-mirror = 'all'\n",
        "registry[0].pull-from-mirror: must not be set for a non-mirror registry",
    ),
    (
        "[[registry]]\nlocation = 'x.com'\n[[registry.mirror]]\ninsecure = true\n",
        "mirror[0].location: invalid condition",
    ),
    (
        "[[registry]]\nlocation = 'x.com'\n[[registry.mirror]]\nlocation = 'https://m.com'\n",
        "registry[0].mirror[0].location: invalid location",
    ),
    (
        "[[registry]]\nlocation = 'x.com'\n[[registry.mirror]]\nlocation = 'm.com'\npull-from-mirror = 'some'\n",
        "registry[0].mirror[0].pull-from-mirror: unsupported pull-from-mirror value 'some'",
    ),
    (
        "[[registry]]\nlocation = 'x.com'\nmirror-by-digest-only = true\n"
        "[[registry.mirror]]\nlocation = 'm.com'\npull-from-mirror = 'digest-only'\n",
        "cannot set mirror usage mirror-by-digest-only",
    ),
    ("[[registry]]\nlocation = 'x.com'\nmirror = 'm.com'\n", "registry[0].mirror: expected an array of tables"),
    (
        "[[registry]]\nlocation = 'x.com'\ninsecure = true\n[[registry]]\nprefix = 'y.com'\nlocation = 'x.com'\n",
        "conflicting 'insecure' setting",
    ),
    (
        "[[registry]]\nlocation = 'x.com'\n[[registry]]\nprefix = 'y.com'\nlocation = 'x.com'\nblocked = true\n",
        "conflicting 'blocked' setting",
    ),
    ("unqualified-search-registries = 'quay.io'\n", "unqualified-search-registries: expected an array of strings"),
    (
        "unqualified-search-registries = ['quay.io/ns']\n",
        "unqualified-search-registries[0]: invalid entry 'quay.io/ns'",
    ),
    ("unqualified-search-registries = ['https://q.io']\n", "unqualified-search-registries[0]: invalid location"),
    ("credential-helpers = 'pass'\n", "credential-helpers: expected an array of strings"),
    ("short-name-mode = 'prompt'\n", "short-name-mode: invalid short-name mode 'prompt'"),
    ("short-name-mode = true\n", "short-name-mode: expected a string"),
    ("aliases = 'x'\n", "aliases: expected a table"),
    ("[aliases]\n'quay.io/app' = 'quay.io/app'\n", "must not contain registry"),
    ("[aliases]\n'app:1' = 'quay.io/app'\n", "invalid short name 'app:1': must not contain tag"),
    ("[aliases]\n'app' = 'other/app'\n", "invalid alias 'other/app': must contain registry"),
    ("[aliases]\n'app' = 'quay.io/app:1'\n", "must not contain tag"),
    (f"[aliases]\n'app' = 'quay.io/app@{D}'\n", "must not contain digest"),
    ("[aliases]\n'app' = 1\n", "aliases.app: expected a string"),
    (
        "[registries.search]\nregistries = ['a.io']\n[[registry]]\nlocation = 'x.com'\n",
        "mixing sysregistry v1/v2 is not supported",
    ),
    ("unqualified-search-registries = []\n[registries.search]\nregistries = []\n", "mixing sysregistry v1/v2"),
    ("[registries.block]\nregistries = ['https://x.io']\n", "registries.block.registries: invalid location"),
    ("[registries.search]\nregistries = 'a.io'\n", "registries.search.registries: expected an array of strings"),
]


@pytest.mark.parametrize(("text", "message"), INVALID, ids=[m for _, m in INVALID])
def test_invalid_main_file(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, "etc/containers/registries.conf", text)
    with pytest.raises(ConfigError) as info:
        load(tmp_path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_non_utf8_and_directory_main_files(tmp_path: Path) -> None:
    path = tmp_path / "etc/containers/registries.conf"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"short-name-mode = '\xff'\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: invalid TOML")):
        load(tmp_path)
    path.unlink()
    path.mkdir()
    with pytest.raises(ConfigError, match=re.escape(f"{path}: is a directory")):
        load(tmp_path)


def test_all_bad_aliases_are_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "etc/containers/registries.conf", "[aliases]\n'a' = 'b'\n'c' = 'quay.io/c:1'\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: invalid short-name aliases: aliases.a: ")) as info:
        load(tmp_path)
    assert "aliases.c: invalid alias 'quay.io/c:1'" in str(info.value)


def test_invalid_drop_in_names_the_drop_in(tmp_path: Path) -> None:
    write(tmp_path, "etc/containers/registries.conf", 'unqualified-search-registries = ["a.io"]\n')
    bad = write(tmp_path, "etc/containers/registries.conf.d/99-bad.conf", "short-name-mode = 'loud'\n")
    with pytest.raises(ConfigError, match=re.escape(f"{bad}: short-name-mode")):
        load(tmp_path)


def test_v1_drop_in_refused(tmp_path: Path) -> None:
    bad = write(tmp_path, "etc/containers/registries.conf.d/1.conf", "[registries.search]\nregistries = ['a.io']\n")
    with pytest.raises(ConfigError, match=re.escape(f"{bad}: registries: registry must be in v2 format")):
        load(tmp_path)


def test_unknown_keys_are_ignored_like_containers_image(tmp_path: Path) -> None:
    conf = conf_from(tmp_path, "future-key = 1\n[[registry]]\nlocation = 'x.com'\nfuture = true\n")
    assert conf.registries[0].location == "x.com"


# --- short names ---------------------------------------------------------------------------------------

SHORT_CONF = """
unqualified-search-registries = ["registry.fedoraproject.org", "quay.io", "docker.io"]
short-name-mode = "{mode}"

[aliases]
"fedora" = "registry.fedoraproject.org/fedora"
"ubi8/ubi" = "registry.access.redhat.com/ubi8/ubi"
"erased" = "quay.io/erased"
"""

SHORT_CASES = [
    # (mode, input, expected candidates | error substring)
    ("permissive", "fedora", ["registry.fedoraproject.org/fedora:latest"]),
    ("enforcing", "fedora:39", ["registry.fedoraproject.org/fedora:39"]),
    ("enforcing", f"fedora@{D}", [f"registry.fedoraproject.org/fedora@{D}"]),
    ("enforcing", f"fedora:39@{D}", [f"registry.fedoraproject.org/fedora:39@{D}"]),
    ("disabled", "ubi8/ubi", ["registry.access.redhat.com/ubi8/ubi:latest"]),
    (
        "permissive",
        "alpine",
        ["registry.fedoraproject.org/alpine:latest", "quay.io/alpine:latest", "docker.io/library/alpine:latest"],
    ),
    (
        "disabled",
        "org/app:2",
        ["registry.fedoraproject.org/org/app:2", "quay.io/org/app:2", "docker.io/org/app:2"],
    ),
    ("enforcing", "alpine", "short-name resolution enforced but cannot prompt without a TTY"),
    # the erasing drop-in below makes "erased" fall back to search registries
    (
        "permissive",
        "erased",
        ["registry.fedoraproject.org/erased:latest", "quay.io/erased:latest", "docker.io/library/erased:latest"],
    ),
    # fully qualified names bypass everything (":latest" added)
    ("enforcing", "quay.io/x", ["quay.io/x:latest"]),
    ("enforcing", "docker.io/alpine", ["docker.io/library/alpine:latest"]),
    ("enforcing", "localhost/x:1", ["localhost/x:1"]),
]


@pytest.mark.parametrize(("mode", "text", "expected"), SHORT_CASES)
def test_resolve_short_name(tmp_path: Path, mode: str, text: str, expected: list[str] | str) -> None:
    write(tmp_path, "etc/containers/registries.conf", SHORT_CONF.format(mode=mode))
    write(tmp_path, "etc/containers/registries.conf.d/1.conf", '[aliases]\n"erased" = ""\n')
    conf = load(tmp_path)
    if isinstance(expected, str):
        with pytest.raises(ShortNameError, match=re.escape(expected)):
            resolve_short_name(conf, text)
    else:
        assert [str(r) for r in resolve_short_name(conf, text)] == expected


def test_enforcing_with_one_search_registry_is_not_ambiguous(tmp_path: Path) -> None:
    conf = conf_from(tmp_path, 'unqualified-search-registries = ["quay.io"]\nshort-name-mode = "enforcing"\n')
    assert resolve_short_name(conf, "app") == (parse_reference("quay.io/app:latest"),)


def test_tty_prompt_callback(tmp_path: Path) -> None:
    conf = conf_from(tmp_path, 'unqualified-search-registries = ["a.io", "b.io"]\nshort-name-mode = "enforcing"\n')
    seen: list[tuple[Reference, ...]] = []

    def choose(candidates: tuple[Reference, ...]) -> Reference:
        seen.append(candidates)
        return candidates[1]

    result = resolve_short_name_detailed(conf, "app", tty=True, choose=choose)
    assert result.candidates == (parse_reference("b.io/app:latest"),)
    assert result.rationale == "selected"
    assert len(seen[0]) == 2
    # tty without a way to prompt behaves like no tty
    with pytest.raises(ShortNameError):
        resolve_short_name(conf, "app", tty=True)


def test_no_search_registries(tmp_path: Path) -> None:
    with pytest.raises(ShortNameError, match=re.escape("no containers-registries.conf")):
        resolve_short_name(load(tmp_path), "app")
    path = write(tmp_path, "etc/containers/registries.conf", "unqualified-search-registries = []\n")
    with pytest.raises(ShortNameError, match=re.escape(f"no unqualified-search registries are defined in '{path}'")):
        resolve_short_name(load(tmp_path), "app")


def test_alias_cache_file_has_precedence(tmp_path: Path) -> None:
    main = write(tmp_path, "etc/containers/registries.conf", '[aliases]\n"app" = "conf.io/app"\n"b" = "conf.io/b"\n')
    cache = write(tmp_path, "var/cache/containers/short-name-aliases.conf", '[aliases]\n"app" = "cache.io/app"\n')
    conf = load(tmp_path)
    result = resolve_short_name_detailed(conf, "app")
    assert result.candidates == (parse_reference("cache.io/app:latest"),)
    assert result.origin == cache
    assert result.description() == f"Resolved 'app' as an alias ({cache})"
    assert resolve_short_name_detailed(conf, "b").origin == main
    other = write(tmp_path, "elsewhere.conf", '[aliases]\n"app" = "else.io/app"\n')
    assert str(resolve_short_name(load(tmp_path, aliases_path=other), "app")[0]) == "else.io/app:latest"


def test_corrupt_alias_cache_is_a_config_error(tmp_path: Path) -> None:
    cache = write(tmp_path, "var/cache/containers/short-name-aliases.conf", '[aliases]\n"app" = "nope"\n')
    with pytest.raises(ConfigError, match=re.escape(str(cache))):
        load(tmp_path)


# --- property: merging drop-ins equals "last file defining a prefix wins" ---------------------------------

_prefixes = st.sampled_from(["a.com", "b.com", "b.com/x", "*.c.com", "d.com:5000"])
_file = st.lists(st.tuples(_prefixes, st.booleans(), st.integers(0, 9)), max_size=4)


@settings(max_examples=40, deadline=None)
@given(
    files=st.lists(_file, min_size=1, max_size=4), usr=st.lists(st.none() | st.integers(0, 3), min_size=4, max_size=4)
)
def test_merge_model(
    tmp_path_factory: pytest.TempPathFactory, files: list[list[tuple[str, bool, int]]], usr: list[int | None]
) -> None:
    root = tmp_path_factory.mktemp("merge")
    expected: dict[str, tuple[str, bool]] = {}
    expected_usr: tuple[str, ...] = ()
    for n, entries in enumerate(files):
        lines: list[str] = []
        if usr[n] is not None:
            regs = [f'"s{n}-{i}.io"' for i in range(usr[n] or 0)]
            lines.append(f"unqualified-search-registries = [{', '.join(regs)}]")
            expected_usr = tuple(f"s{n}-{i}.io" for i in range(usr[n] or 0))
        seen: set[str] = set()
        for prefix, blocked, k in entries:
            location = f"loc{n}-{k}.io"
            # distinct locations per table so that insecure/blocked conflicts cannot arise
            location += f"/{len(lines)}"
            lines += [
                "[[registry]]",
                f'prefix = "{prefix}"',
                f'location = "{location}"',
                f"blocked = {str(blocked).lower()}",
            ]
            if prefix not in seen:  # first table of a prefix within a file wins
                seen.add(prefix)
                expected[prefix] = (location, blocked)
        rel = "etc/containers/registries.conf" if n == 0 else f"etc/containers/registries.conf.d/{n:02d}.conf"
        write(root, rel, "\n".join(lines) + "\n")
    conf = load(root)
    assert {r.prefix: (r.location, r.blocked) for r in conf.registries} == expected
    assert [r.prefix for r in conf.registries] == sorted(expected)
    assert conf.unqualified_search_registries == expected_usr


def test_handwritten_conf_equals_loaded(tmp_path: Path) -> None:
    conf = conf_from(
        tmp_path, '[[registry]]\nlocation = "x.com"\n[[registry.mirror]]\nlocation = "m.com"\ninsecure = true\n'
    )
    path = tmp_path / "etc/containers/registries.conf"
    assert conf.registries == (RegistryEntry("x.com", "x.com", mirrors=(Mirror("m.com", True),), origin=path),)


# --- podman reads the same files the same way ------------------------------------------------------------


@pytest.fixture(scope="module")
def pushed(registry: RunningRegistry) -> str:
    """A tiny image at REGISTRY/rc-conf/app:1 in the session registry; returns the registry host."""
    push_image(registry.host, "rc-conf/app:1", simple_image(seed=7301, files=1, layers=1))
    push_image(registry.host, "rcshortname:latest", simple_image(seed=7302, files=1, layers=1))
    return registry.host


@pytest.fixture(scope="module")
def module_podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    instance = podman_for(tmp_path_factory.mktemp("rc-podman"))
    try:
        yield instance
    finally:
        # podman's overlay driver mounts ROOT/overlay on itself; both mounts must go before removal
        for mount in (instance.runroot, instance.root / "overlay"):
            subprocess.run(["umount", "-R", str(mount)], capture_output=True, check=False)
        shutil.rmtree(instance.runroot, ignore_errors=True)


def podman_pull(podman: Podman, conf: Path, name: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONTAINERS_REGISTRIES_CONF": str(conf), "REGISTRY_AUTH_FILE": str(conf.parent / "none.json")}
    (conf.parent / "none.json").write_text("{}")
    return subprocess.run(
        [*podman.base(), "pull", "--quiet", name],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def manifest_exists(ref: Reference) -> bool:
    url = f"http://{ref.registry_host}/v2/{ref.path}/manifests/{ref.identifier}"
    accept = "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"
    return httpx.head(url, headers={"Accept": accept}, timeout=10).status_code == 200


@pytest.mark.skipif(shutil.which("podman") is None, reason="podman not installed")
def test_podman_and_tether_rewrite_the_same_way(tmp_path: Path, pushed: str, module_podman: Podman) -> None:
    conf_path = write(
        tmp_path,
        "registries.conf",
        f"""
        [[registry]]
        prefix = "example.invalid/team"
        location = "{pushed}/rc-conf"
        insecure = true
        """,
    )
    conf = load(tmp_path, path=conf_path)
    sources = pull_sources(conf, parse_reference("example.invalid/team/app:1"))
    assert sources == (PullSource(parse_reference(f"{pushed}/rc-conf/app:1"), True, False),)
    assert manifest_exists(sources[0].reference)
    proc = podman_pull(module_podman, conf_path, "example.invalid/team/app:1")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(shutil.which("podman") is None, reason="podman not installed")
def test_podman_and_tether_resolve_short_names_the_same_way(tmp_path: Path, pushed: str, module_podman: Podman) -> None:
    closed = "127.0.0.1:9"  # discard port: nothing listens, the first candidate fails
    text = f"""
        unqualified-search-registries = ["{closed}", "{pushed}"]
        short-name-mode = "{{mode}}"
        [[registry]]
        location = "{pushed}"
        insecure = true
        [[registry]]
        location = "{closed}"
        insecure = true
        [aliases]
        "rcaliased" = "{pushed}/rc-conf/app"
        """
    permissive = write(tmp_path, "permissive/registries.conf", text.format(mode="permissive"))
    enforcing = write(tmp_path, "enforcing/registries.conf", text.format(mode="enforcing"))

    # enforcing without a TTY: both refuse, with the same words (while nothing is local)
    with pytest.raises(ShortNameError, match="short-name resolution enforced but cannot prompt without a TTY"):
        resolve_short_name(load(tmp_path, path=enforcing), "rcshortname")
    proc = podman_pull(module_podman, enforcing, "rcshortname")
    assert proc.returncode != 0
    assert "short-name resolution enforced but cannot prompt without a TTY" in proc.stderr

    # an alias is used even in enforcing mode, with the tag carried over
    assert [str(r) for r in resolve_short_name(load(tmp_path, path=enforcing), "rcaliased:1")] == [
        f"{pushed}/rc-conf/app:1"
    ]
    proc = podman_pull(module_podman, enforcing, "rcaliased:1")
    assert proc.returncode == 0, proc.stderr

    # permissive: every search registry in order; podman skips the dead one and pulls from the next.
    # (Last: once the image is local, podman resolves the short name to it without registries.conf.)
    conf = load(tmp_path, path=permissive)
    assert [str(r) for r in resolve_short_name(conf, "rcshortname")] == [
        f"{closed}/rcshortname:latest",
        f"{pushed}/rcshortname:latest",
    ]
    proc = podman_pull(module_podman, permissive, "rcshortname")
    assert proc.returncode == 0, proc.stderr
    names = {n for image in module_podman.images() for n in image.get("Names") or ()}
    assert f"{pushed}/rcshortname:latest" in names


@pytest.mark.skipif(shutil.which("podman") is None, reason="podman not installed")
def test_podman_and_tether_refuse_blocked_registries(tmp_path: Path, pushed: str, module_podman: Podman) -> None:
    conf_path = write(
        tmp_path,
        "registries.conf",
        f"""
        [[registry]]
        location = "{pushed}"
        insecure = true
        blocked = true
        """,
    )
    with pytest.raises(BlockedRegistryError, match=re.escape(f"registry {pushed} is blocked in {conf_path}")):
        pull_sources(load(tmp_path, path=conf_path), parse_reference(f"{pushed}/rc-conf/app:1"))
    proc = podman_pull(module_podman, conf_path, f"{pushed}/rc-conf/app:1")
    assert proc.returncode != 0
    assert f"registry {pushed} is blocked" in proc.stderr


PACKAGED = Path("/etc/containers/registries.conf.d/shortnames.conf")


@pytest.mark.skipif(not PACKAGED.exists(), reason="containers-common's shortnames.conf is not installed")
@pytest.mark.reads_host_config("the file containers-common installs is what is under test")
def test_packaged_shortnames_conf_loads(tmp_path: Path) -> None:
    """containers-common ships a few dozen aliases as a drop-in; all of them must load and resolve."""
    dropin = tmp_path / "etc/containers/registries.conf.d/000-shortnames.conf"
    dropin.parent.mkdir(parents=True)
    shutil.copyfile(PACKAGED, dropin)
    conf = load(tmp_path)
    assert len(conf.aliases) > 10
    for name, alias in conf.aliases.items():
        assert alias.value is not None
        assert alias.origin == dropin
        assert resolve_short_name(conf, name) == (alias.value.tag_name_only(),)


_pfm = st.sampled_from([None, "all", "digest-only", "tag-only"])


@settings(max_examples=150, deadline=None)
@given(
    mirrors=st.lists(st.tuples(_pfm, st.booleans()), max_size=4),
    digest_only=st.booleans(),
    digested=st.booleans(),
    tag=st.sampled_from(["1", "latest", "v2.0"]),
)
def test_pull_sources_model(
    mirrors: list[tuple[str | None, bool]], digest_only: bool, digested: bool, tag: str
) -> None:
    """Mirrors first in file order, filtered by mirror-by-digest-only / pull-from-mirror; the primary last;
    tag and digest carried to every endpoint."""
    if digest_only:
        mirrors = [(None, insecure) for _, insecure in mirrors]
    reg = RegistryEntry(
        prefix="src.io/team",
        location="primary.io/team",
        mirror_by_digest_only=digest_only,
        mirrors=tuple(Mirror(f"m{i}.io/cache", insecure, pfm) for i, (pfm, insecure) in enumerate(mirrors)),  # type: ignore[arg-type]
    )
    conf = RegistriesConf(registries=(reg,))
    ref = parse_reference(f"src.io/team/app@{D}" if digested else f"src.io/team/app:{tag}")
    sources = pull_sources(conf, ref)
    suffix = f"app@{D}" if digested else f"app:{tag}"
    expected = []
    for i, (pfm, insecure) in enumerate(mirrors):
        use = digested if digest_only else (pfm in (None, "all") or (pfm == "digest-only") == digested)
        if use:
            expected.append(PullSource(parse_reference(f"m{i}.io/cache/{suffix}"), insecure, True))
    expected.append(PullSource(parse_reference(f"primary.io/team/{suffix}"), False, False))
    assert list(sources) == expected


def test_errors_name_the_line_of_the_key(tmp_path: Path) -> None:
    text = ('unqualified-search-registries = ["a.io"]\nshort-name-mode = "permissive"\n\n[[registry]]\n'
            'location = "x.io"\n\n[[registry]]\nprefix = "y.io"\nlocation = "z.io"\n[[registry.mirror]]\n'
            'location = "m1.io"\n[[registry.mirror]]\nlocation = "m2.io"\ninsecure = 3\n')
    assert key_line(text, "short-name-mode") == 2
    assert key_line(text, "unqualified-search-registries[0]") == 1
    assert key_line(text, "registry[1].location") == 9
    assert key_line(text, "registry[1].mirror[1].insecure") == 14
    assert key_line(text, "registry[0].blocked") == 4  # absent: the table's line
    path = write(tmp_path, "etc/containers/registries.conf", text)
    with pytest.raises(ConfigError, match=re.escape(f"{path}: registry[1].mirror[1].insecure: expected a boolean, "
                                                    "got 3 (at line 14)")):
        load(tmp_path)
