"""The node's health for load balancers, orchestrators and monitoring: ``/health``, ``/ready``, ``/live``.

:func:`node_state` is the one rule (pure): stopping, drained by the operator (``core.drain``),
shedding load, or up. ``GET /health`` (and its alias ``/ready``) answers 200 only when up and
503 otherwise, with a JSON body naming the state, so an HTTP health check takes a draining or
overloaded node out of rotation the way a SIP edge does on its 503 to OPTIONS
(:mod:`b2bua.admission`, rule 8). ``GET /live`` answers 200 as long as the loop thread runs
work handed to it (a drained node is alive), 503 when it did not within
:data:`HEALTH_TIMEOUT` seconds. None of them needs a token (:class:`~b2bua.control_routes.Access`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from b2bua.control_routes import Access, HttpRequest, HttpResponse, Route, json_response

#: seconds a health check waits for the loop thread before it answers 503 unresponsive
HEALTH_TIMEOUT = 2.0

RunOnLoop = Callable[[Callable[[], Any], float], Any]


class NodeState(str, enum.Enum):
    """What ``/health`` and ``core.stats`` say about the node."""

    UP = "up"  #: takes new calls
    DRAINING = "draining"  #: the operator drained it: new calls get 503, calls in progress go on
    STOPPING = "stopping"  #: shutdown has begun
    OVERLOADED = "overloaded"  #: new calls are shed (503) until the load passes

    def __str__(self) -> str:
        return self.value


def node_state(*, stopping: bool, draining: bool, overloaded: bool) -> NodeState:
    """The node's state; the first that applies of stopping, draining, overloaded, up."""
    if stopping:
        return NodeState.STOPPING
    if draining:
        return NodeState.DRAINING
    if overloaded:
        return NodeState.OVERLOADED
    return NodeState.UP


@dataclass(frozen=True)
class Health:
    """What ``/health`` reports (read on the loop thread)."""

    state: NodeState
    calls: int  #: calls in progress
    max_calls: int

    @property
    def status_code(self) -> int:
        return 200 if self.state is NodeState.UP else 503

    def body(self) -> dict[str, Any]:
        return {"status": self.state.value, "calls": self.calls, "max_calls": self.max_calls}


def health_routes(read: Callable[[], Health], run_on_loop: RunOnLoop,
                  timeout: float = HEALTH_TIMEOUT) -> list[Route]:
    """``/health``, ``/ready`` and ``/live`` over ``read`` (run on the loop thread)."""

    def health(request: HttpRequest) -> HttpResponse:
        try:
            report: Health = run_on_loop(read, timeout)
        except TimeoutError:
            return _unresponsive(timeout)
        return json_response(report.status_code, report.body())

    def live(request: HttpRequest) -> HttpResponse:
        try:
            run_on_loop(lambda: None, timeout)
        except TimeoutError:
            return _unresponsive(timeout)
        return json_response(200, {"status": "alive"})

    return [
        Route("/health", health, Access.PUBLIC, "200 when the node takes new calls, else 503; JSON state"),
        Route("/ready", health, Access.PUBLIC, "the same as /health"),
        Route("/live", live, Access.PUBLIC, "200 while the loop thread runs, else 503"),
    ]


def _unresponsive(timeout: float) -> HttpResponse:
    error = f"the loop thread did not answer within {timeout:g}s"
    return json_response(503, {"status": "unresponsive", "error": error})
