"""[cluster] settings and the --all plumbing that needs no running node."""

from __future__ import annotations

import argparse
import io
from contextlib import redirect_stderr
from pathlib import Path

import pytest

from b2bua.cluster import control_address, default_node_name, describe_token, make_cluster
from b2bua.config import ConfigError, parse_config
from b2bua.control import ControlUnavailable
from b2bua.control_cli import add_rpc_command
from b2bua.fanout import NodeAnswer, call_all, client_for
from b2bua.redislink import safe_url
from plugins.dispatcher.clusterview import cluster_table, errors_of


@pytest.mark.parametrize(("values", "message"), [
    ({"redis_url": "http://x"}, "[cluster] redis_url: 'http://x': expected redis://"),
    ({"redis_url": "redis://x", "node": "a b"}, "[cluster] node: 'a b': use 1-64 letters"),
    ({"redis_url": "redis://x", "node": "-a"}, "[cluster] node: '-a'"),
    ({"name": "x:y"}, "[cluster] name: 'x:y'"),
    ({"heartbeat": 2.0, "node_ttl": 3.0}, "[cluster] node_ttl: 3 s must be at least twice heartbeat (2 s)"),
    ({"control_url": "unix:/x"}, "[cluster] control_url: 'unix:/x': expected http://"),
    ({"load_sync": -1}, "[cluster] load_sync: must be 0-5"),
])
def test_bad_cluster_settings_name_the_key(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"cluster": values}, "config.toml")
    assert any(message in e for e in err.value.errors), err.value.errors


def test_no_cluster_without_a_redis_url(tmp_path: Path) -> None:
    config = parse_config({}, "config.toml", tmp_path)
    assert not config.cluster.enabled
    assert make_cluster(config, post=lambda f: None, call_later=lambda d, f: None, info=dict) is None


def test_names_and_addresses(tmp_path: Path) -> None:
    config = parse_config({"sip": {"listen": ["udp:127.0.0.1:5070"]}, "cluster": {"redis_url": "redis://r"}},
                          "config.toml", tmp_path)
    assert default_node_name(config).endswith("-5070")
    assert control_address(config) == f"unix:{(tmp_path / 'b2bua.sock').resolve()}"
    http = parse_config({"control": {"http": "127.0.0.1:8080"}}, "c", tmp_path)
    assert control_address(http) == "http://127.0.0.1:8080/"
    assert safe_url("redis://user:secret@h:6379/0") == "redis://user:***@h:6379/0"
    assert safe_url("redis://:secret@h/0") == "redis://:***@h/0"
    assert "secret" not in safe_url("rediss://:secret@h:1/2")
    assert describe_token("h1|4242|ab12") == "host h1, pid 4242"


def test_a_node_is_reached_over_http_or_its_socket_on_this_host() -> None:
    assert client_for({"node": "a", "control": "http://10.0.0.1:8080/"}, "t") is not None
    assert client_for({"node": "a", "control": "unix:/run/b.sock", "host": "h"}, "", host="h") is not None
    with pytest.raises(ControlUnavailable, match="only a unix socket on host h2"):
        client_for({"node": "a", "control": "unix:/run/b.sock", "host": "h2"}, "", host="h")
    with pytest.raises(ControlUnavailable, match="no control address"):
        client_for({"node": "a"}, "")
    # a loopback or wildcard listener is that node's own host's: from another host it would
    # reach the local node under the other's name
    for local in ("http://127.0.0.1:8080/", "http://0.0.0.0:8080/", "http://[::1]:8080/", "http://localhost:8080/"):
        assert client_for({"node": "a", "control": local, "host": "h"}, "t", host="h") is not None
        with pytest.raises(ControlUnavailable, match="control_url"):
            client_for({"node": "a", "control": local, "host": "h2"}, "t", host="h")
    assert client_for({"node": "a", "control": "http://b2bua-2.example:8080/", "host": "h2"}, "t", host="h")


def test_call_all_keeps_each_answer_apart() -> None:
    class Fake:
        def __init__(self, info: dict[str, object]) -> None:
            self.info = info

        def call(self, method: str, params: object, timeout: float) -> object:
            if self.info["node"] == "b":
                raise ControlUnavailable("cannot connect")
            return f"{method} on {self.info['node']}"

    answers = call_all([{"node": "a"}, {"node": "b"}], "core.version", None, token="", timeout=1,
                       client=lambda info, token: Fake(info))  # type: ignore[arg-type,return-value]
    assert [(a.node, a.result, a.error) for a in answers] == [
        ("a", "core.version on a", None), ("b", None, "cannot connect")]


def listing(*dests: tuple[str, str, int, dict[str, object] | None]) -> dict[str, object]:
    targets = [{"DEST": {"URI": uri, "FLAGS": flags, "RUNTIME": {"DLGLOAD": calls},
                         **({"CLUSTER": cluster} if cluster else {})}}
               for uri, flags, calls, cluster in dests]
    return {"NRSETS": 1, "RECORDS": [{"SET": {"ID": 1, "TARGETS": targets}}]}


def test_cluster_table_puts_nodes_side_by_side() -> None:
    answers = [
        NodeAnswer("a", {}, listing(("sip:g1", "AP", 3, {"PROBER": "b", "LOAD": 5}), ("sip:g2", "DX", 0, None))),
        NodeAnswer("b", {}, listing(("sip:g1", "AP", 2, {"PROBER": "b", "LOAD": 5}), ("sip:g2", "AP", 0, None))),
        NodeAnswer("c", {}, error="cannot connect"),
    ]
    headers, rows = cluster_table(answers)
    assert headers == ["SET", "URI", "PROBER", "a", "b", "c", "LOAD"]
    assert rows == [[1, "sip:g1", "b", "AP/3", "AP/2", "?", 5], [1, "sip:g2", "-", "DX/0", "AP/0", "?", "-"]]
    assert errors_of(answers) == ["node c: cannot connect"]


def test_rpc_all_without_a_cluster_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.toml").write_text("[control]\nsocket = 'b.sock'\n")
    monkeypatch.chdir(tmp_path)
    parser = argparse.ArgumentParser()
    add_rpc_command(parser.add_subparsers())
    args = parser.parse_args(["rpc", "--all", "core.version"])
    err = io.StringIO()
    with redirect_stderr(err):
        assert args.func(args) == 2
    assert "--all needs [cluster] redis_url" in err.getvalue()


def test_rpc_all_prints_what_redis_and_the_nodes_hold_escaped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    # a node's name, host, address and answers come from Redis and other processes: an ESC
    # sequence or a line break in them must not reach the operator's terminal as such
    import b2bua.fanout as fanout

    (tmp_path / "config.toml").write_text("[cluster]\nredis_url = 'redis://127.0.0.1:1'\n")
    monkeypatch.chdir(tmp_path)
    evil = {"node": "a\x1b[2J", "host": "h\r\n== b (fake", "control": "http://x\x07"}
    monkeypatch.setattr(fanout, "cluster_nodes", lambda config: [evil])
    monkeypatch.setattr(fanout, "call_all", lambda nodes, *a, **k: [
        NodeAnswer("a\x1b[2J", evil, error="boom\x1b[31m"), NodeAnswer("b", {"host": "h"}, result={"k\x1b": "v\x1b"})])
    parser = argparse.ArgumentParser()
    add_rpc_command(parser.add_subparsers())
    args = parser.parse_args(["rpc", "--all", "core.version"])
    args.func(args)
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out
    assert out.splitlines()[:2] == ["== a\\x1b[2J (h\\x0d\\x0a== b (fake, http://x\\x07)", "error: boom\\x1b[31m"]
    assert "k\\x1b: v\\x1b" in out
