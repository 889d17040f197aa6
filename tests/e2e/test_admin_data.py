"""Admin data cannot inject, over real SIP and real processes.

A destination URI cannot smuggle headers into INVITEs or keepalives; ``ping_from`` is the From
of the keepalives a gateway receives; an empty list file never takes every gateway away; what
``b2bua dispatcher add`` writes always loads again; concurrent ``add`` processes all land.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from .configs import LIST_FILE, ListEntry, RunningB2bua, b2bua_config, start_b2bua
from .conftest import B2buaFactory, GatewayFactory
from .harness import AddressAllocator, B2buaProcess, Caller, Gateway, free_port, wait_until


def invites(*gws: Gateway) -> list[int]:
    return [gw.count("INVITE") for gw in gws]


def uris(b2b: RunningB2bua) -> list[str]:
    listing = b2b.process.rpc("dispatcher.list")
    return [t["DEST"]["URI"] for r in listing["RECORDS"] for t in r["SET"]["TARGETS"]]


def test_ping_from_is_the_from_of_the_keepalives(gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory,
                                                  workdir: Path, addresses: AddressAllocator) -> None:
    gw1, gw2 = gateway_factory("answer"), gateway_factory("answer")
    entries = [ListEntry(1, gw1.uri, attrs="ping_from=sip:probe@gw1-side.example"), ListEntry(1, gw2.uri)]
    start_b2bua(b2bua_factory, workdir, addresses.next(), entries,
                dispatcher={"ping_interval": 0.5, "ping_from": "sip:dispatcher@b2bua.example"})
    wait_until(lambda: gw1.count("OPTIONS") >= 2 and gw2.count("OPTIONS") >= 2, 10, what="two keepalives each")
    froms = {gw.name: {m.header("From").split(";", 1)[0] for m in gw.requests("OPTIONS")} for gw in (gw1, gw2)}
    assert froms == {gw1.name: {"<sip:probe@gw1-side.example>"}, gw2.name: {"<sip:dispatcher@b2bua.example>"}}


def test_a_uri_with_headers_never_loads(gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory,
                                        caller: Caller, workdir: Path, addresses: AddressAllocator) -> None:
    gw1, gw2 = gateway_factory("answer"), gateway_factory("answer")
    ip = addresses.next()
    port = free_port(ip, "udp")
    config = b2bua_config(ip, port, dispatcher={"ping_interval": 0.5})
    b2b = B2buaProcess(workdir)
    b2b.config_path.write_text(config)
    (workdir / LIST_FILE).write_text(f"1 {gw1.uri}\n1 {gw2.uri}?X-Injected=yes\n")
    done = b2b.cli("run", "-c", "config.toml", timeout=30)
    assert done.returncode == 2
    assert (f"{workdir / LIST_FILE}:2: {gw2.uri}?X-Injected=yes: URI headers (?X-Injected=yes) are not allowed"
            " in a destination") in done.stdout + done.stderr

    # running: a reload with such a line keeps the loaded destinations, and nothing carries the header
    (workdir / LIST_FILE).write_text(f"1 {gw1.uri}\n")
    running = RunningB2bua(b2bua_factory(config), ip, port)
    (workdir / LIST_FILE).write_text(f"1 {gw1.uri}?X-Injected=yes\n1 {gw2.uri};x-tag=a\n")
    reload = running.process.cli("dispatcher", "reload")
    assert reload.returncode == 1
    assert f"{workdir / LIST_FILE}:1: {gw1.uri}?X-Injected=yes: URI headers" in reload.stderr
    assert f"{workdir / LIST_FILE}:2: {gw2.uri};x-tag=a: URI parameter 'x-tag' is not allowed" in reload.stderr
    result = caller.run_calls(ip, port, n=2, rate=20, call_duration_ms=50)
    assert result.ok and result.final_codes == [200, 200], result.describe()
    wait_until(lambda: gw1.count("OPTIONS") >= 1, 10, what="a keepalive")
    assert invites(gw1, gw2) == [2, 0]
    sent_to_gw1 = gw1.requests("INVITE") + gw1.requests("OPTIONS")
    assert sent_to_gw1 and all(m.header("X-Injected") is None for m in sent_to_gw1)


def test_an_empty_list_file_never_removes_every_gateway(gateway_factory: GatewayFactory,
                                                       b2bua_factory: B2buaFactory, caller: Caller,
                                                       workdir: Path, addresses: AddressAllocator) -> None:
    gw = gateway_factory("answer")
    ip = addresses.next()
    port = free_port(ip, "udp")
    b2b = B2buaProcess(workdir)
    b2b.config_path.write_text(b2bua_config(ip, port))
    (workdir / LIST_FILE).write_text("# the gateways were here\n")
    done = b2b.cli("run", "-c", "config.toml", timeout=30)
    assert done.returncode == 2
    assert f"{workdir / LIST_FILE}: no destinations (only blank or comment lines)" in done.stdout + done.stderr

    (workdir / LIST_FILE).write_text(f"1 {gw.uri}\n")
    running = RunningB2bua(b2bua_factory(b2bua_config(ip, port)), ip, port)
    (workdir / LIST_FILE).write_text("")  # a truncated write
    reload = running.process.cli("dispatcher", "reload")
    assert reload.returncode == 1 and "no destinations" in reload.stderr and "allow_empty = true" in reload.stderr
    assert uris(running) == [gw.uri]
    result = caller.run_calls(ip, port, n=1)
    assert result.final_codes == [200], result.describe()

    # allowed on purpose: the reload empties the sets and calls get the no-destination answer
    assert running.process.stop() == 0
    running.process.config_path.write_text(b2bua_config(ip, port, dispatcher={"allow_empty": True}))
    (workdir / LIST_FILE).write_text(f"1 {gw.uri}\n")
    running.process.launch()
    running.process.wait_for_log("b2bua ready", 30)
    (workdir / LIST_FILE).write_text("")
    assert running.process.cli("dispatcher", "reload").returncode == 0
    assert running.process.cli("rpc", "dispatcher.list").stderr == "error: 500 No Destination Sets\n"
    result = caller.run_calls(ip, port, n=1)
    assert result.final_codes == [503], result.describe()


def test_what_add_writes_always_loads_again(gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory,
                                            caller: Caller, workdir: Path, addresses: AddressAllocator) -> None:
    gw1, gw2 = gateway_factory("answer"), gateway_factory("answer")
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw1.uri)])
    before = (workdir / LIST_FILE).read_text()
    for argv, message in [
        (("1", gw2.uri, "0", "0", "", "x" * 10_000), "description: 10000 characters long; the limit is 255"),
        (("1", gw2.uri, "0", "0", "", "fine\n1 sip:127.0.0.1:9 0 0"), "description: must be one line"),
        (("1", f"{gw2.uri}?X-Injected=yes"), "URI headers (?X-Injected=yes) are not allowed"),
        (("1", "sips:" + gw2.uri[4:]), "is reached over TLS, and [sip] listen has no tls listener"),
        (("1", gw2.uri, "0", "0", "sockname=wan"), "sockname=wan: no such name in [sip] socket_names"),
        (("1", f"{gw2.uri};transport=ws"), "transport 'ws' is not one this build can use"),
    ]:
        done = b2b.process.cli("dispatcher", "add", *argv)
        assert (done.returncode, done.stdout) == (1, ""), done.stderr
        assert message in done.stderr and done.stderr.count("\n") == 1
    assert (workdir / LIST_FILE).read_text() == before

    done = b2b.process.cli("dispatcher", "add", "1", gw2.uri, "0", "0", "duid=gw2;prefix=\"4 9\"", "Zürich #2")
    assert done.returncode == 1 and "list-file attrs cannot contain blanks" in done.stderr
    done = b2b.process.cli("dispatcher", "add", "1", gw2.uri, "0", "0", "duid=gw2;note=a#b", " Zürich #2 ",
                           "--reload")
    assert done.returncode == 0, done.stderr
    assert (workdir / LIST_FILE).read_text() == before + f"1 {gw2.uri} 0 0 duid=gw2;note=a#b # Zürich #2\n"
    show = b2b.process.cli("dispatcher", "show", "--json")
    assert '"description": "Z\\u00fcrich #2"' in show.stdout
    assert sorted(uris(b2b)) == sorted([gw1.uri, gw2.uri])
    result = caller.run_calls(b2b.ip, b2b.port, n=4, rate=20, call_duration_ms=50)
    assert result.ok and invites(gw1, gw2) == [2, 2], result.describe()

    # and it loads at start-up too
    assert b2b.process.stop() == 0
    b2b.process.launch()
    b2b.process.wait_for_log("b2bua ready", 30)
    assert sorted(uris(b2b)) == sorted([gw1.uri, gw2.uri])


def test_concurrent_adds_all_land(workdir: Path, addresses: AddressAllocator) -> None:
    """Sixteen ``b2bua dispatcher add`` processes at once: every line is in the file.

    Without the lock this loses lines (3-5 of 16 measured on a 2-core machine): each process
    reads the file, appends its line and renames its copy over the others'.
    """
    b2b = B2buaProcess(workdir)
    b2b.config_path.write_text(b2bua_config(addresses.next(), 5060))
    (workdir / LIST_FILE).write_text("# gateways\n")
    n = 16
    procs = [subprocess.Popen([sys.executable, "-m", "b2bua", "dispatcher", "add", "1", f"sip:127.0.0.1:{6000 + i}"],
                              cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(n)]
    deadline = time.monotonic() + 60
    results = []
    for proc in procs:
        _, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        results.append((proc.returncode, err))
    assert results == [(0, "")] * n
    lines = (workdir / LIST_FILE).read_text().splitlines()
    assert lines[0] == "# gateways"
    assert sorted(lines[1:]) == sorted(f"1 sip:127.0.0.1:{6000 + i} 0 0" for i in range(n))
    assert sorted(p.name for p in workdir.iterdir() if p.name.startswith(".")) == []  # no temp or lock files
