"""The control API of a running B2BUA under attack, and start-up with out-of-range settings.

The B2BUA runs as a subprocess with its HTTP control API on loopback without a token (the case
the issue found open): a web page's cross-origin request must not take the gateway out of
service (calls keep reaching it), connections trickling bytes must not lock the operator out
(`b2bua rpc --url` answers), and the log must say what was refused without a line per request.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import subprocess
import sys
from pathlib import Path

from .configs import LIST_FILE, b2bua_config
from .conftest import B2buaFactory, GatewayFactory
from .harness import AddressAllocator, Caller, free_port


def post(port: int, body: dict, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/", body=json.dumps(body).encode(), headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_browser_requests_and_slow_connections_get_nowhere(
    gateway_factory: GatewayFactory, b2bua_factory: B2buaFactory, caller: Caller, workdir: Path,
    addresses: AddressAllocator,
) -> None:
    gw = gateway_factory("answer")
    ip = addresses.next()
    port, http_port = free_port(ip, "udp"), free_port("127.0.0.1", "tcp")
    (workdir / LIST_FILE).write_text(f"1 {gw.uri}\n")
    config = b2bua_config(ip, port).replace("[control]\n", f'[control]\nhttp = "127.0.0.1:{http_port}"\n')
    b2b = b2bua_factory(config)
    url = f"http://127.0.0.1:{http_port}/"
    disable = {"jsonrpc": "2.0", "id": 1, "method": "dispatcher.set_state", "params": ["ip", 1, "all"]}

    def states() -> list[str]:
        listing = b2b.rpc("dispatcher.list")
        return [t["DEST"]["FLAGS"] for r in listing["RECORDS"] for t in r["SET"]["TARGETS"]]

    assert states() == ["AX"]  # active, not probed
    # what any web page can make a browser send, and the same after DNS rebinding
    status, _ = post(http_port, disable, {"Content-Type": "text/plain", "Origin": "http://attacker.example"})
    assert status == 403
    status, _ = post(http_port, disable, {"Content-Type": "text/plain"})
    assert status == 415
    rebound = f"attacker.example:{http_port}"
    status, _ = post(http_port, disable, {"Content-Type": "application/json", "Host": rebound,
                                          "Origin": f"http://{rebound}"})
    assert status == 421
    assert states() == ["AX"]  # not "IX": the gateway is still in service
    result = caller.run_calls(ip, port, n=2, rate=10, call_duration_ms=50)
    assert result.ok and result.final_codes == [200, 200], result.describe()

    # 100 connections, each with the start of a request, more bytes later: more than the 64 open
    # and 16 per address allowed, from the operator's own address
    slow: list[socket.socket] = []
    try:
        for _ in range(100):
            sock = socket.create_connection(("127.0.0.1", http_port), timeout=5)
            sock.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            slow.append(sock)
        for sock in slow:
            with contextlib.suppress(OSError):
                sock.sendall(b"x")
        done = b2b.cli("rpc", "--url", url, "--timeout", "5", "--json", "dispatcher.hash", "0", "abc")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"hashid": 7167810, "slot": 0}
    finally:
        for sock in slow:
            sock.close()
    # the honest one sends application/json, no Origin: it works, and the unix socket too
    status, body = post(http_port, {"jsonrpc": "2.0", "id": 2, "method": "core.version"},
                        {"Content-Type": "application/json"})
    assert status == 200 and "result" in json.loads(body)

    b2b.wait_for_log("control http: ", timeout=15)  # the summary of what was held back
    log = b2b.log_text()
    assert "control http 127.0.0.1: HTTP 403 Forbidden: cross-origin request (Origin 'http://attacker.example')" in log
    assert "control http 127.0.0.1: HTTP 421 Misdirected Request: Host 'attacker.example:" in log
    assert "closed a connection that waited" in log
    refusal_lines = [line for line in log.splitlines() if "control http" in line and "WARNING" in line]
    assert len(refusal_lines) <= 12, refusal_lines  # 10 one by one, then sums: not one per connection


def test_run_refuses_an_out_of_range_setting_before_starting(tmp_path: Path) -> None:
    # rtp_port = 70000 used to pass the config check and abort start-up in pjsua2's SWIG layer
    (tmp_path / "config.toml").write_text('[sip]\nlisten = ["udp:127.0.0.1:5060"]\nrtp_port = 70000\n')
    done = subprocess.run([sys.executable, "-m", "b2bua", "run", "-c", "config.toml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "error: config.toml: [sip] rtp_port: must be 1024-65534, got 70000" in done.stderr
    assert "Traceback" not in done.stderr
