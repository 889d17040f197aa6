"""The leg pool (b2bua.legpool): call slots, retire/release, zombies, the audit; fake legs."""

from __future__ import annotations

from typing import Any

from b2bua.events import CallLeg, LegOwner
from b2bua.legpool import LegPool


class FakeLeg(CallLeg):
    """Only what the pool uses: attached() and release()."""

    is_attached = True
    released = False

    def send_invite(self, request: Any, call_id: str) -> None: ...
    def respond(self, code: int, reason: str = "", headers: Any = ()) -> None: ...
    def end(self, code: int = 0, reason: str = "", headers: Any = ()) -> bool: return True
    def connect_audio(self, other: CallLeg) -> bool: return True
    def attached(self) -> bool: return self.is_attached
    def release(self) -> None: self.released = True


class Owner:
    def on_event(self, leg: object, event: object) -> None:
        pass


def pool(slots: int) -> tuple[LegPool, list[FakeLeg]]:
    made: list[FakeLeg] = []

    def factory(owner: LegOwner | None, index: int, pjsua_call_id: int, profile: object = None) -> FakeLeg:
        made.append(FakeLeg(owner, index))
        return made[-1]

    return LegPool(factory, slots), made


def test_slots_are_counted_and_one_is_kept_for_an_incoming_invite() -> None:
    legs, _ = pool(4)
    a = legs.incoming(0)
    assert a.index == 0 and a.owner is None and legs.in_use == 1
    owner = Owner()
    b1, b2 = legs.new_leg(owner, 1), legs.new_leg(owner, 2)
    assert b1 is not None and b2 is not None and b1.owner is owner
    assert legs.full() and legs.new_leg(owner, 3) is None and legs.in_use == 3


def test_retired_legs_are_released_on_the_next_pass_once() -> None:
    legs, _ = pool(10)
    leg = legs.new_leg(Owner(), 1)
    assert isinstance(leg, FakeLeg)
    legs.retire(leg)
    legs.retire(leg)  # idempotent: re-entrant callbacks may report the end twice
    assert legs.in_use == 0 and leg.owner is None and legs.retired == [leg]
    assert not leg.released  # never inside the callback that ended it
    legs.release_retired()
    assert leg.released and legs.retired == []


def test_zombies_are_kept_until_retired_or_found_lost() -> None:
    legs, _ = pool(10)
    kept, lost = legs.new_leg(Owner(), 1), legs.new_leg(Owner(), 2)
    assert isinstance(kept, FakeLeg) and isinstance(lost, FakeLeg)
    legs.keep_until_disconnected(kept)
    legs.keep_until_disconnected(lost)
    lost.is_attached = False  # pjsua ended it without a callback
    assert legs.audit() == 1 and legs.zombies == 1 and lost in legs.retired and legs.in_use == 1
    legs.retire(kept)  # its Disconnected came
    assert legs.zombies == 0 and legs.in_use == 0
