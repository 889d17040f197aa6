"""Call records over real SIP: sipp calls through the dispatcher and failover plugins, and the
records the cdr plugin wrote (JSON lines, SQLite) say what the caller and the gateways saw.

One B2BUA routes by the Request-URI's first digit to a set per story: 1 answered, 2 a 503 then
answered, 3 every gateway failed, 4 the caller cancels, 5 the callee hangs up.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from .configs import ListEntry, b2bua_config, toml_table, write_list_file
from .conftest import B2buaFactory, GatewayFactory
from .harness import AddressAllocator, B2buaProcess, Caller, free_port, wait_until

STORIES = {"answered": 1, "failover": 2, "all-failed": 3, "cancel": 4, "callee-hangup": 5}


def cdr_config(ip: str, port: int, *, cdr: dict[str, Any], routes: list[dict[str, Any]] | None = None) -> str:
    """The e2e config with the cdr plugin enabled after dispatcher and failover."""
    text = b2bua_config(ip, port, routes=routes or [
        {"ruri_user_prefix": str(setid), "set": setid, "algorithm": "priority"} for setid in STORIES.values()],
        failover={"failover_codes": ["5xx", "408"], "attempt_timeout": 2.0})
    enabled = 'enabled = ["dispatcher", "failover"]'
    assert enabled in text
    return text.replace(enabled, 'enabled = ["dispatcher", "failover", "cdr"]') + "\n" + toml_table("plugins.cdr", cdr)


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_records(path: Path, count: int) -> list[dict[str, Any]]:
    wait_until(lambda: len(records(path)) >= count, timeout=10, what=f"{count} records in {path.name}")
    found = records(path)
    assert len(found) == count, found
    return found


def test_records_of_answered_failed_over_failed_cancelled_and_callee_hung_up_calls(
        gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory, caller: Caller, workdir: Path,
        addresses: AddressAllocator) -> None:
    answering, busy, broken = gateway_factory("answer"), gateway_factory("reject:503"), gateway_factory("reject:500")
    ringing, hanging_up = gateway_factory("ring"), gateway_factory("hangup:300")
    write_list_file(workdir, [
        ListEntry(1, answering.uri),
        ListEntry(2, busy.uri, priority=10), ListEntry(2, answering.uri, priority=5),
        ListEntry(3, busy.uri, priority=10), ListEntry(3, broken.uri, priority=5),
        ListEntry(4, ringing.uri),
        ListEntry(5, hanging_up.uri),
    ])
    ip = addresses.next()
    port = free_port(ip, "udp")
    b2b = b2bua_factory(cdr_config(ip, port, cdr={"db_url": "sqlite:///cdr.db", "node": "e2e"}))

    runs = {
        "answered": caller.run_calls(ip, port, service="1001", from_user="alice", call_duration_ms=1200),
        "failover": caller.run_calls(ip, port, service="2002", from_user="bob", call_duration_ms=200),
        "all-failed": caller.run_calls(ip, port, service="3003", behaviour="expect:503"),
        "cancel": caller.run_calls(ip, port, service="4004", behaviour="cancel", cancel_after_ms=300),
        "callee-hangup": caller.run_calls(ip, port, service="5005", behaviour="hangup-by-callee"),
    }
    for name, result in runs.items():
        assert result.ok, (name, result.describe())
    path = workdir / "cdr.jsonl"
    by_call_id = {r["call_id"]: r for r in wait_records(path, len(runs))}
    got = {name: by_call_id[result.calls[0].call_id] for name, result in runs.items()}

    # what every record has: the caller as sipp sent it, the source, the node
    for name, record in got.items():
        assert record["node"] == "e2e" and len(record["cdr_id"]) == 32
        assert (record["source_ip"], record["transport"]) == (caller.ip, "udp")
        # sipp's From is sip:USER@its-address:its-port, and it sends from that port
        assert record["from_uri"] == f"sip:{record['from_user']}@{caller.ip}:{record['source_port']}"
        assert record["request_uri"].startswith(f"sip:{record['callee']}@{ip}")
        assert record["setup_time"] <= record["end_time"] and record["duration"] >= 0
        # the caller's final answer as the caller saw it
        assert record["final_code"] == runs[name].final_codes[0], (name, record)

    answered = got["answered"]
    assert (answered["from_user"], answered["callee"], got["failover"]["from_user"]) == ("alice", "1001", "bob")
    assert (answered["end_cause"], answered["hangup_by"], answered["final_reason"]) == ("caller-hangup", "caller", "OK")
    assert (answered["setid"], answered["destination"]) == (1, answering.uri)
    assert answered["setup_time"] <= answered["answer_time"] <= answered["end_time"]
    assert answered["billmsec"] > 0 and answered["billsec"] == -(-answered["billmsec"] // 1000)
    (attempt,) = answered["attempts"]
    assert (attempt["attempt"], attempt["setid"], attempt["destination"], attempt["code"], attempt["kind"]) == (
        1, 1, answering.uri, 200, "answered")
    assert attempt["request_uri"].startswith(f"sip:1001@{answering.ip}:{answering.port}")

    failover = got["failover"]
    assert [(a["attempt"], a["destination"], a["code"], a["kind"]) for a in failover["attempts"]] == [
        (1, busy.uri, 503, "response"), (2, answering.uri, 200, "answered")]
    assert (failover["destination"], failover["final_code"], failover["hangup_by"]) == (answering.uri, 200, "caller")

    failed = got["all-failed"]
    assert [(a["destination"], a["code"]) for a in failed["attempts"]] == [(busy.uri, 503), (broken.uri, 500)]
    assert (failed["final_code"], failed["final_reason"], failed["end_cause"], failed["hangup_by"]) == (
        503, "Service Unavailable", "failed", "b2bua")
    assert (failed["answer_time"], failed["billsec"], failed["destination"]) == (None, 0, broken.uri)

    cancelled = got["cancel"]
    assert (cancelled["final_code"], cancelled["end_cause"], cancelled["hangup_by"]) == (487, "caller-cancel",
                                                                                         "caller")
    assert [(a["destination"], a["code"], a["kind"]) for a in cancelled["attempts"]] == [
        (ringing.uri, 487, "cancelled")]
    assert ringing.count("CANCEL") == 1

    hung_up = got["callee-hangup"]
    assert (hung_up["final_code"], hung_up["end_cause"], hung_up["hangup_by"]) == (200, "callee-hangup", "callee")

    # the same records in SQLite, once the writer is done (stopping flushes it)
    assert b2b.rpc("cdr.stats")["written"] == len(runs)
    assert b2b.stop() == 0
    engine = sa.create_engine(f"sqlite:///{workdir / 'cdr.db'}")
    with engine.connect() as conn:
        rows = {r["call_id"]: r for r in conn.execute(sa.text("SELECT * FROM cdr")).mappings()}
        attempts = conn.execute(sa.text("SELECT cdr_id, attempt, destination, code FROM cdr_attempts"
                                        " ORDER BY cdr_id, attempt")).all()
    engine.dispose()
    assert rows.keys() == by_call_id.keys()
    for call_id, record in by_call_id.items():
        row = rows[call_id]
        assert (row["cdr_id"], row["final_code"], row["billsec"], row["attempts"], row["destination"]) == (
            record["cdr_id"], record["final_code"], record["billsec"], len(record["attempts"]),
            record["destination"])
    assert len(attempts) == sum(len(r["attempts"]) for r in by_call_id.values())
    assert (failover["cdr_id"], 1, busy.uri, 503) in attempts


def one_call(caller: Caller, b2b: B2buaProcess, ip: str, port: int, user: str) -> str:
    result = caller.run_calls(ip, port, service="1" + user, from_user=user, call_duration_ms=100)
    assert result.final_codes == [200], result.describe()
    return result.calls[0].call_id


def test_logrotate_with_and_without_sighup(gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory,
                                           caller: Caller, workdir: Path, addresses: AddressAllocator) -> None:
    gw = gateway_factory("answer")
    write_list_file(workdir, [ListEntry(1, gw.uri)])
    ip = addresses.next()
    port = free_port(ip, "udp")
    (workdir / "cdr").mkdir()
    b2b = b2bua_factory(cdr_config(ip, port, cdr={"file": "cdr/calls.jsonl"},
                                   routes=[{"set": 1, "algorithm": "priority"}]))
    path, rotated = workdir / "cdr" / "calls.jsonl", workdir / "cdr" / "calls.jsonl.1"

    first = one_call(caller, b2b, ip, port, "first")
    wait_records(path, 1)
    # logrotate without postrotate: the next record notices the move and starts a new file
    path.rename(rotated)
    second = one_call(caller, b2b, ip, port, "second")
    assert [r["call_id"] for r in wait_records(path, 1)] == [second]
    assert [r["call_id"] for r in records(rotated)] == [first]

    # with postrotate's SIGHUP (it reloads the destinations too)
    rotated.unlink()
    path.rename(rotated)
    b2b.send_signal(signal.SIGHUP)
    b2b.wait_for_log("cdr: reopening")
    third = one_call(caller, b2b, ip, port, "third")
    assert [r["call_id"] for r in wait_records(path, 1)] == [third]
    assert [r["call_id"] for r in records(rotated)] == [second]


def test_a_database_that_is_down_costs_no_record_in_the_file(
        gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory, caller: Caller, workdir: Path,
        addresses: AddressAllocator) -> None:
    gw = gateway_factory("answer")
    write_list_file(workdir, [ListEntry(1, gw.uri)])
    ip = addresses.next()
    port = free_port(ip, "udp")
    dead = free_port("127.0.0.1", "tcp")  # nothing listens there: every connection is refused
    b2b = b2bua_factory(cdr_config(ip, port, routes=[{"set": 1, "algorithm": "priority"}], cdr={
        "db_url": f"mysql+pymysql://cdr:secret@127.0.0.1:{dead}/voip", "db_retry": 0.2}))
    call_ids = {one_call(caller, b2b, ip, port, f"u{n}") for n in range(3)}
    assert {r["call_id"] for r in wait_records(workdir / "cdr.jsonl", 3)} == call_ids
    wait_until(lambda: b2b.rpc("cdr.stats")["db_failures"] >= 2, timeout=10, what="retries of the dead database")
    stats = b2b.rpc("cdr.stats")
    assert (stats["written"], stats["db_written"], stats["db_waiting"], stats["db_failing"]) == (3, 0, 3, True)
    assert "Can't connect to MySQL server" in stats["db_last_error"]
    log = b2b.log_text()
    assert "secret" not in log and f"mysql+pymysql://cdr:***@127.0.0.1:{dead}/voip" in log
    # one ERROR for the failure streak, not one per try
    assert log.count("ERROR") == 1 and "cdr: cannot write to" in log
    assert b2b.stop() == 0  # records that never reached the database are named at shutdown, not lost silently
    assert "cdr: 3 records are not in" in b2b.log_text()
