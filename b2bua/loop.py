"""The loop thread's scheduler: timers and work handed over from other threads.

pjsua2 is owned by one thread, which runs ``libHandleEvents`` in a loop; between polls it
runs the timers that are due and the callables other threads queued. Nothing here touches
pjsua2, so it is tested on its own.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from loguru import logger

T = TypeVar("T")


class Timer:
    """A scheduled callback; ``cancel()`` is idempotent and safe from the loop thread."""

    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback: Callable[[], None] | None = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self.callback = None  # drop references (closures may hold call state)


class Scheduler:
    """Timers (a heap) plus a thread-safe queue of callables, run by :meth:`run_pending`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._queue: deque[Callable[[], None]] = deque()  # deque append/popleft are thread-safe
        self.loop_thread: threading.Thread | None = None

    def now(self) -> float:
        return self._clock()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` on the loop thread after ``delay`` seconds."""
        timer = Timer(self._clock() + max(0.0, delay), callback)
        heapq.heappush(self._heap, (timer.when, next(self._seq), timer))
        return timer

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """From any thread: run ``callback`` on the loop thread at its next pass."""
        self._queue.append(callback)

    def run_on_loop(self, callback: Callable[[], T], timeout: float = 10.0) -> T:
        """From another thread: run ``callback`` on the loop and return its result or raise."""
        if threading.current_thread() is self.loop_thread:
            return callback()
        done = threading.Event()
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["result"] = callback()
            except BaseException as exc:  # handed back to the caller's thread
                box["error"] = exc
            finally:
                done.set()

        self._queue.append(run)
        if not done.wait(timeout):
            raise TimeoutError(f"the loop did not run the request within {timeout:g} s")
        if "error" in box:
            raise box["error"]
        return box["result"]

    def clear(self) -> int:
        """Drop every timer and queued callable without running them (shutdown, after the last
        pass: their closures may hold call objects that must go before pjsua does); returns how
        many were pending."""
        pending = len(self._queue) + sum(1 for _, _, timer in self._heap if not timer.cancelled)
        for _, _, timer in self._heap:
            timer.cancel()
        self._heap.clear()
        self._queue.clear()
        return pending

    def next_delay(self, ceiling: float) -> float:
        """Seconds until the next timer (at most ``ceiling``), 0 when work is queued."""
        if self._queue:
            return 0.0
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        if not self._heap:
            return ceiling
        return min(ceiling, max(0.0, self._heap[0][0] - self._clock()))

    def run_pending(self) -> int:
        """Run queued callables and due timers; return how many ran. Errors are logged."""
        ran = 0
        for _ in range(len(self._queue)):
            self._run(self._queue.popleft())
            ran += 1
        now = self._clock()
        heap = self._heap
        while heap and heap[0][0] <= now:
            timer = heapq.heappop(heap)[2]
            callback = timer.callback
            if callback is None:
                continue
            timer.callback = None
            self._run(callback)
            ran += 1
        return ran

    @staticmethod
    def _run(callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception:
            logger.opt(exception=True).error("error in a loop callback {!r}", callback)
