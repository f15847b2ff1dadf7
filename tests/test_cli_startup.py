"""Start-up cost of the CLI: every command skips httpx's own command line (click, pygments, rich)."""

from __future__ import annotations

import subprocess
import sys


def test_every_command_skips_the_httpx_command_line() -> None:
    # `tether images` on an empty store goes through engine.cli.main; httpx imported afterwards (as any
    # command reaching a registry does) must not load its command line.
    code = (
        "import sys, tempfile\n"
        "from engine.cli import main\n"
        "d = tempfile.mkdtemp()\n"
        "rc = main(['images', '--root', d, '--runroot', d + '/run', '--storage-driver', 'vfs'])\n"
        "import httpx\n"  # as any command's registry access would, after main() ran its set-up
        "print(rc, 'click' in sys.modules, 'pygments' in sys.modules, callable(httpx.AsyncClient))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1].split()[1:] == ["False", "False", "True"], out
