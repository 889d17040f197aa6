"""One call through the B2BUA: the caller's A leg and the B legs dialled for it.

The session asks the hooks what to do (admit, route, next target) and does it: dial serially
or in parallel, relay the first 18x, answer the caller when a B leg answers, bridge audio,
propagate BYE and CANCEL both ways, apply per-attempt timers, and give the caller a final
answer when every attempt failed. It runs on the loop thread only.
"""

from __future__ import annotations

import enum
import secrets
import time
from typing import TYPE_CHECKING, Any

import pjsua2 as pj
from loguru import logger

from b2bua import sip
from b2bua.api import (
    CallInfo,
    DialMode,
    EndCause,
    Failure,
    FailureKind,
    OutgoingRequest,
    Reject,
    RoutePlan,
    Target,
)
from b2bua.defaults import relay
from b2bua.legs import CONFIRMED, CONNECTING, DISCONNECTED, EARLY, Leg, op

if TYPE_CHECKING:
    from b2bua.app import App


class State(str, enum.Enum):
    ROUTING = "routing"
    DIALING = "dialing"
    ANSWERED = "answered"
    ENDING = "ending"
    ENDED = "ended"


class Session:
    """The state of one call; legs are reached through it, never kept elsewhere."""

    def __init__(self, app: App, call: CallInfo, a_leg: Leg) -> None:
        self.app = app
        self.call = call
        self.a: Leg | None = a_leg
        self.b: dict[int, Leg] = {}  # live B legs by index
        self.plan: RoutePlan | None = None
        self.attempts = 0
        self.winner = 0  # index of the B leg that answered (legs are looked up, never kept)
        self.answered_target: Target | None = None
        self.failures: list[Failure] = []
        self.relayed_18x = False
        self.bridged_with = 0  # index of the B leg whose audio is connected to A
        self.state = State.ROUTING
        self.cause: EndCause | None = None
        self.final = ""  # the final failure sent to the caller, "486 Busy Here"
        self.forking = False
        self.log = logger.bind(call_id=call.call_id)

    # -- start ----------------------------------------------------------------------------------

    def start(self) -> None:
        hooks = self.app.hooks
        try:
            verdict = hooks.incoming_call(self.call)
            if isinstance(verdict, Reject):
                self.reject(verdict, EndCause.REJECTED)
                return
            decision = hooks.route_call(self.call)
        except Exception:
            self.log.opt(exception=True).error("a plugin failed while routing the call")
            self.reject(Reject(500, "Internal Server Error"), EndCause.ERROR)
            return
        if isinstance(decision, Reject):
            self.reject(decision, EndCause.REJECTED)
            return
        if not isinstance(decision, RoutePlan):
            self.log.error("route_call returned {!r}: expected RoutePlan or Reject", decision)
            self.reject(Reject(500, "Internal Server Error"), EndCause.ERROR)
            return
        self.plan = decision
        self.state = State.DIALING
        if decision.mode is DialMode.PARALLEL:
            forks = decision.targets[: self.app.config.sip.max_forks]
            self.log.debug("forking to {}", ", ".join(t.uri for t in forks))
            self.forking = True  # a fork failing at once must not end the call before the rest are out
            for target in forks:
                if self.state is not State.DIALING:
                    break
                self.dial(target)
            self.forking = False
            if self.state is State.DIALING and not self.b and self.failures:
                self._decide(best_failure(self.failures))
        else:
            self.dial(decision.targets[0])

    # -- B legs ---------------------------------------------------------------------------------

    def dial(self, target: Target) -> None:
        """Send one B leg's INVITE to ``target``."""
        app = self.app
        self.attempts += 1
        index = self.attempts
        call = self.call
        request = OutgoingRequest(
            request_uri=target.request_uri or sip.b_leg_request_uri(call.request_uri, target.uri),
            from_uri=call.from_uri,
            to_uri="",
            headers=list(target.headers),
        )
        request.to_uri = request.request_uri
        app.hooks.prepare_target(call, target, request)
        if not app.reserve_leg():
            self._leg_failed_now(target, index, 503, "Out of call slots", FailureKind.ERROR)
            return
        leg = Leg(app.endpoint.account, self, index)
        leg.target = target
        leg.started = time.monotonic()
        self.b[index] = leg
        prm = op(headers=tuple(request.headers))
        prm.txOption.targetUri = request.request_uri
        prm.txOption.localUri = request.from_uri
        prm.opt.audioCount = 1
        prm.opt.videoCount = 0
        prm.opt.textCount = 0  # no T.140 stream: only what the caller can be bridged to
        # a Call-ID of our own: the caller's never reaches a gateway (topology hiding), and
        # whatever bytes it holds never reach pjsua2
        prm.opt.customCallId = secrets.token_hex(12)
        self.log.debug("attempt {} to {}: Call-ID {}", index, request.request_uri, prm.opt.customCallId)
        timeout = target.attempt_timeout or app.config.sip.attempt_timeout
        leg.timer = app.scheduler.call_later(timeout, lambda: self._leg_timeout(index, FailureKind.NO_RESPONSE))
        app.hooks.leg_started(call, target)
        try:
            leg.makeCall(request.to_uri, prm)
        except pj.Error as exc:
            self.log.warning("cannot dial {}: {}", request.request_uri, exc.info())
            self._forget_leg(leg)
            self._leg_failed_now(target, index, 500, f"Cannot send INVITE: {exc.reason}", FailureKind.ERROR)

    def _leg_failed_now(self, target: Target, index: int, code: int, reason: str, kind: FailureKind) -> None:
        failure = Failure(target, code, reason, kind, index)
        self.app.hooks.leg_failed(self.call, failure)
        self._after_failure(failure)

    def _leg_timeout(self, index: int, kind: FailureKind) -> None:
        leg = self.b.get(index)
        if leg is None or leg.ended or leg.answered:
            return
        leg.timer = None
        leg.timeout_kind = kind
        self.log.info("attempt {} to {}: {}", index, leg.target.uri if leg.target else "?", kind.value)
        self._abandon(leg)

    def _abandon(self, leg: Leg) -> None:
        """Hang up a B leg; if pjsua cannot end it yet (no provisional to CANCEL), treat it
        as failed now and keep the Call object alive until pjsua reports it disconnected."""
        self._hangup(leg)  # before any response pjsip ends the INVITE at once (DISCONNECTED)
        if not leg.ended and leg.index in self.b and not leg.provisional:
            self._fail_leg(leg, 408, "Request Timeout", zombie=True)

    def on_leg_provisional(self, leg: Leg) -> None:
        if leg.provisional or leg.ended:
            return
        leg.provisional = True
        if leg.timer is not None:
            leg.timer.cancel()
        target = leg.target
        timeout = (target.answer_timeout if target else None) or self.app.config.sip.answer_timeout
        index = leg.index
        leg.timer = self.app.scheduler.call_later(timeout, lambda: self._leg_timeout(index, FailureKind.NO_ANSWER))

    def on_leg_state(self, leg: Leg, state: int, code: int, reason: str, prm: Any) -> None:
        if leg.index == 0:
            self._on_a_state(leg, state, code, reason)
        else:
            self._on_b_state(leg, state, code, reason, prm)

    def _on_b_state(self, leg: Leg, state: int, code: int, reason: str, prm: Any) -> None:
        if state == EARLY:
            self.on_leg_provisional(leg)
            if code in (180, 183) and not self.relayed_18x and self.state is State.DIALING and self.a:
                self.relayed_18x = True
                try:
                    self.a.answer(op(code))
                except pj.Error as exc:
                    self.log.warning("cannot relay {}: {}", code, exc.reason)
                    if not self.a.attached():
                        self.lost_caller("the caller's leg is gone")
        elif state in (CONNECTING, CONFIRMED):
            if leg.answered:
                return
            leg.answered = True
            if leg.timer is not None:
                leg.timer.cancel()
                leg.timer = None
            if self.winner or self.state is not State.DIALING or self.a is None:
                # another fork won (the 200s crossed the CANCEL) or the caller is gone
                leg.cancelled = True
                self._hangup(leg)
                return
            self.winner = leg.index
            self.answered_target = leg.target
            self.state = State.ANSWERED
            for other in list(self.b.values()):
                if other is not leg:
                    other.cancelled = True
                    self._abandon(other)
            try:
                self.a.answer(op(200))
            except pj.Error as exc:
                self.log.error("cannot answer the caller: {}", exc.reason)
                self.lost_caller("the caller's leg is gone")
                return
            assert leg.target is not None
            self.log.debug("answered by {} (attempt {})", leg.target.uri, leg.index)
            self.app.hooks.call_answered(self.call, leg.target)
            self._bridge(leg)
        elif state == DISCONNECTED:
            self._on_b_disconnected(leg, code, reason, prm)

    def _on_b_disconnected(self, leg: Leg, code: int, reason: str, prm: Any) -> None:
        if leg.ended:
            self._forget_leg(leg)
            return
        if leg.index == self.winner:
            leg.ended = True
            self._forget_leg(leg)
            if self.a is not None and self.cause is None:
                self.cause = EndCause.CALLEE_HANGUP
                self.state = State.ENDING
                self._hangup(self.a)
            self._maybe_end()
            return
        if leg.timeout_kind is not None:
            code, reason = 408, "Request Timeout"
        self._fail_leg(leg, code, reason, prm)

    def _fail_leg(self, leg: Leg, code: int, reason: str, prm: Any = None, zombie: bool = False) -> None:
        """A B leg is over without an answer: report it and decide what comes next."""
        leg.ended = True
        if leg.timer is not None:
            leg.timer.cancel()
            leg.timer = None
        if leg.cancelled:
            kind = FailureKind.CANCELLED
            code, reason = 487, "Request Terminated"
        elif leg.timeout_kind is not None:
            kind = leg.timeout_kind
        else:
            kind = FailureKind.RESPONSE
        headers = _response_headers(prm) if kind is FailureKind.RESPONSE and prm is not None else {}
        assert leg.target is not None
        failure = Failure(
            leg.target, code or 500, reason or sip.status_reason(code), kind, leg.index, headers,
            time.monotonic() - leg.started,
        )
        if kind is not FailureKind.CANCELLED:
            self.log.info("attempt {} to {} failed: {} {}", leg.index, leg.target.uri, failure.code, failure.reason)
        self.b.pop(leg.index, None)
        if zombie:
            self.app.keep_until_disconnected(leg)
        else:
            self.app.retire(leg)
        self.app.hooks.leg_failed(self.call, failure)
        if kind is FailureKind.CANCELLED:
            self._maybe_end()
            return
        self._after_failure(failure)

    def _after_failure(self, failure: Failure) -> None:
        self.failures.append(failure)
        if self.state is not State.DIALING or self.a is None:
            self._maybe_end()
            return
        assert self.plan is not None
        if self.plan.mode is DialMode.PARALLEL:
            if self.forking or any(not leg.ended for leg in self.b.values()):
                return  # other forks still running (or about to be dialled)
            failure = best_failure(self.failures)
        self._decide(failure)

    def _decide(self, failure: Failure) -> None:
        """Ask the hooks what follows a failure: dial the next target or answer the caller."""
        assert self.plan is not None
        try:
            decision = self.app.hooks.next_target(self.call, self.plan, failure)
        except Exception:
            self.log.opt(exception=True).error("a plugin failed choosing the next target")
            decision = Reject(500, "Internal Server Error")
        if decision is None:
            decision = relay(failure)
        if isinstance(decision, Target):
            self.dial(decision)
        elif isinstance(decision, Reject):
            self.reject(decision, EndCause.FAILED)
        else:
            self.log.error("next_target returned {!r}: expected Target or Reject", decision)
            self.reject(Reject(500, "Internal Server Error"), EndCause.ERROR)

    # -- A leg ----------------------------------------------------------------------------------

    def _on_a_state(self, leg: Leg, state: int, code: int, reason: str) -> None:
        if state == CONFIRMED:
            self._bridge(self.b.get(self.winner))
        elif state == DISCONNECTED:
            leg.ended = True
            self.a = None
            self.app.retire(leg)
            if self.cause is None:
                self.cause = EndCause.CALLER_HANGUP if self.state is State.ANSWERED else EndCause.CALLER_CANCEL
                self.log.debug("caller {}", "hung up" if self.state is State.ANSWERED else "cancelled")
            self.state = State.ENDING
            self._end_b_legs()
            self._maybe_end()

    def lost_caller(self, why: str) -> None:
        """pjsua ended the A leg without a DISCONNECTED callback: end the call on our side.

        The Leg is retired now and released on the next pass (see :meth:`Leg.release`).
        """
        a = self.a
        if a is None:
            return
        self.log.warning("{}", why)
        a.ended = True
        self.a = None
        self.app.retire(a)
        self.cause = self.cause or EndCause.ERROR
        self.state = State.ENDING
        self._end_b_legs()
        self._maybe_end()

    def audit_legs(self) -> int:
        """End the part of legs pjsua ended without a callback (see ``App._audit``); returns how many."""
        lost = 0
        for leg in list(self.b.values()):
            if not leg.attached():
                lost += 1
                self.log.warning("attempt {}: pjsua ended the call without a callback", leg.index)
                self._on_b_disconnected(leg, 500, "Call Lost", None)
        if self.a is not None and not self.a.attached():
            lost += 1
            self.lost_caller("pjsua ended the caller's leg without a callback")
        return lost

    def reject(self, answer: Reject, cause: EndCause) -> None:
        """Give the caller a final failure answer."""
        self.state = State.ENDING
        self.cause = cause
        self.final = f"{answer.code} {answer.reason}"
        if self.a is not None:
            self._hangup(self.a, answer.code, answer.reason, answer.headers)
        self._maybe_end()

    # -- media ----------------------------------------------------------------------------------

    def on_leg_media(self, leg: Leg) -> None:
        if leg.index == 0:
            self._bridge(self.b.get(self.winner))
        elif leg.index == self.winner:
            self._bridge(leg)

    def _bridge(self, leg: Leg | None) -> None:
        a = self.a
        if leg is None or a is None or self.bridged_with == leg.index or leg.ended:
            return
        if not (a.media_active and leg.media_active):
            return  # the other side's onCallMediaState will bridge
        a_audio = a.audio()
        b_audio = leg.audio()
        if a_audio is None or b_audio is None:
            return
        a_audio.startTransmit(b_audio)
        b_audio.startTransmit(a_audio)
        self.bridged_with = leg.index

    # -- ending ---------------------------------------------------------------------------------

    def hangup_all(self, code: int = 503, reason: str = "Service Unavailable") -> None:
        """Shutdown: end the call on every leg."""
        self.cause = self.cause or EndCause.SHUTDOWN
        if self.a is not None:
            if self.state is State.ANSWERED:
                self._hangup(self.a)
            else:
                self._hangup(self.a, code, reason)
        self._end_b_legs()

    def _end_b_legs(self) -> None:
        """BYE to the answered B leg, CANCEL (or give up) the others."""
        for b in list(self.b.values()):
            if b.index == self.winner:
                self._hangup(b)
            else:
                b.cancelled = True
                self._abandon(b)

    def _hangup(self, leg: Leg, code: int = 0, reason: str = "",
                headers: tuple[tuple[str, str], ...] = ()) -> None:
        try:
            leg.hangup(op(code, reason, headers))
        except pj.Error:
            pass  # already gone

    def _forget_leg(self, leg: Leg) -> None:
        self.b.pop(leg.index, None)
        self.app.retire(leg)

    def _maybe_end(self) -> None:
        if self.state is State.ENDED or self.a is not None or self.b:
            return
        self.state = State.ENDED
        cause = self.cause or EndCause.ERROR
        answered = self.answered_target
        self.log.info(
            "call {} -> {}: {}{} after {} attempt(s), {:.1f} s",
            self.call.from_uri, self.call.request_uri, cause.value,
            f" (answered by {answered.uri})" if answered else f" ({self.final})" if self.final else "",
            self.attempts, time.monotonic() - self.call.started,
        )
        self.app.hooks.call_ended(self.call, cause, answered)
        self.app.session_ended(self)


def best_failure(failures: list[Failure]) -> Failure:
    """The most telling failure of parallel forks (RFC 3261 §16.7: 6xx first, then the lowest class)."""
    real = [f for f in failures if f.kind is not FailureKind.CANCELLED] or failures
    six = [f for f in real if 600 <= f.code <= 699]
    if six:
        return six[0]
    return min(real, key=lambda f: (f.code // 100 if f.code >= 300 else 9, f.code == 503, f.code))


def _response_headers(prm: Any) -> dict[str, tuple[str, ...]]:
    """Headers of the final response that ended a B leg (for Retry-After and friends)."""
    try:
        raw = prm.e.body.tsxState.src.rdata.wholeMsg
    except Exception:
        return {}
    if not raw:
        return {}
    return sip.parse_message(raw)[1]
