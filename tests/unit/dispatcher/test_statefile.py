"""The admin state file: format, atomic writes, and operator disables surviving reload and restart."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

from plugins.dispatcher.statefile import (
    StateFileError,
    StateWriter,
    atomic_write_text,
    format_state,
    parse_state,
    read_state_file,
    split_loaded,
    with_entries,
)

from .test_rpc import GW1, GW2, GW3, LIST, Harness

# -- pure parts --------------------------------------------------------------------------------


def test_format_is_stable_and_readable() -> None:
    disabled = {(2, "sip:b"): "sip:B", (1, "sip:z"): "sip:z", (1, "sip:a"): "sip:a"}
    text = format_state(disabled)
    assert text == (
        '{\n  "version": 1,\n  "disabled": [\n'
        '    {"setid": 1, "uri": "sip:a"},\n'
        '    {"setid": 1, "uri": "sip:z"},\n'
        '    {"setid": 2, "uri": "sip:B"}\n'
        "  ]\n}\n"
    )
    assert parse_state(text, "x") == disabled
    assert parse_state(format_state({}), "x") == {}
    assert json.loads(format_state({})) == {"version": 1, "disabled": []}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "s.json: not JSON: "),
        ("[]", "s.json: expected a JSON object, got list"),
        ('{"disabled": []}', "s.json: version None is not 1"),
        ('{"version": 2, "disabled": []}', "s.json: version 2 is not 1"),
        ('{"version": 1, "disabled": {}}', 's.json: "disabled" must be a list'),
        ('{"version": 1, "disabled": [{"setid": "1", "uri": "sip:a"}]}',
         "s.json: disabled[0]: \"setid\" must be an integer >= 0, got '1'"),
        ('{"version": 1, "disabled": [{"setid": 1, "uri": "sip:a"}, {"setid": 1}]}',
         's.json: disabled[1]: "uri" must be a non-empty string, got None'),
        ('{"version": 1, "disabled": [7]}', 's.json: disabled[0]: "setid" must be an integer >= 0, got None'),
    ],
)
def test_malformed_text_says_where(text: str, message: str) -> None:
    with pytest.raises(StateFileError) as err:
        parse_state(text, "s.json")
    assert str(err.value).startswith(message)


def test_with_entries_and_split_loaded() -> None:
    d = with_entries({}, [(1, "sip:A"), (2, "sip:b")], disable=True)
    assert d == {(1, "sip:a"): "sip:A", (2, "sip:b"): "sip:b"}
    assert with_entries(d, [(1, "SIP:a")], disable=False) == {(2, "sip:b"): "sip:b"}
    kept, dropped = split_loaded(d, lambda key: key[0] == 1)
    assert (kept, dropped) == ({(1, "sip:a"): "sip:A"}, {(2, "sip:b"): "sip:b"})


def test_read_state_file(tmp_path: Path) -> None:
    assert read_state_file(tmp_path / "missing.json") == {}
    with pytest.raises(StateFileError, match="cannot read"):
        read_state_file(tmp_path)  # a folder
    bad = tmp_path / "bad.json"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(StateFileError, match="not UTF-8"):
        read_state_file(bad)


def test_atomic_write_keeps_the_mode_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    atomic_write_text(path, "one")
    assert (path.stat().st_mode & 0o777) == 0o644
    os.chmod(path, 0o600)
    atomic_write_text(path, "two")
    assert path.read_text() == "two" and (path.stat().st_mode & 0o777) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json"]


def test_writer_writes_the_latest_content(tmp_path: Path) -> None:
    writer = StateWriter(tmp_path / "s.json")
    for n in range(50):
        writer.save({(1, f"sip:{n}"): f"sip:{n}"})
    assert writer.flush()
    assert read_state_file(tmp_path / "s.json") == {(1, "sip:49"): "sip:49"}
    writer.close()
    writer.save({})  # after close: written at once rather than lost
    assert read_state_file(tmp_path / "s.json") == {}


@pytest.fixture
def errors() -> Iterator[list[str]]:
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="ERROR", format="{message}")
    yield messages
    logger.remove(sink)


def test_writer_logs_a_failed_write(tmp_path: Path, errors: list[str]) -> None:
    writer = StateWriter(tmp_path / "no-such-dir" / "s.json")
    writer.save({(1, "sip:a"): "sip:a"})
    assert writer.flush()
    assert any("cannot write the admin state file" in m for m in errors), errors
    writer.close()


# -- the plugin: operator disables survive reload and restart ----------------------------------


def saved(h: Harness) -> dict[tuple[int, str], str]:
    assert h.plugin.flush_admin_state()
    return read_state_file(h.state_file)


def test_disable_survives_a_restart(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.rpc("dispatcher.set_state", "d", 1, GW1.upper())
    assert saved(h) == {(1, GW1.lower()): GW1}
    h.stop()
    again = Harness(tmp_path)  # a new process: new plugin instance, same files
    assert again.flags(1, GW1)["FLAGS"] == "DX"
    assert again.flags(1, GW2)["FLAGS"] == "AP"
    again.rpc("dispatcher.set_state", "ap", 1, GW1)
    assert saved(again) == {}
    third = Harness(tmp_path)
    assert third.flags(1, GW1)["FLAGS"] == "AX"


@pytest.mark.parametrize("keep_state", [True, False])
def test_disable_survives_a_reload_even_when_the_file_changes_the_entry(tmp_path: Path, keep_state: bool) -> None:
    h = Harness(tmp_path, {"keep_state_on_reload": keep_state})
    h.rpc("dispatcher.set_state", "d", 1, GW2)
    h.list_file.write_text(LIST.replace(f"{GW2} 8 5", f"{GW2} 0 9"))  # configured flags change
    h.rpc("dispatcher.reload")
    assert h.flags(1, GW2)["FLAGS"] == "DX"
    assert h.flags(1, GW2)["PRIORITY"] == 9


def test_sighup_reload_keeps_the_disable(tmp_path: Path) -> None:
    h = Harness(tmp_path, {"keep_state_on_reload": False})
    h.rpc("dispatcher.set_state", "d", 2, "all")
    h.pm.hook.b2bua_reload(app=h.app)
    for _ in range(100):  # the reload thread hands the swap to the loop
        if h.plugin.try_exclusive():
            h.plugin.end_exclusive()
            break
        time.sleep(0.02)
    assert h.flags(2, GW3)["FLAGS"] == "DX"


@pytest.mark.parametrize("state", ["a", "i", "tp", "1"])
def test_any_other_state_takes_the_entry_out(tmp_path: Path, state: str) -> None:
    h = Harness(tmp_path)
    h.rpc("dispatcher.set_state", "2", 1, "all")
    assert set(saved(h)) == {(1, GW1.lower()), (1, GW2.lower())}
    h.rpc("dispatcher.set_state", state, 1, GW1)
    assert set(saved(h)) == {(1, GW2.lower())}


def test_duid_disable_is_kept(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.rpc("dispatcher.set_duid_state", "d", 1, "gw2")
    assert saved(h) == {(1, GW2.lower()): GW2}


def test_entries_no_longer_loaded_are_forgotten(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.rpc("dispatcher.set_state", "d", 1, "all")
    h.list_file.write_text(f"1 {GW2} 8 5 duid=gw2\n")
    h.rpc("dispatcher.reload")
    assert saved(h) == {(1, GW2.lower()): GW2}
    h.rpc("dispatcher.remove", 1, GW2)
    assert saved(h) == {}


@pytest.mark.parametrize(
    "content", [b"{not json", b'{"version": 99}', b"\xff", b'{"version": 1, "disabled": [{"setid": -1}]}']
)
def test_a_malformed_state_file_never_stops_start_up(tmp_path: Path, content: bytes, errors: list[str]) -> None:
    (tmp_path / "state.json").write_bytes(content)
    h = Harness(tmp_path)
    assert h.flags(1, GW1)["FLAGS"] == "AX"
    assert any("ignoring the admin state file" in m and "state.json" in m for m in errors), errors
    assert (tmp_path / "state.json").read_bytes() == content  # kept for the operator to look at
    h.rpc("dispatcher.set_state", "d", 1, GW1)
    assert saved(h) == {(1, GW1.lower()): GW1}


def test_state_file_off(tmp_path: Path) -> None:
    h = Harness(tmp_path, {"state_file": ""})
    h.rpc("dispatcher.set_state", "d", 1, GW1)
    assert h.plugin.flush_admin_state()
    assert not h.state_file.exists()
    assert h.flags(1, GW1)["FLAGS"] == "DX"
