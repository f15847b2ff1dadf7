"""Test helpers for store/: a minimal synchronous "engine" that pulls an image over plain HTTP into a
:class:`tether.store.containers_storage.Store` (stage -> publish in parent order -> commit), independent of engine/.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import httpx

from tether.store.containers_storage import ImageRecord, StagedLayer, Store, chain_id

MANIFEST_ACCEPT = ", ".join([
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
])


@dataclass(frozen=True)
class Fetched:
    manifest: bytes
    manifest_digest: str
    config: bytes
    index: bytes | None
    index_digest: str | None


def fetch_image(client: httpx.Client, host: str, repo: str, ref: str) -> Fetched:
    base = f"http://{host}/v2/{repo}"
    resp = client.get(f"{base}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT})
    resp.raise_for_status()
    raw = resp.content
    parsed = json.loads(raw)
    index = index_digest = None
    if "manifests" in parsed:
        index, index_digest = raw, "sha256:" + hashlib.sha256(raw).hexdigest()
        chosen = next(m for m in parsed["manifests"]
                      if m.get("platform", {}).get("architecture") == "amd64"
                      and m.get("platform", {}).get("os") == "linux")
        resp = client.get(f"{base}/manifests/{chosen['digest']}", headers={"Accept": MANIFEST_ACCEPT})
        resp.raise_for_status()
        raw = resp.content
        parsed = json.loads(raw)
    config = client.get(f"{base}/blobs/{parsed['config']['digest']}").content
    return Fetched(raw, "sha256:" + hashlib.sha256(raw).hexdigest(), config, index, index_digest)


def pull_into_store(store: Store, host: str, repo_tag: str, *, name: str | None = None,
                    chunk_size: int = 64 * 1024) -> ImageRecord:
    """Pull ``repo:tag`` from a plain-HTTP registry into ``store`` as the engine will: stage layers
    (concurrently for overlay), publish them in parent order after the diffID check, commit last."""
    repo, _, tag = repo_tag.partition(":")
    with httpx.Client(timeout=60) as client:
        fetched = fetch_image(client, host, repo, tag or "latest")
        manifest = json.loads(fetched.manifest)
        config = json.loads(fetched.config)
        diff_ids = config["rootfs"]["diff_ids"]
        ids: list[str] = []
        parent: str | None = None
        for diff_id in diff_ids:
            parent = chain_id(parent, diff_id)
            ids.append(parent)
        staged: dict[int, StagedLayer] = {}
        errors: list[BaseException] = []

        def stage(index: int) -> None:
            layer_id = ids[index]
            if store.get_layer(layer_id) is not None:
                return
            desc = manifest["layers"][index]
            with store.stage_layer(layer_id=layer_id, parent=ids[index - 1] if index else None) as writer, \
                    httpx.Client(timeout=60) as own, \
                    own.stream("GET", f"http://{host}/v2/{repo}/blobs/{desc['digest']}") as resp:
                resp.raise_for_status()
                for chunk in resp.iter_bytes(chunk_size):
                    writer.write(chunk)
                staged[index] = writer.finish()

        def publish(index: int) -> None:
            if index in staged:
                desc = manifest["layers"][index]
                store.publish_layer(staged[index], expected_diff_digest=diff_ids[index],
                                    compressed_digest=desc["digest"], compressed_size=desc["size"])

        if store.concurrent_layers:
            def run(index: int) -> None:
                try:
                    stage(index)
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=run, args=(i,)) for i in range(len(ids))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            if errors:
                raise errors[0]
            for index in range(len(ids)):
                publish(index)
        else:
            for index in range(len(ids)):
                stage(index)
                publish(index)
        image_id = hashlib.sha256(fetched.config).hexdigest()
        return store.commit_image(
            image_id=image_id,
            top_layer=ids[-1],
            names=[name or f"{host}/{repo_tag}"],
            manifest=fetched.manifest,
            manifest_digest=fetched.manifest_digest,
            config=fetched.config,
            created=None,
            index_manifest=fetched.index,
            index_digest=fetched.index_digest,
        )



def release_podman(root: Path, runroot: Path) -> None:
    """Undo what podman may leave mounted after a failed command (``podman run`` in this sandbox): its run
    root and the driver home it bind-mounts onto itself (overlay.go ``Init``)."""
    import subprocess

    for path in (runroot, root / "overlay"):
        subprocess.run(["umount", "-R", str(path)], capture_output=True, check=False)
