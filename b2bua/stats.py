"""Statistics: counters kept on the loop thread, read as plain data by the control API.

Counters are plain integers in objects owned by the loop thread (an increment is an attribute
add: no lock, no metric object per increment); readers never touch them from another thread.
A reader (``core.stats``, ``stats.get_statistics``, the Prometheus ``/metrics`` route of
:mod:`b2bua.metrics`) asks the loop for a copy:

* a :class:`StatsSource` per group (``core`` here; plugins add theirs in
  ``b2bua_register_stats``, e.g. the dispatcher's ``dispatcher``) turns its counters into
  :class:`Family` values, metric families named in Prometheus' conventions, built as a loop
  task (:data:`b2bua.loop.Task`) so that a large destination list is copied a slice at a time;
* :meth:`StatsSource.totals` gives the group's unlabelled numbers for Kamailio's
  ``stats.get_statistics`` (``core:calls_received = 12``);
* :meth:`StatsSource.reset` zeroes the group's counters (``stats.reset_statistics``): the only
  way a counter goes backwards.

:class:`ProcessStats` holds the process's own call counters; :class:`CoreStats` is the ``core``
group over them and the app's gauges (calls in progress, call legs, drain and overload state).
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from b2bua import hookimpl
from b2bua.api import CallInfo, EndCause, Target
from b2bua.gcwatch import NO_GC, GcReport
from b2bua.loop import Task

Kind = Literal["counter", "gauge", "histogram"]
Labels = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class HistogramValue:
    """One histogram series: cumulative counts per upper bound (seconds), count and sum."""

    buckets: tuple[tuple[float, int], ...]
    count: int
    sum: float


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family: ``name`` (with ``_total`` for a counter), ``help``, label names, and
    per series its label values and value (a :class:`HistogramValue` for a histogram)."""

    name: str
    kind: Kind
    help: str
    labels: Labels = ()
    samples: Sequence[tuple[Labels, Any]] = ()

    def total(self) -> float:
        """The sum over every series (a histogram's observation count)."""
        return sum(v.count if isinstance(v, HistogramValue) else v for _, v in self.samples)


class Histogram:
    """Observations counted into fixed buckets (upper bounds, ascending), plus count and sum.

    ``observe`` costs a bisect and two adds; :meth:`value` copies it for a reader.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def value(self) -> HistogramValue:
        cumulative, running = [], 0
        for bound, n in zip(self.bounds, self.counts, strict=False):
            running += n
            cumulative.append((bound, running))
        return HistogramValue(tuple(cumulative), running + self.counts[-1], self.sum)


class StatsSource(Protocol):
    """A group of statistics (``core``, ``dispatcher``, ...); every method runs on the loop thread."""

    #: the group name: ``stats.get_statistics <group>:`` and the prefix of its totals
    group: str

    def collect_steps(self) -> Task[list[Family]]:
        """The group's metric families, as a loop task (yield None between slices of work)."""
        ...

    def totals(self) -> dict[str, float]:
        """The group's unlabelled numbers by name (counters summed over their labels)."""
        ...

    def reset(self) -> None:
        """Zero the group's counters (gauges stay what they are)."""
        ...


class StatsRegistry:
    """The statistics groups of the process, in registration order."""

    def __init__(self) -> None:
        self._sources: dict[str, StatsSource] = {}

    def add(self, source: StatsSource) -> None:
        """Add a group; a second group of the same name is an error."""
        if source.group in self._sources:
            raise ValueError(f"statistics group {source.group!r} is registered twice")
        self._sources[source.group] = source

    @property
    def groups(self) -> list[str]:
        return list(self._sources)

    def get(self, group: str) -> StatsSource:
        """The group called ``group``; KeyError naming the known ones."""
        try:
            return self._sources[group]
        except KeyError:
            raise KeyError(f"no statistics group {group!r} (known: {', '.join(self._sources)})") from None

    def collect_steps(self) -> Task[list[Family]]:
        """Every group's families, one group after the other (a loop task)."""
        out: list[Family] = []
        for source in list(self._sources.values()):
            out.extend((yield from source.collect_steps()))
        return out

    def totals(self, groups: Iterable[str] | None = None) -> dict[str, float]:
        """``{"group:name": value}`` for ``groups`` (default: all)."""
        out: dict[str, float] = {}
        for group in self._sources if groups is None else groups:
            for name, value in self.get(group).totals().items():
                out[f"{group}:{name}"] = value
        return out


# -- the process's own counters -----------------------------------------------------------------


class ProcessStats:
    """Call counters of the process (loop thread only).

    Registered as a plugin of the host (``b2bua.stats``) for ``b2bua_call_answered``: an
    answer is counted when it happens, not when the call ends.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        self.since = self._clock()  #: when counting started (start-up or the last reset), Unix seconds
        self.received = 0  #: INVITEs admitted as new calls
        self.answered = 0
        self.failed = 0  #: ended unanswered, the caller given a failure
        self.cancelled = 0  #: ended unanswered, the caller gave up
        self.ended: Counter[str] = Counter()  #: by :class:`EndCause` value
        self.reload_signals = 0  #: SIGHUPs handled

    @hookimpl
    def b2bua_call_answered(self, call: CallInfo, target: Target) -> None:
        self.answered += 1

    def call_ended(self, cause: EndCause | None, answered: bool) -> None:
        """A call is over (:meth:`b2bua.app.App.session_ended`)."""
        self.ended[cause.value if cause is not None else EndCause.ERROR.value] += 1
        if not answered:
            if cause is EndCause.CALLER_CANCEL:
                self.cancelled += 1
            else:
                self.failed += 1


@dataclass(frozen=True)
class ProcessSnapshot:
    """What the ``core`` group reads from the app in one go (loop thread)."""

    version: str
    state: str  #: ``up``, ``draining``, ``stopping`` or ``overloaded`` (see b2bua.health)
    since: float
    received: int
    answered: int
    failed: int
    cancelled: int
    ended: Mapping[str, int]
    refused_calls: Mapping[str, int]  #: new INVITEs refused, by admission reason
    refused_requests: Mapping[str, int]  #: other requests refused or dropped, by reason
    reload_signals: int
    active_calls: int
    legs_in_use: int
    call_slots: int
    max_calls: int
    draining: bool
    stopping: bool
    overloaded: bool
    admitted_share: float
    #: SIP datagrams the kernel dropped on the UDP listeners (receive buffer full)
    sip_dropped: int = 0
    #: seconds the oldest unread SIP message had waited at the last heartbeat (:mod:`b2bua.backlog`)
    sip_receive_wait: float = 0.0
    #: seconds pjsip's earliest timer was overdue when read (its timers trail the clock under load)
    timer_lag: float = 0.0
    #: the garbage collector's work since start-up and its longest recent pause (:mod:`b2bua.gcwatch`)
    gc: GcReport = NO_GC
    #: the early filter's messages, ``{"requests"|"responses": {"passed"|"checked": n}}``
    #: (:meth:`b2bua.rxfilter.RxFilter.counts`); empty when it is off
    screened: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


class CoreStats:
    """The ``core`` group: ``snapshot()`` reads the app, ``reset()`` zeroes its counters."""

    group = "core"

    def __init__(self, snapshot: Callable[[], ProcessSnapshot], reset: Callable[[], None]) -> None:
        self._snapshot = snapshot
        self._reset = reset

    def collect_steps(self) -> Task[list[Family]]:
        return core_families(self._snapshot())
        yield  # a generator that finishes in its first step: a few dozen numbers, nothing to slice

    def totals(self) -> dict[str, float]:
        s = self._snapshot()
        return {
            "calls_received": s.received, "calls_answered": s.answered, "calls_failed": s.failed,
            "calls_cancelled": s.cancelled, "calls_refused": sum(s.refused_calls.values()),
            "calls_shed": sum(s.refused_calls.get(r, 0) for r in SHED_REASONS),
            "requests_refused": sum(s.refused_requests.values()), "reload_signals": s.reload_signals,
            "active_calls": s.active_calls, "legs_in_use": s.legs_in_use, "call_slots": s.call_slots,
            "max_calls": s.max_calls, "draining": int(s.draining or s.stopping), "overloaded": int(s.overloaded),
        }

    def reset(self) -> None:
        self._reset()

    def report(self) -> dict[str, Any]:
        """``core.stats``' answer."""
        return core_report(self._snapshot())


#: admission reasons that mean "the node takes no more calls now" (shed), as opposed to the
#: caller's fault (untrusted, malformed, over its rate, ...)
SHED_REASONS = ("overload", "capacity", "draining")


def core_report(s: ProcessSnapshot) -> dict[str, Any]:
    """``core.stats``: counters since ``since`` and the state now."""
    return {
        "state": s.state,
        "since": int(s.since),
        "calls": {
            "received": s.received, "answered": s.answered, "failed": s.failed, "cancelled": s.cancelled,
            "active": s.active_calls, "ended": dict(sorted(s.ended.items())),
            "refused": dict(sorted(s.refused_calls.items())),
            "shed": sum(s.refused_calls.get(r, 0) for r in SHED_REASONS),
        },
        "requests_refused": dict(sorted(s.refused_requests.items())),
        "legs": {"in_use": s.legs_in_use, "slots": s.call_slots},
        "max_calls": s.max_calls,
        "admitted_share": round(s.admitted_share, 3),
        "sip_receive": {"dropped": s.sip_dropped, "wait_ms": round(s.sip_receive_wait * 1000, 1)},
        "timer_lag_ms": round(s.timer_lag * 1000, 1),
        "gc": {"collections": list(s.gc.collections), "seconds": [round(x, 3) for x in s.gc.seconds],
               "longest_pause_ms": round(s.gc.longest_pause * 1000, 1)},
        "reload_signals": s.reload_signals,
        "screened": {kind: dict(paths) for kind, paths in s.screened.items()},
    }


def core_families(s: ProcessSnapshot) -> list[Family]:
    """The ``core`` group as metric families (``docs/metrics.md`` lists them)."""

    def counter(name: str, help: str, value: float) -> Family:
        return Family(name, "counter", help, (), [((), value)])

    def gauge(name: str, help: str, value: float) -> Family:
        return Family(name, "gauge", help, (), [((), value)])

    def by(name: str, help: str, label: str, values: Mapping[str, int]) -> Family:
        return Family(name, "counter", help, (label,), [((k,), v) for k, v in sorted(values.items())])

    return [
        Family("b2bua_build_info", "gauge", "The B2BUA's version (always 1).", ("version",), [((s.version,), 1)]),
        gauge("b2bua_stats_reset_time_seconds", "When the counters started (start-up or the last reset), "
              "Unix seconds.", s.since),
        counter("b2bua_calls_received_total", "INVITEs admitted as new calls.", s.received),
        counter("b2bua_calls_answered_total", "Calls answered (a B leg answered and the caller got 200).",
                s.answered),
        counter("b2bua_calls_failed_total", "Calls that ended unanswered with a failure to the caller.", s.failed),
        counter("b2bua_calls_cancelled_total", "Calls the caller cancelled before an answer.", s.cancelled),
        by("b2bua_calls_ended_total", "Calls ended, by how they ended.", "cause", s.ended),
        by("b2bua_calls_refused_total", "New INVITEs refused before a call was set up, by admission reason "
           "(overload, capacity and draining are load shed).", "reason", s.refused_calls),
        by("b2bua_requests_refused_total", "Other requests outside a dialog refused or dropped, by reason.",
           "reason", s.refused_requests),
        counter("b2bua_reload_signals_total", "SIGHUPs handled (reloads asked for by signal).", s.reload_signals),
        Family("b2bua_sip_messages_screened_total", "counter", "SIP messages the early filter saw: passed on in C "
               "(a call's in-dialog requests and plain responses) or checked by the Python screen.",
               ("message", "path"), [((kind.removesuffix("s"), path), n) for kind, paths in s.screened.items()
                                     for path, n in paths.items()]),
        gauge("b2bua_calls_active", "Calls in progress.", s.active_calls),
        gauge("b2bua_call_legs_in_use", "pjsua call slots in use (A and B legs).", s.legs_in_use),
        gauge("b2bua_call_slots", "pjsua call slots in all.", s.call_slots),
        gauge("b2bua_max_calls", "[sip] max_calls.", s.max_calls),
        gauge("b2bua_draining", "1 while new calls are refused on purpose (core.drain, or stopping).",
              int(s.draining or s.stopping)),
        gauge("b2bua_overloaded", "1 while new calls are shed for overload.", int(s.overloaded)),
        gauge("b2bua_admitted_share", "Share of new calls admitted under a receive backlog (1: all).",
              s.admitted_share),
        counter("b2bua_sip_datagrams_dropped_total", "SIP datagrams the kernel dropped on the UDP listeners: "
                "their receive buffer was full.", s.sip_dropped),
        gauge("b2bua_sip_receive_wait_seconds", "How long the oldest unread SIP message on a UDP listener had "
              "waited, at the last look (every 50 ms).", s.sip_receive_wait),
        gauge("b2bua_timer_lag_seconds", "How late pjsip's earliest due timer is (transaction timers trail the "
              "clock when the loop is saturated).", s.timer_lag),
        Family("b2bua_gc_collections_total", "counter", "Python garbage collections since start-up, by "
               "generation.", ("generation",), [((str(g),), n) for g, n in enumerate(s.gc.collections)]),
        Family("b2bua_gc_seconds_total", "counter", "Seconds Python's garbage collector held the loop, by "
               "generation.", ("generation",), [((str(g),), x) for g, x in enumerate(s.gc.seconds)]),
        gauge("b2bua_gc_longest_pause_seconds", "The longest garbage collection of the last 1-2 minutes (the "
              "loop stalls for all of it).", s.gc.longest_pause),
    ]
