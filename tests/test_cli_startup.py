"""Start-up cost of the CLI: every command skips httpx's own command line (click, pygments, rich)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.harness import images as factory
from tests.harness.cli import StoreArgs, tether
from tests.harness.registry import RunningRegistry


def test_every_command_skips_the_httpx_command_line() -> None:
    # `tether images` on an empty store goes through tether.engine.cli.main.main; httpx imported afterwards (as any
    # command reaching a registry does) must not load its command line.
    code = (
        "import sys, tempfile\n"
        "from tether.engine.cli.main import main\n"
        "d = tempfile.mkdtemp()\n"
        "rc = main(['images', '--root', d, '--runroot', d + '/run', '--storage-driver', 'vfs'])\n"
        "import httpx\n"  # as any command's registry access would, after main() ran its set-up
        "print(rc, 'click' in sys.modules, 'pygments' in sys.modules, callable(httpx.AsyncClient))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1].split()[1:] == ["False", "False", "True"], out


def test_the_parser_and_the_store_commands_load_no_engine_they_do_not_use() -> None:
    # main.dispatch imports only the chosen verb: parsing (--help, usage errors) loads no engine, registry client or
    # store, and `tether images` (the store only) neither trio, httpx nor tether.registry's configuration readers.
    code = (
        "import sys, tempfile\n"
        "from tether.engine.cli.main import main\n"
        "from tether.engine.cli.parser import build_parser\n"
        "engine = ('trio', 'httpx', 'tether.engine.copy', 'tether.engine.bound', 'tether.engine.options',\n"
        "          'tether.registry.auth', 'tether.registry.manifest')\n"
        "store = ('dataclasses', 'tether.store.containers_storage')\n"
        "build_parser().parse_args(['pull', 'docker://example.com/a'])\n"
        "print('parsed:', sorted(m for m in engine + store if m in sys.modules))\n"
        "d = tempfile.mkdtemp()\n"
        "rc = main(['images', '--root', d, '--runroot', d + '/run', '--storage-driver', 'vfs'])\n"
        "print('images:', rc, sorted(m for m in engine if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert "parsed: []" in lines and "images: 0 []" in lines, out


def _tether(*args: str, stdout: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tether", *args], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, timeout=60)


def test_the_program_exits_with_main_s_status_and_flushed_output(tmp_path: Path) -> None:
    # run() skips the interpreter's teardown (os._exit): output must still be complete, statuses kept.
    done = _tether("--version")
    assert (done.returncode, done.stdout) == (0, "tether 0.1.0\n")
    usage = _tether("pull")
    assert usage.returncode == 2 and "the following arguments are required" in usage.stderr
    root = tmp_path / "root"
    listed = _tether("images", "--root", str(root), "--runroot", str(tmp_path / "run"), "--storage-driver", "vfs")
    assert listed.returncode == 0 and listed.stdout.startswith("REPOSITORY")
    failed = _tether("rmi", "--root", str(root), "--runroot", str(tmp_path / "run"), "--storage-driver", "vfs",
                     "no/such:image")
    assert failed.returncode == 1 and failed.stderr.startswith("tether: "), failed.stderr


def test_a_closed_output_pipe_ends_the_program_quietly(tmp_path: Path) -> None:
    # `tether images | head -0`: the reader went away; no traceback, the status a shell tool gets from SIGPIPE
    reader, writer = os.pipe()
    os.close(reader)
    try:
        done = _tether("images", "--root", str(tmp_path / "root"), "--runroot", str(tmp_path / "run"),
                       "--storage-driver", "vfs", stdout=writer)
    finally:
        os.close(writer)
    assert done.returncode == 141 and "Traceback" not in done.stderr, done.stderr


def test_importing_trio_after_dispatch_runs_no_ldconfig() -> None:
    # trio's import asks ctypes.util.find_library("pthread"), which on Linux runs `/sbin/ldconfig -p`: a process
    # on every command. Once main() dispatched, the answer comes without one, and trio still names its threads.
    code = (
        "import sys, tempfile\n"
        "from tether.engine.cli.main import main\n"
        "d = tempfile.mkdtemp()\n"
        "main(['images', '--root', d, '--runroot', d + '/run', '--storage-driver', 'vfs'])\n"
        "spawned = []\n"
        "sys.addaudithook(lambda event, args: spawned.append(args) if event == 'subprocess.Popen' else None)\n"
        "import trio\n"
        "naming = sys.modules['trio._core._thread_cache'].set_os_thread_name is not None\n"
        "print(spawned, naming)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[] True", out


def test_a_pull_of_stored_images_loads_no_layer_writer_layout_or_signature_reader(
        tmp_path: Path, registry: RunningRegistry) -> None:
    # issue 14: what a no-op pull does not need is not imported (each is loaded where it is first used)
    factory.push_image(registry.host, "startup/noop:1", factory.simple_image(1470))
    args = StoreArgs.make(tmp_path, registry.host)
    pull = ["pull", *args.pull, "--progress", "none", "--quiet", f"{registry.host}/startup/noop:1"]
    assert tether(*pull).returncode == 0
    heavy = ("yaml", "tether.registry.trust.fetch", "tether.registry.trust.registries_d",
             "tether.engine.copy.sources.layout", "tether.store.oci", "tether.store.tar.workers",
             "tether.store.tar.apply")
    code = (
        "import sys\n"
        "from tether.engine.cli.main import main\n"
        f"rc = main({pull!r})\n"
        f"print(rc, sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "0 []", out
