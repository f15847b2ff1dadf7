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
UNITS = ("tether-bound-sync.service", "tether-bound-sync.path", "tether-bound-sync.timer",
         "tether-bound-download.service", "tether-bound-download.timer")


def tether_commands(text: str, environment: dict[str, str] | None = None) -> list[list[str]]:
    """Every ``/usr/bin/tether ...`` command line in a unit (ExecStart= values and sh -c scripts); a bare
    ``$VAR`` word is split into the words of ``environment[VAR]``, none when unset, as systemd does."""
    commands: list[list[str]] = []
    for value in parse_unit(text).get_all("Service", "ExecStart"):
        for match in re.finditer(r"/usr/bin/tether ([^;|&']+)", value):
            argv: list[str] = []
            for word in shlex.split(match.group(1)):
                if word.startswith("$"):
                    argv.extend((environment or {}).get(word[1:], "").split())
                else:
                    argv.append(word)
            commands.append(argv)
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
    "name", ["tether-bound-sync.service", "tether-bound-download.service",
             "bootc-fetch-apply-updates.service.d/50-tether-gate.conf"]
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


def sync_conf_values() -> dict[str, str]:
    """The example values of contrib/systemd/sync.conf (its commented KEY=value lines)."""
    values: dict[str, str] = {}
    for line in (CONTRIB / "sync.conf").read_text().splitlines():
        match = re.match(r"^#?([A-Z_]+)=(.*)$", line)
        if match:
            values[match.group(1)] = match.group(2)
    return values


def test_sync_conf_sets_the_rate_of_both_units() -> None:
    # EnvironmentFile=-/etc/tether/sync.conf: missing is fine ("-"); its example values parse as options of the
    # command each unit runs, and --limit-rate reaches it.
    values = sync_conf_values()
    assert set(values) == {"TETHER_SYNC_OPTIONS", "TETHER_DOWNLOAD_OPTIONS"}
    parser = build_parser()
    for name, download in (("tether-bound-sync.service", False), ("tether-bound-download.service", True)):
        unit = parse_unit((CONTRIB / name).read_text())
        assert unit.get("Service", "EnvironmentFile") == "-/etc/tether/sync.conf"
        (argv,) = tether_commands((CONTRIB / name).read_text(), values)
        args = parser.parse_args(argv)
        assert args.verb == "bound sync" and args.limit_rate in ("10M", "2M") and args.download_only is download
        (bare,) = tether_commands((CONTRIB / name).read_text())  # no sync.conf: no limit
        assert parser.parse_args(bare).limit_rate is None


def test_download_timer_is_opt_in_and_the_download_only_downloads() -> None:
    preset = (CONTRIB / "50-tether.preset").read_text()
    assert "disable tether-bound-download.timer" in preset.splitlines()
    timer = parse_unit((CONTRIB / "tether-bound-download.timer").read_text())
    assert timer.get("Timer", "Persistent") == "true" and timer.get("Install", "WantedBy") == "timers.target"
    (argv,) = tether_commands((CONTRIB / "tether-bound-download.service").read_text())
    assert "--download-only" in argv
