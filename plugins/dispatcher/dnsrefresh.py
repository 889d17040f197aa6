"""Re-resolve the destinations' host names every ``dns_interval`` (Kamailio's ``ds_dns_mode`` 4).

A refresh is a reload through the :class:`~plugins.dispatcher.reloader.Reloader` (one change
at a time) that keeps every runtime state: the URIs are read on the loop a slice at a time, the
lookups run on a worker thread (each distinct host once), and only when an address changed is
the refreshed snapshot swapped in. A tick that finds a reload running is skipped: the reload
resolves too.
"""

from __future__ import annotations

import socket
from dataclasses import replace
from typing import TYPE_CHECKING

from loguru import logger

from b2bua.loop import Task, run_here, run_task_now, wait_for
from b2bua.sipuri import SipUri
from plugins.dispatcher.model import DestFlags, Destination, DestinationSet, Snapshot
from plugins.dispatcher.reloader import Reloader
from plugins.dispatcher.resolve import Resolver, lookup, parse_uri
from plugins.dispatcher.source import RunBlocking

if TYPE_CHECKING:
    from b2bua.api import Host, TimerHandle

REASON = "dns"


def refresh_steps(snapshot: Snapshot, run_blocking: RunBlocking,
                  resolver: Resolver = socket.getaddrinfo) -> Task[Snapshot | None]:
    """Resolve every destination's host again, as a loop task; None when no address changed.

    The set order is kept as it is (no re-sorting), and a host that no longer resolves keeps
    its previous address: a DNS hiccup must not take a gateway out of service.
    """
    uris: list[SipUri | None] = []
    names: dict[tuple[str, int], str] = {}
    for dset in snapshot.sets.values():
        for dest in dset.destinations:
            uri = _uri(dest)
            uris.append(uri)
            if uri is not None and not uri.is_ip:
                names[(uri.host.lower(), uri.effective_port)] = uri.host
            yield None
    found = yield from wait_for(run_blocking(
        lambda: {key: lookup(resolver, host, key[1])[0] for key, host in names.items()}))
    changed = False
    sets: dict[int, DestinationSet] = {}
    at = 0
    for setid, dset in snapshot.sets.items():
        entries = []
        for old in dset.destinations:
            uri, at = uris[at], at + 1
            ip = None if uri is None else uri.host if uri.is_ip else found.get((uri.host.lower(), uri.effective_port))
            new = old
            if uri is not None and ip is not None and (ip, uri.effective_port, uri.transport) != old.address:
                new = replace(old, address=(ip, uri.effective_port, uri.transport))
                changed = True
                logger.info("dispatcher: {} now resolves to {} (was {})", old.uri, new.address, old.address)
            entries.append(new)
            yield None
        sets[setid] = DestinationSet(setid, tuple(entries))
    return Snapshot(sets, snapshot.source) if changed else None


def refresh_addresses(snapshot: Snapshot, resolver: Resolver = socket.getaddrinfo) -> Snapshot | None:
    """:func:`refresh_steps` in one go, in the calling thread (blocking)."""
    return run_task_now(refresh_steps(snapshot, run_here, resolver))


def _uri(dest: Destination) -> SipUri | None:
    """The URI to resolve, or None: flagged NODNS, or (loaded entries were checked) unparsable."""
    if dest.flags & DestFlags.NODNS:
        return None
    try:
        return parse_uri(dest.uri)
    except ValueError:
        return None


class DnsRefresher:
    """The periodic re-resolution (loop thread).

    :param interval: seconds between refreshes (``dns_interval``; 0: never).
    """

    def __init__(self, app: Host, reloader: Reloader, interval: float,
                 resolver: Resolver = socket.getaddrinfo) -> None:
        self._app = app
        self._reloader = reloader
        self.interval = interval
        self._resolver = resolver
        self._timer: TimerHandle | None = None

    def start(self) -> None:
        if self.interval > 0:
            self._timer = self._app.call_later(self.interval, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = self._app.call_later(self.interval, self._tick)
        snapshot, app, resolver = self._reloader.state.snapshot, self._app, self._resolver

        def build() -> Task[Snapshot | None]:
            try:
                return (yield from refresh_steps(snapshot, app.run_blocking, resolver))
            except Exception as exc:  # a lookup error is not a reason to touch the destinations
                logger.warning("dispatcher: re-resolving destinations failed: {}", exc)
                return None

        self._reloader.start(REASON, build, keep_state=True)  # False: a reload runs and resolves too
