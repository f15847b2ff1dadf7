"""Recording a prompt's choice in the short-name-aliases.conf cache (containers/image ``AddShortNameAlias``)."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import tomllib
from multiprocessing.synchronize import Event
from pathlib import Path

import pytest

from tether.registry.errors import ConfigError
from tether.registry.reference import parse_reference
from tether.registry.registries_conf import load_registries_conf, record_short_name_alias, resolve_short_name


def test_a_recorded_alias_keeps_the_others_and_answers_the_next_resolution(tmp_path: Path) -> None:
    cache = tmp_path / "new" / "dir" / "short-name-aliases.conf"
    record_short_name_alias(cache, "app", parse_reference("quay.io/org/app:1"))
    pinned = parse_reference("registry.example.com:5000/team/tool@sha256:" + "a" * 64)
    record_short_name_alias(cache, "team/tool", pinned)
    record_short_name_alias(cache, "app", parse_reference("docker.io/library/app"))
    assert tomllib.loads(cache.read_text()) == {"aliases": {"app": "docker.io/library/app",
                                                            "team/tool": "registry.example.com:5000/team/tool"}}
    assert cache.parent.stat().st_mode & 0o777 == 0o700
    assert Path(f"{cache}.lock").exists()
    conf_file = tmp_path / "registries.conf"
    conf_file.write_text('unqualified-search-registries = ["a.example", "b.example"]\nshort-name-mode = "enforcing"\n')
    conf = load_registries_conf(path=conf_file, environ={}, dropin_dir=tmp_path / "none", aliases_path=cache)
    assert [str(r) for r in resolve_short_name(conf, "team/tool:2", tty=False)] == [
        "registry.example.com:5000/team/tool:2"]


@pytest.mark.parametrize("name", ["quay.io/app", "app:1", "App"])
def test_a_name_that_is_not_a_short_name_is_refused(tmp_path: Path, name: str) -> None:
    cache = tmp_path / "short-name-aliases.conf"
    with pytest.raises(ConfigError, match=str(cache)):
        record_short_name_alias(cache, name, parse_reference("quay.io/org/app"))
    assert not cache.exists()


def test_a_corrupt_cache_is_reported_and_left_as_it_is(tmp_path: Path) -> None:
    cache = tmp_path / "short-name-aliases.conf"
    cache.write_text('[aliases]\n  "app" = "not-qualified"\n')
    with pytest.raises(ConfigError, match="not-qualified"):
        record_short_name_alias(cache, "other", parse_reference("quay.io/org/other"))
    assert cache.read_text() == '[aliases]\n  "app" = "not-qualified"\n'


def _hold_lock(path: str, ready: Event, release: Event) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    ready.set()
    release.wait(30)


def test_a_writer_waits_for_the_lock_another_process_holds(tmp_path: Path) -> None:
    cache = tmp_path / "short-name-aliases.conf"
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(f"{cache}.lock", ready, release))
    holder.start()
    try:
        assert ready.wait(30)
        writer = ctx.Process(target=record_short_name_alias, args=(cache, "app", parse_reference("quay.io/org/app")))
        writer.start()
        writer.join(1.0)
        assert writer.is_alive() and not cache.exists()  # blocked on the holder's lock
        release.set()
        writer.join(30)
        assert writer.exitcode == 0
        assert tomllib.loads(cache.read_text()) == {"aliases": {"app": "quay.io/org/app"}}
    finally:
        release.set()
        holder.join(30)
