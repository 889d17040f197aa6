"""From a call to a :class:`~b2bua.api.RoutePlan`: rule, set, selection, targets.

The first matching ``[[plugins.dispatcher.routes]]`` rule names the set and algorithm; the
chosen destination and the failover list become the plan's targets (parallel for algorithm
12), each carrying ``target.data["dispatcher"]`` = ``{"setid", "uri", "key", "duid", "attrs",
"row_id"}`` so other plugins (failover) can tell which destination a leg went to.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from loguru import logger

from b2bua.api import CallInfo, DialMode, Reject, RoutePlan, StashKey, Target
from b2bua.sip import retry_after
from plugins.dispatcher.config import DispatcherConfig
from plugins.dispatcher.model import Destination
from plugins.dispatcher.outbound import outbound_of
from plugins.dispatcher.routes import match_route
from plugins.dispatcher.runtime import DestKey, DispatcherState
from plugins.dispatcher.selection import PARALLEL

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
    config: DispatcherConfig, state: DispatcherState, call: CallInfo, rng: random.Random
) -> RoutePlan | Reject:
    """The plan for ``call``, or the configured rejection when no destination can take it.

    Advances the set's cursors; records the route in ``call.stash[ROUTE]``.
    """
    log = logger.bind(call_id=call.call_id)
    matched = match_route(config.effective_routes, call)
    if matched is None:
        log.info("dispatcher: no route rule matches {} {}", call.method, call.request_uri)
        return no_destination(config)
    index, route = matched
    if not state.has_set(route.set):
        log.warning("dispatcher: rule {} names set {}, which is not loaded", index, route.set)
        return no_destination(config)
    dests = state.select(route.set, route.alg, call, route.limit, rng)
    if not dests:
        log.warning("dispatcher: set {} has no usable destination (algorithm {})", route.set, route.alg)
        return no_destination(config)
    rule = index if config.routes else -1
    call.stash[ROUTE] = CallRoute(rule, route.set, route.alg, tuple(d.key for d in dests))
    log.debug("dispatcher: rule {} set {} alg {} -> {}", rule, route.set, route.alg, ", ".join(d.uri for d in dests))
    mode = DialMode.PARALLEL if route.alg == PARALLEL else DialMode.SERIAL
    return RoutePlan(
        tuple(make_target(d) for d in dests),
        mode,
        data={DATA_KEY: {"setid": route.set, "alg": route.alg, "rule": rule}},
    )


def no_destination(config: DispatcherConfig) -> Reject:
    """The caller's answer when no destination can take the call (``no_destination_code``)."""
    return Reject(config.no_destination_code, config.no_destination_reason, retry_after(config.retry_after))


def make_target(dest: Destination) -> Target:
    """The :class:`Target` for one destination, with its identity in ``data["dispatcher"]``."""
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
        outbound=outbound_of(dest.attrs),  # its socket, proxy and credentials
    )


def dest_key_of(target: Target) -> DestKey | None:
    """The destination key a dispatcher-made target carries, or None for other targets."""
    info = target.data.get(DATA_KEY) if isinstance(target.data, Mapping) else None
    key = info.get("key") if isinstance(info, Mapping) else None
    if not (isinstance(key, tuple) and len(key) == 2):
        return None
    return (int(key[0]), str(key[1]))
