"""OPTIONS keepalives: who to probe, when, and what a reply does to the state.

Kamailio's ``ds_check_timer`` / ``ds_options_callback`` with three changes it lacks:
each probe has a deadline of its own (``ping_timeout``, Kamailio issue 3446: a dead gateway is
down after about ``probing_threshold x ping_interval``, not after the 32 s transaction timer);
at most one probe per destination is outstanding; and the probes of one round are spread over
the interval instead of sent in one burst. The state rules are :mod:`plugins.dispatcher.health`.

Runs on the loop thread; sending goes through the host's ``send_request``, so this module is
tested with a stand-in and never imports pjsua2.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from loguru import logger

from b2bua.api import Outbound, ProbeResult, TimerHandle
from plugins.dispatcher import health
from plugins.dispatcher.config import NO_DEFAULTS, SendDefaults
from plugins.dispatcher.latency import LatencyStats, add_timeout, update
from plugins.dispatcher.model import DestFlags, Destination
from plugins.dispatcher.outbound import probe_outbound
from plugins.dispatcher.replycodes import ReplyCodes
from plugins.dispatcher.runtime import DestKey, DispatcherState

if TYPE_CHECKING:
    from plugins.dispatcher.counters import DispatcherCounters

#: the smallest gap between two batches of keepalives of one round (seconds)
BATCH_GAP = 0.010


class SendRequest(Protocol):
    def __call__(
        self, method: str, uri: str, *, from_uri: str, callback: Callable[[ProbeResult], None], timeout: float,
        outbound: Outbound,
    ) -> None: ...


CallLater = Callable[[float, Callable[[], None]], TimerHandle]


class Prober:
    """Sends keepalives every ``interval`` seconds and applies their results to ``state``."""

    def __init__(
        self,
        state: DispatcherState,
        *,
        send: SendRequest,
        call_later: CallLater,
        interval: float,
        method: str = "OPTIONS",
        from_uri: str = "sip:dispatcher@localhost",
        timeout: float = 2.0,
        mode: int = 1,
        probing_threshold: int = 1,
        inactive_threshold: int = 1,
        reply_codes: ReplyCodes | None = None,
        latency_stats: bool = False,
        alpha_per_mille: int = 100,
        active: bool = True,
        counters: DispatcherCounters | None = None,
        owns: Callable[[DestKey], bool] | None = None,
        send_defaults: SendDefaults = NO_DEFAULTS,
    ) -> None:
        self.state = state
        self.counters = counters  #: keepalives sent and failed, round-trip times
        #: whether this node probes an entry (a cluster gives each entry one prober); None: all
        self.owns = owns
        self._send = send
        self._call_later = call_later
        self.interval = interval
        self.method = method
        self.from_uri = from_uri
        self.timeout = min(timeout, interval) if interval > 0 else timeout
        self.mode = mode
        self.probing_threshold = probing_threshold
        self.inactive_threshold = inactive_threshold
        self.reply_codes = reply_codes or ReplyCodes()
        self.latency_stats = latency_stats
        self.alpha_per_mille = alpha_per_mille
        self.active = active  #: Kamailio's ``dispatcher.ping_active``
        #: the listeners of destinations whose attributes name none
        self.send_defaults = send_defaults
        self.outstanding: set[DestKey] = set()
        self.sent = 0
        #: destinations whose keepalives cannot be sent (said once when it starts, once when it ends)
        self.unsendable: set[DestKey] = set()
        self._timers: list[TimerHandle] = []
        self._running = False

    # -- schedule -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the rounds (the first one at once). No-op when ``interval`` is 0."""
        if self.interval <= 0 or self._running:
            return
        self._running = True
        self._round()

    def stop(self) -> None:
        self._running = False
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    def _round(self) -> None:
        if not self._running:
            return
        self._timers = [self._call_later(self.interval, self._round)]
        if not self.active:
            return
        if self.unsendable:  # forget the ones a reload removed
            self.unsendable.intersection_update(d.key for d in self.state.destinations())
        due = [d.key for d in self.state.destinations() if self._wants_probe(d)]
        # spread the round over the first half of the interval in batches at least 10 ms apart:
        # no burst of 1000 OPTIONS at once, and no timer per probe either
        batches = max(1, min(len(due), int(self.interval / 2 / BATCH_GAP)))
        size = -(-len(due) // batches) if due else 0
        step = (self.interval / 2) / batches
        for b in range(batches):
            keys = due[b * size:(b + 1) * size]
            if not keys:
                break
            if b == 0:
                self._probe_batch(keys)
            else:
                self._timers.append(self._call_later(b * step, functools.partial(self._probe_batch, keys)))

    def _probe_batch(self, keys: list[DestKey]) -> None:
        for key in keys:
            self.probe(key)

    def _wants_probe(self, dest: Destination) -> bool:
        flags = self.state.flags(dest.key)
        return (flags is not None and dest.key not in self.outstanding and health.should_probe(flags, self.mode)
                and (self.owns is None or self.owns(dest.key)))

    # -- one probe ------------------------------------------------------------------------------

    def probe(self, key: DestKey) -> bool:
        """Send one keepalive to ``key`` now (unless one is outstanding). True if sent."""
        dest = self.state.destination(key)
        if dest is None or key in self.outstanding or not self.active:
            return False
        self.outstanding.add(key)
        self.sent += 1
        if self.counters is not None:
            self.counters.keepalive_sent(key)
        self._send(
            self.method,
            dest.uri,
            from_uri=dest.attrs.ping_from or self.from_uri,
            callback=lambda result: self.on_result(key, result),
            timeout=self.timeout,
            outbound=probe_outbound(dest.attrs, self.send_defaults),  # its socket, proxy and credentials
        )
        return True

    def on_result(self, key: DestKey, result: ProbeResult) -> None:
        """Apply one keepalive's outcome (Kamailio's ``ds_options_callback``)."""
        self.outstanding.discard(key)
        rt = self.state.runtime(key)
        if rt is None:
            self.unsendable.discard(key)
            return  # removed by a reload meanwhile
        self._note_sending(key, result)
        ok = self.reply_codes.accepts(result.code)
        if self.counters is not None:
            self.counters.keepalive_done(key, ok, None if result.local else result.latency)
        flags, count = health.apply_probe(
            rt.flags,
            rt.probe_count,
            ok,
            mode=self.mode,
            probing_threshold=self.probing_threshold,
            inactive_threshold=self.inactive_threshold,
        )
        rt.probe_count = count
        # Kamailio samples entries with P; the first answer (which sets P in mode 1) counts too
        if self.latency_stats and (rt.flags | flags) & DestFlags.PROBING:
            self.state.set_latency(key, _latency_after(rt.latency, result, self.alpha_per_mille))
        if flags != rt.flags:
            what = "probe timeout" if result.local and result.code == 408 else result.reason
            self.state.set_flags(key, flags, f"{result.code} {what}".strip())

    def _note_sending(self, key: DestKey, result: ProbeResult) -> None:
        """Say when keepalives to ``key`` start failing to leave, and when they leave again: once
        each, not once per keepalive (a listener that cannot reach the destination fails every
        one, every ``ping_interval``, for as long as it runs)."""
        if result.unsent and key not in self.unsendable:
            self.unsendable.add(key)
            check = ("its certificate against [sip.tls] ca_list and the host dialled" if "TLS" in result.reason
                     else "that a listener reaches it ([sip] listen, the socket attribute)")
            logger.warning("dispatcher: set {} {}: keepalives cannot be sent ({} {}): check {}; said again when "
                           "one is sent", key[0], key[1], result.code, result.reason, check)
        elif not result.unsent and key in self.unsendable:
            self.unsendable.discard(key)
            logger.info("dispatcher: set {} {}: keepalives are sent again", key[0], key[1])

    def status(self) -> dict[str, Any]:
        return {"active": self.active, "interval": self.interval, "outstanding": len(self.outstanding),
                "sent": self.sent}


def _latency_after(stats: LatencyStats | None, result: ProbeResult, alpha_per_mille: int) -> LatencyStats:
    stats = stats if isinstance(stats, LatencyStats) else LatencyStats()
    if result.code == 408:  # local or received: a timeout, never a sample (as Kamailio)
        return add_timeout(stats)
    if result.latency is None:
        return stats
    return update(stats, result.latency * 1000.0, alpha_per_mille)
