"""The benchmark corpus: realistic images made of this machine's own distribution files.

Layers are GNU tars of real directories (``/usr/bin``: large binaries; ``/usr/share``: tens of thousands of
small files; ``/usr/lib/python3.11``...) compressed with gzip (pigz, level 6), assembled into OCI images in an
OCI layout under the work directory, and pushed with ``skopeo copy`` to a local docker-registry. Everything
is cached: a second run only pushes what the registry lacks.

Images (tags of ``bench/...`` on the registry):

* ``bench/big:v1``: 4 layers, about 1.1 GB / 60k files unpacked (the "one large image" case);
* ``bench/big:v2``: the same with only the top layer changed (the "new tag" case);
* ``bench/five-{0..4}:v1``: five images sharing a 350 MB base, each with its own top layer;
* ``bench/ten-{0..9}:v1``: ten names for the warm no-op case (the five images, twice, under other names);
* ``bench/tiny-{0..4}:v1``: five tiny images (about 80 KB each: a shared 60 KB base and a 20 KB top), the
  everyday case of small bound images where fixed costs and round trips dominate.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
CREATED = "2026-11-30T00:00:00Z"


@dataclass(frozen=True)
class LayerSpec:
    """A layer: the tar of ``paths`` (relative to ``/``), or of a small generated tree when ``generated``."""

    name: str
    paths: tuple[str, ...] = ()
    generated: str | None = None


def _existing(paths: Sequence[str]) -> tuple[str, ...]:
    return tuple(p for p in paths if (Path("/") / p).exists())


BASE = LayerSpec("usr-bin", _existing(["usr/bin", "usr/sbin"]))
SHARE = LayerSpec("usr-share", _existing(["usr/share"]))
PYTHON = LayerSpec("python", _existing(["usr/lib/python3", "usr/lib/python3.11"]))
APP_V1 = LayerSpec("app-v1", generated="v1")
APP_V2 = LayerSpec("app-v2", generated="v2")
TOPS = [
    LayerSpec("top-gcc", _existing(["usr/lib/gcc"])),
    LayerSpec("top-python", _existing(["usr/lib/python3", "usr/lib/python3.11"])),
    LayerSpec("top-postgresql", _existing(["usr/lib/postgresql", "usr/lib/systemd"])),
    LayerSpec("top-cni", _existing(["usr/lib/cni", "usr/lib/file"])),
    LayerSpec("top-git", _existing(["usr/lib/git-core", "usr/lib/podman"])),
]

TINY_BASE = LayerSpec("tiny-base", generated="tiny-base")
TINY_TOPS = [LayerSpec(f"tiny-top-{n}", generated=f"tiny-top-{n}") for n in range(5)]

IMAGES: dict[str, tuple[LayerSpec, ...]] = {
    "bench/big:v1": (BASE, SHARE, PYTHON, APP_V1),
    "bench/big:v2": (BASE, SHARE, PYTHON, APP_V2),
    **{f"bench/five-{n}:v1": (BASE, TOPS[n]) for n in range(5)},
    **{f"bench/tiny-{n}:v1": (TINY_BASE, TINY_TOPS[n]) for n in range(5)},
}
TEN = {f"bench/ten-{n}:v1": f"bench/five-{n % 5}:v1" for n in range(10)}
TINY = [f"bench/tiny-{n}:v1" for n in range(5)]


@dataclass(frozen=True)
class BuiltBlob:
    digest: str
    size: int
    diff_id: str


def _generate_tiny(root: Path, name: str) -> None:
    """A tiny layer: 2 KiB files of incompressible bytes derived from ``name``, 30 of them in the base (about
    60 KB compressed), 10 in a top layer (about 20 KB)."""
    base = name == "tiny-base"
    where = root / ("usr/lib/tiny" if base else f"opt/{name}")
    where.mkdir(parents=True)
    for n in range(30 if base else 10):
        seed = f"{name}/{n}".encode()
        data = b"".join(hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(64))
        (where / f"f{n:02d}.bin").write_bytes(data)


def _generate_tree(root: Path, version: str) -> None:
    """A small application layer (a few hundred files) whose content depends on ``version``; the tiny
    layers for ``tiny-*``."""
    if version.startswith("tiny-"):
        _generate_tiny(root, version)
        return
    app = root / "opt" / "app"
    for n in range(300):
        d = app / f"mod{n % 20:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"file{n:03d}.py").write_text(f"# app {version} module {n}\n" + "x = 1\n" * (n % 50 + 1))
    (app / "VERSION").write_text(version + "\n")
    big = hashlib.sha256(version.encode()).digest() * (8 * 1024 * 1024 // 32)
    (app / "data.bin").write_bytes(big)


def _build_layer(spec: LayerSpec, blobs: Path, work: Path) -> BuiltBlob:
    """tar | tee(sha256 -> diffID) | pigz -6 -n > blob; returns the blob's digest, size and diffID."""
    cache = work / "layers" / f"{spec.name}.json"
    if cache.exists():
        info = json.loads(cache.read_text())
        if (blobs / info["digest"].split(":")[1]).exists():
            return BuiltBlob(info["digest"], info["size"], info["diff_id"])
    cache.parent.mkdir(parents=True, exist_ok=True)
    if spec.generated is not None:
        tree = work / "generated" / spec.name
        if tree.exists():
            shutil.rmtree(tree)
        _generate_tree(tree, spec.generated)
        tar_cmd = ["tar", "--numeric-owner", "--sort=name", "--mtime=@1700000000", "-C", str(tree), "-cf", "-",
                   *sorted(entry.name for entry in tree.iterdir())]
    else:
        tar_cmd = ["tar", "--numeric-owner", "--sort=name", "--ignore-failed-read", "-C", "/", "-cf", "-",
                   *spec.paths]
    tmp = blobs / f".tmp-{spec.name}"
    with open(tmp, "wb") as out:
        tar = subprocess.Popen(tar_cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        gz = subprocess.Popen(["pigz", "-6", "-n", "-c"], stdin=subprocess.PIPE, stdout=out)
        assert tar.stdout is not None and gz.stdin is not None
        diff = hashlib.sha256()
        while chunk := tar.stdout.read(1 << 20):
            diff.update(chunk)
            gz.stdin.write(chunk)
        gz.stdin.close()
        tar.stdout.close()
        if gz.wait() != 0 or tar.wait() not in (0, 1):  # tar: 1 = some files changed while read
            raise RuntimeError(f"building layer {spec.name} failed")
    digest = _file_digest(tmp)
    size = tmp.stat().st_size
    tmp.rename(blobs / digest.split(":")[1])
    cache.write_text(json.dumps({"digest": digest, "size": size, "diff_id": "sha256:" + diff.hexdigest()}))
    return BuiltBlob(digest, size, "sha256:" + diff.hexdigest())


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _put(blobs: Path, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (blobs / digest.split(":")[1]).write_bytes(data)
    return digest, len(data)


def build_layout(work: Path, images: dict[str, tuple[LayerSpec, ...]] | None = None) -> Path:
    """Build (or reuse) the OCI layout holding every corpus image (or only ``images``); returns its directory."""
    images = IMAGES if images is None else images
    layout = work / "layout"
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    built: dict[str, BuiltBlob] = {}
    specs = {spec.name: spec for layers in images.values() for spec in layers}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def build(spec: LayerSpec) -> None:
        try:
            blob = _build_layer(spec, blobs, work)
            with lock:
                built[spec.name] = blob
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=build, args=(spec,)) for spec in specs.values()]
    # two at a time: pigz already uses both cores
    for i in range(0, len(threads), 2):
        for t in threads[i:i + 2]:
            t.start()
        for t in threads[i:i + 2]:
            t.join()
    if errors:
        raise errors[0]
    manifests = []
    for ref, layers in images.items():
        config = {
            "created": CREATED, "architecture": "amd64", "os": "linux",
            "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                       "Labels": {"org.example.bench": ref}},
            "rootfs": {"type": "layers", "diff_ids": [built[s.name].diff_id for s in layers]},
            "history": [{"created": CREATED, "created_by": f"tar {' '.join(s.paths) or s.name}"} for s in layers],
        }
        cfg_digest, cfg_size = _put(blobs, json.dumps(config, separators=(",", ":")).encode())
        manifest = {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": cfg_digest, "size": cfg_size},
            "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": built[s.name].digest, "size": built[s.name].size}
                       for s in layers],
        }
        m_digest, m_size = _put(blobs, json.dumps(manifest, separators=(",", ":")).encode())
        manifests.append({"mediaType": OCI_MANIFEST, "digest": m_digest, "size": m_size,
                          "annotations": {"org.opencontainers.image.ref.name": ref.replace("/", "-")}})
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                                   "manifests": manifests}))
    return layout


def layer_blobs(layout: Path, ref: str) -> list[Path]:
    """The layer blob files of ``ref`` in the layout (for the extraction floor)."""
    index = json.loads((layout / "index.json").read_text())
    name = ref.replace("/", "-")
    entry = next(m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == name)
    blobs = layout / "blobs" / "sha256"
    manifest = json.loads((blobs / entry["digest"].split(":")[1]).read_bytes())
    return [blobs / layer["digest"].split(":")[1] for layer in manifest["layers"]]


def push_corpus(layout: Path, host: str, *, env: dict[str, str], refs: Sequence[str] | None = None) -> None:
    """Push every image (and the ten warm names), or only ``refs``, with skopeo; skipped when the registry has
    it already."""
    import httpx

    def present(ref: str) -> bool:
        repo, _, tag = ref.partition(":")
        resp = httpx.head(f"http://{host}/v2/{repo}/manifests/{tag}",
                          headers={"Accept": OCI_MANIFEST})
        return resp.status_code == 200

    for ref in [*IMAGES, *TEN] if refs is None else refs:
        if present(ref):
            continue
        src = TEN.get(ref, ref)
        subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
                        f"oci:{layout}:{src.replace('/', '-')}", f"docker://{host}/{ref}"],
                       check=True, env=env)


def corpus_summary(layout: Path) -> dict[str, dict[str, int]]:
    """Compressed size and layer count per image."""
    out = {}
    for ref in IMAGES:
        blobs = layer_blobs(layout, ref)
        out[ref] = {"layers": len(blobs), "compressed_bytes": sum(b.stat().st_size for b in blobs)}
    return out


def ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o755)
    return path
