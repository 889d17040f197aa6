"""docs/examples/edge/kamailio-edge.cfg run for real: a Kamailio edge spreading calls over two B2BUA
nodes of a cluster and probing them with OPTIONS (docs/scale-out.md, "Topology")."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redisserver import RedisServer

from .configs import ListEntry
from .conftest import B2buaFactory, GatewayFactory
from .harness import (
    REPO_ROOT,
    AddressAllocator,
    Caller,
    Gateway,
    _read_proc_net,
    _socket_inodes,
    free_port,
    socket_bound,
    wait_until,
)
from .test_cluster import Node, sender_ips, start_node

EDGE_CONFIG = REPO_ROOT / "docs" / "examples" / "edge" / "kamailio-edge.cfg"


class Edge:
    """Kamailio in the foreground with the example config, its log in the workdir."""

    def __init__(self, workdir: Path, ip: str, nodes: list[Node]) -> None:
        binary = shutil.which("kamailio")
        if binary is None:
            pytest.fail("kamailio is not installed (Debian package kamailio; scripts/setup.sh --test installs it)",
                        pytrace=False)
        self.ip, self.port = ip, free_port(ip, "udp")
        nodes_list = workdir / "nodes.list"
        nodes_list.write_text("".join(f"1 sip:{n.ip}:{n.port} 8 0 duid={n.name}\n" for n in nodes))
        self.log = workdir / "kamailio.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [binary, "-DD", "-E", "-f", str(EDGE_CONFIG), "-Y", str(workdir), "-P", str(workdir / "kamailio.pid"),
                 "-A", f"EDGE_LISTEN=udp:{ip}:{self.port}", "-A", f'NODES_LIST="{nodes_list}"'],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        wait_until(lambda: self.proc.poll() is not None
                   or socket_bound(ip, self.port, "udp", _read_proc_net(), _socket_inodes(self.proc.pid)),
                   timeout=15, what="kamailio listening")
        assert self.proc.poll() is None, self.log.read_text()[-3000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def edge_factory(workdir: Path) -> Iterator[Callable[[str, list[Node]], Edge]]:
    started: list[Edge] = []

    def start(ip: str, nodes: list[Node]) -> Edge:
        edge = Edge(workdir, ip, nodes)
        started.append(edge)
        return edge

    yield start
    for edge in started:
        edge.stop()


def senders(gw: Gateway) -> list[str]:
    """The address each INVITE the gateway received came from."""
    return sender_ips(gw, "INVITE")


def test_kamailio_edge_spreads_calls_and_routes_around_a_dead_node(
        gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory, caller: Caller, workdir: Path,
        addresses: AddressAllocator, redis_factory: Callable[[], RedisServer],
        edge_factory: Callable[[str, list[Node]], Edge]) -> None:
    redis = redis_factory()
    gw = gateway_factory("answer")
    entries = [ListEntry(1, gw.uri)]
    a = start_node(b2bua_factory, workdir, addresses, redis, "a", entries)
    b = start_node(b2bua_factory, workdir, addresses, redis, "b", entries, expected_exit=None)
    edge = edge_factory(addresses.next(), [a, b])
    result = caller.run_calls(edge.ip, edge.port, n=6, rate=10, call_duration_ms=100)
    assert result.final_codes == [200] * 6, result.describe()
    assert sorted(set(senders(gw))) == sorted({a.ip, b.ip})  # both nodes carried calls
    b.process.send_signal(signal.SIGKILL)
    time.sleep(0.5)
    before = len(senders(gw))
    result = caller.run_calls(edge.ip, edge.port, n=6, rate=5, call_duration_ms=100, timeout=60)
    # the edge learns (a call timing out on b fails over to a, the OPTIONS take b out): none is lost
    assert result.final_codes == [200] * 6, result.describe()
    assert set(senders(gw)[before:]) == {a.ip}
