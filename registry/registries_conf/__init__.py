"""containers-registries.conf(5): load, merge drop-ins, find registries, rewrite, resolve short names.

This package's public surface; :mod:`~tether.registry.registries_conf.loading` reads and merges the files into a
:class:`RegistriesConf` (:mod:`~tether.registry.registries_conf.model`, with prefix matching), and
:mod:`~tether.registry.registries_conf.resolution` answers from it: pull sources (mirrors, blocking) and short
names.

Semantics are containers/image's (``pkg/sysregistriesv2``, ``pkg/shortnames``); each module's documentation
says which part. Where tether differs: invalid files name the file *and* the key (containers/image often only
says what was wrong); a blocked registry's error names the file that blocked it.
"""

from tether.registry.registries_conf.alias_cache import record_short_name_alias
from tether.registry.registries_conf.loading import default_aliases_path, load_registries_conf
from tether.registry.registries_conf.model import (
    AUTHENTICATION_FILE_HELPER,
    Alias,
    Mirror,
    PullSource,
    RegistriesConf,
    RegistryEntry,
    ref_matching_prefix,
)
from tether.registry.registries_conf.resolution import (
    ShortNameResolution,
    pull_sources,
    resolve_short_name,
    resolve_short_name_detailed,
)

__all__ = [
    "AUTHENTICATION_FILE_HELPER",
    "Alias",
    "Mirror",
    "PullSource",
    "RegistriesConf",
    "RegistryEntry",
    "ShortNameResolution",
    "default_aliases_path",
    "load_registries_conf",
    "pull_sources",
    "record_short_name_alias",
    "ref_matching_prefix",
    "resolve_short_name",
    "resolve_short_name_detailed",
]
