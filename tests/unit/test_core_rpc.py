"""The host's own control methods: core.*, system.*, help."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from b2bua.control import JsonRpcProcessor
from b2bua.core_rpc import CoreApp, register_core_methods, uptime_report
from b2bua.rpc import INVALID_PARAMS, METHOD_NOT_FOUND, RpcError, RpcRegistry

STARTED = 1_700_000_000.25
NOW = STARTED + 3725.9


@dataclass
class FakeApp:
    version: str = "0.1.0"
    started_at: float = STARTED
    plugins: list[str] = field(default_factory=lambda: ["dispatcher", "failover"])
    calls: list[dict[str, Any]] = field(default_factory=list)

    def plugin_names(self) -> list[str]:
        return self.plugins

    def active_calls(self) -> list[dict[str, Any]]:
        return self.calls


@pytest.fixture
def app() -> FakeApp:
    return FakeApp(calls=[{"id": 1, "call_id": "abc@h", "state": "ringing"}])


@dataclass
class FakeLogs:
    """Stands in for b2bua.logs: records what was set."""

    level: str | None = "INFO"
    pjsip: int | None = 1
    sip_stack: bool = True
    changes: list[tuple[str, Any]] = field(default_factory=list)

    def log_level(self) -> str | None:
        return self.level

    def set_log_level(self, name: str) -> str:
        self.level = name.upper()
        self.changes.append(("level", self.level))
        return self.level

    def pjsip_log_level(self) -> int | None:
        return self.pjsip if self.sip_stack else None

    def set_pjsip_log_level(self, level: int) -> int:
        if not self.sip_stack:
            raise RuntimeError("no SIP stack runs in this process")
        self.pjsip = level
        self.changes.append(("pjsip", level))
        return level


@pytest.fixture
def logs() -> FakeLogs:
    return FakeLogs()


@pytest.fixture
def registry(app: FakeApp, logs: FakeLogs) -> RpcRegistry:
    reg = RpcRegistry()

    def set_state(state: str, group: int, address: str) -> None:
        """A plugin method, to see it listed next to the core ones."""

    reg.add("dispatcher.set_state", set_state, "Set the state of a destination.")
    register_core_methods(reg, app, clock=lambda: NOW, logs=logs)
    return reg


def call(registry: RpcRegistry, name: str, *params: Any) -> Any:
    return RpcRegistry.bind(registry.get(name), list(params))()


def test_fake_app_satisfies_the_protocol(app: FakeApp) -> None:
    core_app: CoreApp = app  # a type error here would mean the Protocol and the tests disagree
    assert core_app.version == "0.1.0"


@pytest.mark.parametrize(
    ("name", "params", "expected"),
    [
        ("core.version", (), "0.1.0"),
        ("core.uptime", (), {"now": 1_700_003_726, "up_since": 1_700_000_000, "uptime": 3725}),
        ("core.plugins", (), ["dispatcher", "failover"]),
        ("core.calls", (), [{"id": 1, "call_id": "abc@h", "state": "ringing"}]),
        ("system.listMethods", (), [
            "core.calls", "core.log_level", "core.plugins", "core.uptime", "core.version", "dispatcher.set_state",
            "help",
            "system.listMethods", "system.methodHelp",
        ]),
        ("system.methodHelp", ("dispatcher.set_state",), "Set the state of a destination."),
        ("help", ("dispatcher.set_state",),
         "usage: dispatcher.set_state state group address\nSet the state of a destination."),
    ],
)
def test_methods(registry: RpcRegistry, name: str, params: tuple[Any, ...], expected: Any) -> None:
    assert call(registry, name, *params) == expected


def test_help_without_a_name_lists_every_method_with_usage(registry: RpcRegistry) -> None:
    listing = call(registry, "help")
    assert listing["dispatcher.set_state state group address"] == "Set the state of a destination."
    assert listing["help [name]"].startswith("Without a name")
    assert listing["system.methodHelp name"] == "The help text of control method <name>."
    assert len(listing) == len(call(registry, "system.listMethods"))


@pytest.mark.parametrize("name", ["system.methodHelp", "help"])
def test_help_for_an_unknown_method(registry: RpcRegistry, name: str) -> None:
    with pytest.raises(RpcError) as info:
        call(registry, name, "no.such")
    assert (info.value.code, info.value.message) == (METHOD_NOT_FOUND, "Method not found: no.such")


def test_results_are_fresh_copies(registry: RpcRegistry, app: FakeApp) -> None:
    plugins = call(registry, "core.plugins")
    plugins.append("mutated")
    assert app.plugins == ["dispatcher", "failover"]


def test_only_core_calls_and_log_level_run_on_the_loop(registry: RpcRegistry) -> None:
    # core.log_level: a pjsip level change reconfigures pjsua, which belongs to the loop thread
    on_loop = {m.name for m in registry if m.on_loop}
    assert on_loop == {"core.calls", "core.log_level", "dispatcher.set_state"}


def test_every_core_method_has_help(registry: RpcRegistry) -> None:
    assert all(m.help for m in registry)


@pytest.mark.parametrize(
    ("now", "started", "expected"),
    [
        (100.9, 40.2, {"now": 100, "up_since": 40, "uptime": 60}),
        (50.0, 50.0, {"now": 50, "up_since": 50, "uptime": 0}),
        (49.0, 50.0, {"now": 49, "up_since": 50, "uptime": 0}),  # the wall clock stepped back
    ],
)
def test_uptime_report(now: float, started: float, expected: dict[str, int]) -> None:
    assert uptime_report(now, started) == expected


def test_over_json_rpc(registry: RpcRegistry) -> None:
    loop_calls: list[str] = []

    def run_on_loop(fn: Any, timeout: float) -> Any:
        loop_calls.append("loop")
        return fn()

    processor = JsonRpcProcessor(registry, run_on_loop)
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "core.uptime"},
        {"jsonrpc": "2.0", "id": 2, "method": "core.calls"},
        {"jsonrpc": "2.0", "id": 3, "method": "system.methodHelp", "params": {"name": "core.calls"}},
        {"jsonrpc": "2.0", "id": 4, "method": "core.version", "params": ["extra"]},
    ]
    answers = json.loads(processor.handle(json.dumps(batch).encode()) or b"")
    assert answers[0]["result"]["uptime"] == 3725
    assert answers[1]["result"][0]["call_id"] == "abc@h"
    assert answers[2]["result"] == "The calls in progress."
    assert answers[3]["error"]["code"] == INVALID_PARAMS
    assert loop_calls == ["loop"]  # only core.calls was handed to the loop


def test_log_level_without_params_reads_both(registry: RpcRegistry, logs: FakeLogs) -> None:
    assert call(registry, "core.log_level") == {"level": "INFO", "pjsip_level": 1}
    assert logs.changes == []


@pytest.mark.parametrize(("params", "changes", "answer"), [
    (("debug",), [("level", "DEBUG")], {"level": "DEBUG", "pjsip_level": 1}),
    (("TRACE", 4), [("level", "TRACE"), ("pjsip", 4)], {"level": "TRACE", "pjsip_level": 4}),
    ((None, 0), [("pjsip", 0)], {"level": "INFO", "pjsip_level": 0}),
])
def test_log_level_sets_what_is_given(registry: RpcRegistry, logs: FakeLogs, params: tuple[Any, ...],
                                      changes: list[tuple[str, Any]], answer: dict[str, Any]) -> None:
    assert call(registry, "core.log_level", *params) == answer
    assert logs.changes == changes


@pytest.mark.parametrize(("params", "message"), [
    (("LOUD",), "'LOUD' is not a log level: use one of TRACE, DEBUG, INFO, SUCCESS, WARNING, ERROR, CRITICAL"),
    ((5,), "5 is not a log level"),
    (("DEBUG", 6), "6 is not a pjsip log level: use 0-5"),
    (("DEBUG", "4"), "'4' is not a pjsip log level"),
    (("DEBUG", True), "True is not a pjsip log level"),
])
def test_log_level_refuses_bad_values_and_changes_nothing(registry: RpcRegistry, logs: FakeLogs,
                                                          params: tuple[Any, ...], message: str) -> None:
    with pytest.raises(RpcError) as info:
        call(registry, "core.log_level", *params)
    assert info.value.code == INVALID_PARAMS
    assert info.value.message.startswith(f"Invalid params for core.log_level: {message}")
    assert logs.changes == []  # a bad pjsip level leaves the log level as it was


def test_log_level_without_a_sip_stack(registry: RpcRegistry, logs: FakeLogs) -> None:
    logs.sip_stack = False
    assert call(registry, "core.log_level", "WARNING") == {"level": "WARNING", "pjsip_level": None}
    with pytest.raises(RpcError, match="Cannot set the log level: no SIP stack runs in this process"):
        call(registry, "core.log_level", None, 3)


def test_the_logs_module_is_a_log_control() -> None:
    from b2bua import logs
    from b2bua.core_rpc import LogControl

    control: LogControl = logs  # a type error here would mean the Protocol and the module disagree
    assert control.pjsip_log_level() is None  # no SIP stack in a unit test


# -- drain and statistics -------------------------------------------------------------------------


@dataclass
class DrainingApp:
    """Calls in progress end one per look while draining (each look is one loop hand-over)."""

    sessions: list[int] = field(default_factory=lambda: [1, 2, 3])
    draining: bool = False
    looks: int = 0

    def drain(self) -> int:
        self.draining = True
        return len(self.sessions)

    def undrain(self) -> bool:
        was, self.draining = self.draining, False
        return was

    def state(self) -> str:
        return "draining" if self.draining else "up"


def test_drain_waits_for_the_last_call_and_undrain_takes_calls_again() -> None:
    from b2bua.core_rpc import register_drain_methods

    app = DrainingApp()

    def loop(fn: Any, timeout: float) -> Any:
        result = fn()
        if app.draining and app.sessions and fn is not app.drain:
            app.sessions.pop()  # a call ends between two looks
        return result

    registry = RpcRegistry()
    register_drain_methods(registry, app, loop)
    assert registry.get("core.drain").on_loop is False  # it may wait: never on the loop
    first = call(registry, "core.drain")
    assert (first["state"], first["drained"]) == ("draining", False)
    assert first["calls"] >= 2
    done = call(registry, "core.drain", 5)
    assert (done["calls"], done["drained"]) == (0, True)
    assert call(registry, "core.undrain") == {"state": "up", "calls": 0, "was_draining": True}
    assert call(registry, "core.undrain")["was_draining"] is False
    for bad in (-1, "soon", 3601, True, float("nan")):
        with pytest.raises(RpcError) as exc:
            call(registry, "core.drain", bad)
        assert exc.value.code == INVALID_PARAMS


def test_drain_wait_ends_at_its_deadline_with_calls_left() -> None:
    from b2bua.core_rpc import wait_until

    now = [0.0]
    left = wait_until(lambda: 2, 1.0, poll=0.25, clock=lambda: now[0],
                      sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert left == 2 and now[0] == pytest.approx(1.0)


def test_kamailio_statistics_methods() -> None:
    from b2bua.core_rpc import register_stats_methods
    from b2bua.stats import StatsRegistry

    class Group:
        def __init__(self, group: str, values: dict[str, float]) -> None:
            self.group, self.values, self.resets = group, values, 0

        def totals(self) -> dict[str, float]:
            return dict(self.values)

        def reset(self) -> None:
            self.resets += 1
            self.values = dict.fromkeys(self.values, 0)

    stats = StatsRegistry()
    core, disp = Group("core", {"calls_received": 4, "admitted_share": 0.5}), Group("dispatcher", {"attempts": 7})
    stats.add(core)  # type: ignore[arg-type]
    stats.add(disp)  # type: ignore[arg-type]
    registry = RpcRegistry()
    register_stats_methods(registry, stats)
    assert call(registry, "stats.get_statistics", "all") == [
        "core:calls_received = 4", "core:admitted_share = 0.5", "dispatcher:attempts = 7"]
    assert call(registry, "stats.get_statistics", "dispatcher:") == ["dispatcher:attempts = 7"]
    assert call(registry, "stats.get_statistics", "attempts", "core:calls_received") == [
        "dispatcher:attempts = 7", "core:calls_received = 4"]
    for bad in ("nothing", "nogroup:", "core:nothing"):
        with pytest.raises(RpcError, match="no statistic"):
            call(registry, "stats.get_statistics", bad)
    assert call(registry, "stats.clear_statistics", "dispatcher:") == ["dispatcher:attempts = 7"]
    assert (disp.resets, core.resets) == (1, 0)
    assert call(registry, "stats.reset_statistics") == "Ok. Statistics reset: core, dispatcher"
    assert (disp.resets, core.resets) == (2, 1)
    with pytest.raises(RpcError, match="reset by group"):
        call(registry, "stats.reset_statistics", "core:calls_received")
