"""``b2bua dispatcher add|show|rm`` against real MariaDB and PostgreSQL servers.

The table is made the way ``kamdbctl create`` makes it (Kamailio's DDL), so the CLI is
checked on the tables operators already have. Every test runs once per server.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from b2bua.cli import main
from plugins.dispatcher.sqlstore import SqlStore, StoreError, TableNames

from .test_sql_servers import create_kamailio_table


class Cli:
    """``b2bua dispatcher <verb> -c config.toml ...`` in-process: ``(exit code, stdout, stderr)``."""

    def __init__(self, capsys: pytest.CaptureFixture[str], config: Path) -> None:
        self.capsys = capsys
        self.config = config

    def __call__(self, verb: str, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        rc = main(["dispatcher", verb, "-c", str(self.config), *args])
        out, err = self.capsys.readouterr()
        return rc, out, err

    def ok(self, verb: str, *args: str) -> str:
        rc, out, err = self(verb, *args)
        assert (rc, err) == (0, "")
        return out


def config_for(folder: Path, url: str, table: str) -> Path:
    path = folder / "config.toml"
    path.write_text(f'[plugins]\nenabled = ["dispatcher"]\n[plugins.dispatcher]\n'
                    f'db_url = "{url}"\ntable_name = "{table}"\n')
    return path


def table_rows(engine: sa.Engine, table: str) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        result = conn.execute(sa.text(
            f"SELECT setid, destination, flags, priority, attrs, description FROM {table} ORDER BY id"))
        return [tuple(row) for row in result]


def test_add_show_rm_on_a_kamailio_table(
    server_url: str, engine: sa.Engine, table_name: str, backend: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    create_kamailio_table(engine, backend, table_name)
    cli = Cli(capsys, config_for(tmp_path, server_url, table_name))
    shown = json.loads(cli.ok("show", "--json"))
    assert [(r["setid"], r["destination"], r["description"]) for r in shown] == [
        (1, "sip:127.0.0.1:25901", "gw one"), (1, "sip:127.0.0.1:25902", "gw two"),
        (1, "sip:127.0.0.1:25903", ""), (2, "127.0.0.1:25904", "no scheme")]

    out = cli.ok("add", "3", "127.0.0.1:25905", "8", "-7", "duid=gw5;weight=25", "it's \"quoted\"; DROP TABLE x")
    new_id = int(out.split()[2])
    assert table_rows(engine, table_name)[-1] == (
        3, "sip:127.0.0.1:25905", 8, -7, "duid=gw5;weight=25", "it's \"quoted\"; DROP TABLE x")
    table = cli.ok("show", "3").splitlines()
    assert len(table) == 2 and table[1].split()[:5] == [str(new_id), "3", "sip:127.0.0.1:25905", "8", "-7"]

    rc, _, err = cli("add", "1", "SIP:127.0.0.1:25901")
    assert rc == 1 and "set 1 already has sip:127.0.0.1:25901" in err

    cli.ok("rm", str(new_id))
    cli.ok("rm", "2", "sip:127.0.0.1:25904")  # stored without sip:, as kamctl may have written it
    rc, _, err = cli("rm", str(new_id))
    assert rc == 1 and f"no row with id {new_id}" in err
    assert [r[1] for r in table_rows(engine, table_name)] == [
        "sip:127.0.0.1:25901", "sip:127.0.0.1:25902", "sip:127.0.0.1:25903"]


def test_too_long_value_is_refused_before_writing(
    server_url: str, engine: sa.Engine, table_name: str, backend: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    create_kamailio_table(engine, backend, table_name)
    cli = Cli(capsys, config_for(tmp_path, server_url, table_name))
    rc, _, err = cli("add", "1", "sip:127.0.0.1:25906", "0", "0", "", "x" * 65)
    assert rc == 1 and "description is 65 characters; the column holds 64" in err
    assert len(table_rows(engine, table_name)) == 4


def test_wrong_password_is_hidden(
    server_url: str, table_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    url = sa.make_url(server_url).set(password="not-the-Passw0rd")
    cli = Cli(capsys, config_for(tmp_path, url.render_as_string(hide_password=False), table_name))
    for verb, *args in (("show",), ("add", "1", "sip:127.0.0.1:25907"), ("rm", "1")):
        rc, out, err = cli(verb, *args)
        assert (rc, out) == (1, "")
        assert url.render_as_string(hide_password=True) in err and "not-the-Passw0rd" not in err, err


def test_missing_table_is_named(
    server_url: str, table_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    rc, _, err = Cli(capsys, config_for(tmp_path, server_url, table_name))("show")
    assert rc == 1 and f"table {table_name!r} does not exist" in err


def test_descriptions_round_trip_and_forged_rows_are_escaped(
    server_url: str, engine: sa.Engine, table_name: str, backend: str, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    create_kamailio_table(engine, backend, table_name)
    cli = Cli(capsys, config_for(tmp_path, server_url, table_name))
    description = "Zürich \"Süd\" #2; 'x' \\ ok"
    out = cli.ok("add", "4", "sip:127.0.0.1:25908", "0", "0", "duid=z;note=\"a;b\"", f"  {description}  ")
    new_id = int(out.split()[2])
    with SqlStore(server_url, TableNames(table=table_name)) as store:
        loaded = {d.row_id: d for d in store.load()}
    assert (loaded[new_id].description, loaded[new_id].attrs.body) == (description, 'duid=z;note="a;b"')

    with engine.begin() as conn:  # what another tool could write
        conn.execute(sa.text(f"INSERT INTO {table_name} (setid, destination, description) VALUES "
                             "(5, 'sip:127.0.0.1:25909', :d)"), {"d": "x\n99  5  sip:forged  0  0\x1b[2J"})
    lines = cli.ok("show", "5").splitlines()
    assert len(lines) == 2 and lines[1].endswith("x\\n99  5  sip:forged  0  0\\x1b[2J")
    with SqlStore(server_url, TableNames(table=table_name)) as store, pytest.raises(StoreError) as info:
        store.load()
    assert "description: character \\n at position 2 is not printable" in str(info.value)
