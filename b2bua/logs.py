"""Logging set-up: loguru only, one format, the Call-ID on every line about a call.

Text lines: time, level, Call-ID (``-`` when the line is about no call), message. JSON lines
(``[log] json = true``): one object per line whose keys are ``time`` (ISO 8601, UTC), ``level``,
``message``, then every field bound to the logger or named in the call as a key of its own
(``call_id``, and where the line knows them ``setid``, ``destination``, ``code`` ...), then
``logger``, ``function``, ``line`` and, for an error with a traceback, ``exception``. So a log
shipper filters one call with ``call_id == "..."`` instead of parsing messages. A line carries
its fields when it is written with them::

    log = logger.bind(call_id=call.call_id)
    log.info("attempt {attempt} to {destination} failed: {code}", attempt=2, destination=uri, code=503)

The level changes at run time (:func:`set_log_level`, the ``core.log_level`` control method), and
so does pjsip's own (:func:`set_pjsip_log_level`).
"""

from __future__ import annotations

import ctypes
import datetime
import json
import os
import sys
import traceback
from typing import Any, TextIO

from loguru import logger

from b2bua.config import LOG_LEVELS, LogConfig

FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{extra[call_id]}</cyan> {message}"
)
#: the Call-ID of a line about no call
NO_CALL = "-"
#: keys of a JSON line that bound fields cannot replace
_CORE_KEYS = frozenset({"time", "level", "message", "logger", "function", "line", "exception"})
#: where the patcher leaves a record's JSON text for the sinks
_JSON_KEY = "_json"
#: pjsip's levels: 0 (off) to 5 (everything; 4 logs every SIP message)
PJSIP_LEVELS = range(0, 6)


class _Levels:
    """Whether the sinks write DEBUG lines now, as one attribute read (:data:`writes`).

    A DEBUG call loguru filters out still costs ~4,700 instructions (two Python calls, its level
    look-up); a call's hot path makes about 20 of them. Guarded by ``if writes.debug:`` it costs
    one attribute read. True until :func:`setup_logging` (loguru's own default sink writes DEBUG),
    then whatever the sinks' level says, also after :func:`set_log_level`.
    """

    __slots__ = ("debug",)

    def __init__(self) -> None:
        self.debug = True


#: read by hot paths before a DEBUG call: ``if writes.debug: log.debug(...)``
writes = _Levels()


class LogFileError(ValueError):
    """The ``[log] file`` cannot be written; the message names the setting, the path and why."""


class LogSinks:
    """The process's log sinks (stderr, and ``[log] file``) at one level, changed by :meth:`set_level`."""

    def __init__(self, config: LogConfig, level: str, file_path: str | None, stream: TextIO) -> None:
        self.config = config
        self.level = level
        self.file_path = file_path
        self.stream = stream
        self._ids: list[int] = []
        self._add()

    def _add(self) -> None:
        writes.debug = logger.level(self.level).no <= logger.level("DEBUG").no
        options: dict[str, Any] = {
            "level": self.level, "backtrace": False, "diagnose": False,
            # a format function gets no traceback appended: a JSON line stays one line
            "format": _json_format if self.config.json else FORMAT,
        }
        self._ids.append(logger.add(self.stream, colorize=None, **options))
        if self.file_path:
            # loguru would create missing folders: a typo in the path must not log somewhere unseen
            folder = os.path.dirname(self.file_path) or "."
            if not os.path.isdir(folder):
                raise LogFileError(f"[log] file: folder {folder} does not exist")
            try:
                self._ids.append(logger.add(self.file_path, rotation="50 MB", retention=5, enqueue=True, **options))
            except OSError as exc:
                raise LogFileError(f"[log] file: cannot open {self.file_path}: {exc.strerror or exc}") from None

    def set_level(self, level: str) -> None:
        """Log at ``level`` from now on (loguru fixes a sink's level when it is added: re-add them)."""
        for sink_id in self._ids:
            logger.remove(sink_id)
        self._ids.clear()
        self.level = level
        self._add()


#: the process's one set-up, kept here because loguru's sinks are process-wide too
_sinks: LogSinks | None = None


def setup_logging(config: LogConfig, verbosity: int = 0, *, base_dir: str | None = None,
                  stream: TextIO | None = None) -> LogSinks:
    """Send logs to ``stream`` (stderr) and the ``[log] file``, if set; ``-v`` lowers the level one step each.

    Replaces every sink set up before (loguru's default one included).
    """
    global _sinks
    level = sink_level(config.level)
    if verbosity:
        order = [lv for lv in LOG_LEVELS if lv != "SUCCESS"]
        level = order[max(0, order.index(level) - verbosity)]
    logger.remove()
    logger.configure(extra={"call_id": NO_CALL}, patcher=_add_json if config.json else None)
    path = None
    if config.file:
        path = config.file if base_dir is None or config.file.startswith("/") else f"{base_dir}/{config.file}"
    _sinks = LogSinks(config, level, path, sys.stderr if stream is None else stream)
    _route_stdlib_logging()
    return _sinks


def sink_level(name: str) -> str:
    """A level name as the sinks take it: upper case, SUCCESS as INFO.

    :raises ValueError: not one of :data:`b2bua.config.LOG_LEVELS`.
    """
    level = name.upper() if isinstance(name, str) else ""
    if level not in LOG_LEVELS:
        raise ValueError(f"{name!r} is not a log level: use one of {', '.join(LOG_LEVELS)}")
    return "INFO" if level == "SUCCESS" else level


def log_level() -> str | None:
    """The level the sinks log at now; None before :func:`setup_logging`."""
    return _sinks.level if _sinks is not None else None


def set_log_level(name: str) -> str:
    """Log at level ``name`` from now on (any thread); returns the level set.

    :raises ValueError: an unknown level name.
    :raises RuntimeError: logging was never set up in this process.
    """
    level = sink_level(name)
    if _sinks is None:
        raise RuntimeError("logging is not set up in this process")
    if level == _sinks.level:
        return level
    # the line is logged at INFO, at whichever of the old and new level shows it
    quieter = logger.level(level).no > logger.level("INFO").no
    if quieter:
        logger.info("log level now {} (was {})", level, _sinks.level)
    old = _sinks.level
    _sinks.set_level(level)
    if not quieter:
        logger.info("log level now {} (was {})", level, old)
    return level


# -- JSON lines ---------------------------------------------------------------------------------


def json_line(record: Any) -> str:
    """One loguru record as a JSON object on one line (ASCII: any byte the wire sent stays valid JSON)."""
    out: dict[str, Any] = {
        "time": record["time"].astimezone(datetime.timezone.utc).isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "level": record["level"].name,
        "message": record["message"],
    }
    for key, value in record["extra"].items():
        if key in _CORE_KEYS or key == _JSON_KEY or (key == "call_id" and value == NO_CALL):
            continue
        out[key] = value if value is None or isinstance(value, (str, int, float, bool)) else str(value)
    out["logger"] = record["name"]
    out["function"] = record["function"]
    out["line"] = record["line"]
    exc = record["exception"]
    if exc is not None and exc.type is not None:
        out["exception"] = "".join(traceback.format_exception(exc.type, exc.value, exc.traceback)).rstrip()
    return json.dumps(out, default=str)


def _add_json(record: Any) -> None:
    # a patcher: runs once per record that passes the lowest sink level, whatever the sink count
    record["extra"][_JSON_KEY] = json_line(record)


def _json_format(record: Any) -> str:
    return "{extra[" + _JSON_KEY + "]}\n"


def _route_stdlib_logging() -> None:
    """SQLAlchemy and friends log through the stdlib: forward it into loguru."""
    import logging

    class Intercept(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                level: str | int = logger.level(record.levelname).name
            except ValueError:
                level = record.levelno
            logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())

    logging.basicConfig(handlers=[Intercept()], level=logging.WARNING, force=True)


# -- pjsip's own level ------------------------------------------------------------------------------
#
# The endpoint routes pjsip's log into loguru (a pjsua2 LogWriter) at [log] pjsip_level, through
# pjsua's log function, which drops every line above the level pjsua was started with. Raising
# it through pjsua_reconfigure_logging would hold the loop for 100 ms (pjsip sleeps while it
# swaps its message-logging module: one second of overload shedding). So pjlib's log function
# is pointed at pjsua2's own callback, which hands every line to the LogWriter (pjsua2's
# libDestroy expects that and unsets it), and pjlib's level alone decides: two stores, no sleep.
# Done with ctypes on the native module the endpoint loaded; nothing here imports pjsua2.

#: pjsua2's ``pj::Endpoint::logFunc``: hands a log line to the LogWriter
_PJSUA2_LOG_FUNC = "_ZN2pj8Endpoint7logFuncEiPKci"


def _pjsip_native() -> ctypes.CDLL | None:
    """The pjsua2 native module when this process runs the SIP stack, else None."""
    module = sys.modules.get("_pjsua2")
    path = getattr(module, "__file__", None)
    return ctypes.CDLL(path) if path else None


def pjsip_log_level() -> int | None:
    """pjsip's log level now; None when this process runs no SIP stack."""
    lib = _pjsip_native()
    return int(lib.pj_log_get_level()) if lib is not None else None


def check_pjsip_level(level: Any) -> int:
    """``level`` when it is a pjsip log level (an integer 0-5).

    :raises ValueError: it is not.
    """
    if isinstance(level, bool) or not isinstance(level, int) or level not in PJSIP_LEVELS:
        raise ValueError(f"{level!r} is not a pjsip log level: use 0-5 (4 logs every SIP message)")
    return level


def set_pjsip_log_level(level: int) -> int:
    """Set pjsip's log level (0-5) from now on, without a pause; call it on the loop thread.

    :raises ValueError: not an integer 0-5.
    :raises RuntimeError: this process runs no SIP stack, or its pjsua2 build lacks the callback.
    """
    check_pjsip_level(level)
    lib = _pjsip_native()
    if lib is None:
        raise RuntimeError("no SIP stack runs in this process")
    try:
        log_func = ctypes.cast(getattr(lib, _PJSUA2_LOG_FUNC), ctypes.c_void_p)
    except AttributeError:
        raise RuntimeError(f"this pjsua2 build has no {_PJSUA2_LOG_FUNC}") from None
    lib.pj_log_set_log_func.argtypes = (ctypes.c_void_p,)
    lib.pj_log_set_log_func(log_func)
    lib.pj_log_set_level(level)
    logger.info("pjsip log level now {}", level)
    return level
