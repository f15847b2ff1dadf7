"""Run a command on a pseudo-terminal, type keys when its screen shows given text, and read what it drew."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import termios
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]")


@dataclass(frozen=True)
class TerminalRun:
    """What the command wrote to its terminal (raw bytes, escapes included) and its exit status."""

    output: bytes
    status: int

    def text(self) -> str:
        """The output without escape sequences and carriage returns."""
        return ANSI.sub(b"", self.output).replace(b"\r", b"").decode("utf-8", "replace")


def run_on_terminal(argv: Sequence[str], keys: Sequence[tuple[bytes, bytes]], *, env: Mapping[str, str],
                    columns: int = 80, rows: int = 24, timeout: float = 120) -> TerminalRun:
    """Run ``argv`` with stdin, stdout and stderr on a new terminal (its controlling terminal, so that Ctrl-C
    typed there interrupts it); for each ``(wait_for, send)``, once ``wait_for`` has appeared in the output since
    the previous key, type ``send``. Fails when the output does not show what is waited for within ``timeout``.
    """
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once (nothing of the test process runs here)
        try:
            # as a terminal's foreground job has it, whatever the test runner inherited (see cli.default_sigint)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.execvpe(argv[0], list(argv), dict(env))
        finally:
            os._exit(127)
    output = bytearray()
    try:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        pending = list(keys)
        seen_from = 0
        deadline = time.monotonic() + timeout
        while True:
            if pending and pending[0][0] in output[seen_from:]:
                seen_from = len(output)
                os.write(fd, pending.pop(0)[1])
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                os.kill(pid, 9)
                raise AssertionError(f"{argv[:3]}: waited {timeout}s for {pending[:1]}; screen: {bytes(output)!r}")
            ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
            if not ready:
                continue
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: every process holding the terminal is gone
                break
            if not data:
                break
            output += data
        assert not pending, f"{argv[:3]} ended before showing {pending[0][0]!r}: {bytes(output)!r}"
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    return TerminalRun(bytes(output), os.waitstatus_to_exitcode(status))
