"""The garbage collector's pauses, as core.stats and /metrics report them."""

from __future__ import annotations

import gc

from b2bua.gcwatch import WINDOW, GcWatch


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def collect(watch: GcWatch, clock: Clock, generation: int, seconds: float) -> None:
    watch._callback("start", {"generation": generation})
    clock.now += seconds
    watch._callback("stop", {"generation": generation, "collected": 0, "uncollectable": 0})


def test_collections_and_their_time_add_up_per_generation() -> None:
    clock = Clock()
    watch = GcWatch(clock)
    collect(watch, clock, 0, 0.0001)
    collect(watch, clock, 0, 0.0003)
    collect(watch, clock, 2, 0.045)
    report = watch.report()
    assert report.collections == (2, 0, 1)
    assert abs(report.seconds[0] - 0.0004) < 1e-12
    assert abs(report.seconds[2] - 0.045) < 1e-12
    assert abs(report.longest_pause - 0.045) < 1e-12


def test_the_longest_pause_is_forgotten_after_one_to_two_windows() -> None:
    clock = Clock()
    watch = GcWatch(clock)
    collect(watch, clock, 2, 0.070)
    clock.now += WINDOW * 0.9
    collect(watch, clock, 0, 0.001)
    assert abs(watch.report().longest_pause - 0.070) < 1e-12
    clock.now += WINDOW * 0.5  # a new window: the last one's longest still counts
    assert abs(watch.report().longest_pause - 0.070) < 1e-12
    collect(watch, clock, 0, 0.002)
    clock.now += WINDOW * 1.1  # and the window after: gone
    assert abs(watch.report().longest_pause - 0.002) < 1e-12
    clock.now += WINDOW * 3  # nothing collected for long: nothing to report
    assert watch.report().longest_pause == 0.0
    assert watch.report().collections == (2, 0, 1)


def test_a_stop_without_its_start_is_not_counted() -> None:
    clock = Clock()
    watch = GcWatch(clock)
    watch._callback("stop", {"generation": 2})  # the watch began inside a collection
    watch._callback("start", {"generation": 7})
    watch._callback("stop", {"generation": 7})  # not a generation this Python has
    assert watch.report().collections == (0, 0, 0)


def test_it_times_the_real_collector_until_stopped() -> None:
    watch = GcWatch()
    watch.start()
    watch.start()  # once only
    try:
        gc.collect()
        gc.collect(0)
        report = watch.report()
        assert report.collections[2] == 1 and report.collections[0] >= 1
        assert report.seconds[2] > 0 and report.longest_pause > 0
    finally:
        watch.stop()
    gc.collect()
    assert watch.report().collections[2] == 1
    assert watch._callback not in gc.callbacks
