"""Signature policy: containers-policy.json(5), containers-registries.d(5) and the signatures themselves.

One module per concern, importable on its own (this package re-exports nothing, so loading the policy file
does not load ``gpg`` handling, the HTTP client or ``cryptography``):

* :mod:`~tether.registry.trust.config`: the policy as data, strict parsing, the file lookup, scope selection;
* :mod:`~tether.registry.trust.identity`: ``signedIdentity`` rules;
* :mod:`~tether.registry.trust.evaluate`: :func:`~tether.registry.trust.evaluate.evaluate_policy` (fails closed),
  with :mod:`~tether.registry.trust.image` (what every requirement checks) and
  :mod:`~tether.registry.trust.sigstore_signed` (the ``sigstoreSigned`` requirement);
* verification: :mod:`~tether.registry.trust.gpg` (simple signing), :mod:`~tether.registry.trust.sigstore`
  (cosign, Rekor), :mod:`~tether.registry.trust.certificates` (Fulcio, PKI), over the formats of
  :mod:`~tether.registry.trust.signature`;
* I/O: :mod:`~tether.registry.trust.registries_d` (where signatures are stored) and
  :mod:`~tether.registry.trust.fetch` (reading them, copying them to mirrors).
"""
