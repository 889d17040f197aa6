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


def heard_its_peer(b2b: RunningB2bua) -> bool:
    """Whether the one call's caller leg has RTP from the address in the caller's SDP."""
    [call] = b2b.process.rpc("core.calls")
    media = call["caller"].get("media") or {}
    return bool(media.get("rx_packets")) and media.get("source") == media.get("remote")


def intrude(target: tuple[str, int], ip: str, *, seconds: float, copies: int, garbage: int) -> str:
    """Attack a call's RTP port from ``ip`` for ``seconds``; the attacker's address.

    Every 20 ms: ``garbage`` packets that are no RTP, and ``copies`` copies of one RTP packet of
    the intruder's tone (the next sequence number each time: the copies are duplicates, so what
    gets through plays in real time). pjmedia alone follows a new source after 10 packets from
    it in a row: 12 copies every 20 ms take the stream over.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((ip, 0))
        started = time.monotonic()
        for seq in range(1, round(seconds / 0.02) + 1):  # bounded: seconds / 20 ms ticks
            for _ in range(garbage):
                sock.sendto(b"\x00garbage that is no RTP\x00" * 4, target)
            packet = rtp_packet(seq, 0x1234, INTRUDER_HZ)
            for _ in range(copies):
                sock.sendto(packet, target)
            time.sleep(max(0.0, started + seq * 0.02 - time.monotonic()))
        return f"{ip}:{sock.getsockname()[1]}"


def heard_runs(peer: MediaPeer, call: int, candidates: list[float]) -> list[tuple[float | None, int]]:
    samples, rate = read_wav(peer.recording(call))
    return tone_runs(timeline(samples, rate, window=0.1), candidates)


def test_a_flood_and_an_intruders_rtp_leave_the_call_alone_and_are_logged_once(
        media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory, workdir: Path,
        addresses: AddressAllocator) -> None:
    b2b, phone, gw, number = answered_call(media_peer_factory, b2bua_factory, workdir, addresses,
                                           rtp_watch_interval=0.5)
    # the lock keeps the source a leg heard first: the attack comes once the caller's RTP is in (an
    # intruder faster than the caller's first packets is taken for a NATed caller: docs/media.md)
    wait_until(lambda: heard_its_peer(b2b), timeout=5, what="the caller's leg hears the caller's RTP")
    # 3 s of 60 packets every 20 ms (3000 a second): 48 that are no RTP, 12 of an intruder's RTP
    source = intrude(b2bua_rtp_address(phone, number), addresses.next(), seconds=3.0, copies=12, garbage=48)
    time.sleep(1.5)  # the call goes on after the flood
    phone.hangup(number)
    assert gw.wait_ended(1)["code"] == 200
    # the call and its audio were left alone: each side hears the other, nobody the intruder
    assert tail_heard(phone, number, 1.2).is_tone(GW_HZ), tail_heard(phone, number, 1.2).describe()
    assert tail_heard(gw, 1, 1.2).is_tone(CALLER_HZ), tail_heard(gw, 1, 1.2).describe()
    for peer, call in ((phone, number), (gw, 1)):
        runs = heard_runs(peer, call, [GW_HZ, CALLER_HZ, INTRUDER_HZ])
        assert not any(tone == INTRUDER_HZ for tone, _ in runs), (peer.name, runs)
    # and the caller was not cut off: at most a few concealed frames here and there
    runs = heard_runs(gw, 1, [CALLER_HZ])
    assert sum(count for tone, count in runs[1:] if tone != CALLER_HZ) <= 5, runs
    # logged once each, with the Call-ID, however many packets came
    call_id = phone.events("state", number)[0]["call_id"]
    floods = log_lines(b2b, "RTP flood to leg 0:")
    assert len(floods) == 1 and call_id in floods[0] and "WARNING" in floods[0], floods
    # the intruder's address is named when a look at the leg's last source caught it (pjmedia keeps
    # only the last source; the watch looks again when packets were dropped): never more than once
    intruders = log_lines(b2b, f"RTP to leg 0 comes from {source}")
    assert len(intruders) <= 1, intruders
    assert all(call_id in line and "the rest is dropped" in line for line in intruders), intruders
    assert len(log_lines(b2b, "RTP flood to leg 0 over:")) == 1


def test_without_the_source_lock_an_intruder_takes_the_audio(
        media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory, workdir: Path,
        addresses: AddressAllocator) -> None:
    """What [sip] rtp_strict_source = true protects against (pjmedia's own behaviour)."""
    b2b, phone, gw, number = answered_call(media_peer_factory, b2bua_factory, workdir, addresses,
                                           rtp_watch_interval=0.5, rtp_strict_source=False)
    intrude(b2bua_rtp_address(phone, number), addresses.next(), seconds=3.0, copies=12, garbage=0)
    time.sleep(1.0)
    phone.hangup(number)
    gw.wait_ended(1)
    # the intruder took the caller's place: the gateway heard the intruder (or what pjmedia made
    # of its packets) instead of the caller for a second at least (the locked test's gateway
    # hears the caller throughout)
    runs = heard_runs(gw, 1, [CALLER_HZ, INTRUDER_HZ])
    assert sum(count for tone, count in runs if tone != CALLER_HZ) >= 10, runs
    # a sample of the leg's last source names the intruder when it catches it (best effort)
    assert len(log_lines(b2b, "followed after 10 packets in a row")) <= 1


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
