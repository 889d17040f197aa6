"""How many bytes of SIP wait unread on our UDP listeners: the overload signal.

Past capacity the loop's timers still run on time while the SIP socket's receive queue fills
(measured: 1-5 KB at 600 calls/s, 150-180 KB and thousands of drops at 800 calls/s), and the
callers' retransmissions then multiply the load. The kernel reports a socket's queued bytes
with ``SO_MEMINFO``; pjsip owns the sockets, so they are found once, at start-up, among the
process's file descriptors and read through duplicates (0.3 µs per read). Linux only: elsewhere
nothing is found and the signal stays 0.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from collections.abc import Iterable

#: getsockopt(SOL_SOCKET, SO_MEMINFO): u32[9], SK_MEMINFO_RMEM_ALLOC first (linux/sock_diag.h)
SO_MEMINFO = 55
_MEMINFO = struct.Struct("9I")


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

    def bytes(self) -> int:
        """The fullest socket's queued receive memory, in bytes (0 when none is watched)."""
        most = 0
        for sock in self._sockets:
            try:
                queued = _MEMINFO.unpack(sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, _MEMINFO.size))[0]
            except OSError:
                continue
            most = max(most, queued)
        return most

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets = []


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
