"""SIP over TLS: a caller and a gateway reached over TLS, audio both ways; a gateway whose
certificate does not verify is failed over before anything is sent to it; a TLS listener whose
files are missing stops the start naming the setting. The peers are pjsua2 phones
(``peer.py``) with TLS listeners of their own (sipp is built without TLS); the certificates
come from a certificate authority each test makes (``tlscerts.py``)."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pytest

from ..configs import ListEntry, RunningB2bua, b2bua_config, write_list_file
from ..conftest import B2buaFactory, MediaPeerFactory
from ..harness import (
    AddressAllocator,
    B2buaProcess,
    check_idle_connections_closed,
    free_port,
    wait_until,
)
from ..tlscerts import Pem, make_ca, make_leaf
from .expect import CALLER_HZ, GATEWAY_HZ, TALK_SECONDS, assert_heard
from .peers import MediaPeer


def tls_b2bua(factory: B2buaFactory, workdir: Path, ip: str, ca: Pem, entries: list[ListEntry],
              sip_tls: dict[str, object] | None = None, **config: object) -> tuple[RunningB2bua, int]:
    """A B2BUA on ``udp:ip`` and ``tls:ip`` with a certificate from ``ca``, trusting only ``ca``
    (``sip_tls``: more ``[sip.tls]`` settings)."""
    own = make_leaf(workdir / "certs", ca, "b2bua", ip)
    write_list_file(workdir, entries)
    port, tls_port = free_port(ip, "udp"), free_port(ip, "tcp")
    tls = {"certificate": str(own.cert), "private_key": str(own.key), "ca_list": str(ca.cert), **(sip_tls or {})}
    sip = {"listen": [f"udp:{ip}:{port}", f"tls:{ip}:{tls_port}"], "tls": tls,
           **config.pop("sip", {})}  # type: ignore[dict-item]
    proc = factory(b2bua_config(ip, port, sip=sip, **config))  # type: ignore[arg-type]
    return RunningB2bua(proc, ip, port), tls_port


def tls_peer(factory: MediaPeerFactory, addresses: AddressAllocator, issuer: Pem, name: str,
             **kwargs: object) -> MediaPeer:
    """A media peer on a fresh address with a TLS listener whose certificate ``issuer`` signed
    for that address (its files beside the issuer's)."""
    ip = addresses.next()
    pem = make_leaf(issuer.cert.parent, issuer, name, ip)
    return factory(name=name, ip=ip, tls=(pem.cert, pem.key), **kwargs)


def test_a_call_over_tls_both_ways_carries_audio_and_probes_go_over_tls(
        media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory, workdir: Path,
        addresses: AddressAllocator) -> None:
    ca = make_ca(workdir / "certs", "test-ca")
    gw = tls_peer(media_peer_factory, addresses, ca, "gw", tone=GATEWAY_HZ[0])
    b2b, tls_port = tls_b2bua(b2bua_factory, workdir, addresses.next(), ca, [ListEntry(1, gw.tls_uri)],
                              algorithm="priority", dispatcher={"ping_interval": 1, "probing_mode": 1})
    phone = tls_peer(media_peer_factory, addresses, ca, "phone", tone=CALLER_HZ)
    talk = phone.talk(f"sip:media@{b2b.ip}:{tls_port};transport=tls", TALK_SECONDS)
    assert talk.code == 200, talk.ended
    (incoming,) = gw.incoming()
    assert incoming["invite"].startswith(f"INVITE sip:media@{gw.ip}:{gw.tls_port};transport=tls SIP/2.0")
    assert "Via: SIP/2.0/TLS " in incoming["invite"]
    # the Contact is the B2BUA's TLS listener (a gateway may reconnect to it), not the connection's port
    assert incoming["headers"]["contact"].lower() == f"<sip:b2bua@{b2b.ip}:{tls_port};transport=tls>"
    assert_heard(phone, talk.number, GATEWAY_HZ[0])
    assert_heard(gw, 1, CALLER_HZ)
    # the keepalives go over TLS too, and keep the gateway up
    (dest,) = [d for d in b2b.process.rpc("dispatcher.list")["RECORDS"][0]["SET"]["TARGETS"]]
    assert dest["DEST"]["URI"] == gw.tls_uri and dest["DEST"]["FLAGS"] == "AP"
    log = b2b.process.log_text()
    assert " ERROR " not in log, log


def test_a_gateway_whose_certificate_does_not_verify_gets_nothing_and_the_call_fails_over(
        media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory, workdir: Path,
        addresses: AddressAllocator) -> None:
    ca, other_ca = make_ca(workdir / "certs", "test-ca"), make_ca(workdir / "other", "someone-else")
    bad = tls_peer(media_peer_factory, addresses, other_ca, "impostor", tone=GATEWAY_HZ[1])
    good = tls_peer(media_peer_factory, addresses, ca, "good", tone=GATEWAY_HZ[0])
    entries = [ListEntry(1, bad.tls_uri, priority=10), ListEntry(1, good.tls_uri, priority=5)]
    # DEBUG: the bridge's lines (which conference ports it connected) stay in the log; one CI
    # run (2026-12-08) saw the phone hear silence here while the gateway heard the phone
    b2b, _ = tls_b2bua(b2bua_factory, workdir, addresses.next(), ca, entries, algorithm="priority",
                       failover={"failover_codes": ["5xx", "408"]}, log_level="DEBUG",
                       dispatcher={"ping_interval": 1, "probing_mode": 1, "ping_active": False})
    phone = media_peer_factory(name="phone", tone=CALLER_HZ)
    talk = phone.talk(f"sip:media@{b2b.ip}:{b2b.port}", TALK_SECONDS)
    assert talk.code == 200, talk.ended
    assert bad.incoming() == [], "the impostor got the INVITE: its certificate was not checked"
    assert len(good.incoming()) == 1
    assert_heard(phone, talk.number, GATEWAY_HZ[0])
    wait_until(lambda: "attempt 1 to" in b2b.process.log_text(), 5, what="the failed attempt's line")
    log = b2b.process.log_text()
    assert f"attempt 1 to {bad.tls_uri} failed: 503" in log, log
    # keepalives fail the same way: the impostor goes down, the good one stays up
    b2b.process.rpc("dispatcher.ping_active", 1)

    def flags() -> dict[str, str]:
        targets = b2b.process.rpc("dispatcher.list")["RECORDS"][0]["SET"]["TARGETS"]
        return {t["DEST"]["URI"]: t["DEST"]["FLAGS"] for t in targets}

    wait_until(lambda: flags()[bad.tls_uri][0] in "IT", 10, what="the impostor marked down by its keepalive")
    assert flags()[good.tls_uri] == "AP" and bad.incoming() == []
    assert "check its certificate against [sip.tls] ca_list" in b2b.process.log_text()


def test_srtp_both_ways_over_tls_the_caller_and_the_gateway_hear_each_other(
        media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory, workdir: Path,
        addresses: AddressAllocator) -> None:
    # [sip] srtp takes the caller's SRTP offer, the destination's srtp= attribute asks the gateway
    # for SRTP: RTP/SAVP with SDES keys on both legs, the bridge in between
    ca = make_ca(workdir / "certs", "test-ca")
    gw = tls_peer(media_peer_factory, addresses, ca, "gw", tone=GATEWAY_HZ[0], srtp="mandatory")
    b2b, tls_port = tls_b2bua(b2bua_factory, workdir, addresses.next(), ca,
                              [ListEntry(1, gw.tls_uri, attrs="srtp=mandatory")], algorithm="priority",
                              sip={"srtp": "optional"})
    phone = tls_peer(media_peer_factory, addresses, ca, "phone", tone=CALLER_HZ, srtp="mandatory")
    talk = phone.talk(f"sip:media@{b2b.ip}:{tls_port};transport=tls", TALK_SECONDS)
    assert talk.code == 200, talk.ended
    (incoming,) = gw.incoming()
    assert " RTP/SAVP " in incoming["sdp"] and "a=crypto:" in incoming["sdp"], incoming["sdp"]
    ok = next(e for e in phone.events("rx", talk.number) if e.get("code") == 200 and e.get("method") == "INVITE")
    assert " RTP/SAVP " in ok["body"] and "a=crypto:" in ok["body"], ok
    assert_heard(phone, talk.number, GATEWAY_HZ[0])
    assert_heard(gw, 1, CALLER_HZ)


@pytest.mark.parametrize(("srtp", "caller_srtp", "code"), [("off", "mandatory", 488), ("mandatory", "off", 488),
                                                         ("optional", "off", 200)])
def test_sip_srtp_decides_what_callers_over_tls_may_offer(
        srtp: str, caller_srtp: str, code: int, media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory,
        workdir: Path, addresses: AddressAllocator) -> None:
    ca = make_ca(workdir / "certs", "test-ca")
    gw = media_peer_factory(name="gw", tone=GATEWAY_HZ[0])
    b2b, tls_port = tls_b2bua(b2bua_factory, workdir, addresses.next(), ca, [ListEntry(1, gw.uri)],
                              sip={"srtp": srtp})
    phone = tls_peer(media_peer_factory, addresses, ca, "phone", tone=CALLER_HZ, srtp=caller_srtp)
    talk = phone.talk(f"sip:media@{b2b.ip}:{tls_port};transport=tls", 0.5)
    assert talk.code == code, talk.ended
    assert len(gw.incoming()) == (1 if code == 200 else 0)


def test_with_verify_client_only_callers_with_a_certificate_from_ca_list_get_in(
        media_peer_factory: MediaPeerFactory, b2bua_factory: B2buaFactory, workdir: Path,
        addresses: AddressAllocator) -> None:
    ca, other_ca = make_ca(workdir / "certs", "test-ca"), make_ca(workdir / "other", "someone-else")
    gw = media_peer_factory(name="gw", tone=GATEWAY_HZ[0])
    b2b, tls_port = tls_b2bua(b2bua_factory, workdir, addresses.next(), ca, [ListEntry(1, gw.uri)],
                              sip_tls={"verify_client": True})
    member = tls_peer(media_peer_factory, addresses, ca, "member", tone=CALLER_HZ)
    stranger = tls_peer(media_peer_factory, addresses, other_ca, "stranger", tone=CALLER_HZ)
    uri = f"sip:media@{b2b.ip}:{tls_port};transport=tls"
    assert member.talk(uri, 0.5).code == 200
    refused = stranger.talk(uri, 0.5)
    assert refused.code != 200 and len(gw.incoming()) == 1, refused.ended  # the handshake failed: no SIP


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_a_tls_listener_whose_files_are_missing_stops_start_up_naming_the_setting(
        command: str, addresses: AddressAllocator, workdir: Path) -> None:
    ip = addresses.next()
    port = free_port(ip)
    write_list_file(workdir, [ListEntry(1, "sip:127.0.0.8:5998")])
    key = workdir / "key.pem"
    key.write_text("not a key\n")
    tls = {"certificate": "missing.pem", "private_key": "key.pem"}
    b2b = B2buaProcess(workdir)
    b2b.config_path.write_text(b2bua_config(ip, port, sip={"listen": [f"udp:{ip}:{port}", f"tls:{ip}:{port}"],
                                                           "tls": tls}))
    done = b2b.cli(command, "-c", "config.toml", timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"[sip.tls] certificate: {workdir / 'missing.pem'}: no such file" in done.stderr, done.stderr
    assert f"[sip.tls] private_key: {key}: no private key in PEM form in it" in done.stderr, done.stderr


def test_tls_connections_that_never_talk_are_closed_and_a_talking_one_stays(
        b2bua_factory: B2buaFactory, workdir: Path, addresses: AddressAllocator) -> None:
    # a scanner's connections hold a descriptor each: one that never starts its handshake ends
    # with the handshake's 10 s, one that shakes hands and sends no SIP with the TCP rule's 10 s
    ca = make_ca(workdir / "certs", "test-ca")
    b2b, tls_port = tls_b2bua(b2bua_factory, workdir, addresses.next(), ca, [ListEntry(1, "sip:127.0.0.1:9")])
    src = addresses.next()
    client = ssl.create_default_context(cafile=str(ca.cert))
    client.check_hostname = False  # its certificate names its IP address: checked by verify_mode
    silent: list[socket.socket] = []
    for n in range(10):
        raw = socket.create_connection((b2b.ip, tls_port), timeout=5, source_address=(src, 0))
        silent.append(client.wrap_socket(raw) if n % 2 else raw)  # half of them shake hands
    talking = client.wrap_socket(socket.create_connection((b2b.ip, tls_port), timeout=5, source_address=(src, 0)))
    check_idle_connections_closed(
        silent, talking, b2b.ip, f"sip:{b2b.ip}:{tls_port};transport=tls",
        "the B2BUA closing the 10 TLS connections that sent no SIP (10 s after each opened)")

