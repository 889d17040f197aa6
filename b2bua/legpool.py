"""The leg pool: the life of every pjsua2 Call object, from slot to release.

pjsua2's ``~Call`` hangs up whatever call holds the leg's slot *at that moment*, and pjsua hands
slots to new calls round robin, so a Call object must never be left to the garbage collector
(``docs/internals.md`` "Call legs", ``pjsua2-notes.md`` §4). The pool:

* counts the call slots in use (``reserve`` for B legs, ``incoming`` for the A leg pjsua
  already took a slot for);
* **retires** a leg whose call is over (its session drops it) and **releases** it on the next
  loop pass, never inside a pjsua2 callback (:meth:`release_retired`);
* keeps **zombies**: legs their session gave up on while pjsua still runs their INVITE (no
  provisional to CANCEL yet), until pjsua reports them disconnected;
* **audits** zombies that pjsua ended without a callback (under overload it does).

It never imports pjsua2: legs come from a factory (:func:`b2bua.legs.leg_factory`), so the
pool is tested with fake legs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from b2bua.events import CallLeg, LegOwner

#: ``factory(owner, index, pjsua_call_id, profile)``; ``pjsua_call_id`` is -1 for a new outgoing
#: leg, ``profile`` how it leaves (a :class:`b2bua.outbound.OutboundProfile`; None: the default).
#: It may raise :class:`b2bua.events.LegError` (no pjsua account for that profile).
LegFactory = Callable[[LegOwner | None, int, int, Any], CallLeg]


class LegPool:
    """Call slots and the release of pjsua2 Call objects (loop thread only).

    :param factory: makes a leg; :param slots: pjsua's call slots (set once pjsua is up).
    """

    def __init__(self, factory: LegFactory, slots: int = 0) -> None:
        self._factory = factory
        self.slots = slots
        self.in_use = 0  #: slots taken: live legs, zombies and legs not released yet
        #: legs retired during this loop pass, released at its end (the loop reads it directly)
        self.retired: list[CallLeg] = []
        self._zombies: dict[int, CallLeg] = {}

    def full(self) -> bool:
        """No slot left for one more leg (one is kept free for an incoming INVITE)."""
        return self.in_use >= self.slots - 1

    def incoming(self, pjsua_call_id: int) -> CallLeg:
        """The A leg of an INVITE pjsua already took a slot for (owner set by the caller)."""
        self.in_use += 1
        return self._factory(None, 0, pjsua_call_id, None)

    def new_leg(self, owner: LegOwner, index: int, profile: Any = None) -> CallLeg | None:
        """A new B leg reporting to ``owner`` and leaving as ``profile`` says, or None when no
        call slot is free. :raises LegError: from the factory (nothing is counted then)."""
        if self.full():
            return None
        leg = self._factory(owner, index, -1, profile)
        self.in_use += 1
        return leg

    def retire(self, leg: CallLeg) -> None:
        """``leg``'s call is over: release it on the next loop pass (idempotent).

        It reports to nobody from now on; its slot is counted free.
        """
        if leg.retired:
            return
        leg.retired = True
        leg.owner = None
        self._zombies.pop(id(leg), None)
        self.retired.append(leg)
        self.in_use -= 1

    def keep_until_disconnected(self, leg: CallLeg) -> None:
        """Keep a leg its owner is done with until pjsua ends it (then its owner retires it)."""
        self._zombies[id(leg)] = leg

    @property
    def zombies(self) -> int:
        """How many legs wait for pjsua to end them."""
        return len(self._zombies)

    def release_retired(self) -> None:
        """Release the legs retired during this pass (call it outside every pjsua2 callback)."""
        retired = self.retired
        for leg in retired:
            leg.release()
        retired.clear()

    def audit(self) -> int:
        """Retire zombies pjsua ended without a callback; returns how many."""
        lost = 0
        for leg in list(self._zombies.values()):
            if not leg.attached():
                self.retire(leg)
                lost += 1
        return lost

    def forget_zombies(self) -> None:
        """Shutdown: stop waiting for zombies (what still holds them is released before pjsua stops)."""
        self._zombies.clear()
