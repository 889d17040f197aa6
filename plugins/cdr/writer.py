"""Where records go after a call ends: a bounded queue, then the file and the database.

The loop thread only puts a finished call into the queue (:meth:`RecordWriter.submit`, never
blocking: when the queue is full the record is dropped and counted, and the writer logs the
count, summed up): a :class:`~plugins.cdr.record.CallRecord`, or a callable that builds one, so
that parsing the call's URIs and making the record costs the writer thread, not the loop. The
writer thread builds each batch, appends it to the JSON-lines file and hands it to
:class:`DatabaseWriter`, whose own thread inserts it: a database
that is slow, down or hanging never holds up the file, and its records wait in memory (bounded)
and are retried with a growing delay, each failure streak logged once and summed up.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeAlias

from loguru import logger

from plugins.cdr.record import CallRecord

#: seconds the writer waits for records before its periodic duties (the drop report)
TICK = 0.5
#: records written in one go (one file write, one transaction)
BATCH = 500
#: seconds between summaries of dropped records and of a database that keeps failing
REPORT_EVERY = 10.0
#: longest delay between two tries of a failing database
MAX_RETRY = 60.0

_STOP = object()

#: what the loop hands over: a record, or a callable that builds it on the writer thread
Pending: TypeAlias = CallRecord | Callable[[], CallRecord]


class RecordFile(Protocol):
    """The JSON-lines file as the writer uses it (:class:`plugins.cdr.jsonl.JsonLinesFile`)."""

    path: Any

    def write(self, records: Sequence[CallRecord]) -> None: ...

    def reopen(self) -> None: ...

    def close(self) -> None: ...


class RecordTable(Protocol):
    """The database as the writer uses it (:class:`plugins.cdr.sql.SqlRecords`)."""

    @property
    def shown_url(self) -> str: ...

    def write(self, records: Sequence[CallRecord]) -> int: ...

    def close(self) -> None: ...


class DatabaseWriter:
    """Inserts records on a thread of its own; keeps up to ``backlog`` of them while the database fails.

    :param retry: seconds before the first retry after a failure; doubled each time up to
        :data:`MAX_RETRY`, back to ``retry`` after a success.
    """

    def __init__(self, table: RecordTable, *, backlog: int, retry: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.table = table
        self._backlog = backlog
        self._first_retry = retry
        self._retry = retry
        self._clock = clock
        self._waiting: collections.deque[CallRecord] = collections.deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._next_try = 0.0
        self._failing_since: float | None = None
        self._reported = 0.0
        self._thread: threading.Thread | None = None
        #: counters, each written by one thread
        self.written = 0
        self.dropped = 0  #: records the backlog had no room for (the file has them)
        self.failures = 0  #: failed tries
        self.last_error = ""

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cdr-database", daemon=True)
        self._thread.start()

    def offer(self, records: Sequence[CallRecord]) -> None:
        """Queue ``records`` for the database (the writer thread); the oldest go when it is full."""
        with self._wake:
            self._waiting.extend(records)
            self._trim()
            self._wake.notify()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def failing(self) -> bool:
        return self._failing_since is not None

    def step(self) -> bool:
        """Write what waits, in batches, if a retry is due; False when the database failed."""
        now = self._clock()
        if now < self._next_try:
            return False
        while True:
            with self._wake:
                chunk = [self._waiting.popleft() for _ in range(min(BATCH, len(self._waiting)))]
            if not chunk:
                return True
            try:
                written = self.table.write(chunk)
            except Exception as exc:  # SQLAlchemy's errors, and a driver's own
                with self._wake:  # back in front, in order; offer() may have filled the room meanwhile
                    self._waiting.extendleft(reversed(chunk))
                    self._trim()
                self._failed(now, exc)
                return False
            self.written += written
            self._recovered(now)

    def _trim(self) -> None:
        """Drop the oldest records over the backlog limit (with ``_wake`` held)."""
        over = len(self._waiting) - self._backlog
        if over > 0:
            for _ in range(over):
                self._waiting.popleft()
            self.dropped += over

    def _failed(self, now: float, exc: Exception) -> None:
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {_first_line(exc)}"
        if self._failing_since is None:
            self._failing_since = now
            self._reported = now
            logger.error("cdr: cannot write to {}: {}; retrying in {:g} s ({} records wait, the file has them)",
                         self.table.shown_url, self.last_error, self._retry, len(self._waiting))
        elif now - self._reported >= REPORT_EVERY:
            self._reported = now
            logger.warning("cdr: {} still failing after {:.0f} s ({} tries): {}; {} records wait, {} dropped",
                           self.table.shown_url, now - self._failing_since, self.failures, self.last_error,
                           len(self._waiting), self.dropped)
        self._next_try = now + self._retry
        self._retry = min(self._retry * 2, MAX_RETRY)

    def _recovered(self, now: float) -> None:
        if self._failing_since is not None:
            logger.info("cdr: {} works again after {:.0f} s; {} records written", self.table.shown_url,
                        now - self._failing_since, self.written)
            self._failing_since = None
        self._retry = self._first_retry

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._waiting and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                delay = self._next_try - self._clock()
                if delay > 0:
                    self._wake.wait(delay)  # a retry is not due yet (or stop() woke us)
                    continue
            try:
                self.step()
            except Exception:  # never let the thread die: the records would pile up unseen
                logger.opt(exception=True).error("cdr: the database writer failed")

    def close(self, timeout: float) -> None:
        """Write what waits (one more try if the database failed), then stop the thread."""
        deadline = self._clock() + timeout
        if self._thread is not None:
            with self._wake:
                self._stopping = True
                self._wake.notify()
            self._thread.join(max(0.0, deadline - self._clock()))
            if self._thread.is_alive():  # hung inside the driver: leave it (daemon), report below
                logger.error("cdr: {} did not answer within {:g} s at shutdown", self.table.shown_url, timeout)
        if self._thread is None or not self._thread.is_alive():
            self._next_try = 0.0
            self.step()
            self.table.close()
        if self._waiting:
            logger.error("cdr: {} records are not in {} (the file has them)", len(self._waiting),
                         self.table.shown_url)


class RecordWriter:
    """The queue the loop fills and the thread that writes it to the file and the database."""

    def __init__(self, file: RecordFile | None, database: DatabaseWriter | None, *, queue_size: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.file = file
        self.database = database
        self._queue: queue.Queue[object] = queue.Queue(queue_size)
        self._clock = clock
        self._thread: threading.Thread | None = None
        self._closed = False
        #: counters, each written by one thread (reads from others are fine under the GIL)
        self.dropped = 0  #: records the full queue refused (loop thread)
        self.written = 0  #: records appended to the file
        self.file_failed = 0  #: records the file could not take
        self.build_failed = 0  #: records that could not be built (a bug: logged with the traceback)
        self._dropped_reported = 0
        self._file_reported: float | None = None
        self._drops_reported_at: float | None = None

    def start(self) -> None:
        if self.database is not None:
            self.database.start()
        self._thread = threading.Thread(target=self._run, name="cdr-writer", daemon=True)
        self._thread.start()

    def submit(self, record: Pending) -> bool:
        """From the loop: queue ``record`` (or what builds it); False (and counted) when the queue
        is full or closed."""
        if self._closed:  # a call that ended after b2bua_shutdown: rare, so each is logged
            self.dropped += 1
            logger.warning("cdr: a call ended after the writer stopped: its record is lost")
            return False
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def reopen(self) -> None:
        """Any thread: the file is opened again on the path before the next write (logrotate)."""
        if self.file is not None:
            self.file.reopen()

    def stats(self) -> dict[str, Any]:
        """Counters for ``cdr.stats`` (any thread)."""
        out: dict[str, Any] = {
            "queued": self._queue.qsize(), "dropped": self.dropped,
            "file": str(self.file.path) if self.file is not None else None,
            "written": self.written, "file_failed": self.file_failed, "build_failed": self.build_failed,
        }
        db = self.database
        if db is not None:
            out |= {"database": db.table.shown_url, "db_written": db.written, "db_waiting": db.waiting,
                    "db_dropped": db.dropped, "db_failures": db.failures, "db_failing": db.failing,
                    "db_last_error": db.last_error}
        return out

    def step(self, pending: Sequence[Pending]) -> None:
        """The writer thread's work for one batch (tests call it directly)."""
        now = self._clock()
        batch = self._build(pending)
        if batch:
            if self.file is not None:
                self._to_file(batch, now)
            if self.database is not None:
                self.database.offer(batch)
        self._report_drops(now)

    def _build(self, pending: Sequence[Pending]) -> list[CallRecord]:
        records = []
        for item in pending:
            if isinstance(item, CallRecord):
                records.append(item)
                continue
            try:
                records.append(item())
            except Exception:  # one bad record must not cost the batch
                self.build_failed += 1
                logger.opt(exception=True).error("cdr: a call record could not be built")
        return records

    def _to_file(self, batch: Sequence[CallRecord], now: float) -> None:
        assert self.file is not None
        try:
            self.file.write(batch)
        except OSError as exc:
            self.file_failed += len(batch)
            self.file.close()  # opened again on the next batch
            if self._file_reported is None or now - self._file_reported >= REPORT_EVERY:
                self._file_reported = now
                logger.error("cdr: cannot write {}: {} ({} records lost from the file so far)", self.file.path,
                             exc.strerror or exc, self.file_failed)
            return
        self.written += len(batch)

    def _report_drops(self, now: float, final: bool = False) -> None:
        new = self.dropped - self._dropped_reported
        last = self._drops_reported_at
        if new and (final or last is None or now - last >= REPORT_EVERY):
            self._drops_reported_at = now
            self._dropped_reported = self.dropped
            logger.warning("cdr: {} call records dropped: the writer's queue was full ({} in all)", new, self.dropped)

    def _take(self) -> tuple[list[Pending], bool]:
        """Wait up to :data:`TICK` for records; take what is queued, up to :data:`BATCH`."""
        batch: list[Pending] = []
        try:
            item = self._queue.get(timeout=TICK)
        except queue.Empty:
            return batch, False
        while True:
            if item is _STOP:
                return batch, True
            batch.append(item)  # type: ignore[arg-type]
            if len(batch) >= BATCH:
                return batch, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, False

    def _run(self) -> None:
        stop = False
        while not stop:
            batch, stop = self._take()
            try:
                self.step(batch)
            except Exception:  # never let the thread die: the queue would fill and drop everything
                logger.opt(exception=True).error("cdr: the writer failed on {} records", len(batch))

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued and stop both threads (waits up to ``timeout`` seconds for each)."""
        self._closed = True
        if self._thread is not None:
            try:
                self._queue.put(_STOP, timeout=timeout)
            except queue.Full:
                logger.error("cdr: the writer did not take its queue within {:g} s", timeout)
            self._thread.join(timeout)
        self._report_drops(self._clock(), final=True)
        if self.file is not None:
            self.file.close()
        if self.database is not None:
            self.database.close(timeout)


def _first_line(exc: BaseException) -> str:
    """An exception's message, first line only (SQLAlchemy appends the statement and a link)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
