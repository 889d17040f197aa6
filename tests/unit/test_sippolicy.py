"""SIP response policy (b2bua.sippolicy): priorities, best failure, relaying; one home for
the host's default and the failover plugin."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from b2bua.api import DialMode, Failure, FailureKind, Reject, RoutePlan, Target
from b2bua.config import parse_config, parse_section
from b2bua.plugins import Hooks, make_manager
from b2bua.sippolicy import best_failure, hangup_headers, reason_header, relay, response_priority
from plugins.failover.config import FailoverConfig
from plugins.failover.policy import next_step

T1, T2 = Target("sip:10.0.0.1"), Target("sip:10.0.0.2")
RESPONSE = FailureKind.RESPONSE


def fail(target: Target, code: int, kind: FailureKind = RESPONSE, *, reason: str = "",
         headers: Mapping[str, tuple[str, ...]] | None = None, attempt: int = 1) -> Failure:
    return Failure(target, code, reason, kind, attempt, headers or {})


def test_response_priority_is_kamailio_get_prio() -> None:
    codes = [503, 500, 486, 404, 484, 401, 407, 415, 420, 302, 603, 600, 750, 0]
    assert sorted(codes, key=response_priority) == [600, 603, 302, 401, 407, 415, 420, 484, 404, 486, 500, 503,
                                                    0, 750]
    assert response_priority(404) == 4104 and response_priority(484) == 4084 and response_priority(603) == 1003


@pytest.mark.parametrize(
    ("codes", "best"),
    [
        ([503, 486], 486),  # a class 4 beats a class 5
        ([500, 503], 500),  # lower code first within a class (503 is then relayed as 500 anyway)
        ([486, 404], 404),
        ([404, 484], 484),  # 484 lets the caller retry: before the other 4xx
        ([486, 603, 302], 603),  # 6xx first
        ([408, 302], 302),
    ],
)
def test_best_failure(codes: list[int], best: int) -> None:
    assert best_failure([fail(T1, c) for c in codes]).code == best


def test_best_failure_tie_keeps_the_earliest() -> None:
    first, second = fail(T1, 500, reason="first"), fail(T2, 500, reason="second")
    assert best_failure([first, second]) is first


def test_best_failure_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least one failure"):
        best_failure([])


def test_relayed_503_becomes_500_without_its_retry_after() -> None:
    failure = fail(T1, 503, reason="Service Unavailable",
                   headers={"retry-after": ("300",), "reason": ("Q.850;cause=34",)})
    assert relay(failure) == Reject(500, "Server Internal Error", (("Reason", "Q.850;cause=34"),))


@pytest.mark.parametrize("code", [401, 407])
def test_a_challenge_the_b2bua_could_not_answer_is_relayed_as_403(code: int) -> None:
    """The caller cannot answer a gateway's challenge for the B2BUA: it gets 403, no challenge."""
    headers = {"www-authenticate": ('Digest realm="carrier", nonce="1"',), "reason": ("SIP;cause=401",)}
    assert relay(fail(T1, code, reason="Unauthorized", headers=headers)) == Reject(
        403, "Forbidden", (("Reason", "SIP;cause=401"),))


@pytest.mark.parametrize("code", [300, 301, 302, 305, 380])
def test_a_redirect_the_b2bua_did_not_follow_is_relayed_as_480_without_its_contact(code: int) -> None:
    """A 3xx from us would carry our own Contact: a caller following it would call us again."""
    headers = {"contact": ("<sip:+4930999@192.0.2.99>",), "reason": ("Q.850;cause=23",)}
    assert relay(fail(T1, code, reason="Moved", headers=headers)) == Reject(
        480, "Temporarily Unavailable", (("Reason", "Q.850;cause=23"),))


@pytest.mark.parametrize("kind", [FailureKind.NO_RESPONSE, FailureKind.NO_ANSWER])
def test_our_own_timeouts_are_408(kind: FailureKind) -> None:
    assert relay(fail(T1, 408, kind, reason="whatever")) == Reject(408, "Request Timeout")


@pytest.mark.parametrize(("code", "expected"), [(200, 500), (180, 500), (700, 500), (0, 500), (404, 404)])
def test_relay_only_final_failure_codes(code: int, expected: int) -> None:
    assert relay(fail(T1, code)).code == expected


def test_relay_keeps_retry_after_and_reason() -> None:
    headers = {"retry-after": ("120",), "reason": ('Q.850;cause=17;text="User busy"',), "warning": ("399 gw",)}
    assert relay(fail(T1, 486, reason="Busy Here", headers=headers)) == Reject(
        486, "Busy Here", (("Retry-After", "120"), ("Reason", 'Q.850;cause=17;text="User busy"')))


def test_relay_sanitises_reason_phrase() -> None:
    assert relay(fail(T1, 480, reason="Temporarily\r\nX-Evil: 1")).reason == "Temporarily X-Evil: 1"
    assert relay(fail(T1, 480, reason="")).reason == "Temporarily Unavailable"


def test_reason_header_escapes_quotes() -> None:
    expected = 'SIP;cause=500;text="Bad \\"thing\\" \\\\ here"'
    assert reason_header(fail(T1, 500, reason='Bad "thing" \\ here')) == expected


# -- the host's default and the failover plugin agree -------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        fail(T1, 503, reason="Service Unavailable", headers={"retry-after": ("60",)}),
        fail(T1, 486, reason="Busy Here", headers={"retry-after": ("10",)}),
        fail(T1, 404, reason="Not Found"),
        fail(T1, 603, reason="Decline"),
        fail(T1, 408, FailureKind.NO_ANSWER, reason="Request Timeout"),
    ],
)
def test_host_default_and_failover_plugin_relay_alike(failure: Failure) -> None:
    """One gateway, nothing left to try: both answer the caller the same way."""
    plan = RoutePlan((T1,), DialMode.SERIAL)
    hooks = Hooks(make_manager([]))
    hooks.configure(parse_config({}), app=None)  # type: ignore[arg-type]
    host = hooks.next_target(None, plan, failure)  # type: ignore[arg-type]
    failover = next_step(plan, failure, [T1], 0.0, parse_section(FailoverConfig, {"final": "last"}, "test"))
    assert host == failover == relay(failure)


def test_only_the_reason_of_a_peers_bye_crosses_to_the_other_leg() -> None:
    bye = {"reason": ('Q.850;cause=16;text="Normal call clearing"', "SIP;cause=200"),
           "x-carrier": ("secret",), "contact": ("<sip:gw@10.0.0.1>",)}
    assert hangup_headers(bye) == (("Reason", 'Q.850;cause=16;text="Normal call clearing"'),
                                   ("Reason", "SIP;cause=200"))
    assert hangup_headers({"reason": ("  folded\r\n  over lines ",)}) == (("Reason", "folded over lines"),)
    assert hangup_headers({}) == () and hangup_headers({"reason": ("",)}) == ()


def test_a_peers_bye_reasons_cross_bounded() -> None:
    # a gateway's BYE is wire input: twenty long Reasons must not make the caller's BYE too long
    # to send (the caller's leg would stay up); control characters never cross
    many = {"reason": tuple(f'Q.850;cause=16;text="{"x" * 400}{n}"' for n in range(20))}
    kept = hangup_headers(many)
    assert 0 < len(kept) < 20 and sum(len(v) for _, v in kept) <= 1500
    assert hangup_headers({"reason": ("Q.850;cause=16\x00",)}) == ()
