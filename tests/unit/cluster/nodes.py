"""Cluster nodes inside one test process: each a scheduler pumped by the test thread (its loop),
a :class:`~b2bua.cluster.Cluster` on a real Redis, and a dispatcher state shared through
:class:`~plugins.dispatcher.redisstate.RedisState`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from b2bua.cluster import Cluster
from b2bua.config import ClusterConfig
from b2bua.loop import Scheduler
from plugins.dispatcher.adminstate import AdminState
from plugins.dispatcher.attrs import parse_attrs
from plugins.dispatcher.model import Destination, build_snapshot
from plugins.dispatcher.redisstate import RedisState
from plugins.dispatcher.runtime import DispatcherState

#: short times so expiry and take-over happen within a test
FAST = {"heartbeat": 0.1, "node_ttl": 0.6, "load_sync": 0.0, "redis_timeout": 0.5}


def destinations(*uris: str, setid: int = 1, attrs: str = "") -> list[Destination]:
    return [Destination(setid, uri, 0, 0, parse_attrs(attrs)) for uri in uris]


class Node:
    """One in-process node; ``pump()`` plays its loop for a moment."""

    def __init__(self, url: str, name: str, dests: Sequence[Destination], *, ping_interval: float = 1.0,
                 prober_active: bool = True, **settings: Any) -> None:
        self.scheduler = Scheduler()
        import threading

        self.scheduler.loop_thread = threading.current_thread()
        self.config = ClusterConfig(redis_url=url, node=name, **{**FAST, **settings})
        self.cluster = Cluster(self.config, name, post=self.scheduler.call_soon_threadsafe,
                               call_later=self.scheduler.call_later, info=lambda: {"state": "running"})
        self.state = DispatcherState()
        self.prober_active = prober_active
        self.shared = RedisState(self.cluster, ping_interval=ping_interval, prober_active=lambda: self.prober_active,
                                 call_soon=self.scheduler.call_soon_threadsafe, call_later=self.scheduler.call_later,
                                 monotonic=time.monotonic)
        self.admin = AdminState(on_operator=self.shared.operator_changed)
        self.shared.attach(self.state, self.admin)
        self.state.swap(build_snapshot(list(dests), "test"), keep_state=False)
        self.started = False

    def start(self) -> Node:
        self.cluster.start()
        self.shared.startup()
        self.started = True
        return self

    def stop(self) -> None:
        if self.started:
            self.shared.stop()
            self.cluster.stop()
            self.started = False

    def pump_once(self) -> int:
        return self.scheduler.run_pending()

    def flags(self, uri: str, setid: int = 1) -> int | None:
        return self.state.flags((setid, uri.lower()))

    def runtime(self, uri: str, setid: int = 1) -> Any:
        return self.state.runtime((setid, uri.lower()))


def pump(nodes: Iterable[Node], until: Callable[[], bool], timeout: float = 10.0, what: str = "") -> float:
    """Play every node's loop until ``until()``; returns the seconds it took."""
    nodes = list(nodes)
    start = time.monotonic()
    while not until():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout:g} s: {what or until}")
        if not sum(n.pump_once() for n in nodes):
            time.sleep(0.002)
    return time.monotonic() - start


def settle(nodes: Iterable[Node], seconds: float) -> None:
    """Play every node's loop for ``seconds``."""
    deadline = time.monotonic() + seconds
    pump(nodes, lambda: time.monotonic() >= deadline, timeout=seconds + 5)


def leases_settled(nodes: Sequence[Node]) -> bool:
    """Every shard has one prober among ``nodes`` and each knows every prober (changes made
    before this race with the new probers publishing their view of their entries)."""
    from plugins.dispatcher.sharedwire import wanted_shards

    names = tuple(sorted(n.cluster.node for n in nodes if n.prober_active))
    return all(n.shared._probers == names and not n.shared._dirty and not n.shared._refresh
               and not n.shared._state_flush
               and n.shared._owned == {s for s, c in enumerate(wanted_shards(n.cluster.node, names)) if c == "1"}
               for n in nodes)


def start_all(nodes: list[Node], *new: Node) -> None:
    """Start ``new`` nodes, add them to ``nodes`` and wait for the keepalive leases to settle."""
    for node in new:
        node.start()
        nodes.append(node)
    pump(nodes, lambda: leases_settled(nodes), what="keepalive leases settle")
    settle(nodes, 0.05)
