"""What a call leg tells its session, and what a session may do with a leg.

The vocabulary between the pjsua2 adapter (:mod:`b2bua.legs`, the only module that knows
pjsua2's callbacks) and the call state machine (:mod:`b2bua.session`), in the spirit of Sippy
B2BUA's ``CCEvents``:

* **events** are small frozen dataclasses a leg hands its owner with
  ``owner.on_event(leg, event)``;
* :class:`LegState` is the one state of a leg; only the session changes it;
* :class:`CallLeg` is a leg as the session sees it: that state, a little bookkeeping, its SIP
  actions and its media actions (audio bridge, DTMF, direction, counters).
  :class:`b2bua.legs.Leg` implements it on a ``pj.Call``; the unit tests implement it with a
  fake that records what the session asked for.

Nothing here imports pjsua2.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from b2bua.api import FailureKind, OutgoingRequest, Target, TimerHandle

# -- events ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Provisional:
    """A provisional response to our INVITE (B legs): 100 Trying, 180 Ringing, ...

    :param code: 100-199.
    :param reason: its reason phrase (may be empty).
    :param headers: its headers (lower-case names), for :mod:`b2bua.headers` to pass on to the
        caller's 180/183; empty for the first provisional seen through its transaction.
    """

    code: int
    reason: str = ""
    headers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EarlyMedia:
    """183 Session Progress to our INVITE (B legs): the callee announces early media.

    pjsua2 reports the media itself (the SDP, the streams) only through :class:`MediaReady`.
    ``headers``: as :class:`Provisional`'s.
    """

    code: int = 183
    reason: str = ""
    headers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Answered:
    """A 2xx to our INVITE (B legs): the callee answered; pjsua sends the ACK. ``headers``: the
    2xx's headers (lower-case names), for :mod:`b2bua.headers` to pass on to the caller."""

    code: int = 200
    reason: str = "OK"
    headers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Confirmed:
    """The dialog is confirmed: the ACK was sent (B legs) or received (the A leg)."""


@dataclass(frozen=True, slots=True)
class Failed:
    """Our INVITE got a final failure (B legs), or pjsip ended it (its own 408, a transport 503).

    :param code: the final status (0 when pjsua gives none).
    :param reason: its reason phrase.
    :param headers: the response's headers, lower-case names, when one was received and the
        session may need them (Retry-After, Reason); empty otherwise.
    :param detail: why, in words for the log, when the adapter knows more than the status
        (a digest challenge not answered: :mod:`b2bua.digest`); never sent to the caller.
    :param local: pjsip ended it before anything reached the destination (the INVITE could not
        be sent: too long, no transport): a failure of ours (kind ``error``), not the gateway's.
    """

    code: int
    reason: str
    headers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    detail: str = ""
    local: bool = False


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The leg is over: BYE either way, a CANCEL, a final response sent to the caller, or
    pjsua ended the call (``code``/``reason``: pjsua's last status of the call; ``headers``:
    those of the peer's BYE: a B leg's peer hanging up, or the caller's BYE with a Reason; the
    Reason of the caller's CANCEL; else none)."""

    code: int = 0
    reason: str = ""
    headers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MediaReady:
    """The leg's media was negotiated or renegotiated (pjsua2's ``onCallMediaState``): an SDP
    answer sent or received, in a 18x, a 2xx, a re-INVITE or an UPDATE.

    pjsua may have replaced the leg's audio port (a changed direction or codec restarts the
    stream), so whatever was connected to it must be connected again.

    :param audio: an active audio stream exists (it can be bridged).
    :param remote_sdp: the remote SDP, when the adapter was asked to read it (else ``""``).
    :param codec: the negotiated audio codec, e.g. ``"PCMA/8000"`` (``""`` when not read).
    """

    audio: bool = True
    remote_sdp: str = ""
    codec: str = ""


class MediaDirection(str, enum.Enum):
    """An SDP media direction (RFC 3264 section 6.1), from the point of view of whoever wrote it."""

    SENDRECV = "sendrecv"
    SENDONLY = "sendonly"
    RECVONLY = "recvonly"
    INACTIVE = "inactive"

    @property
    def sends(self) -> bool:
        return self in (MediaDirection.SENDRECV, MediaDirection.SENDONLY)

    @property
    def receives(self) -> bool:
        return self in (MediaDirection.SENDRECV, MediaDirection.RECVONLY)

    def __str__(self) -> str:
        return str.__str__(self)


@dataclass(frozen=True, slots=True)
class RemoteOffer:
    """The leg's peer sent a new SDP offer in the dialog (a re-INVITE or UPDATE: hold, resume,
    a session refresh, a codec change). pjsua answers it itself after this event.

    :param direction: the offer's audio direction, from the peer's side (``sendonly``: the peer
        puts us on hold and may play music; ``inactive``: no audio either way).
    """

    direction: MediaDirection = MediaDirection.SENDRECV


@dataclass(frozen=True, slots=True)
class OfferFailed:
    """A re-INVITE the B2BUA sent in the dialog (to relay hold or resume) got a failure response.

    :param code: its status (491: the peer was sending its own re-INVITE at the same time).
    """

    code: int
    reason: str = ""


class DtmfMethod(str, enum.Enum):
    """How a DTMF digit arrived, or how it is sent."""

    RFC4733 = "rfc4733"  #: telephone-event RTP packets (RFC 4733, formerly RFC 2833)
    SIP_INFO = "sip-info"  #: an INFO request, application/dtmf-relay (``Signal=5``, ``Duration=160``)
    SIP_INFO_DTMF = "sip-info-dtmf"  #: an INFO request, application/dtmf (the digit alone)
    INBAND = "inband"  #: tones in the audio (sent only: a digit heard in the audio is just audio)

    def __str__(self) -> str:
        return str.__str__(self)


@dataclass(frozen=True, slots=True)
class DtmfReceived:
    """A DTMF digit from the leg's peer.

    RFC 4733 reports one event several times while the key is held: ``update`` marks a later
    report of the same event (same ``timestamp_ms``) with a longer ``duration_ms``, ``end`` the
    last one (end reports may be lost on the wire).

    :param digit: ``0``-``9``, ``*``, ``#``, ``A``-``D`` (``R``: RFC 4733 flash); from an INFO
        application/dtmf-relay whatever character followed ``Signal=`` (the bridge drops the rest).
    :param duration_ms: how long the digit lasted so far (the total with ``end``).
    :param timestamp_ms: identifies the event among reports of the same method (random base).
    """

    digit: str
    duration_ms: int = 0
    method: DtmfMethod = DtmfMethod.RFC4733
    timestamp_ms: int = 0
    update: bool = False
    end: bool = False


#: everything a leg reports
LegEvent = (Provisional | EarlyMedia | Answered | Confirmed | Failed | Disconnected | MediaReady | DtmfReceived
            | RemoteOffer | OfferFailed)

#: the events without data, shared (no allocation per callback)
CONFIRMED = Confirmed()
MEDIA_READY = MediaReady()


# -- legs -----------------------------------------------------------------------------------------


class LegState(str, enum.Enum):
    """Where one leg is. B legs (ours, outgoing) follow RFC 3261's INVITE client transaction
    names; the A leg (the caller's) starts INCOMING. Only the session changes a leg's state."""

    INCOMING = "incoming"  #: A: the INVITE arrived; nothing sent but 100 Trying
    CALLING = "calling"  #: B: INVITE sent, no response yet (the attempt timer runs)
    PROCEEDING = "proceeding"  #: B: a provisional response came (the answer timer runs)
    EARLY = "early"  #: A: a 180/183 was relayed to the caller
    ANSWERED = "answered"  #: A: 200 sent / B: 2xx received
    CONFIRMED = "confirmed"  #: the ACK went through
    CANCELLING = "cancelling"  #: B: given up before an answer (CANCEL sent); ``ended_by`` says why
    ABANDONED = "abandoned"  #: B: given up and reported failed, but pjsua has not ended it yet
    HANGING_UP = "hanging-up"  #: BYE sent, or (A) a final failure sent; waiting for pjsua
    ENDED = "ended"  #: over; the leg pool releases its pjsua2 side on the next loop pass

    def __str__(self) -> str:  # the value, also in log formatting (computed only when logged)
        return str.__str__(self)


@dataclass(frozen=True, slots=True)
class MediaStats:
    """One leg's audio stream now, read from pjsua when asked (``core.calls``, the RTP watch),
    never per packet.

    :param codec: the negotiated codec, ``PCMU/8000``.
    :param direction: the stream's direction from the B2BUA's side (``recvonly``: the peer has
        put us on hold).
    :param rx_packets: RTP packets received and accepted; ``rx_discarded`` those dropped as
        malformed or too late, ``rx_lost`` the gaps in the sequence numbers.
    :param jitter_ms: the mean interarrival jitter of what was received.
    :param remote: where the SDP says the peer receives RTP, ``ip:port``; ``source``: where the
        last RTP packet came from (``""`` before the first one). They differ when a NATed peer
        sends from another address, or when someone else sends to the port.
    """

    codec: str = ""
    direction: MediaDirection = MediaDirection.SENDRECV
    rx_packets: int = 0
    tx_packets: int = 0
    rx_lost: int = 0
    rx_discarded: int = 0
    jitter_ms: float = 0.0
    remote: str = ""
    source: str = ""

    def summary(self) -> dict[str, object]:
        """The JSON form ``core.calls`` shows."""
        return {"codec": self.codec, "direction": self.direction.value, "rx_packets": self.rx_packets,
                "tx_packets": self.tx_packets, "rx_lost": self.rx_lost, "rx_discarded": self.rx_discarded,
                "jitter_ms": round(self.jitter_ms, 2), "remote": self.remote, "source": self.source}


class LegError(Exception):
    """pjsua2 refused an action on a leg (the INVITE could not be sent, the answer failed).

    :param reason: pjsua2's short reason; ``detail`` its full message.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


class LegOwner(Protocol):
    """Whoever a leg reports to: a :class:`b2bua.session.Session`, or the stand-in of a refused call."""

    def on_event(self, leg: CallLeg, event: LegEvent) -> None:
        """Handle one event of ``leg``; runs inside a pjsua2 callback and must not raise."""
        ...


class CallLeg(abc.ABC):
    """One call leg as its session sees it. ``index`` 0 is the caller's (A) leg; B legs count from 1.

    The attributes are the session's bookkeeping (plain Python, changed only by the session and
    the leg pool); the abstract methods are the SIP actions, implemented by the adapter. An
    action may make the leg report events before it returns (pjsua2 calls back synchronously
    inside ``makeCall``/``hangup``): set the state first, then act.
    """

    def __init__(self, owner: LegOwner | None, index: int) -> None:
        self.owner = owner
        self.index = index
        self.state = LegState.INCOMING if index == 0 else LegState.CALLING
        self.target: Target | None = None  #: what a B leg dials
        self.started = 0.0  #: monotonic seconds when a B leg's INVITE was sent
        self.timer: TimerHandle | None = None  #: the attempt or answer timer of a B leg
        self.ended_by: FailureKind | None = None  #: why we gave up on a B leg (cancelled, timeouts)
        self.media_ready = False  #: a MediaReady event arrived
        self.retired = False  #: handed to the leg pool for release

    @abc.abstractmethod
    def send_invite(self, request: OutgoingRequest, call_id: str) -> None:
        """B legs: send the INVITE (``request``'s Request-URI, From, To and headers; ``call_id``
        as its Call-ID). :raises LegError: when it cannot be sent."""

    @abc.abstractmethod
    def respond(self, code: int, reason: str = "", headers: tuple[tuple[str, str], ...] = ()) -> None:
        """The A leg: send a provisional (180/183) or 200 response. :raises LegError: when refused."""

    @abc.abstractmethod
    def end(self, code: int = 0, reason: str = "", headers: tuple[tuple[str, str], ...] = ()) -> bool:
        """End the leg the way its state allows: BYE, CANCEL, or (A leg, unanswered) the final
        response ``code reason`` with ``headers``. False when pjsua refused (the call is gone)."""

    @abc.abstractmethod
    def connect_audio(self, other: CallLeg) -> bool:
        """Bridge this leg's audio with ``other``'s both ways; False when either has none yet.
        Connecting again what is connected changes nothing (call it after every renegotiation:
        pjsua may have replaced a leg's audio port)."""

    @abc.abstractmethod
    def disconnect_audio(self, other: CallLeg) -> None:
        """Undo :meth:`connect_audio` (whatever of it is still there)."""

    def audio_port(self) -> int:
        """The leg's port in the conference bridge now; -1 without an audio stream."""
        return -1

    def hears(self, other: CallLeg) -> bool | None:
        """Whether the bridge carries ``other``'s audio to this leg now (connections take effect
        on the bridge's next clock tick); None when either leg has no audio port."""
        return None

    @abc.abstractmethod
    def telephone_event(self) -> bool:
        """Whether the peer negotiated RFC 4733 telephone-event (digits can be sent as RTP events)."""

    @abc.abstractmethod
    def send_dtmf(self, digit: str, duration_ms: int, method: DtmfMethod) -> None:
        """Send one digit to the peer. :raises LegError: when it cannot be sent that way."""

    def release_tones(self) -> bool:
        """Give back the conference port of the in-band DTMF generator, once its digits have
        played (the bridge asks a moment after the last one); True when nothing is held now."""
        return True

    @abc.abstractmethod
    def set_direction(self, direction: MediaDirection) -> None:
        """Offer ``direction`` (from our side) in a re-INVITE; later answers to the peer's own
        offers keep to it. :raises LegError: when no re-INVITE can be sent now (one is pending)."""

    @abc.abstractmethod
    def media_stats(self) -> MediaStats | None:
        """The audio stream's codec and counters now; None without an audio stream."""

    @abc.abstractmethod
    def attached(self) -> bool:
        """Whether pjsua still routes this leg's call to this object (see ``docs/internals.md``)."""

    @abc.abstractmethod
    def release(self) -> None:
        """Delete the pjsua side now (idempotent); the leg pool calls it outside every callback."""
