"""The shipped systemd integration (contrib/systemd) is valid and runs commands the CLI accepts."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tether.engine.bound.quadlet import parse_unit
from tether.engine.cli.parser import build_parser

CONTRIB = Path(__file__).resolve().parent.parent / "contrib" / "systemd"
UNITS = ("tether-bound-sync.service", "tether-bound-sync.path", "tether-bound-sync.timer")


def tether_commands(text: str) -> list[list[str]]:
    """Every ``/usr/bin/tether ...`` command line in a unit (ExecStart= values and sh -c scripts)."""
    commands: list[list[str]] = []
    for value in parse_unit(text).get_all("Service", "ExecStart"):
        for match in re.finditer(r"/usr/bin/tether ([^;|&']+)", value):
            commands.append(shlex.split(match.group(1)))
    return commands


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_units_verify(tmp_path: Path) -> None:
    for name in UNITS:
        shutil.copy(CONTRIB / name, tmp_path / name)
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(str(tmp_path / n) for n in UNITS)],
        capture_output=True, text=True,
    )
    problems = [
        line for line in proc.stderr.splitlines()
        if line.strip() and "/usr/bin/tether is not executable" not in line  # not installed in the test VM
    ]
    assert problems == []


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_gate_drop_in_verifies_over_a_stand_in_for_bootcs_unit(tmp_path: Path) -> None:
    # systemd-analyze verify loads the drop-in directory next to the unit it is given
    (tmp_path / "bootc-fetch-apply-updates.service").write_text(
        "[Unit]\nDescription=stand-in for bootc's unit\n[Service]\nType=oneshot\nExecStart=/bin/true\n")
    dropins = tmp_path / "bootc-fetch-apply-updates.service.d"
    dropins.mkdir()
    shutil.copy(CONTRIB / "bootc-fetch-apply-updates.service.d/50-tether-gate.conf", dropins)
    unit = tmp_path / "bootc-fetch-apply-updates.service"
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True)
    assert (proc.returncode, proc.stderr) == (0, "")


def test_service_writes_the_read_only_sysroot_from_its_own_mount_namespace() -> None:
    # tether remounts /sysroot read-write only inside a mount namespace (engine/writable.py); the unit keeps the
    # service's mounts apart from the host's too (tests/test_readonly_store.py runs the remount itself)
    unit = parse_unit((CONTRIB / "tether-bound-sync.service").read_text())
    assert unit.get("Service", "PrivateMounts") == "yes"


def test_service_retries_until_ready() -> None:
    unit = parse_unit((CONTRIB / "tether-bound-sync.service").read_text())
    assert unit.get("Service", "Type") == "oneshot"
    assert unit.get("Service", "Restart") == "on-failure"
    assert unit.get("Unit", "StartLimitIntervalSec") == "0"
    path = parse_unit((CONTRIB / "tether-bound-sync.path").read_text())
    assert path.get("Path", "PathChanged") == "/run/ostree/staged-deployment"
    assert path.get("Path", "Unit") == "tether-bound-sync.service"


@pytest.mark.parametrize(
    "name", ["tether-bound-sync.service", "bootc-fetch-apply-updates.service.d/50-tether-gate.conf"]
)
def test_commands_parse(name: str) -> None:
    commands = tether_commands((CONTRIB / name).read_text())
    assert commands
    parser = build_parser()
    for argv in commands:
        args = parser.parse_args(argv)
        assert args.verb == " ".join(argv[:2])  # bound sync, bound status: a verb dispatch runs
        assert args.sysroot == Path("/")


def test_gate_reboots_only_after_the_check() -> None:
    unit = parse_unit((CONTRIB / "bootc-fetch-apply-updates.service.d/50-tether-gate.conf").read_text())
    script = unit.get_all("Service", "ExecStart")[-1]
    assert unit.get_all("Service", "ExecStart")[0] == ""  # resets bootc's ExecStart
    assert script.startswith("/bin/sh -ec")
    check = script.index("--check staged")
    assert script.index("bootc upgrade") < script.index("tether bound sync") < check < script.index("systemctl reboot")
