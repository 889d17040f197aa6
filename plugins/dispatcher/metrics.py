"""The dispatcher's statistics group (``dispatcher``): metric families, totals, ``dispatcher.stats``.

Everything here reads on the loop thread. A scrape or a ``dispatcher.stats`` takes the
destinations of one snapshot (:meth:`DispatcherState.listing_source`, O(1)) and a shallow copy
of the counters' index (a C-level dict copy: about a millisecond per 50,000 entries), then
walks them as a loop task, :data:`STEP` entries per slice: a reload that swaps the list
meanwhile changes neither which destinations are reported nor whose counters are read (those
that stay are the same objects in both generations; those that go keep the values they had),
so no number goes back. Names, labels and queries:
``docs/metrics.md``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from loguru import logger

from b2bua.loop import Task
from b2bua.stats import Family, Labels
from plugins.dispatcher.counters import DestCounters, DispatcherCounters
from plugins.dispatcher.drain import DrainWatch
from plugins.dispatcher.model import Destination, is_usable, state_letters
from plugins.dispatcher.runtime import DestRuntime, DispatcherState, ListingSource

#: destinations copied per loop slice (about 1 ms)
STEP = 50
#: above this many destinations, per-destination series are left out of /metrics (each has
#: about 25 series; Prometheus is not the place for a 100,000-entry list): the per-set
#: families stay, and dispatcher.stats shows every destination
MAX_DESTINATION_SERIES = 2000


class DispatcherStats:
    """The ``dispatcher`` statistics group over the plugin's state, counters and drains."""

    group = "dispatcher"

    def __init__(self, state: DispatcherState, counters: DispatcherCounters, drains: DrainWatch) -> None:
        self.state = state
        self.counters = counters
        self.drains = drains
        self._warned_size = False

    # -- StatsSource ------------------------------------------------------------------------------

    def collect_steps(self) -> Task[list[Family]]:
        source = self.state.listing_source()
        size = sum(len(s.destinations) for s in source.snapshot.sets.values())
        per_destination = size <= MAX_DESTINATION_SERIES
        if not per_destination and not self._warned_size:
            self._warned_size = True
            logger.warning("dispatcher: {} destinations: /metrics leaves out per-destination series above {} "
                           "(per-set gauges stay; dispatcher.stats has every destination)", size,
                           MAX_DESTINATION_SERIES)
        builder = _Families()
        for n, (dest, rt, counters) in enumerate(self._entries(source), 1):
            if n % STEP == 0:
                yield None
            builder.add_set_member(dest, rt)
            if per_destination:
                builder.add(dest, rt, counters, self.drains.draining(dest.key))
        families = builder.families()
        families.append(Family("b2bua_dispatcher_reloads_total", "counter",
                               "Reloads of the destinations, by trigger (reload: SIGHUP or dispatcher.reload; "
                               "dns: a DNS refresh) and result.", ("trigger", "result"),
                               [(key, n) for key, n in sorted(self.counters.reloads.items())]))
        return families

    def totals(self) -> dict[str, float]:
        sums: Counter[str] = Counter()
        for c in self.counters.by_key.values():
            sums["selected"] += c.selected
            sums["attempts"] += c.attempts
            sums["answered"] += c.answered
            sums["failed"] += c.failed
            sums["timeouts"] += c.no_response + c.no_answer
            sums["cancelled"] += c.cancelled
            sums["failovers"] += c.failovers
            sums["keepalives_sent"] += c.keepalives_sent
            sums["keepalives_failed"] += c.keepalives_failed
            sums["state_changes"] += c.state_changes
        for (_, result), n in self.counters.reloads.items():
            sums[f"reloads_{result}"] += n
        up = total = 0
        for dest in self.state.destinations():
            total += 1
            up += is_usable(self.state.flags(dest.key) or 0)
        names = ("selected", "attempts", "answered", "failed", "timeouts", "cancelled", "failovers",
                 "keepalives_sent", "keepalives_failed", "state_changes", "reloads_ok", "reloads_failed")
        return {**{name: sums[name] for name in names}, "destinations": total, "destinations_up": up,
                "draining": len(self.drains.pending)}

    def reset(self) -> None:
        self.counters.reset()

    # -- dispatcher.stats -----------------------------------------------------------------------

    def report_steps(self, setid: int | None = None, uri: str | None = None) -> Task[dict[str, Any]]:
        """``dispatcher.stats [setid [uri]]``' answer, as a loop task."""
        source = self.state.listing_source()
        sets: dict[int, list[dict[str, Any]]] = {}
        wanted = uri.lower() if uri is not None else None
        for n, (dest, rt, counters) in enumerate(self._entries(source, setid), 1):
            if n % STEP == 0:
                yield None
            if wanted is not None and dest.key[1] != wanted:
                continue
            sets.setdefault(dest.setid, []).append(
                destination_report(dest, rt, counters, self.drains.draining(dest.key)))
        reloads: dict[str, dict[str, int]] = {}
        for (trigger, result), count in sorted(self.counters.reloads.items()):
            reloads.setdefault(trigger, {"ok": 0, "failed": 0})[result] = count
        return {"since": int(self.counters.since), "reloads": reloads,
                "sets": [{"setid": s, "destinations": rows} for s, rows in sorted(sets.items())]}

    def _entries(self, source: ListingSource, setid: int | None = None
                 ) -> Iterator[tuple[Destination, DestRuntime | None, DestCounters | None]]:
        # copied now, before the first slice: a reload's prune must not change whose counters are read
        runtime, counters = source.runtime, dict(self.counters.by_key)
        for sid in sorted(source.snapshot.sets):
            if setid is not None and sid != setid:
                continue
            for dest in source.snapshot.sets[sid].destinations:
                yield dest, runtime.get(dest.key), counters.get(dest.key)


def destination_report(dest: Destination, rt: DestRuntime | None, c: DestCounters | None,
                       draining: bool) -> dict[str, Any]:
    """One destination of ``dispatcher.stats``."""
    c = c or DestCounters()
    flags = rt.flags if rt is not None else dest.flags
    completed = c.answered + c.failed
    rtt = c.rtt.value() if c.rtt is not None else None
    return {
        "uri": dest.uri, "state": state_letters(flags), "up": is_usable(flags), "draining": draining,
        "calls": rt.load if rt is not None else 0,
        "selected": c.selected, "attempts": c.attempts, "answered": c.answered, "failed": c.failed,
        "cancelled": c.cancelled, "outcomes": c.outcomes(),
        "codes": {str(code): n for code, n in sorted(c.codes.items())},
        "timeouts": {"no_response": c.no_response, "no_answer": c.no_answer}, "errors": c.errors,
        "failovers": c.failovers,
        "keepalives": {"sent": c.keepalives_sent, "failed": c.keepalives_failed,
                       "rtt_avg_ms": round(rtt.sum / rtt.count * 1000, 3) if rtt and rtt.count else None},
        "state_changes": c.state_changes,
        "asr": round(c.answered / completed, 3) if completed else None,
    }


def list_stats(c: DestCounters | None) -> dict[str, int]:
    """The compact ``STATS`` block of a ``dispatcher.list`` entry."""
    if c is None:
        return {"SELECTED": 0, "ATTEMPTS": 0, "ANSWERED": 0, "FAILED": 0, "FAILOVERS": 0}
    return {"SELECTED": c.selected, "ATTEMPTS": c.attempts, "ANSWERED": c.answered, "FAILED": c.failed,
            "FAILOVERS": c.failovers}


class _Families:
    """Accumulates the samples of every family while the destinations are walked."""

    def __init__(self) -> None:
        self.samples: dict[str, list[tuple[Labels, Any]]] = {name: [] for name in _SPECS}
        self.per_set: dict[int, list[int]] = {}  # setid -> [destinations, up]

    def add_set_member(self, dest: Destination, rt: DestRuntime | None) -> None:
        counts = self.per_set.setdefault(dest.setid, [0, 0])
        counts[0] += 1
        counts[1] += is_usable(rt.flags if rt is not None else dest.flags)

    def add(self, dest: Destination, rt: DestRuntime | None, c: DestCounters | None, draining: bool) -> None:
        s = self.samples
        labels = (str(dest.setid), dest.uri)
        flags = rt.flags if rt is not None else dest.flags
        s["b2bua_dispatcher_destination_up"].append((labels, int(is_usable(flags))))
        s["b2bua_dispatcher_destination_flags"].append((labels, flags))
        s["b2bua_dispatcher_destination_draining"].append((labels, int(draining)))
        s["b2bua_dispatcher_destination_active_calls"].append((labels, rt.load if rt is not None else 0))
        latency = getattr(rt.latency, "est", None) if rt is not None else None
        if latency:
            s["b2bua_dispatcher_destination_latency_seconds"].append((labels, latency / 1000.0))
        if c is None:
            c = _ZERO
        s["b2bua_dispatcher_selected_total"].append((labels, c.selected))
        s["b2bua_dispatcher_attempts_started_total"].append((labels, c.attempts))
        for outcome, n in c.outcomes().items():
            s["b2bua_dispatcher_attempts_total"].append(((*labels, outcome), n))
        for code, n in sorted(c.codes.items()):
            s["b2bua_dispatcher_failure_responses_total"].append(((*labels, str(code)), n))
        s["b2bua_dispatcher_timeouts_total"].append(((*labels, "no-response"), c.no_response))
        s["b2bua_dispatcher_timeouts_total"].append(((*labels, "no-answer"), c.no_answer))
        s["b2bua_dispatcher_failovers_total"].append((labels, c.failovers))
        s["b2bua_dispatcher_keepalives_total"].append((labels, c.keepalives_sent))
        s["b2bua_dispatcher_keepalive_failures_total"].append((labels, c.keepalives_failed))
        if c.rtt is not None:
            s["b2bua_dispatcher_keepalive_rtt_seconds"].append((labels, c.rtt.value()))
        s["b2bua_dispatcher_state_changes_total"].append((labels, c.state_changes))

    def families(self) -> list[Family]:
        out = [Family(name, kind, help, labels, self.samples[name])
               for name, (kind, help, labels) in _SPECS.items()]
        sets = sorted(self.per_set.items())
        out.append(Family("b2bua_dispatcher_destinations", "gauge", "Destinations loaded, per set.", ("set",),
                          [((str(sid), ), n[0]) for sid, n in sets]))
        out.append(Family("b2bua_dispatcher_destinations_up", "gauge",
                          "Destinations that can be selected (not inactive or disabled), per set.", ("set",),
                          [((str(sid), ), n[1]) for sid, n in sets]))
        return out


_ZERO = DestCounters()
_DEST = ("set", "uri")
#: per-destination families: name -> (kind, help, labels)
_SPECS: dict[str, tuple[Any, str, Labels]] = {
    "b2bua_dispatcher_destination_up": (
        "gauge", "1 while the destination can be selected (state A or T), 0 when inactive or disabled.", _DEST),
    "b2bua_dispatcher_destination_flags": (
        "gauge", "The destination's state bits, Kamailio's values (1 inactive, 2 trying, 4 disabled, 8 probing).",
        _DEST),
    "b2bua_dispatcher_destination_draining": (
        "gauge", "1 while a drain (dispatcher.drain) waits for the destination's calls to end.", _DEST),
    "b2bua_dispatcher_destination_active_calls": (
        "gauge", "Calls holding a leg to the destination (DLGLOAD).", _DEST),
    "b2bua_dispatcher_destination_latency_seconds": (
        "gauge", "The keepalive latency estimate (Kamailio's EST; ping_latency_stats).", _DEST),
    "b2bua_dispatcher_selected_total": (
        "counter", "Calls for which the algorithm chose this destination first.", _DEST),
    "b2bua_dispatcher_attempts_started_total": ("counter", "INVITEs sent to the destination.", _DEST),
    "b2bua_dispatcher_attempts_total": (
        "counter", "Attempts (B legs) to the destination that ended, by outcome: 2xx answered, 3xx-6xx failure "
        "responses, timeout (local 408), error (not sent), cancelled (another fork won or the caller left).",
        (*_DEST, "code_class")),
    "b2bua_dispatcher_failure_responses_total": (
        "counter", "Failure responses from the destination, by status code.", (*_DEST, "code")),
    "b2bua_dispatcher_timeouts_total": (
        "counter", "Attempts given up locally: no-response (nothing within the attempt timeout), no-answer "
        "(rang past the answer timeout).", (*_DEST, "kind")),
    "b2bua_dispatcher_failovers_total": (
        "counter", "Calls that failed at the destination and were dialled on to another one.", _DEST),
    "b2bua_dispatcher_keepalives_total": ("counter", "Keepalives (OPTIONS) sent to the destination.", _DEST),
    "b2bua_dispatcher_keepalive_failures_total": (
        "counter", "Keepalives that failed (no reply in ping_timeout, or a reply not in ping_reply_codes).", _DEST),
    "b2bua_dispatcher_keepalive_rtt_seconds": (
        "histogram", "Round-trip time of keepalives that got a reply.", _DEST),
    "b2bua_dispatcher_state_changes_total": (
        "counter", "Times the destination went down or came back up (dst-down / dst-up).", _DEST),
}
