"""Which DNS servers the B2BUA asks, so that no DNS lookup ever blocks the loop thread.

pjsip resolves every host name it sends to (a B leg's Request-URI, a keepalive's, a Contact or
Record-Route of a dialog, a proxy) with the system resolver (``getaddrinfo``) unless it has
nameservers: then it asks them itself, asynchronously, on the loop's own event queue, caches
the answers for their TTL and follows RFC 3263 (SRV for a name without a port, then A/AAAA).
:mod:`b2bua.endpoint` gives it :func:`effective_nameservers`; the dispatcher asks the same servers
when it resolves its destinations, so what ``dispatcher.list full`` shows is what calls use.

``[sip] nameservers`` lists them (``"10.0.0.53"``, ``"10.0.0.53:5353"``, ``"[2001:db8::53]:53"``);
empty, the ``nameserver`` lines of ``/etc/resolv.conf`` are used. With none at all pjsip falls
back to ``getaddrinfo`` on the loop, and a slow DNS server stalls every call: the host warns.
Names only in ``/etc/hosts`` are not found through nameservers (pjsip does not read that file).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

RESOLV_CONF = Path("/etc/resolv.conf")
DNS_PORT = 53
#: most servers pjsip's resolver keeps (PJ_DNS_RESOLVER_MAX_NS)
MAX_NAMESERVERS = 16


@dataclass(frozen=True)
class Nameserver:
    """One DNS server: an IP address (v4 or v6) and a UDP port."""

    ip: str
    port: int = DNS_PORT

    def __str__(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return host if self.port == DNS_PORT else f"{host}:{self.port}"


def parse_nameserver(text: str) -> Nameserver:
    """``ip``, ``ip:port``, ``[v6]`` or ``[v6]:port``; ValueError says why not.

    Only addresses: the nameserver of a resolver cannot itself be a name to resolve.
    """
    value = text.strip()
    port = DNS_PORT
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r}: expected [IPv6] or [IPv6]:port")
        port_text = rest[1:]
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    else:  # an IPv4 address, or a bare IPv6 one
        host, port_text = value, ""
    try:
        if "%" in host:  # a zone index (fe80::1%eth0): pjsip's resolver cannot use it
            raise ValueError(host)
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: not an IP address (a nameserver cannot be a host name)") from None
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"{text!r}: port {port_text!r} is not 1-65535")
        port = int(port_text)
    return Nameserver(str(ip), port)


def parse_resolv_conf(text: str) -> list[Nameserver]:
    """The ``nameserver`` lines of a resolv.conf text, in order (bad lines skipped, as libc does).

    An IPv6 link-local address with a zone (``fe80::1%eth0``) is skipped: pjsip cannot use it.
    """
    out: list[Nameserver] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver" and "%" not in fields[1]:
            try:
                out.append(Nameserver(str(ipaddress.ip_address(fields[1]))))
            except ValueError:
                continue
    return out


def system_nameservers(path: Path = RESOLV_CONF) -> list[Nameserver]:
    """The nameservers of ``/etc/resolv.conf`` (none when it cannot be read)."""
    try:
        return parse_resolv_conf(path.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return []


def effective_nameservers(configured: Sequence[str], resolv_conf: Path = RESOLV_CONF) -> tuple[Nameserver, ...]:
    """``[sip] nameservers`` parsed, or the system's when none is configured (at most
    :data:`MAX_NAMESERVERS`, duplicates dropped)."""
    servers: Iterable[Nameserver] = (
        [parse_nameserver(s) for s in configured] if configured else system_nameservers(resolv_conf))
    return tuple(dict.fromkeys(servers))[:MAX_NAMESERVERS]


def check_nameservers(configured: Sequence[str]) -> None:
    """Validate ``[sip] nameservers``; the message names the entry (``nameservers[1]: ...``)."""
    if len(configured) > MAX_NAMESERVERS:
        raise ValueError(f"nameservers: {len(configured)} listed, pjsip uses at most {MAX_NAMESERVERS}")
    for i, text in enumerate(configured):
        try:
            parse_nameserver(text)
        except ValueError as exc:
            raise ValueError(f"nameservers[{i}]: {exc}") from None
