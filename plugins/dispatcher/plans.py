"""From a call to a :class:`~b2bua.api.RoutePlan`: rule, set, selection, targets.

The first matching ``[[plugins.dispatcher.routes]]`` rule names the set and algorithm, and
its backup sets (:func:`select_sets`); the chosen destination and the failover list become the
plan's targets (parallel for algorithm 12), each carrying ``target.data["dispatcher"]`` =
``{"setid", "uri", "key", "duid", "attrs", "row_id"}`` so other plugins (failover) can tell
which destination a leg went to.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from loguru import logger

from b2bua.api import CallInfo, DialMode, Reject, RoutePlan, StashKey, Target
from b2bua.logs import writes
from b2bua.sip import retry_after
from plugins.dispatcher.config import NO_DEFAULTS, DispatcherConfig, Route, SendDefaults
from plugins.dispatcher.dnsfailover import next_hops
from plugins.dispatcher.model import Destination
from plugins.dispatcher.outbound import outbound_of
from plugins.dispatcher.routes import match_route
from plugins.dispatcher.runtime import DestKey, DispatcherState
from plugins.dispatcher.selection import PARALLEL

if TYPE_CHECKING:
    from loguru import Logger

DATA_KEY = "dispatcher"  #: the key of ``Target.data`` / ``RoutePlan.data`` this plugin fills


@dataclass(frozen=True)
class CallRoute:
    """How the dispatcher routed one call (``call.stash[ROUTE]``)."""

    rule: int  #: index of the matched ``[[plugins.dispatcher.routes]]`` rule; -1: the implicit one
    setid: int
    alg: int
    keys: tuple[DestKey, ...]  #: destinations offered, in order


ROUTE: StashKey[CallRoute] = StashKey("dispatcher.route")


def plan_call(
    config: DispatcherConfig, state: DispatcherState, call: CallInfo, rng: random.Random,
    proxied: bool = False,
) -> RoutePlan | Reject:
    """The plan for ``call``, or the configured rejection when no destination can take it.

    Advances the set's cursors; records the route in ``call.stash[ROUTE]``. With
    ``dns_failover``, a destination whose name leads to several servers becomes one target per
    server (:mod:`plugins.dispatcher.dnsfailover`), unless B legs go through an outbound proxy
    (``proxied``: ``[sip] outbound_proxy``; or the destination's ``obproxy``), which resolves.
    """
    matched = match_route(config.effective_routes, call)
    if matched is None:
        _log(call).info("dispatcher: no route rule matches {} {}", call.method, call.request_uri)
        return no_destination(config)
    index, route = matched
    rule = index if config.routes else -1
    dests, used = select_sets(state, route, call, rng)
    if not dests:
        if route.backups:
            _log(call).warning("dispatcher: rule {}: no set of {} has a usable destination", rule, route.sets_text)
        elif not state.has_set(route.set):
            _log(call).warning("dispatcher: rule {} names set {}, which is not loaded", index, route.set)
        else:
            _log(call).warning("dispatcher: set {} has no usable destination (algorithm {})", route.set, route.alg)
        return no_destination(config)
    setid, alg = used
    call.stash[ROUTE] = CallRoute(rule, setid, alg, tuple(d.key for d in dests))
    if writes.debug:  # every call: not even the filtered call (and the join) when DEBUG is not written
        _log(call).debug("dispatcher: rule {} set {} alg {} -> {}", rule, setid, alg, ", ".join(d.uri for d in dests))
    mode = DialMode.PARALLEL if alg == PARALLEL else DialMode.SERIAL
    defaults = config.send_defaults
    targets: list[Target] = []
    for dest in dests:
        target = make_target(dest, defaults)
        hops = dns_hops(dest, config, proxied, rng)
        if not hops:
            targets.append(target)
        elif mode is DialMode.PARALLEL:  # one fork per destination: its first server
            targets.append(replace(target, next_hop=hops[0]))
        else:
            targets.extend(replace(target, next_hop=hop) for hop in hops)
    return RoutePlan(
        tuple(targets),
        mode,
        data={DATA_KEY: {"setid": setid, "alg": alg, "rule": rule}},
    )


def _log(call: CallInfo) -> Logger:
    """The logger for a line about ``call`` (bound only when a line is written: most calls log none here)."""
    return logger.bind(call_id=call.call_id)


def select_sets(state: DispatcherState, route: Route, call: CallInfo,
                rng: random.Random) -> tuple[list[Destination], tuple[int, int]]:
    """Kamailio's ``ds_select_routes``: the rule's set, then its backup sets, each with its own
    algorithm; the first that yields a destination gives the first target, the others append
    their selection to the failover list; ``limit`` counts across all of them. A set that is
    not loaded, or has nothing usable, is passed over.

    :returns: the destinations in dialling order, and the ``(set, algorithm)`` that chose the
        first one (the rule's own when none did).
    """
    out: list[Destination] = []
    used = route.sets[0]
    for setid, alg in route.sets:
        room = route.limit - len(out) if route.limit else 0
        if route.limit and room <= 0:
            break
        if not state.has_set(setid):
            continue
        chosen = state.select(setid, alg, call, room, rng)
        if chosen and not out:
            used = (setid, alg)
        out.extend(chosen)
    return out, used


def dns_hops(dest: Destination, config: DispatcherConfig, proxied: bool,
             rng: random.Random) -> tuple[str, ...]:
    """The next hops to dial ``dest`` through, in order; empty: dial it by its URI (an address,
    DNS failover off, a proxy in the way, or a name that leads to one server only)."""
    found = dest.dns
    if found is None or not config.dns_failover or proxied or dest.attrs.obproxy:
        return ()
    hops = next_hops(found, rng)
    return hops if len(hops) > 1 else ()


def no_destination(config: DispatcherConfig) -> Reject:
    """The caller's answer when no destination can take the call (``no_destination_code``)."""
    return Reject(config.no_destination_code, config.no_destination_reason, retry_after(config.retry_after))


def make_target(dest: Destination, defaults: SendDefaults = NO_DEFAULTS) -> Target:
    """The :class:`Target` for one destination, with its identity in ``data["dispatcher"]``
    (``defaults``: the listener of a destination whose attributes name none)."""
    return Target(
        uri=dest.uri,
        data={
            DATA_KEY: {
                "setid": dest.setid,
                "uri": dest.uri,
                "key": dest.key,
                "duid": dest.attrs.duid,
                "attrs": dict(dest.attrs.extra),
                "row_id": dest.row_id,
            }
        },
        outbound=outbound_of(dest.attrs, defaults),  # its socket, proxy and credentials
    )


def dest_key_of(target: Target) -> DestKey | None:
    """The destination key a dispatcher-made target carries, or None for other targets."""
    info = target.data.get(DATA_KEY) if isinstance(target.data, Mapping) else None
    key = info.get("key") if isinstance(info, Mapping) else None
    if not (isinstance(key, tuple) and len(key) == 2):
        return None
    return (int(key[0]), str(key[1]))
