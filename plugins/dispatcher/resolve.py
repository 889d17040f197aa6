"""Destination URIs: parse and check them, and resolve their hosts at load time.

Kamailio resolves every destination host when it loads the list (``ds_dns_mode`` 1, the
default) and refuses a host that does not resolve unless the entry has flag 16 (NODNS).
:func:`resolve_destinations` does the same, off the loop thread (``getaddrinfo`` blocks).
SRV/NAPTR lookups (``ds_dns_mode`` 8) and periodic re-resolution (mode 4) are not done.

This module also holds :class:`LoadError`, the one exception type every load failure
derives from (list file, database, DNS), so callers catch a single type.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from loguru import logger

from plugins.dispatcher.model import DestFlags, Destination

#: ``getaddrinfo``-compatible resolver: ``(host, port) -> [(family, type, proto, canon, sockaddr)]``
Resolver = Callable[[str, int], Sequence[tuple[Any, ...]]]

_SCHEME = re.compile(r"(?i)(sips?):")
_OTHER_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):(?![0-9]*(?:[;?]|$))")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?")
_USER = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/%:]+")
_PARAM = re.compile(r"[A-Za-z0-9\-_.!~*'%\[\]/:&+$]+")


class LoadError(Exception):
    """Loading destinations failed; the message says where (file:line, row id) and why."""


class ResolveError(LoadError):
    """A destination host did not resolve."""


@dataclass(frozen=True)
class SipUri:
    """The parts of a ``sip:``/``sips:`` URI that routing and probing need."""

    scheme: str  #: "sip" or "sips", lower case
    user: str
    host: str  #: IPv6 without brackets
    port: int  #: 0 when not given
    params: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def transport(self) -> str:
        """``;transport=`` lower-cased; else ``tls`` for sips and ``udp`` for sip."""
        return self.params.get("transport", "tls" if self.scheme == "sips" else "udp").lower()

    @property
    def effective_port(self) -> int:
        """The port, or the scheme default (5060, 5061 for sips and for TLS)."""
        if self.port:
            return self.port
        return 5061 if self.scheme == "sips" or self.transport == "tls" else 5060

    @property
    def is_ip(self) -> bool:
        return is_ip_literal(self.host)


def is_ip_literal(host: str) -> bool:
    """True for an IPv4 or IPv6 address (no brackets)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_uri(uri: str) -> SipUri:
    """Parse ``sip[s]:[user[:password]@]host[:port][;params][?headers]``; ValueError says why."""
    m = _SCHEME.match(uri)
    if not m:
        raise ValueError(f"{uri}: not a sip: or sips: URI")
    rest = uri[m.end():]
    if not rest:
        raise ValueError(f"{uri}: no host")
    if any(c.isspace() for c in uri):
        raise ValueError(f"{uri}: contains blanks")
    rest = rest.split("?", 1)[0]  # headers are not ours to check
    user = ""
    if "@" in rest:
        user, rest = rest.rsplit("@", 1)
        if not user or not _USER.fullmatch(user):
            raise ValueError(f"{uri}: bad user part {user!r}")
        user = user.split(":", 1)[0]
    hostport, *param_items = rest.split(";")
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise ValueError(f"{uri}: unterminated IPv6 reference")
        host, after = hostport[1:end], hostport[end + 1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{uri}: bad IPv6 address [{host}]") from None
        if after and not after.startswith(":"):
            raise ValueError(f"{uri}: unexpected {after!r} after the IPv6 address")
        port_text = after[1:] if after else None
    else:
        host, sep, port_text_raw = hostport.partition(":")
        port_text = port_text_raw if sep else None
        if not host:
            raise ValueError(f"{uri}: no host")
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(f"{uri}: bad host {host!r}")
    port = 0
    if port_text is not None:
        if not port_text.isascii() or not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"{uri}: bad port {port_text!r} (1..65535)")
        port = int(port_text)
    params: dict[str, str] = {}
    for item in param_items:
        name, _, value = item.partition("=")
        if not name or not _PARAM.fullmatch(name) or (value and not _PARAM.fullmatch(value)):
            raise ValueError(f"{uri}: bad URI parameter {item!r}")
        params[name.lower()] = value
    return SipUri(m.group(1).lower(), user, host, port, params)


def normalize_uri(text: str) -> str:
    """Check a destination URI as written; prepend ``sip:`` when there is no scheme (as
    Kamailio does). ``host:5060`` has no scheme; ``tel:+1234`` is refused."""
    uri = text.strip()
    if not uri:
        raise ValueError("empty URI")
    if not _SCHEME.match(uri):
        other = _OTHER_SCHEME.match(uri)
        if other and "." not in other.group(1) and not uri.startswith("["):
            raise ValueError(f"{uri}: URI scheme {other.group(1)!r} is not sip or sips")
        uri = "sip:" + uri
    parse_uri(uri)
    return uri


def _pick(results: Sequence[tuple[Any, ...]]) -> str | None:
    """IPv4 first, as Kamailio's ``resolvehost`` does with ``dns_prefer_ipv6=0``."""
    v4 = [r[4][0] for r in results if r[0] == socket.AF_INET]
    v6 = [r[4][0] for r in results if r[0] == socket.AF_INET6]
    addrs = v4 or v6 or [r[4][0] for r in results]
    return str(addrs[0]) if addrs else None


def lookup(resolver: Resolver, host: str, port: int) -> tuple[str | None, str]:
    """``(ip, "")``, or ``(None, reason)`` when the host does not resolve (blocking)."""
    try:
        ip = _pick(resolver(host, port))
    except (OSError, UnicodeError) as exc:  # gaierror; UnicodeError from IDNA encoding
        return None, str(exc) or type(exc).__name__
    return (ip, "") if ip is not None else (None, "no address")


def _row(dest: Destination) -> str:
    return f"row {dest.row_id}"


def resolve_destinations(
    dests: Iterable[Destination],
    *,
    skip_unresolvable: bool,
    resolver: Resolver = socket.getaddrinfo,
    location: Callable[[Destination], str] = _row,
) -> list[Destination]:
    """Return ``dests`` with ``address=(ip, port, transport)`` filled in.

    Entries flagged NODNS (16) are kept unresolved (``address=None``). A host that does not
    resolve raises :class:`ResolveError` listing every such destination with
    ``location(dest)`` (e.g. ``dispatcher.list:12``), or, with ``skip_unresolvable``, is
    dropped with a warning. Blocks on DNS: call it off the loop thread. Each distinct host
    is looked up once.
    """
    out: list[Destination] = []
    failures: list[str] = []
    cache: dict[tuple[str, int], tuple[str | None, str]] = {}
    for dest in dests:
        if dest.flags & DestFlags.NODNS:
            out.append(dest)
            continue
        try:
            uri = parse_uri(dest.uri)
        except ValueError as exc:
            raise ResolveError(f"{location(dest)}: {exc}") from None
        port = uri.effective_port
        ip = uri.host
        if not uri.is_ip:
            key = (uri.host.lower(), port)
            if key not in cache:
                cache[key] = lookup(resolver, uri.host, port)
            found, reason = cache[key]
            if found is None:
                message = (
                    f"{location(dest)}: set {dest.setid} {dest.uri}: cannot resolve {uri.host!r} "
                    f"({reason}); set flag 16 (NODNS) to load it unresolved"
                )
                if skip_unresolvable:
                    logger.warning("dispatcher: skipping {}", message)
                else:
                    failures.append(message)
                continue
            ip = found
        out.append(replace(dest, address=(ip, port, uri.transport)))
    if failures:
        raise ResolveError("\n".join(failures))
    return out
