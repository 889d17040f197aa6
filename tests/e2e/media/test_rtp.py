"""What the B2BUA shows and does about a call's RTP (issue 11, items 7 and "Bad input").

``core.calls`` shows each leg's codec and RTP counters; a flood of packets to a call's port, and
RTP from an address that is not the negotiated peer, leave the call and its audio alone and are
logged once, with the Call-ID; ``[sip] rtp_timeout`` ends a call whose peer stopped sending (and
only then: a held call owes no RTP).
"""

from __future__ import annotations

import math
import signal
import socket
import struct
import time
from pathlib import Path
from typing import Any

from ..configs import ListEntry, RunningB2bua, start_b2bua
from ..conftest import B2buaFactory, MediaPeerFactory
from ..harness import AddressAllocator, wait_until
from .expect import CALLER_HZ, GATEWAY_HZ, b2bua_uri
from .peers import MediaPeer
from .tones import analyse_wav, read_wav, timeline, tone_runs

GW_HZ = GATEWAY_HZ[0]
#: what an intruder plays into the call's port (a tone nobody else plays)
INTRUDER_HZ = 2000.0


def answered_call(media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory, workdir: Path,
                  addresses: AddressAllocator, *, gateway: dict[str, Any] | None = None,
                  **sip: Any) -> tuple[RunningB2bua, MediaPeer, MediaPeer, int]:
    gw = media_peer_factory(name="gw", **{"tone": GW_HZ, **(gateway or {})})
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri)], sip=sip)
    phone = media_peer_factory(name="phone", tone=CALLER_HZ)
    (number,) = phone.call(b2bua_uri(b2b))
    phone.wait_state(number, "CONFIRMED")
    gw.wait_state(1, "CONFIRMED")
    return b2b, phone, gw, number


def log_lines(b2b: RunningB2bua, fragment: str) -> list[str]:
    return [line for line in b2b.process.log_text().splitlines() if fragment in line]


def tail_heard(peer: MediaPeer, call: int, seconds: float = 0.8) -> Any:
    recording = peer.recording(call)
    samples, rate = read_wav(recording)
    return analyse_wav(recording, skip=max(0.0, samples.size / rate - seconds))


def b2bua_rtp_address(phone: MediaPeer, call: int) -> tuple[str, int]:
    """Where the B2BUA receives the caller's RTP (the caller's view of its SDP)."""
    media = phone.wait_for("media", call=call, where=lambda e: e["status"] == "active")
    host, _, port = media["remote_rtp"].rpartition(":")
    return host, int(port)


def rtp_packet(seq: int, ssrc: int, hz: float) -> bytes:
    """One 20 ms PCMU packet of a ``hz`` tone (a valid RTP packet from someone else)."""
    header = struct.pack("!BBHII", 0x80, 0, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, ssrc)
    samples = (0.3 * math.sin(2 * math.pi * hz * (seq * 160 + i) / 8000) for i in range(160))
    return header + bytes(_ulaw(s) for s in samples)


def _ulaw(x: float) -> int:
    """G.711 mu-law of a sample in [-1, 1)."""
    value = max(-32635, min(32635, int(x * 32768)))
    sign = 0x80 if value < 0 else 0
    value = abs(value) + 0x84
    exponent = max(0, min(7, value.bit_length() - 8))
    mantissa = (value >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def test_core_calls_shows_each_legs_codec_and_rtp_counters(
        media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory, workdir: Path,
        addresses: AddressAllocator) -> None:
    b2b, phone, gw, number = answered_call(media_peer_factory, b2bua_factory, workdir, addresses,
                                           gateway={"codecs": ["PCMA"]})
    time.sleep(1.0)
    [first] = b2b.process.rpc("core.calls")
    time.sleep(1.0)
    [second] = b2b.process.rpc("core.calls")
    phone.hangup(number)
    caller, [leg] = second["caller"], second["legs"]
    assert caller["state"] == "confirmed" and caller["media"]["codec"] == "PCMU/8000"
    assert (leg["answered"], leg["heard"], leg["media"]["codec"]) == (True, True, "PCMA/8000")
    for before, now in ((first["caller"]["media"], caller["media"]), (first["legs"][0]["media"], leg["media"])):
        assert now["direction"] == "sendrecv" and now["rx_lost"] == 0 and now["jitter_ms"] >= 0
        assert now["rx_packets"] - before["rx_packets"] > 25, (before, now)  # 50 a second both ways
        assert now["tx_packets"] - before["tx_packets"] > 25, (before, now)
        assert now["source"] == now["remote"], now
    assert leg["media"]["remote"].startswith(gw.ip + ":")
    assert caller["media"]["remote"].startswith(phone.ip + ":")


def test_a_flood_and_an_intruders_rtp_leave_the_call_alone_and_are_logged_once(
        media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory, workdir: Path,
        addresses: AddressAllocator) -> None:
    b2b, phone, gw, number = answered_call(media_peer_factory, b2bua_factory, workdir, addresses,
                                           rtp_watch_interval=0.5)
    target = b2bua_rtp_address(phone, number)
    intruder = addresses.next()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((intruder, 0))
        sent, seq, started = 0, 0, time.monotonic()
        while sent < 12_000 and time.monotonic() - started < 6.0:  # ~4000 a second for 3 s
            for _ in range(40):
                sock.sendto(b"\x00garbage that is no RTP\x00" * 4, target)
            # an intruder's RTP, a few packets at a time: fewer in a row than pjmedia follows (10)
            for _ in range(3):
                seq += 1
                sock.sendto(rtp_packet(seq, 0x1234, INTRUDER_HZ), target)
            sent += 43
            time.sleep(0.01)
        source = f"{intruder}:{sock.getsockname()[1]}"
    time.sleep(1.5)  # the call goes on after the flood
    phone.hangup(number)
    assert gw.wait_ended(1)["code"] == 200
    # the call and its audio were left alone: each side hears the other, nobody the intruder
    assert tail_heard(phone, number, 1.2).is_tone(GW_HZ), tail_heard(phone, number, 1.2).describe()
    assert tail_heard(gw, 1, 1.2).is_tone(CALLER_HZ), tail_heard(gw, 1, 1.2).describe()
    samples, rate = read_wav(phone.recording(number))
    runs = tone_runs(timeline(samples, rate, window=0.1), [GW_HZ, INTRUDER_HZ])
    assert not any(tone == INTRUDER_HZ for tone, _ in runs), runs
    # logged once each, with the Call-ID, however many packets came
    call_id = phone.events("state", number)[0]["call_id"]
    floods = log_lines(b2b, "RTP flood to leg 0:")
    assert len(floods) == 1 and call_id in floods[0] and "WARNING" in floods[0], floods
    intruders = log_lines(b2b, f"RTP to leg 0 comes from {source}")
    assert len(intruders) == 1 and call_id in intruders[0], intruders
    assert len(log_lines(b2b, "RTP flood to leg 0 over:")) == 1


def test_rtp_timeout_ends_a_call_whose_peer_stopped_sending(
        media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory, workdir: Path,
        addresses: AddressAllocator) -> None:
    b2b, phone, gw, number = answered_call(media_peer_factory, b2bua_factory, workdir, addresses,
                                           rtp_timeout=2.0, rtp_watch_interval=0.5)
    gw.proc.send_signal(signal.SIGSTOP)  # the gateway vanishes: no RTP, no BYE
    try:
        ended = phone.wait_ended(number, timeout=15)
    finally:
        gw.proc.send_signal(signal.SIGCONT)
    assert ended["code"] == 200, ended  # the B2BUA's BYE
    wait_until(lambda: bool(log_lines(b2b, "no RTP from leg 1 for")), 5)
    [line] = log_lines(b2b, "no RTP from leg 1 for")
    assert phone.events("state", number)[0]["call_id"] in line and "ending the call" in line
    assert gw.wait_ended(1)["code"] == 200  # the gateway got its BYE once it woke up
    wait_until(lambda: bool(log_lines(b2b, ": media-timeout (answered by")), 5, what="the call's end line")


def test_a_held_call_is_not_timed_out(media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory,
                                      workdir: Path, addresses: AddressAllocator) -> None:
    b2b, phone, gw, number = answered_call(media_peer_factory, b2bua_factory, workdir, addresses,
                                           rtp_timeout=1.5, rtp_watch_interval=0.5)
    phone.hold(number, "inactive")  # no RTP either way for longer than rtp_timeout
    gw.wait_for("media", call=1, where=lambda e: e["dir"] == "inactive")
    time.sleep(3.0)
    phone.unhold(number)
    gw.wait_for("media", call=1, where=lambda e: e["dir"] == "sendrecv" and e["t"] > 0
                and any(h["dir"] == "inactive" for h in gw.events("media", 1)))
    time.sleep(1.2)
    phone.hangup(number)
    assert phone.wait_ended(number)["code"] == 200 and not log_lines(b2b, "no RTP from")
    assert tail_heard(phone, number).is_tone(GW_HZ), tail_heard(phone, number).describe()
