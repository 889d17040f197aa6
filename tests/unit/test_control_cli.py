"""``b2bua rpc``: param parsing, output, exit codes, and finding the server, run in-process."""

from __future__ import annotations

import argparse
import json
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from b2bua.config import ControlConfig
from b2bua.control import ControlServer
from b2bua.control_cli import add_rpc_command, format_tree, parse_param
from b2bua.core_rpc import register_core_methods
from b2bua.rpc import RpcError, RpcRegistry

TOKEN = "t0ken"

# -- pure parts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("5", 5),
        ("-1", -1),
        ("1.5", 1.5),
        ("true", True),
        ("false", False),
        ("null", None),
        ('{"a": [1, "b"]}', {"a": [1, "b"]}),
        ("[1,2]", [1, 2]),
        ('"quoted"', "quoted"),
        ("ip", "ip"),
        ("sip:10.0.0.1:5060;transport=tcp", "sip:10.0.0.1:5060;transport=tcp"),
        ("s:5", "5"),
        ("s:true", "true"),
        ("s:", ""),
        ("s:s:x", "s:x"),
        ("s:-x", "-x"),
        ("NaN", "NaN"),
        ("Infinity", "Infinity"),
        ("{broken", "{broken"),
        ("", ""),
    ],
)
def test_parse_param(text: str, value: Any) -> None:
    assert parse_param(text) == value
    assert type(parse_param(text)) is type(value)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, ""),
        ("plain", "plain"),
        (42, "42"),
        (1.5, "1.5"),
        (True, "true"),
        ([], ""),
        (["a", 2], "a\n2"),
        ({}, "{}"),
        ({"now": 5, "name": "b2bua"}, "{\n\tnow: 5\n\tname: b2bua\n}"),
        (
            {"SET": {"ID": 1, "TARGETS": [{"URI": "sip:a", "FLAGS": "AP"}], "EMPTY": [], "NONE": None}},
            "{\n\tSET: {\n\t\tID: 1\n\t\tTARGETS: [\n\t\t\t{\n\t\t\t\tURI: sip:a\n\t\t\t\tFLAGS: AP\n\t\t\t}\n"
            "\t\t]\n\t\tEMPTY: []\n\t\tNONE: null\n\t}\n}",
        ),
        ([{"a": 1}, {"a": 2}], "{\n\ta: 1\n}\n{\n\ta: 2\n}"),
        ("usage: x\nhelp line", "usage: x\nhelp line"),
        ({"x y": "first\nsecond"}, "{\n\tx y: first\n\t\tsecond\n}"),
        ({"URI\x1b[2J": "sip:a\x1b]0;owned\x07\r\n"}, "{\n\tURI\\x1b[2J: sip:a\\x1b]0;owned\\x07\n\t\t\n}"),
    ],
    ids=[
        "none", "string", "int", "float", "bool", "empty-list", "list", "empty-dict", "dict", "nested",
        "list-of-dicts", "multiline", "multiline-in-dict", "control-characters",
    ],
)
def test_format_tree(value: Any, text: str) -> None:
    assert format_tree(value) == text


# -- the command, in-process against a real server -----------------------------------------------


@dataclass
class FakeApp:
    version: str = "9.9.9"
    started_at: float = 0.0

    def plugin_names(self) -> list[str]:
        return ["dispatcher"]

    def active_calls(self) -> list[dict[str, Any]]:
        return []


def make_registry() -> RpcRegistry:
    registry = RpcRegistry()

    def echo(*args: Any) -> list[Any]:
        return list(args)

    def set_state(state: str, group: int, address: str) -> dict[str, Any]:
        return {"state": state, "group": group, "address": address}

    def reload() -> None:
        raise RpcError("Ongoing reload", data={"retry_after": 5})

    registry.add("test.echo", echo, "Return the params.")
    registry.add("dispatcher.set_state", set_state, "Set a destination's state.")
    registry.add("dispatcher.reload", reload, "Reload the destinations.")
    register_core_methods(registry, FakeApp())
    return registry


def run_directly(fn: Callable[[], Any], timeout: float) -> Any:
    return fn()


@pytest.fixture
def start_server() -> Iterator[Callable[..., ControlServer]]:
    servers: list[ControlServer] = []

    def start(base_dir: Path, **config: Any) -> ControlServer:
        server = ControlServer(make_registry(), run_directly, ControlConfig(**config), base_dir)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def server(tmp_path: Path, start_server: Callable[..., ControlServer]) -> ControlServer:
    return start_server(tmp_path, socket="b2bua.sock", http="127.0.0.1:0", token=TOKEN)


@dataclass
class Outcome:
    code: int
    out: str
    err: str


@pytest.fixture
def rpc(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Outcome]:
    monkeypatch.delenv("B2BUA_TOKEN", raising=False)
    root = argparse.ArgumentParser(prog="b2bua")
    add_rpc_command(root.add_subparsers(dest="command", required=True))

    def run(*argv: str) -> Outcome:
        capsys.readouterr()
        args = root.parse_args(["rpc", *argv])
        code = args.func(args)
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return run


def url_of(server: ControlServer) -> str:
    assert server.http_address is not None
    host, port = server.http_address
    return f"http://{host}:{port}/"


def test_call_prints_a_tree(server: ControlServer, rpc: Callable[..., Outcome]) -> None:
    result = rpc("--socket", str(server.socket_path), "dispatcher.set_state", "ip", "1", "sip:10.0.0.1:5060")
    assert result == Outcome(0, "{\n\tstate: ip\n\tgroup: 1\n\taddress: sip:10.0.0.1:5060\n}\n", "")


def test_json_output_and_param_types(server: ControlServer, rpc: Callable[..., Outcome]) -> None:
    result = rpc("--socket", str(server.socket_path), "--json", "test.echo", "1", "s:2", "-3", "x", '{"k":true}')
    assert result.code == 0
    assert json.loads(result.out) == [1, "2", -3, "x", {"k": True}]


def test_scalar_result(server: ControlServer, rpc: Callable[..., Outcome]) -> None:
    assert rpc("--socket", str(server.socket_path), "core.version") == Outcome(0, "9.9.9\n", "")


def test_help_lists_methods_with_usage(server: ControlServer, rpc: Callable[..., Outcome]) -> None:
    result = rpc("--socket", str(server.socket_path), "help")
    assert result.code == 0
    assert "\tdispatcher.set_state state group address: Set a destination's state.\n" in result.out
    assert "\tcore.uptime: " in result.out
    listed = rpc("--socket", str(server.socket_path), "system.listMethods")
    assert "core.version" in listed.out.splitlines()


@pytest.mark.parametrize(
    ("argv", "err_start"),
    [
        (("no.such",), "error: -32601 Method not found: no.such"),
        (("dispatcher.set_state", "ip"), "error: -32602 Invalid params for dispatcher.set_state"),
        (("dispatcher.reload",), "error: -32000 Ongoing reload\n{\n\tretry_after: 5\n}"),
        (("system.methodHelp", "no.such"), "error: -32601 Method not found: no.such"),
    ],
)
def test_rpc_errors_exit_1(
    server: ControlServer, rpc: Callable[..., Outcome], argv: tuple[str, ...], err_start: str
) -> None:
    result = rpc("--socket", str(server.socket_path), *argv)
    assert (result.code, result.out) == (1, "")
    assert result.err.startswith(err_start)


def test_usage_of_a_method_is_in_the_error(server: ControlServer, rpc: Callable[..., Outcome]) -> None:
    result = rpc("--socket", str(server.socket_path), "dispatcher.set_state", "ip")
    assert "usage: dispatcher.set_state state group address" in result.err


def test_no_server_exits_2(tmp_path: Path, rpc: Callable[..., Outcome]) -> None:
    path = tmp_path / "none.sock"
    result = rpc("--socket", str(path), "core.version")
    assert result == Outcome(2, "", f"error: cannot connect to {path}: is the b2bua running?\n")


def test_http_with_token(server: ControlServer, rpc: Callable[..., Outcome], monkeypatch: pytest.MonkeyPatch) -> None:
    url = url_of(server)
    assert rpc("--url", url, "--token", TOKEN, "core.version") == Outcome(0, "9.9.9\n", "")
    wrong = rpc("--url", url, "--token", "wrong", "core.version")
    assert (wrong.code, wrong.err.split(" ")[:2]) == (1, ["error:", "-32001"])
    missing = rpc("--url", url, "core.version")
    assert missing.code == 1
    monkeypatch.setenv("B2BUA_TOKEN", TOKEN)
    assert rpc("--url", url, "core.version").code == 0


def test_http_connection_refused_exits_2(rpc: Callable[..., Outcome]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = rpc("--url", f"http://127.0.0.1:{port}/", "core.version")
    assert result.code == 2
    assert "is the b2bua running?" in result.err


def test_http_without_token_by_address_or_localhost(
    tmp_path: Path, start_server: Callable[..., ControlServer], rpc: Callable[..., Outcome]
) -> None:
    server = start_server(tmp_path, socket="", http="127.0.0.1:0")
    assert server.http_address is not None
    port = server.http_address[1]
    assert rpc("--url", f"http://127.0.0.1:{port}/", "core.version") == Outcome(0, "9.9.9\n", "")
    assert rpc("--url", f"http://localhost:{port}/RPC", "core.version") == Outcome(0, "9.9.9\n", "")


def test_bad_url_exits_2(rpc: Callable[..., Outcome]) -> None:
    result = rpc("--url", "127.0.0.1:8080", "core.version")
    assert result.code == 2
    assert result.err.startswith("error: '127.0.0.1:8080': expected an http:// URL")


# -- finding the server from the config ----------------------------------------------------------


def test_config_socket_is_relative_to_the_config_file(
    tmp_path: Path, start_server: Callable[..., ControlServer], rpc: Callable[..., Outcome],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    etc = tmp_path / "etc"
    (etc / "run").mkdir(parents=True)
    (etc / "b2bua.toml").write_text('[control]\nsocket = "run/ctl.sock"\n')
    start_server(etc, socket="run/ctl.sock")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert rpc("-c", str(etc / "b2bua.toml"), "core.version") == Outcome(0, "9.9.9\n", "")


def test_default_config_in_the_current_folder(
    tmp_path: Path, start_server: Callable[..., ControlServer], rpc: Callable[..., Outcome],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "config.toml").write_text('[control]\nsocket = "custom.sock"\n')
    start_server(tmp_path, socket="custom.sock")
    monkeypatch.chdir(tmp_path)
    assert rpc("core.version").code == 0


def test_built_in_defaults_without_a_config_file(
    tmp_path: Path, start_server: Callable[..., ControlServer], rpc: Callable[..., Outcome],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    start_server(tmp_path, socket="b2bua.sock")  # the default [control] socket
    monkeypatch.chdir(tmp_path)
    assert not (tmp_path / "config.toml").exists()
    assert rpc("core.version").code == 0


def test_config_with_http_only_uses_its_token(
    tmp_path: Path, start_server: Callable[..., ControlServer], rpc: Callable[..., Outcome]
) -> None:
    server = start_server(tmp_path, socket="", http="127.0.0.1:0", token=TOKEN)
    assert server.http_address is not None
    port = server.http_address[1]
    config = tmp_path / "b2bua.toml"
    config.write_text(f'[control]\nsocket = ""\nhttp = "127.0.0.1:{port}"\ntoken = "{TOKEN}"\n')
    assert rpc("-c", str(config), "core.version") == Outcome(0, "9.9.9\n", "")
    # --url takes the token from the config too
    assert rpc("-c", str(config), "--url", url_of(server), "core.version").code == 0


@pytest.mark.parametrize(
    ("content", "err_part"),
    [
        (None, "cannot read"),
        ("[control\n", "not valid TOML"),
        ('[control]\nsockett = "x"\n', "unknown key 'sockett'"),
        ('[control]\nsocket = ""\n', "[control] sets neither socket nor http"),
    ],
)
def test_config_problems_exit_2(
    tmp_path: Path, rpc: Callable[..., Outcome], content: str | None, err_part: str
) -> None:
    config = tmp_path / "b2bua.toml"
    if content is not None:
        config.write_text(content)
    result = rpc("-c", str(config), "core.version")
    assert (result.code, result.out) == (2, "")
    assert result.err.startswith("error: ")
    assert err_part in result.err


def test_missing_method_is_a_usage_error(rpc: Callable[..., Outcome]) -> None:
    with pytest.raises(SystemExit) as info:
        rpc()
    assert info.value.code == 2


@pytest.mark.parametrize("timeout", ["-1", "nan", "inf", "0", "soon"])
def test_a_timeout_that_is_not_seconds_above_0_is_a_usage_error(
    rpc: Callable[..., Outcome], capsys: pytest.CaptureFixture[str], timeout: str
) -> None:
    # -1 and nan were a Python traceback (socket.settimeout), 0 "no answer within 0s"
    with pytest.raises(SystemExit) as info:
        rpc("--socket", "/nonexistent.sock", "--timeout", timeout, "core.version")
    assert info.value.code == 2
    assert f"argument --timeout: expected seconds above 0, got '{timeout}'" in capsys.readouterr().err
