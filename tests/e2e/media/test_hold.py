"""Hold, resume and session refreshes through the B2BUA (issue 11, item 5).

A hold (re-INVITE or UPDATE with ``sendonly`` or ``inactive``) from either side keeps the call
up and, with ``[sip] hold = "relay"`` (the default), reaches the other side as a re-INVITE with
the same direction; the resume brings the audio back both ways (heard in the recordings). A
refresh (an offer with the direction unchanged) is answered on its own leg and goes nowhere.
With ``hold = "absorb"`` the other side is never told.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from ..configs import ListEntry, start_b2bua
from ..conftest import B2buaFactory, MediaPeerFactory
from ..harness import AddressAllocator
from .expect import CALLER_HZ, GATEWAY_HZ, b2bua_uri
from .peers import MediaPeer
from .tones import analyse_wav, read_wav

GW_HZ = GATEWAY_HZ[0]


def answered_call(media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory, workdir: Path,
                  addresses: AddressAllocator, **sip: Any) -> tuple[MediaPeer, MediaPeer, int]:
    gw = media_peer_factory(name="gw", tone=GW_HZ)
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri)], sip=sip)
    phone = media_peer_factory(name="phone", tone=CALLER_HZ)
    (number,) = phone.call(b2bua_uri(b2b))
    phone.wait_state(number, "CONFIRMED")
    gw.wait_state(1, "CONFIRMED")
    return phone, gw, number


def directions(peer: MediaPeer, call: int) -> list[str]:
    """The audio direction of each SDP offer ``peer`` received in ``call`` after the first."""
    found = []
    for event in peer.events("rx", call):
        if event["code"] or event["method"] not in ("INVITE", "UPDATE") or not event["body"].strip():
            continue
        sdp = event["body"]
        found.append(next((d for d in ("sendonly", "recvonly", "inactive") if f"a={d}" in sdp), "sendrecv"))
    return found


def tail_heard(peer: MediaPeer, call: int, seconds: float = 0.8) -> Any:
    """What ``peer`` heard in the last ``seconds`` of ``call``."""
    recording = peer.recording(call)
    samples, rate = read_wav(recording)
    return analyse_wav(recording, skip=max(0.0, samples.size / rate - seconds))


def wait_direction(peer: MediaPeer, call: int, count: int, direction: str) -> None:
    """Wait until ``peer`` received its ``count``-th in-dialog offer, and check its direction."""
    peer.wait_for("rx", call=call, what=f"offer {count}", where=lambda _e: len(directions(peer, call)) >= count)
    assert directions(peer, call)[count - 1] == direction, directions(peer, call)


@pytest.mark.parametrize(("direction", "method"), [("sendonly", "reinvite"), ("inactive", "reinvite"),
                                                   ("sendonly", "update")])
def test_the_callers_hold_reaches_the_gateway_and_the_resume_brings_the_audio_back(
        media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory, workdir: Path,
        addresses: AddressAllocator, direction: str, method: str) -> None:
    phone, gw, number = answered_call(media_peer_factory, b2bua_factory, workdir, addresses)
    assert directions(gw, 1) == []  # the initial INVITE is not in the dialog's rx events
    phone.hold(number, direction, method)
    phone.wait_for("media", call=number, where=lambda e: e["status"] == "local-hold")
    wait_direction(gw, 1, 1, direction)  # relayed as a re-INVITE with the same direction
    gw.wait_for("media", call=1, where=lambda e: e["status"] == "remote-hold")
    time.sleep(0.5)
    phone.unhold(number, method)
    wait_direction(gw, 1, 2, "sendrecv")
    gw.wait_for("media", call=1, where=lambda e: e["status"] == "active" and e["t"] > 0
                and any(h["status"] == "remote-hold" for h in gw.events("media", 1)))
    time.sleep(1.2)
    phone.hangup(number)
    assert gw.wait_ended(1)["code"] == 200  # the call stayed up until the caller's BYE
    # after the resume both hear each other again
    assert tail_heard(phone, number).is_tone(GW_HZ), tail_heard(phone, number).describe()
    assert tail_heard(gw, 1).is_tone(CALLER_HZ), tail_heard(gw, 1).describe()


def test_the_gateways_hold_reaches_the_caller(media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory,
                                              workdir: Path, addresses: AddressAllocator) -> None:
    phone, gw, number = answered_call(media_peer_factory, b2bua_factory, workdir, addresses)
    gw.hold(1, "inactive")
    wait_direction(phone, number, 1, "inactive")
    phone.wait_for("media", call=number, where=lambda e: e["status"] == "remote-hold")
    time.sleep(0.5)
    gw.unhold(1)
    wait_direction(phone, number, 2, "sendrecv")
    time.sleep(1.2)
    phone.hangup(number)
    assert tail_heard(phone, number).is_tone(GW_HZ), tail_heard(phone, number).describe()
    assert tail_heard(gw, 1).is_tone(CALLER_HZ), tail_heard(gw, 1).describe()


@pytest.mark.parametrize("method", ["update", "reinvite"])
def test_a_refresh_goes_nowhere_and_keeps_the_audio(media_peer_factory: MediaPeerFactory,
                                                    b2bua_factory: B2buaFactory, workdir: Path,
                                                    addresses: AddressAllocator, method: str) -> None:
    phone, gw, number = answered_call(media_peer_factory, b2bua_factory, workdir, addresses, session_timers=True)
    time.sleep(0.5)
    if method == "update":
        phone.command("update", call=number)  # an RFC 4028 refresh by UPDATE, our SDP unchanged
    else:
        phone.unhold(number)  # a re-INVITE offering sendrecv again: a refresh by re-INVITE
    phone.wait_for("rx", call=number, what="the answer to the refresh",
                   where=lambda e: e["method"] == method.replace("reinvite", "INVITE").upper() and e["code"] == 200
                   and e["t"] > phone.events("done")[-1]["t"] - 5)
    time.sleep(1.2)
    phone.hangup(number)
    assert directions(gw, 1) == []  # the gateway saw nothing of it
    assert tail_heard(phone, number).is_tone(GW_HZ), tail_heard(phone, number).describe()
    assert tail_heard(gw, 1).is_tone(CALLER_HZ), tail_heard(gw, 1).describe()


def test_absorbed_hold_is_answered_on_the_callers_leg_only(media_peer_factory: MediaPeerFactory,
                                                           b2bua_factory: B2buaFactory, workdir: Path,
                                                           addresses: AddressAllocator) -> None:
    phone, gw, number = answered_call(media_peer_factory, b2bua_factory, workdir, addresses, hold="absorb")
    phone.hold(number, "sendonly")
    phone.wait_for("media", call=number, where=lambda e: e["status"] == "local-hold")
    time.sleep(0.5)
    phone.unhold(number)
    phone.wait_for("media", call=number, where=lambda e: e["status"] == "active"
                   and any(h["status"] == "local-hold" for h in phone.events("media", number)))
    time.sleep(1.2)
    phone.hangup(number)
    assert directions(gw, 1) == []
    assert tail_heard(phone, number).is_tone(GW_HZ), tail_heard(phone, number).describe()
