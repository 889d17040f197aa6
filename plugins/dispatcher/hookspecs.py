"""The dispatcher plugin's own hook specifications (pluggy project ``b2bua``).

Added by :class:`~plugins.dispatcher.plugin.DispatcherPlugin` in ``b2bua_addhooks``. Call
them with keyword arguments, on the loop thread, like every ``b2bua_*`` hook.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from b2bua.api import Target
    from plugins.dispatcher.model import Destination

hookspec = pluggy.HookspecMarker("b2bua")


@hookspec
def dispatcher_dst_state_changed(dest: Destination, old: int | None, new: int, reason: str) -> None:
    """A destination's state, Kamailio's ``event_route[dispatcher:dst-down]`` / ``dst-up``.

    :param dest: the destination (set id, URI, attributes, ...).
    :param old: its state flags before (:class:`~plugins.dispatcher.model.DestFlags` bits),
        or None when it is reported for the first time.
    :param new: its state flags now. "Down" means inactive or disabled
        (``not plugins.dispatcher.model.is_usable(new)``); trying (``T``) is still up.
    :param reason: what caused it: ``"startup"``, ``"reload"``, ``"add"``, ``"probe 408
        Request Timeout"``, ``"set_state"``, a ``dispatcher_mark`` caller's reason, ...

    Fires whenever a destination goes from up to down or back, whatever the cause
    (keepalives, marks, admin commands; Kamailio stays silent on admin commands). It also
    fires once for *every* destination at start-up and after each reload or add, with the
    state it starts in, so a monitoring plugin sees destinations that are loaded inactive
    or disabled (kamailio#4906): there ``old`` is None, or the flags before the reload, and
    may equal ``new``.

    A notification: the return value is ignored. Do not block.
    """


@hookspec
def dispatcher_mark(target: Target, state: str, reason: str) -> None:
    """Ask the dispatcher to set the state of the destination behind ``target``.

    Kamailio 6.1's ``ds_mark_dst(state)``: the state is set directly, bypassing
    ``probing_threshold`` and ``inactive_threshold``.

    :param target: a target the dispatcher made (``target.data["dispatcher"]`` identifies
        the destination); targets of other plugins are ignored.
    :param state: letters from ``a`` (active), ``i`` (inactive), ``t`` (trying: becomes
        inactive at once), ``d`` (disabled, wins over the others), ``p`` (probing), e.g.
        ``"ip"`` to take a gateway out until a keepalive brings it back.
    :param reason: why, for the log and ``dispatcher_dst_state_changed`` (e.g. ``"503 from
        gateway"``).

    Typically called by a failover plugin from ``b2bua_leg_failed``. A notification: the
    return value is ignored.
    """
