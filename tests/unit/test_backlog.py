"""The overload signal: bytes queued unread on the process's UDP listeners (Linux)."""

from __future__ import annotations

import socket

from b2bua.backlog import ReceiveBacklog


def test_finds_the_listener_and_reads_its_unread_bytes() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with listener, other, sender:
        listener.bind(("127.0.0.1", 0))
        other.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        backlog = ReceiveBacklog.find([("127.0.0.1", port)])
        try:
            assert backlog.count == 1  # not the other socket on the same address
            assert backlog.bytes() == 0
            for _ in range(20):
                sender.sendto(b"INVITE" + b"x" * 994, ("127.0.0.1", port))
                sender.sendto(b"y" * 1000, other.getsockname())  # queued elsewhere: not counted
            queued = backlog.bytes()
            assert queued >= 20 * 1000, queued  # the kernel counts its overhead too
            for _ in range(20):
                listener.recv(2000)
            assert backlog.bytes() == 0
        finally:
            backlog.close()
        assert backlog.count == 0


def test_port_zero_watches_every_udp_socket_on_the_address_and_nothing_found_reads_0() -> None:
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with a:
        a.bind(("127.0.0.61", 0))
        backlog = ReceiveBacklog.find([("127.0.0.61", 0)])
        assert backlog.count == 1
        backlog.close()
    named = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with named:
        named.bind(("127.0.0.1", 0))
        by_name = ReceiveBacklog.find([("localhost", named.getsockname()[1])])  # /etc/hosts, no DNS
        assert by_name.count == 1  # a listener may name a host
        by_name.close()
    nothing = ReceiveBacklog.find([("127.0.0.62", 5060)])
    assert (nothing.count, nothing.bytes()) == (0, 0)
    assert ReceiveBacklog.find([("127.0.0.1", 5060)], fd_dir="/nonexistent").count == 0


def test_admission_share_is_cut_while_overloaded_and_grows_back() -> None:
    from b2bua.backlog import AdmissionShare

    # how the share spreads admitted calls is admission.decide's (tests/unit/test_admission.py)
    share = AdmissionShare(cut=0.5, step=0.1, floor=0.1)
    assert share.share == 1.0  # calm: everything admitted
    share.update(True)
    assert share.share == 0.5
    for _ in range(10):
        share.update(True)
    assert share.share == 0.1  # never below the floor: some calls always get through
    for _ in range(4):
        share.update(False)
    assert round(share.share, 2) == 0.5
    for _ in range(20):
        share.update(False)
    assert share.share == 1.0
