"""Issue 14 item 2: a command reads ahead, while it imports, the files its last run loaded (engine/cli/readahead.py).

What is checked: the list a run writes (its modules' sources and bytecode, its shared objects; the user's
alone), when it is rewritten, when a list is not trusted, and what the read-ahead asks the kernel for (small
regular files; never a source's content, a large shared object, a FIFO or a missing file)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.harness.cli import tether
from tether.engine.cli import readahead


def test_a_command_records_the_files_it_loaded(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    done = tether("images", "--root", str(tmp_path / "root"), "--runroot", str(tmp_path / "run"),
                  "--storage-driver", "vfs", env={**os.environ, "XDG_CACHE_HOME": str(cache)})
    assert done.returncode == 0, done.stderr
    listed = cache / "tether" / "readahead-images"
    assert listed.stat().st_mode & 0o777 == 0o600
    names = listed.read_text().splitlines()
    assert any(name.endswith("/engine/cli/images.py") for name in names), names[:20]
    assert any(".so" in name for name in names)  # the shared objects it mapped
    assert names == sorted(names) and all(name.startswith("/") for name in names)


def test_the_list_is_rewritten_only_for_files_it_lacks(tmp_path: Path) -> None:
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    path = readahead.list_path("pull", env)
    readahead.record("pull", [], env)
    first = path.read_text().splitlines()
    spec = readahead.__spec__
    assert readahead.read_list(path) == first and spec is not None and spec.origin in first
    inode = path.stat().st_ino  # a rewrite replaces the file (a new inode)
    readahead.record("pull", [*first, "/usr/lib/extra.so"], env)  # loaded less than listed: kept as it is
    assert path.stat().st_ino == inode
    readahead.record("pull", first[1:], env)  # the list lacks a file this run loaded: rewritten
    assert path.stat().st_ino != inode and set(first) <= set(path.read_text().splitlines())


@pytest.mark.parametrize("foreign", ["group-writable", "world-writable", "another user's", "a symlink"])
def test_a_list_that_is_not_this_users_alone_is_ignored(tmp_path: Path, foreign: str) -> None:
    path = tmp_path / "readahead-pull"
    path.write_text("/usr/lib/os-release\n")
    path.chmod(0o600)
    assert readahead.read_list(path) == ["/usr/lib/os-release"]
    if foreign == "group-writable":
        path.chmod(0o620)
    elif foreign == "world-writable":
        path.chmod(0o602)
    elif foreign == "another user's":
        os.chown(path, 65534, 65534)  # the suite runs as root (podman, ostree)
    else:
        target = tmp_path / "elsewhere"
        path.rename(target)
        path.symlink_to(target)
    assert readahead.read_list(path) == []


def test_read_ahead_asks_for_small_regular_files_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    small = tmp_path / "module.cpython-311.pyc"
    small.write_bytes(b"x" * 4096)
    source = tmp_path / "module.py"
    source.write_text("pass\n")
    large = tmp_path / "libbig.so.1"
    with open(large, "wb") as out:
        out.truncate(readahead.MAX_FILE_BYTES + 1)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    advised: list[str] = []
    real = os.posix_fadvise

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        advised.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    # a FIFO is opened without blocking and skipped, as are a missing file, a large one and the source's content
    readahead.read_ahead([str(p) for p in (source, fifo, tmp_path / "missing", large, small)])
    assert advised == [str(small)]
