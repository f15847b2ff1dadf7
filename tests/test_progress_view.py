"""The terminal progress display, rendered by rich into fixed-width consoles and read back line by line."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console
from rich.text import Text

from tether.engine.copy.progress import LayerInfo, PlainProgress, RichProgress
from tether.engine.copy.progress_view import PullView, fit_name, line_text

MB = 1_000_000
BASE = "sha256:" + "b" * 64
TOP_A = "sha256:" + "a" * 64
TOP_B = "sha256:" + "c" * 64
CACHED = "sha256:" + "d" * 64
APP = "registry.example.com:5000/platform/monitoring/agent:1.2.3"
LOGS = "registry.example.com:5000/platform/logging/forwarder:2024.11"
DB = "quay.io/acme/db:16"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def console(width: int, height: int = 40) -> Console:
    return Console(file=io.StringIO(), width=width, height=height, force_terminal=True, color_system=None,
                   legacy_windows=False)


def frame(progress: RichProgress) -> list[str]:
    """One frame of the live display as a terminal of the progress console's size shows it."""
    out = console(progress.console.width, progress.console.height)
    out.print(progress.render())
    text: str = out.file.getvalue()  # type: ignore[attr-defined]
    assert not ANSI.search(text), "no colour system: plain characters only"
    return text.splitlines()


def mid_pull(clock: Clock, progress: RichProgress | PlainProgress) -> None:
    """APP fetches the base and its top; LOGS shares the base and fetches its own top; DB is up to date."""
    for name in (APP, LOGS, DB):
        progress.image_started(name)
    progress.image_planned(APP, [LayerInfo(BASE, 10 * MB, "fetch"), LayerInfo(TOP_A, 2 * MB, "fetch")])
    progress.image_planned(LOGS, [LayerInfo(CACHED, 1 * MB, "exists"), LayerInfo(BASE, 10 * MB, "shared"),
                                  LayerInfo(TOP_B, 3 * MB, "fetch")])
    progress.image_done(DB, image_id="e" * 64, error=None, up_to_date=True)
    for step in range(1, 5):
        clock.now += 0.5
        progress.layer_bytes(APP, BASE, step * MB)
    progress.layer_bytes(APP, TOP_A, 2 * MB)
    progress.layer_done(APP, TOP_A)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_layers_are_grouped_under_their_image_and_a_shared_layer_is_shown_once(clock: Clock) -> None:
    progress = RichProgress(console(100), clock=clock)
    try:
        mid_pull(clock, progress)
        lines = frame(progress)
    finally:
        progress.close()
    assert lines[0] == f"{APP}  1/2 layers 6.0MB/12.0MB"
    assert lines[1].startswith(f"  {'b' * 12} ━") and lines[1].endswith(" 4.0MB/10.0MB")
    assert lines[2] == f"  {'a' * 12} done 2.0MB"
    assert lines[3] == f"{LOGS}  1/3 layers 0B/3.0MB"
    assert lines[4] == f"  {'d' * 12} skipped: already exists"
    assert lines[5] == f"  {'b' * 12} shared with {APP}"
    assert lines[6].startswith(f"  {'c' * 12} ─") and lines[6].endswith(" 0B/3.0MB")
    assert lines[7] == f"{DB}  up to date {'e' * 12}"
    # the base layer's bytes once in the total (15 MB to fetch, not 25); 6 MB in the last 2 s
    assert lines[8] == "Total 1/3 images  6.0MB/15.0MB  3.0MB/s  ETA 3s"
    assert len(lines) == 9
    assert sum(1 for line in lines if "b" * 12 in line and "━" in line) == 1


@pytest.mark.parametrize("width", [40, 60])
def test_a_narrow_terminal_gets_lines_that_fit_and_names_that_keep_their_tag(clock: Clock, width: int) -> None:
    progress = RichProgress(console(width), clock=clock)
    try:
        mid_pull(clock, progress)
        progress.image_done(LOGS, image_id=None, error="GET https://registry.example.com:5000/v2/platform/logging/"
                            "forwarder/blobs/sha256:cccc: 503 Service Unavailable after 5 attempts")
        lines = frame(progress)
    finally:
        progress.close()
    names = [line for line in lines if not line.startswith(" ") and not line.startswith("Total")]
    layers = [line for line in lines if line.startswith(" ")]
    # what rich printed is exactly what the view laid out: one terminal line per display line, none wrapped
    view_lines = [line_text(line) for line in progress.view.lines(width, progress.console.height - 1)]
    assert lines == view_lines
    assert all(len(line) <= width for line in lines)
    assert len(names) == 3 and len(layers) == 2  # the failed image's layers fold into its line
    assert names[0].startswith("registry.example.com:5000/…/agent:1.2.3") or names[0].startswith("…/agent:1.2.3")
    assert any(":2024.11" in line and "failed: GET" in line for line in names)
    assert names[2].startswith(DB if width == 60 else "quay.io/…/db:16")
    assert names[2].endswith("up to date eeeeeeeeeeee")
    assert lines[-1].startswith("Total 2/3 images  6.0MB/15.0MB")
    if width == 40:
        assert lines[-1] == "Total 2/3 images  6.0MB/15.0MB  3.0MB/s"  # no room for the ETA
        assert layers[0] == f"  {'b' * 12} ━━━━━─────── 4.0MB/10.0MB"


def test_a_display_taller_than_the_terminal_folds_layers_then_images(clock: Clock) -> None:
    progress = RichProgress(console(80, height=8), clock=clock)
    try:
        names = [f"quay.io/acme/app{i}:1" for i in range(12)]
        for i, name in enumerate(names):
            progress.image_started(name)
            progress.image_planned(name, [LayerInfo(f"sha256:{i:064x}", MB, "fetch"),
                                          LayerInfo(f"sha256:{i + 100:064x}", MB, "fetch")])
        progress.layer_bytes(names[0], f"sha256:{0:064x}", MB // 2)
        lines = frame(progress)
    finally:
        progress.close()
    assert len(lines) == 7  # one line short of the terminal, so that the display never scrolls it
    assert lines[-1].startswith("Total 0/12 images  500.0kB/24.0MB")
    assert lines[-2] == "… and 7 more images"
    assert lines[0] == "quay.io/acme/app0:1  0/2 layers 500.0kB/2.0MB"


def test_the_last_frame_stays_on_the_terminal_one_line_per_image(clock: Clock) -> None:
    out = console(60)
    progress = RichProgress(out, clock=clock)
    mid_pull(clock, progress)
    clock.now += 1
    progress.layer_done(APP, BASE)
    progress.layer_done(LOGS, BASE)
    progress.image_done(APP, image_id="1" * 64, error=None)
    progress.image_done(LOGS, image_id=None, error="layer sha256:cccc: 503")
    progress.close()
    screen = ANSI.sub("", out.file.getvalue())  # type: ignore[attr-defined]
    last = [line.split("\r")[-1] for line in screen.splitlines()[-4:]]
    assert last == [
        f"{fit_name(APP, 60 - len('  done 111111111111'))}  done {'1' * 12}",
        f"{fit_name(LOGS, 60 - len('  failed: layer sha256:cccc: 503'))}  failed: layer sha256:cccc: 503",
        f"{DB}  up to date {'e' * 12}",
        "Total 3/3 images  12.0MB/15.0MB",
    ]


@pytest.mark.parametrize(("name", "width", "expected"), [
    (APP, 200, APP),
    (APP, 45, "registry.example.com:5000/…/agent:1.2.3"),
    (APP, 25, "…/agent:1.2.3"),
    ("quay.io/a/b/c/d/eee:1", 19, "quay.io/…/c/d/eee:1"),
    ("quay.io/a/b/c/d/eee:1", 17, "quay.io/…/d/eee:1"),
    ("docker.io/library/alpine@sha256:" + "f" * 64, 48, "docker.io/library/alpine@sha256:ffffffffffff…"),
    ("averyveryverylongrepositoryname:tag", 20, "averyve…ryname:tag"[:6] + "…" + "yname:tag"[-13:]),
])
def test_fit_name_elides_what_says_least(name: str, width: int, expected: str) -> None:
    got = fit_name(name, width)
    assert len(got) <= width
    if "averyvery" in name:
        assert got.endswith("name:tag") and got.startswith("avery") and "…" in got
    else:
        assert got == expected


def test_plain_lines_name_the_image_that_fetches_a_shared_layer_and_end_with_a_total(clock: Clock) -> None:
    stream = io.StringIO()
    progress = PlainProgress(stream, clock=clock)
    mid_pull(clock, progress)
    clock.now += 2
    progress.layer_done(APP, BASE)
    progress.layer_done(LOGS, BASE)
    progress.layer_done(LOGS, TOP_B)
    progress.image_done(APP, image_id="1" * 64, error=None)
    progress.image_done(LOGS, image_id="2" * 64, error=None)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert f"{LOGS}: layer {'b' * 12} shared with {APP}" in lines
    assert lines[-1] == "total: 3 images, 15.0MB fetched in 4s (3.8MB/s)"


def test_view_counts_a_layer_fetched_by_two_images_under_each(clock: Clock) -> None:
    # The same blob under different parents is two layers (two chain ids): both fetch it, both count.
    view = PullView(clock=clock)
    view.image_planned("a", [LayerInfo(BASE, MB, "fetch")])
    view.image_planned("b", [LayerInfo(TOP_A, MB, "fetch"), LayerInfo(BASE, MB, "fetch")])
    assert view.totals() == (0, 3 * MB)
    assert Text("x").cell_len == 1


def test_speed_follows_the_last_seconds_and_a_stall_shows_as_zero(clock: Clock) -> None:
    view = PullView(clock=clock)
    view.image_planned("a", [LayerInfo(BASE, 100 * MB, "fetch")])
    assert view.speed() is None  # nothing measured yet
    for second in range(1, 11):  # 1 MB/s for 10 s, in 64 kB chunks
        for chunk in range(1, 17):
            clock.now = 1000 + second - 1 + chunk / 16
            view.layer_bytes("a", BASE, int((second - 1 + chunk / 16) * MB))
    assert view.speed() == pytest.approx(MB, rel=0.05)
    assert line_text(view.lines(80)[-1]) == "Total 0/1 images  10.0MB/100.0MB  1.0MB/s  ETA 1m30s"
    clock.now += 6  # the registry stalls
    assert view.speed() == 0
    assert line_text(view.lines(80)[-1]) == "Total 0/1 images  10.0MB/100.0MB  0B/s"
