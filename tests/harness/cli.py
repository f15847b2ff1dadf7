"""Run the ``tether`` program as a user does (``python -m tether``), against throwaway stores and registries."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


def tether(*args: str, timeout: float = 120, env: Mapping[str, str] | None = None,
           stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    """``tether ARGS`` to completion; stdout and stderr captured apart."""
    return subprocess.run([sys.executable, "-m", "tether", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=None if env is None else dict(env), stdin=stdin)


def default_sigint() -> None:
    """In a child before exec: SIGINT back to its default. A shell starts background jobs (a CI runner's, or
    ``nohup ... &``) with SIGINT ignored, the children inherit that, and Python then installs no
    KeyboardInterrupt handler: a test of Ctrl-C must give tether what a terminal's foreground job has."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def popen_tether(*args: str, new_session: bool = True) -> subprocess.Popen[str]:
    """``tether ARGS`` started in a session of its own (a terminal's Ctrl-C reaches its whole process group), with
    SIGINT at its default (:func:`default_sigint`)."""
    return subprocess.Popen([sys.executable, "-m", "tether", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO, start_new_session=new_session, stdin=subprocess.DEVNULL,
                            preexec_fn=default_sigint)


@dataclass(frozen=True)
class StoreArgs:
    """A throwaway store and the registries.conf that marks the test registries insecure (plain HTTP)."""

    root: Path
    runroot: Path
    registries_conf: Path

    @classmethod
    def make(cls, tmp: Path, *hosts: str, driver_root: str = "store") -> StoreArgs:
        tmp.mkdir(parents=True, exist_ok=True)
        conf = tmp / "registries.conf"
        conf.write_text("".join(f'[[registry]]\nlocation = "{host}"\ninsecure = true\n' for host in hosts))
        return cls(root=tmp / driver_root, runroot=tmp / "run", registries_conf=conf)

    @property
    def store(self) -> list[str]:
        """``--root``, ``--runroot``: the store options of every store command."""
        return ["--root", str(self.root), "--runroot", str(self.runroot)]

    @property
    def pull(self) -> list[str]:
        """The store and the registries.conf, with an empty auth file (the host's never leaks in)."""
        auth = self.runroot.parent / "auth.json"
        if not auth.exists():
            auth.write_text('{"auths": {}}')
        return [*self.store, "--registries-conf", str(self.registries_conf), "--authfile", str(auth)]
