"""The loop thread's scheduler."""

from __future__ import annotations

import threading

import pytest

from b2bua.loop import Scheduler


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_timers_run_in_order_when_due() -> None:
    clock = Clock()
    s = Scheduler(clock)
    ran: list[str] = []
    s.call_later(2, lambda: ran.append("b"))
    s.call_later(1, lambda: ran.append("a"))
    cancelled = s.call_later(1.5, lambda: ran.append("x"))
    cancelled.cancel()
    assert s.run_pending() == 0
    clock.now += 1
    s.run_pending()
    assert ran == ["a"]
    assert s.next_delay(5) == pytest.approx(1)
    clock.now += 5
    s.run_pending()
    assert ran == ["a", "b"]
    assert s.next_delay(5) == 5


def test_clear_drops_everything_pending_without_running_it() -> None:
    import gc
    import weakref

    class CallState:  # what a timer's closure typically holds
        pass

    clock = Clock()
    s = Scheduler(clock)
    state = CallState()
    ref = weakref.ref(state)
    ran: list[object] = []
    s.call_later(1, lambda state=state: ran.append(state))
    s.call_later(2, lambda: ran.append("b")).cancel()
    s.call_soon_threadsafe(lambda: ran.append("soon"))
    del state
    assert s.clear() == 2  # the cancelled timer is not counted
    gc.collect()
    assert ref() is None, "the closure's state was released"
    clock.now += 10
    assert s.run_pending() == 0 and ran == []
    assert s.next_delay(5) == 5


def test_a_failing_callback_is_logged_and_the_rest_run() -> None:
    s = Scheduler(Clock())
    ran: list[int] = []
    s.call_soon_threadsafe(lambda: 1 / 0)
    s.call_soon_threadsafe(lambda: ran.append(1))
    assert s.run_pending() == 2
    assert ran == [1]


def test_run_on_loop_hands_work_to_the_loop_thread() -> None:
    s = Scheduler()
    s.loop_thread = threading.current_thread()
    results: list[object] = []
    seen: list[threading.Thread] = []

    def worker() -> None:
        results.append(s.run_on_loop(lambda: seen.append(threading.current_thread()) or 42))
        try:
            s.run_on_loop(lambda: 1 / 0)
        except ZeroDivisionError as exc:
            results.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    for _ in range(200):
        s.run_pending()
        if len(results) == 2:
            break
        t.join(0.01)
    t.join(2)
    assert results[0] == 42
    assert isinstance(results[1], ZeroDivisionError)
    assert seen == [threading.current_thread()]


def test_run_on_loop_times_out() -> None:
    s = Scheduler()
    with pytest.raises(TimeoutError):
        s.run_on_loop(lambda: None, timeout=0.05)
