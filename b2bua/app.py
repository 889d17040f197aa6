"""The running B2BUA: the composition root and the plugins' :class:`b2bua.api.Host`.

``App`` wires the parts together and holds what they share; each concern lives in its own
module:

* admission (which requests get in, which INVITEs get a session): :class:`b2bua.guard.Gate`
  and :func:`b2bua.admission.decide`, asked by the early filter (:mod:`b2bua.rxfilter`) and,
  without it, by the incoming-call path below;
* the call core: :class:`b2bua.session.Session` per call, legs from :class:`b2bua.legpool.LegPool`;
* start, serve loop and shutdown sequence: :class:`b2bua.lifecycle.Lifecycle`;
* Host services for plugins (timers, thread hand-off, out-of-dialog requests);
* ``core.calls``: :func:`b2bua.core_rpc.calls_report`;
* statistics (:mod:`b2bua.stats`: the process's counters, the ``core`` group), the node's
  state (:mod:`b2bua.health`) and the operator's drain (``core.drain``: new calls and
  OPTIONS get 503, calls in progress finish).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

from loguru import logger

from b2bua import __version__
from b2bua.admission import Decision, Load, Verdict, shedding_helps
from b2bua.api import DEFAULT_OUTBOUND, CallInfo, EndCause, Outbound, ProbeResult, Reject
from b2bua.backlog import AdmissionShare, QueueReading, ReceiveBacklog, StandingQueue
from b2bua.cluster import Cluster, control_address, make_cluster
from b2bua.config import Config, SipConfig
from b2bua.core_rpc import calls_report
from b2bua.endpoint import Endpoint
from b2bua.events import CallLeg, Disconnected, LegEvent
from b2bua.gcwatch import GcWatch
from b2bua.guard import Dialogs, Gate, register_security_methods
from b2bua.headers import Passthrough
from b2bua.health import Health, NodeState, node_state
from b2bua.legpool import LegPool
from b2bua.legs import leg_factory
from b2bua.lifecycle import Lifecycle, StartupError
from b2bua.logs import writes
from b2bua.loop import BlockingPool, Scheduler, Task, Timer
from b2bua.plugins import Hooks, make_manager
from b2bua.rpc import RpcRegistry
from b2bua.sdnotify import SdNotifier
from b2bua.session import Session
from b2bua.stats import CoreStats, ProcessSnapshot, ProcessStats, StatsRegistry
from b2bua.wire import Malformed, WireRequest, call_info, check_response, raw_call_id

if TYPE_CHECKING:
    import pjsua2 as pj

__all__ = ["App", "StartupError"]

T = TypeVar("T")

#: how often the loop measures its own lateness (overload detection)
HEARTBEAT = 0.05
#: at most one "overload" warning per this many seconds (shedding can start and stop often)
OVERLOAD_LOG_EVERY = 10.0
#: a SIP receive buffer this full is overload whatever the wait (arrivals are dropped when it is full)
BUFFER_FULL = 0.5
#: per heartbeat, how much of the recent work counts on (about a second's memory): a beat right
#: after the loop stalled has seen little of what waits in the queue
RECENT_WORK_DECAY = 0.95
#: worker threads for plugins' blocking work (``run_blocking``: reloads, DNS, state files)
BLOCKING_WORKERS = 4
#: seconds shutdown waits for blocking work still running
BLOCKING_STOP_WAIT = 5.0


class App:
    """Owns everything; implements :class:`b2bua.api.Host` for plugins."""

    version = __version__

    def __init__(self, config: Config) -> None:
        self._config = config
        self.scheduler = Scheduler()
        self.pm = make_manager(config.plugins.enabled)
        self.hooks = Hooks(self.pm)
        self.registry = RpcRegistry()
        self.gate = Gate(config.security, config.sip)  # refusal lines follow the log level as it is now
        register_security_methods(self.registry, self.gate)
        self.endpoint = Endpoint(config, self.scheduler, self._on_incoming, screen_request=self._screen,
                                 screen_response=self._screen_response, on_dropped=self.gate.log.note_unparsable,
                                 on_closed=self.gate.log.note_closed)
        #: worker threads for plugins' blocking work (Host.run_blocking)
        self.blocking = BlockingPool(self.scheduler, BLOCKING_WORKERS)
        #: every call leg's pjsua2 Call object, from call slot to release
        self.legs = LegPool(leg_factory(self.endpoint.account_for))
        #: [headers]: what crosses between the legs (the session's host)
        self.passthrough = Passthrough.compile(config.headers.to_gateway, config.headers.to_caller)
        self.sessions: dict[int, Session] = {}  #: calls in progress by CallInfo.id
        self.started_at = time.time()
        #: the process's call counters; a host plugin for b2bua_call_answered
        self.stats = ProcessStats()
        self.pm.register(self.stats, name="b2bua.stats")
        self.stats_registry = StatsRegistry()
        self.stats_registry.add(CoreStats(self.process_snapshot, self.reset_stats))
        #: systemd's notification socket (a no-op outside systemd)
        self.notifier = SdNotifier.from_env()
        self._next_session = 0
        self._stopping = False
        self._draining = False  #: the operator's drain (core.drain)
        self._overloaded_until = 0.0
        self._overload_logged = 0.0
        self._shed = 0  #: new calls answered 503 Overloaded since the last overload warning
        self._refusals_logged = time.monotonic()
        self._recent_work = (0.0, 0.0)  #: new calls and other refusals, decayed per heartbeat
        #: the last INVITE the early filter let in, and what it parsed (see _on_incoming)
        self._admitted: tuple[bytes, WireRequest] | None = None
        self._screened_base: dict[str, dict[str, int]] = {}  #: screen counts at the last stats reset
        self._backlog = ReceiveBacklog([])
        #: the SIP listeners' receive queues at the last heartbeat
        self.receive_queue = QueueReading()
        self.gc_watch = GcWatch()  #: started once start-up's heap is frozen (lifecycle)
        self._standing = StandingQueue(config.sip.overload_delay)  #: saturation, told from a stall
        self._dropped_logged = 0  #: datagrams the kernel dropped, as of the last warning about them
        self._dropped_base = 0  #: ... as of the last stats reset
        self._drops_logged_at = 0.0
        self._admission = AdmissionShare()
        #: the cluster this node belongs to ([cluster] redis_url), or None
        self.cluster: Cluster | None = make_cluster(config, post=self.scheduler.call_soon_threadsafe,
                                                    call_later=self.scheduler.call_later, info=self.cluster_info)

    # -- Host protocol --------------------------------------------------------------------------

    @property
    def config(self) -> Config:
        return self._config

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.scheduler.call_later(delay, callback)

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        self.scheduler.call_soon_threadsafe(callback)

    def run_on_loop(self, callback: Callable[[], T], timeout: float = 10.0) -> T:
        return self.scheduler.run_on_loop(callback, timeout)

    def run_blocking(self, fn: Callable[[], T], on_done: Callable[[Future[T]], None] | None = None) -> Future[T]:
        return self.blocking.submit(fn, on_done)

    def run_task(self, steps: Task[T], on_done: Callable[[Future[T]], None] | None = None) -> Future[T]:
        return self.scheduler.run_task(steps, on_done)

    def send_request(self, method: str, uri: str, *, from_uri: str, callback: Callable[[ProbeResult], None],
                     timeout: float = 2.0, headers: Sequence[tuple[str, str]] = (),
                     outbound: Outbound = DEFAULT_OUTBOUND) -> None:
        self.scheduler.check_loop_thread("send_request")  # pjsua2 is the loop thread's alone
        self.endpoint.send_request(method, uri, from_uri=from_uri, callback=callback, timeout=timeout,
                                   headers=headers, outbound=outbound)

    def stop_blocking_work(self) -> None:
        """Shutdown, after the plugins stopped: refuse new blocking work, wait a little for what runs."""
        running = self.blocking.stop(BLOCKING_STOP_WAIT)
        if running:
            logger.warning("{} blocking job(s) still running at shutdown: their results are dropped", running)

    # -- control API helpers ----------------------------------------------------------------------

    def plugin_names(self) -> list[str]:
        return self.hooks.plugin_names()

    def active_calls(self) -> list[dict[str, Any]]:
        return calls_report(self.sessions.values(), time.monotonic())

    def cluster_info(self) -> dict[str, Any]:
        """What this node tells the others at every heartbeat (``cluster.nodes``, ``--all``)."""
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": self.version,
            "sip": list(self.endpoint.listeners),
            "control": control_address(self._config),
            "state": "draining" if self._draining else "running",
            "calls": len(self.sessions),
        }

    # -- the call core (Session's host) -----------------------------------------------------------

    @property
    def sip(self) -> SipConfig:
        return self._config.sip

    def session_ended(self, session: Session) -> None:
        if self.sessions.pop(session.call.id, None) is None:
            return
        self.stats.call_ended(session.cause, session.answered_target is not None)
        if not self.sessions and self._draining and not self._stopping:
            logger.info("drain: the last call ended; the node takes no new calls until core.undrain")
            self.notifier.status("drained: no calls; new calls get 503 until core.undrain")

    def admit(self, call: CallInfo, a_leg: CallLeg) -> None:
        """Admission's one way into the call core: ``call`` gets a session, routed on the next pass."""
        self.stats.received += 1
        session = Session(self, call, a_leg)
        self.sessions[call.id] = session
        if writes.debug:
            session.log.debug("INVITE {} from {} ({})", call.request_uri, call.from_uri, call.source)
        # pjsua2 may call onIncomingCall before pjsua has set the call up (from its media
        # transport callback), and pjsua may still drop the call afterwards without telling us
        # (no RTP port free, say): route it on the next loop pass, once the A leg is real.
        self.scheduler.call_soon_threadsafe(lambda: self._start_session(session))

    def _start_session(self, session: Session) -> None:
        a_leg = session.a
        if a_leg is None:
            return  # the caller cancelled already
        if not a_leg.attached():
            session.lost_caller("pjsua dropped the incoming call (no free RTP port?)")
            return
        try:
            session.start()
        except Exception:
            session.log.opt(exception=True).error("the call failed to start")
            session.reject(Reject(500, "Internal Server Error"), EndCause.ERROR)

    # -- run ----------------------------------------------------------------------------------------

    def run(self) -> int:
        """Start everything, serve until SIGTERM/SIGINT, stop cleanly (:class:`Lifecycle`).
        Returns the exit code."""
        return Lifecycle(self).run()

    def begin_stopping(self) -> None:
        """Shutdown has begun: new calls and OPTIONS are refused (503 Shutting Down)."""
        self._stopping = True

    # -- the operator's drain, the node's state, statistics ---------------------------------------

    def drain(self) -> int:
        """``core.drain``: new calls and OPTIONS get 503 Draining from now on, calls in progress go
        on. Returns how many there are (loop thread)."""
        calls = len(self.sessions)
        if not self._draining:
            self._draining = True
            logger.info("drain: new calls and OPTIONS get 503 from now on; {} call(s) in progress go on", calls)
        self.notifier.status(f"draining: {calls} call(s) left; new calls get 503" if calls else
                             "drained: no calls; new calls get 503 until core.undrain")
        return calls

    def undrain(self) -> bool:
        """``core.undrain``: take new calls again; False when there was no drain (loop thread)."""
        if not self._draining:
            return False
        self._draining = False
        logger.info("undrain: new calls are taken again ({} call(s) in progress)", len(self.sessions))
        self.notifier.status(self.ready_status())
        return True

    @property
    def draining(self) -> bool:
        """The operator's drain is on (not the shutdown's)."""
        return self._draining

    @property
    def overloaded(self) -> bool:
        """New calls are shed for overload now (a late loop, or a share under a receive backlog)."""
        late = bool(self._overloaded_until) and time.monotonic() < self._overloaded_until
        return late or self._admission.share < 1.0

    def state(self) -> NodeState:
        return node_state(stopping=self._stopping, draining=self._draining, overloaded=self.overloaded)

    def health(self) -> Health:
        """``/health``'s report (loop thread)."""
        return Health(self.state(), len(self.sessions), self._config.sip.max_calls)

    def ready_status(self) -> str:
        """systemd's STATUS= line while the node takes calls."""
        return f"listening on {', '.join(self.endpoint.listeners)}"

    def process_snapshot(self) -> ProcessSnapshot:
        """The ``core`` statistics group's numbers, read at once (loop thread)."""
        stats, gate = self.stats, self.gate
        return ProcessSnapshot(
            version=self.version, state=self.state().value, since=stats.since, received=stats.received,
            answered=stats.answered, failed=stats.failed, cancelled=stats.cancelled, ended=dict(stats.ended),
            refused_calls={why.value: n for why, n in gate.refused_calls.items()},
            refused_requests={why.value: n for why, n in gate.refused_requests.items()},
            reload_signals=stats.reload_signals, active_calls=len(self.sessions), legs_in_use=self.legs.in_use,
            call_slots=self.legs.slots, max_calls=self._config.sip.max_calls, draining=self._draining,
            stopping=self._stopping, overloaded=self.overloaded, admitted_share=self._admission.share,
            sip_dropped=self.receive_queue.dropped - self._dropped_base, sip_receive_wait=self.receive_queue.wait,
            timer_lag=self.endpoint.timer_lag(), gc=self.gc_watch.report(),
            screened=self._screened_since_reset(),
        )

    def _screened_since_reset(self) -> dict[str, dict[str, int]]:
        """The early filter's counts (pjsip's, since start) less those at the last reset."""
        base = self._screened_base
        return {kind: {path: n - base.get(kind, {}).get(path, 0) for path, n in paths.items()}
                for kind, paths in self.endpoint.screen_counts().items()}

    def reset_stats(self) -> None:
        """Zero the process's counters (``stats.reset_statistics core``)."""
        self.stats.reset()
        self.gate.reset_counts()
        self._screened_base = self.endpoint.screen_counts()
        self._dropped_base = self.receive_queue.dropped

    # -- incoming requests ------------------------------------------------------------------------

    def _load(self, *, taken: bool) -> Load:
        """The load a new call is admitted against; ``taken``: pjsua gave it a call slot already."""
        sip_cfg = self._config.sip
        in_use = self.legs.in_use - (1 if taken else 0)
        return Load(
            stopping=self._stopping,
            draining=self._draining,
            overloaded=bool(self._overloaded_until) and time.monotonic() < self._overloaded_until,
            share=self._admission.share,
            calls=len(self.sessions),
            max_calls=sip_cfg.max_calls,
            free_slots=self.legs.slots - 1 - in_use,  # one slot kept free, as LegPool.full() does
        )

    def _screen(self, raw: bytes, source: str, dialogs: Dialogs) -> Decision:
        """The early filter's question for each request outside a transaction (inside pjsip);
        ``dialogs`` answers whether it belongs to a dialog of ours."""
        decision, request = self.gate.screen(raw, source, self._load(taken=False), time.monotonic(),
                                             dialogs=dialogs)
        if decision.verdict is Verdict.ACCEPT and request is not None and request.method == "INVITE" \
                and not request.in_dialog:
            self._admitted = (raw, request)
        return decision

    def _screen_response(self, raw: bytes, source: str) -> bool:
        """Keep a response whose head is text; drop (and count) one that is not."""
        try:
            check_response(raw)
        except Malformed as exc:
            self.gate.note_bad_response(exc, source, raw_call_id(raw))
            return False
        return True

    def _on_incoming(self, prm: pj.OnIncomingCallParam) -> None:
        self._next_session += 1
        number = self._next_session
        raw = prm.rdata.wholeMsg.encode("utf-8", "surrogateescape")
        source = prm.rdata.srcAddress
        a_leg = self.legs.incoming(prm.callId)  # pjsua already took a slot for this INVITE
        admitted, self._admitted = self._admitted, None
        if admitted is not None and admitted[0] == raw:
            request: WireRequest | None = admitted[1]  # screened by the early filter a moment ago
            decision = Decision(Verdict.ACCEPT)
        else:  # no early filter: screened now, and a refusal costs the call pjsua set up
            decision, request = self.gate.screen(raw, source, self._load(taken=True), time.monotonic(),
                                                 new_call=True)
        if decision.verdict is not Verdict.ACCEPT or request is None:
            # pjsua answered 100 Trying already: a request to drop gets untrusted_code instead
            refuse = Reject(decision.code or self.gate.policy.untrusted_code, decision.reason or "Forbidden",
                            decision.headers)
            a_leg.owner = _Refused(self.legs)
            self.legs.keep_until_disconnected(a_leg)  # dropping it now would hang up another call later
            # answered on the next pass: inside onIncomingCall pjsua would drop the extra headers
            self.scheduler.call_soon_threadsafe(lambda: self._refuse(a_leg, refuse))
            return
        self.admit(call_info(number, request, source, time.monotonic()), a_leg)

    def _refuse(self, a_leg: CallLeg, refuse: Reject) -> None:
        if not a_leg.end(refuse.code, refuse.reason, refuse.headers):
            self.legs.retire(a_leg)

    def start_overload_watch(self) -> None:
        """Start-up: find the UDP listeners' receive queues, size their buffers, and start the
        heartbeat (before the first call: RTP sockets share the listeners' addresses). The
        heartbeat always runs: it also sums up the refused requests."""
        sip_cfg = self._config.sip
        udp = [(x.address, x.port) for x in sip_cfg.listeners if x.transport == "udp"]
        self._backlog = ReceiveBacklog.find(udp)
        self._backlog.stamp_arrivals()
        if sip_cfg.udp_receive_buffer:
            for name, size in self._backlog.size_buffers(sip_cfg.udp_receive_buffer):
                if size < sip_cfg.udp_receive_buffer:
                    logger.warning("udp:{}: the kernel gave {} bytes of receive buffer, not the {} of [sip] "
                                   "udp_receive_buffer: raise net.core.rmem_max (sysctl) or give the process "
                                   "CAP_NET_ADMIN, else a stall of a few dozen ms drops SIP messages",
                                   name, size, sip_cfg.udp_receive_buffer)
        logger.debug("overload: watching the receive queue of {} UDP listener(s)", self._backlog.count)
        self._heartbeat(time.monotonic())

    def stop_overload_watch(self) -> None:
        self._backlog.close()

    def _heartbeat(self, expected: float) -> None:
        """Shed new calls while overloaded: all for a second when the loop runs ``overload_lag``
        late; a share (:class:`AdmissionShare`) while the oldest SIP message waits unread longer
        than ``overload_delay`` and does not drain (:class:`StandingQueue`) or a receive buffer
        is over half full (:mod:`b2bua.backlog`).

        Refusing a new INVITE costs a third of a call; accepting calls the loop cannot serve
        makes every call late, then retransmissions multiply the load and everything fails. But
        when the loop is busy dropping a flood (requests the early filter refused or dropped
        outweigh the new calls), refusing calls would not relieve it: they are not shed then.
        Every ``[security] log_interval``, the requests refused meanwhile are summed up in one line.
        """
        cfg = self._config.sip
        now = time.monotonic()
        lag = now - expected
        why = ""
        calls, refused = self.gate.take_work()
        self._shed += self.gate.take_shed()
        recent_calls, recent_refused = self._recent_work
        self._recent_work = (recent_calls * RECENT_WORK_DECAY + calls, recent_refused * RECENT_WORK_DECAY + refused)
        calls_matter = shedding_helps(*self._recent_work)
        if 0 < cfg.overload_lag < lag and calls_matter:
            why = f"the loop runs {lag * 1000:.0f} ms late"
            self._overloaded_until = now + 1.0
        self.receive_queue = queue = self._backlog.read(time.time())
        if cfg.overload_delay:
            standing = self._standing.update(queue.wait)
            full = queue.fill > BUFFER_FULL
            over = (standing or full) and calls_matter
            self._admission.update(over)
            if over and not why:
                why = (f"the oldest SIP message waited {queue.wait * 1000:.0f} ms unread" if standing
                       else f"a SIP receive buffer is {queue.fill:.0%} full")
        dropped = queue.dropped - self._dropped_logged
        if dropped and now - self._drops_logged_at >= OVERLOAD_LOG_EVERY:
            self._drops_logged_at, self._dropped_logged = now, queue.dropped
            logger.warning("{} SIP datagram(s) dropped by the kernel since the last warning: a UDP listener's "
                           "receive buffer was full ([sip] udp_receive_buffer)", dropped)
        if why:
            if now - self._overload_logged >= OVERLOAD_LOG_EVERY:
                self._overload_logged = now
                logger.warning("overload: {}; new calls get 503 until it passes ({} since the last warning)",
                               why, self._shed)
                self._shed = 0
        elif self._shed and self._admission.share >= 1.0 and now >= self._overloaded_until:
            logger.warning("overload over: {} more new calls were answered 503", self._shed)
            self._shed = 0
        if now - self._refusals_logged >= self._config.security.log_interval:
            summary = self.gate.log.summary(now - self._refusals_logged)
            self._refusals_logged = now
            if summary:
                logger.warning(summary)
        self.scheduler.call_later(HEARTBEAT, lambda: self._heartbeat(now + HEARTBEAT))


class _Refused:
    """Owner of a refused INVITE's leg: only retires it when it is gone."""

    def __init__(self, legs: LegPool) -> None:
        self.legs = legs

    def on_event(self, leg: CallLeg, event: LegEvent) -> None:
        if isinstance(event, Disconnected):
            self.legs.retire(leg)
