"""OCI image layouts (``oci:DIR``) and oci-archive files (``oci-archive:FILE``).

This module is the public surface: import from ``tether.store.oci``.  Its parts: ``index`` (names, digests,
``index.json`` entries; no I/O), ``blobs`` (atomic blob writes, verified reads), ``layout`` (``OCILayout``),
``archive`` (``OCIArchive``, ``write_oci_archive``).

The format is the image-spec's ``image-layout.md``: a directory holding ``oci-layout``
(``{"imageLayoutVersion": "1.0.0"}``), ``index.json`` (an image index whose entries may carry an
``org.opencontainers.image.ref.name`` annotation) and ``blobs/<algorithm>/<hex>``. Behaviour follows
containers/image's ``oci/layout`` and ``oci/archive`` transports where it matters to interoperate
with skopeo and podman:

- ``DIR:REF`` is split at the first colon (``oci/internal.SplitPathAndImage``), REF is validated
  with the annotation grammar of ``oci/internal.ValidateImageName``, ``@N`` selects entry N, and no
  REF selects the only entry (``getManifestDescriptor``).
- Adding an entry whose name already exists replaces it (``oci_dest.go addManifest``; containers/image
  keeps the old entry unnamed, tether drops it so ``prune`` can reclaim its blobs).
- An oci-archive is an uncompressed tar of the layout directory with relative member names
  (``oci/archive/oci_dest.go tarDirectory``). tether reads it in place: the tar headers are indexed
  once and blobs are read by offset, nothing is unpacked.

Everything here is blocking; the engine calls it from worker threads. Blobs are written to a temporary
file in the layout, hashed while written, fsynced and renamed into place, so a blob path that exists
always holds exactly its digest. ``index.json`` is replaced the same way, under an ``flock`` on the
layout directory so concurrent writers (several tether processes) do not lose each other's entries.
"""

from __future__ import annotations

from tether.store.oci.archive import OCIArchive, write_oci_archive
from tether.store.oci.blobs import BlobWriter
from tether.store.oci.index import (
    INDEX_FILE,
    LAYOUT_FILE,
    LAYOUT_VERSION,
    MANIFEST_MEDIA_TYPES,
    MAX_MANIFEST_SIZE,
    OCI_INDEX_MEDIA_TYPE,
    REF_NAME_ANNOTATION,
    BlobDigestError,
    IndexEntry,
    LayoutError,
    blob_relpath,
    child_descriptors,
    merge_entries,
    parse_index,
    select_entry,
    serialize_index,
    split_layout_reference,
    validate_digest,
    validate_ref_name,
)
from tether.store.oci.layout import OCILayout, PruneResult

__all__ = [
    "INDEX_FILE",
    "LAYOUT_FILE",
    "LAYOUT_VERSION",
    "MANIFEST_MEDIA_TYPES",
    "MAX_MANIFEST_SIZE",
    "OCI_INDEX_MEDIA_TYPE",
    "REF_NAME_ANNOTATION",
    "BlobDigestError",
    "BlobWriter",
    "IndexEntry",
    "LayoutError",
    "OCIArchive",
    "OCILayout",
    "PruneResult",
    "blob_relpath",
    "child_descriptors",
    "merge_entries",
    "parse_index",
    "select_entry",
    "serialize_index",
    "split_layout_reference",
    "validate_digest",
    "validate_ref_name",
    "write_oci_archive",
]
