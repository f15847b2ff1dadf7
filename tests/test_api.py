"""``import tether``: the Python API, loaded on first use, against a real registry, a layout and podman."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import images as factory
from tests.harness.podman import Podman, short_runroot
from tests.harness.registry import RunningRegistry


def test_import_tether_loads_no_engine() -> None:
    code = ("import sys, tether\n"
            "print(sorted(m for m in ('trio', 'httpx', 'rich', 'tether.engine.copy.pull') if m in sys.modules))\n"
            "print(tether.pull.__module__, tether.sync_deployments.__module__, tether.mirror_sync.__module__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "[]"
    assert out[1] == "tether.engine.copy.pull tether.engine.bound.sync tether.engine.copy.mirror"


def test_unknown_names_are_attribute_errors() -> None:
    import tether

    with pytest.raises(AttributeError, match="no attribute 'pul'"):
        tether.pul  # noqa: B018
    assert set(tether.__all__) >= {"pull", "sync_deployments", "compute_status", "mirror_sync", "Store"}


async def test_the_documented_example_pulls_and_mirrors(tmp_path: Path, registry: RunningRegistry) -> None:
    import tether

    image = factory.simple_image(41, files=3)
    factory.push_image(registry.host, "api/agent:1.2", image)
    conf = tmp_path / "registries.conf"
    conf.write_text(f'[[registry]]\nlocation = "{registry.host}"\ninsecure = true\n')
    runroot = short_runroot()
    options = tether.CommonOptions(root=tmp_path / "store", runroot=runroot, storage_driver="overlay",
                                   registries_conf=conf, authfile=tmp_path / "none.json", tls_verify=False,
                                   environ={"PATH": "/usr/bin:/bin"})
    (tmp_path / "none.json").write_text('{"auths": {}}')
    store = tether.Store.open(options.root, runroot=runroot, driver="overlay")
    report = await tether.pull([f"{registry.host}/api/agent:1.2"], store=store, options=options)
    assert report.ok, report.summary()
    assert report.results[0].image_id == image.image_id
    podman = Podman(root=options.root, runroot=runroot)
    assert podman.json("image", "inspect", f"{registry.host}/api/agent:1.2")[0]["Id"] == image.image_id

    mirrored = await tether.mirror_sync([f"{registry.host}/api/agent:1.2"], to=f"oci:{tmp_path / 'mirror'}",
                                        options=options)
    assert mirrored.ok, mirrored.summary()
    assert mirrored.images[0].digest == image.manifest_digest
