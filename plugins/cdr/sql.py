"""Call records in SQL (SQLAlchemy Core): a row per call and a row per attempt.

The tables are created when missing (as Kamailio's ``acc``/``acc_cdrs``, but one row per call
rather than per transaction); ``docs/cdr.md`` has their DDL for each database. Times are UTC,
stored without a time zone, to the millisecond. Used by the writer thread only.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from b2bua.extras import missing_driver
from plugins.cdr.record import CALL_ID_MAX, NAME_MAX, NODE_MAX, REASON_MAX, URI_MAX, Attempt, CallRecord

#: seconds a connection attempt may take (a dead host must not hold the database thread for minutes)
CONNECT_TIMEOUT = 10

#: DATETIME keeps no fraction of a second on MariaDB/MySQL unless told to
TIMESTAMP = sa.DateTime().with_variant(mysql.DATETIME(fsp=3), "mysql", "mariadb")


def cdr_tables(cdr_name: str = "cdr", attempts_name: str = "cdr_attempts",
               metadata: sa.MetaData | None = None) -> tuple[sa.Table, sa.Table]:
    """The call table and the attempt table (an attempt row refers to its call's ``cdr_id``)."""
    md = metadata if metadata is not None else sa.MetaData()
    calls = sa.Table(
        cdr_name, md,
        sa.Column("cdr_id", sa.String(32), primary_key=True),
        sa.Column("node", sa.String(NODE_MAX), nullable=False),
        sa.Column("call_id", sa.String(CALL_ID_MAX), nullable=False),
        sa.Column("from_uri", sa.String(URI_MAX), nullable=False),
        sa.Column("from_user", sa.String(NAME_MAX), nullable=False),
        sa.Column("from_name", sa.String(NAME_MAX), nullable=False),
        sa.Column("to_uri", sa.String(URI_MAX), nullable=False),
        sa.Column("request_uri", sa.String(URI_MAX), nullable=False),
        sa.Column("callee", sa.String(NAME_MAX), nullable=False),
        sa.Column("source_ip", sa.String(64), nullable=False),
        sa.Column("source_port", sa.Integer, nullable=False),
        sa.Column("transport", sa.String(8), nullable=False),
        sa.Column("setup_time", TIMESTAMP, nullable=False),
        sa.Column("answer_time", TIMESTAMP, nullable=True),
        sa.Column("end_time", TIMESTAMP, nullable=False),
        sa.Column("duration", sa.Double, nullable=False),
        sa.Column("answer_delay", sa.Double, nullable=True),
        sa.Column("billsec", sa.Integer, nullable=False),
        sa.Column("billmsec", sa.BigInteger, nullable=False),
        sa.Column("final_code", sa.SmallInteger, nullable=False),
        sa.Column("final_reason", sa.String(REASON_MAX), nullable=False),
        sa.Column("end_cause", sa.String(16), nullable=False),
        sa.Column("hangup_by", sa.String(8), nullable=False),
        sa.Column("setid", sa.Integer, nullable=True),
        sa.Column("destination", sa.String(URI_MAX), nullable=True),
        sa.Column("attempts", sa.SmallInteger, nullable=False),
        sa.Index(f"{cdr_name}_call_id_idx", "call_id"),
        sa.Index(f"{cdr_name}_setup_time_idx", "setup_time"),
        # a MariaDB/MySQL table takes the server's default character set (often latin1), which
        # refuses a display name in Cyrillic or CJK: ours are UTF-8 whatever the default
        mysql_charset="utf8mb4", mariadb_charset="utf8mb4",
    )
    attempts = sa.Table(
        attempts_name, md,
        sa.Column("cdr_id", sa.String(32), sa.ForeignKey(f"{cdr_name}.cdr_id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("attempt", sa.SmallInteger, primary_key=True, autoincrement=False),
        sa.Column("setid", sa.Integer, nullable=True),
        sa.Column("destination", sa.String(URI_MAX), nullable=False),
        sa.Column("request_uri", sa.String(URI_MAX), nullable=False),
        sa.Column("start_time", TIMESTAMP, nullable=False),
        sa.Column("duration", sa.Double, nullable=False),
        sa.Column("code", sa.SmallInteger, nullable=True),
        sa.Column("reason", sa.String(REASON_MAX), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        mysql_charset="utf8mb4", mariadb_charset="utf8mb4",
    )
    return calls, attempts


def utc(seconds: float) -> datetime.datetime:
    """Unix seconds as a naive UTC datetime, to the millisecond (what the columns store)."""
    moment = datetime.datetime.fromtimestamp(round(seconds, 3), tz=datetime.timezone.utc)
    return moment.replace(tzinfo=None)


def call_row(r: CallRecord) -> dict[str, Any]:
    """The call table's row for ``r``."""
    return {**r.fields(utc), "attempts": len(r.attempts)}


def attempt_row(cdr_id: str, a: Attempt) -> dict[str, Any]:
    """The attempt table's row for attempt ``a`` of call ``cdr_id``."""
    return {"cdr_id": cdr_id, **a.fields(utc)}


def check_url(url: str, resolve_path: Callable[[str], Path]) -> str:
    """``url`` checked without connecting: it parses and its driver imports. A relative SQLite
    path is made relative to the config's folder (``resolve_path``).

    :raises ValueError: saying why.
    """
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ValueError(f"not a database URL ({exc})") from None
    database = parsed.database
    if (parsed.get_backend_name() == "sqlite" and database and database != ":memory:"
            and not database.startswith("file:") and not Path(database).is_absolute()):
        parsed = parsed.set(database=str(resolve_path(database)))
    shown = parsed.render_as_string(hide_password=True)
    try:
        sa.create_engine(parsed).dispose()
    except ImportError as exc:
        raise ValueError(missing_driver(shown, parsed.get_backend_name(), parsed.get_driver_name(), exc)) from None
    except sa.exc.ArgumentError as exc:
        raise ValueError(f"{shown}: {exc}") from None
    return parsed.render_as_string(hide_password=False)


def connect_args(url: str) -> dict[str, Any]:
    """Driver options that bound a connection attempt (PyMySQL and psycopg take the same name)."""
    backend = sa.engine.make_url(url).get_backend_name()
    return {"connect_timeout": CONNECT_TIMEOUT} if backend in ("mysql", "mariadb", "postgresql") else {}


class SqlRecords:
    """Writes records into the two tables of ``url`` (creating them once, when missing).

    Nothing connects before the first :meth:`write`, so a database that is down at start-up
    costs nothing but retries. Every method raises :class:`sqlalchemy.exc.SQLAlchemyError`.
    """

    def __init__(self, url: str, cdr_name: str = "cdr", attempts_name: str = "cdr_attempts", *,
                 engine_factory: Callable[..., sa.Engine] = sa.create_engine) -> None:
        self.url = url
        # pre-ping: MariaDB drops idle connections after wait_timeout, and calls can be rare
        self.engine = engine_factory(url, pool_pre_ping=True, connect_args=connect_args(url))
        self.calls, self.attempts = cdr_tables(cdr_name, attempts_name)
        self._schema_ready = False

    @property
    def shown_url(self) -> str:
        """The URL without its password, for logs."""
        return self.engine.url.render_as_string(hide_password=True)

    def write(self, records: Sequence[CallRecord]) -> int:
        """Insert ``records`` in one transaction; returns how many were new.

        When the batch meets a row that is there already (a commit whose answer was lost, then
        retried), each record is written on its own and the ones present are skipped; any other
        constraint a record breaks is raised.
        """
        if not self._schema_ready:
            self.calls.metadata.create_all(self.engine, checkfirst=True)
            self._schema_ready = True
        try:
            with self.engine.begin() as conn:
                self._insert(conn, records)
            return len(records)
        except sa.exc.IntegrityError:
            pass
        written = 0
        for record in records:
            try:
                with self.engine.begin() as conn:
                    self._insert(conn, [record])
                written += 1
            except sa.exc.IntegrityError:
                if not self._present(record.cdr_id):
                    raise
        return written

    def _present(self, cdr_id: str) -> bool:
        with self.engine.connect() as conn:
            query = sa.select(self.calls.c.cdr_id).where(self.calls.c.cdr_id == cdr_id)
            return conn.execute(query).first() is not None

    def _insert(self, conn: sa.Connection, records: Sequence[CallRecord]) -> None:
        conn.execute(self.calls.insert(), [call_row(r) for r in records])
        rows = [attempt_row(r.cdr_id, a) for r in records for a in r.attempts]
        if rows:
            conn.execute(self.attempts.insert(), rows)

    def close(self) -> None:
        self.engine.dispose()
