"""What the statistics cost: per call on the loop thread, and per scrape.

1. Per call: one call's hooks (route_call through the dispatcher, prepare_target,
   leg_started, a 503, next_target, a second attempt, call_answered, call_ended) through a real
   PluginManager with the dispatcher and failover plugins, once as shipped (the dispatcher's
   counters, the host's ``b2bua.stats`` plugin counting answers, the ended-call count) and once
   without them (the dispatcher's counters replaced by no-ops, its ``b2bua_call_answered`` impl
   and the host's stats plugin not registered). The difference is what counting costs a call.
2. Per scrape, on the loop thread (in slices of a few ms between calls): copying every number
   (``collect_steps``) and writing the text format (``exposition_steps``), against
   ``prometheus_client``'s ``generate_latest`` of the same families (what the listener's thread
   would otherwise compute beside the loop), for lists of 10, 100, 1000 and 2000 destinations
   (above 2000 the per-destination series are left out) with counters on every one.

No SIP, no I/O. Run it on a quiet machine; the numbers are small.

    .venv/bin/python bench/stats.py                       # 20000 calls x 7 rounds
    .venv/bin/python bench/stats.py --calls 5000 --repeat 3
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
import timeit
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from b2bua import defaults
from b2bua.api import CallInfo, EndCause, Failure, FailureKind, OutgoingRequest, RoutePlan
from b2bua.config import parse_config
from b2bua.loop import run_task_now
from b2bua.metrics import exposition_steps
from b2bua.plugins import Hooks, make_manager
from b2bua.stats import ProcessStats
from plugins.dispatcher.counters import DispatcherCounters
from plugins.dispatcher.drain import DrainWatch
from plugins.dispatcher.metrics import MAX_DESTINATION_SERIES, DispatcherStats
from plugins.dispatcher.model import Destination, build_snapshot
from plugins.dispatcher.plugin import DispatcherPlugin
from plugins.dispatcher.runtime import DispatcherState

GATEWAYS = [Destination(1, f"sip:10.0.0.{i}:5060", priority=10 - i) for i in range(1, 5)]


class NoCounters:
    """The dispatcher's counters replaced by methods that do nothing (the baseline)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


class _Baseline(DispatcherPlugin):
    b2bua_call_answered = None  # type: ignore[assignment]  # the impl only counts: leave it out


class _Host:
    """What b2bua_configure and b2bua_startup read of the host."""

    def __init__(self, config: Any, hook: Any) -> None:
        self.config, self.hook = config, hook

    def run_blocking(self, fn: Any, on_done: Any = None) -> Any:
        raise RuntimeError("no reloads here")

    def call_later(self, delay: float, callback: Any) -> Any:
        return None

    send_request = call_soon_threadsafe = run_on_loop = run_task = run_blocking


def make_hooks(counting: bool) -> tuple[Hooks, ProcessStats | None]:
    pm = make_manager([], with_defaults=False)  # the host's defaults answer last: registered after the plugins
    snapshot = build_snapshot(list(GATEWAYS), "bench")
    plugin = (DispatcherPlugin if counting else _Baseline)(loader=lambda cfg, path: snapshot, rng=random.Random(1))
    pm.register(plugin, name="dispatcher")
    from plugins.failover.plugin import FailoverPlugin

    pm.register(FailoverPlugin(), name="failover")
    pm.register(defaults.HostDefaults(), name="b2bua.defaults")
    hooks = Hooks(pm)
    config = parse_config({"plugins": {"dispatcher": {"ping_interval": 0, "state_file": "",
                                                      "routes": [{"set": 1, "algorithm": "priority"}]}}})
    host = _Host(config, pm.hook)
    hooks.configure(config, host)  # type: ignore[arg-type]
    pm.hook.b2bua_startup(app=host)
    stats = None
    if counting:
        stats = ProcessStats()
        pm.register(stats, name="b2bua.stats")
    else:
        plugin.counters = NoCounters()  # type: ignore[assignment]
    return hooks, stats


def one_call(hooks: Hooks, stats: ProcessStats | None, n: int) -> None:
    call = CallInfo(n, f"{n}-bench@192.0.2.1", "sip:4930123@b2bua", "sip:alice@example.com",
                    "sip:4930123@example.com", source_ip="192.0.2.1", source_port=5060, started=time.monotonic())
    if stats is not None:
        stats.received += 1  # App.admit
    hooks.incoming_call(call)
    plan = hooks.route_call(call)
    assert isinstance(plan, RoutePlan)
    first, second = plan.targets[0], plan.targets[1]
    hooks.prepare_target(call, first, OutgoingRequest("sip:4930123@10.0.0.1:5060", call.from_uri, ""))
    hooks.leg_started(call, first)
    failure = Failure(first, 503, "Service Unavailable", FailureKind.RESPONSE, 1)
    hooks.leg_failed(call, failure)
    hooks.next_target(call, plan, failure)
    hooks.prepare_target(call, second, OutgoingRequest("sip:4930123@10.0.0.2:5060", call.from_uri, ""))
    hooks.leg_started(call, second)
    hooks.call_answered(call, second)
    hooks.call_ended(call, EndCause.CALLER_HANGUP, second)
    if stats is not None:
        stats.call_ended(EndCause.CALLER_HANGUP, True)  # App.session_ended


def per_call_us(hooks: Hooks, stats: ProcessStats | None, calls: int) -> float:
    # CPU time, not wall time: on a shared machine the time spent descheduled is the neighbours'
    start = time.process_time()
    for n in range(calls):
        one_call(hooks, stats, n)
    return (time.process_time() - start) / calls * 1e6


def scrape_ms(size: int, rounds: int) -> tuple[float, float, float, int]:
    """Milliseconds to copy, to encode, and to encode with prometheus_client, for ``size``
    destinations; and the exposition's size in bytes."""
    dests = [Destination(1 + i // 500, f"sip:10.{i // 65536}.{i // 256 % 256}.{i % 256}:5060") for i in range(size)]
    state = DispatcherState()
    state.swap(build_snapshot(dests, "bench"), keep_state=False)
    counters = DispatcherCounters(lambda key: state.runtime(key) is not None)
    for d in dests:
        counters.attempt(d.key)
        counters.answered(d.key)
        counters.failed(d.key, "response", 503)
        counters.keepalive_sent(d.key)
        counters.keepalive_done(d.key, True, 0.012)
    group = DispatcherStats(state, counters, DrainWatch())
    copy, encode, library, body = [], [], [], b""
    for _ in range(rounds):
        start = time.perf_counter()
        families = run_task_now(group.collect_steps())
        copy.append(time.perf_counter() - start)
        start = time.perf_counter()
        body = run_task_now(exposition_steps(_ready(families)))
        encode.append(time.perf_counter() - start)
        start = time.perf_counter()
        generate_latest(_Collected(families))  # type: ignore[arg-type]
        library.append(time.perf_counter() - start)
    ms = [statistics.median(x) * 1e3 for x in (copy, encode, library)]
    return ms[0], ms[1], ms[2], len(body)


def _ready(families: list[Any]) -> Any:
    return families
    yield


class _Collected:
    """The same families as prometheus_client metric families (for generate_latest)."""

    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> Any:
        for f in self.families:
            kind = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily}.get(f.kind)
            if kind is None:
                metric = HistogramMetricFamily(f.name, f.help, labels=list(f.labels))
                for values, hist in f.samples:
                    metric.add_metric(list(values), [(repr(b), n) for b, n in hist.buckets] + [("+Inf", hist.count)],
                                      hist.sum)
            else:
                metric = kind(f.name, f.help, labels=list(f.labels))
                for values, value in f.samples:
                    metric.add_metric(list(values), value)
            yield metric


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20000, help="calls per round (default 20000)")
    parser.add_argument("--repeat", type=int, default=7, help="rounds; the median is printed (default 7)")
    args = parser.parse_args()
    from loguru import logger

    logger.remove()
    without, _ = make_hooks(False)
    counting, stats = make_hooks(True)
    base, counted = [], []
    for _ in range(args.repeat):
        base.append(per_call_us(without, None, args.calls))
        counted.append(per_call_us(counting, stats, args.calls))
    # the best round of each: on a shared machine the others measure the neighbours
    b, c = min(base), min(counted)
    print(f"hooks of one call (2 attempts, a failover), {args.calls} calls x {args.repeat} rounds, best round "
          f"(medians {statistics.median(base):.1f} / {statistics.median(counted):.1f}):")
    print(f"  without counters: {b:6.2f} us/call")
    print(f"  with counters:    {c:6.2f} us/call")
    print(f"  counting costs:   {c - b:6.2f} us/call on the loop thread")
    print("what counting adds, part by part (best of 7; the per-call difference above drowns in noise on a "
          "shared machine):")
    state = DispatcherState()
    state.swap(build_snapshot(list(GATEWAYS), "bench"), keep_state=False)
    counters = DispatcherCounters(lambda key: state.runtime(key) is not None)
    key = GATEWAYS[0].key
    call = CallInfo(0, "x", "sip:4930123@b2bua", "sip:a@b", "sip:4930123@b")
    target = counting.route_call(call).targets[0]  # type: ignore[union-attr]
    parts = {
        "one counter event (attempt)": (lambda: counters.attempt(key), 1),
        "one counter event (failed 503)": (lambda: counters.failed(key, "response", 503), 1),
        "b2bua_call_answered with its two counting impls": (lambda: counting.call_answered(call, target), 1),
        "b2bua_call_answered without them": (lambda: without.call_answered(call, target), 1),
    }
    cost = {}
    for name, (event, _) in parts.items():
        cost[name] = min(timeit.repeat(event, number=50_000, repeat=7)) / 50_000 * 1e6
        print(f"  {name:50s} {cost[name]:6.2f} us")
    events = 7  # selected, 2 attempts, a failure, a failover, an answer, plus the process's received/ended
    answer_hook = cost["b2bua_call_answered with its two counting impls"] - cost["b2bua_call_answered without them"]
    estimate = events * cost["one counter event (failed 503)"] + answer_hook
    print(f"  estimate for the call above ({events} events, the answer hook's impls): {estimate:.1f} us/call")
    print("scrape (every destination with counters and a keepalive histogram), median:")
    for size in (10, 100, 1000, MAX_DESTINATION_SERIES):
        copy, encode, library, length = scrape_ms(size, max(3, args.repeat // 2))
        print(f"  {size:5d} destinations: copy {copy:7.2f} ms + encode {encode:7.1f} ms on the loop "
              f"(prometheus_client: {library:7.1f} ms), {length / 1024:6.0f} KiB")


if __name__ == "__main__":
    main()
