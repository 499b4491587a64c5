"""Key providers and the key lifecycle.

- provider.py: the ``KeyProvider`` Protocol every module types against, key
  metadata and states, ``LocalKeystore`` (set-up of a keystore a provider keeps
  itself, used by init, doctor and status through ``keystore_of``), ``scheme_of``.
- registry.py: providers by key URI scheme (``register_scheme``, ``provider_for``);
  ``local`` is built in.
- local.py: the file-backed provider (``$SEALEDKB_HOME/keys``; formats in
  docs/FORMATS.md section 8).
- policy.py: key policies, evaluated by the provider for every action.
- instrumented.py: a provider wrapper that times and counts every call.
- lifecycle.py: rotation, re-wrapping, data-key rotation, re-encryption and the key
  schedule, each paired with its audit event.
"""
