"""Per-destination counters: what each gateway got and how it answered (loop thread only).

OpenSIPS users asked for per-destination hit counters for years (OpenSIPS#487); Kamailio has
none in its dispatcher either. Here each destination has a :class:`DestCounters`, made on its
first event and kept by key (set, URI), as the admin state is: a reload keeps the counters of
every destination that stays, whether or not it keeps its runtime state
(``keep_state_on_reload``); a destination gone from the list loses them (it starts from zero
if it comes back). Only :meth:`DispatcherCounters.reset` (``dispatcher.stats_reset``,
``stats.reset_statistics``) sets a counter back.

The call path costs a dictionary lookup and an integer add per event (``bench/stats.py``):

* ``selected``: the destination the algorithm chose first for a call;
* ``attempts``: INVITEs sent to it; each ends as one of ``answered``, a failure response
  (``codes``, by status), a local timeout (``no_response``: nothing within the attempt timeout;
  ``no_answer``: rang past the answer timeout), ``errors`` (could not be sent), or ``cancelled``
  (another fork answered, or the caller gave up: not the gateway's doing);
* ``failovers``: calls that failed here and were dialled on to another destination;
* ``keepalives_sent``/``keepalives_failed`` and the keepalive round-trip times
  (:class:`~b2bua.stats.Histogram`, seconds);
* ``state_changes``: times it went down or came back up (Kamailio's ``dst-down``/``dst-up``).

:class:`DispatcherCounters` also counts reloads by trigger and result.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable

from b2bua.stats import Histogram
from plugins.dispatcher.runtime import DestKey

#: keepalive round-trip buckets, seconds
RTT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
#: status classes of an attempt's outcome, in the order they are shown
OUTCOMES = ("2xx", "3xx", "4xx", "5xx", "6xx", "timeout", "error", "cancelled")


class DestCounters:
    """The counters of one destination (see the module docstring)."""

    __slots__ = ("answered", "attempts", "cancelled", "codes", "errors", "failovers", "keepalives_failed",
                 "keepalives_sent", "no_answer", "no_response", "rtt", "selected", "state_changes")

    def __init__(self) -> None:
        self.selected = 0
        self.attempts = 0
        self.answered = 0
        self.cancelled = 0
        self.errors = 0
        self.no_response = 0
        self.no_answer = 0
        self.failovers = 0
        self.keepalives_sent = 0
        self.keepalives_failed = 0
        self.state_changes = 0
        self.codes: Counter[int] = Counter()  #: failure responses by status code
        self.rtt: Histogram | None = None  #: keepalive round trips, made with the first reply

    @property
    def failed(self) -> int:
        """Attempts that failed through the gateway: failure responses, timeouts and send errors."""
        return sum(self.codes.values()) + self.no_response + self.no_answer + self.errors

    def outcomes(self) -> dict[str, int]:
        """Finished attempts by outcome class (:data:`OUTCOMES`)."""
        out = dict.fromkeys(OUTCOMES, 0)
        out["2xx"] = self.answered
        for code, n in self.codes.items():
            out[f"{min(max(code // 100, 3), 6)}xx"] += n
        out["timeout"] = self.no_response + self.no_answer
        out["error"] = self.errors
        out["cancelled"] = self.cancelled
        return out


class DispatcherCounters:
    """Every destination's :class:`DestCounters` by key, and reload counts (loop thread).

    :param known: whether a key is a loaded destination (events for other keys, e.g. a late
        failure of a destination a reload removed, are not counted).
    """

    def __init__(self, known: Callable[[DestKey], bool], clock: Callable[[], float] = time.time) -> None:
        self._known = known
        self._clock = clock
        self.by_key: dict[DestKey, DestCounters] = {}
        self.reloads: Counter[tuple[str, str]] = Counter()  #: (trigger, "ok"|"failed") -> count
        self.since = clock()

    def get(self, key: DestKey) -> DestCounters | None:
        """The counters of ``key``, made on first use; None for a key that is not loaded."""
        counters = self.by_key.get(key)
        if counters is None:
            if not self._known(key):
                return None
            counters = self.by_key[key] = DestCounters()
        return counters

    # -- events (the call path) -----------------------------------------------------------------

    def selected(self, key: DestKey) -> None:
        c = self.get(key)
        if c is not None:
            c.selected += 1

    def attempt(self, key: DestKey) -> None:
        c = self.get(key)
        if c is not None:
            c.attempts += 1

    def answered(self, key: DestKey) -> None:
        c = self.get(key)
        if c is not None:
            c.answered += 1

    def failed(self, key: DestKey, kind: str, code: int) -> None:
        """An attempt ended without an answer; ``kind`` is :class:`b2bua.api.FailureKind`'s value."""
        c = self.get(key)
        if c is None:
            return
        if kind == "response":
            c.codes[code] += 1
        elif kind == "cancelled":
            c.cancelled += 1
        elif kind == "no-response":
            c.no_response += 1
        elif kind == "no-answer":
            c.no_answer += 1
        else:
            c.errors += 1

    def failover(self, key: DestKey) -> None:
        c = self.get(key)
        if c is not None:
            c.failovers += 1

    def keepalive_sent(self, key: DestKey) -> None:
        c = self.get(key)
        if c is not None:
            c.keepalives_sent += 1

    def keepalive_done(self, key: DestKey, ok: bool, rtt: float | None) -> None:
        """One keepalive's outcome (``rtt``: seconds to a reply, None without one)."""
        c = self.get(key)
        if c is None:
            return
        if not ok:
            c.keepalives_failed += 1
        if rtt is not None:
            if c.rtt is None:
                c.rtt = Histogram(RTT_BUCKETS)
            c.rtt.observe(rtt)

    def state_changed(self, key: DestKey) -> None:
        c = self.get(key)
        if c is not None:
            c.state_changes += 1

    def reload_done(self, trigger: str, ok: bool) -> None:
        self.reloads[(trigger, "ok" if ok else "failed")] += 1

    # -- upkeep -----------------------------------------------------------------------------------

    def forget(self, keys: Iterable[DestKey]) -> None:
        """Drop the counters of destinations no longer loaded (after a reload or a remove)."""
        for key in keys:
            self.by_key.pop(key, None)

    def prune(self) -> int:
        """Drop the counters of every key no longer loaded; how many went."""
        gone = [key for key in self.by_key if not self._known(key)]
        self.forget(gone)
        return len(gone)

    def reset(self, keys: Iterable[DestKey] | None = None) -> int:
        """Zero the counters of ``keys`` (default: every destination, and the reload counts);
        how many destinations were reset."""
        if keys is None:
            count = len(self.by_key)
            self.by_key.clear()
            self.reloads.clear()
            self.since = self._clock()
            return count
        count = 0
        for key in keys:
            if self.by_key.pop(key, None) is not None:
                count += 1
        return count
