"""A small authoritative DNS server for the tests, on a loopback address (dnslib + one thread).

The tests own every record: A and SRV records are set and changed while the B2BUA runs, and
the server can be told to stop answering (a silent nameserver). It answers only what it holds
(anything else is NXDOMAIN) and never forwards a query, so no test reaches the machine's real
resolver. Each query is recorded (name and type), so a test can assert what was asked.

    dns = DnsServer.start("127.0.0.9")          # a free UDP port on that address
    dns.add_a("gw.test", "127.0.0.10", ttl=1)
    dns.add_srv("_sip._udp.carrier.test", 10, 50, 5080, "sbc1.carrier.test")
    ... dns.nameserver -> "127.0.0.9:40123" for [sip] nameservers
    dns.silent = True                           # queries are read and dropped
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from dnslib import AAAA, QTYPE, RCODE, RR, SRV, A, DNSLabel, DNSRecord


@dataclass(frozen=True)
class Query:
    """One question the server received."""

    name: str  #: lower case, without the final dot
    qtype: str  #: "A", "AAAA", "SRV", ...


class DnsServer:
    """Answers A, AAAA and SRV questions from its own records; see the module docstring."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        self._records: dict[tuple[str, str], list[RR]] = {}
        self.queries: list[Query] = []
        self.silent = False  #: read queries and drop them (a nameserver that does not answer)
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name=f"dns-{self.address}", daemon=True)

    @classmethod
    def start(cls, ip: str, port: int = 0) -> DnsServer:
        """Bind ``ip:port`` (0: a free port chosen by the kernel) and start answering."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((ip, port))
        sock.settimeout(0.2)
        server = cls(sock)
        server._thread.start()
        return server

    @property
    def address(self) -> str:
        return str(self._sock.getsockname()[0])

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    @property
    def nameserver(self) -> str:
        """``ip:port`` as ``[sip] nameservers`` takes it."""
        return f"{self.address}:{self.port}"

    # -- records -------------------------------------------------------------------------------

    def add_a(self, name: str, ip: str, ttl: int = 60) -> None:
        self._add(name, "A", RR(name, QTYPE.A, rdata=A(ip), ttl=ttl))

    def add_aaaa(self, name: str, ip: str, ttl: int = 60) -> None:
        self._add(name, "AAAA", RR(name, QTYPE.AAAA, rdata=AAAA(ip), ttl=ttl))

    def add_srv(self, name: str, priority: int, weight: int, port: int, target: str, ttl: int = 60) -> None:
        self._add(name, "SRV", RR(name, QTYPE.SRV, rdata=SRV(priority, weight, port, target), ttl=ttl))

    def set_a(self, name: str, ip: str, ttl: int = 60) -> None:
        """Replace every A record of ``name``."""
        with self._lock:
            self._records.pop((_key(name), "A"), None)
        self.add_a(name, ip, ttl)

    def remove(self, name: str, qtype: str) -> None:
        with self._lock:
            self._records.pop((_key(name), qtype), None)

    def asked(self, name: str, qtype: str | None = None) -> int:
        """How many questions for ``name`` (of ``qtype``) arrived."""
        with self._lock:
            return sum(1 for q in self.queries if q.name == _key(name) and (qtype is None or q.qtype == qtype))

    def _add(self, name: str, qtype: str, rr: RR) -> None:
        with self._lock:
            self._records.setdefault((_key(name), qtype), []).append(rr)

    # -- serving -------------------------------------------------------------------------------

    def _serve(self) -> None:
        while not self._stopping:
            try:
                data, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                request = DNSRecord.parse(data)
            except Exception:  # not DNS: ignore it, as a server would
                continue
            reply = self._answer(request)
            if reply is not None:
                try:
                    self._sock.sendto(reply.pack(), peer)
                except OSError:
                    pass

    def _answer(self, request: DNSRecord) -> DNSRecord | None:
        question = request.q
        name, qtype = _key(str(question.qname)), QTYPE[question.qtype]
        with self._lock:
            self.queries.append(Query(name, qtype))
            if self.silent:
                return None
            answers = list(self._records.get((name, qtype), ()))
            known = any(key[0] == name for key in self._records)
        reply = request.reply()
        for rr in answers:
            reply.add_answer(rr)
        if not answers and not known:
            reply.header.rcode = RCODE.NXDOMAIN  # no such name (else: the name exists, no data)
        return reply

    def stop(self) -> None:
        self._stopping = True
        self._thread.join(2.0)
        self._sock.close()


def _key(name: str) -> str:
    return str(DNSLabel(name)).rstrip(".").lower()


@contextmanager
def dns_server(ip: str) -> Iterator[DnsServer]:
    """A :class:`DnsServer` on ``ip`` for the duration of a ``with`` block."""
    server = DnsServer.start(ip)
    try:
        yield server
    finally:
        server.stop()
