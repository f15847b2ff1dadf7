"""containers-storage (overlay, vfs) written and read as containers/storage does, OCI layouts, and the tar streams
both are made of.

``tether.store.containers_storage`` (the ``Store``), ``tether.store.oci`` (``OCILayout``, ``OCIArchive``) and
``tether.store.tar`` (reading and applying layer tars, tar-split, decompression, extraction in child processes);
``errors`` is the one exception hierarchy.  Blocking, thread- and process-friendly code: the engine calls it from
worker threads.  Never imports :mod:`engine` or :mod:`registry`.
"""
