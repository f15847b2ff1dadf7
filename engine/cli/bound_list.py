"""``tether bound list``: the images a deployment root binds, as ``bootc image list --type logical`` lists them
(bootc crates/lib/src/image.rs ``list_entrypoint``: a REPOSITORY and TYPE table, JSON ``{"image_type": "logical",
"image": ...}``).

Apart from :mod:`tether.engine.cli.bound` because it reads usr/lib/bootc/bound-images.d only: it opens no store
and reads no deployments, and so imports neither.
"""

from __future__ import annotations

import argparse
import json

from tether.engine.bound.discovery import discover_bound_images


def run_bound_list(args: argparse.Namespace) -> int:
    """``tether bound list``: bootc's columns (REPOSITORY, TYPE) and JSON keys (``image_type``, ``image``), plus
    the file that binds each image (SOURCE, ``source``)."""
    images = discover_bound_images(args.deployment_root)
    if args.format == "json":
        print(json.dumps([i.to_json() for i in images], indent=2))
        return 0
    rows: list[tuple[str, ...]] = [("REPOSITORY", "TYPE", "SOURCE")]
    rows.extend((i.image, "logical", i.source_file) for i in images)
    _print_table(rows)
    return 0


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
