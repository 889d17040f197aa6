"""The web status page's routes over a real ControlServer on 127.0.0.1: the static page and its
security headers, the data route's access and ``admin`` flag, and the page's own rules (no inline
script, no markup built from text). The page in a browser: tests/e2e/test_web.py."""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from b2bua.config import ControlConfig
from b2bua.control import ControlServer, JsonRpcProcessor
from b2bua.control_routes import HttpRequest
from b2bua.rpc import RawJson, RpcRegistry
from b2bua.web import PAGE_HEADERS, STATUS_METHODS, status_request, web_routes
from b2bua.web.routes import STATIC_FILES, status_body

ADMIN_TOKEN = "adm1n-token"
READ_TOKEN = "r34d-token"
LISTING = b'{"NRSETS":1,"RECORDS":[{"SET":{"ID":1,"TARGETS":[{"DEST":{"URI":"sip:gw@127.0.0.1","FLAGS":"AP"}}]}}]}'


def registry(with_dispatcher: bool = True) -> RpcRegistry:
    reg = RpcRegistry()
    reg.add("core.stats", lambda: {"state": "up", "calls": {"active": 0}}, "node")
    if with_dispatcher:
        reg.add("dispatcher.list", lambda: RawJson(LISTING), "list")
        reg.add("dispatcher.stats", lambda: {"sets": []}, "stats")
    reg.add("dispatcher.set_state", lambda state, setid, uri: "Ok. State updated", "act")
    return reg


ServerFactory = Callable[..., ControlServer]


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[ServerFactory]:
    servers: list[ControlServer] = []

    def factory(with_dispatcher: bool = True, **config: Any) -> ControlServer:
        ctl = ControlConfig(**{"socket": "", "http": "127.0.0.1:0", **config})
        reg = registry(with_dispatcher)
        run_on_loop = lambda fn, timeout: fn()  # noqa: E731 - no loop thread here
        routes = web_routes(JsonRpcProcessor(reg, run_on_loop).handle, ctl.token, ctl.read_token,
                            clock=lambda: 1700000000.25)
        server = ControlServer(reg, run_on_loop, ctl, tmp_path, routes=routes)
        server.start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(f"{m.record['level'].name} {m.record['message']}"), level="DEBUG")
    yield lines
    logger.remove(sink)


def request(server: ControlServer, path: str, token: str | None = None, method: str = "GET",
            body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    assert server.http_address is not None
    conn = http.client.HTTPConnection(*server.http_address, timeout=5)
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=body, headers=sent)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_the_batch_and_the_body() -> None:
    calls = json.loads(status_request())
    assert [(c["id"], c["method"]) for c in calls] == [(1, "core.stats"), (2, "dispatcher.list"),
                                                     (3, "dispatcher.stats")]
    doc = json.loads(status_body(b'[{"jsonrpc":"2.0","id":1,"result":"x"}]', True, 12.3456))
    assert doc == {"admin": True, "time": 12.346, "methods": list(STATUS_METHODS),
                   "results": [{"jsonrpc": "2.0", "id": 1, "result": "x"}]}


@pytest.mark.parametrize("path", sorted(STATIC_FILES))
def test_the_page_is_public_with_its_security_headers(make_server: ServerFactory, path: str) -> None:
    status, headers, body = request(make_server(token=ADMIN_TOKEN), path)
    assert status == 200 and body
    assert headers["Content-Type"] == STATIC_FILES[path][1]
    for name, value in PAGE_HEADERS:
        assert headers[name] == value
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self';" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp


def test_the_root_redirects_to_the_page_and_still_takes_json_rpc(make_server: ServerFactory) -> None:
    server = make_server()
    status, headers, _ = request(server, "/")
    assert (status, headers["Location"]) == (303, "/status")
    status, _, body = request(server, "/", method="POST", body=b'{"jsonrpc":"2.0","id":1,"method":"core.stats"}',
                              headers={"Content-Type": "application/json"})
    assert status == 200 and json.loads(body)["result"]["state"] == "up"


@pytest.mark.parametrize(("token", "status", "admin"), [
    (None, 401, None),
    ("guess", 401, None),
    (READ_TOKEN, 200, False),
    (ADMIN_TOKEN, 200, True),
])
def test_the_data_needs_a_token_and_says_whether_it_may_act(make_server: ServerFactory, log_lines: list[str],
                                                            token: str | None, status: int,
                                                            admin: bool | None) -> None:
    server = make_server(token=ADMIN_TOKEN, read_token=READ_TOKEN)
    got, headers, body = request(server, "/status/data", token)
    assert got == status
    if status == 401:
        assert headers["WWW-Authenticate"] == 'Bearer realm="b2bua"'
        refusals = [line for line in log_lines if "HTTP 401" in line]
        assert len(refusals) == 1 and "(GET /status/data)" in refusals[0]
        assert ("no token" if token is None else "wrong token") in refusals[0]
        return
    assert headers["Content-Security-Policy"] and headers["Cache-Control"] == "no-store"
    doc = json.loads(body)
    assert doc["admin"] is admin and doc["time"] == 1700000000.25
    results = {item["id"]: item for item in doc["results"]}
    assert results[1]["result"]["state"] == "up"
    assert results[2]["result"] == json.loads(LISTING)  # the listing spliced in as it was encoded
    assert results[3]["result"] == {"sets": []}


def test_a_read_token_cannot_act(make_server: ServerFactory, log_lines: list[str]) -> None:
    server = make_server(token=ADMIN_TOKEN, read_token=READ_TOKEN)
    call = b'{"jsonrpc":"2.0","id":1,"method":"dispatcher.set_state","params":["d",1,"sip:gw@127.0.0.1"]}'
    json_type = {"Content-Type": "application/json"}
    assert request(server, "/rpc", READ_TOKEN, "POST", call, json_type)[0] == 401
    assert any("HTTP 401 Unauthorized: wrong token (POST /rpc)" in line for line in log_lines)
    status, _, body = request(server, "/rpc", ADMIN_TOKEN, "POST", call, json_type)
    assert status == 200 and json.loads(body)["result"] == "Ok. State updated"


def test_without_tokens_the_loopback_page_reads_and_acts(make_server: ServerFactory) -> None:
    status, _, body = request(make_server(), "/status/data")
    assert status == 200 and json.loads(body)["admin"] is True


def test_without_the_dispatcher_its_methods_answer_not_found(make_server: ServerFactory) -> None:
    _, _, body = request(make_server(with_dispatcher=False), "/status/data")
    results = {item["id"]: item for item in json.loads(body)["results"]}
    assert results[1]["result"]["state"] == "up"
    assert results[2]["error"]["code"] == results[3]["error"]["code"] == -32601


def test_the_data_route_passes_the_browser_guard(make_server: ServerFactory) -> None:
    server = make_server(token=ADMIN_TOKEN)
    assert request(server, "/status/data", ADMIN_TOKEN, headers={"Origin": "http://attacker.example"})[0] == 403


# -- the page's own rules, read from its files -------------------------------------------------------


def static_text(name: str) -> str:
    return resources.files("b2bua.web").joinpath("static", name).read_text("utf-8")


def test_the_page_has_no_inline_script_or_style() -> None:
    html = static_text("index.html")
    scripts = re.findall(r"<script\b[^>]*>(.*?)</script>", html, re.S)
    assert scripts == [""] and '<script src="/status/app.js"' in html
    assert "<style" not in html and " style=" not in html and not re.search(r"\son[a-z]+=", html)


def test_the_script_builds_no_markup_from_text() -> None:
    js = static_text("app.js")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                 "localStorage"):
        assert sink not in js, sink
    # the token travels in a header, never in a URL
    assert "sessionStorage" in js and "?token" not in js and "Authorization: `Bearer ${token}`" in js


def test_pages_open_at_once_share_one_batch_a_second() -> None:
    batches: list[bytes] = []
    now = [100.0]

    def answer(request: bytes) -> bytes:
        batches.append(request)
        return b'[{"n":%d}]' % len(batches)

    routes = web_routes(answer, "", "", clock=lambda: 0.0, monotonic=lambda: now[0])
    [data] = [r for r in routes if r.path == "/status/data"]
    request = HttpRequest("GET", "/status/data")
    bodies = [data.handler(request).body for _ in range(3)]  # three open pages
    assert len(batches) == 1 and len(set(bodies)) == 1
    now[0] += 1.0
    assert b'"n":2' in data.handler(request).body and len(batches) == 2
