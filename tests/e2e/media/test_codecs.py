"""Codecs through the B2BUA (issue 11, item 4): transcoding, what is offered, 488, config errors.

The B2BUA terminates media on both legs, so each leg negotiates on its own and the conference
bridge converts between them: a wideband caller reaches a G.711-only gateway. What the B2BUA
offers a gateway is exactly ``[sip] codecs`` (no text or video stream); an offer it cannot answer
gets 488 and one log line naming the codecs; a codec the build lacks stops the start.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ..configs import ListEntry, b2bua_config, start_b2bua
from ..conftest import B2buaFactory, MediaPeerFactory
from ..harness import AddressAllocator, B2buaProcess, HarnessError, free_port
from .expect import CALLER_HZ, GATEWAY_HZ, TALK_SECONDS, assert_heard, b2bua_uri
from .peers import MediaPeer

WIDEBAND = ["G722/16000", "opus/48000/2", "PCMU/8000"]


def active_codecs(peer: MediaPeer, call: int) -> set[str]:
    return {e["codec"] for e in peer.events("media", call) if e["status"] == "active"}


def offered_media(sdp: str) -> list[tuple[str, list[str]]]:
    """``[("audio", ["G722/8000", ...]), ...]``: each m= line's kind and its rtpmap names."""
    names = dict(re.findall(r"^a=rtpmap:(\d+) (\S+)", sdp, re.MULTILINE))
    return [(kind, [names.get(pt, pt) for pt in pts.split()])
            for kind, pts in re.findall(r"^m=(\w+) \d+ RTP/AVP ([\d ]+)", sdp, re.MULTILINE)]


@pytest.mark.parametrize("codec", ["G722", "opus"])
def test_a_wideband_caller_reaches_a_pcmu_only_gateway(
        media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory, workdir: Path,
        addresses: AddressAllocator, codec: str) -> None:
    gw = media_peer_factory(name="gw-pcmu", tone=GATEWAY_HZ[0], codecs=["PCMU"])
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri)], sip={"codecs": WIDEBAND})
    phone = media_peer_factory(name=f"phone-{codec}", tone=CALLER_HZ, codecs=[codec], clock_rate=16000)
    talk = phone.talk(b2bua_uri(b2b), TALK_SECONDS)
    assert talk.code == 200, talk.ended
    assert active_codecs(phone, talk.number) == {codec}
    assert active_codecs(gw, 1) == {"PCMU"}
    # transcoded both ways
    assert_heard(phone, talk.number, GATEWAY_HZ[0])
    assert_heard(gw, 1, CALLER_HZ)
    # the gateway was offered exactly [sip] codecs, in order, and one audio stream: no text, no video
    (invite,) = gw.incoming()
    media = offered_media(invite["sdp"])
    assert [kind for kind, _ in media] == ["audio"], invite["sdp"]
    codecs = [name for name in media[0][1] if not name.startswith("telephone-event/")]
    assert codecs == ["G722/8000", "opus/48000/2", "PCMU/8000"], invite["sdp"]


def test_an_offer_without_a_common_codec_gets_488_and_one_log_line(
        media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory, workdir: Path,
        addresses: AddressAllocator) -> None:
    gw = media_peer_factory(name="gw", tone=GATEWAY_HZ[0])
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri)])  # PCMU, PCMA
    phone = media_peer_factory(name="phone-g722", tone=CALLER_HZ, codecs=["G722"])
    talk = phone.talk(b2bua_uri(b2b), TALK_SECONDS)
    assert talk.code == 488 and talk.recording is None, talk.ended
    assert gw.incoming() == []
    call_id = next(e["call_id"] for e in phone.events("state", talk.number))
    log = b2b.process.log_text()
    lines = [line for line in log.splitlines() if call_id in line]
    assert len(lines) == 1 and lines[0].endswith(
        "refused: 488 Not Acceptable Here: the caller offers G722/8000; [sip] codecs are PCMU/8000, PCMA/8000"
    ), lines
    assert " ERROR " not in log and " WARNING " not in log, log


@pytest.mark.parametrize("fail_over_on_488", [False, True], ids=["default", "488-in-failover_codes"])
def test_a_gateway_that_answers_488(
        media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory, workdir: Path,
        addresses: AddressAllocator, fail_over_on_488: bool) -> None:
    # the first gateway speaks only G.722, the B2BUA offers only G.711: its pjsua answers 488
    picky = media_peer_factory(name="gw-g722-only", tone=GATEWAY_HZ[1], codecs=["G722"])
    good = media_peer_factory(name="gw-pcmu", tone=GATEWAY_HZ[0], codecs=["PCMU"])
    failover = {"failover_codes": ["5xx", "408", 488]} if fail_over_on_488 else {}
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(),
                      [ListEntry(1, picky.uri, priority=10), ListEntry(1, good.uri, priority=5)],
                      algorithm="priority", failover=failover)
    phone = media_peer_factory(name="phone", tone=CALLER_HZ, codecs=["PCMU"])
    talk = phone.talk(b2bua_uri(b2b), TALK_SECONDS)
    if fail_over_on_488:
        assert talk.code == 200, talk.ended
        assert_heard(phone, talk.number, GATEWAY_HZ[0])
        assert len(good.incoming()) == 1
    else:
        # the documented default: failover_codes = ["5xx", "408"]; 488 is relayed to the caller
        assert talk.code == 488, talk.ended
        assert good.incoming() == []
    assert re.search(r"attempt 1 to sip:\S+ failed: 488 Not Acceptable Here", b2b.process.log_text())


def test_a_codec_the_build_lacks_stops_the_start(workdir: Path, addresses: AddressAllocator) -> None:
    ip = addresses.next()
    config = b2bua_config(ip, free_port(ip), sip={"codecs": ["PCMU", "G729a"]})
    with pytest.raises(HarnessError, match="exited with 2 before logging 'b2bua ready'"):
        B2buaProcess.start(workdir, config)
    log = (workdir / "b2bua.log").read_text()
    assert ("config.toml: [sip] codecs: 'G729a' is not a codec of this pjsua2 build (available: PCMU/8000, "
            "PCMA/8000, G722/16000, opus/48000/2, G729/8000") in log, log


@pytest.mark.parametrize(("clock_rate", "wideband"), [(8000, False), (16000, True)])
def test_the_bridge_clock_rate_decides_whether_wideband_survives(
        media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory, workdir: Path,
        addresses: AddressAllocator, clock_rate: int, wideband: bool) -> None:
    # 6 kHz: G.722 carries it (up to 7 kHz), a narrowband bridge cannot (up to 4 kHz)
    high = 6000.0
    gw = media_peer_factory(name="gw-g722", tone=GATEWAY_HZ[0], codecs=["G722"], clock_rate=16000)
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri)],
                      sip={"codecs": ["G722", "PCMU"], "clock_rate": clock_rate})
    phone = media_peer_factory(name="phone-g722", tone=high, codecs=["G722"], clock_rate=16000)
    talk = phone.talk(b2bua_uri(b2b), TALK_SECONDS)
    assert talk.code == 200, talk.ended
    assert active_codecs(phone, talk.number) == active_codecs(gw, 1) == {"G722"}
    assert_heard(phone, talk.number, GATEWAY_HZ[0])
    report = gw.heard(1)
    assert report is not None
    if wideband:
        assert report.is_tone(high), report.describe()
    else:
        assert report.silent, report.describe()
