"""Reloads as loop tasks: sliced, one at a time, carrying probe results over, freeing the old list."""

from __future__ import annotations

import gc
import random
import threading
import tracemalloc
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from b2bua.api import CallInfo
from plugins.dispatcher.config import DispatcherConfig
from plugins.dispatcher.dnsrefresh import DnsRefresher
from plugins.dispatcher.heap import HELD_THRESHOLD, HeapPolicy
from plugins.dispatcher.model import Attrs, DestFlags, Destination, Snapshot, build_snapshot
from plugins.dispatcher.reloader import ReloadBusy, Reloader, ReloadFailed
from plugins.dispatcher.resolve import LoadError
from plugins.dispatcher.runtime import DispatcherState
from plugins.dispatcher.source import LoaderSource

from .loophost import LoopHost, Ticker

I, P = int(DestFlags.INACTIVE), int(DestFlags.PROBING)  # noqa: E741


def big_snapshot(n: int, per_set: int = 100, priority: int = 0) -> Snapshot:
    return build_snapshot(
        [Destination(1 + i // per_set, f"sip:10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}:5060", priority=priority,
                     attrs=Attrs(body=f"duid=d{i};weight=10", duid=f"d{i}", weight=10), row_id=i + 1,
                     address=(f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", 5060, "udp"))
         for i in range(n)],
        "test",
    )


class Heap(HeapPolicy):
    """Records what would be frozen instead of freezing the test process."""

    def __init__(self, large: int) -> None:
        super().__init__(large)
        self.settled: list[int] = []

    def settle(self, count: int) -> bool:
        self.settled.append(count)
        return count >= self.large


class Rig:
    """A DispatcherState with a Reloader on a real loop (the test thread) and worker pool."""

    def __init__(self, n: int, large: int = 1000, keep_state: bool = True, host: LoopHost | None = None) -> None:
        self.events: list[tuple[str, int | None, int, str]] = []
        self.state = DispatcherState(rng=random.Random(1), listener=lambda d, o, n, r: self.events.append(
            (d.uri, o, n, r)))
        self.state.swap(big_snapshot(n), keep_state=False, reason="startup")
        self.next: Snapshot | BaseException = big_snapshot(n, priority=1)
        self.host = host or LoopHost()
        self.heap = Heap(large)
        self.reloader = Reloader(self.host, self.state, source=LoaderSource(self._load, DispatcherConfig(), None),
                                 keep_state=keep_state, heap=self.heap)
        self.outcome: list[BaseException | None] = []

    def _load(self, config: DispatcherConfig, list_file: Path | None) -> Snapshot:
        if isinstance(self.next, BaseException):
            raise self.next
        return self.next

    def reload(self) -> int:
        """Start a reload and play the loop until it is done; how many loop passes it took."""
        self.events.clear()
        assert self.reloader.reload("reload", self.outcome.append)
        return self.host.pump(lambda: bool(self.outcome))


@pytest.fixture
def rig() -> Iterator[Rig]:
    r = Rig(3000)
    yield r
    r.host.close()


def test_a_large_reload_runs_in_slices_and_frees_the_old_generation() -> None:
    # each clock reading is 0.5 ms: a 2 ms slice is a few steps (a step: 200 entries built, one
    # reported, 1000 freed), so 3000 entries reported take hundreds of loop passes
    rig = Rig(3000, host=LoopHost(clock=Ticker(0.0005)))
    old = weakref.ref(rig.state.snapshot.sets[1].destinations[0])
    try:
        passes = rig.reload()
    finally:
        rig.host.close()
    assert rig.outcome == [None]
    assert passes > 3000 // 10, "the work was spread over loop passes"
    assert len(rig.events) == 3000 and {e[3] for e in rig.events} == {"reload"}
    assert all(d.priority == 1 for d in rig.state.destinations())
    assert rig.reloader.busy is None and rig.heap.settled == [3000]
    gc.collect()
    assert old() is None, "the replaced destinations are freed"


def test_one_change_at_a_time(rig: Rig) -> None:
    assert rig.reloader.reload("reload", rig.outcome.append)
    assert rig.reloader.busy == "reload"
    assert not rig.reloader.reload("reload"), "a second reload waits for nothing: refused"
    with pytest.raises(ReloadBusy, match="Ongoing reload"):
        rig.reloader.exclusive(lambda: rig.state.remove(1, "sip:10.0.0.1:5060"))
    assert not rig.reloader.claim()
    rig.host.pump(lambda: bool(rig.outcome))
    assert rig.reloader.exclusive(lambda: rig.state.remove(1, "sip:10.0.0.1:5060"))


def test_a_failed_load_keeps_the_destinations_and_frees_the_reloader(rig: Rig) -> None:
    before = rig.state.snapshot
    threshold = gc.get_threshold()
    rig.next = LoadError("dispatcher.list:3: flags 'x': not a decimal or 0x hex number")
    rig.reload()
    assert isinstance(rig.outcome[0], ReloadFailed)
    assert str(rig.outcome[0]) == "dispatcher.list:3: flags 'x': not a decimal or 0x hex number"
    assert rig.state.snapshot is before and rig.reloader.busy is None
    assert gc.get_threshold() == threshold, "full collections are allowed again"


def test_full_collections_are_held_off_while_a_reload_runs(rig: Rig) -> None:
    threshold = gc.get_threshold()
    assert rig.reloader.reload("reload", rig.outcome.append)
    assert gc.get_threshold()[2] == HELD_THRESHOLD
    rig.host.pump(lambda: bool(rig.outcome))
    assert gc.get_threshold() == threshold


def test_probe_results_while_a_reload_is_built_carry_over_to_selection() -> None:
    state = DispatcherState(rng=random.Random(1))
    state.swap(big_snapshot(300, per_set=300), keep_state=False, reason="startup")
    steps = state.prepare_steps(big_snapshot(300, per_set=300), keep_state=True)
    next(steps)
    next(steps)  # the reload has read the set and built its view ...
    down = (1, "sip:10.0.0.5:5060")
    state.set_flags(down, I | P, "408 probe timeout")  # ... when a probe takes a gateway down
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            generation = stop.value
            break
    state.install(generation)
    assert state.flags(down) == I | P
    call = CallInfo(1, "c1@x", "sip:1@b", "sip:a@a", "sip:1@b")
    chosen = {state.select(1, 4, call)[0].uri for _ in range(300)}
    assert "sip:10.0.0.5:5060" not in chosen, "the set's view was rebuilt at the swap"
    assert len(chosen) == 299


def test_wait_for_reload_from_a_control_thread(rig: Rig) -> None:
    answers: list[Any] = []

    def control(name: str) -> None:
        try:
            rig.reloader.wait_for_reload("reload")
            answers.append((name, "ok"))
        except (ReloadBusy, ReloadFailed) as exc:
            answers.append((name, type(exc).__name__))

    first = threading.Thread(target=control, args=("first",))
    first.start()
    rig.host.pump(lambda: rig.reloader.busy is not None)
    second = threading.Thread(target=control, args=("second",))
    second.start()
    rig.host.pump(lambda: len(answers) == 2)
    first.join(5)
    second.join(5)
    assert sorted(answers) == [("first", "ok"), ("second", "ReloadBusy")]


def test_memory_of_replaced_lists_is_given_back() -> None:
    rig = Rig(10_000, large=5_000)
    try:
        tracemalloc.start()
        rig.next = big_snapshot(10_000, priority=1)
        rig.reload()
        gc.collect()
        first, _ = tracemalloc.get_traced_memory()
        for priority in (2, 3, 4):
            rig.next = big_snapshot(10_000, priority=priority)
            rig.outcome.clear()
            rig.reload()
        rig.next = Snapshot()
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        rig.host.close()
    assert after < first * 1.05, f"{first} bytes after one reload, {after} after three more"


def test_dns_refresh_swaps_changed_addresses_and_keeps_state() -> None:
    host = LoopHost()
    state = DispatcherState(rng=random.Random(1))
    name = Destination(1, "sip:gw.example.com:5070", address=("192.0.2.1", 5070, "udp"))
    other = Destination(1, "sip:10.0.0.2", address=("10.0.0.2", 5060, "udp"))
    state.swap(build_snapshot([name, other], "test"), keep_state=False)
    state.set_flags(name.key, I | P, "408 probe timeout")
    reloader = Reloader(host, state, source=LoaderSource(lambda c, p: Snapshot(), DispatcherConfig(), None),
                        keep_state=False)

    def dns(host_name: str, port: int) -> list[tuple[Any, ...]]:
        return [(2, 2, 17, "", ("192.0.2.99", port))]

    refresher = DnsRefresher(host, reloader, 0.01, resolver=dns)
    try:
        refresher.start()
        host.pump(lambda: state.find(1, name.uri).address == ("192.0.2.99", 5070, "udp"))  # type: ignore[union-attr]
        host.pump(lambda: reloader.busy is None)
        assert state.flags(name.key) == I | P, "a refresh keeps runtime state, whatever keep_state_on_reload says"
    finally:
        refresher.stop()
        host.close()


def test_settle_freezes_a_large_load_only() -> None:
    heap = HeapPolicy(large=100)
    try:
        assert not heap.settle(99)
        assert heap.settle(100)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
