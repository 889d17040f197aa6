"""The load in a child process: the same snapshot and the same errors as loading in-process."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from loguru import logger

from b2bua.loop import run_task_now
from plugins.dispatcher.childload import (
    ChildLoad,
    ConfiguredSource,
    LoadRequest,
    decode,
    encode,
    frames,
    snapshot_steps,
)
from plugins.dispatcher.config import DispatcherConfig
from plugins.dispatcher.model import Attrs, Destination, Snapshot
from plugins.dispatcher.resolve import LoadError
from plugins.dispatcher.source import load_configured
from plugins.dispatcher.sqlstore import SqlStore

LIST = """# setid uri flags priority attrs
1 sip:127.0.0.1:5061 0 0 duid=gw1;weight=50;prefix=49
1 127.0.0.1:5062 8 5 duid=gw2
2 sip:127.0.0.1:5070;transport=tcp 16
"""


def child_snapshot(request: LoadRequest) -> Snapshot:
    return run_task_now(snapshot_steps(ChildLoad(request).run()))


def same(a: Snapshot, b: Snapshot) -> None:
    assert a.source == b.source
    assert list(a.sets) == list(b.sets)
    for setid in a.sets:
        assert a.sets[setid].destinations == b.sets[setid].destinations
        assert [dict(d.attrs.extra) for d in a.sets[setid].destinations] == [
            dict(d.attrs.extra) for d in b.sets[setid].destinations]


def test_encode_decode_round_trip() -> None:
    dest = Destination(3, "sip:gw:5080", 8, 7, Attrs(body="duid=x;prefix=1", duid="x", weight=5, extra={"prefix": "1"}),
                       "desc", 12, ("10.0.0.1", 5080, "udp"))
    back = decode(encode(dest))
    assert back == dest and dict(back.attrs.extra) == {"prefix": "1"}


def test_a_list_file_loads_as_it_does_in_process(tmp_path: Path) -> None:
    path = tmp_path / "dispatcher.list"
    path.write_text(LIST)
    cfg = DispatcherConfig(list_file=str(path))
    same(child_snapshot(ConfiguredSource(cfg, path).request), load_configured(cfg, path))


def test_a_database_loads_as_it_does_in_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'd.db'}"
    store = SqlStore(url)
    store.ensure_schema()
    store.add(1, "sip:127.0.0.1:5061", 0, 0, "duid=a", "first")
    store.add(2, "sip:127.0.0.1:5062", 8, 3, "", "second")
    store.close()
    cfg = DispatcherConfig(db_url=url)
    same(child_snapshot(ConfiguredSource(cfg, None).request), load_configured(cfg, None))


def test_a_reload_creates_no_database_and_no_table(tmp_path: Path) -> None:
    # a reload after the table was dropped (or the SQLite file moved away) created an empty
    # one and answered "Ok. Dispatcher successfully reloaded." with every gateway gone; it is a
    # failed reload now (the destinations in use stay), as in Kamailio. Start-up still creates.
    url = f"sqlite:///{tmp_path / 'd.db'}"
    cfg = DispatcherConfig(db_url=url)
    with pytest.raises(LoadError, match="no such database file"):
        child_snapshot(ConfiguredSource(cfg, None).request)
    assert not (tmp_path / "d.db").exists()
    store = SqlStore(url)
    store.ensure_schema()
    store.add(1, "sip:127.0.0.1:5061", 0, 0, "", "")
    store.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "d.db")) as db, db:
        db.execute("DROP TABLE dispatcher")
    with pytest.raises(LoadError, match="table 'dispatcher' does not exist"):
        child_snapshot(ConfiguredSource(cfg, None).request)
    with contextlib.closing(sqlite3.connect(tmp_path / "d.db")) as db:
        assert db.execute("SELECT name FROM sqlite_master WHERE name = 'dispatcher'").fetchone() is None
    assert load_configured(cfg, None).sets == {}  # start-up: created, empty


def test_errors_are_the_in_process_errors(tmp_path: Path) -> None:
    path = tmp_path / "dispatcher.list"
    path.write_text(LIST + "3 sip:127.0.0.1:5080 banana\n4\n")
    cfg = DispatcherConfig(list_file=str(path))
    with pytest.raises(LoadError) as in_process:
        load_configured(cfg, path)
    with pytest.raises(LoadError) as child:
        child_snapshot(ConfiguredSource(cfg, path).request)
    assert str(child.value) == str(in_process.value)
    assert f"{path}:5: flags 'banana'" in str(child.value)


def test_a_load_that_hangs_is_killed(tmp_path: Path) -> None:
    fifo = tmp_path / "never-written.list"
    os.mkfifo(fifo)  # opening it for reading blocks until someone writes: a hung source
    load = ChildLoad(LoadRequest(DispatcherConfig(), fifo), timeout=0.5)
    started = time.monotonic()
    with pytest.raises(LoadError, match=r"did not finish within 0\.5 s"):
        load.run()
    assert time.monotonic() - started < 10


def test_a_load_is_stopped_at_shutdown(tmp_path: Path) -> None:
    fifo = tmp_path / "never-written.list"
    os.mkfifo(fifo)
    load = ChildLoad(LoadRequest(DispatcherConfig(), fifo))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            load.run()
        except LoadError as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    time.sleep(0.3)
    load.kill()
    worker.join(10)
    assert not worker.is_alive()
    assert errors and "stopped" in str(errors[0])


def test_cut_output_is_an_error() -> None:
    with pytest.raises(LoadError, match="cut short"):
        frames(b"\x00\x00\x01\x00abc")
    with pytest.raises(LoadError, match="without its result"):
        run_task_now(snapshot_steps([]))


def test_what_the_load_logs_is_logged_here(tmp_path: Path) -> None:
    path = tmp_path / "dispatcher.list"
    path.write_text(LIST + "1 sip:127.0.0.1:5061\n")  # gw1 twice in set 1
    logged: list[str] = []
    sink = logger.add(logged.append, level="WARNING", format="{message}")
    try:
        snapshot = child_snapshot(ConfiguredSource(DispatcherConfig(list_file=str(path)), path).request)
    finally:
        logger.remove(sink)
    assert len(snapshot.sets[1].destinations) == 3
    assert any("sip:127.0.0.1:5061 is listed 2 times (line 2, line 5)" in m for m in logged), logged
