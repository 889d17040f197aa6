"""How long Python's garbage collector holds the loop: collections and seconds per generation,
and the longest pause of the last 1-2 minutes (``core.stats``, ``/metrics``).

A collection runs on whichever thread allocates when a generation's threshold is crossed, with
the GIL held: the loop stalls for its whole length. A full collection walks every object not
frozen at start-up, so anything a call leaves behind in quantity (dead timers in the loop's heap
were 54,000 objects after a minute at 900 calls/s, 45-71 ms a collection) shows here first, as
pauses that grow while the load lasts.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: the longest pause is kept over this many seconds (the one before it included, so a scrape
#: every 30-60 s never misses one)
WINDOW = 60.0

GENERATIONS = 3


@dataclass(frozen=True)
class GcReport:
    collections: tuple[int, ...]  #: per generation (0, 1, 2), since the watch started
    seconds: tuple[float, ...]  #: time spent collecting, per generation
    longest_pause: float  #: seconds: the longest collection in the last ``WINDOW`` to ``2 x WINDOW`` s


#: before the watch starts (and for a snapshot made without one)
NO_GC = GcReport((0,) * GENERATIONS, (0.0,) * GENERATIONS, 0.0)


class GcWatch:
    """Times every collection through ``gc.callbacks`` (two calls of a few hundred ns each per
    collection; a loaded process makes a few a second). ``clock`` is for tests."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._collections = [0] * GENERATIONS
        self._seconds = [0.0] * GENERATIONS
        self._started: float | None = None
        self._window_start = clock()
        self._longest = 0.0  # in the current window
        self._longest_before = 0.0  # in the window before it

    def start(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def stop(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        now = self._clock()
        if phase == "start":
            self._started = now
            return
        started, self._started = self._started, None
        if started is None:
            return  # watching began in the middle of this collection
        generation = info.get("generation", 0)
        if not 0 <= generation < GENERATIONS:
            return
        pause = now - started
        self._collections[generation] += 1
        self._seconds[generation] += pause
        self._roll(now)
        if pause > self._longest:
            self._longest = pause

    def _roll(self, now: float) -> None:
        elapsed = now - self._window_start
        if elapsed >= WINDOW:
            # a window with no collection at all in between leaves nothing to carry over
            self._longest_before = self._longest if elapsed < 2 * WINDOW else 0.0
            self._longest = 0.0
            self._window_start = now

    def report(self) -> GcReport:
        self._roll(self._clock())
        return GcReport(tuple(self._collections), tuple(self._seconds), max(self._longest, self._longest_before))
