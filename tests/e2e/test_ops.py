"""Operators see and steer a running B2BUA: Prometheus /metrics after real calls, /health, a drain
of the node and of one gateway, systemd's notifications, a public address behind NAT.

The B2BUA runs as a subprocess with its HTTP control listener on 127.0.0.1; every number is read
over HTTP the way Prometheus or a load balancer reads it, every SIP answer from sipp's logs.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .configs import ListEntry, b2bua_config, received_responses, write_list_file
from .conftest import B2buaFactory, GatewayFactory
from .harness import AddressAllocator, B2buaProcess, Caller, free_port, wait_until

READ_TOKEN = "r34d-0nly"
ADMIN_TOKEN = "4dm1n-t0ken"


class Node:
    """A started B2BUA with its SIP address and HTTP control port."""

    def __init__(self, process: B2buaProcess, ip: str, port: int, http_port: int) -> None:
        self.process, self.ip, self.port, self.http_port = process, ip, port, http_port

    def get(self, path: str, token: str | None = READ_TOKEN) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=15)
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def health(self, path: str = "/health") -> tuple[int, dict[str, Any]]:
        status, _, body = self.get(path, token=None)
        return status, json.loads(body)

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample of ``/metrics``: ``(name, labels) -> value``."""
        status, headers, body = self.get("/metrics")
        assert status == 200, body
        assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def start_node(factory: B2buaFactory, workdir: Path, ip: str, entries: list[ListEntry], *,
               env: dict[str, str] | None = None, sip: dict[str, Any] | None = None, subdir: str | None = None,
               **config: Any) -> Node:
    """The B2BUA on ``ip`` with ``entries`` as its list, HTTP control with both tokens (in ``subdir``)."""
    where = workdir / subdir if subdir else workdir
    where.mkdir(exist_ok=True)
    write_list_file(where, entries)
    port, http_port = free_port(ip, "udp"), free_port("127.0.0.1", "tcp")
    text = b2bua_config(ip, port, sip=sip, **config).replace(
        "[control]\n", f'[control]\nhttp = "127.0.0.1:{http_port}"\nread_token = "{READ_TOKEN}"\n'
                       f'token = "{ADMIN_TOKEN}"\n')
    return Node(factory(text, env=env, subdir=subdir), ip, port, http_port)


def test_metrics_after_real_calls(gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory, caller: Caller,
                                  workdir: Path, addresses: AddressAllocator) -> None:
    bad, good = gateway_factory("reject:503"), gateway_factory("answer")
    node = start_node(b2bua_factory, workdir, addresses.next(),
                      [ListEntry(1, bad.uri, priority=10), ListEntry(1, good.uri, priority=5)],
                      algorithm="priority", failover={"failover_codes": ["5xx"]})
    result = caller.run_calls(node.ip, node.port, n=4, rate=20, call_duration_ms=50)
    assert result.final_codes == [200] * 4, result.describe()
    wait_until(lambda: value(node.metrics(), "b2bua_calls_active") == 0, 10, what="the calls to end")

    m = node.metrics()
    assert value(m, "b2bua_calls_received_total") == 4
    assert value(m, "b2bua_calls_answered_total") == 4
    assert value(m, "b2bua_calls_failed_total") == 0
    assert value(m, "b2bua_calls_ended_total", cause="caller-hangup") == 4
    bad_l, good_l = {"set": "1", "uri": bad.uri}, {"set": "1", "uri": good.uri}
    assert value(m, "b2bua_dispatcher_selected_total", **bad_l) == 4
    assert value(m, "b2bua_dispatcher_attempts_total", **bad_l, code_class="5xx") == 4
    assert value(m, "b2bua_dispatcher_failure_responses_total", **bad_l, code="503") == 4
    assert value(m, "b2bua_dispatcher_failovers_total", **bad_l) == 4
    assert value(m, "b2bua_dispatcher_selected_total", **good_l) == 0
    assert value(m, "b2bua_dispatcher_attempts_total", **good_l, code_class="2xx") == 4
    assert value(m, "b2bua_dispatcher_destination_up", **good_l) == 1
    assert value(m, "b2bua_dispatcher_destinations_up", set="1") == 2
    assert value(m, "process_resident_memory_bytes") > 0
    # the collector's watch runs in the real process: three generations, counted from start-up
    for name in ("b2bua_gc_collections_total", "b2bua_gc_seconds_total"):
        assert all((name, frozenset({("generation", g)})) in m for g in "012"), name
    assert ("b2bua_gc_longest_pause_seconds", frozenset()) in m
    assert value(m, "b2bua_gc_longest_pause_seconds") < 1

    # the same numbers through the control API
    stats = node.process.rpc("core.stats")
    assert (stats["calls"]["received"], stats["calls"]["answered"], stats["state"]) == (4, 4, "up")
    assert len(stats["gc"]["collections"]) == len(stats["gc"]["seconds"]) == 3
    listing = node.process.rpc("dispatcher.list")
    shown = {t["DEST"]["URI"]: t["DEST"]["STATS"] for r in listing["RECORDS"] for t in r["SET"]["TARGETS"]}
    assert shown[bad.uri] == {"SELECTED": 4, "ATTEMPTS": 4, "ANSWERED": 0, "FAILED": 4, "FAILOVERS": 4}
    assert "dispatcher:failovers = 4" in node.process.rpc("stats.get_statistics", "dispatcher:")

    # /metrics is read-only data: no token or a wrong one is refused and logged; the admin token reads too
    assert node.get("/metrics", token=None)[0] == 401
    assert node.get("/metrics", token="guess")[0] == 401
    assert node.get("/metrics", token=ADMIN_TOKEN)[0] == 200
    log = node.process.log_text()
    assert "HTTP 401 Unauthorized: no token" in log and "HTTP 401 Unauthorized: wrong token" in log
    assert "guess" not in log

    # counters only go up, until an explicit reset of their group
    before = value(m, "b2bua_calls_received_total")
    caller.run_calls(node.ip, node.port, n=2, rate=20, call_duration_ms=20)
    assert value(node.metrics(), "b2bua_calls_received_total") == before + 2
    assert node.process.rpc("stats.reset_statistics", "dispatcher:") == "Ok. Statistics reset: dispatcher"
    after = node.metrics()
    assert value(after, "b2bua_dispatcher_selected_total", **bad_l) == 0
    assert value(after, "b2bua_calls_received_total") == 6  # the core group kept its counts


def test_a_scrape_during_reloads_sees_one_list_and_no_counter_going_back(
        gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory, caller: Caller, workdir: Path,
        addresses: AddressAllocator) -> None:
    gw = gateway_factory("answer")
    fillers = [ListEntry(2, f"sip:10.9.{i // 200}.{i % 200 + 1}:5060") for i in range(600)]
    lists = {"long": [ListEntry(1, gw.uri), *fillers], "short": [ListEntry(1, gw.uri), *fillers[:250]]}
    node = start_node(b2bua_factory, workdir, addresses.next(), lists["long"])
    uris = {name: {e.uri for e in entries if e.setid == 2} for name, entries in lists.items()}
    stop = threading.Event()
    reloads: list[str] = []

    def reload_back_and_forth() -> None:
        for name in ("short", "long") * 5:
            if stop.is_set():
                return
            write_list_file(workdir, lists[name])
            node.process.rpc("dispatcher.reload", timeout=60)
            reloads.append(name)

    reloader = threading.Thread(target=reload_back_and_forth, name="reloader")
    calls = caller.start_calls(node.ip, node.port, n=30, rate=5, call_duration_ms=20)
    reloader.start()
    seen: set[str] = set()
    last: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 60
        while (reloader.is_alive() or calls.returncode is None) and time.monotonic() < deadline:
            m = node.metrics()
            listed = {dict(labels)["uri"] for (name, labels), _ in m.items()
                      if name == "b2bua_dispatcher_destination_up" and dict(labels)["set"] == "2"}
            match = [name for name, expected in uris.items() if listed == expected]
            assert match, f"a scrape listed {len(listed)} destinations of set 2: neither list"
            seen.add(match[0])
            for name, labels in (("b2bua_calls_received_total", {}),
                                 ("b2bua_dispatcher_attempts_started_total", {"set": "1", "uri": gw.uri}),
                                 ("b2bua_dispatcher_reloads_total", {"trigger": "reload", "result": "ok"})):
                now = value(m, name, **labels)
                assert now >= last.get(name, 0.0), f"{name} went back from {last.get(name)} to {now}"
                last[name] = now
    finally:
        stop.set()
        reloader.join(90)
    assert calls.wait().final_codes == [200] * 30
    assert seen == {"long", "short"} and len(reloads) == 10
    assert value(node.metrics(), "b2bua_dispatcher_reloads_total", trigger="reload", result="ok") == 10


def test_drain_finishes_calls_refuses_new_ones_and_undrain_restores(
        gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory, caller: Caller, workdir: Path,
        addresses: AddressAllocator) -> None:
    gw = gateway_factory("answer")
    node = start_node(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri)])
    assert node.health() == (200, {"status": "up", "calls": 0, "max_calls": 200})
    long_calls = caller.start_calls(node.ip, node.port, n=2, rate=20, call_duration_ms=4000)
    wait_until(lambda: node.health()[1]["calls"] == 2 and gw.count("INVITE") == 2, 10, what="two calls up")

    drained = node.process.cli("drain")
    assert drained.returncode == 0, drained.stderr
    assert "draining the node: 2 call(s) in progress" in drained.stdout
    assert node.health() == (503, {"status": "draining", "calls": 2, "max_calls": 200})
    assert node.health("/live")[0] == 200

    other = Caller(addresses.next(), workdir)
    refused = other.run_calls(node.ip, node.port, n=1, behaviour="expect:503")
    assert refused.final_codes == [503], refused.describe()
    (answer,) = received_responses(refused, 503)
    assert answer.first_line == "SIP/2.0 503 Draining" and answer.header("Retry-After") == "5"
    options = other.run_calls(node.ip, node.port, n=1, behaviour="options")
    assert options.final_codes == [503]
    assert received_responses(options, 503)[0].header("Retry-After") == "5"
    assert gw.count("INVITE") == 2  # nothing new reached the gateway

    waited = node.process.cli("drain", "--wait", "30")
    assert waited.returncode == 0, waited.stderr
    assert "drained the node: no calls left" in waited.stdout
    assert long_calls.wait().final_codes == [200, 200]  # the calls in progress finished normally
    assert "drain: the last call ended" in node.process.log_text()
    m = node.metrics()
    assert value(m, "b2bua_calls_refused_total", reason="draining") == 1
    assert value(m, "b2bua_requests_refused_total", reason="draining") == 1
    assert value(m, "b2bua_draining") == 1

    undrained = node.process.cli("undrain")
    assert undrained.returncode == 0 and "state: up" in undrained.stdout
    assert node.health()[0] == 200
    assert other.run_calls(node.ip, node.port, n=1, behaviour="options").final_codes == [200]
    assert other.run_calls(node.ip, node.port, n=2, call_duration_ms=20).final_codes == [200, 200]


def test_draining_one_gateway_sends_new_calls_elsewhere_and_says_when_it_is_empty(
        gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory, caller: Caller, workdir: Path,
        addresses: AddressAllocator) -> None:
    gw1, gw2 = gateway_factory("answer"), gateway_factory("answer")
    node = start_node(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw1.uri), ListEntry(1, gw2.uri)],
                      algorithm="round-robin")
    long_call = caller.start_calls(node.ip, node.port, n=1, call_duration_ms=3000)
    wait_until(lambda: gw1.count("INVITE") + gw2.count("INVITE") == 1, 10, what="the long call")
    busy, idle = (gw1, gw2) if gw1.count("INVITE") else (gw2, gw1)

    started = node.process.cli("drain", "--destination", "1", busy.uri)
    assert started.returncode == 0 and "1 call(s) in progress" in started.stdout, started.stderr
    m = node.metrics()
    assert value(m, "b2bua_dispatcher_destination_draining", set="1", uri=busy.uri) == 1
    assert value(m, "b2bua_dispatcher_destination_up", set="1", uri=busy.uri) == 0
    short = Caller(addresses.next(), workdir).run_calls(node.ip, node.port, n=4, rate=20, call_duration_ms=20)
    assert short.final_codes == [200] * 4
    assert (busy.count("INVITE"), idle.count("INVITE")) == (1, 4)

    waited = node.process.cli("drain", "--destination", "1", busy.uri, "--wait", "30")
    assert waited.returncode == 0 and "no calls left" in waited.stdout, waited.stdout + waited.stderr
    assert long_call.wait().final_codes == [200]
    assert f"{busy.uri} drained: its last call ended" in node.process.log_text()
    assert value(node.metrics(), "b2bua_dispatcher_destination_draining", set="1", uri=busy.uri) == 0

    assert node.process.cli("undrain", "--destination", "1", busy.uri).returncode == 0
    again = Caller(addresses.next(), workdir).run_calls(node.ip, node.port, n=4, rate=20, call_duration_ms=20)
    assert again.final_codes == [200] * 4 and busy.count("INVITE") == 3


def test_health_while_stopping_and_while_shedding(gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory,
                                                   caller: Caller, workdir: Path, addresses: AddressAllocator) -> None:
    gw = gateway_factory("answer")
    node = start_node(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri)],
                      sip={"shutdown_grace": 20.0}, subdir="stopping")
    call = caller.start_calls(node.ip, node.port, n=1, call_duration_ms=2500)
    wait_until(lambda: node.health()[1]["calls"] == 1, 10, what="the call")
    node.process.send_signal(15)
    wait_until(lambda: node.health()[1]["status"] == "stopping", 10, what="/health to say stopping")
    assert node.health()[0] == 503
    options = Caller(addresses.next(), workdir).run_calls(node.ip, node.port, n=1, behaviour="options")
    assert [m.first_line for m in received_responses(options, 503)][:1] == ["SIP/2.0 503 Shutting Down"]
    assert call.wait().final_codes == [200]  # the grace let it finish
    wait_until(lambda: node.process.returncode is not None, 20, what="the B2BUA to stop")

    # a loop held late by more than overload_lag sheds: /health and OPTIONS say so
    shedding = start_node(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri)],
                          sip={"overload_lag": 0.0001}, subdir="shedding")
    wait_until(lambda: shedding.health()[1]["status"] == "overloaded", 10, what="/health to say overloaded")
    refused = Caller(addresses.next(), workdir).run_calls(shedding.ip, shedding.port, n=1, behaviour="options")
    assert [m.first_line for m in received_responses(refused, 503)][:1] == ["SIP/2.0 503 Overloaded"]


def options_burst(node: Node, src_ip: str, n: int) -> socket.socket:
    """``n`` OPTIONS at once from ``src_ip`` (each its own transaction); the socket their answers
    come back to."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((src_ip, 0))
    port = sock.getsockname()[1]
    for i in range(n):
        sock.sendto((f"OPTIONS sip:{node.ip}:{node.port} SIP/2.0\r\n"
                     f"Via: SIP/2.0/UDP {src_ip}:{port};branch=z9hG4bK-burst{i}\r\n"
                     f"From: <sip:probe@{src_ip}>;tag=b{i}\r\nTo: <sip:{node.ip}>\r\n"
                     f"Call-ID: burst-{i}@{src_ip}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                     "Content-Length: 0\r\n\r\n").encode(), (node.ip, node.port))
    return sock


def answers(sock: socket.socket, quiet: float = 1.0) -> list[str]:
    """Status lines of the answers on ``sock`` until none came for ``quiet`` seconds (bounded)."""
    lines: list[str] = []
    sock.settimeout(quiet)
    deadline = time.monotonic() + 20
    with sock:
        while time.monotonic() < deadline:
            try:
                lines.append(sock.recv(65535).split(b"\r\n", 1)[0].decode())
            except TimeoutError:
                break
    return lines


def stalled(node: Node, src_ip: str, n: int, seconds: float = 0.4) -> list[str]:
    """Stop the process (SIGSTOP) while ``n`` OPTIONS arrive, for ``seconds``; the answers."""
    node.process.send_signal(signal.SIGSTOP)
    try:
        sock = options_burst(node, src_ip, n)
        time.sleep(seconds)
    finally:
        node.process.send_signal(signal.SIGCONT)
    return answers(sock)


def test_a_standing_sip_queue_sheds_and_a_full_buffer_counts_its_drops(
        gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory, workdir: Path,
        addresses: AddressAllocator) -> None:
    gw = gateway_factory("answer")
    # the default 4 MiB buffer holds 1500 OPTIONS (a third full); read after a 400 ms stall,
    # they take the loop longer than a beat: at the second beat the oldest has waited past
    # DRAIN_CEILING x overload_delay (300 ms), where the queue sheds even while it drains
    node = start_node(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri)],
                      sip={"overload_delay": 0.1}, subdir="standing")
    assert "udp_receive_buffer" not in node.process.log_text(), \
        "the kernel gave less than 4 MiB: run as root, or sysctl net.core.rmem_max=4194304"
    lines = stalled(node, addresses.next(), 1500)
    assert "SIP/2.0 503 Overloaded" in lines, lines[:5]  # rule 8: an edge's probe sees the node shed
    log = node.process.log_text()
    assert "overload: the oldest SIP message waited" in log, log
    assert node.process.rpc("core.stats")["sip_receive"]["dropped"] == 0  # none lost
    wait_until(lambda: node.health()[1]["status"] == "up", 10, what="the shedding to end")
    assert answers(options_burst(node, addresses.next(), 1)) == ["SIP/2.0 200 OK"]  # drained: served again

    # 64 KiB asked (the kernel doubles it): about 60 OPTIONS fit, the rest is dropped and counted
    small = start_node(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri)],
                       sip={"overload_delay": 0.1, "udp_receive_buffer": 65536}, subdir="small")
    assert small.process.rpc("core.stats")["sip_receive"] == {"dropped": 0, "wait_ms": 0.0}
    lines = stalled(small, addresses.next(), 300)
    assert 0 < len(lines) < 300, len(lines)
    assert "SIP/2.0 503 Overloaded" in lines, lines  # the buffer was more than half full
    wait_until(lambda: "SIP datagram(s) dropped by the kernel" in small.process.log_text(), 10,
               what="the warning about the drops")
    dropped = small.process.rpc("core.stats")["sip_receive"]["dropped"]
    assert dropped == 300 - len(lines), (dropped, len(lines))
    assert value(small.metrics(), "b2bua_sip_datagrams_dropped_total") == dropped
    assert "overload: a SIP receive buffer is" in small.process.log_text()


@pytest.fixture
def notify_socket() -> Iterator[tuple[str, socket.socket]]:
    """An abstract datagram socket as systemd's NOTIFY_SOCKET (no path length to worry about)."""
    name = f"b2bua-test-notify-{os.getpid()}-{time.monotonic_ns()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    yield f"@{name}", sock
    sock.close()


def received(sock: socket.socket, until: str, timeout: float = 15.0) -> list[str]:
    """Datagrams until one holds ``until`` (bounded)."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if until in got[-1]:
            return got
    raise AssertionError(f"no {until!r} within {timeout}s; got {got}")


def test_systemd_hears_ready_watchdog_status_and_stopping(
        gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory, workdir: Path, addresses: AddressAllocator,
        notify_socket: tuple[str, socket.socket]) -> None:
    address, sock = notify_socket
    gw = gateway_factory("answer")
    node = start_node(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri)],
                      env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "400000"})
    first = received(sock, "READY=1")[-1].split("\n")
    assert first[0] == "READY=1" and first[1] == f"MAINPID={node.process.pid}"
    assert first[2] == f"STATUS=listening on udp:{node.ip}:{node.port}"
    pings = received(sock, "WATCHDOG=1") + received(sock, "WATCHDOG=1")
    assert pings[-1] == "WATCHDOG=1"  # a ping every 0.2 s from the loop
    node.process.cli("drain")
    assert any(m.startswith("STATUS=drained: no calls") for m in received(sock, "STATUS=drained"))
    node.process.stop()
    assert any(m.startswith("STOPPING=1\nSTATUS=stopping") for m in received(sock, "STOPPING=1"))


def test_public_address_is_what_the_peers_see(gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory,
                                              caller: Caller, workdir: Path, addresses: AddressAllocator) -> None:
    gw = gateway_factory("answer")
    public = "127.0.0.254"  # loopback, bound by nobody: what a 1:1 NAT's public address is to the B2BUA
    node = start_node(b2bua_factory, workdir, addresses.next(), [ListEntry(1, gw.uri)],
                      sip={"public_address": public})
    result = caller.run_calls(node.ip, node.port, n=1, call_duration_ms=20)
    assert result.final_codes == [200], result.describe()
    (ok,) = received_responses(result, 200)[:1]
    assert f"@{public}:" in (ok.header("Contact") or "")
    assert f"c=IN IP4 {public}" in ok.text
    (invite,) = gw.requests("INVITE")[:1]
    assert f"{public}:" in (invite.header("Via") or "") and f"@{public}:" in (invite.header("Contact") or "")
    assert f"c=IN IP4 {public}" in invite.text
