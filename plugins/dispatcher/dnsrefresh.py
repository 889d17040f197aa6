"""Resolve the destinations' host names again: when their records expire (TTL), and every
``dns_interval`` (Kamailio's ``ds_dns_mode`` 4).

Calls never wait for this: pjsip resolves a name itself when it sends, asynchronously, from
its own cache (:mod:`b2bua.nameservers`). What a refresh keeps current is the dispatcher's copy
of the answer, the one ``dispatcher.list full`` shows (SRV targets, addresses, TTL).

A refresh is a reload through the :class:`~plugins.dispatcher.reloader.Reloader` (one change
at a time) that keeps every runtime state: the URIs are read on the loop a slice at a time, the
lookups run on a worker thread (each distinct name once), and only when an answer changed is
the refreshed snapshot swapped in. A name that no longer resolves keeps its previous answer:
a DNS hiccup must not take a gateway out of service. A refresh that finds a reload running is
tried again at the next check: the reload resolves too.
"""

from __future__ import annotations

import math
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from loguru import logger

from b2bua.loop import Task, run_here, run_task_now, wait_for
from b2bua.sipuri import SipUri
from plugins.dispatcher.dnslookup import HostLookup, Resolution, system_lookup
from plugins.dispatcher.model import DestFlags, Destination, DestinationSet, Snapshot
from plugins.dispatcher.reloader import Reloader
from plugins.dispatcher.resolve import name_key, parse_uri, resolve_name, with_resolution
from plugins.dispatcher.source import RunBlocking

if TYPE_CHECKING:
    from b2bua.api import Host, TimerHandle

REASON = "dns"
#: seconds between checks whether a refresh is due
CHECK_EVERY = 1.0
#: the shortest time an answer is kept before it is asked again (records with a TTL of 0 or 1
#: would otherwise be asked for every second)
MIN_TTL = 5.0
#: seconds before a name whose lookup failed (no answer, an error) is asked again
RETRY_FAILED = 30.0

NameKey = tuple[str, "int | None", str]


@dataclass
class Refreshed:
    """What one refresh found: the new snapshot (None: no answer changed), the shortest TTL
    among the answers (inf: none carries a TTL) and how many names did not resolve."""

    snapshot: Snapshot | None = None
    ttl: float = math.inf
    failed: int = 0

    def next_in(self) -> float:
        """Seconds until the next refresh: the shortest TTL (at least :data:`MIN_TTL`), sooner
        when a name failed (:data:`RETRY_FAILED`); inf when nothing needs asking again."""
        wait = min(self.ttl, RETRY_FAILED) if self.failed else self.ttl
        return max(wait, MIN_TTL)


def refresh_steps(snapshot: Snapshot, run_blocking: RunBlocking, find: HostLookup,
                  out: Refreshed | None = None) -> Task[Snapshot | None]:
    """Look every destination's host name up again, as a loop task; None when no answer changed.

    The set order is kept as it is (no re-sorting). ``out`` (optional) receives the result and
    the shortest TTL seen.
    """
    out = out if out is not None else Refreshed()
    uris: list[SipUri | None] = []
    names: dict[NameKey, SipUri] = {}
    for dset in snapshot.sets.values():
        for dest in dset.destinations:
            uri = _uri(dest)
            uris.append(uri)
            if uri is not None and not uri.is_ip:
                names.setdefault(name_key(uri), uri)
            yield None
    found: dict[NameKey, Resolution | str] = yield from wait_for(run_blocking(
        lambda: {key: resolve_name(find, uri) for key, uri in names.items()}))
    ttls = [r.ttl for r in found.values() if isinstance(r, Resolution) and r.ttl > 0]
    out.ttl = min(ttls, default=math.inf)
    out.failed = sum(1 for r in found.values() if isinstance(r, str))
    changed = False
    sets: dict[int, DestinationSet] = {}
    at = 0
    for setid, dset in snapshot.sets.items():
        entries = []
        for old in dset.destinations:
            uri, at = uris[at], at + 1
            answer = found.get(name_key(uri)) if uri is not None and not uri.is_ip else None
            new = old
            if isinstance(answer, Resolution) and uri is not None and not answer.same_answer(old.dns):
                new = with_resolution(old, uri, answer)
                changed = True
                logger.info("dispatcher: {} now resolves to {} (was {})", old.uri, describe(answer),
                            describe(old.dns) if old.dns is not None else old.address)
            entries.append(new)
            yield None
        sets[setid] = DestinationSet(setid, tuple(entries))
    out.snapshot = Snapshot(sets, snapshot.source) if changed else None
    return out.snapshot


def refresh_addresses(snapshot: Snapshot, find: HostLookup | None = None) -> Snapshot | None:
    """:func:`refresh_steps` in one go, in the calling thread (blocking)."""
    return run_task_now(refresh_steps(snapshot, run_here, find or system_lookup(socket.getaddrinfo)))


def describe(answer: Resolution) -> str:
    """``_sip._udp.carrier.example SRV: 10 50 sbc1.carrier.example:5060 [10.0.0.1], ...``."""
    targets = ", ".join(
        (f"{t.priority} {t.weight} " if answer.srv else "") + f"{t.host}:{t.port} [{' '.join(t.addresses)}]"
        for t in answer.targets)
    return f"{answer.query}{' SRV' if answer.srv else ''}: {targets}"


def earliest_expiry(snapshot: Snapshot) -> float:
    """When the first answer of ``snapshot`` that carries a TTL expires (inf: none does)."""
    return min((d.dns.resolved_at + max(d.dns.ttl, MIN_TTL) for d in snapshot.destinations()
                if d.dns is not None and d.dns.ttl > 0), default=math.inf)


def _uri(dest: Destination) -> SipUri | None:
    """The URI to resolve, or None: flagged NODNS, or (loaded entries were checked) unparsable."""
    if dest.flags & DestFlags.NODNS:
        return None
    try:
        return parse_uri(dest.uri)
    except ValueError:
        return None


class DnsRefresher:
    """The periodic re-resolution (loop thread): when the records' TTL runs out, and every
    ``interval`` seconds when it is set.

    :param interval: ``dns_interval`` (0: only when records expire).
    :param find: how names are looked up (the configured nameservers).
    :param clock: seconds since the epoch (tests pass their own).
    :param check_every: seconds between checks whether a refresh is due.
    """

    def __init__(self, app: Host, reloader: Reloader, interval: float, find: HostLookup,
                 clock: Callable[[], float] = time.time, check_every: float = CHECK_EVERY) -> None:
        self._app = app
        self._reloader = reloader
        self.interval = interval
        self._find = find
        self._clock = clock
        self._check_every = check_every
        self._timer: TimerHandle | None = None
        self._seen: Snapshot | None = None  #: the snapshot ``_due`` was computed for
        self._due = math.inf  #: when the next refresh is due (seconds since the epoch)
        self._last = clock()  #: when the last refresh (or the load) was

    def start(self) -> None:
        self._timer = self._app.call_later(self._check_every, self._check)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def due(self) -> float:
        """When the next refresh is due (inf: never), for the current snapshot."""
        snapshot = self._reloader.state.snapshot
        if snapshot is not self._seen:  # a reload or add/remove: its answers have their own TTLs
            self._seen = snapshot
            self._due = earliest_expiry(snapshot)
        interval_due = self._last + self.interval if self.interval > 0 else math.inf
        return min(self._due, interval_due)

    def _check(self) -> None:
        self._timer = self._app.call_later(self._check_every, self._check)
        now = self._clock()
        if now < self.due():
            return
        snapshot, app, find = self._reloader.state.snapshot, self._app, self._find
        result = Refreshed()

        def build() -> Task[Snapshot | None]:
            try:
                return (yield from refresh_steps(snapshot, app.run_blocking, find, result))
            except Exception as exc:  # a lookup error is not a reason to touch the destinations
                logger.warning("dispatcher: re-resolving destinations failed: {}", exc)
                result.failed += 1
                return None

        def done(error: BaseException | None) -> None:
            finished = self._clock()
            self._last = finished
            self._seen = self._reloader.state.snapshot
            self._due = finished + result.next_in()

        self._reloader.start(REASON, build, keep_state=True, on_done=done)  # False: retried at the next check
