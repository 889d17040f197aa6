"""config.toml parsing: defaults, types, unknown keys, TOML paths in every error."""

from __future__ import annotations

from pathlib import Path

import pytest

from b2bua.config import Config, ConfigError, Listen, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_config_parses() -> None:
    config = load_config(ROOT / "config.toml")
    assert config.sip.listeners[0] == Listen("udp", "127.0.0.1", 5060)
    assert "dispatcher" in config.plugins.enabled


def test_defaults() -> None:
    config = parse_config({})
    assert config.sip.listen == ("udp:127.0.0.1:5060", "tcp:127.0.0.1:5060")
    assert config.routing.default_target == ""
    assert config.plugins.enabled == ()


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"sip": {"max_calls": "many"}}, "config.toml: [sip] max_calls: expected an integer, got 'many'"),
        ({"sip": {"max_call": 3}}, "config.toml: [sip]: unknown key 'max_call'"),
        ({"sip": {"listen": ["sctp:1.2.3.4:5060"]}}, "config.toml: [sip] listen[0]: 'sctp:1.2.3.4:5060'"),
        ({"sip": {"listen": "udp:127.0.0.1:5060"}}, "config.toml: [sip] listen: expected a list"),
        ({"sip": {"session_timers": 1}}, "[sip] session_timers: expected a boolean"),
        ({"sip": {"overload_backlog": -1}}, "overload_backlog: must be 0 (off) or a number of bytes"),
        ({"routing": {"default_target": "10.0.0.1"}}, "[routing] default_target: '10.0.0.1' is not a sip: URI"),
        ({"log": {"level": "LOUD"}}, "[log] level: 'LOUD' is not one of"),
        ({"control": {"http": "0.0.0.0:8080"}}, "not a loopback address: set token too"),
        ({"bogus": {}}, "config.toml: unknown section [bogus]"),
        ({"plugins": {"enabled": "dispatcher"}}, "[plugins] enabled: expected a list"),
    ],
)
def test_errors_name_the_toml_path(doc: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(doc, "config.toml")
    assert message in str(err.value)


def test_plugin_sections_are_kept_raw() -> None:
    config = parse_config({"plugins": {"enabled": ["x"], "x": {"a": 1}}}, "c.toml")
    assert config.plugin_section("x") == {"a": 1}
    assert config.plugin_section("y") == {}
    assert config.where("plugins.x") == "c.toml: [plugins.x]"


def test_malformed_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[sip\nlisten = 1\n")
    with pytest.raises(ConfigError, match=r"bad.toml: not valid TOML"):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("")
    config = load_config(path)
    assert config.resolve_path("d.db") == tmp_path / "d.db"
    assert isinstance(config, Config)
