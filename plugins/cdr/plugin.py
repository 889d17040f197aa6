"""The cdr plugin: one record per call, to a JSON-lines file and optionally SQL tables.

A notification-only plugin, and a worked example of one: it decides nothing and changes no
call. It follows each call through the notification hooks (attempt prepared, started, failed,
answered; call ended) into a :class:`~plugins.cdr.record.CallTrail` kept in ``call.stash``, and
observes the decision hooks with wrappers that pass their results on unchanged, because the
caller's final answer (a ``Reject`` from ``b2bua_route_call`` or ``b2bua_next_target``) reaches
no notification. When the call ends, the record goes into the writer's queue; a thread of its
own writes it (:mod:`plugins.cdr.writer`): nothing here blocks the loop.
"""

from __future__ import annotations

import functools
import socket
import time
import uuid
from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from b2bua import hookimpl
from b2bua.api import StashKey
from b2bua.config import ConfigError, parse_section
from plugins.cdr.config import CdrConfig, check_node
from plugins.cdr.record import CallRecord, CallTrail

if TYPE_CHECKING:
    from b2bua.api import CallInfo, EndCause, Failure, Host, OutgoingRequest, Reject, RoutePlan, Target
    from b2bua.config import Config
    from b2bua.rpc import RpcRegistry
    from plugins.cdr.writer import RecordWriter

#: the call's trail while it runs
TRAIL: StashKey[CallTrail] = StashKey("cdr.trail")


class CdrPlugin:
    """``[plugins.cdr]``: call records.

    :param wall: wall-clock seconds (``time.time``); ``mono``: monotonic seconds, the clock of
        ``CallInfo.started``; ``new_id``: a record's id. Tests pass their own.
    """

    def __init__(self, *, wall: Callable[[], float] = time.time, mono: Callable[[], float] = time.monotonic,
                 new_id: Callable[[], str] = lambda: uuid.uuid4().hex) -> None:
        self.cfg = CdrConfig()
        self.file: Path | None = None
        self.db_url = ""
        self.node = ""
        self.writer: RecordWriter | None = None
        self._wall = wall
        self._mono = mono
        self._new_id = new_id

    # -- lifecycle ---------------------------------------------------------------------------

    @hookimpl
    def b2bua_configure(self, config: Config, app: Host) -> None:
        """Parse ``[plugins.cdr]``; check the database URL and its driver (nothing connects)."""
        where = config.where("plugins.cdr")
        self.cfg = parse_section(CdrConfig, config.plugin_section("cdr"), where)
        self.file = config.resolve_path(self.cfg.file) if self.cfg.file else None
        self.db_url = ""
        if self.cfg.db_url:
            from plugins.cdr.sql import check_url

            try:
                self.db_url = check_url(self.cfg.db_url, config.resolve_path)
            except ValueError as exc:
                raise ConfigError(f"{where} db_url: {exc}") from None
        self.node = self.cfg.node or socket.gethostname()
        try:  # the host name (or a worker's, which adds -wI) is checked like a node given
            check_node(self.node)
        except ValueError as exc:
            raise ConfigError(f"{where} {exc}{'' if self.cfg.node else ' (the host name): set node'}") from None

    @hookimpl
    def b2bua_startup(self, app: Host) -> None:
        """Open the file (start-up stops when it cannot be written) and start the writer."""
        from plugins.cdr.jsonl import JsonLinesFile
        from plugins.cdr.writer import DatabaseWriter, RecordWriter

        cfg = self.cfg
        file = None
        if self.file is not None:
            file = JsonLinesFile(self.file)
            try:
                file.open()
            except OSError as exc:
                raise RuntimeError(f"cdr: cannot write {self.file}: {exc.strerror or exc}") from None
        database = None
        if self.db_url:
            from plugins.cdr.sql import SqlRecords

            database = DatabaseWriter(SqlRecords(self.db_url, cfg.table, cfg.attempts_table),
                                      backlog=cfg.db_backlog, retry=cfg.db_retry)
        self.writer = RecordWriter(file, database, queue_size=cfg.queue_size)
        self.writer.start()
        where = [str(self.file)] if self.file else []
        if database is not None:
            where.append(f"{database.table.shown_url} ({cfg.table}, {cfg.attempts_table})")
        logger.info("cdr: call records to {}", " and ".join(where))

    @hookimpl
    def b2bua_reload(self, app: Host) -> None:
        """SIGHUP: open the file on its path again (after logrotate moved it)."""
        if self.writer is not None and self.file is not None:
            self.writer.reopen()
            logger.info("cdr: reopening {}", self.file)

    @hookimpl
    def b2bua_shutdown(self, app: Host) -> None:
        """Write what is queued (a few seconds at most) and stop the writer."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    @hookimpl
    def b2bua_register_rpc(self, registry: RpcRegistry) -> None:
        registry.add("cdr.stats", self.stats,
                     "Call records queued, written, dropped and failed, for the file and the database.",
                     on_loop=False)

    def stats(self) -> dict[str, Any]:
        return self.writer.stats() if self.writer is not None else {}

    # -- per call: decisions observed, not made ---------------------------------------------------

    def _trail(self, call: CallInfo) -> CallTrail:
        trail = call.stash.get(TRAIL)
        if trail is None:
            trail = CallTrail.begin(call, self._wall(), self._mono())
            call.stash[TRAIL] = trail
        return trail

    @hookimpl(wrapper=True, tryfirst=True)
    def b2bua_incoming_call(self, call: CallInfo) -> Generator[None, Reject | None, Reject | None]:
        result = yield
        self._trail(call).decided(result)
        return result

    @hookimpl(wrapper=True, tryfirst=True)
    def b2bua_route_call(self, call: CallInfo) -> Generator[None, RoutePlan | Reject | None,
                                                            RoutePlan | Reject | None]:
        result = yield
        self._trail(call).decided(result)
        return result

    @hookimpl(wrapper=True, tryfirst=True)
    def b2bua_next_target(self, call: CallInfo, plan: RoutePlan,
                          failure: Failure) -> Generator[None, Target | Reject | None, Target | Reject | None]:
        result = yield
        self._trail(call).decided(result)
        return result

    # -- per call: notifications ------------------------------------------------------------------

    @hookimpl(trylast=True)  # after every plugin that changes the INVITE
    def b2bua_prepare_target(self, call: CallInfo, target: Target, request: OutgoingRequest) -> None:
        self._trail(call).prepared_request(request)

    @hookimpl
    def b2bua_leg_started(self, call: CallInfo, target: Target) -> None:
        self._trail(call).started(target, self._wall(), self._mono())

    @hookimpl
    def b2bua_leg_failed(self, call: CallInfo, failure: Failure) -> None:
        self._trail(call).failed(failure, self._wall(), self._mono())

    @hookimpl
    def b2bua_call_answered(self, call: CallInfo, target: Target) -> None:
        self._trail(call).answered(target, self._mono())

    @hookimpl
    def b2bua_call_ended(self, call: CallInfo, cause: EndCause, answered: Target | None) -> None:
        if self.writer is not None:
            # the record is built on the writer thread (URI parsing, the id): the loop only notes
            # the end; a full queue counts the record and the writer logs the drops
            self.writer.submit(functools.partial(self.finish, call, self._trail(call), cause, self._wall(),
                                                 self._mono()))

    def finish(self, call: CallInfo, trail: CallTrail, cause: EndCause, wall: float, mono: float) -> CallRecord:
        """The record of ``call``, which ended at ``wall``/``mono`` (and a DEBUG line with its
        fields as keys). Runs on the writer thread; nothing changes the call or its trail by then."""
        record = trail.finish(call, cause, wall=wall, mono=mono, cdr_id=self._new_id(), node=self.node)
        logger.bind(call_id=call.call_id).debug(
            "cdr: {code} {cause} by {hangup_by} after {attempts} attempt(s), billsec {billsec}",
            code=record.final_code, cause=record.end_cause, hangup_by=record.hangup_by,
            attempts=len(record.attempts), billsec=record.billsec, setid=record.setid,
            destination=record.destination, cdr_id=record.cdr_id,
        )
        return record
