"""config.toml parsing: defaults, types, unknown keys, TOML paths in every error."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from b2bua.config import (
    Config,
    ConfigError,
    Listen,
    SipConfig,
    describe_bounds,
    is_loopback_host,
    load_config,
    parse_config,
    split_host_port,
)

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
        ({"sip": {"udp_receive_buffer": -1}}, "config.toml: [sip] udp_receive_buffer: must be 0-1073741824, got -1"),
        ({"sip": {"overload_delay": 11}}, "config.toml: [sip] overload_delay: must be 0-10, got 11"),
        ({"sip": {"overload_backlog": 0}},
         "config.toml: [sip]: 'overload_backlog' is no more: 'overload_delay' took its place (docs/config.md)"),
        ({"routing": {"default_target": "10.0.0.1"}}, "[routing] default_target: 10.0.0.1: no URI scheme"),
        ({"log": {"level": "LOUD"}}, "[log] level: 'LOUD' is not one of"),
        ({"control": {"http": "0.0.0.0:8080"}}, "not a loopback address: set token too"),
        ({"bogus": {}}, "config.toml: unknown section [bogus]"),
        ({"security": {"trusted": ["10.0.0.1/8"]}},
         "[security] trusted[0]: '10.0.0.1/8' is not an address or network (10.0.0.1/8 has host bits set)"),
        ({"security": {"trusted": ["gateway.example"]}}, "[security] trusted[0]: 'gateway.example' is not an"),
        ({"security": {"untrusted_code": 200}}, "[security] untrusted_code: must be 400-699, got 200"),
        ({"security": {"invite_rate": -1}}, "[security] invite_rate: must be 0 or more"),
        ({"security": {"scanners": [" "]}}, "[security] scanners[0]: empty"),
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


# -- ranges and forms: every number and string of the host's sections ----------------------------


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        # the cases: start-up crashed (SWIG OverflowError), every control request reset
        ({"sip": {"rtp_port": 70000}}, "config.toml: [sip] rtp_port: must be 1024-65534, got 70000"),
        ({"control": {"max_request_bytes": -1}},
         "config.toml: [control] max_request_bytes: must be 256-16777216, got -1"),
        ({"sip": {"retry_after": -1}}, "config.toml: [sip] retry_after: must be 0-86400, got -1"),
        ({"sip": {"rtp_port": 1023}}, "[sip] rtp_port: must be 1024-65534, got 1023"),
        ({"sip": {"rtp_port": 16001}}, "[sip] rtp_port: must be even"),
        ({"sip": {"rtp_port": 64000}}, "[sip] rtp_port: 64000 leaves 1536 ports for media, but max_calls = 500 "
                                       "needs at least 2000"),
        ({"sip": {"max_calls": 0}}, "[sip] max_calls: must be 1 or more, got 0"),
        # pjsua holds 8 transports: the 9th listener stopped the start with pjsip's ERROR lines
        ({"sip": {"listen": [f"udp:127.0.0.{i}:5060" for i in range(1, 10)]}},
         "[sip] listen: 9 listeners, but pjsua holds at most 8"),
        ({"sip": {"max_forks": 0}}, "[sip] max_forks: must be 1 or more, got 0"),
        ({"sip": {"admission_code": 200}}, "[sip] admission_code: must be 400-699, got 200"),
        ({"sip": {"admission_code": 302}}, "[sip] admission_code: must be 400-699, got 302"),
        ({"sip": {"admission_code": 700}}, "[sip] admission_code: must be 400-699, got 700"),
        ({"sip": {"retry_after": 86401}}, "[sip] retry_after: must be 0-86400"),
        ({"sip": {"attempt_timeout": 0}}, "[sip] attempt_timeout: must be 0.1-300, got 0.0"),
        ({"sip": {"attempt_timeout": -5}}, "[sip] attempt_timeout: must be 0.1-300, got -5.0"),
        ({"sip": {"attempt_timeout": 5000}}, "[sip] attempt_timeout: must be 0.1-300, got 5000.0"),  # ms?
        ({"sip": {"answer_timeout": 0.0}}, "[sip] answer_timeout: must be 0.1-3600"),
        ({"sip": {"answer_timeout": float("inf")}}, "[sip] answer_timeout: expected a finite number, got inf"),
        ({"sip": {"attempt_timeout": float("nan")}}, "[sip] attempt_timeout: expected a finite number, got nan"),
        ({"sip": {"shutdown_grace": -1}}, "[sip] shutdown_grace: must be 0-3600, got -1.0"),
        ({"sip": {"overload_lag": -0.1}}, "[sip] overload_lag: must be 0-60, got -0.1"),
        ({"sip": {"listen": []}}, "[sip] listen: at least one listener is needed"),
        ({"sip": {"listen": ["udp:127.0.0.1:70000"]}}, "[sip] listen[0]: 'udp:127.0.0.1:70000': expected"),
        ({"sip": {"listen": ["udp:127.0.0.1:0"]}}, "[sip] listen[0]: 'udp:127.0.0.1:0': the port must be 1-65535"),
        ({"sip": {"listen": ["udp:999.0.0.1:5060"]}},
         "[sip] listen[0]: 'udp:999.0.0.1:5060': '999.0.0.1' is not an IP address"),
        ({"sip": {"listen": ["tcp:127.0.0:5060"]}},
         "[sip] listen[0]: 'tcp:127.0.0:5060': '127.0.0' is not an IP address"),
        ({"sip": {"listen": ["udp:[::1::2]:5060"]}},
         "[sip] listen[0]: 'udp:[::1::2]:5060': '::1::2' is not an IP address"),
        ({"sip": {"listen": ["udp:127.0.0.1:5060", "UDP:127.0.0.1:5060"]}},
         "[sip] listen[1]: 'UDP:127.0.0.1:5060' is the same listener as listen[0]"),
        ({"sip": {"codecs": []}}, "[sip] codecs: list at least one codec"),
        ({"sip": {"codecs": ["PCMU 8000"]}},
         "[sip] codecs[0]: 'PCMU 8000': expected NAME, NAME/CLOCK or NAME/CLOCK/CHANNELS"),
        ({"sip": {"user_agent": "b2bua\r\nX-Evil: 1"}},
         "[sip] user_agent: must be one line of text, without control characters (found '\\r' at offset 5)"),
        ({"log": {"pjsip_level": 6}}, "[log] pjsip_level: must be 0-5, got 6"),
        ({"log": {"pjsip_level": -1}}, "[log] pjsip_level: must be 0-5, got -1"),
        ({"log": {"file": "b2bua\x00.log"}}, "[log] file: must be one line of text"),
        ({"control": {"max_request_bytes": 0}}, "[control] max_request_bytes: must be 256-16777216, got 0"),
        ({"control": {"max_request_bytes": 2**40}}, "[control] max_request_bytes: must be 256-16777216"),
        ({"control": {"http": "127.0.0.1:70000"}}, "[control] http: '127.0.0.1:70000': expected ADDRESS:PORT"),
        ({"control": {"http": "127.0.0.1:0"}}, "[control] http: '127.0.0.1:0': the port must be 1-65535"),
        ({"control": {"http": "127.0.0.1"}}, "[control] http: '127.0.0.1': expected ADDRESS:PORT"),
        ({"control": {"http": "[::1:8080"}}, "[control] http: '[::1:8080': expected ADDRESS:PORT"),
        ({"control": {"http": "10.0.0.1:8080"}}, "[control] http: '10.0.0.1:8080' is not a loopback address"),
        ({"control": {"http": "[::]:8080"}}, "[control] http: '[::]:8080' is not a loopback address"),
        ({"control": {"token": "two words"}}, "[control] token: use printable ASCII without spaces"),
        ({"control": {"token": "pässword"}}, "[control] token: use printable ASCII without spaces"),
        ({"control": {"socket": "b2bua.sock\n"}}, "[control] socket: must be one line of text"),
        ({"routing": {"no_route_code": 200}}, "[routing] no_route_code: must be 400-699, got 200"),
        ({"routing": {"no_route_reason": "No\nRoute"}}, "[routing] no_route_reason: must be one line of text"),
        ({"routing": {"default_target": "sip:"}}, "[routing] default_target: sip:: no host"),
        ({"routing": {"default_target": "sip:10.0.0.1?X-Injected=yes"}},
         "[routing] default_target: 'sip:10.0.0.1?X-Injected=yes': a target URI has no '?headers'"),
        ({"routing": {"default_target": "sip:10.0.0.1 SIP/2.0"}},
         "[routing] default_target: sip:10.0.0.1 SIP/2.0: blanks, control or non-ASCII characters"),
        ({"plugins": {"enabled": ["dispatcher", "dispatcher"]}}, "[plugins] enabled[1]: 'dispatcher' is listed twice"),
        ({"plugins": {"enabled": [" "]}}, "[plugins] enabled[0]: empty plugin name"),
    ],
)
def test_values_out_of_range_or_form(doc: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(doc, "config.toml")
    assert message in str(err.value)


@pytest.mark.parametrize(
    "doc",
    [
        {"sip": {"rtp_port": 1024, "retry_after": 0, "attempt_timeout": 0.1, "answer_timeout": 3600,
                 "shutdown_grace": 0, "overload_lag": 0, "overload_delay": 0, "udp_receive_buffer": 0,
                 "admission_code": 699}},
        {"sip": {"rtp_port": 65532, "max_calls": 1}},  # 65532-65535: one call's four ports
        {"sip": {"rtp_port": 63536}},  # 2000 ports for 500 calls: just enough
        {"sip": {"codecs": ["PCMU", "opus/48000/2", "G722/16000"], "user_agent": "b2bua\t1.0"}},
        {"sip": {"listen": ["udp:[::1]:5060", "tcp:[::1]:5060", "udp:127.0.0.1:5060"]}},
        {"sip": {"listen": [f"{t}:127.0.0.{i}:5060" for t in ("udp", "tcp") for i in range(1, 5)]}},  # 8
        {"log": {"pjsip_level": 0}},
        {"control": {"http": "127.0.0.2:1", "max_request_bytes": 256}},
        {"control": {"http": "[::1]:65535", "max_request_bytes": 16 * 1024 * 1024}},
        {"control": {"http": "localhost:8090"}},
        {"control": {"http": "0.0.0.0:8090", "token": "Zm9v+YmFy/=~-._!$%&"}},
        {"routing": {"default_target": "sips:gw.example.com:5061;transport=tcp", "no_route_code": 400}},
    ],
)
def test_values_at_the_edges_are_accepted(doc: dict) -> None:
    parse_config(doc, "config.toml")


def test_rtp_port_at_the_top_leaves_no_room() -> None:
    message = "rtp_port: 65534 leaves 2 ports for media, but max_calls = 2 needs at least 8"
    with pytest.raises(ConfigError, match=message):
        parse_config({"sip": {"rtp_port": 65534, "max_calls": 2}}, "config.toml")


def test_plugin_sections_get_the_generic_checks_too() -> None:
    from dataclasses import dataclass

    from b2bua.config import opt, parse_section

    @dataclass(frozen=True)
    class Mine:
        level: int = opt(1, "a level", bounds=(1, 3))
        interval: float = opt(1.0, "seconds")
        name: str = opt("x", "a name")

    assert parse_section(Mine, {"level": 3, "interval": 0.5}, "c.toml: [plugins.mine]") == Mine(3, 0.5)
    with pytest.raises(ConfigError, match=r"^c.toml: \[plugins.mine\] level: must be 1-3, got 4$"):
        parse_section(Mine, {"level": 4}, "c.toml: [plugins.mine]")
    with pytest.raises(ConfigError, match=r"interval: expected a finite number, got -inf"):
        parse_section(Mine, {"interval": float("-inf")}, "c.toml: [plugins.mine]")
    with pytest.raises(ConfigError, match=r"name: must be one line of text.*'\\x1b'"):
        parse_section(Mine, {"name": "\x1b[2J"}, "c.toml: [plugins.mine]")


def test_check_config_names_the_toml_path(tmp_path: Path) -> None:
    # the real command in its own process: it sets up logging for the whole process
    path = tmp_path / "config.toml"
    path.write_text("[sip]\nrtp_port = 70000\n")
    done = subprocess.run([sys.executable, "-m", "b2bua", "check-config", "-c", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"error: {path}: [sip] rtp_port: must be 1024-65534, got 70000\n"


@pytest.mark.parametrize(
    ("bounds", "text"), [((1024, 65534), "1024-65534"), ((0, None), "0 or more"), ((None, 5), "5 or less"),
                         ((0.1, 300), "0.1-300")],
)
def test_describe_bounds(bounds: tuple, text: str) -> None:
    assert describe_bounds(bounds) == text


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.53", True), ("127.255.255.254", True), ("::1", True), ("[::1]", True),
     ("localhost", True), ("LOCALHOST", True), ("0.0.0.0", False), ("10.0.0.1", False), ("::", False),
     ("::ffff:127.0.0.1", False), ("example.com", False), ("localhost.example.com", False), ("", False)],
)
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:8080", ("127.0.0.1", 8080)), ("[::1]:0", ("::1", 0)), ("localhost:1", ("localhost", 1)),
     ("::1:8080", ("::1", 8080))],
)
def test_split_host_port(text: str, expected: tuple[str, int]) -> None:
    assert split_host_port(text) == expected


@pytest.mark.parametrize("text", ["8080", ":8080", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:70000", "[::1]x:80",
                                  "[]:80", "127.0.0.1:-1", "127.0.0.1: 80"])
def test_split_host_port_errors(text: str) -> None:
    with pytest.raises(ValueError, match="expected ADDRESS:PORT"):
        split_host_port(text)


SIP_KEYS = ", ".join(sorted(f.name for f in dataclasses.fields(SipConfig)))


def test_every_error_is_reported_not_only_the_first() -> None:
    doc = {
        "sip": {"max_calls": "many", "max_call": 3, "codecs": ["PCMU/8000", 5, None], "rtp_port": 70000},
        "log": {"level": "LOUD"},
        "bogus": {},
        "plugins": {"enabled": "dispatcher", "dispatcher": {"anything": 1}},
    }
    with pytest.raises(ConfigError) as err:
        parse_config(doc, "config.toml")
    assert err.value.errors == (
        "config.toml: unknown section [bogus] (known: sip, log, control, routing, security, headers, cluster, plugins)",
        f"config.toml: [sip]: unknown key 'max_call' (known keys: {SIP_KEYS})",
        "config.toml: [sip] max_calls: expected an integer, got 'many'",
        "config.toml: [sip] codecs[1]: expected a string, got 5",
        "config.toml: [sip] codecs[2]: expected a string, got None",
        "config.toml: [sip] rtp_port: must be 1024-65534, got 70000",
        "config.toml: [log] level: 'LOUD' is not one of TRACE, DEBUG, INFO, SUCCESS, WARNING, ERROR, CRITICAL",
        "config.toml: [plugins] enabled: expected a list, got 'dispatcher'",
    )
    assert str(err.value) == "\n".join(err.value.errors)


def test_parse_config_all_keeps_going_with_defaults() -> None:
    from b2bua.config import parse_config_all

    config, errors = parse_config_all(
        {"sip": {"max_calls": 0}, "log": {"json": True}, "plugins": {"enabled": ["x"], "x": {"a": 1}}}, "c.toml")
    assert errors == ("c.toml: [sip] max_calls: must be 1 or more, got 0",)
    assert config.sip.max_calls == 500  # the broken section at its defaults
    assert config.log.json is True  # the good ones as written
    assert config.plugins.enabled == ("x",) and config.plugin_section("x") == {"a": 1}


def test_a_single_error_reads_as_before() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"sip": {"max_calls": "many"}}, "config.toml")
    assert err.value.errors == ("config.toml: [sip] max_calls: expected an integer, got 'many'",)
    assert str(err.value) == err.value.errors[0]


@pytest.mark.parametrize(("environ", "path"), [
    ({}, "config.toml"),
    ({"B2BUA_CONFIG": ""}, "config.toml"),
    ({"B2BUA_CONFIG": "/etc/b2bua.toml"}, "/etc/b2bua.toml"),
])
def test_default_config_path(environ: dict[str, str], path: str) -> None:
    from b2bua.config import default_config_path

    assert default_config_path(environ) == path


def test_a_config_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_bytes(b'[sip]\nuser_agent = "\xff"\n')
    with pytest.raises(ConfigError, match=r"config.toml:2: not UTF-8 text \(byte 20: 0xff\)"):
        load_config(path)


def test_a_config_with_a_byte_order_mark_says_so(tmp_path: Path) -> None:
    # it was "not valid TOML: Invalid statement (at line 1, column 1)", for a file that looks right
    path = tmp_path / "config.toml"
    path.write_bytes(b"\xef\xbb\xbf[sip]\nmax_calls = 10\n")
    with pytest.raises(ConfigError, match=r"config.toml:1: starts with a byte order mark \(U\+FEFF\)"):
        load_config(path)
