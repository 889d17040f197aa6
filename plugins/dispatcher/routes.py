"""Which route rule a call matches: pure functions over :class:`~b2bua.api.CallInfo`.

Rules are tried in file order and the first whose every given match field fits wins
(Kamailio scripts do the same with an ``if`` chain before ``ds_select_dst``). Fields left
empty match anything, so a rule without match fields is a catch-all.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Collection, Sequence

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


def unloaded_sets(routes: Sequence[Route], loaded: Collection[int], where: str) -> tuple[list[str], list[str]]:
    """The sets rules name that no destination has: ``(backup sets, rules' own sets)``, one
    message each naming the rule (``where`` is e.g. ``config.toml: [[plugins.dispatcher.routes]]``).

    A missing backup set stops the start-up (it would only be missed in an outage, the moment it
    is needed), a rule's own set only warns (a table filled after the start is a normal way to
    begin); after a reload both warn, the destinations being the source of truth.
    """
    backups: list[str] = []
    own: list[str] = []
    have = ", ".join(str(s) for s in sorted(loaded)) or "none"
    for i, route in enumerate(routes):
        if route.set not in loaded:
            own.append(f"{where}[{i}] set: set {route.set} has no destinations (loaded sets: {have})")
        for setid, _ in route.backups:
            if setid not in loaded:
                backups.append(f"{where}[{i}] backup_sets: set {setid} has no destinations (loaded sets: {have})")
    return backups, own
