"""Bad media input (issue 11, "Bad input"): each gets a clear SIP answer or is ignored, the call
and the process survive, and the log says what happened with the Call-ID.

An INVITE whose SDP does not parse (400 from pjsua, one log line naming why); a re-INVITE with
such an SDP on an answered call (refused, the call goes on: a good re-INVITE and the BYE still
work); a re-INVITE for a call that is ending (answered, ignored by the call). An offer with no
codec in common (488) is in ``test_codecs.py``, RTP floods in ``test_rtp.py``.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from ..configs import ListEntry, RunningB2bua, start_b2bua
from ..conftest import B2buaFactory, GatewayFactory, MediaPeerFactory
from ..harness import (
    AddressAllocator,
    CallerProcess,
    CallResult,
    _launch_sipp,
    free_port,
    parse_message_log,
    wait_until,
)
from .expect import CALLER_HZ, GATEWAY_HZ, TALK_SECONDS, assert_heard, b2bua_uri

SCENARIOS = Path(__file__).resolve().parent / "scenarios"
SDP_HEAD = "v=0\no=caller 1 2 IN IP4 127.0.0.1\ns=-\n"

#: SDPs pjsip cannot take, and the reason pjsua gives for each
BAD_SDPS = {
    "not-sdp": ("v=0\nthis is no SDP at all\n", "Invalid SDP time line"),
    "no-formats": (SDP_HEAD + "c=IN IP4 127.0.0.1\nt=0 0\nm=audio 4000 RTP/AVP\n", "No SDP payload format"),
    "no-connection": (SDP_HEAD + "t=0 0\nm=audio 4000 RTP/AVP 0\n", "Missing SDP connection info line"),
    "bad-port": (SDP_HEAD + "c=IN IP4 127.0.0.1\nt=0 0\nm=audio 99999 RTP/AVP 0\n", "Invalid SDP media line"),
}


def run_scenario(workdir: Path, ip: str, b2b: RunningB2bua, template: str, values: dict[str, str],
                 name: str) -> CallResult:
    """One call by a sipp caller running ``scenarios/<template>`` against ``b2b``."""
    port = free_port(ip)
    args = ["-m", "1", "-s", "bad", "-recv_timeout", "10000", f"{b2b.ip}:{b2b.port}"]
    proc, files = _launch_sipp(workdir=workdir, name=name, template=str(SCENARIOS / template), values=values,
                               ip=ip, port=port, transport="udp", extra_args=args)
    caller = CallerProcess(proc, method="INVITE", default_timeout=40.0, name=name, ip=ip, port=port,
                           transport="udp", files=files, workdir=workdir)
    return caller.wait()


def responses(result: CallResult, method: str) -> list[str]:
    """The status lines of the responses to ``method`` the caller got (retransmissions included)."""
    return [m.first_line for m in parse_message_log(result.files.messages.read_text())
            if m.direction == "received" and m.first_line.startswith("SIP/2.0")
            and (m.header("CSeq") or "").endswith(f" {method}")]


def log_lines(b2b: RunningB2bua, fragment: str) -> list[str]:
    return [line for line in b2b.process.log_text().splitlines() if fragment in line]


def raw_invite(b2b: RunningB2bua, ip: str, call_id: str, body: bytes) -> str:
    """Send one INVITE with ``body`` from a socket of our own; the status line of its final answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((ip, 0))
        sock.settimeout(5.0)
        port = sock.getsockname()[1]
        head = (f"INVITE sip:bad@{b2b.ip}:{b2b.port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {ip}:{port};branch=z9hG4bK-{call_id}\r\n"
                f"From: <sip:caller@{ip}>;tag=1\r\nTo: <sip:bad@{b2b.ip}>\r\nCall-ID: {call_id}\r\n"
                f"CSeq: 1 INVITE\r\nContact: <sip:caller@{ip}:{port}>\r\nMax-Forwards: 70\r\n"
                f"Content-Type: application/sdp\r\nContent-Length: {len(body)}\r\n\r\n")
        sock.sendto(head.encode() + body, (b2b.ip, b2b.port))
        while True:
            status = sock.recvfrom(65535)[0].split(b"\r\n", 1)[0].decode()
            if not status.startswith("SIP/2.0 1"):
                ack = (f"ACK sip:bad@{b2b.ip}:{b2b.port} SIP/2.0\r\n"
                       f"Via: SIP/2.0/UDP {ip}:{port};branch=z9hG4bK-{call_id}\r\n"
                       f"From: <sip:caller@{ip}>;tag=1\r\nTo: <sip:bad@{b2b.ip}>\r\nCall-ID: {call_id}\r\n"
                       "CSeq: 1 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n")
                sock.sendto(ack.encode(), (b2b.ip, b2b.port))
                return status


def test_an_invite_whose_sdp_does_not_parse_gets_400_and_one_line(
        media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory, workdir: Path,
        addresses: AddressAllocator) -> None:
    gw = media_peer_factory(name="gw", tone=GATEWAY_HZ[0])
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri)])
    ip = addresses.next()
    for name, (sdp, why) in BAD_SDPS.items():
        status = raw_invite(b2b, ip, f"bad-{name}", sdp.replace("\n", "\r\n").encode())
        assert status == "SIP/2.0 400 Bad SDP", (name, status)
        wait_until(lambda call_id=f"bad-{name}": bool(log_lines(b2b, call_id)), 5, what=f"the line of bad-{name}")
        [line] = log_lines(b2b, f"bad-{name}")
        assert f"refused: 400 Bad SDP ({why}" in line and "INFO" in line, line
    assert gw.incoming() == []  # nothing reached the gateway
    assert not log_lines(b2b, "ERROR")  # pjsip's own lines (no Call-ID) are not errors of ours
    # the process goes on taking calls
    phone = media_peer_factory(name="phone", tone=CALLER_HZ)
    talk = phone.talk(b2bua_uri(b2b), TALK_SECONDS)
    assert talk.code == 200, talk.ended
    assert_heard(phone, talk.number, GATEWAY_HZ[0])


@pytest.mark.parametrize("name", ["not-sdp", "no-formats", "no-connection"])
def test_a_reinvite_whose_sdp_does_not_parse_is_refused_and_the_call_goes_on(
        media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory, workdir: Path,
        addresses: AddressAllocator, name: str) -> None:
    gw = media_peer_factory(name="gw", tone=GATEWAY_HZ[0])
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri)])
    sdp, _why = BAD_SDPS[name]
    result = run_scenario(workdir, addresses.next(), b2b, "uac_reinvite_offer.xml", {"REOFFER": sdp.strip()},
                          name=f"caller-{name}")
    assert result.ok, result.describe()  # the bad re-INVITE refused, a good one 200, the BYE 200
    refusals = sorted({line for line in responses(result, "INVITE") if not line.startswith(("SIP/2.0 1",
                                                                                               "SIP/2.0 200"))})
    # pjsip says 415 Unsupported Media Type (Warning: 390 "Bad SDP") to an SDP it cannot parse
    assert len(refusals) == 1 and refusals[0].split()[1] in ("400", "415", "488"), responses(result, "INVITE")
    # the gateway was not bothered: its only offer was the first INVITE's
    assert [e for e in gw.events("rx", 1) if e["method"] == "INVITE" and e["code"] == 0] == []
    assert gw.wait_ended(1)["code"] == 200  # the caller's BYE went on to it


def test_a_reinvite_for_a_call_that_is_ending_is_answered_and_ignored(
        gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory, workdir: Path,
        addresses: AddressAllocator) -> None:
    gw = gateway_factory("hangup:300")  # the gateway hangs up: the B2BUA sends the caller a BYE
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri)])
    result = run_scenario(workdir, addresses.next(), b2b, "uac_reinvite_while_ending.xml", {},
                          name="caller-late-reinvite")
    assert result.ok, result.describe()
    finals = [line for line in responses(result, "INVITE") if not line.startswith("SIP/2.0 1")]
    # the call's 200, then one answer to the late re-INVITE: pjsua has no media left to answer it
    # with ("488 Not Acceptable Here", Warning: "No SDP answer"); the call takes no notice
    assert finals[0] == "SIP/2.0 200 OK" and len(set(finals[1:])) == 1, finals
    assert finals[1].split()[1] in ("481", "487", "488", "491", "500"), finals
    wait_until(lambda: bool(log_lines(b2b, ": callee-hangup (answered by")), 5, what="the call's end line")
    assert not log_lines(b2b, "ERROR") and not log_lines(b2b, "Traceback")
    assert b2b.process.rpc("core.calls") == []
