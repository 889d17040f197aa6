"""Give the heap's free pages back to the system once a load has passed.

pjsip frees each call's pools when its last transaction ends, and Python frees ended sessions,
but glibc keeps freed memory inside the heap as long as a live block sits above it: after a
burst of calls the process stays at its peak RSS with the heap mostly free (measured: 965 MB
an hour after a 400 calls/s run, with no call up; 239 MB with 29 MB of it in use after 6,000
calls at 200 calls/s). ``malloc_trim(0)`` hands the free pages in the middle of the heap back
(``madvise``). It walks the heap, so it runs on the loop only once no new call leg has been
made for :data:`TRIM_AFTER_IDLE` seconds after some, once per such lull.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable
from typing import Any

#: seconds without a new call leg (longer than the transactions' 5 s linger) before the heap is trimmed
TRIM_AFTER_IDLE = 10.0


def malloc_trim() -> Callable[[], int] | None:
    """glibc's ``malloc_trim(0)``, or None where there is none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if fn is None:
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int

    def trim() -> int:
        return int(fn(0))

    return trim


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def heap_report() -> dict[str, Any]:
    """The process's resident memory and glibc's main-heap figures, in MB (``core.memory``)."""
    page = os.sysconf("SC_PAGE_SIZE")
    with open("/proc/self/statm") as f:
        rss = int(f.read().split()[1]) * page
    out: dict[str, Any] = {"rss_mb": round(rss / 1e6, 1)}
    name = ctypes.util.find_library("c")
    try:
        mallinfo2 = ctypes.CDLL(name).mallinfo2 if name else None
    except (OSError, AttributeError):
        mallinfo2 = None
    if mallinfo2 is not None:
        mallinfo2.restype = _MallInfo2
        info = mallinfo2()
        out.update(heap_mb=round(info.arena / 1e6, 1), heap_in_use_mb=round(info.uordblks / 1e6, 1),
                   heap_free_mb=round(info.fordblks / 1e6, 1), mmapped_mb=round(info.hblkhd / 1e6, 1))
    return out


class HeapTrimmer:
    """Decides when to trim: ``check`` is called periodically with how many call legs were ever
    made; it trims once after calls, when no new leg has been made for ``idle_for`` seconds
    (calls still up do not hold it back: a caller that vanished can keep one up for hours).
    Returns whether it trimmed."""

    def __init__(self, trim: Callable[[], int] | None, idle_for: float = TRIM_AFTER_IDLE) -> None:
        self._trim = trim
        self.idle_for = idle_for
        self._trimmed_at_made = 0  #: legs made when the heap was last trimmed
        self._last_made = 0
        self._quiet_since = 0.0
        self.trims = 0

    def check(self, now: float, legs_made: int) -> bool:
        if legs_made != self._last_made:
            self._last_made = legs_made
            self._quiet_since = now
            return False
        if self._trim is None or legs_made == self._trimmed_at_made or now - self._quiet_since < self.idle_for:
            return False
        self._trimmed_at_made = legs_made
        self._trim()
        self.trims += 1
        return True
