"""A Host for plugin tests built on the real scheduler and worker pool; the test thread is the loop.

Everything the B2BUA's loop does between polls, :meth:`LoopHost.pump` does: queued callables,
due timers, task slices. Blocking work runs on real worker threads.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from b2bua.loop import BlockingPool, Scheduler, Task, Timer

T = TypeVar("T")


def on_a_thread(fn: Callable[[], T], on_done: Callable[[Future[T]], None] | None,
                deliver: Callable[[Callable[[], None]], None]) -> Future[T]:
    """``run_blocking`` for a test's own loop: ``fn`` on a thread of its own, then ``on_done``
    handed to ``deliver`` (the test's way onto its loop)."""
    future: Future[T] = Future()

    def work() -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:
            future.set_exception(exc)
        if on_done is not None:
            deliver(lambda: on_done(future))

    threading.Thread(target=work, name="test-blocking", daemon=True).start()
    return future


class Ticker:
    """A clock that moves ``step`` seconds each time it is read: a task's slices then hold a
    fixed number of steps, whatever the machine's speed."""

    def __init__(self, step: float) -> None:
        self.step = step
        self.now = 0.0

    def __call__(self) -> float:
        self.now += self.step
        return self.now


class LoopHost:
    """The Host services on a real :class:`Scheduler` and :class:`BlockingPool`."""

    def __init__(self, hook: Any = None, config: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.hook = hook
        self.config = config
        self.scheduler = Scheduler(clock)
        self.scheduler.loop_thread = threading.current_thread()
        self.pool = BlockingPool(self.scheduler, workers=2)
        self.sent: list[tuple[str, str]] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        return self.scheduler.call_later(delay, callback)

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        self.scheduler.call_soon_threadsafe(callback)

    def run_on_loop(self, callback: Callable[[], T], timeout: float = 10.0) -> T:
        return self.scheduler.run_on_loop(callback, timeout)

    def run_blocking(self, fn: Callable[[], T], on_done: Callable[[Future[T]], None] | None = None) -> Future[T]:
        return self.pool.submit(fn, on_done)

    def run_task(self, steps: Task[T], on_done: Callable[[Future[T]], None] | None = None) -> Future[T]:
        return self.scheduler.run_task(steps, on_done)

    def send_request(self, method: str, uri: str, **kwargs: Any) -> None:
        self.sent.append((method, uri))

    def pump(self, until: Callable[[], bool], timeout: float = 10.0) -> int:
        """Play the loop until ``until()`` holds; returns how many passes it took."""
        deadline = time.monotonic() + timeout
        passes = 0
        while not until():
            if time.monotonic() > deadline:
                raise AssertionError(f"the loop did not get there in {timeout:g} s ({passes} passes)")
            passes += 1
            if not self.scheduler.run_pending():
                time.sleep(0.001)
        return passes

    def close(self) -> None:
        self.pool.stop(5.0)
