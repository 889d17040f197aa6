"""DTMF through the B2BUA (issue 11, item 2), asserted on what each side received.

RFC 4733 digits pressed on either side arrive on the other with their digits and lengths; SIP
INFO (application/dtmf-relay, application/dtmf) is converted to RFC 4733 or relayed as INFO as
``[sip] dtmf`` says; a gateway that negotiated no telephone-event gets the digits in-band (heard
in its recording) or by INFO as ``[sip] dtmf_fallback`` says.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from b2bua.bridge import TONES_LINGER

from ..configs import ListEntry, start_b2bua
from ..conftest import B2buaFactory, MediaPeerFactory
from ..harness import AddressAllocator, wait_until
from .expect import CALLER_HZ, GATEWAY_HZ, b2bua_uri
from .peers import Event, MediaPeer
from .tones import dtmf_digits, read_wav

#: what an RFC 4733 digit's length may be off by after two hops (each receiver reports the length
#: of the last packet it got: 20 ms steps, and an end packet may come a step late)
LENGTH_SLACK_MS = 60


def call_through(media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory, workdir: Path,
                 addresses: AddressAllocator, *, gateway: dict[str, Any] | None = None,
                 phone: dict[str, Any] | None = None, **sip: Any) -> tuple[MediaPeer, MediaPeer, int]:
    """A gateway, a B2BUA with ``[sip]`` settings ``sip`` and a phone in an answered call: (phone, gw, call)."""
    gw = media_peer_factory(name="gw", **{"tone": GATEWAY_HZ[0], **(gateway or {})})
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri)], sip=sip)
    caller = media_peer_factory(name="phone", **{"tone": CALLER_HZ, **(phone or {})})
    (number,) = caller.call(b2bua_uri(b2b))
    caller.wait_state(number, "CONFIRMED")
    gw.wait_state(1, "CONFIRMED")
    return caller, gw, number


def received(digits: list[Event]) -> list[tuple[str, str]]:
    return [(d["digit"], d["method"]) for d in digits]


def assert_lengths(digits: list[Event], want_ms: int) -> None:
    for digit in digits:
        assert abs(digit["duration_ms"] - want_ms) <= LENGTH_SLACK_MS, digit


def test_rfc4733_both_ways_with_their_lengths(media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory,
                                              workdir: Path, addresses: AddressAllocator) -> None:
    phone, gw, number = call_through(media_peer_factory, b2bua_factory, workdir, addresses)
    phone.dtmf(number, "159#", duration_ms=200)
    gw.dtmf(1, "*0D", duration_ms=120)
    at_gw, at_phone = gw.wait_digits(1, 4), phone.wait_digits(number, 3)
    assert received(at_gw) == [(c, "rfc4733") for c in "159#"]
    assert received(at_phone) == [(c, "rfc4733") for c in "*0D"]
    assert_lengths(at_gw, 200)
    assert_lengths(at_phone, 120)
    phone.hangup(number)


#: (``[sip]`` settings, how the phone sends, how the gateway gets it, the length it gets)
CONVERSIONS = [
    ({}, "info", "rfc4733", 200),  # the default: everything becomes RFC 4733
    ({}, "info-dtmf", "rfc4733", 160),  # application/dtmf has no length: the default one
    ({"dtmf": "same"}, "info", "info", 200),
    ({"dtmf": "same"}, "info-dtmf", "info-dtmf", 0),
    ({"dtmf": "same"}, "rfc4733", "rfc4733", 200),
    ({"dtmf": "info"}, "rfc4733", "info", 200),
    ({"dtmf": "info-dtmf"}, "rfc4733", "info-dtmf", 0),
]


@pytest.mark.parametrize(("sip", "sent", "arrives", "length"), CONVERSIONS,
                         ids=[f"{c[0].get('dtmf', 'default')}-{c[1]}" for c in CONVERSIONS])
def test_digits_are_converted_as_configured(media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory,
                                            workdir: Path, addresses: AddressAllocator, sip: dict[str, str],
                                            sent: str, arrives: str, length: int) -> None:
    phone, gw, number = call_through(media_peer_factory, b2bua_factory, workdir, addresses, **sip)
    phone.dtmf(number, "42", method=sent, duration_ms=200)
    at_gw = gw.wait_digits(1, 2)
    assert received(at_gw) == [("4", arrives), ("2", arrives)]
    assert_lengths(at_gw, length)
    if sent == "info-dtmf":  # the B2BUA answered the caller's INFOs (pjsip alone would answer 500)
        oks = phone.events("rx", number)
        assert sum(1 for e in oks if e["method"] == "INFO" and e["code"] == 200) == 2, oks
    phone.hangup(number)


@pytest.mark.parametrize("clock_rate", [8000, 16000])
def test_a_gateway_without_telephone_event_hears_the_digits_in_band(
        media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory, workdir: Path,
        addresses: AddressAllocator, clock_rate: int) -> None:
    # the phone plays nothing, so the gateway's recording holds the digits' tones alone
    phone, gw, number = call_through(media_peer_factory, b2bua_factory, workdir, addresses,
                                     gateway={"telephone_event": False}, phone={"tone": None},
                                     clock_rate=clock_rate)
    (invite,) = gw.incoming()
    assert "telephone-event" in invite["sdp"]  # offered; the gateway's answer left it out
    phone.dtmf(number, "73*", duration_ms=200)
    time.sleep(1.5)  # the call goes on while the digits play (3 x 200 ms, each sent on as it ends)
    phone.hangup(number)
    samples, rate = read_wav(gw.recording(1))
    heard = dtmf_digits(samples, rate)
    assert [digit for digit, _ in heard] == list("73*"), heard
    for _, seconds in heard:
        assert abs(seconds - 0.2) <= 0.05, heard
    assert gw.digits(1) == []  # no RFC 4733, no INFO


def test_in_band_digits_after_the_tone_generator_was_given_back_are_heard(
        media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory, workdir: Path,
        addresses: AddressAllocator) -> None:
    # a leg gives its tone generator's conference port back TONES_LINGER after its last digit
    # (the bridge's spare ports are shared by every call); a later digit gets a new one
    phone, gw, number = call_through(media_peer_factory, b2bua_factory, workdir, addresses,
                                     gateway={"telephone_event": False}, phone={"tone": None})
    phone.dtmf(number, "7", duration_ms=200)
    time.sleep(0.2 + TONES_LINGER + 1.0)
    phone.dtmf(number, "3", duration_ms=200)
    time.sleep(1.0)
    phone.hangup(number)
    heard = dtmf_digits(*read_wav(gw.recording(1)))
    assert [digit for digit, _ in heard] == ["7", "3"], heard


def test_a_gateway_without_telephone_event_gets_info_when_so_configured(
        media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory, workdir: Path,
        addresses: AddressAllocator) -> None:
    phone, gw, number = call_through(media_peer_factory, b2bua_factory, workdir, addresses,
                                     gateway={"telephone_event": False}, dtmf_fallback="info")
    phone.dtmf(number, "8", duration_ms=200)
    at_gw = gw.wait_digits(1, 1)
    assert received(at_gw) == [("8", "info")]
    assert_lengths(at_gw, 200)
    phone.hangup(number)


def test_dtmf_off_relays_nothing(media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory,
                                 workdir: Path, addresses: AddressAllocator) -> None:
    phone, gw, number = call_through(media_peer_factory, b2bua_factory, workdir, addresses, dtmf="off")
    phone.dtmf(number, "12", method="rfc4733", duration_ms=100)
    phone.dtmf(number, "3", method="info", duration_ms=100)
    gw.dtmf(1, "4", duration_ms=100)
    time.sleep(1.5)  # relayed digits arrive within half a second (the tests above)
    assert gw.digits(1) == [] and phone.digits(number) == []
    phone.hangup(number)


def test_more_in_band_digits_than_pjmedia_queues_cost_no_more_than_those_digits(
        media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory, workdir: Path,
        addresses: AddressAllocator) -> None:
    # pjmedia's tone generator holds 32 digits and asserts (aborting the process) on the 33rd:
    # 40 long INFO digits at once toward a gateway without telephone-event must not get there
    gw = media_peer_factory(name="gw", tone=None, telephone_event=False)
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri)], sip={})
    phone = media_peer_factory(name="phone", tone=None)
    (number,) = phone.call(b2bua_uri(b2b))
    phone.wait_state(number, "CONFIRMED")
    gw.wait_state(1, "CONFIRMED")
    phone.dtmf(number, "1234567890" * 4, method="info", duration_ms=1000)
    time.sleep(3.0)  # the first digits play
    phone.hangup(number)
    assert gw.wait_ended(1)["code"] == 200  # the B2BUA is alive and hangs the gateway up
    heard = dtmf_digits(*read_wav(gw.recording(1)))
    assert heard and heard[0][0] == "1", heard  # the queued digits play in order
    log = b2b.process.log_text()
    assert log.count("could not be sent to leg") == 1, log  # the first refused digit, once
    assert "10 DTMF digits of this call could not be sent on" in log, log
    assert b2b.process.rpc("core.uptime")["uptime"] >= 0


def test_a_signal_that_is_no_digit_is_not_sent_on_and_costs_no_error(
        media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory, workdir: Path,
        addresses: AddressAllocator) -> None:
    # pjsua takes any byte after "Signal=" as the digit: sent on, 'X' failed in pjmedia (two pjsip
    # ERROR lines and a WARNING), and the two bytes of 'é' raised out of pjsua2 (an ERROR and a
    # traceback each): a caller could fill the log with ERRORs, one INFO at a time
    phone, gw, number = call_through(media_peer_factory, b2bua_factory, workdir, addresses,
                                     gateway={"telephone_event": False}, phone={"tone": None})
    phone.dtmf(number, "Xé5", method="info", duration_ms=200)

    def info_answers() -> list[int]:
        return [e["code"] for e in phone.events("rx", number) if e["method"] == "INFO" and e["code"]]

    wait_until(lambda: len(info_answers()) >= 4, 5.0, what="the answers to 4 INFOs (X, the 2 bytes of é, 5)")
    time.sleep(1.0)  # the 5 plays in-band
    phone.hangup(number)
    assert gw.wait_ended(1)["code"] == 200
    assert info_answers() == [200] * 4  # pjsua answers dtmf-relay itself
    heard = dtmf_digits(*read_wav(gw.recording(1)))
    assert [digit for digit, _ in heard] == ["5"], heard
    log = (workdir / "b2bua.log").read_text()
    assert "ERROR" not in log and "WARNING" not in log and "Traceback" not in log, log
