"""b2bua.workers: what each worker process changes in the shared config.toml."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from b2bua.config import ConfigError, parse_config
from b2bua.workers import parse_worker_config, supervise, worker_config

DATA = {
    "sip": {"listen": ["udp:127.0.0.1:5060", "tcp:[::1]:5070"], "rtp_port": 16000},
    "control": {"socket": "run/b2bua.sock", "http": "127.0.0.1:8080"},
    "log": {"file": "logs/b2bua.log"},
    "plugins": {"enabled": ["dispatcher"], "dispatcher": {"db_url": "sqlite:///dispatcher.db"}},
}


def test_worker_0_keeps_the_configured_addresses() -> None:
    out = worker_config(DATA, 0, 5000)
    assert out["sip"]["listen"] == DATA["sip"]["listen"]
    assert out["sip"]["rtp_port"] == 16000 and out["sip"]["rtp_ports"] == 5000
    assert out["control"] == DATA["control"] and out["log"] == DATA["log"]
    assert "rtp_ports" not in DATA["sip"]  # the original is not changed


def test_worker_i_moves_what_two_processes_cannot_share() -> None:
    out = worker_config(DATA, 2, 5000)
    assert out["sip"]["listen"] == ["udp:127.0.0.1:5062", "tcp:[::1]:5072"]
    assert out["sip"]["rtp_port"] == 26000 and out["sip"]["rtp_ports"] == 5000
    assert out["control"] == {"socket": "run/b2bua-2.sock", "http": "127.0.0.1:8082"}
    assert out["log"]["file"] == "logs/b2bua-2.log"
    assert out["plugins"]["dispatcher"]["state_file"] == "dispatcher-state-2.json"
    assert out["plugins"]["dispatcher"]["db_url"] == "sqlite:///dispatcher.db"  # destinations shared
    config = parse_config(out, "worker", Path("/srv"))
    assert [str(x) for x in config.sip.listeners] == ["udp:127.0.0.1:5062", "tcp:[::1]:5072"]


def test_an_empty_control_socket_stays_off() -> None:
    out = worker_config({"control": {"socket": ""}}, 1, 1000)
    assert out["control"]["socket"] == ""
    assert out["sip"]["listen"] == ["udp:127.0.0.1:5061", "tcp:127.0.0.1:5061"]


CLUSTER = {"redis_url": "redis://127.0.0.1:6379/0", "node": "b2bua-a", "control_url": "http://10.0.0.5:8080/"}


def test_every_worker_is_a_node_of_its_own() -> None:
    """docs/scale-out.md's node name on two workers: two names, not one refused again and again."""
    workers = [worker_config({**DATA, "cluster": CLUSTER}, i, 5000) for i in range(3)]
    assert [w["cluster"]["node"] for w in workers] == ["b2bua-a-w0", "b2bua-a-w1", "b2bua-a-w2"]
    # the control API's port moves with [control] http's, and the published URL with it
    assert [w["cluster"]["control_url"] for w in workers] == [
        "http://10.0.0.5:8080/", "http://10.0.0.5:8081/", "http://10.0.0.5:8082/"]
    assert [w["control"]["http"] for w in workers] == ["127.0.0.1:8080", "127.0.0.1:8081", "127.0.0.1:8082"]
    assert CLUSTER["node"] == "b2bua-a"  # the original is not changed
    configs = [parse_config(w, "worker", Path("/srv")) for w in workers]
    assert [c.cluster.node for c in configs] == ["b2bua-a-w0", "b2bua-a-w1", "b2bua-a-w2"]


def test_a_default_port_and_ipv6_in_control_url_move_too() -> None:
    data = {"control": {"http": "[::]:80"}, "cluster": {"control_url": "http://[2001:db8::5]/"}}
    assert worker_config(data, 1, 1000)["cluster"]["control_url"] == "http://[2001:db8::5]:81/"
    assert worker_config(data, 0, 1000)["cluster"]["control_url"] == "http://[2001:db8::5]/"


def test_without_a_node_name_the_default_host_and_port_names_differ_already() -> None:
    out = worker_config({"cluster": {"redis_url": "redis://127.0.0.1/0"}}, 1, 1000)
    assert "node" not in out["cluster"] and "control_url" not in out["cluster"]


@pytest.mark.parametrize(("control", "said"), [
    ({"http": "127.0.0.1:8080"}, "names port 9000, [control] http's port 8080"),
    ({}, "names port 9000, no [control] http"),
])
def test_a_control_url_on_a_port_the_workers_do_not_move_is_refused(control: dict[str, str], said: str,
                                                                    tmp_path: Path) -> None:
    """A proxy's port cannot be told apart per worker: every worker would publish worker 0's address."""
    data = {"control": control, "cluster": {"node": "a", "control_url": "https://proxy.example:9000/b2bua"}}
    assert worker_config(data, 0, 1000)["cluster"]["control_url"] == "https://proxy.example:9000/b2bua"
    with pytest.raises(ConfigError, match="^cfg.toml \\(worker 1\\): \\[cluster\\] control_url "
                       "'https://proxy.example:9000/b2bua' " + re.escape(said)):
        parse_worker_config(Path("cfg.toml"), data, 1, 1000)


def test_supervise_refuses_a_bad_worker_config_once_before_starting_any(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[control]\nhttp = "127.0.0.1:8080"\n[cluster]\nredis_url = "redis://127.0.0.1/0"\n'
                      f'node = "{"n" * 62}"\n')
    with pytest.raises(ConfigError, match=r"\(worker 0\): \[cluster\] node: 'n{62}-w0': use 1-64"):
        supervise(str(config), 2, 0)


def test_each_worker_signs_its_call_records() -> None:
    # every worker wrote node = the host name: the records of one call could not say which
    # worker (and which log file) had it
    import socket

    cdr = {"plugins": {"enabled": ["cdr"], "cdr": {"file": "cdr.jsonl"}}}
    assert [worker_config(cdr, i, 1000)["plugins"]["cdr"]["node"] for i in range(2)] == [
        f"{socket.gethostname()}-w0", f"{socket.gethostname()}-w1"]
    named = {"plugins": {"enabled": ["cdr"], "cdr": {"node": "sbc1"}}}
    workers = [worker_config(named, i, 1000) for i in range(2)]
    assert [w["plugins"]["cdr"]["node"] for w in workers] == ["sbc1-w0", "sbc1-w1"]
    assert [w["plugins"]["cdr"].get("file") for w in workers] == [None, None]  # one file, appended by all
    assert named["plugins"]["cdr"]["node"] == "sbc1"  # the original is not changed
