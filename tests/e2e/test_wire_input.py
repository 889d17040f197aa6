"""Hostile input on the B2BUA's SIP port (issue 17): bytes that are not text, fuzzed requests,
floods and scanners from untrusted addresses, responses that are not text.

Each test asserts what a user sees: the answers on the wire, that the process stays up and
still completes calls, and that the log says what was refused and why, summed up.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from .conftest import B2buaFactory, GatewayFactory
from .flood import Flood
from .harness import (
    REPO_ROOT,
    AddressAllocator,
    B2buaProcess,
    Caller,
    check_idle_connections_closed,
    closed_by_peer,
    free_port,
    wait_until,
)
from .sipfuzz import Peer, corpus, request
from .test_host import Host, host_config

#: what every test here reads from the log: the summary interval, in seconds
LOG_INTERVAL = 1.0


def send_invite(b2b_ip: str, b2b_port: int, src_ip: str, call_id: bytes) -> list[bytes]:
    """One INVITE with ``call_id`` as its Call-ID; the first lines of the responses (3 s at most)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((src_ip, 0))
        s.settimeout(3.0)
        port = s.getsockname()[1]
        sdp = (f"v=0\r\no=- 1 1 IN IP4 {src_ip}\r\ns=-\r\nc=IN IP4 {src_ip}\r\nt=0 0\r\n"
               "m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n").encode()
        head = (f"INVITE sip:123@{b2b_ip}:{b2b_port} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {src_ip}:{port};branch=z9hG4bK-wire{call_id.hex()}\r\n"
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


def exchange(b2b: Host, src_ip: str, message: bytes, timeout: float = 2.0) -> list[bytes]:
    """Send one message; the status lines of every response within ``timeout``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((src_ip, 0))
        s.settimeout(0.2)
        s.sendto(message, (b2b.ip, b2b.port))
        lines: list[bytes] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                lines.append(s.recvfrom(65535)[0].split(b"\r\n", 1)[0])
            except TimeoutError:
                if lines and not lines[-1].startswith(b"SIP/2.0 1"):
                    break
        return lines


@dataclass
class B2b:
    ip: str
    port: int
    proc: B2buaProcess


def quiet_host(factory: B2buaFactory, addresses: AddressAllocator, target: str, **kw: str) -> B2b:
    """Like test_host.Host, logging at INFO."""
    ip = addresses.next()
    port = free_port(ip, "both")
    config = host_config(ip, port, target=target, **kw).replace('level = "DEBUG"', 'level = "INFO"')
    return B2b(ip, port, factory(config))


def log_problems(proc: B2buaProcess) -> list[str]:
    """ERROR/CRITICAL lines and tracebacks in the B2BUA's log."""
    return [line for line in proc.log_text().splitlines()
            if " ERROR " in line or "CRITICAL" in line or "Traceback" in line or "Assertion" in line]


def warnings(proc: B2buaProcess) -> list[str]:
    return [line for line in proc.log_text().splitlines() if " WARNING " in line]


def security(trusted: list[str] | None = None, **more: object) -> str:
    lines = ["[security]", f"log_interval = {LOG_INTERVAL}"]
    if trusted is not None:
        lines.append("trusted = [" + ", ".join(f'"{t}"' for t in trusted) + "]")
    lines += [f"{k} = {str(v).lower() if isinstance(v, bool) else v}" for k, v in more.items()]
    return "\n".join(lines) + "\n"


def test_a_call_id_that_is_not_utf8_gets_400_and_the_process_lives(
        b2bua_factory: B2buaFactory, addresses: AddressAllocator, gateway_factory: GatewayFactory,
        caller: Caller) -> None:
    gw = gateway_factory("answer")
    b2b = Host(b2bua_factory, addresses, gw.uri)
    src = addresses.next()
    answers = send_invite(b2b.ip, b2b.port, src, b"ab\xffcd@x")
    # answered in pjsip before pjsua made a call of it: no 100 Trying
    assert answers == [b"SIP/2.0 400 Bad Request"], answers
    assert gw.count("INVITE") == 0, "nothing was dialled for it"
    assert b2b.proc.returncode is None
    result = caller.run_calls(b2b.ip, b2b.port, n=2, rate=10)
    assert result.final_codes == [200, 200], result.describe()
    # the gateway never sees the caller's Call-ID (topology hiding)
    caller_ids = {c.call_id for c in result.calls}
    gw_ids = {m.header("Call-ID") for m in gw.requests("INVITE")}
    assert len(gw_ids) == 2 and not caller_ids & gw_ids, (caller_ids, gw_ids)
    assert "ab\\xffcd@x refused: 400 Bad Request (malformed: byte 0xff at offset" in b2b.proc.log_text()


def test_fuzzed_requests_leave_the_b2bua_serving(
        b2bua_factory: B2buaFactory, addresses: AddressAllocator, gateway_factory: GatewayFactory,
        caller: Caller) -> None:
    """A few thousand mutated INVITE/OPTIONS/BYE/CANCEL/ACK from a trusted address (so they reach
    the deepest code: sessions, B legs), then OPTIONS and calls are answered as before."""
    answering, rejecting = gateway_factory("answer"), gateway_factory("reject:404")
    ip = addresses.next()
    port = free_port(ip, "both")
    config = host_config(ip, port, plugins='["prefix_router:PrefixRouter"]', sip="max_calls = 300",
                         extra=f'[plugins.prefix_router]\n"49" = "{answering.uri}"\n"33" = "{rejecting.uri}"\n'
                               + security())
    config = config.replace('level = "DEBUG"', 'level = "INFO"')
    env = {"PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "docs" / "examples"), str(REPO_ROOT)])}
    proc = b2bua_factory(config, env=env)
    fuzzer_ip = addresses.next()
    messages = list(corpus(random.Random(17), Peer(ip, port, fuzzer_ip, 5060), 2000))
    flood = Flood((ip, port), fuzzer_ip, messages, count=len(messages), rate=400, seconds=30, linger=2.0).run()
    assert flood.sent == len(messages)
    assert flood.responses[400] > 100, flood.responses  # malformed requests were answered, and why is logged
    assert proc.returncode is None, proc.log_tail()
    options = caller.run_calls(ip, port, n=3, rate=10, behaviour="options")
    assert options.final_codes == [200, 200, 200], options.describe()
    calls = caller.run_calls(ip, port, n=5, rate=10, service="4930123")
    assert calls.final_codes == [200] * 5, calls.describe()
    assert answering.count("INVITE") == 5
    wait_until(lambda: "malformed 400 [" in proc.log_text(), timeout=5, what="a summary of the malformed requests")
    assert log_problems(proc) == []
    # each refusal is a DEBUG line (not written at INFO); what is written is one summary per interval
    assert len(warnings(proc)) <= 30 / LOG_INTERVAL, "\n".join(warnings(proc))
    assert all("refused in the last" in w or "overload" in w for w in warnings(proc)), "\n".join(warnings(proc))


def test_a_flood_from_a_stranger_does_not_starve_trusted_callers(
        b2bua_factory: B2buaFactory, addresses: AddressAllocator, gateway_factory: GatewayFactory,
        caller: Caller) -> None:
    """2000 INVITEs/s for 10 s from one untrusted address (what svwar does) while 200 calls come
    from a trusted one: the stranger gets a few 403s, is blocked, and nothing of it is dialled."""
    gw = gateway_factory("answer")
    # at INFO, as in production: at DEBUG each of the 20,000 refusals is a log line
    b2b = quiet_host(b2bua_factory, addresses, gw.uri, extra=security(trusted=[f"{caller.ip}/32"]))
    stranger = addresses.next()
    peer = Peer(b2b.ip, b2b.port, stranger, 0)

    def invite(n: int, port: int) -> bytes:
        return request("INVITE", Peer(peer.target_ip, peer.target_port, stranger, port), user=f"{100 + n % 900}",
                       call_id=f"scan-{n}@{stranger}", branch=f"scan{n}", user_agent="pbx")

    flood = Flood((b2b.ip, b2b.port), stranger, invite, count=20000, rate=2000, seconds=10.5, linger=1.0).start()
    time.sleep(0.5)
    calls = caller.start_calls(b2b.ip, b2b.port, n=200, rate=20, call_duration_ms=200)
    result = calls.wait(60)
    flood.join()
    assert flood.sent > 15000, f"the flood sent only {flood.sent} in {flood.elapsed:.1f} s (machine too busy?)"
    assert result.failed * 100 < result.created, f"more than 1 % of trusted calls failed: {result.describe()}"
    assert result.successful >= 198, result.describe()
    # burst: invite_rate 5/s x rate_burst 2 s = 10 answers, then the source is blocked and dropped
    assert flood.responses == {403: 10}, flood.responses
    assert gw.count("INVITE") == result.created, "nothing of the flood was dialled out"
    assert b2b.proc.returncode is None
    wait_until(lambda: f"newly blocked: {stranger}" in b2b.proc.log_text(), timeout=5, what="the block logged")
    log = b2b.proc.log_text()
    assert "untrusted 403: 10" in log and "blocked (dropped): " in log
    blocked = sum(int(n) for n in re.findall(r"blocked \(dropped\): (\d+)", log))
    assert blocked > 15000, blocked
    assert log_problems(b2b.proc) == []
    # the operator sees the block and can lift it
    assert [b["address"] for b in b2b.proc.rpc("security.blocked")] == [stranger]
    b2b.proc.rpc("security.unblock", stranger)
    assert send_invite(b2b.ip, b2b.port, stranger, b"after-unblock") == [b"SIP/2.0 403 Forbidden"]


def test_a_scanner_that_never_acks_holds_no_call_slot(
        b2bua_factory: B2buaFactory, addresses: AddressAllocator, gateway_factory: GatewayFactory,
        caller: Caller) -> None:
    gw = gateway_factory("answer")
    b2b = Host(b2bua_factory, addresses, gw.uri, sip="max_calls = 2\nshutdown_grace = 1.0",
               extra=security(trusted=[f"{caller.ip}/32"], invite_rate=1000.0))
    stranger = addresses.next()

    def invite(n: int, port: int) -> bytes:
        return request("INVITE", Peer(b2b.ip, b2b.port, stranger, port), call_id=f"noack-{n}", branch=f"na{n}")

    flood = Flood((b2b.ip, b2b.port), stranger, invite, count=50, rate=100, seconds=5).run()
    assert flood.responses == {403: 50}, flood.responses  # stateless: no 100 Trying, no call, nothing to ACK
    assert b2b.proc.rpc("core.calls") == []
    both = caller.run_calls(b2b.ip, b2b.port, n=2, rate=50, call_duration_ms=1000)
    assert both.final_codes == [200, 200], both.describe()
    assert gw.count("INVITE") == 2


def test_sipvicious_learns_nothing_and_is_blocked(b2bua_factory: B2buaFactory, addresses: AddressAllocator,
                                                  gateway_factory: GatewayFactory, caller: Caller) -> None:
    """svmap (OPTIONS discovery) and svwar (INVITE extension scan) from Debian's sipvicious get
    no answer at all; the scanning address is blocked and nothing is dialled."""
    tools = {name: shutil.which(name) for name in ("svmap", "svwar")}
    assert all(tools.values()), f"missing {tools}: scripts/setup.sh --test installs Debian's sipvicious"
    gw = gateway_factory("answer")
    b2b = Host(b2bua_factory, addresses, gw.uri, extra=security(trusted=[f"{caller.ip}/32"]))
    # sipvicious 0.3.3 ignores -b for svwar: both scan from 127.0.0.1 (kept untrusted here). Each
    # listens on every address, on 5060 unless told (-P): there it would take what other tests'
    # processes send to port 5060 (answers to fuzzed Vias) for a device's answer
    local = str(free_port("127.0.0.1", "udp"))
    runs = [[tools["svmap"], "-P", local, "-p", str(b2b.port), b2b.ip],
            [tools["svwar"], "-P", local, "-p", str(b2b.port), "-m", "INVITE", "-e", "100-300", "--force",
             "--maximumtime", "3", b2b.ip]]
    for cmd in runs:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False, cwd=caller.workdir)
        out = done.stdout + done.stderr
        assert "found nothing" in out, out
    assert gw.count("INVITE") == 0
    wait_until(lambda: "newly blocked: 127.0.0.1" in b2b.proc.log_text(), timeout=5, what="the scanner blocked")
    log = b2b.proc.log_text()
    assert "scanner (dropped)" in log and "blocked (dropped)" in log
    assert caller.run_calls(b2b.ip, b2b.port, n=2, rate=10).final_codes == [200, 200]


def test_without_the_early_filter_refusals_are_the_same(
        b2bua_factory: B2buaFactory, addresses: AddressAllocator, gateway_factory: GatewayFactory,
        caller: Caller) -> None:
    """``early_filter = false`` (or a pjsua2 build without what it needs): pjsua sets the call up,
    answers 100 Trying, and App._on_incoming refuses it on the same rules."""
    gw = gateway_factory("answer")
    b2b = Host(b2bua_factory, addresses, gw.uri, extra=security(trusted=[f"{caller.ip}/32"], early_filter=False))
    stranger = addresses.next()
    assert send_invite(b2b.ip, b2b.port, stranger, b"untrusted-1") == [b"SIP/2.0 100 Trying",
                                                                       b"SIP/2.0 403 Forbidden"]
    # any other request is still refused in the filter: a stranger's OPTIONS gets what its
    # INVITE got, statelessly (pjsua would answer it 200, and a SUBSCRIBE too)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((stranger, 0))
        s.settimeout(3.0)
        peer = Peer(b2b.ip, b2b.port, stranger, s.getsockname()[1])
        for n, method in enumerate(("OPTIONS", "SUBSCRIBE")):
            s.sendto(request(method, peer, call_id=f"stranger-{n}", branch=f"st{n}",
                             extra=("Event: presence",) if method == "SUBSCRIBE" else ()), (b2b.ip, b2b.port))
            assert s.recvfrom(65535)[0].split(b"\r\n", 1)[0] == b"SIP/2.0 403 Forbidden", method
    assert send_invite(b2b.ip, b2b.port, caller.ip, b"ab\xffcd@x")[-1] == b"SIP/2.0 400 Bad Request"
    assert caller.run_calls(b2b.ip, b2b.port, n=2, rate=10).final_codes == [200, 200]
    assert gw.count("INVITE") == 2
    log = b2b.proc.log_text()
    assert "early_filter = false" in log
    assert "untrusted-1 refused: 403 Forbidden (untrusted) INVITE from" in log


def test_a_response_that_is_not_text_is_dropped(b2bua_factory: B2buaFactory, addresses: AddressAllocator,
                                                caller: Caller) -> None:
    """A gateway whose 503 has a reason phrase that is not UTF-8: the response is dropped (the B
    leg times out, local 408), the log says why, and the B2BUA goes on."""
    gw_ip = addresses.next()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as gw:
        gw.bind((gw_ip, 0))
        gw.settimeout(0.2)
        b2b = Host(b2bua_factory, addresses, f"sip:{gw_ip}:{gw.getsockname()[1]}", extra=security())
        run = caller.start_calls(b2b.ip, b2b.port, n=1, behaviour="expect:408")
        answered = 0
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and run.returncode is None:
            try:
                data, addr = gw.recvfrom(65535)
            except TimeoutError:
                continue
            if not data.startswith(b"INVITE "):
                continue
            head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
            keep = [h for h in head[1:] if h.split(b":", 1)[0].lower() in (b"via", b"from", b"to", b"call-id",
                                                                             b"cseq")]
            gw.sendto(b"\r\n".join([b"SIP/2.0 503 Serv\xffice Unavailable", *keep, b"Content-Length: 0"])
                      + b"\r\n\r\n", addr)
            answered += 1
        result = run.wait(20)
    assert answered >= 1
    assert result.final_codes == [408], result.describe()
    assert b2b.proc.returncode is None
    wait_until(lambda: "malformed (dropped) [not-utf8" in b2b.proc.log_text(), timeout=5,
               what="the dropped response summed up")
    assert log_problems(b2b.proc) == []
    # the C fast path left it to the Python screen (which dropped it)
    assert b2b.proc.rpc("core.stats")["screened"]["responses"]["checked"] >= answered


def test_a_calls_own_messages_pass_the_filter_in_c(b2bua_factory: B2buaFactory, addresses: AddressAllocator,
                                                   gateway_factory: GatewayFactory, caller: Caller) -> None:
    """The ACK and BYE of an answered call and the gateway's plain responses are passed on by the
    C screen; the INVITEs (new calls) are screened in Python; core.stats says so, and
    a stats reset starts the counts again."""
    gw = gateway_factory("answer")
    b2b = Host(b2bua_factory, addresses, gw.uri, extra=security())
    calls = 4
    result = caller.run_calls(b2b.ip, b2b.port, n=calls, rate=10, service="4930123")
    assert result.final_codes == [200] * calls, result.describe()
    assert gw.count("BYE") == calls
    screened = b2b.proc.rpc("core.stats")["screened"]
    # from the caller: an ACK and a BYE per call (in a dialog of ours); INVITEs are new requests
    assert screened["requests"]["passed"] >= 2 * calls, screened
    assert screened["requests"]["checked"] >= calls, screened
    # from the gateway: 180, 200 to the INVITE, 200 to the BYE; none needed the Python check
    assert screened["responses"]["passed"] >= 3 * calls, screened
    assert screened["responses"]["checked"] == 0, screened
    b2b.proc.rpc("stats.reset_statistics", "core")
    after = b2b.proc.rpc("core.stats")["screened"]
    assert after["requests"]["passed"] < 2 * calls and after["responses"]["passed"] < 3 * calls, after


def test_the_ack_of_a_stateless_refusal_passes_the_filter_in_c(
        b2bua_factory: B2buaFactory, addresses: AddressAllocator, gateway_factory: GatewayFactory,
        caller: Caller) -> None:
    """A refusal sent without a transaction (here the 403 to an untrusted source; the 503 of
    overload and drain take the same path) has the INVITE's Via branch as its To tag (pjsip's
    rule), and the caller's ACK carries both back: the C screen passes that ACK on (pjsip drops
    it) instead of asking Python, so a refused call is screened in Python once, not twice. An ACK
    whose To tag is not its branch is still Python's to judge."""
    gw = gateway_factory("answer")
    b2b = Host(b2bua_factory, addresses, gw.uri, extra=security(trusted=[f"{caller.ip}/32"]))
    stranger = addresses.next()
    peer = Peer(b2b.ip, b2b.port, stranger, 5060)
    before = b2b.proc.rpc("core.stats")["screened"]["requests"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((stranger, 0))
        s.settimeout(3.0)
        s.sendto(request("INVITE", peer, call_id="refused-1", branch="r1"), (b2b.ip, b2b.port))
        answer = s.recvfrom(65535)[0]
        assert answer.startswith(b"SIP/2.0 403 "), answer[:60]
        to_tag = re.search(rb"\r\nTo: [^\r]*;tag=([^;\r]+)", answer)
        assert to_tag is not None and to_tag.group(1) == b"z9hG4bK-r1", answer
        # the ACK of the 403 (RFC 3261 17.1.1.3: the INVITE's branch, the answer's To tag)
        s.sendto(request("ACK", peer, call_id="refused-1", branch="r1", to_tag="z9hG4bK-r1"), (b2b.ip, b2b.port))
        # and an ACK claiming a dialog with any other tag
        s.sendto(request("ACK", peer, call_id="refused-2", branch="r2", to_tag="z9hG4bK-r1"), (b2b.ip, b2b.port))
        with pytest.raises(TimeoutError):  # an ACK is never answered
            s.recvfrom(65535)

    def counted() -> dict[str, int]:
        now = b2b.proc.rpc("core.stats")["screened"]["requests"]
        return {k: now[k] - before[k] for k in ("passed", "checked")}

    wait_until(lambda: sum(counted().values()) >= 3, timeout=5, what="three requests screened")
    # the INVITE and the ACK with a stranger's tag checked in Python; the refusal's ACK passed in C
    assert counted() == {"passed": 1, "checked": 2}
    assert gw.count("INVITE") == 0
    assert b2b.proc.returncode is None


def test_a_forged_to_tag_does_not_pass_for_a_dialog(b2bua_factory: B2buaFactory, addresses: AddressAllocator,
                                                   gateway_factory: GatewayFactory, caller: Caller) -> None:
    """An untrusted INVITE with a To tag but no dialog: pjsip answers 481; nothing is dialled."""
    gw = gateway_factory("answer")
    b2b = Host(b2bua_factory, addresses, gw.uri, extra=security(trusted=[f"{caller.ip}/32"]))
    stranger = addresses.next()
    forged = request("INVITE", Peer(b2b.ip, b2b.port, stranger, 5060), call_id="forged-1", to_tag="guess")
    assert exchange(b2b, stranger, forged) == [b"SIP/2.0 481 Call/Transaction Does Not Exist"]
    in_uri = request("INVITE", Peer(b2b.ip, b2b.port, stranger, 5060), call_id="forged-2").replace(
        b"To: <sip:33123@" + b2b.ip.encode() + b">", b"To: <sip:33123@" + b2b.ip.encode() + b";tag=x>")
    assert exchange(b2b, stranger, in_uri) == [b"SIP/2.0 403 Forbidden"]
    assert gw.count("INVITE") == 0


class HandCaller:
    """A caller played by hand on one UDP socket: the requests of one call (Call-ID ``call_id``,
    From tag a1) and the final answer to each."""

    def __init__(self, s: socket.socket, b2b: Host, call_id: str) -> None:
        self.s, self.b2b, self.call_id = s, b2b, call_id
        self.peer = Peer(b2b.ip, b2b.port, s.getsockname()[0], s.getsockname()[1])
        self.to_tag = ""

    def send(self, method: str, cseq: int, extra: tuple[str, ...] = ()) -> None:
        self.s.sendto(request(method, self.peer, call_id=self.call_id, branch=f"{self.call_id}-{cseq}{method}",
                              from_tag="a1", to_tag=self.to_tag, cseq=cseq, extra=extra),
                      (self.b2b.ip, self.b2b.port))

    def final(self, method: str) -> bytes:
        while True:
            data = self.s.recvfrom(65535)[0]
            if data.startswith(b"SIP/2.0 ") and not data.startswith(b"SIP/2.0 1") \
                    and f" {method}\r\n".encode() in data.split(b"CSeq:", 1)[1][:40]:
                return data

    def answered_call(self) -> None:
        """INVITE (CSeq 1), its 200, the ACK: the call is up, the To tag known."""
        self.send("INVITE", 1)
        answer = self.final("INVITE")
        assert answer.startswith(b"SIP/2.0 200"), answer[:200]
        self.to_tag = re.search(rb"\r\nTo:[^\r\n]*;tag=([^;\r\n]+)", answer).group(1).decode()  # type: ignore[union-attr]
        self.send("ACK", 1)

    @classmethod
    @contextlib.contextmanager
    def in_call(cls, b2b: Host, ip: str, call_id: str) -> Iterator[HandCaller]:
        """A hand-played caller on ``ip`` whose call ``call_id`` is answered and ACKed."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((ip, 0))
            s.settimeout(5.0)
            hand = cls(s, b2b, call_id)
            hand.answered_call()
            yield hand


def test_a_refer_is_declined_and_nothing_is_dialled_for_it(
        b2bua_factory: B2buaFactory, addresses: AddressAllocator, gateway_factory: GatewayFactory,
        caller: Caller) -> None:
    """pjsua would accept a REFER (202) and call its Refer-To target by itself, outside any
    session: a transfer to an expensive number. The early filter declines it."""
    gw = gateway_factory("answer")
    b2b = Host(b2bua_factory, addresses, gw.uri)
    with HandCaller.in_call(b2b, caller.ip, "refer-1") as hand:
        hand.send("REFER", 2, (f"Refer-To: <sip:900123@{gw.ip}:{gw.port}>", f"Referred-By: <sip:x@{caller.ip}>"))
        assert hand.final("REFER").split(b"\r\n", 1)[0] == b"SIP/2.0 603 Decline"
        hand.send("BYE", 3)
        assert hand.final("BYE").startswith(b"SIP/2.0 200")
    time.sleep(0.5)
    assert gw.count("INVITE") == 1, "only the call itself reached the gateway"
    assert "refused: 603 Decline (transfer) REFER from" in b2b.proc.log_text()


@pytest.mark.parametrize("early_filter", [True, False], ids=["early-filter", "pjsua-net"])
def test_requests_that_are_no_call_are_refused_with_what_is_allowed(
        early_filter: bool, b2bua_factory: B2buaFactory, addresses: AddressAllocator,
        gateway_factory: GatewayFactory, caller: Caller) -> None:
    """From a trusted source, outside any dialog: pjsua answered a MESSAGE, a SUBSCRIBE (keeping a
    presence subscription) and a NOTIFY 200, and left a PUBLISH, an INFO or an unknown method
    unanswered (the sender retransmits for 32 s). Now 405/481/501, and the Allow header, here
    and in the OPTIONS answer, lists only what the B2BUA takes; Supported too. The same with
    ``early_filter = false`` (which once let all of them through to pjsua): it defers new
    INVITEs only."""
    gw = gateway_factory("answer")
    b2b = quiet_host(b2bua_factory, addresses, gw.uri,
                     extra=security(trusted=[f"{caller.ip}/32"], early_filter=early_filter))
    allow = "PRACK, INVITE, ACK, BYE, CANCEL, UPDATE, INFO, OPTIONS"
    expected = {
        "OPTIONS": "200 OK", "MESSAGE": "405 Method Not Allowed", "SUBSCRIBE": "405 Method Not Allowed",
        "NOTIFY": "405 Method Not Allowed", "PUBLISH": "405 Method Not Allowed", "REGISTER": "405 Method Not Allowed",
        "INFO": "481 Call/Transaction Does Not Exist", "BYE": "481 Call/Transaction Does Not Exist",
        "FOO": "501 Not Implemented",
    }
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((caller.ip, 0))
        s.settimeout(3.0)
        peer = Peer(b2b.ip, b2b.port, caller.ip, s.getsockname()[1])
        for n, method in enumerate(expected):
            s.sendto(request(method, peer, call_id=f"nocall-{n}", branch=f"nc{n}",
                             extra=("Event: presence", "Expires: 60") if method in ("SUBSCRIBE", "PUBLISH") else ()),
                     (b2b.ip, b2b.port))
            answer = s.recvfrom(65535)[0].decode("ascii")
            status = answer.split("\r\n", 1)[0].removeprefix("SIP/2.0 ")
            allows = re.findall(r"\r\nAllow: ([^\r]*)", answer)
            assert status == expected[method], (method, answer)
            assert allows == ([allow] if status[:3] in ("200", "405", "501") else []), (method, answer)
            if method == "OPTIONS":  # pjsua listed replaces, norefersub and trickle-ice too
                assert re.findall(r"\r\nSupported: ([^\r]*)", answer) == ["100rel, timer"], answer
                assert "\r\nAllow-Events:" not in answer, answer  # presence, dialog, ...: none taken
                # pjsua listed PIDF, message summaries, sipfrag, text messages: none taken
                assert re.findall(r"\r\nAccept: ([^\r]*)", answer) == ["application/sdp"], answer
        # Supported is what pjsip judges a Require by: an INVITE requiring replaces is refused
        s.sendto(request("INVITE", peer, call_id="nocall-replaces", branch="ncr", extra=("Require: replaces",)),
                 (b2b.ip, b2b.port))
        while (answer := s.recvfrom(65535)[0].decode("ascii")).startswith("SIP/2.0 1"):
            pass
        assert answer.startswith("SIP/2.0 420 Bad Extension\r\n") and "\r\nUnsupported: replaces\r\n" in answer, answer
    assert gw.count("OPTIONS") == 0 and gw.count("MESSAGE") == 0 and gw.count("INVITE") == 0
    wait_until(lambda: "method 405: 5" in b2b.proc.log_text(), timeout=5, what="the refusals summed up")
    assert log_problems(b2b.proc) == []


def test_requests_inside_a_call_that_nothing_takes_are_refused_with_what_is_allowed(
        b2bua_factory: B2buaFactory, addresses: AddressAllocator, gateway_factory: GatewayFactory,
        caller: Caller) -> None:
    """A NOTIFY (a gateway's DTMF or unsolicited event), a MESSAGE or an unknown method inside an
    answered call: pjsip's dialog layer answered 500 "Unhandled by dialog usages". Now 405 with
    Allow, or 501; the call goes on and ends with its BYE."""
    gw = gateway_factory("answer")
    b2b = Host(b2bua_factory, addresses, gw.uri)
    with HandCaller.in_call(b2b, caller.ip, "in-call-1") as hand:
        hand.send("NOTIFY", 2, ("Event: telephone-event", "Subscription-State: active"))
        notify = hand.final("NOTIFY").decode("ascii")
        assert notify.startswith("SIP/2.0 405 Method Not Allowed\r\n"), notify
        assert "\r\nAllow: PRACK, INVITE, ACK, BYE, CANCEL, UPDATE, INFO, OPTIONS\r\n" in notify, notify
        hand.send("MESSAGE", 3)
        assert hand.final("MESSAGE").startswith(b"SIP/2.0 405 Method Not Allowed\r\n")
        hand.send("FOO", 4)
        assert hand.final("FOO").startswith(b"SIP/2.0 501 Not Implemented\r\n")
        hand.send("BYE", 5)
        assert hand.final("BYE").startswith(b"SIP/2.0 200")
    wait_until(lambda: gw.count("BYE") == 1, 5.0, what="the call's BYE at the gateway")
    assert gw.count("NOTIFY") == 0 and gw.count("MESSAGE") == 0
    assert " ERROR " not in b2b.proc.log_text()


def test_stray_byes_are_limited_and_a_blocked_gateways_bye_still_ends_its_call(
        b2bua_factory: B2buaFactory, addresses: AddressAllocator, gateway_factory: GatewayFactory,
        caller: Caller) -> None:
    """BYEs with made-up Call-IDs and To tags (they look in-dialog) from the gateway's own address,
    500/s: a few are answered 481, the address is blocked and the rest dropped. Calls from the
    caller meanwhile complete through that gateway, and its BYEs, from the blocked address, still
    end them: the caller gets each BYE."""
    gw = gateway_factory("hangup:1000")
    b2b = quiet_host(b2bua_factory, addresses, gw.uri, extra=security(trusted=[f"{caller.ip}/32"]))
    rng = random.Random(3)

    def stray_bye(n: int, port: int) -> bytes:
        return request("BYE", Peer(b2b.ip, b2b.port, gw.ip, port), call_id=f"{rng.getrandbits(64):x}@{gw.ip}",
                       to_tag=f"{rng.getrandbits(32):x}", from_tag=f"{rng.getrandbits(32):x}", branch=f"s{n}",
                       user_agent="pbx")

    flood = Flood((b2b.ip, b2b.port), gw.ip, stray_bye, count=4000, rate=500, seconds=8.0, linger=1.0).start()
    time.sleep(1.0)  # the gateway's address is over request_rate, and blocked, from here on
    calls = caller.start_calls(b2b.ip, b2b.port, n=3, rate=1, behaviour="hangup-by-callee")
    result = calls.wait(40)
    flood.join()
    assert flood.sent > 2500, f"the flood sent only {flood.sent} in {flood.elapsed:.1f} s (machine too busy?)"
    # request_rate 10/s x rate_burst 2 s: about 20 go on to pjsip's 481, a few more if the loop lags
    assert set(flood.responses) == {481} and 20 <= flood.responses[481] <= 30, flood.responses
    assert result.final_codes == [200, 200, 200] and result.ok, result.describe()
    assert gw.count("BYE") == 0, "each call ended by the gateway's BYE, not by the B2BUA"
    assert gw.count("INVITE") == 3
    assert [b["address"] for b in b2b.proc.rpc("security.blocked")] == [gw.ip]
    wait_until(lambda: f"newly blocked: {gw.ip}" in b2b.proc.log_text(), timeout=5, what="the block summed up")
    summaries = [w for w in warnings(b2b.proc) if f"newly blocked: {gw.ip}" in w]
    assert len(summaries) == 1 and "rate (dropped): 1;" in summaries[0], summaries
    blocked = sum(int(n) for n in re.findall(r"blocked \(dropped\): (\d+)", b2b.proc.log_text()))
    assert blocked + flood.responses[481] + 1 == flood.sent, (blocked, flood.responses, flood.sent)
    assert log_problems(b2b.proc) == []


def test_a_cancel_of_a_ringing_call_passes_when_its_trusted_source_is_over_its_rate(
        b2bua_factory: B2buaFactory, addresses: AddressAllocator, gateway_factory: GatewayFactory,
        caller: Caller) -> None:
    """The caller's address sends OPTIONS far over ``trusted_request_rate`` (each past the burst
    gets 503) while it calls and cancels: each CANCEL still reaches its ringing INVITE."""
    gw = gateway_factory("ring")
    b2b = quiet_host(b2bua_factory, addresses, gw.uri,
                     extra=security(trusted=[f"{caller.ip}/32"], trusted_request_rate=1.0, rate_burst=1.0))

    def options(n: int, port: int) -> bytes:
        return request("OPTIONS", Peer(b2b.ip, b2b.port, caller.ip, port), call_id=f"opt-{n}", branch=f"o{n}")

    flood = Flood((b2b.ip, b2b.port), caller.ip, options, count=200, rate=40, seconds=5.0).start()
    time.sleep(0.5)
    result = caller.run_calls(b2b.ip, b2b.port, n=2, rate=2, behaviour="cancel", cancel_after_ms=300)
    flood.join()
    assert flood.responses[503] > flood.sent // 2, flood.responses  # over its rate all along
    assert result.final_codes == [487, 487], result.describe()
    assert gw.count("CANCEL") == 2


@pytest.mark.parametrize("early_filter", [True, False], ids=["early-filter", "pjsua-net"])
def test_an_invite_with_replaces_is_declined_and_the_call_it_names_goes_on(
        early_filter: bool, b2bua_factory: B2buaFactory, addresses: AddressAllocator,
        gateway_factory: GatewayFactory, caller: Caller) -> None:
    """pjsua would answer an INVITE whose Replaces names one of our dialogs by itself (no route:
    an orphan call holding a slot and RTP ports) and hang the named call up: from the caller's
    or a gateway's side, anyone could end other calls' legs. Declined with 603 either way: by the
    early filter, or (early_filter = false) by the leg pjsua asks."""
    gw = gateway_factory("answer")
    b2b = Host(b2bua_factory, addresses, gw.uri, extra=f"[security]\nearly_filter = {str(early_filter).lower()}")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((caller.ip, 0))
        s.settimeout(5.0)
        peer = Peer(b2b.ip, b2b.port, caller.ip, s.getsockname()[1])

        def final(method: str, cseq: int) -> bytes:
            while True:
                data = s.recvfrom(65535)[0]
                if data.startswith(b"SIP/2.0 ") and not data.startswith(b"SIP/2.0 1") \
                        and f"CSeq: {cseq} {method}\r\n".encode() in data:
                    return data

        s.sendto(request("INVITE", peer, call_id="named-1", branch="n1", from_tag="a1", cseq=1), (b2b.ip, b2b.port))
        answer = final("INVITE", 1)
        assert answer.startswith(b"SIP/2.0 200"), answer[:200]
        to_tag = re.search(rb"\r\nTo:[^\r\n]*;tag=([^;\r\n]+)", answer).group(1).decode()  # type: ignore[union-attr]
        s.sendto(request("ACK", peer, call_id="named-1", branch="n1a", from_tag="a1", to_tag=to_tag, cseq=1),
                 (b2b.ip, b2b.port))
        replaces = f"Replaces: named-1;to-tag={to_tag};from-tag=a1"
        s.sendto(request("INVITE", peer, call_id="replacer-1", branch="r1", from_tag="b1", cseq=7,
                         extra=(replaces,)), (b2b.ip, b2b.port))
        assert final("INVITE", 7).split(b"\r\n", 1)[0] == b"SIP/2.0 603 Decline"
        # the named call is still up: its BYE is answered 200 and reaches the gateway
        s.sendto(request("BYE", peer, call_id="named-1", branch="n2", from_tag="a1", to_tag=to_tag, cseq=2),
                 (b2b.ip, b2b.port))
        assert final("BYE", 2).startswith(b"SIP/2.0 200")
    wait_until(lambda: gw.count("BYE") == 1, 5.0, what="the named call's BYE at the gateway")
    assert gw.count("INVITE") == 1, "nothing was dialled for the replacing INVITE"
    assert "603 Decline" in b2b.proc.log_text()


def test_tcp_connections_that_send_nothing_are_closed_and_a_talking_one_stays(
        b2bua_factory: B2buaFactory, addresses: AddressAllocator) -> None:
    # silent connections (a scanner, a flood) no longer hold a descriptor for pjsip's 600 s:
    # with enough of them pjsip's socket table fills and every new connection is closed at once
    b2b = Host(b2bua_factory, addresses, "sip:nobody@127.0.0.1:9", transport="tcp")
    src = addresses.next()
    silent = []
    for _ in range(30):
        s = socket.socket()
        s.bind((src, 0))
        s.connect((b2b.ip, b2b.port))
        silent.append(s)
    talking = socket.create_connection((b2b.ip, b2b.port), timeout=5, source_address=(src, 0))
    check_idle_connections_closed(silent, talking, b2b.ip, f"sip:{b2b.ip}:{b2b.port}",
                                  "the B2BUA closing the 30 connections that sent nothing (10 s after each opened)")


def _options(s: socket.socket, b2b_ip: str, n: int) -> bytes:
    src, port = s.getsockname()[:2]
    return (f"OPTIONS sip:{b2b_ip} SIP/2.0\r\nVia: SIP/2.0/TCP {src}:{port};branch=z9hG4bK-tcp{port}-{n}\r\n"
            f"From: <sip:scan@{src}>;tag={n}\r\nTo: <sip:{b2b_ip}>\r\nCall-ID: tcp{port}-{n}@{src}\r\n"
            "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()


def test_a_blocked_sources_tcp_connections_are_closed_and_a_trusted_ones_stays(
        b2bua_factory: B2buaFactory, addresses: AddressAllocator, caller: Caller) -> None:
    # connections are pjsip's to hold and a table of 8192 fills: a source that floods us gets
    # its connection closed when it is blocked, and a new one closed at its first request
    b2b = Host(b2bua_factory, addresses, "sip:nobody@127.0.0.1:9", transport="tcp",
               extra=security(trusted=[f"{caller.ip}/32"], request_rate=2, rate_burst=1, block_time=60))
    stranger = addresses.next()
    flood = socket.create_connection((b2b.ip, b2b.port), timeout=5, source_address=(stranger, 0))
    sent = 0
    for n in range(10):  # two answered 403, then over its rate: dropped, blocked, closed
        try:
            flood.sendall(_options(flood, b2b.ip, n))
        except OSError:  # closed under us (a broken pipe, a reset)
            break
        sent += 1
        time.sleep(0.05)
    wait_until(lambda: closed_by_peer(flood), timeout=5, what="the flooding source's connection closed")
    flood.close()
    assert 3 <= sent < 10, f"{sent} requests went out before the connection was closed"
    again = socket.create_connection((b2b.ip, b2b.port), timeout=5, source_address=(stranger, 0))
    again.sendall(_options(again, b2b.ip, 99))
    wait_until(lambda: closed_by_peer(again), timeout=5, what="a blocked source's new connection closed")
    again.close()

    trusted = socket.create_connection((b2b.ip, b2b.port), timeout=5, source_address=(caller.ip, 0))
    trusted.sendall(_options(trusted, b2b.ip, 1).replace(b"Call-ID: ", b"Call-ID: bad\xff"))  # malformed
    assert trusted.recv(4096).startswith(b"SIP/2.0 400 "), "a trusted source's bad request is answered"
    trusted.sendall(_options(trusted, b2b.ip, 2))
    assert trusted.recv(4096).startswith(b"SIP/2.0 200 "), "and its connection carries the next request"
    trusted.close()
    log = b2b.proc.log_text()
    assert "403 Forbidden (untrusted) OPTIONS from " + stranger in log
    wait_until(lambda: "TCP connection(s) of blocked sources closed" in b2b.proc.log_text(), timeout=5,
               what="the refusal summary counting the closed connections")
