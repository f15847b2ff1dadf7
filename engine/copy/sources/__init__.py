"""Image sources by transport: a registry (:mod:`.registry`), OCI layouts and archives (:mod:`.layout`), a
containers-storage store (:mod:`.storage`); :func:`open_image_source` turns a request's name into one."""

from __future__ import annotations

from contextlib import AsyncExitStack

from tether.engine.copy.clients import RegistryClients
from tether.engine.copy.image import ImageSource, PullRequest
from tether.engine.copy.sources.registry import RegistrySource
from tether.registry.reference import DockerName, Reference, parse_image_name
from tether.registry.registries_conf import resolve_short_name


async def open_image_source(request: PullRequest, *, clients: RegistryClients, stack: AsyncExitStack
                            ) -> ImageSource:
    """The source ``request.name`` names (containers-transports(5)); layouts stay open until ``stack`` closes.

    A reference without tag or digest means ``:latest`` (c/image ``reference.TagNameOnly``); a short name is
    resolved through registries.conf into its candidates, tried in order. ``request.digest`` pins what a
    registry name is fetched by (:class:`~tether.engine.copy.sources.registry.RegistrySource`'s ``pin``).
    """
    parsed = parse_image_name(request.name)
    if not isinstance(parsed, DockerName):
        # Imported here: layouts and archives (tether.store.oci, tarfile: ~7 ms of start-up) only for oci: and
        # oci-archive: names, never for a registry pull.
        from tether.engine.copy.sources.layout import open_layout_source

        layout: ImageSource = await stack.enter_async_context(open_layout_source(parsed))
        return layout
    if parsed.reference is not None:
        candidates: tuple[Reference, ...] = (parsed.reference.tag_name_only(),)
    else:
        candidates = tuple(resolve_short_name(clients.registries(), parsed.name, tty=False))
    client = await clients.get(authfile=request.authfile, cert_dir=request.cert_dir, tls_verify=request.tls_verify,
                               retries=request.retries, retry_delay=request.retry_delay,
                               creds_for=tuple(ref.name for ref in candidates))
    return RegistrySource(client=client, candidates=candidates, name=request.name, pin=request.digest)


__all__ = ["open_image_source"]
