"""What the terminal progress display shows, as plain lines of a given width (no terminal, no rich).

:class:`PullView` keeps the state the :class:`~tether.engine.copy.progress.Progress` events describe and lays it
out for ``width`` columns and at most ``height`` lines: each image with its layers under it, then one total
line (bytes done of bytes to fetch, speed, time left). A layer that several images of the pull share is
fetched by one of them and shown there only; the others' line for it says ``shared``. No line is ever longer
than the width (a terminal wraps a longer one and the live display's cursor arithmetic breaks: the
display is redrawn over the wrong lines); names are shortened in the middle, keeping registry and tag.

Kept apart from the display itself (:class:`~tether.engine.copy.progress.RichProgress`) so that the layout is a
pure function of the events and a clock, testable line by line.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

LayerState = Literal["fetch", "exists", "shared", "copy"]
ImageStatus = Literal["resolving", "pulling", "done", "up to date", "failed"]
Style = Literal["", "bold", "dim", "green", "red", "bar", "bar.done"]
#: How far back the speed is measured: long enough to smooth HTTP bursts, short enough to follow a stall.
SPEED_WINDOW = 5.0
#: Byte events come per received chunk (thousands a second); the speed needs a sample a tenth of a second.
SAMPLE_EVERY = 0.1
ELLIPSIS = "…"


@dataclass(frozen=True)
class LayerInfo:
    """One layer of an image as the plan sees it.

    ``state``: ``fetch`` (this image downloads it), ``exists`` (already in the store), ``shared`` (another
    image of this pull downloads it), ``copy`` (made from a layer already in the store with the same diffID).
    """

    digest: str
    size: int
    state: LayerState


@dataclass(frozen=True)
class Segment:
    """A piece of a line and how to show it (the display maps the style to colours)."""

    text: str
    style: Style = ""


Line = tuple[Segment, ...]


def line_text(line: Line) -> str:
    """The characters of a line, without styles."""
    return "".join(s.text for s in line)


def crop(text: str, width: int) -> str:
    """``text`` in at most ``width`` columns, an ellipsis at the end when cut."""
    if width <= 0:
        return ""
    if len(text) <= width:
        return text
    return text[: width - 1] + ELLIPSIS


def fit_name(name: str, width: int) -> str:
    """An image name in at most ``width`` columns, shortened where it says least.

    A digest is cut to 12 hex digits first (as podman shows ids), then path components between the registry and
    the last one are elided (``quay.io/…/app:1``), then the registry (``…/app:1``), and only then the last
    component loses characters in its middle, so the tag stays visible.
    """
    if len(name) <= width:
        return name
    if width <= 1:
        return ELLIPSIS[:width]
    base, at, digest = name.partition("@")
    if at and ":" in digest and len(digest.split(":", 1)[1]) > 12:
        name = f"{base}@{digest.split(':', 1)[0]}:{digest.split(':', 1)[1][:12]}{ELLIPSIS}"
        if len(name) <= width:
            return name
    parts = name.split("/")
    if len(parts) > 2:
        shorter = f"{parts[0]}/{ELLIPSIS}/{parts[-1]}"
        if len(shorter) <= width:
            # Keep as many of the trailing components as fit.
            for keep in range(len(parts) - 2, 0, -1):
                candidate = "/".join([parts[0], ELLIPSIS, *parts[-keep:]])
                if len(candidate) <= width:
                    return candidate
            return shorter
    if len(parts) > 1:
        shorter = f"{ELLIPSIS}/{parts[-1]}"
        if len(shorter) <= width:
            return shorter
    last = parts[-1] if len(parts[-1]) + 2 > width else name
    head = (width - 1) // 3
    tail = width - 1 - head
    return last[:head] + ELLIPSIS + last[len(last) - tail:]


def human_size(n: float) -> str:
    """Bytes in podman's style: ``12.3MB``."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}TB"  # pragma: no cover


def human_duration(seconds: float) -> str:
    """``8s``, ``2m05s``, ``1h02m``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def short_digest(digest: str) -> str:
    """``sha256:0123456789ab...`` -> ``0123456789ab`` (as podman prints blob ids)."""
    return digest.split(":", 1)[-1][:12]


@dataclass
class _Layer:
    digest: str
    size: int
    state: LayerState
    done: int = 0
    finished: bool = False
    fetched_by: str | None = None  # for a shared layer: the image whose line shows its bytes


@dataclass
class _Image:
    name: str
    status: ImageStatus = "resolving"
    layers: list[_Layer] = field(default_factory=list)
    by_digest: dict[str, _Layer] = field(default_factory=dict)
    note: str = ""  # the image id when done, the error when failed

    @property
    def fetched(self) -> list[_Layer]:
        return [layer for layer in self.layers if layer.state == "fetch"]


class PullView:
    """The state of a pull as the display shows it; every method is called with the display's lock held."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._images: dict[str, _Image] = {}
        self._fetchers: dict[str, str] = {}  # layer digest -> the first image that fetches it
        self._samples: list[tuple[float, int]] = []  # (time, bytes fetched), SAMPLE_EVERY apart
        self._done = 0  # bytes of fetched layers so far, kept as events come (not summed per chunk)
        self._total = 0

    # ---- events

    def image_started(self, image: str) -> None:
        self._images.setdefault(image, _Image(image))

    def image_planned(self, image: str, layers: Sequence[LayerInfo]) -> None:
        img = self._images.setdefault(image, _Image(image))
        img.status = "pulling"
        if img.layers:
            return  # planned once; a second plan of the same name would count its bytes twice
        img.layers = [_Layer(layer.digest, layer.size, layer.state) for layer in layers]
        for layer in img.layers:
            img.by_digest.setdefault(layer.digest, layer)
            if layer.state == "fetch":
                self._fetchers.setdefault(layer.digest, image)
                self._total += layer.size
            elif layer.state == "shared":
                layer.fetched_by = self._fetchers.get(layer.digest)
        self._sample()

    def layer_bytes(self, image: str, digest: str, done: int) -> None:
        layer = self._layer(image, digest)
        if layer is not None:
            self._set_done(layer, min(done, layer.size) if layer.size else done)

    def layer_done(self, image: str, digest: str) -> None:
        layer = self._layer(image, digest)
        if layer is not None:
            layer.finished = True
            self._set_done(layer, layer.size)

    def image_done(self, image: str, *, image_id: str | None, error: str | None, up_to_date: bool) -> None:
        img = self._images.setdefault(image, _Image(image))
        if error is not None:
            img.status, img.note = "failed", error
            return
        img.status = "up to date" if up_to_date else "done"
        img.note = (image_id or "")[:12]
        for layer in img.layers:
            layer.finished = True
            self._set_done(layer, layer.size)

    def _layer(self, image: str, digest: str) -> _Layer | None:
        img = self._images.get(image)
        return img.by_digest.get(digest) if img is not None else None

    def _set_done(self, layer: _Layer, done: int) -> None:
        if layer.state == "fetch":
            self._done += done - layer.done
            layer.done = done
            self._sample()
        elif layer.state == "copy":
            layer.done = done

    # ---- totals

    def totals(self) -> tuple[int, int]:
        """Bytes fetched so far and bytes to fetch, each fetched layer counted once."""
        return self._done, self._total

    def _sample(self) -> None:
        now = self._clock()
        if self._samples and now - self._samples[-1][0] < SAMPLE_EVERY:
            return
        self._samples.append((now, self._done))
        while len(self._samples) > 2 and now - self._samples[1][0] >= SPEED_WINDOW:
            del self._samples[0]

    def speed(self) -> float | None:
        """Bytes per second over the last :data:`SPEED_WINDOW` seconds (``None`` before half a second of it)."""
        if not self._samples:
            return None
        now = self._clock()
        # From the last sample at least a window old (a stall shows as 0), else from the first one.
        since, then = self._samples[0]
        for t, d in self._samples:
            if t > now - SPEED_WINDOW:
                break
            since, then = t, d
        if now - since < 0.5:
            return None
        return max(0.0, (self._done - then) / (now - since))

    # ---- layout

    def lines(self, width: int, height: int | None = None) -> list[Line]:
        """The display for ``width`` columns and at most ``height`` lines (no limit when ``None``)."""
        width = max(1, width)
        groups = [_Group(self._image_line(img, width), self._layer_lines(img, width))
                  for img in self._images.values()]
        total = self._total_line(width)
        lines: list[Line] = []
        for group in groups if height is None else _fit_height(groups, max(1, height - 1), width):
            lines.append(group.head)
            lines.extend(line for line, _ in group.layers)
        return [*lines, total]

    def _image_line(self, img: _Image, width: int) -> Line:
        style: Style = {"done": "green", "up to date": "green", "failed": "red"}.get(img.status, "")  # type: ignore[assignment]
        if img.status == "pulling":
            fetched = img.fetched
            done = sum(layer.done for layer in fetched)
            total = sum(layer.size for layer in fetched)
            ready = sum(1 for layer in img.layers if layer.finished or layer.state == "exists")
            status = f"{ready}/{len(img.layers)} layers"
            if total:
                status += f" {human_size(done)}/{human_size(total)}"
        elif img.status == "failed":
            status = f"failed: {img.note}"
        elif img.status == "resolving":
            status = "resolving"
        else:
            status = f"{img.status} {img.note}".strip()
        # The name takes what the status leaves, but never less than 16 columns (or its own length): an error
        # message is cut before the name is.
        name_width = max(min(len(img.name), 16), width - len(status) - 2)
        name = fit_name(img.name, min(name_width, width))
        rest = width - len(name) - 2
        if rest < 1:
            return (Segment(crop(name, width), "bold"),)
        return Segment(name, "bold"), Segment("  "), Segment(crop(status, rest), style)

    def _layer_lines(self, img: _Image, width: int) -> list[tuple[Line, bool]]:
        if img.status != "pulling":
            return []  # a finished image is one line: its layers are what it says
        return [(self._layer_line(layer, width), layer.state == "fetch" and not layer.finished and layer.done > 0)
                for layer in img.layers]

    def _layer_line(self, layer: _Layer, width: int) -> Line:
        head = f"  {short_digest(layer.digest)} "
        if width < len(head) + 6:
            head = crop(f" {short_digest(layer.digest)}", max(1, width - 7)) + " "
        rest = width - len(head)
        if layer.state == "exists":
            return Segment(head), Segment(crop("skipped: already exists", rest), "dim")
        if layer.state == "shared":
            text = "shared"
            if layer.fetched_by and rest - len("shared with ") >= 12:
                text = f"shared with {fit_name(layer.fetched_by, rest - len('shared with '))}"
            return Segment(head), Segment(crop(text, rest), "dim")
        if layer.state == "copy":
            text = "done: copied from the store" if layer.finished else "copying from the store"
            return Segment(head), Segment(crop(text, rest), "dim")
        if layer.finished:
            return Segment(head), Segment(crop(f"done {human_size(layer.size)}", rest), "green")
        amount = f"{human_size(layer.done)}/{human_size(layer.size)}"
        bar_width = min(30, rest - len(amount) - 1)
        if bar_width < 5:
            return Segment(head), Segment(crop(amount, rest))
        filled = round(bar_width * layer.done / layer.size) if layer.size else 0
        return (Segment(head), Segment("━" * filled, "bar.done"), Segment("─" * (bar_width - filled), "bar"),
                Segment(" " + amount))

    def _total_line(self, width: int) -> Line:
        images = list(self._images.values())
        finished = sum(1 for img in images if img.status in ("done", "up to date", "failed"))
        done, total = self.totals()
        speed = self.speed()
        parts = [f"{finished}/{len(images)} images", f"{human_size(done)}/{human_size(total)}"]
        if speed is not None and finished < len(images):
            parts.append(f"{human_size(speed)}/s")
            if speed > 0 and total > done:
                parts.append(f"ETA {human_duration((total - done) / speed)}")
        text = "Total " + "  ".join(parts)
        while len(text) > width and len(parts) > 1:
            parts.pop()  # the least needed last: ETA, then speed, then bytes
            text = "Total " + "  ".join(parts)
        return (Segment(crop(text, width), "bold"),)


@dataclass(frozen=True)
class _Group:
    head: Line
    layers: list[tuple[Line, bool]]  # each layer line, and whether bytes are coming in

    def __len__(self) -> int:
        return 1 + len(self.layers)


def _fit_height(groups: list[_Group], budget: int, width: int) -> list[_Group]:
    """Drop layer lines, then whole images, until the display fits ``budget`` lines.

    A live display taller than the terminal cannot move its cursor back over the lines that scrolled away, and
    prints them again at every refresh.
    """
    if sum(map(len, groups)) <= budget:
        return groups
    # First the layers of images with nothing moving, then the layers not moving, then all layers.
    groups = [g if any(m for _, m in g.layers) else _Group(g.head, []) for g in groups]
    if sum(map(len, groups)) <= budget:
        return groups
    groups = [_Group(g.head, [(line, m) for line, m in g.layers if m]) for g in groups]
    if sum(map(len, groups)) <= budget:
        return groups
    groups = [_Group(g.head, []) for g in groups]
    if len(groups) <= budget:
        return groups
    kept = max(0, budget - 1)
    return [*groups[:kept], _Group((Segment(crop(f"… and {len(groups) - kept} more images", width), "dim"),), [])]


__all__ = ["LayerInfo", "LayerState", "Line", "PullView", "Segment", "crop", "fit_name", "human_duration",
           "human_size", "line_text", "short_digest"]
