"""Administration over real SIP: control methods, ``b2bua dispatcher`` verbs, reloads, the state file.

Each test runs the B2BUA as a subprocess with sipp gateways listed in a ``dispatcher.list`` and
drives it the way an operator does: ``b2bua rpc ...`` and ``b2bua dispatcher ...`` in the B2BUA's
folder (so ``config.toml`` there is found), SIGHUP, and a control client on its socket. What is
asserted is the operator's output and exit codes, and where the next calls go (the gateways' logs).
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import sqlite3
import time
from pathlib import Path

from b2bua.control import ControlClient

from .configs import CONTROL_SOCKET, LIST_FILE, ListEntry, RunningB2bua, b2bua_config, start_b2bua
from .conftest import B2buaFactory, GatewayFactory
from .harness import READY_MARKER, AddressAllocator, B2buaProcess, Caller, Gateway, free_port, wait_until

STATE = {"state_file": "dispatcher-state.json"}


def invites(*gws: Gateway) -> list[int]:
    return [gw.count("INVITE") for gw in gws]


def calls_go_to(b2b: RunningB2bua, caller: Caller, gws: list[Gateway], n: int) -> list[int]:
    """Place ``n`` calls; how many INVITEs each gateway got for them."""
    before = invites(*gws)
    result = caller.run_calls(b2b.ip, b2b.port, n=n, rate=20, call_duration_ms=50)
    assert result.ok and result.final_codes == [200] * n, result.describe()
    return [after - was for after, was in zip(invites(*gws), before, strict=True)]


def flags(b2b: RunningB2bua) -> dict[str, str]:
    """URI -> the two state letters, from ``dispatcher.list``."""
    listing = b2b.process.rpc("dispatcher.list")
    return {t["DEST"]["URI"]: t["DEST"]["FLAGS"] for r in listing["RECORDS"] for t in r["SET"]["TARGETS"]}


def two_gateways(gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory, workdir: Path,
                 addresses: AddressAllocator, **config: object) -> tuple[RunningB2bua, list[Gateway]]:
    gws = [gateway_factory("answer"), gateway_factory("answer")]
    entries = [ListEntry(1, gws[0].uri, attrs="duid=gw1"), ListEntry(1, gws[1].uri, attrs="duid=gw2")]
    return start_b2bua(b2bua_factory, workdir, addresses.next(), entries, **config), gws


def test_every_control_method(gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory, caller: Caller,
                              workdir: Path, addresses: AddressAllocator) -> None:
    b2b, (gw1, gw2) = two_gateways(gateway_factory, b2bua_factory, workdir, addresses)
    rpc = b2b.process.rpc
    listing = rpc("dispatcher.list")
    assert listing["NRSETS"] == 1
    dests = [t["DEST"] for t in listing["RECORDS"][0]["SET"]["TARGETS"]]
    assert [(d["URI"], d["FLAGS"], d["ATTRS"]["DUID"], d["RUNTIME"]["DLGLOAD"]) for d in dests] == [
        (gw2.uri, "AX", "gw2", 0), (gw1.uri, "AX", "gw1", 0)]  # equal priority: last line first
    full = rpc("dispatcher.list", "full")["RECORDS"][0]["SET"]["TARGETS"][1]["DEST"]
    assert (full["IPADDR"], full["PORT"], full["PROTO"]) == (gw1.ip, gw1.port, "udp")
    assert "ATTRS" not in rpc("dispatcher.list", "short")["RECORDS"][0]["SET"]["TARGETS"][0]["DEST"]

    # set_state dx: every following call goes to the other gateway; ap brings it back
    assert rpc("dispatcher.set_state", "dx", 1, gw1.uri) == "Ok. Dispatcher state updated."
    assert flags(b2b)[gw1.uri] == "DX"
    assert calls_go_to(b2b, caller, [gw1, gw2], 6) == [0, 6]
    assert rpc("dispatcher.set_state", "ap", 1, gw1.uri) == "Ok. Dispatcher state updated."
    assert flags(b2b)[gw1.uri] == "AP"
    assert calls_go_to(b2b, caller, [gw1, gw2], 6) == [3, 3]

    assert rpc("dispatcher.set_duid_state", "i", 1, "gw2") == "Ok. Dispatcher state updated."
    assert calls_go_to(b2b, caller, [gw1, gw2], 4) == [4, 0]
    rpc("dispatcher.set_state", "a", 1, "all")

    assert rpc("dispatcher.ping_active") == {"OldPingState": 1}
    assert rpc("dispatcher.ping_active", 0) == {"NewPingState": 0, "OldPingState": 1}
    assert rpc("dispatcher.ping_active", 1) == {"NewPingState": 1, "OldPingState": 0}
    assert rpc("dispatcher.hash", 4, "bob", "server.com:5070") == {"hashid": 1243008018, "slot": 2}

    # add / remove in memory: the new gateway takes calls at once, and is gone after a reload
    gw3 = gateway_factory("answer")
    assert rpc("dispatcher.add", 1, gw3.uri, 0, 10) == "Ok. Dispatcher destination added."
    assert calls_go_to(b2b, caller, [gw1, gw2, gw3], 3) == [1, 1, 1]  # round robin over all three
    assert rpc("dispatcher.remove", 1, gw3.uri) == "Ok. Dispatcher destination removed."
    assert gw3.uri not in flags(b2b)
    assert rpc("dispatcher.reload") == "Ok. Dispatcher successfully reloaded."

    # kamcmd-style text output and Kamailio's faults, with exit code 1
    done = b2b.process.cli("rpc", "dispatcher.set_state", "a", "9", "all")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == "error: 500 State Update Failed: no set 9\n"
    done = b2b.process.cli("rpc", "dispatcher.hash", "4", "alice", "server.com")
    assert (done.returncode, done.stdout) == (0, "{\n\thashid: 1412806172\n\tslot: 0\n}\n")
    help_text = b2b.process.cli("rpc", "help").stdout
    for usage in ("dispatcher.list [mode]", "dispatcher.reload", "dispatcher.set_state state setid uri",
                  "dispatcher.set_duid_state state setid duid", "dispatcher.ping_active [state]",
                  "dispatcher.add setid uri [flags] [priority] [attrs]", "dispatcher.remove setid uri",
                  "dispatcher.hash nslots val1 [val2]"):
        assert usage in help_text


def test_operator_disable_survives_restart(gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory,
                                           caller: Caller, workdir: Path, addresses: AddressAllocator) -> None:
    b2b, (gw1, gw2) = two_gateways(gateway_factory, b2bua_factory, workdir, addresses, dispatcher=STATE)
    done = b2b.process.cli("dispatcher", "set-state", "d", "1", gw1.uri)
    assert (done.returncode, done.stdout, done.stderr) == (0, "Ok. Dispatcher state updated.\n", "")
    wait_until(lambda: (workdir / "dispatcher-state.json").exists(), 5, what="the state file")
    assert json.loads((workdir / "dispatcher-state.json").read_text()) == {
        "version": 1, "disabled": [{"setid": 1, "uri": gw1.uri}]}

    assert b2b.process.stop() == 0
    b2b.process.launch()
    b2b.process.wait_for_log(READY_MARKER, 30)
    assert flags(b2b) == {gw1.uri: "DX", gw2.uri: "AX"}
    assert calls_go_to(b2b, caller, [gw1, gw2], 4) == [0, 4]

    assert b2b.process.cli("dispatcher", "set-state", "a", "1", gw1.uri).returncode == 0
    wait_until(lambda: json.loads((workdir / "dispatcher-state.json").read_text())["disabled"] == [], 5,
               what="the state file to forget the entry")
    assert calls_go_to(b2b, caller, [gw1, gw2], 4) == [2, 2]


def test_cli_add_with_reload_puts_a_gateway_in_service(gateway_factory: GatewayFactory,
                                                       b2bua_factory: B2buaFactory, caller: Caller,
                                                       workdir: Path, addresses: AddressAllocator) -> None:
    gw1 = gateway_factory("answer")
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw1.uri)])
    assert calls_go_to(b2b, caller, [gw1], 2) == [2]
    gw2 = gateway_factory("answer")
    done = b2b.process.cli("dispatcher", "add", "1", gw2.uri, "0", "0", "duid=new", "second carrier", "--reload")
    assert done.returncode == 0, done.stderr
    assert done.stdout == (f"Added line 3 to {workdir / LIST_FILE}: set 1 {gw2.uri}\n"
                           "Ok. Dispatcher successfully reloaded.\n")
    assert calls_go_to(b2b, caller, [gw1, gw2], 4) == [2, 2]

    show = b2b.process.cli("dispatcher", "show").stdout.splitlines()
    assert show[0].split() == ["ID", "SETID", "DESTINATION", "FLAGS", "PRIORITY", "ATTRS", "DESCRIPTION"]
    assert show[2].split() == ["3", "1", gw2.uri, "0", "0", "duid=new", "second", "carrier"]
    table = b2b.process.cli("dispatcher", "list").stdout.splitlines()
    assert [line.split()[:3] for line in table[1:]] == [["1", gw2.uri, "AX"], ["1", gw1.uri, "AX"]]

    done = b2b.process.cli("dispatcher", "rm", "1", gw2.uri, "--reload")
    assert done.returncode == 0, done.stderr
    assert calls_go_to(b2b, caller, [gw1, gw2], 2) == [2, 0]


def test_malformed_list_file_reload_keeps_everything(gateway_factory: GatewayFactory,
                                                     b2bua_factory: B2buaFactory, caller: Caller,
                                                     workdir: Path, addresses: AddressAllocator) -> None:
    b2b, (gw1, gw2) = two_gateways(gateway_factory, b2bua_factory, workdir, addresses)
    b2b.process.rpc("dispatcher.set_state", "ip", 1, gw2.uri)
    before = b2b.process.cli("rpc", "dispatcher.list")
    list_file = workdir / LIST_FILE
    list_file.write_text(list_file.read_text() + "1 sip:127.0.0.1:5099 0 0 weight=101\n")
    done = b2b.process.cli("rpc", "dispatcher.reload")
    assert done.returncode == 1
    assert done.stderr == f"error: 500 Reload Failed: {list_file}:4: attrs: weight=101: must be 1..100\n"
    done = b2b.process.cli("dispatcher", "reload")
    assert done.returncode == 1 and f"{list_file}:4" in done.stderr
    after = b2b.process.cli("rpc", "dispatcher.list")
    assert after.stdout == before.stdout and after.returncode == 0
    assert calls_go_to(b2b, caller, [gw1, gw2], 2) == [2, 0]


def sqlite_b2bua(b2bua_factory: B2buaFactory, workdir: Path, addresses: AddressAllocator,
                 gw: Gateway) -> RunningB2bua:
    """A B2BUA whose destinations are in an SQLite file, ``gw`` added by the CLI before it starts."""
    ip = addresses.next()
    port = free_port(ip, "udp")
    config = b2bua_config(ip, port, dispatcher={"list_file": "", "db_url": "sqlite:///dispatcher.db"})
    B2buaProcess(workdir).config_path.write_text(config)
    add = B2buaProcess(workdir).cli("dispatcher", "add", "1", gw.uri)
    assert add.returncode == 0, add.stderr
    return RunningB2bua(b2bua_factory(config), ip, port)


def test_unreadable_database_reload_names_the_cause(gateway_factory: GatewayFactory,
                                                    b2bua_factory: B2buaFactory, caller: Caller,
                                                    workdir: Path, addresses: AddressAllocator) -> None:
    gw = gateway_factory("answer")
    b2b = sqlite_b2bua(b2bua_factory, workdir, addresses, gw)
    assert calls_go_to(b2b, caller, [gw], 1) == [1]
    before = b2b.process.cli("rpc", "dispatcher.list").stdout
    (workdir / "dispatcher.db").write_bytes(b"this is not an SQLite database\n" * 100)
    done = b2b.process.cli("dispatcher", "reload")
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: dispatcher.reload: 500 Reload Failed: sqlite:///{workdir}/dispatcher.db")
    assert "file is not a database" in done.stderr
    assert b2b.process.cli("rpc", "dispatcher.list").stdout == before
    assert calls_go_to(b2b, caller, [gw], 1) == [1]


def test_a_dropped_table_or_a_moved_database_fails_the_reload(gateway_factory: GatewayFactory,
                                                              b2bua_factory: B2buaFactory, caller: Caller,
                                                              workdir: Path, addresses: AddressAllocator) -> None:
    # the reload used to create an empty table (or database) and answer "Ok", every gateway gone
    gw = gateway_factory("answer")
    b2b = sqlite_b2bua(b2bua_factory, workdir, addresses, gw)
    before = b2b.process.cli("rpc", "dispatcher.list").stdout
    database = workdir / "dispatcher.db"
    with contextlib.closing(sqlite3.connect(database)) as db, db:
        db.execute("DROP TABLE dispatcher")
    done = b2b.process.cli("dispatcher", "reload")
    assert (done.returncode, done.stderr) == (
        1, f"error: dispatcher.reload: 500 Reload Failed: sqlite:///{database}: table 'dispatcher' does not exist\n")
    database.rename(workdir / "moved.db")
    done = b2b.process.cli("dispatcher", "reload")
    assert done.returncode == 1
    assert f"sqlite:///{database}: no such database file" in done.stderr
    assert not database.exists()
    assert b2b.process.cli("rpc", "dispatcher.list").stdout == before
    assert calls_go_to(b2b, caller, [gw], 1) == [1]


def test_twenty_reloads_under_50_calls_per_second(gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory,
                                                   caller: Caller, workdir: Path,
                                                   addresses: AddressAllocator) -> None:
    b2b, (gw1, gw2) = two_gateways(gateway_factory, b2bua_factory, workdir, addresses)
    calls = 300  # 6 s at 50 calls/s
    run = caller.start_calls(b2b.ip, b2b.port, n=calls, rate=50, call_duration_ms=300, timeout=60)
    client = ControlClient.unix(workdir / CONTROL_SOCKET)
    answers = []
    deadline = time.monotonic() + 30
    for _ in range(20):
        answers.append(client.call("dispatcher.reload", timeout=10))
        time.sleep(0.2)
        assert time.monotonic() < deadline
    result = run.wait()
    assert answers == ["Ok. Dispatcher successfully reloaded."] * 20
    assert result.ok and result.successful == calls, result.describe()
    assert sum(invites(gw1, gw2)) == calls
    assert b2b.process.log_text().count("dispatcher: reload loaded from") == 20


def test_sighup_reloads(gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory, caller: Caller,
                        workdir: Path, addresses: AddressAllocator) -> None:
    gw1, gw2 = gateway_factory("answer"), gateway_factory("answer")
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw1.uri)])
    (workdir / LIST_FILE).write_text(f"1 {gw1.uri}\n1 {gw2.uri}\n")
    b2b.process.send_signal(signal.SIGHUP)
    wait_until(lambda: gw2.uri in flags(b2b), 10, what="the SIGHUP reload")
    assert calls_go_to(b2b, caller, [gw1, gw2], 4) == [2, 2]
    (workdir / LIST_FILE).write_text(f"1 {gw1.uri} nonsense\n")
    b2b.process.send_signal(signal.SIGHUP)
    b2b.process.wait_for_log("reload failed, keeping the current destinations", 10)
    assert set(flags(b2b)) == {gw1.uri, gw2.uri}


def test_control_api_refuses_bad_requests(gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory,
                                          workdir: Path, addresses: AddressAllocator) -> None:
    gw = gateway_factory("answer")
    ip = addresses.next()
    port, http_port = free_port(ip, "udp"), free_port("127.0.0.1", "tcp")
    (workdir / LIST_FILE).write_text(f"1 {gw.uri}\n")
    config = b2bua_config(ip, port).replace(
        f'[control]\nsocket = "{CONTROL_SOCKET}"\n',
        f'[control]\nsocket = "{CONTROL_SOCKET}"\nhttp = "127.0.0.1:{http_port}"\ntoken = "s3cret"\n'
        "max_request_bytes = 2048\n")
    assert "s3cret" in config
    b2b = b2bua_factory(config)
    url = f"http://127.0.0.1:{http_port}/"

    done = b2b.cli("rpc", "--url", url, "--token", "wrong", "dispatcher.list")
    assert done.returncode == 1 and done.stderr.startswith("error: -32001 "), done.stderr
    ok = b2b.cli("rpc", "--url", url, "--token", "s3cret", "--json", "dispatcher.hash", "0", "abc")
    assert (ok.returncode, json.loads(ok.stdout)) == (0, {"hashid": 7167810, "slot": 0})

    done = b2b.cli("rpc", "dispatcher.hash", "1", "x" * 4000)
    assert done.returncode != 0 and "larger than 2048 bytes" in done.stderr

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(workdir / CONTROL_SOCKET))
        s.sendall(b'{"jsonrpc": "2.0", "method": "dispatcher.list", "id": 1\n')
        answer = json.loads(s.makefile("rb").readline())
    assert answer["error"]["code"] == -32700 and answer["id"] is None
