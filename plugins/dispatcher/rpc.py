"""The dispatcher's control methods, with Kamailio's names, parameters and answers.

``dispatcher.list``, ``.reload``, ``.set_state``, ``.set_duid_state``, ``.ping_active``,
``.add``, ``.remove`` and ``.hash`` behave as Kamailio's RPC commands do (same result
structure, same "Ok. ..." texts, faults with code 500 and Kamailio's fault text), with
these differences, all on purpose:

* a failure says why after Kamailio's text (``Reload Failed: dispatcher.list:3: ...``);
* an unknown set or URI is an error for ``set_state`` (Kamailio ignores ``all`` on a
  missing set);
* ``dispatcher.list`` always shows ``RUNTIME{DLGLOAD}``: the B2BUA counts every leg's load;
* a ``set_state d`` is kept in the admin state file (see :mod:`plugins.dispatcher.statefile`).

Methods that block or whose work grows with the list (reload, add: file, database, DNS;
list: rendering every entry) run on a control thread (``on_loop=False``) and take from or
hand to the loop thread only what is cheap there (``app.run_on_loop``); the others run on
the loop thread.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from b2bua.loop import Task
from b2bua.rpc import INVALID_PARAMS, SERVER_ERROR, RawJson, RpcError, RpcRegistry
from plugins.dispatcher.adminstate import AdminState
from plugins.dispatcher.attrs import parse_attrs
from plugins.dispatcher.config import DispatcherConfig
from plugins.dispatcher.hashing import ds_get_hash
from plugins.dispatcher.latency import rpc_block
from plugins.dispatcher.listfile import check_flags
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
    shared: SharedState

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
                  cluster: Callable[[DestKey], dict[str, Any] | None] | None = None) -> Task[bytearray]:
    """``dispatcher.list``'s answer as JSON, built as a loop task (a step per entry):
    ``{NRSETS, RECORDS: [{SET: {ID, TARGETS: [{DEST: {...}}]}}]}``.

    :param source: what :meth:`DispatcherState.listing_source` took (non-empty).
    :param mode: ``""`` (normal), ``"short"`` (no ATTRS) or ``"full"`` (adds HOST, IPADDR,
        PORT, PROTO, and ATTRS even when empty).
    :param latency_stats: ``ping_latency_stats``: add each entry's LATENCY block.
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
    return {"HOST": host, "IPADDR": ip, "PORT": port, "PROTO": proto}


def hash_result(nslots: int, val1: str, val2: str | None = None) -> dict[str, int]:
    """``dispatcher.hash``'s answer: Kamailio's ``ds_get_hash(val1, val2)`` and its slot."""
    hashid = ds_get_hash(val1.encode("utf-8"), val2.encode("utf-8") if val2 is not None else None)
    return {"hashid": hashid, "slot": hashid % nslots if nslots > 0 else 0}


class DispatcherRpc:
    """The ``dispatcher.*`` control methods over one dispatcher (the plugin).

    :param plugin: the dispatcher (:class:`Dispatcher`: the plugin).
    :param resolver: ``getaddrinfo``-compatible, for ``dispatcher.add`` (tests pass a stand-in).
    """

    def __init__(self, plugin: Dispatcher, resolver: Resolver = socket.getaddrinfo) -> None:
        self.plugin = plugin
        self._resolver = resolver

    def register(self, registry: RpcRegistry) -> None:
        """Add every method to ``registry``."""
        registry.add("dispatcher.list", self.list_sets,
                     "The destination sets with each entry's state (FLAGS: AP, AX, IP, TX, DX, ...), "
                     "priority, attributes, latency and active calls (DLGLOAD). Mode 'short' leaves out "
                     "ATTRS; 'full' adds the resolved address (HOST, IPADDR, PORT, PROTO).", on_loop=False)
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
        dset = self.plugin.state.snapshot.sets.get(group)
        if dset is None:
            raise RpcError(f"State Update Failed: no set {group}", FAULT)
        if address.lower() == "all":
            targets = list(dset.destinations)
        else:
            found = self._find(group, address)
            if found is None:
                raise RpcError(f"State Update Failed: set {group} has no destination {address}", FAULT)
            targets = [found]
        self.plugin.state.set_state(group, "all" if len(targets) > 1 else targets[0].uri, letters,
                                    reason=f"set_state {letters}")
        self.plugin.admin_state.note(targets, letters)
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
            resolved = resolve_destinations([dest], skip_unresolvable=False, resolver=self._resolver,
                                            location=lambda d: "dispatcher.add")
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
        return REMOVED

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
