"""containers-registries.d(5): where signatures of a registry's images are stored.

Mirrors containers/image ``docker/registries_d.go``:

* directory: an explicit one (skopeo's ``--registries.d``), else ``$HOME/.config/containers/registries.d``
  if it exists, else ``/etc/containers/registries.d`` (podman has no option; it uses this lookup);
* every ``*.yaml`` file in it (not recursive) is read; ``default-docker`` may be defined once, and a
  ``docker:`` namespace key once across all files (a second definition is an error naming both files);
* per namespace: ``lookaside`` (read; and write unless ``lookaside-staging``), ``lookaside-staging``,
  the deprecated ``sigstore``/``sigstore-staging`` spellings, and ``use-sigstore-attachments``;
* the most specific ``docker:`` key (``host/repo:tag`` or ``host/repo@digest``, then ``host/repo``,
  its parents, ``host[:port]``, ``*.domain``) with a non-empty value wins, then ``default-docker``;
* with nothing configured, lookaside is the built-in ``file:///var/lib/containers/sigstore`` (root) or
  ``file://$HOME/.local/share/containers/sigstore``.

Lookaside URLs for one image are ``<base>/<repo path>@<algo>=<hex>/signature-<n>`` (n from 1).
"""

from __future__ import annotations

import json
import os
import posixpath
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tether.registry.errors import ConfigError
from tether.registry.reference import Reference, docker_policy_identity, docker_policy_namespaces

SYSTEM_REGISTRIES_D = Path("/etc/containers/registries.d")
USER_REGISTRIES_D = Path(".config/containers/registries.d")  # relative to $HOME
DEFAULT_ROOT_LOOKASIDE = "file:///var/lib/containers/sigstore"
DEFAULT_USER_LOOKASIDE = Path(".local/share/containers/sigstore")  # relative to $HOME


@dataclass(frozen=True)
class RegistryNamespace:
    """One ``default-docker`` or ``docker: <scope>`` entry."""

    lookaside: str = ""
    lookaside_staging: str = ""
    sigstore: str = ""
    sigstore_staging: str = ""
    use_sigstore_attachments: bool | None = None

    def top_level(self, *, write: bool) -> str:
        """``registryNamespace.signatureTopLevel``."""
        if write:
            if self.lookaside_staging:
                return self.lookaside_staging
            if self.sigstore_staging:
                return self.sigstore_staging
        return self.lookaside or self.sigstore


@dataclass(frozen=True)
class RegistriesD:
    """The merged registries.d configuration."""

    default_docker: RegistryNamespace | None = None
    docker: Mapping[str, RegistryNamespace] = field(default_factory=dict)
    #: Built-in lookaside used when nothing is configured (depends on the user).
    builtin_lookaside: str = DEFAULT_ROOT_LOOKASIDE

    def _candidates(self, ref: Reference) -> list[RegistryNamespace]:
        out = []
        for name in (docker_policy_identity(ref), *docker_policy_namespaces(ref)):
            ns = self.docker.get(name)
            if ns is not None:
                out.append(ns)
        if self.default_docker is not None:
            out.append(self.default_docker)
        return out

    def lookaside_top_level(self, ref: Reference, *, write: bool = False) -> str | None:
        """The configured lookaside URL for ``ref`` (``None`` if not configured)."""
        for ns in self._candidates(ref):
            top = ns.top_level(write=write)
            if top:
                return top
        return None

    def lookaside_base(self, ref: Reference, *, write: bool = False) -> str:
        """``lookasideStorageBaseURL``: the configured (or built-in) URL + ``/`` + the repository path."""
        top = self.lookaside_top_level(ref, write=write) or self.builtin_lookaside
        parsed = urllib.parse.urlsplit(top)
        repo = ref.path
        if posixpath.normpath(repo) != repo:
            raise ConfigError(f"Unexpected path elements in Docker reference {ref} for signature storage")
        return urllib.parse.urlunsplit(parsed._replace(path=parsed.path + "/" + repo))

    def use_sigstore_attachments(self, ref: Reference) -> bool:
        """``useSigstoreAttachments``: the most specific entry that sets it, else False."""
        for ns in self._candidates(ref):
            if ns.use_sigstore_attachments is not None:
                return ns.use_sigstore_attachments
        return False


def lookaside_signature_url(base: str, manifest_digest: str, index: int) -> str:
    """``lookasideStorageURL``: ``<base>@<algo>=<hex>/signature-<index+1>`` (``index`` from 0)."""
    algo, sep, encoded = manifest_digest.partition(":")
    if not sep or not algo or not encoded or "/" in manifest_digest or ".." in manifest_digest:
        raise ConfigError(f"invalid manifest digest {manifest_digest!r} for a lookaside URL")
    parsed = urllib.parse.urlsplit(base)
    return urllib.parse.urlunsplit(parsed._replace(path=f"{parsed.path}@{algo}={encoded}/signature-{index + 1}"))


def find_registries_d(*, explicit: Path | None = None, home: str | None = None,
                      system: Path = SYSTEM_REGISTRIES_D) -> Path:
    """``registriesDirPath``: explicit, else ``$HOME/.config/containers/registries.d`` if present, else system."""
    if explicit is not None:
        return explicit
    home = home if home is not None else os.environ.get("HOME")
    if home:
        user = Path(home) / USER_REGISTRIES_D
        if user.exists():
            return user
    return system


def _namespace(value: Any, where: str) -> RegistryNamespace:
    if value is None:
        return RegistryNamespace()
    if not isinstance(value, dict):
        raise ConfigError(f"parsing {where}: mapping expected")

    def text(key: str) -> str:
        v = value.get(key)
        if v is None:
            return ""
        if not isinstance(v, str):
            raise ConfigError(f"parsing {where}.{key}: string expected")
        return v

    attachments = value.get("use-sigstore-attachments")
    if attachments is not None and not isinstance(attachments, bool):
        raise ConfigError(f"parsing {where}.use-sigstore-attachments: boolean expected")
    # Unknown keys are ignored, as containers/image's YAML decoding ignores them.
    return RegistryNamespace(lookaside=text("lookaside"), lookaside_staging=text("lookaside-staging"),
                             sigstore=text("sigstore"), sigstore_staging=text("sigstore-staging"),
                             use_sigstore_attachments=attachments)


def parse_registries_d_file(data: bytes | str, *, source: str) -> tuple[RegistryNamespace | None,
                                                                         dict[str, RegistryNamespace]]:
    """Parse one registries.d YAML file into (``default-docker``, ``docker`` namespaces)."""
    try:
        doc = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise ConfigError(f"parsing {source}: {exc}") from None
    if doc is None:
        return None, {}
    if not isinstance(doc, dict):
        raise ConfigError(f"parsing {source}: a YAML mapping expected")
    default = _namespace(doc["default-docker"], f"{source}: default-docker") if doc.get(
        "default-docker") is not None else None
    docker_raw = doc.get("docker") or {}
    if not isinstance(docker_raw, dict):
        raise ConfigError(f"parsing {source}: docker: mapping expected")
    docker = {str(k): _namespace(v, f"{source}: docker.{k}") for k, v in docker_raw.items()}
    return default, docker


def load_registries_d(directory: Path | None = None, *, home: str | None = None,
                      euid: int | None = None) -> RegistriesD:
    """Load and merge registries.d (see :func:`find_registries_d`); a missing directory is empty."""
    home = home if home is not None else os.environ.get("HOME")
    chosen = find_registries_d(explicit=directory, home=home)
    euid = os.geteuid() if euid is None else euid
    builtin = DEFAULT_ROOT_LOOKASIDE
    if euid != 0 and home:
        builtin = (Path(home) / DEFAULT_USER_LOOKASIDE).as_uri()
    try:
        names = sorted(os.listdir(chosen))
    except FileNotFoundError:
        return RegistriesD(builtin_lookaside=builtin)
    except OSError as exc:
        raise ConfigError(f"cannot read registries.d directory {chosen}: {exc.strerror or exc}") from None
    default: RegistryNamespace | None = None
    default_from = ""
    docker: dict[str, RegistryNamespace] = {}
    docker_from: dict[str, str] = {}
    for name in names:
        if not name.endswith(".yaml"):
            continue
        path = chosen / name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        except IsADirectoryError:
            continue
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
        file_default, file_docker = parse_registries_d_file(data, source=str(path))
        if file_default is not None:
            if default is not None:
                raise ConfigError('Error parsing signature storage configuration: "default-docker" defined both '
                                  f"in {default_from!r} and {str(path)!r}")
            default, default_from = file_default, str(path)
        for ns_name, ns in file_docker.items():
            if ns_name in docker:
                raise ConfigError(f'Error parsing signature storage configuration: "docker" namespace {ns_name!r} '
                                  f"defined both in {docker_from[ns_name]!r} and {str(path)!r}")
            docker[ns_name] = ns
            docker_from[ns_name] = str(path)
    return RegistriesD(default_docker=default, docker=docker, builtin_lookaside=builtin)


def _yaml_scalar(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid YAML double-quoted scalar


def render_registries_d(docker: Mapping[str, RegistryNamespace], *,
                        default_docker: RegistryNamespace | None = None) -> str:
    """A registries.d YAML file for ``docker`` scopes (e.g. what ``tether mirror sync`` writes so that hosts
    pulling from the mirror find its lookaside store and sigstore attachments)."""

    def block(ns: RegistryNamespace, indent: str) -> list[str]:
        lines = []
        for key, value in (("lookaside", ns.lookaside), ("lookaside-staging", ns.lookaside_staging),
                           ("sigstore", ns.sigstore), ("sigstore-staging", ns.sigstore_staging)):
            if value:
                lines.append(f"{indent}{key}: {_yaml_scalar(value)}")
        if ns.use_sigstore_attachments is not None:
            lines.append(f"{indent}use-sigstore-attachments: {'true' if ns.use_sigstore_attachments else 'false'}")
        return lines or [f"{indent}{{}}"]

    out = ["# Written by tether: signature storage for these registries (containers-registries.d(5))."]
    if default_docker is not None:
        out.append("default-docker:")
        out.extend(block(default_docker, "  "))
    if docker:
        out.append("docker:")
        for scope, ns in docker.items():
            body = block(ns, "    ")
            if body == ["    {}"]:
                out.append(f"  {_yaml_scalar(scope)}: {{}}")
            else:
                out.append(f"  {_yaml_scalar(scope)}:")
                out.extend(body)
    return "\n".join(out) + "\n"


__all__ = [
    "RegistriesD",
    "RegistryNamespace",
    "find_registries_d",
    "load_registries_d",
    "lookaside_signature_url",
    "parse_registries_d_file",
    "render_registries_d",
]
