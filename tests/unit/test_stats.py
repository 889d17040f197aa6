"""Statistics: counters, groups, the core group's families, and their Prometheus exposition."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pluggy
import pytest
from prometheus_client.parser import text_string_to_metric_families

from b2bua import PROJECT, hookspecs
from b2bua.api import CallInfo, EndCause, Target
from b2bua.control_routes import HttpRequest
from b2bua.loop import run_task_now
from b2bua.metrics import ScrapeFailed, exposition_steps, loop_scrape, metrics_routes, process_registry
from b2bua.stats import (
    CoreStats,
    Family,
    Histogram,
    HistogramValue,
    ProcessSnapshot,
    ProcessStats,
    StatsRegistry,
    core_families,
)

#: Prometheus' metric name rule, and ours on top: the project prefix, base units, counters end in _total
NAME = re.compile(r"b2bua_[a-z0-9_]*[a-z0-9]")


def snapshot(**changes: Any) -> ProcessSnapshot:
    values: dict[str, Any] = {
        "version": "0.1.0", "state": "up", "since": 1700000000.0, "received": 10, "answered": 6, "failed": 3,
        "cancelled": 1, "ended": {"caller-hangup": 6, "failed": 3, "caller-cancel": 1},
        "refused_calls": {"draining": 2, "untrusted": 4}, "refused_requests": {"draining": 5},
        "reload_signals": 1, "active_calls": 2, "legs_in_use": 4, "call_slots": 1008, "max_calls": 200,
        "draining": False, "stopping": False, "overloaded": False, "admitted_share": 1.0,
    }
    values.update(changes)
    return ProcessSnapshot(**values)


def test_histogram_buckets_are_cumulative_with_inf_in_the_count() -> None:
    h = Histogram((0.01, 0.1, 1.0))
    for value in (0.005, 0.01, 0.05, 0.5, 7.0):
        h.observe(value)
    assert h.value() == HistogramValue(((0.01, 2), (0.1, 3), (1.0, 4)), 5, pytest.approx(7.565))


def test_process_stats_count_answers_through_the_hook_and_ends_by_cause() -> None:
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    stats = ProcessStats(clock=lambda: 100.0)
    pm.register(stats)
    pm.hook.b2bua_call_answered(call=CallInfo(1, "c", "sip:a", "sip:b", "sip:c"), target=Target("sip:gw"))
    stats.call_ended(EndCause.CALLER_HANGUP, answered=True)
    stats.call_ended(EndCause.FAILED, answered=False)
    stats.call_ended(EndCause.CALLER_CANCEL, answered=False)
    stats.call_ended(None, answered=False)
    assert (stats.answered, stats.failed, stats.cancelled) == (1, 2, 1)
    assert stats.ended == {"caller-hangup": 1, "failed": 1, "caller-cancel": 1, "error": 1}
    stats.reset()
    assert (stats.answered, stats.failed, sum(stats.ended.values()), stats.since) == (0, 0, 0, 100.0)


def test_core_families_follow_prometheus_conventions() -> None:
    for family in core_families(snapshot()):
        assert NAME.fullmatch(family.name), family.name
        assert family.name.endswith("_total") == (family.kind == "counter"), family.name
        assert family.help.endswith("."), family.name


def test_core_report_and_totals() -> None:
    resets: list[int] = []
    core = CoreStats(lambda: snapshot(draining=True, state="draining"), lambda: resets.append(1))
    report = core.report()
    assert report["state"] == "draining"
    assert report["calls"] == {"received": 10, "answered": 6, "failed": 3, "cancelled": 1, "active": 2,
                               "ended": {"caller-cancel": 1, "caller-hangup": 6, "failed": 3},
                               "refused": {"draining": 2, "untrusted": 4}, "shed": 2}
    totals = core.totals()
    assert (totals["calls_shed"], totals["calls_refused"], totals["draining"]) == (2, 6, 1)
    core.reset()
    assert resets == [1]


class FakeGroup:
    def __init__(self, group: str, families: list[Family]) -> None:
        self.group = group
        self.families = families
        self.resets = 0

    def collect_steps(self) -> Any:
        yield None
        return self.families

    def totals(self) -> dict[str, float]:
        return {f.name: f.total() for f in self.families}

    def reset(self) -> None:
        self.resets += 1


def test_registry_collects_every_group_and_refuses_a_second_of_a_name() -> None:
    registry = StatsRegistry()
    a = FakeGroup("a", [Family("b2bua_a_total", "counter", "A.", ("x",), [(("1",), 2), (("2",), 3)])])
    registry.add(a)
    registry.add(FakeGroup("b", [Family("b2bua_b", "gauge", "B.", (), [((), 7)])]))
    with pytest.raises(ValueError, match="twice"):
        registry.add(FakeGroup("a", []))
    assert [f.name for f in run_task_now(registry.collect_steps())] == ["b2bua_a_total", "b2bua_b"]
    assert registry.totals() == {"a:b2bua_a_total": 5, "b:b2bua_b": 7}
    with pytest.raises(KeyError, match="known: a, b"):
        registry.get("c")


def families_task(families: list[Family]) -> Any:
    return families
    yield


def encoded(families: list[Family], step: int = 500) -> str:
    return run_task_now(exposition_steps(families_task(families), step)).decode()


def parsed(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_exposition_of_counters_gauges_and_histograms_parses_back() -> None:
    hist = Histogram((0.01, 0.1))
    for v in (0.004, 0.02, 0.3):
        hist.observe(v)
    families = [
        *core_families(snapshot()),
        Family("b2bua_x_rtt_seconds", "histogram", "RTT.\nin \\ seconds.", ("set", "uri"),
               [(("1", 'sip:"gw"\n\\x'), hist.value())]),
    ]
    metrics = parsed(encoded(families))
    refused = {s.labels["reason"]: s.value for s in metrics["b2bua_calls_refused"].samples}
    assert refused == {"draining": 2, "untrusted": 4}
    assert metrics["b2bua_calls_refused"].type == "counter"
    assert [s.value for s in metrics["b2bua_calls_received"].samples] == [10]
    assert metrics["b2bua_admitted_share"].type == "gauge"
    rtt = {(s.name, s.labels.get("le")): s.value for s in metrics["b2bua_x_rtt_seconds"].samples}
    assert rtt[("b2bua_x_rtt_seconds_bucket", "0.01")] == 1
    assert rtt[("b2bua_x_rtt_seconds_bucket", "0.1")] == 2
    assert rtt[("b2bua_x_rtt_seconds_bucket", "+Inf")] == 3
    assert rtt[("b2bua_x_rtt_seconds_count", None)] == 3
    assert rtt[("b2bua_x_rtt_seconds_sum", None)] == pytest.approx(0.324)
    # a label value with a quote, a backslash and a line break is escaped, not a broken exposition
    assert metrics["b2bua_x_rtt_seconds"].samples[0].labels["uri"] == 'sip:"gw"\n\\x'
    assert metrics["b2bua_x_rtt_seconds"].documentation == "RTT.\nin \\ seconds."


def test_the_same_text_whatever_the_slices_and_a_large_family_is_sliced() -> None:
    big = Family("b2bua_big_total", "counter", "Many.", ("n",), [((str(i),), i) for i in range(1200)])
    families = [*core_families(snapshot()), big]
    steps = exposition_steps(families_task(families), step=100)
    slices = 0
    try:
        while True:
            next(steps)
            slices += 1
    except StopIteration as stop:
        text = stop.value.decode()
    assert slices >= 12  # the 1200 samples were written 100 per loop pass
    assert text == encoded(families, step=10_000)
    assert text.count("# TYPE b2bua_big_total counter") == 1
    assert len(parsed(text)["b2bua_big"].samples) == 1200


def test_metrics_route_adds_the_process_collectors() -> None:
    route = metrics_routes(lambda: encoded(core_families(snapshot())).encode(), process_registry())[0]
    response = route.handler(HttpRequest("GET", "/metrics"))
    assert response.status == 200 and response.content_type.startswith("text/plain; version=0.0.4")
    metrics = parsed(response.body.decode())
    assert metrics["process_resident_memory_bytes"].samples[0].value > 0
    assert "b2bua_calls_received" in metrics and "python_info" in metrics


def test_a_scrape_the_loop_does_not_take_is_a_503() -> None:
    def stuck(fn: Callable[[], Any], timeout: float) -> Any:
        raise TimeoutError

    route = metrics_routes(loop_scrape(stuck, lambda: None, timeout=0.1))[0]  # type: ignore[arg-type,return-value]
    response = route.handler(HttpRequest("GET", "/metrics"))
    assert response.status == 503 and b"did not hand over" in response.body
    with pytest.raises(ScrapeFailed):
        loop_scrape(stuck, lambda: None, timeout=0.1)()  # type: ignore[arg-type,return-value]
