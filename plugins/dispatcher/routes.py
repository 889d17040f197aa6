"""Which route rule a call matches: pure functions over :class:`~b2bua.api.CallInfo`.

Rules are tried in file order and the first whose every given match field fits wins
(Kamailio scripts do the same with an ``if`` chain before ``ds_select_dst``). Fields left
empty match anything, so a rule without match fields is a catch-all.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from b2bua.api import CallInfo
from b2bua.sipuri import parse_uri_lenient
from plugins.dispatcher.config import Route


def _source_matches(route: Route, source_ip: str) -> bool:
    try:
        ip = ipaddress.ip_address(source_ip.strip("[]"))
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1 for an IPv4 rule
    return any(ip.version == net.version and ip in net for net in route.networks)


def _header_matches(route: Route, call: CallInfo) -> bool:
    values = call.headers.get(route.header.lower(), ())
    if not values:
        return False
    if route.header_pattern is not None:
        return any(route.header_pattern.search(v) for v in values)
    if route.header_value:
        return any(v.strip() == route.header_value.strip() for v in values)
    return True


def route_matches(route: Route, call: CallInfo) -> bool:
    """True when every match field the rule sets fits the call."""
    if route.method and call.method.upper() != route.method.upper():
        return False
    if route.ruri_user_prefix and not parse_uri_lenient(call.request_uri).user.startswith(route.ruri_user_prefix):
        return False
    if route.ruri_pattern is not None and not route.ruri_pattern.search(call.request_uri):
        return False
    if route.source and not _source_matches(route, call.source_ip):
        return False
    return not route.header or _header_matches(route, call)


def match_route(routes: Sequence[Route], call: CallInfo) -> tuple[int, Route] | None:
    """The first matching rule and its index (0-based, file order), or None."""
    for i, route in enumerate(routes):
        if route_matches(route, call):
            return i, route
    return None
