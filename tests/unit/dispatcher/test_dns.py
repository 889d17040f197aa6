"""Destination host names: SRV and A answers (RFC 3263), their refresh and listing; no DNS traffic
(dnspython's answers are stood in for)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import pytest

from b2bua.nameservers import Nameserver
from plugins.dispatcher.dnslookup import DnsLookup, DnsTarget, LookupFailed, Resolution, srv_name, system_lookup
from plugins.dispatcher.dnsrefresh import (
    MIN_TTL,
    RETRY_FAILED,
    DnsRefresher,
    Refreshed,
    describe,
    earliest_expiry,
    refresh_addresses,
)
from plugins.dispatcher.model import Destination, build_snapshot
from plugins.dispatcher.reloader import Reloader
from plugins.dispatcher.resolve import ResolveError, resolve_destinations
from plugins.dispatcher.rpc import list_entry
from plugins.dispatcher.runtime import DispatcherState
from plugins.dispatcher.source import LoaderSource

from .loophost import LoopHost


@dataclass
class _Name:
    text: str

    def to_text(self, omit_final_dot: bool = False) -> str:
        return self.text


@dataclass
class _Srv:
    priority: int
    weight: int
    port: int
    target: _Name


@dataclass
class _A:
    address: str


class _RRset(list[Any]):
    def __init__(self, items: list[Any], ttl: int) -> None:
        super().__init__(items)
        self.ttl = ttl


@dataclass
class _Answer:
    rrset: _RRset


class FakeDns(DnsLookup):
    """DnsLookup over a table ``{(name, type): (records, ttl)}`` instead of the network."""

    def __init__(self, zone: dict[tuple[str, str], tuple[list[Any], int]], fail: set[str] | None = None) -> None:
        super().__init__([Nameserver("192.0.2.53")])
        self.zone = dict(zone)
        self.fail = fail or set()
        self.asked: list[tuple[str, str]] = []

    def _query(self, name: str, rdtype: str) -> Any:
        self.asked.append((name, rdtype))
        if name in self.fail:
            raise LookupFailed(f"{name} {rdtype}: no answer from the nameservers (192.0.2.53) within 3 s")
        found = self.zone.get((name, rdtype))
        return _Answer(_RRset(found[0], found[1])) if found else None


def srv(priority: int, weight: int, port: int, target: str) -> _Srv:
    return _Srv(priority, weight, port, _Name(target))


CARRIER = {
    ("_sip._udp.carrier.test", "SRV"): ([srv(20, 0, 5080, "sbc3.carrier.test"), srv(10, 10, 5060, "sbc1.carrier.test"),
                                         srv(10, 90, 5062, "sbc2.carrier.test")], 300),
    ("sbc1.carrier.test", "A"): ([_A("192.0.2.1")], 60),
    ("sbc2.carrier.test", "A"): ([_A("192.0.2.2"), _A("192.0.2.22")], 120),
    ("sbc3.carrier.test", "AAAA"): ([_A("2001:db8::3")], 30),
    ("gw.test", "A"): ([_A("192.0.2.9")], 10),
}


def test_srv_names_follow_rfc_3263() -> None:
    assert srv_name("carrier.test", "udp") == "_sip._udp.carrier.test"
    assert srv_name("carrier.test", "tcp") == "_sip._tcp.carrier.test"
    assert srv_name("carrier.test", "tls") == "_sips._tcp.carrier.test"


def test_a_name_without_port_is_looked_up_as_srv_in_priority_then_weight_order() -> None:
    answer = FakeDns(CARRIER)("carrier.test", None, "udp")
    assert answer.srv and answer.query == "_sip._udp.carrier.test"
    assert [(t.host, t.port, t.priority, t.weight, t.addresses) for t in answer.targets] == [
        ("sbc2.carrier.test", 5062, 10, 90, ("192.0.2.2", "192.0.2.22")),
        ("sbc1.carrier.test", 5060, 10, 10, ("192.0.2.1",)),
        ("sbc3.carrier.test", 5080, 20, 0, ("2001:db8::3",)),  # AAAA when there is no A
    ]
    assert answer.ttl == 30  # the shortest TTL of every record used
    assert answer.first == ("192.0.2.2", 5062)


def test_without_srv_or_with_a_port_the_name_itself_is_used() -> None:
    dns = FakeDns(CARRIER)
    answer = dns("gw.test", None, "tcp")
    assert not answer.srv and answer.targets == (DnsTarget("gw.test", 5060, addresses=("192.0.2.9",)),)
    assert dns.asked == [("_sip._tcp.gw.test", "SRV"), ("gw.test", "A")]
    dns.asked.clear()
    assert dns("gw.test", 5070, "udp").first == ("192.0.2.9", 5070)
    assert dns.asked == [("gw.test", "A")]  # a port: no SRV (RFC 3263 4.2)


def test_what_does_not_resolve_says_what_was_asked() -> None:
    dns = FakeDns(CARRIER | {("_sip._udp.dead.test", "SRV"): ([srv(10, 0, 5060, "gone.test")], 60),
                             ("_sip._udp.none.test", "SRV"): ([srv(0, 0, 0, ".")], 60)})
    with pytest.raises(LookupFailed, match=r"no SRV record _sip._udp.nothing.test and no A/AAAA record for "
                                            r"nothing.test \(nameservers 192.0.2.53\)"):
        dns("nothing.test", None, "udp")
    with pytest.raises(LookupFailed, match=r"_sip._udp.dead.test: no SRV target has an address \(gone.test"):
        dns("dead.test", None, "udp")
    with pytest.raises(LookupFailed, match="service is not available"):
        dns("none.test", None, "udp")


def test_load_fails_naming_the_line_of_an_srv_name_without_records() -> None:
    dests = [Destination(1, "sip:carrier.test", row_id=3), Destination(2, "sip:nothing.test", row_id=7)]
    with pytest.raises(ResolveError) as err:
        resolve_destinations(dests, skip_unresolvable=False, location=lambda d: f"dispatcher.list:{d.row_id}",
                             host_lookup=FakeDns(CARRIER))
    assert str(err.value).startswith("dispatcher.list:7: set 2 sip:nothing.test: cannot resolve 'nothing.test' "
                                     "(no SRV record _sip._udp.nothing.test and no A/AAAA record")
    assert "dispatcher.list:3" not in str(err.value)


def test_loaded_entries_carry_the_answer_and_the_first_address() -> None:
    dns = FakeDns(CARRIER)
    dests = [Destination(1, "sip:carrier.test"), Destination(2, "sip:Carrier.test"),
             Destination(1, "sip:192.0.2.50:5070;transport=tcp")]
    out = resolve_destinations(dests, skip_unresolvable=False, host_lookup=dns)
    assert out[0].address == ("192.0.2.2", 5062, "udp") and out[0].dns is not None and out[0].dns.srv
    assert out[1].dns == out[0].dns  # one lookup per name, whatever its case
    assert dns.asked.count(("_sip._udp.carrier.test", "SRV")) == 1
    assert out[2].address == ("192.0.2.50", 5070, "tcp") and out[2].dns is None


def test_system_lookup_has_no_srv_and_no_ttl() -> None:
    def getaddrinfo(host: str, port: int) -> list[tuple[Any, ...]]:
        return [(10, 2, 17, "", ("2001:db8::9", port, 0, 0)), (2, 2, 17, "", ("192.0.2.9", port))]

    answer = system_lookup(getaddrinfo)("gw.test", None, "udp")
    assert answer.targets == (DnsTarget("gw.test", 5060, addresses=("192.0.2.9",)),) and answer.ttl == 0


def answer(ip: str, ttl: float = 60, at: float = 1000.0) -> Resolution:
    return Resolution("gw.test", False, (DnsTarget("gw.test", 5060, addresses=(ip,)),), ttl, at)


def test_earliest_expiry_uses_the_ttl_with_a_floor() -> None:
    snap = build_snapshot([Destination(1, "sip:gw.test", dns=answer("192.0.2.1", 60, 1000.0)),
                           Destination(1, "sip:gw2.test", dns=answer("192.0.2.2", 1, 2000.0)),
                           Destination(1, "sip:192.0.2.3")], "t")
    assert earliest_expiry(snap) == 1060.0
    assert earliest_expiry(build_snapshot([Destination(1, "sip:gw.test", dns=answer("192.0.2.1", 1, 10.0))],
                                          "t")) == 10.0 + MIN_TTL
    assert earliest_expiry(build_snapshot([Destination(1, "sip:gw.test", dns=answer("192.0.2.1", 0))], "t")) == math.inf


def test_refresh_swaps_only_a_changed_answer() -> None:
    dns = FakeDns(CARRIER)
    snap = build_snapshot(resolve_destinations([Destination(1, "sip:carrier.test")], skip_unresolvable=False,
                                               host_lookup=dns), "t")
    assert refresh_addresses(snap, dns) is None  # same servers, same addresses
    dns.zone[("sbc2.carrier.test", "A")] = ([_A("192.0.2.200")], 120)
    fresh = refresh_addresses(snap, dns)
    assert fresh is not None and fresh.sets[1].destinations[0].address == ("192.0.2.200", 5062, "udp")
    dns.fail = {"_sip._udp.carrier.test"}
    assert refresh_addresses(fresh, dns) is None  # a failing lookup keeps the last answer


def test_refresher_asks_again_when_the_records_expire() -> None:
    host = LoopHost()
    now = [1000.0]
    dns = FakeDns(CARRIER)
    state = DispatcherState(rng=random.Random(1))
    loaded = resolve_destinations([Destination(1, "sip:gw.test:5070")], skip_unresolvable=False, host_lookup=dns)
    state.swap(build_snapshot(loaded, "t"), keep_state=False)
    reloader = Reloader(host, state, source=LoaderSource(lambda c, p: build_snapshot([], "t"), None, None),  # type: ignore[arg-type]
                        keep_state=True)
    refresher = DnsRefresher(host, reloader, 0, dns, clock=lambda: now[0], check_every=0.01)
    try:
        assert refresher.due() == loaded[0].dns.resolved_at + 10  # type: ignore[union-attr]
        dns.zone[("gw.test", "A")] = ([_A("192.0.2.99")], 10)
        refresher.start()
        now[0] = loaded[0].dns.resolved_at + 11  # type: ignore[union-attr]
        host.pump(lambda: state.find(1, "sip:gw.test:5070").address == ("192.0.2.99", 5070, "udp"))  # type: ignore[union-attr]
        host.pump(lambda: reloader.busy is None)
        assert refresher.due() == now[0] + 10  # the next time: the new answer's TTL from now
    finally:
        refresher.stop()
        host.close()


def test_list_full_shows_the_dns_answer() -> None:
    dest = resolve_destinations([Destination(1, "sip:carrier.test")], skip_unresolvable=False,
                                host_lookup=FakeDns(CARRIER))[0]
    entry = list_entry(dest, None, "full", False)
    assert (entry["HOST"], entry["IPADDR"], entry["PORT"], entry["PROTO"]) == ("carrier.test", "192.0.2.2", 5062, "udp")
    assert entry["DNS"]["QUERY"] == "_sip._udp.carrier.test" and entry["DNS"]["TYPE"] == "SRV"
    assert entry["DNS"]["TTL"] == 30
    assert entry["DNS"]["TARGETS"][0] == {"HOST": "sbc2.carrier.test", "PORT": 5062, "PRIORITY": 10, "WEIGHT": 90,
                                          "ADDRESSES": ["192.0.2.2", "192.0.2.22"]}
    assert "DNS" not in list_entry(dest, None, "", False)
    assert describe(dest.dns).startswith("_sip._udp.carrier.test SRV: 10 90 sbc2.carrier.test:5062 [192.0.2.2 "
                                         "192.0.2.22], ")  # type: ignore[arg-type]


def test_a_failed_lookup_is_tried_again_sooner() -> None:
    assert Refreshed(ttl=600).next_in() == 600
    assert Refreshed(ttl=600, failed=1).next_in() == RETRY_FAILED
    assert Refreshed(failed=2).next_in() == RETRY_FAILED  # no answer at all: not never again
    assert Refreshed(ttl=1).next_in() == MIN_TTL
    assert Refreshed().next_in() == math.inf


def test_a_rotated_answer_is_the_same_answer() -> None:
    # BIND and most servers rotate a name's records in every answer: that is no change to reload for
    a, b = DnsTarget("a.test", 5060, 10, 50, ("10.0.0.1", "10.0.0.2")), DnsTarget("b.test", 5060, 10, 50, ("10.0.0.3",))
    first = Resolution("_sip._udp.gw.test", True, (a, b), 60, 0.0)
    rotated = Resolution("_sip._udp.gw.test", True, (b, DnsTarget("a.test", 5060, 10, 50, ("10.0.0.2", "10.0.0.1"))),
                         30, 99.0)
    assert first.same_answer(rotated)
    moved = Resolution("_sip._udp.gw.test", True, (a, DnsTarget("b.test", 5060, 10, 50, ("10.0.0.4",))), 60, 0.0)
    assert not first.same_answer(moved) and not first.same_answer(None)
