"""The docker reference grammar (distribution/reference, as containers/image vendors it), short names
and transports."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether.registry.errors import InvalidReferenceError
from tether.registry.reference import (
    ANCHORED_DOMAIN_RE,
    REFERENCE_RE,
    DockerName,
    OCIArchiveName,
    OCILayoutName,
    Reference,
    ShortName,
    is_short_name,
    parse_canonical_reference,
    parse_image_name,
    parse_normalized_named,
    parse_reference,
    parse_short_name,
)

D64 = "sha256:" + "0123456789abcdef" * 4
D512 = "sha512:" + "ab" * 64


# (input, domain, path, tag, digest): from distribution/reference's reference_test.go and
# normalize_test.go cases, plus tether's own.
VALID = [
    ("docker.io/alpine", "docker.io", "library/alpine", None, None),
    ("docker.io/library/alpine:3.19", "docker.io", "library/alpine", "3.19", None),
    ("index.docker.io/foo/bar", "docker.io", "foo/bar", None, None),
    ("index.docker.io/redis:7", "docker.io", "library/redis", "7", None),
    ("docker.io/user/app@" + D64, "docker.io", "user/app", None, D64),
    ("quay.io/org/app:1.0", "quay.io", "org/app", "1.0", None),
    ("quay.io/org/app:1.0@" + D64, "quay.io", "org/app", "1.0", D64),
    ("127.0.0.1:5000/app", "127.0.0.1:5000", "app", None, None),
    ("localhost/app:latest", "localhost", "app", "latest", None),
    ("localhost:5000/a/b/c/d", "localhost:5000", "a/b/c/d", None, None),
    ("Example.COM/app", "Example.COM", "app", None, None),  # domains may be upper case
    ("[::1]:5000/app", "[::1]:5000", "app", None, None),
    ("[2001:db8::1]/app", "[2001:db8::1]", "app", None, None),
    ("registry-1.docker.io/x/y", "registry-1.docker.io", "x/y", None, None),
    ("a.b/c__d/e---f/g.h/i_j", "a.b", "c__d/e---f/g.h/i_j", None, None),
    ("example.com/app:" + "t" * 128, "example.com", "app", "t" * 128, None),
    ("example.com/app:_tag-.1", "example.com", "app", "_tag-.1", None),
    ("example.com/app@" + D512, "example.com", "app", None, D512),
    ("example.com:443/app", "example.com:443", "app", None, None),
]


@pytest.mark.parametrize(("text", "domain", "path", "tag", "digest"), VALID)
def test_parse_reference_valid(text: str, domain: str, path: str, tag: str | None, digest: str | None) -> None:
    ref = parse_reference(text)
    assert (ref.domain, ref.path, ref.tag, ref.digest) == (domain, path, tag, digest)
    assert ref.name == f"{domain}/{path}"


INVALID = [
    ("", "at least one component"),
    ("alpine", "short name"),
    ("library/alpine:3", "short name"),
    ("foo/bar@" + D64, "short name"),
    ("quay.io/Org/app", "must be lowercase"),
    ("quay.io/app:", "invalid reference format"),
    ("quay.io/app:-tag", "invalid reference format"),
    ("quay.io/app:" + "t" * 129, "invalid reference format"),
    ("quay.io/app@sha256:abc", "invalid reference format"),
    ("quay.io/app@sha256:" + "A" * 64, "lowercase hex"),
    ("quay.io/app@sha256:" + "a" * 63 + "0a", "lowercase hex"),
    ("quay.io/app@md5:" + "a" * 32, "unsupported digest algorithm"),
    ("quay.io//app", "invalid reference format"),
    ("quay.io/app/", "invalid reference format"),
    ("quay.io/-app", "invalid reference format"),
    ("quay.io/a..b", "invalid reference format"),
    ("quay.io/a___b", "invalid reference format"),
    ("https://quay.io/app", "invalid reference format"),
    ("-quay.io/app", "invalid reference format"),
    ("quay.io:port/app", "invalid reference format"),
    ("quay.io/" + "a" * 248, "not be more than 255"),  # 8 + 248 = 256
    ("0123456789abcdef" * 4, "64-byte hexadecimal"),
    ("quay.io/app@@" + D64, "invalid reference format"),
]


@pytest.mark.parametrize(("text", "message"), INVALID)
def test_parse_reference_invalid(text: str, message: str) -> None:
    with pytest.raises(InvalidReferenceError, match=re.escape(message)):
        parse_reference(text)


def test_name_length_limit_counts_the_domain() -> None:
    # containers/image NameTotalLengthMax: 255 characters for domain + "/" + path.
    ok = "quay.io/" + "a" * 247
    assert len(ok) == 255
    assert parse_reference(ok).path == "a" * 247


SHORT = [
    ("alpine", True),
    ("alpine:3", True),
    ("library/fedora", True),
    ("app@" + D64, True),
    ("foo/bar/baz:1", True),
    ("docker.io/alpine", False),
    ("localhost/app", False),
    ("localhost:5000/app", False),
    ("quay.io/app", False),
    ("server.org:5000/lib/image", False),
    ("[::1]/app", False),
    ("Alpine", False),  # not a valid reference at all
    ("", False),
    ("a b", False),
    # "a.b_c" is not a valid domain, so reference.Parse sees no registry: containers/image calls it short.
    ("a.b_c/d", True),
]


@pytest.mark.parametrize(("text", "short"), SHORT)
def test_is_short_name(text: str, short: bool) -> None:
    assert is_short_name(text) is short


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alpine", ShortName("alpine")),
        ("library/alpine:3", ShortName("library/alpine", "3")),
        ("app:1@" + D64, ShortName("app", "1", D64)),
    ],
)
def test_parse_short_name(text: str, expected: ShortName) -> None:
    assert parse_short_name(text) == expected
    assert str(expected) == text


def test_parse_short_name_refuses_qualified() -> None:
    with pytest.raises(InvalidReferenceError, match="not a short name"):
        parse_short_name("quay.io/app")


def test_reference_construction_validates() -> None:
    with pytest.raises(InvalidReferenceError, match="not a registry domain"):
        Reference("alpine", "x")
    with pytest.raises(InvalidReferenceError, match="not normalised"):
        Reference("docker.io", "alpine")
    with pytest.raises(InvalidReferenceError, match="not normalised"):
        Reference("index.docker.io", "a/b")
    with pytest.raises(InvalidReferenceError, match="invalid tag"):
        Reference("quay.io", "a", tag="-x")
    with pytest.raises(InvalidReferenceError, match="digest"):
        Reference("quay.io", "a", digest="sha256:12")


def test_reference_helpers() -> None:
    ref = parse_reference("docker.io/library/alpine")
    assert ref.registry_host == "registry-1.docker.io"
    assert ref.identifier == "latest"
    assert ref.is_name_only
    assert str(ref.tag_name_only()) == "docker.io/library/alpine:latest"
    assert ref.familiar_name == "alpine"
    tagged = ref.with_tag("3")
    assert str(tagged) == "docker.io/library/alpine:3"
    assert tagged.identifier == "3"
    both = tagged.with_digest(D64)
    assert str(both) == f"docker.io/library/alpine:3@{D64}"
    assert both.identifier == D64
    assert both.trimmed() == ref
    assert both.tag_name_only() == both
    assert parse_reference("quay.io/a/b").registry_host == "quay.io"
    assert parse_reference("docker.io/user/app").familiar_name == "user/app"
    assert parse_reference("quay.io/library/x").familiar_name == "quay.io/library/x"
    assert ref.with_path("library/busybox").name == "docker.io/library/busybox"


def test_parse_canonical_reference() -> None:
    assert str(parse_canonical_reference("quay.io/a:1")) == "quay.io/a:1"
    with pytest.raises(InvalidReferenceError, match="canonical"):
        parse_canonical_reference("docker.io/alpine")
    with pytest.raises(InvalidReferenceError, match="canonical"):
        parse_canonical_reference("index.docker.io/a/b")


# --- transports ---------------------------------------------------------------------------------------

TRANSPORTS = [
    ("docker://quay.io/a:1", DockerName("quay.io/a:1", Reference("quay.io", "a", "1"), None)),
    ("docker://alpine", DockerName("alpine", None, ShortName("alpine"))),
    ("docker://docker.io/alpine", DockerName("docker.io/alpine", Reference("docker.io", "library/alpine"), None)),
    ("quay.io/a:1", DockerName("quay.io/a:1", Reference("quay.io", "a", "1"), None)),
    ("localhost:5000/a", DockerName("localhost:5000/a", Reference("localhost:5000", "a"), None)),
    ("alpine:3", DockerName("alpine:3", None, ShortName("alpine", "3"))),
    ("oci:/srv/layout", OCILayoutName(Path("/srv/layout"))),
    ("oci:/srv/layout:app:1.0", OCILayoutName(Path("/srv/layout"), "app:1.0")),
    ("oci:rel/dir:ref", OCILayoutName(Path("rel/dir"), "ref")),
    ("oci:/srv/layout:@3", OCILayoutName(Path("/srv/layout"), None, 3)),
    ("oci:/srv/layout:quay.io/a/b:1@x", OCILayoutName(Path("/srv/layout"), "quay.io/a/b:1@x")),
    ("oci-archive:/tmp/a.tar", OCIArchiveName(Path("/tmp/a.tar"))),
    ("oci-archive:/tmp/a.tar:v1", OCIArchiveName(Path("/tmp/a.tar"), "v1")),
]


@pytest.mark.parametrize(("text", "expected"), TRANSPORTS)
def test_parse_image_name(text: str, expected: object) -> None:
    assert parse_image_name(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("docker:quay.io/a", "start with docker://"),
        ("docker://Quay.io/A", "lowercase"),
        ("docker://quay.io/a:", "invalid reference format"),
        ("oci:", "path is empty"),
        ("oci::ref", "path is empty"),
        ("oci:/dir:bad ref", "invalid image reference"),
        ("oci:/dir:-x", "invalid image reference"),
        ("oci:/dir:@x", "not an integer"),
        ("oci:/dir:@-1", "must not be negative"),
        ("oci-archive:/a.tar:@1", "invalid image reference"),
        ("containers-storage:quay.io/a", "not supported"),
        ("docker-archive:/a.tar", "not supported"),
        ("dir:/x", "not supported"),
        ("quay.io/A", "lowercase"),
    ],
)
def test_parse_image_name_invalid(text: str, message: str) -> None:
    with pytest.raises(InvalidReferenceError, match=re.escape(message)):
        parse_image_name(text)


@pytest.mark.parametrize(
    "text", ["docker://quay.io/a:1", "oci:/srv/layout:app:1.0", "oci:/srv/l:@3", "oci-archive:/tmp/a.tar:v1"]
)
def test_image_name_str_round_trips(text: str) -> None:
    assert str(parse_image_name(text)) == text
    assert parse_image_name(str(parse_image_name(text))) == parse_image_name(text)


# --- property tests -------------------------------------------------------------------------------------

_alnum = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=6)
_sep = st.sampled_from([".", "_", "__", "-", "--", "---"])
component = st.builds(
    lambda first, rest: first + "".join(s + a for s, a in rest), _alnum, st.lists(st.tuples(_sep, _alnum), max_size=2)
)
path_st = st.lists(component, min_size=1, max_size=4).map("/".join)
_label = st.from_regex(r"\A[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,6}[a-zA-Z0-9])?\Z")
host_st = st.one_of(
    st.lists(_label, min_size=2, max_size=3).map(".".join),
    st.just("localhost"),
    st.from_regex(r"\A\[[a-f0-9:]{2,12}\]\Z"),
)
domain_st = st.builds(lambda h, p: h + (f":{p}" if p is not None else ""), host_st, st.none() | st.integers(1, 65535))
tag_st = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}\Z")
digest_st = st.sampled_from(["sha256", "sha512"]).flatmap(
    lambda a: st.text(
        "0123456789abcdef", min_size=64 if a == "sha256" else 128, max_size=64 if a == "sha256" else 128
    ).map(lambda h: f"{a}:{h}")
)


def _qualified(domain: str) -> bool:
    return "." in domain or ":" in domain or domain == "localhost"


@st.composite
def references(draw: st.DrawFn) -> Reference:
    domain = draw(domain_st.filter(lambda d: _qualified(d) and d.lower() not in ("index.docker.io",)))
    path = draw(path_st)
    if domain == "docker.io" and "/" not in path:
        path = "library/" + path
    tag = draw(st.none() | tag_st)
    digest = draw(st.none() | digest_st)
    return Reference(domain, path, tag, digest)


@settings(max_examples=300, deadline=None)
@given(references())
def test_str_parse_round_trip(ref: Reference) -> None:
    assert parse_reference(str(ref)) == ref
    assert str(parse_reference(str(ref))) == str(ref)
    assert not is_short_name(str(ref))
    assert parse_image_name("docker://" + str(ref)) == DockerName(str(ref), ref, None)


@settings(max_examples=200, deadline=None)
@given(path_st, st.none() | tag_st, st.none() | digest_st)
def test_short_names_round_trip(path: str, tag: str | None, digest: str | None) -> None:
    short = ShortName(path, tag, digest)
    text = str(short)
    first = path.split("/")[0]
    if "/" in path and _qualified(first) and ANCHORED_DOMAIN_RE.match(first):
        assert not is_short_name(text)
        return
    assert is_short_name(text)
    assert parse_short_name(text) == short
    with pytest.raises(InvalidReferenceError):
        parse_reference(text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="abAB09:/.@_-[]", max_size=30))
def test_parse_agrees_with_the_grammar(text: str) -> None:
    """Any string: parse_reference succeeds only on grammar matches with a registry first component,
    and whatever it returns prints back to an equivalent reference."""
    try:
        ref = parse_reference(text)
    except InvalidReferenceError:
        return
    assert REFERENCE_RE.match(text)
    assert parse_reference(str(ref)) == ref


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("busybox", "docker.io/library/busybox"),
        ("busybox:1", "docker.io/library/busybox:1"),
        ("library/busybox", "docker.io/library/busybox"),
        ("index.docker.io/busybox", "docker.io/library/busybox"),
        ("quay.io/a/b:1", "quay.io/a/b:1"),
        ("localhost/x", "localhost/x"),
        (f"localhost:5000/x@{D64}", f"localhost:5000/x@{D64}"),
    ],
)
def test_parse_normalized_named_defaults_to_docker_hub(text: str, expected: str) -> None:
    assert str(parse_normalized_named(text)) == expected


# "Foo/bar": Go takes the upper-case "Foo" as a registry; tether refuses a registry without "." or ":".
@pytest.mark.parametrize(
    "text", ["0123456789abcdef" * 4, "Busybox", "docker.io/Busybox", "a b", "x@sha256:12", "Foo/bar"]
)
def test_parse_normalized_named_refuses(text: str) -> None:
    with pytest.raises(InvalidReferenceError):
        parse_normalized_named(text)
