"""benchmarks/report.py: one Markdown table from results files old and new."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks.report import ReportError, main, rows, table

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def _tool(*runs: float, rss: float = 40.0, failed: int = 0, others: float | None = None) -> dict[str, Any]:
    ordered = sorted(runs)
    tool = {"runs_s": list(runs), "failed_runs": failed, "median": ordered[len(ordered) // 2], "min": ordered[0],
            "max": ordered[-1], "peak_rss_mb": rss}
    if others is not None:  # the rest of the machine kept ``others`` cores busy
        tool["others_cpu_s"] = [others * seconds for seconds in runs]
    return tool


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_a_file_from_before_the_wan_profile_prints_with_skopeo_as_the_floor() -> None:
    """2026-11-30 files: no network, and ``floor`` was GNU tar's extraction floor, not the download floor."""
    doc = json.loads((RESULTS / "2026-11-30T065345Z.json").read_text())
    lines = table([("2026-11-30T065345Z", doc)]).splitlines()
    assert _cells(lines[0]) == ["case", "network", "tether", "podman", "tether/podman", "floor", "tether/floor",
                                "tether peak RSS"]
    cold = dict(zip(_cells(lines[0]), _cells(lines[2]), strict=True))
    tools = doc["cases"]["cold-single"]["tools"]
    assert cold["case"] == "cold-single" and cold["network"] == "loopback"
    assert cold["tether"] == "4.16 s (3.95-4.45)"
    assert cold["floor"] == f"{tools['skopeo']['median']:.2f} s"
    assert cold["tether/floor"] == f"{tools['tether']['median'] / tools['skopeo']['median']:.3f}"
    assert cold["tether/podman"] == "0.296"
    assert cold["tether peak RSS"] == "150 MB"
    warm = dict(zip(_cells(lines[0]), _cells(lines[4]), strict=True))
    assert warm["case"] == "warm-ten" and warm["floor"] == "" and warm["tether/floor"] == ""


def test_every_committed_results_file_prints() -> None:
    files = sorted(RESULTS.glob("*.json"))
    assert files
    docs = [(path.stem, json.loads(path.read_text())) for path in files]
    lines = table(docs).splitlines()
    assert len(lines) == 2 + sum(len(doc["cases"]) for _, doc in docs)
    width = len(_cells(lines[0]))
    assert lines[1] == "|" + "---|" * width
    assert all(len(_cells(line)) == width for line in lines[2:])


def test_a_wan_run_shows_the_link_its_check_failures_and_the_baseline() -> None:
    doc = {"started": "2026-12-08T00:00:00Z", "network": "wan",
           "link": {"network": "wan", "rate_mbit": 200.0, "rtt_ms": 40.0,
                    "calibration": {"transfer_bytes_per_s": 23_170_000, "request_rtt_ms": 42.8}},
           "cases": {"five-tiny": {"tools": {"tether": _tool(1.1, 1.2, 1.3, rss=41.4, others=0.1),
                                             "podman": _tool(2.4, 2.5, 2.6, failed=1, others=1.5),
                                             "skopeo": _tool(2.0, 2.0, 2.0, others=0.2),
                                             "baseline": _tool(1.0, 1.2, 1.5, others=0.3)},
                                   "ratios": {}}}}
    header, _, row = table([("x", doc)]).splitlines()
    cells = dict(zip(_cells(header), _cells(row), strict=True))
    assert cells["network"] == "wan 200 Mbit/s 40 ms (measured 23.2 MB/s, 42.8 ms)"
    assert cells["tether"] == "1.20 s (1.10-1.30)"
    assert cells["podman"] == "2.50 s (2.40-2.60), 1 of 3 failed"
    assert cells["tether/podman"] == "0.480"
    assert cells["floor"] == "2.00 s" and cells["tether/floor"] == "0.600"
    assert cells["tether/baseline"] == "1.000"
    assert cells["tether peak RSS"] == "41 MB"
    assert cells["others' load"] == "0.25 cores"  # the median of the twelve runs' shares


def test_several_files_name_their_runs_and_share_one_header() -> None:
    base = {"cases": {"new-tag": {"tools": {"tether": _tool(0.4), "podman": _tool(0.2)}, "ratios": {}}}}
    baseline = {"cases": {"new-tag": {"tools": {"tether": _tool(0.4), "baseline": _tool(0.5)}, "ratios": {}}}}
    lines = table([("a", {**base, "started": "T1"}), ("b", {**baseline, "started": "T2"})]).splitlines()
    assert len(lines) == 4
    assert _cells(lines[0])[-1] == "tether/baseline"
    assert _cells(lines[2])[0] == "new-tag (T1)" and _cells(lines[2])[-1] == ""
    assert _cells(lines[3])[0] == "new-tag (T2)" and _cells(lines[3])[-1] == "0.800"


def test_a_loopback_and_a_wan_run_print_without_run_names() -> None:
    case = {"cases": {"five-tiny": {"tools": {"tether": _tool(1.0), "podman": _tool(2.0)}, "ratios": {}}}}
    lines = table([("a", {**case, "started": "T1"}),
                   ("b", {**case, "started": "T2", "network": "wan", "link": {"rate_mbit": 200, "rtt_ms": 40}})]
                  ).splitlines()
    assert [_cells(line)[:2] for line in lines[2:]] == [["five-tiny", "loopback"],
                                                         ["five-tiny", "wan 200 Mbit/s 40 ms"]]
    plain = {**case, "network": "wan",
             "link": {"rate_mbit": 200, "rtt_ms": 40, "connect_rtt": False, "slow_start": False}}
    assert _cells(table([("c", plain)]).splitlines()[2])[1] == "wan 200 Mbit/s 40 ms plain delay"


def test_a_file_that_is_not_results_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ReportError):
        rows({"something": "else"})
    other = tmp_path / "other.json"
    other.write_text('{"cases": {"x": {"tools": {"podman": {}}}}}')
    with pytest.raises(SystemExit) as exit_info:
        main([str(other)])
    assert exit_info.value.code == 2
    assert "has no tether figures" in capsys.readouterr().err
