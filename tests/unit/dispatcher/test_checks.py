"""Load-time checks Kamailio does not make: empty list files, duplicates, weights; and check-config."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from b2bua.cli import main
from plugins.dispatcher.checks import EmptySource, check_loaded, check_sources, review, weight_warnings
from plugins.dispatcher.config import DispatcherConfig, Route
from plugins.dispatcher.listfile import ListFileError, parse_list
from plugins.dispatcher.model import Attrs, Destination, Snapshot, build_snapshot
from plugins.dispatcher.plugin import load_configured
from plugins.dispatcher.sqlstore import SqlStore


def snap(text: str) -> Snapshot:
    return build_snapshot(parse_list(text, "d.list"), "d.list")


# -- empty sources -----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n\n", "# all gone\n# 1 sip:10.0.0.1\n"])
def test_an_empty_list_file_is_an_error(text: str) -> None:
    with pytest.raises(EmptySource) as info:
        review(snap(text), DispatcherConfig(), Path("/etc/b2bua/dispatcher.list"))
    assert str(info.value) == (
        "/etc/b2bua/dispatcher.list: no destinations (only blank or comment lines): refusing to remove every"
        " gateway; set allow_empty = true in [plugins.dispatcher] if that is what you want")


def test_allow_empty_loads_it_with_a_warning() -> None:
    cfg = DispatcherConfig(list_file="d.list", allow_empty=True)
    assert review(snap("# nothing\n"), cfg, Path("d.list")) == ["d.list: no destinations: every call gets 503"]


def test_an_empty_table_only_warns() -> None:
    empty = Snapshot({}, "sqlite:///d.db table dispatcher")
    assert review(empty, DispatcherConfig(), None) == [
        "sqlite:///d.db table dispatcher: no destinations: every call gets 503"]


def test_the_loader_refuses_an_empty_list_file_and_keeps_going_with_allow_empty(tmp_path: Path) -> None:
    (tmp_path / "d.list").write_text("# nothing yet\n")
    with pytest.raises(EmptySource):
        load_configured(DispatcherConfig(list_file="d.list"), tmp_path / "d.list")
    loaded = load_configured(DispatcherConfig(list_file="d.list", allow_empty=True), tmp_path / "d.list")
    assert loaded.sets == {}


# -- duplicates --------------------------------------------------------------------------------


def test_duplicates_load_twice_with_a_warning_naming_the_lines(tmp_path: Path, warnings: list[str]) -> None:
    (tmp_path / "d.list").write_text("1 sip:10.0.0.1\n2 sip:10.0.0.1\n\n1 SIP:10.0.0.1 0 5\n1 sip:10.0.0.2\n")
    loaded = load_configured(DispatcherConfig(list_file="d.list"), tmp_path / "d.list", resolve=False)
    assert [d.uri for d in loaded.sets[1].destinations] == ["SIP:10.0.0.1", "sip:10.0.0.2", "sip:10.0.0.1"]
    assert [w for w in warnings if "listed" in w] == [
        "dispatcher: set 1: sip:10.0.0.1 is listed 2 times (line 1, line 4); loaded 2 times as Kamailio does"
        " (that many shares of round robin and hashes, one shared state): remove one, or use weight= for an"
        " uneven split"]


def test_duplicate_rows_name_their_ids(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/d.db"
    with SqlStore(url) as store:
        store.ensure_schema()
        for uri in ("sip:10.0.0.1", "sip:10.0.0.2"):
            store.add(1, uri)
        with store._get_engine().begin() as conn:  # a second row the CLI would refuse
            conn.exec_driver_sql("INSERT INTO dispatcher (setid, destination) VALUES (1, 'sip:10.0.0.1')")
        loaded = build_snapshot(store.load(), url)
    (message,) = review(loaded, DispatcherConfig(), None)
    assert message.startswith("set 1: sip:10.0.0.1 is listed 2 times (row id 1, row id 3)")


# -- weights -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "routes", "expected"),
    [
        # complete: nothing to say
        ("1 sip:a 0 0 weight=75\n1 sip:b 0 0 weight=25\n", [], []),
        # a new entry without weight comes first in Kamailio's array order: no table, 100 % to it
        ("1 sip:a 0 0 weight=50\n1 sip:b 0 0 weight=50\n1 sip:new\n", [],
         ["set 1: weighted, but sip:new has no weight; algorithm 9 would send sip:new 100 %, sip:b 0 %, sip:a 0 %"]),
        # a weighted first entry: the unweighted ones get nothing, the last gets the rest
        ("1 sip:a\n1 sip:b\n1 sip:c 0 0 weight=30\n", [],
         ["set 1: weighted, but sip:b, sip:a have no weight; algorithm 9 would send sip:c 30 %, sip:b 0 %,"
          " sip:a 70 %"]),
        ("1 sip:a 0 0 weight=60\n1 sip:b 0 0 weight=60\n", [],
         ["set 1: weights add up to 120, not 100; algorithm 9 would send sip:b 60 %, sip:a 40 %"]),
        ("1 sip:a\n1 sip:b\n", [Route(set=1, algorithm=9)],
         ["set 1: a rule uses algorithm 9 (weight) but no entry has a weight: every call goes to sip:b"]),
        ("1 sip:a\n1 sip:b\n", [Route(set=1, algorithm=4)], []),
        ("1 sip:a 0 0 rweight=10\n1 sip:b\n", [],
         ["set 1: relative-weighted, but sip:b has no rweight: algorithm 11 gives it no calls"]),
        ("1 sip:a\n1 sip:b\n", [Route(set=1, algorithm=11)],
         ["set 1: a rule uses algorithm 11 (relative-weight) but no entry has an rweight: every call goes to"
          " sip:b"]),
        ("1 sip:a\n", [Route(set=1, algorithm=9)], []),  # one entry: weights change nothing
    ],
)
def test_weight_warnings(text: str, routes: list[Route], expected: list[str]) -> None:
    assert weight_warnings(snap(text), routes) == expected


def test_check_loaded_logs_every_warning_and_returns_the_snapshot(warnings: list[str]) -> None:
    loaded = build_snapshot([Destination(1, "sip:a", attrs=Attrs(weight=40)), Destination(1, "sip:b")], "x")
    assert check_loaded(loaded, DispatcherConfig(), None) is loaded
    assert warnings == ["dispatcher: set 1: weighted, but sip:b has no weight; algorithm 9 would send sip:b 100 %,"
                        " sip:a 0 %"]


# -- check-config ------------------------------------------------------------------------------


def write(folder: Path, section: str, list_text: str | None = None) -> Path:
    path = folder / "config.toml"
    path.write_text(f'[plugins]\nenabled = ["dispatcher"]\n[plugins.dispatcher]\n{section}\n'
                    '[[plugins.dispatcher.routes]]\nset = 1\nalgorithm = "weight"\n')
    if list_text is not None:
        (folder / "d.list").write_text(list_text)
    return path


@pytest.fixture
def check_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """``b2bua check-config`` in-process, without its logging set-up: that would leave a sink on
    this test's captured stderr for every later test (``warnings`` sees what it logs)."""
    monkeypatch.setattr("b2bua.logs.setup_logging", lambda *args, **kwargs: None)


@pytest.mark.usefixtures("check_config")
def test_check_config_reads_the_list_file(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          warnings: list[str]) -> None:
    config = write(tmp_path, 'list_file = "d.list"', "1 sip:10.0.0.1 0 0 weight=50\n1 sip:10.0.0.2\n")
    assert main(["check-config", "-c", str(config)]) == 0
    assert capsys.readouterr().out == f"{config}: OK (plugins: dispatcher)\n"
    assert [w for w in warnings if "weighted" in w] == [
        "dispatcher: set 1: weighted, but sip:10.0.0.2 has no weight; algorithm 9 would send sip:10.0.0.2 100 %,"
        " sip:10.0.0.1 0 %"]

    (tmp_path / "d.list").write_text("1 sip:10.0.0.1?X-Injected=yes\n1 sip:10.0.0.2 0 0 weight=0\n")
    assert main(["check-config", "-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'd.list'}:1: sip:10.0.0.1?X-Injected=yes: URI headers" in err
    assert f"{tmp_path / 'd.list'}:2: attrs: weight=0: must be 1..100" in err

    (tmp_path / "d.list").write_text("# empty\n")
    assert main(["check-config", "-c", str(config)]) == 2
    assert "no destinations (only blank or comment lines)" in capsys.readouterr().err


@pytest.mark.usefixtures("check_config")
def test_check_config_reads_a_table_without_creating_one(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         warnings: list[str]) -> None:
    config = write(tmp_path, 'db_url = "sqlite:///d.db"')
    assert main(["check-config", "-c", str(config)]) == 0
    assert warnings == [f"dispatcher: destinations not checked: sqlite:///{tmp_path}/d.db: no such database file"
                        " (a read-only command creates nothing)"]
    assert not (tmp_path / "d.db").exists()
    with SqlStore(f"sqlite:///{tmp_path}/d.db") as store:
        store.ensure_schema()
        store.add(1, "sip:10.0.0.1")
        store.add(1, "sip:10.0.0.2")
    assert main(["check-config", "-c", str(config)]) == 0
    assert "dispatcher: set 1: a rule uses algorithm 9 (weight) but no entry has a weight: every call goes to" \
        " sip:10.0.0.2" in warnings
    with SqlStore(f"sqlite:///{tmp_path}/d.db") as store, store._get_engine().begin() as conn:
        conn.exec_driver_sql("INSERT INTO dispatcher (setid, destination) VALUES (1, 'sip:10.0.0.3?X-Injected=yes')")
    assert main(["check-config", "-c", str(config)]) == 2
    assert "row id 3: sip:10.0.0.3?X-Injected=yes: URI headers" in capsys.readouterr().err


@pytest.mark.usefixtures("check_config")
@pytest.mark.parametrize(("url", "message"), [
    pytest.param("mysql+pymysql://u:secret@127.0.0.1:1/db",
                 "error: mysql+pymysql://u:***@127.0.0.1:1/db: the database driver PyMySQL is not installed"
                 " (import of pymysql halted; None in sys.modules): .venv/bin/pip install -e '.[mysql]' in ",
                 id="pymysql"),
    pytest.param("postgresql+psycopg://u:secret@127.0.0.1:1/db",
                 "error: postgresql+psycopg://u:***@127.0.0.1:1/db: the database driver psycopg is not installed"
                 " (import of psycopg halted; None in sys.modules): .venv/bin/pip install -e '.[postgresql]' in ",
                 id="psycopg"),
    pytest.param("nosuchdb://h/db", "error: nosuchdb://h/db: cannot use this database: Can't load plugin:"
                 " sqlalchemy.dialects:nosuchdb", id="unknown-database"),
])
def test_check_config_fails_where_run_would_on_a_url_that_cannot_work(
        url: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], warnings: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing driver is not a database that may be up later: b2bua run stops on it (exit 2)."""
    monkeypatch.setitem(sys.modules, "pymysql", None)  # the import fails as when not installed
    monkeypatch.setitem(sys.modules, "psycopg", None)
    config = write(tmp_path, f'db_url = "{url}"')
    assert main(["check-config", "-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "secret" not in err and not [w for w in warnings if "not checked" in w]


def test_check_sources_names_an_unreadable_list_file(tmp_path: Path) -> None:
    with pytest.raises(ListFileError, match=f"^{tmp_path}/no-such.list: cannot read: No such file or directory$"):
        check_sources(DispatcherConfig(list_file="no-such.list"), tmp_path / "no-such.list")
