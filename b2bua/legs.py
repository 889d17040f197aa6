"""The pjsua2 adapter of a call leg: pjsua2 callbacks in, typed events out.

:class:`Leg` is a ``pj.Call`` implementing :class:`b2bua.events.CallLeg`. Its callbacks turn
pjsua2's invite states, transactions, media and DTMF into the events of
:mod:`b2bua.events` and hand them to the leg's owner (the session); its methods turn the
session's actions into pjsua2 calls. It decides nothing. Callbacks can fire synchronously
inside ``makeCall``/``hangup``, so owners are re-entrant, and no exception crosses back into
C++ (each callback catches and logs). Per callback it does as little as it can, and pjsua2 as
``scripts/build-pjsua2.sh`` builds it (patch 0007) does the rest in C++: it reports a state
change with its state, status code and reason in the parameter (no ``getInfo()``), and only
the ones read here: the leg we answered when CONFIRMED or DISCONNECTED, the leg we placed from
EARLY on; not its SIP event, but the message received where one is read (patch 0025): the
leg we placed's provisional, answer and end, the caller's BYE with a Reason. It
reports no transaction of a BYE, of the INVITE we answered, nor of a request of ours before its
first response, and of the INVITE that sets up a leg we placed only its first provisional
(patches 0014, 0024). Nothing else is read for the transactions that follow a provisional (a talking
leg looks at its in-dialog requests: INFO digits, the answer to its own re-INVITE). Media
counters and stream details are read only when asked (:meth:`Leg.media_stats`).
"""

from __future__ import annotations

import ctypes
import functools
import weakref
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import pjsua2 as pj
from loguru import logger

from b2bua import digest, sip
from b2bua.admission import NOT_ALLOWED
from b2bua.bridge import info_dtmf_digit
from b2bua.endpoint import check_overrides
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
from b2bua.sdp import active_streams, audio_direction, replaces_audio

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
#: states in which a leg's in-dialog requests matter (INFO digits, our re-INVITE's answer)
_TALKING = (LegState.ANSWERED, LegState.CONFIRMED)
#: no headers (shared: never written)
_NO_HEADERS: Mapping[str, tuple[str, ...]] = MappingProxyType({})
#: methods inside a call that pjsua's usages or this module answer (REFER: the early filter, 603)
_TAKEN_IN_DIALOG = frozenset({*sip.ALLOWED_METHODS, "REFER"})

#: pjmedia_stream_dtmf_event_flags (pjmedia/stream.h; not exported by the SWIG module)
_DTMF_IS_UPDATE = 1 << 0
_DTMF_IS_END = 1 << 1

#: pjmedia_dir <-> SDP direction, from our side
_DIRECTION = {
    pj.PJMEDIA_DIR_ENCODING_DECODING: MediaDirection.SENDRECV, pj.PJMEDIA_DIR_ENCODING: MediaDirection.SENDONLY,
    pj.PJMEDIA_DIR_DECODING: MediaDirection.RECVONLY, pj.PJMEDIA_DIR_NONE: MediaDirection.INACTIVE,
}
_PJ_DIRECTION = {d: pj_dir for pj_dir, d in _DIRECTION.items()}
#: the rate of the in-band DTMF generator (pjsua2 does not tell the bridge's own rate)
TONE_CLOCK_RATE = 8000
#: in-band digits queued toward a leg at most (pjmedia's tone generator holds 32: PJMEDIA_TONEGEN_MAX_DIGITS)
TONES_QUEUED_MAX = 30
#: tone generators alive at once, process-wide: each takes a conference port from the bridge's
#: 16 spare ones (b2bua.endpoint sizes it one port per call leg); past the spare ones a generator
#: would take the port a new call's leg needs, and that call would have no audio
TONE_GENERATORS_MAX = 12
#: INFO bodies the adapter writes for a digit, by method
_INFO_TYPES = {DtmfMethod.SIP_INFO: "application/dtmf-relay", DtmfMethod.SIP_INFO_DTMF: "application/dtmf"}

#: every Leg whose pjsua2 side still exists (weakly), for :func:`release_remaining`
_alive: weakref.WeakSet[Leg] = weakref.WeakSet()
#: tone generators alive now (see TONE_GENERATORS_MAX); loop thread only
_tone_generators = 0


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
        #: the 2xx to our INVITE, reported once pjsua took its SDP answer (B): see _state_event
        self._answer: Answered | None = None
        self._media_seen = False  #: pjsua reported this leg's media at least once (B)
        self._redirect: Failed | None = None  #: a 3xx to our INVITE: how the attempt failed (B)
        self._account = account  #: its realms, credential name and problem log, for challenges
        self._answered: set[str] = set()  #: realms whose challenge was answered for the current request
        self._auth_problem: digest.AuthProblem | None = None  #: why a challenge ended our INVITE
        self._reinviting = False  #: we sent a re-INVITE (set_direction): its failure is reported
        self._sending = False  #: inside makeCall (pjsua reports a send failure synchronously)
        self._tones: pj.ToneGenerator | None = None  #: in-band DTMF toward this leg, made when first needed
        self._tones_queued = 0  #: digits queued on ``_tones`` since it was last idle
        #: the Reason of the caller's CANCEL (A): it crosses to the CANCELs of the B legs
        self._cancel_headers: Mapping[str, tuple[str, ...]] = _NO_HEADERS

    # -- pjsua2 callbacks -> events ----------------------------------------------------------

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        owner = self.owner
        if owner is None:
            return
        try:
            state = prm.state
            if state == CONFIRMED_STATE and self._answer is not None and self._media_seen:
                self._report_answer(owner)  # a 2xx whose SDP changed nothing (the 18x's answer stands)
                owner = self.owner
                if owner is None:
                    return
            event = self._state_event(state, prm.lastStatusCode, prm.lastReason, prm)
            if event is not None:
                owner.on_event(self, event)
        except Exception:
            logger.opt(exception=True).error("call state handler failed")

    def _report_answer(self, owner: LegOwner) -> None:
        answer = self._answer
        self._answer = None
        if answer is not None:
            owner.on_event(self, answer)

    def _state_event(self, state: int, code: int, reason: str, prm: Any) -> LegEvent | None:
        if self.index == 0:  # the caller's leg: its other states echo our own answers
            if state == DISCONNECTED:
                # pjsua2 passes the message only for the caller's BYE with a Reason (patches 0018, 0025)
                raw = prm.b2buaRxMsg
                return Disconnected(code, reason, _request_headers(raw, "BYE") if raw else self._cancel_headers)
            return CONFIRMED if state == CONFIRMED_STATE else None
        if state == EARLY:  # pjsua2 passes the provisional response received (patch 0025)
            early = sip.MessageHeaders(prm.b2buaRxMsg)
            return EarlyMedia(code, reason, early) if code == 183 else Provisional(code, reason, early)
        if state == CONNECTING:
            # Not reported yet: pjsip sets CONNECTING before it looks at the 2xx's SDP. A 2xx
            # without a usable answer (no SDP, no codec in common) is ACKed and ended with a BYE
            # by pjsip, and answering the caller now would give it a 200 and a BYE at once (an
            # answered call of 0 s, no failover). The answer is reported when pjsua starts the
            # leg's media (onCallMediaState), or at CONFIRMED when the 2xx kept the media an 18x
            # set up; a leg that never got media ends as a failed attempt (488) instead.
            self._got_2xx = True
            self._answered.clear()
            self._answer = Answered(code, reason, sip.MessageHeaders(prm.b2buaRxMsg))
            return None
        if state == CONFIRMED_STATE:
            if self._answer is not None:  # no media: pjsua refused the 2xx's SDP and sent BYE
                return None
            self._got_2xx = True
            return CONFIRMED
        if state == DISCONNECTED:
            if self._answer is not None:
                self._answer = None
                return Failed(488, "Not Acceptable Here", {},
                              f"its 200 OK had no usable SDP answer: {code} {reason}")
            if self._got_2xx:  # the gateway's BYE (not one of ours): its Reason may cross
                bye = _request_headers(prm.b2buaRxMsg, "BYE") if self.ended_by is None else {}
                return Disconnected(code, reason, bye)
            if self._sending:  # inside makeCall: pjsip could not send it (too long, no transport)
                return Failed(code, reason, {}, f"the INVITE was not sent: {code} {reason}", local=True)
            if self._redirect is not None and self.ended_by is None:
                return self._redirect  # pjsip says 487, as if we had cancelled it
            problem = self._auth_problem
            if problem is not None:  # we gave up on a challenge: say which and why
                return Failed(problem.code, sip.status_reason(problem.code), {}, problem.detail)
            # headers only for a failure the session will relay, not for one we caused
            headers = _response_headers(prm.b2buaRxMsg) if self.ended_by is None else {}
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

    def onCallRedirected(self, prm: pj.OnCallRedirectedParam) -> int:
        # A 3xx to our INVITE. Not followed: its Contact is no destination the routing chose (and
        # could be any number). pjsip then ends the leg as "487 Request Terminated", as if we had
        # cancelled it, which a caller (or a Kamailio in front) takes for its own CANCEL; the
        # attempt fails with the 3xx instead (its Contact never crosses; failover_codes may list it).
        try:
            raw = _response_message(prm)
            start, headers = sip.parse_message(raw) if raw else ("", {})
            parts = start.split(" ", 2)
            code = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            if 300 <= code < 400:
                reason = parts[2].strip() if len(parts) > 2 else ""
                self._redirect = Failed(code, reason or sip.status_reason(code), headers,
                                        f"redirected to {sip.printable(prm.targetUri, 80)}, not followed")
        except Exception:
            logger.opt(exception=True).error("redirect handler failed")
        return int(pj.PJSIP_REDIRECT_STOP)

    def onCallReplaceRequest(self, prm: pj.OnCallReplaceRequestParam) -> None:
        # An INVITE with Replaces naming this leg's dialog: pjsua would answer the new call
        # itself (no route, an orphan holding a slot and RTP ports) and hang this leg up. Not
        # ours to accept: 603, as for a REFER. The early filter refuses it before pjsua sees it;
        # this is the net (early_filter = false). Never a code under 200: pjsua asserts on it.
        try:
            prm.statusCode = 603
            prm.reason = "Decline"
            call = getattr(self.owner, "call", None)  # a Session's CallInfo
            logger.bind(call_id=getattr(call, "call_id", "-")).info(
                "refused: 603 Decline: an INVITE with Replaces naming leg {} of this call", self.index)
        except Exception:
            logger.opt(exception=True).error("replace-request handler failed")

    def onCallTsxState(self, prm: pj.OnCallTsxStateParam) -> None:
        # B legs waiting for their first response: a 100 Trying stops the attempt timer. Talking
        # legs: an INFO with a digit, the answer to our own re-INVITE. Nothing else is read.
        if self._answered and self._got_2xx:
            self._in_dialog_done(prm)
        owner = self.owner
        if owner is None:
            return
        state = self.state
        try:
            if state is _CALLING:
                if self.index:
                    tsx = prm.e.body.tsxState.tsx
                    code = tsx.statusCode
                    if 100 <= code < 200 and tsx.method == "INVITE":
                        owner.on_event(self, Provisional(code, tsx.statusText))
            elif state in _TALKING or self._reinviting:
                self._talking_tsx(owner, prm.e.body.tsxState)
            elif not self.index:
                self._caller_cancel(prm)
        except Exception:
            logger.opt(exception=True).error("transaction handler failed")

    def _caller_cancel(self, prm: Any) -> None:
        # pjsip reports a CANCEL's transaction before it answers the INVITE 487 and ends the
        # leg (sip_inv.c calls on_tsx_state_changed first for a request received), so its
        # Reason (RFC 3326: a forking proxy's "Call completed elsewhere") is at hand when the
        # leg's DISCONNECTED comes; Kamailio's tm copies it to the CANCELs it sends the same way
        tsx = prm.e.body.tsxState.tsx
        if tsx.method == "CANCEL" and tsx.role == pj.PJSIP_ROLE_UAS:
            reason = _request_headers(_response_message(prm), "CANCEL").get("reason")
            if reason:
                self._cancel_headers = {"reason": reason}

    def _talking_tsx(self, owner: LegOwner, tsx_state: Any) -> None:
        tsx = tsx_state.tsx
        method = tsx.method
        if method == "INFO":
            if tsx.role == pj.PJSIP_ROLE_UAS and tsx.state == pj.PJSIP_TSX_STATE_TRYING \
                    and tsx_state.type == pj.PJSIP_EVENT_RX_MSG:
                self._rx_info(owner, tsx_state.src.rdata)
        elif method == "OPTIONS":
            # an SBC's or carrier's keepalive inside the call (RFC 3261 11.2): pjsip's dialog
            # layer would answer 500 "Unhandled by dialog usages", which some take for a dead call
            if tsx.role == pj.PJSIP_ROLE_UAS and tsx.state == pj.PJSIP_TSX_STATE_TRYING \
                    and tsx_state.type == pj.PJSIP_EVENT_RX_MSG:
                respond_in_dialog(tsx_state.src.rdata, 200)
        elif method == "INVITE" and self._reinviting and tsx.role == pj.PJSIP_ROLE_UAC:
            code = tsx.statusCode
            if code >= 200:
                self._reinviting = False
                if code >= 300:
                    owner.on_event(self, OfferFailed(code, tsx.statusText))
        elif method not in _TAKEN_IN_DIALOG and tsx.role == pj.PJSIP_ROLE_UAS \
                and tsx.state == pj.PJSIP_TSX_STATE_TRYING and tsx_state.type == pj.PJSIP_EVENT_RX_MSG:
            # a NOTIFY (a Cisco's DTMF, an unsolicited event), MESSAGE, SUBSCRIBE ... inside the
            # call: what no usage of ours takes is 405 (pjsip adds Allow) or, unknown, 501;
            # pjsip's dialog layer would answer 500 "Unhandled by dialog usages"
            respond_in_dialog(tsx_state.src.rdata, 405 if method in NOT_ALLOWED else 501)

    def _rx_info(self, owner: LegOwner, rdata: Any) -> None:
        """An INFO from the peer. application/dtmf-relay is pjsua's (it answers and reports the
        digit through onDtmfEvent, after this callback); application/dtmf is ours: answered here
        (pjsip would answer 500) and reported. An INFO without a body (a keepalive) gets 200, one
        of any other type 415 (RFC 6086 legacy INFO): pjsip's dialog layer would answer both 500."""
        raw = rdata.wholeMsg
        head, _, body = raw.partition("\r\n\r\n")
        ctype = sip.parse_message(head)[1].get("content-type", ("",))[0]
        kind = ctype.split(";", 1)[0].strip().lower()
        if kind == "application/dtmf-relay":
            return
        if kind != "application/dtmf":
            respond_in_dialog(rdata, 415 if body.strip() or kind else 200)
            return
        digit = info_dtmf_digit(body)
        respond_in_dialog(rdata, 200 if digit else 400)
        if digit:
            owner.on_event(self, DtmfReceived(digit, 0, DtmfMethod.SIP_INFO_DTMF, end=True))

    def onCallRxOffer(self, prm: pj.OnCallRxOfferParam) -> None:
        # a re-INVITE or UPDATE with an offer: which direction the peer asks for (hold, resume)
        owner = self.owner
        if owner is None:
            return
        try:
            sdp = prm.offer.wholeSdp
            if replaces_audio(sdp):
                # T.38 fax (m=image) or video without audio: refused (pjsua would refuse it too, the
                # peer goes on with the audio it has, a fax as G.711), never relayed as a hold
                prm.statusCode = pj.PJSIP_SC_NOT_ACCEPTABLE_HERE
                call = getattr(owner, "call", None)  # a Session's CallInfo
                logger.bind(call_id=getattr(call, "call_id", "-")).info(
                    "leg {} offers {} without audio (T.38 fax?): refused 488, the call keeps its audio",
                    self.index, ", ".join(active_streams(sdp)))
                return
            owner.on_event(self, RemoteOffer(audio_direction(sdp)))
        except Exception:
            logger.opt(exception=True).error("offer handler failed")

    def _in_dialog_done(self, prm: pj.OnCallTsxStateParam) -> None:
        """A request inside the dialog got its final answer after a challenge was answered:
        the next request may be challenged (and answered) again."""
        try:
            if 200 <= prm.e.body.tsxState.tsx.statusCode < 300:
                self._answered.clear()
        except Exception:
            logger.opt(exception=True).error("transaction handler failed")

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        self._media_seen = True
        owner = self.owner
        if owner is None:
            return
        try:
            if self._answer is not None:  # the 2xx's SDP answer is taken: the answer first
                self._report_answer(owner)
                owner = self.owner
                if owner is None:
                    return
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
        # pjsua replaces the Max-Forwards it writes with one given among the headers
        prm = op(headers=(*request.headers, ("Max-Forwards", str(request.max_forwards))))
        tx, opt = prm.txOption, prm.opt  # each attribute read makes a new SWIG proxy
        tx.targetUri = request.request_uri
        tx.localUri = sip.name_addr(request.from_name, request.from_uri)
        if request.next_hop:
            tx.nextHop = request.next_hop  # our pjsua2 patch 0005: sent there, R-URI kept
        opt.audioCount = 1
        opt.customCallId = call_id
        self._sending = True  # a DISCONNECTED before makeCall returns is ours, not the gateway's
        try:
            self.makeCall(sip.name_addr(request.to_name, request.to_uri), prm)
        except pj.Error as exc:
            raise LegError(exc.reason, exc.info()) from None
        finally:
            self._sending = False

    def respond(self, code: int, reason: str = "", headers: tuple[tuple[str, str], ...] = ()) -> None:
        prm, marked = _ANSWERS.take(code, reason, headers)
        try:
            self.answer(prm)
        except pj.Error as exc:
            raise LegError(exc.reason, exc.info()) from None
        finally:
            _ANSWERS.give(prm, marked)

    def end(self, code: int = 0, reason: str = "", headers: tuple[tuple[str, str], ...] = ()) -> bool:
        prm, marked = _ANSWERS.take(code, reason, headers)
        try:
            self.hangup(prm)
        except pj.Error:
            return False  # already gone
        finally:
            _ANSWERS.give(prm, marked)
        return True

    # The conference is wired through pjsua's C functions: pjsua2's AudioMedia lookups raise (and
    # log an ERROR each time) for a leg whose stream is gone or held inactive, an everyday case.

    def connect_audio(self, other: CallLeg) -> bool:
        assert isinstance(other, Leg)
        lib = _pjsip()
        mine, theirs = self.audio_port(), other.audio_port()
        if mine < 0 or theirs < 0:
            return False
        status = lib.pjsua_conf_connect(mine, theirs) or lib.pjsua_conf_connect(theirs, mine)
        if status:
            logger.warning("cannot bridge audio: pjsua_conf_connect {} <-> {} failed ({})", mine, theirs, status)
            return False
        return True

    def disconnect_audio(self, other: CallLeg) -> None:
        assert isinstance(other, Leg)
        mine, theirs = self.audio_port(), other.audio_port()
        if mine >= 0 and theirs >= 0:
            lib = _pjsip()
            lib.pjsua_conf_disconnect(mine, theirs)  # whatever of it is still there
            lib.pjsua_conf_disconnect(theirs, mine)

    def audio_port(self) -> int:
        cid = self.getId() if "this" in self.__dict__ else -1
        return int(_pjsip().pjsua_call_get_conf_port(cid)) if cid >= 0 else -1  # pjsua asserts on -1

    def hears(self, other: CallLeg) -> bool | None:
        assert isinstance(other, Leg)
        mine, theirs = self.audio_port(), other.audio_port()
        if mine < 0 or theirs < 0:
            return None
        try:  # what the bridge's clock has applied: pjmedia >= 2.14 queues connects for its next tick
            info = pj.AudioMedia.getPortInfoFromId(theirs)
        except pj.Error:
            return None
        return mine in info.listeners  # info held: SWIG's .listeners points into it

    def _media_index(self, *, stream: bool) -> int:
        """The index of the leg's audio in its SDP, -1 without one; with ``stream``, only when
        it has a stream now (held ``inactive`` it has none)."""
        info = self.getInfo()  # held: its media vector lives as long as it does
        for media in info.media:
            if media.type == pj.PJMEDIA_TYPE_AUDIO and (media.audioConfSlot >= 0 or not stream):
                return int(media.index)
        return -1

    def telephone_event(self) -> bool:
        index = self._media_index(stream=True)
        if index < 0:
            return False
        try:
            info = self.getStreamInfo(index)
        except pj.Error:
            return False
        return info.audTxEventPt > 0 and bool(info.dir & pj.PJMEDIA_DIR_ENCODING)

    def send_dtmf(self, digit: str, duration_ms: int, method: DtmfMethod) -> None:
        try:
            if method is DtmfMethod.RFC4733:
                prm = pj.CallSendDtmfParam()
                prm.digits = digit
                prm.duration = duration_ms
                prm.method = pj.PJSUA_DTMF_METHOD_RFC2833
                self.sendDtmf(prm)
            elif method is DtmfMethod.INBAND:
                self._play_tones(digit, duration_ms)
            else:
                req = pj.CallSendRequestParam()
                req.method = "INFO"
                req.txOption.contentType = _INFO_TYPES[method]
                req.txOption.msgBody = (f"Signal={digit}\r\nDuration={duration_ms}\r\n"
                                        if method is DtmfMethod.SIP_INFO else f"{digit}\r\n")
                self.sendRequest(req)
        except pj.Error as exc:
            raise LegError(exc.reason, exc.info()) from None

    def _play_tones(self, digit: str, duration_ms: int) -> None:
        global _tone_generators
        lib = _pjsip()
        slot = lib.pjsua_call_get_conf_port(self.getId())
        if slot < 0:
            raise LegError("no audio stream")
        if self._tones is None:
            if _tone_generators >= TONE_GENERATORS_MAX:
                raise LegError(f"all {TONE_GENERATORS_MAX} in-band DTMF generators are playing for other calls")
            tones = pj.ToneGenerator()
            # DTMF tones need no more than 8 kHz; the conference bridge resamples to its own rate
            tones.createToneGenerator(TONE_CLOCK_RATE, 1)
            self._tones = tones
            _tone_generators += 1
        if not self._tones.isBusy():
            self._tones_queued = 0  # pjmedia empties its queue once every queued tone has played
        if self._tones_queued >= TONES_QUEUED_MAX:
            # pjmedia_tonegen_play_digits asserts (aborting the process) past 32 queued digits
            raise LegError(f"{TONES_QUEUED_MAX} in-band digits are still playing")
        tone = pj.ToneDigit()
        tone.digit = digit
        tone.on_msec = duration_ms
        tone.off_msec = 50  # the gap before a next digit (RFC 4733's 40 ms at least)
        tone.volume = 0  # pjmedia's default level
        digits = pj.ToneDigitVector()
        digits.append(tone)
        lib.pjsua_conf_connect(self._tones.getPortId(), slot)  # again after a renegotiation: harmless
        self._tones.playDigits(digits, False)
        self._tones_queued += 1

    def release_tones(self) -> bool:
        global _tone_generators
        tones = self._tones
        if tones is None:
            return True
        if tones.isBusy():
            return False
        self._tones = None  # pjsua2's ~ToneGenerator takes its port off the bridge
        _tone_generators -= 1
        return True

    def set_direction(self, direction: MediaDirection) -> None:
        index = self._media_index(stream=False)
        prm = op()
        prm.opt.flag = pj.PJSUA_CALL_SET_MEDIA_DIR
        dirs = pj.IntVector()
        for i in range(max(index, 0) + 1):  # the media before the audio keep the default
            dirs.append(_PJ_DIRECTION[direction] if i == max(index, 0) else pj.PJMEDIA_DIR_ENCODING_DECODING)
        prm.opt.mediaDir = dirs
        try:
            self.reinvite(prm)
        except pj.Error as exc:
            raise LegError(exc.reason, exc.info()) from None
        self._reinviting = True

    def media_stats(self) -> MediaStats | None:
        index = self._media_index(stream=True)
        if index < 0:
            return None
        try:
            info = self.getStreamInfo(index)
            stat = self.getStreamStat(index)
            transport = self.getMedTransportInfo(index)
        except pj.Error:
            return None
        rx = stat.rtcp.rxStat
        source = transport.srcRtpName
        return MediaStats(
            codec=f"{info.codecName}/{info.codecClockRate}",
            direction=_DIRECTION.get(info.dir, MediaDirection.INACTIVE),
            rx_packets=rx.pkt, tx_packets=stat.rtcp.txStat.pkt, rx_lost=rx.loss, rx_discarded=rx.discard,
            jitter_ms=rx.jitterUsec.mean / 1000, remote=info.remoteRtpAddress,
            source="" if source.startswith("0.0.0.0") else source,
        )

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
        global _tone_generators
        self.owner = None
        if self._tones is not None:
            _tone_generators -= 1
        self._tones = None  # its conference port goes now, on the loop thread, before the call's
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


check_overrides(Leg)  # a callback the build calls without Python must not look overridden


def _response_headers(raw: str) -> dict[str, tuple[str, ...]]:
    """Headers of the response ``raw`` that changed a B leg's state (none for ``""``)."""
    return sip.parse_message(raw)[1] if raw else {}


def _request_headers(raw: str, method: str) -> dict[str, tuple[str, ...]]:
    """Headers of the peer's ``method`` request ``raw`` (its BYE that ended a leg, the caller's
    CANCEL), when that is what it is (else none)."""
    return sip.parse_message(raw)[1] if raw.startswith(method + " ") else {}


def _response_message(prm: Any) -> str:
    """The message of a transaction event (``prm.e``), when pjsua received one (else ``""``): a
    response to our request, or the peer's own request (the caller's CANCEL). A state change's
    message is ``OnCallStateParam.b2buaRxMsg`` (patch 0025): no walk through the event."""
    try:
        tsx_state = prm.e.body.tsxState
        if tsx_state.type != pj.PJSIP_EVENT_RX_MSG:
            return ""  # ended by a timer or our own CANCEL: no message to read
        return str(tsx_state.src.rdata.wholeMsg)
    except Exception:
        return ""


@functools.cache
def _pjsip() -> ctypes.CDLL:
    """pjsip's and pjsua's C API in the loaded module: what pjsua2 does not wrap, or wraps with
    an exception (and an ERROR line) for everyday cases."""
    lib = ctypes.CDLL(pj._pjsua2.__file__)
    lib.pjsip_rdata_get_dlg.restype = ctypes.c_void_p
    lib.pjsip_rdata_get_dlg.argtypes = [ctypes.c_void_p]
    lib.pjsip_dlg_respond.restype = ctypes.c_int
    lib.pjsip_dlg_respond.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                      ctypes.c_void_p, ctypes.c_void_p]
    for name in ("pjsua_call_get_conf_port",):
        getattr(lib, name).restype = ctypes.c_int
        getattr(lib, name).argtypes = [ctypes.c_int]
    for name in ("pjsua_conf_connect", "pjsua_conf_disconnect"):
        getattr(lib, name).restype = ctypes.c_int
        getattr(lib, name).argtypes = [ctypes.c_int, ctypes.c_int]
    return lib


def respond_in_dialog(rdata: Any, code: int) -> bool:
    """Answer an in-dialog request pjsua leaves to the application (pjsua2 has no call for it)
    with ``code``; False when it could not.

    ``rdata`` is the ``SipRxData`` of an ``onCallTsxState`` in state TRYING: the transaction
    exists and has sent nothing yet (pjsip answers 500 after the callback otherwise).
    """
    lib = _pjsip()
    pointer = int(rdata.pjRxData)
    dialog = lib.pjsip_rdata_get_dlg(pointer)
    if not dialog:
        return False
    return int(lib.pjsip_dlg_respond(dialog, pointer, code, None, None, None)) == 0


def op(code: int = 0, reason: str = "", headers: tuple[tuple[str, str], ...] = ()) -> pj.CallOpParam:
    """A CallOpParam with a status code, reason and extra headers.

    No video or T.140 text stream, offered or answered: only audio can be bridged.
    """
    prm = pj.CallOpParam(True)
    opt = prm.opt  # each attribute read makes a new SWIG proxy
    opt.videoCount = 0
    opt.textCount = 0
    if code:
        prm.statusCode = code
    if reason:
        prm.reason = reason
    if headers:
        prm.txOption.headers = header_vector(headers)
    return prm


class _AnswerParams:
    """CallOpParams for ``answer`` and ``hangup`` (three a call), reused: making one costs
    ~15,000-21,000 instructions (the C++ object, its call setting, two SWIG proxies, the field
    writes), setting a kept one's code and reason ~7,000. Only what those two operations set differs from one use
    to the next (status code, reason, extra headers); the rest stays as :func:`op` made it. A
    parameter is taken for one operation and given back after it, so an operation that
    pjsua2's callbacks start inside another (they fire synchronously) gets one of its own:
    pjsua2 points into the parameter's strings while it sends."""

    KEEP = 8  #: parameters kept for reuse (operations nest a few deep at most)

    def __init__(self) -> None:
        #: kept parameters, each with whether its header list is not empty
        self._free: list[tuple[pj.CallOpParam, bool]] = []

    def take(self, code: int, reason: str, headers: tuple[tuple[str, str], ...]) -> tuple[pj.CallOpParam, bool]:
        """A parameter set for ``code``, ``reason``, ``headers``; give it back with the flag."""
        if not self._free:
            return op(code, reason, headers), bool(headers)
        prm, had_headers = self._free.pop()
        prm.statusCode = code
        prm.reason = reason
        if headers or had_headers:
            prm.txOption.headers = header_vector(headers)
        return prm, bool(headers)

    def give(self, prm: pj.CallOpParam, has_headers: bool) -> None:
        if len(self._free) < self.KEEP:
            self._free.append((prm, has_headers))


_ANSWERS = _AnswerParams()


def header_vector(headers: tuple[tuple[str, str], ...] | list[tuple[str, str]]) -> pj.SipHeaderVector:
    hv = pj.SipHeaderVector()
    for name, value in headers:
        h = pj.SipHeader()
        h.hName = name
        h.hValue = value
        hv.append(h)
    return hv
