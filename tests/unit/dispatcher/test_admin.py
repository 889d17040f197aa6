"""``b2bua dispatcher add|rm|show|list|reload|set-state`` run in-process through ``b2bua.cli.main``.

The source verbs run against SQLite and a list file in ``tmp_path``; the live verbs against a
real control server (unix socket in ``tmp_path``) serving a started DispatcherPlugin.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from b2bua.cli import main
from b2bua.config import ControlConfig
from b2bua.control import ControlServer
from plugins.dispatcher.admin import (
    AdminError,
    check_description,
    format_table,
    list_add,
    list_remove_line,
    list_remove_uri,
    list_rows,
    live_rows,
    make_destination,
    split_comment,
)
from plugins.dispatcher.attrs import parse_attrs
from plugins.dispatcher.listfile import MAX_LINE, load_list_file, parse_list
from plugins.dispatcher.model import Attrs, Destination
from plugins.dispatcher.sqlstore import SqlStore, TableNames

from .test_rpc import GW1, GW2, LIST, Harness


class Cli:
    """Runs ``b2bua`` with a config in ``dir``; ``(exit code, stdout, stderr)``."""

    def __init__(self, capsys: pytest.CaptureFixture[str], config: Path) -> None:
        self.capsys = capsys
        self.config = config

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        verb, *rest = argv
        rc = main(["dispatcher", verb, "-c", str(self.config), *rest])
        out, err = self.capsys.readouterr()
        return rc, out, err

    def ok(self, *argv: str) -> str:
        rc, out, err = self(*argv)
        assert rc == 0, err
        assert err == ""
        return out

    def show(self) -> list[dict[str, object]]:
        return list(json.loads(self.ok("show", "--json")))


def write_config(folder: Path, source: str, extra: str = "") -> Path:
    path = folder / "config.toml"
    path.write_text(
        f'[plugins]\nenabled = ["dispatcher"]\n[plugins.dispatcher]\n{source}\n'
        f'[control]\nsocket = "b2bua.sock"\n{extra}'
    )
    return path


SOURCES = {
    "sqlite": 'db_url = "sqlite:///dispatcher.db"',
    "list": 'list_file = "dispatcher.list"',
}


@pytest.fixture(params=sorted(SOURCES))
def cli(request: pytest.FixtureRequest, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Cli:
    if request.param == "list":
        (tmp_path / "dispatcher.list").write_text("")
    return Cli(capsys, write_config(tmp_path, SOURCES[request.param]))


# -- pure helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("1 sip:a 0 0 duid=x # carrier A", ("1 sip:a 0 0 duid=x ", "carrier A")),
        ("1 sip:a#comment", ("1 sip:a", "comment")),
        ("1 sip:a 0 0 x=a#b", ("1 sip:a 0 0 x=a#b", "")),  # attrs may hold '#'
        ("# whole line", ("", "whole line")),
        ("1 sip:a", ("1 sip:a", "")),
    ],
)
def test_split_comment(line: str, expected: tuple[str, str]) -> None:
    assert split_comment(line) == expected


def test_list_edits_keep_comments_and_order() -> None:
    text = "# gateways\n2 sip:b\n\n1 sip:a 0 0 duid=a # first\n"
    added, line = list_add(text, Destination(1, "sip:c", 8, 3), "third one", "d.list")
    assert (added, line) == (text + "1 sip:c 8 3 # third one\n", 5)
    assert [(r["id"], r["setid"], r["description"]) for r in list_rows(added, "d.list")] == [
        (4, 1, "first"), (5, 1, "third one"), (2, 2, "")]
    no_newline, line = list_add("1 sip:a", Destination(1, "sip:b"), "", "d.list")
    assert (no_newline, line) == ("1 sip:a\n1 sip:b 0 0\n", 2)
    removed, dest = list_remove_line(added, 2, "d.list")
    assert removed == "# gateways\n\n1 sip:a 0 0 duid=a # first\n1 sip:c 8 3 # third one\n"
    assert dest.uri == "sip:b"
    again, lines = list_remove_uri(added + "1 SIP:C\n", 1, "c", "d.list")
    assert lines == [5, 6] and again == text


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: list_add("1 sip:a\n", Destination(1, "SIP:A"), "", "d.list"), "set 1 already has sip:a (d.list:1)"),
        (lambda: list_add("", Destination(1, "sip:a", priority=-1), "", "d.list"), "priority '-1'"),
        (lambda: list_add("", Destination(1, "sip:a"), "two\nlines", "d.list"), "must be one line"),
        (lambda: list_add("1 sip:a banana\n", Destination(1, "sip:b"), "", "d.list"), "d.list:1: flags 'banana'"),
        (lambda: list_remove_line("# x\n1 sip:a\n", 1, "d.list"), "line 1 is not a destination"),
        (lambda: list_remove_line("1 sip:a\n", 7, "d.list"), "line 7 is not a destination"),
    ],
)
def test_list_edit_errors(call: object, message: str) -> None:
    with pytest.raises(Exception) as err:
        call()  # type: ignore[operator]
    assert message in str(err.value)


def test_make_destination_checks_like_the_loaders() -> None:
    dest = make_destination("1", "10.0.0.1:5060", "0x8", "-5", "duid=a;weight=50")
    assert (dest.setid, dest.uri, dest.flags, dest.priority, dest.attrs.weight) == (
        1, "sip:10.0.0.1:5060", 8, -5, 50)
    for args, message in [
        (("x", "sip:a", None, None, None), "set id 'x': not a number"),
        (("1", "tel:+49", None, None, None), "bad URI: tel:+49: URI scheme 'tel' is not sip or sips"),
        (("1", "sip:a", "64", None, None), "flags 64: unknown bits 0x40 (known: 1, 2, 4, 8, 16, 32)"),
        (("1", "sip:a", None, "1e3", None), "priority '1e3': not a number"),
        (("1", "sip:a", None, None, "weight"), "bad attrs: weight: needs a value"),
        (("-1", "sip:a", None, None, None), "set id -1: must be 0..2147483647"),
    ]:
        with pytest.raises(AdminError) as err:
            make_destination(*args)
        assert str(err.value) == message


def test_format_table_and_live_rows() -> None:
    listing = {"RECORDS": [{"SET": {"ID": 1, "TARGETS": [
        {"DEST": {"URI": "sip:a", "FLAGS": "AP", "PRIORITY": 0, "LATENCY": {"EST": 1.25, "AVG": 2.0},
                  "RUNTIME": {"DLGLOAD": 3}}},
        {"DEST": {"URI": "sip:bb", "FLAGS": "DX", "PRIORITY": 10, "RUNTIME": {"DLGLOAD": 0}}},
    ]}}]}
    assert format_table(["SET", "URI", "STATE", "PRIO", "EST", "AVG", "LOAD"], live_rows(listing)) == (
        "SET  URI     STATE  PRIO  EST  AVG  LOAD\n"
        "1    sip:a   AP     0     1.2  2.0  3\n"
        "1    sip:bb  DX     10    -    -    0"
    )


# -- source verbs, both sources ----------------------------------------------------------------


def test_add_show_rm(cli: Cli) -> None:
    assert cli.show() == []
    out = cli.ok("add", "1", "127.0.0.1:5061", "8", "5", "duid=gw1;weight=50", "carrier A")
    assert out.startswith("Added ") and "set 1 sip:127.0.0.1:5061" in out
    assert "Not live yet: 'b2bua dispatcher reload' puts it in service." in out
    cli.ok("add", "2", "sip:127.0.0.1:5062")
    rc, out, err = cli("add", "1", "sip:127.0.0.1:5063")  # no weight in a weighted set: a warning
    assert rc == 0 and "Added " in out
    assert err == ("warning: set 1: weighted, but sip:127.0.0.1:5063 has no weight; algorithm 9 would send"
                   " sip:127.0.0.1:5061 50 %, sip:127.0.0.1:5063 50 %\n")
    rows = cli.show()
    assert [(r["setid"], r["destination"], r["flags"], r["priority"], r["attrs"], r["description"]) for r in rows] == [
        (1, "sip:127.0.0.1:5061", 8, 5, "duid=gw1;weight=50", "carrier A"),
        (1, "sip:127.0.0.1:5063", 0, 0, "", ""),
        (2, "sip:127.0.0.1:5062", 0, 0, "", ""),
    ]
    table = cli.ok("show", "2")
    assert table.splitlines()[0].split() == ["ID", "SETID", "DESTINATION", "FLAGS", "PRIORITY", "ATTRS",
                                             "DESCRIPTION"]
    assert len(table.splitlines()) == 2 and "sip:127.0.0.1:5062" in table
    cli.ok("rm", str(rows[0]["id"]))
    cli.ok("rm", "2", "SIP:127.0.0.1:5062")
    assert [r["destination"] for r in cli.show()] == ["sip:127.0.0.1:5063"]


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (("add", "1", "tel:+4930123"), 1, "error: bad URI: tel:+4930123: URI scheme 'tel' is not sip"),
        (("add", "1", "sip:10.0.0.1", "0", "0", "weight=0"), 1, "error: bad attrs: weight=0: must be 1..100"),
        (("add", "one", "sip:10.0.0.1"), 1, "error: set id 'one': not a number"),
        (("add", "1", "sip:10.0.0.1", "3x"), 1, "error: flags '3x': not a number"),
        (("rm", "4711"), 1, "4711"),
        (("rm", "1", "sip:10.9.9.9"), 1, "set 1 has no destination sip:10.9.9.9"),
        (("rm", "1", "2", "3"), 2, "error: rm takes an id, or a set id and a URI"),
    ],
)
def test_errors_and_exit_codes(cli: Cli, argv: tuple[str, ...], code: int, message: str) -> None:
    cli.ok("add", "1", "sip:10.0.0.1")
    before = cli.show()
    rc, out, err = cli(*argv)
    assert (rc, out) == (code, "")
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert cli.show() == before


def test_duplicate_add_is_refused(cli: Cli) -> None:
    cli.ok("add", "1", "sip:10.0.0.1")
    rc, _, err = cli("add", "1", "SIP:10.0.0.1")
    assert rc == 1 and err.startswith("error: ") and "set 1 already has sip:10.0.0.1" in err
    assert len(cli.show()) == 1
    cli.ok("add", "2", "sip:10.0.0.1")  # another set may have it


def test_missing_config_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = Cli(capsys, tmp_path / "nope.toml")("show")
    assert rc == 2 and "nope.toml" in err and err.startswith("error: ")


def test_list_file_edits_keep_the_operators_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli = Cli(capsys, write_config(tmp_path, SOURCES["list"]))
    original = "# carrier gateways\n1 sip:10.0.0.1 0 0 duid=a # primary\n\n# backup\n1 sip:10.0.0.2\n"
    (tmp_path / "dispatcher.list").write_text(original)
    assert "Added line 6" in cli.ok("add", "1", "sip:10.0.0.3", "0", "0", "", "third")
    assert (tmp_path / "dispatcher.list").read_text() == original + "1 sip:10.0.0.3 0 0 # third\n"
    assert [r["id"] for r in cli.show()] == [2, 5, 6]  # ids are line numbers
    cli.ok("rm", "5")
    assert (tmp_path / "dispatcher.list").read_text() == (
        "# carrier gateways\n1 sip:10.0.0.1 0 0 duid=a # primary\n\n# backup\n1 sip:10.0.0.3 0 0 # third\n")
    (tmp_path / "dispatcher.list").write_text("1 sip:10.0.0.1 banana\n")
    rc, _, err = cli("add", "1", "sip:10.0.0.4")
    assert rc == 1 and f"{tmp_path / 'dispatcher.list'}:1: flags 'banana'" in err
    assert (tmp_path / "dispatcher.list").read_text() == "1 sip:10.0.0.1 banana\n"


def test_unreadable_database_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "db").mkdir()  # a folder where the database file should be: SQLite cannot open it
    cli = Cli(capsys, write_config(tmp_path, 'db_url = "sqlite:///db"'))
    rc, _, err = cli("show")
    assert rc == 1 and f"sqlite:///{tmp_path}/db" in err and "unable to open database file" in err


def test_database_down_hides_the_password(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"mysql+pymysql://kamailio:s3cret@127.0.0.1:{port}/kamailio"
    cli = Cli(capsys, write_config(tmp_path, f'db_url = "{url}"'))
    for argv in (("show",), ("add", "1", "sip:10.0.0.1"), ("rm", "1")):
        rc, _, err = cli(*argv)
        assert rc == 1, err
        assert f"mysql+pymysql://kamailio:***@127.0.0.1:{port}/kamailio" in err and "s3cret" not in err
        assert "Can't connect" in err or "Connection refused" in err


# -- live verbs: a real control server in front of a started plugin ----------------------------


@pytest.fixture
def live(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[tuple[Cli, Harness]]:
    h = Harness(tmp_path)
    server = ControlServer(h.registry, h.app.run_on_loop, ControlConfig(socket="b2bua.sock"), tmp_path)
    server.start()
    try:
        yield Cli(capsys, write_config(tmp_path, SOURCES["list"])), h
    finally:
        server.stop()
        h.stop()


def test_list_reload_set_state(live: tuple[Cli, Harness]) -> None:
    cli, h = live
    table = cli.ok("list").splitlines()
    assert table[0].split() == ["SET", "URI", "STATE", "PRIO", "EST_MS", "AVG_MS", "LOAD"]
    assert [line.split()[:4] for line in table[1:]] == [
        ["1", GW2, "AP", "5"], ["1", GW1, "AX", "0"], ["2", "sip:127.0.0.1:5070;transport=tcp", "AX", "0"]]
    assert json.loads(cli.ok("list", "--json")) == h.rpc("dispatcher.list")
    assert cli.ok("set-state", "dp", "1", GW1) == "Ok. Dispatcher state updated.\n"
    assert h.flags(1, GW1)["FLAGS"] == "DX"
    rc, _, err = cli("set-state", "x", "1", GW1)
    assert rc == 1 and err.startswith("error: dispatcher.set_state: 500 Unknown State Value")
    assert cli.ok("reload") == "Ok. Dispatcher successfully reloaded.\n"


def test_add_with_reload_puts_it_in_service(live: tuple[Cli, Harness]) -> None:
    cli, h = live
    out = cli.ok("add", "7", "sip:127.0.0.1:5099", "--reload")
    assert out.endswith("Ok. Dispatcher successfully reloaded.\n")
    assert h.flags(7, "sip:127.0.0.1:5099")["FLAGS"] == "AX"
    out = cli.ok("rm", "7", "sip:127.0.0.1:5099", "--reload")
    assert h.rpc("dispatcher.list")["NRSETS"] == 2


def test_failed_reload_names_the_line(live: tuple[Cli, Harness]) -> None:
    cli, h = live
    before = h.listing()
    h.list_file.write_text(LIST + "9 sip:127.0.0.1:5099 0 0 weight=0\n")
    rc, _, err = cli("reload")
    assert rc == 1
    assert err == (f"error: dispatcher.reload: 500 Reload Failed: {h.list_file}:5: attrs: weight=0: "
                   "must be 1..100\n")
    assert h.listing() == before


def test_b2bua_not_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli = Cli(capsys, write_config(tmp_path, SOURCES["sqlite"]))
    for argv in (("list",), ("reload",), ("set-state", "a", "1", "all")):
        rc, out, err = cli(*argv)
        assert (rc, out) == (2, "")
        assert err == f"error: cannot connect to {tmp_path / 'b2bua.sock'}: is the b2bua running?\n"
    rc, out, err = cli("add", "1", "sip:10.0.0.1", "--reload")
    assert rc == 2 and out.startswith("Added id 1")
    assert err.startswith("error: saved, but the reload failed: cannot connect")
    assert len(cli.show()) == 1  # the row is there; only the reload failed


# -- admin data cannot inject ------------------------------------------------------------------

_NAMES = st.one_of(st.sampled_from(["duid", "weight", "maxload", "prefix", "ping_from", "socket", "cc", "x"]),
                   st.from_regex(r"[A-Za-z_]{1,8}", fullmatch=True))
_VALUES = st.one_of(st.text(max_size=24), st.integers(-5, 200).map(str), st.just("sip:p@b2bua.example"),
                    st.text(max_size=12).map(lambda v: f'"{v}"'))
_ATTRS = st.one_of(
    st.text(max_size=80),
    st.lists(st.tuples(_NAMES, st.sampled_from(["=", ""]), _VALUES), max_size=5).map(
        lambda items: ";".join(f"{n}{eq}{v if eq else ''}" for n, eq, v in items)),
)
_DESCRIPTIONS = st.one_of(st.text(max_size=40), st.text(min_size=250, max_size=300),
                          st.sampled_from(["carrier A", " padded ", "a # b", "99 1 sip:forged\n", "\x1b[2J",
                                           "x" * 1000, "Köln", "\u202eevil", "tab\there", "\\"]))


def _same_attrs(a: Attrs, b: Attrs) -> bool:
    return a == b and a.body == b.body and dict(a.extra) == dict(b.extra)


@settings(max_examples=300, deadline=None)
@given(attrs=_ATTRS, description=_DESCRIPTIONS)
def test_whatever_add_writes_to_a_list_file_loads_back_identically(attrs: str, description: str) -> None:
    """add -> list file -> load (and show): the same entry and description, or a clear refusal."""
    existing = "# gateways\n1 sip:10.0.0.1 0 0 duid=a # first\n"
    try:
        dest = make_destination("1", "sip:10.0.0.2:5080;transport=tcp", "8", "5", attrs)
        text, line = list_add(existing, dest, description, "d.list")
    except (AdminError, ValueError) as exc:
        assert str(exc).isprintable() and "\n" not in str(exc)  # one line, whatever the input
        event("refused")
        return
    event("written")
    assert len(text.split("\n")[line - 1]) <= MAX_LINE
    loaded = parse_list(text, "d.list")
    assert [(d.setid, d.uri, d.flags, d.priority) for d in loaded] == [
        (1, "sip:10.0.0.1", 0, 0), (1, dest.uri, 8, 5)]
    assert _same_attrs(loaded[1].attrs, dest.attrs)
    assert _same_attrs(loaded[1].attrs, parse_attrs(attrs))
    assert [r["description"] for r in list_rows(text, "d.list")] == ["first", description.strip()]


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqlStore]:
    folder = tmp_path_factory.mktemp("property")
    with SqlStore(f"sqlite:///{folder}/d.db", names=TableNames(description="description")) as store:
        store.ensure_schema()
        with store._get_engine().begin() as conn:  # room for the longest description we accept
            conn.exec_driver_sql("DROP TABLE dispatcher")
            conn.exec_driver_sql("CREATE TABLE dispatcher (id INTEGER PRIMARY KEY AUTOINCREMENT, setid INT, "
                                 "destination VARCHAR(192), flags INT, priority INT, attrs VARCHAR(512), "
                                 "description VARCHAR(255))")
        yield store


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(attrs=_ATTRS, description=_DESCRIPTIONS)
def test_whatever_add_writes_to_a_table_loads_back_identically(sqlite_store: SqlStore, attrs: str,
                                                              description: str) -> None:
    """add -> SQL row -> load: the same entry and description, or a clear refusal."""
    with sqlite_store._get_engine().begin() as conn:
        conn.exec_driver_sql("DELETE FROM dispatcher")
    try:
        dest = make_destination("3", "sip:10.0.0.3", None, "-7", attrs)
        sqlite_store.add(dest.setid, dest.uri, dest.flags, dest.priority, dest.attrs.body,
                         check_description(description))
    except (AdminError, ValueError) as exc:
        assert str(exc).isprintable() and "\n" not in str(exc)
        assert sqlite_store.rows() == []  # nothing written
        event("refused")
        return
    event("written")
    (loaded,) = sqlite_store.load()
    assert (loaded.setid, loaded.uri, loaded.flags, loaded.priority) == (3, "sip:10.0.0.3", 0, -7)
    assert _same_attrs(loaded.attrs, dest.attrs)
    assert loaded.description == description.strip()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("add", "1", "sip:10.0.0.9?X-Injected=yes"), "error: bad URI: sip:10.0.0.9?X-Injected=yes: URI headers"
         " (?X-Injected=yes) are not allowed in a destination"),
        (("add", "1", "sip:10.0.0.9;transport=ws"), "transport 'ws' is not one this build can use"),
        (("add", "1", "wss:10.0.0.9"), "URI scheme 'wss' is not sip"),
        (("add", "1", "sip:10.0.0.9\r\nX-Injected: yes"), "bad URI: sip:10.0.0.9\\x0d\\x0aX-Injected:"),
        (("add", "1", "sip:10.0.0.9", "0", "0", "ping_from=sip:a@b?X-Injected=yes"),
         "error: bad attrs: ping_from=sip:a@b?X-Injected=yes: URI headers (?X-Injected=yes) are not allowed"),
        (("add", "1", "sip:10.0.0.9", "0", "0", "", "x" * 10_000),
         "error: description: 10000 characters long; the limit is 255"),
        (("add", "1", "sip:10.0.0.9", "0", "0", "", "ok\n99 1 sip:forged"), "error: description: must be one line"),
        (("add", "1", "sip:10.0.0.9", "0", "0", "", "red \x1b[31m"),
         "error: description: character \\x1b at position 5 is not printable"),
        (("add", "1", "sip:10.0.0.9", "0", "0", "prefix=\x1b[2J"), "error: bad attrs: character \\x1b at position 8"),
    ],
)
def test_add_refuses_what_would_inject_or_not_load(cli: Cli, argv: tuple[str, ...], message: str) -> None:
    cli.ok("add", "1", "sip:10.0.0.1")
    before = cli.show()
    rc, out, err = cli(*argv)
    assert (rc, out) == (1, "")
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert cli.show() == before


def test_a_line_longer_than_kamailios_limit_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli = Cli(capsys, write_config(tmp_path, SOURCES["list"]))
    (tmp_path / "dispatcher.list").write_text("")
    long_uri = "sip:" + "u" * 400 + "@10.0.0.2"
    cli.ok("add", "1", "sip:10.0.0.1", "0", "0", "x=" + "y" * 500, "z" * 255)  # 790 characters: fits
    rc, out, err = cli("add", "1", long_uri, "0", "0", "x=" + "y" * 500, "z" * 255)
    assert (rc, out) == (1, "")
    assert err == (f"error: cannot add to {tmp_path / 'dispatcher.list'}: the line would be 1180 characters long;"
                   " a list-file line holds 1023 (Kamailio's limit): shorten the attrs or the description\n")
    loaded = load_list_file(tmp_path / "dispatcher.list")
    assert [(d.uri, d.attrs.body, len(d.attrs.body)) for d in loaded] == [("sip:10.0.0.1", "x=" + "y" * 500, 502)]
    assert cli.show()[0]["description"] == "z" * 255


def test_show_escapes_forged_rows_from_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli = Cli(capsys, write_config(tmp_path, SOURCES["sqlite"]))
    cli.ok("add", "1", "sip:10.0.0.1", "0", "0", "", "real")
    with SqlStore(f"sqlite:///{tmp_path}/dispatcher.db") as store, store._get_engine().begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO dispatcher (setid, destination, attrs, description) VALUES (1, "
            "'sip:10.0.0.2' || char(10) || '99  sip:forged.example  0  0', 'a=' || char(27) || '[2J', "
            "'x' || char(13) || char(10) || '100  1  sip:evil  0  0  ' || char(27) || ']0;pwned' || char(7)"
            " || ' ' || char(155) || '31m ' || char(8238))")
    table = cli.ok("show")
    lines = table.splitlines()
    assert len(lines) == 3  # header + two rows: nothing forged
    assert all(line.isprintable() for line in lines)
    assert "sip:10.0.0.2\\n99  sip:forged.example  0  0" in lines[2]
    assert "a=\\x1b[2J" in lines[2]
    assert "x\\r\\n100  1  sip:evil  0  0  \\x1b]0;pwned\\x07 \\x9b31m \\u202e" in lines[2]
    shown = json.loads(cli.ok("show", "--json"))
    assert shown[1]["destination"] == "sip:10.0.0.2\n99  sip:forged.example  0  0"
    assert cli.ok("show", "--json").isascii()
    # the loader refuses the row, naming it; show is how the operator finds it
    rc, _, err = cli("simulate", "--set", "1", "--alg", "4")
    assert rc == 1 and "row id 2: sip:10.0.0.2\\x0a99" in err and err.count("\n") == 1


def test_show_escapes_list_file_comments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli = Cli(capsys, write_config(tmp_path, SOURCES["list"]))
    (tmp_path / "dispatcher.list").write_text("1 sip:10.0.0.1 0 0 # hand \x1b[31mwritten\x0b\x0cX\n")
    lines = cli.ok("show").splitlines()
    assert lines[1].endswith("hand \\x1b[31mwritten\\x0b\\x0cX") and len(lines) == 2


def test_show_creates_no_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cli = Cli(capsys, write_config(tmp_path, SOURCES["sqlite"]))
    assert cli.show() == []
    assert cli.ok("show").splitlines() == ["ID  SETID  DESTINATION  FLAGS  PRIORITY  ATTRS  DESCRIPTION"]
    assert not (tmp_path / "dispatcher.db").exists()


def test_unresolvable_host_warns_or_with_require_dns_is_refused(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    lookups: list[str] = []

    def fake_getaddrinfo(host: str, port: int, *args: object) -> list[tuple[Any, ...]]:
        lookups.append(host)
        if host == "gw.example.com":
            return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("192.0.2.10", port))]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    # no nameservers: the system resolver (stood in for above), never the machine's DNS
    monkeypatch.setattr("plugins.dispatcher.admin.effective_nameservers", lambda configured: ())
    cli.ok("add", "1", "sip:gw.example.com")
    rc, out, err = cli("add", "1", "sip:gone.example.com")
    assert rc == 0 and "Added" in out
    assert err == ("warning: dispatcher add: set 1 sip:gone.example.com: cannot resolve 'gone.example.com'"
                   " ([Errno -2] Name or service not known); set flag 16 (NODNS) to load it unresolved; added"
                   " all the same: the next reload fails while it does not resolve\n")
    rc, out, err = cli("add", "2", "sip:gone.example.com", "--require-dns")
    assert (rc, out) == (1, "")
    assert err.startswith("error: dispatcher add: set 2 sip:gone.example.com: cannot resolve 'gone.example.com'")
    cli.ok("add", "3", "sip:later.example.com", "16")  # NODNS: not looked up
    cli.ok("add", "3", "sip:10.0.0.1")  # an address: not looked up
    assert lookups == ["gw.example.com", "gone.example.com", "gone.example.com"]
    assert [(r["setid"], r["destination"]) for r in cli.show()] == [
        (1, "sip:gw.example.com"), (1, "sip:gone.example.com"), (3, "sip:later.example.com"), (3, "sip:10.0.0.1")]


def test_the_admin_modules_do_not_import_the_plugin() -> None:
    """No import cycle admin/cli <-> plugin: the CLI verbs load without the hook module."""
    code = ("import sys, plugins.dispatcher.admin, plugins.dispatcher.cli, plugins.dispatcher.simulate; "
            "print('plugins.dispatcher.plugin' in sys.modules, 'b2bua.control_cli' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == "False False\n"
