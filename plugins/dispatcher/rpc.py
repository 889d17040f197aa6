"""The dispatcher's control methods, with Kamailio's names, parameters and answers.

``dispatcher.list``, ``.reload``, ``.set_state``, ``.set_duid_state``, ``.ping_active``,
``.add``, ``.remove`` and ``.hash`` behave as Kamailio's RPC commands do (same result
structure, same "Ok. ..." texts, faults with code 500 and Kamailio's fault text), with
these differences, all on purpose:

* a failure says why after Kamailio's text (``Reload Failed: dispatcher.list:3: ...``);
* an unknown set or URI is an error for ``set_state`` (Kamailio ignores ``all`` on a
  missing set);
* ``dispatcher.list`` always shows ``RUNTIME{DLGLOAD}``: the B2BUA counts every leg's load;
  ``RUNTIME{DRAINING}`` while a drain waits for an entry's calls; and a compact ``STATS``
  block per entry (selected, attempts, answered, failed, failovers);
* a ``set_state d`` is kept in the admin state file (see :mod:`plugins.dispatcher.statefile`).

Methods of its own: ``dispatcher.stats`` (every counter of :mod:`plugins.dispatcher.counters`),
``dispatcher.stats_reset``, ``dispatcher.drain`` and ``dispatcher.undrain``
(:mod:`plugins.dispatcher.drain`).

Methods that block or whose work grows with the list (reload, add: file, database, DNS;
list: rendering every entry) run on a control thread (``on_loop=False``) and take from or
hand to the loop thread only what is cheap there (``app.run_on_loop``); the others run on
the loop thread.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from loguru import logger

from b2bua.core_rpc import seconds_param, wait_until
from b2bua.loop import Task
from b2bua.rpc import INVALID_PARAMS, SERVER_ERROR, RawJson, RpcError, RpcRegistry
from plugins.dispatcher.adminstate import AdminState
from plugins.dispatcher.attrs import parse_attrs
from plugins.dispatcher.config import DispatcherConfig
from plugins.dispatcher.counters import DestCounters, DispatcherCounters
from plugins.dispatcher.dnslookup import HostLookup, Resolution
from plugins.dispatcher.drain import DrainWatch
from plugins.dispatcher.hashing import ds_get_hash
from plugins.dispatcher.latency import rpc_block
from plugins.dispatcher.listfile import check_flags
from plugins.dispatcher.metrics import DispatcherStats, list_stats
from plugins.dispatcher.model import Destination, state_letters
from plugins.dispatcher.probing import Prober
from plugins.dispatcher.reloader import ReloadBusy, Reloader, ReloadFailed
from plugins.dispatcher.resolve import LoadError, Resolver, normalize_uri, parse_uri, resolve_destinations
from plugins.dispatcher.runtime import DestKey, DestRuntime, DispatcherState, ListingSource, parse_state_letters
from plugins.dispatcher.shared import SharedState

if TYPE_CHECKING:
    from b2bua.api import Host


class Dispatcher(Protocol):
    """What the control methods use of the dispatcher (the plugin has it all)."""

    config: DispatcherConfig
    app: Host | None
    state: DispatcherState
    reloader: Reloader
    admin_state: AdminState
    prober: Prober | None
    host_lookup: HostLookup  #: looks destination host names up as calls will (SRV first)
    counters: DispatcherCounters
    drains: DrainWatch
    shared: SharedState

    def statistics(self) -> DispatcherStats: ...


T = TypeVar("T")

#: Kamailio answers every dispatcher fault with code 500; scripts match on it
FAULT = 500
#: seconds a control method waits for the loop thread to take its request
LOOP_TIMEOUT = 10.0
#: seconds ``dispatcher.list`` waits for its listing (100,000 entries take a few seconds)
LIST_WAIT = 120.0
INT_MAX = 2**31 - 1
LIST_MODES = ("short", "full")

RELOADED = "Ok. Dispatcher successfully reloaded."
STATE_UPDATED = "Ok. Dispatcher state updated."
ADDED = "Ok. Dispatcher destination added."
REMOVED = "Ok. Dispatcher destination removed."


def int_param(name: str, value: Any, low: int = -INT_MAX - 1, high: int = INT_MAX) -> int:
    """A JSON-RPC param that must be an integer (a decimal string is accepted too).

    :raises RpcError: INVALID_PARAMS, naming the param and what it got.
    """
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        number = int(value.strip())
    if number is None:
        raise RpcError(f"Invalid Parameters: {name} must be an integer, got {value!r}", INVALID_PARAMS)
    if not low <= number <= high:
        raise RpcError(f"Invalid Parameters: {name} must be {low}..{high}, got {number}", INVALID_PARAMS)
    return number


def str_param(name: str, value: Any) -> str:
    """A JSON-RPC param read as text (numbers are taken as written, as Kamailio's ``S`` scan does)."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise RpcError(f"Invalid Parameters: {name} must be a string, got {value!r}", INVALID_PARAMS)


def state_param(text: str) -> str:
    """A ``set_state`` state as Kamailio reads it, checked: ``a|i|t|d`` (or ``1|0|3|2``), then
    ``p`` for probing or ``x`` for not (the letters ``dispatcher.list`` shows, so ``dx`` and
    ``ap`` both work). Returns the letters without the ``x``.

    :raises RpcError: 500 "Unknown State Value" saying what is accepted.
    """
    letters = text.strip().lower()
    if len(letters) == 2 and letters[1] == "x":
        letters = letters[0]
    try:
        parse_state_letters(letters)
    except ValueError:
        raise RpcError(f"Unknown State Value: {text!r}: expected a, i, t or d (or 1, 0, 3, 2), "
                       "optionally followed by p (probing) or x (not probing)", FAULT) from None
    return letters


def listing_steps(source: ListingSource, mode: str = "", latency_stats: bool = False,
                  counters: Mapping[DestKey, DestCounters] | None = None,
                  draining: Collection[DestKey] = (),
                  cluster: Callable[[DestKey], dict[str, Any] | None] | None = None) -> Task[bytearray]:
    """``dispatcher.list``'s answer as JSON, built as a loop task (a step per entry):
    ``{NRSETS, RECORDS: [{SET: {ID, TARGETS: [{DEST: {...}}]}}]}``.

    :param source: what :meth:`DispatcherState.listing_source` took (non-empty).
    :param mode: ``""`` (normal), ``"short"`` (no ATTRS) or ``"full"`` (adds HOST, IPADDR,
        PORT, PROTO, a host name's DNSTIME_SEC and DNS answer, and ATTRS even when empty).
    :param latency_stats: ``ping_latency_stats``: add each entry's LATENCY block.
    :param counters: the entries' counters (the compact ``STATS`` block; None: no block).
    :param draining: entries whose drain waits for their calls (``RUNTIME.DRAINING``).
    :param cluster: in a cluster, each entry's CLUSTER block (its prober, every node's load).
    """
    sets, runtime = source.snapshot.sets, source.runtime
    out = bytearray(b'{"NRSETS":%d,"RECORDS":[' % len(sets))
    for n, setid in enumerate(sorted(sets)):
        out += b'%s{"SET":{"ID":%d,"TARGETS":[' % (b"," if n else b"", setid)
        for i, dest in enumerate(sets[setid].destinations):
            if i:
                out += b","
            entry = list_entry(dest, runtime.get(dest.key), mode, latency_stats)
            if dest.key in draining:
                entry["RUNTIME"]["DRAINING"] = 1
            if counters is not None:
                entry["STATS"] = list_stats(counters.get(dest.key))
            if cluster is not None:
                entry["CLUSTER"] = cluster(dest.key)
            out += _json({"DEST": entry})
            yield None
        out += b"]}}"
    out += b"]}"
    return out


def list_entry(dest: Destination, rt: DestRuntime | None, mode: str, latency_stats: bool) -> dict[str, Any]:
    """One ``DEST`` of ``dispatcher.list`` (``rt`` None: removed since the listing started)."""
    flags = rt.flags if rt is not None else dest.flags
    entry: dict[str, Any] = {"URI": dest.uri, "FLAGS": state_letters(flags), "PRIORITY": dest.priority}
    if mode == "full":
        entry.update(_address(dest))
    if mode != "short" and (dest.attrs.body or mode == "full"):
        a = dest.attrs
        entry["ATTRS"] = {
            "BODY": a.body,
            "DUID": a.duid,
            "PROBING_COUNT": rt.probe_count if rt is not None else 0,
            "MAXLOAD": a.maxload,
            "WEIGHT": a.weight,
            "RWEIGHT": a.rweight,
            "SOCKET": a.socket,
            "SOCKNAME": a.sockname,
            "OBPROXY": a.obproxy,
        }
    if latency_stats:
        entry["LATENCY"] = rpc_block(rt.latency if rt is not None else None)
    entry["RUNTIME"] = {"DLGLOAD": rt.load if rt is not None else 0}
    return entry


def _json(value: Any) -> bytes:
    # as the control API encodes results: compact, UTF-8, no NaN
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _address(dest: Destination) -> dict[str, Any]:
    try:
        uri = parse_uri(dest.uri)
        host, port, proto = uri.host, uri.effective_port, uri.transport
    except ValueError:  # loaded entries were checked; keep the listing working regardless
        host, port, proto = "", 0, ""
    ip = ""
    if dest.address is not None:
        ip, port, proto = dest.address
    entry: dict[str, Any] = {"HOST": host, "IPADDR": ip, "PORT": port, "PROTO": proto}
    if dest.dns is not None:
        entry["DNSTIME_SEC"] = int(dest.dns.resolved_at)
        entry["DNS"] = dns_block(dest.dns)
    return entry


def dns_block(answer: Resolution) -> dict[str, Any]:
    """A host name's answer for ``dispatcher.list full``: the SRV targets (or the name) in the
    order a sender tries them, with their addresses; TTL in seconds (0: not known)."""
    return {
        "QUERY": answer.query,
        "TYPE": "SRV" if answer.srv else "A",
        "TTL": int(answer.ttl),
        "TARGETS": [{"HOST": t.host, "PORT": t.port, "PRIORITY": t.priority, "WEIGHT": t.weight,
                     "ADDRESSES": list(t.addresses)} for t in answer.targets],
    }


def hash_result(nslots: int, val1: str, val2: str | None = None) -> dict[str, int]:
    """``dispatcher.hash``'s answer: Kamailio's ``ds_get_hash(val1, val2)`` and its slot."""
    hashid = ds_get_hash(val1.encode("utf-8"), val2.encode("utf-8") if val2 is not None else None)
    return {"hashid": hashid, "slot": hashid % nslots if nslots > 0 else 0}


class DispatcherRpc:
    """The ``dispatcher.*`` control methods over one dispatcher (the plugin).

    :param plugin: the dispatcher (:class:`Dispatcher`: the plugin).
    :param resolver: ``getaddrinfo``-compatible, for ``dispatcher.add`` (tests pass a stand-in);
        None: the plugin's ``host_lookup`` (the configured nameservers).
    """

    def __init__(self, plugin: Dispatcher, resolver: Resolver | None = None) -> None:
        self.plugin = plugin
        self._resolver = resolver

    def register(self, registry: RpcRegistry) -> None:
        """Add every method to ``registry``."""
        registry.add("dispatcher.list", self.list_sets,
                     "The destination sets with each entry's state (FLAGS: AP, AX, IP, TX, DX, ...), "
                     "priority, attributes, latency and active calls (DLGLOAD). Mode 'short' leaves out "
                     "ATTRS; 'full' adds the resolved address (HOST, IPADDR, PORT, PROTO) and, for a host name, "
                     "its DNS answer (SRV targets with priority, weight and addresses; TTL).", on_loop=False)
        registry.add("dispatcher.reload", self.reload,
                     "Re-read the destinations from the list file or database. On failure the current "
                     "destinations stay and the error names the cause.", on_loop=False)
        registry.add("dispatcher.set_state", self.set_state,
                     "Set the state of the entry <uri> (or 'all' entries) of set <setid>: a (active), i "
                     "(inactive), t (trying) or d (disabled), optionally followed by p (probing) or x (not); "
                     "1, 0, 3, 2 also work. A 'd' is kept in the admin state file across reloads and restarts.")
        registry.add("dispatcher.set_duid_state", self.set_duid_state,
                     "Like dispatcher.set_state, for the entries of set <setid> whose duid attribute is <duid>.")
        registry.add("dispatcher.ping_active", self.ping_active,
                     "Without a value: whether keepalives are sent (OldPingState). With 0 or 1: stop or "
                     "resume them (not kept across restarts).")
        registry.add("dispatcher.add", self.add,
                     "Add a destination to set <setid> in memory (lost on reload; edit the list file or "
                     "table, e.g. 'b2bua dispatcher add', to keep it). The host is resolved first.",
                     on_loop=False)
        registry.add("dispatcher.remove", self.remove,
                     "Remove the destination <uri> from set <setid> in memory (a reload brings it back if "
                     "the list file or table still has it).")
        registry.add("dispatcher.stats", self.stats,
                     "Per destination (of set <setid>, entry <uri>): times selected, attempts, answered, failed by "
                     "status class and code, local timeouts, send errors, cancelled forks, failovers away, "
                     "keepalives sent/failed and their round-trip time, state changes, ASR; and reloads.",
                     on_loop=False)
        registry.add("dispatcher.stats_reset", self.stats_reset,
                     "Zero the counters of every destination (and the reload counts), of set <setid>, or of its "
                     "entry <uri>.")
        registry.add("dispatcher.drain", self.drain,
                     "Drain the entry <uri> (or 'all') of set <setid>: state d (no new calls; kept in the admin "
                     "state file), its calls go on and the log says when the last one ended. With <wait> seconds "
                     "(at most 3600), answer once they did or the time is up.", on_loop=False)
        registry.add("dispatcher.undrain", self.undrain,
                     "End the drain of the entry <uri> (or 'all') of set <setid>: active again (ap while "
                     "keepalives run, so a probe confirms it).")
        registry.add("dispatcher.cluster", self.cluster_status,
                     "What this node shares with the cluster ([cluster]): redis or local, the nodes sending "
                     "keepalives, the shards this node probes, changes not sent yet, the other nodes' calls.")
        registry.add("dispatcher.hash", self.hash_values,
                     "Kamailio's dispatcher hash of <val1> (and <val2>) and its slot modulo <nslots>; "
                     "for a URI pass the user and host[:port].", on_loop=False)

    # -- methods (names and parameters are what `b2bua rpc help` shows) ---------------------

    def list_sets(self, mode: str | None = None) -> RawJson:
        """``dispatcher.list [short|full]`` (control thread; the listing is built on the loop a
        slice at a time, and waited for here)."""
        text = "" if mode is None else str_param("mode", mode).strip().lower()
        if text and text not in LIST_MODES:
            raise RpcError(f"Invalid Parameters: mode must be short or full, got {mode!r}", INVALID_PARAMS)
        plugin = self.plugin

        def start() -> Future[bytearray]:
            source = plugin.state.listing_source()
            if not source.snapshot.sets:
                raise RpcError("No Destination Sets", FAULT)
            assert plugin.app is not None
            shared = plugin.shared if plugin.shared.kind != "local" else None
            return plugin.app.run_task(listing_steps(source, text, plugin.config.ping_latency_stats,
                                                     plugin.counters.by_key, plugin.drains.pending,
                                                     shared.describe if shared is not None else None))

        listing = self._on_loop(start)
        try:
            return RawJson(listing.result(LIST_WAIT))
        except TimeoutError:
            raise RpcError(f"Timeout: the listing was not done within {LIST_WAIT:g}s", SERVER_ERROR) from None

    def reload(self) -> str:
        """``dispatcher.reload`` (control thread; waits until the new destinations are in use)."""
        try:
            self.plugin.reloader.wait_for_reload("reload")
        except ReloadBusy:
            raise RpcError("Ongoing reload", FAULT) from None
        except ReloadFailed as exc:
            raise RpcError(f"Reload Failed: {exc}", FAULT) from None
        return RELOADED

    def set_state(self, state: str, setid: int, uri: str) -> str:
        """``dispatcher.set_state <state> <setid> <uri|all>`` (loop thread)."""
        letters, group, address = self._state_args(state, setid, "uri", uri)
        targets = self._targets(group, address)
        self.plugin.state.set_state(group, "all" if len(targets) > 1 else targets[0].uri, letters,
                                    reason=f"set_state {letters}")
        self.plugin.admin_state.note(targets, letters)
        if not letters.startswith(("d", "2")):  # back in service: no drain waits for it any more
            self.plugin.drains.stop(d.key for d in targets)
        return STATE_UPDATED

    def set_duid_state(self, state: str, setid: int, duid: str) -> str:
        """``dispatcher.set_duid_state <state> <setid> <duid>`` (loop thread)."""
        letters, group, value = self._state_args(state, setid, "duid", duid)
        dset = self.plugin.state.snapshot.sets.get(group)
        if dset is None:
            raise RpcError(f"State Update Failed: no set {group}", FAULT)
        targets = [d for d in dset.destinations if d.attrs.duid == value]
        if not targets:
            raise RpcError(f"State Update Failed: set {group} has no destination with duid {value}", FAULT)
        self.plugin.state.set_duid_state(group, value, letters, reason=f"set_duid_state {letters}")
        self.plugin.admin_state.note(targets, letters)
        return STATE_UPDATED

    def ping_active(self, state: int | None = None) -> dict[str, int]:
        """``dispatcher.ping_active [0|1]`` (loop thread)."""
        prober = self.plugin.prober
        old = int(prober.active) if prober is not None else int(self.plugin.config.ping_active)
        if state is None:
            return {"OldPingState": old}
        new = int_param("state", state, 0, 1)
        if prober is None:
            raise RpcError("Ping State Update Failed: keepalives are not running yet", FAULT)
        prober.active = bool(new)
        return {"NewPingState": new, "OldPingState": old}

    def add(self, setid: int, uri: str, flags: int = 0, priority: int = 0, attrs: str = "") -> str:
        """``dispatcher.add <setid> <uri> [flags [priority [attrs]]]`` (control thread)."""
        dest = self._destination(setid, uri, flags, priority, attrs)
        try:
            resolved = resolve_destinations(
                [dest], skip_unresolvable=False, resolver=self._resolver or socket.getaddrinfo,
                location=lambda d: "dispatcher.add",
                host_lookup=None if self._resolver is not None else self.plugin.host_lookup)
        except LoadError as exc:
            raise RpcError(f"Adding dispatcher dst failed: {exc}", FAULT) from None
        plugin = self.plugin
        if plugin.app is None:
            raise RpcError("Adding dispatcher dst failed: the dispatcher is not running", FAULT)
        try:
            # checked and added in one loop callback: no reload can start in between, and a
            # request the loop did not take in time is cancelled, never applied later
            self._on_loop(lambda: plugin.reloader.exclusive(
                lambda: plugin.state.add(resolved[0], reason="dispatcher.add")))
        except ReloadBusy:
            raise RpcError("Ongoing reload", FAULT) from None
        except ValueError as exc:  # the set already has this URI
            raise RpcError(f"Adding dispatcher dst failed: {exc}", FAULT) from None
        # the routing changed by hand: say so, as set_state does (in memory only, as in Kamailio)
        added = resolved[0]
        logger.info("dispatcher: set {setid} {destination} added (dispatcher.add, flags {flags}, priority "
                    "{priority}{attrs}; until the next reload)", setid=added.setid, destination=added.uri,
                    flags=added.flags, priority=added.priority,
                    attrs=f", attrs {added.attrs.body}" if added.attrs.body else "")
        return ADDED

    def remove(self, setid: int, uri: str) -> str:
        """``dispatcher.remove <setid> <uri>`` (loop thread)."""
        group = int_param("setid", setid, 0, INT_MAX)
        address = str_param("uri", uri).strip()
        if self.plugin.reloader.busy is not None:
            raise RpcError("Ongoing reload", FAULT)
        dest = self._find(group, address)
        if dest is None or not self.plugin.state.remove(group, dest.uri):
            raise RpcError(f"Removing dispatcher dst failed: set {group} has no destination {address}", FAULT)
        self.plugin.admin_state.forget(group, dest.uri)
        self.plugin.counters.forget([dest.key])
        self.plugin.drains.stop([dest.key])
        logger.info("dispatcher: set {setid} {destination} removed (dispatcher.remove; until the next reload)",
                    setid=group, destination=dest.uri)
        return REMOVED

    def stats(self, setid: int | None = None, uri: str | None = None) -> dict[str, Any]:
        """``dispatcher.stats [setid [uri]]`` (control thread; built on the loop a slice at a time)."""
        group = int_param("setid", setid, 0, INT_MAX) if setid is not None else None
        address = str_param("uri", uri).strip() if uri is not None else None
        if address is not None and group is None:
            raise RpcError("Invalid Parameters: a uri needs its setid", INVALID_PARAMS)
        plugin = self.plugin

        def start() -> Future[dict[str, Any]]:
            if group is not None and not plugin.state.has_set(group):
                raise RpcError(f"Invalid Parameters: no set {group}", FAULT)
            entry = None
            if address is not None:
                assert group is not None
                found = self._find(group, address)
                if found is None:
                    raise RpcError(f"Invalid Parameters: set {group} has no destination {address}", FAULT)
                entry = found.uri
            assert plugin.app is not None
            return plugin.app.run_task(plugin.statistics().report_steps(group, entry))

        report = self._on_loop(start)
        try:
            return report.result(LIST_WAIT)
        except TimeoutError:
            raise RpcError(f"Timeout: the statistics were not done within {LIST_WAIT:g}s", SERVER_ERROR) from None

    def stats_reset(self, setid: int | None = None, uri: str | None = None) -> dict[str, int]:
        """``dispatcher.stats_reset [setid [uri]]`` (loop thread)."""
        counters = self.plugin.counters
        if setid is None:
            if uri is not None:
                raise RpcError("Invalid Parameters: a uri needs its setid", INVALID_PARAMS)
            return {"reset": counters.reset()}
        group = int_param("setid", setid, 0, INT_MAX)
        dset = self.plugin.state.snapshot.sets.get(group)
        if dset is None:
            raise RpcError(f"Invalid Parameters: no set {group}", FAULT)
        if uri is None:
            return {"reset": counters.reset(d.key for d in dset.destinations)}
        address = str_param("uri", uri).strip()
        found = self._find(group, address)
        if found is None:
            raise RpcError(f"Invalid Parameters: set {group} has no destination {address}", FAULT)
        return {"reset": counters.reset([found.key])}

    def drain(self, setid: int, uri: str, wait: Any = 0) -> dict[str, Any]:
        """``dispatcher.drain <setid> <uri|all> [wait]`` (control thread)."""
        _, group, address = self._state_args("d", setid, "uri", uri)
        seconds = seconds_param("wait", wait)
        plugin = self.plugin

        def begin() -> list[Destination]:
            targets = self._targets(group, address)
            plugin.state.set_state(group, "all" if len(targets) > 1 else targets[0].uri, "d", reason="drain")
            plugin.admin_state.note(targets, "d")
            plugin.drains.start(plugin.state, [d.key for d in targets])
            return targets

        targets = self._on_loop(begin)
        keys = [d.key for d in targets]
        started = time.monotonic()
        calls = wait_until(lambda: int(self._on_loop(lambda: plugin.drains.calls(plugin.state, keys))), seconds)
        return {"destinations": [d.uri for d in targets], "calls": calls, "drained": calls == 0,
                "waited": round(time.monotonic() - started, 1)}

    def undrain(self, setid: int, uri: str) -> str:
        """``dispatcher.undrain <setid> <uri|all>`` (loop thread)."""
        _, group, address = self._state_args("a", setid, "uri", uri)
        plugin = self.plugin
        targets = self._targets(group, address)
        probing = plugin.prober is not None and plugin.prober.interval > 0 and plugin.prober.active
        letters = "ap" if probing else "a"
        plugin.state.set_state(group, "all" if len(targets) > 1 else targets[0].uri, letters, reason="undrain")
        plugin.admin_state.note(targets, letters)
        plugin.drains.stop(d.key for d in targets)
        return STATE_UPDATED

    def cluster_status(self) -> dict[str, Any]:
        """``dispatcher.cluster`` (loop thread)."""
        return self.plugin.shared.status()

    def hash_values(self, nslots: int, val1: str, val2: str | None = None) -> dict[str, int]:
        """``dispatcher.hash <nslots> <val1> [val2]`` (control thread: pure computation)."""
        slots = int_param("nslots", nslots, 0, INT_MAX)
        second = str_param("val2", val2) if val2 is not None else None
        return hash_result(slots, str_param("val1", val1), second)

    # -- helpers ---------------------------------------------------------------------------

    def _on_loop(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the loop thread (from a control thread).

        :raises RpcError: the dispatcher is not running, or the loop did not take ``fn`` in
            time (it is cancelled then, never run later).
        """
        app = self.plugin.app
        if app is None:
            raise RpcError("The dispatcher is not running", FAULT)
        try:
            return app.run_on_loop(fn, LOOP_TIMEOUT)
        except TimeoutError:
            raise RpcError(f"Timeout: the loop thread did not answer within {LOOP_TIMEOUT:g}s; nothing was done",
                           SERVER_ERROR) from None

    def _targets(self, group: int, address: str) -> list[Destination]:
        """The entries ``address`` (or ``all``) names in set ``group``; RpcError when none."""
        dset = self.plugin.state.snapshot.sets.get(group)
        if dset is None:
            raise RpcError(f"State Update Failed: no set {group}", FAULT)
        if address.lower() == "all":
            return list(dset.destinations)
        found = self._find(group, address)
        if found is None:
            raise RpcError(f"State Update Failed: set {group} has no destination {address}", FAULT)
        return [found]

    def _find(self, setid: int, address: str) -> Destination | None:
        """The loaded entry for ``address`` as written (case-insensitive); a URI without a
        scheme matches its ``sip:`` form, as the list file reads it."""
        dest = self.plugin.state.find(setid, address)
        if dest is None and not address.lower().startswith(("sip:", "sips:")):
            dest = self.plugin.state.find(setid, "sip:" + address)
        return dest

    @staticmethod
    def _state_args(state: Any, setid: Any, name: str, value: Any) -> tuple[str, int, str]:
        letters = state_param(str_param("state", state))
        text = str_param(name, value).strip()
        if not text:
            raise RpcError(f"Invalid Parameters: {name} is empty", INVALID_PARAMS)
        return letters, int_param("setid", setid, 0, INT_MAX), text

    @staticmethod
    def _destination(setid: Any, uri: Any, flags: Any, priority: Any, attrs: Any) -> Destination:
        group = int_param("setid", setid, 0, INT_MAX)
        bits = int_param("flags", flags, 0, INT_MAX)
        prio = int_param("priority", priority)
        try:
            check_flags(bits)
            normalized = normalize_uri(str_param("uri", uri))
            parsed = parse_attrs(str_param("attrs", attrs))
        except ValueError as exc:
            raise RpcError(f"Adding dispatcher dst failed: {exc}", FAULT) from None
        return Destination(group, normalized, bits, prio, parsed)
