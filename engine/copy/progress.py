"""Progress of a pull: a rich live display on a TTY, plain lines otherwise, bootc's JSON lines on a fd.

The pull engine calls a :class:`Progress` from the trio thread only (never from worker threads), with
events keyed by the image's name as asked and by the layer's compressed digest. Implementations:

* :class:`PlainProgress`: one line per notable event (resolved, layer skipped/done, image done/failed), and a
  total at the end;
* :class:`RichProgress`: a live display laid out by :class:`~tether.engine.copy.progress_view.PullView`: each
  image with its layers under it (bytes, bar, ``skipped: already exists``, ``shared``), a total line (bytes,
  speed, ETA), fitted to the terminal's width and height;
* :class:`JsonLinesProgress`: bootc's progress protocol v0.1.0 (bootc ``crates/lib/src/progress_jsonl.rs``,
  ``docs/src/progress-v0.schema.json``): a ``Start`` line, then ``ProgressBytes`` per image (layers as
  subtasks) and ``ProgressSteps`` for the whole pull (images as subtasks), canonical JSON (sorted keys, no
  spaces), one object per line, lossy updates at most 5 per second, completions always written;
* :class:`MultiProgress` fans out to several (``--progress bar --progress-fd 3``).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Literal

from tether.engine.copy.progress_view import (
    LayerInfo,
    LayerState,
    PullView,
    human_duration,
    human_size,
    short_digest,
)

#: bootc's protocol version (progress_jsonl.rs API_VERSION).
API_VERSION = "0.1.0"
#: bootc's REFRESH_HZ: lossy events are dropped when one was written less than 1/5 s ago.
REFRESH_HZ = 5


class Progress:
    """Receives pull events; every method is a no-op here. Called from the trio thread only."""

    def image_started(self, image: str) -> None:
        """The pull of ``image`` (the name as asked) begins: resolving."""

    def image_planned(self, image: str, layers: Sequence[LayerInfo]) -> None:
        """The image is resolved and planned; ``layers`` in manifest order."""

    def layer_bytes(self, image: str, digest: str, done: int) -> None:
        """``done`` compressed bytes of layer ``digest`` have been consumed so far."""

    def layer_done(self, image: str, digest: str) -> None:
        """The layer is in the store (published)."""

    def image_done(self, image: str, *, image_id: str | None, error: str | None, up_to_date: bool = False) -> None:
        """The image is committed (``image_id``), already up to date, or failed (``error``)."""

    def close(self) -> None:
        """The pull is over: flush and stop any display."""


class MultiProgress(Progress):
    """Forwards every event to several progress sinks."""

    def __init__(self, sinks: Sequence[Progress]) -> None:
        self.sinks = tuple(sinks)

    def image_started(self, image: str) -> None:
        for s in self.sinks:
            s.image_started(image)

    def image_planned(self, image: str, layers: Sequence[LayerInfo]) -> None:
        for s in self.sinks:
            s.image_planned(image, layers)

    def layer_bytes(self, image: str, digest: str, done: int) -> None:
        for s in self.sinks:
            s.layer_bytes(image, digest, done)

    def layer_done(self, image: str, digest: str) -> None:
        for s in self.sinks:
            s.layer_done(image, digest)

    def image_done(self, image: str, *, image_id: str | None, error: str | None, up_to_date: bool = False) -> None:
        for s in self.sinks:
            s.image_done(image, image_id=image_id, error=error, up_to_date=up_to_date)

    def close(self) -> None:
        for s in self.sinks:
            s.close()


class PlainProgress(Progress):
    """Plain lines for logs and pipes, in the spirit of podman's non-TTY output."""

    def __init__(self, stream: IO[str] | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self._clock = clock
        self._sizes: dict[tuple[str, str], int] = {}
        self._started: dict[tuple[str, str], float] = {}
        self._fetchers: dict[str, str] = {}  # layer digest -> the image that fetches it
        self._outcomes: dict[str, bool] = {}  # image -> failed
        self._fetched = 0
        self._began = clock()

    def _say(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def image_started(self, image: str) -> None:
        self._say(f"{image}: resolving")

    def image_planned(self, image: str, layers: Sequence[LayerInfo]) -> None:
        fetch = [layer for layer in layers if layer.state == "fetch"]
        total = sum(layer.size for layer in fetch)
        self._say(f"{image}: {len(layers)} layers, {len(fetch)} to fetch ({human_size(total)})")
        for layer in layers:
            key = (image, layer.digest)
            if layer.state == "exists":
                self._say(f"{image}: layer {short_digest(layer.digest)} skipped: already exists")
            elif layer.state == "shared":
                by = self._fetchers.get(layer.digest, "another image of this pull")
                self._say(f"{image}: layer {short_digest(layer.digest)} shared with {by}")
            else:
                if layer.state == "fetch":
                    self._fetchers.setdefault(layer.digest, image)
                self._sizes[key] = layer.size
                self._started[key] = self._clock()

    def layer_done(self, image: str, digest: str) -> None:
        key = (image, digest)
        if key not in self._sizes:
            return
        size = self._sizes.pop(key)
        if self._fetchers.get(digest) == image:
            self._fetched += size
        took = self._clock() - self._started.get(key, self._clock())
        self._say(f"{image}: layer {short_digest(digest)} done ({human_size(size)} in {took:.1f}s)")

    def image_done(self, image: str, *, image_id: str | None, error: str | None, up_to_date: bool = False) -> None:
        self._outcomes[image] = error is not None
        if error is not None:
            self._say(f"{image}: FAILED: {error}")
        elif up_to_date:
            self._say(f"{image}: up to date ({(image_id or '')[:12]})")
        else:
            self._say(f"{image}: done ({(image_id or '')[:12]})")

    def close(self) -> None:
        """One total line: images, bytes fetched, time and mean speed."""
        if len(self._outcomes) < 2 and not self._fetched:
            return  # one image's own lines already said it all
        failed = sum(self._outcomes.values())
        took = max(self._clock() - self._began, 1e-6)
        text = f"total: {len(self._outcomes)} images"
        if failed:
            text += f" ({failed} failed)"
        text += f", {human_size(self._fetched)} fetched in {human_duration(took)}"
        if self._fetched:
            text += f" ({human_size(self._fetched / took)}/s)"
        self._say(text)


class RichProgress(Progress):
    """A live display of :class:`~tether.engine.copy.progress_view.PullView`, redrawn 8 times a second.

    Every line is cut to the console's width (rich's own progress columns wrap on a narrow terminal, and a
    wrapped live display is redrawn over the wrong lines) and the display to its height; events come from
    the trio thread and rich redraws from its own thread, so both hold one lock.
    """

    #: PullView styles -> rich styles.
    STYLES = {"": "", "bold": "bold", "dim": "dim", "green": "green", "red": "red",
              "bar": "grey37", "bar.done": "magenta"}

    def __init__(self, console: Any = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        from rich.console import Console, Group
        from rich.live import Live
        from rich.text import Text

        self.console = console if console is not None else Console(stderr=True)
        self.view = PullView(clock=clock)
        self._lock = threading.Lock()
        self._final = False
        self._text, self._group = Text, Group
        self.live = Live(console=self.console, get_renderable=self.render, refresh_per_second=8, transient=False)
        self.live.start()

    def render(self) -> Any:
        """The current frame (a rich renderable): what the live display redraws."""
        with self._lock:
            # One line short of the terminal: a display as tall as the terminal scrolls it by one line.
            height = None if self._final else max(2, self.console.height - 1)
            lines = self.view.lines(self.console.width, height)
        texts = []
        for line in lines:
            text = self._text(no_wrap=True, overflow="crop")
            for segment in line:
                text.append(segment.text, style=self.STYLES[segment.style])
            texts.append(text)
        return self._group(*texts)

    def image_started(self, image: str) -> None:
        with self._lock:
            self.view.image_started(image)

    def image_planned(self, image: str, layers: Sequence[LayerInfo]) -> None:
        with self._lock:
            self.view.image_planned(image, layers)

    def layer_bytes(self, image: str, digest: str, done: int) -> None:
        with self._lock:
            self.view.layer_bytes(image, digest, done)

    def layer_done(self, image: str, digest: str) -> None:
        with self._lock:
            self.view.layer_done(image, digest)

    def image_done(self, image: str, *, image_id: str | None, error: str | None, up_to_date: bool = False) -> None:
        with self._lock:
            self.view.image_done(image, image_id=image_id, error=error, up_to_date=up_to_date)

    def close(self) -> None:
        with self._lock:
            self._final = True  # the last frame stays on the screen in full, one line per finished image
        self.live.stop()


@dataclass
class _ImageState:
    layers: list[LayerInfo] = field(default_factory=list)
    done_bytes: dict[str, int] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)
    status: str = "resolving"  # resolving | pulling | done | failed


class JsonLinesProgress(Progress):
    """bootc's progress protocol (JSON lines) written to a file descriptor (``--progress-fd``).

    Events follow bootc's serde shape: ``{"type": "Start", "version": "0.1.0"}``, then
    ``ProgressBytes`` (task ``pulling``, id = the image name, subtasks = layers with ``subtask: "layer"``)
    and ``ProgressSteps`` (task ``pulling-images``, one step per image). Byte updates are lossy and
    limited to :data:`REFRESH_HZ` per second; layer and image completions are always written.
    """

    def __init__(self, fd: int | None = None, *, write: Callable[[bytes], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if write is None:
            if fd is None:
                raise ValueError("JsonLinesProgress needs a fd or a write function")
            target_fd = fd

            def write_fd(data: bytes) -> None:
                view = memoryview(data)
                while view:
                    try:
                        n = os.write(target_fd, view)
                    except BlockingIOError:
                        time.sleep(0.01)
                        continue
                    view = view[n:]

            write = write_fd
        self._write = write
        self._clock = clock
        self._started = False
        self._last: float | None = None
        self._images: dict[str, _ImageState] = {}
        self._broken = False

    def _send(self, event: dict[str, Any], *, required: bool) -> None:
        if self._broken:
            return
        now = self._clock()
        try:
            if not self._started:
                self._started = True
                self._write(_canon({"type": "Start", "version": API_VERSION}))
            if not required and self._last is not None and now - self._last < 1.0 / REFRESH_HZ:
                return
            self._write(_canon(event))
            self._last = now
        except OSError as exc:  # as bootc: stop writing, carry on pulling
            print(f"tether: failed to write progress: {exc}", file=sys.stderr)
            self._broken = True

    def _bytes_event(self, image: str) -> dict[str, Any]:
        st = self._images[image]
        fetch = [layer for layer in st.layers if layer.state != "exists"]
        cached = [layer for layer in st.layers if layer.state == "exists"]
        subtasks = []
        for layer in fetch:
            done = layer.size if layer.digest in st.finished else min(st.done_bytes.get(layer.digest, 0), layer.size)
            subtasks.append({
                "subtask": "layer",
                "description": "Layer:",
                "id": layer.digest,
                "bytesCached": 0,
                "bytes": done,
                "bytesTotal": layer.size,
            })
        return {
            "type": "ProgressBytes",
            "task": "pulling",
            "description": f"Pulling {image}",
            "id": image,
            "bytesCached": sum(layer.size for layer in cached),
            "bytes": sum(s["bytes"] for s in subtasks),
            "bytesTotal": sum(layer.size for layer in fetch),
            "stepsCached": len(cached),
            "steps": len([layer for layer in fetch if layer.digest in st.finished]),
            "stepsTotal": len(fetch),
            "subtasks": subtasks,
        }

    def _steps_event(self) -> dict[str, Any]:
        finished = [name for name, st in self._images.items() if st.status in ("done", "failed")]
        return {
            "type": "ProgressSteps",
            "task": "pulling-images",
            "description": "Pulling images",
            "id": "pulling-images",
            "stepsCached": len([st for st in self._images.values() if st.status == "done" and not st.layers]),
            "steps": len(finished),
            "stepsTotal": len(self._images),
            "subtasks": [
                {"subtask": "image", "description": f"Image {name}:", "id": name,
                 "completed": st.status in ("done", "failed")}
                for name, st in self._images.items()
            ],
        }

    def image_started(self, image: str) -> None:
        self._images[image] = _ImageState()
        self._send(self._steps_event(), required=False)

    def image_planned(self, image: str, layers: Sequence[LayerInfo]) -> None:
        st = self._images.setdefault(image, _ImageState())
        st.layers = list(layers)
        st.status = "pulling"
        self._send(self._bytes_event(image), required=True)

    def layer_bytes(self, image: str, digest: str, done: int) -> None:
        st = self._images.get(image)
        if st is None:
            return
        st.done_bytes[digest] = done
        self._send(self._bytes_event(image), required=False)

    def layer_done(self, image: str, digest: str) -> None:
        st = self._images.get(image)
        if st is None:
            return
        st.finished.add(digest)
        self._send(self._bytes_event(image), required=True)

    def image_done(self, image: str, *, image_id: str | None, error: str | None, up_to_date: bool = False) -> None:
        st = self._images.setdefault(image, _ImageState())
        st.status = "failed" if error is not None else "done"
        if error is None:
            st.finished.update(layer.digest for layer in st.layers)
            if st.layers:
                self._send(self._bytes_event(image), required=True)
        self._send(self._steps_event(), required=True)


def _canon(event: dict[str, Any]) -> bytes:
    """Canonical JSON (bootc writes with canon_json: sorted keys, no whitespace) plus a newline."""
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


ProgressMode = Literal["auto", "bar", "plain", "json", "none"]


def make_progress(mode: ProgressMode, *, progress_fd: int | None = None, stream: IO[str] | None = None) -> Progress:
    """The progress sink for ``--progress MODE [--progress-fd FD]``.

    ``auto`` is a live display when stderr is a TTY, plain lines otherwise; ``json`` writes bootc's JSON
    lines to ``--progress-fd`` (or stdout when no fd is given); ``none`` shows nothing (but
    ``--progress-fd`` still gets JSON lines).
    """
    out = stream if stream is not None else sys.stderr
    sinks: list[Progress] = []
    if mode == "auto":
        mode = "bar" if out.isatty() else "plain"
    if mode == "bar":
        from rich.console import Console

        sinks.append(RichProgress(Console(file=out)))
    elif mode == "plain":
        sinks.append(PlainProgress(out))
    elif mode == "json" and progress_fd is None:
        sinks.append(JsonLinesProgress(sys.stdout.fileno()))
    if progress_fd is not None:
        sinks.append(JsonLinesProgress(progress_fd))
    if not sinks:
        return Progress()
    if len(sinks) == 1:
        return sinks[0]
    return MultiProgress(sinks)


__all__ = [
    "API_VERSION",
    "JsonLinesProgress",
    "LayerInfo",
    "LayerState",
    "MultiProgress",
    "PlainProgress",
    "Progress",
    "ProgressMode",
    "RichProgress",
    "human_duration",
    "human_size",
    "make_progress",
    "short_digest",
]
