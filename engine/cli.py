"""The ``tether`` command line.

Subcommands are grouped as podman users expect (``pull``, ``images``, ``inspect``, ``rmi``,
``check``, ``bound ...``, ``mirror ...``); common options are spelled as podman/skopeo spell them.
Each subcommand module registers itself through :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from engine import __version__


def build_parser() -> argparse.ArgumentParser:
    """Build the full argument parser (every subcommand)."""
    parser = argparse.ArgumentParser(
        prog="tether",
        description="Pull the images a bootc host binds into containers-storage, fast and never half-done.",
    )
    parser.add_argument("--version", action="version", version=f"tether {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``tether`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
