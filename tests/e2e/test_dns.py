"""Host names as destinations over real SIP and real DNS (issue 12 item 3).

A DNS server of the tests' own (``dnsserver.py``, on a loopback address) holds every record; the
B2BUA is given it in ``[sip] nameservers``, so nothing reaches the machine's resolver. What is
asserted is what a user sees: which gateway got the INVITEs and with which Request-URI, the
callers' final codes, ``dispatcher.list full``, the questions the DNS server was asked.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .configs import ListEntry, RunningB2bua, b2bua_config, start_b2bua, write_list_file
from .conftest import B2buaFactory, GatewayFactory, ScenarioGatewayFactory
from .dnsserver import DnsServer
from .harness import AddressAllocator, B2buaProcess, Caller, Gateway, HarnessError, free_port, wait_until
from .test_auth import auth_gateway, credential


@pytest.fixture
def dns(addresses: AddressAllocator) -> Iterator[DnsServer]:
    server = DnsServer.start(addresses.next())
    try:
        yield server
    finally:
        server.stop()


def request_hosts(gw: Gateway) -> set[str]:
    """The host part of the Request-URIs of the INVITEs ``gw`` received."""
    return {m.first_line.split(" ")[1].split("@")[-1] for m in gw.requests("INVITE")}


def full_listing(process: B2buaProcess) -> dict[str, dict[str, Any]]:
    """``dispatcher.list full``: each destination's DEST by URI."""
    listing = process.rpc("dispatcher.list", "full")
    return {t["DEST"]["URI"]: t["DEST"] for r in listing["RECORDS"] for t in r["SET"]["TARGETS"]}


def gateways_on_one_port(gateway_factory: GatewayFactory, addresses: AddressAllocator, n: int) -> list[Gateway]:
    """``n`` answering gateways on distinct addresses and the same port (an A record's change then
    moves calls from one to the other)."""
    ips = [addresses.next() for _ in range(n)]
    for _ in range(5):
        port = free_port(ips[0], "udp")
        started: list[Gateway] = []
        try:
            for ip in ips:
                started.append(gateway_factory("answer", ip=ip, port=port))
            return started
        except HarnessError:  # the port was taken on another address meanwhile
            for gw in started:
                gw.stop()
    raise HarnessError(f"no port free on all of {ips}")


def test_srv_destination_goes_to_the_best_target_and_keeps_its_name(
        gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory, caller: Caller, workdir: Path,
        addresses: AddressAllocator, dns: DnsServer) -> None:
    best, backup = gateway_factory("answer"), gateway_factory("answer")
    dns.add_srv("_sip._udp.carrier.test", 10, 100, best.port, "sbc1.carrier.test")
    dns.add_srv("_sip._udp.carrier.test", 20, 100, backup.port, "sbc2.carrier.test")
    dns.add_a("sbc1.carrier.test", best.ip)
    dns.add_a("sbc2.carrier.test", backup.ip)
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, "sip:carrier.test")],
                      sip={"nameservers": [dns.nameserver]})
    result = caller.run_calls(b2b.ip, b2b.port, n=4, rate=20, call_duration_ms=0)
    assert result.ok and result.final_codes == [200] * 4, result.describe()
    assert (best.count("INVITE"), backup.count("INVITE")) == (4, 0)  # priority 10 before 20
    assert request_hosts(best) == {"carrier.test"}  # the name stays in the Request-URI ($du semantics)
    entry = full_listing(b2b.process)["sip:carrier.test"]
    assert entry["HOST"] == "carrier.test" and (entry["IPADDR"], entry["PORT"]) == (best.ip, best.port)
    assert entry["DNS"]["QUERY"] == "_sip._udp.carrier.test" and entry["DNS"]["TYPE"] == "SRV"
    assert [(t["HOST"], t["PORT"], t["PRIORITY"], t["ADDRESSES"]) for t in entry["DNS"]["TARGETS"]] == [
        ("sbc1.carrier.test", best.port, 10, [best.ip]), ("sbc2.carrier.test", backup.port, 20, [backup.ip])]
    assert dns.asked("_sip._udp.carrier.test", "SRV") >= 1


def test_srv_weights_share_the_calls_within_a_priority(
        gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory, caller: Caller, workdir: Path,
        addresses: AddressAllocator, dns: DnsServer) -> None:
    gws = [gateway_factory("answer"), gateway_factory("answer")]
    for i, gw in enumerate(gws):
        dns.add_srv("_sip._udp.carrier.test", 10, 50, gw.port, f"sbc{i}.carrier.test")
        dns.add_a(f"sbc{i}.carrier.test", gw.ip)
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, "sip:carrier.test")],
                      sip={"nameservers": [dns.nameserver]})
    calls = 40
    result = caller.run_calls(b2b.ip, b2b.port, n=calls, rate=40, call_duration_ms=0)
    assert result.ok and result.successful == calls, result.describe()
    shares = [gw.count("INVITE") for gw in gws]
    # equal weights: each call picks one at random (RFC 2782); both missing out is 2 * 0.5**40
    assert sum(shares) == calls and min(shares) > 0, shares


def test_a_changed_record_is_followed_after_its_ttl(
        gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory, caller: Caller, workdir: Path,
        addresses: AddressAllocator, dns: DnsServer) -> None:
    old, new = gateways_on_one_port(gateway_factory, addresses, 2)
    dns.add_a("gw.test", old.ip, ttl=1)
    uri = f"sip:gw.test:{old.port}"
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, uri)],
                      sip={"nameservers": [dns.nameserver]})
    first = caller.run_calls(b2b.ip, b2b.port, n=2, rate=20, call_duration_ms=0)
    assert first.ok and (old.count("INVITE"), new.count("INVITE")) == (2, 0), first.describe()
    dns.set_a("gw.test", new.ip, ttl=1)
    asked = dns.asked("gw.test", "A")
    # pjsip asks again once its cached answer has expired (one second): wait for that question
    wait_until(lambda: dns.asked("gw.test", "A") > asked or _call_once(caller, b2b), 10.0,
               interval=1.2, what="a new question for gw.test after its TTL")
    before = new.count("INVITE")
    later = caller.run_calls(b2b.ip, b2b.port, n=2, rate=20, call_duration_ms=0)
    assert later.ok, later.describe()
    assert new.count("INVITE") == before + 2, (old.count("INVITE"), new.count("INVITE"))
    assert request_hosts(new) == {f"gw.test:{old.port}"}
    # the dispatcher's copy follows too (re-resolved when the record expires, 5 s at the least)
    wait_until(lambda: full_listing(b2b.process)[uri]["IPADDR"] == new.ip, 15.0, interval=0.5,
               what="dispatcher.list full showing the new address")


def _call_once(caller: Caller, b2b: Any) -> bool:
    """One call, to make pjsip resolve the name again; False so that the wait goes on."""
    caller.run_calls(b2b.ip, b2b.port, n=1, rate=10, call_duration_ms=0)
    return False


def test_a_silent_nameserver_stalls_no_call_to_an_ip_destination(
        gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory, caller: Caller, workdir: Path,
        addresses: AddressAllocator, dns: DnsServer) -> None:
    by_ip, by_name = gateway_factory("answer"), gateway_factory("answer")
    dns.add_a("slow.test", by_name.ip, ttl=1)
    entries = [ListEntry(1, f"sip:slow.test:{by_name.port}"), ListEntry(2, by_ip.uri)]
    routes = [{"ruri_user_prefix": "slow", "set": 1}, {"set": 2}]
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), entries, routes=routes,
                      sip={"nameservers": [dns.nameserver], "attempt_timeout": 4.0})
    dns.silent = True  # from now on every question goes unanswered
    asked = dns.asked("slow.test")
    blocked = caller.start_calls(b2b.ip, b2b.port, n=2, rate=10, service="slow-1", behaviour="expect:408",
                                 name="blocked")
    wait_until(lambda: dns.asked("slow.test") > asked, 10.0, what="the B2BUA asking for slow.test")
    # while those two calls wait for an answer that never comes, calls to an IP go through as usual
    ip_caller = Caller(addresses.next(), workdir)
    quick = ip_caller.run_calls(b2b.ip, b2b.port, n=20, rate=50, call_duration_ms=0, name="quick")
    assert quick.ok and quick.final_codes == [200] * 20, quick.describe()
    assert blocked.returncode is None, "the calls to slow.test should still be waiting for DNS"
    result = blocked.wait()
    assert result.ok and result.final_codes == [408, 408], result.describe()  # the attempt timer, not a stall
    assert by_name.count("INVITE") == 0 and by_ip.count("INVITE") == 20


def test_a_name_without_records_stops_the_start_naming_the_line(workdir: Path, addresses: AddressAllocator,
                                                                dns: DnsServer) -> None:
    dns.add_a("gw.test", "127.0.0.99")
    text = b2bua_config(addresses.next(), 5060, sip={"nameservers": [dns.nameserver]})
    b2b = B2buaProcess(workdir)
    b2b.config_path.write_text(text)
    (workdir / "dispatcher.list").write_text("1 sip:gw.test:5060\n1 sip:carrier.test\n")
    done = b2b.cli("run", "-c", "config.toml", timeout=30)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert (f"dispatcher.list:2: set 1 sip:carrier.test: cannot resolve 'carrier.test' (no SRV record "
            f"_sip._udp.carrier.test and no A/AAAA record for carrier.test (nameservers {dns.nameserver}))"
            ) in done.stderr, done.stderr
    assert dns.asked("_sip._udp.carrier.test", "SRV") >= 1 and dns.asked("carrier.test", "A") >= 1


def test_an_srv_target_that_refuses_the_connection_is_passed_over(
        gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory, caller: Caller, workdir: Path,
        addresses: AddressAllocator, dns: DnsServer) -> None:
    # pjsip's own failover between the targets of a name: the best one refuses the TCP connection
    closed_ip = addresses.next()
    closed_port = free_port(closed_ip, "tcp")  # nothing listens there
    backup = gateway_factory("answer", transport="tcp")
    dns.add_srv("_sip._tcp.carrier.test", 10, 0, closed_port, "sbc1.carrier.test")
    dns.add_srv("_sip._tcp.carrier.test", 20, 0, backup.port, "sbc2.carrier.test")
    dns.add_a("sbc1.carrier.test", closed_ip)
    dns.add_a("sbc2.carrier.test", backup.ip)
    ip = addresses.next()
    port = free_port(ip, "udp")
    write_list_file(workdir, [ListEntry(1, "sip:carrier.test;transport=tcp")])
    b2b = b2bua_factory(b2bua_config(ip, port, sip={
        "listen": [f"udp:{ip}:{port}", f"tcp:{ip}:{free_port(ip, 'tcp')}"], "nameservers": [dns.nameserver]}))
    result = caller.run_calls(ip, port, n=2, rate=10, call_duration_ms=0)
    assert result.ok and result.final_codes == [200, 200], result.describe()
    assert backup.count("INVITE") == 2 and request_hosts(backup) == {"carrier.test;transport=tcp"}
    assert full_listing(b2b)["sip:carrier.test;transport=tcp"]["DNS"]["QUERY"] == "_sip._tcp.carrier.test"


def carrier(b2bua_factory: B2buaFactory, workdir: Path, addresses: AddressAllocator, dns: DnsServer,
            first: Gateway, second: Gateway, sip: dict[str, Any] | None = None, **config: Any) -> RunningB2bua:
    """A B2BUA whose one destination is ``sip:carrier.test``: SRV ``first`` at priority 10,
    ``second`` at 20."""
    dns.add_srv("_sip._udp.carrier.test", 10, 0, first.port, "sbc1.carrier.test")
    dns.add_srv("_sip._udp.carrier.test", 20, 0, second.port, "sbc2.carrier.test")
    dns.add_a("sbc1.carrier.test", first.ip)
    dns.add_a("sbc2.carrier.test", second.ip)
    return start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, "sip:carrier.test")],
                       sip={"nameservers": [dns.nameserver], **(sip or {})}, **config)


def test_a_503_from_one_srv_target_moves_the_call_to_the_next_target_of_the_name(
        gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory, caller: Caller, workdir: Path,
        addresses: AddressAllocator, dns: DnsServer) -> None:
    # RFC 3263 4.3: a 503 from one server of a name -> the next server (the dispatcher's dns_failover)
    busy, good = gateway_factory("reject:503"), gateway_factory("answer")
    b2b = carrier(b2bua_factory, workdir, addresses, dns, busy, good)
    result = caller.run_calls(b2b.ip, b2b.port, n=3, rate=10, call_duration_ms=0)
    assert result.ok and result.final_codes == [200] * 3, result.describe()
    assert (busy.count("INVITE"), good.count("INVITE")) == (3, 3)
    # each server got the name in the Request-URI and no Route header pointing at itself
    for gw in (busy, good):
        assert request_hosts(gw) == {"carrier.test"}
        assert all(m.header("Route") is None for m in gw.requests("INVITE"))
    b2b.process.wait_for_log(f"to sip:carrier.test via {busy.ip}:{busy.port} failed: 503", timeout=5)


def test_an_srv_target_that_does_not_answer_is_left_for_the_next_one(
        gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory, caller: Caller, workdir: Path,
        addresses: AddressAllocator, dns: DnsServer) -> None:
    silent, good = gateway_factory("silent"), gateway_factory("answer")
    b2b = carrier(b2bua_factory, workdir, addresses, dns, silent, good, sip={"attempt_timeout": 1.0})
    result = caller.run_calls(b2b.ip, b2b.port, n=2, rate=10, call_duration_ms=0)
    assert result.ok and result.final_codes == [200, 200], result.describe()
    assert silent.count("INVITE") == 2 and good.count("INVITE") == 2


def test_a_cancel_reaches_the_srv_target_that_got_the_invite(
        gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory, caller: Caller, workdir: Path,
        addresses: AddressAllocator, dns: DnsServer) -> None:
    # the INVITE rings at the second server (the first answered 503); the caller's CANCEL must
    # follow it there, although the name itself leads to the first server
    busy, ringing = gateway_factory("reject:503"), gateway_factory("ring")
    b2b = carrier(b2bua_factory, workdir, addresses, dns, busy, ringing)
    result = caller.run_calls(b2b.ip, b2b.port, n=1, rate=10, behaviour="cancel", cancel_after_ms=200)
    assert result.ok, result.describe()
    wait_until(lambda: ringing.count("CANCEL") == 1, 5.0, what="the CANCEL at the ringing server")
    assert busy.count("CANCEL") == 0 and busy.count("INVITE") == 1


def test_a_challenge_from_an_srv_target_is_answered_at_that_target(
        gateway_factory: GatewayFactory, scenario_gateway: ScenarioGatewayFactory, b2bua_factory: B2buaFactory,
        caller: Caller, workdir: Path, addresses: AddressAllocator, dns: DnsServer) -> None:
    # the second server challenges: the INVITE with credentials goes back to it, not to the
    # first server the name leads to
    busy, challenging = gateway_factory("reject:503"), auth_gateway(scenario_gateway, 401)
    b2b = carrier(b2bua_factory, workdir, addresses, dns, busy, challenging, credentials=[credential()])
    result = caller.run_calls(b2b.ip, b2b.port, n=2, rate=5, call_duration_ms=0)
    assert result.final_codes == [200, 200], result.describe()
    assert busy.count("INVITE") == 2
    assert len([m for m in challenging.requests("INVITE") if m.header("Authorization")]) == 2
