"""Requests that claim a dialog (b2bua.guard.standing): exempt from their source's block and rate
only when the dialog is ours; a made-up To tag counts like any request outside a dialog."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from b2bua.admission import Load, Verdict, Why
from b2bua.config import SecurityConfig, SipConfig
from b2bua.guard import NO_DIALOGS, Gate, Standing, standing

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
import sipfuzz  # a plain module shared with the e2e fuzz test

TRUSTED, STRANGER = "10.0.0.5", "192.0.2.66"
ROOM = Load(calls=0, max_calls=10, free_slots=10)
#: what every in-dialog method a call of ours may carry
IN_DIALOG = ("BYE", "INVITE", "UPDATE", "INFO", "ACK", "PRACK", "OPTIONS")


class KnownDialogs:
    """A stand-in for pjsip's tables: the dialogs ``(Call-ID, To tag, From tag)`` it holds, whether
    a CANCEL finds its INVITE; it records what it was asked."""

    def __init__(self, dialogs: set[tuple[bytes, bytes, bytes]] = frozenset(),  # type: ignore[assignment]
                 invite: bool = False) -> None:
        self.dialogs = dialogs
        self.invite = invite
        self.asked: list[tuple[bytes, ...]] = []

    def has_dialog(self, call_id: bytes, local_tag: bytes, remote_tag: bytes) -> bool:
        self.asked.append((call_id, local_tag, remote_tag))
        return (call_id, local_tag, remote_tag) in self.dialogs

    def has_invite(self) -> bool:
        self.asked.append((b"CANCEL",))
        return self.invite


def peer(ip: str) -> sipfuzz.Peer:
    return sipfuzz.Peer("10.0.0.1", 5060, ip, 5062)


def gate(**security: object) -> Gate:
    return Gate(SecurityConfig(trusted=("10.0.0.0/24",), **security), SipConfig(retry_after=7))  # type: ignore[arg-type]


def stray_bye(n: int, ip: str = STRANGER) -> bytes:
    """What a flooder sends: a BYE with a made-up Call-ID and To tag."""
    return sipfuzz.request("BYE", peer(ip), call_id=f"rnd{n}", to_tag=f"t{n}", branch=f"b{n}")


OUR_CALL = (b"call-1@pbx", b"ours", b"theirs")


def ours(method: str, ip: str, cseq: int = 2) -> bytes:
    return sipfuzz.request(method, peer(ip), call_id="call-1@pbx", to_tag="ours", from_tag="theirs", cseq=cseq,
                           branch=f"{method}{cseq}")


def test_standing_asks_pjsip_only_what_a_request_claims() -> None:
    dialogs = KnownDialogs({OUR_CALL})
    assert standing("INVITE", "", sipfuzz.request("INVITE", peer(TRUSTED)), dialogs) is Standing.NEW
    assert standing("OPTIONS", "", sipfuzz.request("OPTIONS", peer(TRUSTED)), dialogs) is Standing.NEW
    assert dialogs.asked == [], "a request that claims nothing costs no look-up"
    assert standing("BYE", "ours", ours("BYE", TRUSTED), dialogs) is Standing.LIVE
    assert standing("BYE", "t1", stray_bye(1), dialogs) is Standing.STRAY
    assert dialogs.asked == [OUR_CALL, (b"rnd1", b"t1", b"f1")]
    cancel = sipfuzz.request("CANCEL", peer(TRUSTED))
    assert standing("CANCEL", "", cancel, KnownDialogs(invite=True)) is Standing.LIVE
    assert standing("CANCEL", "", cancel, KnownDialogs()) is Standing.NEW, "no INVITE pending: a CANCEL like any other"


def test_a_flood_of_stray_byes_is_limited_then_blocked_while_our_dialogs_pass() -> None:
    """The review's finding: random To tags used to pass every limit and block."""
    g = gate(request_rate=10.0, rate_burst=2.0, block_time=60.0)
    dialogs = KnownDialogs({OUR_CALL})
    decisions = [g.screen(stray_bye(n), f"{STRANGER}:5062", ROOM, 1.0, dialogs=dialogs)[0] for n in range(100)]
    # 10/s x 2 s: twenty go on to pjsip (each answered 481 there), then the source is blocked
    assert [d.verdict for d in decisions] == [Verdict.ACCEPT] * 20 + [Verdict.DROP] * 80
    assert [d.why for d in decisions[20:22]] == [Why.RATE, Why.BLOCKED]
    assert g.limiter.blocked(STRANGER, 2.0)
    # the blocked source's requests inside our call still pass, every method, and spend nothing
    tracked = g.limiter.tracked
    for cseq, method in enumerate(IN_DIALOG, 2):
        assert g.screen(ours(method, STRANGER, cseq), f"{STRANGER}:5062", ROOM, 2.0,
                        dialogs=dialogs)[0].verdict is Verdict.ACCEPT, method
    assert g.limiter.tracked == tracked
    assert g.log.summary(10) == (f"refused in the last 10 s: blocked (dropped): 79; rate (dropped): 1; "
                                 f"from {STRANGER} (80); newly blocked: {STRANGER}")
    assert g.refused_requests == {Why.RATE: 1, Why.BLOCKED: 79} and not g.refused_calls


def test_a_blocked_sources_stray_request_is_dropped_without_being_parsed() -> None:
    g = gate()
    g.limiter.block(STRANGER, 100.0)
    garbage = b"BYE \xff\x00 SIP/2.0\r\nTo: <sip:a@b>;tag=x\r\nX: \x07\r\n\r\n"
    decision, request = g.screen(garbage, f"{STRANGER}:5062", ROOM, 1.0, dialogs=KnownDialogs())
    assert (decision.verdict, decision.why, request) == (Verdict.DROP, Why.BLOCKED, None)


def test_without_pjsip_to_ask_a_to_tag_proves_nothing() -> None:
    g = gate(request_rate=1.0, rate_burst=1.0)
    verdicts = [g.screen(stray_bye(n), f"{STRANGER}:5062", ROOM, 0.0, dialogs=NO_DIALOGS)[0].verdict
                for n in range(3)]
    assert verdicts == [Verdict.ACCEPT, Verdict.DROP, Verdict.DROP]


def test_a_trusted_peer_over_its_rate_keeps_its_calls_and_cancels() -> None:
    """A trusted PBX looping on OPTIONS is over trusted_request_rate: its new requests get 503,
    but what belongs to its calls, CANCEL of a ringing INVITE included, is never refused."""
    g = gate(trusted_request_rate=1.0, rate_burst=1.0)
    source = f"{TRUSTED}:5062"
    options = [g.screen(sipfuzz.request("OPTIONS", peer(TRUSTED), branch=str(i)), source, ROOM, 0.0)[0]
               for i in range(2)]
    assert [(d.verdict, d.code) for d in options] == [(Verdict.ACCEPT, 0), (Verdict.REFUSE, 503)]
    pending = KnownDialogs({OUR_CALL}, invite=True)
    cancel = sipfuzz.request("CANCEL", peer(TRUSTED), call_id="call-1@pbx", from_tag="theirs")
    assert g.screen(cancel, source, ROOM, 0.0, dialogs=pending)[0].verdict is Verdict.ACCEPT
    for cseq, method in enumerate(IN_DIALOG, 2):
        assert g.screen(ours(method, TRUSTED, cseq), source, ROOM, 0.0, dialogs=pending)[0].verdict \
            is Verdict.ACCEPT, method
    # a CANCEL that cancels nothing, and a stray BYE, count like the OPTIONS: 503, never a block
    late = g.screen(cancel, source, ROOM, 0.0, dialogs=KnownDialogs())[0]
    stray = g.screen(stray_bye(1, TRUSTED), source, ROOM, 0.0, dialogs=pending)[0]
    assert [(d.code, d.reason, d.why) for d in (late, stray)] == [(503, "Rate Limited", Why.RATE)] * 2
    assert not g.limiter.blocked(TRUSTED, 0.0)


def test_a_stray_ack_is_never_answered() -> None:
    for ip in (TRUSTED, STRANGER):
        g = gate(request_rate=1.0, trusted_request_rate=1.0, rate_burst=1.0)
        acks = [sipfuzz.request("ACK", peer(ip), call_id=f"a{n}", to_tag=f"t{n}") for n in range(2)]
        first, second = (g.screen(ack, f"{ip}:5062", ROOM, 0.0, dialogs=KnownDialogs())[0] for ack in acks)
        assert first.verdict is Verdict.ACCEPT  # pjsip's dialog layer answers no ACK
        assert (second.verdict, second.code) == (Verdict.DROP, 0), ip


@pytest.mark.parametrize("method", ["INVITE", "OPTIONS", "INFO"])
def test_a_stray_request_is_no_new_call(method: str) -> None:
    """A stray re-INVITE spends the request allowance, not the new calls' one, and is no call."""
    g = gate(trusted_invite_rate=1.0, trusted_request_rate=1.0, rate_burst=1.0)
    stray = sipfuzz.request(method, peer(TRUSTED), call_id="gone", to_tag="t")
    assert g.screen(stray, f"{TRUSTED}:5062", ROOM, 0.0, dialogs=KnownDialogs())[0].verdict is Verdict.ACCEPT
    assert g.take_work() == (0, 0)
    again = g.screen(stray, f"{TRUSTED}:5062", ROOM, 0.0, dialogs=KnownDialogs())[0]
    assert (again.code, again.why) == (503, Why.RATE)
    assert g.refused_requests == {Why.RATE: 1} and not g.refused_calls
    invite = sipfuzz.request("INVITE", peer(TRUSTED), branch="new")
    assert g.screen(invite, f"{TRUSTED}:5062", ROOM, 0.0, dialogs=KnownDialogs())[0].verdict is Verdict.ACCEPT
