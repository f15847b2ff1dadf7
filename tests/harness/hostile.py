"""Bad layers for pulls against a real registry: each is a valid blob (its digest is the digest of its bytes, so
the registry serves it and the client's digest check passes) whose content is wrong in one way.

``dangling_link_cases`` are the layers podman refuses or accepts for writing through a symlink to nothing;
the others fail in the store: a decompression bomb, a config whose diff_ids lie, a corrupt gzip stream, a tar
cut in the middle of a file, a name 10,000 directories deep.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import tarfile
import zlib

from tests.harness import images as factory
from tests.harness.images import BuiltLayer, Entry, sha256_digest

MIB = 1024 * 1024


def gzip_bomb_layer(size: int, *, name: str = "zeros") -> BuiltLayer:
    """One file of ``size`` zero bytes, gzip'd at level 9 (~1000:1): a few hundred KB that inflate past a small
    filesystem.  Built streaming (``tar`` is left empty: it would be ``size`` bytes)."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = factory.FIXED_MTIME
    head = info.tobuf(format=tarfile.PAX_FORMAT)
    tail = b"\0" * (-size % 512) + b"\0" * 1024
    sha = hashlib.sha256(head)
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [z.compress(head)]
    zeros = b"\0" * MIB
    left = size
    while left:
        n = min(left, MIB)
        out.append(z.compress(zeros[:n]))
        sha.update(zeros[:n])
        left -= n
    out.append(z.compress(tail))
    sha.update(tail)
    out.append(z.flush())
    blob = b"".join(out)
    return BuiltLayer(blob=blob, digest=sha256_digest(blob), diff_id="sha256:" + sha.hexdigest(),
                      compression="gzip", tar=b"")


def lying_diff_id(layer: BuiltLayer) -> BuiltLayer:
    """The same blob, but the config built over it will claim another diffID (the image then fails with
    ``DiffIDMismatchError`` once the layer is extracted)."""
    return dataclasses.replace(layer, diff_id=sha256_digest(b"not this layer's tar"))


def corrupt_gzip_layer(entries: list[Entry]) -> BuiltLayer:
    """A gzip stream with bytes flipped in its deflate data; the blob digest is of the corrupt bytes (valid)."""
    good = factory.build_layer(entries)
    blob = bytearray(good.blob)
    middle = len(blob) // 2
    blob[middle:middle + 32] = bytes(b ^ 0x5A for b in blob[middle:middle + 32])
    return BuiltLayer(blob=bytes(blob), digest=sha256_digest(bytes(blob)), diff_id=good.diff_id,
                      compression="gzip", tar=good.tar)


def truncated_layer(entries: list[Entry]) -> BuiltLayer:
    """A well-formed gzip of a tar cut in the middle of its last file's content (the diffID is the cut tar's)."""
    tar = factory.build_tar(entries)
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        last = archive.getmembers()[-1]
    assert last.size > 1, "the last entry must be a file with content"
    cut = tar[: last.offset_data + last.size // 2]
    blob = gzip.compress(cut, mtime=0)
    return BuiltLayer(blob=blob, digest=sha256_digest(blob), diff_id=sha256_digest(cut), compression="gzip",
                      tar=cut)


def deep_path_layer(levels: int = 10_000) -> BuiltLayer:
    """A file ``levels`` directories deep (a 2 * ``levels`` character PAX path): longer than PATH_MAX."""
    return factory.build_layer([factory.file("d/" * levels + "f", "deep")])


def dangling_link_cases() -> dict[str, list[BuiltLayer]]:
    """Layers (above a common base with ``d/``, ``usr/``) writing through symlinks, by case name.  podman 4.3's
    verdict for each is in :data:`PODMAN_REFUSES` (overlay, vfs)."""
    base = factory.build_layer([factory.directory("d"), factory.file("d/keep", "k"), factory.directory("usr"),
                                factory.file("usr/u", "u")])
    missing = "/some/missing/dir"

    def one(*entries: Entry) -> list[BuiltLayer]:
        return [base, factory.build_layer(list(entries))]

    return {
        "file-under-link": one(factory.symlink("l", missing), factory.file("l/x", "x")),
        "deeper-under-link": one(factory.symlink("l", missing), factory.file("l/a/x", "x")),
        "dir-under-link": one(factory.symlink("l", missing), factory.directory("l/d")),
        "relative-link": one(factory.symlink("l", "missing/dir"), factory.file("l/x", "x")),
        "lower-dir-becomes-link": one(factory.symlink("d", missing), factory.file("d/x", "x")),
        "link-then-next-layer": [base, factory.build_layer([factory.symlink("d", missing)]),
                                 factory.build_layer([factory.file("d/x", "x")])],
        "whiteout-under-link": one(factory.symlink("l", missing), factory.whiteout("l/foo")),
        "link-to-lower-dir": one(factory.symlink("l", "/usr"), factory.file("l/x", "x")),
        "link-to-own-dir": one(factory.directory("own"), factory.symlink("l", "/own"), factory.file("l/a/x", "x")),
    }


#: What podman 4.3 (containers/storage's chrooted applier) does with each case, per driver: True = refused.
#: overlay applies a layer into its own empty diff (so a link to a lower layer's directory leads nowhere,
#: and a link made by a lower layer is not there); vfs into a copy of the parent's tree.
PODMAN_REFUSES: dict[str, dict[str, bool]] = {
    "file-under-link": {"overlay": True, "vfs": True},
    "deeper-under-link": {"overlay": True, "vfs": True},
    "dir-under-link": {"overlay": True, "vfs": True},
    "relative-link": {"overlay": True, "vfs": True},
    "lower-dir-becomes-link": {"overlay": True, "vfs": True},
    "link-then-next-layer": {"overlay": False, "vfs": True},
    "whiteout-under-link": {"overlay": True, "vfs": False},
    "link-to-lower-dir": {"overlay": True, "vfs": False},
    "link-to-own-dir": {"overlay": False, "vfs": False},
}
