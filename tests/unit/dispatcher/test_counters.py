"""Per-destination counters through the plugin's real hooks, across reloads, resets and drains;
the dispatcher's statistics group and its consistency while a reload swaps the list."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from b2bua.api import CallInfo, EndCause, Failure, FailureKind, ProbeResult, RoutePlan
from b2bua.loop import Scheduler, run_task_now
from b2bua.stats import HistogramValue
from plugins.dispatcher.counters import DispatcherCounters
from plugins.dispatcher.drain import DrainWatch
from plugins.dispatcher.metrics import STEP, DispatcherStats
from plugins.dispatcher.model import Destination, build_snapshot
from plugins.dispatcher.probing import Prober
from plugins.dispatcher.runtime import DispatcherState
from plugins.dispatcher.source import load_configured

from .test_rpc import GW1, GW2, Fault, Harness

#: a serial set: GW2 (priority 5) first, GW1 second
SERIAL = f"""1 {GW1} 0 0
1 {GW2} 0 5
"""
PRIORITY = {"routes": [{"set": 1, "algorithm": "priority"}]}


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    return Harness(tmp_path, PRIORITY, SERIAL, loader=load_configured)


def new_call(n: int) -> CallInfo:
    return CallInfo(n, f"call-{n}", "sip:100@b2bua", "sip:alice@a", "sip:100@b2bua")


def route(h: Harness, call: CallInfo) -> RoutePlan:
    plan = h.pm.hook.b2bua_route_call(call=call)
    assert isinstance(plan, RoutePlan)
    return plan


def failed_over_then_answered(h: Harness, n: int, code: int = 503) -> None:
    """GW2 fails with ``code``, GW1 answers, the caller hangs up."""
    hook = h.pm.hook
    call = new_call(n)
    first, second = route(h, call).targets
    hook.b2bua_leg_started(call=call, target=first)
    hook.b2bua_leg_failed(call=call, failure=Failure(first, code, "X", FailureKind.RESPONSE, 1))
    hook.b2bua_leg_started(call=call, target=second)
    hook.b2bua_call_answered(call=call, target=second)
    hook.b2bua_call_ended(call=call, cause=EndCause.CALLER_HANGUP, answered=second)


def stats_of(h: Harness, uri: str) -> dict[str, Any]:
    report = h.rpc("dispatcher.stats")
    return next(d for s in report["sets"] for d in s["destinations"] if d["uri"] == uri)


def test_a_failover_is_counted_on_both_destinations(h: Harness) -> None:
    failed_over_then_answered(h, 1)
    failed_over_then_answered(h, 2, code=486)
    gw2, gw1 = stats_of(h, GW2), stats_of(h, GW1)
    assert (gw2["selected"], gw2["attempts"], gw2["answered"], gw2["failed"], gw2["failovers"]) == (2, 2, 0, 2, 2)
    assert gw2["codes"] == {"486": 1, "503": 1}
    assert (gw2["outcomes"]["4xx"], gw2["outcomes"]["5xx"], gw2["asr"]) == (1, 1, 0.0)
    assert (gw1["selected"], gw1["attempts"], gw1["answered"], gw1["failed"], gw1["failovers"]) == (0, 2, 2, 0, 0)
    assert gw1["asr"] == 1.0 and gw1["calls"] == 0
    assert h.flags(1, GW2)["STATS"] == {"SELECTED": 2, "ATTEMPTS": 2, "ANSWERED": 0, "FAILED": 2, "FAILOVERS": 2}


def test_timeouts_errors_and_cancelled_forks(h: Harness) -> None:
    hook = h.pm.hook
    call = new_call(1)
    first, second = route(h, call).targets
    for kind, target in ((FailureKind.NO_RESPONSE, first), (FailureKind.NO_ANSWER, first),
                         (FailureKind.ERROR, first), (FailureKind.CANCELLED, second)):
        hook.b2bua_leg_started(call=call, target=target)
        hook.b2bua_leg_failed(call=call, failure=Failure(target, 408, "X", kind, 1))
    gw2 = stats_of(h, GW2)
    assert gw2["timeouts"] == {"no_response": 1, "no_answer": 1} and gw2["errors"] == 1 and gw2["failed"] == 3
    assert gw2["outcomes"]["timeout"] == 2 and gw2["codes"] == {}
    gw1 = stats_of(h, GW1)
    # the cancelled attempt is not the gateway's failure, and no failover counts from it
    assert (gw1["cancelled"], gw1["failed"], gw1["asr"], gw1["outcomes"]["cancelled"]) == (1, 0, None, 1)
    assert gw2["failovers"] == 3  # GW2's failures were each followed by a new attempt


def test_a_reload_keeps_the_counters_of_destinations_that_stay(h: Harness, tmp_path: Path) -> None:
    failed_over_then_answered(h, 1)
    gw3 = "sip:127.0.0.1:5099"
    (tmp_path / "dispatcher.list").write_text(f"1 {GW1} 0 0\n1 {gw3} 0 7\n")  # GW2 gone, gw3 new
    assert h.rpc("dispatcher.reload").startswith("Ok.")
    assert stats_of(h, GW1)["answered"] == 1
    assert stats_of(h, gw3)["attempts"] == 0
    assert set(h.plugin.counters.by_key) == {(1, GW1)}  # GW2's went with it
    (tmp_path / "dispatcher.list").write_text(SERIAL)
    assert h.rpc("dispatcher.reload").startswith("Ok.")
    assert stats_of(h, GW2)["attempts"] == 0  # back, from zero
    assert stats_of(h, GW1)["answered"] == 1
    assert h.rpc("dispatcher.stats")["reloads"] == {"reload": {"ok": 2, "failed": 0}}
    (tmp_path / "dispatcher.list").write_text("1 not a uri\n")
    assert h.fault("dispatcher.reload", ).code == 500
    assert h.rpc("dispatcher.stats")["reloads"] == {"reload": {"ok": 2, "failed": 1}}


def test_reset_by_entry_by_set_and_all(h: Harness) -> None:
    failed_over_then_answered(h, 1)
    assert h.rpc("dispatcher.stats_reset", 1, GW2) == {"reset": 1}
    assert stats_of(h, GW2)["attempts"] == 0 and stats_of(h, GW1)["attempts"] == 1
    failed_over_then_answered(h, 2)
    assert h.rpc("dispatcher.stats_reset", 1) == {"reset": 2}
    assert stats_of(h, GW1)["attempts"] == 0
    assert h.rpc("dispatcher.stats_reset") == {"reset": 0}
    assert h.fault("dispatcher.stats_reset", 9).code == 500
    assert h.fault("dispatcher.stats_reset", 1, "sip:nowhere").code == 500
    assert h.fault("dispatcher.stats", 9).code == 500
    for method in ("dispatcher.stats", "dispatcher.stats_reset"):  # a uri alone would mean every destination
        with pytest.raises(Fault) as err:
            h.rpc(method, named={"uri": GW1})
        assert err.value.code == -32602
    assert [s["setid"] for s in h.rpc("dispatcher.stats", 1)["sets"]] == [1]
    only = h.rpc("dispatcher.stats", 1, GW1.upper().replace("SIP:", "sip:"))["sets"][0]["destinations"]
    assert [d["uri"] for d in only] == [GW1]


def test_draining_a_destination_waits_for_its_calls(h: Harness, tmp_path: Path) -> None:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO")
    try:
        hook = h.pm.hook
        call = new_call(1)
        first = route(h, call).targets[0]  # GW2
        hook.b2bua_leg_started(call=call, target=first)
        hook.b2bua_call_answered(call=call, target=first)
        result = h.rpc("dispatcher.drain", 1, GW2, 0)
        assert (result["calls"], result["drained"], result["destinations"]) == (1, False, [GW2])
        assert h.flags(1, GW2)["FLAGS"] == "DX" and h.flags(1, GW2)["RUNTIME"] == {"DLGLOAD": 1, "DRAINING": 1}
        # no new call goes there
        assert [t.uri for t in route(h, new_call(2)).targets] == [GW1]
        hook.b2bua_call_ended(call=call, cause=EndCause.CALLER_HANGUP, answered=first)
        assert h.flags(1, GW2)["RUNTIME"] == {"DLGLOAD": 0}
        assert any(re.search(rf"{re.escape(GW2)} drained: its last call ended", line) for line in lines)
        assert h.rpc("dispatcher.drain", 1, GW2, 1)["drained"] is True  # nothing left: answers at once
        assert h.plugin.flush_admin_state()
        assert GW2 in (tmp_path / "state.json").read_text()  # kept across restarts like a set_state d
        assert h.rpc("dispatcher.undrain", 1, GW2).startswith("Ok.")
        assert h.flags(1, GW2)["FLAGS"] == "AX"
        assert [t.uri for t in route(h, new_call(3)).targets] == [GW2, GW1]
        assert h.fault("dispatcher.drain", 1, "sip:nowhere").code == 500
        assert h.fault("dispatcher.drain", 1, GW2, -5).code == -32602
        # a drain ended by set_state (not undrain), or by removing the entry, stops the watch
        call4 = new_call(4)
        target = route(h, call4).targets[0]
        hook.b2bua_leg_started(call=call4, target=target)
        assert h.rpc("dispatcher.drain", 1, target.uri)["drained"] is False
        h.rpc("dispatcher.set_state", "a", 1, target.uri)
        assert h.flags(1, target.uri)["RUNTIME"] == {"DLGLOAD": 1}
        hook.b2bua_call_ended(call=call4, cause=EndCause.CALLER_HANGUP, answered=None)
        assert sum(f"{target.uri} drained: its last call" in line for line in lines) == 1  # the first drain's
    finally:
        logger.remove(sink)


def test_keepalives_are_counted_with_their_round_trip() -> None:
    sched = Scheduler(lambda: 0.0)
    state = DispatcherState()
    state.swap(build_snapshot([Destination(1, GW1)], "test"), keep_state=False)
    counters = DispatcherCounters(lambda key: state.runtime(key) is not None)
    sent: list[Any] = []
    prober = Prober(state, send=lambda *a, callback, **kw: sent.append(callback), call_later=sched.call_later,
                    interval=1.0, counters=counters)
    key = (1, GW1.lower())
    for result in (ProbeResult(200, "OK", 0.02), ProbeResult(503, "Down", 0.004),
                   ProbeResult(408, "Request Timeout", None, local=True)):
        assert prober.probe(key)
        sent.pop()(result)
    c = counters.by_key[key]
    assert (c.keepalives_sent, c.keepalives_failed) == (3, 2)
    assert c.rtt is not None
    rtt = c.rtt.value()
    assert (rtt.count, rtt.buckets[0], rtt.buckets[2]) == (2, (0.005, 1), (0.025, 2))


def dests(n: int, setid: int = 1) -> list[Destination]:
    return [Destination(setid, f"sip:10.0.{i // 250}.{i % 250 + 1}:5060") for i in range(n)]


def test_a_scrape_sees_one_generation_while_a_reload_swaps_in_between() -> None:
    state = DispatcherState()
    old = dests(STEP * 2 + 50)
    listed = [d.uri for d in build_snapshot(old, "old").sets[1].destinations]  # Kamailio's order
    state.swap(build_snapshot(old, "old"), keep_state=False)
    counters = DispatcherCounters(lambda key: state.runtime(key) is not None)
    for d in old:
        counters.attempt(d.key)
    stats = DispatcherStats(state, counters, DrainWatch())
    steps = stats.collect_steps()
    next(steps)  # the first slice is done; a reload swaps in a shorter list before the next
    state.swap(build_snapshot(old[:10], "new"), keep_state=True)
    counters.prune()
    try:
        while True:
            next(steps)
    except StopIteration as stop:
        families = {f.name: f for f in stop.value}
    up = families["b2bua_dispatcher_destination_up"].samples
    assert [labels[1] for labels, _ in up] == listed  # every entry of the old list, once
    attempts = dict(families["b2bua_dispatcher_attempts_started_total"].samples)
    # the 10 that stayed kept their counts (the same objects in both generations), the others
    # read what they had when the scrape began: no series goes back to 0 before it ends
    assert set(attempts.values()) == {1} and len(attempts) == len(old)
    assert dict(families["b2bua_dispatcher_destinations"].samples) == {("1",): len(old)}
    again = {f.name: f for f in run_task_now(stats.collect_steps())}
    assert len(again["b2bua_dispatcher_destination_up"].samples) == 10


def test_the_group_totals_and_a_histogram_family() -> None:
    state = DispatcherState()
    state.swap(build_snapshot(dests(3), "t"), keep_state=False)
    counters = DispatcherCounters(lambda key: state.runtime(key) is not None)
    first = dests(3)[0].key
    counters.attempt(first)
    counters.failed(first, "response", 503)
    counters.keepalive_sent(first)
    counters.keepalive_done(first, True, 0.012)
    counters.reload_done("dns", ok=True)
    counters.attempt((9, "sip:gone"))  # not loaded: not counted
    stats = DispatcherStats(state, counters, DrainWatch())
    totals = stats.totals()
    assert (totals["attempts"], totals["failed"], totals["destinations"], totals["destinations_up"]) == (1, 1, 3, 3)
    assert totals["reloads_ok"] == 1
    families = {f.name: f for f in run_task_now(stats.collect_steps())}
    (labels, value), = families["b2bua_dispatcher_keepalive_rtt_seconds"].samples
    assert labels == ("1", dests(3)[0].uri) and isinstance(value, HistogramValue) and value.count == 1
    assert families["b2bua_dispatcher_reloads_total"].samples == [(("dns", "ok"), 1)]
    assert families["b2bua_dispatcher_failure_responses_total"].samples == [(("1", dests(3)[0].uri, "503"), 1)]
    stats.reset()
    assert stats.totals()["attempts"] == 0 and not counters.reloads


def test_draining_many_destinations_logs_one_line_and_a_call_end_checks_only_its_own() -> None:
    from plugins.dispatcher.drain import DrainWatch

    state = DispatcherState()
    uris = [f"sip:10.0.{n // 250}.{n % 250 + 1}" for n in range(600)]
    state.swap(build_snapshot([Destination(1, u) for u in uris], "test"), keep_state=False)
    keys = [(1, u) for u in uris]
    for n, key in enumerate(keys[:300]):  # half of them carry a call each
        assert state.load_add(f"c{n}", key)
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO")
    try:
        watch = DrainWatch(clock=lambda: 10.0)
        watch.start(state, keys)
        assert lines == ["dispatcher: 300 destination(s) draining (300 call(s) to them go on), 300 drained (no calls)"]
        released = state.release_call("c7")
        assert released == [keys[7]]
        assert watch.check(state, released) == [keys[7]]
        assert watch.check(state, [keys[8]]) == []  # still has its call
        assert len(watch.pending) == 299 and lines[-1].endswith(f"{uris[7]} drained: its last call ended 0.0 s "
                                                                 "after the drain began")
    finally:
        logger.remove(sink)
