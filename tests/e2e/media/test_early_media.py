"""Early media through the B2BUA (issue 11, item 3), asserted on what the caller hears.

A gateway's 18x with SDP (an announcement, a ringback tone) reaches the caller as a 183 with the
B2BUA's own SDP, and the gateway's audio is bridged before the answer; the 200 then carries the
same SDP (one offer/answer on the caller's leg). With forking the first early media is heard,
replaced by the answering gateway's audio. A 180 without SDP is relayed as it is.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from ..configs import ListEntry, start_b2bua
from ..conftest import B2buaFactory, MediaPeerFactory
from ..harness import AddressAllocator
from .expect import CALLER_HZ, GATEWAY_HZ, b2bua_uri
from .peers import MediaPeer
from .tones import read_wav, timeline, tone_runs

#: what an early-media gateway plays before it answers (none of the gateways' own tones)
ANNOUNCEMENT_HZ = 1000.0
#: a tone is "there" for this many 100 ms windows in a row (0.6 s)
HEARD = 6


def runs(peer: MediaPeer, call: int, candidates: list[float]) -> list[tuple[float | None, int]]:
    """What ``peer`` heard in ``call``, as runs of 100 ms windows of each candidate tone."""
    samples, rate = read_wav(peer.recording(call))
    return tone_runs(timeline(samples, rate, window=0.1), candidates)


def heard(found: list[tuple[float | None, int]], hz: float) -> bool:
    return any(tone == hz and count >= HEARD for tone, count in found)


def media_lines(sdp: str) -> tuple[str, str]:
    """An SDP's origin version and audio media line: what must not change between 183 and 200."""
    origin = re.search(r"^o=.*$", sdp, re.MULTILINE)
    media = re.search(r"^m=audio .*$", sdp, re.MULTILINE)
    assert origin and media, sdp
    return origin.group(), media.group()


def test_the_caller_hears_the_announcement_in_a_183_then_the_answer(
        media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory, workdir: Path,
        addresses: AddressAllocator) -> None:
    gw = media_peer_factory("early-then-answer:2.5", name="gw", tone=GATEWAY_HZ[0], early_tone=ANNOUNCEMENT_HZ)
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri)])
    phone = media_peer_factory(name="phone", tone=CALLER_HZ)
    (number,) = phone.call(b2bua_uri(b2b))
    early = phone.wait_state(number, "EARLY")
    assert early["code"] == 183, early
    media = phone.wait_for("media", call=number)
    # an IVR in early media takes digits: the gateway gets them before it answers
    phone.dtmf(number, "1", duration_ms=120)
    assert [d["digit"] for d in gw.wait_digits(1, 1)] == ["1"]
    confirmed = phone.wait_state(number, "CONFIRMED")
    assert media["t"] < confirmed["t"]
    time.sleep(1.0)  # some talk after the answer
    phone.hangup(number)
    found = runs(phone, number, [ANNOUNCEMENT_HZ, GATEWAY_HZ[0]])
    labels = [tone for tone, count in found if tone is not None and count >= HEARD]
    assert labels == [ANNOUNCEMENT_HZ, GATEWAY_HZ[0]], found  # the announcement, then the answer
    # one offer/answer on the caller's leg: the 200 repeats the 183's SDP (RFC 3261 13.2.1)
    answers = [e for e in phone.events("rx", number) if e["method"] == "INVITE" and e["code"] in (183, 200)]
    sdps = {e["code"]: media_lines(e["body"]) for e in answers if e["body"].strip()}
    assert set(sdps) == {183, 200} and sdps[183] == sdps[200], answers
    # and the gateway heard the caller from its own answer on (its 183 took the caller's audio too)
    assert heard(runs(gw, 1, [CALLER_HZ]), CALLER_HZ)


def test_forked_the_first_early_media_is_heard_then_the_winner(
        media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory, workdir: Path,
        addresses: AddressAllocator) -> None:
    first = media_peer_factory("early", name="gw-early-first", tone=GATEWAY_HZ[2], early_tone=ANNOUNCEMENT_HZ)
    later = media_peer_factory("early", name="gw-early-later", delay=0.8, tone=GATEWAY_HZ[2],
                               early_tone=GATEWAY_HZ[1])
    winner = media_peer_factory("ring-then-answer:2.5", name="gw-winner", tone=GATEWAY_HZ[0])
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(),
                      [ListEntry(1, gw.uri) for gw in (first, later, winner)], algorithm="parallel")
    phone = media_peer_factory(name="phone", tone=CALLER_HZ)
    (number,) = phone.call(b2bua_uri(b2b))
    assert phone.wait_state(number, "CONFIRMED")
    time.sleep(1.0)
    phone.hangup(number)
    assert later.wait_state(1, "EARLY")  # it did play early media; nobody heard it
    found = runs(phone, number, [ANNOUNCEMENT_HZ, GATEWAY_HZ[1], GATEWAY_HZ[0]])
    labels = [tone for tone, count in found if tone is not None and count >= HEARD]
    assert labels == [ANNOUNCEMENT_HZ, GATEWAY_HZ[0]], found
    assert not any(tone == GATEWAY_HZ[1] for tone, _ in found), found
    for loser in (first, later):
        assert loser.wait_ended(1)["code"] == 487, f"{loser.name} was not cancelled"


def test_a_180_without_sdp_is_relayed_and_nothing_is_heard_before_the_answer(
        media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory, workdir: Path,
        addresses: AddressAllocator) -> None:
    gw = media_peer_factory("ring-then-answer:1.5", name="gw", tone=GATEWAY_HZ[0])
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri)])
    phone = media_peer_factory(name="phone", tone=CALLER_HZ)
    (number,) = phone.call(b2bua_uri(b2b))
    ringing = phone.wait_state(number, "EARLY")
    assert ringing["code"] == 180, ringing
    confirmed = phone.wait_state(number, "CONFIRMED")
    time.sleep(1.0)
    phone.hangup(number)
    first_media = min(e["t"] for e in phone.events("media", number))
    assert first_media >= confirmed["t"] - 0.05, "media before the answer: the 180 carried SDP"
    rx = [e for e in phone.events("rx", number) if e["method"] == "INVITE" and e["code"] == 180]
    assert rx and all(not e["body"].strip() for e in rx), rx
