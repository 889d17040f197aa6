"""Call records built from hook calls, through a real PluginManager (plugins.cdr.plugin, .record).

``Story`` calls the hooks in the order the host's session does for one call, with clocks the
test moves; the record is what ``b2bua_call_ended`` hands the writer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from b2bua import hookimpl
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
from b2bua.config import parse_config
from b2bua.plugins import Hooks, make_manager
from plugins.cdr.jsonl import json_lines
from plugins.cdr.plugin import TRAIL, CdrPlugin
from plugins.cdr.record import CallRecord, iso_utc

#: 2026-12-06T09:00:00Z
WALL0 = 1_796_547_600.0
MONO0 = 5000.0


def dispatcher_target(setid: int, uri: str) -> Target:
    """A target as the dispatcher makes it (its identity in data['dispatcher'])."""
    return Target(uri, data={"dispatcher": {"setid": setid, "uri": uri, "key": (setid, uri)}})


GW1 = dispatcher_target(1, "sip:10.0.0.1:5060")
GW2 = dispatcher_target(1, "sip:10.0.0.2:5060")


class Clocks:
    """Wall and monotonic clocks that move together."""

    def __init__(self) -> None:
        self.offset = 0.0

    def wall(self) -> float:
        return WALL0 + self.offset

    def mono(self) -> float:
        return MONO0 + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class Router:
    def __init__(self, answer: RoutePlan | Reject | None) -> None:
        self.answer = answer

    @hookimpl
    def b2bua_route_call(self, call: CallInfo) -> RoutePlan | Reject | None:
        return self.answer


class Gatekeeper:
    @hookimpl
    def b2bua_incoming_call(self, call: CallInfo) -> Reject | None:
        return Reject(403, "Forbidden") if call.source_ip == "192.0.2.66" else None


class Rewriter:
    """Changes every B leg's Request-URI (the record must show what was sent)."""

    @hookimpl
    def b2bua_prepare_target(self, call: CallInfo, target: Target, request: OutgoingRequest) -> None:
        request.request_uri = request.request_uri.replace("sip:", "sip:+", 1)


class Broken:
    @hookimpl
    def b2bua_route_call(self, call: CallInfo) -> RoutePlan | None:
        raise RuntimeError("plugin bug")


@dataclass
class Writer:
    records: list[CallRecord] = field(default_factory=list)

    def submit(self, record: Any) -> bool:
        self.records.append(record())  # built at once here; the real writer builds it on its thread
        return True


class Story:
    """One call told through the hooks, as the session calls them."""

    def __init__(self, *plugins: Any, from_header: str = '"Alice Smith" <sip:alice@example.com>;tag=a1',
                 source_ip: str = "192.0.2.10", arrived_before: float = 0.0) -> None:
        self.clocks = Clocks()
        ids = iter(f"{n:032x}" for n in range(1, 100))
        self.cdr = CdrPlugin(wall=self.clocks.wall, mono=self.clocks.mono, new_id=lambda: next(ids))
        self.pm = make_manager([], with_defaults=True)
        for i, plugin in enumerate(plugins):
            self.pm.register(plugin, name=f"test{i}")
        self.pm.register(self.cdr, name="cdr")
        self.hooks = Hooks(self.pm)
        self.hooks.configure(parse_config({"plugins": {"cdr": {"node": "sbc1"}}}, "config.toml"), None)  # type: ignore[arg-type]
        self.writer = Writer()
        self.cdr.writer = self.writer  # type: ignore[assignment]
        self.call = CallInfo(
            id=1, call_id="a84b4c76e66710@pc33.example.com", request_uri="sip:4930123@b2bua.example.com",
            from_uri="sip:alice@example.com", to_uri="sip:4930123@example.com", from_header=from_header,
            to_header="<sip:4930123@example.com>", source_ip=source_ip, source_port=5062, transport="tcp",
            started=MONO0 - arrived_before,
        )
        self.plan: RoutePlan | None = None
        self.attempt = 0

    def route(self) -> RoutePlan | Reject | None:
        verdict = self.hooks.incoming_call(self.call)
        if isinstance(verdict, Reject):
            return verdict
        decision = self.hooks.route_call(self.call)
        if isinstance(decision, RoutePlan):
            self.plan = decision
        return decision

    def dial(self, target: Target, *, slot: bool = True) -> int:
        self.attempt += 1
        request = OutgoingRequest(f"sip:4930123@{target.uri[4:]}", self.call.from_uri, "")
        self.hooks.prepare_target(self.call, target, request)
        if not slot:
            self.hooks.leg_failed(self.call, Failure(target, 503, "Out of call slots", FailureKind.ERROR,
                                                     self.attempt))
            return self.attempt
        self.hooks.leg_started(self.call, target)
        return self.attempt

    def fail(self, target: Target, attempt: int, code: int, reason: str,
             kind: FailureKind = FailureKind.RESPONSE) -> Target | Reject | None:
        failure = Failure(target, code, reason, kind, attempt)
        self.hooks.leg_failed(self.call, failure)
        if kind is FailureKind.CANCELLED:
            return None
        assert self.plan is not None
        return self.hooks.next_target(self.call, self.plan, failure)

    def end(self, cause: EndCause, answered: Target | None = None) -> CallRecord:
        self.hooks.call_ended(self.call, cause, answered)
        (record,) = self.writer.records
        return record


def test_answered_after_a_503_failover() -> None:
    story = Story(Router(RoutePlan((GW1, GW2), data={"dispatcher": {"setid": 1, "alg": 8}})), Rewriter(),
                  arrived_before=0.002)
    assert isinstance(story.route(), RoutePlan)
    first = story.dial(GW1)
    story.clocks.advance(0.05)
    assert story.fail(GW1, first, 503, "Service Unavailable") is GW2  # the host's default: next on 5xx
    second = story.dial(GW2)
    story.clocks.advance(1.25)
    story.hooks.call_answered(story.call, GW2)
    story.clocks.advance(61.5)
    record = story.end(EndCause.CALLER_HANGUP, GW2)

    assert record.to_json() == {
        "cdr_id": "00000000000000000000000000000001", "node": "sbc1",
        "call_id": "a84b4c76e66710@pc33.example.com",
        "from_uri": "sip:alice@example.com", "from_user": "alice", "from_name": "Alice Smith",
        "to_uri": "sip:4930123@example.com", "request_uri": "sip:4930123@b2bua.example.com", "callee": "4930123",
        "source_ip": "192.0.2.10", "source_port": 5062, "transport": "tcp",
        "setup_time": "2026-12-06T08:59:59.998Z", "answer_time": "2026-12-06T09:00:01.300Z",
        "end_time": "2026-12-06T09:01:02.800Z",
        "duration": 62.802, "answer_delay": 1.302, "billsec": 62, "billmsec": 61500,
        "final_code": 200, "final_reason": "OK", "end_cause": "caller-hangup", "hangup_by": "caller",
        "setid": 1, "destination": "sip:10.0.0.2:5060",
        "attempts": [
            {"attempt": first, "setid": 1, "destination": "sip:10.0.0.1:5060",
             "request_uri": "sip:+4930123@10.0.0.1:5060", "start_time": "2026-12-06T09:00:00.000Z",
             "duration": 0.05, "code": 503, "reason": "Service Unavailable", "kind": "response"},
            {"attempt": second, "setid": 1, "destination": "sip:10.0.0.2:5060",
             "request_uri": "sip:+4930123@10.0.0.2:5060", "start_time": "2026-12-06T09:00:00.050Z",
             "duration": 1.25, "code": 200, "reason": "OK", "kind": "answered"},
        ],
    }
    assert TRAIL in story.call.stash  # the stash goes with the call; nothing else holds it


def test_every_gateway_failed_records_the_callers_answer() -> None:
    class Final:
        @hookimpl
        def b2bua_next_target(self, call: CallInfo, plan: RoutePlan, failure: Failure) -> Reject | None:
            return Reject(503, "Service Unavailable") if failure.attempt == 2 else None

    story = Story(Router(RoutePlan((GW1, GW2))), Final())
    story.route()
    first = story.dial(GW1)
    story.clocks.advance(1.0)
    assert story.fail(GW1, first, 408, "Request Timeout", FailureKind.NO_RESPONSE) is GW2
    second = story.dial(GW2)
    story.clocks.advance(0.1)
    assert story.fail(GW2, second, 502, "Bad Gateway") == Reject(503, "Service Unavailable")
    record = story.end(EndCause.FAILED)
    assert (record.final_code, record.final_reason) == (503, "Service Unavailable")  # what the caller got
    assert (record.end_cause, record.hangup_by) == ("failed", "b2bua")
    assert (record.answer_time, record.answer_delay, record.billsec, record.billmsec) == (None, None, 0, 0)
    assert [(a.code, a.kind) for a in record.attempts] == [(408, "no-response"), (502, "response")]
    assert (record.setid, record.destination) == (1, "sip:10.0.0.2:5060")  # the last one tried


def test_relayed_failure_without_a_failover_plugin() -> None:
    story = Story(Router(RoutePlan((GW1, GW2))))
    story.route()
    attempt = story.dial(GW1)
    assert story.fail(GW1, attempt, 486, "Busy Here") == Reject(486, "Busy Here")  # the host relays it
    record = story.end(EndCause.FAILED)
    assert (record.final_code, record.final_reason, len(record.attempts)) == (486, "Busy Here", 1)


@pytest.mark.parametrize(("plugins", "source", "code", "reason"), [
    ((Router(Reject(404, "Not Found")),), "192.0.2.10", 404, "Not Found"),
    ((Gatekeeper(), Router(RoutePlan((GW1,)))), "192.0.2.66", 403, "Forbidden"),
    ((), "192.0.2.10", 503, "No Route"),  # nothing routes it: the host's no_route answer
])
def test_refused_before_any_attempt(plugins: tuple[Any, ...], source: str, code: int, reason: str) -> None:
    story = Story(*plugins, source_ip=source)
    decision = story.route()
    assert isinstance(decision, Reject) and (decision.code, decision.reason) == (code, reason)
    record = story.end(EndCause.REJECTED)
    assert (record.final_code, record.final_reason, record.hangup_by) == (code, reason, "b2bua")
    assert (record.attempts, record.setid, record.destination) == ((), None, None)


def test_a_raising_plugin_is_not_hidden_and_the_call_gets_500() -> None:
    story = Story(Broken())
    with pytest.raises(RuntimeError, match="plugin bug"):  # the wrapper passes the error on
        story.route()
    record = story.end(EndCause.ERROR)
    assert (record.final_code, record.final_reason, record.end_cause) == (500, "Internal Server Error", "error")


def test_caller_cancels_while_it_rings() -> None:
    story = Story(Router(RoutePlan((GW1,))))
    story.route()
    attempt = story.dial(GW1)
    story.clocks.advance(3.0)
    story.fail(GW1, attempt, 487, "Request Terminated", FailureKind.CANCELLED)
    record = story.end(EndCause.CALLER_CANCEL)
    assert (record.final_code, record.final_reason, record.hangup_by) == (487, "Request Terminated", "caller")
    assert [(a.code, a.kind, a.duration) for a in record.attempts] == [(487, "cancelled", 3.0)]


def test_callee_hangs_up() -> None:
    story = Story(Router(RoutePlan((GW1,))))
    story.route()
    story.dial(GW1)
    story.hooks.call_answered(story.call, GW1)
    story.clocks.advance(0.0004)
    record = story.end(EndCause.CALLEE_HANGUP, GW1)
    assert (record.hangup_by, record.final_code) == ("callee", 200)
    assert (record.billmsec, record.billsec) == (0, 0)  # under half a millisecond: nothing to bill


def test_billsec_counts_every_started_second() -> None:
    story = Story(Router(RoutePlan((GW1,))))
    story.route()
    story.dial(GW1)
    story.hooks.call_answered(story.call, GW1)
    story.clocks.advance(10.001)
    record = story.end(EndCause.CALLER_HANGUP, GW1)
    assert (record.billmsec, record.billsec) == (10001, 11)


def test_parallel_forks_one_answers_the_others_are_cancelled() -> None:
    story = Story(Router(RoutePlan((GW1, GW2), DialMode.PARALLEL)))
    story.route()
    a1, a2 = story.dial(GW1), story.dial(GW2)
    story.clocks.advance(0.5)
    story.hooks.call_answered(story.call, GW2)
    story.fail(GW1, a1, 487, "Request Terminated", FailureKind.CANCELLED)
    story.clocks.advance(5)
    record = story.end(EndCause.CALLER_HANGUP, GW2)
    assert [(a.attempt, a.destination, a.kind) for a in record.attempts] == [
        (a1, "sip:10.0.0.1:5060", "cancelled"), (a2, "sip:10.0.0.2:5060", "answered")]
    assert record.destination == "sip:10.0.0.2:5060"


def test_an_attempt_without_a_call_slot_is_recorded() -> None:
    story = Story(Router(RoutePlan((GW1, GW2))))
    story.route()
    first = story.dial(GW1, slot=False)  # leg_failed without leg_started, as the host does
    assert story.plan is not None
    assert story.hooks.next_target(story.call, story.plan,
                                   Failure(GW1, 503, "Out of call slots", FailureKind.ERROR, first)) is GW2
    second = story.dial(GW2)
    story.hooks.call_answered(story.call, GW2)
    record = story.end(EndCause.CALLER_HANGUP, GW2)
    assert [(a.attempt, a.code, a.kind, a.request_uri) for a in record.attempts] == [
        (1, 503, "error", "sip:4930123@10.0.0.1:5060"), (second, 200, "answered", "sip:4930123@10.0.0.2:5060")]


def test_shutdown_before_an_answer() -> None:
    story = Story(Router(RoutePlan((GW1,))))
    story.route()
    story.dial(GW1)
    record = story.end(EndCause.SHUTDOWN)
    assert (record.final_code, record.hangup_by) == (503, "b2bua")
    (attempt,) = record.attempts
    assert (attempt.code, attempt.kind) == (None, "unfinished")  # the call ended before its leg did


def test_a_target_not_from_the_dispatcher() -> None:
    story = Story(Router(RoutePlan((Target("sip:gw.example.net;transport=tcp"),))))
    story.route()
    target = story.plan.targets[0]  # type: ignore[union-attr]
    story.dial(target)
    story.hooks.call_answered(story.call, target)
    record = story.end(EndCause.CALLER_HANGUP, target)
    assert (record.setid, record.destination) == (None, "sip:gw.example.net;transport=tcp")


def test_what_the_wire_sent_is_bounded_and_stays_valid_json() -> None:
    story = Story(Router(Reject(404, "Not Found")), from_header='"' + "N" * 5000 + '" <sip:' + "u" * 5000 + "@x>")
    story.call.from_uri = "sip:" + "u" * 5000 + "@x"
    story.call.call_id = "\x01\u00e9\udcff" + "c" * 1000
    story.route()
    record = story.end(EndCause.REJECTED)
    assert (len(record.from_uri), len(record.from_user), len(record.from_name), len(record.call_id)) == (
        512, 128, 128, 255)
    line = json_lines([record])
    assert line.count("\n") == 1
    # an unpaired surrogate cannot be UTF-8: the file writes it as the JSON escape it reads back as
    data = json.loads(line.encode("utf-8", "backslashreplace"))
    assert data["call_id"].startswith("\x01\u00e9\udcff")


def test_the_setup_time_is_when_the_invite_arrived() -> None:
    story = Story(Router(Reject(404, "Not Found")), arrived_before=0.25)
    story.route()
    record = story.end(EndCause.REJECTED)
    assert record.setup_time == WALL0 - 0.25 and record.duration == 0.25
    assert iso_utc(record.end_time) == "2026-12-06T09:00:00.000Z"


def test_without_a_writer_the_record_is_only_built() -> None:
    story = Story(Router(Reject(404, "Not Found")))
    story.cdr.writer = None
    story.route()
    story.hooks.call_ended(story.call, EndCause.REJECTED, None)  # no writer (before start-up): nothing fails
    assert story.writer.records == []
