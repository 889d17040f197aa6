"""Destinations in an SQL table: Kamailio's ``dispatcher`` table, SQLAlchemy Core 2.x.

The table is Kamailio's (version 4, ``kamctl``/``kamdbctl`` create it the same way), so a
B2BUA can read the table a Kamailio already uses. An existing table is read as it is and
never altered; the columns present decide what is read (versions 1-3 lack flags, priority,
attrs, which then default). :meth:`SqlStore.ensure_schema` creates the table (and
Kamailio's ``version`` table) when missing: SQLite on first use, or the CLI.

URLs: ``sqlite:////var/lib/b2bua/dispatcher.db``, ``mysql+pymysql://user:pw@host/db``
(MySQL and MariaDB), ``postgresql+psycopg://user:pw@host/db``. Every method blocks on the
database: call them off the loop thread. Errors never show the password.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from loguru import logger
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection, Engine

from b2bua.extras import missing_driver
from plugins.dispatcher.attrs import parse_attrs
from plugins.dispatcher.listfile import check_flags
from plugins.dispatcher.model import MAX_DESCRIPTION_LENGTH, Destination
from plugins.dispatcher.resolve import LoadError, normalize_uri
from plugins.dispatcher.safetext import check_printable, shown

if TYPE_CHECKING:
    from plugins.dispatcher.config import DispatcherConfig

#: Kamailio's table version for ``dispatcher`` (``src/lib/srdb1/schema/dispatcher.xml``)
SCHEMA_VERSION = 4
#: versions whose layout we can read (``ds_init_db()`` accepts the same)
READABLE_VERSIONS = (1, 2, 3, 4)
VERSION_TABLE = "version"
INT_MAX = 2**31 - 1


def scrub_password(text: str, password: str) -> str:
    """``text`` (a driver's error) with ``password`` shown as ``***`` wherever it stands on its own
    (as written or URL-quoted): not inside a longer word, so a short password does not garble
    the message (``p`` in "port")."""
    for form in {password, urllib.parse.quote(password, safe="")} - {""}:
        text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(form)}(?![A-Za-z0-9])", "***", text)
    return text


class StoreError(LoadError):
    """The database could not be reached or read, or a row is bad; the message names the
    URL (password hidden), the table and, for a bad row, its id."""


class BadRowsError(StoreError):
    """The table was read, and some rows are malformed (each line names a row id)."""


class UnusableUrl(StoreError):
    """The URL cannot work whatever the server does: it does not parse, names an unknown
    database, or its driver is not installed (the message says how to install it)."""


@dataclass(frozen=True)
class TableNames:
    """Table and column names (Kamailio's ``table_name``, ``setid_col``, ... modparams)."""

    table: str = "dispatcher"
    setid: str = "setid"
    destination: str = "destination"
    flags: str = "flags"
    priority: str = "priority"
    attrs: str = "attrs"
    description: str = "description"

    def columns(self) -> dict[str, str]:
        """Canonical field name -> column name (``id`` is always ``id``, as in Kamailio)."""
        return {
            "id": "id",
            "setid": self.setid,
            "destination": self.destination,
            "flags": self.flags,
            "priority": self.priority,
            "attrs": self.attrs,
            "description": self.description,
        }

    @classmethod
    def from_config(cls, cfg: DispatcherConfig) -> TableNames:
        """The names ``[plugins.dispatcher]`` sets (``table_name``, ``setid_col``, ...)."""
        return cls(cfg.table_name, cfg.setid_col, cfg.destination_col, cfg.flags_col, cfg.priority_col,
                   cfg.attrs_col, cfg.description_col)


#: value of a field whose column is missing (older table versions) or NULL
DEFAULTS: dict[str, Any] = {"setid": 0, "destination": "", "flags": 0, "priority": 0, "attrs": "",
                            "description": ""}


def define_tables(names: TableNames, metadata: sa.MetaData) -> tuple[sa.Table, sa.Table]:
    """Kamailio's v4 ``dispatcher`` table and its ``version`` table, as created by kamdbctl."""
    unsigned = sa.Integer().with_variant(mysql.INTEGER(unsigned=True), "mysql", "mariadb")
    dispatcher = sa.Table(
        names.table,
        metadata,
        sa.Column("id", unsigned, primary_key=True, autoincrement=True),
        sa.Column(names.setid, sa.Integer, nullable=False, server_default="0"),
        sa.Column(names.destination, sa.String(192), nullable=False, server_default=""),
        sa.Column(names.flags, sa.Integer, nullable=False, server_default="0"),
        sa.Column(names.priority, sa.Integer, nullable=False, server_default="0"),
        sa.Column(names.attrs, sa.String(128), nullable=False, server_default=""),
        sa.Column(names.description, sa.String(64), nullable=False, server_default=""),
        # SQLite: never reuse the id of a deleted row (operators address rows by id)
        sqlite_autoincrement=True,
    )
    version = sa.Table(
        VERSION_TABLE,
        metadata,
        sa.Column("table_name", sa.String(32), nullable=False),
        sa.Column("table_version", unsigned, nullable=False, server_default="0"),
        sa.UniqueConstraint("table_name", name="table_name_idx"),
    )
    return dispatcher, version


def _int_field(row: Mapping[str, Any], key: str, low: int, high: int) -> int:
    value = row.get(key)
    if value is None:
        return int(DEFAULTS[key])
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} {shown(repr(value))}: not an integer")
    if not low <= value <= high:
        raise ValueError(f"{key} {value}: must be {low}..{high}")
    return value


def row_to_destination(row: Mapping[str, Any]) -> Destination:
    """Turn one row (canonical keys, see :meth:`TableNames.columns`) into a Destination.

    NULL or missing columns take Kamailio's defaults; ValueError says what is wrong.
    """
    setid = _int_field(row, "setid", 0, INT_MAX)
    raw_uri = row.get("destination")
    if not isinstance(raw_uri, str):
        raise ValueError(f"destination {shown(repr(raw_uri))}: not a string")
    if not raw_uri.strip():
        raise ValueError(f"destination {raw_uri!r}: empty")
    uri = normalize_uri(raw_uri)
    flags = check_flags(_int_field(row, "flags", 0, INT_MAX))
    priority = _int_field(row, "priority", -INT_MAX - 1, INT_MAX)
    raw_attrs = row.get("attrs") or ""
    if not isinstance(raw_attrs, str):
        raise ValueError(f"attrs {shown(repr(raw_attrs))}: not a string")
    try:
        attrs = parse_attrs(raw_attrs)
    except ValueError as exc:
        raise ValueError(f"attrs: {exc}") from None
    description = row.get("description") or ""
    if not isinstance(description, str):
        raise ValueError(f"description {shown(repr(description))}: not a string")
    check_printable(description, MAX_DESCRIPTION_LENGTH, "description")
    return Destination(
        setid=setid,
        uri=uri,
        flags=flags,
        priority=priority,
        attrs=attrs,
        description=description,
        row_id=int(row.get("id") or 0),
    )


class SqlStore:
    """Read and edit a dispatcher table. Thread-safe; the engine is created on first use.

    :param url: an SQLAlchemy URL.
    :param names: table and column names.
    :param connect_timeout: seconds to wait for a MySQL/PostgreSQL connection.
    :param read_only: for commands that only look (``show``, ``simulate``, ``check-config``): an
        SQLite file is opened read-only and never created (a missing one is a StoreError).
    """

    def __init__(self, url: str, names: TableNames | None = None, *, connect_timeout: int = 5,
                 read_only: bool = False) -> None:
        try:
            self._url = sa.make_url(url)
        except (sa.exc.ArgumentError, ValueError) as exc:
            raise UnusableUrl(f"bad database URL: {exc}") from None
        self.names = names or TableNames()
        self._connect_timeout = connect_timeout
        self.read_only = read_only
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        self._version_checked = False

    @property
    def url(self) -> str:
        """The URL with the password hidden, for messages."""
        return self._url.render_as_string(hide_password=True)

    @property
    def is_sqlite(self) -> bool:
        return self._url.get_backend_name() == "sqlite"

    def __repr__(self) -> str:
        return f"SqlStore({self.url!r}, table={self.names.table!r})"

    def _get_engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                connect_args: dict[str, Any] = {}
                backend = self._url.get_backend_name()
                if backend in ("mysql", "mariadb", "postgresql") and "connect_timeout" not in self._url.query:
                    connect_args["connect_timeout"] = self._connect_timeout
                try:
                    if self.read_only and self.is_sqlite:
                        self._engine = self._sqlite_read_only()
                    else:
                        self._engine = sa.create_engine(self._url, pool_pre_ping=True, connect_args=connect_args)
                except ImportError as exc:
                    raise UnusableUrl(missing_driver(self.url, backend, self._url.get_driver_name(), exc)) from None
                except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as exc:
                    raise UnusableUrl(f"{self.url}: cannot use this database: {exc}") from None
            return self._engine

    def _sqlite_read_only(self) -> Engine:
        """An engine that opens the SQLite file read-only (``mode=ro``): connecting to a missing
        file would otherwise create an empty database."""
        database = self._url.database or ""
        if database in ("", ":memory:"):
            return sa.create_engine(self._url)
        path = Path(database)
        if not path.exists():
            raise StoreError(f"{self.url}: no such database file (a read-only command creates nothing)")
        if not path.is_file():
            raise StoreError(f"{self.url}: unable to open database file: {path} is not a file")
        target = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
        return sa.create_engine("sqlite://", creator=lambda: sqlite3.connect(target, uri=True))

    def __enter__(self) -> SqlStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every pooled connection (the store can still be used afterwards)."""
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn driver errors into StoreError naming the URL and table, password scrubbed."""
        try:
            yield
        except sa.exc.SQLAlchemyError as exc:
            orig = getattr(exc, "orig", None)
            reason = " ".join(str(orig if orig is not None else exc).split())
            reason = scrub_password(reason, str(self._url.password or ""))
            raise StoreError(f"{self.url}: {action} table {self.names.table!r}: {reason}") from None

    def _reflect(self, conn: Connection) -> tuple[sa.Table, dict[str, sa.Column[Any]]]:
        """The table as it exists, and canonical field -> column for the columns present."""
        if not sa.inspect(conn).has_table(self.names.table):
            raise StoreError(f"{self.url}: table {self.names.table!r} does not exist")
        table = sa.Table(self.names.table, sa.MetaData(), autoload_with=conn)
        by_lower = {c.name.lower(): c for c in table.columns}
        cols = {}
        for key, name in self.names.columns().items():
            col = table.columns.get(name) if name in table.columns else by_lower.get(name.lower())
            if col is not None:
                cols[key] = col
        for key in ("setid", "destination"):
            if key not in cols:
                raise StoreError(
                    f"{self.url}: table {self.names.table!r} has no column "
                    f"{self.names.columns()[key]!r}"
                )
        return table, cols

    def _check_version(self, conn: Connection) -> None:
        """Warn (once) when Kamailio's version table does not say 1-4 for our table."""
        if self._version_checked:
            return
        self._version_checked = True
        where = f"{self.url}: table {self.names.table!r}"
        if not sa.inspect(conn).has_table(VERSION_TABLE):
            logger.warning("{}: no {!r} table; reading the columns present", where, VERSION_TABLE)
            return
        version = sa.table(VERSION_TABLE, sa.column("table_name"), sa.column("table_version"))
        found = conn.execute(
            sa.select(version.c.table_version).where(version.c.table_name == self.names.table)
        ).scalar()
        if found is None:
            logger.warning("{}: no row in {!r}; reading the columns present", where, VERSION_TABLE)
        elif int(found) not in READABLE_VERSIONS:
            logger.warning("{}: table version {} (expected 1-4); reading the columns present", where, found)

    def _select_rows(self, conn: Connection, order: tuple[str, ...]) -> list[dict[str, Any]]:
        _, cols = self._reflect(conn)
        query = sa.select(*(c.label(k) for k, c in cols.items()))
        query = query.order_by(*(cols[k] for k in order if k in cols))
        out = []
        for row in conn.execute(query).mappings():
            out.append({**DEFAULTS, "id": None, **{k: v for k, v in row.items() if v is not None}})
        return out

    def ensure_schema(self) -> bool:
        """Create the dispatcher table and the version table if missing; True if the
        dispatcher table was created. An existing table is left exactly as it is."""
        with self._errors("cannot create"), self._get_engine().begin() as conn:
            inspector = sa.inspect(conn)
            if inspector.has_table(self.names.table):
                return False
            dispatcher, version = define_tables(self.names, sa.MetaData())
            dispatcher.create(conn)
            if not inspector.has_table(VERSION_TABLE):
                version.create(conn)
            conn.execute(sa.delete(version).where(version.c.table_name == self.names.table))
            conn.execute(sa.insert(version).values(table_name=self.names.table, table_version=SCHEMA_VERSION))
            logger.info("dispatcher: created table {!r} in {}", self.names.table, self.url)
            return True

    def load(self) -> list[Destination]:
        """Every row as a Destination, in id order (Kamailio reads without ORDER BY, which is
        id order for a table filled by inserts). A bad row is a StoreError; so are all of
        them at once when several are bad."""
        with self._errors("cannot read"), self._get_engine().connect() as conn:
            self._check_version(conn)
            rows = self._select_rows(conn, ("id",))
        dests: list[Destination] = []
        errors: list[str] = []
        for number, row in enumerate(rows, start=1):
            try:
                dest = row_to_destination(row)
            except ValueError as exc:
                errors.append(f"{self.url}: table {self.names.table!r} row id {row['id']}: {exc}")
                continue
            if row["id"] is None:  # a table without an id column: number the rows
                dest = Destination(dest.setid, dest.uri, dest.flags, dest.priority, dest.attrs,
                                   dest.description, row_id=number)
            dests.append(dest)
        if errors:
            raise BadRowsError("\n".join(errors))
        return dests

    def rows(self) -> list[dict[str, Any]]:
        """Every row as a dict with the canonical keys (id, setid, destination, flags,
        priority, attrs, description), ordered by setid then id; not validated."""
        with self._errors("cannot read"), self._get_engine().connect() as conn:
            return self._select_rows(conn, ("setid", "id"))

    def add(
        self,
        setid: int,
        destination: str,
        flags: int = 0,
        priority: int = 0,
        attrs: str = "",
        description: str = "",
    ) -> int:
        """Insert a row and return its id. Invalid values raise ValueError before anything
        is written; database problems raise StoreError."""
        if isinstance(setid, bool) or not isinstance(setid, int) or not 0 <= setid <= INT_MAX:
            raise ValueError(f"set id {setid!r}: must be 0..{INT_MAX}")
        uri = normalize_uri(destination)
        check_flags(flags)
        if isinstance(priority, bool) or not isinstance(priority, int) or abs(priority) > INT_MAX:
            raise ValueError(f"priority {priority!r}: not a 32-bit integer")
        try:
            attrs = parse_attrs(attrs).body  # stored as Kamailio keeps it: no trailing ';'
        except ValueError as exc:
            raise ValueError(f"attrs: {exc}") from None
        check_printable(description, MAX_DESCRIPTION_LENGTH, "description")
        values: dict[str, Any] = {"setid": setid, "destination": uri, "flags": flags, "priority": priority,
                                  "attrs": attrs, "description": description}
        with self._errors("cannot write"), self._get_engine().begin() as conn:
            table, cols = self._reflect(conn)
            row: dict[str, Any] = {}
            for key, value in values.items():
                col = cols.get(key)
                if col is None:
                    if value != DEFAULTS[key]:
                        raise ValueError(
                            f"table {self.names.table!r} has no {key} column (old table version)"
                        )
                    continue
                length = getattr(col.type, "length", None)
                if isinstance(value, str) and length is not None and len(value) > length:
                    raise ValueError(f"{key} is {len(value)} characters; the column holds {length}")
                row[col.name] = value
            result = conn.execute(sa.insert(table).values(row))
            pk = result.inserted_primary_key
            return int(pk[0]) if pk and pk[0] is not None else 0

    def remove_id(self, row_id: int) -> int:
        """Delete the row with this id; return how many rows went (0 or 1)."""
        with self._errors("cannot write"), self._get_engine().begin() as conn:
            table, cols = self._reflect(conn)
            if "id" not in cols:
                raise StoreError(f"{self.url}: table {self.names.table!r} has no id column")
            return int(conn.execute(sa.delete(table).where(cols["id"] == row_id)).rowcount)

    def remove(self, setid: int, uri: str) -> int:
        """Delete the rows of set ``setid`` whose destination is ``uri`` (case-insensitive;
        a stored URI without ``sip:`` matches too); return how many went."""
        norm = normalize_uri(uri)
        candidates = {norm.lower()}
        if norm.lower().startswith("sip:"):
            candidates.add(norm[4:].lower())
        with self._errors("cannot write"), self._get_engine().begin() as conn:
            table, cols = self._reflect(conn)
            query = sa.delete(table).where(
                cols["setid"] == setid, sa.func.lower(cols["destination"]).in_(sorted(candidates))
            )
            return int(conn.execute(query).rowcount)
