"""Writing records: the JSON-lines file (rotation), SQLite tables, the queue, the database's retries.

The threads are tested through their steps (``RecordWriter.step``, ``DatabaseWriter.step``) with
a clock the test moves, and once for real, started and closed.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from loguru import logger

from plugins.cdr.jsonl import JsonLinesFile
from plugins.cdr.record import Attempt, CallRecord
from plugins.cdr.sql import SqlRecords, cdr_tables, check_url
from plugins.cdr.writer import BATCH, MAX_RETRY, DatabaseWriter, RecordWriter

WALL0 = 1_796_547_600.0


def record(n: int, attempts: int = 1) -> CallRecord:
    return CallRecord(
        cdr_id=f"{n:032x}", node="sbc1", call_id=f"call-{n}@example.com", from_uri="sip:alice@example.com",
        from_user="alice", from_name="Alice", to_uri="sip:4930123@example.com",
        request_uri="sip:4930123@b2bua", callee="4930123", source_ip="192.0.2.10", source_port=5060,
        transport="udp", setup_time=WALL0 + n, answer_time=WALL0 + n + 1.5, end_time=WALL0 + n + 61.5,
        duration=61.5, answer_delay=1.5, billsec=60, billmsec=60000, final_code=200, final_reason="OK",
        end_cause="caller-hangup", hangup_by="caller", setid=1, destination="sip:10.0.0.2:5060",
        attempts=tuple(
            Attempt(i + 1, 1, f"sip:10.0.0.{i + 1}:5060", f"sip:4930123@10.0.0.{i + 1}:5060", WALL0 + n + 0.1 * i,
                    0.1, 503 if i + 1 < attempts else 200, "Service Unavailable" if i + 1 < attempts else "OK",
                    "response" if i + 1 < attempts else "answered")
            for i in range(attempts)),
    )


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def logged() -> Iterator[list[tuple[str, str]]]:
    lines: list[tuple[str, str]] = []
    sink = logger.add(lambda m: lines.append((m.record["level"].name, m.record["message"])), level="INFO")
    yield lines
    logger.remove(sink)


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- the JSON-lines file ----------------------------------------------------------------------


def test_file_appends_one_object_per_line(tmp_path: Path) -> None:
    path = tmp_path / "cdr.jsonl"
    path.write_text('{"earlier": true}\n')
    out = JsonLinesFile(path)
    out.write([record(1), record(2, attempts=2)])
    out.close()
    lines = read_lines(path)
    assert lines[0] == {"earlier": True}  # appended, never truncated
    assert [d["cdr_id"] for d in lines[1:]] == [f"{1:032x}", f"{2:032x}"]
    assert lines[2]["attempts"][0]["code"] == 503 and lines[2]["setup_time"] == "2026-12-06T09:00:02.000Z"


@pytest.mark.parametrize("how", ["moved", "deleted"])
def test_file_moved_or_deleted_by_logrotate_is_reopened(tmp_path: Path, how: str) -> None:
    path, rotated = tmp_path / "cdr.jsonl", tmp_path / "cdr.jsonl.1"
    out = JsonLinesFile(path)
    out.write([record(1)])
    if how == "moved":
        path.rename(rotated)
    else:
        path.unlink()
    out.write([record(2)])
    out.close()
    if how == "moved":
        assert [d["call_id"] for d in read_lines(rotated)] == ["call-1@example.com"]
    assert [d["call_id"] for d in read_lines(path)] == ["call-2@example.com"]


def test_file_reopened_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "cdr.jsonl"
    out = JsonLinesFile(path)
    out.write([record(1)])
    opened = []
    real_open = out.open
    out.open = lambda: (opened.append(1), real_open())[-1]  # type: ignore[method-assign]
    out.write([record(2)])
    assert opened == []  # same file: kept open
    out.reopen()  # SIGHUP (copytruncate-free rotations that keep the inode, say), from another thread
    out.write([record(3)])
    out.close()
    assert opened == [1]
    assert len(read_lines(path)) == 3


def test_file_in_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        JsonLinesFile(tmp_path / "no" / "cdr.jsonl").open()


# -- SQL (SQLite here; tests/db has MariaDB and PostgreSQL) ------------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cdr.db'}"


def test_sql_creates_the_tables_and_writes_a_row_per_call_and_attempt(sqlite_url: str) -> None:
    db = SqlRecords(sqlite_url, "calls", "legs")
    assert db.write([record(1, attempts=2), record(2)]) == 2
    engine = sa.create_engine(sqlite_url)
    calls, legs = cdr_tables("calls", "legs")
    with engine.connect() as conn:
        rows = conn.execute(sa.select(calls).order_by(calls.c.setup_time)).mappings().all()
        attempts = conn.execute(sa.select(legs).order_by(legs.c.cdr_id, legs.c.attempt)).mappings().all()
    assert [(r["call_id"], r["attempts"], r["billsec"], r["final_code"]) for r in rows] == [
        ("call-1@example.com", 2, 60, 200), ("call-2@example.com", 1, 60, 200)]
    assert str(rows[0]["setup_time"]) == "2026-12-06 09:00:01" and str(rows[0]["answer_time"]).endswith("02.500000")
    assert [(a["attempt"], a["destination"], a["code"], a["kind"]) for a in attempts] == [
        (1, "sip:10.0.0.1:5060", 503, "response"), (2, "sip:10.0.0.2:5060", 200, "answered"),
        (1, "sip:10.0.0.1:5060", 200, "answered")]
    db.close()
    engine.dispose()


def test_sql_a_batch_written_before_is_not_written_twice(sqlite_url: str) -> None:
    db = SqlRecords(sqlite_url)
    assert db.write([record(1)]) == 1
    # the commit went through but its answer was lost: the retry holds it again, with a new one
    assert db.write([record(1), record(2)]) == 1
    with sa.create_engine(sqlite_url).connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM cdr")).scalar() == 2
        assert conn.execute(sa.text("SELECT count(*) FROM cdr_attempts")).scalar() == 2
    db.close()


def test_sql_a_constraint_other_than_a_duplicate_is_an_error(sqlite_url: str) -> None:
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:  # an operator's own table, with a column we do not fill
        conn.execute(sa.text("CREATE TABLE cdr (cdr_id VARCHAR(32) PRIMARY KEY, node VARCHAR(64),"
                             " account VARCHAR(32) NOT NULL)"))
    db = SqlRecords(sqlite_url)
    with pytest.raises(sa.exc.SQLAlchemyError):
        db.write([record(1)])
    db.close()
    engine.dispose()


@pytest.mark.parametrize(("url", "message"), [
    ("not a url", "not a database URL"),
    ("nosuchdb://x/y", "nosuchdb://x/y: Can't load plugin: sqlalchemy.dialects:nosuchdb"),
    ("mysql+nosuchdriver://u:secret@h/db", "mysql+nosuchdriver://u:***@h/db: Can't load plugin"),
])
def test_check_url_refuses(url: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        check_url(url, Path)
    assert str(err.value).startswith(message)
    assert "secret" not in str(err.value)


def test_check_url_makes_sqlite_relative_to_the_config(tmp_path: Path) -> None:
    assert check_url("sqlite:///cdr.db", lambda p: tmp_path / p) == f"sqlite:///{tmp_path / 'cdr.db'}"
    assert check_url("sqlite:////var/lib/cdr.db", lambda p: tmp_path / p) == "sqlite:////var/lib/cdr.db"
    assert check_url("sqlite://", lambda p: tmp_path / p) == "sqlite://"
    assert not (tmp_path / "cdr.db").exists()  # checking connects to nothing, creates nothing


# -- the database writer: retries and backlog ---------------------------------------------------


class FlakyTable:
    """A database that fails ``failures`` times, then works."""

    shown_url = "postgresql+psycopg://cdr:***@db/voip"

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.rows: list[str] = []
        self.tries = 0
        self.closed = False

    def write(self, records: Sequence[CallRecord]) -> int:
        self.tries += 1
        if self.failures:
            self.failures -= 1
            raise sa.exc.OperationalError("INSERT", {}, Exception("connection refused\nmore detail"))
        self.rows += [r.cdr_id for r in records]
        return len(records)

    def close(self) -> None:
        self.closed = True


def test_a_failing_database_is_retried_with_a_growing_delay(logged: list[tuple[str, str]]) -> None:
    clock = Clock()
    table = FlakyTable(failures=3)
    db = DatabaseWriter(table, backlog=100, retry=2.0, clock=clock)
    db.offer([record(1), record(2)])
    assert db.step() is False
    assert (db.waiting, db.failures, db.failing) == (2, 1, True)
    assert db.last_error == "OperationalError: (builtins.Exception) connection refused"
    assert db.step() is False and table.tries == 1  # not due yet: no new try
    tries_at = []
    for _ in range(3):
        clock.now += 100
        tries_at.append(clock.now)
        db.step()
    assert table.tries == 4 and table.rows == [f"{1:032x}", f"{2:032x}"]
    assert (db.waiting, db.written, db.failing) == (0, 2, False)
    errors = [m for level, m in logged if level == "ERROR"]
    assert errors == ["cdr: cannot write to postgresql+psycopg://cdr:***@db/voip: OperationalError: (builtins"
                      ".Exception) connection refused; retrying in 2 s (2 records wait, the file has them)"]
    assert any(m.startswith("cdr: postgresql+psycopg://cdr:***@db/voip works again after 300 s") for _, m in logged)


def test_retry_delay_doubles_up_to_the_cap() -> None:
    clock = Clock()
    db = DatabaseWriter(FlakyTable(failures=100), backlog=100, retry=2.0, clock=clock)
    db.offer([record(1)])
    delays = []
    for _ in range(8):
        start = clock.now
        db.step()
        clock.now = db._next_try
        delays.append(clock.now - start)
    assert delays == [2, 4, 8, 16, 32, MAX_RETRY, MAX_RETRY, MAX_RETRY]


def test_the_backlog_drops_the_oldest_while_the_database_fails() -> None:
    clock = Clock()
    table = FlakyTable(failures=1)
    db = DatabaseWriter(table, backlog=3, retry=1.0, clock=clock)
    db.offer([record(1), record(2)])
    db.step()
    db.offer([record(3), record(4)])
    assert (db.waiting, db.dropped) == (3, 1)
    clock.now += 5
    assert db.step() is True
    assert table.rows == [f"{n:032x}" for n in (2, 3, 4)]  # oldest first, the first one gone


def test_big_backlogs_are_written_in_batches() -> None:
    table = FlakyTable()
    db = DatabaseWriter(table, backlog=10 * BATCH, retry=1.0, clock=Clock())
    db.offer([record(n) for n in range(2 * BATCH + 1)])
    assert db.step() is True
    assert table.tries == 3 and len(table.rows) == 2 * BATCH + 1


# -- the record writer: queue, file, database ---------------------------------------------------


def test_a_full_queue_drops_and_counts_never_blocks(logged: list[tuple[str, str]]) -> None:
    writer = RecordWriter(None, None, queue_size=2)
    assert [writer.submit(record(n)) for n in range(5)] == [True, True, False, False, False]
    assert writer.stats()["dropped"] == 3
    writer.step([])
    assert logged == [("WARNING", "cdr: 3 call records dropped: the writer's queue was full (3 in all)")]
    writer.submit(record(9))
    writer.step([])  # within REPORT_EVERY of the last report: summed up later
    assert len(logged) == 1
    writer.close(timeout=0.1)
    assert logged[-1] == ("WARNING", "cdr: 1 call records dropped: the writer's queue was full (4 in all)")


def test_the_file_keeps_every_record_while_the_database_fails(tmp_path: Path) -> None:
    path = tmp_path / "cdr.jsonl"
    table = FlakyTable(failures=1000)
    database = DatabaseWriter(table, backlog=100, retry=1.0, clock=Clock())
    writer = RecordWriter(JsonLinesFile(path), database, queue_size=10)
    writer.step([record(1), record(2)])
    database.step()
    writer.step([record(3)])
    database.step()
    assert [d["call_id"] for d in read_lines(path)] == [f"call-{n}@example.com" for n in (1, 2, 3)]
    stats = writer.stats()
    assert {k: stats[k] for k in ("written", "db_written", "db_waiting", "db_failing")} == {
        "written": 3, "db_written": 0, "db_waiting": 3, "db_failing": True}
    writer.close(timeout=0.1)


def test_a_file_that_cannot_be_written_is_reported_and_the_database_still_gets_them(
        tmp_path: Path, logged: list[tuple[str, str]]) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    table = FlakyTable()
    database = DatabaseWriter(table, backlog=100, retry=1.0, clock=Clock())
    writer = RecordWriter(JsonLinesFile(folder / "cdr.jsonl"), database, queue_size=10)
    writer.step([record(1)])
    (folder / "cdr.jsonl").unlink()
    folder.rmdir()
    writer.file.reopen()  # type: ignore[union-attr]
    writer.step([record(2), record(3)])
    database.step()
    assert (writer.written, writer.file_failed, len(table.rows)) == (1, 2, 3)
    assert [level for level, m in logged if "cannot write" in m] == ["ERROR"]
    folder.mkdir()  # the folder is back: so is the file, on the next batch
    writer.step([record(4)])
    assert [d["call_id"] for d in read_lines(folder / "cdr.jsonl")] == ["call-4@example.com"]
    writer.close(timeout=0.1)


def test_threads_write_everything_before_close(tmp_path: Path, sqlite_url: str) -> None:
    path = tmp_path / "cdr.jsonl"
    file = JsonLinesFile(path)
    file.open()
    database = DatabaseWriter(SqlRecords(sqlite_url), backlog=1000, retry=0.1)
    writer = RecordWriter(file, database, queue_size=1000)
    writer.start()
    producers = [threading.Thread(target=lambda k=k: [writer.submit(record(100 * k + n)) for n in range(50)])
                 for k in range(4)]
    for t in producers:
        t.start()
    for t in producers:
        t.join()
    writer.close(timeout=10)
    assert len(read_lines(path)) == 200
    with sa.create_engine(sqlite_url).connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM cdr")).scalar() == 200
    assert writer.stats()["dropped"] == 0
    assert not writer.submit(record(999))  # closed: refused and counted, never queued


def test_records_built_on_the_writer_thread_and_a_broken_one_costs_only_itself(
        tmp_path: Path, logged: list[tuple[str, str]]) -> None:
    path = tmp_path / "cdr.jsonl"
    writer = RecordWriter(JsonLinesFile(path), None, queue_size=10)

    def broken() -> CallRecord:
        raise KeyError("a bug")

    writer.step([lambda: record(1), broken, record(3)])
    assert [d["call_id"] for d in read_lines(path)] == ["call-1@example.com", "call-3@example.com"]
    assert (writer.written, writer.build_failed) == (2, 1)
    assert ("ERROR", "cdr: a call record could not be built") in logged
    writer.close(timeout=0.1)
