"""The dispatcher plugin: Kamailio's ``dispatcher`` module as B2BUA hooks.

Thin by design: the hooks delegate to :mod:`~plugins.dispatcher.routes` (which rule),
:mod:`~plugins.dispatcher.runtime` (sets, state, selection, call load) and
:mod:`~plugins.dispatcher.storage` (loading). Enable it with ``[plugins] enabled =
["dispatcher"]`` and configure ``[plugins.dispatcher]`` (see :mod:`plugins.dispatcher.config`).

Per call it routes with the first matching rule's set and algorithm: the chosen destination
and the failover list become the plan's targets (parallel for algorithm 12), each carrying
``target.data["dispatcher"]`` = ``{"setid", "uri", "key", "duid", "attrs", "row_id"}`` so
other plugins (failover) can tell which destination a leg went to. Call load (algorithm
10) follows the legs: a slot is taken when a leg to a destination starts and given back
when that leg fails or the call ends.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy
from loguru import logger

from b2bua import hookimpl
from b2bua.api import DialMode, Reject, RoutePlan, StashKey, Target
from b2bua.config import SipConfig
from b2bua.sip import retry_after
from plugins.dispatcher import hookspecs, statefile
from plugins.dispatcher.config import DispatcherConfig, parse_dispatcher_config, resolve_sqlite_url
from plugins.dispatcher.model import Destination, DestinationSet, Snapshot
from plugins.dispatcher.outbound import check_outbound, outbound_of
from plugins.dispatcher.probing import Prober
from plugins.dispatcher.replycodes import parse_reply_codes
from plugins.dispatcher.routes import match_route
from plugins.dispatcher.runtime import DestKey, DispatcherState
from plugins.dispatcher.selection import PARALLEL

if TYPE_CHECKING:
    import argparse

    from b2bua.api import CallInfo, EndCause, Failure, Host
    from b2bua.config import Config
    from b2bua.rpc import RpcRegistry

#: a function that loads the destinations (blocking); the default reads the configured source
Loader = Callable[[DispatcherConfig, "Path | None"], Snapshot]

DATA_KEY = "dispatcher"  #: the key of ``Target.data`` / ``RoutePlan.data`` this plugin fills
#: seconds a control-method reload waits for the loop thread to swap the new destinations in
RELOAD_LOOP_TIMEOUT = 10.0


class ReloadBusy(Exception):
    """Another reload (or an in-memory add/remove) is running (Kamailio: "Ongoing reload")."""


class ReloadFailed(Exception):
    """Loading the destinations failed; the message names the cause (file:line, row id, URL)."""


@dataclass(frozen=True)
class CallRoute:
    """How the dispatcher routed one call (``call.stash[ROUTE]``)."""

    rule: int  #: index of the matched ``[[plugins.dispatcher.routes]]`` rule; -1: the implicit one
    setid: int
    alg: int
    keys: tuple[DestKey, ...]  #: destinations offered, in order


ROUTE: StashKey[CallRoute] = StashKey("dispatcher.route")


def load_configured(config: DispatcherConfig, list_file: Path | None, resolve: bool = True) -> Snapshot:
    """Read the configured source: ``list_file`` when set, else ``db_url`` (blocking).

    :param resolve: resolve host names (off for a simulation, which needs no addresses).
    """
    # imported here so the routing core (and its tests) does not need the storage stack
    from plugins.dispatcher.checks import check_loaded
    from plugins.dispatcher.sqlstore import TableNames
    from plugins.dispatcher.storage import load_snapshot

    table = TableNames(
        table=config.table_name,
        setid=config.setid_col,
        destination=config.destination_col,
        flags=config.flags_col,
        priority=config.priority_col,
        attrs=config.attrs_col,
        description=config.description_col,
    )
    snapshot = load_snapshot(
        list_file=list_file,
        db_url=None if list_file is not None else config.db_url,
        table=table,
        resolve=resolve,
        skip_unresolvable=config.dns_skip_unresolvable,
    )
    return check_loaded(snapshot, config, list_file)  # empty list file, duplicates, weights


def refresh_addresses(snapshot: Snapshot) -> Snapshot | None:
    """Resolve every destination's host again (blocking); None when no address changed.

    The set order is kept as it is (no re-sorting), and a host that no longer resolves keeps
    its previous address: a DNS hiccup must not take a gateway out of service.
    """
    from plugins.dispatcher.resolve import resolve_destinations

    changed = False
    sets: dict[int, DestinationSet] = {}
    for setid, dset in snapshot.sets.items():
        fresh = {d.key: d for d in resolve_destinations(dset.destinations, skip_unresolvable=True)}
        entries = []
        for old in dset.destinations:
            new = fresh.get(old.key, old)
            if new.address != old.address:
                changed = True
                logger.info("dispatcher: {} now resolves to {} (was {})", old.uri, new.address, old.address)
            entries.append(new)
        sets[setid] = DestinationSet(setid, tuple(entries))
    return Snapshot(sets, snapshot.source) if changed else None


def seed_latency(dest: Destination) -> Any:
    """A new destination's latency statistics: seeded from its ``latency`` attribute, else None."""
    if dest.attrs.latency <= 0:
        return None
    from plugins.dispatcher.latency import seeded

    return seeded(float(dest.attrs.latency))


def dest_key_of(target: Target) -> DestKey | None:
    """The destination key a dispatcher-made target carries, or None for other targets."""
    info = target.data.get(DATA_KEY) if isinstance(target.data, Mapping) else None
    key = info.get("key") if isinstance(info, Mapping) else None
    if not (isinstance(key, tuple) and len(key) == 2):
        return None
    return (int(key[0]), str(key[1]))


def make_target(dest: Destination) -> Target:
    """The :class:`Target` for one destination, with its identity in ``data["dispatcher"]``."""
    return Target(
        uri=dest.uri,
        data={
            DATA_KEY: {
                "setid": dest.setid,
                "uri": dest.uri,
                "key": dest.key,
                "duid": dest.attrs.duid,
                "attrs": dict(dest.attrs.extra),
                "row_id": dest.row_id,
            }
        },
        outbound=outbound_of(dest.attrs),
    )


class DispatcherPlugin:
    """Destination sets, Kamailio's selection algorithms, state and call load.

    :param loader: loads the destinations; tests pass one returning a ready snapshot.
    :param rng: randomness for algorithm 6 and the weight tables.
    """

    def __init__(self, loader: Loader | None = None, rng: random.Random | None = None) -> None:
        self.config = DispatcherConfig()
        self.sip = SipConfig()  #: the host's [sip]: listeners, socket names, credentials
        self.app: Host | None = None
        self._loader: Loader = loader or load_configured
        self._rng = rng or random.Random()
        self._list_file: Path | None = None
        #: held from the start of a reload until the loop thread is done with its result, so
        #: reloads (SIGHUP, dispatcher.reload) never overlap and never swap out of order
        self._reload_lock = threading.Lock()
        self.prober: Prober | None = None
        self.state = self._make_state()
        #: entries an operator disabled (set_state d), kept in the state file; loop thread only
        self.admin_disabled: dict[DestKey, str] = {}
        self._state_writer: statefile.StateWriter | None = None

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
        self.state = self._make_state()
        state_path = config.resolve_path(self.config.state_file) if self.config.state_file else None
        self._state_writer = statefile.StateWriter(state_path) if state_path is not None else None
        if not self.config.routes:
            logger.info("dispatcher: no [[plugins.dispatcher.routes]]: every call goes to set 1, round robin")
        if app.hook is None:  # b2bua check-config: no running host, so check the destinations here
            from plugins.dispatcher.checks import check_config_destinations

            check_config_destinations(self.config, self._list_file, self.sip)

    @hookimpl
    def b2bua_startup(self, app: Host) -> None:
        self.app = app
        self.admin_disabled = self._read_admin_state()
        self.state.swap(self._checked(self._loader(self.config, self._list_file)), keep_state=False,
                        reason="startup")
        self._apply_admin_state()
        self.prober = self._make_prober(app)
        self.prober.start()
        if self.config.dns_interval > 0:
            app.call_later(self.config.dns_interval, self._dns_tick)

    def _dns_tick(self) -> None:
        """Every ``dns_interval``: re-resolve host names off the loop (Kamailio's ds_dns_mode 4)."""
        app = self.app
        assert app is not None
        app.call_later(self.config.dns_interval, self._dns_tick)
        if not self._reload_lock.acquire(blocking=False):
            return  # a reload is running: it resolves too
        snapshot = self.state.snapshot

        def work() -> None:
            try:
                fresh = refresh_addresses(snapshot)
            except Exception as exc:
                logger.warning("dispatcher: re-resolving destinations failed: {}", exc)
                fresh = None
            app.call_soon_threadsafe(lambda: self._reload_done(fresh, "dns"))

        threading.Thread(target=work, name="dispatcher-dns", daemon=True).start()

    @hookimpl
    def b2bua_shutdown(self, app: Host) -> None:
        if self.prober is not None:
            self.prober.stop()
        if self._state_writer is not None:
            self._state_writer.close()

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
        )

    @hookimpl
    def b2bua_reload(self, app: Host) -> None:
        """SIGHUP: re-read the source on a thread; the new snapshot is swapped in on the loop.

        The same path as ``dispatcher.reload`` (:meth:`reload`), without waiting for it.
        """
        if not self._reload_lock.acquire(blocking=False):
            logger.warning("dispatcher: a reload is already running; this one is ignored")
            return

        def work() -> None:
            try:
                self._load_and_swap("reload", wait=False)
            except ReloadFailed:
                pass  # logged; the current destinations stay

        threading.Thread(target=work, name="dispatcher-reload", daemon=True).start()

    def reload(self, reason: str = "reload") -> Snapshot:
        """Re-read the source and swap it in; returns once the loop thread has done so.

        Blocks (file, database, DNS): call it off the loop thread (``dispatcher.reload`` runs
        on a control thread).

        :raises ReloadBusy: another reload is running.
        :raises ReloadFailed: the load failed (the current destinations stay), or the loop
            thread did not take the result within :data:`RELOAD_LOOP_TIMEOUT` seconds.
        """
        if not self._reload_lock.acquire(blocking=False):
            raise ReloadBusy("Ongoing reload")
        return self._load_and_swap(reason, wait=True)

    def _load_and_swap(self, reason: str, *, wait: bool) -> Snapshot:
        """Load with the reload lock held; the lock is released on the loop, by
        :meth:`_reload_done`, once the result (or the failure) got there."""
        app = self.app
        assert app is not None, "reload before b2bua_configure"

        def hand_over(done: Callable[[], None]) -> None:
            if not wait:
                app.call_soon_threadsafe(done)
                return
            try:
                app.run_on_loop(done, RELOAD_LOOP_TIMEOUT)
            except TimeoutError:
                # the callback is still queued: it swaps and releases the lock when the loop runs
                raise ReloadFailed(
                    f"the loop thread did not take the new destinations within {RELOAD_LOOP_TIMEOUT:g}s;"
                    " they are swapped in when it does"
                ) from None

        try:
            snapshot = self._checked(self._loader(self.config, self._list_file))
        except BaseException as exc:
            hand_over(lambda: self._reload_done(None, reason))
            if not isinstance(exc, Exception):
                raise
            cause = str(exc) or type(exc).__name__
            logger.error("dispatcher: reload failed, keeping the current destinations: {}", cause)
            raise ReloadFailed(cause) from exc
        hand_over(lambda: self._reload_done(snapshot, reason))
        return snapshot

    def _reload_done(self, snapshot: Snapshot | None, reason: str = "reload") -> None:
        try:
            if snapshot is not None:
                # a DNS refresh changes addresses only: runtime state always stays
                self.apply_snapshot(snapshot, reason=reason, keep_state=True if reason == "dns" else None)
        finally:
            self._reload_lock.release()

    def apply_snapshot(self, snapshot: Snapshot, reason: str = "reload", keep_state: bool | None = None) -> None:
        """Swap in a freshly loaded snapshot (loop thread), keeping state as configured (or as
        ``keep_state`` says); the entries an operator disabled (state file) stay disabled."""
        keep = self.config.keep_state_on_reload if keep_state is None else keep_state
        self.state.swap(snapshot, keep_state=keep, reason=reason)
        self._apply_admin_state()

    def try_exclusive(self) -> bool:
        """Take the reload lock for an in-memory change (``dispatcher.add``/``remove``), so it
        is not lost to a reload running meanwhile; False when a reload runs. Release with
        :meth:`end_exclusive`."""
        return self._reload_lock.acquire(blocking=False)

    def end_exclusive(self) -> None:
        """Release what :meth:`try_exclusive` took."""
        self._reload_lock.release()

    # -- admin state (state file) ----------------------------------------------------------

    def note_admin_state(self, dests: list[Destination], letters: str) -> None:
        """An operator set ``dests`` to ``letters`` (loop thread): D entries go into the state
        file, any other state takes them out; the file is written off the loop."""
        disable = letters.strip().lower()[:1] in ("d", "2")
        updated = statefile.with_entries(self.admin_disabled, [(d.setid, d.uri) for d in dests], disable)
        self._set_admin_disabled(updated)

    def forget_admin_state(self, setid: int, uri: str) -> None:
        """The entry was removed from memory (``dispatcher.remove``): drop it from the file."""
        updated = statefile.with_entries(self.admin_disabled, [(setid, uri)], disable=False)
        self._set_admin_disabled(updated)

    def _set_admin_disabled(self, updated: dict[DestKey, str]) -> None:
        if updated == self.admin_disabled:
            return
        self.admin_disabled = updated
        if self._state_writer is not None:
            self._state_writer.save(updated)

    def flush_admin_state(self, timeout: float = 5.0) -> bool:
        """Wait for pending state-file writes (tests, shutdown); False on timeout."""
        return self._state_writer.flush(timeout) if self._state_writer is not None else True

    def _read_admin_state(self) -> dict[DestKey, str]:
        if self._state_writer is None:
            return {}
        try:
            found = statefile.read_state_file(self._state_writer.path)
        except statefile.StateFileError as exc:
            # never a reason not to start: the operator's disables are lost, loudly
            logger.error("dispatcher: ignoring the admin state file: {}", exc)
            return {}
        if found:
            logger.info("dispatcher: {} entries disabled by an operator ({})", len(found), self._state_writer.path)
        return found

    def _apply_admin_state(self) -> None:
        """After a load: put the operator-disabled entries back in D; forget those no longer loaded."""
        kept, dropped = statefile.split_loaded(self.admin_disabled, lambda key: self.state.destination(key) is not None)
        for (setid, _), uri in dropped.items():
            logger.info("dispatcher: set {} {} is no longer loaded: its admin disable is forgotten", setid, uri)
        for setid, key in kept:
            self.state.set_state(setid, key, "d", reason="disabled by an operator (state file)")
        self._set_admin_disabled(kept)

    # -- control API -----------------------------------------------------------------------

    @hookimpl
    def b2bua_register_rpc(self, registry: RpcRegistry) -> None:
        from plugins.dispatcher.rpc import DispatcherRpc

        DispatcherRpc(self).register(registry)

    @hookimpl
    def b2bua_cli_commands(self, subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        from plugins.dispatcher.cli import add_dispatcher_commands

        add_dispatcher_commands(subparsers)

    # -- calls -----------------------------------------------------------------------------

    @hookimpl(trylast=True)  # a user's router is asked first (docs/hooks.md "Call order")
    def b2bua_route_call(self, call: CallInfo) -> RoutePlan | Reject:
        log = logger.bind(call_id=call.call_id)
        matched = match_route(self.config.effective_routes, call)
        if matched is None:
            log.info("dispatcher: no route rule matches {} {}", call.method, call.request_uri)
            return self._no_destination()
        index, route = matched
        if not self.state.has_set(route.set):
            log.warning("dispatcher: rule {} names set {}, which is not loaded", index, route.set)
            return self._no_destination()
        dests = self.state.select(route.set, route.alg, call, route.limit, self._rng)
        if not dests:
            log.warning("dispatcher: set {} has no usable destination (algorithm {})", route.set, route.alg)
            return self._no_destination()
        rule = index if self.config.routes else -1
        call.stash[ROUTE] = CallRoute(rule, route.set, route.alg, tuple(d.key for d in dests))
        log.debug(
            "dispatcher: rule {} set {} alg {} -> {}", rule, route.set, route.alg, ", ".join(d.uri for d in dests)
        )
        mode = DialMode.PARALLEL if route.alg == PARALLEL else DialMode.SERIAL
        return RoutePlan(
            tuple(make_target(d) for d in dests),
            mode,
            data={DATA_KEY: {"setid": route.set, "alg": route.alg, "rule": rule}},
        )

    @hookimpl
    def b2bua_leg_started(self, call: CallInfo, target: Target) -> None:
        key = dest_key_of(target)
        if key is not None:
            self.state.load_add(call.id, key)

    @hookimpl
    def b2bua_leg_failed(self, call: CallInfo, failure: Failure) -> None:
        key = dest_key_of(failure.target)
        if key is not None:
            self.state.load_release(call.id, key)

    @hookimpl
    def b2bua_call_ended(self, call: CallInfo, cause: EndCause, answered: Target | None) -> None:
        self.state.release_call(call.id)

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

    # -- internals -------------------------------------------------------------------------

    def _checked(self, snapshot: Snapshot) -> Snapshot:
        """``snapshot`` if the host can honour every destination's socket, proxy and credential
        attributes; else :class:`~plugins.dispatcher.outbound.OutboundError` naming them."""
        check_outbound(snapshot, self.sip, rows=self._list_file is None)
        return snapshot

    def _make_state(self) -> DispatcherState:
        return DispatcherState(
            policy=self.config.selection_policy(),
            rng=self._rng,
            listener=self._on_change,
            latency_factory=seed_latency,
        )

    def _on_change(self, dest: Destination, old: int | None, new: int, reason: str) -> None:
        if self.app is not None:
            self.app.hook.dispatcher_dst_state_changed(dest=dest, old=old, new=new, reason=reason)

    def _no_destination(self) -> Reject:
        cfg = self.config
        headers = retry_after(cfg.retry_after)
        return Reject(cfg.no_destination_code, cfg.no_destination_reason, headers)
