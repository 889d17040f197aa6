"""One call's record, built from the hook calls that concern it (pure: no I/O, clocks passed in).

A :class:`CallTrail` lives in ``call.stash`` while the call runs; each hook feeds it (attempt
prepared, started, failed or answered; a decision's final answer) and ``b2bua_call_ended`` turns
it into a frozen :class:`CallRecord`, the row written to the JSON-lines file and the SQL tables.
Times are wall-clock Unix seconds (``time.time()``) for the instants and monotonic differences
for the durations, so a clock step never makes a negative duration.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from b2bua.api import CallInfo, EndCause, Failure, OutgoingRequest, Reject, Target
from b2bua.sipuri import parse_name_addr, parse_uri_lenient

#: the key under which the dispatcher plugin describes a target it made (``setid``, ``uri``)
DISPATCHER_DATA = "dispatcher"

#: longest text kept per field (characters): bounded whatever the wire sent, equal to the SQL columns
URI_MAX = 512
NAME_MAX = 128
CALL_ID_MAX = 255
REASON_MAX = 128
#: longest ``[plugins.cdr] node``: checked at configure time (never clipped: two nodes must not merge)
NODE_MAX = 64

#: ``kind`` of the attempt that answered (the others keep their ``FailureKind`` value)
ANSWERED = "answered"
#: ``kind`` of an attempt with no outcome when the call ended (pjsua lost the leg, say)
UNFINISHED = "unfinished"

#: who ended the call, by end cause: the caller (BYE or CANCEL), the answering gateway (BYE),
#: or the B2BUA itself (a refusal, every attempt failed, shutdown, an error)
HANGUP_BY = {
    EndCause.CALLER_HANGUP: "caller",
    EndCause.CALLER_CANCEL: "caller",
    EndCause.CALLEE_HANGUP: "callee",
}
B2BUA = "b2bua"

#: the caller's final answer to an unanswered call that ended so: what the host sends then
_IMPLIED_FINAL = {
    EndCause.CALLER_CANCEL: (487, "Request Terminated"),
    EndCause.SHUTDOWN: (503, "Service Unavailable"),
}


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters."""
    return text if len(text) <= limit else text[:limit]


def iso_utc(seconds: float) -> str:
    """Unix seconds as ISO 8601 UTC with milliseconds: ``2026-12-06T09:20:19.482Z``."""
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def destination_of(target: Target) -> tuple[int | None, str]:
    """``(setid, uri)`` of a target: the dispatcher's destination when it made the target."""
    info = target.data.get(DISPATCHER_DATA) if isinstance(target.data, Mapping) else None
    if isinstance(info, Mapping):
        setid = info.get("setid")
        uri = info.get("uri")
        return (setid if isinstance(setid, int) and not isinstance(setid, bool) else None,
                uri if isinstance(uri, str) and uri else target.uri)
    return None, target.uri


@dataclass(frozen=True, slots=True)
class Attempt:
    """One B leg: where it went and how it ended."""

    attempt: int  #: 1 for the call's first attempt, 2 for the next ...
    setid: int | None  #: the dispatcher set the destination belongs to (None: not the dispatcher's)
    destination: str  #: the destination (gateway) URI
    request_uri: str  #: the B leg's Request-URI ("" when no INVITE was prepared)
    start_time: float  #: wall clock, Unix seconds
    duration: float  #: seconds from the INVITE to the answer or the failure
    code: int | None  #: the final status (200 when answered; None when unfinished)
    reason: str
    kind: str  #: "answered", a FailureKind value (response, no-response, cancelled ...) or "unfinished"

    def fields(self, moment: Callable[[float], Any]) -> dict[str, Any]:
        """The attempt's fields, times as ``moment`` writes them, durations to the millisecond."""
        return {
            "attempt": self.attempt, "setid": self.setid, "destination": self.destination,
            "request_uri": self.request_uri, "start_time": moment(self.start_time),
            "duration": round(self.duration, 3), "code": self.code, "reason": self.reason, "kind": self.kind,
        }


@dataclass(frozen=True, slots=True)
class CallRecord:
    """Everything recorded about one call (see ``docs/cdr.md`` for each field)."""

    cdr_id: str
    node: str
    call_id: str
    from_uri: str
    from_user: str
    from_name: str
    to_uri: str
    request_uri: str
    callee: str
    source_ip: str
    source_port: int
    transport: str
    setup_time: float
    answer_time: float | None
    end_time: float
    duration: float
    answer_delay: float | None
    billsec: int
    billmsec: int
    final_code: int
    final_reason: str
    end_cause: str
    hangup_by: str
    setid: int | None
    destination: str | None
    attempts: tuple[Attempt, ...]

    def fields(self, moment: Callable[[float], Any]) -> dict[str, Any]:
        """The call's fields but its attempts, times as ``moment`` writes them (None stays None),
        durations to the millisecond: what the file and the SQL row share."""
        return {
            "cdr_id": self.cdr_id, "node": self.node, "call_id": self.call_id,
            "from_uri": self.from_uri, "from_user": self.from_user, "from_name": self.from_name,
            "to_uri": self.to_uri, "request_uri": self.request_uri, "callee": self.callee,
            "source_ip": self.source_ip, "source_port": self.source_port, "transport": self.transport,
            "setup_time": moment(self.setup_time),
            "answer_time": moment(self.answer_time) if self.answer_time is not None else None,
            "end_time": moment(self.end_time),
            "duration": round(self.duration, 3),
            "answer_delay": round(self.answer_delay, 3) if self.answer_delay is not None else None,
            "billsec": self.billsec, "billmsec": self.billmsec,
            "final_code": self.final_code, "final_reason": self.final_reason,
            "end_cause": self.end_cause, "hangup_by": self.hangup_by,
            "setid": self.setid, "destination": self.destination,
        }

    def to_json(self) -> dict[str, Any]:
        """The record as the JSON-lines file has it (times as ISO 8601 UTC)."""
        return {**self.fields(iso_utc), "attempts": [a.fields(iso_utc) for a in self.attempts]}


@dataclass(slots=True)
class _OpenAttempt:
    attempt: int
    target: Target
    request_uri: str
    start_wall: float
    start_mono: float
    outcome: tuple[float, int, str, str] | None = None  # (monotonic end, code, reason, kind)


@dataclass(slots=True)
class CallTrail:
    """What the hooks said about one call so far (kept in ``call.stash`` until it ends).

    :param setup_wall: wall-clock time the INVITE arrived (``call.started`` on the wall clock).
    """

    setup_wall: float
    attempts: list[_OpenAttempt] = field(default_factory=list)
    prepared: int = 0  #: attempts prepared so far (the host numbers attempts in this order)
    request: OutgoingRequest | None = None  #: the INVITE of the attempt about to start
    answer_mono: float | None = None
    final: tuple[int, str] | None = None  #: the last Reject a decision hook returned

    @classmethod
    def begin(cls, call: CallInfo, wall: float, mono: float) -> CallTrail:
        """A trail for ``call``, seen first at ``wall``/``mono`` (its INVITE came ``mono - call.started`` ago)."""
        return cls(setup_wall=wall - max(0.0, mono - call.started))

    def prepared_request(self, request: OutgoingRequest) -> None:
        """``b2bua_prepare_target``: the next attempt's INVITE (read again when it starts)."""
        self.prepared += 1
        self.request = request

    def started(self, target: Target, wall: float, mono: float) -> None:
        """``b2bua_leg_started``: the attempt prepared last goes out to ``target``."""
        request_uri = self.request.request_uri if self.request is not None else ""
        self.request = None
        self.attempts.append(_OpenAttempt(self.prepared or len(self.attempts) + 1, target, request_uri, wall, mono))

    def failed(self, failure: Failure, wall: float, mono: float) -> None:
        """``b2bua_leg_failed``: attempt ``failure.attempt`` is over (one that never started: added)."""
        open_attempt = self._find(failure.attempt, failure.target)
        if open_attempt is None:  # no call slot: it failed before it started
            request_uri = self.request.request_uri if self.request is not None else ""
            self.request = None
            open_attempt = _OpenAttempt(failure.attempt, failure.target, request_uri, wall, mono)
            self.attempts.append(open_attempt)
        open_attempt.outcome = (mono, failure.code, failure.reason, failure.kind.value)

    def answered(self, target: Target, mono: float) -> None:
        """``b2bua_call_answered``: the latest open attempt to ``target`` answered."""
        self.answer_mono = mono
        for open_attempt in reversed(self.attempts):
            if open_attempt.target is target and open_attempt.outcome is None:
                open_attempt.outcome = (mono, 200, "OK", ANSWERED)
                return

    def decided(self, result: object) -> None:
        """A decision hook's result: a Reject is (so far) the caller's final answer."""
        if isinstance(result, Reject):
            self.final = (result.code, result.reason)

    def _find(self, number: int, target: Target) -> _OpenAttempt | None:
        for open_attempt in self.attempts:
            if open_attempt.attempt == number and open_attempt.outcome is None:
                return open_attempt
        for open_attempt in reversed(self.attempts):  # numbered differently: match the target
            if open_attempt.target is target and open_attempt.outcome is None:
                return open_attempt
        return None

    def finish(self, call: CallInfo, cause: EndCause, *, wall: float, mono: float, cdr_id: str,
               node: str) -> CallRecord:
        """``b2bua_call_ended``: the call's record."""
        answer_mono = self.answer_mono
        attempts = tuple(self._attempt(a, mono) for a in self.attempts)
        final_code, final_reason = self._final(cause, attempts, answer_mono is not None)
        billmsec = 0
        answer_delay: float | None = None
        answer_time: float | None = None
        if answer_mono is not None:
            billmsec = max(0, round((mono - answer_mono) * 1000))
            answer_delay = max(0.0, answer_mono - call.started)
            answer_time = self.setup_wall + answer_delay
        duration = max(0.0, mono - call.started)
        last = next((a for a in attempts if a.kind == ANSWERED), attempts[-1] if attempts else None)
        from_header = parse_name_addr(call.from_header) if call.from_header else None
        return CallRecord(
            cdr_id=cdr_id,
            node=node,
            call_id=clip(call.call_id, CALL_ID_MAX),
            from_uri=clip(call.from_uri, URI_MAX),
            from_user=clip(parse_uri_lenient(call.from_uri).user, NAME_MAX),
            from_name=clip(from_header.display if from_header else "", NAME_MAX),
            to_uri=clip(call.to_uri, URI_MAX),
            request_uri=clip(call.request_uri, URI_MAX),
            callee=clip(parse_uri_lenient(call.request_uri).user, NAME_MAX),
            source_ip=clip(call.source_ip, 64),
            source_port=call.source_port,
            transport=clip(call.transport, 8),
            setup_time=self.setup_wall,
            answer_time=answer_time,
            end_time=self.setup_wall + duration,
            duration=duration,
            answer_delay=answer_delay,
            billsec=math.ceil(billmsec / 1000),
            billmsec=billmsec,
            final_code=final_code,
            final_reason=clip(final_reason, REASON_MAX),
            end_cause=cause.value,
            hangup_by=HANGUP_BY.get(cause, B2BUA),
            setid=last.setid if last else None,
            destination=last.destination if last else None,
            attempts=attempts,
        )

    def _final(self, cause: EndCause, attempts: tuple[Attempt, ...], answered: bool) -> tuple[int, str]:
        """The caller's final response: 200 once answered; 487 after a CANCEL and 503 at shutdown
        (what the host sends); else the last Reject a decision hook returned; else the last
        attempt's failure; else 500."""
        if answered:
            return 200, "OK"
        if cause in _IMPLIED_FINAL:
            return _IMPLIED_FINAL[cause]
        if self.final is not None:
            return self.final
        failed = [(a.code, a.reason) for a in attempts if a.code is not None and 300 <= a.code <= 699]
        if failed and cause is not EndCause.ERROR:
            return failed[-1]
        return 500, "Internal Server Error"

    @staticmethod
    def _attempt(open_attempt: _OpenAttempt, mono: float) -> Attempt:
        setid, destination = destination_of(open_attempt.target)
        if open_attempt.outcome is None:
            end, code, reason, kind = mono, None, "", UNFINISHED
        else:
            end, code, reason, kind = open_attempt.outcome
        return Attempt(
            attempt=open_attempt.attempt,
            setid=setid,
            destination=clip(destination, URI_MAX),
            request_uri=clip(open_attempt.request_uri, URI_MAX),
            start_time=open_attempt.start_wall,
            duration=max(0.0, end - open_attempt.start_mono),
            code=code,
            reason=clip(reason, REASON_MAX),
            kind=kind,
        )
