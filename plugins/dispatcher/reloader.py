"""Reloads of the destinations, in steps that never stall calls.

A reload (SIGHUP, ``dispatcher.reload``, a DNS refresh) is one loop task (``app.run_task``):

1. the source is read where it costs the loop nothing: the configured list file or database
   by a child process (:mod:`~plugins.dispatcher.childload`), waited for on a worker thread;
2. the new snapshot and its runtime generation are built on the loop, a slice per pass
   (:meth:`DispatcherState.prepare_steps`);
3. the loop swaps it in (:meth:`DispatcherState.install`, independent of its size), puts the
   operator's disables back, and reports every entry to ``dispatcher_dst_state_changed``,
   again a slice per pass;
4. the replaced generation is freed a slice per pass, and for a large load the heap is
   settled (:mod:`~plugins.dispatcher.heap`).

Why not a thread: parsing on a thread takes the GIL from the loop at every pjsua2 call
(:mod:`b2bua.loop`). A failed load keeps the current destinations. While a reload runs,
in-memory changes (``dispatcher.add``/``remove``) are refused (Kamailio's "Ongoing reload"):
the swap would lose them. All state here belongs to the loop thread; nothing is locked.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, TypeVar

from loguru import logger

from b2bua.loop import Task, wait_for
from plugins.dispatcher.heap import HeapPolicy, malloc_trim, release_steps
from plugins.dispatcher.model import Snapshot
from plugins.dispatcher.runtime import DestKey, DispatcherState, Generation
from plugins.dispatcher.source import Source

if TYPE_CHECKING:
    from concurrent.futures import Future

    from b2bua.api import Host

T = TypeVar("T")

#: seconds ``dispatcher.reload`` waits for a reload to finish before answering that it still runs
RELOAD_WAIT = 300.0
#: what :attr:`Reloader.busy` says while an in-memory change holds the reloader
EXCLUSIVE = "in-memory change"

#: ``on_done(error)``: None when the reload went through (or had nothing to change)
Done = Callable[["BaseException | None"], None]
#: builds the next snapshot as a loop task; None: nothing changed
Build = Callable[[], "Task[Snapshot | None]"]


class ReloadBusy(Exception):
    """Another reload (or an in-memory add/remove) is running (Kamailio: "Ongoing reload")."""


class ReloadFailed(Exception):
    """Loading the destinations failed; the message names the cause (file:line, row id, URL)."""


class Reloader:
    """Runs reloads for one :class:`DispatcherState` (loop thread, unless a method says otherwise).

    :param app: the host (None before ``b2bua_configure``: nothing can reload then).
    :param source: reads the configured list file or database.
    :param keep_state: ``keep_state_on_reload``: runtime state survives a reload.
    :param disabled: the operator-disabled entries now (they start in D in a new generation).
    :param after_install: runs on the loop right after each swap (the operator's disables).
    :param heap: what large loads do to the garbage collector.
    :param on_finished: ``on_finished(reason, error)`` after every reload, on the loop (the
        statistics count them); ``error`` is None when it went through.
    """

    def __init__(
        self,
        app: Host | None,
        state: DispatcherState,
        *,
        source: Source,
        keep_state: bool,
        disabled: Callable[[], Collection[DestKey]] = frozenset,
        after_install: Callable[[], None] = lambda: None,
        heap: HeapPolicy | None = None,
        on_finished: Callable[[str, BaseException | None], None] = lambda reason, error: None,
    ) -> None:
        self.app = app
        self._on_finished = on_finished
        self.state = state
        self.source = source
        self._keep_state = keep_state
        self._disabled = disabled
        self._after_install = after_install
        self.heap = heap or HeapPolicy()
        #: what is running ("reload", "dns", an in-memory change), None when idle
        self.busy: str | None = None

    # -- starting ----------------------------------------------------------------------------

    def reload(self, reason: str = "reload", on_done: Done | None = None) -> bool:
        """Re-read the configured source; False (nothing started) when something else runs."""
        app = self._require_app()
        return self.start(reason, lambda: self.source.load_steps(app.run_blocking), self._keep_state, on_done)

    def start(self, reason: str, build: Build, keep_state: bool, on_done: Done | None = None) -> bool:
        """Swap in the snapshot the task ``build()`` returns (None: nothing changed).

        :return: False, and nothing started, when another reload or change runs.
        """
        app = self._require_app()
        if self.busy is not None:
            return False
        self.busy = reason
        self.heap.hold()
        disabled = frozenset(self._disabled())
        app.run_task(self._steps(reason, build, keep_state, disabled), lambda f: self._finished(f, reason, on_done))
        return True

    def wait_for_reload(self, reason: str = "reload", timeout: float = RELOAD_WAIT) -> None:
        """From another thread (a control method): reload and wait until it is done.

        :raises ReloadBusy: another reload or change runs.
        :raises ReloadFailed: the load failed (the current destinations stay), or it did not
            finish within ``timeout`` seconds (it is swapped in when it does).
        """
        app = self._require_app()
        finished = threading.Event()
        outcome: list[BaseException | None] = []

        def done(error: BaseException | None) -> None:
            outcome.append(error)
            finished.set()

        def begin() -> None:
            if not self.reload(reason, done):
                raise ReloadBusy("Ongoing reload")

        try:
            app.run_on_loop(begin)
        except TimeoutError:
            raise ReloadFailed("the loop thread did not take the request in time; nothing was started") from None
        if not finished.wait(timeout):
            raise ReloadFailed(f"still running after {timeout:g}s; the destinations are swapped in when it is done")
        if outcome[0] is not None:
            raise outcome[0]

    def stop(self) -> None:
        """Shutdown: abandon a load under way (its child process is stopped)."""
        self.source.stop()

    # -- in-memory changes -------------------------------------------------------------------

    def exclusive(self, change: Callable[[], T]) -> T:
        """Run ``change`` now unless a reload runs (loop thread).

        :raises ReloadBusy: a reload runs; its swap would lose the change.
        """
        if self.busy is not None:
            raise ReloadBusy("Ongoing reload")
        return change()

    def claim(self) -> bool:
        """Hold the reloader for a change spanning several loop callbacks; False when busy.
        Give it back with :meth:`unclaim`."""
        if self.busy is not None:
            return False
        self.busy = EXCLUSIVE
        return True

    def unclaim(self) -> None:
        """Give back what :meth:`claim` took."""
        if self.busy == EXCLUSIVE:
            self.busy = None

    # -- the task ----------------------------------------------------------------------------

    def _steps(self, reason: str, build: Build, keep_state: bool, disabled: frozenset[DestKey]) -> Task[bool]:
        """The reload as a loop task; returns whether a new generation was swapped in."""
        clock = _Phases()
        snapshot = yield from build()
        if snapshot is None:
            return False
        clock.lap("load")
        generation = yield from self.state.prepare_steps(snapshot, keep_state, disabled)
        clock.lap("build")
        previous = self.state.install(generation, reason)
        del generation
        try:
            self._after_install()
            for _ in self.state.announce(previous, reason):
                yield None
        except Exception:  # the swap stands: a failing listener must not look like a failed load
            logger.opt(exception=True).error("dispatcher: after the {} swap", reason)
        clock.lap("report")
        if len(previous) >= self.heap.large:
            yield from release_steps(_take_apart(previous))
            try:
                yield from wait_for(self._require_app().run_blocking(malloc_trim))
            except RuntimeError:  # the host is stopping: no worker to give the memory back
                pass
        del previous
        self.heap.settle(self.state.size())
        clock.lap("free")
        logger.info("dispatcher: {} done in {}", reason, clock)
        return True

    def _finished(self, future: Future[bool], reason: str, on_done: Done | None) -> None:
        self.heap.release()
        self.busy = None
        error: BaseException | None = None
        try:
            future.result()
        except Exception as exc:
            cause = str(exc) or type(exc).__name__
            logger.error("dispatcher: {} failed, keeping the current destinations: {}", reason, cause)
            error = ReloadFailed(cause)
        self._on_finished(reason, error)
        if on_done is not None:
            on_done(error)

    def _require_app(self) -> Host:
        if self.app is None:
            raise RuntimeError("dispatcher: a reload before b2bua_configure")
        return self.app


class _Phases:
    """How long each phase of a reload took, for its log line."""

    def __init__(self) -> None:
        self._start = self._last = time.monotonic()
        self._laps: list[str] = []

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self._laps.append(f"{name} {now - self._last:.2f}")
        self._last = now

    def __str__(self) -> str:
        return f"{self._last - self._start:.2f} s ({', '.join(self._laps)})"


def _take_apart(generation: Generation) -> list[object]:
    """The objects owning most of a replaced generation's memory, its containers emptied: the
    list is then the last reference to them, freed a slice at a time."""
    parts: list[object] = []
    for dset in generation.snapshot.sets.values():
        parts.extend(dset.destinations)
    parts.extend(generation.rt.values())
    generation.snapshot, generation.dests, generation.rt, generation.sets = Snapshot(), {}, {}, {}
    return parts
