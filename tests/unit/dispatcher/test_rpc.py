"""The dispatcher.* control methods through a real RpcRegistry and JSON-RPC processor.

The plugin runs in a real pluggy PluginManager with a real list file in ``tmp_path``; the
host stand-in runs ``run_on_loop`` callables at once (the calling thread plays the loop).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait
from pathlib import Path
from typing import Any

import pluggy
import pytest
from loguru import logger

from b2bua import hookspecs
from b2bua.config import parse_config
from b2bua.control import JsonRpcProcessor
from b2bua.loop import Task
from b2bua.rpc import INVALID_PARAMS, RpcRegistry
from plugins.dispatcher.config import DispatcherConfig
from plugins.dispatcher.latency import LatencyStats
from plugins.dispatcher.model import DestFlags, Snapshot
from plugins.dispatcher.plugin import DispatcherPlugin
from plugins.dispatcher.rpc import DispatcherRpc, hash_result, listing_steps
from plugins.dispatcher.source import load_configured

from .loophost import on_a_thread

GW1, GW2, GW3 = "sip:127.0.0.1:5061", "sip:127.0.0.1:5062", "sip:127.0.0.1:5070;transport=tcp"
LIST = f"""# setid uri flags priority attrs
1 {GW1} 0 0 duid=gw1;weight=50
1 {GW2} 8 5 duid=gw2
2 {GW3}
"""
D, P = int(DestFlags.DISABLED), int(DestFlags.PROBING)


class Fault(Exception):
    """A JSON-RPC error answer."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message


class _NoTimer:
    def cancel(self) -> None:
        pass


class LoopApp:
    """The Host services; the calling thread plays the loop thread."""

    def __init__(self, pm: pluggy.PluginManager, config: Any) -> None:
        self.hook = pm.hook
        self.config = config
        self.lock = threading.Lock()  # one "loop": callables from several threads never overlap

    def run_on_loop(self, callback: Callable[[], Any], timeout: float = 10.0) -> Any:
        with self.lock:
            return callback()

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        self.run_on_loop(callback)

    def run_blocking(self, fn: Callable[[], Any], on_done: Callable[[Future[Any]], None] | None = None) -> Future[Any]:
        """``on_done`` on the "loop" (under the lock), as the host does."""
        return on_a_thread(fn, on_done, self.run_on_loop)

    def run_task(self, steps: Task[Any], on_done: Callable[[Future[Any]], None] | None = None) -> Future[Any]:
        """Each slice under the lock, waits for blocking work in between, as the loop does."""
        future: Future[Any] = Future()

        def drive() -> None:
            sent: Future[Any] | None = None
            while True:
                with self.lock:
                    try:
                        item = steps.send(sent)
                    except StopIteration as stop:
                        future.set_result(stop.value)
                        break
                    except Exception as exc:
                        future.set_exception(exc)
                        break
                sent = None
                if isinstance(item, Future):
                    wait([item])
                    sent = item
            if on_done is not None:
                self.run_on_loop(lambda: on_done(future))

        threading.Thread(target=drive, name="test-task", daemon=True).start()
        return future

    def call_later(self, delay: float, callback: Callable[[], None]) -> _NoTimer:
        return _NoTimer()

    def send_request(self, *args: Any, **kwargs: Any) -> None:
        pass


Loader = Callable[[DispatcherConfig, "Path | None"], Snapshot]


class Harness:
    """A started DispatcherPlugin reading ``tmp_path/dispatcher.list``, with its control methods."""

    def __init__(self, tmp_path: Path, section: dict[str, Any] | None = None, list_text: str = LIST,
                 loader: Loader | None = None) -> None:
        self.dir = tmp_path
        self.list_file = tmp_path / "dispatcher.list"
        if list_text is not None and not self.list_file.exists():
            self.list_file.write_text(list_text)
        self.state_file = tmp_path / "state.json"
        self.pm = pluggy.PluginManager("b2bua")
        self.pm.add_hookspecs(hookspecs)
        self.plugin = DispatcherPlugin(loader=loader, rng=random.Random(1))  # None: reloads in a child process
        self.pm.register(self.plugin, name="dispatcher")
        self.pm.hook.b2bua_addhooks.call_historic(kwargs={"pluginmanager": self.pm})
        settings = {"list_file": "dispatcher.list", "state_file": "state.json", "ping_interval": 0,
                    **(section or {})}
        config = parse_config({"plugins": {"enabled": ["dispatcher"], "dispatcher": settings}}, "config.toml",
                              base_dir=tmp_path)
        self.app = LoopApp(self.pm, config)
        self.pm.hook.b2bua_configure.call_historic(kwargs={"config": config, "app": self.app})
        self.pm.hook.b2bua_startup(app=self.app)
        self.registry = RpcRegistry()
        self.pm.hook.b2bua_register_rpc(registry=self.registry)
        self.processor = JsonRpcProcessor(self.registry, self.app.run_on_loop)

    def rpc(self, method: str, *params: Any, named: dict[str, Any] | None = None) -> Any:
        """Call ``method`` as a control client would; its result, or Fault."""
        request: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method}
        if named is not None:
            request["params"] = named
        elif params:
            request["params"] = list(params)
        answer = self.processor.handle(json.dumps(request).encode())
        assert answer is not None
        doc = json.loads(answer)
        if "error" in doc:
            raise Fault(doc["error"]["code"], doc["error"]["message"])
        return doc["result"]

    def fault(self, method: str, *params: Any) -> Fault:
        with pytest.raises(Fault) as err:
            self.rpc(method, *params)
        return err.value

    def listing(self) -> str:
        """``dispatcher.list`` as the bytes a client gets, to compare before and after."""
        return json.dumps(self.rpc("dispatcher.list"), sort_keys=True)

    def flags(self, setid: int, uri: str) -> dict[str, Any]:
        for record in self.rpc("dispatcher.list")["RECORDS"]:
            if record["SET"]["ID"] == setid:
                for target in record["SET"]["TARGETS"]:
                    if target["DEST"]["URI"] == uri:
                        return dict(target["DEST"])
        raise AssertionError(f"set {setid} has no {uri}")

    def stop(self) -> None:
        self.pm.hook.b2bua_shutdown(app=self.app)


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


# -- dispatcher.list ---------------------------------------------------------------------------


#: the compact counters every dispatcher.list entry carries after Kamailio's fields
NO_STATS = {"SELECTED": 0, "ATTEMPTS": 0, "ANSWERED": 0, "FAILED": 0, "FAILOVERS": 0}


def test_list_has_kamailios_structure(h: Harness) -> None:
    assert h.rpc("dispatcher.list") == {
        "NRSETS": 2,
        "RECORDS": [
            {"SET": {"ID": 1, "TARGETS": [
                {"DEST": {"URI": GW2, "FLAGS": "AP", "PRIORITY": 5,
                          "ATTRS": {"BODY": "duid=gw2", "DUID": "gw2", "PROBING_COUNT": 0, "MAXLOAD": 0,
                                    "WEIGHT": 0, "RWEIGHT": 0, "SOCKET": "", "SOCKNAME": "", "OBPROXY": ""},
                          "RUNTIME": {"DLGLOAD": 0}, "STATS": NO_STATS}},
                {"DEST": {"URI": GW1, "FLAGS": "AX", "PRIORITY": 0,
                          "ATTRS": {"BODY": "duid=gw1;weight=50", "DUID": "gw1", "PROBING_COUNT": 0,
                                    "MAXLOAD": 0, "WEIGHT": 50, "RWEIGHT": 0, "SOCKET": "", "SOCKNAME": "",
                                    "OBPROXY": ""},
                          "RUNTIME": {"DLGLOAD": 0}, "STATS": NO_STATS}},
            ]}},
            {"SET": {"ID": 2, "TARGETS": [
                {"DEST": {"URI": GW3, "FLAGS": "AX", "PRIORITY": 0, "RUNTIME": {"DLGLOAD": 0}, "STATS": NO_STATS}},
            ]}},
        ],
    }


def test_list_short_and_full(h: Harness) -> None:
    short = h.rpc("dispatcher.list", "short")
    dests = [t["DEST"] for r in short["RECORDS"] for t in r["SET"]["TARGETS"]]
    assert all("ATTRS" not in d for d in dests)
    full = h.rpc("dispatcher.list", "FULL")
    tcp = full["RECORDS"][1]["SET"]["TARGETS"][0]["DEST"]
    assert (tcp["HOST"], tcp["IPADDR"], tcp["PORT"], tcp["PROTO"]) == ("127.0.0.1", "127.0.0.1", 5070, "tcp")
    assert tcp["ATTRS"]["BODY"] == ""  # full shows ATTRS even when empty
    assert h.rpc("dispatcher.list", named={"mode": "short"}) == short


def test_list_shows_load_and_latency(tmp_path: Path) -> None:
    h = Harness(tmp_path, {"ping_latency_stats": True})
    rt = h.plugin.state.runtime((1, GW1.lower()))
    assert rt is not None
    rt.latency = LatencyStats(avg=12.3456, std=1.0, est=11.5, max=20.0, timeout=2, count=5)
    h.plugin.state.load_add("call-1", (1, GW1.lower()))
    dest = h.flags(1, GW1)
    assert dest["LATENCY"] == {"AVG": 12.346, "STD": 1.0, "EST": 11.5, "MAX": 20.0, "TIMEOUT": 2}
    assert dest["RUNTIME"] == {"DLGLOAD": 1}
    assert h.flags(1, GW2)["LATENCY"] == {"AVG": 0.0, "STD": 0.0, "EST": 0.0, "MAX": 0.0, "TIMEOUT": 0}


def test_list_without_sets_is_kamailios_fault(tmp_path: Path) -> None:
    h = Harness(tmp_path, section={"allow_empty": True}, list_text="# nothing yet\n")
    fault = h.fault("dispatcher.list")
    assert (fault.code, fault.message) == (500, "No Destination Sets")


def test_list_bad_mode(h: Harness) -> None:
    fault = h.fault("dispatcher.list", "everything")
    assert fault.code == INVALID_PARAMS and "short or full" in fault.message


# -- dispatcher.reload -------------------------------------------------------------------------


def test_reload_reads_the_file_again(h: Harness) -> None:
    h.list_file.write_text(LIST + "3 sip:127.0.0.1:5080\n")
    assert h.rpc("dispatcher.reload") == "Ok. Dispatcher successfully reloaded."
    assert h.rpc("dispatcher.list")["NRSETS"] == 3


def test_failed_reload_names_file_and_line_and_keeps_the_listing(h: Harness) -> None:
    h.rpc("dispatcher.set_state", "ip", 1, GW1)
    before = h.listing()
    h.list_file.write_text(LIST + "3 sip:127.0.0.1:5080 banana\n")
    fault = h.fault("dispatcher.reload")
    assert fault.code == 500
    assert fault.message == (f"Reload Failed: {h.list_file}:5: flags 'banana': not a decimal or 0x hex number")
    assert h.listing() == before
    # not stuck: the next reload works
    h.list_file.write_text(LIST)
    assert h.rpc("dispatcher.reload") == "Ok. Dispatcher successfully reloaded."


def test_missing_list_file_is_named(h: Harness) -> None:
    h.list_file.unlink()
    fault = h.fault("dispatcher.reload")
    assert fault.message == f"Reload Failed: {h.list_file}: cannot read: No such file or directory"


class GatedLoader:
    """Loads the real list file, but waits at ``gate`` while ``hold`` is set (a slow database)."""

    def __init__(self) -> None:
        self.hold = False
        self.entered = threading.Event()
        self.gate = threading.Event()

    def __call__(self, config: DispatcherConfig, list_file: Path | None) -> Snapshot:
        if self.hold:
            self.entered.set()
            assert self.gate.wait(5.0), "the test never opened the gate"
        return load_configured(config, list_file)


@pytest.mark.parametrize("first", ["rpc", "sighup"])
def test_a_second_reload_while_one_runs_is_refused(tmp_path: Path, first: str) -> None:
    loader = GatedLoader()
    h = Harness(tmp_path, loader=loader)
    loader.hold = True
    results: list[Any] = []
    if first == "rpc":
        worker = threading.Thread(target=lambda: results.append(h.rpc("dispatcher.reload")))
        worker.start()
    else:
        h.pm.hook.b2bua_reload(app=h.app)
    assert loader.entered.wait(5.0)
    fault = h.fault("dispatcher.reload")
    assert (fault.code, fault.message) == (500, "Ongoing reload")
    assert h.fault("dispatcher.add", 3, "sip:127.0.0.1:5090").message == "Ongoing reload"
    loader.gate.set()
    if first == "rpc":
        worker.join(5.0)
        assert results == ["Ok. Dispatcher successfully reloaded."]
    loader.hold = False
    for _ in range(100):  # the SIGHUP thread releases the lock through the loop
        try:
            assert h.rpc("dispatcher.reload") == "Ok. Dispatcher successfully reloaded."
            break
        except Fault:
            time.sleep(0.02)
    else:
        raise AssertionError("the reload lock was never released")


# -- dispatcher.set_state / set_duid_state -----------------------------------------------------


@pytest.mark.parametrize(
    ("state", "uri", "expected"),
    [
        ("ip", GW1, {GW1: "IP", GW2: "AP"}),
        ("i", GW1, {GW1: "IX", GW2: "AP"}),
        ("t", GW1.upper(), {GW1: "TX", GW2: "AP"}),
        ("dp", GW1, {GW1: "DX", GW2: "AP"}),  # p is ignored after d, as in Kamailio
        ("2", "all", {GW1: "DX", GW2: "DX"}),
        ("ap", "all", {GW1: "AP", GW2: "AP"}),
        ("a", "127.0.0.1:5062", {GW1: "AX", GW2: "AX"}),  # no scheme: the sip: form
        ("DX", GW2, {GW1: "AX", GW2: "DX"}),  # the letters dispatcher.list shows work too
        ("ix", GW2, {GW1: "AX", GW2: "IX"}),
    ],
)
def test_set_state(h: Harness, state: str, uri: str, expected: dict[str, str]) -> None:
    assert h.rpc("dispatcher.set_state", state, 1, uri) == "Ok. Dispatcher state updated."
    assert {u: h.flags(1, u)["FLAGS"] for u in expected} == expected


@pytest.mark.parametrize(
    ("params", "code", "message"),
    [
        (["a", 9, GW1], 500, "State Update Failed: no set 9"),
        (["a", 1, "sip:127.0.0.1:9999"], 500, "State Update Failed: set 1 has no destination sip:127.0.0.1:9999"),
        (["x", 1, GW1], 500, "Unknown State Value: 'x': expected a, i, t or d"),
        (["dq", 1, GW1], 500, "Unknown State Value: 'dq'"),
        (["apx", 1, GW1], 500, "Unknown State Value: 'apx'"),
        (["a", "one", GW1], INVALID_PARAMS, "Invalid Parameters: setid must be an integer, got 'one'"),
        (["a", 1], INVALID_PARAMS, "Invalid params for dispatcher.set_state"),
    ],
)
def test_set_state_errors(h: Harness, params: list[Any], code: int, message: str) -> None:
    fault = h.fault("dispatcher.set_state", *params)
    assert fault.code == code and fault.message.startswith(message), fault


def test_set_duid_state(h: Harness) -> None:
    assert h.rpc("dispatcher.set_duid_state", "ip", "1", "gw2") == "Ok. Dispatcher state updated."
    assert h.flags(1, GW2)["FLAGS"] == "IP"
    fault = h.fault("dispatcher.set_duid_state", "a", 1, "nope")
    assert fault.message == "State Update Failed: set 1 has no destination with duid nope"


# -- dispatcher.ping_active --------------------------------------------------------------------


def test_ping_active_toggles_the_prober(h: Harness) -> None:
    assert h.plugin.prober is not None
    assert h.rpc("dispatcher.ping_active") == {"OldPingState": 1}
    assert h.rpc("dispatcher.ping_active", 0) == {"NewPingState": 0, "OldPingState": 1}
    assert h.plugin.prober.active is False
    assert h.rpc("dispatcher.ping_active") == {"OldPingState": 0}
    assert h.rpc("dispatcher.ping_active", "1") == {"NewPingState": 1, "OldPingState": 0}
    assert h.plugin.prober.active is True
    assert h.fault("dispatcher.ping_active", 2).code == INVALID_PARAMS


# -- dispatcher.add / remove -------------------------------------------------------------------


def test_add_then_remove(h: Harness) -> None:
    assert h.rpc("dispatcher.add", 1, "127.0.0.1:5063", 8, 7, "duid=gw3;maxload=5") == (
        "Ok. Dispatcher destination added."
    )
    dest = h.flags(1, "sip:127.0.0.1:5063")
    assert (dest["FLAGS"], dest["PRIORITY"], dest["ATTRS"]["MAXLOAD"]) == ("AP", 7, 5)
    first = h.rpc("dispatcher.list")["RECORDS"][0]["SET"]["TARGETS"][0]["DEST"]["URI"]
    assert first == "sip:127.0.0.1:5063"  # highest priority first
    assert h.rpc("dispatcher.add", 4, "sip:127.0.0.1:5064") == "Ok. Dispatcher destination added."
    assert h.rpc("dispatcher.list")["NRSETS"] == 3
    assert h.rpc("dispatcher.remove", 1, "sip:127.0.0.1:5063") == "Ok. Dispatcher destination removed."
    assert h.rpc("dispatcher.remove", 4, "127.0.0.1:5064") == "Ok. Dispatcher destination removed."
    assert h.rpc("dispatcher.list")["NRSETS"] == 2


def test_add_and_remove_are_logged(h: Harness) -> None:
    # they change where calls go, by hand: an operator reading the log must see them (they
    # were silent while set_state was logged)
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO")
    try:
        h.rpc("dispatcher.add", 1, "127.0.0.1:5063", 8, 7, "duid=gw3")
        h.rpc("dispatcher.remove", 1, "sip:127.0.0.1:5063")
    finally:
        logger.remove(sink)
    assert ("dispatcher: set 1 sip:127.0.0.1:5063 added (dispatcher.add, flags 8, priority 7, attrs duid=gw3;"
            " until the next reload)") in lines
    assert "dispatcher: set 1 sip:127.0.0.1:5063 removed (dispatcher.remove; until the next reload)" in lines


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ([1, GW1], f"Adding dispatcher dst failed: set 1 already has {GW1}"),
        ([1, "tel:+4930123"], "Adding dispatcher dst failed: tel:+4930123: URI scheme 'tel' is not sip"),
        ([1, "sip:10.0.0.1", 0, 0, "weight=500"], "Adding dispatcher dst failed: weight=500: must be 1..100"),
        ([1, "sip:10.0.0.1", 64], "Adding dispatcher dst failed: flags 64: unknown bits 0x40"),
        ([1, "sip:10.0.0.1?X-Injected=yes"], "Adding dispatcher dst failed: sip:10.0.0.1?X-Injected=yes: URI headers"
                                             " (?X-Injected=yes) are not allowed in a destination"),
        ([1, "sip:10.0.0.1", 0, 0, "x=\x1b[2J"], "Adding dispatcher dst failed: character \\x1b at position 3"),
        ([1, "sip:gw.example.invalid"], "Adding dispatcher dst failed: dispatcher.add: set 1 "
                                        "sip:gw.example.invalid: cannot resolve 'gw.example.invalid'"),
    ],
)
def test_add_errors(tmp_path: Path, params: list[Any], message: str) -> None:
    h = Harness(tmp_path)

    def no_dns(host: str, port: int) -> Sequence[tuple[Any, ...]]:
        raise OSError(f"{host}: Name or service not known")

    registry = RpcRegistry()
    DispatcherRpc(h.plugin, resolver=no_dns).register(registry)
    h.registry = registry
    h.processor = JsonRpcProcessor(registry, h.app.run_on_loop)
    before = h.listing()
    fault = h.fault("dispatcher.add", *params)
    assert fault.code == 500 and fault.message.startswith(message), fault.message
    assert h.listing() == before


def test_an_add_the_loop_did_not_take_in_time_is_a_failure_and_never_lands(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    before = h.listing()
    run_on_loop = h.app.run_on_loop

    def loop_busy(callback: Callable[[], Any], timeout: float = 10.0) -> Any:
        raise TimeoutError  # what Scheduler.run_on_loop raises once it has cancelled the request

    h.app.run_on_loop = loop_busy  # type: ignore[method-assign]
    fault = h.fault("dispatcher.add", 3, "sip:127.0.0.1:5090")
    h.app.run_on_loop = run_on_loop  # type: ignore[method-assign]
    assert fault.message == "Timeout: the loop thread did not answer within 10s; nothing was done"
    assert h.listing() == before


def test_a_listing_shows_the_list_it_started_with(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    steps = listing_steps(h.plugin.state.listing_source())
    next(steps)  # one entry rendered ...
    h.list_file.write_text("7 sip:127.0.0.1:5099\n")
    assert h.rpc("dispatcher.reload") == "Ok. Dispatcher successfully reloaded."  # ... the list is replaced
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            listing = json.loads(stop.value)
            break
    assert listing["NRSETS"] == 2
    assert [t["DEST"]["URI"] for r in listing["RECORDS"] for t in r["SET"]["TARGETS"]] == [GW2, GW1, GW3]
    assert h.rpc("dispatcher.list")["NRSETS"] == 1


def test_add_resolves_the_host(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    asked: list[str] = []

    def dns(host: str, port: int) -> Sequence[tuple[Any, ...]]:
        asked.append(host)
        return [(2, 2, 17, "", ("127.0.0.9", port))]

    registry = RpcRegistry()
    DispatcherRpc(h.plugin, resolver=dns).register(registry)
    h.processor = JsonRpcProcessor(registry, h.app.run_on_loop)
    h.rpc("dispatcher.add", 5, "sip:gw.example.com:5099")
    assert asked == ["gw.example.com"]
    dest = h.rpc("dispatcher.list", "full")["RECORDS"][2]["SET"]["TARGETS"][0]["DEST"]
    assert (dest["HOST"], dest["IPADDR"], dest["PORT"]) == ("gw.example.com", "127.0.0.9", 5099)


def test_remove_unknown(h: Harness) -> None:
    fault = h.fault("dispatcher.remove", 1, "sip:127.0.0.1:1")
    assert (fault.code, fault.message) == (500, "Removing dispatcher dst failed: set 1 has no destination "
                                                "sip:127.0.0.1:1")


# -- dispatcher.hash ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ([4, "alice", "server.com"], {"hashid": 1412806172, "slot": 0}),
        ([4, "bob", "server.com:5070"], {"hashid": 1243008018, "slot": 2}),
        ([3, "a84b4c76e66710@pc33.atlanta.com"], {"hashid": 2175018094, "slot": 1}),
        ([0, "abc"], {"hashid": 7167810, "slot": 0}),
    ],
)
def test_hash_matches_kamailio(h: Harness, params: list[Any], expected: dict[str, int]) -> None:
    assert h.rpc("dispatcher.hash", *params) == expected
    assert hash_result(*params) == expected


def test_hash_takes_numbers_as_written(h: Harness) -> None:
    assert h.rpc("dispatcher.hash", 10, 4930123) == h.rpc("dispatcher.hash", 10, "4930123")
    assert h.fault("dispatcher.hash", -1, "x").code == INVALID_PARAMS


# -- help --------------------------------------------------------------------------------------


def test_every_method_has_help_and_kamailios_usage(h: Harness) -> None:
    usage = {m.signature: m.help for m in h.registry}
    expected = {
        "dispatcher.list [mode]",
        "dispatcher.reload",
        "dispatcher.set_state state setid uri",
        "dispatcher.set_duid_state state setid duid",
        "dispatcher.ping_active [state]",
        "dispatcher.add setid uri [flags] [priority] [attrs]",
        "dispatcher.remove setid uri",
        "dispatcher.hash nslots val1 [val2]",
    }
    assert expected <= set(usage)
    assert all(len(usage[name]) > 20 for name in expected)


def test_registry_runs_blocking_methods_off_the_loop(h: Harness) -> None:
    # list and stats: their rendering grows with the list, so only the O(1) hand-over runs on the
    # loop; drain may wait for calls to end
    off_loop = {m.name for m in h.registry if not m.on_loop}
    assert off_loop == {"dispatcher.reload", "dispatcher.add", "dispatcher.hash", "dispatcher.list",
                        "dispatcher.stats", "dispatcher.drain"}
