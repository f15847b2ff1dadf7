"""A registry (``docker://HOST[:PORT][/NAMESPACE]``) as a copy destination.

Per blob: a ``HEAD`` (present), else a cross-repository mount from a repository of the destination registry
known to hold it (pushed earlier in this copy, or the source repository when the source is that registry),
else an upload streamed from the source. A blob moving to one repository is waited for, then mounted into
the next, so no blob is uploaded twice. Manifests are pushed after all their blobs, children by digest
before the top by tag; signatures follow (sigstore attachments, lookaside files), as skopeo copies them.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import aclosing
from typing import TYPE_CHECKING

import trio

from tether.engine.copy.destinations.blobs import BlobOutcome, ManifestTree
from tether.engine.copy.mirror_naming import DestinationName, destination_reference
from tether.engine.copy.plan import ImagePlan, LayerJob, PullPlan, plan_blobs
from tether.engine.copy.sources.registry import RegistrySource
from tether.engine.errors import MirrorError
from tether.registry.errors import RegistryError
from tether.registry.reference import Reference
from tether.registry.trust.fetch import copy_signatures

if TYPE_CHECKING:
    from tether.engine.copy.image import ImageSource
    from tether.registry.client import RegistryClient
    from tether.registry.trust.registries_d import RegistriesD

#: Read-back checks (manifest GETs, blob HEADs) in flight at once.
VERIFY_JOBS = 8


def _check_digest(got: str | None, expected: str, what: str) -> None:
    if got and got != expected:
        raise MirrorError(f"PUT {what}: the registry stored digest {got}, expected {expected}")


class RegistryDestination:
    """``docker://HOST[/NAMESPACE]``; ``registries_d`` None: signatures are not copied (--remove-signatures)."""

    def __init__(self, name: DestinationName, client: RegistryClient, *, scoped: bool,
                 registries_d: RegistriesD | None = None) -> None:
        self.name = name
        self.client = client
        self.scoped = scoped
        self.registries_d = registries_d
        self.description = str(name)
        #: digest -> a repository of the destination registry known to hold it (for mounts)
        self.known: dict[str, str] = {}
        self._moving: dict[str, trio.Event] = {}

    def target_for(self, source_ref: Reference) -> tuple[str, Reference | None]:
        dest_ref = destination_reference(self.name, source_ref, scoped=self.scoped)
        return str(dest_ref), dest_ref

    def _repository(self, image: ManifestTree) -> Reference:
        assert image.dest_ref is not None
        return Reference(self.name.host or "", image.dest_ref.path)

    def plan(self, key: int, image: ManifestTree, *, scheduled: Mapping[str, LayerJob]) -> PullPlan:
        repo = self._repository(image).path
        # A blob pushed to one repository is not in another: blobs land per repository.
        return plan_blobs(key, image.blobs, destination_key=lambda digest: f"{repo}@{digest}", scheduled=scheduled)

    async def prepare(self, jobs: Sequence[LayerJob]) -> None:
        pass

    async def _mount(self, image: ManifestTree, source: ImageSource, digest: str) -> bool:
        ref = self._repository(image)
        candidates = []
        if digest in self.known and self.known[digest] != ref.path:
            candidates.append(self.known[digest])
        if isinstance(source, RegistrySource):
            host, path = source.origin
            if host == self.name.host and path != ref.path:
                candidates.append(path)
        for repo in candidates:
            if await self.client.mount_blob(ref, digest, from_repository=repo):
                self.known.setdefault(digest, ref.path)
                return True
        return False

    async def stage(self, job: LayerJob, image: ManifestTree, source: ImageSource, *,
                    on_bytes: Callable[[int], None], background: bool) -> BlobOutcome:
        d = job.descriptor
        while (moving := self._moving.get(d.digest)) is not None:
            await moving.wait()  # the same blob is going to another repository: then mount it
        self._moving[d.digest] = event = trio.Event()
        try:
            repo = self._repository(image)
            if await self.client.blob_exists(repo, d.digest):
                self.known.setdefault(d.digest, repo.path)
                return BlobOutcome("present", d.size)
            if await self._mount(image, source, d.digest):
                return BlobOutcome("mounted", d.size)

            async def counted(chunks: AsyncIterator[bytes]) -> AsyncGenerator[bytes, None]:
                async for chunk in chunks:
                    on_bytes(len(chunk))
                    yield chunk

            async with source.open_blob(d) as chunks, aclosing(counted(chunks)) as stream:
                # closed even when the upload fails half-way
                await self.client.upload_blob(repo, d, stream)
            self.known.setdefault(d.digest, repo.path)
            return BlobOutcome("copied", d.size)
        finally:
            del self._moving[d.digest]
            event.set()

    async def publish(self, job: LayerJob, image: ManifestTree, staged: BlobOutcome) -> None:
        pass

    async def discard(self, staged: BlobOutcome) -> None:
        pass

    async def commit(self, plan: ImagePlan, image: ManifestTree, source: ImageSource) -> int:
        """Push the manifests (children by digest, then the top by tag), then the signatures; returns how many
        signatures were copied."""
        assert image.dest_ref is not None
        repo = self._repository(image)
        for m in image.children:
            got = await self.client.put_manifest(repo.with_digest(m.digest), m.raw, m.media_type)
            _check_digest(got, m.digest, f"{repo}@{m.digest}")
        target = image.dest_ref
        if target.tag is not None:
            # Push by tag (a pinned digest alongside a tag is kept by the bytes being identical).
            target = Reference(target.domain, target.path, target.tag)
        got = await self.client.put_manifest(target, image.top.raw, image.top.media_type)
        _check_digest(got, image.top.digest, str(target))
        return await self._copy_signatures(image, source)

    async def _copy_signatures(self, image: ManifestTree, source: ImageSource) -> int:
        """Copy each copied manifest's signatures as skopeo copies them; the index's only when it was copied
        unchanged (a new index has no signatures). Returns how many were copied."""
        if self.registries_d is None or not isinstance(source, RegistrySource) or image.dest_ref is None:
            return 0
        digests = [m.digest for m in image.children]
        if image.top.digest == image.source_digest:
            digests.append(image.top.digest)
        count = 0
        for digest in digests:
            copied = await copy_signatures(
                source_client=source.client, source_repository=source.reference, dest_client=self.client,
                dest_repository=image.dest_ref, manifest_digest=digest, registries_d=self.registries_d,
            )
            count += copied.lookaside + (1 if copied.sigstore_attachment else 0)
        return count

    async def verify(self, images: Sequence[ManifestTree]) -> list[str]:
        """Read every pushed manifest back (by tag or digest) and HEAD every blob, concurrently."""
        problems: list[str] = []
        limiter = trio.CapacityLimiter(VERIFY_JOBS)

        async def check_manifest(image: ManifestTree) -> None:
            assert image.dest_ref is not None
            target = image.dest_ref if image.dest_ref.tag is None else Reference(
                image.dest_ref.domain, image.dest_ref.path, image.dest_ref.tag)
            async with limiter:
                try:
                    fetched = await self.client.fetch_manifest(target)
                except RegistryError as exc:
                    problems.append(f"{target}: cannot be read back: {exc}")
                    return
            if fetched.digest != image.top.digest:
                problems.append(f"{target}: serves {fetched.digest}, expected {image.top.digest}")

        async def check_blob(image: ManifestTree, digest: str) -> None:
            repo = self._repository(image)
            async with limiter:
                try:
                    present = await self.client.blob_exists(repo, digest)
                except RegistryError as exc:
                    problems.append(f"{repo}: blob {digest}: {exc}")
                    return
            if not present:
                problems.append(f"{repo}: blob {digest} is missing")

        async with trio.open_nursery() as nursery:
            for image in images:
                nursery.start_soon(check_manifest, image)
                for d in image.blobs:
                    nursery.start_soon(check_blob, image, d.digest)
        return sorted(problems)

    async def finish(self, images: Sequence[ManifestTree]) -> None:
        pass


__all__ = ["RegistryDestination"]
