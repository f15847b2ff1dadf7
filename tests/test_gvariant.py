"""The GVariant reader of ostree's staged-deployment file against GLib itself (Debian's python3-gi, run with the
system Python): values GLib serializes read back the same, including the file ``ostree admin deploy --stage``
wrote on a sysroot booted in a namespace."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.harness.ostree_sysroot import make_sysroot
from tether.engine.bound.gvariant import GVariantError, parse_asv

SYSTEM_PYTHON = "/usr/bin/python3"


def _has_glib() -> bool:
    try:
        return subprocess.run([SYSTEM_PYTHON, "-c", "from gi.repository import GLib"], capture_output=True,
                              timeout=60).returncode == 0
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not _has_glib(), reason="needs python3-gi and gir1.2-glib-2.0 (install-deps.sh)")

#: Serializes each case with GLib (``a{sv}`` built from (key, type, value) triples, nested a{sv} as lists).
SERIALIZE = r"""
import json, sys
from gi.repository import GLib

def build(items):
    builder = GLib.VariantBuilder.new(GLib.VariantType.new("a{sv}"))
    for key, type_, value in items:
        child = build(value) if type_ == "a{sv}" else GLib.Variant(type_, value)
        builder.add_value(GLib.Variant("{sv}", (key, child)))
    return builder.end()

out = {}
for name, items in json.load(sys.stdin).items():
    out[name] = build(items).get_data_as_bytes().get_data().hex()
print(json.dumps(out))
"""

READ = r"""
import json, sys
from gi.repository import GLib
data = open(sys.argv[1], "rb").read()
print(json.dumps(GLib.Variant.new_from_bytes(GLib.VariantType.new("a{sv}"), GLib.Bytes.new(data), False).unpack()))
"""


def target(name: str, osname: str = "fedora") -> list[Any]:
    return [["name", "s", name], ["osname", "s", osname], ["bootcsum", "s", "b" * 64]]


CASES: dict[str, list[Any]] = {
    "empty": [],
    "ostree": [["target", "a{sv}", target("a" * 64 + ".0")], ["merge-deployment", "a{sv}", target("c" * 64 + ".1")]],
    "every-key": [
        ["target", "a{sv}", target("a" * 64 + ".12", "rhel")],
        ["locked", "b", True],
        ["kargs", "as", ["root=UUID=1234", "rw", "quiet", "x" * 400]],  # > 255 bytes: 2-byte offsets
        ["overlay-initrds", "as", []],
        ["bootconfig-extra", "a{ss}", {"x-options-source-tuned": "nohz=full", "x-empty": ""}],
        ["unknown", "u", 7],
    ],
    "large": [["target", "a{sv}", target("d" * 64 + ".3")], ["kargs", "as", ["k" * 70000]]],  # 4-byte offsets
}


def glib(cases: dict[str, list[Any]]) -> dict[str, bytes]:
    proc = subprocess.run([SYSTEM_PYTHON, "-c", SERIALIZE], input=json.dumps(cases), capture_output=True,
                          text=True, check=True, timeout=60)
    return {name: bytes.fromhex(data) for name, data in json.loads(proc.stdout).items()}


def expected(items: list[Any]) -> dict[str, Any]:
    return {key: expected(value) if type_ == "a{sv}" else value for key, type_, value in items}


def test_reads_what_glib_writes() -> None:
    for name, data in glib(CASES).items():
        parsed = parse_asv(data)
        want = expected(CASES[name])
        assert isinstance(parsed.pop("unknown", b""), bytes)  # a type it does not decode stays raw
        want.pop("unknown", None)
        assert parsed == want, name


def test_malformed_input_is_an_error_not_a_guess() -> None:
    data = glib({"ostree": CASES["ostree"]})["ostree"]
    for bad in (data[:-1], data[:-5], data[:20], b"\xff" * 40, data[:-1] + b"\xff"):
        with pytest.raises(GVariantError):
            parse_asv(bad)


@pytest.mark.skipif(shutil.which("ostree") is None, reason="ostree not installed")
def test_reads_the_file_ostree_stages(tmp_path: Path) -> None:
    sysroot = make_sysroot(tmp_path)
    sysroot.commit({}, tag="v1")
    sysroot.deploy()
    booted = sysroot.default_deployment().name
    sysroot.commit({}, tag="v2")
    run_dir = tmp_path / "run"
    staged = sysroot.stage(run_dir)
    marker = run_dir / "ostree" / "staged-deployment"
    read = subprocess.run([SYSTEM_PYTHON, "-c", READ, str(marker)], capture_output=True, text=True, check=True,
                          timeout=60)
    assert parse_asv(marker.read_bytes()) == json.loads(read.stdout)
    doc = parse_asv(marker.read_bytes())
    target, merge = doc["target"], doc["merge-deployment"]
    assert isinstance(target, dict) and isinstance(merge, dict)
    assert (target["name"], target["osname"]) == (staged, "testos")
    assert merge["name"] == booted  # ostree merges /etc from the booted deployment
