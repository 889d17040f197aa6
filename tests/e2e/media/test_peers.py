"""The media peers themselves, phone to phone without the B2BUA: what the B2BUA tests rely on.

If these fail, a media test through the B2BUA proves nothing; if they pass, a difference through
the B2BUA is the B2BUA's. Each peer plays its own tone; what each hears is analysed.
"""

from __future__ import annotations

import time

import pytest

from ..conftest import MediaPeerFactory
from .expect import CALLER_HZ, GATEWAY_HZ, assert_heard
from .tones import analyse_wav, read_wav, timeline, tone_runs

GW_HZ = GATEWAY_HZ[0]


def test_two_phones_hear_each_other(media_peer_factory: MediaPeerFactory) -> None:
    gw = media_peer_factory("answer", name="gw", tone=GW_HZ)
    phone = media_peer_factory(name="phone", tone=CALLER_HZ)
    talk = phone.talk(gw.uri_for("svc"), seconds=1.5)
    assert talk.code == 200, talk.ended
    assert_heard(phone, talk.number, GW_HZ)
    assert_heard(gw, 1, CALLER_HZ)
    # the stream counters came along: 50 packets a second, none lost on loopback
    stats = talk.ended["stats"]
    assert stats["rx_packets"] > 40 and stats["tx_packets"] > 40, stats
    (media,) = [e for e in phone.events("media", talk.number) if e["status"] == "active"][:1]
    assert media["codec"] == "PCMU" and media["dir"] == "sendrecv", media


def test_a_rejecting_gateway_is_never_heard(media_peer_factory: MediaPeerFactory) -> None:
    gw = media_peer_factory("reject:486", tone=GW_HZ)
    phone = media_peer_factory(tone=CALLER_HZ)
    talk = phone.talk(gw.uri_for("svc"), seconds=0.5)
    assert talk.code == 486 and talk.recording is None, talk


@pytest.mark.parametrize("codec", ["G722", "opus", "G729", "PCMA"])
def test_each_codec_of_the_build_carries_the_tones(media_peer_factory: MediaPeerFactory, codec: str) -> None:
    gw = media_peer_factory(tone=GW_HZ, codecs=[codec], clock_rate=16000)
    phone = media_peer_factory(tone=CALLER_HZ, codecs=[codec], clock_rate=16000)
    talk = phone.talk(gw.uri_for("svc"), seconds=1.5)
    assert talk.code == 200, talk.ended
    codecs = {e.get("codec") for e in phone.events("media", talk.number) if e["status"] == "active"}
    assert codecs == {codec}, codecs
    assert_heard(phone, talk.number, GW_HZ)
    assert_heard(gw, 1, CALLER_HZ)


def test_early_media_is_heard_before_the_answer(media_peer_factory: MediaPeerFactory) -> None:
    gw = media_peer_factory("early-then-answer:1.5", tone=GW_HZ)
    phone = media_peer_factory(tone=CALLER_HZ)
    (number,) = phone.call(gw.uri_for("svc"))
    early = phone.wait_state(number, "EARLY")
    assert early["code"] == 183, early
    media = phone.wait_for("media", call=number)
    confirmed = phone.wait_state(number, "CONFIRMED")
    assert media["t"] < confirmed["t"], "the early media started only with the answer"
    time.sleep(0.5)  # some talk after the answer
    phone.hangup(number)
    samples, rate = read_wav(phone.recording(number))
    # the tone plays from the 183 on: over a second of it before the 200
    runs = tone_runs(timeline(samples, rate, window=0.1), [GW_HZ])
    assert max(n for hz, n in runs if hz == GW_HZ) >= 15, runs


def test_a_ringing_gateway_sends_no_audio_and_takes_a_cancel(media_peer_factory: MediaPeerFactory) -> None:
    gw = media_peer_factory("ring", tone=GW_HZ)
    phone = media_peer_factory(tone=CALLER_HZ)
    (number,) = phone.call(gw.uri_for("svc"))
    assert phone.wait_state(number, "EARLY")["code"] == 180
    phone.hangup(number)
    assert phone.wait_ended(number)["code"] == 487
    assert gw.wait_ended(1)["code"] == 487
    assert phone.recording(number) is None


@pytest.mark.parametrize("method", ["rfc4733", "info"])
def test_dtmf_both_ways(media_peer_factory: MediaPeerFactory, method: str) -> None:
    gw = media_peer_factory(tone=GW_HZ)
    phone = media_peer_factory(tone=CALLER_HZ)
    (number,) = phone.call(gw.uri_for("svc"))
    phone.wait_state(number, "CONFIRMED")
    gw.wait_state(1, "CONFIRMED")
    phone.dtmf(number, "159#", method=method, duration_ms=200)
    gw.dtmf(1, "*0", method=method, duration_ms=120)
    at_gw = gw.wait_digits(1, 4)
    at_phone = phone.wait_digits(number, 2)
    assert [(d["digit"], d["method"]) for d in at_gw] == [(c, method) for c in "159#"]
    assert [(d["digit"], d["method"]) for d in at_phone] == [(c, method) for c in "*0"]
    # RFC 4733 end events carry the duration played (a packet's worth of slack); INFO the one sent
    for event, want in [*((e, 200) for e in at_gw), *((e, 120) for e in at_phone)]:
        assert abs(event["duration_ms"] - want) <= 40, event
    phone.hangup(number)


def test_dtmf_as_info_application_dtmf(media_peer_factory: MediaPeerFactory) -> None:
    gw = media_peer_factory(tone=GW_HZ)
    phone = media_peer_factory(tone=CALLER_HZ)
    (number,) = phone.call(gw.uri_for("svc"))
    phone.wait_state(number, "CONFIRMED")
    phone.dtmf(number, "7", method="info-dtmf")
    info = gw.wait_for("rx", call=1, where=lambda e: e["method"] == "INFO")
    assert (info["content_type"], info["body"].strip()) == ("application/dtmf", "7"), info
    assert [(d["digit"], d["method"]) for d in gw.wait_digits(1, 1)] == [("7", "info-dtmf")]
    # the peer answered it (pjsip alone would have answered 500)
    phone.wait_for("rx", call=number, where=lambda e: e["method"] == "INFO" and e["code"] == 200)
    phone.hangup(number)


def test_hold_and_resume(media_peer_factory: MediaPeerFactory) -> None:
    gw = media_peer_factory(tone=GW_HZ)
    phone = media_peer_factory(tone=CALLER_HZ)
    (number,) = phone.call(gw.uri_for("svc"))
    phone.wait_state(number, "CONFIRMED")
    time.sleep(0.5)
    phone.hold(number)
    gw.wait_for("media", call=1, where=lambda e: e["status"] == "remote-hold")
    phone.wait_for("media", call=number, where=lambda e: e["status"] == "local-hold")
    time.sleep(0.5)
    phone.unhold(number)
    resumed = gw.wait_for("media", call=1, where=lambda e: e["status"] == "active" and e["t"] > 0
                          and any(h["status"] == "remote-hold" for h in gw.events("media", 1)))
    assert resumed["dir"] == "sendrecv", resumed
    time.sleep(1.0)
    phone.hangup(number)
    # after the resume the gateway hears the caller again: the last second is the caller's tone
    samples, rate = read_wav(gw.recording(1))
    tail = analyse_wav(gw.recording(1), skip=max(0.0, samples.size / rate - 0.8))
    assert tail.is_tone(CALLER_HZ), tail.describe()
