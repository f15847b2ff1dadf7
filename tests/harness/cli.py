"""Run the ``tether`` program as a user does (``python -m tether``), against throwaway stores and registries.

Every command line here goes through :func:`tether_argv`, which keeps the child away from the host's container
configuration as the ``hermetic`` fixture keeps in-process runs away from it (tests/test_hermetic_subprocess.py
traces the children to prove it): the environment already relocates ``$HOME``, ``$XDG_RUNTIME_DIR`` and
``$CONTAINERS_REGISTRIES_CONF``; the files only an option relocates get the option, as buildah and skopeo
spell it.
"""

from __future__ import annotations

import atexit
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent

_VERBS = ("pull", "inspect", "images", "rmi", "check", "bound", "mirror")
#: Verbs that read the signature policy and certs.d (``--signature-policy``, ``--cert-dir``).
_REGISTRY_VERBS = (("pull",), ("inspect",), ("bound", "sync"), ("bound", "install"), ("mirror", "sync"))
#: Verbs that look credentials up as bootc does (SYSROOT's /run, /etc, /usr/lib ostree/auth.json).
_BOOTC_AUTH_VERBS = (("bound", "sync"), ("bound", "install"))


def _verb_end(args: Sequence[str]) -> tuple[tuple[str, ...], int]:
    """The verb's words and the index after them (global options may come first); ``((), 0)`` if none."""
    for index, arg in enumerate(args):
        if arg in _VERBS:
            if arg in ("bound", "mirror") and index + 1 < len(args):
                return (arg, args[index + 1]), index + 2
            return (arg,), index + 1
    return (), 0


_EMPTY_CONFIG: Path | None = None
_REAL_HOME = Path(pwd.getpwuid(os.getuid()).pw_dir)


def _empty_config() -> Path:
    """This process's stand-in for the host's configuration: an accept-anything policy, an empty bootc auth
    file, and no drop-ins, aliases, registries.d or certs.d (made once, removed at exit)."""
    global _EMPTY_CONFIG
    if _EMPTY_CONFIG is None:
        made = Path(tempfile.mkdtemp(prefix="tether-tests-config-"))
        (made / "policy.json").write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
        (made / "auth.json").write_text('{"auths": {}}')
        atexit.register(shutil.rmtree, made, True)
        _EMPTY_CONFIG = made
    return _EMPTY_CONFIG


def hermetic_options(args: Sequence[str], *, home: Path) -> tuple[list[str], list[str]]:
    """``(before the verb, after it)``: the options that keep ``tether ARGS`` off the host's configuration.

    Before: ``--registries-conf-dir`` (else /etc/containers/registries.conf.d is read next to
    ``$CONTAINERS_REGISTRIES_CONF``), ``--short-name-alias-conf`` (root reads /var/cache/containers/...),
    ``--registries.d`` unless a test's home has its own (``~/.config/containers/registries.d`` replaces /etc's).
    After a verb that reaches registries: ``--signature-policy`` unless a test's home has a user policy,
    ``--cert-dir``, and for bootc's lookup ``--authfile`` (bootc reads /etc/ostree/auth.json...) unless the
    arguments name credentials or a sysroot. Options the arguments give themselves are left to them. ``home``
    is the child's ``$HOME``: the real one in a module-scoped fixture (which runs outside ``hermetic``), whose
    files are never relied on."""
    given = {arg.split("=", 1)[0] for arg in args}
    empty = _empty_config()
    own_home = home != _REAL_HOME
    before = ["--registries-conf-dir", str(empty / "registries.conf.d")]
    if "--short-name-alias-conf" not in given:  # a test of the prompt writes its own
        before += ["--short-name-alias-conf", str(empty / "short-name-aliases.conf")]
    if "--registries.d" not in given and not (own_home and (home / ".config/containers/registries.d").exists()):
        before += ["--registries.d", str(empty / "registries.d")]
    verb, _ = _verb_end(args)
    after: list[str] = []
    if verb in _REGISTRY_VERBS:
        if "--signature-policy" not in given and not (own_home and
                                                      (home / ".config/containers/policy.json").exists()):
            after += ["--signature-policy", str(empty / "policy.json")]
        if "--cert-dir" not in given:
            after += ["--cert-dir", str(empty / "certs.d")]
    if verb in _BOOTC_AUTH_VERBS and not given & {"--authfile", "--sysroot"}:
        after += ["--authfile", str(empty / "auth.json")]
    return before, after


def tether_argv(*args: str, home: Path | None = None) -> list[str]:
    """The command line of ``tether ARGS`` with :func:`hermetic_options` (``home``: default ``$HOME``, the
    ``hermetic`` fixture's)."""
    before, after = hermetic_options(args, home=home if home is not None else Path(os.environ["HOME"]))
    _, end = _verb_end(args)
    # options after "--" would be operands
    after_at = args.index("--", end) if "--" in args[end:] else len(args)
    return [sys.executable, "-m", "tether", *before, *args[:after_at], *after, *args[after_at:]]


def tether(*args: str, timeout: float = 120, env: Mapping[str, str] | None = None,
           stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    """``tether ARGS`` to completion; stdout and stderr captured apart."""
    home = Path(env["HOME"]) if env is not None and "HOME" in env else None
    return subprocess.run(tether_argv(*args, home=home), capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=None if env is None else dict(env), stdin=stdin)


def default_sigint() -> None:
    """In a child before exec: SIGINT back to its default. A shell starts background jobs (a CI runner's, or
    ``nohup ... &``) with SIGINT ignored, the children inherit that, and Python then installs no
    KeyboardInterrupt handler: a test of Ctrl-C must give tether what a terminal's foreground job has."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def popen_tether(*args: str, new_session: bool = True) -> subprocess.Popen[str]:
    """``tether ARGS`` started in a session of its own (a terminal's Ctrl-C reaches its whole process group), with
    SIGINT at its default (:func:`default_sigint`)."""
    return subprocess.Popen(tether_argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
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
