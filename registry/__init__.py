"""The OCI distribution protocol, spoken directly, with the host's real configuration.

Sans-IO modules (reference grammar, registries.conf, auth.json, challenges, manifests, the one resolution path
:mod:`tether.registry.resolve`) plus one thin httpx-under-trio I/O layer (:mod:`tether.registry.client`) and the
signature policy (:mod:`tether.registry.trust`). Never imports :mod:`engine` or :mod:`store`.
"""
