"""Progress sinks: bootc's JSON lines (validated against the shape of its schema), plain lines."""

from __future__ import annotations

import io
import json
import os
from typing import Any

from tether.engine.copy.progress import JsonLinesProgress, LayerInfo, PlainProgress, make_progress

# The shape of bootc's docs/src/progress-v0.schema.json as bootc serialises it today
# (crates/lib/src/progress_jsonl.rs: #[serde(tag = "type", rename_all_fields = "camelCase")]).
U64 = "u64"
SCHEMA: dict[str, dict[str, Any]] = {
    "Start": {"type": str, "version": str},
    "ProgressBytes": {
        "type": str, "task": str, "description": str, "id": str, "bytesCached": U64, "bytes": U64,
        "bytesTotal": U64, "stepsCached": U64, "steps": U64, "stepsTotal": U64, "subtasks": "SubTaskBytes",
    },
    "ProgressSteps": {
        "type": str, "task": str, "description": str, "id": str, "stepsCached": U64, "steps": U64,
        "stepsTotal": U64, "subtasks": "SubTaskStep",
    },
}
SUBTASKS: dict[str, dict[str, Any]] = {
    "SubTaskBytes": {"subtask": str, "description": str, "id": str, "bytesCached": U64, "bytes": U64,
                     "bytesTotal": U64},
    "SubTaskStep": {"subtask": str, "description": str, "id": str, "completed": bool},
}


def check_fields(obj: dict[str, Any], shape: dict[str, Any], where: str) -> None:
    assert set(obj) == set(shape), f"{where}: fields {sorted(obj)} != {sorted(shape)}"
    for key, kind in shape.items():
        value = obj[key]
        if kind == U64:
            assert isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**64, (where, key)
        elif kind in SUBTASKS:
            assert isinstance(value, list), (where, key)
            for item in value:
                check_fields(item, SUBTASKS[kind], f"{where}.{key}[]")
        else:
            assert isinstance(value, kind), (where, key, value)


def validate_line(line: bytes) -> dict[str, Any]:
    assert line.endswith(b"\n") and b"\n" not in line[:-1]
    event: dict[str, Any] = json.loads(line)
    assert event["type"] in SCHEMA
    check_fields(event, SCHEMA[event["type"]], event["type"])
    # canonical JSON, as bootc writes it: sorted keys, no whitespace
    assert line[:-1] == json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return event


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def drive(progress: Any, clock: Clock) -> None:
    layers = [LayerInfo("sha256:" + "a" * 64, 1000, "exists"), LayerInfo("sha256:" + "b" * 64, 2000, "fetch"),
              LayerInfo("sha256:" + "c" * 64, 3000, "shared")]
    progress.image_started("reg/app:1")
    progress.image_started("reg/other:1")
    progress.image_planned("reg/app:1", layers)
    for n in range(1, 21):
        clock.now += 0.05
        progress.layer_bytes("reg/app:1", "sha256:" + "b" * 64, n * 100)
    progress.layer_done("reg/app:1", "sha256:" + "b" * 64)
    progress.image_done("reg/app:1", image_id="f" * 64, error=None)
    progress.image_done("reg/other:1", image_id=None, error="GET .../manifests/1: 404 MANIFEST_UNKNOWN")
    progress.close()


def test_json_lines_follow_bootc_schema_and_rate_limit() -> None:
    out: list[bytes] = []
    clock = Clock()
    drive(JsonLinesProgress(write=out.append, clock=clock), clock)
    events = [validate_line(line) for line in out]
    assert events[0] == {"type": "Start", "version": "0.1.0"}
    assert [e["type"] for e in events].count("Start") == 1
    byte_updates = [e for e in events if e["type"] == "ProgressBytes"]
    # 20 updates over 1 s at 5 Hz: at most ~5 lossy lines + the required ones (planned, layer done, image done)
    assert 3 <= len(byte_updates) <= 5 + 3
    last = byte_updates[-1]
    assert last["id"] == "reg/app:1" and last["task"] == "pulling"
    assert last["bytesCached"] == 1000 and last["stepsCached"] == 1
    assert last["bytesTotal"] == 5000 and last["bytes"] == 5000 and last["steps"] == last["stepsTotal"] == 2
    assert {s["id"] for s in last["subtasks"]} == {"sha256:" + "b" * 64, "sha256:" + "c" * 64}
    final = events[-1]
    assert final["type"] == "ProgressSteps" and final["steps"] == final["stepsTotal"] == 2
    assert all(s["completed"] for s in final["subtasks"])


def test_json_lines_through_a_real_pipe_fd() -> None:
    read_fd, write_fd = os.pipe()
    try:
        progress = make_progress("none", progress_fd=write_fd)
        clock = Clock()
        progress._clock = clock  # type: ignore[attr-defined]
        drive(progress, clock)
        os.close(write_fd)
        write_fd = -1
        with os.fdopen(read_fd, "rb") as reader:
            read_fd = -1
            lines = reader.read().splitlines(keepends=True)
    finally:
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
    assert lines and all(validate_line(line) for line in lines)


def test_plain_lines_name_skips_and_failures() -> None:
    stream = io.StringIO()
    clock = Clock()
    drive(PlainProgress(stream), clock)
    text = stream.getvalue()
    assert "reg/app:1: 3 layers, 1 to fetch (2.0kB)" in text
    assert f"layer {'a' * 12} skipped: already exists" in text
    assert f"layer {'b' * 12} done" in text
    assert "reg/other:1: FAILED: GET .../manifests/1: 404 MANIFEST_UNKNOWN" in text


def test_auto_mode_is_plain_off_a_tty() -> None:
    stream = io.StringIO()
    assert isinstance(make_progress("auto", stream=stream), PlainProgress)


def test_rich_display_renders_bars_and_skips() -> None:
    from rich.console import Console

    from tether.engine.copy.progress import RichProgress

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=160, color_system=None)
    progress = RichProgress(console)
    drive(progress, Clock())
    text = buffer.getvalue()
    # the last frame: one line per finished image, then the total
    assert "reg/app:1  done ffffffffffff\nreg/other:1  failed: GET .../manifests/1: 404" in text
    assert "Total 2/2 images  2.0kB/2.0kB" in text
