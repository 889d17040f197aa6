"""Routes of the web status page on the HTTP control listener (:mod:`b2bua.control_routes`).

* ``GET /status``, ``/status/app.js``, ``/status/app.css``: the page itself, static files read
  once from ``static/`` (public: they hold no data, and a browser cannot send a bearer token
  with a navigation); ``GET /`` redirects there.
* ``GET /status/data`` (READ: ``read_token`` or ``token``): the answers of the read-only
  methods in :data:`STATUS_METHODS`, run as one JSON-RPC batch through the control API's own
  processor (same timeouts, errors and logging as ``POST /rpc``), plus whether the token the
  request carried may also act (``admin``), so that the page shows its buttons only then.

The page's actions are not routes: they are JSON-RPC calls (``POST /rpc``, ``token`` only)
that pass the listener's Origin, Host and Content-Type checks like any other.

Every answer carries :data:`PAGE_HEADERS`: a Content-Security-Policy without inline script or
style (the page builds its DOM from text nodes only, so operator text such as a destination's
attributes is never markup), no framing, no caching, no sniffing, no referrer.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from importlib import resources

from b2bua.control_guard import access_refusal
from b2bua.control_routes import Access, HttpRequest, HttpResponse, Route

#: the read-only methods whose answers ``/status/data`` carries, in this order (one missing from
#: the registry, e.g. the dispatcher plugin not enabled, answers "Method not found" in its place)
STATUS_METHODS = ("core.stats", "dispatcher.list", "dispatcher.stats")

#: headers of every answer of the page's routes
PAGE_HEADERS: tuple[tuple[str, str], ...] = (
    ("Content-Security-Policy",
     "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
     "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
)

#: seconds one ``/status/data`` batch answers every page that asks
SHARED_FOR = 1.0

#: path -> (file in static/, content type)
STATIC_FILES = {
    "/status": ("index.html", "text/html; charset=utf-8"),
    "/status/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/status/app.css": ("app.css", "text/css; charset=utf-8"),
}

#: answers a JSON-RPC request document (bytes), as :meth:`b2bua.control.JsonRpcProcessor.handle`
Answer = Callable[[bytes], "bytes | None"]


def status_request(methods: tuple[str, ...] = STATUS_METHODS) -> bytes:
    """The JSON-RPC batch ``/status/data`` runs: one call per method, ids 1, 2, ..."""
    calls = [{"jsonrpc": "2.0", "id": n, "method": name} for n, name in enumerate(methods, 1)]
    return json.dumps(calls, separators=(",", ":")).encode("ascii")


def status_body(results: bytes, admin: bool, now: float) -> bytes:
    """``/status/data``'s answer: ``{"admin": ..., "time": ..., "methods": [...], "results": <batch>}``.

    ``results`` (the batch answer, already JSON) is spliced in as it is: a long
    ``dispatcher.list`` is not decoded and encoded again on the listener's thread.
    """
    head = {"admin": admin, "time": round(now, 3), "methods": list(STATUS_METHODS)}
    text = json.dumps(head, separators=(",", ":")).encode("ascii")
    return text[:-1] + b',"results":' + results + b"}"


def _static(name: str, content_type: str) -> HttpResponse:
    body = resources.files(__package__).joinpath("static", name).read_bytes()
    return HttpResponse(200, body, content_type, PAGE_HEADERS)


def web_routes(answer: Answer, token: str, read_token: str, clock: Callable[[], float] = time.time,
               monotonic: Callable[[], float] = time.monotonic) -> list[Route]:
    """The page's routes.

    :param answer: runs a JSON-RPC request document (the control API's processor).
    :param token: ``[control] token``; with ``read_token`` it decides the ``admin`` flag.
    :param read_token: ``[control] read_token``.
    """
    batch = status_request()
    files = {path: _static(name, kind) for path, (name, kind) in STATIC_FILES.items()}
    # one batch a second at most, whatever the number of open pages: dispatcher.list of a long
    # list is loop work, and every page polls every 2 s
    lock = threading.Lock()
    cached: list[tuple[float, bytes]] = []

    def results() -> bytes:
        with lock:
            now = monotonic()
            if not cached or now - cached[0][0] >= SHARED_FOR:
                cached[:] = [(now, answer(batch) or b"[]")]
            return cached[0][1]

    def page(request: HttpRequest) -> HttpResponse:
        return files[request.path]

    def data(request: HttpRequest) -> HttpResponse:
        # the listener checked READ access already; ADMIN decides whether the page offers actions
        admin = access_refusal(Access.ADMIN, request.headers.get("authorization"), token, read_token) is None
        return HttpResponse(200, status_body(results(), admin, clock()), "application/json", PAGE_HEADERS)

    def home(request: HttpRequest) -> HttpResponse:
        return HttpResponse(303, b"", "text/plain", (("Location", "/status"), *PAGE_HEADERS))

    return [
        *(Route(path, page, Access.PUBLIC, "the web status page (docs/web.md)") for path in files),
        Route("/status/data", data, Access.READ, "the status page's data: core.stats, dispatcher.list, "
              "dispatcher.stats and whether the token may act (docs/web.md)"),
        Route("/", home, Access.PUBLIC, "redirects a browser to /status"),
    ]
