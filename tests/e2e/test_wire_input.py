"""Requests with bytes that are not text, sent straight to the B2BUA's UDP port (issue 17)."""

from __future__ import annotations

import socket

from .conftest import B2buaFactory, GatewayFactory
from .harness import AddressAllocator, Caller
from .test_host import Host


def send_invite(b2b_ip: str, b2b_port: int, src_ip: str, call_id: bytes) -> list[bytes]:
    """One INVITE with ``call_id`` as its Call-ID; the first lines of the responses (3 s at most)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((src_ip, 0))
        s.settimeout(3.0)
        port = s.getsockname()[1]
        sdp = (f"v=0\r\no=- 1 1 IN IP4 {src_ip}\r\ns=-\r\nc=IN IP4 {src_ip}\r\nt=0 0\r\n"
               "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n").encode()
        head = (f"INVITE sip:123@{b2b_ip}:{b2b_port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {src_ip}:{port};branch=z9hG4bK-wire1\r\n"
                f"From: <sip:a@{src_ip}>;tag=1\r\nTo: <sip:123@{b2b_ip}>\r\n").encode()
        head += b"Call-ID: " + call_id + b"\r\n"
        head += (f"CSeq: 1 INVITE\r\nContact: <sip:a@{src_ip}:{port}>\r\nMax-Forwards: 70\r\n"
                 f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n").encode()
        s.sendto(head + sdp, (b2b_ip, b2b_port))
        lines: list[bytes] = []
        try:
            while True:
                data = s.recvfrom(65535)[0]
                lines.append(data.split(b"\r\n", 1)[0])
                if not data.startswith(b"SIP/2.0 1"):
                    break
        except TimeoutError:
            pass
        return lines


def test_a_call_id_that_is_not_utf8_gets_400_and_the_process_lives(
        b2bua_factory: B2buaFactory, addresses: AddressAllocator, gateway_factory: GatewayFactory,
        caller: Caller) -> None:
    gw = gateway_factory("answer")
    b2b = Host(b2bua_factory, addresses, gw.uri)
    src = addresses.next()
    answers = send_invite(b2b.ip, b2b.port, src, b"ab\xffcd@x")
    assert answers and answers[-1] == b"SIP/2.0 400 Bad Request", answers
    assert gw.count("INVITE") == 0, "nothing was dialled for it"
    assert b2b.proc.returncode is None
    result = caller.run_calls(b2b.ip, b2b.port, n=2, rate=10)
    assert result.final_codes == [200, 200], result.describe()
    # the gateway never sees the caller's Call-ID (topology hiding)
    caller_ids = {c.call_id for c in result.calls}
    gw_ids = {m.header("Call-ID") for m in gw.requests("INVITE")}
    assert len(gw_ids) == 2 and not caller_ids & gw_ids, (caller_ids, gw_ids)
    assert "\\xff" in b2b.proc.log_text()
