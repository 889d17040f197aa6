"""The dispatcher's state shared through a real Redis by nodes inside this process (tests/unit/cluster/nodes.py).

Each test starts its own redis-server (``redis_factory``); nodes use short heartbeats and TTLs.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from loguru import logger
from redisserver import RedisServer

from b2bua.cluster import Cluster, NameTaken
from b2bua.config import ClusterConfig
from plugins.dispatcher.model import DestFlags, is_usable
from plugins.dispatcher.runtime import FLAGS_CHANGED
from plugins.dispatcher.sharedwire import SHARDS, shard_of

from .nodes import FAST, Node, destinations, leases_settled, pump, settle

GW = ["sip:10.0.0.1:5060", "sip:10.0.0.2:5060", "sip:10.0.0.3:5060"]
D = int(DestFlags.DISABLED)
I_ = int(DestFlags.INACTIVE)


@pytest.fixture
def redis(redis_factory: Callable[[], RedisServer]) -> RedisServer:
    return redis_factory()


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    made: list[Node] = []
    yield made
    for node in made:
        node.stop()


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="WARNING")
    yield lines
    logger.remove(sink)


def start(nodes: list[Node], redis: RedisServer, name: str, **kw: object) -> Node:
    """Start a node and wait until the keepalive leases of all settled (see ``leases_settled``)."""
    node = Node(redis.url, name, destinations(*GW), **kw).start()  # type: ignore[arg-type]
    nodes.append(node)
    pump(nodes, lambda: leases_settled(nodes), what="keepalive leases settle")
    return node


def test_a_state_change_on_one_node_reaches_the_other(redis: RedisServer, nodes: list[Node]) -> None:
    a, b = start(nodes, redis, "a"), start(nodes, redis, "b")
    a.state.set_flags((1, GW[0]), I_, "probe timeout")
    pump(nodes, lambda: b.flags(GW[0]) == I_, what="B sees A's probe result")
    a.state.set_flags((1, GW[0]), 0, "200 OK")
    pump(nodes, lambda: b.flags(GW[0]) == 0, what="and its recovery")
    assert a.flags(GW[0]) == 0  # its own echo changed nothing


def test_operator_disable_is_shared_kept_and_learned_by_a_late_node(redis: RedisServer, nodes: list[Node]) -> None:
    a, b = start(nodes, redis, "a"), start(nodes, redis, "b")
    dest = a.state.find(1, GW[1])
    assert dest is not None
    a.state.set_state(1, GW[1], "d")
    a.admin.note([dest], "d")
    pump(nodes, lambda: b.flags(GW[1]) == D and (1, GW[1]) in b.admin.disabled, what="B disabled it too")
    a.state.set_flags((1, GW[2]), I_, "probe timeout")
    pump(nodes, lambda: b.flags(GW[2]) == I_)
    c = start(nodes, redis, "c")  # added later: learns at start-up, before any call
    assert c.flags(GW[1]) == D and (1, GW[1]) in c.admin.disabled
    assert c.flags(GW[2]) == I_
    b.state.set_state(1, GW[1], "a")
    b.admin.note([dest], "a")
    pump(nodes, lambda: a.flags(GW[1]) == 0 and c.flags(GW[1]) == 0 and not a.admin.disabled, what="enabled everywhere")


def test_concurrent_changes_end_the_same_everywhere(redis: RedisServer, nodes: list[Node]) -> None:
    a, b = start(nodes, redis, "a"), start(nodes, redis, "b")
    key = (1, GW[0])
    for n in range(20):  # both change the same entry at once, over and over
        a.state.set_flags(key, I_ if n % 2 else 0, "a")
        b.state.set_flags(key, 0 if n % 2 else I_, "b")
        settle(nodes, 0.01)
    settle(nodes, 0.3)
    assert a.flags(GW[0]) == b.flags(GW[0])


def test_call_loads_count_across_nodes_and_a_dead_node_stops_counting(redis: RedisServer,
                                                                      nodes: list[Node]) -> None:
    a, b = start(nodes, redis, "a"), start(nodes, redis, "b")
    key = (1, GW[0])
    for call in range(3):
        a.state.load_add(call, key)
    b.state.load_add("x", key)
    pump(nodes, lambda: b.runtime(GW[0]).remote_load == 3 and a.runtime(GW[0]).remote_load == 1)
    view = b.state.view(1, 10)
    assert view is not None
    index = [d.uri for d in view.dests].index(GW[0])
    assert view.loads[index] == 4  # algorithm 10 sees every node's calls
    a.state.load_release(0, key)
    pump(nodes, lambda: b.runtime(GW[0]).remote_load == 2)
    # a crashes: no leave, no more heartbeats; its calls stop counting once Redis forgot it
    a.cluster.link.stop()
    nodes.remove(a)
    took = pump([b], lambda: b.runtime(GW[0]).remote_load == 0, what="a's calls expire")
    assert took < FAST["node_ttl"] + 2


def test_a_clean_stop_releases_at_once(redis: RedisServer, nodes: list[Node]) -> None:
    a, b = start(nodes, redis, "a"), start(nodes, redis, "b")
    a.state.load_add(1, (1, GW[0]))
    pump(nodes, lambda: b.runtime(GW[0]).remote_load == 1)
    a.stop()
    nodes.remove(a)
    pump([b], lambda: b.runtime(GW[0]).remote_load == 0 and b.cluster.members
         and {m.name for m in b.cluster.members} == {"b"})


def keys_probed(node: Node, count: int = 500) -> set[tuple[int, str]]:
    return {k for k in ((1, f"sip:10.1.{i // 200}.{i % 200}") for i in range(count)) if node.shared.probes(k)}


def test_one_prober_per_entry_and_take_over(redis: RedisServer, nodes: list[Node]) -> None:
    a, b = start(nodes, redis, "a"), start(nodes, redis, "b")
    pa, pb = keys_probed(a), keys_probed(b)
    assert not pa & pb and len(pa | pb) == 500 and pa and pb
    assert a.shared.describe((1, GW[0]))["PROBER"] == b.shared.describe((1, GW[0]))["PROBER"]  # type: ignore[index]
    # b stops sending keepalives (ping_active 0): a takes every shard
    b.prober_active = False
    pump(nodes, lambda: len(a.shared._owned) == SHARDS and not b.shared._owned)
    b.prober_active = True
    pump(nodes, lambda: b.shared._owned)
    # a crashes mid-lease: b takes its shards when the lease and a's prober entry expire
    a.cluster.link.stop()
    nodes.remove(a)
    took = pump([b], lambda: len(b.shared._owned) == SHARDS, what="take-over")
    assert took < 2 * FAST["node_ttl"] + 1
    assert keys_probed(b) == pa | pb


def test_same_name_is_refused(redis: RedisServer, nodes: list[Node]) -> None:
    start(nodes, redis, "a")
    twin = Cluster(ClusterConfig(redis_url=redis.url, node="a", **FAST), "a", post=lambda f: None,
                   call_later=lambda d, f: None, info=dict)
    outcome: list[BaseException | None] = []

    def start_twin() -> None:  # start-up waits for the name: meanwhile the first a keeps beating
        try:
            twin.start()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=start_twin)
    thread.start()
    pump(nodes, lambda: bool(outcome), timeout=15)
    thread.join()
    assert isinstance(outcome[0], NameTaken), outcome
    assert "'a' is in use by another live node" in str(outcome[0]) and "give every node its own name" in str(outcome[0])
    assert nodes[0].cluster.joined and nodes[0].cluster.conflict is None


def test_a_crashed_predecessor_name_is_taken_over(redis: RedisServer) -> None:
    import redis as redis_client

    client = redis_client.Redis.from_url(redis.url)
    client.set("b2bua:node:a", f"{socket.gethostname()}|999999999|dead", px=60000)
    node = Cluster(ClusterConfig(redis_url=redis.url, node="a", **FAST), "a", post=lambda f: None,
                   call_later=lambda d, f: None, info=dict)
    begun = time.monotonic()
    node.start()
    try:
        assert node.joined and time.monotonic() - begun < 1
        assert client.get("b2bua:node:a") == node.token.encode()
    finally:
        node.stop()


def test_redis_down_then_back_converges(redis: RedisServer, nodes: list[Node], warnings: list[str]) -> None:
    a, b = start(nodes, redis, "a"), start(nodes, redis, "b")
    a.state.load_add(1, (1, GW[0]))
    pump(nodes, lambda: b.runtime(GW[0]).remote_load == 1 and len(a.shared._owned) + len(b.shared._owned) == SHARDS)
    redis.stop()
    pump(nodes, lambda: not a.cluster.up and not b.cluster.up, what="both notice")
    assert a.shared.probes((1, GW[0])) and b.shared.probes((1, GW[0]))  # each probes everything meanwhile
    # meanwhile an operator disables a gateway on a, and b sees another one fail
    dest = a.state.find(1, GW[1])
    assert dest is not None
    a.state.set_state(1, GW[1], "d")
    a.admin.note([dest], "d")
    b.state.set_flags((1, GW[2]), I_, "probe timeout")
    settle(nodes, FAST["node_ttl"] + 0.3)
    assert b.runtime(GW[0]).remote_load == 0  # a's count went stale: b counts its own calls only
    down = [w for w in warnings if "unreachable" in w]
    assert len(down) == 2, warnings  # one per node for the whole outage, not one per attempt
    redis.start()  # empty: no persistence
    pump(nodes, lambda: a.cluster.up and b.cluster.up, what="both reconnect")
    pump(nodes, lambda: b.flags(GW[1]) == D and a.flags(GW[2]) == b.flags(GW[2]) and b.runtime(GW[0]).remote_load == 1,
         what="state converges")
    settle(nodes, 0.5)  # and stays so (the new probers' views of their entries have been published)
    assert a.flags(GW[1]) == b.flags(GW[1]) == D and a.flags(GW[2]) == b.flags(GW[2])
    assert (1, GW[1]) in b.admin.disabled and (1, GW[1]) in a.admin.disabled
    assert any("answers again" in w for w in warnings)


def test_shared_state_ignores_its_own_replays(redis: RedisServer, nodes: list[Node]) -> None:
    a = start(nodes, redis, "a")
    seen: list[tuple[int, str]] = []
    previous = a.state.observer

    def observe(key: tuple[int, str], what: int) -> None:
        if what & FLAGS_CHANGED:
            seen.append((a.state.flags(key) or 0, "x"))
        assert previous is not None
        previous(key, what)

    a.state.observer = observe
    for flags in (I_, 0, I_, 0):
        a.state.set_flags((1, GW[0]), flags, "t")
    settle(nodes, 0.3)
    assert len(seen) == 4 and is_usable(a.flags(GW[0]) or 0)  # no extra flips from the echoes


def test_a_node_with_its_clock_off_counts_the_same(redis: RedisServer, nodes: list[Node]) -> None:
    a, b = start(nodes, redis, "a"), start(nodes, redis, "b")
    b.shared._now = lambda: time.monotonic() + 10**7  # b's clock is far off
    b.state.load_add(1, (1, GW[0]))
    pump(nodes, lambda: a.runtime(GW[0]).remote_load == 1)
    settle(nodes, FAST["node_ttl"] * 2)  # heartbeats keep it alive: Redis' clock decides
    assert a.runtime(GW[0]).remote_load == 1 and {m.name for m in a.cluster.members} == {"a", "b"}
    assert shard_of((1, GW[0])) in a.shared._owned | b.shared._owned


def test_a_state_that_does_not_change_outlives_its_ttl(redis: RedisServer, nodes: list[Node]) -> None:
    a, b = start(nodes, redis, "a"), start(nodes, redis, "b")
    a.state.set_flags((1, GW[0]), I_, "probe timeout")
    pump(nodes, lambda: b.flags(GW[0]) == I_)
    settle(nodes, 3 * 1.0 + FAST["node_ttl"] + 1)  # past the key's TTL: the prober kept it alive
    import redis as redis_client

    assert redis_client.Redis.from_url(redis.url).pttl(f"b2bua:health:1 {GW[0]}") > 0
    c = start(nodes, redis, "c")
    # a late node reads the states at start-up on its Redis thread: wait for that read to land
    pump(nodes, lambda: c.flags(GW[0]) == I_, timeout=5.0, what="the late node learning the state")


def test_garbage_on_the_channel_is_counted_not_applied(redis: RedisServer, nodes: list[Node],
                                                       warnings: list[str]) -> None:
    import redis as redis_client

    a = start(nodes, redis, "a")
    client = redis_client.Redis.from_url(redis.url)
    for payload in (b"\xff\xfe not json", b"[1, 2]", b'{"t": "state", "n": "x", "k": "bad", "f": 1, "s": 99}',
                    b'{"t": "load", "n": "x", "c": [1]}', b'{"t": "state", "n": "x", "k": [1, "' + GW[0].encode()
                    + b'"], "f": 4, "s": -5}'):
        client.publish(a.cluster.channel, payload)
    client.publish(a.cluster.channel, b'{"t": "load", "n": "x", "c": {"1 ' + GW[0].encode() + b'": 2}}')
    pump(nodes, lambda: a.runtime(GW[0]).remote_load == 2, what="the good message after the bad ones")
    assert a.flags(GW[0]) == 0
    bad = [w for w in warnings if "could not be used" in w]
    assert len(bad) == 1, warnings  # summed up, not one line per message


def test_two_takers_of_a_dead_name_cannot_both_join(redis: RedisServer) -> None:
    # both read the crashed holder's token; the first takes the name over and joins; the second's
    # take-over comes after: a plain SET overwrote the first's token and both ran as node "a". It
    # only replaces the dead holder's token, so the second finds the first alive and gives up.
    import threading

    import redis as redis_client

    client = redis_client.Redis.from_url(redis.url)
    dead = f"{socket.gethostname()}|999999999|dead"
    client.set("b2bua:node:a", dead, px=60000)
    first, second = (Cluster(ClusterConfig(redis_url=redis.url, node="a", **FAST), "a", post=lambda f: None,
                             call_later=lambda d, f: None, info=dict) for _ in range(2))
    first.start()
    stale = iter([dead.encode()])  # what the second read before the first took over
    real_join = second._join
    second._join = lambda c: next(stale, None) or real_join(c)  # type: ignore[method-assign]
    stop = threading.Event()

    def heartbeat() -> None:  # the first's heartbeat (these nodes have no loop to run theirs)
        while not stop.wait(0.05):
            client.pexpire("b2bua:node:a", 600)

    beater = threading.Thread(target=heartbeat)
    beater.start()
    try:
        with pytest.raises(NameTaken):
            second.start()
        assert first.joined and not second.joined
        assert client.get("b2bua:node:a") == first.token.encode()
    finally:
        stop.set()
        beater.join()
        first.stop()
