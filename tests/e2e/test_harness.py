"""The harness proves itself: sipp callers against sipp gateways (no B2BUA), the log parsers, and
`B2buaProcess` against a stand-in module. Read these as the harness's usage examples."""

from __future__ import annotations

import os
import signal
import socket
import textwrap
import time
from pathlib import Path

import pytest

from . import harness
from .conftest import B2buaFactory, GatewayFactory
from .harness import (
    REPO_ROOT,
    AddressAllocator,
    B2buaProcess,
    B2buaRpcError,
    Caller,
    Gateway,
    HarnessError,
    SipMessage,
    caller_scenario,
    count_requests,
    fill_template,
    format_extra_headers,
    free_port,
    free_port_pair,
    gateway_scenario,
    parse_message_log,
    parse_shortmsg_log,
    parse_stat_csv,
    socket_bound,
    summarize_calls,
    summarize_durations,
    wait_until,
)

# ---------------------------------------------------------------------------------------------------
# Pure helpers


@pytest.mark.parametrize(("behaviour", "template", "values"), [
    ("answer", "uas_answer.xml", {}),
    ("answer-183", "uas_answer_183.xml", {}),
    ("reject:503", "uas_reject.xml", {"CODE": "503", "REASON": "Service Unavailable"}),
    ("reject:599", "uas_reject.xml", {"CODE": "599", "REASON": "Rejected"}),
    ("silent", "uas_silent.xml", {}),
    ("ring", "uas_ring.xml", {"ANSWER_AFTER_MS": "3600000"}),
    ("ring-then-answer:1.5", "uas_ring.xml", {"ANSWER_AFTER_MS": "1500"}),
    ("ring-late:300", "uas_ring_late.xml", {"RING_AFTER_MS": "300"}),
    ("hangup", "uas_hangup.xml", {"HANGUP_AFTER_MS": "1000", "BYE_HEADERS": ""}),
    ("hangup:250", "uas_hangup.xml", {"HANGUP_AFTER_MS": "250", "BYE_HEADERS": ""}),
    ("hangup:0", "uas_hangup.xml", {"HANGUP_AFTER_MS": "1", "BYE_HEADERS": ""}),
])
def test_gateway_behaviours_map_to_scenarios(behaviour: str, template: str, values: dict[str, str]) -> None:
    assert gateway_scenario(behaviour) == (template, values)


@pytest.mark.parametrize(("behaviour", "fragment"), [
    ("answerr", "unknown gateway behaviour 'answerr'"),
    ("reject", "unknown gateway behaviour"),
    ("reject:200", "final code must be 300..699"),
    ("reject:abc", "'abc' is not a SIP status code"),
    ("ring-then-answer:x", "'x' is not a number of seconds"),
    ("ring-then-answer:0", "seconds must be in (0, 3600]"),
    ("hangup:-5", "milliseconds must be >= 0"),
    ("ring-late:500", "milliseconds must be in (0, 500)"),
    ("ring-late:", "'' is not a number of milliseconds"),
    ("silent:1", "unknown gateway behaviour"),
])
def test_bad_gateway_behaviour_says_why(behaviour: str, fragment: str) -> None:
    with pytest.raises(ValueError) as err:
        gateway_scenario(behaviour)
    assert fragment in str(err.value)


@pytest.mark.parametrize(("behaviour", "expected"), [
    ("call", ("uac_call.xml", {})),
    ("reinvite", ("uac_reinvite.xml", {})),
    ("cancel", ("uac_cancel.xml", {})),
    ("expect:486", ("uac_expect.xml", {"CODE": "486"})),
    ("hangup-by-callee", ("uac_hangup_by_callee.xml", {})),
    ("options", ("uac_options.xml", {})),
])
def test_caller_behaviours_map_to_scenarios(behaviour: str, expected: tuple[str, dict[str, str]]) -> None:
    assert caller_scenario(behaviour) == expected


@pytest.mark.parametrize("behaviour", ["dial", "expect", "expect:180", "call:1"])
def test_bad_caller_behaviour_is_an_error(behaviour: str) -> None:
    with pytest.raises(ValueError, match=r"behaviour"):
        caller_scenario(behaviour)


def test_fill_template_reports_every_missing_placeholder() -> None:
    assert fill_template("a {{X}} b {{Y_2}}", {"X": "1", "Y_2": "[two]"}) == "a 1 b [two]"
    with pytest.raises(HarnessError, match=r"scen.xml: no value for placeholder\(s\) A, B"):
        fill_template("{{B}} {{A}} {{C}}", {"C": ""}, where="scen.xml")


def test_extra_headers_are_validated() -> None:
    assert format_extra_headers({"X-Route": "gw1", "P-Asserted-Identity": "<sip:1@a>"}) == (
        "X-Route: gw1\nP-Asserted-Identity: <sip:1@a>\n")
    assert format_extra_headers(["X-A:1"]) == "X-A: 1\n"
    with pytest.raises(ValueError, match=r"extra_headers\[0\]: 'no colon' is not 'Name: value'"):
        format_extra_headers(["no colon"])
    with pytest.raises(ValueError, match="line break"):
        format_extra_headers({"X-A": "1\r\nVia: evil"})


SHORT_LOG = (
    "2026-11-26\t11:00:56.790304\t1000.000000\tS\tc1\tCSeq:1 INVITE\tINVITE sip:s@127.0.0.5 SIP/2.0\n"
    "2026-11-26\t11:00:56.792171\t1000.010000\tR\tc1\tCSeq:1 INVITE\tSIP/2.0 100 Trying\n"
    "2026-11-26\t11:00:56.792171\t1000.300000\tR\tc1\tCSeq:1 INVITE\tSIP/2.0 180 Ringing\n"
    "2026-11-26\t11:00:56.793484\t1000.500000\tR\tc1\tCSeq:1 INVITE\tSIP/2.0 200 OK\n"
    "2026-11-26\t11:00:56.793484\t1000.600000\tR\tc1\tCSeq:1 INVITE\tSIP/2.0 200 OK\n"
    "2026-11-26\t11:00:56.793502\t1000.501000\tS\tc1\tCSeq:1 ACK\tACK sip:gw@127.0.0.5 SIP/2.0\n"
    "2026-11-26\t11:00:56.900000\t1000.700000\tS\tc1\tCSeq:2 INVITE\tINVITE sip:gw@127.0.0.5 SIP/2.0\n"
    "2026-11-26\t11:00:56.900000\t1000.710000\tR\tc1\tCSeq:2 INVITE\tSIP/2.0 491 Request Pending\n"
    "2026-11-26\t11:00:57.000000\t1001.000000\tS\tc2\tCSeq: 1 INVITE\tINVITE sip:s@127.0.0.5 SIP/2.0\n"
    "2026-11-26\t11:00:57.500000\t1001.500000\tS\tc2\tCSeq: 1 INVITE\tINVITE sip:s@127.0.0.5 SIP/2.0\n"
    "2026-11-26\t11:00:58.000000\t1002.000000\tS\tc3\tCSeq:1 INVITE\tINVITE sip:s@127.0.0.5 SIP/2.0\n"
    "2026-11-26\t11:00:58.100000\t1002.100000\tR\tc3\tCSeq:1 INVITE\tSIP/2.0 503 Service Unavailable\n"
    "2026-11-26\t11:00:58.100000\t1002.1"  # torn: sipp is still writing this line
)


def test_shortmsg_log_parses_and_summarizes_per_call() -> None:
    messages = parse_shortmsg_log(SHORT_LOG)
    assert len(messages) == 12
    assert messages[0] == SipMessage(1000.0, "sent", "c1", 1, "INVITE", "INVITE sip:s@127.0.0.5 SIP/2.0")
    assert (messages[0].method, messages[0].status) == ("INVITE", None)
    assert (messages[2].method, messages[2].status) == (None, 180)
    calls = summarize_calls(messages)
    assert [c.call_id for c in calls] == ["c1", "c2", "c3"]
    assert [c.final_code for c in calls] == [200, None, 503]
    assert calls[0].codes == (100, 180, 200, 200)  # the re-INVITE's 491 is not the call's
    assert calls[0].setup_time == pytest.approx(0.5)
    assert calls[0].post_dial_delay == pytest.approx(0.3)
    assert (calls[1].setup_time, calls[2].post_dial_delay) == (None, None)
    # Seen from the far end these are requests sent: c2's retransmission is one INVITE transaction.
    assert count_requests(messages, "invite", direction="sent") == 4  # c1's re-INVITE is a transaction too
    assert count_requests(messages, "INVITE", direction="sent", retransmissions=True) == 5
    assert count_requests(messages, "ACK", direction="sent") == 1
    assert count_requests(messages, "INVITE") == 0  # none received


def test_shortmsg_log_rejects_a_bad_line_with_its_number() -> None:
    with pytest.raises(ValueError, match=r"gw\.short\.log:2: not a sipp short message line"):
        parse_shortmsg_log(SHORT_LOG.split("\n")[0] + "\ngarbage\n" + SHORT_LOG, where="gw.short.log")


def test_message_log_splits_whole_messages() -> None:
    text = textwrap.dedent("""\
        ----------------------------------------------- 2026-11-26 11:00:56.790304
        UDP message received [120] bytes :

        INVITE sip:service@127.0.0.5:15060 SIP/2.0
        Via: SIP/2.0/UDP 127.0.0.6:15062;branch=z9hG4bK-1
        X-Test:  abc

        v=0

        ----------------------------------------------- 2026-11-26 11:00:56.792171
        UDP message sent (46 bytes):

        SIP/2.0 100 Trying
        Content-Length: 0


        """)
    first, second = parse_message_log(text)
    assert (first.direction, first.transport, first.first_line) == (
        "received", "UDP", "INVITE sip:service@127.0.0.5:15060 SIP/2.0")
    assert first.header("x-test") == "abc"
    assert first.header("v") is None  # the body is not headers
    assert (second.direction, second.first_line, second.header("Content-Length")) == (
        "sent", "SIP/2.0 100 Trying", "0")


@pytest.mark.parametrize(("values", "expected"), [
    ([], {}),
    ([0.5], {"min": 0.5, "median": 0.5, "p95": 0.5, "max": 0.5}),
    ([0.4, 0.1, 0.3, 0.2], {"min": 0.1, "median": 0.25, "p95": 0.4, "max": 0.4}),
    ([float(i) for i in range(1, 21)], {"min": 1.0, "median": 10.5, "p95": 19.0, "max": 20.0}),
])
def test_summarize_durations(values: list[float], expected: dict[str, float]) -> None:
    assert summarize_durations(values) == expected


def test_stat_csv_last_row() -> None:
    text = "A;SuccessfulCall(C);FailedCall(C)\n1;0;0\n2;19;1\n"
    assert parse_stat_csv(text) == {"A": "2", "SuccessfulCall(C)": "19", "FailedCall(C)": "1"}
    assert parse_stat_csv("A;B\n") == {}


def test_socket_bound_reads_proc_net() -> None:
    head = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    udp = (head + "  1: 0500007F:3AD4 00000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 1111 2\n"
                  "  2: 00000000:1F90 00000000:0000 07 00000000:00000000 00:00000000 00000000 0 0 2222 2\n")
    tcp = (head + "  0: 0500007F:3AD4 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 3333 1\n"
                  "  1: 0600007F:3AD4 0500007F:1234 01 00000000:00000000 00:00000000 00000000 0 0 4444 1\n")
    net = {"udp": udp, "tcp": tcp}
    if socket.htonl(1) == 1:  # /proc/net shows host byte order; the samples above are little-endian
        pytest.fail("these samples assume a little-endian host")
    assert socket_bound("127.0.0.5", 0x3AD4, "udp", net)
    assert not socket_bound("127.0.0.6", 0x3AD4, "udp", net)
    assert socket_bound("127.0.0.9", 0x1F90, "udp", net)  # wildcard bind
    assert socket_bound("127.0.0.5", 0x3AD4, "tcp", net)
    assert not socket_bound("127.0.0.6", 0x3AD4, "tcp", net)  # connected, not listening
    assert socket_bound("127.0.0.5", 0x3AD4, "udp", net, inodes={"1111"})
    assert not socket_bound("127.0.0.5", 0x3AD4, "udp", net, inodes={"2222"})  # someone else's socket


def test_address_allocator_is_distinct_then_wraps() -> None:
    alloc = AddressAllocator(first=10, last=12, network=0)
    assert [alloc.next() for _ in range(4)] == ["127.0.0.10", "127.0.0.11", "127.0.0.12", "127.0.0.10"]
    assert AddressAllocator(first=10, network=3).next() == "127.0.3.10"  # xdist worker gw3's
    with pytest.raises(ValueError, match="first <= last"):
        AddressAllocator(first=5, last=4)
    with pytest.raises(ValueError, match="third octet"):
        AddressAllocator(network=255)


def test_each_xdist_worker_has_its_own_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw2")
    assert AddressAllocator(first=7).next() == "127.0.2.7"
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    assert AddressAllocator(first=7).next() == "127.0.0.7"


@pytest.mark.parametrize(("kind", "socktypes"), [
    ("udp", [socket.SOCK_DGRAM]), ("tcp", [socket.SOCK_STREAM]),
    ("both", [socket.SOCK_DGRAM, socket.SOCK_STREAM]),
])
def test_free_port_can_be_bound(addresses: AddressAllocator, kind: str,
                                socktypes: list[socket.SocketKind]) -> None:
    ip = addresses.next()
    port = free_port(ip, kind)  # type: ignore[arg-type]
    for socktype in socktypes:
        with socket.socket(socket.AF_INET, socktype) as sock:
            sock.bind((ip, port))
    media = free_port_pair(ip)
    for p in (media, media + 2):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((ip, p))
    with pytest.raises(ValueError, match="kind must be"):
        free_port(ip, "sctp")  # type: ignore[arg-type]


def test_sipp_side_ports_never_reuse_the_sip_port(monkeypatch: pytest.MonkeyPatch) -> None:
    # the kernel handed a caller its SIP port again as its media port; sipp then exits at once
    draws = iter([5000, 8998, 7000])  # the SIP port; a pair whose upper port is the control port; good
    monkeypatch.setattr(harness, "free_port_pair", lambda ip: next(draws))
    monkeypatch.setattr(harness, "free_port", lambda ip, kind="udp": 9000)
    assert harness.sipp_side_ports("127.0.0.1", 5000) == (7000, 9000)


# ---------------------------------------------------------------------------------------------------
# sipp caller -> sipp gateway


def test_answered_call(gateway_factory: GatewayFactory, caller: Caller) -> None:
    gw = gateway_factory("answer")
    result = caller.run_calls(gw.ip, gw.port, n=1, call_duration_ms=100)
    assert result.ok, result.describe()
    assert (result.successful, result.failed, result.final_codes) == (1, 0, [200])
    assert result.calls[0].codes[-1] == 200 and 180 in result.calls[0].codes
    assert len(result.setup_times) == 1 and 0 <= result.setup_times[0] < 1.0
    assert {m: gw.count(m) for m in ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS")} == {
        "INVITE": 1, "ACK": 1, "BYE": 1, "CANCEL": 0, "OPTIONS": 0}
    assert gw.stop() == 0
    assert gw.returncode == 0


def test_early_media_gateway_sends_183(gateway_factory: GatewayFactory, caller: Caller) -> None:
    gw = gateway_factory("answer-183")
    result = caller.run_calls(gw.ip, gw.port, n=1, call_duration_ms=0)
    assert result.ok, result.describe()
    assert result.calls[0].codes[-2:] == (183, 200)
    assert result.calls[0].post_dial_delay is not None


@pytest.mark.parametrize("code", [404, 486, 503])
def test_rejecting_gateway(gateway_factory: GatewayFactory, caller: Caller, code: int) -> None:
    gw = gateway_factory(f"reject:{code}")
    result = caller.run_calls(gw.ip, gw.port, n=2, rate=20, behaviour=f"expect:{code}")
    assert result.ok, result.describe()
    assert result.final_codes == [code, code]
    assert (gw.count("INVITE"), gw.count("ACK"), gw.count("BYE")) == (2, 2, 0)


def test_unexpected_final_code_fails_the_call_and_is_recorded(gateway_factory: GatewayFactory,
                                                               caller: Caller) -> None:
    gw = gateway_factory("reject:503")
    result = caller.run_calls(gw.ip, gw.port, n=1, behaviour="call", recv_timeout_ms=2000)
    assert not result.ok
    assert (result.exit_code, result.successful, result.failed) == (1, 0, 1)
    assert result.final_codes == [503]


def test_silent_gateway_times_out_within_bound(gateway_factory: GatewayFactory, caller: Caller) -> None:
    gw = gateway_factory("silent")
    started = time.monotonic()
    result = caller.run_calls(gw.ip, gw.port, n=1, recv_timeout_ms=1500)
    assert time.monotonic() - started < 8.0
    assert (result.exit_code, result.failed, result.final_codes) == (1, 1, [None])
    assert gw.count("INVITE") == 1
    assert gw.count("INVITE", retransmissions=True) >= 2  # 500 ms, 1 s, ... retransmissions arrived
    assert not any(m.direction == "sent" for m in gw.messages())  # not even a 100 Trying


def test_cancel_while_ringing(gateway_factory: GatewayFactory, caller: Caller) -> None:
    gw = gateway_factory("ring")
    result = caller.run_calls(gw.ip, gw.port, n=1, behaviour="cancel", cancel_after_ms=200)
    assert result.ok, result.describe()
    assert result.final_codes == [487]
    assert result.calls[0].setup_time is not None and result.calls[0].setup_time >= 0.2
    assert (gw.count("INVITE"), gw.count("CANCEL"), gw.count("ACK"), gw.count("BYE")) == (1, 1, 1, 0)


def test_ring_then_answer(gateway_factory: GatewayFactory, caller: Caller) -> None:
    gw = gateway_factory("ring-then-answer:0.8")
    result = caller.run_calls(gw.ip, gw.port, n=1, call_duration_ms=0)
    assert result.ok, result.describe()
    assert result.setup_times[0] == pytest.approx(0.8, abs=0.4)
    assert result.calls[0].post_dial_delay is not None and result.calls[0].post_dial_delay < 0.5


@pytest.mark.parametrize("behaviour", ["answer", "answer-183", "ring-then-answer:0.2"])
def test_answering_gateways_accept_a_reinvite(gateway_factory: GatewayFactory, caller: Caller,
                                              behaviour: str) -> None:
    gw = gateway_factory(behaviour)
    result = caller.run_calls(gw.ip, gw.port, n=1, behaviour="reinvite", call_duration_ms=100)
    assert result.ok, result.describe()
    assert (gw.count("INVITE"), gw.count("ACK"), gw.count("BYE")) == (2, 2, 1)
    assert len({m.call_id for m in gw.messages()}) == 1  # both INVITEs in one dialog


def test_gateway_hangs_up(gateway_factory: GatewayFactory, caller: Caller) -> None:
    gw = gateway_factory("hangup:300")
    result = caller.run_calls(gw.ip, gw.port, n=1, behaviour="hangup-by-callee")
    assert result.ok, result.describe()
    assert count_requests(gw.messages(), "BYE", direction="sent") == 1
    assert count_requests(result_messages := parse_shortmsg_log(result.files.short.read_text()),
                          "BYE") == 1, result_messages
    assert gw.count("BYE") == 0


@pytest.mark.parametrize("behaviour", ["answer", "silent", "reject:503", "ring"])
def test_every_gateway_answers_options(gateway_factory: GatewayFactory, caller: Caller, behaviour: str) -> None:
    gw = gateway_factory(behaviour)
    result = caller.run_calls(gw.ip, gw.port, n=3, rate=50, behaviour="options")
    assert result.ok, result.describe()
    assert result.final_codes == [200, 200, 200]
    assert (gw.count("OPTIONS"), gw.count("INVITE")) == (3, 0)


def test_twenty_calls_at_ten_per_second(gateway_factory: GatewayFactory, caller: Caller) -> None:
    gw = gateway_factory("answer")
    result = caller.run_calls(gw.ip, gw.port, n=20, rate=10, call_duration_ms=200)
    assert result.ok, result.describe()
    assert (result.created, result.successful, result.final_codes) == (20, 20, [200] * 20)
    starts = sorted(c.sent_at for c in result.calls)
    assert 1.5 <= starts[-1] - starts[0] <= 3.0  # the rate was honoured: 19 gaps of ~100 ms
    assert (gw.count("INVITE"), gw.count("ACK"), gw.count("BYE")) == (20, 20, 20)
    summary = result.setup_time_summary()
    assert 0 <= summary["min"] <= summary["median"] <= summary["p95"] <= summary["max"] < 1.0


def test_pause_makes_a_gateway_silent_until_resumed(gateway_factory: GatewayFactory, caller: Caller) -> None:
    gw = gateway_factory("answer")
    gw.pause()
    assert gw.paused
    down = caller.run_calls(gw.ip, gw.port, n=1, behaviour="options", recv_timeout_ms=800)
    assert down.final_codes == [None] and down.failed == 1
    gw.resume()
    up = caller.run_calls(gw.ip, gw.port, n=1, behaviour="options")
    assert up.ok and up.final_codes == [200], up.describe()
    assert gw.count("OPTIONS") == 2  # the queued one was read after SIGCONT


def test_background_calls_during_other_actions(gateway_factory: GatewayFactory, caller: Caller) -> None:
    gw = gateway_factory("answer")
    load = caller.start_calls(gw.ip, gw.port, n=4, rate=20, call_duration_ms=1000)
    wait_until(lambda: gw.count("INVITE") == 4, timeout=5, what="4 INVITEs at the gateway")
    assert gw.count("BYE") == 0  # all four calls are up right now
    result = load.wait(timeout=15)
    assert result.ok and result.final_codes == [200] * 4, result.describe()
    assert gw.count("BYE") == 4


def test_extra_headers_and_request_user_reach_the_gateway(gateway_factory: GatewayFactory,
                                                          caller: Caller) -> None:
    gw = gateway_factory("reject:404")
    result = caller.run_calls(gw.ip, gw.port, behaviour="expect:404", service="4930123",
                              from_user="alice", extra_headers={"X-Tenant": "acme"})
    assert result.ok, result.describe()
    (invite,) = gw.requests("INVITE")
    assert invite.first_line.startswith(f"INVITE sip:4930123@{gw.ip}:{gw.port} ")
    assert invite.header("X-Tenant") == "acme"
    assert (invite.header("From") or "").startswith(f"<sip:alice@{caller.ip}:")


def test_calls_over_tcp(gateway_factory: GatewayFactory, caller: Caller) -> None:
    gw = gateway_factory("answer", transport="tcp")
    assert gw.uri == f"sip:{gw.ip}:{gw.port};transport=tcp"
    result = caller.run_calls(gw.ip, gw.port, n=2, rate=20, call_duration_ms=0, transport="tcp")
    assert result.ok, result.describe()
    assert gw.count("INVITE") == 2
    assert {m.transport for m in gw.traced()} == {"TCP"}


def test_caller_overrunning_its_timeout_is_stopped_and_reported(gateway_factory: GatewayFactory,
                                                               caller: Caller) -> None:
    gw = gateway_factory("ring")
    started = time.monotonic()
    load = caller.start_calls(gw.ip, gw.port, n=1, recv_timeout_ms=60_000)
    with pytest.raises(HarnessError, match=r"still running after 1\.0s; stopped it"):
        load.wait(timeout=1.0)
    assert load.returncode is not None
    assert time.monotonic() - started < 10


def test_gateway_that_cannot_bind_fails_fast(workdir: Path, addresses: AddressAllocator) -> None:
    ip = addresses.next()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind((ip, 0))
        port = squatter.getsockname()[1]
        with pytest.raises(HarnessError, match=rf"exited with \d+ before listening on {ip}:{port}/udp"):
            Gateway.start("answer", ip, port, workdir)


def test_gateway_stop_and_kill(workdir: Path, addresses: AddressAllocator) -> None:
    gw = Gateway.start("answer", addresses.next(), workdir=workdir)
    assert gw.returncode is None
    assert gw.kill() == -signal.SIGKILL
    assert gw.stop() == -signal.SIGKILL  # already gone: stop just reports
    with Gateway.start("answer", addresses.next(), workdir=workdir) as second:
        assert second.returncode is None
    assert second.returncode == 0


# ---------------------------------------------------------------------------------------------------
# B2buaProcess, proven against a stand-in for ``python -m b2bua``

FAKE_B2BUA = '''\
import json, pathlib, signal, sys, time

cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "run":
    mode = pathlib.Path(args[args.index("-c") + 1]).read_text().strip()
    if mode == "crash":
        print("error: listen = 'nonsense' is not an address")
        sys.exit(2)
    if mode == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if mode != "hang":
        print("2026-01-01 | INFO | b2bua ready: listening on udp:127.0.0.2:5060")
    for _ in range(600):
        time.sleep(0.1)
elif cmd == "rpc":
    assert args[:3] == ["--json", "-c", "config.toml"], args
    method, params = args[3], args[4:]
    if method == "fail":
        print("error: method not found", file=sys.stderr)
        sys.exit(3)
    print("not json" if method == "garbage" else json.dumps({"method": method, "params": params}))
elif cmd == "check-config":
    print("config.toml: OK")
'''


@pytest.fixture
def fake_b2bua(tmp_path: Path) -> dict[str, object]:
    """Keyword arguments that make `B2buaProcess.start` run the stand-in instead of the real B2BUA."""
    pkg = tmp_path / "fakepath" / "fake_b2bua"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "__main__.py").write_text(FAKE_B2BUA)
    path = os.pathsep.join([str(pkg.parent), str(REPO_ROOT)])
    return {"module": "fake_b2bua", "env": {"PYTHONPATH": path}, "ready_timeout": 10.0}


def test_b2bua_process_lifecycle_and_rpc(workdir: Path, fake_b2bua: dict[str, object]) -> None:
    with B2buaProcess.start(workdir, "serve\n", **fake_b2bua) as b2b:  # type: ignore[arg-type]
        assert b2b.config_path.read_text() == "serve\n"
        assert "b2bua ready" in b2b.log_text()
        assert b2b.rpc("dispatcher.set_state", "ip", 1, "sip:127.0.0.3:5060") == {
            "method": "dispatcher.set_state", "params": ["ip", "1", "sip:127.0.0.3:5060"]}
        with pytest.raises(B2buaRpcError, match="exited 3") as err:
            b2b.rpc("fail")
        assert "method not found" in err.value.stderr
        with pytest.raises(HarnessError, match="stdout is not JSON"):
            b2b.rpc("garbage")
        done = b2b.cli("check-config")
        assert (done.returncode, done.stdout.strip()) == (0, "config.toml: OK")
        assert b2b.returncode is None
    assert b2b.returncode == 0


def test_b2bua_that_exits_early_fails_fast_with_its_log(workdir: Path, fake_b2bua: dict[str, object]) -> None:
    started = time.monotonic()
    with pytest.raises(HarnessError, match="exited with 2 before logging 'b2bua ready'") as err:
        B2buaProcess.start(workdir, "crash", **fake_b2bua)  # type: ignore[arg-type]
    assert "'nonsense' is not an address" in str(err.value)
    assert time.monotonic() - started < 5


def test_b2bua_never_ready_is_stopped(workdir: Path, fake_b2bua: dict[str, object]) -> None:
    with pytest.raises(HarnessError, match=r"did not log 'b2bua ready' within 1\.0s \(stopped it\)"):
        B2buaProcess.start(workdir, "hang", **{**fake_b2bua, "ready_timeout": 1.0})  # type: ignore[arg-type]


def test_b2bua_ignoring_sigterm_is_killed(workdir: Path, fake_b2bua: dict[str, object]) -> None:
    b2b = B2buaProcess.start(workdir, "ignore-term", **fake_b2bua)  # type: ignore[arg-type]
    b2b.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    assert b2b.returncode is None
    assert b2b.stop(timeout=0.5) == -signal.SIGKILL


def test_b2bua_restart_in_same_workdir_waits_for_the_new_ready(workdir: Path,
                                                                fake_b2bua: dict[str, object]) -> None:
    first = B2buaProcess.start(workdir, "serve", **fake_b2bua)  # type: ignore[arg-type]
    assert first.stop() == 0
    with pytest.raises(HarnessError, match="exited with 2"):  # the old "ready" line must not count
        B2buaProcess.start(workdir, "crash", **fake_b2bua)  # type: ignore[arg-type]
    assert first.log_text().count("### harness:") == 2


def test_b2bua_factory_checks_the_exit_code(b2bua_factory: B2buaFactory, fake_b2bua: dict[str, object]) -> None:
    main = b2bua_factory("serve", **fake_b2bua)
    standby = b2bua_factory("ignore-term", subdir="standby", expected_exit=None, **fake_b2bua)
    assert main.workdir != standby.workdir
    assert main.returncode is None and standby.returncode is None
