"""Kamailio's ``dispatcher.list`` text format: parse, format, load and write.

One destination per line, fields separated by blanks::

    # setid  destination                 flags  priority  attrs
    1        sip:10.0.0.1:5060            0      10        duid=gw1;weight=50
    1        gw2.example.com:5080;transport=tcp

``flags`` (decimal, or ``0x`` hex as in Kamailio 6.1), ``priority`` and ``attrs`` are
optional. ``#`` starts a comment on a line of its own or as a field of its own, and also
ends the URI, flags and priority fields (as in Kamailio's ``ds_load_list()``). A URI without
a scheme gets ``sip:``. Lines are limited to 1023 characters (Kamailio's buffer).

Unlike Kamailio, which skips a bad line with a warning (``ds_load_mode=0``), every
malformed line is an error here: :func:`parse_list` reports them all at once and the
load fails as a whole, so a typo never silently drops a gateway.
"""

from __future__ import annotations

import fcntl
import os
import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from plugins.dispatcher.atomicfile import atomic_write_text
from plugins.dispatcher.attrs import format_attrs, parse_attrs
from plugins.dispatcher.model import DestFlags, Destination
from plugins.dispatcher.resolve import LoadError, normalize_uri

MAX_LINE = 1023
#: every flag bit Kamailio defines (DestFlags); other bits are refused
KNOWN_FLAGS = int(DestFlags.INACTIVE | DestFlags.TRYING | DestFlags.DISABLED | DestFlags.PROBING
                  | DestFlags.NODNS | DestFlags.NOPING)
#: how many errors one ListFileError lists before summarising the rest
MAX_REPORTED = 20
#: seconds an edit waits for another edit of the same folder's list file to finish
LOCK_TIMEOUT = 10.0

_DIGITS = re.compile(r"[0-9]+")
_HEX = re.compile(r"0[xX][0-9a-fA-F]+")


class ListFileError(LoadError):
    """A list file could not be read or has malformed lines; each message line is
    ``path:line: reason``. ``errors`` holds them all."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        shown = errors[:MAX_REPORTED]
        if len(errors) > MAX_REPORTED:
            shown.append(f"... and {len(errors) - MAX_REPORTED} more errors")
        super().__init__("\n".join(shown))


def check_flags(value: int) -> int:
    """Return ``value`` if it only uses known flag bits; ValueError otherwise."""
    if value < 0:
        raise ValueError(f"flags {value}: must not be negative")
    unknown = value & ~KNOWN_FLAGS
    if unknown:
        raise ValueError(f"flags {value}: unknown bits {unknown:#x} (known: 1, 2, 4, 8, 16, 32)")
    return value


def _flags(token: str) -> int:
    if _DIGITS.fullmatch(token):
        value = int(token)
    elif _HEX.fullmatch(token):
        value = int(token, 16)
    else:
        raise ValueError(f"flags {token!r}: not a decimal or 0x hex number")
    return check_flags(value)


def _priority(token: str) -> int:
    # Kamailio reads digits only: no sign in the file
    if not _DIGITS.fullmatch(token) or int(token) > 2**31 - 1:
        raise ValueError(f"priority {token!r}: not a number 0..2147483647")
    return int(token)


def _setid(token: str) -> int:
    if not _DIGITS.fullmatch(token) or int(token) > 2**31 - 1:
        raise ValueError(f"set id {token!r}: not a number 0..2147483647")
    return int(token)


def _fields(line: str) -> list[str]:
    """The line's fields without comments: ``#`` ends the setid/URI/flags/priority field
    and drops the rest; attrs keep a ``#`` inside them (Kamailio reads them to the blank);
    a field starting with ``#`` is a comment."""
    fields: list[str] = []
    for token in line.split():
        if token.startswith("#"):
            break
        if len(fields) < 4 and "#" in token:
            fields.append(token.split("#", 1)[0])
            break
        fields.append(token)
    return fields


def parse_line(line: str) -> Destination | None:
    """Parse one line; None for a blank or comment line; ValueError says what is wrong.

    ``row_id`` is left 0 (see :func:`parse_list`); ``description`` is always ``""``.
    """
    text = line.rstrip("\r\n")
    if len(text) > MAX_LINE:
        raise ValueError(f"line is {len(text)} characters long; the limit is {MAX_LINE}")
    fields = _fields(text)
    if not fields:
        return None
    if len(fields) == 1:
        raise ValueError("missing destination URI after the set id")
    if len(fields) > 5:
        raise ValueError(
            f"too many fields ({len(fields)}): expected setid uri [flags [priority [attrs]]];"
            " attrs must not contain blanks"
        )
    setid = _setid(fields[0])
    uri = normalize_uri(fields[1])
    flags = _flags(fields[2]) if len(fields) > 2 else 0
    priority = _priority(fields[3]) if len(fields) > 3 else 0
    try:
        attrs = parse_attrs(fields[4]) if len(fields) > 4 else parse_attrs("")
    except ValueError as exc:
        raise ValueError(f"attrs: {exc}") from None
    return Destination(setid=setid, uri=uri, flags=flags, priority=priority, attrs=attrs)


def format_line(dest: Destination) -> str:
    """The list-file line for ``dest``: ``setid uri flags priority [attrs]``.

    ``parse_line(format_line(d))`` equals ``d`` apart from ``row_id``, ``address`` and
    ``description`` (the file has no description column).
    """
    attrs = format_attrs(dest.attrs)
    if any(c.isspace() or c == "#" for c in dest.uri):
        raise ValueError(f"{dest.uri}: a list-file URI cannot contain blanks or '#'")
    if any(c.isspace() for c in attrs):
        raise ValueError(f"{attrs}: list-file attrs cannot contain blanks")
    line = f"{dest.setid} {dest.uri} {dest.flags} {dest.priority}"
    return f"{line} {attrs}" if attrs else line


def parse_list(text: str, path: str) -> list[Destination]:
    """Parse a whole list file in file order, ``row_id`` = line number.

    Raises :class:`ListFileError` listing every malformed line as ``path:line: reason``.
    """
    dests: list[Destination] = []
    errors: list[str] = []
    # split on LF only, as fgets() does: str.splitlines() would also split on \f, \x1c, ...
    for number, line in enumerate(text.split("\n"), start=1):
        try:
            dest = parse_line(line)
        except ValueError as exc:
            errors.append(f"{path}:{number}: {exc}")
            continue
        if dest is not None:
            dests.append(Destination(dest.setid, dest.uri, dest.flags, dest.priority, dest.attrs,
                                     row_id=number))
    if errors:
        raise ListFileError(errors)
    return dests


def load_list_file(path: Path) -> list[Destination]:
    """Read and parse a list file (UTF-8); any problem raises :class:`ListFileError`."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ListFileError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ListFileError([f"{path}:{line}: not valid UTF-8"]) from None
    return parse_list(text, str(path))


def write_list_file(path: Path, destinations: Iterable[Destination], header: str = "") -> None:
    """Replace ``path`` atomically (temp file in the same directory, fsync, rename) with one
    line per destination, in the given order (the order decides Kamailio's array order).

    Comments of the old file are not kept; ``header`` (lines prefixed with ``# ``) is
    written first. The old file's permissions are kept. Raises ValueError for a
    destination that cannot be written, OSError for I/O problems.
    """
    lines = [f"# {h}".rstrip() for h in header.splitlines()]
    lines += [format_line(d) for d in destinations]
    text = "".join(line + "\n" for line in lines)
    atomic_write_text(path, text)


@contextmanager
def edit_lock(path: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the folder of ``path`` while a read-modify-write runs,
    so two concurrent ``b2bua dispatcher add`` (or ``rm``) never lose one another's line.

    The folder, not the file: an edit replaces the file by a rename, so a lock on the file
    would be on the old inode; and it leaves no lock file behind. Readers (the B2BUA's
    reload) need no lock: they see the old or the new file, whole.

    :raises TimeoutError: another edit held the lock for ``timeout`` seconds.
    :raises OSError: the folder cannot be opened.
    """
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{path}: another edit has held the lock on {path.parent} for"
                                       f" {timeout:g}s") from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # releases the lock
