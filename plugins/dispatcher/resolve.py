"""Destination URIs: parse and check them, and resolve their hosts at load time.

Every destination URI, from a list file, a table, ``b2bua dispatcher add`` or
``dispatcher.add``, goes through :func:`normalize_uri` / :func:`parse_uri`: the project's one
strict SIP URI parser (:func:`b2bua.sipuri.parse_uri`) plus the rules of a destination:

* the scheme is one this build can reach: ``sip:`` (``sips:`` needs TLS, which the host does
  not offer: :data:`b2bua.config.TRANSPORTS`); ``;transport=`` is one of those transports;
* no URI headers (``?X-Header=value`` would be copied into every INVITE and keepalive), no
  password (it would travel in clear in every Request-URI);
* URI parameters only from :data:`DESTINATION_PARAMS`, each at most once.

Kamailio resolves every destination host when it loads the list (``ds_dns_mode`` 1, the
default) and refuses a host that does not resolve unless the entry has flag 16 (NODNS).
:func:`resolve_destinations` does the same, off the loop thread (``getaddrinfo`` blocks).
SRV/NAPTR lookups (``ds_dns_mode`` 8) and periodic re-resolution (mode 4) are not done.

This module also holds :class:`LoadError`, the one exception type every load failure
derives from (list file, database, DNS), so callers catch a single type.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from loguru import logger

from b2bua.config import TRANSPORTS
from b2bua.sipuri import SipUri
from b2bua.sipuri import parse_uri as parse_sip_uri
from plugins.dispatcher.model import DestFlags, Destination
from plugins.dispatcher.safetext import shown

#: ``getaddrinfo``-compatible resolver: ``(host, port) -> [(family, type, proto, canon, sockaddr)]``
Resolver = Callable[[str, int], Sequence[tuple[Any, ...]]]

#: URI parameters a destination may carry: ``transport`` (one of :data:`TRANSPORTS`), ``lr``
#: (copied from Route sets; harmless) and ``user`` (``user=phone``, passed on in the
#: Request-URI). Not ``maddr`` (pjsip would send to it while probing, ``dispatcher.list`` and
#: the address checks use the host), nor ``ttl``/``method``/``comp`` (no meaning here).
DESTINATION_PARAMS = ("transport", "lr", "user")
#: schemes a destination may use: ``sips:`` only when the host has a TLS transport
DESTINATION_SCHEMES = ("sip", "sips") if "tls" in TRANSPORTS else ("sip",)

# a leading "word:" that is a scheme, not "host:port" (digits up to ';', '?' or the end)
_OTHER_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):(?![0-9]*(?:[;?]|$))")
_SIP_SCHEME = re.compile(r"(?i)sips?:")


class LoadError(Exception):
    """Loading destinations failed; the message says where (file:line, row id) and why."""


class ResolveError(LoadError):
    """A destination host did not resolve."""


def parse_uri(uri: str) -> SipUri:
    """Parse a destination URI strictly and apply a destination's rules; ValueError says why.

    The message starts with the URI (escaped and shortened when needed).
    """
    parsed = parse_sip_uri(uri, schemes=("sip", "sips"))
    shown = uri if len(uri) <= 80 else uri[:80] + "..."  # printable ASCII: the parser checked
    if parsed.scheme not in DESTINATION_SCHEMES:
        raise ValueError(f"{shown}: scheme {parsed.scheme!r} needs TLS, which this build does not have"
                         f" (transports: {', '.join(TRANSPORTS)})")
    if parsed.headers:
        raise ValueError(f"{shown}: URI headers (?{parsed.headers}) are not allowed in a destination:"
                         " they would be copied into every request to it")
    if parsed.password:
        raise ValueError(f"{shown}: a password in the URI would be sent in clear in every request")
    seen: set[str] = set()
    for name, value in parsed.params:
        if name not in DESTINATION_PARAMS:
            raise ValueError(f"{shown}: URI parameter {name!r} is not allowed in a destination"
                             f" (allowed: {', '.join(DESTINATION_PARAMS)})")
        if name in seen:
            raise ValueError(f"{shown}: URI parameter {name!r} given twice")
        seen.add(name)
        if name == "transport" and value.lower() not in TRANSPORTS:
            raise ValueError(f"{shown}: transport {value!r} is not one this build can use"
                             f" ({', '.join(TRANSPORTS)})")
    return parsed


def normalize_uri(text: str) -> str:
    """Check a destination URI as written (:func:`parse_uri`); prepend ``sip:`` when there is no
    scheme (as Kamailio does). ``host:5060`` has no scheme; ``tel:+1234`` is refused."""
    uri = text.strip()
    if not uri:
        raise ValueError("empty URI")
    if not _SIP_SCHEME.match(uri):
        other = _OTHER_SCHEME.match(uri)
        if other and "." not in other.group(1) and not uri.startswith("["):
            raise ValueError(f"{shown(uri)}: URI scheme {other.group(1)!r} is not {' or '.join(DESTINATION_SCHEMES)}")
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
