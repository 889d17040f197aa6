"""The loop thread's scheduler, its cooperative tasks, and worker threads for blocking work.

pjsua2 is owned by one thread, which runs ``libHandleEvents`` in a loop; between polls it
runs the timers that are due and the callables other threads queued. Nothing here touches
pjsua2, so it is tested on its own.

Two ways to keep long work from stalling calls, for two kinds of work:

- work that *waits* (files, databases, DNS) runs on a :class:`BlockingPool` thread and hands
  its outcome back to the loop; a thread waiting in I/O does not hold the GIL;
- work that *computes* (parsing, building large structures, rendering a listing) runs as a
  task on the loop thread itself (:meth:`Scheduler.run_task`), in slices of at most
  :data:`TASK_SLICE` seconds between the loop's passes. On a thread it would not run beside the
  loop but against it: the loop releases the GIL in every pjsua2 call and callback, and each
  time a busy thread holds it the loop waits up to the switch interval (5 ms) to get it back.
  Measured: with one thread parsing a list, 30 GIL hand-offs (about one call's worth) took
  156 ms instead of 2.4 ms, 36 ms at a 1 ms switch interval.
"""

from __future__ import annotations

import heapq
import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Generator
from concurrent.futures import Future, wait
from typing import Any, Generic, TypeVar

from loguru import logger

T = TypeVar("T")

#: seconds a task (:meth:`Scheduler.run_task`) runs per loop pass at most, give or take one step
TASK_SLICE = 0.002

#: the timer heap is rebuilt without its cancelled timers once they are more than this share of
#: it (and at least :data:`COMPACT_MIN` of them). A cancelled timer otherwise stays until it
#: would have run: every call cancels a 60 s answer timer, so at 900 calls/s ~54,000 dead
#: timers (and their heap tuples) lived in the heap, and each full garbage collection walked
#: them all: pauses grew to 45-71 ms within a minute, each a stall of the loop.
COMPACT_SHARE = 0.5
COMPACT_MIN = 128

#: a task: a generator run in slices on the loop. It yields None where it may be paused, or a
#: Future to wait for (off the loop: ``run_blocking``), and is sent that Future back once done;
#: what it returns is the task's result.
Task = Generator["Future[Any] | None", "Future[Any] | None", T]


class WrongThreadError(RuntimeError):
    """A loop-only service was called from another thread (asyncio's debug check, always on)."""


class Timer:
    """A scheduled callback; ``cancel()`` is idempotent and safe from the loop thread."""

    __slots__ = ("callback", "cancelled", "scheduler", "when")

    def __init__(self, when: float, callback: Callable[[], None], scheduler: Scheduler | None = None) -> None:
        self.when = when
        self.callback: Callable[[], None] | None = callback
        self.cancelled = False
        self.scheduler = scheduler  # told of a cancel while the timer is still in its heap

    def cancel(self) -> None:
        if self.callback is not None and self.scheduler is not None:
            self.scheduler._cancelled += 1  # still in the heap: neither run nor cancelled before
        self.scheduler = None
        self.cancelled = True
        self.callback = None  # drop references (closures may hold call state)


class Scheduler:
    """Timers (a heap) plus a thread-safe queue of callables, run by :meth:`run_pending`.

    Once :attr:`loop_thread` is set, the loop-only methods (:meth:`call_later`) raise
    :class:`WrongThreadError` when another thread calls them: the timer heap has no lock.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._heap: list[tuple[float, int, Timer]] = []
        self._cancelled = 0  # cancelled timers still in the heap
        self._seq = itertools.count()
        self._queue: deque[Callable[[], None]] = deque()  # deque append/popleft are thread-safe
        self._loop_thread: threading.Thread | None = None
        self._loop_ident: int | None = None

    @property
    def loop_thread(self) -> threading.Thread | None:
        """The thread that runs :meth:`run_pending` (None: not running yet, nothing is checked)."""
        return self._loop_thread

    @loop_thread.setter
    def loop_thread(self, thread: threading.Thread | None) -> None:
        self._loop_thread = thread
        self._loop_ident = thread.ident if thread is not None else None

    def check_loop_thread(self, what: str) -> None:
        """Raise :class:`WrongThreadError` unless called on the loop thread (any thread may
        call before the loop runs)."""
        if self._loop_ident is not None and threading.get_ident() != self._loop_ident:
            raise WrongThreadError(
                f"{what} was called from thread {threading.current_thread().name!r}; only the loop thread may"
                " call it: hand the work over with call_soon_threadsafe() or run_on_loop()"
            )

    def now(self) -> float:
        return self._clock()

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` on the loop thread after ``delay`` seconds (loop thread only)."""
        if self._loop_ident is not None and threading.get_ident() != self._loop_ident:
            self.check_loop_thread("call_later")
        timer = Timer(self._clock() + max(0.0, delay), callback, self)
        heapq.heappush(self._heap, (timer.when, next(self._seq), timer))
        return timer

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """From any thread: run ``callback`` on the loop thread at its next pass."""
        self._queue.append(callback)

    def run_on_loop(self, callback: Callable[[], T], timeout: float = 10.0) -> T:
        """From another thread: run ``callback`` on the loop and return its result or raise.

        :raises TimeoutError: the loop did not start ``callback`` within ``timeout`` seconds; it
            is then cancelled and never runs. Once the loop has started it, its outcome is
            awaited however long it takes, so a caller never mistakes a change that was made
            for one that was not.
        """
        if self._loop_ident is not None and threading.get_ident() == self._loop_ident:
            return callback()
        handoff = _Handoff(callback)
        self._queue.append(handoff.run)
        result: T = handoff.wait(timeout)
        return result

    def run_task(self, steps: Task[T], on_done: Callable[[Future[T]], None] | None = None,
                 budget: float = TASK_SLICE) -> Future[T]:
        """Run the generator ``steps`` on the loop thread, ``budget`` seconds per loop pass.

        Between slices the loop handles SIP and timers, so a task of any length delays them by
        one slice at most. Then ``on_done(future)`` runs on the loop: ``future.result()`` is the
        generator's return value, or raises what it raised (without ``on_done`` a failure is
        logged). The first slice runs at the next pass. Loop thread only.
        """
        self.check_loop_thread("run_task")
        task: _TaskRun[T] = _TaskRun(self, steps, on_done, budget)
        self._queue.append(task.step)
        return task.future

    def clear(self) -> int:
        """Drop every timer and queued callable without running them (shutdown, after the last
        pass: their closures may hold call objects that must go before pjsua does); returns how
        many were pending."""
        pending = len(self._queue) + sum(1 for _, _, timer in self._heap if not timer.cancelled)
        for _, _, timer in self._heap:
            timer.cancel()
        self._heap.clear()
        self._cancelled = 0
        self._queue.clear()
        return pending

    @property
    def timers(self) -> int:
        """Timers in the heap, the cancelled ones not yet dropped included."""
        return len(self._heap)

    def next_delay(self, ceiling: float) -> float:
        """Seconds until the next timer (at most ``ceiling``), 0 when work is queued."""
        heap = self._heap
        if self._cancelled > COMPACT_MIN and self._cancelled > COMPACT_SHARE * len(heap):
            self._compact()
        if self._queue:
            return 0.0
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
            self._cancelled -= 1
        if not heap:
            return ceiling
        return min(ceiling, max(0.0, heap[0][0] - self._clock()))

    def _compact(self) -> None:
        """Rebuild the heap without its cancelled timers (in place: :meth:`run_pending` may hold it)."""
        heap = self._heap
        heap[:] = [entry for entry in heap if not entry[2].cancelled]
        heapq.heapify(heap)
        self._cancelled = 0

    def run_pending(self) -> int:
        """Run queued callables and due timers; return how many ran. Errors are logged."""
        ran = 0
        for _ in range(len(self._queue)):
            self._run(self._queue.popleft())
            ran += 1
        now = self._clock()
        heap = self._heap
        while heap and heap[0][0] <= now:
            timer = heapq.heappop(heap)[2]
            callback = timer.callback
            if callback is None:
                self._cancelled -= 1
                continue
            timer.callback = None
            timer.scheduler = None
            self._run(callback)
            ran += 1
        return ran

    @staticmethod
    def _run(callback: Callable[[], None]) -> None:
        try:
            callback()
        except Exception:
            logger.opt(exception=True).error("error in a loop callback {!r}", callback)


class _TaskRun(Generic[T]):
    """One :meth:`Scheduler.run_task`: steps the generator until its slice is used up."""

    __slots__ = ("budget", "future", "on_done", "scheduler", "steps")

    def __init__(self, scheduler: Scheduler, steps: Task[Any], on_done: Callable[[Future[Any]], None] | None,
                 budget: float) -> None:
        self.scheduler = scheduler
        self.steps = steps
        self.on_done = on_done
        self.budget = budget
        self.future: Future[Any] = Future()
        self.future.set_running_or_notify_cancel()

    def step(self, sent: Future[Any] | None = None) -> None:
        clock = self.scheduler._clock
        deadline = clock() + self.budget
        while True:
            try:
                item = self.steps.send(sent)
            except StopIteration as stop:
                self.future.set_result(stop.value)
                self._done()
                return
            except Exception as exc:
                self.future.set_exception(exc)
                self._done()
                return
            sent = None
            if isinstance(item, Future):
                item.add_done_callback(self._resume_later)
                return
            if clock() >= deadline:
                self.scheduler.call_soon_threadsafe(self.step)
                return

    def _resume_later(self, waited: Future[Any]) -> None:
        self.scheduler.call_soon_threadsafe(lambda: self.step(waited))  # from the thread that finished it

    def _done(self) -> None:
        on_done, self.on_done = self.on_done, None
        if on_done is not None:
            on_done(self.future)
        elif self.future.exception() is not None:
            logger.opt(exception=self.future.exception()).error("task {!r} failed", self.steps)


def wait_for(future: Future[T]) -> Task[T]:
    """In a task, wait off the loop: ``value = yield from wait_for(app.run_blocking(fn))``
    returns what ``fn`` returned, or raises what it raised."""
    yield future
    return future.result()


def run_here(fn: Callable[[], T]) -> Future[T]:
    """Run ``fn`` now and return its outcome as a finished Future: ``run_blocking`` for a task
    run outside the loop with :func:`run_task_now`."""
    future: Future[T] = Future()
    try:
        future.set_result(fn())
    except Exception as exc:
        future.set_exception(exc)
    return future


def run_task_now(steps: Task[T]) -> T:
    """Run a task to its end in the calling thread, waiting for each Future it yields
    (start-up before calls arrive, command-line tools, tests)."""
    sent: Future[Any] | None = None
    while True:
        try:
            item = steps.send(sent)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        sent = None
        if isinstance(item, Future):
            wait([item])  # the task reads the outcome itself
            sent = item


class _Handoff:
    """One :meth:`Scheduler.run_on_loop` request: run once on the loop, or cancelled before it starts."""

    __slots__ = ("callback", "done", "error", "lock", "result", "state")

    PENDING, RUNNING, CANCELLED = "pending", "running", "cancelled"

    def __init__(self, callback: Callable[[], Any]) -> None:
        self.callback: Callable[[], Any] | None = callback
        self.state = self.PENDING
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        """On the loop thread."""
        with self.lock:
            if self.state is self.CANCELLED:
                return
            self.state = self.RUNNING
        callback, self.callback = self.callback, None
        try:
            assert callback is not None
            self.result = callback()
        except BaseException as exc:  # handed back to the caller's thread
            self.error = exc
        finally:
            self.done.set()

    def wait(self, timeout: float) -> Any:
        """On the caller's thread."""
        if not self.done.wait(timeout):
            with self.lock:
                if self.state is self.PENDING:
                    self.state = self.CANCELLED
                    self.callback = None
                    raise TimeoutError(f"the loop did not run the request within {timeout:g} s; it was cancelled")
            self.done.wait()  # the loop is running it now: its outcome is the answer
        if self.error is not None:
            raise self.error
        return self.result


class BlockingPool:
    """Worker threads for blocking work (files, databases, DNS), owned by the host.

    :meth:`submit` runs ``fn`` on a worker and then ``on_done(future)`` on the loop thread,
    where ``future.result()`` returns what ``fn`` returned or raises what it raised. Workers
    start on demand, up to ``workers``, and are daemon threads: a DNS lookup that hangs never
    keeps the process from exiting.

    :param scheduler: where ``on_done`` callbacks are queued.
    """

    def __init__(self, scheduler: Scheduler, workers: int = 4, name: str = "b2bua-blocking") -> None:
        if workers < 1:
            raise ValueError("BlockingPool: workers must be at least 1")
        self._scheduler = scheduler
        self._max = workers
        self._name = name
        self._jobs: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._stopped = False

    def submit(self, fn: Callable[[], T], on_done: Callable[[Future[T]], None] | None = None) -> Future[T]:
        """Run ``fn`` on a worker; then ``on_done(future)`` on the loop (any thread may submit).

        Without ``on_done`` a failure of ``fn`` is logged. ``future.cancel()`` before a worker
        starts ``fn`` drops the job (``on_done`` still runs, and ``future.result()`` raises
        ``CancelledError``).

        :raises RuntimeError: the pool was stopped (the B2BUA is shutting down).
        """
        job: _Job[T] = _Job(fn, on_done)
        with self._lock:
            if self._stopped:
                raise RuntimeError("the B2BUA is stopping: no more blocking work is accepted")
            self._jobs.put(job)
            if self._idle:
                self._idle -= 1  # a waiting worker takes it
            elif len(self._threads) < self._max:
                thread = threading.Thread(target=self._work, name=f"{self._name}-{len(self._threads) + 1}",
                                          daemon=True)
                self._threads.append(thread)
                thread.start()
        return job.future

    def stop(self, timeout: float = 5.0) -> int:
        """Refuse new work, cancel the jobs not started and wait up to ``timeout`` seconds for
        the running ones; returns how many were still running (their results are dropped)."""
        with self._lock:
            self._stopped = True
            threads = list(self._threads)
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.future.cancel()
        for _ in threads:
            self._jobs.put(None)  # one stop marker per worker
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return sum(1 for thread in threads if thread.is_alive())

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            job.run(self._scheduler, self._stopped)
            with self._lock:
                self._idle += 1  # waiting for the next job


class _Job(Generic[T]):
    """One piece of blocking work and where its outcome goes."""

    __slots__ = ("fn", "future", "on_done")

    def __init__(self, fn: Callable[[], Any], on_done: Callable[[Future[Any]], None] | None) -> None:
        self.fn: Callable[[], Any] | None = fn
        self.on_done = on_done
        self.future: Future[Any] = Future()

    def run(self, scheduler: Scheduler, stopped: bool) -> None:
        fn, self.fn = self.fn, None
        future = self.future
        if future.set_running_or_notify_cancel():
            try:
                assert fn is not None
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)
        on_done, self.on_done = self.on_done, None
        if on_done is not None:
            if not stopped:
                scheduler.call_soon_threadsafe(lambda: on_done(future))
        elif not future.cancelled() and future.exception() is not None:
            logger.opt(exception=future.exception()).error("blocking work {!r} failed", fn)
