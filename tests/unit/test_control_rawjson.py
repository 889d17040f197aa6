"""A control method's pre-encoded result (RawJson) reaches the client as if it were encoded here."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from b2bua.control import JsonRpcProcessor
from b2bua.rpc import RawJson, RpcRegistry

LISTING = {"NRSETS": 1, "RECORDS": [{"SET": {"ID": 1, "TARGETS": [{"DEST": {"URI": "sip:gw", "FLAGS": "AP"}}]}}]}


def processor() -> JsonRpcProcessor:
    registry = RpcRegistry()
    encoded = json.dumps(LISTING, separators=(",", ":")).encode()
    registry.add("test.listing", lambda: RawJson(bytearray(encoded)), help="a listing encoded by the method",
                 on_loop=False)
    registry.add("test.plain", lambda: LISTING, help="the same listing encoded by the processor", on_loop=False)

    def run_on_loop(fn: Callable[[], Any], timeout: float) -> Any:
        return fn()

    return JsonRpcProcessor(registry, run_on_loop)


def test_a_raw_result_is_spliced_into_the_response_byte_for_byte() -> None:
    p = processor()
    for request_id in (7, "seven", None):
        raw = p.handle(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "test.listing"}).encode())
        plain = p.handle(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "test.plain"}).encode())
        assert raw == plain
        assert raw is not None and json.loads(raw) == {"jsonrpc": "2.0", "id": request_id, "result": LISTING}


def test_raw_results_in_a_batch_and_as_a_notification() -> None:
    p = processor()
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "test.listing"},
             {"jsonrpc": "2.0", "method": "test.listing"},  # a notification: no answer
             {"jsonrpc": "2.0", "id": 2, "method": "test.plain"}]
    answer = p.handle(json.dumps(batch).encode())
    assert answer is not None
    assert json.loads(answer) == [{"jsonrpc": "2.0", "id": 1, "result": LISTING},
                                  {"jsonrpc": "2.0", "id": 2, "result": LISTING}]
