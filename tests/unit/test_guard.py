"""The front door (b2bua.guard): facts gathered from real bytes, refusals logged and summed up."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

from b2bua.admission import Load, Verdict, Why
from b2bua.config import SecurityConfig, SipConfig
from b2bua.guard import NO_DIALOGS, Dialogs, Gate, RefusalLog, register_security_methods
from b2bua.rpc import RpcError, RpcRegistry
from b2bua.wire import Malformed

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
import sipfuzz  # a plain module shared with the e2e fuzz test
from test_guard_dialogs import KnownDialogs

TRUSTED, STRANGER = "10.0.0.5", "192.0.2.66"
ROOM = Load(calls=0, max_calls=10, free_slots=10)


def peer(ip: str) -> sipfuzz.Peer:
    return sipfuzz.Peer("10.0.0.1", 5060, ip, 5062)


def gate(**security: object) -> Gate:
    return Gate(SecurityConfig(trusted=("10.0.0.0/24",), **security), SipConfig(retry_after=7))  # type: ignore[arg-type]


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(f"{m.record['level'].name} {m.record['extra'].get('call_id', '')} "
                                             f"{m.record['message']}"), level="DEBUG")
    yield lines
    logger.remove(sink)


def test_a_trusted_invite_is_let_in_with_its_fields() -> None:
    g = gate()
    decision, request = g.screen(sipfuzz.request("INVITE", peer(TRUSTED), call_id="c1"), f"{TRUSTED}:5062", ROOM, 0.0)
    assert decision.verdict is Verdict.ACCEPT
    assert request is not None and request.call_id == "c1"


def test_a_strangers_invite_is_refused_and_logged_at_debug(log_lines: list[str]) -> None:
    g = gate()
    decision, _ = g.screen(sipfuzz.request("INVITE", peer(STRANGER), call_id="c2"), f"{STRANGER}:5062", ROOM, 0.0)
    assert (decision.verdict, decision.code, decision.why) == (Verdict.REFUSE, 403, Why.UNTRUSTED)
    assert log_lines == [f"DEBUG c2 refused: 403 Forbidden (untrusted) INVITE from {STRANGER}"]


def test_a_flood_from_a_stranger_is_answered_a_few_times_then_dropped_and_blocked(log_lines: list[str]) -> None:
    g = gate(invite_rate=5.0, rate_burst=2.0, block_time=60.0)
    verdicts = [g.screen(sipfuzz.request("INVITE", peer(STRANGER), call_id=f"c{i}", branch=str(i)),
                         f"{STRANGER}:5062", ROOM, 1.0)[0].verdict for i in range(100)]
    assert verdicts == [Verdict.REFUSE] * 10 + [Verdict.DROP] * 90
    assert g.limiter.blocked(STRANGER, 60.9)
    # a blocked source's requests are dropped before they are parsed
    garbage = b"INVITE \xff\r\n\r\n"
    assert g.screen(garbage, f"{STRANGER}:5062", ROOM, 2.0)[0].why is Why.BLOCKED
    # ... but not what belongs to a dialog of ours
    bye = sipfuzz.request("BYE", peer(STRANGER), to_tag="t")
    ours = KnownDialogs({(b"fuzz-1@host", b"t", b"f1")})
    assert g.screen(bye, f"{STRANGER}:5062", ROOM, 2.0, dialogs=ours)[0].verdict is Verdict.ACCEPT
    summary = g.log.summary(10)
    assert summary == (f"refused in the last 10 s: blocked (dropped): 90; untrusted 403: 10; rate (dropped): 1; "
                       f"from {STRANGER} (101); newly blocked: {STRANGER}"), summary
    assert not g.limiter.blocked(STRANGER, 61.0), "the block expires"
    assert g.log.summary(10) == "", "counts start afresh"
    assert sum("blocked 192.0.2.66 for 60 s (rate)" in line for line in log_lines) == 1


def test_a_trusted_source_over_its_own_rate_gets_503_and_is_not_blocked() -> None:
    g = gate(trusted_invite_rate=1.0, rate_burst=1.0)
    first, second = (g.screen(sipfuzz.request("INVITE", peer(TRUSTED), branch=str(i)), f"{TRUSTED}:5062", ROOM,
                              0.0)[0] for i in range(2))
    assert first.verdict is Verdict.ACCEPT
    assert (second.code, second.reason, second.headers) == (503, "Rate Limited", (("Retry-After", "7"),))
    assert not g.limiter.blocked(TRUSTED, 0.0)


def test_a_scanner_is_dropped_and_blocked() -> None:
    g = gate()
    scan = sipfuzz.request("OPTIONS", peer(STRANGER), user_agent="friendly-scanner")
    decision, _ = g.screen(scan, f"{STRANGER}:5062", ROOM, 0.0)
    assert (decision.verdict, decision.why) == (Verdict.DROP, Why.SCANNER)
    assert g.limiter.blocked(STRANGER, 1.0)
    assert "newly blocked: 192.0.2.66" in g.log.summary(10)


def test_scanners_off() -> None:
    g = gate(scanners=())
    scan = sipfuzz.request("OPTIONS", peer(STRANGER), user_agent="friendly-scanner")
    assert g.screen(scan, f"{STRANGER}:5062", ROOM, 0.0)[0].why is Why.UNTRUSTED


def test_malformed_requests_are_counted_by_reason_with_an_escaped_call_id(log_lines: list[str]) -> None:
    g = gate()
    bad = sipfuzz.request("INVITE", peer(TRUSTED), call_id="ab\x7fcd")
    decision, request = g.screen(bad, f"{TRUSTED}:5062", ROOM, 0.0)
    assert (decision.code, decision.why, request) == (400, Why.MALFORMED, None)
    g.screen(bad.replace(b"ab\x7fcd", b"ab\xffcd"), f"{TRUSTED}:5062", ROOM, 0.0)
    assert log_lines[0].startswith("DEBUG ab\\x7fcd refused: 400 Bad Request (malformed: control character 0x7f")
    assert log_lines[1].startswith("DEBUG ab\\xffcd refused: 400 Bad Request (malformed: byte 0xff")
    assert "malformed 400 [control-char 1, not-utf8 1]: 2" in g.log.summary(10)


@pytest.mark.parametrize("dialogs", [KnownDialogs({(b"fuzz-1@host", b"t", b"f1")}), NO_DIALOGS],
                         ids=["live", "stray"])
def test_in_dialog_requests_get_the_light_check(dialogs: Dialogs) -> None:
    g = gate()
    bye = sipfuzz.request("BYE", peer(STRANGER), to_tag="t")
    assert g.screen(bye, f"{STRANGER}:5062", ROOM, 0.0, dialogs=dialogs)[0].verdict is Verdict.ACCEPT
    bad = bye.replace(b"User-Agent: fuzzer", b"User-Agent: \xff")
    assert g.screen(bad, f"{STRANGER}:5062", ROOM, 0.0, dialogs=dialogs)[0].code == 400
    ack = sipfuzz.request("ACK", peer(STRANGER), to_tag="t").replace(b"User-Agent: fuzzer", b"User-Agent: \xff")
    assert g.screen(ack, f"{STRANGER}:5062", ROOM, 0.0, dialogs=dialogs)[0].verdict is Verdict.DROP


def test_load_decides_new_calls_only() -> None:
    g = gate()
    full = Load(calls=10, max_calls=10, free_slots=10)
    invite = sipfuzz.request("INVITE", peer(TRUSTED))
    assert g.screen(invite, f"{TRUSTED}:5062", full, 0.0)[0].why is Why.CAPACITY
    options = sipfuzz.request("OPTIONS", peer(TRUSTED))
    assert g.screen(options, f"{TRUSTED}:5062", full, 0.0)[0].verdict is Verdict.ACCEPT
    stopping = Load(stopping=True, max_calls=10, free_slots=10)
    assert g.screen(invite, f"{TRUSTED}:5062", stopping, 0.0)[0].reason == "Shutting Down"


def test_the_share_credit_is_carried_between_calls() -> None:
    g = gate()
    half = Load(share=0.5, max_calls=10, free_slots=10)
    verdicts = [g.screen(sipfuzz.request("INVITE", peer(TRUSTED), branch=str(i)), f"{TRUSTED}:5062", half,
                         0.0)[0].verdict for i in range(4)]
    assert verdicts == [Verdict.REFUSE, Verdict.ACCEPT, Verdict.REFUSE, Verdict.ACCEPT]


def test_under_load_a_trusted_invite_is_parsed_only_when_admitted() -> None:
    """Shedding decides on what peek read (a malformed INVITE shed gets 503, not 400: it was not
    parsed); one the share admits is parsed and checked whole, and the credit is spent once."""
    g = gate()
    half = Load(share=0.5, max_calls=10, free_slots=10)
    bad = sipfuzz.request("INVITE", peer(TRUSTED), call_id="ab\x7fcd")
    good = sipfuzz.request("INVITE", peer(TRUSTED), call_id="ok")
    outcomes = []
    for message in (bad, bad, good, good, good, good):
        decision, request = g.screen(message, f"{TRUSTED}:5062", half, 0.0)
        outcomes.append((decision.code, decision.why, request.call_id if request else None))
    assert outcomes == [
        (503, Why.OVERLOAD, None),  # shed before any parse
        (400, Why.MALFORMED, None),  # admitted by the share, then found malformed
        (503, Why.OVERLOAD, None),
        (0, Why.NONE, "ok"),
        (503, Why.OVERLOAD, None),
        (0, Why.NONE, "ok"),
    ]
    assert g.take_shed() == 3 and g.take_work() == (5, 1)  # the malformed one is no call wanted
    assert g.refused_calls == {Why.OVERLOAD: 3, Why.MALFORMED: 1}
    # a trusted source over its own rate is still told so, parsed or not
    limited = gate(trusted_invite_rate=1.0, rate_burst=1.0)
    codes = [limited.screen(sipfuzz.request("INVITE", peer(TRUSTED), branch=str(i)), f"{TRUSTED}:5062",
                            Load(share=0.99, max_calls=10, free_slots=10), 0.0)[0].reason for i in range(3)]
    assert codes == ["Overloaded", "Rate Limited", "Rate Limited"]
    # draining: refused before the parse too
    draining = Load(draining=True, max_calls=10, free_slots=10)
    assert g.screen(bad, f"{TRUSTED}:5062", draining, 0.0)[0].reason == "Draining"


def test_bad_responses_are_counted() -> None:
    g = gate()
    g.note_bad_response(Malformed("not-utf8", "byte 0xff at offset 14 is not UTF-8"), "10.0.0.9:5060", "x")
    assert g.log.summary(10) == ("refused in the last 10 s: malformed (dropped) [not-utf8 1]: 1; "
                                 "from 10.0.0.9 (1)")


def test_pjsip_drops_are_summed_up_without_a_source() -> None:
    log = RefusalLog()
    for _ in range(3):
        log.note_unparsable("syntax")
    log.note_unparsable("missing-header")
    assert log.summary(10) == ("refused in the last 10 s: refused by pjsip/pjsua "
                               "[syntax 3, missing-header 1]: 4")


def test_the_summary_names_the_top_sources_and_how_many_more() -> None:
    g = gate()
    for i in range(5):
        for _ in range(i + 1):
            g.screen(sipfuzz.request("INVITE", peer(f"192.0.2.{i}")), f"192.0.2.{i}:5060", ROOM, 0.0)
    summary = g.log.summary(10)
    assert summary.endswith("from 192.0.2.4 (5), 192.0.2.3 (4), 192.0.2.2 (3) and 2 more"), summary


def test_security_methods_list_and_lift_blocks() -> None:
    g = gate()
    registry = RpcRegistry()
    now = [100.0]
    register_security_methods(registry, g, clock=lambda: now[0])
    g.limiter.block("192.0.2.9", until=160.0)
    g.limiter.block("192.0.2.8", until=130.0)
    assert registry.get("security.blocked").func() == [
        {"address": "192.0.2.9", "expires_in": 60.0}, {"address": "192.0.2.8", "expires_in": 30.0}]
    assert registry.get("security.unblock").func("192.0.2.9") == "192.0.2.9 unblocked"
    with pytest.raises(RpcError, match=r"192\.0\.2\.9 is not blocked"):
        registry.get("security.unblock").func("192.0.2.9")
    now[0] = 131.0
    assert registry.get("security.blocked").func() == []


def test_a_new_call_belongs_to_no_dialog_whatever_its_to_says() -> None:
    # App._on_incoming: pjsua made a call of it, so a To tag proves nothing
    g = gate()
    invite = sipfuzz.request("INVITE", peer(STRANGER), to_tag="forged")
    ours = KnownDialogs({(b"fuzz-1@host", b"forged", b"f1")})
    assert g.screen(invite, f"{STRANGER}:5062", ROOM, 0.0, dialogs=ours)[0].verdict is Verdict.ACCEPT
    decision, _ = g.screen(invite, f"{STRANGER}:5062", ROOM, 0.0, new_call=True, dialogs=ours)
    assert (decision.verdict, decision.why) == (Verdict.REFUSE, Why.UNTRUSTED)


def test_without_the_early_filter_only_new_invites_wait_for_pjsua() -> None:
    # early_filter = false: a new INVITE passes the filter unread and is screened as a new call in
    # App._on_incoming; anything else is decided in the filter as before (pjsua would answer it)
    g = gate(early_filter=False)
    invite = sipfuzz.request("INVITE", peer(STRANGER), call_id="late")
    decision, request = g.screen(invite, f"{STRANGER}:5062", ROOM, 0.0)
    assert (decision.verdict, request) == (Verdict.ACCEPT, None)
    assert g.refused_calls == {}
    decision, _ = g.screen(invite, f"{STRANGER}:5062", ROOM, 0.0, new_call=True)
    assert (decision.verdict, decision.code, decision.why) == (Verdict.REFUSE, 403, Why.UNTRUSTED)
    for method in ("OPTIONS", "MESSAGE", "SUBSCRIBE"):
        decision, _ = g.screen(sipfuzz.request(method, peer(STRANGER)), f"{STRANGER}:5062", ROOM, 0.0)
        assert (decision.verdict, decision.why) == (Verdict.REFUSE, Why.UNTRUSTED), method
    decision, _ = g.screen(sipfuzz.request("MESSAGE", peer(TRUSTED)), f"{TRUSTED}:5062", ROOM, 0.0)
    assert (decision.verdict, decision.code) == (Verdict.REFUSE, 405)


def test_the_work_since_the_last_beat_is_counted() -> None:
    g = gate(invite_rate=0)
    for i in range(3):
        g.screen(sipfuzz.request("INVITE", peer(TRUSTED), branch=str(i)), f"{TRUSTED}:5062", ROOM, 0.0)
    for i in range(5):
        g.screen(sipfuzz.request("INVITE", peer(STRANGER), branch=str(i)), f"{STRANGER}:5062", ROOM, 0.0)
    g.screen(sipfuzz.request("INVITE", peer(TRUSTED)), f"{TRUSTED}:5062", Load(overloaded=True), 0.0)
    g.screen(sipfuzz.request("OPTIONS", peer(TRUSTED)), f"{TRUSTED}:5062", ROOM, 0.0)
    assert g.take_work() == (4, 5)  # 3 admitted + 1 shed; 5 untrusted
    assert g.take_work() == (0, 0)


def test_refusal_lines_follow_the_log_level_as_it_is_now(monkeypatch: pytest.MonkeyPatch) -> None:
    # -v and core.log_level change the sinks' level after start-up: the refusal log reads it per
    # refusal (b2bua.logs.writes), not once from the config file
    from b2bua.admission import Decision
    from b2bua.logs import writes

    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="DEBUG")
    try:
        log = RefusalLog()
        refusal = Decision(Verdict.REFUSE, Why.UNTRUSTED, 403, "Forbidden")
        monkeypatch.setattr(writes, "debug", False)
        log.note(refusal, "192.0.2.1", "INVITE", "", "quiet@x")
        monkeypatch.setattr(writes, "debug", True)
        log.note(refusal, "192.0.2.1", "INVITE", "", "loud@x")
        assert lines == ["refused: 403 Forbidden (untrusted) INVITE from 192.0.2.1"]
        assert RefusalLog(debug=False).debug is False  # an explicit choice still wins (bench/guard.py)
    finally:
        logger.remove(sink)
