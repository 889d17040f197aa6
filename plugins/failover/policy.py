"""What to do after a failed attempt: pure functions, no clock, no I/O.

The decision for one failure (:func:`next_step`):

1. **hunt-stop** (``hunt_stop_codes``, e.g. 486 Busy Here, 603 Decline): the callee has
   answered; it is relayed to the caller at once, no other target is tried.
2. **failover** (``failover_codes``, e.g. 5xx and 408, which includes our own timeouts):
   the next untried target of the plan, in plan order (Kamailio's ``ds_next_dst``), unless
   the plan is parallel or exhausted, ``max_attempts`` is reached or the ``total_timeout``
   budget is spent; then the final answer (``final``).
3. **final** (any other code, e.g. 404, 484, or a cancelled attempt): the hunt stops and the
   failure is relayed (in ``final = "best"`` mode, the best failure so far).

Relaying, the best failure and response priorities are the host's (:mod:`b2bua.sippolicy`,
shared with the host's default): a relayed 503 becomes 500, as Kamailio's tm does. Our own
``fixed`` answer (503 + Retry-After by default) is different: it is sent when every gateway of
the plan failed, when this service really is unavailable, and it is what the dispatcher
answers when no destination is up.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

from b2bua.api import DialMode, Failure, FailureKind, Reject, RoutePlan, Target
from b2bua.sip import retry_after
from b2bua.sippolicy import best_failure, reason_header, relay
from plugins.failover.config import FailoverConfig

Outcome = Literal["failover", "hunt-stop", "final"]

#: no new attempt is started with less budget than this (RFC 3261 T1, the first retransmission)
MIN_ATTEMPT_SECONDS = 0.5


def classify(code: int, cfg: FailoverConfig, kind: FailureKind = FailureKind.RESPONSE) -> Outcome:
    """Whether a failure moves on to the next target, stops the hunt at once, or ends it.

    Hunt-stop codes win over failover codes. A cancelled attempt always ends the hunt. A
    target that rang without being answered (``NO_ANSWER``) fails over only with
    ``failover_on_no_answer``: the callee's phone rang, and another carrier would ring it again.
    """
    if kind is FailureKind.CANCELLED:
        return "final"
    if code in cfg.hunt_stop_set:
        return "hunt-stop"
    if kind is FailureKind.NO_ANSWER and not cfg.failover_on_no_answer:
        return "final"
    if code in cfg.failover_set:
        return "failover"
    return "final"


def final_answer(failures: Sequence[Failure], cfg: FailoverConfig) -> Reject:
    """The caller's answer once no further target will be tried (``final`` mode).

    ``fixed``: ``final_code final_reason``, with Retry-After and a Reason header naming the
    last failure; ``last``: the last failure relayed; ``best``: the best failure relayed.

    :raises ValueError: when ``failures`` is empty.
    """
    if not failures:
        raise ValueError("final_answer needs at least one failure")
    if cfg.final == "last":
        return relay(failures[-1])
    if cfg.final == "best":
        return relay(best_failure(failures))
    headers = list(retry_after(cfg.retry_after))
    if cfg.reason_header:
        headers.append(("Reason", reason_header(failures[-1])))
    return Reject(cfg.final_code, cfg.final_reason, tuple(headers))


def _identity(target: Target) -> tuple[str, str | None, tuple[tuple[str, str], ...], str]:
    # timeouts are left out: the plugin may have shortened them on the way
    return (target.uri, target.request_uri, target.headers, target.next_hop)


def untried(plan: RoutePlan, tried: Sequence[Target]) -> tuple[Target, ...]:
    """The plan's targets not dialled yet, in plan order (each dialled target used once)."""
    left = list(plan.targets)
    for target in tried:
        key = _identity(target)
        for i, candidate in enumerate(left):
            if _identity(candidate) == key:
                del left[i]
                break
    return tuple(left)


def next_step(
    plan: RoutePlan,
    failure: Failure,
    tried: Sequence[Target],
    elapsed: float,
    cfg: FailoverConfig,
    *,
    failures: Sequence[Failure] = (),
    default_attempt_timeout: float | None = None,
) -> Target | Reject:
    """The next target to dial after ``failure``, or the caller's final answer.

    :param plan: the call's route plan.
    :param failure: the attempt that just failed.
    :param tried: the targets dialled so far for this call (``failure.target`` included or not).
    :param elapsed: seconds since the call arrived.
    :param failures: every failure of the call so far, oldest first (for ``final = "best"``);
        ``failure`` is added when it is not the last one.
    :param default_attempt_timeout: the host's attempt timeout, used when the remaining
        ``total_timeout`` budget has to shorten a target that does not set its own.
    :return: a :class:`Target` (from the plan, its ``attempt_timeout`` shortened to the
        remaining budget) or a :class:`Reject`.
    """
    history = list(failures)
    if not history or history[-1] != failure:
        history.append(failure)
    outcome = classify(failure.code, cfg, failure.kind)
    if outcome == "hunt-stop":
        return relay(failure)
    if outcome == "final":
        return relay(best_failure(history)) if cfg.final == "best" else relay(failure)

    if plan.mode is DialMode.PARALLEL:
        return final_answer(history, cfg)
    dialled = list(tried)
    if _identity(failure.target) not in {_identity(t) for t in dialled}:
        dialled.append(failure.target)
    if cfg.max_attempts and len(dialled) >= cfg.max_attempts:
        return final_answer(history, cfg)
    left = untried(plan, dialled)
    if not left:
        return final_answer(history, cfg)
    target = left[0]
    if cfg.total_timeout:
        remaining = cfg.total_timeout - elapsed
        if remaining < MIN_ATTEMPT_SECONDS:
            return final_answer(history, cfg)
        limit = target.attempt_timeout or default_attempt_timeout
        if limit is None or limit > remaining:
            target = dataclasses.replace(target, attempt_timeout=remaining)
    return target


def with_timeouts(plan: RoutePlan, cfg: FailoverConfig) -> RoutePlan:
    """``plan`` with ``attempt_timeout`` / ``answer_timeout`` filled in on targets without them.

    A timeout a routing plugin set on a target is more specific and is kept. Returns ``plan``
    itself when there is nothing to fill.
    """
    attempt = cfg.attempt_timeout or None
    answer = cfg.answer_timeout or None
    if attempt is None and answer is None:
        return plan
    targets = tuple(
        dataclasses.replace(
            t,
            attempt_timeout=t.attempt_timeout if t.attempt_timeout is not None else attempt,
            answer_timeout=t.answer_timeout if t.answer_timeout is not None else answer,
        )
        for t in plan.targets
    )
    if targets == plan.targets:
        return plan
    return dataclasses.replace(plan, targets=targets)


def should_mark(failure: Failure, cfg: FailoverConfig) -> bool:
    """Whether a failure is the destination's fault, so that ``mark`` applies to it.

    No response at all (``NO_RESPONSE``) always is; a failure response when its code is in
    ``mark_codes``. Never a cancelled attempt, a target that rang (``NO_ANSWER``: it is alive)
    or a local send error (``ERROR``: it may be ours, not the destination's).
    """
    if not cfg.mark:
        return False
    if failure.kind is FailureKind.NO_RESPONSE:
        return True
    return failure.kind is FailureKind.RESPONSE and failure.code in cfg.mark_set
