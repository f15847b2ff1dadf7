"""An OCI image factory for tests: declared entries -> layer tars -> images and indexes -> registry or layout.

Everything is built in memory, deterministically (fixed mtimes, gzip without timestamps), so digests are
stable across runs. Pushing speaks the distribution API directly with a plain synchronous httpx client
(monolithic uploads), independent of tether's own registry client.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import httpx
import zstandard

Compression = Literal["gzip", "zstd", "none"]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = {
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    "none": "application/vnd.oci.image.layer.v1.tar",
}
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = {
    "gzip": "application/vnd.docker.image.rootfs.diff.tar.gzip",
    "none": "application/vnd.docker.image.rootfs.diff.tar",
}
FIXED_MTIME = 1_700_000_000
CREATED = "2023-11-14T22:13:20Z"


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- entries -----------------------------------------------------------------------------------------

EntryType = Literal["file", "dir", "symlink", "hardlink", "fifo", "char", "block"]


@dataclass(frozen=True)
class Entry:
    """One tar entry. ``path`` may be ``str`` or raw ``bytes`` (non-UTF-8 names)."""

    path: str | bytes
    type: EntryType = "file"
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    mtime: int = FIXED_MTIME
    xattrs: Mapping[str, bytes] = field(default_factory=dict)
    uname: str = ""
    gname: str = ""


def file(path: str | bytes, data: bytes | str = b"", *, mode: int = 0o644, uid: int = 0, gid: int = 0,
         mtime: int = FIXED_MTIME, xattrs: Mapping[str, bytes] | None = None) -> Entry:
    payload = data.encode() if isinstance(data, str) else data
    return Entry(path, "file", payload, mode, uid, gid, mtime=mtime, xattrs=dict(xattrs or {}))


def directory(path: str | bytes, *, mode: int = 0o755, uid: int = 0, gid: int = 0, mtime: int = FIXED_MTIME,
              xattrs: Mapping[str, bytes] | None = None) -> Entry:
    return Entry(path, "dir", b"", mode, uid, gid, mtime=mtime, xattrs=dict(xattrs or {}))


def symlink(path: str | bytes, target: str, *, uid: int = 0, gid: int = 0) -> Entry:
    return Entry(path, "symlink", b"", 0o777, uid, gid, linkname=target)


def hardlink(path: str | bytes, target: str, *, mode: int = 0o644) -> Entry:
    return Entry(path, "hardlink", b"", mode, linkname=target)


def fifo(path: str | bytes, *, mode: int = 0o644) -> Entry:
    return Entry(path, "fifo", b"", mode)


def char_device(path: str | bytes, major: int, minor: int, *, mode: int = 0o666) -> Entry:
    return Entry(path, "char", b"", mode, devmajor=major, devminor=minor)


def block_device(path: str | bytes, major: int, minor: int, *, mode: int = 0o660) -> Entry:
    return Entry(path, "block", b"", mode, devmajor=major, devminor=minor)


def whiteout(path: str) -> Entry:
    """An AUFS-style whiteout as images carry it: ``dir/.wh.NAME`` removes ``dir/NAME`` from lower layers."""
    head, _, name = path.rstrip("/").rpartition("/")
    return Entry(f"{head}/.wh.{name}" if head else f".wh.{name}", "file", b"", 0o600)


def opaque(dirpath: str) -> Entry:
    """Marks ``dirpath`` opaque: nothing of the lower layers' content shows through."""
    return Entry(f"{dirpath.rstrip('/')}/.wh..wh..opq", "file", b"", 0o600)


def many_small_files(prefix: str, count: int, *, size: int = 100, seed: int = 0) -> list[Entry]:
    """``count`` small files under ``prefix`` (plus the directory), content derived from ``seed``."""
    entries: list[Entry] = [directory(prefix)]
    for i in range(count):
        body = hashlib.sha256(f"{seed}:{i}".encode()).digest() * (size // 32 + 1)
        entries.append(file(f"{prefix}/f{i:06d}", body[:size]))
    return entries


def large_file(path: str, size: int, *, seed: int = 0) -> Entry:
    """A file of ``size`` pseudo-random (incompressible) bytes."""
    out = bytearray()
    block = hashlib.sha512(str(seed).encode()).digest()
    counter = 0
    while len(out) < size:
        out += hashlib.sha512(block + counter.to_bytes(8, "big")).digest()
        counter += 1
    return file(path, bytes(out[:size]), mode=0o755)


_TAR_TYPES = {
    "file": tarfile.REGTYPE,
    "dir": tarfile.DIRTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "fifo": tarfile.FIFOTYPE,
    "char": tarfile.CHRTYPE,
    "block": tarfile.BLKTYPE,
}


def build_tar(entries: Iterable[Entry], *, format: int = tarfile.PAX_FORMAT) -> bytes:
    """The uncompressed layer tar of ``entries``, in order (PAX headers for xattrs and long names)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=format, encoding="utf-8", errors="surrogateescape") as tar:
        for entry in entries:
            name = entry.path if isinstance(entry.path, str) else os.fsdecode(entry.path)
            info = tarfile.TarInfo(name)
            info.type = _TAR_TYPES[entry.type]
            info.mode = entry.mode
            info.uid, info.gid = entry.uid, entry.gid
            info.uname, info.gname = entry.uname, entry.gname
            info.mtime = entry.mtime
            info.linkname = entry.linkname
            info.devmajor, info.devminor = entry.devmajor, entry.devminor
            if entry.xattrs:
                info.pax_headers = {
                    f"SCHILY.xattr.{key}": value.decode("utf-8", "surrogateescape")
                    for key, value in entry.xattrs.items()
                }
            if entry.type == "file":
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
            else:
                info.size = 0
                tar.addfile(info)
    return buf.getvalue()


BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static: a static binary runnable in a scratch image


def busybox_entries() -> list[Entry]:
    """``/bin/busybox`` (static) with ``sh``, ``cat``, ``ls`` and ``echo`` links, for images podman runs."""
    entries = [directory("bin"), file("bin/busybox", BUSYBOX.read_bytes(), mode=0o755)]
    entries += [symlink(f"bin/{tool}", "busybox") for tool in ("sh", "cat", "ls", "echo", "id", "stat")]
    return entries


def compress(data: bytes, compression: Compression) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, compresslevel=1, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=1).compress(data)
    return data


# --- layers, images, indexes -------------------------------------------------------------------------


@dataclass(frozen=True)
class BuiltLayer:
    blob: bytes
    digest: str
    diff_id: str
    compression: Compression
    tar: bytes

    @property
    def size(self) -> int:
        return len(self.blob)


def build_layer(entries: Iterable[Entry] | bytes, compression: Compression = "gzip") -> BuiltLayer:
    """A layer blob from entries (or an already built tar)."""
    tar = entries if isinstance(entries, bytes) else build_tar(entries)
    blob = compress(tar, compression)
    return BuiltLayer(blob=blob, digest=sha256_digest(blob), diff_id=sha256_digest(tar), compression=compression,
                      tar=tar)


@dataclass(frozen=True)
class BuiltImage:
    manifest: bytes
    manifest_digest: str
    media_type: str
    config: bytes
    config_digest: str
    layers: tuple[BuiltLayer, ...]
    platform: Mapping[str, str]

    @property
    def image_id(self) -> str:
        """containers-storage's image id: the config digest's hex."""
        return self.config_digest.split(":", 1)[1]

    def blobs(self) -> list[tuple[str, bytes]]:
        return [(self.config_digest, self.config)] + [(layer.digest, layer.blob) for layer in self.layers]


@dataclass(frozen=True)
class BuiltIndex:
    manifest: bytes
    manifest_digest: str
    media_type: str
    images: tuple[BuiltImage, ...]


def canonical_json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=False).encode()


def build_image(
    layers: Sequence[BuiltLayer],
    *,
    docker: bool = False,
    architecture: str = "amd64",
    os: str = "linux",
    variant: str | None = None,
    env: Sequence[str] = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",),
    labels: Mapping[str, str] | None = None,
    cmd: Sequence[str] | None = None,
    created: str = CREATED,
    annotations: Mapping[str, str] | None = None,
) -> BuiltImage:
    """An image manifest + config over ``layers`` (OCI media types, or Docker schema2 with ``docker=True``)."""
    config_obj: dict[str, object] = {
        "created": created,
        "architecture": architecture,
        "os": os,
        "config": {"Env": list(env), **({"Labels": dict(labels)} if labels else {}),
                   **({"Cmd": list(cmd)} if cmd else {})},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": created, "created_by": f"tether test layer {i}"} for i in range(len(layers))],
    }
    if variant:
        config_obj["variant"] = variant
    config = canonical_json(config_obj)
    if docker:
        for layer in layers:
            if layer.compression not in DOCKER_LAYER:
                raise ValueError("Docker schema2 has no zstd layer media type")
        media_type, config_type = DOCKER_MANIFEST, DOCKER_CONFIG
        layer_types = [DOCKER_LAYER[layer.compression] for layer in layers]
    else:
        media_type, config_type = OCI_MANIFEST, OCI_CONFIG
        layer_types = [OCI_LAYER[layer.compression] for layer in layers]
    manifest_obj: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": config_type, "digest": sha256_digest(config), "size": len(config)},
        "layers": [
            {"mediaType": mt, "digest": layer.digest, "size": layer.size}
            for mt, layer in zip(layer_types, layers, strict=True)
        ],
    }
    if annotations:
        manifest_obj["annotations"] = dict(annotations)
    manifest = json.dumps(manifest_obj, indent=3).encode()
    platform = {"os": os, "architecture": architecture, **({"variant": variant} if variant else {})}
    return BuiltImage(manifest=manifest, manifest_digest=sha256_digest(manifest), media_type=media_type,
                      config=config, config_digest=sha256_digest(config), layers=tuple(layers), platform=platform)


def build_index(images: Sequence[BuiltImage], *, docker: bool = False,
                without_platform: Sequence[BuiltImage] = ()) -> BuiltIndex:
    """An OCI index (or Docker manifest list) over ``images``; ``without_platform`` entries carry none."""
    media_type = DOCKER_LIST if docker else OCI_INDEX
    entries: list[dict[str, object]] = [
        {"mediaType": image.media_type, "digest": image.manifest_digest, "size": len(image.manifest),
         "platform": dict(image.platform)}
        for image in images
    ]
    entries += [
        {"mediaType": image.media_type, "digest": image.manifest_digest, "size": len(image.manifest)}
        for image in without_platform
    ]
    manifest = json.dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": entries}, indent=3).encode()
    return BuiltIndex(manifest=manifest, manifest_digest=sha256_digest(manifest), media_type=media_type,
                      images=tuple(images) + tuple(without_platform))


def simple_image(seed: int = 0, *, files: int = 5, compression: Compression = "gzip", layers: int = 2,
                 **image_options: object) -> BuiltImage:
    """A small distinct image: ``layers`` layers of ``files`` files each, content derived from ``seed``."""
    built = [
        build_layer([directory("etc"), file(f"etc/seed-{seed}-{n}", f"seed {seed} layer {n}\n"),
                     *many_small_files(f"data{n}", files, seed=seed * 1000 + n)], compression)
        for n in range(layers)
    ]
    return build_image(built, **image_options)  # type: ignore[arg-type]


# --- pushing and layouts -----------------------------------------------------------------------------


def _auth(credentials: tuple[str, str] | None) -> httpx.BasicAuth | None:
    return httpx.BasicAuth(*credentials) if credentials else None


def push_blob(client: httpx.Client, base: str, repo: str, digest: str, data: bytes) -> None:
    head = client.head(f"{base}/v2/{repo}/blobs/{digest}")
    if head.status_code == 200:
        return
    start = client.post(f"{base}/v2/{repo}/blobs/uploads/")
    start.raise_for_status()
    location = start.headers["Location"]
    if location.startswith("/"):
        location = base + location
    sep = "&" if "?" in location else "?"
    put = client.put(f"{location}{sep}digest={digest}", content=data,
                     headers={"Content-Type": "application/octet-stream"})
    put.raise_for_status()


def push_image(
    host: str,
    repo_tag: str,
    image: BuiltImage | BuiltIndex,
    *,
    scheme: str = "http",
    credentials: tuple[str, str] | None = None,
    verify: bool | str = False,
    headers: Mapping[str, str] | None = None,
) -> str:
    """Push ``image`` (and, for an index, every image in it) as ``repo:tag`` (or ``repo`` for digest only).

    Returns the manifest digest. ``headers`` lets a test pass e.g. a bearer token.
    """
    repo, _, tag = repo_tag.partition(":")
    base = f"{scheme}://{host}"
    with httpx.Client(auth=_auth(credentials), verify=verify, headers=dict(headers or {}), timeout=60) as client:
        images = image.images if isinstance(image, BuiltIndex) else (image,)
        for one in images:
            for digest, data in one.blobs():
                push_blob(client, base, repo, digest, data)
            if isinstance(image, BuiltIndex):
                resp = client.put(f"{base}/v2/{repo}/manifests/{one.manifest_digest}", content=one.manifest,
                                  headers={"Content-Type": one.media_type})
                resp.raise_for_status()
        target = tag or image.manifest_digest
        resp = client.put(f"{base}/v2/{repo}/manifests/{target}", content=image.manifest,
                          headers={"Content-Type": image.media_type})
        resp.raise_for_status()
    return image.manifest_digest


def write_oci_layout(directory_path: Path, images: Mapping[str, BuiltImage | BuiltIndex]) -> None:
    """Write an OCI image layout holding ``images`` under their ``org.opencontainers.image.ref.name``s."""
    blobs = directory_path / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (directory_path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')

    def put(digest: str, data: bytes) -> None:
        (blobs / digest.split(":", 1)[1]).write_bytes(data)

    entries = []
    for ref, image in images.items():
        for one in image.images if isinstance(image, BuiltIndex) else (image,):
            for digest, data in one.blobs():
                put(digest, data)
            put(one.manifest_digest, one.manifest)
        put(image.manifest_digest, image.manifest)
        entries.append({"mediaType": image.media_type, "digest": image.manifest_digest, "size": len(image.manifest),
                        "annotations": {"org.opencontainers.image.ref.name": ref}})
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    (directory_path / "index.json").write_text(json.dumps(index))
