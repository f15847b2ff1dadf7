"""Signature policy enforcement for one resolved image: the pull calls :meth:`PolicyCheck.enforce` after
resolving an image and before any of its layers is fetched or published.

It fails closed: a policy that cannot be read, signatures that cannot be fetched, an evaluation that raises
anything at all -- each rejects the image with a :class:`PolicyError` naming it; nothing turns verification off.

As containers/image's ``copy.Image``: the policy is evaluated on the image *as named* (the logical
reference chooses the policy scope and is what ``signedIdentity`` rules compare signatures with) and
on the per-platform manifest actually pulled (signatures must sign that manifest's digest, and are
looked up by it). Signatures are read from the physical repository that served the manifest
(a mirror's lookaside/attachments when a mirror served it), as ``docker_image_src.go`` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from tether.engine.copy.sources.registry import RegistrySource
from tether.registry.errors import ConfigError, PolicyError, RegistryError
from tether.registry.reference import Reference
from tether.registry.trust.config import (
    Policy,
    PolicyScope,
    docker_scope,
    layout_scope,
    load_policy,
    requirements_for,
)
from tether.registry.trust.evaluate import evaluate_policy, needs_signatures, needs_sigstore_signatures
from tether.registry.trust.image import PolicyImage
from tether.registry.trust.signature import Signature

if TYPE_CHECKING:
    import httpx

    from tether.engine.copy.image import ImageSource, SourceImage
    from tether.engine.options import CommonOptions
    from tether.registry.client import RegistryClient
    from tether.registry.trust.registries_d import RegistriesD


def _docker_reference(ref: Reference) -> Reference:
    # c/image docker references never carry both a tag and a digest; podman drops the tag then.
    if ref.tag is not None and ref.digest is not None:
        return Reference(ref.domain, ref.path, None, ref.digest)
    return ref.tag_name_only()


def _layout_path(name: str, transport: str) -> str:
    """The path part of ``oci:DIR[:REF]`` / ``oci-archive:FILE[:REF]`` (split at the first colon)."""
    rest = name[len(transport) + 1:] if name.startswith(transport + ":") else name
    return rest.split(":", 1)[0]


def policy_image_for(*, image: SourceImage, name: str, transport: str) -> PolicyImage:
    """The :class:`PolicyImage` of a resolved image: scope and identity from the name, the manifest pulled."""
    scope: PolicyScope
    docker_ref: Reference | None = None
    if transport == "docker":
        if image.reference is None:
            raise PolicyError(f"{name}: no registry reference to evaluate the signature policy on")
        docker_ref = _docker_reference(image.reference)
        scope = docker_scope(docker_ref)
        description = f"docker://{docker_ref}"
    elif transport in ("oci", "oci-archive"):
        path = _layout_path(name, transport)
        scope = layout_scope(transport, path)
        description = name if name.startswith(transport + ":") else f"{transport}:{name}"
    else:
        raise PolicyError(f"{name}: signature policy for transport {transport!r} is not supported")
    return PolicyImage(description=description, scope=scope, docker_reference=docker_ref,
                       manifest=image.manifest_raw, manifest_digest=image.manifest_digest)


def _physical_repository(image: SourceImage) -> Reference:
    physical = image.physical_reference
    if physical is None:
        raise PolicyError(f"{image.description}: no registry repository to read signatures from")
    return physical


async def enforce_policy(*, policy: Policy, image: SourceImage, name: str, transport: str,
                         client: RegistryClient | None, registries_d: RegistriesD | None = None,
                         registries_d_dir: Path | None = None, home: str | None = None,
                         http: httpx.AsyncClient | None = None) -> None:
    """Raise :class:`PolicyError` unless ``policy`` allows ``image`` (resolved from ``name``).

    ``registries_d`` defaults to the registries.d directory ``registries_d_dir`` (``--registries.d``), else the
    host's (``$HOME/.config/containers/registries.d`` if it exists, else ``/etc/containers/registries.d``),
    read only when signatures are needed. Signatures are fetched only when a requirement
    that reads them applies. The error names the image, the policy file, the rule (scope and
    requirement index) and the reason.
    """
    pimage = policy_image_for(image=image, name=name, transport=transport)
    match = requirements_for(policy, pimage.scope)
    signatures: tuple[Signature, ...] | None = None
    if needs_signatures(match.requirements):
        if transport == "docker":
            # Imported here: registries.d (YAML) and the signature fetcher cost ~13 ms of start-up that the
            # default policy (insecureAcceptAnything) never needs (python -X importtime, a no-op pull).
            from tether.registry.trust.fetch import fetch_signatures
            from tether.registry.trust.registries_d import load_registries_d

            if registries_d is None:
                try:
                    registries_d = await trio.to_thread.run_sync(
                        lambda: load_registries_d(registries_d_dir, home=home))
                except ConfigError as exc:
                    raise PolicyError(f"{pimage.description}: {exc}") from None
            try:
                signatures = await fetch_signatures(
                    client=client, repository=_physical_repository(image), manifest_digest=image.manifest_digest,
                    registries_d=registries_d, sigstore=needs_sigstore_signatures(match.requirements), http=http)
            except RegistryError as exc:  # PolicyError, or the registry failing on the attachments
                raise PolicyError(f"{pimage.description}: reading signatures: {exc}") from None
        else:
            # containers/image's oci layout source has no signatures.
            signatures = ()
    decision = await trio.to_thread.run_sync(_evaluate, policy, pimage, signatures)
    if not decision.allowed:
        raise PolicyError(decision.message(pimage, policy.source))


def _evaluate(policy: Policy, image: PolicyImage, signatures: tuple[Signature, ...] | None) -> Any:
    return evaluate_policy(policy, image, signatures)


class PolicyCheck:
    """The signature policy of one copy: loaded once (``--signature-policy``, else
    ``$HOME/.config/containers/policy.json``, else ``/etc/containers/policy.json``), enforced per image with
    the signatures registries.d (``--registries.d``) locates."""

    def __init__(self, options: CommonOptions) -> None:
        self.options = options
        self._policy: Policy | None = None
        self._lock = trio.Lock()

    async def _load(self) -> Policy:
        async with self._lock:
            if self._policy is None:
                home = self.options.environ.get("HOME")
                path = self.options.signature_policy
                self._policy = await trio.to_thread.run_sync(lambda: load_policy(path, home=home))
            return self._policy

    async def enforce(self, *, image: SourceImage, source: ImageSource, name: str) -> None:
        """Raise :class:`PolicyError` unless the policy allows ``image``; any other failure rejects it too."""
        try:
            policy = await self._load()
            await enforce_policy(policy=policy, image=image, name=name, transport=image.transport,
                                 client=source.client if isinstance(source, RegistrySource) else None,
                                 registries_d_dir=self.options.registries_d, home=self.options.environ.get("HOME"))
        except (PolicyError, ConfigError):
            raise
        except Exception as exc:  # fail closed: an evaluation that breaks never lets an image through
            raise PolicyError(f"{name}: the signature policy could not be evaluated "
                              f"({type(exc).__name__}: {exc}); rejecting the image") from exc


__all__ = ["PolicyCheck", "enforce_policy", "policy_image_for"]
