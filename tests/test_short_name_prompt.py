"""The short-name prompt on a terminal: ``tether pull SHORTNAME`` driven through a pty, beside podman's own."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.harness import images as factory
from tests.harness.cli import tether_argv
from tests.harness.podman import Podman
from tests.harness.registry import RunningRegistry
from tests.harness.terminal import ANSI, run_on_terminal
from tether.store.containers_storage import Store

DOWN, ENTER, CTRL_C = b"\x1b[B", b"\r", b"\x03"
PROMPT = b"Please select an image: "


def write_conf(path: Path, registries: list[str], mode: str = "enforcing") -> Path:
    quoted = ", ".join(f'"{r}"' for r in registries)
    body = f'unqualified-search-registries = [{quoted}]\nshort-name-mode = "{mode}"\n'
    for r in registries:
        body += f'[[registry]]\nlocation = "{r}"\ninsecure = true\n'
    path.write_text(body)
    return path


def tether_pull(tmp: Path, conf: Path, *names: str) -> list[str]:
    auth = tmp / "auth.json"
    auth.write_text('{"auths": {}}')
    return tether_argv("pull", "--root", str(tmp / "store"), "--runroot", str(tmp / "run"), "--storage-driver",
                       "vfs", "--registries-conf", str(conf), "--authfile", str(auth), "--tls-verify=false",
                       "--short-name-alias-conf", str(tmp / "cache" / "short-name-aliases.conf"), *names, home=tmp)


def environment(tmp: Path) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp), "TERM": "xterm",
            "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


@pytest.mark.parametrize("columns", [80, 40])
def test_pull_of_a_short_name_on_a_terminal_asks_which_image_and_pulls_the_choice(
        tmp_path: Path, registry: RunningRegistry, columns: int) -> None:
    image = factory.simple_image(1501)
    factory.push_image(registry.host, "prompt15/app:1", image)
    # Two search registries that are one server under two names: the store's name says which one was chosen.
    other = f"localhost:{registry.port}"
    conf = write_conf(tmp_path / "registries.conf", [registry.host, other])
    run = run_on_terminal(tether_pull(tmp_path, conf, "prompt15/app:1"),
                          [(PROMPT, DOWN), (f"\x1b[4m{other}".encode(), ENTER)], env=environment(tmp_path),
                          columns=columns)
    screen = run.text()
    assert run.status == 0, screen
    # nothing written runs past the right margin (wraps): every run of characters between line breaks, carriage
    # returns and cursor moves fits, but the image id printed on stdout at the end
    runs = [ANSI.sub(b"", run).decode() for run in re.split(rb"\r|\n|\x1b\[[0-9;]*[ABCDGHJK]", run.output)]
    assert {r for r in runs if len(r) > columns} <= {image.image_id}
    assert "? Please select an image: \n" in screen
    assert f"  ▸ {registry.host}/prompt15/app:1\n    {other}/prompt15/app:1\n" in screen  # the first frame
    assert f"✔ {other}/prompt15/app:1\n" in screen
    # then the live display (stderr is the terminal too), its last frame, and the id on stdout
    assert f"{other}/prompt15/app:1  done {image.image_id[:12]}" in screen or columns < 60
    assert "Total 1/1 images" in screen
    assert image.image_id in screen
    store = Store.open(tmp_path / "store", runroot=tmp_path / "run", driver="vfs")
    assert store.find_image(f"{other}/prompt15/app:1").id == image.image_id
    with pytest.raises(Exception, match="prompt15"):
        store.find_image(f"{registry.host}/prompt15/app:1")
    # the choice is recorded as podman records it: the short name without its tag, the repository without
    cache = tmp_path / "cache" / "short-name-aliases.conf"
    assert tomllib.loads(cache.read_text()) == {"aliases": {"prompt15/app": f"{other}/prompt15/app"}}
    assert cache.stat().st_mode & 0o777 == 0o600


def test_a_chosen_short_name_is_asked_once_and_buildah_reads_the_choice(
        tmp_path: Path, registry: RunningRegistry) -> None:
    image = factory.simple_image(1502)
    factory.push_image(registry.host, "prompt15/once:1", image)
    factory.push_image(registry.host, "prompt15/once:2", factory.simple_image(1503))
    other = f"localhost:{registry.port}"
    conf = write_conf(tmp_path / "registries.conf", [registry.host, other])
    cache = tmp_path / "cache" / "short-name-aliases.conf"
    cache.parent.mkdir()
    cache.write_text('[aliases]\n  "kept" = "quay.io/kept/app"\n')
    first = run_on_terminal(tether_pull(tmp_path, conf, "prompt15/once:1"),
                            [(PROMPT, DOWN), (f"\x1b[4m{other}".encode(), ENTER)], env=environment(tmp_path))
    assert first.status == 0, first.text()
    assert tomllib.loads(cache.read_text())["aliases"] == {"kept": "quay.io/kept/app",
                                                          "prompt15/once": f"{other}/prompt15/once"}
    # another tag of the same name, on a terminal: no prompt, the alias answers
    second = run_on_terminal(tether_pull(tmp_path, conf, "prompt15/once:2"), [], env=environment(tmp_path))
    assert second.status == 0, second.text()
    assert b"Please select" not in second.output
    store = Store.open(tmp_path / "store", runroot=tmp_path / "run", driver="vfs")
    assert store.find_image(f"{other}/prompt15/once:2")
    # buildah (containers/image) reads the file tether wrote: off a terminal, enforcing mode, it resolves the
    # short name through the alias instead of refusing to guess
    buildah = subprocess.run(["buildah", "--root", str(tmp_path / "b-store"), "--runroot", str(tmp_path / "b-run"),
                              "--storage-driver", "vfs", "--registries-conf", str(conf), "--short-name-alias-conf",
                              str(cache), "pull", "-q", "--tls-verify=false", "prompt15/once:1"],
                             capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                             env=environment(tmp_path))
    assert buildah.returncode == 0, buildah.stderr
    assert buildah.stdout.strip().endswith(image.image_id)


def test_a_failed_pull_records_no_alias_and_an_unwritable_cache_only_warns(
        tmp_path: Path, registry: RunningRegistry) -> None:
    other = f"localhost:{registry.port}"
    conf = write_conf(tmp_path / "registries.conf", [registry.host, other])
    cache = tmp_path / "cache" / "short-name-aliases.conf"
    # the chosen repository does not exist: the pull fails and nothing is recorded
    missing = run_on_terminal(tether_pull(tmp_path, conf, "prompt15/absent:1"),
                              [(PROMPT, DOWN), (f"\x1b[4m{other}".encode(), ENTER)], env=environment(tmp_path))
    assert missing.status == 1, missing.text()
    assert not cache.exists()
    # a cache that cannot be written (its lock is a directory): the pull succeeds, a warning names the file, the
    # cache is left as it was (podman logs the error and keeps the image)
    factory.push_image(registry.host, "prompt15/warn:1", factory.simple_image(1504))
    cache.parent.mkdir(exist_ok=True)
    cache.write_text('[aliases]\n  "kept" = "quay.io/kept/app"\n')
    Path(f"{cache}.lock").mkdir()
    run = run_on_terminal(tether_pull(tmp_path, conf, "prompt15/warn:1"),
                          [(PROMPT, DOWN), (f"\x1b[4m{other}".encode(), ENTER)], env=environment(tmp_path))
    assert run.status == 0, run.text()
    assert f"tether: warning: {cache}: recording short-name alias 'prompt15/warn'" in run.text().replace("\r\n", "")
    assert cache.read_text() == '[aliases]\n  "kept" = "quay.io/kept/app"\n'


def test_ctrl_c_at_the_prompt_ends_the_pull_and_restores_the_terminal(tmp_path: Path) -> None:
    conf = write_conf(tmp_path / "registries.conf", ["127.0.0.1:1", "localhost:1"])
    run = run_on_terminal(tether_pull(tmp_path, conf, "prompt15/app:1"), [(PROMPT, CTRL_C)],
                          env=environment(tmp_path))
    assert run.status == 130, run.text()
    assert run.output.endswith(b"\x1b[?25h") or b"\x1b[?25h" in run.output  # the cursor is shown again
    assert "Traceback" not in run.text()


def test_off_a_terminal_enforcing_mode_refuses_to_guess(tmp_path: Path) -> None:
    conf = write_conf(tmp_path / "registries.conf", ["127.0.0.1:1", "localhost:1"])
    proc = subprocess.run(tether_pull(tmp_path, conf, "prompt15/app:1"), capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, env=environment(tmp_path), timeout=120)
    assert proc.returncode == 1
    assert "cannot prompt without a TTY" in proc.stderr
    assert "Please select" not in proc.stdout + proc.stderr


@pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed")
def test_the_prompt_is_the_one_podman_shows(tmp_path: Path, podman: Podman) -> None:
    # Ctrl-C at the prompt: podman records no alias and neither contacts a registry (port 1 is closed anyway).
    conf = write_conf(tmp_path / "registries.conf", ["127.0.0.1:1", "localhost:1", "quay.io"])
    env = environment(tmp_path)
    keys = [(PROMPT, DOWN), (b"\x1b[4mlocalhost", CTRL_C)]
    theirs = run_on_terminal([*podman.base(), "pull", "prompt15/app:1"], keys,
                             env={**env, "CONTAINERS_REGISTRIES_CONF": str(conf)})
    ours = run_on_terminal(tether_pull(tmp_path, conf, "prompt15/app:1"),
                           [(PROMPT, DOWN), (b"\x1b[4mlocalhost", CTRL_C)], env=env)
    assert theirs.status != 0 and ours.status == 130

    def first_frame(output: bytes) -> bytes:
        start = output.index(b"\x1b[34m?")
        return output[start:output.index(b"quay.io/prompt15/app:1", start) + len(b"quay.io/prompt15/app:1")]

    def clean(frame: bytes) -> list[bytes]:
        # the same characters and attributes (blue ?, bold ▸, underlined choice); line-erasing codes differ
        return [line.replace(b"\x1b[2K", b"").replace(b"\x1b[J", b"").lstrip(b"\r")
                for line in frame.split(b"\r\n")]

    assert clean(first_frame(ours.output)) == clean(first_frame(theirs.output)) == [
        b"\x1b[34m?\x1b[0m Please select an image: ",
        b"  \x1b[1m\xe2\x96\xb8\x1b[0m \x1b[4m127.0.0.1:1/prompt15/app:1\x1b[0m",
        b"    localhost:1/prompt15/app:1",
        b"    quay.io/prompt15/app:1",
    ]
