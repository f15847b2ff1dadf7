"""The OCI distribution protocol, spoken directly, with the host's real configuration.

Sans-IO modules (reference grammar, registries.conf, auth.json, challenges, manifests,
platform choice, signature policy) plus one thin httpx-under-trio I/O layer (:mod:`tether.registry.client`).
Never imports :mod:`engine` or :mod:`store`.
"""
