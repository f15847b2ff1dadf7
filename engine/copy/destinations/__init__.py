"""Where a copy writes: the :class:`Destination` contract and its implementations.

containers/image's ``types.ImageDestination`` lets one copy pipeline write to every transport; so does this:

* :class:`~tether.engine.copy.destinations.storage.StorageDestination` -- containers-storage (layers extracted
  while they stream, published in parent order, the image record committed last);
* :class:`~tether.engine.copy.destinations.layout.LayoutDestination` and ``ArchiveDestination`` -- ``oci:DIR``
  and ``oci-archive:FILE`` (blobs verified into the layout, manifests after their blobs, the index entry last);
* :class:`~tether.engine.copy.destinations.registry.RegistryDestination` -- ``docker://`` (HEAD, cross-repository
  mount or upload per blob, manifests after their blobs, signatures).

A destination plans an image against what it holds (pure: :mod:`tether.engine.copy.plan`), makes one piece per
job (:meth:`Destination.stage`, then :meth:`Destination.publish` once the piece's parent is published) and
commits an image once all its pieces are there; :class:`tether.engine.copy.execute.Executor` runs the jobs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from tether.engine.copy.image import ImageSource
    from tether.engine.copy.plan import ImagePlan, LayerJob, PullPlan

ImageT = TypeVar("ImageT", contravariant=True)
StagedT = TypeVar("StagedT")
CommitT = TypeVar("CommitT", covariant=True)


class Destination(Protocol[ImageT, StagedT, CommitT]):
    """What the executor needs of a destination; every method is called from the trio thread."""

    @property
    def description(self) -> str:
        """The destination as messages name it (``containers-storage:[overlay@/var/lib/...]``, ``oci:/srv/m``)."""
        ...

    def plan(self, key: int, image: ImageT, *, scheduled: Mapping[str, LayerJob]) -> PullPlan:
        """Plan ``image`` (request ``key``) against what the destination holds and the jobs already scheduled."""
        ...

    async def prepare(self, jobs: Sequence[LayerJob]) -> None:
        """Get ready for new jobs while their first bytes are in flight (best effort; never raises)."""
        ...

    async def stage(self, job: LayerJob, image: ImageT, source: ImageSource, *, on_bytes: Callable[[int], None],
                    background: bool) -> StagedT:
        """Make the job's piece from ``source`` (``image`` is the job's owner); ``on_bytes`` counts its bytes."""
        ...

    async def publish(self, job: LayerJob, image: ImageT, staged: StagedT) -> None:
        """Make a staged piece visible; called once the job's parent is published."""
        ...

    async def discard(self, staged: StagedT) -> None:
        """Remove a staged piece that will not be published (its copy was cancelled or failed)."""
        ...

    async def commit(self, plan: ImagePlan, image: ImageT, source: ImageSource) -> CommitT:
        """Record the image once every piece of ``plan`` is published (``source``: what it was copied from)."""
        ...


__all__ = ["CommitT", "Destination", "ImageT", "StagedT"]
