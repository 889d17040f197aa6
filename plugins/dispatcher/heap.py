"""The process heap around a large load: short garbage collections, memory given back.

Loading 100,000 destinations makes about 420,000 objects the garbage collector tracks. A full
(generation 2) collection walks all of them while holding the GIL: ~220 ms on our 2-core test
machine, a stall of the loop thread long enough to shed calls as overload. A reload doubles it
for a while (old and new generation alive at once) and by itself triggers full collections.
Freeing the old generation in one go holds the GIL ~130 ms more. So, for a large load:

- while the next generation is built, full collections are held off (young ones still run);
- the old generation is freed a slice at a time, in a loop task (:func:`release_steps`), and
  ``malloc_trim`` then hands the freed pages back to the system (glibc keeps them otherwise);
- once the new generation is in place, :meth:`HeapPolicy.settle` moves every object alive to
  the collector's permanent generation (``gc.freeze``, O(1)), so later full collections skip
  the destinations and take milliseconds. Objects frozen that later die are still freed by
  reference counting; only reference cycles among them wait for the next :func:`gc.unfreeze`.

Process-wide by nature (the collector is one per process); nothing is done for small loads.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
from typing import Any

from loguru import logger

from b2bua.loop import Task

#: from this many destinations on, a load gets the treatment above (a full collection over
#: fewer costs well under the loop's 100 ms overload threshold)
LARGE = 10_000
#: objects freed per step of :func:`release_steps` (~1-2 ms)
SLICE = 1_000
#: generation-2 threshold while full collections are held off (the default is 10)
HELD_THRESHOLD = 1_000_000


class HeapPolicy:
    """What a load does to the garbage collector (one instance per plugin; loop thread).

    :param large: a load of at least this many destinations is settled with ``gc.freeze``.
    """

    def __init__(self, large: int = LARGE) -> None:
        self.large = large
        self._held: tuple[int, int, int] | None = None

    def hold(self) -> None:
        """Hold full collections off until :meth:`release` (young collections still run)."""
        if self._held is None:
            self._held = gc.get_threshold()
            gen0, gen1, _ = self._held
            gc.set_threshold(gen0, gen1, HELD_THRESHOLD)

    def release(self) -> None:
        """Restore the thresholds :meth:`hold` changed."""
        if self._held is not None:
            gc.set_threshold(*self._held)
            self._held = None

    def settle(self, count: int) -> bool:
        """After a load of ``count`` destinations is in place (and the one it replaced freed):
        for a large load, freeze what is alive so full collections skip it. True if frozen."""
        if count < self.large:
            return False
        gc.collect(1)  # young garbage only: cheap, and it should not be frozen
        gc.freeze()
        logger.debug("dispatcher: {} objects kept out of full garbage collections", gc.get_freeze_count())
        return True


def release_steps(parts: list[Any], slice_size: int = SLICE) -> Task[int]:
    """Free ``parts`` (the caller's last references) a slice per step of a loop task.

    The caller hands over a list of the objects that own most of the memory (destinations,
    runtime records) after dropping the containers that held them, which only decremented
    counts. Returns how many objects were let go.
    """
    count = len(parts)
    while parts:
        del parts[-slice_size:]
        yield None
    return count


def malloc_trim() -> None:
    """Give the freed heap pages back to the system (glibc; elsewhere nothing to do).

    Blocking (it walks the heap) but without the GIL: run it on a worker thread."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)  # ctypes releases the GIL for the call


@functools.cache
def _libc() -> Any:
    """The C library if it has ``malloc_trim`` (glibc), else None; looked up once."""
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return lib if lib is not None and hasattr(lib, "malloc_trim") else None
