"""A test plugin that records every ``dispatcher_dst_state_changed`` event as a JSON line.

Enable it next to the dispatcher in a test's config; the B2BUA subprocess imports it from the
repository (the harness puts the repo root on its ``PYTHONPATH``)::

    [plugins]
    enabled = ["dispatcher", "tests.e2e.events_plugin:Recorder"]

    [plugins.events]
    file = "events.jsonl"       # relative to the config file

Each line is one :class:`Event`; :func:`read_events` parses the file back for assertions. Lines
are written by a thread of the plugin's own, so the hook (on the loop thread) never does I/O.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from b2bua import hookimpl
from b2bua.config import opt, parse_section
from plugins.dispatcher.model import state_letters

if TYPE_CHECKING:
    from b2bua.api import Host
    from b2bua.config import Config
    from plugins.dispatcher.model import Destination

#: the config section: ``[plugins.events]``
SECTION = "events"
#: seconds shutdown waits for the writer to drain its queue
DRAIN_TIMEOUT = 5.0


@dataclass(frozen=True)
class RecorderConfig:
    """``[plugins.events]``."""

    file: str = opt("events.jsonl", "JSON-lines file the events are appended to (relative to the config)")

    def validate(self) -> None:
        if not self.file.strip():
            raise ValueError("file: must name a file")


@dataclass(frozen=True)
class Event:
    """One ``dispatcher_dst_state_changed`` call, as recorded.

    ``time`` is the B2BUA's wall clock (``time.time()``), comparable with the test's own.
    ``old``/``new`` are the flag values, ``old_state``/``new_state`` their two letters (``AP``).
    """

    time: float
    setid: int
    uri: str
    old: int | None
    new: int
    old_state: str | None
    new_state: str
    reason: str

    @classmethod
    def of(cls, dest: Destination, old: int | None, new: int, reason: str, now: float) -> Event:
        """The record of one hook call."""
        return cls(now, dest.setid, dest.uri, old, new, None if old is None else state_letters(old),
                   state_letters(new), reason)


def read_events(path: Path) -> list[Event]:
    """Every event recorded so far in ``path`` (none yet: empty); a torn last line is skipped.

    :raises ValueError: a complete line that is not an event, naming the file and line.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    events = []
    lines = text.split("\n")
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            events.append(Event(**json.loads(line)))
        except (ValueError, TypeError) as exc:
            if no == len(lines):  # no newline yet: still being written
                break
            raise ValueError(f"{path}:{no}: not an event line ({exc}): {line!r}") from None
    return events


class Recorder:
    """The plugin: queue each event on the loop thread, append it to the file on a writer thread."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None

    @hookimpl
    def b2bua_configure(self, config: Config, app: Host) -> None:
        cfg = parse_section(RecorderConfig, config.plugin_section(SECTION), config.where(f"plugins.{SECTION}"))
        self.path = config.resolve_path(cfg.file)
        self._writer = threading.Thread(target=self._write_all, args=(self.path,), name="events-recorder",
                                        daemon=True)
        self._writer.start()
        logger.info("events recorder: writing dispatcher state changes to {}", self.path)

    @hookimpl(optionalhook=True)
    def dispatcher_dst_state_changed(self, dest: Destination, old: int | None, new: int, reason: str) -> None:
        self._queue.put(json.dumps(asdict(Event.of(dest, old, new, reason, time.time()))))

    @hookimpl
    def b2bua_shutdown(self, app: Host) -> None:
        if self._writer is None:
            return
        self._queue.put(None)
        self._writer.join(DRAIN_TIMEOUT)
        if self._writer.is_alive():
            logger.warning("events recorder: writer did not drain within {}s", DRAIN_TIMEOUT)

    def _write_all(self, path: Path) -> None:
        # one flushed line per event, so a test reads each event as soon as it happened
        with path.open("a", encoding="utf-8") as out:
            while (line := self._queue.get()) is not None:
                out.write(line + "\n")
                out.flush()

