"""The SQL store on SQLite (tmp_path), and load_snapshot() over both sources."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from plugins.dispatcher.model import Attrs, Destination
from plugins.dispatcher.sqlstore import SCHEMA_VERSION, SqlStore, StoreError, TableNames, scrub_password
from plugins.dispatcher.storage import ListFileError, LoadError, ResolveError, load_snapshot


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'dispatcher.db'}"


@pytest.fixture
def store(url: str) -> Iterator[SqlStore]:
    s = SqlStore(url)
    s.ensure_schema()
    yield s
    s.close()


def execute(url: str, *statements: str) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(sa.text(statement))
    engine.dispose()


def query(url: str, statement: str) -> list[tuple[Any, ...]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(sa.text(statement))]
    engine.dispose()
    return rows


def inspect(url: str) -> tuple[dict[str, dict[str, Any]], bool]:
    """The dispatcher table's columns by name, and whether a version table exists."""
    engine = sa.create_engine(url)
    inspector = sa.inspect(engine)
    columns = {c["name"]: dict(c) for c in inspector.get_columns("dispatcher")}
    has_version = inspector.has_table("version")
    engine.dispose()
    return columns, has_version


def load(url: str, names: TableNames | None = None) -> list[Destination]:
    with SqlStore(url, names) as store:
        return store.load()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- schema


def test_ensure_schema_creates_kamailio_tables(request: pytest.FixtureRequest, url: str) -> None:
    store = SqlStore(url)
    request.addfinalizer(store.close)
    assert store.ensure_schema() is True
    assert store.ensure_schema() is False
    columns, _ = inspect(url)
    assert list(columns) == ["id", "setid", "destination", "flags", "priority", "attrs", "description"]
    assert columns["destination"]["type"].length == 192
    assert columns["attrs"]["type"].length == 128
    assert columns["description"]["type"].length == 64
    assert query(url, "SELECT table_name, table_version FROM version") == [("dispatcher", SCHEMA_VERSION)]


def test_an_existing_table_is_not_altered(url: str) -> None:
    execute(url, "CREATE TABLE dispatcher (id INTEGER PRIMARY KEY, setid INT, destination VARCHAR(300), "
                 "custom TEXT)")
    with SqlStore(url) as store:
        assert store.ensure_schema() is False
    columns, has_version = inspect(url)
    assert list(columns) == ["id", "setid", "destination", "custom"]
    assert not has_version


def test_custom_names(url: str, request: pytest.FixtureRequest) -> None:
    names = TableNames(table="gw", setid="grp", destination="dst", flags="f", priority="p", attrs="a",
                       description="d")
    store = SqlStore(url, names)
    store.ensure_schema()
    request.addfinalizer(store.close)
    row_id = store.add(4, "sip:10.0.0.4", flags=8, priority=2, attrs="duid=x", description="four")
    assert query(url, "SELECT id, grp, dst, f, p, a, d FROM gw") == [
        (row_id, 4, "sip:10.0.0.4", 8, 2, "duid=x", "four")
    ]
    assert query(url, "SELECT table_name, table_version FROM version") == [("gw", 4)]
    assert store.load() == [Destination(4, "sip:10.0.0.4", 8, 2, Attrs(body="duid=x", duid="x"), "four",
                                        row_id=row_id)]


# ---------------------------------------------------------------- add / load / rows / remove


def test_add_load_rows_remove(store: SqlStore) -> None:
    a = store.add(1, "10.0.0.1:5060", flags=8, priority=10, attrs="duid=gw1;weight=50;", description="A")
    b = store.add(2, "sip:gw.example.com;transport=tcp")
    c = store.add(1, "sip:10.0.0.3;transport=tcp", priority=5)
    assert (a, b, c) == (1, 2, 3)
    assert store.load() == [
        Destination(1, "sip:10.0.0.1:5060", 8, 10, Attrs(body="duid=gw1;weight=50", duid="gw1", weight=50),
                    "A", row_id=1),
        Destination(2, "sip:gw.example.com;transport=tcp", row_id=2),
        Destination(1, "sip:10.0.0.3;transport=tcp", priority=5, row_id=3),
    ]
    assert [(r["id"], r["setid"]) for r in store.rows()] == [(1, 1), (3, 1), (2, 2)]
    assert store.rows()[0] == {"id": 1, "setid": 1, "destination": "sip:10.0.0.1:5060", "flags": 8,
                               "priority": 10, "attrs": "duid=gw1;weight=50", "description": "A"}
    assert store.remove(1, "SIP:10.0.0.1:5060") == 1
    assert store.remove(1, "sip:10.0.0.1:5060") == 0
    assert store.remove(9, "sip:10.0.0.3;transport=tcp") == 0  # other set
    assert store.remove_id(2) == 1
    assert store.remove_id(2) == 0
    assert [d.uri for d in store.load()] == ["sip:10.0.0.3;transport=tcp"]
    assert store.add(7, "sip:10.0.0.7") == 4  # ids are not reused


def test_remove_matches_a_stored_uri_without_scheme(store: SqlStore, url: str) -> None:
    execute(url, "INSERT INTO dispatcher (setid, destination) VALUES (1, '10.0.0.9:5060')")
    assert store.remove(1, "sip:10.0.0.9:5060") == 1


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"setid": -1, "destination": "sip:a.example"}, "set id -1"),
        ({"setid": 1, "destination": "tel:+123"}, "URI scheme 'tel'"),
        ({"setid": 1, "destination": ""}, "empty URI"),
        ({"setid": 1, "destination": "sip:a.example", "flags": 128}, "unknown bits 0x80"),
        ({"setid": 1, "destination": "sip:a.example", "attrs": "weight=0"}, "attrs: weight=0: must be 1..100"),
        ({"setid": 1, "destination": "sip:a.example", "priority": 2**31}, "priority"),
        ({"setid": 1, "destination": "sip:" + "a" * 190 + ".example"},
         "destination is 202 characters; the column holds 192"),
        ({"setid": 1, "destination": "sip:a.example", "description": "d" * 65}, "description is 65 characters"),
    ],
)
def test_add_validates_before_writing(store: SqlStore, kwargs: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("+", r"\+")):
        store.add(**kwargs)
    assert store.rows() == []


def test_null_columns_take_defaults(url: str) -> None:
    # a table without Kamailio's NOT NULL constraints, as hand-made tables often are
    execute(url, "CREATE TABLE dispatcher (id INTEGER PRIMARY KEY, setid INT, destination TEXT, "
                 "flags INT, priority INT, attrs TEXT, description TEXT)",
            "INSERT INTO dispatcher VALUES (1, NULL, 'sip:10.0.0.1', NULL, NULL, NULL, NULL)")
    assert load(url) == [Destination(0, "sip:10.0.0.1", row_id=1)]


def test_bad_rows_name_the_row_id_and_reason(store: SqlStore, url: str) -> None:
    store.add(1, "sip:10.0.0.1")
    execute(
        url,
        "INSERT INTO dispatcher (id, setid, destination, attrs) VALUES (7, 1, 'sip:10.0.0.7', 'weight=abc')",
        "INSERT INTO dispatcher (id, setid, destination) VALUES (8, 1, 'tel:+49')",
        "INSERT INTO dispatcher (id, setid, destination, flags) VALUES (9, 1, 'sip:10.0.0.9', 64)",
        "INSERT INTO dispatcher (id, setid, destination) VALUES (10, 'one', 'sip:10.0.0.10')",
        "INSERT INTO dispatcher (id, setid, destination) VALUES (11, 1, '')",
        "INSERT INTO dispatcher (id, setid, destination) VALUES (12, 1, 'sip:10.0.0.12?X-Injected=yes')",
        "INSERT INTO dispatcher (id, setid, destination, description) VALUES (13, 1, 'sip:10.0.0.13',"
        " 'fine' || char(10) || '99 1 sip:forged')",
        "INSERT INTO dispatcher (id, setid, destination, description) VALUES (14, 1, 'sip:10.0.0.14',"
        " 'x' || char(27) || '[2J')",
        "INSERT INTO dispatcher (id, setid, destination, attrs) VALUES (15, 1, 'sip:10.0.0.15',"
        " 'a=' || char(13) || 'b')",
        "INSERT INTO dispatcher (id, setid, destination, description) VALUES (16, 1, 'sip:10.0.0.16',"
        " printf('%.300c', 'x'))",
    )
    with pytest.raises(StoreError) as info:
        store.load()
    lines = str(info.value).splitlines()
    prefix = f"{store.url}: table 'dispatcher' row id "
    assert lines == [
        prefix + "7: attrs: weight=abc: not an integer",
        prefix + "8: tel:+49: URI scheme 'tel' is not sip or sips",
        prefix + "9: flags 64: unknown bits 0x40 (known: 1, 2, 4, 8, 16, 32)",
        prefix + "10: setid 'one': not an integer",
        prefix + "11: destination '': empty",
        prefix + "12: sip:10.0.0.12?X-Injected=yes: URI headers (?X-Injected=yes) are not allowed in a"
        " destination: they would be copied into every request to it",
        prefix + "13: description: character \\n at position 5 is not printable (line breaks, tabs, control"
        " and format characters are refused)",
        prefix + "14: description: character \\x1b at position 2 is not printable (line breaks, tabs, control"
        " and format characters are refused)",
        prefix + "15: attrs: character \\r at position 3 is not printable (line breaks, tabs, control"
        " and format characters are refused)",
        prefix + "16: description: 300 characters long; the limit is 255",
    ]
    # rows() still shows them, for an operator to fix
    assert sorted(r["id"] for r in store.rows()) == [1, *range(7, 17)]


@pytest.mark.parametrize(
    ("ddl", "version", "expected_warning"),
    [
        ("id INTEGER PRIMARY KEY, setid INT, destination TEXT", 1, None),
        ("id INTEGER PRIMARY KEY, setid INT, destination TEXT, flags INT", 2, None),
        ("id INTEGER PRIMARY KEY, setid INT, destination TEXT, flags INT, priority INT", 3, None),
        ("id INTEGER PRIMARY KEY, setid INT, destination TEXT, flags INT, priority INT", 5,
         "table version 5 (expected 1-4)"),
        ("id INTEGER PRIMARY KEY, setid INT, destination TEXT", None, "no row in 'version'"),
    ],
)
def test_older_table_versions(
    request: pytest.FixtureRequest, url: str, warnings: list[str], ddl: str, version: int | None,
    expected_warning: str | None,
) -> None:
    statements = [f"CREATE TABLE dispatcher ({ddl})",
                  "CREATE TABLE version (table_name VARCHAR(32) NOT NULL UNIQUE, table_version INT NOT NULL)",
                  "INSERT INTO dispatcher (id, setid, destination) VALUES (3, 2, 'sip:10.0.0.3')"]
    if version is not None:
        statements.append(f"INSERT INTO version VALUES ('dispatcher', {version})")
    execute(url, *statements)
    store = SqlStore(url)
    request.addfinalizer(store.close)
    assert store.load() == [Destination(2, "sip:10.0.0.3", row_id=3)]
    store.load()
    assert warnings == ([f"{store.url}: table 'dispatcher': {expected_warning}; reading the columns present"]
                        if expected_warning else [])
    if "flags" not in ddl:
        with pytest.raises(ValueError, match="table 'dispatcher' has no flags column"):
            store.add(1, "sip:10.0.0.1", flags=8)
    assert store.add(1, "sip:10.0.0.1") == 4


def test_missing_version_table_warns(request: pytest.FixtureRequest, url: str, warnings: list[str]) -> None:
    execute(url, "CREATE TABLE dispatcher (id INTEGER PRIMARY KEY, setid INT, destination TEXT)")
    store = SqlStore(url)
    request.addfinalizer(store.close)
    assert store.load() == []
    assert warnings == [f"{store.url}: table 'dispatcher': no 'version' table; reading the columns present"]


def test_missing_table(url: str) -> None:
    with pytest.raises(StoreError, match=r"table 'dispatcher' does not exist"):
        load(url)


def test_table_without_destination_column(url: str) -> None:
    execute(url, "CREATE TABLE dispatcher (id INTEGER PRIMARY KEY, setid INT, uri TEXT)")
    with pytest.raises(StoreError, match="has no column 'destination'"):
        load(url)


@pytest.mark.parametrize("scheme", ["mysql+pymysql", "postgresql+psycopg"])
def test_unreachable_database_hides_the_password(scheme: str) -> None:
    port = closed_port()
    store = SqlStore(f"{scheme}://dispatcher:s3cr3t-pw@127.0.0.1:{port}/kamailio")
    with pytest.raises(StoreError) as info:
        store.load()
    message = str(info.value)
    assert message.startswith(f"{scheme}://dispatcher:***@127.0.0.1:{port}/kamailio: cannot read table")
    assert "s3cr3t-pw" not in message
    assert "refused" in message.lower()


@pytest.mark.parametrize("bad", ["not a url", "nosuchdialect://x/y"])
def test_bad_url(bad: str) -> None:
    with pytest.raises(StoreError):
        load(bad)


def test_usable_from_another_thread(store: SqlStore) -> None:
    store.add(1, "sip:10.0.0.1")
    results: list[object] = []
    worker = threading.Thread(target=lambda: results.append(store.load()))
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert [d.uri for d in results[0]] == ["sip:10.0.0.1"]  # type: ignore[attr-defined]


# ---------------------------------------------------------------- load_snapshot


def fake_resolver(host: str, port: int) -> Sequence[tuple[Any, ...]]:
    if host == "gw.example.com":
        return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("203.0.113.10", port))]
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def test_load_snapshot_from_sqlite_creates_the_schema(request: pytest.FixtureRequest, url: str) -> None:
    snap = load_snapshot(list_file=None, db_url=url, resolver=fake_resolver)
    assert snap.sets == {}
    assert snap.source == f"{url} table dispatcher"
    store = SqlStore(url)
    request.addfinalizer(store.close)
    store.add(1, "sip:gw.example.com", priority=1)
    store.add(1, "sip:10.0.0.2", priority=1)
    store.add(2, "sip:later.example", flags=16)
    snap = load_snapshot(list_file=None, db_url=url, resolver=fake_resolver)
    assert [(d.uri, d.address) for d in snap.sets[1].destinations] == [
        ("sip:10.0.0.2", ("10.0.0.2", 5060, "udp")),  # Kamailio order: equal priority reversed
        ("sip:gw.example.com", ("203.0.113.10", 5060, "udp")),
    ]
    assert [(d.uri, d.address) for d in snap.sets[2].destinations] == [("sip:later.example", None)]


def test_load_snapshot_without_create_schema(url: str) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        load_snapshot(list_file=None, db_url=url, create_schema=False)


def test_load_snapshot_from_a_list_file(tmp_path: Path) -> None:
    path = tmp_path / "dispatcher.list"
    path.write_text("1 sip:gw.example.com 0 0\n1 sip:10.0.0.2 0 5\n")
    snap = load_snapshot(list_file=path, db_url=None, resolver=fake_resolver)
    assert snap.source == str(path)
    assert [d.address for d in snap.sets[1].destinations] == [("10.0.0.2", 5060, "udp"),
                                                              ("203.0.113.10", 5060, "udp")]


def test_load_snapshot_unresolvable_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "dispatcher.list"
    path.write_text("# gateways\n1 sip:gone.example 0 0\n")
    with pytest.raises(ResolveError, match=f"^{path}:2: set 1 sip:gone.example: cannot resolve"):
        load_snapshot(list_file=path, db_url=None, resolver=fake_resolver)
    snap = load_snapshot(list_file=path, db_url=None, resolver=fake_resolver, skip_unresolvable=True)
    assert snap.sets == {}
    snap = load_snapshot(list_file=path, db_url=None, resolve=False)
    assert [d.address for d in snap.destinations()] == [None]


def test_load_snapshot_unresolvable_names_the_row(request: pytest.FixtureRequest, url: str) -> None:
    store = SqlStore(url)
    request.addfinalizer(store.close)
    store.ensure_schema()
    store.add(3, "sip:gone.example")
    with pytest.raises(ResolveError, match=r"table 'dispatcher' row id 1: set 3 sip:gone.example"):
        load_snapshot(list_file=None, db_url=url, resolver=fake_resolver)


@pytest.mark.parametrize(("list_file", "db_url"), [("x.list", "sqlite://"), (None, None), (None, "")])
def test_load_snapshot_needs_exactly_one_source(tmp_path: Path, list_file: str | None, db_url: str | None) -> None:
    with pytest.raises(LoadError, match="exactly one of list_file and db_url"):
        load_snapshot(list_file=tmp_path / list_file if list_file else None, db_url=db_url)


def test_load_errors_share_one_base_type(tmp_path: Path) -> None:
    assert issubclass(ListFileError, LoadError)
    assert issubclass(StoreError, LoadError)
    assert issubclass(ResolveError, LoadError)
    with pytest.raises(LoadError, match="cannot read"):
        load_snapshot(list_file=tmp_path / "missing.list", db_url=None)


def test_a_password_is_scrubbed_where_it_stands_alone_and_a_short_one_garbles_nothing() -> None:
    assert scrub_password("connection to port 1 failed: password p rejected", "p") == \
        "connection to port 1 failed: password *** rejected"
    assert scrub_password("dsn user=b2bua password=s3cr3t-pw host=db", "s3cr3t-pw") == \
        "dsn user=b2bua password=*** host=db"
    assert scrub_password("mysql://u:a%2Fb@db/x", "a/b") == "mysql://u:***@db/x"  # URL-quoted
    assert scrub_password("nothing to hide", "") == "nothing to hide"
