"""Bound-image discovery in a deployment root (engine/bound.py), bootc's cases and more."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tether.engine.bound.discovery import (
    BOUND_IMAGE_DIR,
    MAX_SYMLINKS,
    NotFoundInRootError,
    SymlinkLoopError,
    discover_bound_images,
    group_bound_images,
    parse_go_duration,
    resolve_in_root,
)
from tether.engine.errors import BoundImageError

CONTAINER_DIR = "usr/share/containers/systemd"


def write(root: Path, rel: str, text: str | bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def bind(root: Path, name: str, target: str) -> None:
    d = root / BOUND_IMAGE_DIR
    d.mkdir(parents=True, exist_ok=True)
    os.symlink(target, d / name)


def unit(root: Path, name: str, text: str, *, link: bool = True) -> None:
    write(root, f"{CONTAINER_DIR}/{name}", text)
    if link:
        bind(root, name, f"/{CONTAINER_DIR}/{name}")


# --- bootc's test_parse_spec_dir, step by step


def test_bootc_parse_spec_dir(tmp_path: Path) -> None:
    assert discover_bound_images(tmp_path) == ()
    (tmp_path / BOUND_IMAGE_DIR).mkdir(parents=True)
    (tmp_path / CONTAINER_DIR).mkdir(parents=True)
    assert discover_bound_images(tmp_path) == ()
    unit(tmp_path, "foo.image", "[Image]\nImage=quay.io/foo/foo:latest\n")
    unit(tmp_path, "bar.image", "[Image]\nImage=quay.io/bar/bar:latest\n")
    images = discover_bound_images(tmp_path)
    assert [i.image for i in images] == ["quay.io/bar/bar:latest", "quay.io/foo/foo:latest"]
    assert images[0].source_file == f"/{CONTAINER_DIR}/bar.image"
    assert images[0].entry == f"{BOUND_IMAGE_DIR}/bar.image"
    assert images[0].kind == "image"
    # Invalid symlink should return an error
    bind(tmp_path, "blah.image", "./blah")
    with pytest.raises(BoundImageError, match=r"dangling symlink blah\.image -> \./blah"):
        discover_bound_images(tmp_path)
    os.unlink(tmp_path / BOUND_IMAGE_DIR / "blah.image")
    # Invalid image contents should return an error
    write(tmp_path, "error.image", "[Image]\n")
    bind(tmp_path, "error.image", "/error.image")
    with pytest.raises(BoundImageError, match=r"Parsing usr/lib/bootc/bound-images.d/error.image.*Missing Image"):
        discover_bound_images(tmp_path)


def test_bootc_parse_container_file(tmp_path: Path) -> None:
    unit(tmp_path, "app.container", "[Container]\nImage=quay.io/foo/foo:latest\nExec=sleep inf\n")
    (image,) = discover_bound_images(tmp_path)
    assert image.image == "quay.io/foo/foo:latest"
    assert image.kind == "container"
    unit(tmp_path, "bad.container", "[Container]\n")
    with pytest.raises(BoundImageError, match=r"bad\.container.*Missing Image field"):
        discover_bound_images(tmp_path)


def test_image_key_in_wrong_section_is_missing(tmp_path: Path) -> None:
    unit(tmp_path, "a.image", "[Container]\nImage=quay.io/a/a\n")
    with pytest.raises(BoundImageError, match="Missing Image field"):
        discover_bound_images(tmp_path)


def test_empty_image_value_is_missing(tmp_path: Path) -> None:
    unit(tmp_path, "a.image", "[Image]\nImage=quay.io/a/a\nImage=\n")
    with pytest.raises(BoundImageError, match="Missing Image field"):
        discover_bound_images(tmp_path)


# --- every error, with the entry named


def test_not_a_symlink(tmp_path: Path) -> None:
    write(tmp_path, f"{BOUND_IMAGE_DIR}/plain.image", "[Image]\nImage=quay.io/a/a\n")
    with pytest.raises(BoundImageError, match=r"Not a symlink: plain\.image"):
        discover_bound_images(tmp_path)


def test_directory_entry_is_not_a_symlink(tmp_path: Path) -> None:
    (tmp_path / BOUND_IMAGE_DIR / "sub.image").mkdir(parents=True)
    with pytest.raises(BoundImageError, match=r"Not a symlink: sub\.image"):
        discover_bound_images(tmp_path)


@pytest.mark.parametrize("name", ["a.service", "a.conf", "noext", "a.image.bak", "a.volume"])
def test_invalid_suffix(tmp_path: Path, name: str) -> None:
    unit(tmp_path, "a.image", "[Image]\nImage=quay.io/a/a\n", link=False)
    bind(tmp_path, name, f"/{CONTAINER_DIR}/a.image")
    with pytest.raises(BoundImageError, match=f"Invalid file extension: {name}"):
        discover_bound_images(tmp_path)


def test_authfile_is_honoured_not_refused(tmp_path: Path) -> None:
    # bootc: "AuthFile is not supported by bound bootc images"; tether passes it to the pull.
    unit(tmp_path, "a.image", "[Image]\nImage=quay.io/foo/foo:latest\nAuthFile=/etc/containers/auth.json\n")
    (image,) = discover_bound_images(tmp_path)
    assert image.authfile == "/etc/containers/auth.json"


def test_relative_authfile_refused(tmp_path: Path) -> None:
    unit(tmp_path, "a.image", "[Image]\nImage=quay.io/foo/foo:latest\nAuthFile=auth.json\n")
    with pytest.raises(BoundImageError, match="must be an absolute path"):
        discover_bound_images(tmp_path)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("quay.io/%n/app", "Systemd specifiers are not supported by bound bootc images: quay.io/%n/app"),
        ("quay.io/a/app:1%", "Unterminated %"),
    ],
)
def test_specifier_errors(tmp_path: Path, value: str, fragment: str) -> None:
    unit(tmp_path, "a.image", f"[Image]\nImage={value}\n")
    with pytest.raises(BoundImageError, match=fragment) as info:
        discover_bound_images(tmp_path)
    assert "usr/lib/bootc/bound-images.d/a.image" in str(info.value)
    assert f"/{CONTAINER_DIR}/a.image" in str(info.value)


def test_specifier_in_authfile_refused(tmp_path: Path) -> None:
    unit(tmp_path, "a.image", "[Image]\nImage=quay.io/a/a\nAuthFile=/run/user/%U/auth.json\n")
    with pytest.raises(BoundImageError, match="Systemd specifiers"):
        discover_bound_images(tmp_path)


def test_double_percent_unescaped(tmp_path: Path) -> None:
    unit(tmp_path, "a.image", "[Image]\nImage=quay.io/foo/%%foo:latest\n")
    assert discover_bound_images(tmp_path)[0].image == "quay.io/foo/%foo:latest"


def test_syntax_error_names_entry(tmp_path: Path) -> None:
    unit(tmp_path, "a.image", "[Image]\nthis is not a key\n")
    with pytest.raises(BoundImageError, match=r"bound-images.d/a.image.*a.image:2: missing '='"):
        discover_bound_images(tmp_path)


def test_non_utf8_entry_name_refused(tmp_path: Path) -> None:
    unit(tmp_path, "a.image", "[Image]\nImage=quay.io/a/a\n", link=False)
    d = tmp_path / BOUND_IMAGE_DIR
    d.mkdir(parents=True)
    os.symlink(f"/{CONTAINER_DIR}/a.image".encode(), os.fsencode(d) + b"/bad\xff.image")
    with pytest.raises(BoundImageError, match=r"Invalid non-UTF8 filename: b'bad\\xff.image'"):
        discover_bound_images(tmp_path)


def test_non_utf8_target_name_is_fine(tmp_path: Path) -> None:
    target = os.fsencode(tmp_path / CONTAINER_DIR) + b"/caf\xe9.image"
    os.makedirs(tmp_path / CONTAINER_DIR)
    with open(target, "wb") as f:
        f.write(b"[Image]\nImage=quay.io/a/a:1\n")
    d = tmp_path / BOUND_IMAGE_DIR
    d.mkdir(parents=True)
    os.symlink(b"/" + CONTAINER_DIR.encode() + b"/caf\xe9.image", os.fsencode(d) + b"/cafe.image")
    (image,) = discover_bound_images(tmp_path)
    assert image.image == "quay.io/a/a:1"


def test_non_utf8_content_refused(tmp_path: Path) -> None:
    write(tmp_path, f"{CONTAINER_DIR}/a.image", b"[Image]\nImage=quay.io/a/\xff\n")
    bind(tmp_path, "a.image", f"/{CONTAINER_DIR}/a.image")
    with pytest.raises(BoundImageError, match="not valid UTF-8"):
        discover_bound_images(tmp_path)


def test_all_problems_reported_together(tmp_path: Path) -> None:
    write(tmp_path, f"{BOUND_IMAGE_DIR}/plain.image", "x")
    bind(tmp_path, "gone.container", "/nowhere.container")
    bind(tmp_path, "x.txt", "/x")
    with pytest.raises(BoundImageError) as info:
        discover_bound_images(tmp_path)
    text = str(info.value)
    assert "Not a symlink: plain.image" in text
    assert "dangling symlink gone.container -> /nowhere.container" in text
    assert "Invalid file extension: x.txt" in text


def test_link_to_directory_refused(tmp_path: Path) -> None:
    (tmp_path / "dir.image").mkdir()
    bind(tmp_path, "dir.image", "/dir.image")
    with pytest.raises(BoundImageError, match="not a regular file"):
        discover_bound_images(tmp_path)


# --- symlinks resolve inside the root


def test_absolute_target_resolves_inside_root_never_on_host(tmp_path: Path) -> None:
    host_file = tmp_path / "host.image"
    host_file.write_text("[Image]\nImage=quay.io/host/wrong\n")
    root = tmp_path / "root"
    write(root, str(host_file).lstrip("/"), "[Image]\nImage=quay.io/root/right\n")
    bind(root, "a.image", str(host_file))  # absolute path that exists on the host too
    assert discover_bound_images(root)[0].image == "quay.io/root/right"
    os.unlink(root / str(host_file).lstrip("/"))
    with pytest.raises(BoundImageError, match="dangling"):
        discover_bound_images(root)


def test_dotdot_cannot_escape_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (tmp_path / "escape.image").write_text("[Image]\nImage=quay.io/host/wrong\n")
    write(root, "escape.image", "[Image]\nImage=quay.io/root/right\n")
    bind(root, "a.image", "../../../../../../../../escape.image")
    assert discover_bound_images(root)[0].image == "quay.io/root/right"


def test_chain_of_links_inside_root(tmp_path: Path) -> None:
    write(tmp_path, "srv/real/app.container", "[Container]\nImage=quay.io/a/chain:1\n")
    os.makedirs(tmp_path / "etc")
    os.symlink("/srv/real", tmp_path / "etc/apps")  # absolute dir link
    os.symlink("../etc/apps/app.container", tmp_path / "srv/via.container")  # relative file link
    bind(tmp_path, "app.container", "/srv/via.container")
    (image,) = discover_bound_images(tmp_path)
    assert image.image == "quay.io/a/chain:1"
    assert image.source_file == "/srv/real/app.container"


def test_symlink_loop_refused(tmp_path: Path) -> None:
    os.symlink("/b.image", tmp_path / "a.image")
    os.symlink("/a.image", tmp_path / "b.image")
    bind(tmp_path, "loop.image", "/a.image")
    with pytest.raises(BoundImageError, match=r"symlink loop at loop\.image"):
        discover_bound_images(tmp_path)


def test_self_loop_refused(tmp_path: Path) -> None:
    bind(tmp_path, "self.image", "self.image")
    with pytest.raises(BoundImageError, match="symlink loop"):
        discover_bound_images(tmp_path)


def test_resolve_in_root_limits(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    prev = "f"
    for i in range(MAX_SYMLINKS):
        os.symlink(prev, tmp_path / f"l{i}")
        prev = f"l{i}"
    assert resolve_in_root(tmp_path, prev) == "f"
    os.symlink(prev, tmp_path / "one-more")
    with pytest.raises(SymlinkLoopError):
        resolve_in_root(tmp_path, "one-more")
    with pytest.raises(NotFoundInRootError):
        resolve_in_root(tmp_path, "f/child")
    assert resolve_in_root(tmp_path, "/") == ""


def test_bound_dir_reached_through_symlink(tmp_path: Path) -> None:
    write(tmp_path, "opt/units/keep.image", "[Image]\nImage=quay.io/a/linked-dir\n")
    os.makedirs(tmp_path / "opt/bound")
    os.symlink("../units/keep.image", tmp_path / "opt/bound/a.image")  # relative to the real dir
    os.makedirs(tmp_path / "usr/lib/bootc")
    os.symlink("/opt/bound", tmp_path / BOUND_IMAGE_DIR)
    (image,) = discover_bound_images(tmp_path)
    assert image.image == "quay.io/a/linked-dir"
    assert image.entry == f"{BOUND_IMAGE_DIR}/a.image"


# --- beyond bootc: drop-ins, .image references, honoured keys


def test_image_keys_honoured(tmp_path: Path) -> None:
    unit(
        tmp_path,
        "a.image",
        "[Image]\nImage=quay.io/a/a:1\nArch=aarch64\nOS=linux\nVariant=v8\nTLSVerify=false\n"
        "AuthFile=/etc/a/auth.json\nCertDir=/etc/a/certs.d\nRetry=5\nRetryDelay=1m30s\nImageTag=localhost/a:1\n",
    )
    (image,) = discover_bound_images(tmp_path)
    assert (image.arch, image.os, image.variant) == ("arm64", "linux", "v8")
    assert image.tls_verify is False
    assert image.authfile == "/etc/a/auth.json"
    assert image.cert_dir == "/etc/a/certs.d"
    assert image.retries == 5
    assert image.retry_delay == 90.0
    assert image.image_tag == "localhost/a:1"


@pytest.mark.parametrize(
    ("line", "fragment"),
    [("TLSVerify=sometimes", "invalid TLSVerify"), ("Retry=x", "invalid Retry"), ("RetryDelay=5 s", "RetryDelay")],
)
def test_invalid_option_values(tmp_path: Path, line: str, fragment: str) -> None:
    unit(tmp_path, "a.image", f"[Image]\nImage=quay.io/a/a\n{line}\n")
    with pytest.raises(BoundImageError, match=fragment):
        discover_bound_images(tmp_path)


def test_dropins_override_and_add(tmp_path: Path) -> None:
    unit(tmp_path, "web-front.image", "[Image]\nImage=quay.io/a/web:1\nArch=amd64\n")
    write(tmp_path, f"{CONTAINER_DIR}/web-front.image.d/10-tag.conf", "[Image]\nImage=quay.io/a/web:2\n")
    write(tmp_path, f"{CONTAINER_DIR}/web-front.image.d/20-retry.conf", "[Image]\nRetry=3\n")
    write(tmp_path, f"{CONTAINER_DIR}/web-front.image.d/ignored.txt", "[Image]\nImage=nope\n")
    write(tmp_path, f"{CONTAINER_DIR}/web-.image.d/05-os.conf", "[Image]\nTLSVerify=no\n")
    write(tmp_path, f"{CONTAINER_DIR}/image.d/00-all.conf", "[Image]\nCertDir=/etc/certs\n")
    (image,) = discover_bound_images(tmp_path)
    assert image.image == "quay.io/a/web:2"
    assert image.arch == "amd64"
    assert image.retries == 3
    assert image.tls_verify is False
    assert image.cert_dir == "/etc/certs"
    assert len(image.dropins) == 4


def test_dropin_order_most_specific_last(tmp_path: Path) -> None:
    unit(tmp_path, "a-b.image", "[Image]\nImage=quay.io/a/base\n")
    write(tmp_path, f"{CONTAINER_DIR}/a-b.image.d/50.conf", "[Image]\nImage=quay.io/a/specific\n")
    write(tmp_path, f"{CONTAINER_DIR}/a-.image.d/90.conf", "[Image]\nImage=quay.io/a/prefix\n")
    assert discover_bound_images(tmp_path)[0].image == "quay.io/a/specific"


def test_etc_dropin_masks_same_name(tmp_path: Path) -> None:
    unit(tmp_path, "a.image", "[Image]\nImage=quay.io/a/base\n")
    write(tmp_path, f"{CONTAINER_DIR}/a.image.d/10.conf", "[Image]\nImage=quay.io/a/usr\n")
    write(tmp_path, "etc/containers/systemd/a.image.d/10.conf", "[Image]\nImage=quay.io/a/etc\n")
    assert discover_bound_images(tmp_path)[0].image == "quay.io/a/etc"


def test_container_dropin_sets_image(tmp_path: Path) -> None:
    unit(tmp_path, "app.container", "[Container]\nExec=true\n")
    write(tmp_path, f"{CONTAINER_DIR}/app.container.d/image.conf", "[Container]\nImage=quay.io/a/fromdropin\n")
    assert discover_bound_images(tmp_path)[0].image == "quay.io/a/fromdropin"


def test_container_image_reference_resolved(tmp_path: Path) -> None:
    unit(tmp_path, "db.image", "[Image]\nImage=quay.io/a/db:15\nArch=arm64\nRetry=2\n", link=False)
    unit(tmp_path, "app.container", "[Container]\nImage=db.image\n")
    (image,) = discover_bound_images(tmp_path)
    assert image.image == "quay.io/a/db:15"
    assert image.arch == "arm64"
    assert image.retries == 2
    assert image.kind == "container"
    assert image.source_file == f"/{CONTAINER_DIR}/app.container"
    assert image.image_file == f"/{CONTAINER_DIR}/db.image"


def test_container_image_reference_in_etc_subdir(tmp_path: Path) -> None:
    write(tmp_path, "etc/containers/systemd/sub/db.image", "[Image]\nImage=quay.io/a/etcdb\n")
    write(tmp_path, "srv/app.container", "[Container]\nImage=db.image\n")
    bind(tmp_path, "app.container", "/srv/app.container")
    assert discover_bound_images(tmp_path)[0].image == "quay.io/a/etcdb"


def test_container_image_reference_missing(tmp_path: Path) -> None:
    unit(tmp_path, "app.container", "[Container]\nImage=nowhere.image\n")
    with pytest.raises(BoundImageError, match=r"Image=nowhere\.image: no such quadlet \.image unit"):
        discover_bound_images(tmp_path)


def test_container_image_reference_to_broken_image(tmp_path: Path) -> None:
    unit(tmp_path, "db.image", "[Image]\nArch=arm64\n", link=False)
    unit(tmp_path, "app.container", "[Container]\nImage=db.image\n")
    with pytest.raises(BoundImageError, match=r"Image=db.image .*db.image\): Missing Image field"):
        discover_bound_images(tmp_path)


def test_build_reference_refused(tmp_path: Path) -> None:
    unit(tmp_path, "app.container", "[Container]\nImage=app.build\n")
    with pytest.raises(BoundImageError, match=r"\.build unit cannot be bound"):
        discover_bound_images(tmp_path)


def test_same_image_bound_twice_is_one_pull(tmp_path: Path) -> None:
    unit(tmp_path, "db.image", "[Image]\nImage=quay.io/a/db:15\n")
    unit(tmp_path, "app.container", "[Container]\nImage=db.image\n")
    unit(tmp_path, "other.container", "[Container]\nImage=quay.io/a/db:15\n")
    unit(tmp_path, "arm.image", "[Image]\nImage=quay.io/a/db:15\nArch=arm64\n")
    images = discover_bound_images(tmp_path)
    assert len(images) == 4
    groups = group_bound_images(images)
    assert len(groups) == 2
    assert sorted(len(g.bindings) for g in groups) == [1, 3]


def test_quoted_and_continued_image(tmp_path: Path) -> None:
    unit(tmp_path, "a.image", '[Image]\n# comment\nImage="quay.io/a/quoted:1"\n')
    unit(tmp_path, "b.container", "[Container]\nImage=quay.io/a/first\n;Image=x\nImage=quay.io/a/last\n")
    assert [i.image for i in discover_bound_images(tmp_path)] == ["quay.io/a/quoted:1", "quay.io/a/last"]


def test_to_json_like_bootc(tmp_path: Path) -> None:
    unit(tmp_path, "a.image", "[Image]\nImage=quay.io/a/a:1\n")
    (image,) = discover_bound_images(tmp_path)
    doc = image.to_json()
    assert doc["image_type"] == "logical"
    assert doc["image"] == "quay.io/a/a:1"
    assert doc["source"] == f"/{CONTAINER_DIR}/a.image"


@pytest.mark.parametrize(
    ("text", "seconds"), [("5s", 5.0), ("1m30s", 90.0), ("100ms", 0.1), ("1h", 3600.0), ("0", 0.0), ("1.5s", 1.5)]
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "s", "5x", "1m 2s"])
def test_go_durations_invalid(text: str) -> None:
    with pytest.raises(ValueError):
        parse_go_duration(text)
