"""Deployments whose bound images tether keeps: an ostree sysroot's, or plain deployment roots.

An ostree sysroot is read as libostree lays it out (ostree ``src/libostree/ostree-sysroot.c``,
``ostree-sysroot-deploy.c``), without running ``ostree``:

- ``boot/loader`` -> ``loader.N``; ``boot/loader/entries/*.conf`` are BLS entries whose ``options`` carry
  ``ostree=/ostree/boot.N/<osname>/<bootcsum>/<bootserial>``, a symlink chain ending at the deployment
  directory ``ostree/deploy/<osname>/deploy/<csum>.<serial>``. Deployments are ordered by the entries'
  ``version``, highest first (``compare_deployments_by_boot_loader_version_reversed``): index 0 is the
  default of the next boot.
- ``ostree/deploy/<osname>/deploy/<csum>.<serial>.origin`` (a GKeyFile): ``[origin] refspec=`` or
  ``container-image-reference=``; ``[libostree-transient] pinned=true`` marks a pinned deployment.
- A staged deployment (``ostree admin deploy --stage``, what ``bootc upgrade`` does) has its directory
  checked out but no boot entry until shutdown; ``/run/ostree/staged-deployment`` (a serialized GVariant
  ``a{sv}`` whose ``target`` holds ``name`` = ``CSUM.SERIAL``, ``osname``, ``bootcsum``; read by
  :mod:`tether.engine.bound.gvariant`, as ``_ostree_sysroot_reload_staged`` reads it) says which.  A file that
  cannot be parsed is an error, not "nothing staged": garbage collection must not remove what an upgrade
  waiting for the next boot binds.
- The booted deployment (live sysroot only, ``/run/ostree-booted`` present): the one whose directory is
  ``/`` (same device and inode, as ``ostree_sysroot_get_booted_deployment`` compares). ``pending`` is
  the first deployment of the same OS before it, ``rollback`` the first after it
  (``ostree_sysroot_query_deployments_for``).

Plain deployment roots (``--root DIR``, repeatable; the first is the new one) are deployments too.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from tether.engine.bound.discovery import resolve_in_root
from tether.engine.bound.gvariant import GVariantError, parse_asv
from tether.engine.bound.quadlet import parse_unit
from tether.engine.errors import BoundImageError, DeploymentError

log = logging.getLogger(__name__)

_DEPLOY_DIR = re.compile(r"^(?P<csum>[0-9a-f]{64})\.(?P<serial>\d+)$")
_OSTREE_ARG = re.compile(r"(?:^|\s)ostree=(\S+)")
_MAX_STAGED = 1024 * 1024  # ostree's file is a few hundred bytes (kernel arguments included)


@dataclass(frozen=True)
class Deployment:
    """One deployment root whose bound images must be present before it boots."""

    name: str  # "<osname>-<csum>.<serial>" for ostree, "root:<abs path>" for a plain root
    root: Path
    osname: str | None = None
    checksum: str | None = None
    serial: int | None = None
    index: int | None = None  # boot order (0 = default next boot); None for staged and plain roots
    staged: bool = False
    booted: bool = False
    pending: bool = False
    rollback: bool = False
    pinned: bool = False
    origin: str | None = None

    @property
    def role(self) -> str:
        """``staged``, ``booted``, ``pending``, ``rollback``, ``default`` (index 0), ``root`` or ``other``."""
        if self.staged:
            return "staged"
        if self.booted:
            return "booted"
        if self.pending:
            return "pending"
        if self.rollback:
            return "rollback"
        if self.checksum is None:
            return "root"
        if self.index == 0:
            return "default"
        return "other"

    @property
    def record_name(self) -> str:
        """A file-name-safe stem for this deployment's readiness record."""
        if self.checksum is not None:
            return self.name
        digest = hashlib.sha256(str(self.root).encode("utf-8", "surrogateescape")).hexdigest()[:16]
        tail = re.sub(r"[^A-Za-z0-9._-]+", "_", self.root.name or "root")[:40]
        return f"root-{tail}-{digest}"

    def matches(self, query: str) -> bool:
        """Whether ``query`` names this deployment: its name, ``csum.serial``, a checksum prefix (>= 7
        hex digits), its role (``staged``, ``booted``, ``pending``, ``rollback``, ``default``), its boot
        index, or (plain roots) the root path."""
        if query in (self.name, self.role, self.record_name):
            return True
        if self.checksum is not None:
            if query == f"{self.checksum}.{self.serial}" or (len(query) >= 7 and self.checksum.startswith(query)):
                return True
            if query.isdigit() and self.index == int(query):
                return True
        try:
            return Path(query).resolve() == self.root.resolve()
        except OSError:
            return False

    def to_json(self) -> dict[str, object]:
        """Plain-data form (``bound status --format json`` uses a subset)."""
        return {
            "deployment": self.name,
            "root": str(self.root),
            "role": self.role,
            "osname": self.osname,
            "checksum": self.checksum,
            "serial": self.serial,
            "index": self.index,
            "staged": self.staged,
            "booted": self.booted,
            "pinned": self.pinned,
            "origin": self.origin,
        }


def _read_origin(path: Path) -> tuple[str | None, bool]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None, False
    try:
        origin = parse_unit(text, path=str(path))
    except BoundImageError as exc:
        # Only shown in status; a GKeyFile oddity must not hide the deployment.
        log.warning("ignoring unreadable ostree origin file %s: %s", path, exc)
        return None, False
    ref = (
        origin.get("origin", "container-image-reference")
        or origin.get("origin", "refspec")
        or origin.get("origin", "baserefspec")
    )
    pinned = (origin.get("libostree-transient", "pinned") or "").lower() in ("true", "1", "yes")
    return ref, pinned


def _boot_entries(sysroot: Path) -> list[tuple[int, str]]:
    """``(version, ostree= path)`` of each BLS entry of the current boot loader config."""
    entries_dir = sysroot / "boot" / "loader" / "entries"
    if not entries_dir.is_dir():
        return []
    out: list[tuple[int, str]] = []
    for conf in sorted(entries_dir.glob("*.conf")):
        version = 0
        ostree_arg: str | None = None
        for line in conf.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.strip().partition(" ")
            if key == "version":
                try:
                    version = int(value.strip())
                except ValueError:
                    version = 0
            elif key == "options":
                match = _OSTREE_ARG.search(value)
                if match:
                    ostree_arg = match.group(1)
        if ostree_arg is not None:
            out.append((version, ostree_arg))
    return out


def _deployment_from_rel(sysroot: Path, rel: str) -> tuple[str, str, int] | None:
    parts = rel.split("/")
    # ostree/deploy/<osname>/deploy/<csum>.<serial>
    if len(parts) != 5 or parts[:2] != ["ostree", "deploy"] or parts[3] != "deploy":
        return None
    match = _DEPLOY_DIR.match(parts[4])
    if match is None:
        return None
    return parts[2], match.group("csum"), int(match.group("serial"))


def _all_deployment_dirs(sysroot: Path) -> list[tuple[str, str, int]]:
    base = sysroot / "ostree" / "deploy"
    found: list[tuple[str, str, int]] = []
    if not base.is_dir():
        return found
    for osname in sorted(os.listdir(base)):
        deploy = base / osname / "deploy"
        if not deploy.is_dir():
            continue
        for name in sorted(os.listdir(deploy)):
            match = _DEPLOY_DIR.match(name)
            if match and (deploy / name).is_dir():
                found.append((osname, match.group("csum"), int(match.group("serial"))))
    return found


def _make(sysroot: Path, osname: str, csum: str, serial: int, **flags: object) -> Deployment:
    deploy = sysroot / "ostree" / "deploy" / osname / "deploy"
    origin, pinned = _read_origin(deploy / f"{csum}.{serial}.origin")
    return Deployment(
        name=f"{osname}-{csum}.{serial}",
        root=deploy / f"{csum}.{serial}",
        osname=osname,
        checksum=csum,
        serial=serial,
        pinned=pinned,
        origin=origin,
        **flags,  # type: ignore[arg-type]
    )


def _staged_identity(marker: Path, data: bytes) -> tuple[str, str, int]:
    """``(osname, csum, serial)`` of ``target`` in ostree's staged-deployment file."""
    try:
        doc = parse_asv(data)
        target = doc.get("target")
        if not isinstance(target, dict):
            raise GVariantError("no target deployment")
        name, osname = target.get("name"), target.get("osname")
        if not isinstance(name, str) or not isinstance(osname, str):
            raise GVariantError("the target has no name or osname")
        match = _DEPLOY_DIR.match(name)
        if match is None or not osname or "/" in osname or osname.startswith("."):
            raise GVariantError(f"unexpected target {osname!r} {name!r}")
    except GVariantError as exc:
        raise DeploymentError(f"cannot read the staged deployment from {marker}: {exc}") from None
    return osname, match.group("csum"), int(match.group("serial"))


def is_live_sysroot(sysroot: Path) -> bool:
    """Whether ``sysroot`` is the running system's (``/`` or ``/sysroot`` of a booted ostree host)."""
    try:
        return os.path.samefile(sysroot, "/") or os.path.samefile(sysroot, "/sysroot")
    except OSError:
        return False


def list_sysroot_deployments(
    sysroot: Path, *, run_dir: Path | None = None, booted_root: Path | None = None
) -> tuple[Deployment, ...]:
    """Every deployment of an ostree sysroot, the new one first: staged, then boot order.

    ``run_dir`` (default ``/run`` for the live sysroot, else none) holds ``ostree/staged-deployment``;
    ``booted_root`` overrides booted detection (tests), else the live sysroot's ``/`` is compared.
    """
    sysroot = Path(sysroot)
    if not (sysroot / "ostree" / "deploy").is_dir():
        raise DeploymentError(f"{sysroot} is not an ostree sysroot (no ostree/deploy)")
    live = is_live_sysroot(sysroot)
    if run_dir is None and live:
        run_dir = Path("/run")
    entries = sorted(_boot_entries(sysroot), key=lambda e: -e[0])
    ordered: list[tuple[str, str, int]] = []
    for version, arg in entries:
        try:
            rel = resolve_in_root(sysroot, arg)
        except BoundImageError as exc:
            raise DeploymentError(f"boot entry version {version}: ostree={arg} does not resolve: {exc}") from None
        ident = _deployment_from_rel(sysroot, rel)
        if ident is None:
            raise DeploymentError(f"boot entry version {version}: ostree={arg} resolves to /{rel}, not a deployment")
        if ident not in ordered:
            ordered.append(ident)
    deployments = [_make(sysroot, *ident, index=i) for i, ident in enumerate(ordered)]

    staged: list[Deployment] = []
    if run_dir is not None:
        marker = run_dir / "ostree" / "staged-deployment"
        try:
            with open(marker, "rb") as handle:
                data = handle.read(_MAX_STAGED)
        except FileNotFoundError:
            data = b""
        if data:
            ident = _staged_identity(marker, data)
            if ident not in ordered and ident in _all_deployment_dirs(sysroot):
                staged.append(_make(sysroot, *ident, staged=True))
            elif ident not in ordered:
                log.warning("%s names %s-%s.%d, which is not checked out in %s", marker, *ident, sysroot)

    booted_index: int | None = None
    booted_stat: os.stat_result | None = None
    try:
        if booted_root is not None:
            booted_stat = os.stat(booted_root)
        elif live and Path("/run/ostree-booted").exists():
            booted_stat = os.stat("/")
    except OSError:
        booted_stat = None
    if booted_stat is not None:
        for i, d in enumerate(deployments):
            try:
                st = os.stat(d.root)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (booted_stat.st_dev, booted_stat.st_ino):
                booted_index = i
                deployments[i] = replace(d, booted=True)
                break
    if booted_index is not None:
        os_booted = deployments[booted_index].osname
        for i in range(booted_index - 1, -1, -1):
            if deployments[i].osname == os_booted:
                deployments[i] = replace(deployments[i], pending=True)
                break
        for i in range(booted_index + 1, len(deployments)):
            if deployments[i].osname == os_booted:
                deployments[i] = replace(deployments[i], rollback=True)
                break
    return tuple(staged + deployments)


def root_deployments(roots: Sequence[Path]) -> tuple[Deployment, ...]:
    """Plain deployment roots, in the order given (the first is the new one)."""
    out: list[Deployment] = []
    for i, root in enumerate(roots):
        path = Path(os.path.abspath(root))
        if not path.is_dir():
            raise DeploymentError(f"deployment root {root} is not a directory")
        out.append(Deployment(name=f"root:{path}", root=path, index=i))
    return tuple(out)


def find_deployment(deployments: Sequence[Deployment], query: str) -> Deployment:
    """The one deployment ``query`` names (see :meth:`Deployment.matches`; ``new`` is the first listed);
    DeploymentError otherwise."""
    if query == "new" and deployments:
        return deployments[0]
    exact = [d for d in deployments if query in (d.name, d.record_name)]
    if len(exact) == 1:
        return exact[0]
    found = [d for d in deployments if d.matches(query)]
    if not found:
        names = ", ".join(d.name for d in deployments) or "none"
        raise DeploymentError(f"no deployment matches {query!r} (deployments: {names})")
    if len(found) > 1:
        raise DeploymentError(f"{query!r} is ambiguous: " + ", ".join(d.name for d in found))
    return found[0]
