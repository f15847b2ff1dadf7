"""Extraction in child processes: :class:`ProcessLayerExtractor` and the pool of reusable children it uses.

Several layers extracting at once then use every core instead of fighting over the GIL.  A child is
``python -m tether.store.tar._worker_main`` (see its docstring for the pipe protocol); it costs ~0.1-0.2 s of
CPU to start (interpreter + imports), so children are kept idle in a :class:`WorkerPool` between layers, and
:func:`prewarm_workers` starts them ahead of a pull's first layer.  The CPU priority of each child is set by the
pool's :class:`~tether.store.tar.scheduling.Scheduler`.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final

from tether.store.diskspace import SpaceGuard
from tether.store.errors import (
    DanglingLinkError,
    DiskReserveError,
    HostileArchiveError,
    StoreError,
    UnsupportedError,
)
from tether.store.tar.apply import ExtractResult, LayerExtractor, Mode
from tether.store.tar.decompress import CorruptCompressedStreamError
from tether.store.tar.scheduling import BACKGROUND_NICE, Scheduler
from tether.store.tar.tarsplit import TarSplitError

__all__ = [
    "BACKGROUND_NICE",
    "ProcessLayerExtractor",
    "Worker",
    "WorkerPool",
    "default_pool",
    "prewarm_workers",
]

_MAX_FRAME: Final = 16 * 1024 * 1024

_WORKER_ERRORS: Final[dict[str, type[StoreError]]] = {
    "HostileArchiveError": HostileArchiveError,
    "UnsupportedError": UnsupportedError,
    "StoreError": StoreError,
}


class Worker:
    """One ``python -m tether.store.tar._worker_main`` child; reusable for the next layer after a success."""

    def __init__(self) -> None:
        # The directory above the installed ``tether`` package (the repository when run from source), as the
        # child's first import path.
        pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tether.store.tar._worker_main"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, bufsize=0, env=env,
            close_fds=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.pid = self.proc.pid
        self.stdin_fd = self.proc.stdin.fileno()
        self.stdout = self.proc.stdout
        self.background = False  # started at this process's niceness
        self.sched_idle = False  # under SCHED_IDLE (see Scheduler)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.stdin_fd, fcntl.F_SETPIPE_SZ, 1024 * 1024)  # fewer wake-ups per MiB

    def alive(self) -> bool:
        """Whether the child is still running."""
        return self.proc.poll() is None

    def stderr_text(self) -> str:
        """What the child wrote to stderr (its traceback when it died)."""
        with contextlib.suppress(OSError, ValueError):
            self.stderr.seek(0)
            return self.stderr.read().decode("utf-8", "replace").strip()
        return ""

    def close(self, *, kill: bool = False) -> None:
        """Close its pipes (an idle child exits on EOF; ``kill``: SIGKILL a busy one) and wait for it."""
        proc = self.proc
        if kill and proc.poll() is None:
            proc.kill()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        proc.wait()
        with contextlib.suppress(OSError):
            self.stderr.close()


class WorkerPool:
    """Idle :class:`Worker` children kept for the next layers (at most ``size``, default the CPU count, at
    least 2), and the :class:`~tether.store.tar.scheduling.Scheduler` that sets their CPU priorities.

    ``start_worker`` starts one child (:class:`Worker`; tests pass a slower or failing one).  Thread-safe.  A
    forked copy of this process never uses its parent's children.
    """

    def __init__(self, *, size: int | None = None, scheduler: Scheduler | None = None,
                 start_worker: Callable[[], Worker] = Worker) -> None:
        self.size = size if size is not None else max(2, os.cpu_count() or 2)
        self.scheduler = scheduler if scheduler is not None else Scheduler()
        self._start_worker = start_worker
        self._idle: list[Worker] = []
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)  # a prewarmed worker joined the pool
        self._pid = os.getpid()
        self._starting = 0  # workers prewarm is starting (not in the pool yet)

    def idle_pids(self) -> set[int]:
        """Process ids of the idle children."""
        with self._lock:
            return {w.pid for w in self._idle}

    def take(self, *, background: bool = False) -> Worker:
        """An idle worker (preferably one already at the wanted priority), else a new one, at the priority of a
        background or a critical layer."""
        w: Worker | None = None
        with self._lock:
            if os.getpid() != self._pid:  # a forked copy of this process must not share its parent's workers
                self._idle.clear()
                self._pid = os.getpid()
                self._starting = 0
                self.scheduler.forget_running()
            # A prewarmed worker about to join the pool is cheaper than one more child: wait for
            # it (Popen takes milliseconds) rather than start another one beside it.
            while not self._idle and self._starting > 0:
                self._ready.wait(timeout=10)
            self._idle.sort(key=lambda idle: idle.background == background)
            while self._idle:
                candidate = self._idle.pop()
                if candidate.alive():
                    w = candidate
                    break
                candidate.close()
        if w is not None and not self.scheduler.set_background(w, background):
            w.close()
            w = None
        if w is None:
            w = self._start_worker()
            self.scheduler.set_background(w, background)  # a new child starts at our niceness: raising it is allowed
        return w

    def _add_idle_locked(self, w: Worker) -> bool:
        """Keep ``w`` idle if there is room (the caller holds the lock)."""
        if len(self._idle) < self.size and w.alive():
            self._idle.append(w)
            self._ready.notify_all()
            return True
        return False

    def give_back(self, w: Worker) -> None:
        """``w`` applied a layer successfully: keep it idle for the next one, or close it."""
        with self._lock:
            if self._add_idle_locked(w):
                return
        w.close()

    def prewarm(self, count: int | None = None) -> None:
        """Start idle workers now (up to ``count``, default :attr:`size`); returns once they are started (the
        children import in the background)."""
        want = min(count if count is not None else self.size, self.size)
        with self._lock:
            missing = max(0, want - len(self._idle) - self._starting)
            self._starting += missing
        for _ in range(missing):
            w: Worker | None = None
            try:
                w = self._start_worker()
            finally:
                with self._lock:
                    self._starting -= 1
                    if w is not None and self._add_idle_locked(w):
                        w = None
                    self._ready.notify_all()  # also when starting failed: waiters must look again
            if w is not None:
                w.close()

    def close_idle(self) -> None:
        """Close the idle workers (they exit as their stdin closes)."""
        with self._lock:
            idle = list(self._idle)
            self._idle.clear()
        for w in idle:
            w.close()


_DEFAULT_POOL = WorkerPool()
atexit.register(_DEFAULT_POOL.close_idle)


def default_pool() -> WorkerPool:
    """This process's pool: the one :class:`ProcessLayerExtractor` and :func:`prewarm_workers` use by default."""
    return _DEFAULT_POOL


def prewarm_workers(count: int | None = None) -> None:
    """Start idle extraction workers in the default pool now (up to ``count``, default the CPU count), so that
    the first layers of a pull do not wait for an interpreter to start: call it when a pull begins.  Returns at
    once (the children import in the background)."""
    _DEFAULT_POOL.prewarm(count)


class ProcessLayerExtractor:
    """:class:`LayerExtractor`'s interface, with the work done in a child process
    (``python -m tether.store.tar._worker_main``), so that several layers extracting at once use every core.

    Chunks go to the child over a pipe (``feed`` blocks when the child is behind: memory stays bounded);
    ``finish`` closes the pipe and returns the child's :class:`ExtractResult`; a refused layer raises the
    same exception class the in-process extractor raises; ``abort`` kills the child and removes the partial
    tar-split (the caller removes ``target_dir``).

    A child costs ~0.1-0.2 s of CPU to start, more than a small layer takes to apply: the first
    ``spawn_threshold`` bytes are held back, and a blob that ends before reaching it is applied in this
    process at ``finish`` (0 starts the child at once).  Children that applied a layer successfully are kept
    idle (up to the number of CPUs) and reused for the next layers; they exit when this process does.

    ``background=False`` (a layer on the caller's critical path): the child runs at this process's CPU
    priority and splits the work over two threads (reading, decompressing and hashing beside parsing and
    applying), so one large layer keeps more than one core busy.  ``background=True``: one thread, at
    niceness + :data:`BACKGROUND_NICE`, so that smaller layers fill the gaps the critical ones leave instead
    of taking turns with them.  Measured on the benchmarks' one large image (4 layers, 2 cores): 6.1 s with
    every layer alike, 5.4 s with this split.  As root, background children also run under ``SCHED_IDLE``
    while a critical layer of the same pool is being extracted (:mod:`tether.store.tar.scheduling`).

    ``pool``: the :class:`WorkerPool` whose children do the work (default: this process's, see
    :func:`default_pool`).  ``space``: the child checks it as it writes (see :class:`LayerExtractor`).
    """

    def __init__(self, target_dir: Path, *, mode: Mode, tar_split_path: Path,
                 spawn_threshold: int = 4 * 1024 * 1024, background: bool = False,
                 pool: WorkerPool | None = None, space: SpaceGuard | None = None) -> None:
        if mode not in ("overlay", "vfs"):
            raise ValueError(f"mode must be 'overlay' or 'vfs', not {mode!r}")
        self.target_dir = Path(target_dir)
        self.background = background
        self._mode: Mode = mode
        self._tar_split_path = Path(tar_split_path)
        self._threshold = spawn_threshold
        self._space = space
        self._pool = pool if pool is not None else _DEFAULT_POOL
        self._held: list[bytes] = []
        self._held_len = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._worker: Worker | None = None
        self._released = False
        self._stdin_fd = -1
        self._done = False
        if spawn_threshold <= 0:
            self._spawn()

    def _spawn(self) -> None:
        self._worker = w = self._pool.take(background=self.background)
        self._pool.scheduler.start(w, background=self.background)
        self._proc = w.proc
        self._stdin_fd = w.stdin_fd
        params = json.dumps({"target_dir": os.fspath(os.path.abspath(self.target_dir)), "mode": self._mode,
                             "tar_split_path": os.fspath(os.path.abspath(self._tar_split_path)),
                             "threaded": not self.background,
                             "space": self._space.to_json() if self._space is not None else None})
        self._send(params.encode())

    def feed(self, chunk: bytes) -> None:
        """Send the next chunk of the blob to the child (blocks while its pipe is full)."""
        if self._done:
            raise StoreError("ProcessLayerExtractor.feed after finish/abort or a failure")
        if not chunk:
            return
        if self._proc is None:
            if self._held_len + len(chunk) <= self._threshold:
                self._held.append(chunk)
                self._held_len += len(chunk)
                return
            self._spawn()
            held, self._held = self._held, []
            self._held_len = 0
            for piece in held:
                self._send(piece)
        self._send(chunk)

    def _send(self, chunk: bytes) -> None:
        """Frames of at most 16 MiB: 4-byte big-endian length + bytes; ``b""`` sends the end frame."""
        fd = self._stdin_fd
        view = memoryview(chunk)
        try:
            while True:
                piece = view[:_MAX_FRAME]
                view = view[len(piece) :]
                head = len(piece).to_bytes(4, "big")
                out = memoryview(head + piece) if len(piece) < 65536 else None
                if out is None:
                    out = memoryview(head)
                    while out:
                        out = out[os.write(fd, out) :]
                    out = piece
                while out:
                    out = out[os.write(fd, out) :]
                if not view:
                    return
        except BrokenPipeError:
            # The child stopped reading: it refused the layer (or died); report its error.
            self._done = True
            self._collect()
            raise StoreError(f"layer extraction for {self.target_dir} stopped without an error") from None

    def finish(self) -> ExtractResult:
        """Close the pipe, wait for the child and return its result (or raise its error)."""
        if self._done:
            raise StoreError("ProcessLayerExtractor.finish after finish/abort or a failure")
        self._done = True
        if self._proc is None:
            local = LayerExtractor(self.target_dir, mode=self._mode, tar_split_path=self._tar_split_path,
                                   space=self._space)
            held, self._held = self._held, []
            try:
                for piece in held:
                    local.feed(piece)
                return local.finish()
            except BaseException:
                local.abort()
                raise
        self._send(b"")
        return self._collect()

    def _collect(self) -> ExtractResult:
        w = self._worker
        assert w is not None
        line = b""
        with contextlib.suppress(OSError):
            line = w.stdout.readline()
        try:
            msg = json.loads(line) if line.strip() else {}
        except ValueError:
            msg = {}
        self._released = True
        reusable = self._pool.scheduler.end(w, background=self.background)
        if "ok" in msg:
            if reusable:
                self._pool.give_back(w)
            else:
                w.close()
            return ExtractResult.from_json(msg["ok"])
        w.close()  # a worker that failed a layer exits; never reused
        rc = w.proc.returncode
        err_text = w.stderr_text()
        self._remove_tar_split()
        if "error" in msg:
            cls_name = str(msg["error"])
            if cls_name == "CorruptCompressedStreamError":
                raise CorruptCompressedStreamError(str(msg["message"]))
            if cls_name == "TarSplitError":
                raise TarSplitError(str(msg["message"]))
            if cls_name == "DiskReserveError":
                raise DiskReserveError(str(msg["message"]))  # names the filesystem itself
            if cls_name == "DanglingLinkError":
                raise DanglingLinkError(str(msg["message"]), final=False)
            exc = _WORKER_ERRORS.get(cls_name, StoreError)
            text = str(msg["message"])
            if exc is StoreError and cls_name not in _WORKER_ERRORS:
                text = f"{cls_name}: {text}"
            raise exc(f"extracting layer into {self.target_dir}: {text}")
        tail = err_text[-2000:] if err_text else f"exit status {rc}"
        raise StoreError(f"layer extraction worker for {self.target_dir} failed: {tail}")

    def _remove_tar_split(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tar_split_path)

    def abort(self) -> None:
        """Kill the child, wait for it and remove the partial tar-split.  Safe to call more than once."""
        proc = self._proc
        if proc is None:
            self._done = True
            self._held = []
            return
        if self._released:
            return  # finished (worker back in the pool or gone): nothing to undo
        self._done = True
        self._released = True
        assert self._worker is not None
        self._pool.scheduler.end(self._worker, background=self.background)
        self._worker.close(kill=True)
        self._remove_tar_split()
