"""pjsua2 Call objects for the two sides of a session.

A :class:`Leg` only forwards pjsua2's callbacks to its session; all decisions live in
:mod:`b2bua.session`. Callbacks can fire synchronously inside ``makeCall``/``hangup``, so the
session's handlers are re-entrant, and no exception may cross back into C++.
"""

from __future__ import annotations

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


class Leg(pj.Call):  # type: ignore[misc]
    """One call leg. ``index`` 0 is the caller's (A) leg; B legs count from 1."""

    def __init__(self, account: pj.Account, session: Any, index: int, call_id: int = pj.PJSUA_INVALID_ID) -> None:
        super().__init__(account, call_id)
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
