"""Outbound profiles (b2bua.outbound) and the [sip] settings they rest on."""

from __future__ import annotations

import re
from typing import Any

import pytest

from b2bua.api import Outbound, Target
from b2bua.config import ConfigError, Listen, SipConfig, parse_config
from b2bua.outbound import OutboundProfile, credentials_for, default_profile, loose_route, profile_for

LISTEN = ["udp:10.0.0.1:5060", "udp:203.0.113.5:5060", "tcp:203.0.113.5:5060"]
CREDS = [
    {"realm": "carrier.example", "username": "u1", "password": "p1"},
    {"realm": "other.example", "username": "u2", "password": "p2"},
    {"realm": "*", "username": "trunk-b", "password": "p3", "name": "b"},
]


def sip(**values: Any) -> SipConfig:
    base = {"listen": LISTEN, "socket_names": {"wan": "udp:203.0.113.5:5060"}, "credentials": CREDS}
    return parse_config({"sip": base | values}).sip


def test_nothing_asked_is_the_default() -> None:
    assert not Outbound() and Target("sip:x").outbound == Outbound()
    assert default_profile(sip()) == OutboundProfile()
    assert default_profile(sip(outbound_proxy="sip:sbc.example")) == OutboundProfile(None, "sip:sbc.example;lr")


def test_socket_sockname_proxy_and_auth() -> None:
    cfg = sip(outbound_proxy="sip:sbc.example:5070")
    wan = Listen("udp", "203.0.113.5", 5060)
    assert profile_for(Outbound(socket="udp:203.0.113.5:5060"), cfg, "sip:1@gw") == OutboundProfile(
        wan, "sip:sbc.example:5070;lr")
    assert profile_for(Outbound(socket="udp:10.0.0.1:5060", sockname="wan"), cfg).listener == wan
    assert profile_for(Outbound(proxy="sip:p.example;lr;transport=udp"), cfg).proxy == "sip:p.example;lr;transport=udp"
    assert profile_for(Outbound(auth="b"), cfg) == OutboundProfile(None, "sip:sbc.example:5070;lr", "b")


@pytest.mark.parametrize(("outbound", "hop", "message"), [
    (Outbound(socket="udp:10.9.9.9:5060"), "", "socket=udp:10.9.9.9:5060: not one of the listeners"),
    (Outbound(socket="10.0.0.1:5060"), "", "socket=10.0.0.1:5060: '10.0.0.1:5060': expected 'udp:ADDRESS:PORT'"),
    (Outbound(sockname="lan"), "", "sockname=lan: no such name in [sip] socket_names (known: wan)"),
    (Outbound(socket="tcp:203.0.113.5:5060"), "sip:1@gw", "socket=tcp:203.0.113.5:5060: a TCP listener, but "
     "sip:1@gw is reached over UDP"),
    (Outbound(sockname="wan"), "sip:1@gw;transport=tcp", "sockname=wan (udp:203.0.113.5:5060): a UDP listener, "
     "but sip:1@gw;transport=tcp is reached over TCP"),
    (Outbound(socket="udp:10.0.0.1:5060", proxy="sip:p;transport=tcp"), "sip:1@gw", "a UDP listener, but "
     "sip:p;transport=tcp;lr is reached over TCP"),
    (Outbound(proxy="sip:p?X=1"), "", "obproxy=sip:p?X=1: a proxy URI has no '?headers'"),
    (Outbound(proxy="http://p"), "", "obproxy=http://p: URI scheme 'http' is not sip or sips"),
    (Outbound(auth="nope"), "", "auth=nope: no [[sip.credentials]] named 'nope' (named: b)"),
    (Outbound(srtp="sdes"), "sip:1@gw;transport=tls", "srtp=sdes: use one of off, optional, mandatory"),
    (Outbound(srtp="mandatory"), "sip:1@gw", "srtp=mandatory: sip:1@gw is not reached over TLS, and the SRTP keys "
     "would cross in clear"),
])
def test_what_cannot_be_honoured_is_refused_naming_the_attribute(outbound: Outbound, hop: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        profile_for(outbound, sip(), hop)


def test_srtp_is_one_more_thing_a_way_of_sending_holds() -> None:
    got = profile_for(Outbound(srtp="mandatory"), sip(), "sips:1@gw")
    assert got == OutboundProfile(srtp="mandatory") and got.describe() == "SRTP mandatory"
    assert profile_for(Outbound(srtp="off"), sip(), "sip:1@gw") == OutboundProfile()


def test_loose_route() -> None:
    assert loose_route("sip:p") == "sip:p;lr" and loose_route("sip:p;LR") == "sip:p;LR"
    assert loose_route("sip:p:5070;transport=tcp") == "sip:p:5070;transport=tcp;lr"


def test_credentials_per_realm_and_per_name() -> None:
    cfg = sip()
    assert [c.username for c in credentials_for(OutboundProfile(), cfg)] == ["u1", "u2"]
    assert [c.username for c in credentials_for(OutboundProfile(auth="b"), cfg)] == ["trunk-b"]
    assert "p3" not in repr(cfg) and "password" not in repr(cfg.credentials[0])


@pytest.mark.parametrize(("values", "message"), [
    ({"credentials": [{"realm": "x", "username": "u"}]}, "[sip] credentials[0] password: must not be empty"),
    ({"credentials": [{"realm": "*", "username": "u", "password": "p"}]}, "realm '*' answers any challenge"),
    ({"credentials": [{"realm": "x", "username": "u", "password": "p", "name": "a b"}]}, "name: 'a b'"),
    ({"credentials": [{"realm": "X", "username": "u", "password": "p"},
                      {"realm": "x", "username": "v", "password": "q"}]}, "[sip] credentials[1]: realm 'x' has"),
    ({"credentials": [{"realm": "x", "username": "u", "password": "p", "name": "a"},
                      {"realm": "y", "username": "v", "password": "q", "name": "a"}]}, "name 'a' is taken"),
    ({"credentials": [{"realm": "x", "username": "u", "password": "p", "scheme": "aka"}]}, "unknown key 'scheme'"),
    ({"socket_names": {"wan": "udp:1.2.3.4:5060"}}, "socket_names.wan: 'udp:1.2.3.4:5060' is not one of listen"),
    ({"socket_names": {"w n": "udp:10.0.0.1:5060"}}, "socket_names: 'w n'"),
    ({"outbound_proxy": "sbc.example"}, "outbound_proxy: sbc.example: no URI scheme"),
    # one pjsua account holds 8 credentials: the default account's creation raised at start-up
    ({"credentials": [{"realm": f"r{i}", "username": "u", "password": "p"} for i in range(9)]},
     "[sip] credentials: 9 without a name, but one pjsua account answers challenges with at most 8 "
     "(give some a name and let destinations choose them: auth=NAME)"),
])
def test_bad_settings_name_where(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config({"sip": {"listen": LISTEN} | values})


def test_eight_credentials_without_a_name_and_any_number_with_one_fit() -> None:
    creds = [{"realm": f"r{i}", "username": "u", "password": "p"} for i in range(8)]
    named = [{"realm": "*", "username": "u", "password": "p", "name": f"n{i}"} for i in range(20)]
    assert len(parse_config({"sip": {"listen": LISTEN, "credentials": creds + named}}).sip.credentials) == 28


def test_a_password_is_never_shown_in_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"sip": {"credentials": [{"realm": "x", "username": "u", "password": ["hunter2"]}]}})
    assert "hunter2" not in str(info.value) and "password: expected one line of text" in str(info.value)
