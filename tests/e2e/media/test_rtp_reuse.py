"""RTP ports handed from a finished call leg to the next one (patch 0008, docs/media.md).

pjsua keeps a closed leg's RTP/RTCP sockets and gives them to the next leg, the one freed longest
ago first. What a user must see: every call on a reused port carries audio both ways, and a peer
of a port's previous call that goes on sending after its call ended is never heard on the next
call on that port (nor taken for the new call's peer behind a NAT).
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

from ..configs import ListEntry, RunningB2bua, start_b2bua
from ..conftest import B2buaFactory, MediaPeerFactory
from ..harness import AddressAllocator
from .expect import CALLER_HZ, GATEWAY_HZ, b2bua_uri
from .peers import MediaPeer
from .test_rtp import INTRUDER_HZ, b2bua_rtp_address, heard_runs, rtp_packet, tail_heard

GW_HZ, GW2_HZ = GATEWAY_HZ[0], GATEWAY_HZ[1]
#: calls after the one whose peer keeps sending: each on ports a call before it used
LATER_CALLS = 3


def talk(b2b: RunningB2bua, phone: MediaPeer, gw: MediaPeer, gw_call: int,
         seconds: float = 1.5) -> tuple[int, set[int], tuple[str, int]]:
    """One call phone -> B2BUA -> gw, ``seconds`` long: its number, the B2BUA's two RTP ports and
    where the B2BUA's gateway leg sent its RTP."""
    (number,) = phone.call(b2bua_uri(b2b))
    phone.wait_state(number, "CONFIRMED")
    gw.wait_state(gw_call, "CONFIRMED")
    ports = {b2bua_rtp_address(phone, number)[1], b2bua_rtp_address(gw, gw_call)[1]}
    [call] = b2b.process.rpc("core.calls")
    host, _, port = call["legs"][0]["media"]["remote"].rpartition(":")
    time.sleep(seconds)
    phone.hangup(number)
    assert gw.wait_ended(gw_call)["code"] == 200
    phone.wait_ended(number)
    return number, ports, (host, int(port))


def keep_sending(source: tuple[str, int], target: tuple[str, int], stop: threading.Event,
                 limit: float = 30.0) -> None:
    """A peer whose call ended and who goes on sending its RTP (one packet every 20 ms)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(source)
        started = time.monotonic()
        for seq in range(1, round(limit / 0.02) + 1):  # bounded: at most ``limit`` seconds
            if stop.is_set():
                return
            sock.sendto(rtp_packet(seq, 0x5EED, INTRUDER_HZ), target)
            time.sleep(max(0.0, started + seq * 0.02 - time.monotonic()))


def first_call(media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory, workdir: Path,
               addresses: AddressAllocator) -> tuple[RunningB2bua, MediaPeer, MediaPeer, set[int],
                                                     tuple[str, int], tuple[str, int]]:
    """A B2BUA for two legs, a phone and a gateway, one call between them, then the gateway gone:
    the B2BUA, the phone, the stopped gateway, the call's two B2BUA ports, where the B2BUA sent the
    gateway's RTP and the B2BUA's RTP address on the gateway leg."""
    gw = media_peer_factory(name="gw", tone=GW_HZ)
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri)], sip={"max_calls": 2})
    phone = media_peer_factory(name="phone", tone=CALLER_HZ)
    _, ports, old_peer = talk(b2b, phone, gw, 1)
    old_port = b2bua_rtp_address(gw, 1)
    gw.stop()
    return b2b, phone, gw, ports, old_peer, old_port


def test_reused_rtp_ports_carry_the_next_calls_and_not_the_previous_peer(
        media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory, workdir: Path,
        addresses: AddressAllocator) -> None:
    # call 1; then its gateway goes away and something at the gateway's RTP address goes on sending
    # to the B2BUA's port of that call (a peer slow to stop its stream, for ever)
    b2b, phone, gw, first_ports, old_peer, old_port = first_call(media_peer_factory, b2bua_factory, workdir,
                                                                 addresses)
    stop = threading.Event()
    sender = threading.Thread(target=keep_sending, args=(old_peer, old_port, stop), daemon=True)
    sender.start()
    try:
        time.sleep(0.5)  # its packets wait in the kept socket: the next leg reads them first
        gw2 = media_peer_factory(name="gw2", ip=gw.ip, port=gw.port, tone=GW2_HZ)
        second, second_ports, _ = talk(b2b, phone, gw2, 1, seconds=2.5)
    finally:
        stop.set()
        sender.join(timeout=5)

    # the ports were reused: call 2 ran on call 1's two ports, the stale one among them
    assert second_ports == first_ports and old_port[1] in second_ports, (first_ports, second_ports)
    # and nobody heard the old gateway's stream: each side heard the other from start to end
    assert tail_heard(phone, second, 1.5).is_tone(GW2_HZ), tail_heard(phone, second, 1.5).describe()
    assert tail_heard(gw2, 1, 1.5).is_tone(CALLER_HZ), tail_heard(gw2, 1, 1.5).describe()
    for peer, call in ((phone, second), (gw2, 1)):
        runs = heard_runs(peer, call, [GW2_HZ, CALLER_HZ, INTRUDER_HZ])
        assert not any(tone == INTRUDER_HZ for tone, _ in runs), (peer.name, runs)

    # more calls in a row (max_calls 2): the same two ports each time, audio both ways each time
    for n in range(2, 2 + LATER_CALLS):
        number, ports, _ = talk(b2b, phone, gw2, n)
        assert ports == first_ports, (n, first_ports, ports)
        assert tail_heard(phone, number).is_tone(GW2_HZ), (n, tail_heard(phone, number).describe())
        assert tail_heard(gw2, n).is_tone(CALLER_HZ), (n, tail_heard(gw2, n).describe())


def test_a_natted_peer_on_its_previous_address_is_heard_on_a_reused_port(
        media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory, workdir: Path,
        addresses: AddressAllocator) -> None:
    """The previous peer of a reused port is dropped only for a moment: the next call's peer may
    be the same phone again, behind a NAT, sending from the same address and port while its SDP
    names another (a phone with a fixed RTP port). It must be heard, not dropped for the call."""
    b2b, phone, gw, first_ports, old_peer, old_port = first_call(media_peer_factory, b2bua_factory, workdir,
                                                                 addresses)

    # the same gateway again, from the same RTP address and port, its SDP naming an address
    # nobody listens on (its NAT's inside)
    natted = media_peer_factory(name="natted", ip=gw.ip, port=gw.port, tone=GW2_HZ, rtp_port=old_peer[1],
                                sdp_address=addresses.next())
    second, second_ports, sdp_peer = talk(b2b, phone, natted, 1, seconds=3.0)
    assert second_ports == first_ports, (first_ports, second_ports)
    assert b2bua_rtp_address(natted, 1) == old_port, "the gateway leg did not get the gateway's old port"
    assert sdp_peer != old_peer, (sdp_peer, old_peer)
    # each side hears the other at the end of the call (the B2BUA latched onto where the RTP comes from)
    assert tail_heard(phone, second, 1.5).is_tone(GW2_HZ), tail_heard(phone, second, 1.5).describe()
    assert tail_heard(natted, 1, 1.5).is_tone(CALLER_HZ), tail_heard(natted, 1, 1.5).describe()
