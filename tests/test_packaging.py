"""What ``pip install .`` puts into site-packages: one ``tether`` package (engine, registry and store inside it),
its dist-info and the console script; nothing generic such as ``engine`` or ``store``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

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
    dist_info = {t for t in tops if t.endswith(".dist-info") or t.endswith(".data")}
    assert tops - dist_info == {"tether"}
    # data files, installed under the prefix (pyproject.toml [tool.setuptools.data-files]): nothing else
    data = {n.split("/", 2)[2].rsplit("/", 1)[0] for n in names if n.split("/")[0].endswith(".data")}
    assert data == {"lib/systemd/system", "lib/systemd/system-preset", "share/man/man1",
                    "share/bash-completion/completions"}
    assert "tether/__init__.py" in names and "tether/py.typed" in names
    assert "tether/engine/cli/main.py" in names and "tether/store/containers_storage/__init__.py" in names
    assert not any(name.startswith("tether/engine/api/") for name in names)
    assert "tether = tether.engine.cli.main:run" in entry_points
    assert "License-Expression: Apache-2.0" in metadata


def test_import_tether_names_the_version() -> None:
    out = subprocess.run([sys.executable, "-c", "import tether; print(tether.__version__)"], check=True,
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "0.1.0"


# ---- the install story: sdist (with contrib/), RPM spec, the wheel under a /usr prefix as a Containerfile does

SPEC = ROOT / "contrib" / "rpm" / "tether.spec"
UNITS = ("tether-bound-sync.service", "tether-bound-sync.path", "tether-bound-sync.timer",
         "tether-bound-download.service", "tether-bound-download.timer")
#: What Fedora's pyproject-rpm-macros and systemd-rpm-macros provide, stubbed: Debian's rpm lacks them, and with
#: them defined every macro of the spec must expand (a misspelt one would be left as %name).
FEDORA_MACROS = {
    "_unitdir": "/usr/lib/systemd/system", "_presetdir": "/usr/lib/systemd/system-preset",
    "pyproject_files": "%{_builddir}/pyproject-files", "pyproject_buildrequires": "echo buildrequires",
    "pyproject_wheel": "echo wheel", "pyproject_install": "echo install", "pyproject_save_files()": "echo save %*",
    "pyproject_check_import(t)": "echo check %**", "systemd_post()": "echo post %*",
    "systemd_preun()": "echo preun %*", "systemd_postun()": "echo postun %*",
    "systemd_requires": "Requires: systemd",
}
SECTIONS = {"%description", "%generate_buildrequires", "%prep", "%build", "%install", "%check", "%post", "%preun",
            "%postun", "%files", "%doc", "%license", "%changelog"}


def copy_tree(tmp: Path) -> Path:
    """The project's files (as git or an sdist would have them) in a fresh directory: a build writes in place."""
    tree = tmp / "src"
    ignore = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
                                    ".typecheck", ".hypothesis", "demo-out")
    shutil.copytree(ROOT, tree, ignore=ignore, symlinks=True)
    return tree


def build(tree: Path, out: Path, *kinds: str) -> subprocess.CompletedProcess[str]:
    """Build with the venv's own setuptools, no isolation (PEP 517 hooks, as `python -m build -n` calls them)."""
    calls = "; ".join(f"print(b.build_{kind}({str(out)!r}))" for kind in kinds)
    return subprocess.run([sys.executable, "-c", f"from setuptools import build_meta as b; {calls}"], cwd=tree,
                          capture_output=True, text=True, timeout=300, check=True)


def warnings_in(proc: subprocess.CompletedProcess[str]) -> list[str]:
    text = proc.stdout + proc.stderr
    # "adding license file ..." is setuptools reporting license-files, not a warning
    return [line for line in text.splitlines()
            if "deprecat" in line.lower() or ("license" in line.lower() and "warn" in line.lower())]


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[str]]:
    """The sdist and the wheel of the project, and the license or deprecation warnings their build printed."""
    tmp = tmp_path_factory.mktemp("dists")
    out = tmp / "dist"
    out.mkdir()
    proc = build(copy_tree(tmp), out, "sdist", "wheel")
    (sdist,) = out.glob("tether-*.tar.gz")
    (wheel,) = out.glob("tether-*.whl")
    return sdist, wheel, warnings_in(proc)


def test_sdist_and_wheel_build_without_a_license_or_deprecation_warning(dists: tuple[Path, Path, list[str]],
                                                                       tmp_path: Path) -> None:
    assert dists[2] == []
    # The same check sees the warning setuptools gives for the old table form of the license.
    tree = copy_tree(tmp_path)
    pyproject = tree / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('license = "Apache-2.0"', 'license = { text = "Apache-2.0" }')
                         .replace('license-files = ["LICENSE"]\n', ''))
    (tmp_path / "out").mkdir()
    assert any("license" in line.lower() for line in warnings_in(build(tree, tmp_path / "out", "sdist")))


def test_sdist_carries_contrib_for_the_spec(dists: tuple[Path, Path, list[str]]) -> None:
    with tarfile.open(dists[0]) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    assert {"contrib/rpm/tether.spec", "contrib/systemd/50-tether.preset", "contrib/completion/bash/tether",
            "contrib/man/tether.1", "contrib/man/tether-pull.1", "README.md", "ARCHITECTURE.md"} <= names
    assert {f"contrib/systemd/{unit}" for unit in UNITS} <= names


def spec_query(*args: str) -> str:
    defines = [arg for name, body in FEDORA_MACROS.items() for arg in ("--define", f"{name} {body}")]
    return subprocess.run(["rpmspec", *defines, *args, str(SPEC)], capture_output=True, text=True, check=True,
                          timeout=60).stdout


@pytest.mark.skipif(shutil.which("rpmspec") is None, reason="rpm is not installed (scripts/install-deps.sh)")
def test_rpm_spec_parses_and_every_macro_expands() -> None:
    parsed = spec_query("-P")
    leftovers = [word for line in parsed.splitlines() if not line.startswith("#")
                 for word in line.split() if word.startswith("%") and word not in SECTIONS]
    assert leftovers == []
    assert spec_query("-q", "--qf", "%{NAME} %{VERSION} %{LICENSE} %{ARCH}\n") == "tether 0.1.0 Apache-2.0 noarch\n"
    for unit in UNITS:
        assert f"/usr/lib/systemd/system/{unit}" in parsed and f"post {' '.join(UNITS)}" in parsed
    assert "/usr/lib/systemd/system-preset/50-tether.preset" in parsed
    assert "/usr/share/bash-completion/completions/tether" in parsed and "/usr/share/man/man1/tether-*.1*" in parsed
    assert "echo wheel" in parsed and "echo save tether" in parsed


@pytest.mark.skipif(shutil.which("rpmbuild") is None, reason="rpm is not installed (scripts/install-deps.sh)")
def test_rpmbuild_makes_a_source_rpm_from_the_sdist(dists: tuple[Path, Path, list[str]], tmp_path: Path) -> None:
    # -ts: the spec is found inside the tarball, as `rpmbuild -ta` on a Fedora builder finds it.
    subprocess.run(["rpmbuild", "-ts", "--define", f"_topdir {tmp_path}", str(dists[0])], check=True,
                   capture_output=True, timeout=120)
    (srpm,) = (tmp_path / "SRPMS").glob("tether-*.src.rpm")
    query = subprocess.run(["rpm", "-qp", "--qf", "%{NAME} %{VERSION} %{LICENSE}\n", str(srpm)], check=True,
                           capture_output=True, text=True).stdout
    assert query == "tether 0.1.0 Apache-2.0\n"
    listed = subprocess.run(["rpm", "-qpl", str(srpm)], check=True, capture_output=True, text=True).stdout.split()
    assert sorted(listed) == ["tether-0.1.0.tar.gz", "tether.spec"]


@pytest.mark.skipif(shutil.which("systemctl") is None, reason="systemd is not installed")
def test_the_wheel_under_usr_puts_units_preset_man_and_completion_in_place(
        dists: tuple[Path, Path, list[str]], tmp_path: Path) -> None:
    # What a Containerfile's `RUN pip install --prefix=/usr tether` does, into a directory standing for the image.
    image = tmp_path / "image"
    # --ignore-installed: without it pip uninstalls the tether of the running environment first.
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-compile", "-I",
                    "--root", str(image), "--prefix", "/usr", str(dists[1])], check=True, capture_output=True,
                   timeout=300)
    usr = image / "usr"
    for unit in UNITS:
        assert (usr / "lib/systemd/system" / unit).read_bytes() == (ROOT / "contrib/systemd" / unit).read_bytes()
    assert (usr / "lib/systemd/system-preset/50-tether.preset").is_file()
    assert (usr / "share/bash-completion/completions/tether").is_file()
    pages = {p.name for p in (ROOT / "contrib/man").glob("*.1")}
    assert {p.name for p in (usr / "share/man/man1").glob("*.1")} == pages
    (site,) = usr.glob("lib/python3*/site-packages")
    version = subprocess.run([str(usr / "bin/tether"), "--version"], capture_output=True, text=True, check=True,
                             env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}).stdout
    assert version == "tether 0.1.0\n"
    # the preset enables the path and the timer (the service is started by them), as systemctl preset does
    # at package install (%systemd_post) and on first boot
    subprocess.run(["systemctl", f"--root={image}", "preset", *UNITS], check=True, capture_output=True, timeout=60)
    wants = image / "etc/systemd/system"
    assert os.readlink(wants / "multi-user.target.wants/tether-bound-sync.path") == \
        "/usr/lib/systemd/system/tether-bound-sync.path"
    assert os.readlink(wants / "timers.target.wants/tether-bound-sync.timer") == \
        "/usr/lib/systemd/system/tether-bound-sync.timer"
    assert sorted(p.name for p in wants.rglob("tether-*")) == ["tether-bound-sync.path", "tether-bound-sync.timer"]
