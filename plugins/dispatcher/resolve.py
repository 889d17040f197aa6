"""Destination URIs: parse and check them, and resolve their hosts at load time.

Every destination URI, from a list file, a table, ``b2bua dispatcher add`` or
``dispatcher.add``, goes through :func:`normalize_uri` / :func:`parse_uri`: the project's one
strict SIP URI parser (:func:`b2bua.sipuri.parse_uri`) plus the rules of a destination:

* the scheme is ``sip:`` or ``sips:`` (TLS); ``;transport=`` is one of
  :data:`b2bua.config.TRANSPORTS` (whether ``[sip] listen`` has a listener of it is checked
  at load, with the host's settings: :func:`plugins.dispatcher.outbound.check_outbound`);
* no URI headers (``?X-Header=value`` would be copied into every INVITE and keepalive), no
  password (it would travel in clear in every Request-URI);
* URI parameters only from :data:`DESTINATION_PARAMS`, each at most once.

Kamailio resolves every destination host when it loads the list (``ds_dns_mode`` 1, the
default) and refuses a host that does not resolve unless the entry has flag 16 (NODNS).
:func:`resolve_destinations` does the same, off the loop thread, the way pjsip will resolve
the name when it sends (:mod:`plugins.dispatcher.dnslookup`: SRV for a name without a port,
Kamailio's ``ds_dns_mode`` 8). Re-resolution (mode 4, and the records' TTL):
:mod:`plugins.dispatcher.dnsrefresh`.

This module also holds :class:`LoadError`, the one exception type every load failure
derives from (list file, database, DNS), so callers catch a single type.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import replace

from loguru import logger

from b2bua.config import TRANSPORTS
from b2bua.sipuri import SipUri
from b2bua.sipuri import parse_uri as parse_sip_uri
from plugins.dispatcher.dnslookup import HostLookup, LookupFailed, Resolution, system_lookup
from plugins.dispatcher.dnslookup import Resolver as Resolver  # re-exported: the loaders' type
from plugins.dispatcher.model import DestFlags, Destination
from plugins.dispatcher.safetext import shown

#: URI parameters a destination may carry: ``transport`` (one of :data:`TRANSPORTS`), ``lr``
#: (copied from Route sets; harmless) and ``user`` (``user=phone``, passed on in the
#: Request-URI). Not ``maddr`` (pjsip would send to it while probing, ``dispatcher.list`` and
#: the address checks use the host), nor ``ttl``/``method``/``comp`` (no meaning here).
DESTINATION_PARAMS = ("transport", "lr", "user")

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
    parsed = parse_sip_uri(uri, schemes=("sip", "sips"))  # sips: TLS, which needs a tls listener (at load)
    shown = uri if len(uri) <= 80 else uri[:80] + "..."  # printable ASCII: the parser checked
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
            raise ValueError(f"{shown(uri)}: URI scheme {other.group(1)!r} is not sip or sips")
        uri = "sip:" + uri
    parse_uri(uri)
    return uri


def _row(dest: Destination) -> str:
    return f"row {dest.row_id}"


def resolve_destinations(
    dests: Iterable[Destination],
    *,
    skip_unresolvable: bool,
    resolver: Resolver = socket.getaddrinfo,
    location: Callable[[Destination], str] = _row,
    host_lookup: HostLookup | None = None,
) -> list[Destination]:
    """Return ``dests`` with ``address=(ip, port, transport)`` and ``dns`` filled in.

    Entries flagged NODNS (16) are kept unresolved (``address=None``). A host name is looked
    up with ``host_lookup`` (:mod:`plugins.dispatcher.dnslookup`: SRV first when the URI has no
    port), or with ``resolver`` (``getaddrinfo``, A/AAAA only) when there is none; ``address``
    is the first server's. A host that does not resolve raises :class:`ResolveError` listing
    every such destination with ``location(dest)`` (e.g. ``dispatcher.list:12``), or, with
    ``skip_unresolvable``, is dropped with a warning. Blocks on DNS: call it off the loop
    thread. Each distinct name is looked up once.
    """
    find = host_lookup or system_lookup(resolver)
    out: list[Destination] = []
    failures: list[str] = []
    cache: dict[tuple[str, int | None, str], Resolution | str] = {}
    for dest in dests:
        if dest.flags & DestFlags.NODNS:
            out.append(dest)
            continue
        try:
            uri = parse_uri(dest.uri)
        except ValueError as exc:
            raise ResolveError(f"{location(dest)}: {exc}") from None
        if uri.is_ip:
            out.append(replace(dest, address=(uri.host, uri.effective_port, uri.transport)))
            continue
        key = name_key(uri)
        if key not in cache:
            cache[key] = resolve_name(find, uri)
        found = cache[key]
        if isinstance(found, str):
            message = (
                f"{location(dest)}: set {dest.setid} {dest.uri}: cannot resolve {uri.host!r} "
                f"({found}); set flag 16 (NODNS) to load it unresolved"
            )
            if skip_unresolvable:
                logger.warning("dispatcher: skipping {}", message)
            else:
                failures.append(message)
            continue
        out.append(with_resolution(dest, uri, found))
    if failures:
        raise ResolveError("\n".join(failures))
    return out


def name_key(uri: SipUri) -> tuple[str, int | None, str]:
    """What a host name is looked up by: (name lower-cased, port or None, transport)."""
    return (uri.host.lower(), uri.port or None, uri.transport)


def resolve_name(find: HostLookup, uri: SipUri) -> Resolution | str:
    """``uri``'s host looked up (blocking), or why it does not resolve."""
    try:
        return find(uri.host, uri.port or None, uri.transport)
    except LookupFailed as exc:
        return str(exc) or "no address"


def with_resolution(dest: Destination, uri: SipUri, found: Resolution) -> Destination:
    """``dest`` with ``found`` as its DNS answer and the first server as its address."""
    first = found.first
    address = (first[0], first[1], uri.transport) if first is not None else None
    return replace(dest, address=address, dns=found)
