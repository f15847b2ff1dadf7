"""What ``pip install .`` puts into site-packages: one ``tether`` package (engine, registry and store inside it),
its dist-info and the console script; nothing generic such as ``engine`` or ``store``."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_directory_is_installed() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapping: dict[str, str] = config["package-dir"]
    listed = set(config["packages"])
    on_disk = {"tether"}
    for top in ("engine", "registry", "store"):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT)
            if rel.parts[:2] == ("engine", "api"):
                continue  # the `tether` package itself
            on_disk.add(".".join(("tether", *rel.parts)))
    assert listed == on_disk
    assert mapping == {"tether": "engine/api", "tether.engine": "engine", "tether.registry": "registry",
                       "tether.store": "store"}


def test_wheel_holds_only_the_tether_namespace(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("tether-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        tops = {name.split("/")[0] for name in names}
        entry_points = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
        metadata = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert tops - dist_info == {"tether"}
    assert "tether/__init__.py" in names and "tether/py.typed" in names
    assert "tether/engine/cli/main.py" in names and "tether/store/containers_storage/__init__.py" in names
    assert not any(name.startswith("tether/engine/api/") for name in names)
    assert "tether = tether.engine.cli.main:run" in entry_points
    assert "License-Expression: Apache-2.0" in metadata


def test_import_tether_names_the_version() -> None:
    out = subprocess.run([sys.executable, "-c", "import tether; print(tether.__version__)"], check=True,
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "0.1.0"
