"""Recording a short name the user chose at the prompt in the short-name-aliases.conf cache.

containers/image (``pkg/shortnames``, ``PullCandidate.Record``; ``sysregistriesv2.AddShortNameAlias`` /
``editShortNameAlias``): after a pull of a candidate the user *selected* succeeds, the short name as typed
(without its tag) becomes an alias for the chosen repository (without tag), so the next pull of that name
resolves without asking. Writers hold a write lock on ``PATH.lock`` (containers/storage's ``lockfile``: an
``fcntl`` lock on the whole file), load the cache (a corrupt one is an error, not overwritten), set the one
key and write the file (mode 0600, its directory 0700). Where tether differs: the new file replaces the old
by rename, so a crash never leaves a truncated cache that would break every later short-name pull.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from pathlib import Path

from tether.registry.errors import ConfigError
from tether.registry.reference import Reference
from tether.registry.registries_conf.loading import read_alias_table, validate_alias_name

__all__ = ["record_short_name_alias"]


def record_short_name_alias(path: Path, name: str, repository: Reference) -> None:
    """Make ``name`` (a short name without tag or digest) an alias of ``repository``'s name in the cache file
    ``path``. Raises :class:`ConfigError` naming the file for a bad name, a corrupt cache or an I/O error."""
    problem = validate_alias_name(name)
    if problem is not None:
        raise ConfigError(f"{path}: recording short-name alias: {problem}")
    value = f"{repository.domain}/{repository.path}"
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        lock_fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.lockf(lock_fd, fcntl.LOCK_EX)
            aliases = read_alias_table(path)  # a corrupt cache is reported, not replaced
            aliases[name] = value
            _write_atomically(path, _render(aliases))
        finally:
            os.close(lock_fd)
    except OSError as exc:
        raise ConfigError(f"{path}: recording short-name alias {name!r}: {exc.strerror or exc}") from None


def _render(aliases: dict[str, str]) -> str:
    # TOML basic strings take JSON's escapes; every key is quoted, as a short name may hold '/' or '.'.
    lines = ["[aliases]"] + [f"  {json.dumps(k)} = {json.dumps(v)}" for k, v in sorted(aliases.items())]
    return "\n".join(lines) + "\n"


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
