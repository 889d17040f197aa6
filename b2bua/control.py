"""Control API transports: JSON-RPC 2.0 over a unix socket and over HTTP, and a client.

:class:`ControlServer` serves the methods of an :class:`~b2bua.rpc.RpcRegistry`:

* on a unix socket (mode 0600): newline-delimited JSON, one request (object or batch array)
  per line, one response per line, as many requests per connection as the client likes;
* optionally over HTTP: ``POST /``, ``/rpc`` or ``/RPC`` with an ``application/json`` body,
  ``Authorization: Bearer <token>`` when a token is configured. Browsers' cross-origin and
  DNS-rebound requests are refused, and slow or idle connections give way to new ones
  (:mod:`b2bua.control_guard` has the rules, ``docs/security.md`` the reasons);
* on the same HTTP listener, ``GET``/``HEAD`` of the paths in a route table
  (:mod:`b2bua.control_routes`: each route a path, an access level and a handler; the B2BUA's
  own are ``/health``, ``/ready``, ``/live`` and ``/metrics``). A GET passes the same guard as
  a POST (connection caps, deadlines, Host and Origin checks), then the route's access level:
  a missing or wrong token gets 401 and is logged, rate-limited.

The API threads never touch pjsua2: a method registered with ``on_loop=True`` (the default)
is handed to the loop thread through ``run_on_loop(callable, timeout)``, which must return
the callable's result, re-raise its exception, and raise :class:`TimeoutError` when the loop
does not answer in time. ``on_loop=False`` methods run on the API thread.

:class:`ControlClient` is the other end, for ``b2bua rpc`` and the tests.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import itertools
import json
import math
import os
import socket
import socketserver
import stat
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

from loguru import logger

from b2bua.config import Config, ConfigError, ControlConfig, is_loopback_host, split_host_port
from b2bua.control_guard import (
    ConnectionTable,
    HttpLimits,
    RefusalLog,
    access_refusal,
    content_type_refusal,
    host_refusal,
    origin_refusal,
    source_of,
)
from b2bua.control_routes import Access, HttpRequest, HttpResponse, Route, RouteTable, json_response
from b2bua.rpc import (
    INTERNAL_ERROR,
    INVALID_REQUEST,
    PARSE_ERROR,
    SERVER_ERROR,
    RawJson,
    RpcError,
    RpcRegistry,
)

#: JSON-RPC application error for a missing or wrong HTTP bearer token
UNAUTHORIZED = -32001
#: seconds an API thread waits for the loop thread to run an ``on_loop`` method
LOOP_TIMEOUT = 10.0
#: seconds a control connection may stay silent before it is closed
IDLE_TIMEOUT = 60.0
#: concurrent control connections per listener; more are closed at once
MAX_CONNECTIONS = 32
#: requests served on one unix-socket connection before it is closed
MAX_REQUESTS_PER_CONNECTION = 100_000
#: largest response the client accepts
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
#: after refusing a request, discard at most this much of what the peer still sends, for at
#: most LINGER_SECONDS, so that closing does not reset the connection before it read the answer
LINGER_BYTES = 1024 * 1024
LINGER_SECONDS = 1.0
#: seconds between a listener's checks for stop()
POLL_INTERVAL = 0.05
#: sun_path is 108 bytes on Linux, including the terminating NUL
MAX_UNIX_PATH = 107

RunOnLoop = Callable[[Callable[[], Any], float], Any]


class ControlError(Exception):
    """The control API cannot start (address in use, bad bind address, ...)."""


class ControlUnavailable(Exception):
    """The client could not reach the control API or got no usable answer."""


class RpcCallError(Exception):
    """The server answered a call with a JSON-RPC error."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message
        self.data = data


# -- JSON-RPC framing (transport-free) ---------------------------------------------------------


def error_response(request_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    """A JSON-RPC 2.0 error response object."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def oversize_response(limit: int) -> bytes:
    """The serialised answer to a request over ``limit`` bytes."""
    return _dumps(error_response(None, INVALID_REQUEST, f"Invalid Request: larger than {limit} bytes"))


def _dumps(obj: Any) -> bytes:
    # allow_nan=False: NaN/Infinity are not JSON and would break strict clients
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        # a lone surrogate (a request may carry "\ud800", which Python decodes as one) has no
        # UTF-8 form: escaped, as the request wrote it, the answer is still valid JSON
        return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("ascii")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _valid_id(value: Any) -> bool:
    # a finite number only: 1e999 parses as inf, which no answer could carry back
    return value is None or isinstance(value, str) or (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    )


@dataclass(frozen=True)
class Call:
    """One validated JSON-RPC request object."""

    method: str
    params: list[Any] | dict[str, Any] | None
    id: Any = None
    notification: bool = False


class InvalidRequest(Exception):
    """A request object that breaks JSON-RPC 2.0; ``id`` is what the answer must carry."""

    def __init__(self, message: str, request_id: Any = None) -> None:
        super().__init__(message)
        self.request_id = request_id


def parse_call(obj: Any) -> Call:
    """Validate one JSON-RPC 2.0 request object.

    :raises InvalidRequest: saying what is wrong, with the id to answer with (``None`` when the
        id itself is unusable).
    """
    if not isinstance(obj, dict):
        raise InvalidRequest(f"Invalid Request: expected an object, got {type(obj).__name__}")
    request_id = obj.get("id")
    if not _valid_id(request_id):
        raise InvalidRequest("Invalid Request: id must be a string, a finite number or null")
    if obj.get("jsonrpc") != "2.0":
        raise InvalidRequest('Invalid Request: "jsonrpc" must be "2.0"', request_id)
    method = obj.get("method")
    if not isinstance(method, str) or not method:
        raise InvalidRequest('Invalid Request: "method" must be a non-empty string', request_id)
    params = obj.get("params")
    if params is not None and not isinstance(params, (list, dict)):
        raise InvalidRequest('Invalid Request: "params" must be an array or an object', request_id)
    return Call(method, params, request_id, "id" not in obj)


class JsonRpcProcessor:
    """Turns a request document (bytes) into a response document, running the methods.

    Shared by every transport; safe to call from several API threads at once.
    """

    def __init__(
        self, registry: RpcRegistry, run_on_loop: RunOnLoop, loop_timeout: float = LOOP_TIMEOUT
    ) -> None:
        self._registry = registry
        self._run_on_loop = run_on_loop
        self._loop_timeout = loop_timeout

    def handle(self, data: bytes) -> bytes | None:
        """Answer ``data`` (one request object or a batch array).

        :return: the serialised response, or None when nothing is to be sent back (only
            notifications).
        """
        try:
            doc = json.loads(data, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            return _dumps(error_response(None, PARSE_ERROR, f"Parse error: {_short(exc)}"))
        if isinstance(doc, list):
            if not doc:
                return _dumps(error_response(None, INVALID_REQUEST, "Invalid Request: empty batch"))
            parts = [part for part in (self._answer(item) for item in doc) if part is not None]
            return b"[" + b",".join(parts) + b"]" if parts else None
        return self._answer(doc)

    def _answer(self, obj: Any) -> bytes | None:
        try:
            call = parse_call(obj)
        except InvalidRequest as exc:
            return _dumps(error_response(exc.request_id, INVALID_REQUEST, str(exc)))
        response = self._execute(call)
        if call.notification:
            if "error" in response:
                logger.info("control notification {} failed: {}", call.method, response["error"]["message"])
            return None
        result = response.get("result")
        if isinstance(result, RawJson):  # encoded by the method, in slices (a large listing)
            return b"".join((b'{"jsonrpc":"2.0","id":', _dumps(call.id), b',"result":', result.data, b"}"))
        try:
            return _dumps(response)
        except (TypeError, ValueError) as exc:
            logger.error("control method {} returned a result that is not JSON: {}", call.method, exc)
            return _dumps(
                error_response(call.id, INTERNAL_ERROR, "Internal error: the result is not JSON-serialisable")
            )

    def _execute(self, call: Call) -> dict[str, Any]:
        """Run ``call``; its response object (result or error)."""
        on_loop = False
        try:
            method = self._registry.get(call.method)
            on_loop = method.on_loop
            bound = RpcRegistry.bind(method, call.params)
            logger.debug("control call {} {}", call.method, call.params)
            result = self._run_on_loop(bound, self._loop_timeout) if on_loop else bound()
        except RpcError as exc:
            return error_response(call.id, exc.code, exc.message, exc.data)
        except TimeoutError:
            if not on_loop:
                logger.exception("control method {} timed out", call.method)
                return error_response(call.id, SERVER_ERROR, f"{call.method} timed out")
            logger.warning("control method {}: no answer from the loop thread within {:g}s",
                           call.method, self._loop_timeout)
            message = f"Timeout: the loop thread did not answer within {self._loop_timeout:g}s"
            return error_response(call.id, SERVER_ERROR, message)
        except Exception as exc:
            logger.exception("control method {} failed", call.method)
            return error_response(
                call.id, INTERNAL_ERROR, f"Internal error ({type(exc).__name__}); see the b2bua log"
            )
        return {"jsonrpc": "2.0", "id": call.id, "result": result}


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


# -- Helpers shared by both listeners ------------------------------------------------------------


def _shutdown(sock: Any) -> None:
    # wakes the thread blocked in recv() on it: it sees EOF and ends the connection
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _linger(sock: socket.socket) -> None:
    """Half-close, then discard (bounded) what the peer still sends, so it can read our answer.

    Closing a socket with unread input resets the connection, and the peer may lose the
    response that explains why we stopped reading.
    """
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER_SECONDS
        drained = 0
        while drained < LINGER_BYTES:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                break
            drained += len(chunk)


def _printable_path(path: str) -> str:
    """A request path for a log line: printable ASCII, at most 100 characters."""
    text = "".join(ch if " " < ch < "\x7f" else "?" for ch in path[:100])
    return text + ("..." if len(path) > 100 else "")


def parse_http_address(text: str) -> tuple[str, int]:
    """``ADDRESS:PORT`` (IPv6 in brackets) to ``(address, port)``.

    :raises ControlError: when it is not of that form.
    """
    try:
        return split_host_port(text)
    except ValueError as exc:
        raise ControlError(f"[control] http: {exc}") from None


class _Guarded:
    """Admission for a socketserver listener (mixed in first): the connection table decides who
    gets in (displacing a connection that only waits, when full), the refusal log says why not."""

    connections: ConnectionTable
    refusals: RefusalLog
    #: the connection threads (daemons) that may still run; see :meth:`join_workers`
    _workers: set[threading.Thread] | None = None

    def process_request(self, request: Any, client_address: Any) -> None:
        # ThreadingMixIn's, but with daemon threads that stop() waits for a bounded time: a
        # method may wait far longer than a request takes (a reload up to 300 s, a drain with a
        # wait up to 3600 s) for the loop thread, and at shutdown the loop thread is the one
        # waiting in stop(): joining such a thread blocked the shutdown until its wait ran out
        thread = threading.Thread(target=self.process_request_thread,  # type: ignore[attr-defined]
                                  args=(request, client_address), daemon=True)
        self._workers = {t for t in self._workers or () if t.is_alive()}
        self._workers.add(thread)
        thread.start()

    def join_workers(self, deadline: float) -> int:
        """Wait until ``deadline`` (monotonic) for the connection threads; how many still run."""
        workers = list(self._workers or ())
        for thread in workers:
            thread.join(max(0.0, deadline - time.monotonic()))
        return sum(thread.is_alive() for thread in workers)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        source = source_of(client_address)
        admission = self.connections.admit(request, source)
        table = self.connections
        caps = f"{table.limit} connections at most"
        if table.per_source < table.limit:
            caps += f", {table.per_source} from one address"
        for victim, victim_source, waited in admission.evicted:
            self.refusals.refused(
                victim_source, "displaced",
                f"closed a connection that waited {waited:.1f}s without a complete request, for a new one ({caps})",
            )
            _shutdown(victim)
        if admission.admitted:
            return True
        self.refusals.refused(source, "connection limit",
                              f"{len(table)} connections open, none of them idle: connection closed")
        return False

    def shutdown_request(self, request: Any) -> None:
        self.connections.remove(request)
        super().shutdown_request(request)  # type: ignore[misc]

    def service_actions(self) -> None:
        # serve_forever calls this between requests, at least every POLL_INTERVAL
        self.refusals.flush()

    def close_connections(self) -> None:
        """Shut every open connection down (its thread then ends) and log what is pending."""
        for sock in self.connections.all_keys():
            _shutdown(sock)
        self.refusals.flush(force=True)


# -- Unix socket listener ------------------------------------------------------------------------


class _UnixServer(_Guarded, socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True  # _Guarded.process_request: stop() joins them for a bounded time
    block_on_close = False
    request_queue_size = 64

    def __init__(self, path: Path, processor: JsonRpcProcessor, max_request_bytes: int,
                 limits: HttpLimits) -> None:
        super().__init__(str(path), _UnixHandler, bind_and_activate=False)
        self.processor = processor
        self.max_request_bytes = max_request_bytes
        # the socket's mode admits only the b2bua's own user: one source, the cap is the limit
        self.connections = ConnectionTable(MAX_CONNECTIONS, MAX_CONNECTIONS)
        self.refusals = RefusalLog("control socket", limits.log_burst, limits.log_interval)


class _UnixHandler(socketserver.StreamRequestHandler):
    """Newline-delimited JSON-RPC on one unix-socket connection."""

    server: _UnixServer
    timeout = IDLE_TIMEOUT

    def handle(self) -> None:
        threading.current_thread().name = "control-unix"
        limit = self.server.max_request_bytes
        connections = self.server.connections
        try:
            for _ in range(MAX_REQUESTS_PER_CONNECTION):
                # at most limit+1 bytes: enough to tell an oversize line without reading it all
                line = self.rfile.readline(limit + 1)
                if not line:
                    return
                if len(line) > limit and not line.endswith(b"\n"):
                    self.server.refusals.refused("local", "too large", f"request over {limit} bytes")
                    self.wfile.write(oversize_response(limit) + b"\n")
                    _linger(self.connection)
                    return
                if not line.strip():
                    continue
                if not connections.set_busy(self.connection, True):
                    return  # displaced by a newer connection while it waited
                response = self.server.processor.handle(line)
                if response is not None:
                    self.wfile.write(response + b"\n")
                connections.set_busy(self.connection, False)
        except TimeoutError:
            logger.debug("control socket: idle connection closed after {:g}s", IDLE_TIMEOUT)
        except ConnectionError:
            logger.debug("control socket: client went away")


# -- HTTP listener -------------------------------------------------------------------------------


class _HeadTooLarge(Exception):
    """The request line and headers are over ``HttpLimits.max_head_bytes``."""


class _DeadlineSocketIO(io.RawIOBase):
    """The receiving side of a socket whose reads fail with TimeoutError once ``deadline``
    (``time.monotonic()``) has passed.

    A socket timeout alone restarts with every byte received: a client sending one byte every
    few seconds would hold its connection forever.
    """

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        self.deadline = 0.0
        #: bytes received so far on this connection
        self.received = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed")
        self._sock.settimeout(remaining)
        count = self._sock.recv_into(buffer)
        self.received += count
        return count


class _RequestReader(io.BufferedReader):
    """Buffered reads of requests; lines (the request head) count against ``head_budget``."""

    def __init__(self, raw: _DeadlineSocketIO) -> None:
        super().__init__(raw)
        self.head_budget = 0
        #: a line ended at end of file: the peer closed (or was displaced) in the middle of a head
        self.cut_short = False

    def readline(self, size: int | None = -1) -> bytes:
        cap = self.head_budget + 1  # one byte over tells "too large" without reading more
        line = super().readline(cap if size is None or size < 0 else min(size, cap))
        self.head_budget -= len(line)
        if self.head_budget < 0:
            raise _HeadTooLarge
        if not line.endswith(b"\n") and len(line) < cap:
            self.cut_short = True
        return line


class _TimedWriter(io.BufferedIOBase):
    """Writes to a socket, each write bounded in time (a client may stop reading on purpose)."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        super().__init__()
        self._sock = sock
        self._timeout = timeout

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._sock.settimeout(self._timeout)
        self._sock.sendall(data)  # since Python 3.5 the timeout bounds the whole sendall
        return memoryview(data).nbytes


class _HttpServer(_Guarded, http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], processor: JsonRpcProcessor, config: ControlConfig,
                 limits: HttpLimits, routes: RouteTable) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.processor = processor
        self.routes = routes
        self.token = config.token
        self.read_token = config.read_token
        self.max_request_bytes = config.max_request_bytes
        self.limits = limits
        self.connections = ConnectionTable(limits.max_connections, limits.max_per_source)
        self.refusals = RefusalLog("control http", limits.log_burst, limits.log_interval)
        super().__init__(address, _HttpHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would resolve the host name (getfqdn): avoid the DNS lookup
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)


class _HttpHandler(http.server.BaseHTTPRequestHandler):
    """``POST /``, ``/rpc`` or ``/RPC`` (Kamailio's ``jsonrpcs`` path) with a JSON-RPC body;
    ``GET``/``HEAD`` of a path in the route table.

    Each request's head must arrive within ``head_timeout`` of the connection (or the previous
    answer), its body within ``body_timeout``; a browser's cross-origin or DNS-rebound request,
    and any body that is not ``application/json``, are refused before the body is read.
    """

    server: _HttpServer
    rfile: _RequestReader
    protocol_version = "HTTP/1.1"
    server_version = "b2bua-control"
    sys_version = ""
    PATHS = ("/", "/rpc", "/RPC")

    def setup(self) -> None:
        threading.current_thread().name = "control-http"
        self.connection = self.request
        self.source = source_of(self.client_address)
        self._stream = _DeadlineSocketIO(self.connection)
        self.rfile = _RequestReader(self._stream)
        self.wfile = _TimedWriter(self.connection, self.server.limits.write_timeout)
        self._phase = "head"

    def log_message(self, format: str, *args: Any) -> None:
        # http.server logs to stderr by default; keep everything in the one log
        logger.debug("control http {}: {}", self.source, format % args)

    def handle_one_request(self) -> None:
        """Read, check and answer one request; BaseHTTPRequestHandler's, with deadlines."""
        limits = self.server.limits
        self.close_connection = True
        if not self.server.connections.set_busy(self.connection, False):
            return  # displaced by a newer connection while it waited
        self._phase = "head"
        self._stream.deadline = time.monotonic() + limits.head_timeout
        self.rfile.head_budget = limits.max_head_bytes
        received = self._stream.received
        try:
            self.raw_requestline = self.rfile.readline()
            if self.rfile.cut_short or not self.raw_requestline:
                return  # the client closed (or was displaced), perhaps in the middle of a line
            parsed = self.parse_request()  # if not, it answered 400/431/505 itself (send_error)
            if not parsed or self.rfile.cut_short:  # http.client takes end of file for end of head
                return
            getattr(self, f"do_{self.command}", self._method_not_allowed)()
        except TimeoutError:
            self.close_connection = True
            if self._phase == "answer":
                self.server.refusals.refused(self.source, "slow reader",
                                             f"answer not taken within {limits.write_timeout:g}s: connection closed")
            elif self._stream.received == received:
                logger.debug("control http {}: idle connection closed after {:g}s", self.source,
                             limits.head_timeout)
            else:
                timeout = limits.head_timeout if self._phase == "head" else limits.body_timeout
                self._refuse(HTTPStatus.REQUEST_TIMEOUT, INVALID_REQUEST,
                             f"Request Timeout: request {self._phase} not complete within {timeout:g}s",
                             kind="slow request")
        except _HeadTooLarge:
            self._refuse(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, INVALID_REQUEST,
                         f"Invalid Request: request head over {limits.max_head_bytes} bytes", kind="too large")
        except OSError as exc:  # reset, broken pipe, or shut down by stop()
            self.close_connection = True
            logger.debug("control http {}: connection ended: {}", self.source, exc)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # parse_request's errors (bad request line, header lines, version): JSON like ours
        status = HTTPStatus(code)
        self._refuse(status, INVALID_REQUEST, f"{status.phrase}: {message or status.description}",
                     kind="bad request")

    def _send(self, status: HTTPStatus | int, body: bytes | None, *, close: bool = False,
              headers: Mapping[str, str] | None = None, content_type: str = "application/json") -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if body is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body or b"")))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)
        if close:
            _linger(self.connection)

    def _refuse(self, status: HTTPStatus, code: int, message: str, *, kind: str,
                headers: Mapping[str, str] | None = None, body: bytes | None = None, log: str = "") -> None:
        """Answer ``status`` with a JSON-RPC error, log the refusal (``log``, else ``message``,
        with the method and path), close the connection (the body was not read, so it cannot
        carry another request)."""
        self.close_connection = True
        if self.connection not in self.server.connections:
            return  # displaced (and logged as such): what it read last is a fragment
        what = f"{self.command} {_printable_path(self.path)}" if getattr(self, "command", "") else "request"
        self.server.refusals.refused(self.source, kind, f"HTTP {status.value} {log or message} ({what})")
        with contextlib.suppress(OSError):  # the client may be gone or not reading
            self._send(status, body or _dumps(error_response(None, code, message)), close=True, headers=headers)

    def _access_refused(self, access: Access, *, json_rpc: bool) -> bool:
        """Refuse (401, logged) a request without the token ``access`` needs; True when refused."""
        reason = access_refusal(access, self.headers.get("Authorization"), self.server.token,
                                self.server.read_token)
        if reason is None:
            return False
        message = "Unauthorized: send 'Authorization: Bearer <token>'"
        body = None if json_rpc else _dumps({"error": message})
        self._refuse(HTTPStatus.UNAUTHORIZED, UNAUTHORIZED, message, kind="token", log=f"Unauthorized: {reason}",
                     headers={"WWW-Authenticate": 'Bearer realm="b2bua"'}, body=body)
        return True

    def _browser_refusal(self) -> bool:
        """Refuse a DNS-rebound or cross-origin browser request; True when refused."""
        hosts = self.headers.get_all("Host") or []
        reason = host_refusal(hosts, token=bool(self.server.token))
        if reason is not None:
            self._refuse(HTTPStatus.MISDIRECTED_REQUEST, INVALID_REQUEST, f"Misdirected Request: {reason}",
                         kind="host")
            return True
        reason = origin_refusal(self.headers.get("Origin"), hosts[0] if hosts else None)
        if reason is not None:
            self._refuse(HTTPStatus.FORBIDDEN, INVALID_REQUEST, f"Forbidden: {reason}", kind="origin")
            return True
        return False

    def do_POST(self) -> None:
        if self._browser_refusal():
            return
        path = urllib.parse.urlsplit(self.path).path
        if path not in self.PATHS:
            shown = _printable_path(path)  # client text: bounded and escaped in the log and the answer
            self._refuse(HTTPStatus.NOT_FOUND, INVALID_REQUEST, f"Not found: {shown}; POST to / or /rpc", kind="path")
            return
        if self._access_refused(Access.ADMIN, json_rpc=True):
            return
        reason = content_type_refusal(self.headers.get("Content-Type"))
        if reason is not None:
            self._refuse(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, INVALID_REQUEST, f"Unsupported Media Type: {reason}",
                         kind="content type")
            return
        length = self._content_length()
        if length is None:
            return
        self._phase = "body"
        self._stream.deadline = time.monotonic() + self.server.limits.body_timeout
        body = self.rfile.read(length)
        if len(body) < length or not self.server.connections.set_busy(self.connection, True):
            self.close_connection = True  # the client hung up mid-body, or it was displaced
            return
        self._phase = "answer"
        response = self.server.processor.handle(body)
        if response is None:
            self._send(HTTPStatus.NO_CONTENT, None)
        else:
            self._send(HTTPStatus.OK, response)

    def _content_length(self) -> int | None:
        """The body's announced length, or None after refusing the request."""
        length_text = self.headers.get("Content-Length")
        if length_text is None or "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._refuse(HTTPStatus.LENGTH_REQUIRED, INVALID_REQUEST, "Invalid Request: send Content-Length",
                         kind="bad request")
            return None
        # two different lengths: a proxy in front may have read the other one (request
        # smuggling), so neither is trusted (RFC 9112 6.3); ASCII digits only ('\u0661' is a digit)
        lengths = {text.strip() for text in self.headers.get_all("Content-Length", [])}
        if len(lengths) > 1 or not (length_text.strip().isascii() and length_text.strip().isdigit()):
            shown = ", ".join(sorted(lengths)) if len(lengths) > 1 else length_text
            self._refuse(HTTPStatus.BAD_REQUEST, INVALID_REQUEST,
                         f"Invalid Request: bad Content-Length {shown!r}", kind="bad request")
            return None
        length = int(length_text)
        limit = self.server.max_request_bytes
        if length > limit:
            self._refuse(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, INVALID_REQUEST,
                         f"Invalid Request: {length} bytes, larger than {limit}", kind="too large",
                         body=oversize_response(limit))
            return None
        return length

    def do_GET(self) -> None:
        """A route of the table (:mod:`b2bua.control_routes`), after the guard and its access check."""
        if self._browser_refusal():
            return
        parts = urllib.parse.urlsplit(self.path)
        route = self.server.routes.find(parts.path)
        if route is None:
            if parts.path in self.PATHS:
                self._method_not_allowed()
            else:
                shown = _printable_path(parts.path)  # client text: bounded and escaped in the log and the answer
                self._refuse(HTTPStatus.NOT_FOUND, INVALID_REQUEST, f"Not found: {shown}", kind="path",
                             body=_dumps({"error": f"Not found: {shown}"}))
            return
        if self.headers.get("Content-Length", "0").strip() not in ("", "0") or "Transfer-Encoding" in self.headers:
            self._refuse(HTTPStatus.BAD_REQUEST, INVALID_REQUEST, f"Bad Request: a {self.command} has no body",
                         kind="bad request")
            return
        if self._access_refused(route.access, json_rpc=False):
            return
        if not self.server.connections.set_busy(self.connection, True):
            self.close_connection = True  # displaced meanwhile
            return
        self._phase = "answer"
        query = {name: tuple(values) for name, values in urllib.parse.parse_qs(parts.query).items()}
        request = HttpRequest(self.command, parts.path, query,
                              {name.lower(): value for name, value in reversed(self.headers.items())}, self.source)
        try:
            response = route.handler(request)
        except Exception as exc:
            logger.opt(exception=True).error("control http: GET {} failed", route.path)
            response = json_response(500, {"error": f"Internal error ({type(exc).__name__}); see the b2bua log"})
        self._answer(response)

    do_HEAD = do_GET

    def _answer(self, response: HttpResponse) -> None:
        headers = dict(response.headers)
        self._send(response.status, response.body, headers=headers, content_type=response.content_type)

    def _method_not_allowed(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        methods = ["GET", "HEAD"] if self.server.routes.find(path) else []
        if path in self.PATHS or not methods:
            methods.append("POST")
        allow = ", ".join(methods)
        self._refuse(HTTPStatus.METHOD_NOT_ALLOWED, INVALID_REQUEST,
                     f"Method not allowed: {self.command}; use {allow}", kind="method", headers={"Allow": allow})


# -- The server ----------------------------------------------------------------------------------


class ControlServer:
    """The control API's listeners: a unix socket and, when configured, HTTP.

    :param registry: the methods to serve.
    :param run_on_loop: ``run_on_loop(fn, timeout)`` runs ``fn`` on the loop thread and returns
        its result (re-raising its exception, :class:`TimeoutError` on timeout).
    :param config: the ``[control]`` section.
    :param base_dir: the folder a relative socket path is relative to (the config file's).
    :param loop_timeout: seconds to wait for the loop thread per ``on_loop`` call.
    :param limits: connection caps, deadlines and refusal logging of the HTTP listener (its
        log settings serve the unix socket too).
    :param routes: the GET routes of the HTTP listener (:mod:`b2bua.control_routes`).

    Stop it before the loop thread stops, so that no call waits for a loop that is gone.
    """

    def __init__(
        self,
        registry: RpcRegistry,
        run_on_loop: RunOnLoop,
        config: ControlConfig,
        base_dir: Path,
        *,
        loop_timeout: float = LOOP_TIMEOUT,
        limits: HttpLimits | None = None,
        routes: Iterable[Route] = (),
    ) -> None:
        self._config = config
        self._limits = limits or HttpLimits()
        self._routes = RouteTable(routes)
        self._processor = JsonRpcProcessor(registry, run_on_loop, loop_timeout)
        self._loop_timeout = loop_timeout
        self._socket_path: Path | None = None
        if config.socket:
            path = Path(config.socket).expanduser()
            self._socket_path = path if path.is_absolute() else Path(base_dir) / path
        self._lock = threading.Lock()
        self._unix: _UnixServer | None = None
        self._unix_inode: tuple[int, int] | None = None
        self._http: _HttpServer | None = None
        self._running: list[tuple[_UnixServer | _HttpServer, threading.Thread]] = []

    @property
    def socket_path(self) -> Path | None:
        """The unix socket's path, or None when the socket is off."""
        return self._socket_path

    @property
    def http_address(self) -> tuple[str, int] | None:
        """The HTTP listener's bound ``(address, port)`` once started, else None."""
        if self._http is None:
            return None
        host, port = self._http.server_address[:2]
        return str(host), int(port)

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return bool(self._running)

    def start(self) -> None:
        """Open the listeners and serve them on their own threads; a no-op when running.

        :raises ControlError: when a listener cannot be opened (nothing is left open then).
        """
        with self._lock:
            if self._running:
                return
            try:
                if self._socket_path is not None:
                    self._start_unix(self._socket_path)
                if self._config.http:
                    self._start_http(self._config.http)
            except BaseException:
                self._stop_locked()
                raise

    def stop(self) -> None:
        """Close the listeners and open connections, join the threads, remove the socket file.

        Idempotent. It waits up to the loop timeout for the calls in progress, no longer.
        """
        with self._lock:
            self._stop_locked()

    def __enter__(self) -> ControlServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals

    def _serve(self, server: _UnixServer | _HttpServer, name: str) -> None:
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": POLL_INTERVAL},
                                  name=name, daemon=True)
        thread.start()
        self._running.append((server, thread))

    def _start_unix(self, path: Path) -> None:
        if not path.parent.is_dir():
            raise ControlError(f"[control] socket: folder {path.parent} does not exist")
        _claim_socket_path(path)
        # bind under a temporary name, restrict it, then rename: the socket is never reachable
        # with looser permissions (a umask change would affect every thread of the process)
        temp = path.parent / f".b2bua-{os.getpid()}.sock"
        for candidate in (path, temp):
            if len(os.fsencode(candidate)) > MAX_UNIX_PATH:
                raise ControlError(
                    f"[control] socket: {candidate} is longer than {MAX_UNIX_PATH} bytes; use a shorter path"
                )
        server = _UnixServer(path, self._processor, self._config.max_request_bytes, self._limits)
        try:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            server.socket.bind(str(temp))
            os.chmod(temp, 0o600)
            os.replace(temp, path)
            server.server_activate()
        except OSError as exc:
            server.server_close()
            with contextlib.suppress(OSError):
                temp.unlink()
            raise ControlError(f"[control] socket: cannot listen on {path}: {exc.strerror or exc}") from exc
        st = os.stat(path)
        self._unix_inode = (st.st_dev, st.st_ino)
        self._unix = server
        self._serve(server, "control-unix-listener")
        logger.info("control API listening on {}", path)

    def _start_http(self, address_text: str) -> None:
        host, port = parse_http_address(address_text)
        if not self._config.token and not is_loopback_host(host):
            # config validation refuses this too; a server reachable from the network without a
            # token would hand call control to anyone who can reach it
            raise ControlError(f"[control] http: {address_text!r} is not a loopback address: set token too")
        try:
            server = _HttpServer((host, port), self._processor, self._config, self._limits, self._routes)
        except OSError as exc:
            reason = exc.strerror or exc
            raise ControlError(f"[control] http: cannot listen on {address_text}: {reason}") from exc
        self._http = server
        self._serve(server, "control-http-listener")
        bound_host, bound_port = self.http_address or (host, port)
        logger.info("control API listening on http://{}:{}/{}", bound_host, bound_port,
                    " (token required)" if self._config.token else "")

    def _stop_locked(self) -> None:
        # a server is only in _running once serve_forever runs: shutdown() would wait forever
        # otherwise. Each shutdown() waits for its listener's next poll: wait for all at once.
        stoppers = [threading.Thread(target=server.shutdown, name="control-stop") for server, _ in self._running]
        for stopper in stoppers:
            stopper.start()
        for stopper in stoppers:
            stopper.join()
        for server, thread in self._running:
            server.close_connections()
            server.server_close()
            thread.join(timeout=5.0)
        # a call on the loop ends within the loop timeout; a longer wait (a reload, a drain with
        # a wait) is left behind, its client without an answer, rather than holding the shutdown
        deadline = time.monotonic() + self._loop_timeout
        waiting = sum(server.join_workers(deadline) for server, _ in self._running)
        if waiting:
            logger.warning("control API: {} call(s) still waiting at shutdown (a reload, or a drain with a wait):"
                           " their clients get no answer", waiting)
        if self._unix is not None and self._socket_path is not None:
            _remove_if_same(self._socket_path, self._unix_inode)
        if self._running:
            logger.info("control API stopped")
        self._running.clear()
        self._unix = None
        self._unix_inode = None
        self._http = None


def _claim_socket_path(path: Path) -> None:
    """Make ``path`` free for our socket: remove a stale socket, refuse a live one or a file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlError(f"[control] socket: {path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        logger.info("control socket: removing stale {}", path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    except OSError as exc:
        raise ControlError(f"[control] socket: cannot check {path}: {exc.strerror or exc}") from exc
    finally:
        probe.close()
    raise ControlError(f"[control] socket: {path} is in use: another b2bua answers there")


def _remove_if_same(path: Path, inode: tuple[int, int] | None) -> None:
    # another instance may have replaced the file since; its socket is not ours to remove
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if inode == (st.st_dev, st.st_ino):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


# -- Client --------------------------------------------------------------------------------------


class _UnixTransport:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __str__(self) -> str:
        return str(self.path)

    def exchange(self, payload: bytes, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(str(self.path))
            except (FileNotFoundError, ConnectionRefusedError):
                raise ControlUnavailable(f"cannot connect to {self.path}: is the b2bua running?") from None
            except PermissionError:
                raise ControlUnavailable(
                    f"cannot connect to {self.path}: permission denied (run as the b2bua's user)"
                ) from None
            except OSError as exc:
                raise ControlUnavailable(f"cannot connect to {self.path}: {exc.strerror or exc}") from None
            try:
                sock.sendall(payload + b"\n")
                return _read_line(sock, deadline, str(self.path))
            except TimeoutError:
                raise ControlUnavailable(f"no answer from {self.path} within {timeout:g}s") from None
            except OSError as exc:
                raise ControlUnavailable(f"{self.path}: {exc.strerror or exc}") from None


def _read_line(sock: socket.socket, deadline: float, where: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size <= MAX_RESPONSE_BYTES:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        chunk = sock.recv(65536)
        if not chunk:
            raise ControlUnavailable(f"{where} closed the connection without an answer")
        newline = chunk.find(b"\n")
        if newline >= 0:
            chunks.append(chunk[:newline])
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    raise ControlUnavailable(f"{where}: answer larger than {MAX_RESPONSE_BYTES} bytes")


class _HttpTransport:
    def __init__(self, url: str, token: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{url!r}: expected an http:// URL such as http://127.0.0.1:8080/")
        self.url = url
        self.token = token
        # the control API is local: never send it (or its token) through an HTTP proxy
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def __str__(self) -> str:
        return self.url

    def exchange(self, payload: bytes, timeout: float) -> bytes:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url, data=payload, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=timeout) as response:
                return bytes(response.read(MAX_RESPONSE_BYTES + 1))
        except urllib.error.HTTPError as exc:
            # 401/413/... carry a JSON-RPC error body: let the caller raise RpcCallError
            with contextlib.closing(exc):
                body = bytes(exc.read(MAX_RESPONSE_BYTES + 1))
                if exc.headers.get_content_type() == "application/json" and body:
                    return body
            raise ControlUnavailable(f"{self.url}: HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ConnectionRefusedError):
                raise ControlUnavailable(f"cannot connect to {self.url}: is the b2bua running?") from None
            if isinstance(reason, TimeoutError):
                raise ControlUnavailable(f"no answer from {self.url} within {timeout:g}s") from None
            raise ControlUnavailable(f"cannot connect to {self.url}: {reason}") from None
        except TimeoutError:
            raise ControlUnavailable(f"no answer from {self.url} within {timeout:g}s") from None
        except OSError as exc:
            raise ControlUnavailable(f"{self.url}: {exc.strerror or exc}") from None


class ControlClient:
    """Calls control methods over the unix socket or HTTP; one connection per call.

    Build it with :meth:`unix` or :meth:`http`.
    """

    def __init__(self, transport: _UnixTransport | _HttpTransport) -> None:
        self._transport = transport
        self._ids = itertools.count(1)

    @classmethod
    def unix(cls, path: str | Path) -> ControlClient:
        """A client of the unix socket at ``path``."""
        return cls(_UnixTransport(Path(path)))

    @classmethod
    def http(cls, url: str, token: str = "") -> ControlClient:
        """A client of the HTTP control API at ``url`` (``http://127.0.0.1:PORT/``).

        :raises ValueError: when ``url`` is not an http(s) URL.
        """
        return cls(_HttpTransport(url, token))

    @classmethod
    def from_config(cls, config: Config, token: str | None = None) -> ControlClient:
        """A client of the B2BUA that runs with ``config``: its ``[control] socket`` (no token,
        never leaves the host), else its HTTP listener with ``token``, else ``$B2BUA_TOKEN``,
        else ``[control] token``.

        :raises ConfigError: ``[control]`` turns both off, or its ``http`` is malformed.
        """
        control = config.control
        if control.socket:
            return cls.unix(config.resolve_path(control.socket))
        if control.http:
            try:
                host, port = parse_http_address(control.http)
            except ControlError as exc:
                raise ConfigError(f"{config.path}: {exc}") from None
            url = f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
            return cls.http(url, token or os.environ.get("B2BUA_TOKEN", "") or control.token)
        raise ConfigError(f"{config.path}: [control] sets neither socket nor http: nothing to connect to")

    @property
    def target(self) -> str:
        """Where the client connects, for messages."""
        return str(self._transport)

    def call(
        self, method: str, params: list[Any] | dict[str, Any] | None = None, timeout: float = 10.0
    ) -> Any:
        """Call ``method`` and return its result.

        :raises RpcCallError: the server answered with an error.
        :raises ControlUnavailable: no connection, no answer in ``timeout`` seconds, or an answer
            that is not JSON-RPC.
        """
        request_id = next(self._ids)
        request: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            request["params"] = params
        try:
            payload = _dumps(request)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"params of {method} are not JSON-serialisable: {exc}") from None
        body = self._transport.exchange(payload, timeout)
        return _result_of(body, request_id, self.target)


def _result_of(body: bytes, request_id: int, where: str) -> Any:
    try:
        doc = json.loads(body)
    except ValueError:
        raise ControlUnavailable(f"{where} answered with something that is not JSON") from None
    if not isinstance(doc, dict) or doc.get("jsonrpc") != "2.0":
        raise ControlUnavailable(f"{where} answered with something that is not a JSON-RPC 2.0 response")
    error = doc.get("error")
    if error is not None:
        if not isinstance(error, dict):
            raise ControlUnavailable(f"{where} answered with a malformed error: {error!r}")
        code = error.get("code")
        return_code = code if isinstance(code, int) and not isinstance(code, bool) else INTERNAL_ERROR
        raise RpcCallError(return_code, str(error.get("message", "")), error.get("data"))
    if doc.get("id") != request_id:
        raise ControlUnavailable(f"{where} answered request {request_id} with id {doc.get('id')!r}")
    if "result" not in doc:
        raise ControlUnavailable(f"{where} answered without a result or an error")
    return doc["result"]
