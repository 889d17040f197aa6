"""The host's own control methods, with Kamailio's names: ``core.*``, ``system.*``, ``help``.

``register_core_methods(registry, app)`` adds them; ``app`` is anything that satisfies
:class:`CoreApp` (the real ``App``, or a stand-in in tests).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from b2bua import logs as process_logs
from b2bua.events import CallLeg, LegState
from b2bua.logs import check_pjsip_level, sink_level
from b2bua.rpc import INVALID_PARAMS, RpcError, RpcRegistry

if TYPE_CHECKING:
    from b2bua.session import Session


class CoreApp(Protocol):
    """What the core methods read from the application."""

    #: the B2BUA's version string
    version: str
    #: start time, ``time.time()`` seconds
    started_at: float

    def plugin_names(self) -> list[str]:
        """Names of the loaded plugins; called from an API thread (the set is fixed after start)."""
        ...

    def active_calls(self) -> list[dict[str, Any]]:
        """One JSON-serialisable summary per call in progress; called on the loop thread."""
        ...


class LogControl(Protocol):
    """The process's log levels (:mod:`b2bua.logs` is one; tests pass a stand-in)."""

    def log_level(self) -> str | None: ...

    def set_log_level(self, name: str) -> str: ...

    def pjsip_log_level(self) -> int | None: ...

    def set_pjsip_log_level(self, level: int) -> int: ...


def log_level_method(logs: LogControl) -> Callable[..., dict[str, Any]]:
    """``core.log_level [level [pjsip_level]]``: set what is given (``null`` skips one), answer both."""

    def log_level(level: str | None = None, pjsip_level: int | None = None) -> dict[str, Any]:
        try:  # both checked before either changes
            if level is not None:
                sink_level(level)
            if pjsip_level is not None:
                check_pjsip_level(pjsip_level)
        except ValueError as exc:
            raise RpcError(f"Invalid params for core.log_level: {exc}", INVALID_PARAMS) from None
        try:
            if level is not None:
                logs.set_log_level(level)
            if pjsip_level is not None:
                logs.set_pjsip_log_level(pjsip_level)
        except RuntimeError as exc:
            raise RpcError(f"Cannot set the log level: {exc}") from None
        return {"level": logs.log_level(), "pjsip_level": logs.pjsip_log_level()}

    return log_level


def calls_report(sessions: Iterable[Session], now: float) -> list[dict[str, Any]]:
    """``core.calls``' answer: one summary per call in progress (loop thread).

    Per call its ids, URIs, state and age (``now``: monotonic seconds), the caller's leg (state,
    media), the B legs still up (index, target, leg state, answered, provisional, heard: the
    caller is connected to it, media) and the target that answered. A leg's ``media`` is its
    audio stream now (codec, direction, RTP counters: :meth:`b2bua.events.MediaStats.summary`),
    read from pjsua for this answer only; None before the leg has media.
    """
    calls = []
    for s in sessions:
        call = s.call
        peer = s.bridge.peer if s.bridge.connected else 0
        calls.append({
            "id": call.id,
            "call_id": call.call_id,
            "from": call.from_uri,
            "to": call.to_uri,
            "ruri": call.request_uri,
            "state": s.state.value,
            "duration": round(now - call.started, 3),
            "caller": {"state": s.a.state.value, "media": media_report(s.a)} if s.a is not None else None,
            "legs": [
                {"index": leg.index, "target": leg.target.uri if leg.target else "", "state": leg.state.value,
                 "answered": leg.index == s.winner, "provisional": leg.state is not LegState.CALLING,
                 "heard": leg.index == peer, "media": media_report(leg)}
                for leg in s.b.values()
            ],
            "answered_by": s.answered_target.uri if s.answered_target else None,
        })
    return calls


def media_report(leg: CallLeg) -> dict[str, object] | None:
    """One leg's audio stream for ``core.calls`` (None before it has media)."""
    if not leg.media_ready:
        return None
    stats = leg.media_stats()
    return stats.summary() if stats is not None else None


def uptime_report(now: float, started_at: float) -> dict[str, int]:
    """``core.uptime``'s answer: ``now`` and ``up_since`` as Unix seconds, ``uptime`` in seconds."""
    return {"now": int(now), "up_since": int(started_at), "uptime": max(0, int(now - started_at))}


def register_core_methods(
    registry: RpcRegistry, app: CoreApp, *, clock: Callable[[], float] = time.time,
    logs: LogControl | None = None,
) -> None:
    """Add ``core.version``, ``core.uptime``, ``core.calls``, ``core.plugins``, ``core.log_level``,
    ``system.listMethods``, ``system.methodHelp`` and ``help`` to ``registry``.

    :param clock: wall-clock seconds (``time.time``), for ``core.uptime``.
    :param logs: the log levels ``core.log_level`` reads and sets (default: :mod:`b2bua.logs`).
    """

    def version() -> str:
        return app.version

    def uptime() -> dict[str, int]:
        return uptime_report(clock(), app.started_at)

    def calls() -> list[dict[str, Any]]:
        return list(app.active_calls())

    def plugins() -> list[str]:
        return list(app.plugin_names())

    def list_methods() -> list[str]:
        return [method.name for method in registry]

    def method_help(name: str) -> str:
        # registry.get answers an unknown name with -32601 "Method not found: <name>"
        return registry.get(name).help

    def help_(name: str | None = None) -> dict[str, str] | str:
        if name is None:
            return {method.signature: method.help for method in registry}
        method = registry.get(name)
        return f"usage: {method.signature}\n{method.help}"

    # Only core.calls reads per-call state, which belongs to the loop thread. The others read
    # values fixed at start-up, so they answer from the API thread even when the loop is busy.
    registry.add("core.version", version, "The B2BUA's version.", on_loop=False)
    registry.add("core.uptime", uptime,
                 "Current time, start time (Unix seconds) and seconds since start.", on_loop=False)
    registry.add("core.calls", calls, "The calls in progress.")
    registry.add("core.plugins", plugins, "Names of the loaded plugins.", on_loop=False)
    registry.add("system.listMethods", list_methods, "Names of all control methods.", on_loop=False)
    registry.add("system.methodHelp", method_help, "The help text of control method <name>.", on_loop=False)
    # on the loop: pjsip's log function and level belong to the thread that runs pjsip
    registry.add("core.log_level", log_level_method(logs or process_logs),
                 "The log level and pjsip's (0-5); with params, set them first: core.log_level DEBUG, "
                 "core.log_level INFO 4, core.log_level null 1 (pjsip's only).")
    registry.add("help", help_,
                 "Without a name: every control method's usage and help. With one: that method's.",
                 on_loop=False)
