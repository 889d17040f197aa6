"""The host's own control methods, with Kamailio's names: ``core.*``, ``system.*``, ``stats.*``, ``help``.

``register_core_methods(registry, app)`` adds the basics; ``app`` is anything that satisfies
:class:`CoreApp` (the real ``App``, or a stand-in in tests). :func:`register_drain_methods`
adds ``core.drain``/``core.undrain``, :func:`register_stats_methods` ``core.stats`` and
Kamailio's ``stats.get_statistics``/``reset_statistics``/``clear_statistics``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from b2bua import logs as process_logs
from b2bua.events import CallLeg, LegState
from b2bua.logs import check_pjsip_level, sink_level
from b2bua.rpc import INVALID_PARAMS, RpcError, RpcRegistry
from b2bua.stats import CoreStats, StatsRegistry

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
    media), the B legs still up (index, target, next hop: the address the INVITE went to when
    not the target's own, leg state, answered, provisional, heard: the caller is connected to
    it, media) and the target that answered. A leg's ``media`` is its audio stream now (codec,
    direction, RTP counters: :meth:`b2bua.events.MediaStats.summary`), read from pjsua for this
    answer only; None before the leg has media.
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
                {"index": leg.index, "target": leg.target.uri if leg.target else "",
                 "next_hop": leg.target.next_hop if leg.target else "", "state": leg.state.value,
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


# -- drain ------------------------------------------------------------------------------------------

#: seconds one ``core.drain`` call may wait at most (the CLI's ``--wait`` calls it again)
MAX_WAIT = 3600.0
#: seconds between two looks at the calls in progress while waiting
WAIT_POLL = 0.1

RunOnLoop = Callable[[Callable[[], Any], float], Any]


class DrainApp(Protocol):
    """What the drain methods use of the application (loop thread)."""

    sessions: Any  #: the calls in progress (``len()``)

    def drain(self) -> int:
        """Refuse new calls from now on; the number of calls in progress."""
        ...

    def undrain(self) -> bool:
        """Take new calls again; False when there was no drain."""
        ...

    def state(self) -> Any:
        """The node's state (:class:`b2bua.health.NodeState`)."""
        ...


def seconds_param(name: str, value: Any, high: float = MAX_WAIT) -> float:
    """A param in seconds from 0 to ``high`` (a decimal string is accepted); RpcError otherwise."""
    number: float | None = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if number is None or not 0 <= number <= high:  # also refuses NaN
        raise RpcError(f"Invalid params: {name} must be seconds from 0 to {high:g}, got {value!r}", INVALID_PARAMS)
    return number


def wait_until(count: Callable[[], int], seconds: float, *, poll: float = WAIT_POLL,
               clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> int:
    """Poll ``count()`` until it is 0 or ``seconds`` have passed; the last count (a control thread)."""
    deadline = clock() + seconds
    left = count()
    while left and clock() < deadline:
        sleep(min(poll, max(0.0, deadline - clock())))
        left = count()
    return left


def register_drain_methods(registry: RpcRegistry, app: DrainApp, run_on_loop: RunOnLoop,
                           loop_timeout: float = 10.0) -> None:
    """Add ``core.drain [wait]`` and ``core.undrain``."""

    def on_loop(fn: Callable[[], Any]) -> Any:
        try:
            return run_on_loop(fn, loop_timeout)
        except TimeoutError:
            raise RpcError(f"Timeout: the loop thread did not answer within {loop_timeout:g}s") from None

    def drain(wait: Any = 0) -> dict[str, Any]:
        seconds = seconds_param("wait", wait)
        started = time.monotonic()
        calls = on_loop(app.drain)
        if seconds and calls:
            calls = wait_until(lambda: int(on_loop(lambda: len(app.sessions))), seconds)
        return {"state": str(on_loop(app.state)), "calls": calls, "drained": calls == 0,
                "waited": round(time.monotonic() - started, 1)}

    def undrain() -> dict[str, Any]:
        def run() -> dict[str, Any]:
            was = app.undrain()
            return {"state": str(app.state()), "calls": len(app.sessions), "was_draining": was}
        return dict(on_loop(run))

    registry.add("core.drain", drain,
                 "Drain the node: new calls and OPTIONS get 503 Draining (+ Retry-After), calls in progress go "
                 "on. With <wait> seconds (at most 3600), answer once the last call ended or the time is up "
                 "('drained' says which). Kept until core.undrain (not across restarts).", on_loop=False)
    registry.add("core.undrain", undrain, "End a drain: new calls are taken again.", on_loop=False)


# -- statistics ---------------------------------------------------------------------------------


def register_stats_methods(registry: RpcRegistry, stats: StatsRegistry) -> None:
    """Add ``core.stats`` and Kamailio's ``stats.get_statistics``, ``stats.reset_statistics``
    and ``stats.clear_statistics`` over the groups of ``stats`` (all on the loop thread)."""

    def core_stats() -> dict[str, Any]:
        core = stats.get("core")
        assert isinstance(core, CoreStats)
        return core.report()

    def get_statistics(*statsid: str) -> list[str]:
        values = _select(stats, statsid or ("all",))
        return [f"{name} = {_number(value)}" for name, value in values.items()]

    def reset_statistics(*statsid: str) -> str:
        groups = _groups(stats, statsid or ("all",))
        for group in groups:
            stats.get(group).reset()
        return f"Ok. Statistics reset: {', '.join(groups)}"

    def clear_statistics(*statsid: str) -> list[str]:
        shown = get_statistics(*statsid)
        reset_statistics(*statsid)
        return shown

    registry.add("core.stats", core_stats,
                 "The process's counters since start-up (or the last reset): calls received, answered, failed, "
                 "cancelled, refused by admission reason (shed: overload, capacity, draining), requests refused; "
                 "and now: state, calls in progress, call legs in use.")
    registry.add("stats.get_statistics", get_statistics,
                 "Kamailio's: 'all', 'group:' (core:, dispatcher:) or 'group:name' -> 'group:name = value' lines.")
    registry.add("stats.reset_statistics", reset_statistics,
                 "Kamailio's: zero the counters of 'all' or of groups ('core:', 'dispatcher:'); the only way a "
                 "counter goes back (Prometheus sees a counter reset).")
    registry.add("stats.clear_statistics", clear_statistics,
                 "Kamailio's: stats.get_statistics, then stats.reset_statistics of the same groups.")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _groups(stats: StatsRegistry, ids: Iterable[str]) -> list[str]:
    """The groups ``ids`` name as a whole (``all``, ``core:``, ``core``); RpcError otherwise."""
    groups: list[str] = []
    for raw in ids:
        text = str(raw).strip()
        chosen = stats.groups if text == "all" else [text.rstrip(":")]
        for group in chosen:
            if group not in stats.groups:
                raise RpcError(f"Invalid params: {text!r}: statistics reset by group: all, "
                               f"{', '.join(g + ':' for g in stats.groups)}", INVALID_PARAMS)
            if group not in groups:
                groups.append(group)
    return groups


def _select(stats: StatsRegistry, ids: Iterable[str]) -> dict[str, float]:
    """``{"group:name": value}`` for Kamailio statsids: ``all``, ``group:``, ``group:name``, ``name``."""
    out: dict[str, float] = {}
    every: dict[str, float] | None = None
    for raw in ids:
        text = str(raw).strip()
        group, colon, name = text.partition(":")
        if text == "all" or (colon and not name):
            for g in (stats.groups if text == "all" else [group]):
                if g not in stats.groups:
                    raise RpcError(f"Invalid params: no statistics group {g!r} "
                                   f"(known: {', '.join(stats.groups)})", INVALID_PARAMS)
                out.update(stats.totals([g]))
            continue
        every = every if every is not None else stats.totals()
        matches = {k: v for k, v in every.items() if k == text or (not colon and k.split(":", 1)[1] == text)}
        if not matches:
            raise RpcError(f"Invalid params: no statistic {text!r}", INVALID_PARAMS)
        out.update(matches)
    return out
