"""DispatcherState: snapshot swaps, state changes and their events, add/remove, call load."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from loguru import logger

from b2bua.api import CallInfo
from plugins.dispatcher.model import Attrs, DestFlags, Destination, Snapshot, build_snapshot
from plugins.dispatcher.runtime import DispatcherState, load_changes, mark_state_bits, parse_state_letters
from plugins.dispatcher.setview import Cursors

I, T, D, P = (int(f) for f in (DestFlags.INACTIVE, DestFlags.TRYING, DestFlags.DISABLED, DestFlags.PROBING))  # noqa: E741
NOPING = int(DestFlags.NOPING)

Event = tuple[str, int | None, int, str]


def d(setid: int, uri: str, flags: int = 0, priority: int = 0, **attrs: Any) -> Destination:
    return Destination(setid, uri, flags=flags, priority=priority, attrs=Attrs(**attrs))


def snap(*dests: Destination) -> Snapshot:
    return build_snapshot(list(dests), "test")


def call(n: int = 1) -> CallInfo:
    return CallInfo(n, f"call-{n}@x", "sip:4930@b2bua", "sip:alice@a", "sip:4930@b2bua")


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, dest: Destination, old: int | None, new: int, reason: str) -> None:
        self.events.append((dest.uri, old, new, reason))


def make(*dests: Destination) -> tuple[DispatcherState, Recorder]:
    rec = Recorder()
    state = DispatcherState(rng=random.Random(1), listener=rec)
    state.swap(snap(*dests), keep_state=False, reason="startup")
    return state, rec


GW = [d(1, "sip:gw1"), d(1, "sip:gw2"), d(1, "sip:gw3", flags=D)]


def test_startup_reports_every_destination_once_with_its_state() -> None:
    _, rec = make(*GW, d(2, "sip:other", flags=I | P))
    assert sorted(rec.events) == [
        ("sip:gw1", None, 0, "startup"),
        ("sip:gw2", None, 0, "startup"),
        ("sip:gw3", None, D, "startup"),
        ("sip:other", None, I | P, "startup"),
    ]


def test_set_flags_notifies_only_when_usable_flips() -> None:
    state, rec = make(*GW)
    rec.events.clear()
    key = (1, "sip:gw1")
    assert state.set_flags(key, T | P, "probe 408")  # trying: still up, no event
    assert state.set_flags(key, I | P, "probe 408")
    assert state.set_flags(key, I, "probe 408")  # still down, no event
    assert state.set_flags(key, P, "probe 200")
    assert rec.events == [("sip:gw1", T | P, I | P, "probe 408"), ("sip:gw1", I, P, "probe 200")]
    assert not state.set_flags((1, "sip:nope"), I, "x")


@pytest.mark.parametrize(
    ("text", "bits"),
    [("a", 0), ("A", 0), ("1", 0), ("ap", P), ("i", I), ("0", I), ("ip", I | P), ("IP", I | P), ("t", T), ("3p", T | P),
     ("d", D), ("2", D), ("dp", D)],
)  # fmt: skip
def test_parse_state_letters(text: str, bits: int) -> None:
    assert parse_state_letters(text) == bits


@pytest.mark.parametrize("text", ["", "x", "ai", "pp", "apx", "4"])
def test_parse_state_letters_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="bad state"):
        parse_state_letters(text)


@pytest.mark.parametrize(
    ("text", "bits"),
    [("a", 0), ("i", I), ("ip", I | P), ("t", I), ("tp", I | P), ("d", D), ("dp", D), ("ia", 0), ("iap", P), ("p", P)],
)
def test_mark_state_bits_kamailio_61_set_mode(text: str, bits: int) -> None:
    assert mark_state_bits(text) == bits


@pytest.mark.parametrize("text", ["", "x", "i!"])
def test_mark_state_bits_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        mark_state_bits(text)


def test_set_state_by_uri_and_all_keeps_config_bits() -> None:
    state, rec = make(d(1, "sip:gw1", flags=NOPING), d(1, "sip:gw2"), d(2, "sip:x"))
    rec.events.clear()
    assert state.set_state(1, "SIP:GW1", "ip") == 1
    assert state.flags((1, "sip:gw1")) == I | P | NOPING  # "no ping" is configuration, kept
    assert state.set_state(1, "all", "d") == 2
    assert state.flags((1, "sip:gw2")) == D
    assert state.flags((2, "sip:x")) == 0  # other set untouched
    assert state.set_state(1, "sip:none", "a") == 0
    assert state.set_state(9, "all", "a") == 0
    with pytest.raises(ValueError):
        state.set_state(1, "all", "z")
    assert [e[0] for e in rec.events] == ["sip:gw1", "sip:gw2"]  # gw1 I -> D is no flip


def test_set_duid_state() -> None:
    state, _ = make(d(1, "sip:gw1", duid="a"), d(1, "sip:gw2", duid="b"))
    assert state.set_duid_state(1, "b", "i") == 1
    assert (state.flags((1, "sip:gw1")), state.flags((1, "sip:gw2"))) == (0, I)
    assert state.set_duid_state(1, "zz", "i") == 0


def test_mark_sets_directly_and_resets_the_probe_counter() -> None:
    state, rec = make(*GW)
    rt = state.runtime((1, "sip:gw2"))
    assert rt is not None
    rt.probe_count = 2
    assert state.mark((1, "sip:gw2"), "t", "503 from gateway")
    assert (rt.flags, rt.probe_count) == (I, 0)
    assert rec.events[-1] == ("sip:gw2", 0, I, "503 from gateway")
    assert not state.mark((1, "sip:gone"), "i")


def test_swap_keep_state_keeps_survivors_and_lets_changed_config_win() -> None:
    state, rec = make(d(1, "sip:gw1"), d(1, "sip:gw2"), d(1, "sip:gw3"))
    state.set_flags((1, "sip:gw1"), I | P, "probe")
    state.set_flags((1, "sip:gw2"), I | P, "probe")
    rt1 = state.runtime((1, "sip:gw1"))
    assert rt1 is not None
    rt1.probe_count, rt1.latency = 1, "stats"
    rec.events.clear()
    # reload: gw2 now configured disabled in the DB, gw3 gone, gw4 new
    state.swap(snap(d(1, "sip:gw1"), d(1, "sip:gw2", flags=D), d(1, "sip:gw4")), keep_state=True)
    assert state.flags((1, "sip:gw1")) == I | P
    rt1 = state.runtime((1, "sip:gw1"))
    assert rt1 is not None and (rt1.probe_count, rt1.latency) == (1, "stats")
    assert state.flags((1, "sip:gw2")) == D
    assert state.runtime((1, "sip:gw3")) is None
    assert sorted(rec.events) == [
        ("sip:gw1", I | P, I | P, "reload"),
        ("sip:gw2", I | P, D, "reload"),
        ("sip:gw4", None, 0, "reload"),
    ]


def test_swap_without_keep_state_resets_to_configured_flags_and_cursors() -> None:
    state, _ = make(*GW)
    state.set_flags((1, "sip:gw1"), I, "probe")
    state.select(1, 4, call())
    state.swap(snap(*GW), keep_state=False)
    assert state.flags((1, "sip:gw1")) == 0
    assert state.cursors(1) == Cursors(rr=0)


def test_select_advances_cursors_and_unknown_set_is_empty() -> None:
    state, _ = make(d(1, "sip:a"), d(1, "sip:b"))
    firsts = [state.select(1, 4, call())[0].uri for _ in range(4)]
    assert firsts == ["sip:b", "sip:a", "sip:b", "sip:a"]  # array order: last line first
    assert state.select(7, 4, call()) == ()
    assert not state.has_set(7)


@pytest.mark.parametrize("alg", [0, 4, 8, 10, 12, 13])
def test_selection_sees_every_state_change_at_once(alg: int) -> None:
    # the set's view is kept between calls: each change must reach the very next selection
    state, _ = make(d(1, "sip:a", priority=2), d(1, "sip:b", priority=1))

    def chosen() -> set[str]:
        return {state.select(1, alg, call(n))[0].uri for n in range(20)}

    assert "sip:a" in chosen()
    state.set_flags((1, "sip:a"), I | P, "probe")
    assert chosen() == {"sip:b"}
    state.set_state(1, "sip:b", "d")
    assert state.select(1, alg, call()) == ()
    state.set_flags((1, "sip:a"), T, "probe")  # trying is still selected
    assert chosen() == {"sip:a"}
    state.mark((1, "sip:b"), "a")
    assert {x.uri for x in state.select(1, alg, call())} == {"sip:a", "sip:b"}  # b is back


def test_latency_change_reaches_the_next_selection() -> None:
    from plugins.dispatcher.latency import seeded

    state, _ = make(d(1, "sip:a", priority=30), d(1, "sip:b", priority=30))
    assert {state.select(1, 13, call(n))[0].uri for n in range(4)} == {"sip:a", "sip:b"}  # equals rotate
    assert state.set_latency((1, "sip:a"), seeded(300.0))  # 30 - 300 // 30 = 20
    assert {state.select(1, 13, call(n))[0].uri for n in range(4)} == {"sip:b"}
    assert state.set_latency((1, "sip:a"), seeded(20.0))
    assert {state.select(1, 13, call(n))[0].uri for n in range(4)} == {"sip:a", "sip:b"}
    assert not state.set_latency((1, "sip:gone"), seeded(1.0))


def test_relative_weight_table_is_rebuilt_on_up_and_down() -> None:
    state, _ = make(d(1, "sip:a", rweight=1), d(1, "sip:b", rweight=2), d(1, "sip:c", rweight=1))

    def shares() -> dict[str, float]:
        counts = Counter(state.select(1, 11, call())[0].uri for _ in range(1000))
        return {u: c / 1000 for u, c in counts.items()}

    assert shares() == {"sip:a": 0.25, "sip:b": 0.5, "sip:c": 0.25}
    state.set_flags((1, "sip:c"), I, "probe")
    assert shares() == {"sip:a": 0.34, "sip:b": 0.66}  # 33/67 by slots; c is first in the array
    state.set_flags((1, "sip:c"), 0, "probe")
    assert shares() == {"sip:a": 0.25, "sip:b": 0.5, "sip:c": 0.25}


def test_add_keeps_other_runtime_and_order() -> None:
    state, rec = make(d(1, "sip:a", priority=5), d(1, "sip:b", priority=5), d(1, "sip:c", priority=1))
    before = [x.uri for x in state.snapshot.sets[1].destinations]
    assert before == ["sip:b", "sip:a", "sip:c"]
    state.set_flags((1, "sip:a"), I, "probe")
    state.add(d(1, "sip:n", priority=5))
    after = [x.uri for x in state.snapshot.sets[1].destinations]
    assert after == ["sip:n", "sip:b", "sip:a", "sip:c"]  # like a new last line; no equal-priority flip
    assert state.flags((1, "sip:a")) == I
    assert rec.events[-1] == ("sip:n", None, 0, "add")
    with pytest.raises(ValueError, match="already has"):
        state.add(d(1, "SIP:N"))
    state.add(d(5, "sip:new-set"))
    assert state.select(5, 4, call())[0].uri == "sip:new-set"


def test_remove() -> None:
    state, _ = make(d(1, "sip:a"), d(1, "sip:b"), d(2, "sip:only"))
    state.set_flags((1, "sip:b"), I, "probe")
    assert state.remove(1, "SIP:A")
    assert [x.uri for x in state.snapshot.sets[1].destinations] == ["sip:b"]
    assert state.flags((1, "sip:b")) == I
    assert not state.remove(1, "sip:a")
    assert state.remove(2, "sip:only")
    assert not state.has_set(2)


def test_call_load_add_release_without_double_counting() -> None:
    state, _ = make(d(1, "sip:a", duid="a"), d(1, "sip:b", duid="b"))
    a, b = (1, "sip:a"), (1, "sip:b")

    def load(key: tuple[int, str]) -> int:
        rt = state.runtime(key)
        assert rt is not None
        return rt.load

    assert state.load_add(1, a)
    assert not state.load_add(1, a)  # same leg twice: counted once
    assert state.load_add(2, a) and state.load_add(2, b)
    assert (load(a), load(b)) == (2, 1)
    assert state.load_release(1, a)
    assert not state.load_release(1, a)  # no double release
    assert not state.load_release(3, a)  # never counted
    assert load(a) == 1
    assert sorted(state.release_call(2)) == sorted([a, b])
    assert state.release_call(2) == []
    assert (load(a), load(b), state.active_calls()) == (0, 0, 0)


def test_call_load_survives_reload_and_drives_algorithm_10() -> None:
    dests = (d(1, "sip:a", duid="a", maxload=1), d(1, "sip:b", duid="b", maxload=2))
    state, _ = make(*dests)
    state.load_add("c1", (1, "sip:b"))
    state.swap(snap(*dests), keep_state=False)  # loads are recounted from the live calls
    assert [x.uri for x in state.select(1, 10, call())] == ["sip:a", "sip:b"]
    state.load_add("c2", (1, "sip:a"))
    assert [x.uri for x in state.select(1, 10, call())] == ["sip:b"]  # a full
    state.load_add("c3", (1, "sip:b"))
    assert state.select(1, 10, call()) == ()  # all at maxload
    state.release_call("c2")
    assert [x.uri for x in state.select(1, 10, call())] == ["sip:a"]


def test_listing() -> None:
    class Lat:
        avg, std, est, max, timeout = 10.0, 1.0, 11.0, 20.0, 2

    state = DispatcherState(latency_factory=lambda dest: Lat() if dest.uri == "sip:a" else None)
    state.swap(snap(d(1, "sip:a", flags=P, priority=3, duid="gw-a"), d(2, "sip:b", flags=D | P)), keep_state=False)
    state.load_add("c", (1, "sip:a"))
    rows = state.listing()
    assert [r["setid"] for r in rows] == [1, 2]
    a = rows[0]["destinations"][0]
    assert a["uri"] == "sip:a" and a["flags"] == "AP" and a["priority"] == 3 and a["duid"] == "gw-a"
    assert a["load"] == 1
    assert a["latency"] == {"avg": 10.0, "std": 1.0, "est": 11.0, "max": 20.0, "timeout": 2}
    b = rows[1]["destinations"][0]
    assert (b["flags"], b["latency"], b["load"]) == ("DP", None, 0)


def test_a_reload_logs_what_it_added_and_removed_and_startup_does_not() -> None:
    # after a SIGHUP an operator must see what the list change did; start-up lists nothing
    # (its "loaded from ... N destinations" line says it), nor does a reload that changed nothing
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO")
    try:
        state, _ = make(*GW)
        state.swap(snap(*GW), keep_state=True)
        unchanged = list(lines)
        state.swap(snap(d(1, "sip:gw1"), d(1, "sip:gw3", flags=D), d(1, "sip:gw4"), d(2, "sip:gw1")),
                   keep_state=True)
    finally:
        logger.remove(sink)
    assert not any(" added " in line or " removed " in line for line in unchanged)
    assert "dispatcher: reload added 2 (set 1 sip:gw4, set 2 sip:gw1), removed 1 (set 1 sip:gw2)" in lines


def test_load_changes_names_at_most_ten_of_each() -> None:
    many = [d(1, f"sip:10.0.0.{n}") for n in range(12)]
    assert load_changes([], []) == ""
    assert load_changes(many, many[:1]) == (
        "added 12 (" + ", ".join(f"set 1 sip:10.0.0.{n}" for n in range(10)) + ", and 2 more), "
        "removed 1 (set 1 sip:10.0.0.0)"
    )
