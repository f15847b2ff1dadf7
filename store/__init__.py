"""containers-storage (overlay and vfs) written and read as containers/storage does, and OCI layouts.

Blocking, thread- and process-friendly code: the engine calls it from worker threads.
Never imports :mod:`engine` or :mod:`registry`.
"""
