"""Log set-up: JSON lines with the call's fields as keys, the level changed at run time.

The set-up replaces loguru's process-wide sinks, so those tests run in a child process; the
JSON line itself is checked here on records taken from a sink of the test's own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from b2bua.logs import json_line, sink_level

ROOT = Path(__file__).resolve().parents[2]


def records_of(emit: Any) -> list[Any]:
    records: list[Any] = []
    sink = logger.add(lambda m: records.append(m.record), level="TRACE")
    try:
        emit()
    finally:
        logger.remove(sink)
    return records


def test_json_line_has_the_call_fields_as_keys() -> None:
    def emit() -> None:
        log = logger.bind(call_id="a84b4c76e66710@pc33")
        log.info("attempt {attempt} to {destination} failed: {code}", attempt=2, destination="sip:10.0.0.1", code=503,
                 setid=1)

    (record,) = records_of(emit)
    line = json_line(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "attempt 2 to sip:10.0.0.1 failed: 503"
    assert {k: data[k] for k in ("level", "call_id", "attempt", "destination", "code", "setid")} == {
        "level": "INFO", "call_id": "a84b4c76e66710@pc33", "attempt": 2, "destination": "sip:10.0.0.1", "code": 503,
        "setid": 1}
    assert data["time"].endswith("Z") and data["time"][10] == "T"
    assert data["logger"] == __name__ and data["function"] == "emit" and isinstance(data["line"], int)
    assert list(data)[:3] == ["time", "level", "message"]


def test_json_line_keeps_core_keys_and_escapes_what_the_wire_sent() -> None:
    def emit() -> None:
        logger.bind(call_id="-", level="forged", peer=("127.0.0.1", 5060)).warning("from {who}", who="\udcff\x1b")

    data = json.loads(json_line(records_of(emit)[0]))
    assert data["level"] == "WARNING"  # a bound field cannot replace a core key
    assert "call_id" not in data  # '-' means: about no call
    assert data["who"] == "\udcff\x1b" and data["peer"] == "('127.0.0.1', 5060)"


def test_json_line_carries_the_traceback() -> None:
    def emit() -> None:
        try:
            raise KeyError("gone")
        except KeyError:
            logger.opt(exception=True).error("lookup failed")

    data = json.loads(json_line(records_of(emit)[0]))
    assert data["exception"].startswith("Traceback") and data["exception"].endswith("KeyError: 'gone'")


@pytest.mark.parametrize(("name", "level"), [("debug", "DEBUG"), ("SUCCESS", "INFO"), ("Warning", "WARNING")])
def test_sink_level(name: str, level: str) -> None:
    assert sink_level(name) == level


@pytest.mark.parametrize("name", ["LOUD", "", 10, None])
def test_sink_level_refuses(name: Any) -> None:
    with pytest.raises(ValueError, match="is not a log level: use one of TRACE, DEBUG"):
        sink_level(name)


SCRIPT = """
import sys
from loguru import logger
from b2bua.config import LogConfig
from b2bua.logs import log_level, set_log_level, setup_logging, writes

assert writes.debug  # loguru's own default sink writes DEBUG
setup_logging(LogConfig(level="INFO", json={json}, file="b2bua.log"), base_dir=sys.argv[1])
assert not writes.debug  # hot paths skip their DEBUG calls
log = logger.bind(call_id="call-1")
log.info("attempt {{attempt}} to {{destination}}: {{code}}", attempt=1, destination="sip:gw", code=503)
log.debug("debug before")
set_log_level("debug")
assert writes.debug
log.debug("debug after <sip:x> {{not a field}}")
assert log_level() == "DEBUG"
set_log_level("ERROR")
assert not writes.debug
log.warning("warning hidden")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("boom")
logger.complete()
"""


def run_script(tmp_path: Path, as_json: bool) -> tuple[list[str], list[str]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(json=as_json), str(tmp_path)], capture_output=True,
                          text=True, timeout=60, env=env, check=False)
    assert done.returncode == 0, done.stderr
    return done.stderr.splitlines(), (tmp_path / "b2bua.log").read_text().splitlines()


def test_json_logs_and_a_level_change_at_run_time(tmp_path: Path) -> None:
    stderr, file_lines = run_script(tmp_path, as_json=True)
    assert stderr == file_lines  # the file gets the same lines
    lines = [json.loads(line) for line in stderr]  # every line is one JSON object, the traceback's too
    assert [(d["level"], d["message"]) for d in lines] == [
        ("INFO", "attempt 1 to sip:gw: 503"),
        ("INFO", "log level now DEBUG (was INFO)"),
        ("DEBUG", "debug after <sip:x> {not a field}"),
        ("INFO", "log level now ERROR (was DEBUG)"),
        ("ERROR", "boom"),
    ]
    assert (lines[0]["call_id"], lines[0]["destination"], lines[0]["code"]) == ("call-1", "sip:gw", 503)
    assert "ZeroDivisionError" in lines[-1]["exception"]


def test_text_logs_change_level_too(tmp_path: Path) -> None:
    stderr, file_lines = run_script(tmp_path, as_json=False)
    assert stderr[0].endswith(" INFO    call-1 attempt 1 to sip:gw: 503")
    assert [line.split(maxsplit=4)[-1] for line in file_lines if "Traceback" not in line][:4] == [
        "attempt 1 to sip:gw: 503", "log level now DEBUG (was INFO)", "debug after <sip:x> {not a field}",
        "log level now ERROR (was DEBUG)"]
    assert not any("hidden" in line or "debug before" in line for line in stderr)


def test_the_debug_flag_follows_verbosity(tmp_path: Path) -> None:
    script = """
from b2bua.config import LogConfig
from b2bua.logs import setup_logging, writes
setup_logging(LogConfig(level="INFO"), 1)
assert writes.debug, "-v at INFO writes DEBUG"
setup_logging(LogConfig(level="WARNING"), 1)
assert not writes.debug, "-v at WARNING writes INFO"
setup_logging(LogConfig(level="TRACE"))
assert writes.debug
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env,
                          check=False)
    assert done.returncode == 0, done.stderr
