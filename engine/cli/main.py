"""The ``tether`` command: parse (:mod:`tether.engine.cli.parser`), then :func:`dispatch` to the chosen verb.

The verbs' implementations are one module each (:mod:`~tether.engine.cli.pull`, :mod:`~tether.engine.cli.images`,
:mod:`~tether.engine.cli.inspect`, :mod:`~tether.engine.cli.mirror`; ``bound`` is three by weight:
:mod:`~tether.engine.cli.bound_list`, :mod:`~tether.engine.cli.bound`, :mod:`~tether.engine.cli.bound_copy`),
imported by :func:`dispatch` only when chosen. Errors of all three packages are mapped here, at one boundary, to
one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import os
import sys
import types
from collections.abc import Callable, Sequence
from typing import NoReturn

from tether.engine.arguments import LOG_LEVELS
from tether.engine.cli import readahead
from tether.engine.cli.parser import build_parser
from tether.engine.errors import EngineError
from tether.registry.errors import RegistryError
from tether.store.errors import StoreError


def skip_httpx_cli() -> None:
    """Keep httpx from importing its command line (click, pygments, rich: 60-190 ms on this kind of VM).

    httpx/__init__.py does ``from ._main import main`` eagerly; tether never calls ``httpx.main``. A stub
    module registered before the first ``import httpx`` is found in ``sys.modules`` instead.
    """
    if "httpx" in sys.modules or "httpx._main" in sys.modules:
        return
    stub = types.ModuleType("httpx._main")

    def main(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("httpx's command line is not available inside tether")

    stub.main = main  # type: ignore[attr-defined]
    sys.modules["httpx._main"] = stub


#: What ``ctypes.util.find_library("pthread")`` answers on glibc (since 2.34 a stub, its symbols in libc.so.6).
GLIBC_PTHREAD = "libpthread.so.0"


def skip_ldconfig(util: types.ModuleType) -> None:
    """Make ``util.find_library`` (``ctypes.util``'s) answer ``pthread`` on glibc without running ``ldconfig -p``.

    trio looks up libpthread when it is imported (trio/_core/_thread_cache.py, to name its worker threads); on
    Linux ``ctypes.util.find_library`` forks and executes ``/sbin/ldconfig -p`` for that (7-13 ms with a cold
    page cache, a process for nothing: the soname is fixed on glibc, and dlopen finds a soname by itself).
    Other names, and other C libraries (musl has no ``CS_GNU_LIBC_VERSION``), go to the original.
    """
    original: Callable[[str], str | None] = util.find_library
    if getattr(original, "skips_ldconfig", False):
        return
    try:
        glibc = (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc ")
    except (ValueError, OSError):
        glibc = False

    def find_library(name: str) -> str | None:
        if glibc and name == "pthread":
            return GLIBC_PTHREAD
        return original(name)

    find_library.skips_ldconfig = True  # type: ignore[attr-defined]
    util.find_library = find_library  # type: ignore[attr-defined]


def dispatch(args: argparse.Namespace) -> int:
    """Run the verb the parser chose (``args.verb``, see :data:`tether.engine.cli.parser.VERBS`); its exit status.

    Each verb's implementation is imported here, once chosen, and nowhere else: importing them all for every
    command would make ``tether images`` (~80 ms of imports) load the copy engine, trio and httpx (~350 ms more),
    and ``--version`` or ``--help`` (~50 ms) load all of it. These are the only imports inside a function in
    tether.engine.cli.
    """
    import ctypes.util  # ~0.3 ms over what every verb loads (ctypes, shutil, subprocess); before trio

    skip_ldconfig(ctypes.util)
    match args.verb:
        case "pull":
            from tether.engine.cli.pull import run_pull

            return run_pull(args)
        case "inspect":
            from tether.engine.cli.inspect import run_inspect

            return run_inspect(args)
        case "images":
            from tether.engine.cli.images import run_images

            return run_images(args)
        case "rmi":
            from tether.engine.cli.images import run_rmi

            return run_rmi(args)
        case "check":
            from tether.engine.cli.images import run_check

            return run_check(args)
        case "bound list":
            from tether.engine.cli.bound_list import run_bound_list

            return run_bound_list(args)
        case "bound status":
            from tether.engine.cli.bound import run_bound_status

            return run_bound_status(args)
        case "bound gc":
            from tether.engine.cli.bound import run_bound_gc

            return run_bound_gc(args)
        case "bound sync":
            from tether.engine.cli.bound_copy import run_bound_sync

            return run_bound_sync(args)
        case "bound install":
            from tether.engine.cli.bound_copy import run_bound_install

            return run_bound_install(args)
        case "bound lock":
            from tether.engine.cli.bound_copy import run_bound_lock

            return run_bound_lock(args)
        case "mirror sync":
            from tether.engine.cli.mirror import run_mirror_sync

            return run_mirror_sync(args)
        case "mirror prune":
            from tether.engine.cli.mirror import run_mirror_prune

            return run_mirror_prune(args)
    raise AssertionError(f"the parser chose a verb tether.engine.cli.main.dispatch does not know: {args.verb!r}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tether`` console script: parse ``argv``, run the verb; returns the exit status."""
    skip_httpx_cli()  # before any verb's implementation imports httpx
    args = build_parser().parse_args(argv)
    if args.verb is None:  # `tether` or `tether bound`: no command to run, its choices are the answer
        args.command_parser.print_help(sys.stderr)
        return 2
    # Read ahead, while the verb's modules import, what its last run loaded (a cold page cache: an upgrade).
    listed = readahead.start(args.verb)
    level = LOG_LEVELS[getattr(args, "log_level", None) or "warning"]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # httpx/httpcore log every URL at INFO/DEBUG; registry.http logs the exchanges with secrets redacted.
    for noisy in ("httpx", "httpcore", "hpack"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        code = dispatch(args)
        readahead.record(args.verb, listed)
        return code
    except (RegistryError, StoreError, EngineError) as exc:
        print(f"tether: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return INTERRUPTED
    except BrokenPipeError:  # stdout's reader went away: run() exits as a shell tool under SIGPIPE does
        raise
    except OSError as exc:
        # What no layer turned into its own error (a directory that cannot be created, a full disk): one
        # line naming the command and the file; the traceback only when debugging.
        logging.getLogger("tether").debug("%s failed", args.verb, exc_info=True)
        print(f"tether {args.verb}: {describe_os_error(exc)}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as group:
        # trio.run re-raises a Ctrl-C that arrived while tasks ran as a group of KeyboardInterrupt (and the
        # Cancelled of the tasks it stopped): every task has then run its cleanup. As podman, exit 130 quietly.
        if _only_interrupted(group):
            return INTERRUPTED
        raise


def describe_os_error(exc: OSError) -> str:
    """``PATH: reason`` for an OSError (``reason`` alone when it names no file)."""
    reason = exc.strerror or str(exc)
    if exc.filename is not None:
        return f"{exc.filename}: {reason}"
    return reason


#: The exit status of a command stopped by SIGINT (128 + 2), as podman's and a shell's.
INTERRUPTED = 130


def _only_interrupted(group: BaseExceptionGroup[BaseException]) -> bool:
    """Whether ``group`` is a Ctrl-C and nothing else (cancellations of the tasks it stopped aside)."""
    rest = group.split(KeyboardInterrupt)[1]
    if rest is None:
        return True
    return group.subgroup(KeyboardInterrupt) is not None and all(
        type(exc).__name__ == "Cancelled" for exc in _leaves(rest))


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def run() -> NoReturn:
    """``tether`` as a program: :func:`main`, then exit without the interpreter's teardown.

    Tearing down a process that imported trio, httpx and the store (freeing every module) took ~30-50 ms,
    a tenth of a no-op pull of ten images.  Everything tether writes is closed and synced before
    :func:`main` returns; what is left (buffered output, atexit handlers: logging, the idle extraction
    workers) is flushed and run here, then ``os._exit``.
    """
    code: int
    try:
        code = main()
        sys.stdout.flush()
    except KeyboardInterrupt:  # before main's own handler (while parsing or importing)
        code = INTERRUPTED
    except SystemExit as exc:  # argparse's --help / usage errors
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
        with contextlib.suppress(OSError, ValueError):  # --help/--version on a pipe: os._exit skips the flush
            sys.stdout.flush()
    except BrokenPipeError:  # ``tether images | head``: the reader is gone, like a shell tool under SIGPIPE
        code = 128 + 13
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    atexit._run_exitfuncs()
    os._exit(code)


if __name__ == "__main__":
    run()
