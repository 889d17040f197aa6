"""The loop thread's scheduler."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import pytest
from loguru import logger

from b2bua.loop import BlockingPool, Scheduler, Task, WrongThreadError, run_task_now


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


def test_cancelled_timers_do_not_pile_up_in_the_heap() -> None:
    """Each call cancels a long timer (the 60 s answer timeout): the heap must not keep them
    until they are due, or a busy minute leaves tens of thousands for the collector to walk."""
    from b2bua.loop import COMPACT_MIN

    clock = Clock()
    s = Scheduler(clock)
    ran: list[int] = []
    keep = [s.call_later(5 + i, lambda i=i: ran.append(i)) for i in range(3)]
    for _ in range(20 * COMPACT_MIN):  # cancelled right away, as an answered call's timer is
        s.call_later(60, lambda: ran.append(-1)).cancel()
        s.next_delay(1)  # a loop pass
    assert s.timers <= 2 * COMPACT_MIN + len(keep)
    keep[1].cancel()
    keep[1].cancel()  # idempotent: counted once
    keep[0].cancel()
    for _ in range(3 * COMPACT_MIN):
        s.call_later(60, lambda: None).cancel()
        s.next_delay(1)
    clock.now += 10
    assert s.run_pending() == 1 and ran == [2]  # the live timer survived every rebuild, in order
    clock.now += 100
    assert s.run_pending() == 0 and ran == [2]
    assert s.next_delay(5) == 5 and s.timers == 0


def test_the_heap_stays_bounded_by_live_timers_whatever_is_cancelled_when() -> None:
    """Random timers, cancelled before they run, after, twice or never: every live timer runs
    once when due, none that was cancelled runs, and after each loop pass the heap holds at
    most the live timers plus max(COMPACT_MIN, live) dead ones."""
    import random

    from b2bua.loop import COMPACT_MIN

    rng = random.Random(15)
    clock = Clock()
    s = Scheduler(clock)
    pending: dict[int, float] = {}  # timer number -> when it is due
    ran: list[int] = []
    timers = []
    for step in range(20_000):
        op = rng.random()
        if op < 0.5:
            number = len(timers)
            when = clock.now + rng.choice((0.01, 1.0, 60.0))
            timers.append(s.call_later(when - clock.now, lambda n=number: ran.append(n)))
            pending[number] = when
        elif op < 0.9 and timers:
            number = rng.randrange(len(timers))
            timers[number].cancel()
            pending.pop(number, None)
        else:
            clock.now += rng.choice((0.0, 0.02, 2.0))
            before = len(ran)
            s.run_pending()
            fired = ran[before:]
            assert all(pending.pop(n) <= clock.now for n in fired), f"step {step}: a cancelled timer ran"
            assert not any(when <= clock.now for when in pending.values()), f"step {step}: a due timer did not run"
        s.next_delay(1)
        live = len(pending)
        assert s.timers <= live + max(COMPACT_MIN, live) + 1, f"step {step}: {s.timers} timers for {live} live"


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


def test_run_on_loop_that_times_out_never_runs_later() -> None:
    s = Scheduler()
    s.loop_thread = threading.current_thread()
    ran: list[str] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            s.run_on_loop(lambda: ran.append("late add"), timeout=0.05)
        except TimeoutError as exc:
            errors.append(exc)

    t = threading.Thread(target=worker)
    t.start()
    t.join(5)
    assert len(errors) == 1 and "cancelled" in str(errors[0])
    s.run_pending()  # the loop comes back: the cancelled request must not run
    assert ran == []


def test_run_on_loop_started_before_the_timeout_is_awaited() -> None:
    s = Scheduler()
    s.loop_thread = threading.current_thread()
    started = threading.Event()
    results: list[object] = []

    def slow() -> str:
        started.set()
        time.sleep(0.2)  # longer than the caller's timeout
        return "applied"

    t = threading.Thread(target=lambda: results.append(s.run_on_loop(slow, timeout=0.05)))
    t.start()
    for _ in range(500):  # the loop picks the request up before the caller's timeout runs out
        if s.run_pending():
            break
        time.sleep(0.001)
    t.join(5)
    assert started.is_set()
    assert results == ["applied"], "a request the loop ran is reported as done, never as timed out"


def test_call_later_from_another_thread_is_refused() -> None:
    s = Scheduler()
    s.call_later(1, lambda: None)  # before the loop runs: no owner to check against
    s.loop_thread = threading.current_thread()
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            s.call_later(1, lambda: None)
        except WrongThreadError as exc:
            errors.append(exc)

    t = threading.Thread(target=worker, name="control-7")
    t.start()
    t.join(5)
    assert len(errors) == 1
    assert "call_later" in str(errors[0]) and "'control-7'" in str(errors[0])
    assert "call_soon_threadsafe" in str(errors[0])
    s.call_later(1, lambda: None)  # the loop thread itself may


def drain(s: Scheduler, until: Callable[[], bool], timeout: float = 5.0) -> None:
    """Play the loop thread until ``until()`` holds."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "the loop never got the result"
        s.run_pending()
        time.sleep(0.001)


def test_blocking_work_runs_off_the_loop_and_reports_back_on_it() -> None:
    s = Scheduler()
    s.loop_thread = threading.current_thread()
    pool = BlockingPool(s, workers=2)
    outcomes: list[tuple[str, object, threading.Thread]] = []
    worker_threads: list[threading.Thread] = []

    def work() -> int:
        worker_threads.append(threading.current_thread())
        return 7

    def fail() -> int:
        raise OSError("database unreachable")

    def done(name: str) -> Callable[[Future[int]], None]:
        def on_done(future: Future[int]) -> None:
            try:
                outcomes.append((name, future.result(), threading.current_thread()))
            except OSError as exc:
                outcomes.append((name, exc, threading.current_thread()))
        return on_done

    pool.submit(work, done("ok"))
    pool.submit(fail, done("failed"))
    drain(s, lambda: len(outcomes) == 2)
    by_name = {name: (value, thread) for name, value, thread in outcomes}
    assert by_name["ok"][0] == 7
    assert isinstance(by_name["failed"][0], OSError)
    assert {thread for _, thread in by_name.values()} == {threading.current_thread()}, "on_done runs on the loop"
    assert worker_threads and worker_threads[0] is not threading.current_thread()
    assert worker_threads[0].daemon, "a hung lookup must not keep the process from exiting"
    assert pool.stop(1.0) == 0


def test_blocking_pool_stop_cancels_queued_work_and_refuses_more() -> None:
    s = Scheduler()
    pool = BlockingPool(s, workers=1)
    gate = threading.Event()
    ran: list[str] = []
    pool.submit(lambda: gate.wait(5))
    queued = pool.submit(lambda: ran.append("queued"))
    threading.Timer(0.1, gate.set).start()
    assert pool.stop(5.0) == 0
    assert queued.cancelled() and ran == []
    with pytest.raises(RuntimeError, match="stopping"):
        pool.submit(lambda: None)


def test_blocking_pool_logs_a_failure_nobody_waits_for() -> None:
    logged: list[str] = []
    sink = logger.add(logged.append, level="ERROR", format="{message}")
    s = Scheduler()
    pool = BlockingPool(s, workers=1)

    def boom() -> None:
        raise ValueError("bad row")

    future = pool.submit(boom)
    with pytest.raises(ValueError):
        future.result(5)
    pool.stop(5.0)  # joins the worker: its log line is written
    logger.remove(sink)
    assert any("blocking work" in line and "failed" in line for line in logged)


def test_a_task_runs_in_slices_between_loop_passes() -> None:
    clock = Clock()
    s = Scheduler(clock)
    ran: list[int] = []

    def steps() -> Task[int]:
        for i in range(10):
            ran.append(i)
            clock.now += 0.001  # each step takes 1 ms
            yield None
        return sum(ran)

    future = s.run_task(steps(), budget=0.0025)
    passes = 0
    while not future.done():
        passes += 1
        s.run_pending()  # one loop pass: SIP and timers would be handled in between
        assert passes < 20
    assert future.result() == 45
    assert passes == 4, "3 steps of 1 ms per 2.5 ms slice (the step that crosses it ends the slice)"


def test_a_task_waits_for_blocking_work_off_the_loop() -> None:
    s = Scheduler()
    s.loop_thread = threading.current_thread()
    pool = BlockingPool(s, workers=1)
    seen: list[object] = []

    def steps() -> Task[str]:
        read = yield pool.submit(lambda: "file contents")
        assert read is not None
        seen.append(read.result())
        failed = yield pool.submit(lambda: open("/nonexistent/list"))  # noqa: SIM115
        assert failed is not None
        try:
            failed.result()
        except OSError as exc:
            seen.append(type(exc).__name__)
        return "done"

    outcome: list[Future[str]] = []
    s.run_task(steps(), outcome.append)
    drain(s, lambda: bool(outcome))
    assert outcome[0].result() == "done"
    assert seen == ["file contents", "FileNotFoundError"]
    pool.stop(1.0)


def test_a_failing_task_reports_its_error_and_run_task_is_loop_only() -> None:
    s = Scheduler()
    s.loop_thread = threading.current_thread()

    def steps() -> Task[None]:
        yield None
        raise ValueError("line 3: bad flags")

    future = s.run_task(steps())
    drain(s, future.done)
    with pytest.raises(ValueError, match="line 3"):
        future.result()
    errors: list[BaseException] = []

    def other_thread() -> None:
        try:
            s.run_task(steps())
        except WrongThreadError as exc:
            errors.append(exc)

    t = threading.Thread(target=other_thread)
    t.start()
    t.join(5)
    assert len(errors) == 1


def test_run_task_now_runs_a_task_in_the_calling_thread() -> None:
    s = Scheduler()
    pool = BlockingPool(s, workers=1)

    def steps() -> Task[int]:
        yield None
        got = yield pool.submit(lambda: 20)
        assert got is not None
        return got.result() + 1

    assert run_task_now(steps()) == 21
    pool.stop(1.0)
