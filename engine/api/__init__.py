"""tether: keep the container images a bootc host binds present in its containers-storage store.

The package is the whole product under one name: :mod:`tether.registry` (the OCI distribution protocol with the
host's registry configuration), :mod:`tether.store` (containers-storage and OCI layouts on disk) and
:mod:`tether.engine` (the trio orchestration and the ``tether`` command).

The Python API is what the ``tether`` command uses; every coroutine runs under trio::

    import trio
    import tether

    async def main() -> None:
        store = tether.Store.open(tether.DEFAULT_ROOT)
        report = await tether.pull(["quay.io/org/agent:1.2"], store=store, options=tether.CommonOptions())
        print(report.summary() or "all pulled")

    trio.run(main)

* :func:`pull` (``tether pull``): images into a store, all at once; a :class:`PullReport` per request.
* :func:`sync_deployments` / :func:`compute_status` (``tether bound sync`` / ``status``) with
  :func:`list_sysroot_deployments` or :func:`root_deployments` to name the deployments.
* :func:`mirror_sync` (``tether mirror sync``): images to an OCI layout, an archive or a registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from tether.engine.bound.deployments import list_sysroot_deployments, root_deployments
    from tether.engine.bound.records import compute_status
    from tether.engine.bound.sync import SyncReport, sync_deployments
    from tether.engine.copy.image import PullRequest
    from tether.engine.copy.mirror import SyncReport as MirrorReport
    from tether.engine.copy.mirror import sync as mirror_sync
    from tether.engine.copy.pull import PullReport, pull
    from tether.engine.options import DEFAULT_ROOT, CommonOptions
    from tether.store.containers_storage import Store

__all__ = [
    "DEFAULT_ROOT",
    "CommonOptions",
    "MirrorReport",
    "PullReport",
    "PullRequest",
    "Store",
    "SyncReport",
    "__version__",
    "compute_status",
    "list_sysroot_deployments",
    "mirror_sync",
    "pull",
    "root_deployments",
    "sync_deployments",
]


def __getattr__(name: str) -> object:
    """The API is loaded on first use (PEP 562): the ``tether`` command imports this package before every
    verb, and the pull engine alone costs ~0.4 s of imports that ``tether images`` must not pay."""
    if name in ("pull", "PullReport"):
        from tether.engine.copy import pull as pull_module

        return getattr(pull_module, name)
    if name == "PullRequest":
        from tether.engine.copy.image import PullRequest

        return PullRequest
    if name in ("sync_deployments", "SyncReport"):
        from tether.engine.bound import sync as sync_module

        return getattr(sync_module, name)
    if name == "compute_status":
        from tether.engine.bound.records import compute_status

        return compute_status
    if name in ("list_sysroot_deployments", "root_deployments"):
        from tether.engine.bound import deployments

        return getattr(deployments, name)
    if name in ("mirror_sync", "MirrorReport"):
        from tether.engine.copy import mirror

        return mirror.sync if name == "mirror_sync" else mirror.SyncReport
    if name in ("CommonOptions", "DEFAULT_ROOT"):
        from tether.engine import options

        return getattr(options, name)
    if name == "Store":
        from tether.store.containers_storage import Store

        return Store
    raise AttributeError(f"module 'tether' has no attribute {name!r}")
