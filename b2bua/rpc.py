"""The control API's method registry (JSON-RPC 2.0 semantics, transport-free).

Plugins add methods in ``b2bua_register_rpc``. A method takes the request's params
(positional, or named when the request sends an object) and returns a JSON-serialisable
result or raises :class:`RpcError`. Methods run on the loop thread unless added with
``on_loop=False`` (for blocking work such as a database reload; such a method hands its
result to the loop itself with ``app.run_on_loop``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# JSON-RPC 2.0 error codes
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
#: application error (Kamailio answers "500 ..." faults; we keep its text)
SERVER_ERROR = -32000


@dataclass(frozen=True)
class RawJson:
    """A method's result already encoded as JSON (UTF-8 text, no newline), sent as it is.

    For results too large to encode in one go: the encoder holds the GIL for the whole
    document (~0.8 s for a 100,000-entry ``dispatcher.list full``), and the loop thread cannot
    run meanwhile. A method builds such a result in slices on the loop (``app.run_task``).
    """

    data: bytes | bytearray


class RpcError(Exception):
    """An error answer: ``code`` (JSON-RPC), ``message``, optional ``data``."""

    def __init__(self, message: str, code: int = SERVER_ERROR, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


@dataclass(frozen=True)
class RpcMethod:
    name: str
    func: Callable[..., Any]
    help: str
    on_loop: bool = True

    @property
    def signature(self) -> str:
        params = []
        for p in inspect.signature(self.func).parameters.values():
            if p.kind is p.VAR_POSITIONAL:
                params.append(f"[{p.name}...]")
            elif p.default is not p.empty:
                params.append(f"[{p.name}]")
            else:
                params.append(p.name)
        return " ".join([self.name, *params])


class RpcRegistry:
    """Named control methods."""

    def __init__(self) -> None:
        self._methods: dict[str, RpcMethod] = {}

    def add(self, name: str, func: Callable[..., Any], help: str, *, on_loop: bool = True) -> None:
        """Register ``func`` as method ``name``; a duplicate name is an error."""
        if name in self._methods:
            raise ValueError(f"control method {name!r} is registered twice")
        self._methods[name] = RpcMethod(name, func, help.strip(), on_loop)

    def get(self, name: str) -> RpcMethod:
        try:
            return self._methods[name]
        except KeyError:
            raise RpcError(f"Method not found: {name}", METHOD_NOT_FOUND) from None

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(sorted(self._methods.values(), key=lambda m: m.name))

    def __contains__(self, name: object) -> bool:
        return name in self._methods

    @staticmethod
    def bind(method: RpcMethod, params: Sequence[Any] | Mapping[str, Any] | None) -> Callable[[], Any]:
        """Check ``params`` against the method's signature; return a zero-argument call."""
        args: Sequence[Any] = ()
        kwargs: Mapping[str, Any] = {}
        if params is None:
            pass
        elif isinstance(params, Mapping):
            kwargs = params
        elif isinstance(params, (list, tuple)):
            args = params
        else:
            raise RpcError("params must be an array or an object", INVALID_PARAMS)
        try:
            inspect.signature(method.func).bind(*args, **kwargs)
        except TypeError as exc:
            raise RpcError(f"Invalid params for {method.name}: {exc}; usage: {method.signature}",
                           INVALID_PARAMS) from None
        return lambda: method.func(*args, **kwargs)
