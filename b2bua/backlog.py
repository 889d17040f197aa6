"""How long SIP waits unread on our UDP listeners: the overload signal.

Past capacity the loop's timers still run on time while the SIP socket's receive queue fills,
and the callers' retransmissions then multiply the load. What tells saturation from a passing
stall (a garbage collection, a burst of arrivals) is how long the queue's *oldest* message has
waited unread: a stall of 40 ms leaves a queue that drains within a few hundred ms, saturation
leaves one whose head waits longer and longer (CoDel's "standing queue"). The kernel stamps each
datagram on arrival (``SO_TIMESTAMPNS``); a peek at the head reads its stamp (a few µs).

The queue's size in bytes is no measure of time: the kernel counts each datagram's buffer
(``SO_MEMINFO``: ~2.3 KB for a 700-byte INVITE on loopback), so Linux's default receive buffer of
208 KiB holds ~90 SIP messages, about 30 ms of traffic at 400 calls/s, and a stall longer than
that dropped messages (retransmitted 500 ms later). The listeners' buffers are enlarged at
start-up (``[sip] udp_receive_buffer``) so that the wait, not the buffer, decides.

pjsip owns the sockets, so they are found once, at start-up, among the process's file
descriptors and read through duplicates. Linux only: elsewhere nothing is found and the
readings stay 0.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Iterable
from typing import NamedTuple

#: getsockopt(SOL_SOCKET, SO_MEMINFO): u32[9] (linux/sock_diag.h)
SO_MEMINFO = 55
_MEMINFO = struct.Struct("9I")
_RMEM_ALLOC, _RCVBUF, _DROPS = 0, 1, 8  #: SK_MEMINFO_RMEM_ALLOC, _RCVBUF, _DROPS
#: asm-generic values (x86, arm, riscv): the kernel stamps each datagram on arrival, a
#: ``struct timespec`` of two native longs; SO_RCVBUFFORCE passes net.core.rmem_max (CAP_NET_ADMIN)
SO_TIMESTAMPNS = 35
SO_RCVBUFFORCE = 33
_TIMESPEC = struct.Struct("@ll")
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT


class QueueReading(NamedTuple):
    """The watched listeners' receive queues at one moment (the worst of them)."""

    wait: float = 0.0  #: seconds the oldest unread datagram has waited (0: the queues are empty)
    queued: int = 0  #: the longest queue's receive memory, bytes (the kernel's accounting)
    fill: float = 0.0  #: the fullest receive buffer's share in use (1.0: arrivals are dropped)
    dropped: int = 0  #: datagrams the kernel dropped for a full buffer since the sockets opened, all summed


class ReceiveBacklog:
    """Duplicates of the UDP sockets bound to the given addresses; :meth:`bytes` reads them."""

    def __init__(self, sockets: list[socket.socket]) -> None:
        self._sockets = sockets

    @classmethod
    def find(cls, listeners: Iterable[tuple[str, int]], fd_dir: str = "/proc/self/fd") -> ReceiveBacklog:
        """The process's UDP sockets bound to ``(address, port)`` of ``listeners`` (port 0: any).

        Run before any call exists: RTP sockets share the listeners' addresses.
        """
        wanted = [(ip, port) for addr, port in listeners for ip in _addresses(addr)]
        found: list[socket.socket] = []
        seen: set[str] = set()  # one socket may sit behind several descriptors (our own dups too)
        try:
            fds = [int(name) for name in os.listdir(fd_dir)]
        except OSError:
            return cls([])
        for fd in fds:
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
                if not target.startswith("socket:") or target in seen:
                    continue
                sock = socket.socket(fileno=os.dup(fd))
            except OSError:
                continue
            seen.add(target)
            if sock.type == socket.SOCK_DGRAM and _matches(sock, wanted):
                found.append(sock)
            else:
                sock.close()
        return cls(found)

    @property
    def count(self) -> int:
        """How many sockets are watched."""
        return len(self._sockets)

    def read(self, now: float) -> QueueReading:
        """The queues now; ``now`` is ``time.time()`` (the kernel stamps arrivals by that clock),
        0 to skip the peek at the oldest datagrams (``wait`` is then 0)."""
        wait, queued, fill, dropped = 0.0, 0, 0.0, 0
        for sock in self._sockets:
            try:
                info = _MEMINFO.unpack(sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _MEMINFO.size))
            except OSError:
                continue
            dropped += info[_DROPS]
            if not info[_RMEM_ALLOC]:
                continue
            queued = max(queued, info[_RMEM_ALLOC])
            fill = max(fill, info[_RMEM_ALLOC] / max(1, info[_RCVBUF]))  # buffers may differ in size
            if now:
                wait = max(wait, _head_wait(sock, now))
        return QueueReading(wait, queued, fill, dropped)

    def stamp_arrivals(self) -> None:
        """Have the kernel stamp each datagram's arrival, for :meth:`read`'s ``wait`` (pjsip
        reads with recvfrom(), which ignores the stamps)."""
        for sock in self._sockets:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            except OSError:
                continue

    def size_buffers(self, size: int) -> list[tuple[str, int]]:
        """Ask for ``size`` bytes of receive buffer on every watched socket: past net.core.rmem_max
        when the process may (CAP_NET_ADMIN), else up to it. Returns each socket's name
        (``address:port``) and the buffer it got, as the kernel reports it (it doubles the
        number asked, to cover its bookkeeping)."""
        got: list[tuple[str, int]] = []
        for sock in self._sockets:
            try:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
                except PermissionError:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
                name = sock.getsockname()
                got.append((f"{name[0]}:{name[1]}", sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)))
            except OSError:
                continue
        return got

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets = []


def _head_wait(sock: socket.socket, now: float) -> float:
    """Seconds the oldest datagram queued on ``sock`` has waited (0: none, or no stamp on it)."""
    try:
        _, ancillary, _, _ = sock.recvmsg(0, socket.CMSG_SPACE(_TIMESPEC.size), _PEEK)
    except OSError:  # BlockingIOError: read meanwhile
        return 0.0
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            return max(0.0, now - (int(seconds) + int(nanoseconds) / 1e9))
    return 0.0


def _addresses(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """``host`` as IP addresses (a listener may name a host; pjsip binds what it resolves to)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except OSError:
        return []
    return [ipaddress.ip_address(info[4][0]) for info in infos]


def _matches(sock: socket.socket, wanted: list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]) -> bool:
    try:
        name = sock.getsockname()
        addr, port = ipaddress.ip_address(name[0]), int(name[1])
    except (OSError, ValueError, IndexError):
        return False
    return any(addr == want and (want_port == 0 or port == want_port) for want, want_port in wanted)


#: a head waiting this many times ``overload_delay`` sheds even while the queue drains: near
#: T1 (500 ms) the callers' retransmissions would multiply the load
DRAIN_CEILING = 3.0


class StandingQueue:
    """Tells saturation from a stall being drained, one heartbeat's reading at a time.

    Saturated, the head's wait grows beat after beat. After a stall (a descheduled process, a
    burst, a slow callback) it has also passed ``delay``, but it falls from the next beat on: at
    90 % load a 150 ms stall takes over a second to drain, and cutting the admitted share at
    every beat until the wait was back under ``delay`` shed hundreds of calls the loop could
    serve (401 and 995 in runs at 1000 calls/s, 0.86-0.87 cores, 2026-12-07).
    So the queue is standing when its head waited past ``delay`` at two beats in a row and has
    not fallen since the last one, or has waited past ``DRAIN_CEILING`` x ``delay`` however it moves.
    """

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self._last = 0.0  #: the head's wait at the last beat

    def update(self, wait: float) -> bool:
        """Record this beat's wait (seconds); True while the queue is standing."""
        last, self._last = self._last, wait
        if not self.delay or wait <= self.delay or last <= self.delay:
            return False
        return wait >= last or wait > DRAIN_CEILING * self.delay


class AdmissionShare:
    """The share of new calls admitted while the receive queue is too long (AIMD, as TCP's window).

    Each heartbeat reports whether the queue was over the threshold: over, the share is cut by
    ``cut``; under, it grows by ``step`` back towards 1. :func:`b2bua.admission.decide` spreads
    the admitted calls evenly (a credit counter, no randomness). On/off shedding refused far more
    than needed: at 1000 calls/s offered it completed ~400/s where ~540/s fit.
    """

    def __init__(self, cut: float = 0.8, step: float = 0.02, floor: float = 0.05) -> None:
        self.share = 1.0
        self.cut, self.step, self.floor = cut, step, floor

    def update(self, overloaded: bool) -> None:
        if overloaded:
            self.share = max(self.floor, self.share * self.cut)
        else:
            self.share = min(1.0, self.share + self.step)
