"""Print benchmark results as one Markdown table (the README's current table is pasted from it).

    python -m benchmarks.report benchmarks/results/A.json [B-wan.json ...]

One row per case and results file: medians of the runs (min-max), tether's ratio to ``podman pull`` and to the
download floor (``skopeo copy`` to an OCI layout over the same link), tether's peak RSS (whole process tree),
tether/baseline when a file timed a baseline, and the CPU the rest of the machine used during the case's
timed runs (median, in cores) when a file recorded it: a shared machine's noise.  Ratios are computed from the
medians here, so files of every format version print alike (before the WAN profile, files had no ``network``
and called the GNU tar extraction floor ``floor``; this table's floor is always skopeo's).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLUMNS = ["case", "network", "tether", "podman", "tether/podman", "floor", "tether/floor", "tether peak RSS"]
#: Printed when some row has them, in this order.
OPTIONAL_COLUMNS = ["tether/baseline", "others' load"]


class ReportError(ValueError):
    """A results file that cannot be read as benchmark results."""


def _seconds(tool: dict[str, Any] | None, *, spread: bool) -> str:
    if tool is None:
        return ""
    text = f"{tool['median']:.2f} s"
    if spread and tool["min"] != tool["max"]:
        text += f" ({tool['min']:.2f}-{tool['max']:.2f})"
    if tool.get("failed_runs"):
        text += f", {tool['failed_runs']} of {len(tool['runs_s'])} failed"
    return text


def _ratio(tools: dict[str, Any], other: str) -> str:
    mine, theirs = tools.get("tether"), tools.get(other)
    if mine is None or theirs is None or theirs["median"] <= 0:
        return ""
    return f"{mine['median'] / theirs['median']:.3f}"


def network_label(doc: dict[str, Any]) -> str:
    """``loopback``, or ``wan 200 Mbit/s 40 ms`` (``plain delay`` when the proxy modelled neither handshake nor
    slow start) with the measured check when the file has one."""
    network = str(doc.get("network", "loopback"))
    link = doc.get("link") or {}
    if network == "loopback":
        return network
    label = network
    if "rate_mbit" in link and "rtt_ms" in link:
        label += f" {link['rate_mbit']:g} Mbit/s {link['rtt_ms']:g} ms"
    if link.get("connect_rtt") is False and link.get("slow_start") is False:
        label += " plain delay"  # --wan-plain-delay: no handshake round trip, no slow start
    check = link.get("calibration") or {}
    if "transfer_bytes_per_s" in check and "request_rtt_ms" in check:
        label += f" (measured {check['transfer_bytes_per_s'] / 1e6:.1f} MB/s, {check['request_rtt_ms']:g} ms)"
    return label


def others_load(tools: dict[str, Any]) -> str:
    """The median over every timed run of the case of the CPU the rest of the machine used, per second."""
    shares = [others / seconds for tool in tools.values()
              for others, seconds in zip(tool.get("others_cpu_s", []), tool["runs_s"], strict=False) if seconds > 0]
    if not shares:
        return ""
    shares.sort()
    middle = len(shares) // 2
    median = shares[middle] if len(shares) % 2 else (shares[middle - 1] + shares[middle]) / 2
    return f"{median:.2f} cores"


def rows(doc: dict[str, Any], *, run: str | None = None) -> list[dict[str, str]]:
    """The table rows of one results file, by column (``run`` names the file when several are printed)."""
    try:
        cases: dict[str, Any] = doc["cases"]
    except (KeyError, TypeError):
        raise ReportError("no 'cases': not a benchmark results file") from None
    out = []
    network = network_label(doc)
    for case, result in cases.items():
        tools = result["tools"]
        if "tether" not in tools:
            raise ReportError(f"case {case} has no tether figures")
        rss = tools["tether"].get("peak_rss_mb")
        cells = [case if run is None else f"{case} ({run})", network,
                 _seconds(tools["tether"], spread=True), _seconds(tools.get("podman"), spread=True),
                 _ratio(tools, "podman"), _seconds(tools.get("skopeo"), spread=False), _ratio(tools, "skopeo"),
                 "" if rss is None else f"{rss:.0f} MB"]
        row = dict(zip(COLUMNS, cells, strict=True))
        if "baseline" in tools:
            row["tether/baseline"] = _ratio(tools, "baseline")
        if load := others_load(tools):
            row["others' load"] = load
        out.append(row)
    return out


def table(docs: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """One Markdown table of every file's cases, in the order given; the run's start time follows the case
    name when several files have the same case on the same network (a loopback and a WAN run print plainly)."""
    seen: set[tuple[str, str]] = set()
    repeated = False
    for _, doc in docs:
        for row in rows(doc):
            repeated = repeated or (row["case"], row["network"]) in seen
            seen.add((row["case"], row["network"]))
    body: list[dict[str, str]] = []
    for name, doc in docs:
        body += rows(doc, run=(doc.get("started") or name) if repeated else None)
    header = COLUMNS + [column for column in OPTIONAL_COLUMNS if any(column in row for row in body)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row.get(column, "") for column in header) + " |" for row in body]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.report RESULTS.json [...]``."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+", type=Path, metavar="RESULTS.json")
    args = parser.parse_args(argv)
    docs = []
    for path in args.results:
        try:
            docs.append((path.stem, json.loads(path.read_text())))
        except (OSError, ValueError) as exc:
            parser.error(f"reading {path}: {exc}")
    try:
        print(table(docs))
    except ReportError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
