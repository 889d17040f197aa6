"""Failover decisions (plugins.failover.policy): table-driven."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from b2bua.api import DialMode, Failure, FailureKind, Reject, RoutePlan, Target
from b2bua.config import parse_section
from plugins.failover.config import FailoverConfig
from plugins.failover.policy import (
    classify,
    final_answer,
    next_step,
    should_mark,
    untried,
    with_timeouts,
)

T1, T2, T3 = Target("sip:10.0.0.1"), Target("sip:10.0.0.2"), Target("sip:10.0.0.3")
PLAN = RoutePlan((T1, T2, T3))
RESPONSE, NO_RESPONSE, NO_ANSWER = FailureKind.RESPONSE, FailureKind.NO_RESPONSE, FailureKind.NO_ANSWER
CANCELLED, ERROR = FailureKind.CANCELLED, FailureKind.ERROR

REASONS = {408: "Request Timeout", 486: "Busy Here", 500: "Server Internal Error", 503: "Service Unavailable"}


def cfg(**section: Any) -> FailoverConfig:
    return parse_section(FailoverConfig, section, "test: [plugins.failover]")


def fail(
    target: Target,
    code: int,
    kind: FailureKind = RESPONSE,
    *,
    reason: str | None = None,
    attempt: int = 1,
    headers: Mapping[str, tuple[str, ...]] | None = None,
) -> Failure:
    return Failure(target, code, REASONS.get(code, "") if reason is None else reason, kind, attempt, headers or {})


FIXED_503 = Reject(
    503,
    "Service Unavailable",
    (("Retry-After", "5"), ("Reason", 'SIP;cause=503;text="Service Unavailable"')),
)


# -- classify -----------------------------------------------------------------------------------------

CLASSIFY_TABLE = [
    # settings, code, kind, outcome
    ({}, 503, RESPONSE, "failover"),
    ({}, 500, RESPONSE, "failover"),
    ({}, 408, NO_RESPONSE, "failover"),
    ({}, 408, RESPONSE, "failover"),
    ({}, 503, ERROR, "failover"),
    ({}, 486, RESPONSE, "hunt-stop"),
    ({}, 603, RESPONSE, "hunt-stop"),
    ({}, 404, RESPONSE, "final"),
    ({}, 302, RESPONSE, "final"),
    ({}, 487, CANCELLED, "final"),
    ({}, 408, NO_ANSWER, "final"),  # it rang: do not ring the callee again via another carrier
    ({"failover_on_no_answer": True}, 408, NO_ANSWER, "failover"),
    ({"failover_codes": ["5xx", 404]}, 404, RESPONSE, "failover"),
    ({"failover_codes": ["4xx", "5xx"]}, 486, RESPONSE, "hunt-stop"),  # hunt-stop wins
    ({"failover_codes": ["6xx"], "hunt_stop_codes": []}, 603, RESPONSE, "failover"),
    ({"failover_codes": ["408"]}, 503, RESPONSE, "final"),
]


@pytest.mark.parametrize(("settings", "code", "kind", "outcome"), CLASSIFY_TABLE)
def test_classify(settings: dict[str, Any], code: int, kind: FailureKind, outcome: str) -> None:
    assert classify(code, cfg(**settings), kind) == outcome


# -- next_step: serial plans ------------------------------------------------------------------------------

NEXT_TABLE: list[tuple[str, dict[str, Any], Failure, Sequence[Target], float, Target | Reject]] = [
    # name, settings, failure, tried, elapsed, expected
    ("503 -> next", {}, fail(T1, 503), [T1], 0.1, T2),
    ("500 on second -> third", {}, fail(T2, 500, attempt=2), [T1, T2], 0.1, T3),
    ("local timeout -> next", {}, fail(T1, 408, NO_RESPONSE), [T1], 5.0, T2),
    ("send error -> next", {}, fail(T1, 503, ERROR, reason="Transport Error"), [T1], 0.0, T2),
    ("486 relayed", {}, fail(T1, 486), [T1], 1.0, Reject(486, "Busy Here")),
    ("603 relayed", {}, fail(T1, 603, reason="Decline"), [T1], 1.0, Reject(603, "Decline")),
    ("404 not listed: relayed", {}, fail(T1, 404, reason="Not Found"), [T1], 1.0, Reject(404, "Not Found")),
    ("404 listed: next", {"failover_codes": ["5xx", "408", 404]}, fail(T1, 404), [T1], 1.0, T2),
    ("all failed: 503 + Retry-After", {}, fail(T3, 503, attempt=3), [T1, T2, T3], 1.0, FIXED_503),
    ("max_attempts reached", {"max_attempts": 2}, fail(T2, 503, attempt=2), [T1, T2], 1.0, FIXED_503),
    ("max_attempts not reached", {"max_attempts": 2}, fail(T1, 503), [T1], 1.0, T2),
    ("budget spent", {"total_timeout": 10}, fail(T1, 503), [T1], 10.0, FIXED_503),
    ("budget under T1 left", {"total_timeout": 10}, fail(T1, 503), [T1], 9.6, FIXED_503),
    ("budget left", {"total_timeout": 10}, fail(T1, 503), [T1], 9.0, dataclasses.replace(T2, attempt_timeout=1.0)),
    ("ring no answer: relayed", {}, fail(T1, 408, NO_ANSWER), [T1], 30.0, Reject(408, "Request Timeout")),
    ("cancelled: relayed", {}, fail(T1, 487, CANCELLED, reason="Request Terminated"), [T1], 1.0,
     Reject(487, "Request Terminated")),
    ("503 not a failover code: relayed as 500", {"failover_codes": ["408"]}, fail(T1, 503), [T1], 1.0,
     Reject(500, "Server Internal Error")),
    ("nothing recorded: failure's target counts as tried", {}, fail(T1, 503), [], 0.0, T2),
    ("fixed answer without extras", {"retry_after": 0, "reason_header": False}, fail(T3, 503), [T1, T2, T3], 1.0,
     Reject(503, "Service Unavailable")),
    ("fixed answer own code", {"final_code": 480, "final_reason": "No Gateway", "retry_after": 0},
     fail(T3, 500), [T1, T2, T3], 1.0,
     Reject(480, "No Gateway", (("Reason", 'SIP;cause=500;text="Server Internal Error"'),))),
]  # fmt: skip


@pytest.mark.parametrize(
    ("settings", "failure", "tried", "elapsed", "expected"),
    [row[1:] for row in NEXT_TABLE],
    ids=[row[0] for row in NEXT_TABLE],
)
def test_next_step(
    settings: dict[str, Any],
    failure: Failure,
    tried: Sequence[Target],
    elapsed: float,
    expected: Target | Reject,
) -> None:
    assert next_step(PLAN, failure, tried, elapsed, cfg(**settings)) == expected


def test_hunt_stop_is_not_retried_even_with_targets_left() -> None:
    step = next_step(PLAN, fail(T1, 486), [T1], 0.0, cfg(failover_codes=["4xx", "5xx"]))
    assert step == Reject(486, "Busy Here")


def test_relayed_failure_keeps_retry_after_and_reason_headers() -> None:
    headers = {"retry-after": ("120",), "reason": ('Q.850;cause=17;text="User busy"',), "warning": ("399 gw",)}
    step = next_step(PLAN, fail(T1, 486, headers=headers), [T1], 0.0, cfg())
    assert step == Reject(486, "Busy Here", (("Retry-After", "120"), ("Reason", 'Q.850;cause=17;text="User busy"')))


def test_fixed_answer_passes_on_gateways_own_reason_header() -> None:
    last = fail(T3, 503, headers={"reason": ("Q.850;cause=34",)})
    step = next_step(PLAN, last, [T1, T2, T3], 1.0, cfg())
    assert isinstance(step, Reject)
    assert step.headers == (("Retry-After", "5"), ("Reason", "Q.850;cause=34"))


def test_budget_shortens_target_attempt_timeout_but_never_lengthens_it() -> None:
    c = cfg(total_timeout=10)
    # 6 s left, host default 5 s: the default stands
    assert next_step(PLAN, fail(T1, 503), [T1], 4.0, c, default_attempt_timeout=5.0) == T2
    # 3 s left: the attempt gets 3 s
    assert next_step(PLAN, fail(T1, 503), [T1], 7.0, c, default_attempt_timeout=5.0) == dataclasses.replace(
        T2, attempt_timeout=3.0
    )
    # the target's own 2 s is shorter than the 3 s left
    plan = RoutePlan((T1, dataclasses.replace(T2, attempt_timeout=2.0)))
    assert next_step(plan, fail(T1, 503), [T1], 7.0, c).attempt_timeout == 2.0  # type: ignore[union-attr]


def test_without_budget_targets_are_unchanged() -> None:
    step = next_step(PLAN, fail(T1, 503), [T1], 1000.0, cfg(), default_attempt_timeout=5.0)
    assert step is T2


# -- tried targets ---------------------------------------------------------------------------------------


def test_a_shortened_target_still_counts_as_tried() -> None:
    shortened = dataclasses.replace(T2, attempt_timeout=1.5)
    assert next_step(PLAN, fail(shortened, 503, attempt=2), [T1, shortened], 1.0, cfg()) == T3


def test_duplicate_targets_are_each_tried_once() -> None:
    plan = RoutePlan((T1, T1, T2))
    assert untried(plan, [T1]) == (T1, T2)
    assert untried(plan, [T1, T1]) == (T2,)
    assert next_step(plan, fail(T1, 503, attempt=2), [T1, T1], 1.0, cfg()) == T2


def test_targets_outside_the_plan_are_ignored() -> None:
    other = Target("sip:192.0.2.9")
    assert next_step(PLAN, fail(other, 503), [other], 1.0, cfg()) == T1


def test_walks_the_whole_plan_then_gives_up() -> None:
    c, tried, failures = cfg(), [T1], []
    answers: list[Target | Reject] = []
    for attempt in range(1, 10):  # bounded: the plan has 3 targets
        failure = fail(tried[-1], 503, attempt=attempt)
        failures.append(failure)
        step = next_step(PLAN, failure, tried, 0.0, c, failures=failures)
        answers.append(step)
        if isinstance(step, Reject):
            break
        tried.append(step)
    assert answers == [T2, T3, FIXED_503]


# -- parallel plans ----------------------------------------------------------------------------------------

PARALLEL = RoutePlan((T1, T2, T3), mode=DialMode.PARALLEL)


def test_parallel_plan_is_not_redialled() -> None:
    failures = [fail(T1, 503), fail(T2, 500), fail(T3, 503)]
    assert next_step(PARALLEL, failures[1], [T1, T2, T3], 1.0, cfg(), failures=failures) == Reject(
        503,
        "Service Unavailable",
        (("Retry-After", "5"), ("Reason", 'SIP;cause=500;text="Server Internal Error"')),
    )


def test_parallel_plan_relays_hunt_stop() -> None:
    assert next_step(PARALLEL, fail(T2, 486), [T1, T2, T3], 1.0, cfg()) == Reject(486, "Busy Here")


def test_parallel_plan_best_mode() -> None:
    failures = [fail(T1, 503), fail(T2, 404, reason="Not Found"), fail(T3, 500)]
    step = next_step(PARALLEL, failures[2], [T1, T2, T3], 1.0, cfg(final="best"), failures=failures)
    assert step == Reject(404, "Not Found")  # the best of every fork, whichever the host reported


# -- final modes -----------------------------------------------------------------------------------------

FINAL_TABLE = [
    # final, failure codes (oldest first), answer code
    ("fixed", [500, 502, 503], 503),
    ("last", [500, 503, 502], 502),
    ("last", [500, 502, 503], 500),  # a gateway's 503 is relayed as 500
    ("best", [503, 502, 500], 500),
    ("best", [503, 600, 404], 600),  # 6xx beats everything
    ("best", [503, 404, 415], 415),  # 401/407/415/420/484 beat the other 4xx
    ("best", [503, 404, 401], 403),  # ... and a challenge the B2BUA could not answer is relayed as 403
    ("best", [503, 486, 408], 408),  # lower 4xx first
    ("best", [503, 404, 302], 480),  # 3xx before 4xx, and a redirect not followed is relayed as 480
    ("best", [503, 503], 500),
]


@pytest.mark.parametrize(("final", "codes", "answer"), FINAL_TABLE)
def test_final_answer(final: str, codes: list[int], answer: int) -> None:
    failures = [fail(t, c) for t, c in zip([T1, T2, T3], codes, strict=False)]
    c = cfg(final=final, failover_codes=["3xx", "4xx", "5xx", "6xx"], hunt_stop_codes=[])
    assert final_answer(failures, c).code == answer
    # and the same through next_step, once the plan is exhausted
    plan = RoutePlan(tuple(f.target for f in failures))
    step = next_step(plan, failures[-1], [f.target for f in failures], 1.0, c, failures=failures[:-1])
    assert isinstance(step, Reject)
    assert step.code == answer


def test_best_mode_on_a_final_code_picks_among_all_failures() -> None:
    failures = [fail(T1, 500), fail(T2, 404, reason="Not Found")]
    step = next_step(PLAN, failures[1], [T1, T2], 1.0, cfg(final="best"), failures=failures)
    assert step == Reject(404, "Not Found")


def test_last_mode_relays_reason() -> None:
    failures = [fail(T1, 500), fail(T2, 502, reason="Bad Gateway"), fail(T3, 480, reason="No Circuit")]
    c = cfg(final="last", failover_codes=["5xx", 480])
    step = next_step(PLAN, failures[2], [T1, T2, T3], 1.0, c, failures=failures)
    assert step == Reject(480, "No Circuit")


def test_empty_failures_are_an_error() -> None:
    with pytest.raises(ValueError, match="at least one failure"):
        final_answer([], cfg())


# -- with_timeouts ---------------------------------------------------------------------------------------


def test_with_timeouts_fills_only_missing_values() -> None:
    own = Target("sip:10.0.0.4", attempt_timeout=1.0)
    plan = RoutePlan((T1, own), mode=DialMode.PARALLEL, data={"k": 1})
    filled = with_timeouts(plan, cfg(attempt_timeout=2, answer_timeout=30))
    assert filled.targets == (
        Target("sip:10.0.0.1", attempt_timeout=2.0, answer_timeout=30.0),
        Target("sip:10.0.0.4", attempt_timeout=1.0, answer_timeout=30.0),
    )
    assert (filled.mode, filled.data) == (DialMode.PARALLEL, {"k": 1})


def test_with_timeouts_without_settings_returns_the_plan_itself() -> None:
    assert with_timeouts(PLAN, cfg()) is PLAN


# -- should_mark -------------------------------------------------------------------------------------------

MARK_TABLE = [
    # mark, failure, marked?
    ("", fail(T1, 408, NO_RESPONSE), False),
    ("ip", fail(T1, 408, NO_RESPONSE), True),
    ("ip", fail(T1, 408, NO_ANSWER), False),  # it rang: alive
    ("ip", fail(T1, 487, CANCELLED), False),
    ("ip", fail(T1, 503, ERROR), False),
    ("ip", fail(T1, 503), True),
    ("ip", fail(T1, 500), True),
    ("ip", fail(T1, 502), False),  # about the network behind the gateway
    ("ip", fail(T1, 408), False),  # a received 408: the gateway is alive
    ("t", fail(T1, 486), False),
]


@pytest.mark.parametrize(("mark", "failure", "marked"), MARK_TABLE)
def test_should_mark(mark: str, failure: Failure, marked: bool) -> None:
    assert should_mark(failure, cfg(mark=mark)) is marked


def test_should_mark_with_own_codes() -> None:
    assert should_mark(fail(T1, 502), cfg(mark="ip", mark_codes=["5xx"]))
