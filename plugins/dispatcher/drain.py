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


class DrainWatch:
    """Drained destinations whose calls are still running, with when the drain began."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.pending: dict[DestKey, float] = {}

    def start(self, state: DispatcherState, keys: Iterable[DestKey]) -> None:
        """Watch ``keys`` (already set to D); those without calls are drained at once."""
        now = self._clock()
        for key in keys:
            rt = state.runtime(key)
            if rt is not None and rt.load > 0:
                self.pending.setdefault(key, now)
                logger.info("dispatcher: set {} {} draining: {} call(s) to it go on", key[0], key[1], rt.load)
            elif rt is not None and key not in self.pending:
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

    def check(self, state: DispatcherState) -> list[DestKey]:
        """Log and forget every watched destination whose calls reached 0 (or that is gone);
        the keys that finished."""
        done = []
        for key, since in list(self.pending.items()):
            rt = state.runtime(key)
            if rt is not None and rt.load > 0:
                continue
            del self.pending[key]
            done.append(key)
            if rt is not None:
                logger.info("dispatcher: set {} {} drained: its last call ended {:.1f} s after the drain began",
                            key[0], key[1], self._clock() - since)
        return done
