"""What sharing through Redis costs per call: loop time, Redis commands, messages (docs/scale-out.md).

Two nodes in this process (tests/unit/cluster/nodes.py: a scheduler each, a real Cluster and
RedisState) on a private ``redis-server``. Node a places calls (a B leg started, then ended
``--hold`` seconds later) at ``--rate`` calls/s for ``--seconds``; node b only listens. Printed:

* the loop time the cluster adds to a call on node a (the observer's work, its flushes and
  their callbacks), against the same calls without a cluster;
* Redis commands per call (``INFO commandstats``: the load script, heartbeats, leases);
* on node b: load messages received per second and the loop time each costs to decode and apply.

    .venv/bin/python bench/cluster.py --rate 400 --seconds 10

Numbers from a shared machine are noisy; the lead runs it on a quiet one.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "unit"), str(ROOT)]

from loguru import logger  # noqa: E402

from plugins.dispatcher.runtime import DispatcherState  # noqa: E402


def commandstats(client: Any) -> dict[str, int]:
    return {name: int(v["calls"]) for name, v in client.info("commandstats").items()}


def drive(nodes: list[Any], state: DispatcherState, keys: list[tuple[int, str]], rate: float, seconds: float,
          hold: float) -> tuple[int, float]:
    """Calls at ``rate`` on ``state`` while every node's loop runs; (calls, loop seconds spent in the calls)."""
    ends: list[tuple[float, int, tuple[int, str]]] = []
    start = time.monotonic()
    calls, spent = 0, 0.0
    while time.monotonic() - start < seconds or ends:
        now = time.monotonic()
        due = int((now - start) * rate) if now - start < seconds else calls
        t0 = time.perf_counter()
        while calls < due:
            key = keys[calls % len(keys)]
            state.load_add(calls, key)
            ends.append((now + hold, calls, key))
            calls += 1
        while ends and ends[0][0] <= now:
            _, call, key = ends.pop(0)
            state.release_call(call)
        spent += time.perf_counter() - t0
        for node in nodes:
            t0 = time.perf_counter()
            node.pump_once()
            if node is nodes[0]:
                spent += time.perf_counter() - t0
        time.sleep(0.0005)
    return calls, spent


class _BareLoop:
    """A node's loop pass without a node: the baseline pays for the same passes."""

    def __init__(self) -> None:
        from b2bua.loop import Scheduler

        self.scheduler = Scheduler()

    def pump_once(self) -> int:
        return self.scheduler.run_pending()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=400.0, help="calls per second on node a")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--hold", type=float, default=1.0, help="seconds each call holds its load slot")
    ap.add_argument("--destinations", type=int, default=20)
    ap.add_argument("--load-sync", type=float, default=0.02)
    args = ap.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")

    import redis as redis_client
    from cluster.nodes import Node, destinations, leases_settled, pump
    from redisserver import RedisServer

    server = RedisServer(Path(tempfile.mkdtemp(prefix="b2bua-bench-redis-"))).start()
    uris = [f"sip:10.9.{i // 250}.{i % 250}:5060" for i in range(args.destinations)]
    settings = {"heartbeat": 1.0, "node_ttl": 5.0, "load_sync": args.load_sync}
    nodes = [Node(server.url, name, destinations(*uris), **settings) for name in ("a", "b")]
    try:
        for node in nodes:
            node.start()
        pump(nodes, lambda: leases_settled(nodes), timeout=30, what="leases")
        a, b = nodes
        keys = [(1, u.lower()) for u in uris]

        applied = {"messages": 0, "seconds": 0.0}
        receive = b.cluster._on_messages

        def timed(payloads: list[bytes]) -> None:
            t0 = time.perf_counter()
            receive(payloads)
            applied["seconds"] += time.perf_counter() - t0
            applied["messages"] += len(payloads)

        b.cluster.link._on_messages = timed
        client = redis_client.Redis.from_url(server.url)
        before = commandstats(client)
        calls, spent = drive(nodes, a.state, keys, args.rate, args.seconds, args.hold)
        after = commandstats(client)
        settle_until = time.monotonic() + 0.5
        pump(nodes, lambda: time.monotonic() > settle_until)
        plain = DispatcherState()
        plain.swap(a.state.snapshot, keep_state=False)
        bare = _BareLoop()  # the same loop passes, with nothing to do
        base_calls, base = drive([bare], plain, keys, args.rate, min(args.seconds, 3.0), args.hold)
        per_call = spent / calls * 1e6
        base_per_call = base / base_calls * 1e6
        print(f"calls on node a: {calls} at {args.rate:g}/s, held {args.hold:g} s, load_sync {args.load_sync:g} s")
        print(f"loop time per call: {per_call:.1f} us with the cluster, {base_per_call:.1f} us without "
              f"(+{per_call - base_per_call:.1f} us)")
        evalsha = after.get("cmdstat_evalsha", 0) - before.get("cmdstat_evalsha", 0)
        total = sum(after.values()) - sum(before.values())
        print(f"Redis commands: {total} in all, {total / calls:.3f} per call; scripts (EVALSHA) {evalsha}, "
              f"{evalsha / calls:.3f} per call")
        top = sorted(((after[k] - before.get(k, 0), k) for k in after), reverse=True)[:6]
        print("  by command: " + ", ".join(f"{k.removeprefix('cmdstat_')} {n}" for n, k in top if n))
        if applied["messages"]:
            print(f"node b: {applied['messages']} messages, {applied['messages'] / args.seconds:.0f}/s, "
                  f"{applied['seconds'] / applied['messages'] * 1e6:.1f} us of loop each")
        print(f"node b sees node a's calls: remote loads {sum(b.state.runtime(k).remote_load for k in keys)} "
              "(0 once every call ended)")
    finally:
        for node in nodes:
            node.stop()
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
