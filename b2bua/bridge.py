"""The media side of one call: whose audio the caller hears, DTMF between the legs, hold and
resume relayed, and a watch on each leg's RTP.

One :class:`Bridge` per session (``architecture.md``: "the bridge (audio, early media, DTMF)
is one small object"). The session tells it what happened (a leg's media is ready, early media
from a B leg, the answer, a digit, a new offer, a leg gone); the bridge acts on the legs
through :class:`b2bua.events.CallLeg`. It knows legs by index only and looks them up through
its host (the session) each time, never keeping one. Pure Python, no pjsua2:
``tests/unit/test_bridge.py`` runs it with fake legs.

What it does (``docs/media.md`` says it for operators):

* **Audio.** The caller's leg (index 0) is connected to at most one B leg, its *peer*: the first
  B leg with early media (a 18x with SDP), replaced by the leg that answers. Connecting happens
  once both legs have media, and again after every renegotiation (pjsua may replace a leg's
  audio port when the direction or codec changes); half a second later the bridge looks that
  pjmedia applied it (:data:`VERIFY_DELAY`) and connects again what it did not.
* **DTMF.** A digit from the caller goes to the peer and a digit from the peer to the caller,
  by the method :func:`send_method` picks from ``[sip] dtmf`` and ``dtmf_fallback``. An RFC
  4733 digit is sent on when it ends, with the length it had (an event whose end packets were
  all lost is sent when its updates stop: :data:`DTMF_STALL`); an INFO digit at once.
* **Hold.** With ``[sip] hold = "relay"`` a new offer from one side (re-INVITE or UPDATE) whose
  direction differs from that side's last one is offered to the other side in a re-INVITE with
  the same direction: the caller's ``sendonly`` hold becomes our ``sendonly`` toward the
  gateway (which then knows, and hears the caller's music on hold), ``sendrecv`` resumes.
  A session refresh (same direction) is answered on its own leg and goes nowhere.
* **RTP watch.** Every ``rtp_watch_interval`` seconds of an answered call each leg's counters
  are read (:class:`RtpWatch`): a flood, RTP from an address that is not the negotiated one,
  and (``rtp_timeout``) a peer silent too long, which ends the call. Dropping what does not
  belong is pjmedia's (with ``rtp_strict_source``, its source lock); the watch tells.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from b2bua.events import (
    CallLeg,
    DtmfMethod,
    DtmfReceived,
    LegError,
    LegState,
    MediaDirection,
    MediaStats,
    OfferFailed,
    RemoteOffer,
)
from b2bua.logs import writes
from b2bua.sip import printable

if TYPE_CHECKING:
    from b2bua.api import TimerHandle
    from b2bua.config import SipConfig

#: an RFC 4733 digit with no report for this long (updates every 50 ms or so) has ended, its end
#: packets lost: it is sent on with the length it had (detected within one to two times this)
DTMF_STALL = 0.5
#: the length given to a digit that came without a usable one (INFO without Duration)
DTMF_DEFAULT_MS = 160
#: the lengths a digit is sent with are kept within these (milliseconds)
DTMF_MIN_MS, DTMF_MAX_MS = 40, 5000
#: a re-INVITE that could not be sent (another one pending) is tried again this often, this many times
OFFER_RETRY_DELAY, OFFER_RETRIES = 1.0, 5
#: after a 491 (both sides sent a re-INVITE at once) ours is sent again after this long
#: (RFC 3261 section 14.1: 2.1-4 s for the Call-ID's owner, the B legs; 0-2 s otherwise)
GLARE_DELAY_B, GLARE_DELAY_A = 2.5, 1.0
#: distinct unexpected RTP sources logged per leg and call (the rest are counted)
SOURCES_LOGGED = 3
#: after a sample that found packets dropped but the peer as the last source, look again this
#: many seconds later (off the 20 ms packet clock, so the looks do not all land in the same phase
#: of the peer's and a stranger's packets): pjmedia keeps only the last source of a leg's RTP
SOURCE_LOOKS = (0.007, 0.013, 0.029)
#: seconds after connecting two legs before the bridge looks whether the conference carries their
#: audio both ways (pjmedia applies a connection on its clock's next 20 ms tick); a missing
#: direction is connected again, at most this many times a call (then an INFO line says so)
VERIFY_DELAY, VERIFY_RECONNECTS = 0.5, 2
#: seconds after an in-band digit has played before its leg gives its tone generator's
#: conference port back (a next digit within it reuses the generator)
TONES_LINGER = 2.0


class DtmfMode(str, enum.Enum):
    """``[sip] dtmf``: how a digit is sent on to the other leg."""

    RFC4733 = "rfc4733"  #: RTP telephone-events, whatever way the digit came
    INFO = "info"  #: SIP INFO application/dtmf-relay
    INFO_DTMF = "info-dtmf"  #: SIP INFO application/dtmf
    SAME = "same"  #: the way it came: RFC 4733 as RFC 4733, INFO as INFO of the same type
    OFF = "off"  #: not relayed


class DtmfFallback(str, enum.Enum):
    """``[sip] dtmf_fallback``: what replaces RFC 4733 toward a leg that negotiated no telephone-event."""

    INBAND = "inband"  #: tones in the audio
    INFO = "info"  #: SIP INFO application/dtmf-relay
    DROP = "drop"  #: not sent


class HoldMode(str, enum.Enum):
    """``[sip] hold``: what a hold (or resume) from one side does to the other leg."""

    RELAY = "relay"  #: offered to the other side in a re-INVITE with the same direction
    ABSORB = "absorb"  #: answered on its own leg only; the other side is not told


@dataclass(frozen=True)
class MediaPolicy:
    """The ``[sip]`` media settings a bridge follows, as enums (:func:`policy` builds it once)."""

    dtmf: DtmfMode = DtmfMode.RFC4733
    dtmf_fallback: DtmfFallback = DtmfFallback.INBAND
    hold: HoldMode = HoldMode.RELAY
    watch_interval: float = 5.0  #: seconds between RTP checks of an answered call (0: no watch)
    rtp_timeout: float = 0.0  #: seconds of silence from a peer that should send that end the call (0: never)
    flood_pps: int = 400  #: packets a second from one peer that count as a flood
    strict_source: bool = True  #: RTP from another address than the peer's is dropped (pjmedia's lock)


def policy(sip: SipConfig) -> MediaPolicy:
    """The bridge's policy from ``[sip]`` (validated there); one object per distinct setting."""
    return _policy(sip.dtmf, sip.dtmf_fallback, sip.hold, sip.rtp_watch_interval, sip.rtp_timeout,
                   sip.rtp_flood_pps, sip.rtp_strict_source)


@functools.lru_cache(maxsize=8)
def _policy(dtmf: str, fallback: str, hold: str, interval: float, timeout: float, flood_pps: int,
            strict_source: bool) -> MediaPolicy:
    return MediaPolicy(DtmfMode(dtmf), DtmfFallback(fallback), HoldMode(hold), interval, timeout, flood_pps,
                       strict_source)


_AS_SENT = {DtmfMode.RFC4733: DtmfMethod.RFC4733, DtmfMode.INFO: DtmfMethod.SIP_INFO,
            DtmfMode.INFO_DTMF: DtmfMethod.SIP_INFO_DTMF}
_FALLBACK = {DtmfFallback.INBAND: DtmfMethod.INBAND, DtmfFallback.INFO: DtmfMethod.SIP_INFO}


def send_method(mode: DtmfMode, fallback: DtmfFallback, arrived: DtmfMethod,
                telephone_event: Callable[[], bool]) -> DtmfMethod | None:
    """How a digit that ``arrived`` one way is sent to a leg; None: it is not sent.

    :param telephone_event: whether the receiving leg negotiated RFC 4733 (asked only when it matters).
    """
    if mode is DtmfMode.OFF:
        return None
    method = arrived if mode is DtmfMode.SAME else _AS_SENT[mode]
    if method is DtmfMethod.RFC4733 and not telephone_event():
        return _FALLBACK.get(fallback)
    return method


def digit_length(duration_ms: int) -> int:
    """The length a digit is sent with: its own, kept within sense; a default when it has none."""
    if duration_ms <= 0 or duration_ms >= 0xFFFF:  # none given (pjsua's "unknown" is 0xFFFF)
        return DTMF_DEFAULT_MS
    return max(DTMF_MIN_MS, min(DTMF_MAX_MS, duration_ms))


def rfc4733_max_ms(codec: str) -> int:
    """The longest digit one RFC 4733 event carries toward a stream of ``codec`` (``PCMU/8000``):
    its 16-bit duration counts the stream's RTP clock, which pjmedia takes as 48 kHz for Opus
    whatever its rate and 8 kHz for G.722 (RFC 3551); 8191 ms at 8 kHz, 1365 ms for Opus."""
    name, _, rest = codec.partition("/")
    rate_text = rest.partition("/")[0]
    if name.lower() == "opus":
        rate = 48000
    elif name.upper() == "G722" or not (rate_text.isdigit() and 0 < int(rate_text) <= 192000):
        rate = 8000
    else:
        rate = int(rate_text)
    return 0xFFFF * 1000 // rate


_DIGITS = frozenset("0123456789*#ABCD")
#: what is sent on: the DTMF events of RFC 4733 (and its flash, R); pjsua reports any byte
#: after an INFO's ``Signal=`` as a digit
DTMF_EVENTS = _DIGITS | {"R"}


def info_dtmf_digit(body: str) -> str:
    """The digit of an INFO application/dtmf body (the digit alone, maybe a line end), upper-cased;
    ``""`` when the body is not one digit."""
    text = body.strip().upper()
    return text if len(text) == 1 and text in _DIGITS else ""


# -- the RTP watch ----------------------------------------------------------------------------------


@dataclass
class WatchReport:
    """What one sample of a leg's counters showed (see :meth:`RtpWatch.sample`)."""

    flood_started: float = 0.0  #: packets a second, when a flood began with this sample
    flood_ended: int = 0  #: packets received during the flood, when it ended with this sample
    new_source: str = ""  #: an unexpected RTP source seen for the first time
    look_again: bool = False  #: packets were dropped but the last source was the peer: who sent them?
    silent_for: float = 0.0  #: seconds since the peer last sent RTP it should have sent


@dataclass
class RtpWatch:
    """One leg's RTP counters between samples (pure: the caller reads the counters and the clock).

    :param flood_pps: the packet rate (received and discarded together) that is a flood.
    """

    flood_pps: int
    last_t: float | None = None
    last_count: int = 0
    last_rx: int = 0
    last_discarded: int = 0
    heard_at: float = 0.0  #: when the peer was last heard (or last had no reason to send)
    flood_packets: int = 0  #: packets since the current flood began (0: no flood)
    sources: set[str] = field(default_factory=set)
    sources_unlogged: int = 0

    def sample(self, now: float, stats: MediaStats) -> WatchReport:
        """Compare ``stats`` with the last sample at ``now`` (monotonic seconds)."""
        report = WatchReport()
        count = stats.rx_packets + stats.rx_discarded
        if self.last_t is None:
            self.last_t, self.last_count, self.last_rx, self.heard_at = now, count, stats.rx_packets, now
            return report
        elapsed = now - self.last_t
        fresh = count - self.last_count
        if elapsed > 0:
            rate = fresh / elapsed
            if rate > self.flood_pps:
                if not self.flood_packets:
                    report.flood_started = rate
                self.flood_packets += fresh
            elif self.flood_packets:
                report.flood_ended = self.flood_packets
                self.flood_packets = 0
        if stats.rx_packets > self.last_rx or not stats.direction.receives:
            self.heard_at = now  # heard, or on hold: nothing is owed
        report.silent_for = now - self.heard_at
        dropped = stats.rx_discarded > self.last_discarded
        self.last_t, self.last_count, self.last_rx = now, count, stats.rx_packets
        self.last_discarded = stats.rx_discarded
        report.new_source = self.note_source(stats)
        report.look_again = dropped and not report.new_source and stats.source in ("", stats.remote)
        return report

    def note_source(self, stats: MediaStats) -> str:
        """The leg's last RTP source if it is not the peer's and was not seen before, else ``""``."""
        source = stats.source
        if source and stats.remote and source != stats.remote and source not in self.sources:
            if len(self.sources) < SOURCES_LOGGED:
                self.sources.add(source)
                return source
            self.sources_unlogged += 1
        return ""


# -- the bridge -------------------------------------------------------------------------------------


class BridgeHost(Protocol):
    """What a bridge needs from its session (:class:`b2bua.session.Session`)."""

    def leg(self, index: int) -> CallLeg | None:
        """The live leg ``index`` (0: the caller's), or None."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` on the loop thread after ``delay`` seconds."""
        ...

    def media_timeout(self, index: int, silent_for: float) -> None:
        """Leg ``index`` sent no RTP for ``silent_for`` seconds (``rtp_timeout``): end the call."""
        ...


@dataclass
class _Digit:
    """An RFC 4733 digit being received: sent on when it ends (or stalls)."""

    timestamp: int
    digit: str
    duration_ms: int
    fresh: bool = True  #: a report came since the stall timer last looked
    timer: TimerHandle | None = None


class Bridge:
    """The media of one call (see the module docstring). ``log`` is the session's bound logger."""

    __slots__ = (
        "_digits",
        "_done_digit",
        "_dtmf_failures",
        "_looks",
        "_offered",
        "_reconnects",
        "_retries",
        "_retry",
        "_sent",
        "_tones",
        "_verify_timer",
        "_wanted",
        "_watch",
        "_watch_timer",
        "answered",
        "clock",
        "closed",
        "connected",
        "early",
        "host",
        "log",
        "peer",
        "policy",
    )

    def __init__(self, host: BridgeHost, policy: MediaPolicy, log: Any, clock: Callable[[], float]) -> None:
        self.host = host
        self.policy = policy
        self.log = log
        self.clock = clock
        self.peer = 0  #: the B leg the caller is connected to (or will be once both have media); 0: none
        self.early = False  #: the peer is an early-media leg, not the answering one
        self.answered = False
        self.connected = False  #: the caller and the peer are connected in the conference bridge
        self._digits: dict[int, _Digit] = {}  #: RFC 4733 digits being received, by leg index
        self._done_digit: dict[int, int] = {}  #: the timestamp of the last RFC 4733 digit sent on, by leg
        self._offered: dict[int, MediaDirection] = {}  #: each side's last own offer
        self._wanted: dict[int, MediaDirection] = {}  #: what each leg should be offered
        self._sent: dict[int, MediaDirection] = {}  #: what each leg was last offered by us
        self._retries: dict[int, int] = {}
        self._retry: dict[int, TimerHandle] = {}
        self._watch: dict[int, RtpWatch] = {}
        self._watch_timer: TimerHandle | None = None
        self._looks: dict[int, TimerHandle] = {}  #: a second look for a dropped packet's source, by leg
        self._tones: dict[int, TimerHandle] = {}  #: when a leg gives its in-band DTMF generator back
        self._dtmf_failures = 0  #: digits that could not be sent on (logged once, summed up at close)
        self._verify_timer: TimerHandle | None = None  #: the look at what the conference carries
        self._reconnects = 0  #: connections made again because the conference did not carry them
        self.closed = False

    # -- audio ------------------------------------------------------------------------------------

    def select(self, index: int, *, early: bool) -> None:
        """Connect the caller to B leg ``index`` (early media, or the answer), instead of any other."""
        if self.closed:
            return
        old = self.peer
        if old == index and self.connected:
            self.early = early  # the early leg answered: it stays connected
            return
        if old and old != index:
            self._disconnect(old)
        if old != index and writes.debug:
            self.log.debug("audio: caller <-> leg {}{}", index, " (early media)" if early else "")
        self.peer, self.early = index, early
        self.connect()

    def connect(self) -> None:
        """(Re)connect the caller and the peer, when both have media; call it after any renegotiation."""
        if self.closed or not self.peer:
            return
        a, b = self.host.leg(0), self.host.leg(self.peer)
        if a is None or b is None or not (a.media_ready and b.media_ready):
            return
        self.connected = a.connect_audio(b)
        if writes.debug:  # twice a call: not even the lazy call when DEBUG is not written
            self.log.opt(lazy=True).debug("audio: leg 0 (port {}) <-> leg {} (port {}): {}", a.audio_port,
                                          lambda: b.index, b.audio_port,
                                          lambda: "connected" if self.connected else "no audio port yet")
        if self.connected and not self.closed:
            if self._verify_timer is not None:  # look once the latest connection had time to apply
                self._verify_timer.cancel()
            self._verify_timer = self.host.call_later(VERIFY_DELAY, self._verify)

    def _verify(self) -> None:
        """Look whether the conference carries the audio both ways; connect again what it does not.

        The bridge's connections are requests pjmedia applies on its clock thread; this is the
        check that they took (and the evidence in the log if one ever does not)."""
        self._verify_timer = None
        a, b = self.host.leg(0), self.host.leg(self.peer)
        if self.closed or not self.connected or a is None or b is None:
            return
        missing = [f"leg {x.index} does not hear leg {y.index}" for x, y in ((a, b), (b, a)) if x.hears(y) is False]
        if not missing:
            return
        ports = f"conference ports {a.audio_port()} and {b.audio_port()}"
        if self._reconnects >= VERIFY_RECONNECTS:
            self.log.info("audio: {} ({}) after connecting {} times more: left as it is", "; ".join(missing),
                          ports, self._reconnects)  # INFO: per call, and a systematic fault would multiply it
            return
        self._reconnects += 1
        self.log.info("audio: {} ({}): connecting again", "; ".join(missing), ports)
        self.connect()

    def media_ready(self, index: int) -> None:
        """Leg ``index``'s media was (re)negotiated."""
        if index == 0 or index == self.peer:
            self.connect()

    def leg_gone(self, leg: CallLeg) -> None:
        """``leg`` is over: forget it (a dropped early leg leaves the caller unconnected until
        another leg's early media or the answer)."""
        index = leg.index
        if index == self.peer and self.connected:
            a = self.host.leg(0)
            if a is not None:  # its stream lives on until pjsua ends the call (a CANCEL waits for the 487)
                self._log_disconnect(a, leg)
                a.disconnect_audio(leg)
        digit = self._digits.pop(index, None)
        if digit is not None and digit.timer is not None:
            digit.timer.cancel()
        for timers in (self._retry, self._looks, self._tones):
            timer = timers.pop(index, None)
            if timer is not None:
                timer.cancel()
        self._watch.pop(index, None)
        if index == self.peer:
            self.peer, self.early, self.connected = 0, False, False
            if self._verify_timer is not None:
                self._verify_timer.cancel()
                self._verify_timer = None

    def _disconnect(self, index: int) -> None:
        a, b = self.host.leg(0), self.host.leg(index)
        if a is not None and b is not None:
            self._log_disconnect(a, b)
            a.disconnect_audio(b)
        self.connected = False

    def _log_disconnect(self, a: CallLeg, b: CallLeg) -> None:
        if writes.debug:
            self.log.opt(lazy=True).debug("audio: leg 0 (port {}) -x- leg {} (port {})", a.audio_port,
                                          lambda: b.index, b.audio_port)

    def answer(self, index: int) -> None:
        """B leg ``index`` answered: it becomes the peer, and the RTP watch starts."""
        self.select(index, early=False)
        self.answered = True
        if self.policy.watch_interval > 0 and self._watch_timer is None and not self.closed:
            self._watch_timer = self.host.call_later(self.policy.watch_interval, self._check_rtp)

    def confirmed(self, index: int) -> None:
        """Leg ``index``'s 2xx was ACKed: an offer held back until then goes now."""
        if index in self._wanted and index not in self._retry:
            self._offer(index)

    def close(self) -> None:
        """The call is ending: stop every timer; nothing more is relayed. Once is enough: no
        timer starts on a closed bridge."""
        if self.closed:
            return
        if self._dtmf_failures > 1:
            self.log.warning("{} DTMF digits of this call could not be sent on", self._dtmf_failures)
        self.closed = True
        timers = [d.timer for d in self._digits.values()] + list(self._retry.values()) + list(self._looks.values())
        timers += [self._watch_timer, self._verify_timer, *self._tones.values()]
        for timer in timers:
            if timer is not None:
                timer.cancel()
        self._digits.clear()
        self._retry.clear()
        self._looks.clear()
        self._tones.clear()
        self._watch_timer = self._verify_timer = None

    def _other(self, index: int) -> CallLeg | None:
        """The leg a relayed thing from leg ``index`` goes to: the peer for the caller, the
        caller for the peer, nobody for any other B leg (a losing fork)."""
        if self.closed or not self.peer:
            return None
        if index == 0:
            return self.host.leg(self.peer)
        return self.host.leg(0) if index == self.peer else None

    # -- DTMF -------------------------------------------------------------------------------------

    def dtmf(self, index: int, event: DtmfReceived) -> None:
        """A digit (report) from leg ``index``."""
        if self.policy.dtmf is DtmfMode.OFF or self.closed:
            return
        if event.digit.upper() not in DTMF_EVENTS:  # each failed in pjmedia or raised out of pjsua2
            self.log.debug("DTMF '{}' from leg {}: not a DTMF event (0-9, *, #, A-D, R): not sent on",
                           printable(event.digit, 8), index)
            return
        if event.digit != event.digit.upper():  # an INFO's "Signal=a"
            event = dataclasses.replace(event, digit=event.digit.upper())
        if event.method is not DtmfMethod.RFC4733:
            self._relay(index, event.digit, event.duration_ms, event.method)
            return
        if self._done_digit.get(index) == event.timestamp_ms:
            return  # a late report of a digit already sent on (its end after a stall, say)
        digit = self._digits.get(index)
        if event.end:
            self._done_digit[index] = event.timestamp_ms
            if digit is not None and digit.timestamp == event.timestamp_ms:
                self._digits.pop(index)
                if digit.timer is not None:
                    digit.timer.cancel()
            elif digit is not None and digit.timestamp != event.timestamp_ms:
                self._stalled(index)  # an earlier digit never ended: send it first
            self._relay(index, event.digit, event.duration_ms, event.method)
            return
        if digit is not None and digit.timestamp == event.timestamp_ms:
            digit.duration_ms = max(digit.duration_ms, event.duration_ms)
            digit.fresh = True
            return
        if digit is not None:
            self._stalled(index)  # a new digit began while the last one had not ended
        digit = _Digit(event.timestamp_ms, event.digit, event.duration_ms)
        digit.timer = self.host.call_later(DTMF_STALL, lambda: self._check_stall(index))
        self._digits[index] = digit

    def _check_stall(self, index: int) -> None:
        digit = self._digits.get(index)
        if digit is None:
            return
        if digit.fresh:
            digit.fresh = False
            digit.timer = self.host.call_later(DTMF_STALL, lambda: self._check_stall(index))
            return
        self.log.debug("DTMF {} from leg {}: no end report, sent on as {} ms", digit.digit, index,
                       digit.duration_ms)
        self._stalled(index)

    def _stalled(self, index: int) -> None:
        digit = self._digits.pop(index)
        if digit.timer is not None:
            digit.timer.cancel()
        self._done_digit[index] = digit.timestamp
        self._relay(index, digit.digit, digit.duration_ms, DtmfMethod.RFC4733)

    def _dtmf_failed(self, message: str, *args: Any) -> None:
        """A digit not sent on: a WARNING for the call's first, DEBUG for the rest (a caller can
        send digits as fast as packets; :meth:`close` sums them up)."""
        self._dtmf_failures += 1
        (self.log.warning if self._dtmf_failures == 1 else self.log.debug)(message, *args)

    def _relay(self, index: int, digit: str, duration_ms: int, arrived: DtmfMethod) -> None:
        target = self._other(index)
        if target is None:
            self.log.debug("DTMF {} from leg {}: no other leg to send it to", digit, index)
            return
        method = send_method(self.policy.dtmf, self.policy.dtmf_fallback, arrived, target.telephone_event)
        if method is None:
            self.log.debug("DTMF {} from leg {}: leg {} has no telephone-event and dtmf_fallback is drop",
                           digit, index, target.index)
            return
        length = digit_length(duration_ms)
        if method is DtmfMethod.RFC4733:  # a longer one would wrap the event's 16-bit duration
            stats = target.media_stats()
            if stats is not None and stats.codec:
                length = min(length, rfc4733_max_ms(stats.codec))
        try:
            target.send_dtmf(digit, length, method)
        except LegError as exc:
            fallback = _FALLBACK.get(self.policy.dtmf_fallback)
            if method is not DtmfMethod.RFC4733 or fallback is None:
                self._dtmf_failed("DTMF from leg {} could not be sent to leg {} as {}: {}", index, target.index,
                                  method, exc.reason)
                return
            try:  # the stream cannot send events now (say, held inactive): the fallback can
                target.send_dtmf(digit, length, fallback)
            except LegError as exc2:
                self._dtmf_failed("DTMF from leg {} could not be sent to leg {} as {} nor {}: {}", index,
                                  target.index, method, fallback, exc2.reason)
                return
            method = fallback
        self.log.debug("DTMF {} ({} ms, {}) leg {} -> leg {} as {}", digit, length, arrived, index,
                       target.index, method)
        if method is DtmfMethod.INBAND:
            self._release_tones_later(target.index, length / 1000 + TONES_LINGER)

    def _release_tones_later(self, index: int, delay: float) -> None:
        """Have leg ``index`` give its tone generator's conference port back after ``delay``
        (again later while digits still play): the bridge has a few spare ports for all calls."""
        old = self._tones.pop(index, None)
        if old is not None:
            old.cancel()

        def release() -> None:
            self._tones.pop(index, None)
            leg = self.host.leg(index)
            if leg is not None and not leg.release_tones():
                self._release_tones_later(index, TONES_LINGER)

        self._tones[index] = self.host.call_later(delay, release)

    # -- hold and resume --------------------------------------------------------------------------

    def remote_offer(self, index: int, event: RemoteOffer) -> None:
        """Leg ``index``'s peer sent a new offer in the dialog."""
        before = self._offered.get(index, MediaDirection.SENDRECV)
        self._offered[index] = event.direction
        if event.direction is before or self.policy.hold is HoldMode.ABSORB or not self.answered or self.early:
            return
        other = self._other(index)
        if other is None:
            return
        side = "the caller" if index == 0 else "the gateway"
        what = "resumes" if event.direction is MediaDirection.SENDRECV else f"holds ({event.direction})"
        self.log.info("{} {}: offering {} to leg {}", side, what, event.direction, other.index)
        self._wanted[other.index] = event.direction
        self._retries[other.index] = 0
        self._offer(other.index)

    def offer_failed(self, index: int, event: OfferFailed) -> None:
        """Our re-INVITE to leg ``index`` was refused."""
        if index not in self._wanted or self.closed:
            return
        self._sent.pop(index, None)  # whatever we offered did not take
        if event.code == 491:
            self._schedule_offer(index, GLARE_DELAY_A if index == 0 else GLARE_DELAY_B)
            return
        self.log.warning("leg {} refused the re-INVITE offering {}: {} {}; the call goes on as it was",
                         index, self._wanted[index], event.code, event.reason)
        self._sent[index] = self._wanted[index]  # not tried again until the direction changes

    def _offer(self, index: int) -> None:
        self._retry.pop(index, None)
        wanted = self._wanted.get(index)
        leg = self.host.leg(index)
        if wanted is None or leg is None or self.closed:
            return
        if self._sent.get(index, MediaDirection.SENDRECV) is wanted:
            return
        if leg.state is LegState.ANSWERED:
            # our 2xx to it is not ACKed yet (a gateway may hold at once, before the caller's
            # ACK reaches us): no re-INVITE may go before the ACK; confirmed() sends it then
            return
        try:
            leg.set_direction(wanted)
        except LegError as exc:
            tries = self._retries.get(index, 0) + 1
            self._retries[index] = tries
            if tries > OFFER_RETRIES:
                self.log.warning("cannot offer {} to leg {} after {} tries: {}", wanted, index, tries, exc.reason)
                return
            self._schedule_offer(index, OFFER_RETRY_DELAY)
            return
        self._sent[index] = wanted

    def _schedule_offer(self, index: int, delay: float) -> None:
        if index not in self._retry and not self.closed:
            self._retry[index] = self.host.call_later(delay, lambda: self._offer(index))

    # -- the RTP watch ----------------------------------------------------------------------------

    def _check_rtp(self) -> None:
        self._watch_timer = None
        if self.closed:
            return
        now = self.clock()
        for index in (0, self.peer) if self.peer else (0,):
            leg = self.host.leg(index)
            stats = leg.media_stats() if leg is not None else None
            watch = self._watch.get(index)
            if stats is None:  # no stream (held inactive): nothing is owed
                if watch is not None:
                    watch.heard_at = now
                continue
            if watch is None:
                watch = self._watch[index] = RtpWatch(self.policy.flood_pps)
            report = watch.sample(now, stats)
            self._report(index, watch, report, stats)
            if self.closed:
                return  # the report ended the call
            if report.look_again and index not in self._looks:
                self._look_for_source(index, 0)
        self._watch_timer = self.host.call_later(self.policy.watch_interval, self._check_rtp)

    def _look_for_source(self, index: int, attempt: int) -> None:
        """Schedule look ``attempt`` (of :data:`SOURCE_LOOKS`) at who sends leg ``index`` the RTP it drops."""
        if attempt >= len(SOURCE_LOOKS) or self.closed:
            self._looks.pop(index, None)
            return
        self._looks[index] = self.host.call_later(SOURCE_LOOKS[attempt], lambda: self._look(index, attempt))

    def _look(self, index: int, attempt: int) -> None:
        self._looks.pop(index, None)
        leg, watch = self.host.leg(index), self._watch.get(index)
        stats = leg.media_stats() if leg is not None and not self.closed else None
        if stats is None or watch is None:
            return
        source = watch.note_source(stats)
        if source:
            self._report(index, watch, WatchReport(new_source=source), stats)
        elif stats.source in ("", stats.remote):
            self._look_for_source(index, attempt + 1)

    def _report(self, index: int, watch: RtpWatch, report: WatchReport, stats: MediaStats) -> None:
        if report.flood_started:
            self.log.warning("RTP flood to leg {}: {:.0f} packets/s (last from {}); what does not belong to "
                             "the call is dropped", index, report.flood_started, stats.source or "?")
        if report.flood_ended:
            self.log.info("RTP flood to leg {} over: {} packets", index, report.flood_ended)
        if report.new_source:  # a NATed peer (every call of it), or someone else: not a warning
            self.log.info("RTP to leg {} comes from {}, not {} as its SDP says: {}", index, report.new_source,
                          stats.remote, "the leg keeps the first source it heard, the rest is dropped"
                          if self.policy.strict_source else "followed after 10 packets in a row")
        timeout = self.policy.rtp_timeout
        if timeout > 0 and report.silent_for >= timeout:
            self.log.info("no RTP from leg {} for {:.0f} s (rtp_timeout = {:g}): ending the call", index,
                          report.silent_for, timeout)
            self.host.media_timeout(index, report.silent_for)
