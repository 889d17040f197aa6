"""The node's state for load balancers: the rule and the /health, /ready, /live answers."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from b2bua.control_routes import HttpRequest
from b2bua.health import Health, NodeState, health_routes, node_state


@pytest.mark.parametrize(("stopping", "draining", "overloaded", "state"), [
    (False, False, False, NodeState.UP),
    (False, False, True, NodeState.OVERLOADED),
    (False, True, True, NodeState.DRAINING),
    (True, True, True, NodeState.STOPPING),
])
def test_node_state(stopping: bool, draining: bool, overloaded: bool, state: NodeState) -> None:
    assert node_state(stopping=stopping, draining=draining, overloaded=overloaded) is state


def direct(fn: Callable[[], Any], timeout: float) -> Any:
    return fn()


def stuck(fn: Callable[[], Any], timeout: float) -> Any:
    raise TimeoutError


def answers(run_on_loop: Callable[[Callable[[], Any], float], Any], health: Health) -> dict[str, tuple[int, Any]]:
    routes = health_routes(lambda: health, run_on_loop, timeout=0.5)
    out = {}
    for route in routes:
        response = route.handler(HttpRequest("GET", route.path))
        assert response.content_type == "application/json"
        assert ("Cache-Control", "no-store") in response.headers
        out[route.path] = (response.status, json.loads(response.body))
    return out


def test_up_is_200_everything_else_503_and_live_follows_the_loop() -> None:
    up = answers(direct, Health(NodeState.UP, 3, 200))
    assert up["/health"] == (200, {"status": "up", "calls": 3, "max_calls": 200})
    assert up["/ready"] == up["/health"]
    assert up["/live"] == (200, {"status": "alive"})
    for state in (NodeState.DRAINING, NodeState.STOPPING, NodeState.OVERLOADED):
        got = answers(direct, Health(state, 1, 200))
        assert got["/health"] == (503, {"status": state.value, "calls": 1, "max_calls": 200})
        assert got["/live"][0] == 200  # a drained node is alive
    hung = answers(stuck, Health(NodeState.UP, 0, 200))
    assert hung["/health"][0] == hung["/live"][0] == 503
    assert hung["/live"][1]["status"] == "unresponsive"
