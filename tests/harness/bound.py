"""Helpers for bound-image tests: quadlet roots and a podman-backed stand-in for ``engine.pull.pull``.

The stand-in lets the reconciler be exercised against a store that podman itself writes (the same
``pull(requests, *, store, options, jobs, policy, progress)`` signature and :class:`PullReport` value), so
these tests check what the reconciler decides, independently of tether's own pull engine (which the
other tests exercise end to end).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from engine.pull import ImageResult, PullReport, PullRequest

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


class PodmanPull:
    """``podman --root STORE pull`` per request, concurrently, reported as tether's pull reports."""

    def __init__(self, store_root: Path, runroot: Path) -> None:
        self.store_root = store_root
        self.runroot = runroot
        self.calls: list[list[str]] = []

    def _one(self, request: PullRequest) -> ImageResult:
        base = ["podman", "--root", str(self.store_root), "--runroot", str(self.runroot), "--storage-driver", "overlay"]
        proc = subprocess.run(
            [*base, "pull", "--quiet", "--tls-verify=false", request.name],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode != 0:
            return ImageResult(request=request, reference=None, image_id=None, manifest_digest=None,
                               error=proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed")
        inspect = subprocess.run(
            [*base, "image", "inspect", "--format", "{{.Id}} {{.Digest}}", request.name],
            capture_output=True, text=True, check=True,
        )
        image_id, digest = inspect.stdout.split()
        return ImageResult(request=request, reference=request.name, image_id=image_id, manifest_digest=digest,
                           error=None, layers_pulled=1)

    async def __call__(self, requests: Sequence[PullRequest | str], *, store: Any, options: Any,
                       jobs: int | None = None, policy: str = "newer", progress: Any = None) -> PullReport:
        reqs = [r if isinstance(r, PullRequest) else PullRequest(name=r) for r in requests]
        self.calls.append([r.name for r in reqs])
        results: list[ImageResult | None] = [None] * len(reqs)

        async def run(i: int) -> None:
            results[i] = await trio.to_thread.run_sync(self._one, reqs[i])

        async with trio.open_nursery() as nursery:
            for i in range(len(reqs)):
                nursery.start_soon(run, i)
        return PullReport(results=tuple(r for r in results if r is not None))
