"""DNS failover: one target per server of a destination's name, in RFC 2782 order."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from b2bua.api import CallInfo, DialMode, Failure, FailureKind, RoutePlan, Target
from b2bua.sip import next_hop_problem
from plugins.dispatcher.config import DispatcherConfig, Route
from plugins.dispatcher.dnsfailover import hop_text, next_hops, weighted_order
from plugins.dispatcher.dnslookup import DnsTarget, Resolution
from plugins.dispatcher.model import Destination, build_snapshot
from plugins.dispatcher.plans import dest_key_of, plan_call
from plugins.dispatcher.runtime import DispatcherState
from plugins.failover.config import FailoverConfig
from plugins.failover.policy import next_step

SBC1 = DnsTarget("sbc1.carrier.test", 5060, 10, 50, ("192.0.2.1",))
SBC2 = DnsTarget("sbc2.carrier.test", 5070, 10, 50, ("192.0.2.2", "2001:db8::2"))
SBC3 = DnsTarget("sbc3.carrier.test", 5060, 20, 0, ("198.51.100.3",))
SRV = Resolution("_sip._udp.carrier.test", True, (SBC1, SBC2, SBC3), 300, 0.0)


def test_priorities_in_order_then_each_targets_addresses() -> None:
    hops = next_hops(SRV, random.Random(1))
    assert set(hops[:3]) == {"192.0.2.1:5060", "192.0.2.2:5070", "[2001:db8::2]:5070"}
    assert hops[3] == "198.51.100.3:5060"
    # a target's own addresses stay together, in their order
    assert hops.index("[2001:db8::2]:5070") == hops.index("192.0.2.2:5070") + 1


def test_equal_weights_share_the_first_attempt() -> None:
    rng = random.Random(7)
    firsts = Counter(next_hops(SRV, rng)[0] for _ in range(2000))
    assert set(firsts) == {"192.0.2.1:5060", "192.0.2.2:5070"}
    assert 850 < firsts["192.0.2.1:5060"] < 1150


def test_weights_bias_the_order_and_weight_zero_is_rarely_first() -> None:
    heavy, light, zero = (DnsTarget(f"t{w}", 5060, 0, w, (f"10.0.0.{w + 1}",)) for w in (90, 10, 0))
    rng = random.Random(3)
    firsts = Counter(weighted_order([zero, light, heavy], rng)[0].weight for _ in range(4000))
    assert firsts[90] > 3 * firsts[10] > 0
    assert firsts[0] < 80  # first only when the random pick is exactly 0: 1 in 101


@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 100), st.integers(1, 4)), min_size=1, max_size=10),
       st.integers(0, 2**32))
def test_every_address_once_priorities_never_inverted(spec: list[tuple[int, int, int]], seed: int) -> None:
    targets = tuple(DnsTarget(f"t{i}", 5060 + i, prio, weight, tuple(f"10.{i}.0.{n}" for n in range(naddr)))
                    for i, (prio, weight, naddr) in enumerate(spec))
    hops = next_hops(Resolution("q", True, targets), random.Random(seed), limit=1000)
    assert sorted(hops) == sorted(hop_text(a, t.port) for t in targets for a in t.addresses)
    prio = {hop_text(a, t.port): t.priority for t in targets for a in t.addresses}
    assert [prio[h] for h in hops] == sorted(prio[h] for h in hops)
    assert all(next_hop_problem(h) == "" for h in hops)


def test_at_most_sixteen_hops() -> None:
    many = Resolution("q", False, (DnsTarget("gw", 5060, addresses=tuple(f"10.0.0.{n}" for n in range(40))),))
    assert len(next_hops(many, random.Random(1))) == 16


def test_next_hop_text_is_checked() -> None:
    assert next_hop_problem("192.0.2.1:5060") == ""
    assert next_hop_problem("[2001:db8::1]:5060") == ""
    assert "not IP:port" in next_hop_problem("192.0.2.1")
    assert "not IP:port" in next_hop_problem("192.0.2.1:0")
    assert "not IP:port" in next_hop_problem("192.0.2.1:99999")
    assert "not an IP address" in next_hop_problem("carrier.test:5060")
    assert "brackets" in next_hop_problem("2001:db8::1:5060")
    assert "brackets" in next_hop_problem("[192.0.2.1]:5060")
    assert "not IP:port" in next_hop_problem("192.0.2.1:\uff15\uff10\uff16\uff10")  # fullwidth digits


# -- the plan ------------------------------------------------------------------------------------

def _state(*dests: Destination) -> DispatcherState:
    state = DispatcherState(rng=random.Random(1))
    state.swap(build_snapshot(list(dests), "test"), keep_state=False)
    return state


CARRIER = Destination(1, "sip:carrier.test", priority=10, address=("192.0.2.1", 5060, "udp"), dns=SRV)
BACKUP = Destination(1, "sip:10.0.0.9", priority=1)
BY_PRIORITY = (Route(set=1, algorithm=8),)


def _plan(config: DispatcherConfig, proxied: bool = False) -> RoutePlan:
    call = CallInfo(1, "c1@x", "sip:4930@b2bua", "sip:a@x", "sip:4930@b2bua")
    plan = plan_call(config, _state(CARRIER, BACKUP), call, random.Random(5), proxied=proxied)
    assert isinstance(plan, RoutePlan)
    return plan


def test_a_name_with_several_servers_becomes_one_target_per_server_then_the_next_destination() -> None:
    plan = _plan(DispatcherConfig(routes=BY_PRIORITY))
    hops = [t.next_hop for t in plan.targets]
    assert len(plan.targets) == 5 and hops[3] == "198.51.100.3:5060" and hops[4] == ""
    assert [t.uri for t in plan.targets] == ["sip:carrier.test"] * 4 + ["sip:10.0.0.9"]
    assert {dest_key_of(t) for t in plan.targets[:4]} == {(1, "sip:carrier.test")}
    assert plan.targets[0].label == f"sip:carrier.test via {hops[0]}"


def test_off_or_through_a_proxy_the_name_is_one_target() -> None:
    for plan in (_plan(DispatcherConfig(routes=BY_PRIORITY, dns_failover=False)),
                 _plan(DispatcherConfig(routes=BY_PRIORITY), proxied=True)):
        assert [(t.uri, t.next_hop) for t in plan.targets] == [("sip:carrier.test", ""), ("sip:10.0.0.9", "")]


def test_failover_walks_the_servers_of_the_name_before_the_next_destination() -> None:
    plan = _plan(DispatcherConfig(routes=BY_PRIORITY))
    cfg = FailoverConfig()
    tried = [plan.targets[0]]
    seen = [plan.targets[0].next_hop]
    for attempt in range(1, 5):
        failure = Failure(tried[-1], 503, "Service Unavailable", FailureKind.RESPONSE, attempt)
        step = next_step(plan, failure, tried, 0.0, cfg)
        assert isinstance(step, Target)
        tried.append(step)
        seen.append(step.next_hop)
    assert seen == [t.next_hop for t in plan.targets]


def test_parallel_forks_once_per_destination() -> None:
    call = CallInfo(1, "c1@x", "sip:4930@b2bua", "sip:a@x", "sip:4930@b2bua")
    config = DispatcherConfig(routes=(Route(set=1, algorithm=12),))
    plan = plan_call(config, _state(CARRIER, BACKUP), call, random.Random(5))
    assert isinstance(plan, RoutePlan) and plan.mode is DialMode.PARALLEL
    assert [t.uri for t in plan.targets] == ["sip:carrier.test", "sip:10.0.0.9"]
    assert plan.targets[0].next_hop in {"192.0.2.1:5060", "192.0.2.2:5070"}
