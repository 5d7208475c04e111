"""One timer thread per process: deadlines in a heap, callbacks run on that thread.

C_TIMER gobjs schedule here and the callback only posts an event to the gobj's actor
(`tell`), so a slow action never delays another timer. Periodic timers are re-armed from
their previous deadline, not from "now", so they do not drift.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable

from yuneta.log import log


class TimerHandle:
    """A scheduled call; `cancel()` is idempotent and thread-safe."""

    __slots__ = ("deadline", "fn", "cancelled")

    def __init__(self, deadline: float, fn: Callable[[], object]) -> None:
        self.deadline = deadline
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Scheduler:
    """A heap of deadlines (time.monotonic seconds) served by one daemon thread."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="yuneta-scheduler", daemon=True)
        self._thread.start()

    def call_at(self, deadline: float, fn: Callable[[], object]) -> TimerHandle:
        """Run `fn` on the scheduler thread at monotonic time `deadline`."""
        handle = TimerHandle(deadline, fn)
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._seq), handle))
            self._cond.notify()
        return handle

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                deadline, _, handle = self._heap[0]
                delay = deadline - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                heapq.heappop(self._heap)
            if handle.cancelled:
                continue
            try:
                handle.fn()
            except Exception as exc:  # a bad callback must not stop every other timer
                log(
                    "error",
                    "yuneta-scheduler",
                    "timer callback failed",
                    error=repr(exc),
                    exc_info=True,
                )


_scheduler: Scheduler | None = None
_lock = threading.Lock()


def scheduler() -> Scheduler:
    """The process-wide scheduler, started on first use."""
    global _scheduler
    with _lock:
        if _scheduler is None:
            _scheduler = Scheduler()
        return _scheduler
