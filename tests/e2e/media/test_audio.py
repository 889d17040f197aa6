"""Audio through the B2BUA, asserted on what each side hears (issue 11, item 1).

Every gateway is a media peer playing its own tone, the caller a third; each records what it
hears. A call is right when the caller heard the gateway that answered, and only that one, and the
answering gateway heard the caller: for round robin, after a failover, and for a parallel fork.
"""

from __future__ import annotations

from pathlib import Path

from ..configs import ListEntry, start_b2bua
from ..conftest import B2buaFactory, MediaPeerFactory
from ..harness import AddressAllocator
from .expect import CALLER_HZ, GATEWAY_HZ, TALK_SECONDS, assert_heard, b2bua_uri
from .peers import MediaPeer


def answering_gateway(gateways: list[MediaPeer], before: list[int]) -> tuple[MediaPeer, int]:
    """The one gateway that got a new call since ``before`` (INVITE counts), and that call's number."""
    fresh = [(gw, len(gw.incoming())) for gw, count in zip(gateways, before, strict=True)
             if len(gw.incoming()) > count]
    assert len(fresh) == 1, f"expected one gateway to get the call, got {[gw.name for gw, _ in fresh]}"
    return fresh[0]


def test_round_robin_each_caller_hears_the_gateway_that_answered(
        media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory, workdir: Path,
        addresses: AddressAllocator) -> None:
    gateways = [media_peer_factory(name=f"gw{hz:g}", tone=hz) for hz in GATEWAY_HZ[:2]]
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri) for gw in gateways],
                      algorithm="round-robin")
    phone = media_peer_factory(name="phone", tone=CALLER_HZ)
    answered_by = []
    for _ in range(4):
        before = [len(gw.incoming()) for gw in gateways]
        talk = phone.talk(b2bua_uri(b2b), TALK_SECONDS)
        assert talk.code == 200, talk.ended
        gw, number = answering_gateway(gateways, before)
        answered_by.append(gw.name)
        hz = GATEWAY_HZ[gateways.index(gw)]
        assert_heard(phone, talk.number, hz)
        assert_heard(gw, number, CALLER_HZ)
    # round robin: the two gateways in turn
    assert answered_by[0] != answered_by[1] and answered_by[:2] == answered_by[2:], answered_by


def test_after_failover_the_caller_hears_the_second_gateway(
        media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory, workdir: Path,
        addresses: AddressAllocator) -> None:
    failing = media_peer_factory("reject:503", name="gw-503", tone=GATEWAY_HZ[1])
    good = media_peer_factory(name="gw-good", tone=GATEWAY_HZ[0])
    entries = [ListEntry(1, failing.uri, priority=10), ListEntry(1, good.uri, priority=5)]
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), entries, algorithm="priority", failover={})
    phone = media_peer_factory(name="phone", tone=CALLER_HZ)
    talk = phone.talk(b2bua_uri(b2b), TALK_SECONDS)
    assert talk.code == 200, talk.ended
    assert len(failing.incoming()) == 1 and failing.wait_ended(1)["code"] == 503
    assert failing.recording(1) is None  # it never had a call to hear
    assert_heard(phone, talk.number, GATEWAY_HZ[0])
    assert_heard(good, 1, CALLER_HZ)


def test_parallel_fork_only_the_winner_is_heard(
        media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory, workdir: Path,
        addresses: AddressAllocator) -> None:
    winner = media_peer_factory("ring-then-answer:0.5", name="gw-winner", tone=GATEWAY_HZ[0])
    ringing = media_peer_factory("ring", name="gw-ringing", tone=GATEWAY_HZ[1])
    early = media_peer_factory("early", name="gw-early", tone=GATEWAY_HZ[2])  # plays its tone in a 183
    losers = [ringing, early]
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(),
                      [ListEntry(1, gw.uri) for gw in (winner, *losers)], algorithm="parallel")
    phone = media_peer_factory(name="phone", tone=CALLER_HZ)
    talk = phone.talk(b2bua_uri(b2b), TALK_SECONDS)
    assert talk.code == 200, talk.ended
    assert_heard(phone, talk.number, GATEWAY_HZ[0])  # clean: neither loser's tone mixed in
    assert_heard(winner, 1, CALLER_HZ)
    for loser in losers:
        assert len(loser.incoming()) == 1, loser.name
        assert loser.wait_ended(1)["code"] == 487, f"{loser.name} was not cancelled"
