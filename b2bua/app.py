"""The running B2BUA: the composition root and the plugins' :class:`b2bua.api.Host`.

``App`` wires the parts together and holds what they share; each concern lives in its own
module:

* admission (which new INVITEs get a session): the incoming-call path below;
* the call core: :class:`b2bua.session.Session` per call, legs from :class:`b2bua.legpool.LegPool`;
* start, serve loop and shutdown sequence: :class:`b2bua.lifecycle.Lifecycle`;
* Host services for plugins (timers, thread hand-off, out-of-dialog requests);
* ``core.calls``: :func:`b2bua.core_rpc.calls_report`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from loguru import logger

from b2bua import __version__, sip
from b2bua.api import CallInfo, EndCause, Reject
from b2bua.backlog import AdmissionShare, ReceiveBacklog
from b2bua.config import Config, SipConfig
from b2bua.core_rpc import calls_report
from b2bua.endpoint import Endpoint
from b2bua.events import CallLeg, Disconnected, LegEvent
from b2bua.headers import Passthrough
from b2bua.legpool import LegPool
from b2bua.legs import leg_factory
from b2bua.lifecycle import Lifecycle, StartupError
from b2bua.loop import Scheduler, Timer
from b2bua.plugins import Hooks, make_manager
from b2bua.rpc import RpcRegistry
from b2bua.session import Session

if TYPE_CHECKING:
    import pjsua2 as pj

__all__ = ["App", "StartupError"]

T = TypeVar("T")

#: how often the loop measures its own lateness (overload detection)
HEARTBEAT = 0.05
#: at most one "overload" warning per this many seconds (shedding can start and stop often)
OVERLOAD_LOG_EVERY = 10.0


class App:
    """Owns everything; implements :class:`b2bua.api.Host` for plugins."""

    version = __version__

    def __init__(self, config: Config) -> None:
        self._config = config
        self.scheduler = Scheduler()
        self.pm = make_manager(config.plugins.enabled)
        self.hooks = Hooks(self.pm)
        self.registry = RpcRegistry()
        self.endpoint = Endpoint(config, self.scheduler, self._on_incoming)
        #: Host.send_request: out-of-dialog requests (keepalives) go straight to the endpoint
        self.send_request = self.endpoint.send_request
        #: every call leg's pjsua2 Call object, from call slot to release
        self.legs = LegPool(leg_factory(self.endpoint.account_for))
        #: [headers]: what crosses between the legs (the session's host)
        self.passthrough = Passthrough.compile(config.headers.to_gateway, config.headers.to_caller)
        self.sessions: dict[int, Session] = {}  #: calls in progress by CallInfo.id
        self.started_at = time.time()
        self._next_session = 0
        self._draining = False
        self._overloaded_until = 0.0
        self._overload_logged = 0.0
        self._shed = 0  #: new calls answered 503 Overloaded since the last overload warning
        self._backlog = ReceiveBacklog([])
        self._admission = AdmissionShare()

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

    # -- control API helpers ----------------------------------------------------------------------

    def plugin_names(self) -> list[str]:
        return self.hooks.plugin_names()

    def active_calls(self) -> list[dict[str, Any]]:
        return calls_report(self.sessions.values(), time.monotonic())

    # -- the call core (Session's host) -----------------------------------------------------------

    @property
    def sip(self) -> SipConfig:
        return self._config.sip

    def session_ended(self, session: Session) -> None:
        self.sessions.pop(session.call.id, None)

    def admit(self, call: CallInfo, a_leg: CallLeg) -> None:
        """Admission's one way into the call core: ``call`` gets a session, routed on the next pass."""
        session = Session(self, call, a_leg)
        self.sessions[call.id] = session
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

    def begin_draining(self) -> None:
        """Shutdown has begun: new calls are refused (503 Shutting Down)."""
        self._draining = True

    # -- incoming calls ---------------------------------------------------------------------------

    def _on_incoming(self, prm: pj.OnIncomingCallParam) -> None:
        sip_cfg = self._config.sip
        self._next_session += 1
        number = self._next_session
        raw = prm.rdata.wholeMsg
        start, headers = sip.parse_message(raw)
        call = sip.call_info(number, start, headers, prm.rdata.srcAddress, time.monotonic())
        a_leg = self.legs.incoming(prm.callId)  # pjsua already took a slot for this INVITE
        refuse: Reject | None = None
        if sip.undecodable(raw.split("\r\n\r\n", 1)[0]):
            # nothing of it may reach pjsua2 again (TypeError) nor be trusted as text
            refuse = Reject(400, "Bad Request")
            call.call_id = sip.printable(call.call_id)
        elif self._draining:
            refuse = Reject(503, "Shutting Down", sip.retry_after(sip_cfg.retry_after))
        elif (self._overloaded_until and time.monotonic() < self._overloaded_until) or not self._admission.admit():
            refuse = Reject(503, "Overloaded", sip.retry_after(sip_cfg.retry_after))
        elif len(self.sessions) >= sip_cfg.max_calls or self.legs.full():
            refuse = Reject(sip_cfg.admission_code, "Too Many Calls", sip.retry_after(sip_cfg.retry_after))
        if refuse is not None:
            if refuse.reason == "Overloaded":  # thousands a second: counted, summed up by _heartbeat
                self._shed += 1
                logger.bind(call_id=call.call_id).debug("refused: {} {}", refuse.code, refuse.reason)
            else:
                logger.bind(call_id=call.call_id).warning("refused: {} {}", refuse.code, refuse.reason)
            a_leg.owner = _Refused(self.legs)
            self.legs.keep_until_disconnected(a_leg)  # dropping it now would hang up another call later
            # answered on the next pass: inside onIncomingCall pjsua would drop the extra headers
            self.scheduler.call_soon_threadsafe(lambda: self._refuse(a_leg, refuse))
            return
        self.admit(call, a_leg)

    def _refuse(self, a_leg: CallLeg, refuse: Reject) -> None:
        if not a_leg.end(refuse.code, refuse.reason, refuse.headers):
            self.legs.retire(a_leg)

    def start_overload_watch(self) -> None:
        """Start-up: find the UDP listeners' receive queues and start the heartbeat (before the
        first call: RTP sockets share the listeners' addresses)."""
        sip_cfg = self._config.sip
        if sip_cfg.overload_backlog > 0:
            udp = [(x.address, x.port) for x in sip_cfg.listeners if x.transport == "udp"]
            self._backlog = ReceiveBacklog.find(udp)
            logger.debug("overload: watching the receive queue of {} UDP listener(s)", self._backlog.count)
        if sip_cfg.overload_lag > 0 or self._backlog.count:
            self._heartbeat(time.monotonic())

    def stop_overload_watch(self) -> None:
        self._backlog.close()

    def _heartbeat(self, expected: float) -> None:
        """Shed new calls while overloaded: all for a second when the loop runs ``overload_lag``
        late; a share (:class:`AdmissionShare`) while ``overload_backlog`` bytes of SIP wait unread.

        Refusing a new INVITE costs a third of a call; accepting calls the loop cannot serve
        makes every call late, then retransmissions multiply the load and everything fails.
        """
        cfg = self._config.sip
        now = time.monotonic()
        lag = now - expected
        why = ""
        if 0 < cfg.overload_lag < lag:
            why = f"the loop runs {lag * 1000:.0f} ms late"
            self._overloaded_until = now + 1.0
        if cfg.overload_backlog:
            queued = self._backlog.bytes()
            self._admission.update(queued > cfg.overload_backlog)
            if queued > cfg.overload_backlog:
                why = why or f"{queued} bytes of SIP wait unread"
        if why:
            if now - self._overload_logged >= OVERLOAD_LOG_EVERY:
                self._overload_logged = now
                logger.warning("overload: {}; new calls get 503 until it passes ({} since the last warning)",
                               why, self._shed)
                self._shed = 0
        elif self._shed and self._admission.share >= 1.0 and now >= self._overloaded_until:
            logger.warning("overload over: {} more new calls were answered 503", self._shed)
            self._shed = 0
        self.scheduler.call_later(HEARTBEAT, lambda: self._heartbeat(now + HEARTBEAT))


class _Refused:
    """Owner of a refused INVITE's leg: only retires it when it is gone."""

    def __init__(self, legs: LegPool) -> None:
        self.legs = legs

    def on_event(self, leg: CallLeg, event: LegEvent) -> None:
        if isinstance(event, Disconnected):
            self.legs.retire(leg)
