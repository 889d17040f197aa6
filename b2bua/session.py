"""One call through the B2BUA: the caller's A leg and the B legs dialled for it.

The session asks the hooks what to do (admit, route, next target) and does it: dial serially
or in parallel, relay the first 180/183 (and a 183 for the first early media), answer the
caller when a B leg answers, propagate BYE and CANCEL both ways, apply per-attempt timers, and
give the caller a final answer when every attempt failed. What the call's media does (whose
audio the caller hears, DTMF, hold, the RTP watch) is its :class:`b2bua.bridge.Bridge`'s.

It is an event-driven state machine: legs report :mod:`b2bua.events` through
:meth:`Session.on_event`, which dispatches on ``(leg state, event type)`` with one table per
role (:data:`_A_TABLE`, :data:`_B_TABLE`); a pair missing from a table is ignored. Every change
of a leg's or the call's state is logged ``old -> new`` at DEBUG with the Call-ID bound.

No pjsua2 here: legs are :class:`b2bua.events.CallLeg` objects from the host's leg pool, and
the host is the small :class:`SessionHost` protocol, so ``tests/unit/test_session.py`` runs it
with fake legs. It runs on the loop thread only, and must be re-entrant: a leg may report
events from inside an action (pjsua2 calls back synchronously inside ``makeCall``/``hangup``),
which is why a leg's state is set before the action.
"""

from __future__ import annotations

import enum
import secrets
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, cast

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
    TimerHandle,
)
from b2bua.bridge import Bridge, BridgeHost, policy
from b2bua.events import (
    Answered,
    CallLeg,
    Confirmed,
    Disconnected,
    DtmfReceived,
    EarlyMedia,
    Failed,
    LegError,
    LegEvent,
    LegOwner,
    LegState,
    MediaReady,
    OfferFailed,
    Provisional,
    RemoteOffer,
)
from b2bua.headers import COPY_BUDGET, is_name, merge, one_line_problem, usable_value
from b2bua.logs import writes
from b2bua.outbound import profile_for
from b2bua.sippolicy import COMPLETED_ELSEWHERE, best_failure, hangup_headers, one_line, relay

if TYPE_CHECKING:
    from b2bua.config import SipConfig
    from b2bua.headers import Passthrough
    from b2bua.plugins import Hooks


class CallState(str, enum.Enum):
    """Where the call is (``core.calls`` shows the value)."""

    ROUTING = "routing"  #: asking the hooks
    DIALING = "dialing"  #: B legs out, none answered
    ANSWERED = "answered"  #: bridged
    ENDING = "ending"  #: legs being ended
    ENDED = "ended"

    def __str__(self) -> str:  # the value, also in log formatting (computed only when logged)
        return str.__str__(self)


class LegSource(Protocol):
    """The part of the leg pool a session uses (:class:`b2bua.legpool.LegPool`)."""

    def new_leg(self, owner: LegOwner, index: int, profile: Any = None) -> CallLeg | None:
        """A new B leg reporting to ``owner``, sent as ``profile`` says (an
        :class:`b2bua.outbound.OutboundProfile`, None: the default); None when no call slot is
        free. :raises LegError: no pjsua account can send as ``profile`` asks."""
        ...

    def retire(self, leg: CallLeg) -> None:
        """The leg's call is over: release it after this loop pass."""
        ...

    def keep_until_disconnected(self, leg: CallLeg) -> None:
        """Keep a leg given up on until pjsua reports it over."""
        ...


class SessionHost(Protocol):
    """What a session needs from the application (:class:`b2bua.app.App`)."""

    @property
    def hooks(self) -> Hooks:
        """The typed hook facade."""
        ...

    @property
    def sip(self) -> SipConfig:
        """``[sip]``: timers and fork width."""
        ...

    @property
    def legs(self) -> LegSource:
        """Where B legs come from and go to."""
        ...

    @property
    def passthrough(self) -> Passthrough:
        """``[headers]``: which headers cross between the legs."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` on the loop thread after ``delay`` seconds."""
        ...

    def session_ended(self, session: Session) -> None:
        """The session is over: forget it."""
        ...


#: the B leg states in which an attempt is still running (not answered, not given up)
_TRYING = (LegState.CALLING, LegState.PROCEEDING)
#: 18x responses relayed to the caller (once per call)
_RELAYED_PROVISIONALS = (180, 183)


class Session:
    """The state of one call; legs are reached through it, never kept elsewhere."""

    def __init__(self, host: SessionHost, call: CallInfo, a_leg: CallLeg) -> None:
        self.host = host
        self.call = call
        self.a: CallLeg | None = a_leg
        a_leg.owner = self
        self.b: dict[int, CallLeg] = {}  #: live B legs by index
        self.plan: RoutePlan | None = None
        self.attempts = 0
        self.winner = 0  #: index of the B leg that answered (legs are looked up, never kept)
        self.answered_target: Target | None = None
        self.failures: list[Failure] = []
        self.state = CallState.ROUTING
        self.cause: EndCause | None = None
        self.final = ""  #: the final failure sent to the caller, "486 Busy Here"
        self.forking = False
        self.early_media_sent = False  #: the caller got a 183 (with our SDP: its media is set up)
        #: the last 183 of a B leg, by leg: its headers go on the caller's 183 if its media is relayed
        self._early_headers: dict[int, Mapping[str, tuple[str, ...]]] = {}
        self.log = logger.bind(call_id=call.call_id)
        self._copied: list[tuple[str, str]] | None = None  #: the caller's headers for B legs
        # the bridge reaches its session weakly: a session and its bridge holding each other made
        # all of a call's objects cyclic garbage, left for the full collections to find (~2,400
        # objects every few seconds at 650 calls/s, 7-18 ms each with the GIL held); now they go
        # when the call ends. The bridge's timers end with it (Bridge.close), never after.
        self.bridge = Bridge(cast(BridgeHost, weakref.proxy(self)), policy(host.sip), self.log, time.monotonic)

    # -- state changes --------------------------------------------------------------------------

    def _enter(self, new: CallState) -> None:
        old = self.state
        if old is not new:
            self.state = new
            if writes.debug:  # a call's hot path: ~20 DEBUG lines, each a cost when not written
                self.log.debug("call {} -> {}", old, new)
            if new in (CallState.ENDING, CallState.ENDED):
                self.bridge.close()

    def _move(self, leg: CallLeg, new: LegState) -> None:
        old = leg.state
        if old is not new:
            leg.state = new
            if writes.debug:
                self.log.debug("leg {} {} -> {}", leg.index, old, new)

    # -- events ---------------------------------------------------------------------------------

    def on_event(self, leg: CallLeg, event: LegEvent) -> None:
        """One event of one of this call's legs: dispatch on ``(leg.state, type(event))``."""
        handler = (_B_TABLE if leg.index else _A_TABLE).get((leg.state, type(event)))
        if handler is None:
            if writes.debug:
                self.log.debug("leg {} ({}): {} ignored", leg.index, leg.state, type(event).__name__)
            return
        handler(self, leg, event)

    # -- start ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Admit and route the call, then dial."""
        if max_forwards(self.call) == 0:  # a B leg could not be sent on (RFC 3261 16.3, RFC 7332)
            self.log.info("refused: 483 Too Many Hops (Max-Forwards: 0: a routing loop?)")
            self.reject(Reject(483, "Too Many Hops"), EndCause.REJECTED)
            return
        hooks = self.host.hooks
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
        self._enter(CallState.DIALING)
        if decision.mode is DialMode.PARALLEL:
            forks = decision.targets[: self.host.sip.max_forks]
            self.log.debug("forking to {}", ", ".join(t.uri for t in forks))
            self.forking = True  # a fork failing at once must not end the call before the rest are out
            for target in forks:
                if self.state is not CallState.DIALING:
                    break
                self.dial(target)
            self.forking = False
            if self.state is CallState.DIALING and not self.b and self.failures:
                self._decide(best_failure(self.failures))
        else:
            self.dial(decision.targets[0])

    # -- B legs ---------------------------------------------------------------------------------

    def dial(self, target: Target) -> None:
        """Send one B leg's INVITE to ``target``."""
        host = self.host
        self.attempts += 1
        index = self.attempts
        call = self.call
        request = self.outgoing_request(target)
        host.hooks.prepare_target(call, target, request)
        problem = request_problem(request)
        if problem:
            self.log.error("attempt {} to {}: not sent: {}", index, target.uri, problem)
            self._leg_failed_now(target, index, 500, "Server Internal Error", FailureKind.ERROR)
            return
        try:
            profile = profile_for(target.outbound, host.sip, request.request_uri) if target.outbound else None
            leg = host.legs.new_leg(self, index, profile)
        except (ValueError, LegError) as exc:
            self.log.error("attempt {} to {}: not sent: {}", index, target.uri, exc)
            self._leg_failed_now(target, index, 500, "Server Internal Error", FailureKind.ERROR)
            return
        if leg is None:
            self._leg_failed_now(target, index, 503, "Out of call slots", FailureKind.ERROR)
            return
        leg.target = target
        leg.started = time.monotonic()
        self.b[index] = leg
        # a Call-ID of our own: the caller's never reaches a gateway (topology hiding), and
        # whatever bytes it holds never reach pjsua2
        call_id = secrets.token_hex(12)
        if writes.debug:
            self.log.debug("attempt {} to {}{}: Call-ID {}", index, request.request_uri,
                           f" via {request.next_hop}" if request.next_hop else "", call_id)
        timeout = target.attempt_timeout or host.sip.attempt_timeout
        leg.timer = host.call_later(timeout, lambda: self._leg_timeout(index, FailureKind.NO_RESPONSE))
        host.hooks.leg_started(call, target)
        try:
            leg.send_invite(request, call_id)
        except LegError as exc:
            if self.b.get(index) is not leg:  # pjsua reported it failed inside makeCall: done already
                return
            self.log.warning("cannot dial {}: {}", request.request_uri, exc)
            self._cancel_timer(leg)
            self.b.pop(index, None)
            self._move(leg, LegState.ENDED)
            host.legs.retire(leg)
            self._leg_failed_now(target, index, 500, f"Cannot send INVITE: {exc.reason}", FailureKind.ERROR)

    def outgoing_request(self, target: Target) -> OutgoingRequest:
        """The B leg's INVITE for ``target`` before ``b2bua_prepare_target``: the Request-URI
        (``target.request_uri``, or the caller's user at the destination's host), From as the
        caller wrote it (URI and display name), To as the caller wrote it with the host part of
        the Request-URI, the caller's headers ``[headers] to_gateway`` lets through, then the
        target's own."""
        call = self.call
        request_uri = target.request_uri or sip.b_leg_request_uri(call.request_uri, target.uri)
        to_uri = sip.with_host_of(call.to_uri, request_uri) if call.to_uri else request_uri
        return OutgoingRequest(
            request_uri, call.from_uri, to_uri, merge(self._caller_headers(), target.headers),
            from_name=_wire_text(sip.display_name(call.from_header)),
            to_name=_wire_text(sip.display_name(call.to_header)),
            next_hop=target.next_hop, max_forwards=max_forwards(call) - 1,
        )

    def _caller_headers(self) -> list[tuple[str, str]]:
        """The caller's headers that cross to B legs (worked out once per call)."""
        if self._copied is None:
            self._copied, dropped = self.host.passthrough.to_gateway.select(self.call.headers)
            if dropped:
                self.log.debug("{} header value(s) of the caller's INVITE not passed on (not one line of "
                               "printable UTF-8, too long, or past {} bytes of copied headers)", dropped,
                               COPY_BUDGET)
        return self._copied

    def _to_caller(self, headers: Mapping[str, tuple[str, ...]]) -> tuple[tuple[str, str], ...]:
        """The headers of a B leg's response that cross to the caller's: its 2xx to the 200, the
        180/183 relayed to the caller's 180/183.

        pjsua builds every later response to the caller's INVITE on the provisional one it sent
        (``pjsip_inv_answer``): each answer's headers replace the last one's (patch 0025), so a
        180's identity does not stay on the 200 or on a final failure after ringing.
        """
        selected, dropped = self.host.passthrough.to_caller.select(headers)  # a MessageHeaders: parsed if need be
        if dropped:
            self.log.debug("{} header value(s) of a gateway's response not passed on", dropped)
        return tuple(selected)

    def _leg_failed_now(self, target: Target, index: int, code: int, reason: str, kind: FailureKind) -> None:
        failure = Failure(target, code, reason, kind, index)
        self.host.hooks.leg_failed(self.call, failure)
        self._after_failure(failure)

    def _leg_timeout(self, index: int, kind: FailureKind) -> None:
        leg = self.b.get(index)
        if leg is None or leg.state not in _TRYING:
            return
        leg.timer = None
        self.log.info("attempt {} to {}: {}", index, leg.target.label if leg.target else "?", kind.value)
        self._abandon(leg, kind)

    def _abandon(self, leg: CallLeg, why: FailureKind, headers: tuple[tuple[str, str], ...] = ()) -> None:
        """Give up on an unanswered B leg (CANCEL, with ``headers``). pjsip ends one without any
        response at once; if pjsua cannot end it yet (no provisional to CANCEL), report it failed
        now and keep the leg until pjsua reports it disconnected (pjsip then sends the CANCEL,
        with ``headers``, when a provisional comes: patch 0023)."""
        calling = leg.state is LegState.CALLING
        leg.ended_by = why
        self._cancel_timer(leg)
        self._move(leg, LegState.CANCELLING)
        leg.end(headers=headers)  # may report Failed at once (re-entrant)
        if calling and leg.state is LegState.CANCELLING:
            self._fail_leg(leg, 408, "Request Timeout", zombie=True)

    def _b_provisional(self, leg: CallLeg, event: Provisional | EarlyMedia) -> None:
        if leg.state is LegState.CALLING:
            self._move(leg, LegState.PROCEEDING)
            self._cancel_timer(leg)
            target = leg.target
            timeout = (target.answer_timeout if target else None) or self.host.sip.answer_timeout
            index = leg.index
            leg.timer = self.host.call_later(timeout, lambda: self._leg_timeout(index, FailureKind.NO_ANSWER))
        if isinstance(event, EarlyMedia):
            self._early_headers[leg.index] = event.headers
        a = self.a
        if event.code in _RELAYED_PROVISIONALS and a is not None and a.state is LegState.INCOMING \
                and self.state is CallState.DIALING:
            self._move(a, LegState.EARLY)  # relayed once per call
            self._relay_provisional(a, event.code, event.headers)

    def _relay_provisional(self, a: CallLeg, code: int, headers: Mapping[str, tuple[str, ...]]) -> bool:
        """Send the caller a 180 or 183 (pjsua puts our SDP answer in a 183: the caller's media is
        set up from then on, and the 200 carries the same SDP) with the B leg's ``headers`` that
        ``[headers] to_caller`` passes."""
        if code == 183:
            self.early_media_sent = True
        try:
            a.respond(code, "", self._to_caller(headers))
        except LegError as exc:
            self.log.warning("cannot relay {}: {}", code, exc.reason)
            if not a.attached():
                self.lost_caller("the caller's leg is gone")
            return False
        return True

    def _b_early_media(self, leg: CallLeg) -> None:
        """A B leg's 18x carried SDP: its early media (an announcement, a ringback tone) is
        bridged to the caller, unless another leg's is already: the first is heard until the answer."""
        a = self.a
        if self.state is not CallState.DIALING or a is None or a.state not in (LegState.INCOMING, LegState.EARLY):
            return
        peer = self.bridge.peer
        if peer == leg.index:  # its early media was renegotiated (an UPDATE, another 18x's SDP):
            self.bridge.media_ready(leg.index)  # pjsua restarted its stream: connect it again
            return
        if peer and peer in self.b:
            return
        if not self.early_media_sent:  # a 180 (no SDP) may have gone first, or nothing yet
            self._move(a, LegState.EARLY)
            if not self._relay_provisional(a, 183, self._early_headers.get(leg.index, {})):
                return
        self.bridge.select(leg.index, early=True)

    def _b_answered(self, leg: CallLeg, event: Answered | Confirmed) -> None:
        self._cancel_timer(leg)
        a = self.a
        if self.winner or self.state is not CallState.DIALING or a is None:
            # another fork won (the 200s crossed the CANCEL) or the caller is gone
            self._b_answered_late(leg, event)
            return
        self.winner = leg.index
        self.answered_target = leg.target
        self._move(leg, LegState.ANSWERED if isinstance(event, Answered) else LegState.CONFIRMED)
        self._enter(CallState.ANSWERED)
        for other in list(self.b.values()):
            if other is not leg and other.state in _TRYING:
                self._abandon(other, FailureKind.CANCELLED, COMPLETED_ELSEWHERE)
        self._move(a, LegState.ANSWERED)
        try:
            a.respond(200, "", self._to_caller(event.headers) if isinstance(event, Answered) else ())
        except LegError as exc:
            self.log.error("cannot answer the caller: {}", exc.reason)
            self.lost_caller("the caller's leg is gone")
            return
        assert leg.target is not None
        if writes.debug:
            self.log.debug("answered by {} (attempt {})", leg.target.label, leg.index)
        self.host.hooks.call_answered(self.call, leg.target)
        self.bridge.answer(leg.index)

    def _b_answered_late(self, leg: CallLeg, event: Answered | Confirmed) -> None:
        """A leg we gave up on (or a losing fork) answered anyway: hang it up (BYE)."""
        if leg.state in _TRYING:
            leg.ended_by = FailureKind.CANCELLED
            self._move(leg, LegState.CANCELLING)
        leg.end()

    def _b_confirmed(self, leg: CallLeg, event: Confirmed) -> None:
        self._move(leg, LegState.CONFIRMED)
        self.bridge.confirmed(leg.index)

    def _b_failed(self, leg: CallLeg, event: Failed | Disconnected) -> None:
        if isinstance(event, Failed):
            if event.local and leg.ended_by is None:
                leg.ended_by = FailureKind.ERROR
            self._fail_leg(leg, event.code, event.reason, event.headers, detail=event.detail)
        else:
            self._fail_leg(leg, event.code, event.reason)

    def _fail_leg(self, leg: CallLeg, code: int, reason: str,
                  headers: Mapping[str, tuple[str, ...]] | None = None, zombie: bool = False,
                  detail: str = "") -> None:
        """A B leg is over without an answer: report it and decide what comes next."""
        self._cancel_timer(leg)
        kind = leg.ended_by or FailureKind.RESPONSE
        if kind is FailureKind.CANCELLED:
            code, reason, headers = 487, "Request Terminated", None
        elif kind is FailureKind.ERROR:  # not sent: as when a target cannot be dialled at all
            code, reason, headers = 500, "Server Internal Error", None
        elif kind is not FailureKind.RESPONSE:  # our own timers
            code, reason, headers = 408, "Request Timeout", None
        assert leg.target is not None
        failure = Failure(
            leg.target, code or 500, reason or sip.status_reason(code), kind, leg.index, headers or {},
            time.monotonic() - leg.started,
        )
        if kind is not FailureKind.CANCELLED:
            self.log.info("attempt {} to {} failed: {} {}{}", leg.index, leg.target.label, failure.code,
                          failure.reason, f" ({detail})" if detail else "")
        self.b.pop(leg.index, None)
        self.bridge.leg_gone(leg)
        if zombie:
            self._move(leg, LegState.ABANDONED)
            self.host.legs.keep_until_disconnected(leg)
        else:
            self._move(leg, LegState.ENDED)
            self.host.legs.retire(leg)
        self.host.hooks.leg_failed(self.call, failure)
        if kind is FailureKind.CANCELLED:
            self._maybe_end()
            return
        self._after_failure(failure)

    def _b_callee_hung_up(self, leg: CallLeg, event: Failed | Disconnected) -> None:
        self._b_gone(leg, event)
        if self.a is not None and self.cause is None:
            self.cause = EndCause.CALLEE_HANGUP
            self._enter(CallState.ENDING)
            self._hang_up(self.a, headers=hangup_headers(event.headers))
        self._maybe_end()

    def _b_gone(self, leg: CallLeg, event: Failed | Disconnected) -> None:
        """A leg we had already ended (BYE sent, or abandoned) is over."""
        self.b.pop(leg.index, None)
        self.bridge.leg_gone(leg)
        self._move(leg, LegState.ENDED)
        self.host.legs.retire(leg)
        self._maybe_end()

    def _after_failure(self, failure: Failure) -> None:
        self.failures.append(failure)
        if self.state is not CallState.DIALING or self.a is None:
            self._maybe_end()
            return
        assert self.plan is not None
        if self.plan.mode is DialMode.PARALLEL:
            if self.forking or self.b:
                return  # other forks still running (or about to be dialled)
            failure = best_failure(self.failures)
        self._decide(failure)

    def _decide(self, failure: Failure) -> None:
        """Ask the hooks what follows a failure: dial the next target or answer the caller."""
        assert self.plan is not None
        try:
            decision = self.host.hooks.next_target(self.call, self.plan, failure)
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

    def _a_confirmed(self, leg: CallLeg, event: Confirmed) -> None:
        self._move(leg, LegState.CONFIRMED)
        self.bridge.connect()
        self.bridge.confirmed(0)

    def _a_disconnected(self, leg: CallLeg, event: Disconnected) -> None:
        self.a = None
        self._move(leg, LegState.ENDED)
        self.host.legs.retire(leg)
        if self.cause is None:
            answered = self.state is CallState.ANSWERED
            self.cause = EndCause.CALLER_HANGUP if answered else EndCause.CALLER_CANCEL
            if writes.debug:
                self.log.debug("caller {}", "hung up" if answered else "cancelled")
        self._enter(CallState.ENDING)
        # the Reason of the caller's BYE or CANCEL, as a gateway's crosses
        self._end_b_legs(hangup_headers(event.headers))
        self._maybe_end()

    def lost_caller(self, why: str) -> None:
        """pjsua ended the A leg without a DISCONNECTED callback: end the call on our side.

        The leg is retired now and released on the next pass (see :meth:`b2bua.legs.Leg.release`).
        """
        a = self.a
        if a is None:
            return
        self.log.warning("{}", why)
        self.a = None
        self._move(a, LegState.ENDED)
        self.host.legs.retire(a)
        self.cause = self.cause or EndCause.ERROR
        self._enter(CallState.ENDING)
        self._end_b_legs()
        self._maybe_end()

    def audit_legs(self) -> int:
        """End the part of legs pjsua ended without a callback (the app's periodic audit);
        returns how many."""
        lost = 0
        for leg in list(self.b.values()):
            if not leg.attached():
                lost += 1
                self.log.warning("attempt {}: pjsua ended the call without a callback", leg.index)
                self.on_event(leg, Disconnected(500, "Call Lost"))
        if self.a is not None and not self.a.attached():
            lost += 1
            self.lost_caller("pjsua ended the caller's leg without a callback")
        return lost

    def reject(self, answer: Reject, cause: EndCause) -> None:
        """Give the caller a final failure answer."""
        self._enter(CallState.ENDING)
        self.cause = cause
        reason, headers, dropped = answer_on_the_wire(answer)
        for problem in dropped:  # a plugin's Reject, or a gateway's reason phrase relayed
            self.log.info("the answer to the caller: {}", problem)
        self.final = f"{answer.code} {reason}"
        if self.a is not None:
            self._hang_up(self.a, answer.code, reason, headers)
        self._maybe_end()

    # -- media (the bridge's host) ---------------------------------------------------------------

    def _media(self, leg: CallLeg, event: MediaReady) -> None:
        leg.media_ready = True
        if leg.index and leg.state in _TRYING:
            self._b_early_media(leg)
        else:
            self.bridge.media_ready(leg.index)

    def _dtmf(self, leg: CallLeg, event: DtmfReceived) -> None:
        self.bridge.dtmf(leg.index, event)

    def _remote_offer(self, leg: CallLeg, event: RemoteOffer) -> None:
        self.bridge.remote_offer(leg.index, event)

    def _offer_failed(self, leg: CallLeg, event: OfferFailed) -> None:
        self.bridge.offer_failed(leg.index, event)

    def leg(self, index: int) -> CallLeg | None:
        """The live leg ``index`` (0: the caller's), or None."""
        return self.a if index == 0 else self.b.get(index)

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` on the loop thread after ``delay`` seconds."""
        return self.host.call_later(delay, callback)

    def media_timeout(self, index: int, silent_for: float) -> None:
        """Leg ``index`` sent no RTP for ``silent_for`` seconds (``[sip] rtp_timeout``): BYE both ways."""
        if self.state is not CallState.ANSWERED:
            return
        self.cause = EndCause.MEDIA_TIMEOUT
        self._enter(CallState.ENDING)
        if self.a is not None:
            self._hang_up(self.a)
        self._end_b_legs()
        self._maybe_end()

    # -- ending ---------------------------------------------------------------------------------

    def hangup_all(self, code: int = 503, reason: str = "Service Unavailable") -> None:
        """Shutdown: end the call on every leg."""
        self.cause = self.cause or EndCause.SHUTDOWN
        a = self.a
        if a is not None and a.state is not LegState.HANGING_UP:
            if self.state is CallState.ANSWERED:
                self._hang_up(a)
            else:
                self._hang_up(a, code, reason)
        self._end_b_legs()

    def _end_b_legs(self, headers: tuple[tuple[str, str], ...] = ()) -> None:
        """BYE to the answered B leg, CANCEL (or give up) the others; both with ``headers``."""
        for b in list(self.b.values()):
            if b.index == self.winner:
                if b.state is not LegState.HANGING_UP:
                    self._hang_up(b, headers=headers)
            elif b.state in _TRYING:
                self._abandon(b, FailureKind.CANCELLED, headers)

    def _hang_up(self, leg: CallLeg, code: int = 0, reason: str = "",
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        self._move(leg, LegState.HANGING_UP)
        leg.end(code, reason, headers)  # False: already gone; its Disconnected ends it here

    @staticmethod
    def _cancel_timer(leg: CallLeg) -> None:
        if leg.timer is not None:
            leg.timer.cancel()
            leg.timer = None

    def _maybe_end(self) -> None:
        if self.state is CallState.ENDED or self.a is not None or self.b:
            return
        self._enter(CallState.ENDED)
        cause = self.cause or EndCause.ERROR
        answered = self.answered_target
        self.log.info(
            "call {} -> {}: {}{} after {} attempt(s), {:.1f} s",
            self.call.from_uri, self.call.request_uri, cause.value,
            f" (answered by {answered.uri})" if answered else f" ({self.final})" if self.final else "",
            self.attempts, time.monotonic() - self.call.started,
        )
        self.host.hooks.call_ended(self.call, cause, answered)
        self.host.session_ended(self)


def max_forwards(call: CallInfo) -> int:
    """The caller's Max-Forwards (70 when it has none: RFC 3261's recommended start)."""
    value = (call.header("max-forwards") or "").strip()
    return min(int(value), 255) if value.isascii() and value.isdigit() and len(value) <= 3 else 70


def _wire_text(text: str) -> str:
    """``text`` from the caller's INVITE if it may go into a B leg's INVITE, else ``""``."""
    return text if usable_value(text) else ""


def answer_on_the_wire(answer: Reject) -> tuple[str, tuple[tuple[str, str], ...], list[str]]:
    """``answer``'s reason phrase and headers as they may go into a response: the phrase on one
    line without control characters (the usual phrase if nothing is left), each header a token
    name with a one-line value; what had to be changed or dropped, in words."""
    problems = []
    reason = answer.reason if isinstance(answer.reason, str) else ""
    why = one_line_problem(reason)
    if why is not None:
        problems.append(f"reason phrase {sip.printable(reason, 60)!r} cleaned ({why})")
        reason = one_line("".join(ch if ch.isprintable() else " " for ch in reason))
        reason = reason.encode("utf-8", "replace").decode("utf-8")[:200]
    reason = reason or sip.status_reason(answer.code)
    headers = []
    given = answer.headers if isinstance(answer.headers, (tuple, list)) else ()
    if given is not answer.headers:
        problems.append(f"headers {sip.printable(repr(answer.headers), 60)} dropped: not a tuple of pairs")
    for header in given:
        if not (isinstance(header, tuple) and len(header) == 2 and all(isinstance(x, str) for x in header)):
            problems.append(f"header {sip.printable(repr(header), 60)} dropped: not a (name, value) pair of text")
            continue
        name, value = header
        why = "not a token" if not is_name(name) else one_line_problem(value)
        if why:
            problems.append(f"header {sip.printable(name, 60)!r} dropped: {why}")
            continue
        headers.append((name, value))
    return reason, tuple(headers), problems


def request_problem(request: OutgoingRequest) -> str:
    """Why ``request`` (as ``b2bua_prepare_target`` left it) cannot be sent, or ``""``: every
    field must be one line of printable text, and a header name a token."""
    fields = (("Request-URI", request.request_uri), ("From", request.from_uri), ("To", request.to_uri),
              ("From display name", request.from_name), ("To display name", request.to_name))
    for what, value in fields:
        if not isinstance(value, str):
            return f"{what} is {type(value).__name__}, not text"
        problem = one_line_problem(value)
        if problem:
            return f"{what}: {problem}"
    for what, value in (("Request-URI", request.request_uri), ("From", request.from_uri), ("To", request.to_uri)):
        if not value:
            return f"{what} is empty"
    hops = request.max_forwards
    if not isinstance(hops, int) or isinstance(hops, bool) or not 0 <= hops <= 255:
        return f"max_forwards {sip.printable(repr(hops), 20)} is not 0-255"
    if not isinstance(request.next_hop, str):
        return f"next_hop is {type(request.next_hop).__name__}, not text"
    if request.next_hop:
        problem = sip.next_hop_problem(request.next_hop)
        if problem:
            return problem
    for i, header in enumerate(request.headers):
        if not (isinstance(header, tuple) and len(header) == 2 and all(isinstance(x, str) for x in header)):
            return f"headers[{i}] is not a (name, value) pair of text"
        name, value = header
        if not is_name(name):
            return f"header name {sip.printable(name, 60)!r} is not a token"
        problem = one_line_problem(value)
        if problem:
            return f"header {name}: {problem}"
    return ""


# -- dispatch tables: (leg state, event type) -> handler -------------------------------------------

_Handler = Callable[[Session, CallLeg, Any], None]


def _table(*rows: tuple[Iterable[LegState], Iterable[type], _Handler]) -> dict[tuple[LegState, type], _Handler]:
    table: dict[tuple[LegState, type], _Handler] = {}
    for states, events, handler in rows:
        for state in states:
            for event in events:
                assert (state, event) not in table, f"{state} {event.__name__} twice"
                table[(state, event)] = handler
    return table


_S = LegState
_LIVE_A = (_S.INCOMING, _S.EARLY, _S.ANSWERED, _S.CONFIRMED, _S.HANGING_UP)
_LIVE_B = (_S.CALLING, _S.PROCEEDING, _S.ANSWERED, _S.CONFIRMED, _S.CANCELLING, _S.ABANDONED, _S.HANGING_UP)
_OVER = (Failed, Disconnected)

#: legs talking (the caller's early state: early media)
_TALKING_A = (_S.EARLY, _S.ANSWERED, _S.CONFIRMED)
_TALKING_B = (_S.PROCEEDING, _S.ANSWERED, _S.CONFIRMED)

#: the caller's leg
_A_TABLE = _table(
    ((_S.ANSWERED,), (Confirmed,), Session._a_confirmed),
    (_LIVE_A, (Disconnected,), Session._a_disconnected),
    (_LIVE_A, (MediaReady,), Session._media),
    (_TALKING_A, (DtmfReceived,), Session._dtmf),
    (_TALKING_A, (RemoteOffer,), Session._remote_offer),
    ((_S.ANSWERED, _S.CONFIRMED), (OfferFailed,), Session._offer_failed),
)

#: the legs we dial
_B_TABLE = _table(
    (_TRYING, (Provisional, EarlyMedia), Session._b_provisional),
    (_TRYING, (Answered, Confirmed), Session._b_answered),
    ((_S.ANSWERED,), (Confirmed,), Session._b_confirmed),
    ((_S.CANCELLING, _S.ABANDONED), (Answered, Confirmed), Session._b_answered_late),
    ((*_TRYING, _S.CANCELLING), _OVER, Session._b_failed),
    ((_S.ANSWERED, _S.CONFIRMED), _OVER, Session._b_callee_hung_up),
    ((_S.ABANDONED, _S.HANGING_UP), _OVER, Session._b_gone),
    (_LIVE_B, (MediaReady,), Session._media),
    (_TALKING_B, (DtmfReceived,), Session._dtmf),
    (_TALKING_B, (RemoteOffer,), Session._remote_offer),
    ((_S.ANSWERED, _S.CONFIRMED), (OfferFailed,), Session._offer_failed),
)
