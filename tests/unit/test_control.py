"""The control API over a real unix socket (in tmp_path) and real HTTP on 127.0.0.1."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import queue
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from b2bua.config import ControlConfig
from b2bua.control import (
    UNAUTHORIZED,
    ControlClient,
    ControlError,
    ControlServer,
    ControlUnavailable,
    JsonRpcProcessor,
    RpcCallError,
    parse_http_address,
)
from b2bua.rpc import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    SERVER_ERROR,
    RpcError,
    RpcRegistry,
)

LIMIT = 1024
TOKEN = "s3cret-token"

# -- fixtures ----------------------------------------------------------------------------------


class FakeLoop:
    """A stand-in for the loop thread: runs handed-over callables one at a time on its thread."""

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[Callable[[], Any], concurrent.futures.Future[Any]] | None] = (
            queue.Queue()
        )
        self.thread = threading.Thread(target=self._run, name="fake-loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            fn, future = item
            try:
                future.set_result(fn())
            except Exception as exc:
                future.set_exception(exc)

    def run_on_loop(self, fn: Callable[[], Any], timeout: float) -> Any:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put((fn, future))
        return future.result(timeout)  # raises TimeoutError, or re-raises fn's exception

    def close(self) -> None:
        self._queue.put(None)
        self.thread.join(5)


def run_directly(fn: Callable[[], Any], timeout: float) -> Any:
    return fn()


class Recorder:
    """Methods whose effects the tests inspect."""

    def __init__(self) -> None:
        self.values: list[Any] = []
        self.release = threading.Event()

    def record(self, value: Any) -> None:
        self.values.append(value)

    def block(self) -> str:
        self.release.wait(5)
        return "released"


def make_registry(rec: Recorder) -> RpcRegistry:
    reg = RpcRegistry()

    def echo(*args: Any) -> list[Any]:
        return list(args)

    def add(a: int, b: int) -> int:
        return a + b

    def kw(name: str, count: int = 1) -> dict[str, Any]:
        return {"name": name, "count": count}

    def fail() -> None:
        raise RpcError("Ongoing reload", data={"retry_after": 5})

    def crash() -> None:
        raise KeyError("secret-internal-detail")

    def bad_result() -> object:
        return object()

    def thread_name() -> str:
        return threading.current_thread().name

    reg.add("test.echo", echo, "Return the params.")
    reg.add("test.add", add, "Add two numbers.")
    reg.add("test.kw", kw, "Named params.")
    reg.add("test.fail", fail, "Raise an application error.")
    reg.add("test.crash", crash, "Raise a bug.")
    reg.add("test.bad_result", bad_result, "Return something that is not JSON.")
    reg.add("test.record", rec.record, "Remember a value.")
    reg.add("test.block", rec.block, "Block the loop until released.")
    reg.add("test.thread", thread_name, "The thread the method runs on.")
    reg.add("test.thread_off", thread_name, "The thread an off-loop method runs on.", on_loop=False)
    return reg


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    rec = Recorder()
    yield rec
    rec.release.set()


@pytest.fixture
def fake_loop() -> Iterator[FakeLoop]:
    loop = FakeLoop()
    yield loop
    loop.close()


ServerFactory = Callable[..., ControlServer]


@pytest.fixture
def make_server(tmp_path: Path, recorder: Recorder, fake_loop: FakeLoop) -> Iterator[ServerFactory]:
    servers: list[ControlServer] = []

    def factory(
        *, run_on_loop: Callable[[Callable[[], Any], float], Any] | None = None, start: bool = True, **kw: Any
    ) -> ControlServer:
        options: dict[str, Any] = {"socket": "b2bua.sock", "http": "127.0.0.1:0", "max_request_bytes": LIMIT}
        options.update(kw.pop("config", {}))
        server = ControlServer(
            make_registry(recorder), run_on_loop or fake_loop.run_on_loop, ControlConfig(**options), tmp_path, **kw
        )
        servers.append(server)
        if start:
            server.start()
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture
def server(make_server: ServerFactory) -> ControlServer:
    return make_server()


# -- raw transport helpers -----------------------------------------------------------------------


def read_lines(sock: socket.socket, count: int, timeout: float = 5.0) -> list[bytes]:
    """``count`` newline-terminated lines (fewer if the peer closes); reads byte by byte so
    that nothing past them is consumed."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while data.count(b"\n") < count and time.monotonic() < deadline:
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data.splitlines()


def unix_connect(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(path))
    return sock


SENTINEL = b'{"jsonrpc":"2.0","id":"sentinel","method":"test.echo"}'


def unix_exchange(path: Path, payload: bytes) -> Any:
    """Send ``payload`` then a sentinel request on one connection: the payload's answer or None."""
    with unix_connect(path) as sock:
        sock.sendall(payload + b"\n" + SENTINEL + b"\n")
        answers: list[Any] = []
        for _ in range(3):  # at most: the payload's answer, the sentinel's, one spare
            answer = json.loads(read_lines(sock, 1)[0])
            if isinstance(answer, dict) and answer.get("id") == "sentinel":
                break
            answers.append(answer)
        else:
            raise AssertionError(f"no answer to the sentinel after {answers}")
    assert len(answers) <= 1, answers
    return answers[0] if answers else None


def http_post(
    address: tuple[str, int], body: bytes, headers: dict[str, str] | None = None, path: str = "/",
    method: str = "POST",
) -> tuple[int, http.client.HTTPMessage, bytes]:
    conn = http.client.HTTPConnection(*address, timeout=5)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read()
    finally:
        conn.close()


def http_exchange(address: tuple[str, int], payload: bytes) -> Any:
    status, _, body = http_post(address, payload)
    if status == 204:
        assert body == b""
        return None
    assert status == 200, (status, body)
    return json.loads(body)


Exchange = Callable[[bytes], Any]


@pytest.fixture(params=["unix", "http"])
def exchange(request: pytest.FixtureRequest, server: ControlServer) -> Exchange:
    if request.param == "unix":
        assert server.socket_path is not None
        path = server.socket_path
        return lambda payload: unix_exchange(path, payload)
    address = server.http_address
    assert address is not None
    return lambda payload: http_exchange(address, payload)


def req(method: str, params: Any = None, id: Any = 1, **extra: Any) -> bytes:
    obj: dict[str, Any] = {"jsonrpc": "2.0", "method": method, **extra}
    if params is not None:
        obj["params"] = params
    if id is not ...:
        obj["id"] = id
    return json.dumps(obj).encode()


def error_of(answer: Any) -> tuple[Any, int]:
    return answer["id"], answer["error"]["code"]


# -- JSON-RPC semantics, over both transports ------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (req("test.add", [2, 3]), {"jsonrpc": "2.0", "id": 1, "result": 5}),
        (req("test.kw", {"name": "gw", "count": 2}, id="a"),
         {"jsonrpc": "2.0", "id": "a", "result": {"name": "gw", "count": 2}}),
        (req("test.kw", ["gw"], id=7.5), {"jsonrpc": "2.0", "id": 7.5, "result": {"name": "gw", "count": 1}}),
        (req("test.echo", id=None), {"jsonrpc": "2.0", "id": None, "result": []}),
        (req("test.echo", ["ü", {"x": [1, None]}]), {"jsonrpc": "2.0", "id": 1, "result": ["ü", {"x": [1, None]}]}),
    ],
    ids=["positional", "named", "defaults", "null-id", "nested"],
)
def test_results(exchange: Exchange, payload: bytes, expected: Any) -> None:
    assert exchange(payload) == expected


@pytest.mark.parametrize(
    ("payload", "expected_id", "code"),
    [
        (b'{"jsonrpc":"2.0","id":1,"method":', None, PARSE_ERROR),
        (b"\xff\xfe{not utf-8", None, PARSE_ERROR),
        (b'{"jsonrpc":"2.0","id":1,"method":"test.echo","params":[NaN]}', None, PARSE_ERROR),
        (b"5", None, INVALID_REQUEST),
        (b'"test.echo"', None, INVALID_REQUEST),
        (b"[]", None, INVALID_REQUEST),
        (req("test.echo", jsonrpc="1.0"), 1, INVALID_REQUEST),
        (b'{"id":3,"method":"test.echo"}', 3, INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":4,"method":5}', 4, INVALID_REQUEST),
        (req("test.echo", "a string", id=5), 5, INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":{"x":1},"method":"test.echo"}', None, INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":true,"method":"test.echo"}', None, INVALID_REQUEST),
        (req("no.such", id=6), 6, METHOD_NOT_FOUND),
        (req("test.add", [1], id=7), 7, INVALID_PARAMS),
        (req("test.kw", {"nme": "x"}, id=8), 8, INVALID_PARAMS),
        (req("test.fail", id=9), 9, SERVER_ERROR),
        (req("test.crash", id=10), 10, INTERNAL_ERROR),
        (req("test.bad_result", id=11), 11, INTERNAL_ERROR),
    ],
    ids=[
        "truncated", "not-utf8", "nan", "number", "string", "empty-batch", "jsonrpc-1.0", "no-jsonrpc",
        "method-not-string", "params-string", "id-object", "id-bool", "unknown-method", "missing-param",
        "unknown-named-param", "app-error", "crash", "bad-result",
    ],
)
def test_errors(exchange: Exchange, payload: bytes, expected_id: Any, code: int) -> None:
    answer = exchange(payload)
    assert answer["jsonrpc"] == "2.0"
    assert error_of(answer) == (expected_id, code)
    assert "result" not in answer


def test_wrong_params_error_shows_usage(exchange: Exchange) -> None:
    answer = exchange(req("test.add", [1, 2, 3]))
    assert answer["error"]["code"] == INVALID_PARAMS
    assert "usage: test.add a b" in answer["error"]["message"]


def test_app_error_keeps_message_and_data(exchange: Exchange) -> None:
    answer = exchange(req("test.fail"))
    assert answer["error"] == {"code": SERVER_ERROR, "message": "Ongoing reload", "data": {"retry_after": 5}}


def test_internal_error_is_short_and_logged(exchange: Exchange) -> None:
    logged: list[str] = []
    sink = logger.add(lambda m: logged.append(str(m)), level="ERROR", format="{message}\n{exception}")
    try:
        answer = exchange(req("test.crash"))
    finally:
        logger.remove(sink)
    message = answer["error"]["message"]
    assert message == "Internal error (KeyError); see the b2bua log"
    assert "secret-internal-detail" not in json.dumps(answer)
    assert any("test.crash failed" in entry and "secret-internal-detail" in entry for entry in logged)


def test_batch(exchange: Exchange, recorder: Recorder) -> None:
    payload = b"[" + b",".join([
        req("test.add", [1, 1], id=1),
        req("test.record", ["batched"], id=...),
        req("no.such", id=2),
        b"1",
        req("test.echo", ["x"], id=3),
    ]) + b"]"
    answer = exchange(payload)
    assert [a.get("id") for a in answer] == [1, 2, None, 3]
    assert answer[0]["result"] == 2
    assert answer[1]["error"]["code"] == METHOD_NOT_FOUND
    assert answer[2]["error"]["code"] == INVALID_REQUEST
    assert answer[3]["result"] == ["x"]
    assert recorder.values == ["batched"]


def test_notifications_get_no_answer_but_run(exchange: Exchange, recorder: Recorder) -> None:
    assert exchange(req("test.record", ["one"], id=...)) is None
    assert exchange(b"[" + req("test.record", ["two"], id=...) + b"," + req("no.such", id=...) + b"]") is None
    assert exchange(req("test.crash", id=...)) is None
    assert recorder.values == ["one", "two"]


# -- threads -----------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["unix", "http"])
def test_on_loop_methods_run_on_the_loop_thread(server: ControlServer, transport: str) -> None:
    client = client_for(server, transport)
    assert client.call("test.thread") == "fake-loop"
    assert client.call("test.thread_off") == f"control-{transport}"


@pytest.mark.parametrize("transport", ["unix", "http"])
def test_direct_run_on_loop_runs_on_the_api_thread(make_server: ServerFactory, transport: str) -> None:
    server = make_server(run_on_loop=run_directly)
    client = client_for(server, transport)
    assert client.call("test.thread") == f"control-{transport}"
    assert client.call("test.add", [40, 2]) == 42


def test_loop_timeout_is_an_error_and_the_server_keeps_serving(
    make_server: ServerFactory, recorder: Recorder
) -> None:
    server = make_server(loop_timeout=0.2)
    client = client_for(server, "unix")
    with pytest.raises(RpcCallError) as info:
        client.call("test.block")
    assert info.value.code == SERVER_ERROR
    assert "did not answer within 0.2s" in info.value.message
    assert client.call("test.thread_off") == "control-unix"  # off-loop methods are not stuck behind it
    recorder.release.set()
    assert client.call("test.add", [1, 2]) == 3


def client_for(server: ControlServer, transport: str, token: str = "") -> ControlClient:
    if transport == "unix":
        assert server.socket_path is not None
        return ControlClient.unix(server.socket_path)
    assert server.http_address is not None
    host, port = server.http_address
    return ControlClient.http(f"http://{host}:{port}/", token)


# -- unix socket ---------------------------------------------------------------------------------


def test_unix_several_requests_per_connection(server: ControlServer) -> None:
    assert server.socket_path is not None
    with unix_connect(server.socket_path) as sock:
        sock.sendall(req("test.add", [1, 2], id=1) + b"\n\n" + req("test.echo", ["a"], id=2) + b"\r\n")
        sock.sendall(req("test.record", [1], id=...) + b"\n" + req("test.add", [2, 2], id=3) + b"\n")
        lines = [json.loads(line) for line in read_lines(sock, 3)]
    assert [(a["id"], a["result"]) for a in lines] == [(1, 3), (2, ["a"]), (3, 4)]


def test_unix_last_request_without_newline_is_answered(server: ControlServer) -> None:
    assert server.socket_path is not None
    with unix_connect(server.socket_path) as sock:
        sock.sendall(req("test.add", [1, 2]))
        sock.shutdown(socket.SHUT_WR)
        assert json.loads(read_lines(sock, 1)[0])["result"] == 3


def padded(size: int) -> bytes:
    """A valid request of exactly ``size`` bytes."""
    base = req("test.echo", [""], id=1)
    payload = req("test.echo", ["x" * (size - len(base))], id=1)
    assert len(payload) == size
    return payload


def test_unix_request_at_the_limit_is_served(server: ControlServer) -> None:
    assert server.socket_path is not None
    with unix_connect(server.socket_path) as sock:
        sock.sendall(padded(LIMIT) + b"\n")
        answer = json.loads(read_lines(sock, 1)[0])
    assert answer["result"] == ["x" * (LIMIT - len(req("test.echo", [""], id=1)))]


def test_unix_oversize_request_is_refused_and_the_server_goes_on(server: ControlServer) -> None:
    assert server.socket_path is not None
    with unix_connect(server.socket_path) as sock:
        sock.sendall(padded(LIMIT + 1) + b"\n" + req("test.add", [1, 1]) + b"\n")
        lines = read_lines(sock, 2)
        assert len(lines) == 1  # the connection is closed after the refusal
        assert error_of(json.loads(lines[0])) == (None, INVALID_REQUEST)
        assert f"larger than {LIMIT} bytes" in json.loads(lines[0])["error"]["message"]
    # a stream far over the limit: refused without being read to the end
    with unix_connect(server.socket_path) as sock:
        sock.sendall(b"[" * (LIMIT * 4))
        assert error_of(json.loads(read_lines(sock, 1)[0])) == (None, INVALID_REQUEST)
    assert unix_exchange(server.socket_path, req("test.add", [2, 3]))["result"] == 5


def test_unix_socket_mode_is_0600(server: ControlServer) -> None:
    assert server.socket_path is not None
    st = os.stat(server.socket_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert [p.name for p in server.socket_path.parent.iterdir() if p.name.startswith(".b2bua-")] == []


def test_stale_socket_file_is_replaced(make_server: ServerFactory, tmp_path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "b2bua.sock"))
    stale.close()  # the file stays, nobody listens: what a crashed b2bua leaves behind
    server = make_server()
    assert client_for(server, "unix").call("test.add", [1, 2]) == 3


def test_refuses_to_start_over_a_live_server(make_server: ServerFactory) -> None:
    first = make_server()
    second = make_server(start=False, config={"http": ""})
    with pytest.raises(ControlError, match="in use: another b2bua answers there"):
        second.start()
    assert not second.running
    assert client_for(first, "unix").call("test.add", [1, 2]) == 3


def test_refuses_to_replace_a_regular_file(make_server: ServerFactory, tmp_path: Path) -> None:
    (tmp_path / "b2bua.sock").write_text("keep me")
    server = make_server(start=False)
    with pytest.raises(ControlError, match="exists and is not a socket"):
        server.start()
    assert (tmp_path / "b2bua.sock").read_text() == "keep me"


def test_missing_socket_folder_is_a_clear_error(make_server: ServerFactory) -> None:
    server = make_server(start=False, config={"socket": "nope/b2bua.sock"})
    with pytest.raises(ControlError, match=r"folder .*nope does not exist"):
        server.start()


def test_socket_path_relative_to_base_dir_or_absolute(make_server: ServerFactory, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    assert make_server(start=False, config={"socket": "run/ctl.sock"}).socket_path == tmp_path / "run/ctl.sock"
    absolute = tmp_path / "abs.sock"
    assert make_server(start=False, config={"socket": str(absolute)}).socket_path == absolute
    assert make_server(start=False, config={"socket": ""}).socket_path is None


def test_stop_removes_socket_closes_connections_and_is_idempotent(server: ControlServer) -> None:
    path = server.socket_path
    assert path is not None and path.exists()
    idle = unix_connect(path)
    try:
        # one exchange first: the connection is accepted and its thread waits for the next line
        idle.sendall(req("test.add", [1, 1]) + b"\n")
        assert json.loads(read_lines(idle, 1)[0])["result"] == 2
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 3.0  # an idle connection does not hold stop() up
        assert idle.recv(10) == b""  # the server closed it
    finally:
        idle.close()
    assert not path.exists()
    assert not server.running
    server.stop()
    with pytest.raises(ControlUnavailable, match=f"cannot connect to {path}: is the b2bua running"):
        ControlClient.unix(path).call("test.echo")


def test_start_is_idempotent_and_restart_works(server: ControlServer) -> None:
    address = server.http_address
    server.start()
    assert server.http_address == address
    server.stop()
    server.start()
    assert client_for(server, "unix").call("test.add", [1, 2]) == 3


def test_stop_keeps_a_socket_file_that_is_not_ours(server: ControlServer) -> None:
    path = server.socket_path
    assert path is not None
    path.unlink()
    path.write_text("another instance's")
    server.stop()
    assert path.read_text() == "another instance's"


# -- HTTP ----------------------------------------------------------------------------------------


def test_http_paths_and_methods(server: ControlServer) -> None:
    address = server.http_address
    assert address is not None
    for path in ("/", "/rpc", "/rpc?x=1"):
        status, _, body = http_post(address, req("test.add", [1, 2]), path=path)
        assert (status, json.loads(body)["result"]) == (200, 3)
    status, headers, body = http_post(address, b"", method="GET")
    assert (status, headers["Allow"]) == (405, "POST")
    assert json.loads(body)["error"]["code"] == INVALID_REQUEST
    status, _, body = http_post(address, req("test.add", [1, 2]), path="/other")
    assert status == 404


def test_http_notification_is_204(server: ControlServer, recorder: Recorder) -> None:
    assert server.http_address is not None
    status, _, body = http_post(server.http_address, req("test.record", ["n"], id=...))
    assert (status, body, recorder.values) == (204, b"", ["n"])


def test_http_keep_alive_serves_several_requests(server: ControlServer) -> None:
    assert server.http_address is not None
    conn = http.client.HTTPConnection(*server.http_address, timeout=5)
    try:
        for i in range(3):
            conn.request("POST", "/", body=req("test.add", [i, 1], id=i))
            resp = conn.getresponse()
            assert json.loads(resp.read()) == {"jsonrpc": "2.0", "id": i, "result": i + 1}
    finally:
        conn.close()


def test_http_oversize_is_refused_without_reading_it(server: ControlServer) -> None:
    assert server.http_address is not None
    status, headers, body = http_post(server.http_address, padded(LIMIT + 1))
    assert status == 413
    assert headers["Connection"] == "close"
    assert error_of(json.loads(body)) == (None, INVALID_REQUEST)
    status, _, body = http_post(server.http_address, padded(LIMIT))
    assert status == 200 and "result" in json.loads(body)
    with pytest.raises(RpcCallError) as info:
        client_for(server, "http").call("test.echo", ["x" * (LIMIT * 2)])
    assert info.value.code == INVALID_REQUEST


def test_http_without_content_length_is_refused(server: ControlServer) -> None:
    assert server.http_address is not None
    with socket.create_connection(server.http_address, timeout=5) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        head = sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 411")


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        ("Bearer wrong", 401),
        (f"Bearer {TOKEN}x", 401),
        (f"Basic {TOKEN}", 401),
        (TOKEN, 401),
        (f"Bearer {TOKEN}", 200),
        (f"bearer  {TOKEN}", 200),
    ],
)
def test_http_token(make_server: ServerFactory, authorization: str | None, status: int) -> None:
    server = make_server(config={"token": TOKEN})
    assert server.http_address is not None
    headers = {"Authorization": authorization} if authorization is not None else {}
    got, resp_headers, body = http_post(server.http_address, req("test.add", [1, 2]), headers=headers)
    assert got == status
    answer = json.loads(body)
    if status == 401:
        assert resp_headers["WWW-Authenticate"].startswith("Bearer")
        assert answer["error"]["code"] == UNAUTHORIZED
        assert "result" not in answer
    else:
        assert answer["result"] == 3


def test_http_client_with_and_without_token(make_server: ServerFactory) -> None:
    server = make_server(config={"token": TOKEN})
    assert client_for(server, "http", TOKEN).call("test.add", [2, 2]) == 4
    with pytest.raises(RpcCallError) as info:
        client_for(server, "http", "nope").call("test.add", [2, 2])
    assert info.value.code == UNAUTHORIZED
    # the unix socket relies on its file mode, not the token
    assert client_for(server, "unix").call("test.add", [2, 2]) == 4


def test_non_loopback_http_without_token_refuses_to_start(make_server: ServerFactory, tmp_path: Path) -> None:
    # ControlConfig() built directly skips validate(): the server checks again
    server = make_server(start=False, config={"http": "0.0.0.0:0"})
    with pytest.raises(ControlError, match="not a loopback address: set token"):
        server.start()
    assert not server.running
    assert not (tmp_path / "b2bua.sock").exists()  # the unix listener opened first was closed again


def test_http_port_in_use_is_a_clear_error(make_server: ServerFactory, server: ControlServer) -> None:
    assert server.http_address is not None
    host, port = server.http_address
    other = make_server(start=False, config={"socket": "", "http": f"{host}:{port}"})
    with pytest.raises(ControlError, match=f"cannot listen on {host}:{port}"):
        other.start()


# -- client --------------------------------------------------------------------------------------


def test_client_http_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ControlUnavailable, match=r"cannot connect to .*: is the b2bua running"):
        ControlClient.http(f"http://127.0.0.1:{port}/").call("core.version", timeout=2)


def test_client_rejects_a_non_http_url() -> None:
    with pytest.raises(ValueError, match="expected an http:// URL"):
        ControlClient.http("ftp://127.0.0.1/")


@pytest.mark.parametrize(
    ("answer", "match"),
    [
        (b"hello\n", "not JSON"),
        (b'{"jsonrpc":"2.0","id":99,"result":1}\n', "answered request 1 with id 99"),
        (b'{"id":1,"result":1}\n', "not a JSON-RPC 2.0 response"),
        (b"", "closed the connection without an answer"),
    ],
)
def test_client_bad_answers(tmp_path: Path, answer: bytes, match: str) -> None:
    path = tmp_path / "fake.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(answer)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with pytest.raises(ControlUnavailable, match=match):
            ControlClient.unix(path).call("x", timeout=5)
    finally:
        thread.join(5)
        listener.close()


def test_client_times_out(tmp_path: Path) -> None:
    path = tmp_path / "mute.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)
        started = time.monotonic()
        with pytest.raises(ControlUnavailable, match=r"no answer from .* within 0\.3s"):
            ControlClient.unix(path).call("x", timeout=0.3)
        assert time.monotonic() - started < 2


# -- pure parts ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:8080", ("127.0.0.1", 8080)), ("[::1]:0", ("::1", 0)), ("localhost:1", ("localhost", 1))],
)
def test_parse_http_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_http_address(text) == expected


@pytest.mark.parametrize("text", ["8080", ":8080", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:70000"])
def test_parse_http_address_errors(text: str) -> None:
    with pytest.raises(ControlError, match="expected ADDRESS:PORT"):
        parse_http_address(text)


def test_processor_without_transport(recorder: Recorder) -> None:
    processor = JsonRpcProcessor(make_registry(recorder), run_directly)
    assert json.loads(processor.handle(req("test.add", [1, 2])) or b"") == {"jsonrpc": "2.0", "id": 1, "result": 3}
    assert processor.handle(req("test.record", ["x"], id=...)) is None
    assert recorder.values == ["x"]
