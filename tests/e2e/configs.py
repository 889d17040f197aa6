"""Config and list files for end-to-end tests of the dispatcher and failover plugins.

Builders: a Kamailio ``dispatcher.list`` from `ListEntry` rows (`list_file_text`,
`write_list_file`), and a ``config.toml`` listening on one loopback address that reads that
list file, routes every call with one rule (or the given ``routes``) and sets
``[plugins.failover]`` (`b2bua_config`). Every value goes through `toml_value`, so a test can
pass any setting of ``plugins/dispatcher/config.py`` or ``plugins/failover/config.py``.

`start_b2bua` does the usual three steps (list file, config on a free port, start and wait)::

    entries = [ListEntry(1, gw1.uri, priority=10), ListEntry(1, gw2.uri, priority=5)]
    b2b = start_b2bua(b2bua_factory, workdir, addresses.next(), entries, algorithm="priority",
                      failover={"failover_codes": ["5xx", "408", 404]})
    result = caller.run_calls(b2b.ip, b2b.port, n=1)

`received_responses` / `received_finals` read whole responses from a caller's message log
(to check headers such as Retry-After).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .harness import B2buaProcess, CallResult, TracedMessage, free_port, parse_message_log

LIST_FILE = "dispatcher.list"
CONTROL_SOCKET = "b2bua.sock"


@dataclass(frozen=True)
class ListEntry:
    """One ``dispatcher.list`` line: ``setid uri flags priority attrs``."""

    setid: int
    uri: str
    flags: int = 0
    priority: int = 0
    attrs: str = ""

    def line(self) -> str:
        """The entry as a list-file line (attrs last, omitted when empty)."""
        if any(ch.isspace() for ch in self.uri + self.attrs):
            raise ValueError(f"ListEntry {self.uri!r}: uri and attrs must not contain blanks")
        fields = [str(self.setid), self.uri, str(self.flags), str(self.priority)]
        return " ".join([*fields, self.attrs] if self.attrs else fields)


def list_file_text(entries: Iterable[ListEntry]) -> str:
    """A whole ``dispatcher.list``, one line per entry, in the given order."""
    return "# setid uri flags priority attrs\n" + "".join(e.line() + "\n" for e in entries)


def write_list_file(directory: Path, entries: Iterable[ListEntry], name: str = LIST_FILE) -> Path:
    """Write the list file into ``directory`` (the B2BUA's workdir: the config names it relatively)."""
    path = directory / name
    path.write_text(list_file_text(entries))
    return path


def toml_value(value: Any, where: str = "value") -> str:
    """``value`` (bool, int, finite float, str, list or table of those) as TOML; anything else is a TypeError."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value!r} has no TOML form here")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v, f"{where}[{i}]") for i, v in enumerate(value)) + "]"
    if isinstance(value, Mapping):  # an inline table; keys must be bare keys
        return "{" + ", ".join(f"{k} = {toml_value(v, f'{where}.{k}')}" for k, v in value.items()) + "}"
    raise TypeError(f"{where}: cannot write {type(value).__name__} {value!r} as TOML")


def toml_table(header: str, values: Mapping[str, Any]) -> str:
    """``[header]`` (or ``[[header]]`` when it is written so) followed by ``key = value`` lines."""
    bracketed = header if header.startswith("[") else f"[{header}]"
    body = "".join(f"{key} = {toml_value(v, f'{header} {key}')}\n" for key, v in values.items())
    return f"{bracketed}\n{body}"


def b2bua_config(
    ip: str,
    port: int,
    *,
    algorithm: int | str = 4,
    setid: int = 1,
    limit: int = 0,
    routes: Sequence[Mapping[str, Any]] | None = None,
    dispatcher: Mapping[str, Any] | None = None,
    failover: Mapping[str, Any] | None = None,
    sip: Mapping[str, Any] | None = None,
    log_level: str = "INFO",
    plugins: Sequence[str] | None = None,
    extra_sections: Mapping[str, Mapping[str, Any]] | None = None,
    credentials: Sequence[Mapping[str, Any]] = (),
) -> str:
    """A ``config.toml`` for a B2BUA on ``udp:ip:port`` with the dispatcher and failover plugins.

    :param algorithm: ``setid`` and ``limit``: the single route rule, used when ``routes`` is None.
    :param routes: explicit ``[[plugins.dispatcher.routes]]`` tables instead of that rule.
    :param dispatcher: ``[plugins.dispatcher]`` settings over the test defaults (the list file,
        no probing, no state file).
    :param failover: ``[plugins.failover]`` settings; None leaves the plugin out.
    :param sip: ``[sip]`` settings over the test defaults (``listen``, a small ``max_calls``, a short
        ``shutdown_grace``, no overload shedding).
    :param plugins: ``[plugins] enabled`` as given (default: the dispatcher, and failover when
        ``failover`` is set).
    :param extra_sections: more host sections, e.g. ``{"headers": {"to_caller": ["X-*"]}}``.
    :param credentials: ``[[sip.credentials]]`` tables.
    """
    rules = list(routes) if routes is not None else [{"set": setid, "algorithm": algorithm, "limit": limit}]
    # No overload shedding by default: these tests count where every call went, and a hiccup of a
    # shared test host (a loop or a SIP message 100 ms late) must not turn calls into 503s.
    # Overload has its own tests (test_ops.py).
    sip_values = {"listen": [f"udp:{ip}:{port}"], "max_calls": 200, "shutdown_grace": 1.0, "overload_lag": 0,
                  "overload_delay": 0, **(sip or {})}
    # Probing is off unless a test turns it on: a keepalive would add OPTIONS to the gateways'
    # logs and could mark a gateway down behind the test's back. No state file: one less file.
    dispatcher_values = {"list_file": LIST_FILE, "ping_interval": 0, "state_file": "", **(dispatcher or {})}
    if plugins is None:
        plugins = ["dispatcher"] if failover is None else ["dispatcher", "failover"]
    parts = [
        toml_table("sip", sip_values),
        toml_table("log", {"level": log_level}),
        toml_table("control", {"socket": CONTROL_SOCKET}),
        toml_table("plugins", {"enabled": list(plugins)}),
    ]
    if "dispatcher" in plugins:  # a table for a plugin not loaded is warned about
        parts.append(toml_table("plugins.dispatcher", dispatcher_values))
        parts += [toml_table("[[plugins.dispatcher.routes]]", rule) for rule in rules]
    if failover is not None:
        parts.append(toml_table("plugins.failover", failover))
    parts += [toml_table(name, values) for name, values in (extra_sections or {}).items()]
    parts += [toml_table("[[sip.credentials]]", cred) for cred in credentials]
    return "\n".join(parts)


@dataclass(frozen=True)
class RunningB2bua:
    """A started B2BUA and the address callers dial (``caller.run_calls(b2b.ip, b2b.port)``)."""

    process: B2buaProcess
    ip: str
    port: int

    def dispatcher_loads(self) -> dict[str, int]:
        """``dispatcher.list``'s active-call count per destination URI (every set)."""
        listing = self.process.rpc("dispatcher.list")
        return {
            target["DEST"]["URI"]: target["DEST"]["RUNTIME"]["DLGLOAD"]
            for record in listing["RECORDS"]
            for target in record["SET"]["TARGETS"]
        }


def start_b2bua(factory: Callable[..., B2buaProcess], workdir: Path, ip: str, entries: Iterable[ListEntry],
                **config: Any) -> RunningB2bua:
    """Write the list file into ``workdir``, start the B2BUA on ``ip`` and a free port, wait for ready.

    :param factory: the ``b2bua_factory`` fixture (it stops the process and checks its exit code).
    :param config: keyword arguments of `b2bua_config`.
    """
    write_list_file(workdir, entries)
    port = free_port(ip, "udp")
    return RunningB2bua(factory(b2bua_config(ip, port, **config)), ip, port)


# -- reading results ---------------------------------------------------------------------------


def received_responses(result: CallResult, code: int) -> list[TracedMessage]:
    """The ``code`` responses the caller received (whole messages, retransmissions included)."""
    return [m for m in parse_message_log(result.files.messages.read_text())
            if m.direction == "received" and m.first_line.startswith(f"SIP/2.0 {code} ")]


def received_finals(result: CallResult, code: int) -> list[str]:
    """The status lines of the ``code`` responses the caller received, one per call."""
    lines: dict[str | None, str] = {}
    for m in received_responses(result, code):
        lines.setdefault(m.header("Call-ID"), m.first_line)
    return list(lines.values())
