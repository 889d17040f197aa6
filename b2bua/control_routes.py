"""The HTTP control listener's GET routes: a small table of paths, access levels and handlers.

The listener (:mod:`b2bua.control`) answers ``POST /``, ``/rpc`` and ``/RPC`` with JSON-RPC;
a ``GET`` (or ``HEAD``) of any path, those included, is looked up here. A route is::

    Route("/metrics", handler, Access.READ, "Prometheus metrics")

where ``handler(request: HttpRequest) -> HttpResponse`` runs on the listener's thread (never
on the loop: what it needs from the loop it asks for with ``run_on_loop``, with a timeout it
turns into a 503). Before a handler runs, the listener applies the same guard as to JSON-RPC
(:mod:`b2bua.control_guard`): the connection caps and deadlines, the ``Host`` check (DNS
rebinding), the ``Origin`` check (cross-origin browser requests), then the route's access
level (:func:`b2bua.control_guard.access_refusal`):

* :attr:`Access.PUBLIC`: no token, ever (``/health``, ``/ready``, ``/live``: load balancers
  and probes carry no credentials; they disclose the node's state and call count only);
* :attr:`Access.READ`: read-only data (``/metrics``; a status page): with ``[control]
  read_token`` or ``token`` set, ``Authorization: Bearer <either>`` is required;
* :attr:`Access.ADMIN`: ``[control] token`` only.

A refused request gets 401 with ``WWW-Authenticate: Bearer`` and is logged (rate-limited, as
every refusal of the listener). Changes never go through GET: actions are JSON-RPC methods
(``POST /rpc``, ADMIN), which a page calls with ``fetch`` and the token.

Adding routes (another module, e.g. a status page): build :class:`Route` values and pass them
to :class:`b2bua.control.ControlServer` (``routes=``), as :mod:`b2bua.lifecycle` does with
:func:`b2bua.health.health_routes` and :func:`b2bua.metrics.metrics_routes`. Paths are exact
(no patterns); a path under a prefix (``/static/``) is a route whose ``prefix`` is True.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any


class Access(str, enum.Enum):
    """Who may GET a route (see the module docstring)."""

    PUBLIC = "public"
    READ = "read"
    ADMIN = "admin"


@dataclass(frozen=True)
class HttpRequest:
    """A GET/HEAD request that passed the guard: its path, query (names to values, in order),
    headers (lower-case names, the first value of each) and the client's address."""

    method: str
    path: str
    query: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    source: str = ""

    def param(self, name: str, default: str | None = None) -> str | None:
        """The first value of query parameter ``name``."""
        values = self.query.get(name)
        return values[0] if values else default


@dataclass(frozen=True)
class HttpResponse:
    """What a handler answers; ``Content-Length`` is added by the listener."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


def json_response(status: int, value: Any, headers: tuple[tuple[str, str], ...] = ()) -> HttpResponse:
    """``value`` as compact JSON (UTF-8, no NaN), with ``Cache-Control: no-store``: a state
    answer must never come from a cache."""
    body = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    return HttpResponse(status, body, "application/json", (("Cache-Control", "no-store"), *headers))


Handler = Callable[[HttpRequest], HttpResponse]


@dataclass(frozen=True)
class Route:
    """``GET path`` (and ``HEAD``) answered by ``handler`` for clients with ``access``."""

    path: str
    handler: Handler
    access: Access
    help: str = ""
    #: True: every path starting with ``path`` (which then ends with ``/``)
    prefix: bool = False

    def __post_init__(self) -> None:
        if not self.path.startswith("/"):
            raise ValueError(f"route {self.path!r}: a path starts with '/'")
        if self.prefix and not self.path.endswith("/"):
            raise ValueError(f"route {self.path!r}: a prefix route ends with '/'")


class RouteTable:
    """Routes by path; a duplicate path is an error. Read-only once the listener serves."""

    def __init__(self, routes: Iterable[Route] = ()) -> None:
        self._exact: dict[str, Route] = {}
        self._prefixes: list[Route] = []
        for route in routes:
            self.add(route)

    def add(self, route: Route) -> None:
        if route.path in self._exact or any(p.path == route.path for p in self._prefixes):
            raise ValueError(f"route {route.path!r} is added twice")
        if route.prefix:
            self._prefixes.append(route)
            self._prefixes.sort(key=lambda r: -len(r.path))  # the longest prefix wins
        else:
            self._exact[route.path] = route

    def find(self, path: str) -> Route | None:
        """The route answering ``path``, or None."""
        route = self._exact.get(path)
        if route is not None:
            return route
        return next((r for r in self._prefixes if path.startswith(r.path)), None)

    def __iter__(self) -> Iterator[Route]:
        return iter([*self._exact.values(), *self._prefixes])

    def __len__(self) -> int:
        return len(self._exact) + len(self._prefixes)
