"""What the cdr plugin costs the loop thread per call: its hooks, wrappers and record.

Drives one call's hooks (incoming_call, route_call, prepare_target, leg_started, a 503,
next_target, a second attempt, call_answered, call_ended) through a real PluginManager with
the host's defaults, once without and once with the cdr plugin (its writer replaced by a list:
the queue put is one ``put_nowait``, and the record is built on the writer thread, which is
timed apart: ``build``). Prints the microseconds per call, median of ``--repeat`` rounds. No
SIP, no I/O; run it on a quiet machine, the numbers are small.

    .venv/bin/python bench/cdr_hooks.py                   # 20000 calls x 7 rounds
    .venv/bin/python bench/cdr_hooks.py --calls 5000 --repeat 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from b2bua import hookimpl
from b2bua.api import CallInfo, EndCause, Failure, FailureKind, OutgoingRequest, RoutePlan, Target
from b2bua.config import parse_config
from b2bua.plugins import Hooks, make_manager
from plugins.cdr.plugin import CdrPlugin

GW1 = Target("sip:10.0.0.1:5060", data={"dispatcher": {"setid": 1, "uri": "sip:10.0.0.1:5060"}})
GW2 = Target("sip:10.0.0.2:5060", data={"dispatcher": {"setid": 1, "uri": "sip:10.0.0.2:5060"}})
PLAN = RoutePlan((GW1, GW2))


class Router:
    @hookimpl
    def b2bua_route_call(self, call: CallInfo) -> RoutePlan:
        return PLAN


class ListWriter:
    """Keeps what the loop hands over (the record is built later, on the writer thread)."""

    def __init__(self) -> None:
        self.pending: list[Any] = []

    def submit(self, pending: Any) -> bool:
        self.pending.append(pending)
        return True


def make_hooks(with_cdr: bool) -> tuple[Hooks, ListWriter]:
    pm = make_manager([])
    pm.register(Router(), name="router")
    writer = ListWriter()
    if with_cdr:
        cdr = CdrPlugin()
        pm.register(cdr, name="cdr")
        cdr.writer = writer  # type: ignore[assignment]
    hooks = Hooks(pm)
    hooks.configure(parse_config({"plugins": {"cdr": {"node": "bench"}}}), None)  # type: ignore[arg-type]
    return hooks, writer


def one_call(hooks: Hooks, n: int) -> None:
    call = CallInfo(n, f"{n}-bench@192.0.2.1", "sip:4930123@b2bua", "sip:alice@example.com",
                    "sip:4930123@example.com", from_header='"Alice" <sip:alice@example.com>;tag=1',
                    source_ip="192.0.2.1", source_port=5060, started=time.monotonic())
    hooks.incoming_call(call)
    hooks.route_call(call)
    for attempt, target in ((1, GW1), (2, GW2)):
        hooks.prepare_target(call, target, OutgoingRequest(f"sip:4930123@10.0.0.{attempt}:5060", call.from_uri, ""))
        hooks.leg_started(call, target)
        if attempt == 1:
            failure = Failure(target, 503, "Service Unavailable", FailureKind.RESPONSE, attempt)
            hooks.leg_failed(call, failure)
            hooks.next_target(call, PLAN, failure)
    hooks.call_answered(call, GW2)
    hooks.call_ended(call, EndCause.CALLER_HANGUP, GW2)


def per_call_us(hooks: Hooks, calls: int) -> float:
    start = time.perf_counter()
    for n in range(calls):
        one_call(hooks, n)
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20000, help="calls per round (default 20000)")
    parser.add_argument("--repeat", type=int, default=7, help="rounds; the median is printed (default 7)")
    args = parser.parse_args()
    from loguru import logger

    logger.remove()  # the cdr DEBUG line is filtered by level in production too
    logger.add(sys.stderr, level="INFO")
    without, _ = make_hooks(False)
    with_cdr, writer = make_hooks(True)
    base, cdr, build = [], [], []
    for _ in range(args.repeat):
        base.append(per_call_us(without, args.calls))
        writer.pending.clear()
        cdr.append(per_call_us(with_cdr, args.calls))
        start = time.perf_counter()
        for pending in writer.pending:
            pending()
        build.append((time.perf_counter() - start) / len(writer.pending) * 1e6)
    b, c = statistics.median(base), statistics.median(cdr)
    print(f"hooks of one call (2 attempts), {args.calls} calls x {args.repeat} rounds, median:")
    print(f"  without cdr: {b:6.1f} us/call")
    print(f"  with cdr:    {c:6.1f} us/call")
    print(f"  cdr costs:   {c - b:6.1f} us/call on the loop thread")
    print(f"  build:       {statistics.median(build):6.1f} us/call on the writer thread (before JSON and SQL)")


if __name__ == "__main__":
    main()
