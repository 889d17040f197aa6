"""The dispatcher plugin: Kamailio's ``dispatcher`` module as B2BUA hooks.

Hook implementations only; each delegates to a module with one job:
:mod:`~plugins.dispatcher.plans` (a call's route plan), :mod:`~plugins.dispatcher.runtime`
(sets, state, selection, call load), :mod:`~plugins.dispatcher.source` and
:mod:`~plugins.dispatcher.childload` (loading), :mod:`~plugins.dispatcher.reloader` (reloads
that never stall calls), :mod:`~plugins.dispatcher.heap` (the GC around large loads),
:mod:`~plugins.dispatcher.checks` (what a load reports), :mod:`~plugins.dispatcher.dnsrefresh`
(re-resolving host names), :mod:`~plugins.dispatcher.adminstate` (operator disables kept in
the state file), :mod:`~plugins.dispatcher.probing` (keepalives),
:mod:`~plugins.dispatcher.counters` and :mod:`~plugins.dispatcher.metrics` (per-destination
counters, the ``dispatcher`` statistics group), :mod:`~plugins.dispatcher.drain` (draining a
destination), :mod:`~plugins.dispatcher.rpc` and :mod:`~plugins.dispatcher.cli` (control
methods, commands). Enable it with
``[plugins] enabled = ["dispatcher"]`` and configure ``[plugins.dispatcher]`` (see
:mod:`plugins.dispatcher.config`).

Call load (algorithm 10) follows the legs: a slot is taken when a leg to a destination starts
and given back when that leg fails or the call ends.
"""

from __future__ import annotations

import random
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy
from loguru import logger

from b2bua import hookimpl
from b2bua.api import FailureKind, Reject, RoutePlan, StashKey, Target
from b2bua.config import ConfigError, SipConfig
from b2bua.nameservers import Nameserver, effective_nameservers
from plugins.dispatcher import hookspecs
from plugins.dispatcher.adminstate import AdminState
from plugins.dispatcher.checks import check_config_destinations
from plugins.dispatcher.childload import ConfiguredSource
from plugins.dispatcher.cli import add_dispatcher_commands
from plugins.dispatcher.config import (
    ROUTES_KEY,
    SECTION,
    DispatcherConfig,
    parse_dispatcher_config,
    resolve_sqlite_url,
)
from plugins.dispatcher.counters import DispatcherCounters
from plugins.dispatcher.dnslookup import HostLookup, make_lookup
from plugins.dispatcher.dnsrefresh import DnsRefresher
from plugins.dispatcher.drain import DrainWatch
from plugins.dispatcher.heap import HeapPolicy
from plugins.dispatcher.latency import seeded
from plugins.dispatcher.metrics import DispatcherStats
from plugins.dispatcher.model import Destination, Snapshot, is_usable
from plugins.dispatcher.outbound import check_outbound
from plugins.dispatcher.plans import DATA_KEY, ROUTE, CallRoute, dest_key_of, make_target, plan_call
from plugins.dispatcher.probing import Prober
from plugins.dispatcher.reloader import ReloadBusy, Reloader, ReloadFailed
from plugins.dispatcher.replycodes import parse_reply_codes
from plugins.dispatcher.resolve import LoadError
from plugins.dispatcher.routes import unloaded_sets
from plugins.dispatcher.rpc import DispatcherRpc
from plugins.dispatcher.runtime import DestKey, DispatcherState
from plugins.dispatcher.shared import LocalState, SharedState
from plugins.dispatcher.source import Loader, LoaderSource, Source, load_configured
from plugins.dispatcher.statefile import StateWriter

if TYPE_CHECKING:
    import argparse

    from b2bua.api import CallInfo, EndCause, Failure, Host
    from b2bua.config import Config
    from b2bua.rpc import RpcRegistry
    from b2bua.stats import StatsRegistry

# names that lived here before the split, kept for plugins and tests that import them from here
__all__ = [
    "DATA_KEY",
    "ROUTE",
    "CallRoute",
    "DispatcherPlugin",
    "Loader",
    "ReloadBusy",
    "ReloadFailed",
    "dest_key_of",
    "load_configured",
    "make_target",
]


#: the destination of a call's last failed attempt, until the next attempt (a failover) starts
FAILED_AT: StashKey[DestKey] = StashKey("dispatcher.failed_at")


def seed_latency(dest: Destination) -> Any:
    """A new destination's latency statistics: seeded from its ``latency`` attribute, else None."""
    return seeded(float(dest.attrs.latency)) if dest.attrs.latency > 0 else None


class DispatcherPlugin:
    """Destination sets, Kamailio's selection algorithms, state and call load.

    :param loader: loads the destinations (on a worker thread for a reload); tests pass one
        returning a ready snapshot. None: the configured list file or database, reloaded by a
        child process.
    :param rng: randomness for algorithm 6 and the weight tables.
    :param heap: what large loads do to the garbage collector (tests pass their thresholds).
    """

    def __init__(self, loader: Loader | None = None, rng: random.Random | None = None,
                 heap: HeapPolicy | None = None) -> None:
        self.config = DispatcherConfig()
        self.sip = SipConfig()  #: the host's [sip]: listeners, socket names, credentials (for the checks)
        self.app: Host | None = None
        self._custom_loader = loader
        self._loader: Loader = loader or load_configured
        self._nameservers: tuple[Nameserver, ...] = ()
        self._routes_where = f"[[{SECTION}.{ROUTES_KEY}]]"  #: for messages about the rules
        self.host_lookup: HostLookup = make_lookup(())  #: how host names are looked up (SRV first)
        self._rng = rng or random.Random()
        self._heap = heap or HeapPolicy()
        self._list_file: Path | None = None
        self._state_path: Path | None = None
        self.prober: Prober | None = None
        self.state = self._make_state()
        #: per-destination counters and drains, kept by key across reloads (``self.state`` changes)
        self.counters = DispatcherCounters(lambda key: self.state.runtime(key) is not None)
        self.drains = DrainWatch()
        self.admin_state = AdminState()
        #: what is shared with the other nodes of a cluster (nothing without [cluster])
        self.shared: SharedState = LocalState()
        self.reloader = self._make_reloader(None)
        self._dns: DnsRefresher | None = None

    # -- set-up ----------------------------------------------------------------------------

    @hookimpl
    def b2bua_addhooks(self, pluginmanager: pluggy.PluginManager) -> None:
        pluginmanager.add_hookspecs(hookspecs)

    @hookimpl
    def b2bua_configure(self, config: Config, app: Host) -> None:
        self.config = parse_dispatcher_config(config.plugin_section("dispatcher"), config.path)
        self.config = replace(self.config, db_url=resolve_sqlite_url(self.config.db_url, config.base_dir))
        self.sip = config.sip
        self.app = app
        self._list_file = config.resolve_path(self.config.list_file) if self.config.list_file else None
        self._routes_where = f"{config.path}: [[{SECTION}.{ROUTES_KEY}]]"
        # the DNS servers pjsip asks: destinations are looked up as calls will be (SRV first)
        self._nameservers = effective_nameservers(config.sip.nameservers)
        self.host_lookup = make_lookup(self._nameservers)
        if self._custom_loader is None:
            self._loader = partial(load_configured, nameservers=self._nameservers)  # start-up: checked below
        self.state = self._make_state()
        self._state_path = config.resolve_path(self.config.state_file) if self.config.state_file else None
        if self._state_path is not None and not self._state_path.parent.is_dir():
            # every operator disable would answer "Ok" and then fail to be kept, with one ERROR line
            raise ConfigError(f"{config.path}: [{SECTION}] state_file: folder {self._state_path.parent} does not exist")
        self.reloader = self._make_reloader(app)
        self._dns = DnsRefresher(app, self.reloader, self.config.dns_interval, self.host_lookup)
        if not self.config.routes:
            logger.info("dispatcher: no [[plugins.dispatcher.routes]]: every call goes to set 1, round robin")
        if app.hook is None:  # b2bua check-config: no running host, so check the destinations here
            check_config_destinations(self.config, self._list_file, self.sip, self._routes_where)

    @hookimpl
    def b2bua_startup(self, app: Host) -> None:
        # before the first call: loading here, on the loop, stalls nobody
        path = self._state_path
        self.shared = self._make_shared(app)
        self.admin_state = AdminState(StateWriter(path, app.run_blocking) if path is not None else None,
                                      on_operator=self.shared.operator_changed)
        self.admin_state.read()
        self.shared.attach(self.state, self.admin_state)
        self._heap.hold()  # a large list would otherwise trigger full collections over itself
        try:
            snapshot = self._checked(self._loader(self.config, self._list_file))
            missing_backups, missing = unloaded_sets(self.config.routes, snapshot.sets, self._routes_where)
            for message in missing:
                logger.warning("dispatcher: {}", message)
            if missing_backups:
                raise LoadError("; ".join(missing_backups) + ": a backup set is only needed in an outage; fix the"
                                " rule or add the destinations")
            self.state.swap(snapshot, keep_state=False, reason="startup", disabled=self.admin_state.disabled)
            self.admin_state.apply(self.state)
            self.shared.startup()
            self._heap.settle(self.state.size())
        finally:
            self._heap.release()
        self.prober = self._make_prober(app)
        self.prober.start()
        if self._dns is not None:
            self._dns.start()

    @hookimpl
    def b2bua_shutdown(self, app: Host) -> None:
        self.reloader.stop()
        if self._dns is not None:
            self._dns.stop()
        if self.prober is not None:
            self.prober.stop()
        self.shared.stop()
        self.admin_state.close()

    @hookimpl
    def b2bua_reload(self, app: Host) -> None:
        """SIGHUP: the same reload as ``dispatcher.reload``, without waiting for it."""
        if not self.reloader.reload("reload"):
            logger.warning("dispatcher: a {} is already running; this reload is ignored", self.reloader.busy)

    # -- control API and commands ----------------------------------------------------------

    @hookimpl
    def b2bua_register_rpc(self, registry: RpcRegistry) -> None:
        DispatcherRpc(self).register(registry)

    @hookimpl
    def b2bua_register_stats(self, registry: StatsRegistry) -> None:
        registry.add(self.statistics())

    @hookimpl
    def b2bua_cli_commands(self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        add_dispatcher_commands(subparsers)

    # -- calls -----------------------------------------------------------------------------

    @hookimpl(trylast=True)  # a user's router is asked first (docs/hooks.md "Call order")
    def b2bua_route_call(self, call: CallInfo) -> RoutePlan | Reject:
        plan = plan_call(self.config, self.state, call, self._rng, proxied=bool(self.sip.outbound_proxy))
        if isinstance(plan, RoutePlan):
            self.counters.selected(call.stash[ROUTE].keys[0])
        return plan

    @hookimpl
    def b2bua_leg_started(self, call: CallInfo, target: Target) -> None:
        key = dest_key_of(target)
        if key is not None:
            self.state.load_add(call.id, key)
            self.counters.attempt(key)
        failed_at = call.stash.get(FAILED_AT)
        if failed_at is not None:  # the call fails over from there to this target
            del call.stash[FAILED_AT]
            self.counters.failover(failed_at)

    @hookimpl
    def b2bua_leg_failed(self, call: CallInfo, failure: Failure) -> None:
        key = dest_key_of(failure.target)
        if key is None:
            return
        self.state.load_release(call.id, key)
        self.counters.failed(key, failure.kind.value, failure.code)
        if failure.kind is not FailureKind.CANCELLED:
            call.stash[FAILED_AT] = key
        if self.drains.pending:
            self.drains.check(self.state, (key,))

    @hookimpl
    def b2bua_call_answered(self, call: CallInfo, target: Target) -> None:
        key = dest_key_of(target)
        if key is not None:
            self.counters.answered(key)

    @hookimpl
    def b2bua_call_ended(self, call: CallInfo, cause: EndCause, answered: Target | None) -> None:
        released = self.state.release_call(call.id)
        if self.drains.pending and released:
            self.drains.check(self.state, released)

    @hookimpl
    def dispatcher_mark(self, target: Target, state: str, reason: str) -> None:
        key = dest_key_of(target)
        if key is None:
            return
        # Kamailio's ds_mark_dst() without a state: inactive, probing too in probing_mode 1
        letters = state or ("ip" if self.config.probing_mode == 1 else "i")
        try:
            found = self.state.mark(key, letters, reason)
        except ValueError as exc:
            logger.warning("dispatcher: dispatcher_mark for {}: {}", target.uri, exc)
            return
        if not found:
            logger.debug("dispatcher: dispatcher_mark: {} is no longer loaded", target.uri)

    # -- for tests and in-process callers (loop thread) --------------------------------------

    def try_exclusive(self) -> bool:
        """Hold off reloads for an in-memory change; False while one runs. Release with
        :meth:`end_exclusive`."""
        return self.reloader.claim()

    def end_exclusive(self) -> None:
        """Release what :meth:`try_exclusive` took."""
        self.reloader.unclaim()

    def flush_admin_state(self, timeout: float = 5.0) -> bool:
        """Wait for pending state-file writes; False on timeout."""
        return self.admin_state.flush(timeout)

    def statistics(self) -> DispatcherStats:
        """The ``dispatcher`` statistics group over the current state."""
        return DispatcherStats(self.state, self.counters, self.drains)

    # -- internals -------------------------------------------------------------------------

    def _checked(self, snapshot: Snapshot) -> Snapshot:
        """``snapshot`` if the host can honour every destination's socket, proxy and credential
        attributes; else :class:`~plugins.dispatcher.outbound.OutboundError` naming them."""
        check_outbound(snapshot, self.sip, rows=self._list_file is None, defaults=self.config.send_defaults)
        return snapshot

    def _make_state(self) -> DispatcherState:
        return DispatcherState(
            policy=self.config.selection_policy(),
            rng=self._rng,
            listener=self._on_change,
            latency_factory=seed_latency,
        )

    def _make_reloader(self, app: Host | None) -> Reloader:
        custom = self._custom_loader
        source: Source = (
            ConfiguredSource(self.config, self._list_file, self.sip, self._nameservers)  # checked in the child
            if custom is None
            else LoaderSource(lambda config, path: self._checked(custom(config, path)), self.config, self._list_file)
        )
        return Reloader(
            app,
            self.state,
            source=source,
            keep_state=self.config.keep_state_on_reload,
            disabled=lambda: self.admin_state.disabled,
            after_install=self._after_install,
            heap=self._heap,
            on_finished=lambda reason, error: self.counters.reload_done(reason, error is None),
        )

    def _after_install(self) -> None:
        """After a reload's swap: the operator's disables back, counters and drains of the new
        list, the cluster told, and a word about the sets the rules name that are gone (a reload is not refused for
        them: the data is the truth)."""
        self.admin_state.apply(self.state)
        self.counters.prune()  # destinations gone from the list take their counters along
        self.drains.check(self.state)
        self.shared.after_load()
        backups, own = unloaded_sets(self.config.routes, self.state.snapshot.sets, self._routes_where)
        for message in own + backups:
            logger.warning("dispatcher: after the reload, {}", message)

    def _make_prober(self, app: Host) -> Prober:
        cfg = self.config
        return Prober(
            self.state,
            send=app.send_request,
            call_later=app.call_later,
            interval=cfg.ping_interval,
            method=cfg.ping_method,
            from_uri=cfg.ping_from,
            timeout=cfg.ping_timeout,
            mode=cfg.probing_mode,
            probing_threshold=cfg.probing_threshold,
            inactive_threshold=cfg.inactive_threshold,
            reply_codes=parse_reply_codes(cfg.ping_reply_codes),
            latency_stats=cfg.ping_latency_stats,
            alpha_per_mille=cfg.latency_estimator_alpha,
            active=cfg.ping_active,
            counters=self.counters,
            owns=None if self.shared.kind == "local" else self.shared.probes,
            send_defaults=cfg.send_defaults,
        )

    def _make_shared(self, app: Host) -> SharedState:
        cluster = getattr(app, "cluster", None)
        if cluster is None:
            return LocalState()
        from plugins.dispatcher.redisstate import RedisState

        interval = self.config.ping_interval
        return RedisState(cluster, ping_interval=interval,
                          prober_active=lambda: self.prober is not None and self.prober.active and interval > 0,
                          call_soon=app.call_soon_threadsafe, call_later=app.call_later, monotonic=time.monotonic)

    def _on_change(self, dest: Destination, old: int | None, new: int, reason: str) -> None:
        if old is not None and is_usable(old) != is_usable(new):
            self.counters.state_changed(dest.key)
        if self.app is not None:
            self.app.hook.dispatcher_dst_state_changed(dest=dest, old=old, new=new, reason=reason)
