"""The JSON-lines file of call records: one object per line, appended, reopened for log rotation.

Used by the writer thread only. logrotate works either way: with ``postrotate`` sending SIGHUP
(``b2bua_reload`` reopens the file) or without it, since each write first checks that the path
still names the open file (one ``stat``, as Python's ``WatchedFileHandler`` does) and reopens it
when the file was moved or deleted; ``copytruncate`` needs neither.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from plugins.cdr.record import CallRecord


def json_lines(records: Sequence[CallRecord]) -> str:
    """The records as JSON lines (UTF-8 text; each ends with a newline)."""
    return "".join(json.dumps(r.to_json(), ensure_ascii=False, separators=(",", ":")) + "\n" for r in records)


class JsonLinesFile:
    """Appends records to ``path``; :meth:`reopen` (or a moved file) starts on the path again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: TextIO | None = None
        self._identity: tuple[int, int] | None = None
        self._reopen = False

    def open(self) -> None:
        """Open (or create) the file for appending.

        :raises OSError: the folder is missing, or writing there is not allowed.
        """
        self.close()
        # a character the wire sent that is not Unicode text becomes a JSON escape (\\udcff)
        handle = open(self.path, "a", encoding="utf-8", errors="backslashreplace")  # noqa: SIM115 - kept open
        self._file = handle
        st = os.fstat(handle.fileno())
        self._identity = (st.st_dev, st.st_ino)
        self._reopen = False

    def reopen(self) -> None:
        """Start on the path again before the next write (any thread: it only sets a flag)."""
        self._reopen = True

    def write(self, records: Sequence[CallRecord]) -> None:
        """Append ``records`` and flush.

        :raises OSError: the file cannot be opened or written (disk full, permissions).
        """
        if self._file is None or self._reopen or self._moved():
            self.open()
        assert self._file is not None
        self._file.write(json_lines(records))
        self._file.flush()

    def _moved(self) -> bool:
        """Whether the path names another file than the open one, or none."""
        try:
            st = os.stat(self.path)
        except OSError:
            return True
        return (st.st_dev, st.st_ino) != self._identity

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass  # a failed flush of a file we are leaving: the writer already reported it
            self._file = None
