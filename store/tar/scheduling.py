"""CPU priorities of the extraction children: which layers wait for which.

A layer on the pull's critical path (``background=False``) is extracted at this process's CPU priority; a
background layer (smaller than the layers that decide when the pull ends) at niceness + :data:`BACKGROUND_NICE`,
so that it fills the gaps the critical ones leave instead of taking turns with them.

While a critical layer is being extracted, the children of background layers run under SCHED_IDLE, not
merely niced.  Niceness only weighs CPU shares: with EEVDF a niced child that is running keeps its slice when
the critical child's threads or the parent wake up (thousands of times a second: pipe reads, queue hand-offs),
and they wait for it.  A SCHED_IDLE task is preempted at once by any normal one waking (sched/fair.c
check_preempt_wakeup_fair), so background layers only fill the CPU the critical path leaves.  Measured on
the benchmarks' large image (2 cores, RAM-backed ext4, 6 alternating runs): median 4.47 s instead of 4.70 s;
the critical applier thread's run-queue wait fell from about 1.0 s to 0.75 s.  When the last critical layer
ends, the others go back to this process's own policy (still niced), so that a busy host cannot starve them.
Only as root and only when this process runs under SCHED_OTHER or SCHED_BATCH (a pull a unit already runs
under SCHED_IDLE, or real-time, is left alone): leaving SCHED_IDLE again needs CAP_SYS_NICE (sched(7)); a
refusal turns the scheme off for the :class:`Scheduler`.
"""

from __future__ import annotations

import os
import threading
from typing import Final, Protocol

__all__ = ["BACKGROUND_NICE", "Scheduled", "Scheduler", "own_policy"]

#: Niceness added to the extraction children of background layers.
BACKGROUND_NICE: Final = 10


class Scheduled(Protocol):
    """A child whose CPU priority the :class:`Scheduler` sets (:class:`tether.store.tar.workers.Worker`)."""

    @property
    def pid(self) -> int: ...

    background: bool  # niced by BACKGROUND_NICE
    sched_idle: bool  # under SCHED_IDLE


def own_policy() -> int | None:
    """The policy background children return to: this process's, when it is SCHED_OTHER or SCHED_BATCH and
    we are root; None turns the SCHED_IDLE scheme off."""
    if not hasattr(os, "SCHED_IDLE") or os.geteuid() != 0:
        return None
    try:
        policy = os.sched_getscheduler(0)
    except OSError:
        return None
    return policy if policy in (os.SCHED_OTHER, os.SCHED_BATCH) else None


class Scheduler:
    """Niceness and SCHED_IDLE of the children of one worker pool (see the module's docstring).

    ``restore_policy``: the policy background children go back to when no critical layer runs; by default
    :func:`own_policy`, read when a layer first starts (not when this module is imported).  Thread-safe.
    """

    def __init__(self, *, restore_policy: int | None = None) -> None:
        self._lock = threading.Lock()
        self._restore_policy = restore_policy
        self._idle_ok: bool | None = None if restore_policy is None else True  # None: not decided yet
        self._critical_running = 0
        self._background_running: set[Scheduled] = set()

    def set_background(self, w: Scheduled, background: bool) -> bool:
        """Give ``w`` the CPU priority of a background (niceness + :data:`BACKGROUND_NICE`) or a critical layer
        (this process's niceness).  False when that is not allowed: lowering a child's niceness again needs
        CAP_SYS_NICE, so an unprivileged caller cannot bring a background worker back to the foreground."""
        if w.background == background:
            return True
        base = os.getpriority(os.PRIO_PROCESS, 0)
        try:
            os.setpriority(os.PRIO_PROCESS, w.pid, min(19, base + BACKGROUND_NICE) if background else base)
        except OSError:
            return False
        w.background = background
        return True

    def start(self, w: Scheduled, *, background: bool) -> None:
        """A layer starts in ``w``: a background one waits behind the running critical ones (if any); the first
        critical one sends the running background ones behind it."""
        with self._lock:
            if background:
                self._background_running.add(w)
                if self._critical_running:
                    self._set_sched_idle(w, True)
                return
            self._critical_running += 1
            if self._critical_running == 1:
                for other in self._background_running:
                    self._set_sched_idle(other, True)

    def end(self, w: Scheduled, *, background: bool) -> bool:
        """The layer in ``w`` ended.  False when ``w`` is left under SCHED_IDLE (it must not serve another layer)."""
        with self._lock:
            if background:
                self._background_running.discard(w)
                return self._set_sched_idle(w, False)
            self._critical_running -= 1
            if self._critical_running == 0:
                for other in self._background_running:
                    self._set_sched_idle(other, False)
            return True

    def forget_running(self) -> None:
        """In a forked copy of this process: the running layers are the parent's, not ours."""
        with self._lock:
            self._critical_running = 0
            self._background_running.clear()

    def _set_sched_idle(self, w: Scheduled, idle: bool) -> bool:
        """Move ``w``'s child to SCHED_IDLE or back to the restore policy; False when that is refused (the lock
        is held)."""
        if w.sched_idle == idle:
            return True
        if self._idle_ok is None:
            self._restore_policy = own_policy()
            self._idle_ok = self._restore_policy is not None
        if idle and not self._idle_ok:
            return False
        try:
            restore = os.SCHED_OTHER if self._restore_policy is None else self._restore_policy
            os.sched_setscheduler(w.pid, os.SCHED_IDLE if idle else restore, os.sched_param(0))
        except ProcessLookupError:
            return False  # the child is gone; its layer reports that
        except OSError:
            self._idle_ok = False
            return False
        w.sched_idle = idle
        return True
