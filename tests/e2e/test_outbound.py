"""Sockets and proxies (issue 12, item 5): the listener a B leg and its keepalives leave from on a
multi-homed B2BUA (two loopback listeners), B legs and keepalives through an outbound proxy
(per destination and global), and attributes the host cannot honour refused at load."""

from __future__ import annotations

from pathlib import Path

import pytest

from .configs import ListEntry, b2bua_config, start_b2bua, write_list_file
from .conftest import B2buaFactory, GatewayFactory
from .harness import (
    AddressAllocator,
    B2buaProcess,
    Caller,
    Gateway,
    HarnessError,
    TracedMessage,
    free_port,
    wait_until,
)


def sent_by(message: TracedMessage) -> str:
    """The top Via's ``host:port``: where the B2BUA's transport says the request left from."""
    via = message.header("Via") or ""
    return via.split()[1].split(";")[0] if len(via.split()) > 1 else ""


def media_address(message: TracedMessage) -> str:
    return next((line.split()[-1] for line in message.text.splitlines() if line.startswith("c=IN IP4")), "")


def test_b_legs_and_keepalives_leave_from_the_destinations_listener(
        b2bua_factory: B2buaFactory, gateway_factory: GatewayFactory, addresses: AddressAllocator, caller: Caller,
        workdir: Path) -> None:
    lan_ip, wan_ip = addresses.next(), addresses.next()
    lan, wan = f"udp:{lan_ip}:{free_port(lan_ip)}", f"udp:{wan_ip}:{free_port(wan_ip)}"
    by_socket, by_name, pings_apart = gateway_factory("answer"), gateway_factory("answer"), gateway_factory("answer")
    entries = [
        ListEntry(1, by_socket.uri, attrs=f"socket={wan}"),
        ListEntry(2, by_name.uri, attrs=f"socket={wan};sockname=lan"),  # sockname wins, as in Kamailio
        ListEntry(3, pings_apart.uri, attrs=f"sockname=lan;ping_socket={wan}"),
    ]
    routes = [{"set": s, "algorithm": 0, "ruri_user_prefix": str(s)} for s in (1, 2, 3)]
    write_list_file(workdir, entries)
    config = b2bua_config(lan_ip, 0, routes=routes, sip={"listen": [lan, wan], "socket_names": {"lan": lan}},
                          dispatcher={"ping_interval": 1, "probing_mode": 1})
    b2bua_factory(config)
    for service in ("100", "200", "300"):
        result = caller.run_calls(lan_ip, int(lan.rsplit(":", 1)[1]), n=1, service=service)
        assert result.final_codes == [200], (service, result.describe())
    wait_until(lambda: all(gw.count("OPTIONS") for gw in (by_socket, by_name, pings_apart)), 10,
               what="a keepalive at every gateway")

    def leaves_from(gw: Gateway, method: str) -> set[str]:
        return {sent_by(m) for m in gw.requests(method)}

    assert leaves_from(by_socket, "INVITE") == {wan[4:]} and leaves_from(by_socket, "OPTIONS") == {wan[4:]}
    assert leaves_from(by_name, "INVITE") == {lan[4:]} and leaves_from(by_name, "OPTIONS") == {lan[4:]}
    assert leaves_from(pings_apart, "INVITE") == {lan[4:]} and leaves_from(pings_apart, "OPTIONS") == {wan[4:]}
    invite = by_socket.requests("INVITE")[0]
    assert wan_ip in (invite.header("Contact") or "") and media_address(invite) == wan_ip, "Contact and SDP follow"
    assert media_address(by_name.requests("INVITE")[0]) == lan_ip


def test_destinations_naming_no_listener_leave_from_the_default_one(
        b2bua_factory: B2buaFactory, gateway_factory: GatewayFactory, addresses: AddressAllocator, caller: Caller,
        workdir: Path) -> None:
    # Kamailio's ds_default_socket and ds_ping_socket: a destination's own socket attribute wins
    lan_ip, wan_ip = addresses.next(), addresses.next()
    lan, wan = f"udp:{lan_ip}:{free_port(lan_ip)}", f"udp:{wan_ip}:{free_port(wan_ip)}"
    plain, own = gateway_factory("answer"), gateway_factory("answer")
    write_list_file(workdir, [ListEntry(1, plain.uri), ListEntry(2, own.uri, attrs=f"socket={lan}")])
    routes = [{"set": s, "algorithm": 0, "ruri_user_prefix": str(s)} for s in (1, 2)]
    config = b2bua_config(lan_ip, 0, routes=routes, sip={"listen": [lan, wan]},
                          dispatcher={"ping_interval": 1, "probing_mode": 1, "default_socket": wan,
                                      "ping_socket": lan})
    b2bua_factory(config)
    for service in ("100", "200"):
        result = caller.run_calls(lan_ip, int(lan.rsplit(":", 1)[1]), n=1, service=service)
        assert result.final_codes == [200], (service, result.describe())
    wait_until(lambda: plain.count("OPTIONS") and own.count("OPTIONS"), 10, what="a keepalive at both gateways")
    assert {sent_by(m) for m in plain.requests("INVITE")} == {wan[4:]}
    assert {sent_by(m) for m in plain.requests("OPTIONS")} == {lan[4:]}
    assert {sent_by(m) for m in own.requests("INVITE")} == {sent_by(m) for m in own.requests("OPTIONS")} == {lan[4:]}
    assert media_address(plain.requests("INVITE")[0]) == wan_ip


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_a_default_listener_that_is_none_stops_start_up_naming_the_setting(
        command: str, addresses: AddressAllocator, workdir: Path) -> None:
    ip = addresses.next()
    port = free_port(ip)
    write_list_file(workdir, [ListEntry(1, "sip:127.0.0.8:5998")])
    b2b = B2buaProcess(workdir)
    b2b.config_path.write_text(b2bua_config(ip, port, dispatcher={"default_socket": "udp:127.0.0.250:5060"}))
    done = b2b.cli(command, "-c", "config.toml", timeout=60)
    assert done.returncode == 2, done.stderr
    assert "[plugins.dispatcher] default_socket: socket=udp:127.0.0.250:5060: not one of the listeners in [sip] " \
           "listen" in done.stderr, done.stderr


@pytest.mark.parametrize("where", ["obproxy", "outbound_proxy"])
def test_b_legs_and_keepalives_go_through_the_outbound_proxy(
        where: str, b2bua_factory: B2buaFactory, gateway_factory: GatewayFactory, addresses: AddressAllocator,
        caller: Caller, workdir: Path) -> None:
    """The proxy (a sipp answering in the far end's place) gets the INVITE with the gateway's
    Request-URI and a Route header naming itself; the gateway behind it nothing."""
    proxy, behind = gateway_factory("answer"), gateway_factory("answer")
    proxy_uri = f"sip:{proxy.ip}:{proxy.port}"
    attrs = f"obproxy={proxy_uri}" if where == "obproxy" else ""
    sip = {"outbound_proxy": proxy_uri} if where == "outbound_proxy" else {}
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, behind.uri, attrs=attrs)], sip=sip,
                      dispatcher={"ping_interval": 1, "probing_mode": 1})
    result = caller.run_calls(b2b.ip, b2b.port, n=2, rate=5, service="4930123")
    assert result.final_codes == [200, 200], result.describe()
    wait_until(lambda: proxy.count("OPTIONS") > 0, 10, what="a keepalive through the proxy")
    assert behind.count("INVITE") == 0 and behind.count("OPTIONS") == 0
    for invite in proxy.requests("INVITE"):
        assert invite.first_line == f"INVITE sip:4930123@{behind.ip}:{behind.port} SIP/2.0"
        assert invite.header("Route") == f"<{proxy_uri};lr>"
    options = proxy.requests("OPTIONS")[0]
    assert options.first_line == f"OPTIONS {behind.uri} SIP/2.0" and options.header("Route") == f"<{proxy_uri};lr>"


@pytest.mark.parametrize(("attrs", "message"), [
    pytest.param("socket=udp:127.0.0.250:5060", "socket=udp:127.0.0.250:5060: not one of the listeners in [sip] "
                 "listen", id="socket-not-a-listener"),
    pytest.param("sockname=wan", "sockname=wan: no such name in [sip] socket_names (known: none)", id="sockname"),
    pytest.param("socket=tcp:{ip}:{port}", "socket=tcp:{ip}:{port}: a TCP listener, but sip:127.0.0.9:5999 is "
                 "reached over UDP", id="transport"),
    pytest.param("obproxy=sip:proxy.example?Subject=x", "dispatcher.list:3: attrs: obproxy=sip:proxy.example?"
                 "Subject=x: URI headers (?Subject=x) are not allowed", id="obproxy-headers"),
    pytest.param("auth=", "auth= needs a credential's name", id="empty-auth"),
])
@pytest.mark.parametrize("command", ["run", "check-config"])
def test_attributes_the_host_cannot_honour_stop_start_up_naming_the_line(
        command: str, attrs: str, message: str, addresses: AddressAllocator, workdir: Path) -> None:
    ip = addresses.next()
    port = free_port(ip, "both")
    write_list_file(workdir, [ListEntry(1, "sip:127.0.0.8:5998"),
                              ListEntry(1, "sip:127.0.0.9:5999", attrs=attrs.format(ip=ip, port=port))])
    b2b = B2buaProcess(workdir)
    b2b.config_path.write_text(b2bua_config(ip, port, sip={"listen": [f"udp:{ip}:{port}", f"tcp:{ip}:{port}"]}))
    done = b2b.cli(command, "-c", "config.toml", timeout=60)
    assert done.returncode == 2, done.stderr
    message = message.format(ip=ip, port=port)
    expected = message if message.startswith("dispatcher.list") else \
        f"dispatcher.list line 3: set 1 sip:127.0.0.9:5999: {message}"
    assert expected in done.stderr, done.stderr


def test_reload_with_a_bad_attribute_keeps_the_destinations(
        b2bua_factory: B2buaFactory, gateway_factory: GatewayFactory, addresses: AddressAllocator, caller: Caller,
        workdir: Path) -> None:
    gw = gateway_factory("answer")
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri)])
    write_list_file(workdir, [ListEntry(1, gw.uri, attrs="sockname=nowhere")])
    with pytest.raises(Exception, match="sockname=nowhere: no such name"):
        b2b.process.rpc("dispatcher.reload")
    result = caller.run_calls(b2b.ip, b2b.port, n=1)
    assert result.final_codes == [200], result.describe()


def test_a_tcp_destination_leaves_from_the_named_tcp_listener(
        b2bua_factory: B2buaFactory, gateway_factory: GatewayFactory, addresses: AddressAllocator, caller: Caller,
        workdir: Path) -> None:
    lan_ip, wan_ip = addresses.next(), addresses.next()
    lan_port, wan_port = free_port(lan_ip, "both"), free_port(wan_ip, "both")
    listen = [f"udp:{lan_ip}:{lan_port}", f"tcp:{lan_ip}:{lan_port}", f"tcp:{wan_ip}:{wan_port}"]
    gw = gateway_factory("answer", transport="tcp")
    write_list_file(workdir, [ListEntry(1, gw.uri, attrs="sockname=wan")])
    b2bua_factory(b2bua_config(lan_ip, lan_port, sip={"listen": listen,
                                                      "socket_names": {"wan": f"tcp:{wan_ip}:{wan_port}"}}))
    result = caller.run_calls(lan_ip, lan_port, n=1)
    assert result.final_codes == [200], result.describe()
    invite = gw.requests("INVITE")[0]
    assert sent_by(invite) == f"{wan_ip}:{wan_port}" and (invite.header("Via") or "").startswith("SIP/2.0/TCP")
    # the Contact names the listener (where the gateway can connect again), not the connection's port
    assert f"@{wan_ip}:{wan_port};transport=tcp>" in (invite.header("Contact") or "").lower()
    assert media_address(invite) == wan_ip


def test_more_ways_of_sending_than_pjsua_has_accounts_stop_the_start_naming_the_line(
        workdir: Path, addresses: AddressAllocator, b2bua_factory: B2buaFactory) -> None:
    # pjsua holds 16 accounts (the default and 15 ways of sending); asking for one more asserts
    names = [f"c{n:02d}" for n in range(16)]
    write_list_file(workdir, [ListEntry(1, f"sip:10.0.0.{i + 1}:5060", attrs=f"auth={name}")
                              for i, name in enumerate(names)])
    ip = addresses.next()
    creds = [{"name": name, "realm": "carrier.example", "username": name, "password": "pw"} for name in names]
    with pytest.raises(HarnessError, match="exited with 2") as info:
        b2bua_factory(b2bua_config(ip, free_port(ip, "udp"), credentials=creds))
    assert ("dispatcher.list line 17: set 1 sip:10.0.0.16:5060: one way of sending too many (with credentials "
            "'c15'): pjsua holds the default and at most 15 others") in str(info.value)  # line 1: a comment


def test_a_plugin_asking_for_a_way_of_sending_too_many_fails_that_call_not_the_process(
        gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory, caller: Caller,
        addresses: AddressAllocator) -> None:
    # a plugin's targets are not checked at load: the 16th way of sending fails its attempt (pjsua
    # would abort the process if asked for the account), the calls before and after go on
    gw = gateway_factory("answer")
    names = [f"c{n:02d}" for n in range(17)]
    creds = [{"name": name, "realm": "carrier.example", "username": name, "password": "pw"} for name in names]
    ip = addresses.next()
    port = free_port(ip, "udp")
    b2b = b2bua_factory(b2bua_config(ip, port, plugins=["tests.e2e.host_plugins:CredentialPerCallRouter"],
                                     credentials=creds, extra_sections={"plugins.per_call": {"target": gw.uri}}))
    for name in names[:15]:
        done = caller.run_calls(ip, port, n=1, service=name, call_duration_ms=0)
        assert done.final_codes == [200], done.describe()
    for name in (names[15], names[16], names[15]):
        done = caller.run_calls(ip, port, n=1, service=name, behaviour="expect:500")
        assert done.final_codes == [500], done.describe()
    again = caller.run_calls(ip, port, n=1, service=names[3], call_duration_ms=0)
    assert again.final_codes == [200], again.describe()
    log = b2b.log_text()
    assert log.count("all 16 pjsua accounts are in use (at most 15 ways of sending besides the default)") == 3
    assert gw.count("INVITE") == 16
