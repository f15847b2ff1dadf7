"""Progress of a pull: a rich live display on a TTY, plain lines otherwise, bootc's JSON lines on a fd.

The pull engine calls a :class:`Progress` from the trio thread only (never from worker threads), with
events keyed by the image's name as asked and by the layer's compressed digest. Implementations:

* :class:`PlainProgress`: one line per notable event (resolved, layer skipped/done, image done/failed);
* :class:`RichProgress`: a live display with a bar per image and per layer (bytes, rate, ETA,
  ``skipped: already exists``);
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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, Literal

#: bootc's protocol version (progress_jsonl.rs API_VERSION).
API_VERSION = "0.1.0"
#: bootc's REFRESH_HZ: lossy events are dropped when one was written less than 1/5 s ago.
REFRESH_HZ = 5

LayerState = Literal["fetch", "exists", "shared", "copy"]


@dataclass(frozen=True)
class LayerInfo:
    """One layer of an image as the plan sees it.

    ``state``: ``fetch`` (this image downloads it), ``exists`` (already in the store), ``shared`` (another
    image of this pull downloads it), ``copy`` (made from a layer already in the store with the same diffID).
    """

    digest: str
    size: int
    state: LayerState


def short_digest(digest: str) -> str:
    """``sha256:0123456789ab...`` -> ``0123456789ab`` (as podman prints blob ids)."""
    return digest.split(":", 1)[-1][:12]


def human_size(n: float) -> str:
    """Bytes in podman's style: ``12.3MB``."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}TB"  # pragma: no cover


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

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self._sizes: dict[tuple[str, str], int] = {}
        self._started: dict[tuple[str, str], float] = {}

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
                self._say(f"{image}: layer {short_digest(layer.digest)} shared with another image of this pull")
            else:
                self._sizes[key] = layer.size
                self._started[key] = time.monotonic()

    def layer_done(self, image: str, digest: str) -> None:
        key = (image, digest)
        if key not in self._sizes:
            return
        took = time.monotonic() - self._started.get(key, time.monotonic())
        self._say(f"{image}: layer {short_digest(digest)} done ({human_size(self._sizes[key])} in {took:.1f}s)")

    def image_done(self, image: str, *, image_id: str | None, error: str | None, up_to_date: bool = False) -> None:
        if error is not None:
            self._say(f"{image}: FAILED: {error}")
        elif up_to_date:
            self._say(f"{image}: up to date ({(image_id or '')[:12]})")
        else:
            self._say(f"{image}: done ({(image_id or '')[:12]})")


class RichProgress(Progress):
    """A live display: one bar per image (its bytes to fetch) and per layer being fetched."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )
        from rich.progress import Progress as RichBars

        self.console = console if console is not None else Console(stderr=True)
        self.bars = RichBars(
            TextColumn("{task.description}"),
            BarColumn(bar_width=30),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[note]}"),
            console=self.console,
            refresh_per_second=8,
            transient=False,
        )
        self.bars.start()
        self._images: dict[str, Any] = {}
        self._image_done: dict[str, dict[str, int]] = {}
        self._layers: dict[tuple[str, str], Any] = {}

    def image_started(self, image: str) -> None:
        self._images[image] = self.bars.add_task(f"[bold]{image}", total=None, note="resolving")
        self._image_done[image] = {}

    def image_planned(self, image: str, layers: Sequence[LayerInfo]) -> None:
        fetch = [layer for layer in layers if layer.state in ("fetch",)]
        task = self._images.get(image)
        if task is None:
            self.image_started(image)
            task = self._images[image]
        self.bars.update(task, total=sum(layer.size for layer in fetch) or 1, completed=0,
                         note=f"{len(layers)} layers, {len(fetch)} to fetch")
        for layer in layers:
            desc = f"  {short_digest(layer.digest)}"
            if layer.state == "fetch":
                self._layers[(image, layer.digest)] = self.bars.add_task(desc, total=layer.size or None, note="")
            elif layer.state == "exists":
                self.bars.add_task(desc, total=layer.size or 1, completed=layer.size or 1,
                                   note="skipped: already exists")
            elif layer.state == "shared":
                self.bars.add_task(desc, total=layer.size or 1, completed=0, note="fetched by another image")
            else:
                self.bars.add_task(desc, total=layer.size or 1, completed=0, note="copied from the store")
        if not fetch:
            self.bars.update(task, completed=1)

    def layer_bytes(self, image: str, digest: str, done: int) -> None:
        task = self._layers.get((image, digest))
        if task is None:
            return
        self.bars.update(task, completed=done)
        per = self._image_done.setdefault(image, {})
        per[digest] = done
        self.bars.update(self._images[image], completed=sum(per.values()))

    def layer_done(self, image: str, digest: str) -> None:
        task = self._layers.get((image, digest))
        if task is not None:
            total = self.bars.tasks[task].total if task < len(self.bars.tasks) else None
            self.bars.update(task, completed=total or 0, note="done")

    def image_done(self, image: str, *, image_id: str | None, error: str | None, up_to_date: bool = False) -> None:
        task = self._images.get(image)
        if task is None:
            task = self.bars.add_task(f"[bold]{image}", total=1, note="")
        if error is not None:
            self.bars.update(task, note=f"[red]failed: {error}")
        else:
            total = self.bars.tasks[task].total or 1
            note = "up to date" if up_to_date else f"done {(image_id or '')[:12]}"
            self.bars.update(task, total=total, completed=total, note=f"[green]{note}")

    def close(self) -> None:
        self.bars.stop()


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
    "MultiProgress",
    "PlainProgress",
    "Progress",
    "ProgressMode",
    "RichProgress",
    "human_size",
    "make_progress",
    "short_digest",
]
