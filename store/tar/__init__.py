"""Tar streams: reading, applying to a layer directory, tar-split, decompression, and extraction in child
processes.

=================  ==================================================================================
``reader``         push parser of uncompressed tar streams (Go ``archive/tar`` + tar-split accounting)
``apply``          ``TarApplier`` (entries -> files, whiteouts, confinement), ``LayerExtractor``
``rootpath``       names and symlinks resolved inside the layer directory, as in c/storage's chroot
``tarsplit``       the tar-split format: written while extracting, read to rebuild the exact tar
``decompress``     decompression by magic bytes (gzip, zstd, bzip2, xz, none)
``workers``        ``ProcessLayerExtractor``, the pool of reusable children, ``prewarm_workers``
``scheduling``     CPU priorities of the children (niceness, SCHED_IDLE)
``_worker_main``   the child's ``main`` (``python -m tether.store.tar._worker_main``)
=================  ==================================================================================

Kept empty of imports: the child imports this package on its way to ``_worker_main``, on a pull's critical path.
"""
