"""SqlStore against real MariaDB and PostgreSQL servers, including tables made by Kamailio's DDL.

Every test runs once per server (markers ``mariadb`` and ``postgres``) with a table of its own.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import pytest
import sqlalchemy as sa

from plugins.dispatcher.model import Attrs, Destination
from plugins.dispatcher.sqlstore import SqlStore, StoreError, TableNames
from plugins.dispatcher.storage import ResolveError, load_snapshot

#: utils/kamctl/mysql/dispatcher-create.sql (attrs as in recent Kamailio: 198)
KAMAILIO_MYSQL = """
CREATE TABLE {table} (
    id INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL,
    setid INT DEFAULT 0 NOT NULL,
    destination VARCHAR(192) DEFAULT '' NOT NULL,
    flags INT DEFAULT 0 NOT NULL,
    priority INT DEFAULT 0 NOT NULL,
    attrs VARCHAR(198) DEFAULT '' NOT NULL,
    description VARCHAR(64) DEFAULT '' NOT NULL
);
"""
KAMAILIO_MYSQL_VERSION = """
CREATE TABLE IF NOT EXISTS version (
    table_name VARCHAR(32) NOT NULL,
    table_version INT UNSIGNED DEFAULT 0 NOT NULL,
    CONSTRAINT table_name_idx UNIQUE (table_name)
);
"""
#: utils/kamctl/postgres/dispatcher-create.sql
KAMAILIO_PG = """
CREATE TABLE {table} (
    id SERIAL PRIMARY KEY NOT NULL,
    setid INTEGER DEFAULT 0 NOT NULL,
    destination VARCHAR(192) DEFAULT '' NOT NULL,
    flags INTEGER DEFAULT 0 NOT NULL,
    priority INTEGER DEFAULT 0 NOT NULL,
    attrs VARCHAR(198) DEFAULT '' NOT NULL,
    description VARCHAR(64) DEFAULT '' NOT NULL
);
"""
KAMAILIO_PG_VERSION = """
CREATE TABLE IF NOT EXISTS version (
    table_name VARCHAR(32) NOT NULL,
    table_version INTEGER DEFAULT 0 NOT NULL,
    CONSTRAINT table_name_idx UNIQUE (table_name)
);
"""


def create_kamailio_table(engine: sa.Engine, backend: str, table: str) -> None:
    """What `kamdbctl create` does for the dispatcher table, then `kamctl dispatcher add`-style rows."""
    ddl, version = (KAMAILIO_MYSQL, KAMAILIO_MYSQL_VERSION) if backend == "mariadb" else (
        KAMAILIO_PG, KAMAILIO_PG_VERSION)
    with engine.begin() as conn:
        conn.execute(sa.text(ddl.format(table=table)))
        conn.execute(sa.text(version))
        conn.execute(sa.text(f"INSERT INTO version (table_name, table_version) values ('{table}','4')"))
        conn.execute(sa.text(
            f"INSERT INTO {table} (setid, destination, flags, priority, attrs, description) VALUES "
            "(1, 'sip:127.0.0.1:25901', 0, 10, '', 'gw one'), "
            "(1, 'sip:127.0.0.1:25902', 8, 10, 'duid=gw2;weight=50;prefix=49', 'gw two'), "
            "(1, 'sip:127.0.0.1:25903', 0, 5, '', ''), "
            "(2, '127.0.0.1:25904', 0, 0, 'socket=udp:127.0.0.1:5060', 'no scheme')"
        ))


def columns(engine: sa.Engine, table: str) -> list[tuple[str, str]]:
    return [(c["name"], str(c["type"])) for c in sa.inspect(engine).get_columns(table)]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_create_add_load_remove(server_url: str, table_name: str) -> None:
    store = SqlStore(server_url, TableNames(table=table_name))
    try:
        assert store.ensure_schema() is True
        assert store.ensure_schema() is False
        a = store.add(1, "10.0.0.1:5060", flags=8, priority=10, attrs="duid=gw1;weight=50;", description="A")
        b = store.add(2, "sip:gw.example.com;transport=tcp")
        c = store.add(1, "sip:10.0.0.3;transport=tcp", priority=5)
        assert a < b < c
        assert store.load() == [
            Destination(1, "sip:10.0.0.1:5060", 8, 10,
                        Attrs(body="duid=gw1;weight=50", duid="gw1", weight=50), "A", row_id=a),
            Destination(2, "sip:gw.example.com;transport=tcp", row_id=b),
            Destination(1, "sip:10.0.0.3;transport=tcp", priority=5, row_id=c),
        ]
        assert [r["id"] for r in store.rows()] == [a, c, b]
        assert store.remove(1, "SIP:10.0.0.1:5060") == 1
        assert store.remove_id(b) == 1
        assert store.remove_id(b) == 0
        assert [d.uri for d in store.load()] == ["sip:10.0.0.3;transport=tcp"]
    finally:
        store.close()


def test_schema_matches_kamailio(engine: sa.Engine, server_url: str, table_name: str) -> None:
    store = SqlStore(server_url, TableNames(table=table_name))
    store.ensure_schema()
    store.close()
    cols = dict(columns(engine, table_name))
    assert list(cols) == ["id", "setid", "destination", "flags", "priority", "attrs", "description"]
    assert cols["destination"].startswith("VARCHAR(192)")
    assert cols["attrs"].startswith("VARCHAR(128)")
    assert cols["description"].startswith("VARCHAR(64)")
    with engine.connect() as conn:
        version = conn.execute(sa.text("SELECT table_version FROM version WHERE table_name = :t"),
                               {"t": table_name}).scalar()
    assert version == 4


def test_a_kamailio_created_table_is_read_as_is(
    engine: sa.Engine, backend: str, server_url: str, table_name: str
) -> None:
    create_kamailio_table(engine, backend, table_name)
    before = columns(engine, table_name)
    store = SqlStore(server_url, TableNames(table=table_name))
    try:
        assert store.ensure_schema() is False
        dests = store.load()
        assert [(d.setid, d.uri, d.flags, d.priority, d.description) for d in dests] == [
            (1, "sip:127.0.0.1:25901", 0, 10, "gw one"),
            (1, "sip:127.0.0.1:25902", 8, 10, "gw two"),
            (1, "sip:127.0.0.1:25903", 0, 5, ""),
            (2, "sip:127.0.0.1:25904", 0, 0, "no scheme"),
        ]
        assert dests[1].attrs.duid == "gw2"
        assert dests[1].attrs.weight == 50
        assert dict(dests[1].attrs.extra) == {"prefix": "49"}
        assert dests[3].attrs.socket == "udp:127.0.0.1:5060"
        # Kamailio's array order (reference §1): equal priorities reversed
        snap = load_snapshot(list_file=None, db_url=server_url, table=TableNames(table=table_name))
        assert [d.uri for d in snap.sets[1].destinations] == [
            "sip:127.0.0.1:25902", "sip:127.0.0.1:25901", "sip:127.0.0.1:25903"]
        assert snap.sets[2].destinations[0].address == ("127.0.0.1", 25904, "udp")
        # Kamailio's attrs column is VARCHAR(198): the reflected length is what add() checks
        long_attrs = "prefix=" + "9" * 180
        new_id = store.add(3, "sip:127.0.0.1:25905", attrs=long_attrs)
        assert store.rows()[-1] == {"id": new_id, "setid": 3, "destination": "sip:127.0.0.1:25905",
                                    "flags": 0, "priority": 0, "attrs": long_attrs, "description": ""}
        with pytest.raises(ValueError, match="attrs is 199 characters; the column holds 198"):
            store.add(3, "sip:127.0.0.1:25906", attrs="prefix=" + "9" * 192)
    finally:
        store.close()
    assert columns(engine, table_name) == before


def test_bad_row_names_the_row_id(engine: sa.Engine, backend: str, server_url: str, table_name: str) -> None:
    create_kamailio_table(engine, backend, table_name)
    with engine.begin() as conn:
        bad_id = conn.execute(sa.text(
            f"INSERT INTO {table_name} (setid, destination, attrs) VALUES (1, 'sip:127.0.0.1', 'rweight=500')"
            + (" RETURNING id" if backend == "postgres" else "")
        ))
        row_id = bad_id.scalar() if backend == "postgres" else bad_id.lastrowid
    store = SqlStore(server_url, TableNames(table=table_name))
    with pytest.raises(StoreError, match=f"row id {row_id}: attrs: rweight=500: must be 1..100$"):
        store.load()
    store.close()


def test_other_servers_are_never_given_a_schema(server_url: str, table_name: str) -> None:
    with pytest.raises(StoreError, match=f"table '{table_name}' does not exist"):
        load_snapshot(list_file=None, db_url=server_url, table=TableNames(table=table_name))


def test_unresolvable_row(server_url: str, table_name: str) -> None:
    store = SqlStore(server_url, TableNames(table=table_name))
    store.ensure_schema()
    row_id = store.add(4, "sip:gone.invalid")
    store.close()

    def resolver(host: str, port: int) -> list[tuple[Any, ...]]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(ResolveError, match=f"table '{table_name}' row id {row_id}: set 4 sip:gone.invalid"):
        load_snapshot(list_file=None, db_url=server_url, table=TableNames(table=table_name), resolver=resolver)


def test_unreachable_server_hides_the_password(server_url: str) -> None:
    url = sa.make_url(server_url)
    wrong_port = url.set(port=closed_port())
    store = SqlStore(wrong_port.render_as_string(hide_password=False))
    with pytest.raises(StoreError) as info:
        store.load()
    message = str(info.value)
    assert str(url.password) not in message
    assert message.startswith(wrong_port.render_as_string(hide_password=True) + ": cannot read table")
    assert "refused" in message.lower()


def test_wrong_password_is_not_echoed(server_url: str) -> None:
    url = sa.make_url(server_url).set(password="not-the-pw-123")
    store = SqlStore(url.render_as_string(hide_password=False))
    with pytest.raises(StoreError) as info:
        store.load()
    assert "not-the-pw-123" not in str(info.value)
    assert ":***@" in str(info.value)


def test_concurrent_use_from_threads(server_url: str, table_name: str) -> None:
    store = SqlStore(server_url, TableNames(table=table_name))
    store.ensure_schema()
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(5):
                store.add(n, f"sip:127.0.0.{n}:{5060 + i}")
                store.load()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    store.close()
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    with SqlStore(server_url, TableNames(table=table_name)) as again:
        assert len(again.load()) == 20
