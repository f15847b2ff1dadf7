"""``tether bound lock``: resolve every image the deployments bind to the digest its tag points at now.

One manifest request per distinct binding (the top manifest, as ``--pull newer`` asks), all at once; the lock
file's format and what a pin means are :mod:`tether.engine.bound.lockfile`. A lock is all or nothing: one image
that cannot be resolved fails the whole command, naming every image that failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING

import trio

from tether.engine.bound.deployments import Deployment
from tether.engine.bound.discovery import BoundImage, discover_bound_images, group_bound_images, pull_request_for
from tether.engine.bound.lockfile import LockEntry
from tether.engine.bound.records import binding_key
from tether.engine.copy.clients import RegistryClients
from tether.engine.copy.downloads import platform_text
from tether.engine.copy.execute import describe_error
from tether.engine.copy.sources import open_image_source
from tether.engine.copy.sources.registry import RegistrySource
from tether.engine.errors import EngineError
from tether.registry.resolve import choose_instance

if TYPE_CHECKING:
    from pathlib import Path

    from tether.engine.options import CommonOptions
    from tether.registry.client import RegistryClient


class LockError(EngineError):
    """Some bound image could not be resolved, so no lock was made; the message names each and why."""


def bindings_of(deployments: Sequence[Deployment]) -> dict[str, tuple[BoundImage, Path]]:
    """Every distinct binding of ``deployments`` (the first deployment binding it wins): key -> (image, root).
    Raises :class:`~tether.engine.errors.BoundImageError` when a deployment's bound images cannot be read."""
    out: dict[str, tuple[BoundImage, Path]] = {}
    for deployment in deployments:
        for group in group_bound_images(discover_bound_images(deployment.root)):
            out.setdefault(binding_key(group.image), (group.image, deployment.root))
    return out


async def lock_deployments(deployments: Sequence[Deployment], *, options: CommonOptions,
                           client: RegistryClient | None = None) -> tuple[LockEntry, ...]:
    """The pins of every image ``deployments`` bind, sorted (image, binding). ``client`` replaces the registry
    clients (tests). Raises :class:`LockError`."""
    bindings = await trio.to_thread.run_sync(bindings_of, deployments)
    entries: dict[str, LockEntry] = {}
    failures: dict[str, str] = {}

    async def lock_one(key: str, image: BoundImage, root: Path, clients: RegistryClients,
                       stack: AsyncExitStack) -> None:
        request = pull_request_for(image, root=root)
        try:
            source = await open_image_source(request, clients=clients, stack=stack)
            if not isinstance(source, RegistrySource):
                raise LockError(f"{image.image}: only registry images can be locked")
            top = await source.read_top()
            platform = request.platform or options.wanted_platform()
            instance = choose_instance(top, platform)
            entries[key] = LockEntry(image=image.image, name=str(source.reference), binding=key, digest=top.digest,
                                     media_type=top.media_type,
                                     manifest=instance.digest if instance is not None else top.digest,
                                     platform=platform_text(platform))
        except Exception as exc:  # every failure is reported together below
            failures[image.image] = describe_error(exc)

    async with AsyncExitStack() as stack:
        clients = RegistryClients(stack, options, connections=8, client=client)
        async with trio.open_nursery() as nursery:
            for key, (image, root) in bindings.items():
                nursery.start_soon(lock_one, key, image, root, clients, stack)
    if failures:
        lines = "\n  ".join(f"{name}: {why}" for name, why in sorted(failures.items()))
        raise LockError(f"no lock file written: {len(failures)} of {len(bindings)} bound image(s) could not be "
                        f"resolved:\n  {lines}")
    return tuple(sorted(entries.values(), key=lambda e: (e.image, e.binding)))


__all__ = ["LockError", "bindings_of", "lock_deployments"]
