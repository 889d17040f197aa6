"""The media side of a call (b2bua.bridge, b2bua.sdp) without pjsua2: fake legs record what the
bridge asked of them; a fake host with a scheduler on a fake clock runs its timers."""

from __future__ import annotations

from typing import Any

import pytest
from loguru import logger

from b2bua.bridge import (
    DTMF_DEFAULT_MS,
    DTMF_STALL,
    TONES_LINGER,
    VERIFY_DELAY,
    VERIFY_RECONNECTS,
    Bridge,
    DtmfFallback,
    DtmfMode,
    HoldMode,
    MediaPolicy,
    RtpWatch,
    digit_length,
    info_dtmf_digit,
    policy,
    rfc4733_max_ms,
    send_method,
)
from b2bua.config import DTMF_FALLBACKS, DTMF_MODES, HOLD_MODES, ConfigError, parse_config
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
from b2bua.loop import Scheduler
from b2bua.sdp import audio_direction

D = MediaDirection
M = DtmfMethod


class Leg(CallLeg):
    """A leg that records the bridge's actions; ``refuse`` makes an action raise LegError once per entry."""

    def __init__(self, index: int, telephone_event: bool = True) -> None:
        super().__init__(None, index)
        self.media_ready = True
        self.te = telephone_event
        self.actions: list[tuple[Any, ...]] = []
        self.refuse: list[str] = []  #: action names that raise LegError, consumed in order
        self.stats: MediaStats | None = MediaStats(codec="PCMU/8000", remote="10.0.0.1:4000")

    def _act(self, *action: Any) -> None:
        if self.refuse and self.refuse[0] == action[0]:
            self.refuse.pop(0)
            raise LegError(f"{action[0]} refused")
        self.actions.append(action)

    def send_invite(self, request: Any, call_id: str) -> None: ...
    def respond(self, code: int, reason: str = "", headers: Any = ()) -> None: ...
    def end(self, code: int = 0, reason: str = "", headers: Any = ()) -> bool: return True
    def attached(self) -> bool: return True
    def release(self) -> None: ...

    def connect_audio(self, other: CallLeg) -> bool:
        self.actions.append(("connect", other.index))
        return True

    def disconnect_audio(self, other: CallLeg) -> None:
        self.actions.append(("disconnect", other.index))

    def audio_port(self) -> int:
        return 20 + 2 * self.index

    def hears(self, other: CallLeg) -> bool | None:
        return other.index not in self.deaf_to

    deaf_to: frozenset[int] = frozenset()  #: legs whose audio the conference does not carry to this one

    def telephone_event(self) -> bool:
        return self.te

    def send_dtmf(self, digit: str, duration_ms: int, method: DtmfMethod) -> None:
        self._act("dtmf", digit, duration_ms, method)

    def set_direction(self, direction: MediaDirection) -> None:
        self._act("direction", direction)

    def media_stats(self) -> MediaStats | None:
        return self.stats

    def did(self, kind: str) -> list[tuple[Any, ...]]:
        return [a[1:] for a in self.actions if a[0] == kind]

    def release_tones(self) -> bool:
        self.actions.append(("release_tones",))
        return len(self.did("release_tones")) > self.tones_busy_for

    tones_busy_for = 0  #: release_tones answers "still playing" this many times first


class Host:
    """The bridge's host: legs by index, a scheduler on a fake clock, media timeouts recorded."""

    def __init__(self, *legs: Leg, **settings: Any) -> None:
        self.legs = {leg.index: leg for leg in legs}
        self.now = 100.0
        self.scheduler = Scheduler(clock=lambda: self.now)
        self.timeouts: list[tuple[int, float]] = []
        self.lines: list[tuple[str, str]] = []
        self.bridge = Bridge(self, MediaPolicy(**settings), logger.bind(call_id="c1"), lambda: self.now)

    def leg(self, index: int) -> CallLeg | None:
        return self.legs.get(index)

    def call_later(self, delay: float, callback: Any) -> Any:
        return self.scheduler.call_later(delay, callback)

    def media_timeout(self, index: int, silent_for: float) -> None:
        self.timeouts.append((index, silent_for))
        self.bridge.close()  # the session ends the call

    def advance(self, seconds: float, step: float = 0.1) -> None:
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.now = min(end, self.now + step)
            self.scheduler.run_pending()


@pytest.fixture
def log_lines() -> Any:
    lines: list[tuple[str, str]] = []
    sink = logger.add(lambda m: lines.append((m.record["level"].name, m.record["message"])), level="DEBUG",
                      format="{message}")
    yield lines
    logger.remove(sink)


def answered(**settings: Any) -> tuple[Host, Leg, Leg]:
    a, b = Leg(0), Leg(1)
    host = Host(a, b, **settings)
    host.bridge.answer(1)
    return host, a, b


# -- SDP direction ------------------------------------------------------------------------------------

SDP = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n"


@pytest.mark.parametrize(("sdp", "want"), [
    (SDP + "m=audio 4000 RTP/AVP 0\r\n", D.SENDRECV),
    (SDP + "m=audio 4000 RTP/AVP 0\r\na=sendonly\r\n", D.SENDONLY),
    (SDP + "m=audio 4000 RTP/AVP 0\r\na=inactive\r\n", D.INACTIVE),
    (SDP + "m=audio 4000 RTP/AVP 0\r\na=recvonly\r\n", D.RECVONLY),
    (SDP + "a=sendonly\r\nm=audio 4000 RTP/AVP 0\r\n", D.SENDONLY),  # session level
    (SDP + "a=sendonly\r\nm=audio 4000 RTP/AVP 0\r\na=sendrecv\r\n", D.SENDRECV),  # the stream's wins
    (SDP + "m=audio 0 RTP/AVP 0\r\n", D.INACTIVE),  # refused stream
    (SDP + "m=video 5000 RTP/AVP 96\r\na=inactive\r\nm=audio 4000 RTP/AVP 0\r\n", D.SENDRECV),
    (SDP + "m=audio 4000 RTP/AVP 0\r\nm=audio 4002 RTP/AVP 0\r\na=sendonly\r\n", D.SENDRECV),  # the first
    (SDP.replace("10.0.0.1\r\ns", "10.0.0.1\r\ns").replace("c=IN IP4 10.0.0.1", "c=IN IP4 0.0.0.0")
     + "m=audio 4000 RTP/AVP 0\r\n", D.SENDONLY),  # RFC 2543 hold
    (SDP + "m=audio 4000 RTP/AVP 0\r\nc=IN IP4 0.0.0.0\r\na=recvonly\r\n", D.INACTIVE),
    (SDP + "m=video 5000 RTP/AVP 96\r\n", D.INACTIVE),  # no audio at all
    ("", D.INACTIVE),
    ("garbage\nm=audio\na=\nc=IN\n", D.SENDRECV),
])
def test_the_audio_direction_of_an_offer(sdp: str, want: MediaDirection) -> None:
    assert audio_direction(sdp) is want
    assert audio_direction(sdp.replace("\r\n", "\n")) is want


def test_direction_properties() -> None:
    assert [(d.sends, d.receives) for d in D] == [(True, True), (True, False), (False, True), (False, False)]


# -- DTMF policy --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("mode", "fallback", "arrived", "te", "want"), [
    (DtmfMode.RFC4733, DtmfFallback.INBAND, M.SIP_INFO, True, M.RFC4733),
    (DtmfMode.RFC4733, DtmfFallback.INBAND, M.RFC4733, False, M.INBAND),
    (DtmfMode.RFC4733, DtmfFallback.INFO, M.SIP_INFO_DTMF, False, M.SIP_INFO),
    (DtmfMode.RFC4733, DtmfFallback.DROP, M.RFC4733, False, None),
    (DtmfMode.INFO, DtmfFallback.DROP, M.RFC4733, False, M.SIP_INFO),
    (DtmfMode.INFO_DTMF, DtmfFallback.INBAND, M.RFC4733, True, M.SIP_INFO_DTMF),
    (DtmfMode.SAME, DtmfFallback.INBAND, M.SIP_INFO_DTMF, True, M.SIP_INFO_DTMF),
    (DtmfMode.SAME, DtmfFallback.INBAND, M.RFC4733, True, M.RFC4733),
    (DtmfMode.SAME, DtmfFallback.INFO, M.RFC4733, False, M.SIP_INFO),
    (DtmfMode.OFF, DtmfFallback.INBAND, M.RFC4733, True, None),
])
def test_how_a_digit_is_sent(mode: DtmfMode, fallback: DtmfFallback, arrived: DtmfMethod, te: bool,
                             want: DtmfMethod | None) -> None:
    assert send_method(mode, fallback, arrived, lambda: te) is want


def test_telephone_event_is_asked_only_when_it_matters() -> None:
    def boom() -> bool:
        raise AssertionError("asked")

    assert send_method(DtmfMode.INFO, DtmfFallback.INBAND, M.RFC4733, boom) is M.SIP_INFO


@pytest.mark.parametrize(("given", "sent"), [(200, 200), (0, DTMF_DEFAULT_MS), (10, 40), (9_999, 5000),
                                             (0xFFFF, DTMF_DEFAULT_MS), (2**32 - 1, DTMF_DEFAULT_MS)])
def test_digit_lengths(given: int, sent: int) -> None:
    assert digit_length(given) == sent


@pytest.mark.parametrize(("body", "digit"), [("5", "5"), ("5\r\n", "5"), (" # ", "#"), ("a", "A"), ("55", ""),
                                             ("", ""), ("Signal=5", ""), ("E", ""), ("\x00", "")])
def test_info_dtmf_bodies(body: str, digit: str) -> None:
    assert info_dtmf_digit(body) == digit


def test_config_names_match_the_bridges_enums() -> None:
    assert tuple(m.value for m in DtmfMode) == DTMF_MODES
    assert tuple(m.value for m in DtmfFallback) == DTMF_FALLBACKS
    assert tuple(m.value for m in HoldMode) == HOLD_MODES
    config = parse_config({"sip": {"dtmf": "same", "dtmf_fallback": "info", "hold": "absorb", "rtp_timeout": 30}})
    assert policy(config.sip) == MediaPolicy(DtmfMode.SAME, DtmfFallback.INFO, HoldMode.ABSORB, 5.0, 30.0, 400,
                                             strict_source=True)


@pytest.mark.parametrize(("sip", "message"), [
    ({"dtmf": "2833"}, "[sip] dtmf: '2833' is not one of rfc4733, info, info-dtmf, same, off"),
    ({"dtmf_fallback": "tones"}, "[sip] dtmf_fallback: 'tones' is not one of inband, info, drop"),
    ({"hold": "forward"}, "[sip] hold: 'forward' is not one of relay, absorb"),
    ({"rtp_timeout": 30, "rtp_watch_interval": 0}, "[sip] rtp_timeout: needs rtp_watch_interval above 0"),
    ({"rtp_flood_pps": 10}, "[sip] rtp_flood_pps"),
])
def test_bad_media_settings(sip: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"sip": sip}, "config.toml")
    assert message in str(err.value)


# -- audio ---------------------------------------------------------------------------------------------


def test_early_media_is_connected_then_replaced_by_the_answer() -> None:
    a, b1, b2 = Leg(0), Leg(1), Leg(2)
    host = Host(a, b1, b2)
    bridge = host.bridge
    b1.media_ready = False
    bridge.select(1, early=True)
    assert a.actions == []  # b1's media is not there yet
    b1.media_ready = True
    bridge.media_ready(1)
    assert a.did("connect") == [(1,)] and (bridge.peer, bridge.early, bridge.connected) == (1, True, True)
    bridge.media_ready(2)  # not the peer: nothing
    bridge.answer(2)
    assert a.actions[-2:] == [("disconnect", 1), ("connect", 2)]
    assert (bridge.peer, bridge.early, bridge.answered) == (2, False, True)
    bridge.media_ready(0)  # the caller renegotiated: connected again (pjsua may have a new port)
    assert a.did("connect") == [(1,), (2,), (2,)]


def test_the_early_leg_answering_stays_connected() -> None:
    host, a, _b = answered()
    assert a.actions == [("connect", 1)]
    host.bridge.select(1, early=False)
    assert "disconnect" not in [x[0] for x in a.actions]


def test_a_gone_peer_is_disconnected_and_forgotten() -> None:
    a, b1, b2 = Leg(0), Leg(1), Leg(2)
    host = Host(a, b1, b2)
    host.bridge.select(1, early=True)
    del host.legs[1]
    host.bridge.leg_gone(b1)  # its stream lives until pjsua ends it: disconnected now
    assert a.actions[-1] == ("disconnect", 1) and host.bridge.peer == 0
    host.bridge.select(2, early=True)  # the next leg's early media
    assert a.actions[-1] == ("connect", 2)
    host.bridge.leg_gone(b1)  # twice: nothing more
    assert a.actions[-1] == ("connect", 2)


def test_nothing_is_connected_after_close() -> None:
    host, a, _b = answered()
    host.bridge.close()
    host.bridge.media_ready(0)
    host.bridge.select(1, early=False)
    assert a.actions == [("connect", 1)]


def test_a_connection_the_conference_does_not_carry_is_made_again(log_lines: list[tuple[str, str]]) -> None:
    # pjmedia applies a connection on its clock's next tick; the bridge looks that it took
    host, a, _b = answered()
    a.deaf_to = frozenset({1})  # the caller does not hear the gateway
    host.advance(VERIFY_DELAY + 0.05)
    assert a.did("connect") == [(1,), (1,)]
    assert ("INFO", "audio: leg 0 does not hear leg 1 (conference ports 20 and 22): connecting again") in log_lines
    a.deaf_to = frozenset()  # it took this time: no more
    host.advance(10 * VERIFY_DELAY)
    assert a.did("connect") == [(1,), (1,)]
    assert ("DEBUG", "audio: leg 0 (port 20) <-> leg 1 (port 22): connected") in log_lines


def test_a_connection_that_never_takes_is_tried_a_bounded_number_of_times(log_lines: list[tuple[str, str]]) -> None:
    host, a, b = answered()
    b.deaf_to = frozenset({0})
    host.advance(10 * VERIFY_DELAY)
    assert len(a.did("connect")) == 1 + VERIFY_RECONNECTS
    gave_up = [m for _level, m in log_lines if m.endswith("left as it is")]
    assert gave_up == [f"audio: leg 1 does not hear leg 0 (conference ports 20 and 22) after connecting "
                       f"{VERIFY_RECONNECTS} times more: left as it is"]


def test_the_look_is_for_the_latest_connection_and_stops_with_the_peer_or_the_call() -> None:
    host, a, b = answered()
    a.deaf_to = frozenset({1})
    host.advance(VERIFY_DELAY / 2)
    host.bridge.media_ready(0)  # connected again after a renegotiation: the look waits for that one
    host.advance(VERIFY_DELAY / 2 + 0.05)
    assert a.did("connect") == [(1,), (1,)]
    host.advance(VERIFY_DELAY / 2)
    assert a.did("connect") == [(1,), (1,), (1,)]
    del host.legs[1]
    host.bridge.leg_gone(b)
    host.advance(10 * VERIFY_DELAY)
    assert a.did("connect") == [(1,), (1,), (1,)]
    host2, a2, _b2 = answered()
    a2.deaf_to = frozenset({1})
    host2.bridge.close()
    host2.advance(10 * VERIFY_DELAY)
    assert a2.did("connect") == [(1,)]


def test_no_look_without_audio_ports() -> None:
    host, a, _b = answered()
    a.hears = lambda other: None  # type: ignore[method-assign]  # held inactive: no port to look at
    host.advance(10 * VERIFY_DELAY)
    assert a.did("connect") == [(1,)]


# -- DTMF ----------------------------------------------------------------------------------------------

def rfc(digit: str, ms: int, ts: int = 1000, *, update: bool = False, end: bool = False) -> DtmfReceived:
    return DtmfReceived(digit, ms, M.RFC4733, ts, update, end)


def test_an_rfc4733_digit_is_sent_once_when_it_ends_with_its_length() -> None:
    host, a, b = answered()
    bridge = host.bridge
    bridge.dtmf(0, rfc("5", 20))
    for ms in (40, 60, 80):
        bridge.dtmf(0, rfc("5", ms, update=True))
    assert b.did("dtmf") == []
    bridge.dtmf(0, rfc("5", 100, update=True, end=True))
    assert b.did("dtmf") == [("5", 100, M.RFC4733)]
    host.advance(3 * DTMF_STALL)  # no stall relay after the end
    assert b.did("dtmf") == [("5", 100, M.RFC4733)]
    bridge.dtmf(1, rfc("#", 120, ts=7, end=True))  # an end alone (the rest lost), from the gateway
    assert a.did("dtmf") == [("#", 120, M.RFC4733)]


def test_a_digit_whose_end_was_lost_is_sent_when_its_updates_stop() -> None:
    host, _a, b = answered()
    host.bridge.dtmf(0, rfc("7", 20))
    for ms in (40, 60, 80, 100, 120, 140, 160):  # a long key press: updates keep it alive
        host.advance(0.05)
        host.bridge.dtmf(0, rfc("7", ms, update=True))
    host.advance(0.3)
    assert b.did("dtmf") == []
    host.advance(2 * DTMF_STALL)
    assert b.did("dtmf") == [("7", 160, M.RFC4733)]
    # its reports come back after all (late updates, the end): the digit went already
    host.bridge.dtmf(0, rfc("7", 180, update=True))
    host.bridge.dtmf(0, rfc("7", 200, update=True, end=True))
    host.advance(3 * DTMF_STALL)
    assert b.did("dtmf") == [("7", 160, M.RFC4733)]
    host.bridge.dtmf(0, rfc("7", 100, ts=2000, end=True))  # the same key pressed again: a new digit
    assert b.did("dtmf") == [("7", 160, M.RFC4733), ("7", 100, M.RFC4733)]


def test_a_new_digit_before_the_last_ended_sends_the_last_first() -> None:
    host, _a, b = answered()
    host.bridge.dtmf(0, rfc("1", 60, ts=10))
    host.bridge.dtmf(0, rfc("2", 20, ts=20))
    host.bridge.dtmf(0, rfc("2", 80, ts=20, update=True, end=True))
    assert b.did("dtmf") == [("1", 60, M.RFC4733), ("2", 80, M.RFC4733)]


def test_info_digits_go_at_once_and_other_legs_digits_nowhere() -> None:
    a, b1, b2 = Leg(0), Leg(1, telephone_event=False), Leg(2)
    host = Host(a, b1, b2)
    host.bridge.answer(1)
    host.bridge.dtmf(0, DtmfReceived("9", 250, M.SIP_INFO, end=True))
    host.bridge.dtmf(0, DtmfReceived("8", 0, M.SIP_INFO_DTMF, end=True))
    assert b1.did("dtmf") == [("9", 250, M.INBAND), ("8", DTMF_DEFAULT_MS, M.INBAND)]  # no telephone-event
    host.bridge.dtmf(2, rfc("1", 100, end=True))  # a losing fork
    assert a.did("dtmf") == [] and b2.did("dtmf") == []


def test_a_refused_rfc4733_digit_goes_by_the_fallback(log_lines: list[tuple[str, str]]) -> None:
    host, _a, b = answered(dtmf_fallback=DtmfFallback.INFO)
    b.refuse = ["dtmf"]  # the stream cannot send events now
    host.bridge.dtmf(0, rfc("3", 100, end=True))
    assert b.did("dtmf") == [("3", 100, M.SIP_INFO)]
    b.refuse = ["dtmf", "dtmf"]
    host.bridge.dtmf(0, rfc("4", 100, ts=2, end=True))
    assert b.did("dtmf") == [("3", 100, M.SIP_INFO)]
    assert ("WARNING", "DTMF from leg 0 could not be sent to leg 1 as rfc4733 nor sip-info: dtmf refused") \
        in log_lines


def test_dtmf_off_and_closed_relay_nothing() -> None:
    host, _a, b = answered(dtmf=DtmfMode.OFF)
    host.bridge.dtmf(0, rfc("3", 100, end=True))
    host2, _a2, b2 = answered()
    host2.bridge.dtmf(0, rfc("3", 20))
    host2.bridge.close()
    host2.advance(3 * DTMF_STALL)
    host2.bridge.dtmf(0, rfc("4", 100, ts=5, end=True))
    assert b.did("dtmf") == [] and b2.did("dtmf") == []


def test_digits_during_early_media_reach_the_early_leg() -> None:
    a, b = Leg(0), Leg(1)
    host = Host(a, b)
    host.bridge.select(1, early=True)
    host.bridge.dtmf(0, rfc("1", 120, end=True))
    assert b.did("dtmf") == [("1", 120, M.RFC4733)]


# -- hold ---------------------------------------------------------------------------------------------------


def test_hold_and_resume_are_relayed_once_each(log_lines: list[tuple[str, str]]) -> None:
    host, a, b = answered()
    bridge = host.bridge
    bridge.remote_offer(0, RemoteOffer(D.SENDONLY))
    assert b.did("direction") == [(D.SENDONLY,)]
    bridge.remote_offer(0, RemoteOffer(D.SENDONLY))  # a refresh while on hold
    bridge.remote_offer(0, RemoteOffer(D.SENDRECV))
    assert b.did("direction") == [(D.SENDONLY,), (D.SENDRECV,)]
    bridge.remote_offer(1, RemoteOffer(D.INACTIVE))  # the gateway holds
    bridge.remote_offer(1, RemoteOffer(D.SENDRECV))
    assert a.did("direction") == [(D.INACTIVE,), (D.SENDRECV,)]
    assert ("INFO", "the caller holds (sendonly): offering sendonly to leg 1") in log_lines
    assert ("INFO", "the gateway resumes: offering sendrecv to leg 0") in log_lines


def test_a_refresh_goes_nowhere() -> None:
    host, a, b = answered()
    host.bridge.remote_offer(0, RemoteOffer(D.SENDRECV))
    host.bridge.remote_offer(1, RemoteOffer(D.SENDRECV))
    assert a.did("direction") == [] and b.did("direction") == []


def test_absorbed_and_early_offers_are_not_relayed() -> None:
    host, _a, b = answered(hold=HoldMode.ABSORB)
    host.bridge.remote_offer(0, RemoteOffer(D.SENDONLY))
    a2, b2 = Leg(0), Leg(1)
    host2 = Host(a2, b2)
    host2.bridge.select(1, early=True)
    host2.bridge.remote_offer(0, RemoteOffer(D.SENDONLY))  # an UPDATE in the early dialog
    assert b.did("direction") == [] and b2.did("direction") == []


def test_an_offer_that_cannot_go_now_is_tried_again(log_lines: list[tuple[str, str]]) -> None:
    host, _a, b = answered()
    b.refuse = ["direction", "direction"]  # a re-INVITE of ours is still pending
    host.bridge.remote_offer(0, RemoteOffer(D.SENDONLY))
    assert b.did("direction") == []
    host.advance(2.5)
    assert b.did("direction") == [(D.SENDONLY,)]
    b.refuse = ["direction"] * 10
    host.bridge.remote_offer(0, RemoteOffer(D.SENDRECV))
    host.advance(10)
    assert ("WARNING", "cannot offer sendrecv to leg 1 after 6 tries: direction refused") in log_lines


def test_a_hold_before_the_callers_ack_waits_for_it(log_lines: list[tuple[str, str]]) -> None:
    # a gateway may hold at once, before the caller's ACK of our 200 reaches us: no re-INVITE
    # may go before that ACK (pjsua refused it, with an ERROR line naming no call, and the
    # bridge tried again a second later)
    host, a, _b = answered()
    a.state = LegState.ANSWERED
    host.bridge.remote_offer(1, RemoteOffer(D.SENDONLY))
    host.advance(3)
    assert a.did("direction") == []
    a.state = LegState.CONFIRMED
    host.bridge.confirmed(0)
    assert a.did("direction") == [(D.SENDONLY,)]
    host.bridge.confirmed(0)  # nothing more to send
    host.advance(3)
    assert a.did("direction") == [(D.SENDONLY,)]
    assert not [line for line in log_lines if line[0] in ("WARNING", "ERROR")]


def test_glare_is_retried_and_a_refusal_is_accepted(log_lines: list[tuple[str, str]]) -> None:
    host, a, b = answered()
    host.bridge.remote_offer(0, RemoteOffer(D.SENDONLY))
    host.bridge.offer_failed(1, OfferFailed(491, "Request Pending"))
    host.advance(2.0)
    assert b.did("direction") == [(D.SENDONLY,)]
    host.advance(1.0)  # 2.5 s for a B leg (we own its Call-ID)
    assert b.did("direction") == [(D.SENDONLY,), (D.SENDONLY,)]
    host.bridge.offer_failed(1, OfferFailed(488, "Not Acceptable Here"))
    host.advance(5)
    assert b.did("direction") == [(D.SENDONLY,), (D.SENDONLY,)]
    assert ("WARNING", "leg 1 refused the re-INVITE offering sendonly: 488 Not Acceptable Here; the call goes on "
            "as it was") in log_lines
    host.bridge.offer_failed(0, OfferFailed(491, "Request Pending"))  # nothing was asked of the caller
    host.advance(5)
    assert a.did("direction") == []


def test_close_cancels_a_pending_retry() -> None:
    host, _a, b = answered()
    b.refuse = ["direction"]
    host.bridge.remote_offer(0, RemoteOffer(D.INACTIVE))
    host.bridge.close()
    host.advance(5)
    assert b.did("direction") == []


# -- the RTP watch -------------------------------------------------------------------------------------------


def stats(rx: int, discarded: int = 0, source: str = "10.0.0.1:4000",
          direction: MediaDirection = D.SENDRECV) -> MediaStats:
    return MediaStats(codec="PCMU/8000", direction=direction, rx_packets=rx, rx_discarded=discarded,
                      remote="10.0.0.1:4000", source=source)


def test_watch_floods_sources_and_silence() -> None:
    watch = RtpWatch(flood_pps=400)
    assert watch.sample(0.0, stats(0)).flood_started == 0
    report = watch.sample(5.0, stats(250))  # 50 a second
    assert (report.flood_started, report.flood_ended, report.new_source, report.silent_for) == (0, 0, "", 0)
    report = watch.sample(10.0, stats(500, discarded=20_000))
    assert report.flood_started == pytest.approx(4050)
    assert watch.sample(15.0, stats(750, discarded=40_000)).flood_started == 0  # still the same flood
    report = watch.sample(20.0, stats(1000, discarded=40_000))
    assert report.flood_ended == 20_250 + 20_250  # what came with the flood's two samples
    report = watch.sample(25.0, stats(1000, source="10.9.9.9:1234"))
    assert report.new_source == "10.9.9.9:1234" and report.silent_for == 5.0
    assert watch.sample(30.0, stats(1000, source="10.9.9.9:1234")).new_source == ""  # once per source
    for i in range(5):
        watch.sample(31.0 + i, stats(1000, source=f"10.8.8.{i}:1"))
    assert len(watch.sources) == 3 and watch.sources_unlogged == 3
    assert watch.sample(40.0, stats(1000)).silent_for == 20.0
    assert watch.sample(45.0, stats(1000, direction=D.SENDONLY)).silent_for == 0  # on hold: nothing owed
    assert watch.sample(50.0, stats(1000, source="")).new_source == ""  # nothing received yet


def test_the_watch_logs_a_flood_once_with_the_call_id_and_ends_a_silent_call() -> None:
    records: list[tuple[str, str, Any]] = []
    sink = logger.add(lambda m: records.append((m.record["level"].name, m.record["message"],
                                                m.record["extra"].get("call_id"))), level="INFO", format="{message}")
    try:
        host, a, b = answered(watch_interval=5.0, rtp_timeout=20.0)
        for second in range(1, 6):  # a flood to the caller's port for 25 s
            a.stats = stats(50 * 5 * second, discarded=10_000 * second, source="10.6.6.6:999")
            b.stats = stats(50 * 5 * second)
            host.advance(5.0, step=1.0)
        assert host.timeouts == []
        for second in range(6, 12):  # the gateway falls silent, the caller goes on
            a.stats = stats(50 * 5 * second, discarded=50_000, source="10.6.6.6:999")
            host.advance(5.0, step=1.0)
    finally:
        logger.remove(sink)
    warnings = [r[1].split(":")[0] for r in records if r[0] == "WARNING"]
    assert warnings == ["RTP flood to leg 0"]  # once, however long it lasts
    assert [r[1] for r in records if "comes from" in r[1]] == [
        "RTP to leg 0 comes from 10.6.6.6:999, not 10.0.0.1:4000 as its SDP says: the leg keeps the first source "
        "it heard, the rest is dropped"]  # INFO: a NATed peer does this on every call
    assert all(r[2] == "c1" for r in records)
    assert host.timeouts == [(1, 20.0)]
    assert any("no RTP from leg 1 for" in r[1] for r in records)


def test_a_held_stream_without_rtp_is_not_timed_out() -> None:
    host, a, b = answered(watch_interval=5.0, rtp_timeout=10.0)
    b.stats = stats(100)
    for second in range(1, 9):  # the caller talks throughout; the gateway's stream is held 30 s
        a.stats = stats(250 * second)
        if second == 2:
            b.stats = None  # held inactive: no stream at all
        if second == 8:
            b.stats = stats(100)  # resumed: nothing owed yet
        host.advance(5.0, step=1.0)
    assert host.timeouts == []
    a.stats = stats(250 * 9)
    host.advance(5.0, step=1.0)
    assert host.timeouts == [(1, 10.0)]  # silent since the resume


def test_no_watch_when_off() -> None:
    host, a, _b = answered(watch_interval=0.0)
    a.stats = None
    host.advance(VERIFY_DELAY + 0.1)  # the look at the new connection
    assert not host.scheduler._heap  # type: ignore[attr-defined]


def test_dropped_packets_from_a_source_the_sample_missed_are_looked_at_again(log_lines: Any) -> None:
    # pjmedia keeps only the last source of a leg's RTP: a sample that lands just after the
    # peer's packet sees the peer although a stranger's packets are being dropped
    host, a, b = answered(watch_interval=0.5)
    b.stats = stats(100)
    a.stats = stats(25)
    host.advance(0.5, step=0.001)  # the first sample: the baseline
    a.stats = stats(50, discarded=300)  # dropped packets, the peer last
    host.advance(0.5, step=0.001)
    assert [line for line in log_lines if "comes from" in line[1]] == []
    a.stats = stats(50, discarded=310, source="10.6.6.6:999")  # the second look finds the stranger
    host.advance(0.02, step=0.001)
    assert [line for line in log_lines if "comes from" in line[1]] == [
        ("INFO", "RTP to leg 0 comes from 10.6.6.6:999, not 10.0.0.1:4000 as its SDP says: the leg keeps the "
                 "first source it heard, the rest is dropped")]
    a.stats = stats(75, discarded=310)  # nothing more dropped: no looks
    host.advance(1.0, step=0.001)
    assert len([line for line in log_lines if "comes from" in line[1]]) == 1
    assert host.bridge._looks == {}


def test_the_looks_give_up_after_three_and_stop_with_the_call() -> None:
    host, a, b = answered(watch_interval=0.5)
    b.stats = stats(100)
    a.stats = stats(25)
    host.advance(0.5, step=0.001)
    a.stats = stats(50, discarded=300)  # the stranger is never the last source seen
    calls = 0
    original = a.media_stats

    def counted() -> MediaStats | None:
        nonlocal calls
        calls += 1
        return original()

    a.media_stats = counted  # type: ignore[method-assign]
    host.advance(0.5 + 0.06, step=0.001)  # the sample at 1.0 s and its three looks
    assert calls == 4 and host.bridge._looks == {}
    a.stats = stats(50, discarded=600)
    host.advance(0.44 + 0.003, step=0.001)  # the next sample schedules looks; the call ends
    assert host.bridge._looks
    host.bridge.close()
    assert host.bridge._looks == {}


def test_what_is_not_a_dtmf_event_is_not_sent_on(log_lines: list[tuple[str, str]]) -> None:
    # pjsua reports whatever byte follows "Signal=" in an INFO application/dtmf-relay as the digit:
    # sent on, each failed in pjmedia (two pjsip ERROR lines) or, undecodable, raised out of pjsua2
    host, _a, b = answered()
    for digit in ("X", "\udcc3", "\r", "5", "a", "R"):
        host.bridge.dtmf(0, DtmfReceived(digit, 200, M.SIP_INFO, end=True))
    assert b.did("dtmf") == [("5", 200, M.RFC4733), ("A", 200, M.RFC4733), ("R", 200, M.RFC4733)]
    assert {level for level, _ in log_lines} == {"DEBUG"}
    assert ("DEBUG", "DTMF 'X' from leg 0: not a DTMF event (0-9, *, #, A-D, R): not sent on") in log_lines
    assert ("DEBUG", "DTMF '\\xc3' from leg 0: not a DTMF event (0-9, *, #, A-D, R): not sent on") in log_lines


def test_a_leg_gives_its_tone_generator_back_after_its_in_band_digits() -> None:
    # the bridge has a few spare conference ports for every call's generators: a leg holds one
    # only while its digits play, and a little after (a next digit reuses it)
    host, _a, b = answered()
    b.te = False  # no telephone-event: in-band tones
    b.tones_busy_for = 1
    host.bridge.dtmf(0, rfc("5", 200, end=True))
    host.bridge.dtmf(0, rfc("6", 200, ts=2, end=True))
    assert b.did("dtmf") == [("5", 200, M.INBAND), ("6", 200, M.INBAND)]
    host.advance(0.2 + TONES_LINGER - 0.1)
    assert b.did("release_tones") == []  # the second digit moved the release on
    host.advance(0.2)
    assert b.did("release_tones") == [()]  # still playing: asked again later
    host.advance(TONES_LINGER + 0.2)
    assert b.did("release_tones") == [(), ()]
    host.advance(3 * TONES_LINGER)
    assert b.did("release_tones") == [(), ()]


def test_rfc4733_digits_hold_no_tone_generator() -> None:
    host, _a, b = answered()
    host.bridge.dtmf(0, rfc("5", 200, end=True))
    host.advance(3 * TONES_LINGER)
    assert b.did("dtmf") == [("5", 200, M.RFC4733)] and b.did("release_tones") == []


@pytest.mark.parametrize(("codec", "longest"), [
    ("PCMU/8000", 8191), ("G722/16000", 8191), ("opus/48000/2", 1365), ("L16/16000", 4095), ("", 8191),
    ("speex/32000", 2047), ("x/0", 8191), ("x/abc", 8191),
])
def test_an_rfc4733_digit_fits_its_16_bit_duration(codec: str, longest: int) -> None:
    assert rfc4733_max_ms(codec) == longest


def test_a_long_digit_toward_opus_is_sent_as_long_as_one_event_can_say() -> None:
    host, _a, b = answered()
    b.stats = MediaStats(codec="opus/48000/2", remote="10.0.0.1:4000")
    host.bridge.dtmf(0, rfc("5", 3000, end=True))
    assert b.did("dtmf") == [("5", 1365, M.RFC4733)]
    b.stats = MediaStats(codec="PCMA/8000", remote="10.0.0.1:4000")
    host.bridge.dtmf(0, rfc("6", 3000, ts=2, end=True))
    assert b.did("dtmf")[-1] == ("6", 3000, M.RFC4733)
