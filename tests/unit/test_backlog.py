"""The overload signal: how long SIP waits unread on the process's UDP listeners (Linux)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from b2bua.backlog import ReceiveBacklog


def stamps_on(backlog: ReceiveBacklog, sender: socket.socket, listener: socket.socket) -> None:
    """Wait until the kernel stamps arrivals: the first socket to ask turns stamping on for the
    whole host a moment later (a deferred work item); a datagram that arrived before it is
    stamped when read, so it seems to have waited 0 s. Bounded."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        sender.sendto(b"probe", listener.getsockname())
        time.sleep(0.02)
        stamped = backlog.read(time.time()).wait > 0.01
        listener.recv(100)
        if stamped:
            return
    raise AssertionError("the kernel never stamped an arrival (SO_TIMESTAMPNS)")


def test_finds_the_listener_and_reads_its_queue() -> None:
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
            backlog.stamp_arrivals()
            assert backlog.read(time.time()) == (0.0, 0, 0.0, 0)
            stamps_on(backlog, sender, listener)
            for i in range(20):
                if i == 19:
                    time.sleep(0.03)  # the last one comes 30 ms after the others
                sender.sendto(b"INVITE" + b"x" * 994, ("127.0.0.1", port))
                sender.sendto(b"y" * 1000, other.getsockname())  # queued elsewhere: not counted
            time.sleep(0.05)
            now = time.time()
            reading = backlog.read(now)
            assert reading.queued >= 20 * 1000, reading  # the kernel counts its overhead too
            assert 0 < reading.fill < 0.5, reading
            assert 0.075 < reading.wait < 5, reading  # the oldest one's, stamped on arrival
            assert backlog.read(0).wait == 0  # no peek asked for
            for _ in range(19):
                listener.recv(2000)
            # the head is the last one now: 30 ms younger (both read as of the same moment)
            assert 0 < backlog.read(now).wait < reading.wait - 0.02
            listener.recv(2000)
            assert backlog.read(time.time()).queued == 0
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
    assert (nothing.count, nothing.read(time.time())) == (0, (0.0, 0, 0.0, 0))
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


def test_a_full_buffer_reads_full_and_counts_the_drops() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with listener, sender:
        listener.bind(("127.0.0.1", 0))
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)  # the kernel's floor is a few KB
        backlog = ReceiveBacklog.find([listener.getsockname()])
        try:
            for _ in range(50):
                sender.sendto(b"INVITE" + b"x" * 694, listener.getsockname())
            now = time.time()
            reading = backlog.read(now)
            assert reading.fill > 0.5, reading
            assert reading.dropped > 0, reading  # what did not fit
            assert reading.dropped < 50, reading  # and what did is queued
        finally:
            backlog.close()


def test_buffers_are_sized_as_asked_or_to_the_systems_limit() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with listener:
        listener.bind(("127.0.0.1", 0))
        backlog = ReceiveBacklog.find([listener.getsockname()])
        try:
            ((name, size),) = backlog.size_buffers(4 << 20)
        finally:
            backlog.close()
        assert name == f"127.0.0.1:{listener.getsockname()[1]}"
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == size  # the socket pjsip reads
        rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
        # the kernel doubles what it is asked for; without CAP_NET_ADMIN only up to rmem_max
        assert size in (2 * (4 << 20), 2 * rmem_max), (size, rmem_max)


def test_a_standing_queue_is_told_from_a_stall_being_drained() -> None:
    from b2bua.backlog import DRAIN_CEILING, StandingQueue

    delay = 0.1
    queue = StandingQueue(delay)
    # one beat over is what a stall may leave: not yet standing
    assert [queue.update(w) for w in (0.0, 0.05, 0.12)] == [False, False, False]
    assert queue.update(0.15)  # over at two beats and growing: saturation
    assert queue.update(0.15)  # flat is not draining
    assert not queue.update(0.14)  # falling: a stall's backlog drains, nothing shed
    assert not queue.update(0.11)
    assert not queue.update(0.09)  # under
    assert not queue.update(0.2)
    # near T1 it sheds even while the head's wait falls
    high = DRAIN_CEILING * delay
    assert queue.update(high + 0.1)
    assert queue.update(high + 0.05)
    assert not queue.update(high - 0.01)
    off = StandingQueue(0.0)  # overload_delay = 0: the signal is off
    assert not any(off.update(w) for w in (1.0, 2.0, 3.0))
