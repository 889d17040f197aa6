"""b2bua.workers: what each worker process changes in the shared config.toml."""

from __future__ import annotations

from pathlib import Path

from b2bua.config import parse_config
from b2bua.workers import worker_config

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
