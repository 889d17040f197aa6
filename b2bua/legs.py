"""The pjsua2 adapter of a call leg: pjsua2 callbacks in, typed events out.

:class:`Leg` is a ``pj.Call`` implementing :class:`b2bua.events.CallLeg`. Its callbacks turn
pjsua2's invite states, transactions, media and DTMF into the events of
:mod:`b2bua.events` and hand them to the leg's owner (the session); its methods turn the
session's actions into pjsua2 calls. It decides nothing. Callbacks can fire synchronously
inside ``makeCall``/``hangup``, so owners are re-entrant, and no exception crosses back into
C++ (each callback catches and logs). Per callback it does as little as it can: one
``getInfo()`` per state change, nothing else for the transactions that follow a provisional.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pjsua2 as pj
from loguru import logger

from b2bua import digest, sip
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
    Provisional,
)

if TYPE_CHECKING:
    from b2bua.api import OutgoingRequest
    from b2bua.endpoint import LocalAccount
    from b2bua.legpool import LegFactory

# pjsip_inv_state values
EARLY = pj.PJSIP_INV_STATE_EARLY
CONNECTING = pj.PJSIP_INV_STATE_CONNECTING
CONFIRMED_STATE = pj.PJSIP_INV_STATE_CONFIRMED
DISCONNECTED = pj.PJSIP_INV_STATE_DISCONNECTED

_CALLING = LegState.CALLING  # read in every transaction callback of a B leg: a module global

#: pjmedia_stream_dtmf_event_flags (pjmedia/stream.h; not exported by the SWIG module)
_DTMF_IS_UPDATE = 1 << 0
_DTMF_IS_END = 1 << 1

#: every Leg whose pjsua2 side still exists (weakly), for :func:`release_remaining`
_alive: weakref.WeakSet[Leg] = weakref.WeakSet()


def release_remaining() -> int:
    """:meth:`Leg.release` every leg still referenced; returns how many there were.

    Shutdown calls this just before ``libDestroy``: a pjsua2 Call deleted after it (say, when
    the last reference to a forgotten leg goes at interpreter exit) fails an assertion in pjsua
    and aborts the process.
    """
    legs = list(_alive)
    for leg in legs:
        leg.release()
    return len(legs)


def leg_factory(account_for: Callable[[Any], LocalAccount]) -> LegFactory:
    """The leg pool's factory: a leg of the account ``account_for(profile)`` returns (the
    endpoint's, once it has started; it may raise LegError); ``pjsua_call_id`` is -1 for an
    outgoing leg. The caller's leg uses the default account (``profile`` None)."""

    def make(owner: LegOwner | None, index: int, pjsua_call_id: int, profile: Any) -> CallLeg:
        return Leg(account_for(profile), owner, index, pjsua_call_id)

    return make


class Leg(CallLeg, pj.Call):  # type: ignore[misc]
    """One call leg on a ``pj.Call``. ``index`` 0 is the caller's (A) leg; B legs count from 1."""

    def __init__(self, account: LocalAccount, owner: LegOwner | None, index: int,
                 pjsua_call_id: int = pj.PJSUA_INVALID_ID) -> None:
        pj.Call.__init__(self, account, pjsua_call_id)
        CallLeg.__init__(self, owner, index)
        _alive.add(self)
        self._got_2xx = False  #: our INVITE was answered (B): its end is a Disconnected, not a Failed
        self._account = account  #: its realms, credential name and problem log, for challenges
        self._answered: set[str] = set()  #: realms whose challenge was answered for the current request
        self._auth_problem: digest.AuthProblem | None = None  #: why a challenge ended our INVITE

    # -- pjsua2 callbacks -> events ----------------------------------------------------------

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        owner = self.owner
        if owner is None:
            return
        try:
            info = self.getInfo()
            event = self._state_event(info.state, info.lastStatusCode, info.lastReason, prm)
            if event is not None:
                owner.on_event(self, event)
        except Exception:
            logger.opt(exception=True).error("call state handler failed")

    def _state_event(self, state: int, code: int, reason: str, prm: Any) -> LegEvent | None:
        if self.index == 0:  # the caller's leg: its other states echo our own answers
            if state == DISCONNECTED:
                return Disconnected(code, reason)
            return CONFIRMED if state == CONFIRMED_STATE else None
        if state == EARLY:
            return EarlyMedia(code, reason) if code == 183 else Provisional(code, reason)
        if state == CONNECTING:
            self._got_2xx = True
            self._answered.clear()
            return Answered(code, reason, _response_headers(prm))
        if state == CONFIRMED_STATE:
            self._got_2xx = True
            return CONFIRMED
        if state == DISCONNECTED:
            if self._got_2xx:
                return Disconnected(code, reason)
            problem = self._auth_problem
            if problem is not None:  # we gave up on a challenge: say which and why
                return Failed(problem.code, sip.status_reason(problem.code), {}, problem.detail)
            # headers only for a failure the session will relay, not for one we caused
            headers = _response_headers(prm) if self.ended_by is None else {}
            return Failed(code, reason, headers)
        return None

    def on_challenge(self, prm: pj.OnAuthChallengeParam) -> None:
        """A 401/407 to a request of this leg (from the account's ``onAuthChallenge``): let pjsip
        answer it from the account's credentials once per realm, else give the request up
        (:func:`b2bua.digest.decide`)."""
        raw = prm.rdata.wholeMsg
        start, headers = sip.parse_message(raw)
        parts = start.split(" ", 2)
        code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 401
        account = self._account
        problem = digest.decide(code, digest.challenge_realms(code, headers), self._answered, account.realms,
                                account.auth_name)
        if problem is None:
            return  # not handled here: pjsip answers from the account's credentials
        if not self._got_2xx:
            self._auth_problem = problem
        if account.problems is not None:
            account.problems.report(problem, self.target.uri if self.target is not None else "a caller")
        prm.challenge.abandon()

    def onCallTsxState(self, prm: pj.OnCallTsxStateParam) -> None:
        # Only B legs waiting for their first response care: a 100 Trying stops the attempt timer.
        if self._answered and self._got_2xx:
            self._in_dialog_done(prm)
        owner = self.owner
        if self.state is not _CALLING or owner is None or self.index == 0:
            return
        try:
            tsx = prm.e.body.tsxState.tsx
            code = tsx.statusCode
            if 100 <= code < 200 and tsx.method == "INVITE":
                owner.on_event(self, Provisional(code, tsx.statusText))
        except Exception:
            logger.opt(exception=True).error("transaction handler failed")

    def _in_dialog_done(self, prm: pj.OnCallTsxStateParam) -> None:
        """A request inside the dialog got its final answer after a challenge was answered:
        the next request may be challenged (and answered) again."""
        try:
            if 200 <= prm.e.body.tsxState.tsx.statusCode < 300:
                self._answered.clear()
        except Exception:
            logger.opt(exception=True).error("transaction handler failed")

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        owner = self.owner
        if owner is None:
            return
        try:
            owner.on_event(self, MEDIA_READY)
        except Exception:
            logger.opt(exception=True).error("media handler failed")

    def onDtmfEvent(self, prm: pj.OnDtmfEventParam) -> None:
        owner = self.owner
        if owner is None:
            return
        try:
            method = DtmfMethod.RFC4733 if prm.method == pj.PJSUA_DTMF_METHOD_RFC2833 else DtmfMethod.SIP_INFO
            flags = prm.flags
            owner.on_event(self, DtmfReceived(prm.digit, prm.duration, method, prm.timestamp,
                                              bool(flags & _DTMF_IS_UPDATE), bool(flags & _DTMF_IS_END)))
        except Exception:
            logger.opt(exception=True).error("DTMF handler failed")

    # -- actions ---------------------------------------------------------------------------

    def send_invite(self, request: OutgoingRequest, call_id: str) -> None:
        prm = op(headers=tuple(request.headers))
        prm.txOption.targetUri = request.request_uri
        prm.txOption.localUri = sip.name_addr(request.from_name, request.from_uri)
        prm.opt.audioCount = 1
        prm.opt.customCallId = call_id
        try:
            self.makeCall(sip.name_addr(request.to_name, request.to_uri), prm)
        except pj.Error as exc:
            raise LegError(exc.reason, exc.info()) from None

    def respond(self, code: int, reason: str = "", headers: tuple[tuple[str, str], ...] = ()) -> None:
        try:
            self.answer(op(code, reason, headers))
        except pj.Error as exc:
            raise LegError(exc.reason, exc.info()) from None

    def end(self, code: int = 0, reason: str = "", headers: tuple[tuple[str, str], ...] = ()) -> bool:
        try:
            self.hangup(op(code, reason, headers))
        except pj.Error:
            return False  # already gone
        return True

    def connect_audio(self, other: CallLeg) -> bool:
        assert isinstance(other, Leg)
        mine, theirs = self._audio(), other._audio()
        if mine is None or theirs is None:
            return False
        try:
            mine.startTransmit(theirs)
            theirs.startTransmit(mine)
        except pj.Error as exc:
            logger.warning("cannot bridge audio: {}", exc.info())
            return False
        return True

    def _audio(self) -> pj.AudioMedia | None:
        """The leg's active audio, or None."""
        try:
            return self.getAudioMedia(-1)
        except pj.Error:
            return None

    # -- lifetime --------------------------------------------------------------------------

    def release(self) -> None:
        """Delete the pjsua2 side now, whoever still holds this object (idempotent).

        pjsua2's ``~Call`` detaches and hangs up whatever call holds the slot *now*. Left to the
        garbage collector it may run after the slot went to a new call and end that one, so the
        leg pool releases each leg on the loop pass after it ended (never inside its callback).
        If the slot already holds another call (pjsua gave it away without telling us) the small
        C++ object is leaked instead of deleted. Afterwards pjsua2 methods raise TypeError
        instead of touching freed memory.
        """
        self.owner = None
        if "this" not in self.__dict__:
            return
        _alive.discard(self)
        cid = self.getId()
        if cid >= 0 and pj.Call.lookup(cid) is not self and self.isActive():
            self.this.disown()  # another call's slot: never run ~Call on it
        else:
            pj.Call.__swig_destroy__(self)  # SWIG disowns first: Python will not delete it again
        del self.this

    def attached(self) -> bool:
        """Whether pjsua still routes this leg's call to this object.

        False once the call is gone from pjsua (its slot free or given to another call) without
        a DISCONNECTED callback, which pjsua does under overload. Cheap (a slot lookup).
        """
        if "this" not in self.__dict__:
            return False
        cid = self.getId()
        return cid >= 0 and pj.Call.lookup(cid) is self  # never look up -1: pjsua asserts


def _response_headers(prm: Any) -> dict[str, tuple[str, ...]]:
    """Headers of the response that changed a B leg's state, when pjsua received one (else none)."""
    try:
        tsx_state = prm.e.body.tsxState
        if tsx_state.type != pj.PJSIP_EVENT_RX_MSG:
            return {}  # ended by a timer or our own CANCEL: no message to read
        raw = tsx_state.src.rdata.wholeMsg
    except Exception:
        return {}
    if not raw:
        return {}
    return sip.parse_message(raw)[1]


def op(code: int = 0, reason: str = "", headers: tuple[tuple[str, str], ...] = ()) -> pj.CallOpParam:
    """A CallOpParam with a status code, reason and extra headers.

    No video or T.140 text stream, offered or answered: only audio can be bridged.
    """
    prm = pj.CallOpParam(True)
    prm.opt.videoCount = 0
    prm.opt.textCount = 0
    if code:
        prm.statusCode = code
    if reason:
        prm.reason = reason
    if headers:
        prm.txOption.headers = header_vector(headers)
    return prm


def header_vector(headers: tuple[tuple[str, str], ...] | list[tuple[str, str]]) -> pj.SipHeaderVector:
    hv = pj.SipHeaderVector()
    for name, value in headers:
        h = pj.SipHeader()
        h.hName = name
        h.hValue = value
        hv.append(h)
    return hv
