"""Destination attributes for sockets, proxies and credentials (plugins.dispatcher.outbound)."""

from __future__ import annotations

from pathlib import Path

import pytest

from b2bua.api import Outbound
from b2bua.config import parse_config
from b2bua.loop import run_task_now
from plugins.dispatcher.attrs import parse_attrs
from plugins.dispatcher.childload import ChildLoad, ConfiguredSource, snapshot_steps
from plugins.dispatcher.config import DispatcherConfig
from plugins.dispatcher.model import Destination, Snapshot, build_snapshot
from plugins.dispatcher.outbound import (
    OutboundError,
    SendDefaults,
    check_outbound,
    outbound_of,
    probe_outbound,
)
from plugins.dispatcher.plans import make_target
from plugins.dispatcher.resolve import LoadError
from plugins.dispatcher.source import load_configured

SIP = parse_config({"sip": {
    "listen": ["udp:10.0.0.1:5060", "udp:203.0.113.5:5060"],
    "socket_names": {"wan": "udp:203.0.113.5:5060"},
    "credentials": [{"realm": "*", "username": "u", "password": "p", "name": "carrier"}],
}}).sip


def test_outbound_of_attributes() -> None:
    attrs = parse_attrs('socket=udp:10.0.0.1:5060;sockname=wan;obproxy="sip:sbc;lr";auth=carrier;duid=gw1')
    assert outbound_of(attrs) == Outbound("udp:10.0.0.1:5060", "wan", "sip:sbc;lr", "carrier")
    assert outbound_of(parse_attrs("duid=gw1")) == Outbound()


def test_keepalives_leave_from_ping_socket_when_given() -> None:
    attrs = parse_attrs("sockname=wan;ping_socket=udp:10.0.0.1:5060;auth=carrier")
    assert probe_outbound(attrs) == Outbound(socket="udp:10.0.0.1:5060", auth="carrier")
    assert probe_outbound(parse_attrs("sockname=wan")) == Outbound(sockname="wan")


DEFAULTS = SendDefaults(socket="udp:10.0.0.1:5060", sockname="", ping_socket="udp:203.0.113.5:5060")


def test_a_destination_naming_no_listener_takes_the_defaults() -> None:
    # Kamailio's order: B legs: attr sockname > attr socket > ds_default_sockname > ds_default_socket;
    # keepalives: attr ping_socket > attr sockname > attr socket > ds_ping_socket > the defaults
    plain, own = parse_attrs("auth=carrier"), parse_attrs("sockname=wan")
    assert outbound_of(plain, DEFAULTS) == Outbound(socket="udp:10.0.0.1:5060", auth="carrier")
    assert probe_outbound(plain, DEFAULTS) == Outbound(socket="udp:203.0.113.5:5060", auth="carrier")
    assert outbound_of(own, DEFAULTS) == probe_outbound(own, DEFAULTS) == Outbound(sockname="wan")
    by_name = SendDefaults(socket="udp:10.0.0.1:5060", sockname="wan")
    assert outbound_of(plain, by_name) == probe_outbound(plain, by_name) == \
        Outbound(socket="udp:10.0.0.1:5060", sockname="wan", auth="carrier")  # sockname wins when resolved
    pings = parse_attrs("ping_socket=udp:10.0.0.1:5060")
    assert probe_outbound(pings, DEFAULTS) == Outbound(socket="udp:10.0.0.1:5060")
    assert outbound_of(plain) == Outbound(auth="carrier")  # no defaults: pjsip picks


def test_make_target_takes_the_default_listener() -> None:
    dest = Destination(1, "sip:10.0.0.9", attrs=parse_attrs(""))
    assert make_target(dest, DEFAULTS).outbound == Outbound(socket="udp:10.0.0.1:5060")
    assert make_target(dest).outbound == Outbound()


@pytest.mark.parametrize(("defaults", "message"), [
    (SendDefaults(socket="udp:10.9.9.9:5060"), "[plugins.dispatcher] default_socket: socket=udp:10.9.9.9:5060: "
                                                "not one of the listeners in [sip] listen"),
    (SendDefaults(sockname="lan"), "[plugins.dispatcher] default_sockname: sockname=lan: no such name"),
    (SendDefaults(ping_socket="udp:10.9.9.9:5060"), "[plugins.dispatcher] ping_socket: socket=udp:10.9.9.9:5060"),
])
def test_a_default_listener_the_host_lacks_fails_the_load_naming_the_setting(
        defaults: SendDefaults, message: str) -> None:
    with pytest.raises(OutboundError) as info:
        check_outbound(snapshot("", "sockname=wan"), SIP, defaults=defaults)
    assert str(info.value).startswith(message), str(info.value)


def test_a_default_listener_of_the_wrong_transport_names_the_destination_and_the_setting() -> None:
    sip = parse_config({"sip": {"listen": ["udp:10.0.0.1:5060", "tcp:10.0.0.1:5060"]}}).sip
    snap = build_snapshot([Destination(1, "sip:10.0.0.10;transport=tcp", row_id=1),
                           Destination(1, "sip:10.0.0.11", row_id=2)], "dispatcher.list")
    with pytest.raises(OutboundError) as info:
        check_outbound(snap, sip, defaults=SendDefaults(socket="udp:10.0.0.1:5060"))
    assert str(info.value) == ("dispatcher.list line 1: set 1 sip:10.0.0.10;transport=tcp: socket=udp:10.0.0.1:5060: "
                               "a UDP listener, but sip:10.0.0.10;transport=tcp is reached over TCP "
                               "(from [plugins.dispatcher] default_socket)")


def test_default_listeners_are_checked_as_listeners_in_the_config() -> None:
    with pytest.raises(ValueError, match="default_socket: 'wan'"):
        DispatcherConfig(default_socket="wan").validate()
    with pytest.raises(ValueError, match=r"ping_socket: 'udp:1\.2\.3\.4'"):
        DispatcherConfig(ping_socket="udp:1.2.3.4").validate()
    DispatcherConfig(default_socket="udp:10.0.0.1:5060", ping_socket="tcp:[::1]:5060").validate()


def test_make_target_carries_the_outbound() -> None:
    target = make_target(Destination(1, "sip:10.0.0.9", attrs=parse_attrs("sockname=wan;auth=carrier")))
    assert target.outbound == Outbound(sockname="wan", auth="carrier")


def snapshot(*attrs: str) -> Snapshot:
    return build_snapshot([Destination(1, f"sip:10.0.0.{i + 10}", attrs=parse_attrs(a), row_id=i + 1)
                           for i, a in enumerate(attrs)], "dispatcher.list")


def test_check_outbound_accepts_what_the_host_can_honour() -> None:
    check_outbound(snapshot("", "socket=udp:10.0.0.1:5060", "sockname=wan;auth=carrier",
                            "obproxy=sip:sbc.example", "ping_socket=udp:203.0.113.5:5060"), SIP)


def test_check_outbound_names_every_bad_destination() -> None:
    snap = snapshot("sockname=lan", "duid=ok", "auth=nope", "ping_socket=udp:1.1.1.1:5060", "auth=")
    with pytest.raises(OutboundError) as info:
        check_outbound(snap, SIP)
    message = str(info.value)
    assert "dispatcher.list line 1: set 1 sip:10.0.0.10: sockname=lan: no such name" in message
    assert "line 3: set 1 sip:10.0.0.12: auth=nope: no [[sip.credentials]] named 'nope'" in message
    assert "line 4: set 1 sip:10.0.0.13: socket=udp:1.1.1.1:5060: not one of the listeners" in message
    assert "line 5: set 1 sip:10.0.0.14: auth= needs a credential's name" in message
    assert "line 2" not in message
    with pytest.raises(OutboundError, match="row id 1"):
        check_outbound(snap, SIP, rows=True)


def test_check_outbound_bounds_its_message() -> None:
    snap = snapshot(*["sockname=lan"] * 30)
    with pytest.raises(OutboundError, match=r"\(and 10 more\)$"):
        check_outbound(snap, SIP)


def test_a_reloads_child_process_checks_the_attributes_without_the_passwords(tmp_path: Path) -> None:
    """The reload's child process runs the same check (off the loop); the [sip] it gets over
    its pipe holds no password."""
    path = tmp_path / "dispatcher.list"
    path.write_text("1 sip:10.0.0.10 0 0 sockname=wan;auth=carrier\n1 sip:10.0.0.11 0 0 sockname=lan\n")
    cfg = DispatcherConfig(list_file=str(path))
    source = ConfiguredSource(cfg, path, SIP)
    assert source.request.sip is not None and "p" not in {c.password for c in source.request.sip.credentials}
    with pytest.raises(LoadError) as child:
        run_task_now(snapshot_steps(ChildLoad(source.request).run()))
    with pytest.raises(OutboundError) as in_process:
        load_configured(cfg, path, sip=SIP)
    assert str(child.value) == str(in_process.value)
    assert f"{path} line 2: set 1 sip:10.0.0.11: sockname=lan: no such name" in str(child.value)
    assert len(load_configured(cfg, path).destinations()) == 2, "without [sip], no check (a simulation)"


def test_more_ways_of_sending_than_pjsua_has_accounts_is_a_load_error() -> None:
    # pjsua holds the default account and 15 more; asking for a 16th asserts (the process aborts)
    creds = [{"realm": "*", "username": f"u{n}", "password": "p", "name": f"c{n}"} for n in range(17)]
    sip = parse_config({"sip": {"credentials": creds}}).sip
    check_outbound(snapshot(*(f"auth=c{n}" for n in range(15))), sip)  # 15: fits
    check_outbound(snapshot(*(f"auth=c{n % 15}" for n in range(40))), sip)  # the same 15, many times
    with pytest.raises(OutboundError) as info:
        check_outbound(snapshot(*(f"auth=c{n}" for n in range(17))), sip)
    message = str(info.value)
    assert message.startswith("dispatcher.list line 16: set 1 sip:10.0.0.25: one way of sending too many "
                              "(with credentials 'c15'): pjsua holds the default and at most 15 others")
    assert "line 17:" in message and "line 15:" not in message


def test_a_destination_over_a_transport_no_listener_has_is_a_load_error() -> None:
    # pjsip sends TLS (and TCP) through the listener's factory: without one every call would fail
    snap = build_snapshot([Destination(1, "sips:gw.example.com", row_id=1),
                           Destination(1, "sip:10.0.0.11;transport=tcp", row_id=2),
                           Destination(1, "sip:10.0.0.12", attrs=parse_attrs('obproxy="sip:10.0.0.1;transport=tls"'),
                                       row_id=3),
                           Destination(1, "sip:10.0.0.13", row_id=4)], "dispatcher.list")
    with pytest.raises(OutboundError) as info:
        check_outbound(snap, SIP)
    assert str(info.value) == (
        "dispatcher.list line 1: set 1 sips:gw.example.com: sips:gw.example.com is reached over TLS, and [sip] listen "
        "has no tls listener; dispatcher.list line 2: set 1 sip:10.0.0.11;transport=tcp: sip:10.0.0.11;transport=tcp "
        "is reached over TCP, and [sip] listen has no tcp listener; dispatcher.list line 3: set 1 sip:10.0.0.12: its "
        "proxy sip:10.0.0.1;transport=tls is reached over TLS, and [sip] listen has no tls listener")


def test_srtp_attribute_asks_the_b_legs_offer_not_the_keepalives() -> None:
    attrs = parse_attrs("srtp=mandatory")
    assert outbound_of(attrs) == Outbound(srtp="mandatory") and probe_outbound(attrs) == Outbound()
    sip = parse_config({"sip": {"listen": ["udp:10.0.0.1:5060", "tls:10.0.0.1:5061"],
                                "tls": {"certificate": "c.pem", "private_key": "k.pem"}}}).sip
    check_outbound(build_snapshot([Destination(1, "sip:10.0.0.10;transport=tls", attrs=attrs, row_id=1)], "d"), sip)
    with pytest.raises(OutboundError, match=r"line 1: set 1 sip:10\.0\.0\.11: srtp=mandatory: sip:10\.0\.0\.11 is "
                                            "not reached over TLS"):
        check_outbound(build_snapshot([Destination(1, "sip:10.0.0.11", attrs=attrs, row_id=1)], "d"), sip)
