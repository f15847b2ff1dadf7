"""The ``tether`` command line.

Subcommands are grouped as podman users expect (``pull``, ``images``, ``inspect``, ``rmi``,
``check``, ``bound ...``, ``mirror ...``); common options are spelled as podman/skopeo spell them.
Each command module in :data:`COMMAND_MODULES` exposes ``register(subparsers)`` and sets
``func`` on its subparsers.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import logging
import os
import sys
import types
from collections.abc import Callable, Sequence
from typing import NoReturn, cast

from tether import __version__
from tether.engine.errors import EngineError
from tether.registry.errors import RegistryError
from tether.store.errors import StoreError

COMMAND_MODULES = (
    "tether.engine.cli.pull",  # pull
    "tether.engine.cli.inspect",  # inspect
    "tether.engine.cli.images",  # images, rmi, check
    "tether.engine.cli.bound",  # bound list/sync/status/gc/install
    "tether.engine.cli.mirror",  # mirror sync/prune
)


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


def build_parser() -> argparse.ArgumentParser:
    """Build the full argument parser (every subcommand)."""
    parser = argparse.ArgumentParser(
        prog="tether",
        description="Pull the images a bootc host binds into containers-storage, fast and never half-done.",
    )
    parser.add_argument("--version", action="version", version=f"tether {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # pragma: no cover - only while a module is being written
            if exc.name != name:
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tether`` console script."""
    skip_httpx_cli()  # before any command imports httpx
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    level = getattr(args, "log_level", None) or "warning"
    logging.basicConfig(level=level.upper(), format="%(levelname)s %(name)s: %(message)s")
    # httpx/httpcore log every URL at INFO/DEBUG; registry.http logs the exchanges with secrets redacted.
    for noisy in ("httpx", "httpcore", "hpack"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return cast(Callable[[argparse.Namespace], int], func)(args)
    except (RegistryError, StoreError, EngineError) as exc:
        print(f"tether: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tether: interrupted", file=sys.stderr)
        return 130


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
    except SystemExit as exc:  # argparse's --help / usage errors
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        if exc.code is not None and not isinstance(exc.code, int):
            print(exc.code, file=sys.stderr)
    except BrokenPipeError:  # ``tether images | head``: the reader is gone, like a shell tool under SIGPIPE
        code = 128 + 13
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    atexit._run_exitfuncs()
    os._exit(code)


if __name__ == "__main__":
    run()
