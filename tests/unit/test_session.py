"""The call state machine (b2bua.session) without SIP: fake legs, a real plugin manager, a
scheduler on a fake clock. Each test feeds the events pjsua2 would cause and checks what the
caller and the gateways would see (the legs' actions) and what the hooks were told."""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loguru import logger

from b2bua import hookimpl
from b2bua.api import (
    CallInfo,
    DialMode,
    EndCause,
    Failure,
    FailureKind,
    Outbound,
    OutgoingRequest,
    Reject,
    RoutePlan,
    Target,
)
from b2bua.config import SipConfig, parse_config
from b2bua.events import (
    CONFIRMED,
    MEDIA_READY,
    Answered,
    CallLeg,
    Disconnected,
    DtmfMethod,
    DtmfReceived,
    EarlyMedia,
    Failed,
    LegError,
    LegEvent,
    LegOwner,
    LegState,
    MediaDirection,
    MediaStats,
    OfferFailed,
    Provisional,
    RemoteOffer,
)
from b2bua.headers import Passthrough
from b2bua.legpool import LegPool
from b2bua.loop import Scheduler
from b2bua.outbound import OutboundProfile
from b2bua.plugins import Hooks, make_manager
from b2bua.session import CallState, Session, request_problem

GW1, GW2, GW3 = Target("sip:10.0.0.1"), Target("sip:10.0.0.2"), Target("sip:10.0.0.3")
RINGING, TRYING = Provisional(180, "Ringing"), Provisional(100, "Trying")
OK = Answered(200, "OK")


class FakeLeg(CallLeg):
    """Records the session's actions; ``then`` events are reported from inside ``end()``
    (pjsua2 calls back synchronously inside ``hangup``)."""

    def __init__(self, owner: LegOwner | None, index: int) -> None:
        super().__init__(owner, index)
        self.actions: list[tuple[Any, ...]] = []
        self.request: OutgoingRequest | None = None
        self.call_id = ""
        self.refuse_invite = ""
        self.is_attached = True
        self.released = False
        self.on_end: list[LegEvent] = []
        self.response_headers: list[tuple[tuple[str, str], ...]] = []  #: each respond()'s headers
        self.stats: MediaStats | None = None

    def report(self, event: LegEvent) -> None:
        """What the adapter does: hand the event to the owner, if the leg still has one."""
        if self.owner is not None:
            self.owner.on_event(self, event)

    def send_invite(self, request: OutgoingRequest, call_id: str) -> None:
        self.actions.append(("invite", request.request_uri))
        self.request, self.call_id = request, call_id
        if self.refuse_invite:
            raise LegError(self.refuse_invite, f"{self.refuse_invite}: details")

    def respond(self, code: int, reason: str = "", headers: tuple[tuple[str, str], ...] = ()) -> None:
        self.actions.append(("respond", code))
        self.response_headers.append(headers)

    def end(self, code: int = 0, reason: str = "", headers: tuple[tuple[str, str], ...] = ()) -> bool:
        self.actions.append(("end", code, reason, headers))
        for event in self.on_end:
            self.report(event)
        self.on_end = []
        return True

    def connect_audio(self, other: CallLeg) -> bool:
        self.actions.append(("bridge", other.index))
        return True

    def disconnect_audio(self, other: CallLeg) -> None:
        self.actions.append(("unbridge", other.index))

    def telephone_event(self) -> bool:
        return True

    def send_dtmf(self, digit: str, duration_ms: int, method: DtmfMethod) -> None:
        self.actions.append(("dtmf", digit, duration_ms, method))

    def set_direction(self, direction: MediaDirection) -> None:
        self.actions.append(("direction", direction))

    def media_stats(self) -> MediaStats | None:
        return self.stats

    def attached(self) -> bool:
        return self.is_attached

    def release(self) -> None:
        self.released = True


@dataclass
class Recorder:
    """A plugin that records every notification hook."""

    events: list[tuple[Any, ...]] = field(default_factory=list)

    @hookimpl
    def b2bua_leg_started(self, call: CallInfo, target: Target) -> None:
        self.events.append(("started", target.uri))

    @hookimpl
    def b2bua_leg_failed(self, call: CallInfo, failure: Failure) -> None:
        self.events.append(("failed", failure.target.uri, failure.code, failure.kind))

    @hookimpl
    def b2bua_call_answered(self, call: CallInfo, target: Target) -> None:
        self.events.append(("answered", target.uri))

    @hookimpl
    def b2bua_call_ended(self, call: CallInfo, cause: EndCause, answered: Target | None) -> None:
        self.events.append(("ended", cause, answered.uri if answered else None))

    def failures(self) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == "failed"]


class Router:
    """Routes every call with ``plan`` (or answers ``reject``; raises with ``boom``)."""

    def __init__(self, plan: RoutePlan | None = None, reject: Reject | None = None, boom: bool = False) -> None:
        self.plan, self.reject, self.boom = plan, reject, boom

    @hookimpl
    def b2bua_route_call(self, call: CallInfo) -> RoutePlan | Reject | None:
        if self.boom:
            raise RuntimeError("broken on purpose")
        return self.reject or self.plan


class FakeHost:
    """A SessionHost: real hooks and leg pool, a scheduler on a fake clock."""

    def __init__(self, *plugins: object, slots: int = 100, **sip: Any) -> None:
        pm = make_manager([])
        self.recorder = Recorder()
        for plugin in (self.recorder, *plugins):
            pm.register(plugin)
        self.hooks = Hooks(pm)
        config = parse_config({"sip": {"attempt_timeout": 1.0, "answer_timeout": 5.0, **sip}})
        self.hooks.configure(config, app=None)  # type: ignore[arg-type]
        self.sip: SipConfig = config.sip
        self.passthrough = Passthrough.compile(config.headers.to_gateway, config.headers.to_caller)
        self.now = 0.0
        self.scheduler = Scheduler(clock=lambda: self.now)
        self.made: list[FakeLeg] = []
        self.profiles: list[object] = []  #: the outbound profile of each leg made
        self.legs = LegPool(self._make, slots)
        self.ended: list[Session] = []

    def _make(self, owner: LegOwner | None, index: int, pjsua_call_id: int, profile: object = None) -> CallLeg:
        leg = FakeLeg(owner, index)
        self.profiles.append(profile)
        self.made.append(leg)
        return leg

    def call_later(self, delay: float, callback: Any) -> Any:
        return self.scheduler.call_later(delay, callback)

    def session_ended(self, session: Session) -> None:
        self.ended.append(session)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.scheduler.run_pending()

    # -- building a call ---------------------------------------------------------------------

    def session(self, ruri: str = "sip:4930123@b2bua", **info: Any) -> tuple[Session, FakeLeg]:
        """A call to ``ruri``; ``info``: more CallInfo fields (from_header, headers, ...)."""
        a = self.legs.incoming(7)
        assert isinstance(a, FakeLeg)
        call = CallInfo(1, "call-1@caller", ruri, "sip:alice@caller", ruri, **info)
        return Session(self, call, a), a

    def b(self, index: int) -> FakeLeg:
        return next(leg for leg in self.made if leg.index == index)


def serial(*targets: Target) -> Router:
    return Router(RoutePlan(targets))


def parallel(*targets: Target) -> Router:
    return Router(RoutePlan(targets, DialMode.PARALLEL))


def ends(leg: FakeLeg) -> list[tuple[Any, ...]]:
    return [a for a in leg.actions if a[0] == "end"]


# -- the happy path -------------------------------------------------------------------------------


def test_serial_call_rings_answers_bridges_and_ends_when_the_caller_hangs_up() -> None:
    host = FakeHost(serial(GW1))
    s, a = host.session()
    s.start()
    b = host.b(1)
    assert b.actions == [("invite", "sip:4930123@10.0.0.1")] and b.request is not None
    assert b.request.from_uri == "sip:alice@caller" and len(b.call_id) == 24  # a Call-ID of our own
    b.report(TRYING)
    assert (b.state, a.actions) == (LegState.PROCEEDING, [])  # 100 Trying is not relayed
    b.report(RINGING)
    b.report(RINGING)
    assert a.actions == [("respond", 180)] and a.state is LegState.EARLY  # relayed once
    b.report(OK)
    assert a.actions[-1] == ("respond", 200) and s.state is CallState.ANSWERED
    b.report(CONFIRMED)
    a.report(CONFIRMED)
    a.report(MEDIA_READY)
    assert ("bridge", 1) not in a.actions  # B's media is not there yet
    b.report(MEDIA_READY)
    assert a.actions.count(("bridge", 1)) == 1
    b.report(MEDIA_READY)  # a re-INVITE renegotiates: pjsua may have replaced the port, connect again
    assert a.actions.count(("bridge", 1)) == 2
    a.report(Disconnected(200, "Normal call clearing"))
    assert ends(b) == [("end", 0, "", ())]  # BYE
    assert b.state is LegState.HANGING_UP and not host.ended
    b.report(Disconnected(200, "Normal call clearing"))
    assert host.ended == [s] and s.state is CallState.ENDED and s.cause is EndCause.CALLER_HANGUP
    assert host.recorder.events == [("started", GW1.uri), ("answered", GW1.uri),
                                    ("ended", EndCause.CALLER_HANGUP, GW1.uri)]
    assert host.legs.in_use == 0 and host.legs.retired == [a, b]
    host.legs.release_retired()
    assert a.released and b.released and a.owner is None and b.owner is None


def test_an_ended_call_is_freed_by_reference_counting_not_left_as_cyclic_garbage() -> None:
    # a session and its bridge held each other: every call's objects (session, bridge, plan,
    # targets, stash, plugin records) waited for a full garbage collection, which walked them
    # all holding the GIL (~2,400 objects every few seconds at 650 calls/s)
    host = FakeHost(serial(GW1))
    s, a = host.session()
    s.start()
    b = host.b(1)
    for event in (RINGING, OK, CONFIRMED, MEDIA_READY):
        b.report(event)
    a.report(CONFIRMED)
    a.report(MEDIA_READY)
    a.report(Disconnected(200, "Normal call clearing"))
    b.report(Disconnected(200, "Normal call clearing"))
    host.legs.release_retired()
    assert host.ended == [s]
    gone = weakref.ref(s)
    gc.disable()
    try:
        host.ended.clear()
        del s
        assert gone() is None
    finally:
        gc.enable()


def test_early_media_183_is_relayed() -> None:
    host = FakeHost(serial(GW1))
    s, a = host.session()
    s.start()
    host.b(1).report(EarlyMedia(183, "Session Progress"))
    host.b(1).report(RINGING)
    assert a.actions == [("respond", 183)]


def test_early_media_gives_the_caller_a_183_and_is_bridged_until_the_answer() -> None:
    host = FakeHost(serial(GW1))
    s, a = host.session()
    s.start()
    b = host.b(1)
    b.report(RINGING)  # 180 first: relayed as it is
    assert a.actions == [("respond", 180)]
    b.report(MEDIA_READY)  # then a 183 with SDP (or a 180 with SDP): early media
    assert a.actions == [("respond", 180), ("respond", 183)] and s.early_media_sent
    a.report(MEDIA_READY)  # our SDP answer in that 183 set up the caller's media
    assert a.actions[-1] == ("bridge", 1) and s.bridge.early
    b.report(EarlyMedia(183, "Session Progress"))  # its 183's state report: nothing more to send
    b.report(OK)
    assert a.actions[-1] == ("respond", 200) and ("unbridge", 1) not in a.actions
    assert (s.bridge.peer, s.bridge.early) == (1, False)


def test_early_media_renegotiated_before_the_answer_is_connected_again() -> None:
    # an UPDATE (or a second 183 with another SDP) from the early gateway restarts its stream with
    # a new conference port: the caller must be connected to it again, not left to the 0.5 s look
    host = FakeHost(serial(GW1))
    s, a = host.session()
    s.start()
    b = host.b(1)
    b.report(MEDIA_READY)
    a.report(MEDIA_READY)
    assert a.actions.count(("bridge", 1)) == 1
    b.report(MEDIA_READY)  # the early UPDATE's new SDP
    assert a.actions.count(("bridge", 1)) == 2 and a.actions.count(("respond", 183)) == 1
    assert (s.bridge.peer, s.bridge.early) == (1, True)


def test_the_first_early_media_is_heard_then_the_winner() -> None:
    host = FakeHost(parallel(GW1, GW2, GW3))
    s, a = host.session()
    s.start()
    b1, b2, b3 = host.b(1), host.b(2), host.b(3)
    a.media_ready = True
    for b in (b2, b1):
        b.report(EarlyMedia(183, "Session Progress"))
        b.report(MEDIA_READY)  # b1's is the second early media: not heard
    assert a.actions == [("respond", 183), ("bridge", 2)]
    b2.report(Failed(486, "Busy Here"))  # the early leg gives up: the caller hears nothing
    assert a.actions[-1] == ("unbridge", 2) and s.bridge.peer == 0
    b1.report(MEDIA_READY)  # the other early media takes over (no second 183)
    assert a.actions[-1] == ("bridge", 1)
    b3.report(OK)
    b3.report(MEDIA_READY)
    assert a.actions[-3:] == [("respond", 200), ("unbridge", 1), ("bridge", 3)]
    assert [x[0] for x in b1.actions] == ["invite", "end"]  # cancelled


def test_early_media_after_the_call_is_over_is_ignored() -> None:
    host = FakeHost(serial(GW1))
    s, a = host.session()
    s.start()
    a.report(Disconnected(487, "Request Terminated"))
    host.b(1).report(MEDIA_READY)
    assert a.actions == []


def test_digits_and_offers_go_through_the_bridge() -> None:
    host = FakeHost(serial(GW1))
    s, a = host.session()
    s.start()
    b = host.b(1)
    b.report(OK)
    a.report(DtmfReceived("5", 100, DtmfMethod.RFC4733, 7, end=True))
    a.report(RemoteOffer(MediaDirection.SENDONLY))
    assert b.actions[-1] == ("dtmf", "5", 100, DtmfMethod.RFC4733)  # no re-INVITE before our ACK
    b.report(CONFIRMED)  # pjsua ACKs the 200: the offer goes
    b.report(DtmfReceived("1", 0, DtmfMethod.SIP_INFO_DTMF, end=True))
    b.report(OfferFailed(488, "Not Acceptable Here"))
    assert b.actions[-2:] == [("dtmf", "5", 100, DtmfMethod.RFC4733), ("direction", MediaDirection.SENDONLY)]
    assert a.actions[-1] == ("dtmf", "1", 160, DtmfMethod.RFC4733)


def test_no_rtp_for_rtp_timeout_ends_the_call() -> None:
    host = FakeHost(serial(GW1))
    s, a = host.session()
    s.start()
    b = host.b(1)
    b.report(OK)
    s.media_timeout(1, 30.0)
    assert ends(a) == [("end", 0, "", ())] and ends(b) == [("end", 0, "", ())]  # BYE both ways
    s.media_timeout(1, 30.0)  # once
    assert len(ends(a)) == 1
    a.report(Disconnected(200, ""))
    b.report(Disconnected(200, ""))
    assert s.cause is EndCause.MEDIA_TIMEOUT and host.ended == [s]
    assert host.recorder.events[-1] == ("ended", EndCause.MEDIA_TIMEOUT, GW1.uri)


def test_callee_hangs_up() -> None:
    host = FakeHost(serial(GW1))
    s, a = host.session()
    s.start()
    b = host.b(1)
    b.report(OK)
    b.report(Disconnected(200, "Normal call clearing"))
    assert ends(a) == [("end", 0, "", ())] and a.state is LegState.HANGING_UP
    a.report(Disconnected(200, ""))
    assert s.cause is EndCause.CALLEE_HANGUP and host.ended == [s]


@pytest.mark.parametrize("caller_hangs_up", [True, False], ids=["caller", "callee"])
def test_a_byes_reason_crosses_to_the_other_legs_bye(caller_hangs_up: bool) -> None:
    host = FakeHost(serial(GW1))
    s, a = host.session()
    s.start()
    b = host.b(1)
    b.report(OK)
    bye = Disconnected(200, "Normal call clearing", {"reason": ("Q.850;cause=16",), "x-other": ("1",)})
    first, other = (a, b) if caller_hangs_up else (b, a)
    first.report(bye)
    assert ends(other) == [("end", 0, "", (("Reason", "Q.850;cause=16"),))]


def test_the_callers_cancel_reason_crosses_to_every_fork_it_cancels() -> None:
    host = FakeHost(parallel(GW1, GW2))
    s, a = host.session()
    s.start()
    b1, b2 = host.b(1), host.b(2)
    for b in (b1, b2):
        b.report(RINGING)
    a.report(Disconnected(487, "Request Terminated", {"reason": ('SIP;cause=200;text="Call completed elsewhere"',)}))
    elsewhere = (("Reason", 'SIP;cause=200;text="Call completed elsewhere"'),)
    assert ends(b1) == ends(b2) == [("end", 0, "", elsewhere)]
    assert s.cause is EndCause.CALLER_CANCEL


def test_every_transition_is_logged_with_the_call_id() -> None:
    lines: list[tuple[str, str | None]] = []
    sink = logger.add(lambda m: lines.append((m.record["message"], m.record["extra"].get("call_id"))),
                      level="DEBUG", format="{message}")
    try:
        host = FakeHost(serial(GW1))
        s, _a = host.session()
        s.start()
        host.b(1).report(RINGING)
    finally:
        logger.remove(sink)
    assert ("call routing -> dialing", "call-1@caller") in lines
    assert ("leg 1 calling -> proceeding", "call-1@caller") in lines
    assert ("leg 0 incoming -> early", "call-1@caller") in lines


# -- failures and failover ------------------------------------------------------------------------


def test_serial_failover_then_relayed_failure_with_its_headers() -> None:
    host = FakeHost(serial(GW1, GW2))
    s, a = host.session()
    s.start()
    host.b(1).report(Failed(503, "Service Unavailable"))
    assert host.b(2).actions == [("invite", "sip:4930123@10.0.0.2")]
    host.b(2).report(Failed(486, "Busy Here", {"retry-after": ("30",)}))
    assert ends(a) == [("end", 486, "Busy Here", (("Retry-After", "30"),))]
    a.report(Disconnected(486, "Busy Here"))
    assert s.cause is EndCause.FAILED and s.final == "486 Busy Here" and host.ended == [s]
    assert host.recorder.failures() == [("failed", GW1.uri, 503, FailureKind.RESPONSE),
                                        ("failed", GW2.uri, 486, FailureKind.RESPONSE)]
    assert host.legs.in_use == 0


def test_a_gateways_503_reaches_the_caller_as_500() -> None:
    host = FakeHost(serial(GW1))
    s, a = host.session()
    s.start()
    host.b(1).report(Failed(503, "Service Unavailable", {"retry-after": ("60",)}))
    assert ends(a) == [("end", 500, "Server Internal Error", ())]


def test_no_provisional_in_time_gives_up_and_keeps_the_leg_until_pjsua_ends_it() -> None:
    host = FakeHost(serial(GW1, GW2))
    s, a = host.session()
    s.start()
    b1 = host.b(1)
    host.advance(1.0)  # attempt_timeout
    assert ends(b1) and b1.state is LegState.ABANDONED and host.legs.zombies == 1
    assert host.recorder.failures() == [("failed", GW1.uri, 408, FailureKind.NO_RESPONSE)]
    assert host.b(2).actions == [("invite", "sip:4930123@10.0.0.2")]  # next target at once
    b1.report(OK)  # the abandoned gateway answers after all: hung up, never bridged
    assert len(ends(b1)) == 2 and s.winner == 0 and a.actions == []
    b1.report(Disconnected(200, ""))
    assert b1.state is LegState.ENDED and host.legs.zombies == 0 and b1 in host.legs.retired


def test_a_leg_pjsip_ends_at_once_is_not_kept() -> None:
    host = FakeHost(serial(GW1))
    s, a = host.session()
    s.start()
    b1 = host.b(1)
    b1.on_end = [Failed(408, "Request Timeout")]  # reported from inside hangup()
    host.advance(1.0)
    assert b1.state is LegState.ENDED and host.legs.zombies == 0
    assert host.recorder.failures() == [("failed", GW1.uri, 408, FailureKind.NO_RESPONSE)]
    assert ends(a) == [("end", 408, "Request Timeout", ())]


def test_ringing_too_long_is_cancelled_and_answered_408() -> None:
    host = FakeHost(serial(GW1))
    s, a = host.session()
    s.start()
    b1 = host.b(1)
    b1.report(RINGING)
    host.advance(1.0)
    assert b1.state is LegState.PROCEEDING  # the attempt timer stopped at the provisional
    host.advance(4.0)  # answer_timeout
    assert b1.state is LegState.CANCELLING and ends(b1)
    b1.report(Failed(487, "Request Terminated"))
    assert host.recorder.failures() == [("failed", GW1.uri, 408, FailureKind.NO_ANSWER)]
    assert ends(a) == [("end", 408, "Request Timeout", ())]


def test_target_timeouts_override_the_hosts() -> None:
    host = FakeHost(serial(Target("sip:10.0.0.1", attempt_timeout=0.2, answer_timeout=0.5)))
    s, _a = host.session()
    s.start()
    b1 = host.b(1)
    b1.report(TRYING)
    host.advance(0.6)
    assert b1.state is LegState.CANCELLING


def test_an_invite_that_cannot_be_sent_fails_that_attempt_only() -> None:
    host = FakeHost(serial(Target("sip:bad uri@"), GW2))
    host.legs._factory = _refusing_first(host)
    s, a = host.session()
    s.start()
    assert host.recorder.failures()[0][2:] == (500, FailureKind.ERROR)
    assert host.b(2).actions == [("invite", "sip:4930123@10.0.0.2")] and a.actions == []
    assert host.b(1).state is LegState.ENDED and host.b(1) in host.legs.retired


def _refusing_first(host: FakeHost) -> Any:
    make = host._make

    def factory(owner: LegOwner | None, index: int, pjsua_call_id: int, profile: object = None) -> CallLeg:
        leg = make(owner, index, pjsua_call_id, profile)
        if index == 1:
            assert isinstance(leg, FakeLeg)
            leg.refuse_invite = "Invalid URI"
        return leg

    return factory


def test_out_of_call_slots_fails_without_leg_started() -> None:
    host = FakeHost(serial(GW1), slots=2)
    s, a = host.session()  # the A leg takes the one usable slot
    s.start()
    assert host.recorder.events[0] == ("failed", GW1.uri, 503, FailureKind.ERROR)
    assert ("started", GW1.uri) not in host.recorder.events
    assert ends(a) == [("end", 500, "Server Internal Error", ())]


# -- parallel forking -----------------------------------------------------------------------------


def test_first_answer_wins_and_the_other_forks_are_cancelled() -> None:
    host = FakeHost(parallel(GW1, GW2, GW3))
    s, a = host.session()
    s.start()
    b1, b2, b3 = host.b(1), host.b(2), host.b(3)
    for b in (b1, b2, b3):
        b.report(RINGING)
    assert a.actions == [("respond", 180)]
    b2.report(OK)
    assert s.winner == 2 and b1.state is LegState.CANCELLING and b3.state is LegState.CANCELLING
    # RFC 3326, as Kamailio's tm: the phones that rang show no missed call
    elsewhere = (("Reason", 'SIP;cause=200;text="Call completed elsewhere"'),)
    assert ends(b1) == ends(b3) == [("end", 0, "", elsewhere)]
    b1.report(Failed(487, "Request Terminated"))
    b3.report(OK)  # its 200 crossed our CANCEL: BYE
    assert len(ends(b3)) == 2 and s.winner == 2
    b3.report(Disconnected(200, ""))
    assert host.recorder.failures() == [("failed", GW1.uri, 487, FailureKind.CANCELLED),
                                        ("failed", GW3.uri, 487, FailureKind.CANCELLED)]
    assert a.actions[-1] == ("respond", 200) and s.state is CallState.ANSWERED


def test_every_fork_failed_answers_the_best_failure_once() -> None:
    class CountNext:
        calls: list[int] = []

        @hookimpl
        def b2bua_next_target(self, call: CallInfo, plan: RoutePlan, failure: Failure) -> None:
            self.calls.append(failure.code)

    counter = CountNext()
    host = FakeHost(parallel(GW1, GW2, GW3), counter)
    s, a = host.session()
    s.start()
    host.b(1).report(Failed(503, "Service Unavailable"))
    host.b(2).report(Failed(486, "Busy Here"))
    assert a.actions == []
    host.b(3).report(Failed(404, "Not Found"))
    assert counter.calls == [404]  # tm's get_prio: 4xx before 5xx, 404 before 486
    assert ends(a) == [("end", 404, "Not Found", ())]


def test_parallel_forks_are_capped_at_max_forks() -> None:
    host = FakeHost(parallel(GW1, GW2, GW3), max_forks=2)
    s, _a = host.session()
    s.start()
    assert [leg.index for leg in host.made if leg.index] == [1, 2]


# -- the caller -----------------------------------------------------------------------------------


def test_caller_cancel_cancels_the_b_leg() -> None:
    host = FakeHost(serial(GW1))
    s, a = host.session()
    s.start()
    b1 = host.b(1)
    b1.report(RINGING)
    a.report(Disconnected(487, "Request Terminated"))
    assert ends(b1) and b1.state is LegState.CANCELLING and s.state is CallState.ENDING
    b1.report(Failed(487, "Request Terminated"))
    assert s.cause is EndCause.CALLER_CANCEL and host.ended == [s]
    assert host.recorder.failures() == [("failed", GW1.uri, 487, FailureKind.CANCELLED)]


def test_lost_caller_found_by_the_audit_ends_the_call() -> None:
    host = FakeHost(serial(GW1))
    s, a = host.session()
    s.start()
    host.b(1).report(OK)
    a.is_attached = False
    assert s.audit_legs() == 1
    assert a.state is LegState.ENDED and ends(host.b(1)) and s.cause is EndCause.ERROR


def test_lost_b_leg_found_by_the_audit_fails_over() -> None:
    host = FakeHost(serial(GW1, GW2))
    s, _a = host.session()
    s.start()
    host.b(1).is_attached = False
    assert s.audit_legs() == 1
    assert host.recorder.failures() == [("failed", GW1.uri, 500, FailureKind.RESPONSE)]
    assert host.b(2).actions == [("invite", "sip:4930123@10.0.0.2")]


def test_shutdown_hangs_up_answered_and_dialing_calls() -> None:
    host = FakeHost(serial(GW1))
    s, a = host.session()
    s.start()
    host.b(1).report(OK)
    s.hangup_all()
    assert ends(a) == [("end", 0, "", ())] and ends(host.b(1)) == [("end", 0, "", ())]
    other = FakeHost(serial(GW1))
    s2, a2 = other.session()
    s2.start()
    s2.hangup_all()
    assert ends(a2) == [("end", 503, "Service Unavailable", ())] and s2.cause is EndCause.SHUTDOWN


# -- routing decisions ----------------------------------------------------------------------------


def test_a_reject_from_routing_is_the_callers_answer() -> None:
    host = FakeHost(Router(reject=Reject(403, "Forbidden")))
    s, a = host.session()
    s.start()
    assert ends(a) == [("end", 403, "Forbidden", ())] and host.made == [a]
    a.report(Disconnected(403, "Forbidden"))
    assert s.cause is EndCause.REJECTED and host.ended == [s]


def test_a_plugins_reject_reaches_the_wire_as_one_clean_line() -> None:
    # a CR/LF in a plugin's reason or header value would write a header of its own into our
    # response; a control character in a gateway's reason phrase would be relayed as it is
    bad = Reject(486, "Busy\r\nX-Injected: 1\x1b[2J", headers=(("X Bad", "1"), ("X-Ok", "fine"),
                                                              ("X-Evil", "a\r\nb"), ("X-Num", 5)))  # type: ignore[arg-type]
    host = FakeHost(Router(reject=bad))
    s, a = host.session()
    s.start()
    assert ends(a) == [("end", 486, "Busy X-Injected: 1 [2J", (("X-Ok", "fine"),))]
    assert s.final == "486 Busy X-Injected: 1 [2J"
    empty = FakeHost(Router(reject=Reject(480, "\x00\x07", headers=None)))  # type: ignore[arg-type]
    s2, a2 = empty.session()
    s2.start()
    assert ends(a2) == [("end", 480, "Temporarily Unavailable", ())]


def test_a_raising_router_costs_that_call_a_500() -> None:
    host = FakeHost(Router(boom=True))
    s, a = host.session()
    s.start()
    assert ends(a) == [("end", 500, "Internal Server Error", ())] and s.cause is EndCause.ERROR


def test_events_a_state_does_not_expect_are_ignored() -> None:
    host = FakeHost(serial(GW1))
    s, a = host.session()
    s.start()
    a.report(OK)  # the caller's leg never reports an answer
    host.b(1).report(DtmfReceived("5", 120))
    host.b(1).report(CONFIRMED)  # CONFIRMED without CONNECTING: an answer
    assert s.winner == 1


# -- any order of events keeps the bookkeeping straight ---------------------------------------------

EVENTS = st.sampled_from([TRYING, RINGING, EarlyMedia(), OK, CONFIRMED, MEDIA_READY, Failed(503, "x"),
                          Failed(486, "Busy"), Disconnected(200, ""), DtmfReceived("1"),
                          DtmfReceived("2", 100, end=True), RemoteOffer(MediaDirection.INACTIVE),
                          RemoteOffer(), OfferFailed(491)])


@settings(max_examples=300, deadline=None)
@given(mode=st.sampled_from([DialMode.SERIAL, DialMode.PARALLEL]),
       steps=st.lists(st.tuples(st.integers(0, 3), EVENTS, st.sampled_from([0.0, 0.5, 2.0, 6.0])), max_size=25))
def test_any_event_sequence_keeps_the_books(mode: DialMode, steps: list[tuple[int, LegEvent, float]]) -> None:
    host = FakeHost(Router(RoutePlan((GW1, GW2, GW3), mode)))
    s, _a = host.session()
    s.start()
    for index, event, wait in steps:
        legs = [leg for leg in host.made if leg.index == index]
        if legs:
            legs[-1].report(event)
        host.advance(wait)
        assert 0 <= host.legs.in_use <= len(host.made)
        assert len(host.ended) <= 1
    # every leg still owned by the session is live, every other one retired or kept as a zombie
    for leg in host.made:
        if leg.state is LegState.ENDED:
            assert leg.retired and leg.owner is None
        elif leg.state is LegState.ABANDONED:
            assert not leg.retired
    assert (s.state is CallState.ENDED) == bool(host.ended)
    if host.ended:
        assert s.a is None and not s.b
        assert sum(1 for e in host.recorder.events if e[0] == "ended") == 1


def test_the_call_core_does_not_import_pjsua2() -> None:
    code = ("import sys; import b2bua.session, b2bua.legpool, b2bua.events, b2bua.core_rpc, b2bua.sippolicy, "
            "b2bua.bridge, b2bua.sdp; "
            "sys.exit('pjsua2' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_core_calls_reports_the_call_and_its_legs() -> None:
    from b2bua.core_rpc import calls_report

    host = FakeHost(parallel(GW1, GW2))
    s, a = host.session()
    s.call.started = 10.0
    s.start()
    host.b(1).report(RINGING)
    [report] = calls_report([s], 12.5)
    assert (report["state"], report["duration"], report["answered_by"]) == ("dialing", 2.5, None)
    assert report["caller"] == {"state": "early", "media": None}
    assert report["legs"] == [
        {"index": 1, "target": GW1.uri, "next_hop": "", "state": "proceeding", "answered": False, "provisional": True,
         "heard": False, "media": None},
        {"index": 2, "target": GW2.uri, "next_hop": "", "state": "calling", "answered": False, "provisional": False,
         "heard": False, "media": None},
    ]
    host.b(2).report(OK)
    a.report(MEDIA_READY)
    host.b(2).report(MEDIA_READY)
    stats = MediaStats("PCMA/8000", MediaDirection.RECVONLY, 120, 118, 2, 1, 0.4567, "10.0.0.2:4000", "10.0.0.2:4000")
    host.b(2).stats = stats
    [report] = calls_report([s], 13.0)
    assert report["state"] == "answered" and report["answered_by"] == GW2.uri
    assert [(leg["index"], leg["answered"], leg["heard"]) for leg in report["legs"]] == [(1, False, False),
                                                                                        (2, True, True)]
    assert report["legs"][1]["media"] == {
        "codec": "PCMA/8000", "direction": "recvonly", "rx_packets": 120, "tx_packets": 118, "rx_lost": 2,
        "rx_discarded": 1, "jitter_ms": 0.46, "remote": "10.0.0.2:4000", "source": "10.0.0.2:4000"}
    assert report["caller"] == {"state": "answered", "media": None}  # ready, but no stream to read


# -- identity, headers and outbound (issue 12) ----------------------------------------------------

CALLER_HEADERS = {
    "via": ("SIP/2.0/UDP 10.1.1.1;branch=z9hG4bKcaller",),
    "record-route": ("<sip:10.1.1.1;lr>",),
    "p-asserted-identity": ('"Alice" <sip:+4930111@pbx>',),
    "x-account": ("42",),
    "x-evil": ("a\r\nVia: SIP/2.0/UDP 6.6.6.6",),
    "subject": ("not listed",),
}


def identity_session(host: FakeHost) -> tuple[Session, FakeLeg]:
    return host.session(from_header='"Alice Example" <sip:alice@caller>;tag=a1',
                        to_header='"Bob" <sip:4930123@b2bua;user=phone>', headers=CALLER_HEADERS)


def test_b_leg_keeps_the_callers_identity_and_listed_headers() -> None:
    host = FakeHost(serial(Target("sip:10.0.0.1:5080;transport=tcp", headers=(("X-Account", "7"),))))
    s, _ = identity_session(host)
    s.call.to_uri = "sip:4930123@b2bua;user=phone"
    s.start()
    request = host.b(1).request
    assert request is not None
    assert (request.from_uri, request.from_name) == ("sip:alice@caller", "Alice Example")
    assert (request.to_uri, request.to_name) == ("sip:4930123@10.0.0.1:5080;user=phone;transport=tcp", "Bob")
    assert request.request_uri == "sip:4930123@10.0.0.1:5080;transport=tcp"
    # the caller's listed headers (the unusable one dropped), then the target's, which wins
    assert request.headers == [("P-Asserted-Identity", '"Alice" <sip:+4930111@pbx>'), ("X-Account", "7")]


class Normaliser:
    """A prepare_target plugin: caller-ID as +49..., no display name; or a broken one."""

    def __init__(self, broken: str = "") -> None:
        self.broken = broken

    @hookimpl
    def b2bua_prepare_target(self, call: CallInfo, target: Target, request: OutgoingRequest) -> None:
        if self.broken == "headers" and target is GW1:
            request.headers.append(("X Bad", "1"))  # not a header name
            return
        if self.broken and target is GW1:
            setattr(request, self.broken, "x\r\nInjected: 1")
            return
        request.from_uri = "sip:+4930111@carrier.example"
        request.from_name = ""


def test_prepare_target_rewrites_the_identity() -> None:
    host = FakeHost(serial(GW1), Normaliser())
    s, _ = identity_session(host)
    s.start()
    request = host.b(1).request
    assert request is not None and (request.from_uri, request.from_name) == ("sip:+4930111@carrier.example", "")


@pytest.mark.parametrize("field", ["from_name", "to_uri", "request_uri", "headers", "next_hop"])
def test_a_request_a_plugin_broke_is_not_sent_and_fails_that_attempt(field: str) -> None:
    host = FakeHost(serial(GW1, GW2), Normaliser(broken=field))
    s, _ = identity_session(host)
    s.start()
    assert host.recorder.failures()[0] == ("failed", GW1.uri, 500, FailureKind.ERROR)
    assert [leg.index for leg in host.made[1:]] == [2], "no leg for the broken attempt; the next one dialled"


def test_the_next_hop_reaches_the_leg_and_a_name_there_is_refused() -> None:
    via = Target("sip:carrier.example", next_hop="[2001:db8::7]:5070")
    named = Target("sip:carrier.example", next_hop="sbc.carrier.example:5060")  # must be an address
    host = FakeHost(serial(named, via))
    s, _ = identity_session(host)
    s.start()
    assert host.recorder.failures()[0] == ("failed", named.uri, 500, FailureKind.ERROR)
    request = host.b(2).request
    assert request is not None and request.next_hop == "[2001:db8::7]:5070"
    assert request.request_uri.endswith("@carrier.example")


def test_outbound_asked_for_is_resolved_and_handed_to_the_leg() -> None:
    bad = Target("sip:10.0.0.1", outbound=Outbound(socket="udp:10.9.9.9:5060"))
    good = Target("sip:10.0.0.2", outbound=Outbound(proxy="sip:sbc.example"))
    host = FakeHost(serial(bad, good, GW3), listen=["udp:127.0.0.1:5060"])
    s, _ = host.session()
    s.start()
    assert host.recorder.failures()[0] == ("failed", bad.uri, 500, FailureKind.ERROR)
    assert host.profiles[1:] == [OutboundProfile(None, "sip:sbc.example;lr", "")]


def test_the_answering_legs_identity_reaches_the_callers_200() -> None:
    host = FakeHost(serial(GW1))
    s, a = host.session()
    s.start()
    b = host.b(1)
    b.report(RINGING)
    b.report(Answered(200, "OK", {"p-asserted-identity": ("<sip:+4930222@carrier>",), "contact": ("<sip:gw>",),
                                  "x-internal": ("1",), "record-route": ("<sip:gw;lr>",)}))
    assert a.actions == [("respond", 180), ("respond", 200)]
    assert a.response_headers == [(), (("P-Asserted-Identity", "<sip:+4930222@carrier>"),)]


def test_a_ringing_legs_identity_reaches_the_callers_180_and_183() -> None:
    # the 180's on the 180; a 183 with early media after it carries that 183's
    ringing = {"p-asserted-identity": ("<sip:+4930222@carrier>",), "contact": ("<sip:gw>",)}
    progress = {"p-asserted-identity": ("<sip:+4930333@carrier>",), "privacy": ("id",)}
    host = FakeHost(serial(GW1))
    s, a = host.session()
    s.start()
    b = host.b(1)
    b.report(Provisional(180, "Ringing", ringing))
    b.report(EarlyMedia(183, "Session Progress", progress))
    b.report(MEDIA_READY)
    assert a.actions == [("respond", 180), ("respond", 183)]
    assert a.response_headers == [(("P-Asserted-Identity", "<sip:+4930222@carrier>"),),
                                  (("P-Asserted-Identity", "<sip:+4930333@carrier>"), ("Privacy", "id"))]


def test_an_unanswered_challenge_is_logged_with_why() -> None:
    host = FakeHost(serial(GW1))
    s, a = host.session()
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO")
    try:
        s.start()
        host.b(1).report(Failed(407, "Proxy Authentication Required", {}, "credentials 'x' were refused"))
    finally:
        logger.remove(sink)
    assert "attempt 1 to sip:10.0.0.1 failed: 407 Proxy Authentication Required (credentials 'x' were refused)" in lines
    assert ends(a)[-1][1:3] == (403, "Forbidden")


# -- Max-Forwards (RFC 7332: a B2BUA passes the caller's on, less one) ----------------------------


@pytest.mark.parametrize(("caller", "b_leg"), [("70", 69), ("1", 0), (" 12 ", 11), ("255", 254), (None, 69)])
def test_the_b_leg_carries_the_callers_max_forwards_less_one(caller: str | None, b_leg: int) -> None:
    host = FakeHost(serial(GW1))
    s, _ = host.session(headers={"max-forwards": (caller,)} if caller is not None else {})
    s.start()
    request = host.b(1).request
    assert request is not None and request.max_forwards == b_leg


def test_max_forwards_0_is_refused_483_without_a_b_leg() -> None:
    host = FakeHost(serial(GW1))
    s, a = host.session(headers={"max-forwards": ("0",)})
    s.start()
    assert [leg for leg in host.made if leg.index] == [] and ends(a) == [("end", 483, "Too Many Hops", ())]
    assert s.cause is EndCause.REJECTED


@pytest.mark.parametrize("hops", [-1, 256, True, "69"])
def test_a_plugins_max_forwards_outside_0_255_fails_the_attempt(hops: Any) -> None:
    assert "max_forwards" in request_problem(OutgoingRequest("sip:a@b", "sip:c@d", "sip:a@b", max_forwards=hops))
