"""GET routes of the HTTP control listener: the table, access levels, and the guard in front of them,
over a real ControlServer on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from b2bua.config import ControlConfig
from b2bua.control import ControlServer
from b2bua.control_guard import access_refusal
from b2bua.control_routes import Access, HttpRequest, HttpResponse, Route, RouteTable, json_response
from b2bua.rpc import RpcRegistry

ADMIN_TOKEN = "adm1n-token"
READ_TOKEN = "r34d-token"


def echo(request: HttpRequest) -> HttpResponse:
    return json_response(200, {"path": request.path, "query": {k: list(v) for k, v in request.query.items()},
                               "method": request.method, "agent": request.headers.get("user-agent")})


def crash(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("secret detail")


ROUTES = [
    Route("/open", echo, Access.PUBLIC),
    Route("/data", echo, Access.READ),
    Route("/admin", echo, Access.ADMIN),
    Route("/crash", crash, Access.PUBLIC),
    Route("/static/", lambda r: HttpResponse(200, b"body of " + r.path.encode(), "text/plain"), Access.PUBLIC,
          prefix=True),
]


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(f"{m.record['level'].name} {m.record['message']}"), level="DEBUG")
    yield lines
    logger.remove(sink)


ServerFactory = Callable[..., ControlServer]


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[ServerFactory]:
    servers: list[ControlServer] = []

    def factory(**config: Any) -> ControlServer:
        options = {"socket": "", "http": "127.0.0.1:0", **config}
        server = ControlServer(RpcRegistry(), lambda fn, timeout: fn(), ControlConfig(**options), tmp_path,
                               routes=ROUTES)
        server.start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


def get(server: ControlServer, path: str, headers: dict[str, str] | None = None,
        method: str = "GET", body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    assert server.http_address is not None
    conn = http.client.HTTPConnection(*server.http_address, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_a_public_route_answers_with_its_query_and_headers(make_server: ServerFactory) -> None:
    server = make_server(token=ADMIN_TOKEN)
    status, headers, body = get(server, "/open?a=1&a=2&b=x", {"User-Agent": "probe/1"})
    assert status == 200
    assert headers["Content-Type"] == "application/json" and headers["Cache-Control"] == "no-store"
    assert json.loads(body) == {"path": "/open", "query": {"a": ["1", "2"], "b": ["x"]}, "method": "GET",
                                "agent": "probe/1"}


def test_head_has_the_headers_without_the_body(make_server: ServerFactory) -> None:
    status, headers, body = get(make_server(), "/open", method="HEAD")
    assert (status, body) == (200, b"")
    assert int(headers["Content-Length"]) > 0


def test_prefix_routes_and_unknown_paths(make_server: ServerFactory) -> None:
    server = make_server()
    assert get(server, "/static/app.js")[2] == b"body of /static/app.js"
    assert server.http_address is not None
    with socket.create_connection(server.http_address, timeout=5) as sock:  # http.client refuses the ESC
        sock.sendall(b"GET /nothing\x1b[31m HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):  # a refusal closes the connection after the answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 404 ")
    assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {"error": "Not found: /nothing?[31m"}
    # GET of the JSON-RPC path: still 405, POST is the way there; a route takes no POST or PUT
    status, headers, _ = get(server, "/rpc")
    assert (status, headers["Allow"]) == (405, "POST")
    status, headers, _ = get(server, "/open", method="PUT")
    assert (status, headers["Allow"]) == (405, "GET, HEAD")


@pytest.mark.parametrize(("path", "authorization", "status"), [
    ("/data", None, 401),
    ("/data", "Bearer wrong", 401),
    ("/data", f"Basic {READ_TOKEN}", 401),
    ("/data", f"Bearer {READ_TOKEN}", 200),
    ("/data", f"Bearer {ADMIN_TOKEN}", 200),  # the admin token reads too
    ("/admin", f"Bearer {READ_TOKEN}", 401),  # the read token administers nothing
    ("/admin", f"Bearer {ADMIN_TOKEN}", 200),
    ("/open", "Bearer wrong", 200),  # a public route ignores what it is sent
])
def test_access_levels_over_http(make_server: ServerFactory, log_lines: list[str], path: str,
                                 authorization: str | None, status: int) -> None:
    server = make_server(token=ADMIN_TOKEN, read_token=READ_TOKEN)
    got, headers, body = get(server, path, {"Authorization": authorization} if authorization else {})
    assert got == status
    if status == 401:
        assert headers["WWW-Authenticate"] == 'Bearer realm="b2bua"'
        assert json.loads(body) == {"error": "Unauthorized: send 'Authorization: Bearer <token>'"}
        refusals = [line for line in log_lines if "HTTP 401" in line]
        assert len(refusals) == 1 and f"(GET {path})" in refusals[0]
        assert (READ_TOKEN not in refusals[0]) and ("wrong" in refusals[0] or "no token" in refusals[0])


def test_without_tokens_every_level_is_open_on_loopback(make_server: ServerFactory) -> None:
    server = make_server()
    assert [get(server, p)[0] for p in ("/open", "/data", "/admin")] == [200, 200, 200]


def test_get_passes_the_same_guard_as_post(make_server: ServerFactory) -> None:
    server = make_server()
    assert server.http_address is not None
    port = server.http_address[1]
    # DNS rebinding: a name in Host without a token
    assert get(server, "/open", {"Host": f"attacker.example:{port}"})[0] == 421
    # a cross-origin page reading it through a browser
    assert get(server, "/open", {"Origin": "http://attacker.example"})[0] == 403
    # the page's own origin is fine
    assert get(server, "/open", {"Origin": f"http://127.0.0.1:{port}", "Host": f"127.0.0.1:{port}"})[0] == 200


def test_a_get_with_a_body_is_refused(make_server: ServerFactory) -> None:
    status, headers, _ = get(make_server(), "/open", {"Content-Length": "3"}, body=b"abc")
    assert status == 400 and headers["Connection"] == "close"


def test_a_failing_handler_answers_500_and_logs_it(make_server: ServerFactory, log_lines: list[str]) -> None:
    status, _, body = get(make_server(), "/crash")
    assert status == 500 and "secret detail" not in body.decode()
    assert any("GET /crash failed" in line for line in log_lines)


def test_keep_alive_serves_get_then_post(make_server: ServerFactory) -> None:
    server = make_server()
    assert server.http_address is not None
    conn = http.client.HTTPConnection(*server.http_address, timeout=5)
    try:
        for _ in range(2):
            conn.request("GET", "/open")
            assert conn.getresponse().read()
        conn.request("POST", "/", body=b'{"jsonrpc":"2.0","id":1,"method":"nope"}',
                     headers={"Content-Type": "application/json"})
        assert json.loads(conn.getresponse().read())["error"]["code"] == -32601
    finally:
        conn.close()


# -- the table and the rule, without a server ----------------------------------------------------


def test_route_table_lookup_and_mistakes() -> None:
    table = RouteTable(ROUTES)
    assert table.find("/data") is ROUTES[1]
    assert table.find("/static/x/y") is ROUTES[4]
    assert table.find("/static") is None and table.find("/datax") is None
    assert len(table) == len(ROUTES)
    with pytest.raises(ValueError, match="added twice"):
        table.add(Route("/data", echo, Access.ADMIN))
    with pytest.raises(ValueError, match="starts with '/'"):
        Route("metrics", echo, Access.READ)
    with pytest.raises(ValueError, match="ends with '/'"):
        Route("/static", echo, Access.READ, prefix=True)


@pytest.mark.parametrize(("access", "authorization", "token", "read_token", "refused"), [
    (Access.PUBLIC, None, "t", "r", False),
    (Access.READ, None, "", "", False),
    (Access.ADMIN, None, "", "r", False),  # only a read token: administration stays loopback-open
    (Access.READ, None, "t", "", True),
    (Access.READ, "Bearer t", "t", "", False),
    (Access.READ, "bearer r", "t", "r", False),
    (Access.READ, "Bearer  r ", "t", "r", False),
    (Access.READ, "Bearer x", "t", "r", True),
    (Access.ADMIN, "Bearer r", "t", "r", True),
    (Access.ADMIN, "Token t", "t", "r", True),
    (Access.ADMIN, "Bearer t\xff", "t", "", True),
])
def test_access_refusal(access: Access, authorization: str | None, token: str, read_token: str,
                        refused: bool) -> None:
    assert (access_refusal(access, authorization, token, read_token) is not None) is refused
