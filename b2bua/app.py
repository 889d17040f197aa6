"""The running B2BUA: configuration, plugins, the pjsua2 loop, sessions, control API."""

from __future__ import annotations

import gc
import resource
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

import pjsua2 as pj
from loguru import logger

from b2bua import __version__, sip
from b2bua.api import CallInfo, EndCause, ProbeResult, Reject
from b2bua.backlog import AdmissionShare, ReceiveBacklog
from b2bua.config import Config
from b2bua.endpoint import Endpoint
from b2bua.legs import Leg, op, release_remaining
from b2bua.loop import BlockingPool, Scheduler, Task, Timer
from b2bua.plugins import Hooks, make_manager
from b2bua.rpc import RpcRegistry
from b2bua.session import Session

T = TypeVar("T")

#: how long the loop blocks in pjsip at most (signals and queued work wait at most this long)
POLL_CEILING = 0.005
#: how often the loop measures its own lateness (overload detection)
HEARTBEAT = 0.05
#: how often legs are checked against pjsua's call slots (see ``App._audit``)
AUDIT_INTERVAL = 2.0
#: at most one "overload" warning per this many seconds (shedding can start and stop often)
OVERLOAD_LOG_EVERY = 10.0
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
        self.endpoint = Endpoint(config, self.scheduler, self._on_incoming)
        self.blocking = BlockingPool(self.scheduler, BLOCKING_WORKERS)
        self.sessions: dict[int, Session] = {}
        self.started_at = time.time()
        self.legs_in_use = 0
        self._graveyard: list[Leg] = []
        self._zombies: dict[int, Leg] = {}
        self._next_session = 0
        self._stopping = False
        self._draining = False
        self._overloaded_until = 0.0
        self._overload_logged = 0.0
        self._shed = 0  #: new calls answered 503 Overloaded since the last overload warning
        self._backlog = ReceiveBacklog([])
        self._admission = AdmissionShare()
        self._control: Any = None
        self.reload_requested = False

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
                     timeout: float = 2.0, headers: Sequence[tuple[str, str]] = ()) -> None:
        self.scheduler.check_loop_thread("send_request")  # pjsua2 is the loop thread's alone
        self.endpoint.send_request(method, uri, from_uri=from_uri, callback=callback, timeout=timeout,
                                   headers=headers)

    # -- control API helpers ----------------------------------------------------------------------

    def plugin_names(self) -> list[str]:
        return self.hooks.plugin_names()

    def active_calls(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        calls = []
        for s in self.sessions.values():
            calls.append({
                "id": s.call.id,
                "call_id": s.call.call_id,
                "from": s.call.from_uri,
                "to": s.call.to_uri,
                "ruri": s.call.request_uri,
                "state": s.state.value,
                "duration": round(now - s.call.started, 3),
                "legs": [
                    {"index": leg.index, "target": leg.target.uri if leg.target else "",
                     "answered": leg.answered, "provisional": leg.provisional}
                    for leg in s.b.values()
                ],
                "answered_by": s.answered_target.uri if s.answered_target else None,
            })
        return calls

    # -- call slots -------------------------------------------------------------------------------

    def reserve_leg(self) -> bool:
        """Count one more pjsua call slot in use, if one is free."""
        if self.legs_in_use >= self.endpoint.slots - 1:
            return False
        self.legs_in_use += 1
        return True

    def retire(self, leg: Leg) -> None:
        """A leg is disconnected: drop it on the next loop pass (never while in its callback)."""
        if getattr(leg, "_retired", False):
            return
        leg._retired = True
        leg.session = None
        self._zombies.pop(id(leg), None)
        self._graveyard.append(leg)
        self.legs_in_use -= 1

    def keep_until_disconnected(self, leg: Leg) -> None:
        """A leg its session gave up on but pjsua has not ended yet (no provisional to cancel)."""
        self._zombies[id(leg)] = leg

    def session_ended(self, session: Session) -> None:
        self.sessions.pop(session.call.id, None)

    # -- incoming calls ---------------------------------------------------------------------------

    def _on_incoming(self, prm: pj.OnIncomingCallParam) -> None:
        sip_cfg = self._config.sip
        self._next_session += 1
        number = self._next_session
        self.legs_in_use += 1  # pjsua already took a slot for this INVITE
        raw = prm.rdata.wholeMsg
        start, headers = sip.parse_message(raw)
        call = _call_info(number, start, headers, prm.rdata.srcAddress)
        a_leg = Leg(self.endpoint.account, None, 0, prm.callId)
        refuse: Reject | None = None
        if sip.undecodable(raw.split("\r\n\r\n", 1)[0]):
            # nothing of it may reach pjsua2 again (TypeError) nor be trusted as text
            refuse = Reject(400, "Bad Request")
            call.call_id = sip.printable(call.call_id)
        elif self._draining:
            refuse = Reject(503, "Shutting Down", sip.retry_after(sip_cfg.retry_after))
        elif (self._overloaded_until and time.monotonic() < self._overloaded_until) or not self._admission.admit():
            refuse = Reject(503, "Overloaded", sip.retry_after(sip_cfg.retry_after))
        elif len(self.sessions) >= sip_cfg.max_calls or self.legs_in_use >= self.endpoint.slots - 1:
            refuse = Reject(sip_cfg.admission_code, "Too Many Calls", sip.retry_after(sip_cfg.retry_after))
        if refuse is not None:
            if refuse.reason == "Overloaded":  # thousands a second: counted, summed up by _heartbeat
                self._shed += 1
                logger.bind(call_id=call.call_id).debug("refused: {} {}", refuse.code, refuse.reason)
            else:
                logger.bind(call_id=call.call_id).warning("refused: {} {}", refuse.code, refuse.reason)
            a_leg.session = _Refused(self)
            self.keep_until_disconnected(a_leg)  # dropping it now would hang up another call later
            # answered on the next pass: inside onIncomingCall pjsua would drop the extra headers
            self.scheduler.call_soon_threadsafe(lambda: self._refuse(a_leg, refuse))
            return
        session = Session(self, call, a_leg)
        a_leg.session = session
        self.sessions[number] = session
        session.log.debug("INVITE {} from {} ({})", call.request_uri, call.from_uri, call.source)
        # pjsua2 may call onIncomingCall before pjsua has set the call up (from its media
        # transport callback), and pjsua may still drop the call afterwards without telling us
        # (no RTP port free, say): route it on the next loop pass, once the A leg is real.
        self.scheduler.call_soon_threadsafe(lambda: self._start_session(session))

    def _refuse(self, a_leg: Leg, refuse: Reject) -> None:
        try:
            a_leg.hangup(op(refuse.code, refuse.reason, refuse.headers))
        except pj.Error:
            self.retire(a_leg)

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
        """Start everything, serve until SIGTERM/SIGINT, stop cleanly. Returns the exit code."""
        self.scheduler.loop_thread = threading.current_thread()
        _raise_fd_limit()
        self.hooks.configure(self._config, self)
        self.endpoint.start()
        try:
            try:
                self.hooks.startup(self)
            except Exception as exc:
                raise StartupError(f"start-up failed: {exc}") from exc
            self._start_control()
            self._install_signals()
            sip_cfg = self._config.sip
            if sip_cfg.overload_backlog > 0:
                # found before the first call: RTP sockets share the listeners' addresses
                udp = [(x.address, x.port) for x in sip_cfg.listeners if x.transport == "udp"]
                self._backlog = ReceiveBacklog.find(udp)
                logger.debug("overload: watching the receive queue of {} UDP listener(s)", self._backlog.count)
            if sip_cfg.overload_lag > 0 or self._backlog.count:
                self._heartbeat(time.monotonic())
            self.scheduler.call_later(AUDIT_INTERVAL, self._audit)
            logger.info("b2bua ready: listening on {} (plugins: {})",
                        ", ".join(self.endpoint.listeners), ", ".join(self.plugin_names()) or "none")
            self._serve()
        finally:
            self._shutdown()
        return 0

    def _start_control(self) -> None:
        from b2bua.control import ControlServer
        from b2bua.core_rpc import register_core_methods

        register_core_methods(self.registry, self)
        self.hooks.register_rpc(self.registry)
        ctl = self._config.control
        if ctl.socket or ctl.http:
            self._control = ControlServer(self.registry, self.run_on_loop, ctl, self._config.base_dir)
            self._control.start()

    def _install_signals(self) -> None:
        def stop(signum: int, _frame: Any) -> None:
            logger.info("{} received: stopping", signal.Signals(signum).name)
            self._stopping = True

        def reload(_signum: int, _frame: Any) -> None:
            self.reload_requested = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    def _serve(self) -> None:
        scheduler = self.scheduler
        endpoint = self.endpoint
        graveyard = self._graveyard
        while not self._stopping:
            endpoint.poll(scheduler.next_delay(POLL_CEILING))
            scheduler.run_pending()
            if graveyard:
                self._bury()
            if self.reload_requested:
                self.reload_requested = False
                self._on_sighup()

    def _audit(self) -> None:
        """Find legs pjsua ended without a callback and end their part on our side.

        Under overload pjsua drops calls silently (no RTP port free, a slot taken over); their
        sessions and refused legs would otherwise stay forever, counting against ``max_calls``
        and the call slots, and their Call objects would later act on the slot's next call.
        """
        lost = 0
        for leg in list(self._zombies.values()):
            if not leg.attached():
                self.retire(leg)
                lost += 1
        for session in list(self.sessions.values()):
            lost += session.audit_legs()
        if lost:
            logger.warning("{} call leg(s) ended inside pjsua without a callback: cleaned up", lost)
        self.scheduler.call_later(AUDIT_INTERVAL, self._audit)

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

    def _on_sighup(self) -> None:
        logger.info("SIGHUP: reloading")
        try:
            self.pm.hook.b2bua_reload(app=self)
        except Exception:
            logger.opt(exception=True).error("reload failed")

    def _pump(self, seconds: float, until: Callable[[], bool]) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not until():
            self.endpoint.poll(0.01)
            self.scheduler.run_pending()
            self._bury()

    def _bury(self) -> None:
        """Release the legs retired during this pass (outside every pjsua2 callback)."""
        for leg in self._graveyard:
            leg.release()
        self._graveyard.clear()

    def _shutdown(self) -> None:
        self._draining = True
        if self._control is not None:
            try:
                self._control.stop()
            except Exception:
                logger.opt(exception=True).warning("control API did not stop cleanly")
        grace = self._config.sip.shutdown_grace
        if self.sessions:
            logger.info("draining {} calls (up to {:g} s)", len(self.sessions), grace)
            self._pump(grace, lambda: not self.sessions)
        if self.sessions:
            logger.info("hanging up {} calls", len(self.sessions))
            for session in list(self.sessions.values()):
                session.hangup_all()
        # let BYE/CANCEL transactions finish and every Call object be released before libDestroy
        self._pump(3.0, lambda: not self.sessions and not self._zombies and self.legs_in_use <= 0)
        try:
            self.hooks.shutdown(self)
        except Exception:
            logger.opt(exception=True).error("a plugin failed in b2bua_shutdown")
        running = self.blocking.stop(BLOCKING_STOP_WAIT)
        if running:
            logger.warning("{} blocking job(s) still running at shutdown: their results are dropped", running)
        try:
            self.endpoint.hangup_all()
        except pj.Error:
            pass
        self._pump(0.5, lambda: self.legs_in_use <= 0 and not self._zombies)
        self.sessions.clear()
        self._zombies.clear()
        self._bury()
        # timers of calls that never finished (an overloaded run leaves thousands) hold sessions
        # and their legs
        self.scheduler.clear()
        gc.collect()
        self._backlog.close()
        left = release_remaining()  # a pj.Call finalised after libDestroy aborts the process
        if left:
            logger.warning("{} call leg(s) still referenced at shutdown: released before pjsua stops", left)
        self.endpoint.destroy()
        logger.info("stopped")


class StartupError(RuntimeError):
    """A plugin could not start (its data source is unreachable, a file is malformed, ...)."""


class _Refused:
    """Session stand-in for a refused INVITE's leg: only retires it when it is gone."""

    def __init__(self, app: App) -> None:
        self.app = app

    def on_leg_state(self, leg: Leg, state: int, code: int, reason: str, prm: Any) -> None:
        if state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.app.retire(leg)

    def on_leg_media(self, leg: Leg) -> None:
        pass


def _call_info(number: int, start: str, headers: dict[str, tuple[str, ...]], source: str) -> CallInfo:
    def first(name: str) -> str:
        values = headers.get(name)
        return values[0] if values else ""

    from_header, to_header = first("from"), first("to")
    host, _, port = source.rpartition(":")
    via = first("via").upper()
    transport = "tcp" if "/TCP" in via else "udp"
    return CallInfo(
        id=number,
        call_id=first("call-id"),
        request_uri=sip.request_uri(start),
        from_uri=sip.header_uri(from_header),
        to_uri=sip.header_uri(to_header),
        from_header=from_header,
        to_header=to_header,
        source_ip=host.strip("[]"),
        source_port=int(port) if port.isdigit() else 0,
        transport=transport,
        headers=headers,
        started=time.monotonic(),
    )


def _raise_fd_limit() -> None:
    """Each call leg takes sockets (RTP, RTCP): lift the soft open-files limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
