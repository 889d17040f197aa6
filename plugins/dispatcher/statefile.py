"""The admin state file: destinations an operator disabled survive reloads and restarts.

Kamailio forgets a ``dispatcher.set_state d ...`` on restart (and on reload): the gateway an
operator took out for maintenance is back in service after a crash. Here every entry put in
D by a control method (``dispatcher.set_state`` / ``set_duid_state`` with ``d``) is written
to a small JSON file (``[plugins.dispatcher] state_file``); it is read at start-up and applied
after every load (start-up and reload), and ``set_state`` with any other state takes the
entry out again. The file looks like::

    {
      "version": 1,
      "disabled": [
        {"setid": 1, "uri": "sip:10.0.0.1:5060"}
      ]
    }

Entries are matched like destinations are, by set id and URI (case-insensitive). The file is
written atomically (temporary file, fsync, rename) by a worker thread, never on the loop
thread. An unreadable or malformed file is logged and ignored: it must never stop start-up.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from loguru import logger

from plugins.dispatcher.atomicfile import atomic_write_text  # re-exported for the admin CLI

#: the format version written; a file with another version is refused (and ignored)
STATE_VERSION = 1
#: (set id, URI lower-cased) -> the URI as loaded, for a readable file
Disabled = Mapping[tuple[int, str], str]


class StateFileError(ValueError):
    """The state file cannot be read or is malformed; the message names the file and why."""


def parse_state(text: str, where: str) -> dict[tuple[int, str], str]:
    """The admin-disabled entries of a state file's text.

    :param where: the file name, for messages.
    :raises StateFileError: not JSON, or not the layout above (says which entry and why).
    """
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise StateFileError(f"{where}: not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise StateFileError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    version = doc.get("version")
    if version != STATE_VERSION:
        raise StateFileError(f"{where}: version {version!r} is not {STATE_VERSION}")
    items = doc.get("disabled", [])
    if not isinstance(items, list):
        raise StateFileError(f"{where}: \"disabled\" must be a list")
    out: dict[tuple[int, str], str] = {}
    for i, item in enumerate(items):
        setid = item.get("setid") if isinstance(item, dict) else None
        uri = item.get("uri") if isinstance(item, dict) else None
        if isinstance(setid, bool) or not isinstance(setid, int) or setid < 0:
            raise StateFileError(f"{where}: disabled[{i}]: \"setid\" must be an integer >= 0, got {setid!r}")
        if not isinstance(uri, str) or not uri.strip():
            raise StateFileError(f"{where}: disabled[{i}]: \"uri\" must be a non-empty string, got {uri!r}")
        out[(setid, uri.strip().lower())] = uri.strip()
    return out


def format_state(disabled: Disabled) -> str:
    """The file's text for ``disabled``: entries sorted by set id and URI, one per line."""
    entries = [{"setid": setid, "uri": disabled[(setid, key)]} for setid, key in sorted(disabled)]
    body = ",\n".join(f"    {json.dumps(e)}" for e in entries)
    listing = f"[\n{body}\n  ]" if entries else "[]"
    return f'{{\n  "version": {STATE_VERSION},\n  "disabled": {listing}\n}}\n'


def with_entries(disabled: Disabled, entries: Iterable[tuple[int, str]], disable: bool) -> dict[tuple[int, str], str]:
    """``disabled`` after an admin state change of ``entries`` (``(setid, uri)`` pairs):
    added when the new state is D, taken out otherwise."""
    out = dict(disabled)
    for setid, uri in entries:
        key = (setid, uri.lower())
        if disable:
            out[key] = uri
        else:
            out.pop(key, None)
    return out


def split_loaded(
    disabled: Disabled, is_loaded: Callable[[tuple[int, str]], bool]
) -> tuple[dict[tuple[int, str], str], dict[tuple[int, str], str]]:
    """``(kept, dropped)``: the entries whose destination is loaded, and those no longer are."""
    kept = {k: v for k, v in disabled.items() if is_loaded(k)}
    dropped = {k: v for k, v in disabled.items() if k not in kept}
    return kept, dropped


def read_state_file(path: Path) -> dict[tuple[int, str], str]:
    """The entries in ``path``; empty when the file does not exist.

    :raises StateFileError: the file exists but cannot be read or parsed.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise StateFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise StateFileError(f"{path}: not UTF-8 text") from None
    return parse_state(text, str(path))


#: hands a write to a worker thread: the host's ``run_blocking`` (or an executor's ``submit``)
Submit = Callable[[Callable[[], None]], "Future[Any]"]


class StateWriter:
    """Writes the state file on a worker thread; the loop thread only hands the content over.

    Writes coalesce: a burst of changes writes the latest content (at least once after the
    last :meth:`save`). A failed write is logged; the next change tries again.

    :param submit: runs a write off the loop (the plugin passes the host's ``run_blocking``);
        None: a worker thread of its own.
    """

    def __init__(self, path: Path, submit: Submit | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # writes never overlap, whichever worker runs them
        self._pending: str | None = None
        self._last_written: str | None = None
        self._last: Future[Any] | None = None
        self._closed = False
        self._own: ThreadPoolExecutor | None = None
        if submit is None:
            self._own = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dispatcher-state")
            submit = self._own.submit
        self._submit = submit

    def save(self, disabled: Disabled) -> None:
        """Schedule writing ``disabled`` (any thread; returns at once)."""
        text = format_state(disabled)
        with self._lock:
            self._pending = text
        if self._closed:  # shut down: write now rather than lose the change
            self._write_pending()
            return
        try:
            self._last = self._submit(self._write_pending)
        except RuntimeError:  # the worker threads are gone (shutdown)
            self._write_pending()

    def _write_pending(self) -> None:
        with self._write_lock:
            with self._lock:
                text, self._pending = self._pending, None
            if text is None or text == self._last_written:
                return
            try:
                atomic_write_text(self.path, text)
            except OSError as exc:
                logger.error("dispatcher: cannot write the admin state file {}: {}", self.path, exc.strerror or exc)
                return
            self._last_written = text
        logger.debug("dispatcher: admin state written to {}", self.path)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every scheduled write is done; False when ``timeout`` passed first."""
        last = self._last
        if last is None:
            return True
        try:
            last.result(timeout)
        except concurrent.futures.TimeoutError:
            return False
        except concurrent.futures.CancelledError:
            self._write_pending()  # dropped at shutdown: write it here
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Finish pending writes (bounded by ``timeout``); later saves are written at once."""
        if not self.flush(timeout):
            logger.warning("dispatcher: the admin state file {} is still being written", self.path)
        self._closed = True
        if self._own is not None:
            self._own.shutdown(wait=False)
