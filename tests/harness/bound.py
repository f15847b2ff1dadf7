"""Helpers for bound-image tests: plain deployment roots binding quadlet ``.image`` files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tether.engine.copy.pull import PullReport, PullRequest, pull

BOUND_DIR = "usr/lib/bootc/bound-images.d"
QUADLET_DIR = "usr/share/containers/systemd"


def make_root(path: Path, images: dict[str, str]) -> Path:
    """A plain deployment root binding ``{"name.image": "IMAGE"}``."""
    (path / BOUND_DIR).mkdir(parents=True, exist_ok=True)
    (path / QUADLET_DIR).mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        (path / QUADLET_DIR / name).write_text(f"[Image]\nImage={image}\n")
        link = path / BOUND_DIR / name
        if not link.is_symlink():
            os.symlink(f"/{QUADLET_DIR}/{name}", link)
    return path


class SpyPull:
    """tether's pull engine (``pull_function`` of the reconciler), remembering the image names of each call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def __call__(self, requests: Sequence[PullRequest], **kwargs: Any) -> PullReport:
        self.calls.append([r.name for r in requests])
        return await pull(requests, **kwargs)
