"""The B2BUA's lifecycle on the loop thread: start in order, serve, stop in order.

``Lifecycle(app).run()`` (uvicorn's ``serve -> startup -> main_loop -> shutdown`` shape):

1. **start**: lift the open-files limit, ``b2bua_configure`` (historic), the pjsua2 endpoint,
   ``b2bua_startup``, the statistics groups, the control API (JSON-RPC, ``/health``,
   ``/metrics``), signal handlers, the overload watch, the leg audit; then systemd hears
   ``READY=1`` (:mod:`b2bua.sdnotify`) and, with ``WatchdogSec=``, a ``WATCHDOG=1`` from a
   loop timer at half its interval;
2. **serve**: ``poll pjsip -> run due timers and queued work -> release retired legs ->
   SIGHUP reload`` until SIGTERM/SIGINT;
3. **stop**: ``STOPPING=1``, refuse new calls and OPTIONS (503 Shutting Down), drain calls for
   ``shutdown_grace`` (the control API still answers: ``/health`` says ``stopping``), stop
   the control API, hang up the rest, let BYE/CANCEL finish, ``b2bua_shutdown``, then release
   every pjsua2 Call object before ``libDestroy`` (one alive after it aborts the process).

It owns no call state: sessions, legs and admission belong to :class:`b2bua.app.App` and its
leg pool; this module decides only the order of things.
"""

from __future__ import annotations

import gc
import resource
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from loguru import logger

from b2bua.heap import HeapTrimmer, heap_report, malloc_trim
from b2bua.legs import release_remaining

if TYPE_CHECKING:
    from b2bua.app import App

#: how long the loop blocks in pjsip at most (signals and queued work wait at most this long)
POLL_CEILING = 0.005
#: how often legs are checked against pjsua's call slots (see :meth:`Lifecycle.audit`)
AUDIT_INTERVAL = 2.0


class StartupError(RuntimeError):
    """A plugin could not start (its data source is unreachable, a file is malformed, ...)."""


class Lifecycle:
    """Runs one :class:`~b2bua.app.App` from start to stop on the calling (loop) thread."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.stopping = False  #: set by SIGTERM/SIGINT: the serve loop ends
        self.reload_requested = False  #: set by SIGHUP: the loop runs ``b2bua_reload``
        self._control: Any = None
        self.heap = HeapTrimmer(malloc_trim())
        self._busy_ports_logged = 0

    # -- start ----------------------------------------------------------------------------------

    def run(self) -> int:
        """Start everything, serve until SIGTERM/SIGINT, stop cleanly. Returns the exit code."""
        app = self.app
        app.scheduler.loop_thread = threading.current_thread()
        _raise_fd_limit()
        app.hooks.configure(app.config, app)
        app.endpoint.start()
        app.legs.slots = app.endpoint.slots
        try:
            if app.cluster is not None:  # joined before the plugins start: they read the shared state
                try:
                    app.cluster.start()
                except Exception as exc:
                    raise StartupError(str(exc)) from exc
            try:
                app.hooks.startup(app)
            except Exception as exc:
                raise StartupError(f"start-up failed: {exc}") from exc
            self._start_control()
            self._install_signals()
            app.start_overload_watch()
            app.scheduler.call_later(AUDIT_INTERVAL, self.audit)
            _freeze_startup_heap()
            app.gc_watch.start()  # after start-up's own collections
            logger.info("b2bua ready: listening on {} (plugins: {})",
                        ", ".join(app.endpoint.listeners), ", ".join(app.plugin_names()) or "none")
            app.notifier.ready(app.ready_status())
            self._start_watchdog()
            self._serve()
        finally:
            self._shutdown()
        return 0

    def _start_control(self) -> None:
        from b2bua.cluster import register_cluster_methods
        from b2bua.control import ControlServer, JsonRpcProcessor
        from b2bua.core_rpc import register_core_methods, register_drain_methods, register_stats_methods
        from b2bua.health import health_routes
        from b2bua.metrics import exposition_steps, loop_scrape, metrics_routes, process_registry
        from b2bua.web import web_routes

        app = self.app
        app.hooks.register_stats(app.stats_registry)
        register_core_methods(app.registry, app)
        app.registry.add("core.memory", self._memory,
                         "resident memory, glibc heap (in use, free), SIP transactions held, call legs, heap trims")
        register_stats_methods(app.registry, app.stats_registry)
        register_drain_methods(app.registry, app, app.run_on_loop)
        if app.cluster is not None:
            register_cluster_methods(app.registry, app.cluster)
        app.hooks.register_rpc(app.registry)
        ctl = app.config.control
        if ctl.socket or ctl.http:
            scrape = loop_scrape(app.run_on_loop,
                                 lambda: app.run_task(exposition_steps(app.stats_registry.collect_steps())))
            page = web_routes(JsonRpcProcessor(app.registry, app.run_on_loop).handle, ctl.token, ctl.read_token)
            routes = [*health_routes(app.health, app.run_on_loop), *metrics_routes(scrape, process_registry()), *page]
            self._control = ControlServer(app.registry, app.run_on_loop, ctl, app.config.base_dir, routes=routes)
            self._control.start()

    def _start_watchdog(self) -> None:
        """``WATCHDOG=1`` from a loop timer: pings stop when the loop thread stops turning."""
        interval = self.app.notifier.watchdog_interval
        if interval <= 0:
            return
        logger.debug("systemd watchdog: a ping every {:g} s", interval)

        def ping() -> None:
            self.app.notifier.watchdog()
            self.app.scheduler.call_later(interval, ping)

        ping()

    def _install_signals(self) -> None:
        def stop(signum: int, _frame: Any) -> None:
            logger.info("{} received: stopping", signal.Signals(signum).name)
            self.stopping = True

        def reload(_signum: int, _frame: Any) -> None:
            self.reload_requested = True

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    # -- serve ----------------------------------------------------------------------------------

    def _serve(self) -> None:
        scheduler = self.app.scheduler
        endpoint = self.app.endpoint
        legs = self.app.legs
        retired = legs.retired
        while not self.stopping:
            endpoint.poll(scheduler.next_delay(POLL_CEILING))
            scheduler.run_pending()
            if retired:
                legs.release_retired()
            if self.reload_requested:
                self.reload_requested = False
                self._on_sighup()

    def audit(self) -> None:
        """Find legs pjsua ended without a callback and end their part on our side (every
        :data:`AUDIT_INTERVAL` seconds); after a load, give the heap's free pages back
        (:mod:`b2bua.heap`).

        Under overload pjsua drops calls silently (no RTP port free, a slot taken over); their
        sessions and refused legs would otherwise stay forever, counting against ``max_calls``
        and the call slots, and their Call objects would later act on the slot's next call.
        """
        app = self.app
        lost = app.legs.audit()
        for session in list(app.sessions.values()):
            lost += session.audit_legs()
        if lost:
            logger.warning("{} call leg(s) ended inside pjsua without a callback: cleaned up", lost)
        busy = app.endpoint.busy_ports()
        if busy > self._busy_ports_logged:
            logger.info("{} RTP/RTCP port(s) were still held by calls up and were skipped",
                        busy - self._busy_ports_logged)
            self._busy_ports_logged = busy
        started = time.monotonic()
        if self.heap.check(started, app.legs.made):
            logger.debug("no new call for {:g} s: heap trimmed in {:.1f} ms", self.heap.idle_for,
                         (time.monotonic() - started) * 1000)
        app.scheduler.call_later(AUDIT_INTERVAL, self.audit)

    def _memory(self) -> dict[str, Any]:
        app = self.app
        return {**heap_report(), "transactions": app.endpoint.transactions(), "legs_in_use": app.legs.in_use,
                "legs_made": app.legs.made, "heap_trims": self.heap.trims}

    def _on_sighup(self) -> None:
        logger.info("SIGHUP: reloading")
        self.app.stats.reload_signals += 1
        try:
            self.app.pm.hook.b2bua_reload(app=self.app)
        except Exception:
            logger.opt(exception=True).error("reload failed")

    # -- stop -----------------------------------------------------------------------------------

    def _pump(self, seconds: float, until: Callable[[], bool]) -> None:
        app = self.app
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not until():
            app.endpoint.poll(0.01)
            app.scheduler.run_pending()
            app.legs.release_retired()

    def _shutdown(self) -> None:
        app = self.app
        legs = app.legs
        app.begin_stopping()
        grace = app.config.sip.shutdown_grace
        app.notifier.stopping(f"stopping: {len(app.sessions)} call(s) get up to {grace:g} s to finish")
        if app.sessions:
            logger.info("draining {} calls (up to {:g} s)", len(app.sessions), grace)
            self._pump(grace, lambda: not app.sessions)
        if self._control is not None:
            try:
                self._control.stop()
            except Exception:
                logger.opt(exception=True).warning("control API did not stop cleanly")
        if app.sessions:
            logger.info("hanging up {} calls", len(app.sessions))
            for session in list(app.sessions.values()):
                session.hangup_all()
        # let BYE/CANCEL transactions finish and every Call object be released before libDestroy
        self._pump(3.0, lambda: not app.sessions and not legs.zombies and legs.in_use <= 0)
        try:
            app.hooks.shutdown(app)
        except Exception:
            logger.opt(exception=True).error("a plugin failed in b2bua_shutdown")
        if app.cluster is not None:
            app.cluster.stop()
        app.stop_blocking_work()
        try:
            app.endpoint.hangup_all()
        except Exception:  # pjsua2's error: nothing left to hang up
            logger.opt(exception=True).debug("hangupAllCalls at shutdown")
        self._pump(0.5, lambda: legs.in_use <= 0 and not legs.zombies)
        app.sessions.clear()
        legs.forget_zombies()
        legs.release_retired()
        # timers of calls that never finished (an overloaded run leaves thousands) hold sessions
        # and their legs
        app.scheduler.clear()
        app.gc_watch.stop()
        gc.unfreeze()  # the start-up heap too: a cycle holding a pjsua2 object goes before libDestroy
        gc.collect()
        app.stop_overload_watch()
        left = release_remaining()  # a pj.Call finalised after libDestroy aborts the process
        if left:
            logger.warning("{} call leg(s) still referenced at shutdown: released before pjsua stops", left)
        app.endpoint.destroy()
        app.notifier.close()
        logger.info("stopped")


def _freeze_startup_heap() -> None:
    """Keep what start-up made (modules, pjsua2's proxies, config, plugin state: ~70,000
    objects with the shipped config) out of full garbage collections. Under load a full collection ran every ~6 s and
    walked all of them holding the GIL: 30-66 ms of a stalled loop at 400 calls/s, long enough
    for SIP to pile up unread and new calls to be shed. Frozen objects are still freed by
    reference counting; only cycles among them wait for the unfreeze at shutdown."""
    gc.collect()
    gc.freeze()
    logger.debug("{} start-up objects kept out of full garbage collections", gc.get_freeze_count())


def _raise_fd_limit() -> None:
    """Each call leg takes sockets (RTP, RTCP): lift the soft open-files limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
