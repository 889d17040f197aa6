"""pjsua2 Call objects for the two sides of a session.

A :class:`Leg` only forwards pjsua2's callbacks to its session; all decisions live in
:mod:`b2bua.session`. Callbacks can fire synchronously inside ``makeCall``/``hangup``, so the
session's handlers are re-entrant, and no exception may cross back into C++.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import pjsua2 as pj
from loguru import logger

if TYPE_CHECKING:
    from b2bua.api import Target
    from b2bua.loop import Timer

# pjsip_inv_state values
CALLING = pj.PJSIP_INV_STATE_CALLING
INCOMING = pj.PJSIP_INV_STATE_INCOMING
EARLY = pj.PJSIP_INV_STATE_EARLY
CONNECTING = pj.PJSIP_INV_STATE_CONNECTING
CONFIRMED = pj.PJSIP_INV_STATE_CONFIRMED
DISCONNECTED = pj.PJSIP_INV_STATE_DISCONNECTED

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


class Leg(pj.Call):  # type: ignore[misc]
    """One call leg. ``index`` 0 is the caller's (A) leg; B legs count from 1."""

    def __init__(self, account: pj.Account, session: Any, index: int, call_id: int = pj.PJSUA_INVALID_ID) -> None:
        super().__init__(account, call_id)
        _alive.add(self)
        self.session = session
        self.index = index
        self.target: Target | None = None
        self.started = 0.0
        self.provisional = False  #: any 1xx received (B legs)
        self.answered = False
        self.ended = False
        self.cancelled = False  #: we ended it because another fork won or the caller left
        self.timeout_kind: Any = None  #: FailureKind when our own timer ended it
        self.timer: Timer | None = None
        self.media_active = False

    def release(self) -> None:
        """Delete the pjsua2 side now, whoever still holds this object (idempotent).

        pjsua2's ``~Call`` detaches and hangs up whatever call holds the slot *now*. Left to the
        garbage collector it may run after the slot went to a new call and end that one, so the
        app releases each leg on the loop pass after it ended (never inside its callback). If the
        slot already holds another call (pjsua gave it away without telling us) the small C++
        object is leaked instead of deleted. Afterwards pjsua2 methods raise TypeError instead of
        touching freed memory.
        """
        self.session = None
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

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        session = self.session
        if session is None:
            return
        try:
            info = self.getInfo()
            session.on_leg_state(self, info.state, info.lastStatusCode, info.lastReason, prm)
        except Exception:
            logger.opt(exception=True).error("call state handler failed")

    def onCallTsxState(self, prm: pj.OnCallTsxStateParam) -> None:
        # Only B legs waiting for their first response care: a 100 Trying stops the attempt timer.
        if self.provisional or self.index == 0 or self.session is None:
            return
        try:
            tsx = prm.e.body.tsxState.tsx
            if tsx.method == "INVITE" and 100 <= tsx.statusCode < 200:
                self.session.on_leg_provisional(self)
        except Exception:
            logger.opt(exception=True).error("transaction handler failed")

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        self.media_active = True
        if self.session is None:
            return
        try:
            self.session.on_leg_media(self)
        except Exception:
            logger.opt(exception=True).error("media handler failed")

    def audio(self) -> pj.AudioMedia | None:
        """The leg's active audio, or None."""
        try:
            return self.getAudioMedia(-1)
        except pj.Error:
            return None


def op(code: int = 0, reason: str = "", headers: tuple[tuple[str, str], ...] = ()) -> pj.CallOpParam:
    """A CallOpParam with a status code, reason and extra headers."""
    prm = pj.CallOpParam(True)
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
