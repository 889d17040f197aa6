"""What a destination's host name resolves to, as RFC 3263 and pjsip's resolver see it.

A destination ``sip:carrier.example`` (a name, no port) is looked up as SRV first
(``_sip._udp.carrier.example``; ``_sip._tcp`` with ``;transport=tcp``, ``_sips._tcp`` for
``sips:``) and each target's A record (AAAA when it has none); without SRV records, or with a
port, the name's own A/AAAA records are used with the URI's port (5060 by default). That is what
pjsip does when it sends to the name (:mod:`b2bua.nameservers`), so the answer kept here
(:class:`Resolution`, shown by ``dispatcher.list full``) is what calls use. NAPTR is not
looked up (pjsip does not either). Kamailio: ``ds_dns_mode`` 8 for the SRV part.

Two ways to ask, both blocking (a load's child process, a worker thread; never the loop):

* :class:`DnsLookup`: the configured nameservers, through dnspython; answers carry their TTL,
  which the periodic refresh follows (:mod:`plugins.dispatcher.dnsrefresh`);
* :func:`system_lookup`: ``getaddrinfo`` (``/etc/hosts`` included), A/AAAA only, no TTL: what
  pjsip itself does when there is no nameserver.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from b2bua.nameservers import Nameserver

#: seconds a lookup may take (each query of it)
DNS_TIMEOUT = 3.0
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}

#: ``getaddrinfo``-compatible resolver: ``(host, port) -> [(family, type, proto, canon, sockaddr)]``
Resolver = Callable[[str, int], Sequence[tuple[Any, ...]]]


class LookupFailed(Exception):
    """The name does not resolve; the message says what was asked and what came back."""


@dataclass(frozen=True)
class DnsTarget:
    """One server a name leads to: an SRV target (or the name itself) with its addresses."""

    host: str
    port: int
    priority: int = 0
    weight: int = 0
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class Resolution:
    """The answer for one destination host.

    :param query: what was asked: ``_sip._udp.carrier.example`` (SRV) or ``carrier.example``.
    :param srv: the targets come from SRV records (RFC 2782 order: priority, then weight).
    :param targets: servers in the order a sender tries them (priority ascending, weight
        descending among equals: pjsip picks by weight at random within a priority).
    :param ttl: seconds the answer may be kept (the smallest TTL of its records); 0: unknown.
    :param resolved_at: when it was asked (seconds since the epoch).
    """

    query: str
    srv: bool
    targets: tuple[DnsTarget, ...]
    ttl: float = 0.0
    resolved_at: float = 0.0

    @property
    def first(self) -> tuple[str, int] | None:
        """The address a request goes to first: ``(ip, port)``."""
        for target in self.targets:
            if target.addresses:
                return target.addresses[0], target.port
        return None

    def same_answer(self, other: Resolution | None) -> bool:
        """Whether ``other`` names the same servers and addresses (TTL, time and order aside: many
        servers rotate the records of a name in every answer)."""
        return other is not None and (self.query, self.srv, _unordered(self.targets)) == (
            other.query, other.srv, _unordered(other.targets))


def _unordered(targets: Sequence[DnsTarget]) -> frozenset[tuple[str, int, int, int, frozenset[str]]]:
    return frozenset((t.host, t.port, t.priority, t.weight, frozenset(t.addresses)) for t in targets)


#: ``lookup(host, port or None, transport) -> Resolution``; raises :class:`LookupFailed`
HostLookup = Callable[[str, "int | None", str], Resolution]


def srv_name(host: str, transport: str, secure: bool = False) -> str:
    """RFC 3263's SRV name for a URI without a port: ``_sip._udp.host``, ``_sip._tcp.host``,
    ``_sips._tcp.host`` (``sips:`` or ``;transport=tls``)."""
    if secure or transport == "tls":
        return f"_sips._tcp.{host}"
    return f"_sip._{'tcp' if transport == 'tcp' else 'udp'}.{host}"


#: SRV targets, and addresses per name, kept from one answer (pjsip's own resolver keeps 16
#: addresses per name: PJSIP_MAX_RESOLVED_ADDRESSES)
MAX_SRV_TARGETS = 16


def srv_order(targets: Sequence[DnsTarget]) -> tuple[DnsTarget, ...]:
    """SRV targets in the order shown and tried first: priority ascending, weight descending."""
    return tuple(sorted(targets, key=lambda t: (t.priority, -t.weight)))


def _ipv4_first(addresses: Sequence[tuple[int, str]]) -> tuple[str, ...]:
    v4 = [a for family, a in addresses if family == socket.AF_INET]
    v6 = [a for family, a in addresses if family == socket.AF_INET6]
    return tuple(dict.fromkeys(v4 or v6))


def system_lookup(resolver: Resolver = socket.getaddrinfo) -> HostLookup:
    """A :data:`HostLookup` on ``getaddrinfo`` (A/AAAA only; IPv4 first, as Kamailio)."""

    def lookup(host: str, port: int | None, transport: str) -> Resolution:
        effective = port or DEFAULT_PORTS.get(transport, 5060)
        try:
            results = resolver(host, effective)
        except (OSError, UnicodeError) as exc:  # gaierror; UnicodeError from IDNA encoding
            raise LookupFailed(str(exc) or type(exc).__name__) from None
        found = _ipv4_first([(r[0], str(r[4][0])) for r in results])
        if not found:
            raise LookupFailed("no address")
        return Resolution(host, False, (DnsTarget(host, effective, addresses=found),), 0.0, time.time())

    return lookup


class DnsLookup:
    """A :data:`HostLookup` asking ``nameservers`` (dnspython), SRV first for names without a port.

    :param timeout: seconds each query may take, all servers included.
    """

    def __init__(self, nameservers: Sequence[Nameserver], timeout: float = DNS_TIMEOUT) -> None:
        import dns.nameserver
        import dns.resolver

        if not nameservers:
            raise ValueError("DnsLookup needs at least one nameserver")
        self.nameservers = tuple(nameservers)
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(s.ip, s.port) for s in nameservers]
        resolver.lifetime = timeout
        resolver.timeout = timeout
        self._resolver = resolver

    def __call__(self, host: str, port: int | None, transport: str, secure: bool = False) -> Resolution:
        now = time.time()
        srv = srv_name(host, transport, secure) if port is None else ""
        if srv:
            answer = self._query(srv, "SRV")
            if answer is not None:
                return self._from_srv(srv, answer, now)
        addresses, ttl = self._addresses(host)
        if not addresses:
            asked = f"no SRV record {srv} and no" if srv else "no"
            raise LookupFailed(f"{asked} A/AAAA record for {host} (nameservers {self._servers()})")
        port = port or DEFAULT_PORTS.get("tls" if secure else transport, 5060)
        return Resolution(host, False, (DnsTarget(host, port, addresses=addresses),), ttl, now)

    def _from_srv(self, name: str, answer: Any, now: float) -> Resolution:
        ttl = float(answer.rrset.ttl)
        targets = []
        # the best MAX_SRV_TARGETS only: each costs up to two lookups, and an answer is the network's
        records = sorted(answer.rrset, key=lambda rr: (int(rr.priority), -int(rr.weight)))[:MAX_SRV_TARGETS]
        for rr in records:
            target = rr.target.to_text(omit_final_dot=True)
            if target in ("", "."):  # RFC 2782: "service decidedly not available at this domain"
                raise LookupFailed(f"{name}: the SRV record says the service is not available here (target '.')")
            addresses, a_ttl = self._addresses(target)
            if addresses:
                ttl = min(ttl, a_ttl)
            targets.append(DnsTarget(target, int(rr.port), int(rr.priority), int(rr.weight), addresses))
        if not any(t.addresses for t in targets):
            names = ", ".join(t.host for t in targets)
            raise LookupFailed(f"{name}: no SRV target has an address ({names}; nameservers {self._servers()})")
        return Resolution(name, True, srv_order(targets), ttl, now)

    def _addresses(self, host: str) -> tuple[tuple[str, ...], float]:
        """A records, else AAAA: the addresses and their TTL (empty: none)."""
        for rdtype in ("A", "AAAA"):
            answer = self._query(host, rdtype)
            if answer is not None:
                found = tuple(dict.fromkeys(rr.address for rr in answer.rrset))
                return found[:MAX_SRV_TARGETS], float(answer.rrset.ttl)
        return (), 0.0

    def _query(self, name: str, rdtype: str) -> Any:
        """The answer, or None when the name or the record type does not exist."""
        import dns.exception
        import dns.resolver

        try:
            answer = self._resolver.resolve(name, rdtype, search=False, raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        except dns.exception.Timeout:
            raise LookupFailed(f"{name} {rdtype}: no answer from the nameservers ({self._servers()}) within "
                               f"{self._resolver.lifetime:g} s") from None
        except dns.resolver.NoNameservers as exc:
            raise LookupFailed(f"{name} {rdtype}: the nameservers failed ({exc})") from None
        except dns.exception.DNSException as exc:
            raise LookupFailed(f"{name} {rdtype}: {exc}") from None
        return answer if answer.rrset is not None else None

    def _servers(self) -> str:
        return ", ".join(map(str, self.nameservers))


def make_lookup(nameservers: Sequence[Nameserver], resolver: Resolver | None = None) -> HostLookup:
    """The lookup a load uses: the nameservers pjsip uses (:class:`DnsLookup`), or, without any,
    the system resolver, as pjsip then does. ``resolver`` (tests) forces the system path."""
    if resolver is not None or not nameservers:
        return system_lookup(resolver or socket.getaddrinfo)
    return DnsLookup(nameservers)
