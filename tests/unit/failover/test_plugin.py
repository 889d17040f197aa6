"""The failover plugin through a real pluggy PluginManager (plugins.failover.plugin)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy
import pytest

import b2bua.hookspecs
from b2bua import hookimpl
from b2bua.api import CallInfo, DialMode, Failure, FailureKind, Reject, RoutePlan, Target
from b2bua.config import Config, ConfigError, tomllib
from plugins.failover.plugin import CALL_RECORD, FailoverPlugin

hookspec = pluggy.HookspecMarker("b2bua")

T1, T2, T3 = Target("sip:10.0.0.1"), Target("sip:10.0.0.2"), Target("sip:10.0.0.3")


class MarkSpec:
    """Stands in for the dispatcher's own hook spec."""

    @hookspec
    def dispatcher_mark(self, target: Target, state: str, reason: str) -> None:
        """Mark the destination behind ``target``."""


@dataclass
class FakeHost:
    """The part of the Host protocol the plugin uses."""

    pm: pluggy.PluginManager

    @property
    def hook(self) -> Any:
        return self.pm.hook


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Router:
    """A routing plugin returning a fixed answer."""

    def __init__(self, answer: RoutePlan | Reject | None) -> None:
        self.answer = answer

    @hookimpl
    def b2bua_route_call(self, call: CallInfo) -> RoutePlan | Reject | None:
        return self.answer


class HostDefault:
    """Stands in for the host's trylast default: the plugin must answer first."""

    @hookimpl(trylast=True)
    def b2bua_next_target(self, call: CallInfo, plan: RoutePlan, failure: Failure) -> Reject:
        return Reject(599, "host default")


@dataclass
class Marker:
    """Stands in for the dispatcher: records marks."""

    calls: list[tuple[Target, str, str]] = field(default_factory=list)

    @hookimpl
    def dispatcher_mark(self, target: Target, state: str, reason: str) -> None:
        self.calls.append((target, state, reason))


@dataclass
class Harness:
    pm: pluggy.PluginManager
    plugin: FailoverPlugin
    clock: Clock
    marker: Marker

    def configure(self, **section: Any) -> None:
        config = Config(plugin_sections={"failover": section}, path="config.toml")
        self.pm.hook.b2bua_configure.call_historic(kwargs={"config": config, "app": FakeHost(self.pm)})

    def route(self, answer: RoutePlan | Reject | None, call: CallInfo) -> Any:
        router = Router(answer)
        self.pm.register(router)
        try:
            return self.pm.hook.b2bua_route_call(call=call)
        finally:
            self.pm.unregister(router)

    def fail(self, call: CallInfo, plan: RoutePlan, failure: Failure, *, started: bool = True) -> Any:
        """One failed attempt as the host runs it: started, failed, then ask for the next step."""
        if started:
            self.pm.hook.b2bua_leg_started(call=call, target=failure.target)
        self.pm.hook.b2bua_leg_failed(call=call, failure=failure)
        return self.pm.hook.b2bua_next_target(call=call, plan=plan, failure=failure)


def new_call(n: int = 1) -> CallInfo:
    return CallInfo(id=n, call_id=f"call-{n}", request_uri="sip:100@b2bua", from_uri="sip:a@x", to_uri="sip:100@b2bua")


@pytest.fixture
def harness() -> Iterator[Harness]:
    pm = pluggy.PluginManager("b2bua")
    pm.add_hookspecs(b2bua.hookspecs)
    pm.add_hookspecs(MarkSpec)
    clock = Clock()
    plugin = FailoverPlugin(clock=clock)
    marker = Marker()
    pm.register(plugin, name="failover")
    pm.register(marker, name="dispatcher")
    pm.register(HostDefault(), name="defaults")  # after the plugins, as b2bua.plugins.make_manager does
    yield Harness(pm, plugin, clock, marker)


def failure(target: Target, code: int, kind: FailureKind = FailureKind.RESPONSE, attempt: int = 1) -> Failure:
    reasons = {408: "Request Timeout", 486: "Busy Here", 500: "Server Internal Error", 503: "Service Unavailable"}
    return Failure(target, code, reasons.get(code, ""), kind, attempt)


# -- configuration ---------------------------------------------------------------------------------------


def test_configure_parses_section(harness: Harness) -> None:
    harness.configure(max_attempts=2, final="last")
    assert (harness.plugin.cfg.max_attempts, harness.plugin.cfg.final) == (2, "last")
    assert harness.plugin.default_attempt_timeout == 5.0  # [sip] attempt_timeout


def test_configure_error_names_section_and_key(harness: Harness) -> None:
    with pytest.raises(ConfigError, match=r"config.toml: \[plugins.failover\] failover_codes\[0\]"):
        harness.configure(failover_codes=["5x"])


def test_entry_point_loads_the_class() -> None:
    # pyproject.toml's entry point must name the class: a module has no hooks, so loading it
    # would register nothing and the host default would answer silently
    data = tomllib.loads((Path(__file__).parents[3] / "pyproject.toml").read_text(encoding="utf-8"))
    target = data["project"]["entry-points"]["b2bua"]["failover"]
    module, _, attr = target.partition(":")
    assert (module, attr) == ("plugins.failover.plugin", "FailoverPlugin")


# -- the route_call wrapper ---------------------------------------------------------------------------------


def test_wrapper_fills_timeouts_into_the_routers_plan(harness: Harness) -> None:
    harness.configure(attempt_timeout=2, answer_timeout=45)
    own = Target("sip:10.0.0.9", attempt_timeout=0.5)
    plan = harness.route(RoutePlan((T1, own), data={"set": 1}), new_call())
    assert isinstance(plan, RoutePlan)
    assert [(t.uri, t.attempt_timeout, t.answer_timeout) for t in plan.targets] == [
        ("sip:10.0.0.1", 2.0, 45.0),
        ("sip:10.0.0.9", 0.5, 45.0),  # the router's own value wins
    ]
    assert plan.data == {"set": 1}


def test_wrapper_without_timeouts_returns_the_plan_unchanged(harness: Harness) -> None:
    harness.configure()
    plan = RoutePlan((T1, T2))
    assert harness.route(plan, new_call()) is plan


@pytest.mark.parametrize("answer", [Reject(404, "Not Found"), None])
def test_wrapper_passes_rejects_and_none_through(harness: Harness, answer: Reject | None) -> None:
    harness.configure(attempt_timeout=2)
    assert harness.route(answer, new_call()) == answer


def test_wrapper_starts_the_call_clock(harness: Harness) -> None:
    harness.configure()
    call = new_call()
    harness.route(RoutePlan((T1,)), call)
    assert call.stash[CALL_RECORD].started == 1000.0


def test_wrapper_lets_a_routing_error_through(harness: Harness) -> None:
    harness.configure()

    class Broken:
        @hookimpl
        def b2bua_route_call(self, call: CallInfo) -> RoutePlan:
            raise RuntimeError("database gone")

    harness.pm.register(Broken())
    with pytest.raises(RuntimeError, match="database gone"):
        harness.pm.hook.b2bua_route_call(call=new_call())


# -- next_target ------------------------------------------------------------------------------------------


def test_serial_failover_then_hunt_stop(harness: Harness) -> None:
    harness.configure()
    call = new_call()
    plan = harness.route(RoutePlan((T1, T2, T3)), call)
    assert harness.fail(call, plan, failure(T1, 503)) == T2
    assert harness.fail(call, plan, failure(T2, 486, attempt=2)) == Reject(486, "Busy Here")
    record = call.stash[CALL_RECORD]
    assert record.tried == [T1, T2]
    assert [f.code for f in record.failures] == [503, 486]


def test_timeout_goes_to_next_and_exhaustion_answers_503(harness: Harness) -> None:
    harness.configure()
    call = new_call()
    plan = harness.route(RoutePlan((T1, T2)), call)
    assert harness.fail(call, plan, failure(T1, 408, FailureKind.NO_RESPONSE)) == T2
    answer = harness.fail(call, plan, failure(T2, 500, attempt=2))
    assert answer == Reject(
        503, "Service Unavailable", (("Retry-After", "5"), ("Reason", 'SIP;cause=500;text="Server Internal Error"'))
    )


def test_plugin_overrides_host_default(harness: Harness) -> None:
    harness.configure(failover_codes=["408"])
    call = new_call()
    plan = harness.route(RoutePlan((T1, T2)), call)
    # the host default would answer 599; the plugin relays the 503 as 500 (RFC 3261 16.7)
    assert harness.fail(call, plan, failure(T1, 503)) == Reject(500, "Server Internal Error")


def test_max_attempts(harness: Harness) -> None:
    harness.configure(max_attempts=2, retry_after=0, reason_header=False)
    call = new_call()
    plan = harness.route(RoutePlan((T1, T2, T3)), call)
    assert harness.fail(call, plan, failure(T1, 503)) == T2
    assert harness.fail(call, plan, failure(T2, 503, attempt=2)) == Reject(503, "Service Unavailable")


def test_total_budget_uses_the_call_clock(harness: Harness) -> None:
    harness.configure(total_timeout=10)
    call = new_call()
    plan = harness.route(RoutePlan((T1, T2, T3)), call)
    harness.clock.now += 7.0
    step = harness.fail(call, plan, failure(T1, 503))
    assert step == Target("sip:10.0.0.2", attempt_timeout=3.0)
    harness.clock.now += 3.0
    answer = harness.fail(call, plan, failure(step, 503, attempt=2))
    assert isinstance(answer, Reject)
    assert answer.code == 503


def test_parallel_plan_answers_once(harness: Harness) -> None:
    harness.configure(final="best")
    call = new_call()
    plan = harness.route(RoutePlan((T1, T2), mode=DialMode.PARALLEL), call)
    for t in (T1, T2):
        harness.pm.hook.b2bua_leg_started(call=call, target=t)
    harness.pm.hook.b2bua_leg_failed(call=call, failure=failure(T1, 503))
    harness.pm.hook.b2bua_leg_failed(call=call, failure=failure(T2, 500))
    answer = harness.pm.hook.b2bua_next_target(call=call, plan=plan, failure=failure(T2, 500))
    assert answer == Reject(500, "Server Internal Error")


def test_calls_do_not_share_state(harness: Harness) -> None:
    harness.configure()
    first, second = new_call(1), new_call(2)
    plan = harness.route(RoutePlan((T1, T2, T3)), first)
    harness.route(plan, second)
    assert harness.fail(first, plan, failure(T1, 503)) == T2
    assert harness.fail(first, plan, failure(T2, 503, attempt=2)) == T3
    assert harness.fail(second, plan, failure(T1, 503)) == T2


def test_works_without_route_wrapper_data(harness: Harness) -> None:
    # a host that never routed through this plugin (e.g. registered late): no stash yet
    harness.configure()
    assert harness.fail(new_call(), RoutePlan((T1, T2)), failure(T1, 503), started=False) == T2


# -- marking -----------------------------------------------------------------------------------------------

MARK_CASES: list[tuple[str, Failure, bool]] = [
    ("ip", failure(T1, 408, FailureKind.NO_RESPONSE), True),
    ("ip", failure(T1, 503), True),
    ("t", failure(T1, 500), True),
    ("ip", failure(T1, 408, FailureKind.NO_ANSWER), False),
    ("ip", failure(T1, 487, FailureKind.CANCELLED), False),
    ("ip", failure(T1, 486), False),
    ("", failure(T1, 408, FailureKind.NO_RESPONSE), False),
]


@pytest.mark.parametrize(("mark", "fail_with", "marked"), MARK_CASES)
def test_mark(harness: Harness, mark: str, fail_with: Failure, marked: bool) -> None:
    harness.configure(mark=mark)
    harness.pm.hook.b2bua_leg_failed(call=new_call(), failure=fail_with)
    expected = [(T1, mark, f"failover: {fail_with.kind.value} {fail_with.code} {fail_with.reason}")]
    assert harness.marker.calls == (expected if marked else [])


def test_mark_without_dispatcher_is_harmless() -> None:
    pm = pluggy.PluginManager("b2bua")
    pm.add_hookspecs(b2bua.hookspecs)
    plugin = FailoverPlugin()
    pm.register(plugin)
    config = Config(plugin_sections={"failover": {"mark": "ip"}})
    pm.hook.b2bua_configure.call_historic(kwargs={"config": config, "app": FakeHost(pm)})
    call = new_call()
    pm.hook.b2bua_leg_failed(call=call, failure=failure(T1, 408, FailureKind.NO_RESPONSE))
    assert pm.hook.b2bua_next_target(call=call, plan=RoutePlan((T1, T2)), failure=failure(T1, 408)) == T2


def test_a_failing_marker_does_not_stop_failover(harness: Harness) -> None:
    harness.configure(mark="ip")
    seen: list[Failure] = []

    class Broken:
        @hookimpl(tryfirst=True)
        def dispatcher_mark(self, target: Target, state: str, reason: str) -> None:
            raise RuntimeError("boom")

    class Other:
        @hookimpl(trylast=True)
        def b2bua_leg_failed(self, call: CallInfo, failure: Failure) -> None:
            seen.append(failure)

    harness.pm.register(Broken())
    harness.pm.register(Other())
    call = new_call()
    f = failure(T1, 503)
    harness.pm.hook.b2bua_leg_failed(call=call, failure=f)
    assert seen == [f]  # the other notification still ran
    assert harness.pm.hook.b2bua_next_target(call=call, plan=RoutePlan((T1, T2)), failure=f) == T2
