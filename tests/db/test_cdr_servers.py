"""Call records in MariaDB, PostgreSQL and SQLite: the tables as the plugin creates them, rows
read back as written, the example queries of ``docs/cdr.md`` on each database.

The server cases are marked ``mariadb`` / ``postgres`` (they fail, never skip, without the
servers of ``scripts/test-databases.sh``); SQLite needs none.
"""

from __future__ import annotations

import datetime
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from plugins.cdr.record import URI_MAX, Attempt, CallRecord
from plugins.cdr.sql import SqlRecords
from plugins.cdr.writer import DatabaseWriter

from .conftest import ENV

ROOT = Path(__file__).resolve().parents[2]
#: 2026-12-06T09:00:00Z, the day the documented queries ask about
WALL0 = 1_796_547_600.0


@pytest.fixture(params=[
    pytest.param("sqlite"),
    pytest.param("mariadb", marks=pytest.mark.mariadb),
    pytest.param("postgres", marks=pytest.mark.postgres),
])
def cdr_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'cdr.db'}"
    url = os.environ.get(ENV[request.param], "")
    if not url:
        pytest.fail(f"{ENV[request.param]} is not set: run `eval \"$(scripts/test-databases.sh)\"` first")
    return url


@pytest.fixture
def tables(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """Table names of this test's own; dropped afterwards (attempts first: they refer to the calls).

    On the test's database: ``cdr_url`` (SQLite or a server) or ``server_url`` (a server)."""
    suffix = uuid.uuid4().hex[:10]
    names = (f"cdr_{suffix}", f"cdr_attempts_{suffix}")
    yield names
    url = request.getfixturevalue("cdr_url" if "cdr_url" in request.fixturenames else "server_url")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {names[1]}"))
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {names[0]}"))
    engine.dispose()


def attempt(n: int, uri: str, code: int | None, kind: str, start: float, duration: float = 0.1) -> Attempt:
    reason = {200: "OK", 503: "Service Unavailable", 487: "Request Terminated", 408: "Request Timeout"}.get(
        code or 0, "")
    return Attempt(n, 1, uri, uri.replace("sip:", "sip:4930123@"), start, duration, code, reason, kind)


def call(n: int, attempts: tuple[Attempt, ...], *, billmsec: int = 0, final: tuple[int, str] = (200, "OK"),
         cause: str = "caller-hangup", **fields: object) -> CallRecord:
    setup = WALL0 + 60 * n + 0.123
    answered = any(a.kind == "answered" for a in attempts)
    values: dict[str, object] = dict(
        cdr_id=f"{n:032x}", node="sbc1", call_id=f"{n}-call@example.com", from_uri="sip:alice@example.com",
        from_user="alice", from_name="Zoë Ämter 名前", to_uri="sip:4930123@example.com",
        request_uri="sip:4930123@b2bua", callee="4930123", source_ip="2001:db8::10", source_port=5060,
        transport="tcp", setup_time=setup, answer_time=setup + 1.5 if answered else None,
        end_time=setup + 1.5 + billmsec / 1000, duration=1.5 + billmsec / 1000,
        answer_delay=1.5 if answered else None, billsec=-(-billmsec // 1000), billmsec=billmsec,
        final_code=final[0], final_reason=final[1], end_cause=cause,
        hangup_by="caller" if cause.startswith("caller") else "b2bua",
        setid=1, destination=attempts[-1].destination if attempts else None, attempts=attempts,
    )
    values.update(fields)
    return CallRecord(**values)  # type: ignore[arg-type]


GW1, GW2 = "sip:10.0.0.1:5060", "sip:10.0.0.2:5060"


def sample_calls() -> list[CallRecord]:
    """Four calls: GW1 fails over to GW2 (answered, 61 s), GW2 answers (10 s), both fail, a cancel."""
    t = WALL0
    return [
        call(1, (attempt(1, GW1, 503, "response", t), attempt(2, GW2, 200, "answered", t + 0.1)), billmsec=60_500),
        call(2, (attempt(1, GW2, 200, "answered", t),), billmsec=10_000),
        call(3, (attempt(1, GW1, 503, "response", t), attempt(2, GW2, 408, "no-response", t + 0.1, 2.0)),
             final=(503, "Service Unavailable"), cause="failed"),
        call(4, (attempt(1, GW1, 487, "cancelled", t),), final=(487, "Request Terminated"), cause="caller-cancel"),
    ]


def test_rows_read_back_as_written(cdr_url: str, tables: tuple[str, str]) -> None:
    long_uri = "sip:" + "u" * (URI_MAX - 16) + "@example.com"
    records = [*sample_calls(), call(5, (), final=(404, "Not Found"), cause="rejected", from_uri=long_uri,
                                     destination=None, setid=None)]
    db = SqlRecords(cdr_url, *tables)
    assert db.write(records) == 5
    assert db.write(records[:2]) == 0  # retried after a lost commit: not written twice
    db.close()
    again = SqlRecords(cdr_url, *tables)  # a restart: the tables are there, kept as they are
    assert again.write([call(6, ())]) == 1
    again.close()

    engine = sa.create_engine(cdr_url)
    calls, attempts = sa.Table(tables[0], sa.MetaData(), autoload_with=engine), sa.Table(
        tables[1], sa.MetaData(), autoload_with=engine)
    with engine.connect() as conn:
        rows = {r.call_id: r for r in conn.execute(sa.select(calls))}
        legs = conn.execute(sa.select(attempts).order_by(attempts.c.cdr_id, attempts.c.attempt)).all()
    engine.dispose()
    first = rows["1-call@example.com"]
    assert first.setup_time == datetime.datetime(2026, 12, 6, 9, 1, 0, 123000)  # UTC, to the millisecond
    assert first.answer_time == datetime.datetime(2026, 12, 6, 9, 1, 1, 623000)
    assert (first.billsec, first.billmsec, first.duration, first.answer_delay) == (61, 60500, 62.0, 1.5)
    assert (first.from_name, first.source_ip, first.attempts, first.destination) == (
        "Zoë Ämter 名前", "2001:db8::10", 2, GW2)
    rejected = rows["5-call@example.com"]
    assert (rejected.answer_time, rejected.answer_delay, rejected.destination, rejected.setid) == (
        None, None, None, None)
    assert rejected.from_uri == long_uri
    assert [(leg.attempt, leg.destination, leg.code, leg.kind) for leg in legs[:2]] == [
        (1, GW1, 503, "response"), (2, GW2, 200, "answered")]
    assert len(rows) == 6 and len(legs) == 6


def documented_sql(starting: str) -> list[str]:
    """The ```sql blocks of docs/cdr.md that start with ``starting``."""
    text = (ROOT / "docs" / "cdr.md").read_text()
    return [block for block in re.findall(r"```sql\n(.*?)```", text, re.S) if block.startswith(starting)]


def our_tables(sql: str, tables: tuple[str, str]) -> str:
    """The documented SQL on this test's tables (``cdr`` and ``cdr_attempts`` renamed, also in index names)."""
    sql = re.sub(r"\bcdr_attempts\b", tables[1], sql)
    return re.sub(r"\bcdr(?=\b|_call_id_idx|_setup_time_idx)", tables[0], sql)


def run_documented(engine: sa.Engine, sql: str, tables: tuple[str, str]) -> list[tuple[object, ...]]:
    sql = our_tables(sql, tables).replace("1-24022@127.0.0.2", "1-call@example.com")
    with engine.connect() as conn:
        return [tuple(row) for row in conn.execute(sa.text(sql.rstrip().rstrip(";")))]


def test_the_documented_queries(cdr_url: str, tables: tuple[str, str]) -> None:
    db = SqlRecords(cdr_url, *tables)
    db.write(sample_calls())
    db.close()
    engine = sa.create_engine(cdr_url)
    per_gateway, asr_acd, day, failures, one_call = (
        run_documented(engine, q, tables) for q in documented_sql("SELECT"))
    engine.dispose()

    def numbers(rows: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
        # Decimal (MariaDB, PostgreSQL) and float (SQLite) compare as floats
        return [tuple(float(v) if isinstance(v, (int, float)) or type(v).__name__ == "Decimal" else v
                      for v in row) for row in rows]

    assert numbers(per_gateway) == [(GW1, 3, 0, 2, 0), (GW2, 3, 2, 0, 1)]
    assert numbers(asr_acd) == [(GW1, 2, 0.0, None), (GW2, 3, 66.7, 35.5)]
    assert numbers(day) == [(4, 2, 50.0, 35.5, 1.2)]
    assert numbers(failures) == [(487, "Request Terminated", "caller-cancel", 1), (503, "Service Unavailable",
                                                                                    "failed", 1)]
    assert [row[3:] for row in one_call] == [(1, GW1, 503, "response"), (2, GW2, 200, "answered")]


def test_a_refusing_server_is_retried_and_its_password_never_shown(server_url: str,
                                                                    tables: tuple[str, str]) -> None:
    url = sa.engine.make_url(server_url).set(password="wrong-password-123")
    now = [0.0]
    db = DatabaseWriter(SqlRecords(url.render_as_string(hide_password=False), *tables), backlog=10, retry=1.0,
                        clock=lambda: now[0])
    db.offer(sample_calls())
    assert db.step() is False and db.step() is False  # the second is not due yet
    assert (db.failures, db.waiting, db.failing) == (1, 4, True)
    assert "wrong-password-123" not in db.last_error and "wrong-password-123" not in db.table.shown_url
    now[0] += 1.0
    assert db.step() is False and db.failures == 2
    db.table.close()


def test_tables_made_with_the_documented_ddl_are_used_as_they_are(backend: str, server_url: str,
                                                                   tables: tuple[str, str]) -> None:
    (ddl,) = documented_sql("CREATE TABLE")
    ddl = our_tables(ddl, tables)
    if backend == "postgres":  # what docs/cdr.md says to change for PostgreSQL
        ddl = ddl.replace("DATETIME(3)", "TIMESTAMP WITHOUT TIME ZONE").replace("DOUBLE", "DOUBLE PRECISION")
        ddl = ddl.replace(" CHARSET=utf8mb4", "")
    engine = sa.create_engine(server_url)
    with engine.begin() as conn:
        for statement in filter(str.strip, ddl.split(";")):
            conn.execute(sa.text(statement))
    db = SqlRecords(server_url, *tables)
    assert db.write(sample_calls()) == 4
    db.close()
    with engine.connect() as conn:
        names = conn.execute(sa.text(f"SELECT from_name FROM {tables[0]}")).scalars().all()
        legs = conn.execute(sa.text(f"SELECT count(*) FROM {tables[1]}")).scalar()
    engine.dispose()
    assert names == ["Zoë Ämter 名前"] * 4 and legs == 6
