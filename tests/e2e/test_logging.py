"""Logs of a running B2BUA: the level and pjsip's changed at run time (``core.log_level``), and
JSON lines whose keys carry the call's fields."""

from __future__ import annotations

import json
import socket

from .conftest import B2buaFactory, GatewayFactory
from .harness import AddressAllocator, Caller, free_port, wait_until


def config(ip: str, port: int, target: str, *, level: str = "INFO", json_lines: bool = False) -> str:
    return f"""
[sip]
listen = ["udp:{ip}:{port}"]
shutdown_grace = 1.0
overload_lag = 0
overload_delay = 0
[log]
level = "{level}"
pjsip_level = 1
json = {"true" if json_lines else "false"}
[control]
socket = "b2bua.sock"
[routing]
default_target = "{target}"
"""


def test_log_level_and_pjsip_level_change_at_run_time(b2bua_factory: B2buaFactory, addresses: AddressAllocator,
                                                      gateway_factory: GatewayFactory, caller: Caller) -> None:
    gw = gateway_factory("answer")
    ip = addresses.next()
    port = free_port(ip, "udp")
    b2b = b2bua_factory(config(ip, port, gw.uri))
    assert b2b.rpc("core.log_level") == {"level": "INFO", "pjsip_level": 1}

    first = caller.run_calls(ip, port, n=1, call_duration_ms=100, from_user="first")
    assert first.final_codes == [200], first.describe()
    log = b2b.log_text()
    assert "INVITE sip:service@" not in log  # the call's DEBUG line
    assert "--end msg--" not in log  # pjsip's message dumps (level 4)

    assert b2b.rpc("core.log_level", "DEBUG", 4) == {"level": "DEBUG", "pjsip_level": 4}
    second = caller.run_calls(ip, port, n=1, call_duration_ms=100, from_user="second")
    assert second.final_codes == [200], second.describe()
    wait_until(lambda: "--end msg--" in b2b.log_text(), timeout=5, what="pjsip's message dumps at level 4")
    log = b2b.log_text()
    assert "log level now DEBUG (was INFO)" in log and "pjsip log level now 4" in log
    assert "INVITE sip:service@" in log and "from sip:second@" in log  # the second call's DEBUG line
    assert "RX " in log and "Request msg INVITE" in log  # pjsip at level 4 logs what it receives

    # back down: nothing more from either
    assert b2b.rpc("core.log_level", "WARNING", 1) == {"level": "WARNING", "pjsip_level": 1}
    size = len(b2b.log_text())
    third = caller.run_calls(ip, port, n=1, call_duration_ms=100, from_user="third")
    assert third.final_codes == [200], third.describe()
    assert "sip:third@" not in b2b.log_text()[size:] and "--end msg--" not in b2b.log_text()[size:]


def test_log_level_refuses_a_bad_level(b2bua_factory: B2buaFactory, addresses: AddressAllocator) -> None:
    ip = addresses.next()
    b2b = b2bua_factory(config(ip, free_port(ip, "udp"), "sip:127.0.0.1:9"))
    done = b2b.cli("rpc", "core.log_level", "LOUD")
    assert done.returncode == 1
    assert done.stderr.startswith("error: -32602 Invalid params for core.log_level: 'LOUD' is not a log level")
    done = b2b.cli("rpc", "core.log_level", "null", "9")
    assert done.returncode == 1 and "9 is not a pjsip log level: use 0-5" in done.stderr
    assert b2b.rpc("core.log_level") == {"level": "INFO", "pjsip_level": 1}


def test_json_log_lines_carry_the_call_id_as_a_key(b2bua_factory: B2buaFactory, addresses: AddressAllocator,
                                                   gateway_factory: GatewayFactory, caller: Caller) -> None:
    gw = gateway_factory("answer")
    ip = addresses.next()
    port = free_port(ip, "udp")
    b2b = b2bua_factory(config(ip, port, gw.uri, level="DEBUG", json_lines=True))
    result = caller.run_calls(ip, port, n=1, call_duration_ms=100)
    assert result.final_codes == [200], result.describe()
    call_id = result.calls[0].call_id
    lines = [json.loads(line) for line in b2b.log_text().splitlines() if line.startswith("{")]
    assert lines and all({"time", "level", "message"} <= line.keys() for line in lines)
    about_the_call = [line for line in lines if line.get("call_id") == call_id]
    # the INVITE's DEBUG line and the INFO line that ends the call, at least
    assert any(line["message"].startswith("INVITE ") for line in about_the_call), about_the_call
    ended = [line for line in about_the_call if line["message"].startswith("call sip:")]
    assert len(ended) == 1 and ended[0]["level"] == "INFO"
    assert call_id not in json.dumps([line for line in lines if "call_id" not in line])


def test_a_packet_dump_shows_a_peers_control_characters_escaped(b2bua_factory: B2buaFactory,
                                                                 addresses: AddressAllocator) -> None:
    # at pjsip_level 4 pjsip logs every message it receives: an ESC sequence in a header must
    # reach the log as text, not clear the operator's terminal or forge a line
    ip = addresses.next()
    port = free_port(ip, "udp")
    b2b = b2bua_factory(config(ip, port, "sip:127.0.0.1:9"))
    assert b2b.rpc("core.log_level", "DEBUG", 4) == {"level": "DEBUG", "pjsip_level": 4}
    peer = addresses.next()
    options = (f"OPTIONS sip:b2bua@{ip}:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {peer}:5999;branch=z9hG4bK-esc1\r\n"
               f"From: <sip:x@{peer}>;tag=1\r\nTo: <sip:b2bua@{ip}>\r\nCall-ID: esc-1@{peer}\r\nCSeq: 1 OPTIONS\r\n"
               "Max-Forwards: 70\r\nX-Paint: \x1b[2J\x1b[31mERROR forged\x1b[0m\r\nContent-Length: 0\r\n\r\n")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((peer, 0))
        sock.sendto(options.encode(), (ip, port))
    wait_until(lambda: "esc-1@" in b2b.log_text(), timeout=5, what="the OPTIONS in pjsip's dump")
    log = b2b.log_text()
    assert "\x1b" not in log
    assert "X-Paint: \\x1b[2J\\x1b[31mERROR forged\\x1b[0m" in log


def test_refusal_lines_follow_v_and_the_run_time_level(b2bua_factory: B2buaFactory,
                                                       addresses: AddressAllocator) -> None:
    # the config says INFO; -v lowers it to DEBUG, and the refusal of a malformed INVITE is one
    # of the DEBUG lines it turns on; core.log_level INFO turns them off again
    from .test_wire_input import send_invite

    ip = addresses.next()
    port = free_port(ip, "udp")
    b2b = b2bua_factory(config(ip, port, "sip:nobody@127.0.0.1:9"), args=["-v"])
    src = addresses.next()
    assert send_invite(ip, port, src, b"loud\xff@x") == [b"SIP/2.0 400 Bad Request"]
    wait_until(lambda: "loud\\xff@x refused: 400 Bad Request (malformed" in b2b.log_text(), timeout=5,
               what="the refusal's DEBUG line under -v")
    assert b2b.rpc("core.log_level", "INFO") == {"level": "INFO", "pjsip_level": 1}
    assert send_invite(ip, port, src, b"quiet\xff@x") == [b"SIP/2.0 400 Bad Request"]
    assert b2b.rpc("core.log_level", "DEBUG") == {"level": "DEBUG", "pjsip_level": 1}
    assert send_invite(ip, port, src, b"again\xff@x") == [b"SIP/2.0 400 Bad Request"]
    wait_until(lambda: "again\\xff@x refused: 400" in b2b.log_text(), timeout=5, what="the refusal at DEBUG again")
    assert "quiet\\xff@x" not in b2b.log_text()
