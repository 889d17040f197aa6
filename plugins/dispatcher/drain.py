"""Draining one destination: no new calls to it, and word when its last call ended.

``dispatcher.drain <setid> <uri|all>`` sets the entry's state to D (disabled: not selected,
not probed, kept in the admin state file like a ``set_state d``, so a reload or restart keeps
it out), then :class:`DrainWatch` follows its call load (DLGLOAD) and logs, once it reaches
0, that the gateway can be taken down. ``dispatcher.undrain`` sets it active again (``ap``
while keepalives run, so a probe confirms it). The ``set_state`` letters stay Kamailio's: a
drain is a ``d`` with a watch, and ``dispatcher.list`` shows the watch as ``RUNTIME.DRAINING``.

Calls already routed keep their plan: one failing over may still try a drained destination
(Kamailio's ``ds_next_dst`` walks the list it selected, too). Loop thread only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from loguru import logger

from plugins.dispatcher.runtime import DestKey, DispatcherState

#: a drain of more destinations than this logs one line in all, not one each
_LINES_EACH = 5


class DrainWatch:
    """Drained destinations whose calls are still running, with when the drain began."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.pending: dict[DestKey, float] = {}

    def start(self, state: DispatcherState, keys: Iterable[DestKey]) -> None:
        """Watch ``keys`` (already set to D); those without calls are drained at once. A line per
        destination for a few; for more (``drain <set> all`` of a long list), one line in all."""
        now = self._clock()
        busy: list[tuple[DestKey, int]] = []
        idle: list[DestKey] = []
        for key in keys:
            rt = state.runtime(key)
            if rt is not None and rt.load > 0:
                self.pending.setdefault(key, now)
                busy.append((key, rt.load))
            elif rt is not None and key not in self.pending:
                idle.append(key)
        if len(busy) + len(idle) > _LINES_EACH:
            logger.info("dispatcher: {} destination(s) draining ({} call(s) to them go on), {} drained (no calls)",
                        len(busy), sum(load for _, load in busy), len(idle))
            return
        for key, load in busy:
            logger.info("dispatcher: set {} {} draining: {} call(s) to it go on", key[0], key[1], load)
        for key in idle:
            logger.info("dispatcher: set {} {} drained: no calls to it", key[0], key[1])

    def stop(self, keys: Iterable[DestKey]) -> None:
        """Stop watching ``keys`` (undrained, removed)."""
        for key in keys:
            self.pending.pop(key, None)

    def draining(self, key: DestKey) -> bool:
        return key in self.pending

    def calls(self, state: DispatcherState, keys: Iterable[DestKey]) -> int:
        """Calls still holding a slot on any of ``keys``."""
        total = 0
        for key in keys:
            rt = state.runtime(key)
            total += rt.load if rt is not None else 0
        return total

    def check(self, state: DispatcherState, keys: Iterable[DestKey] | None = None) -> list[DestKey]:
        """Log and forget every watched destination (of ``keys`` only, when given: those a call
        just let go of) whose calls reached 0 (or that is gone); the keys that finished."""
        done = []
        pending = self.pending
        watched = list(pending.items()) if keys is None else [(k, pending[k]) for k in keys if k in pending]
        for key, since in watched:
            rt = state.runtime(key)
            if rt is not None and rt.load > 0:
                continue
            del self.pending[key]
            done.append(key)
            if rt is not None:
                logger.info("dispatcher: set {} {} drained: its last call ended {:.1f} s after the drain began",
                            key[0], key[1], self._clock() - since)
        return done
