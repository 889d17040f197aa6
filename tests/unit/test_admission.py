"""Admission: the pure decision for each request (b2bua.admission), table-driven."""

from __future__ import annotations

import dataclasses

import pytest

from b2bua.admission import (
    Decision,
    Facts,
    Load,
    Policy,
    TrustList,
    Verdict,
    Why,
    closes_connection,
    decide,
    is_scanner,
    shedding_helps,
)

P = Policy(untrusted_code=403, capacity_code=503, retry_after=5)
ROOM = Load(calls=0, max_calls=10, free_slots=10)
LOAD_FIELDS = set(Load._fields)


def f(**kw: object) -> Facts:
    """A trusted new INVITE with room, changed by ``kw`` (Load's fields go to its load)."""
    load = ROOM._replace(**{k: v for k, v in kw.items() if k in LOAD_FIELDS})  # type: ignore[arg-type]
    rest = {"method": "INVITE", "trusted": True} | {k: v for k, v in kw.items() if k not in LOAD_FIELDS}
    return Facts(load=load, **rest)  # type: ignore[arg-type]


CASES = [
    # (name, facts, policy, (verdict, why, code, reason, retry_after, block))
    ("a trusted INVITE with room", f(), P, (Verdict.ACCEPT, Why.NONE, 0, "", 0, False)),
    ("blocked source", f(blocked=True, trusted=False), P, (Verdict.DROP, Why.BLOCKED, 0, "", 0, False)),
    ("blocked wins over everything", f(blocked=True, malformed_code=400, over_rate=True), P,
     (Verdict.DROP, Why.BLOCKED, 0, "", 0, False)),
    ("untrusted over its rate: dropped, blocked", f(trusted=False, over_rate=True), P,
     (Verdict.DROP, Why.RATE, 0, "", 0, True)),
    ("trusted over its rate: 503, not blocked", f(over_rate=True), P,
     (Verdict.REFUSE, Why.RATE, 503, "Rate Limited", 5, False)),
    ("trusted ACK over its rate: dropped", f(method="ACK", over_rate=True), P,
     (Verdict.DROP, Why.RATE, 0, "", 0, False)),
    ("malformed: 400", f(malformed_code=400), P, (Verdict.REFUSE, Why.MALFORMED, 400, "Bad Request", 0, False)),
    ("malformed from untrusted: still 400", f(malformed_code=400, trusted=False), P,
     (Verdict.REFUSE, Why.MALFORMED, 400, "Bad Request", 0, False)),
    ("tel: Request-URI: 416", f(malformed_code=416), P,
     (Verdict.REFUSE, Why.MALFORMED, 416, "Unsupported URI Scheme", 0, False)),
    ("malformed ACK: dropped", f(method="ACK", malformed_code=400), P, (Verdict.DROP, Why.MALFORMED, 0, "", 0, False)),
    ("REFER inside a dialog: declined", f(method="REFER", in_dialog=True), P,
     (Verdict.REFUSE, Why.TRANSFER, 603, "Decline", 0, False)),
    ("REFER outside a dialog: declined", f(method="REFER"), P,
     (Verdict.REFUSE, Why.TRANSFER, 603, "Decline", 0, False)),
    ("INVITE with Replaces: declined", f(replaces=True), P,
     (Verdict.REFUSE, Why.TRANSFER, 603, "Decline", 0, False)),
    ("INVITE with Replaces from untrusted: declined too", f(replaces=True, trusted=False), P,
     (Verdict.REFUSE, Why.TRANSFER, 603, "Decline", 0, False)),
    ("in dialog from untrusted: let in", f(method="BYE", in_dialog=True, trusted=False), P,
     (Verdict.ACCEPT, Why.NONE, 0, "", 0, False)),
    ("in dialog while draining and full: let in", f(method="INVITE", in_dialog=True, draining=True, calls=10), P,
     (Verdict.ACCEPT, Why.NONE, 0, "", 0, False)),
    ("scanner, untrusted: dropped, blocked", f(scanner=True, trusted=False), P,
     (Verdict.DROP, Why.SCANNER, 0, "", 0, True)),
    ("scanner, trusted: dropped, not blocked", f(scanner=True), P, (Verdict.DROP, Why.SCANNER, 0, "", 0, False)),
    ("scanner check off", f(scanner=True, trusted=False), dataclasses.replace(P, drop_scanners=False),
     (Verdict.REFUSE, Why.UNTRUSTED, 403, "Forbidden", 0, False)),
    ("untrusted INVITE: 403", f(trusted=False), P, (Verdict.REFUSE, Why.UNTRUSTED, 403, "Forbidden", 0, False)),
    ("untrusted INVITE, 404 configured", f(trusted=False), dataclasses.replace(P, untrusted_code=404),
     (Verdict.REFUSE, Why.UNTRUSTED, 404, "Not Found", 0, False)),
    ("untrusted OPTIONS: 403", f(method="OPTIONS", trusted=False), P,
     (Verdict.REFUSE, Why.UNTRUSTED, 403, "Forbidden", 0, False)),
    ("untrusted ACK: dropped", f(method="ACK", trusted=False), P, (Verdict.DROP, Why.UNTRUSTED, 0, "", 0, False)),
    ("untrusted while draining: 403 (trust first)", f(trusted=False, draining=True), P,
     (Verdict.REFUSE, Why.UNTRUSTED, 403, "Forbidden", 0, False)),
    ("trusted OPTIONS when full: let in", f(method="OPTIONS", calls=10, free_slots=0), P,
     (Verdict.ACCEPT, Why.NONE, 0, "", 0, False)),
    ("OPTIONS while stopping: 503", f(method="OPTIONS", stopping=True), P,
     (Verdict.REFUSE, Why.DRAINING, 503, "Shutting Down", 5, False)),
    ("OPTIONS while drained: 503", f(method="OPTIONS", draining=True), P,
     (Verdict.REFUSE, Why.DRAINING, 503, "Draining", 5, False)),
    ("OPTIONS while the loop is overloaded: 503", f(method="OPTIONS", overloaded=True), P,
     (Verdict.REFUSE, Why.OVERLOAD, 503, "Overloaded", 5, False)),
    ("OPTIONS while a share of calls is shed: 503", f(method="OPTIONS", share=0.9), P,
     (Verdict.REFUSE, Why.OVERLOAD, 503, "Overloaded", 5, False)),
    ("OPTIONS inside a dialog while drained: let in", f(method="OPTIONS", in_dialog=True, draining=True), P,
     (Verdict.ACCEPT, Why.NONE, 0, "", 0, False)),
    ("untrusted OPTIONS while drained: 403 (trust first)", f(method="OPTIONS", trusted=False, draining=True), P,
     (Verdict.REFUSE, Why.UNTRUSTED, 403, "Forbidden", 0, False)),
    ("a BYE in a dialog while drained: let in", f(method="BYE", in_dialog=True, draining=True), P,
     (Verdict.ACCEPT, Why.NONE, 0, "", 0, False)),
    ("a CANCEL while drained: let in", f(method="CANCEL", draining=True), P,
     (Verdict.ACCEPT, Why.NONE, 0, "", 0, False)),
    ("an ACK outside a dialog: let in (a refusal's ACK)", f(method="ACK"), P,
     (Verdict.ACCEPT, Why.NONE, 0, "", 0, False)),
    ("a BYE without a To tag: 481", f(method="BYE"), P,
     (Verdict.REFUSE, Why.METHOD, 481, "Call/Transaction Does Not Exist", 0, False)),
    ("an INFO without a To tag: 481", f(method="INFO"), P,
     (Verdict.REFUSE, Why.METHOD, 481, "Call/Transaction Does Not Exist", 0, False)),
    ("a MESSAGE: 405", f(method="MESSAGE"), P, (Verdict.REFUSE, Why.METHOD, 405, "Method Not Allowed", 0, False)),
    ("a SUBSCRIBE: 405", f(method="SUBSCRIBE"), P,
     (Verdict.REFUSE, Why.METHOD, 405, "Method Not Allowed", 0, False)),
    ("a NOTIFY inside a dialog: let in", f(method="NOTIFY", in_dialog=True), P,
     (Verdict.ACCEPT, Why.NONE, 0, "", 0, False)),
    ("an unknown method: 501", f(method="FOO"), P, (Verdict.REFUSE, Why.METHOD, 501, "Not Implemented", 0, False)),
    ("an untrusted MESSAGE: 403 (trust first)", f(method="MESSAGE", trusted=False), P,
     (Verdict.REFUSE, Why.UNTRUSTED, 403, "Forbidden", 0, False)),
    ("stopping: 503 Shutting Down", f(stopping=True), P,
     (Verdict.REFUSE, Why.DRAINING, 503, "Shutting Down", 5, False)),
    ("drained by the operator: 503 Draining", f(draining=True), P,
     (Verdict.REFUSE, Why.DRAINING, 503, "Draining", 5, False)),
    ("stopping wins over drained", f(stopping=True, draining=True, overloaded=True), P,
     (Verdict.REFUSE, Why.DRAINING, 503, "Shutting Down", 5, False)),
    ("loop overloaded: 503", f(overloaded=True), P, (Verdict.REFUSE, Why.OVERLOAD, 503, "Overloaded", 5, False)),
    ("at max_calls: capacity code", f(calls=10), dataclasses.replace(P, capacity_code=486),
     (Verdict.REFUSE, Why.CAPACITY, 486, "Too Many Calls", 5, False)),
    ("one slot left: no room for a B leg", f(free_slots=1), P,
     (Verdict.REFUSE, Why.CAPACITY, 503, "Too Many Calls", 5, False)),
    ("two slots left: room", f(free_slots=2), P, (Verdict.ACCEPT, Why.NONE, 0, "", 0, False)),
    ("no Retry-After configured", f(stopping=True), dataclasses.replace(P, retry_after=0),
     (Verdict.REFUSE, Why.DRAINING, 503, "Shutting Down", 0, False)),
]


@pytest.mark.parametrize(("name", "facts", "policy", "expected"), CASES, ids=[c[0] for c in CASES])
def test_decide(name: str, facts: Facts, policy: Policy,
                expected: tuple[Verdict, Why, int, str, int, bool]) -> None:
    d = decide(facts, policy)
    assert (d.verdict, d.why, d.code, d.reason, d.retry_after, d.block) == expected


def test_retry_after_becomes_a_header() -> None:
    assert decide(f(draining=True), P).headers == (("Retry-After", "5"),)
    assert decide(f(), P).headers == ()


def test_a_refused_method_is_told_what_is_allowed() -> None:
    allow = (("Allow", "PRACK, INVITE, ACK, BYE, CANCEL, UPDATE, INFO, OPTIONS"),)
    assert decide(f(method="SUBSCRIBE"), P).headers == allow
    assert decide(f(method="FOO"), P).headers == allow
    assert decide(f(method="BYE"), P).headers == ()


def admitted_of(share: float, n: int) -> list[bool]:
    credit, out = 0.0, []
    for _ in range(n):
        d = decide(f(share=share, credit=credit), P)
        credit = d.credit
        out.append(d.verdict is Verdict.ACCEPT)
    return out


@pytest.mark.parametrize(("share", "pattern"), [
    (1.0, [True] * 10),
    (0.5, [False, True] * 5),
    (0.25, [False, False, False, True] * 3),
    (0.1, [False] * 9 + [True]),
])
def test_a_share_of_new_calls_is_admitted_evenly(share: float, pattern: list[bool]) -> None:
    assert admitted_of(share, len(pattern)) == pattern


def test_the_share_credit_is_spent_only_by_new_calls_that_would_be_admitted() -> None:
    # an untrusted INVITE or an OPTIONS under overload must not use up a trusted call's turn
    for facts in (f(trusted=False, share=0.5, credit=0.5), f(method="OPTIONS", share=0.5, credit=0.5),
                  f(in_dialog=True, share=0.5, credit=0.5)):
        assert decide(facts, P).credit == 0.5
    assert decide(f(share=0.5, credit=0.5), P).verdict is Verdict.ACCEPT


def test_a_refused_share_keeps_the_credit_earned() -> None:
    d = decide(f(share=0.3, credit=0.0), P)
    assert d.verdict is Verdict.REFUSE and d.why is Why.OVERLOAD and d.credit == pytest.approx(0.3)


def test_the_decision_is_a_value() -> None:
    assert decide(f(), P) == Decision(Verdict.ACCEPT)


@pytest.mark.parametrize(("ip", "trusted"), [
    ("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("10.1.2.3", True), ("10.0.0.0", True),
    ("11.0.0.1", False), ("192.0.2.1", True), ("192.0.2.2", False), ("::ffff:10.0.0.7", True),
    ("2001:db8::1", True), ("2001:db9::1", False), ("not-an-ip", False), ("", False),
])
def test_trust_list(ip: str, trusted: bool) -> None:
    trust = TrustList(["127.0.0.0/8", "::1", "10.0.0.0/8", "192.0.2.1", "2001:db8::/32"])
    assert (ip in trust) is trusted
    assert (ip in trust) is trusted  # the cached answer too


def test_trust_list_knows_when_everyone_is_trusted() -> None:
    assert TrustList(["0.0.0.0/0"]).everyone and not TrustList(["10.0.0.0/8"]).everyone
    assert not TrustList([]).everyone and "127.0.0.1" not in TrustList([])


@pytest.mark.parametrize(("ua", "frm", "scanner"), [
    ("friendly-scanner", "", True), ("SIPVicious 0.3.3", "", True), ("Asterisk PBX 20", "", False),
    ("", '"sipvicious"<sip:100@1.1.1.1>;tag=1', True), ("", "<sip:alice@x>", False), ("sipcli/v1.8", "", True),
])
def test_scanners(ua: str, frm: str, scanner: bool) -> None:
    assert is_scanner(ua, frm, ("friendly-scanner", "sipvicious", "sipcli")) is scanner



@pytest.mark.parametrize(("new_calls", "refused", "helps"), [
    (0, 0, True),  # nothing known: as before, the backlog alone decides
    (35, 0, True),  # 700 calls/s and nothing else: the calls are the load
    (1, 100, False),  # 20 calls/s in a 2000/s flood: refusing them would not relieve the loop
    (35, 500, True),  # 700 calls/s in a 10,000/s flood: the calls still weigh more
    (0, 1, False),
])
def test_shedding_helps_only_when_calls_weigh(new_calls: int, refused: int, helps: bool) -> None:
    assert shedding_helps(new_calls, refused) is helps


@pytest.mark.parametrize(("facts", "closes"), [
    (f(blocked=True, trusted=False), True),  # a blocked source
    (f(over_rate=True, trusted=False), True),  # being blocked now
    (f(scanner=True, trusted=False), True),
    (f(trusted=False), False),  # a stranger's 403 within its rate: its connection stays
    (f(over_rate=True), False),  # a trusted source's 503 over its rate
    (f(scanner=True), False),  # a trusted source is never blocked
    (f(malformed_code=400), False),
    (f(), False),
])
def test_only_a_blocked_sources_connection_is_closed(facts: Facts, closes: bool) -> None:
    policy = Policy(untrusted_code=403, capacity_code=503, retry_after=5, drop_scanners=True)
    assert closes_connection(decide(facts, policy)) is closes
