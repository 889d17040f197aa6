"""``b2bua dispatcher add|rm|show|list|reload|set-state``: kamctl/kamcli-style administration.

Two kinds of verbs, as with kamctl:

* ``add``, ``rm`` and ``show`` work on the configured *source*: the ``[plugins.dispatcher]``
  table (``db_url``; written with bound parameters) or the Kamailio list file (``list_file``;
  edited line by line, so comments, blank lines and the order of the other lines stay as
  they are, and replaced atomically). A running B2BUA sees the change after a reload:
  ``--reload`` asks for one at once.
* ``list``, ``reload`` and ``set-state`` talk to the running B2BUA over its control API
  (``dispatcher.list``, ``dispatcher.reload``, ``dispatcher.set_state``).

What ``add`` writes, the loaders read back unchanged, or ``add`` refuses it: the URI is a
destination the build can reach (:func:`~plugins.dispatcher.resolve.parse_uri`), attrs and the
description are bounded and printable, and a list-file line fits Kamailio's 1023 characters.
List-file edits hold a lock (:func:`~plugins.dispatcher.listfile.edit_lock`), so concurrent
``add``/``rm`` never lose a line. ``show`` only reads (a missing SQLite file is not created)
and escapes what it prints, so a line break or terminal escape in a row cannot forge output.

Every verb takes ``-c/--config`` (default ``./config.toml``): relative ``list_file`` and
SQLite paths are relative to the config's folder, as for the B2BUA itself. Exit codes: 0 done,
1 the command failed (bad URI or attrs, unknown id, database error, the B2BUA answered with
an error), 2 usage, configuration or connection problems (the B2BUA is not running).
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from loguru import logger

from b2bua.config import CONFIG_ENV, Config, ConfigError, load_config
from b2bua.control import ControlClient, ControlUnavailable, RpcCallError
from b2bua.nameservers import Nameserver, effective_nameservers
from plugins.dispatcher.atomicfile import atomic_write_text
from plugins.dispatcher.attrs import parse_attrs
from plugins.dispatcher.checks import weight_warnings
from plugins.dispatcher.config import DispatcherConfig, parse_dispatcher_config, resolve_sqlite_url
from plugins.dispatcher.dnslookup import make_lookup
from plugins.dispatcher.listfile import MAX_LINE, check_flags, edit_lock, format_line, parse_line, parse_list
from plugins.dispatcher.model import MAX_DESCRIPTION_LENGTH, DestFlags, Destination, build_snapshot
from plugins.dispatcher.outbound import sending_problem
from plugins.dispatcher.resolve import (
    LoadError,
    ResolveError,
    Resolver,
    normalize_uri,
    parse_uri,
    resolve_destinations,
)
from plugins.dispatcher.safetext import check_printable, escape
from plugins.dispatcher.sqlstore import INT_MAX, SqlStore, TableNames, row_to_destination

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
DEFAULT_CONFIG = "config.toml"
#: seconds to wait for ``dispatcher.reload`` (a large table, a slow DNS); other methods: 10
RELOAD_TIMEOUT = 60.0
CONTROL_TIMEOUT = 10.0
#: seconds ``add`` waits for DNS when it checks a host name
DNS_TIMEOUT = 5.0
#: the columns of ``show``, kamctl's ``dispatcher show``
ROW_FIELDS = ("id", "setid", "destination", "flags", "priority", "attrs", "description")

_TOKEN = re.compile(r"\S+")
_INT = re.compile(r"[+-]?[0-9]+")
_HEX = re.compile(r"0[xX][0-9a-fA-F]+")


class AdminError(Exception):
    """A command that cannot be done; ``code`` is the exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


# -- the configured source ---------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where the destinations live, as the B2BUA with this config reads them."""

    config: Config
    dispatcher: DispatcherConfig
    list_file: Path | None
    db_url: str

    @property
    def names(self) -> TableNames:
        return TableNames.from_config(self.dispatcher)

    def store(self, *, read_only: bool = False) -> SqlStore:
        """A store of the configured table (close it after use). For writing, an SQLite table
        is created when missing, as the B2BUA does on first use; ``read_only`` creates nothing."""
        store = SqlStore(self.db_url, self.names, read_only=read_only)
        if store.is_sqlite and not read_only:
            store.ensure_schema()
        return store

    @property
    def sqlite_missing(self) -> bool:
        """The source is an SQLite file that does not exist yet (``add`` creates it)."""
        prefix = "sqlite:///"
        return (self.list_file is None and self.db_url.startswith(prefix)
                and self.db_url != prefix + ":memory:" and not Path(self.db_url[len(prefix):]).exists())


def open_source(config_path: str) -> Source:
    """Read ``config_path`` and work out the source of destinations.

    :raises AdminError: (exit 2) the config cannot be read or is invalid.
    """
    try:
        config = load_config(config_path)
        cfg = parse_dispatcher_config(config.plugin_section("dispatcher"), config.path)
    except ConfigError as exc:
        raise AdminError(str(exc), EXIT_USAGE) from None
    list_file = config.resolve_path(cfg.list_file) if cfg.list_file else None
    return Source(config, cfg, list_file, resolve_sqlite_url(cfg.db_url, config.base_dir))


# -- list-file edits (pure: text in, text out) -------------------------------------------------


def split_comment(line: str) -> tuple[str, str]:
    """``(fields, comment)`` of a list-file line, as Kamailio reads it: a token starting with
    ``#`` starts the comment, and so does a ``#`` inside one of the first four fields (attrs,
    the fifth, may hold a ``#``)."""
    for number, m in enumerate(_TOKEN.finditer(line)):
        token = m.group()
        if token.startswith("#") or (number < 4 and "#" in token):
            at = m.start() + token.index("#")
            return line[:at], line[at + 1:].strip()
    return line, ""


def list_rows(text: str, path: str) -> list[dict[str, Any]]:
    """The destinations of a list file as ``show`` rows: ``id`` is the line number and the
    description is the line's trailing comment. Ordered by set id, then line.

    :raises LoadError: a malformed line (``path:line: reason``).
    """
    dests = parse_list(text, path)
    lines = text.split("\n")
    rows = [
        {"id": d.row_id, "setid": d.setid, "destination": d.uri, "flags": d.flags, "priority": d.priority,
         "attrs": d.attrs.body, "description": split_comment(lines[d.row_id - 1])[1]}
        for d in dests
    ]
    return sorted(rows, key=lambda r: (r["setid"], r["id"]))


def list_add(text: str, dest: Destination, description: str, path: str) -> tuple[str, int]:
    """``text`` with a line for ``dest`` appended (``description``, stripped, as its trailing
    comment); returns the new text and the new line's number.

    :raises ValueError: the entry cannot be written in a list file (blanks in attrs, a
        negative priority, a description that is not one printable line, a line longer than
        :data:`~plugins.dispatcher.listfile.MAX_LINE`), or the set already has the URI.
    :raises LoadError: ``text`` itself has malformed lines.
    """
    existing = parse_list(text, path)
    for d in existing:
        if d.key == dest.key:
            raise ValueError(f"set {dest.setid} already has {d.uri} ({path}:{d.row_id})")
    description = check_description(description)
    line = format_line(dest)
    again = parse_line(line)  # the file's own rules (e.g. priority: digits only)
    assert again is not None
    if description:
        line = f"{line} # {description}"
    if len(line) > MAX_LINE:
        raise ValueError(f"the line would be {len(line)} characters long; a list-file line holds {MAX_LINE}"
                         " (Kamailio's limit): shorten the attrs or the description")
    body = text if not text or text.endswith("\n") else text + "\n"
    return body + line + "\n", body.count("\n") + 1


def check_description(text: str) -> str:
    """A description as ``add`` stores it: without surrounding blanks, at most
    :data:`~plugins.dispatcher.model.MAX_DESCRIPTION_LENGTH` printable characters (one line,
    no control characters); ValueError otherwise."""
    if "\n" in text or "\r" in text:
        raise ValueError("description: must be one line")
    return check_printable(text.strip(), MAX_DESCRIPTION_LENGTH, "description")


def list_remove_line(text: str, number: int, path: str) -> tuple[str, Destination]:
    """``text`` without line ``number`` (``show``'s id); returns it and the removed entry.

    :raises ValueError: no such line, or it is blank or a comment.
    :raises LoadError: ``text`` has malformed lines.
    """
    parse_list(text, path)
    lines = text.split("\n")
    dest = parse_line(lines[number - 1]) if 1 <= number <= len(lines) else None
    if dest is None:
        raise ValueError(f"{path}: line {number} is not a destination (see 'b2bua dispatcher show')")
    del lines[number - 1]
    return "\n".join(lines), dest


def list_remove_uri(text: str, setid: int, uri: str, path: str) -> tuple[str, list[int]]:
    """``text`` without the lines of set ``setid`` whose URI is ``uri`` (case-insensitive; a URI
    without scheme is its ``sip:`` form); returns it and the removed line numbers.

    :raises ValueError: ``uri`` is not a SIP URI.
    :raises LoadError: ``text`` has malformed lines.
    """
    key = (setid, normalize_uri(uri).lower())
    gone = {d.row_id for d in parse_list(text, path) if d.key == key}
    lines = text.split("\n")
    kept = [line for number, line in enumerate(lines, start=1) if number not in gone]
    return "\n".join(kept), sorted(gone)


# -- argument parsing --------------------------------------------------------------------------


def parse_int(name: str, text: str, low: int = -INT_MAX - 1, high: int = INT_MAX) -> int:
    """A command-line integer; AdminError saying which argument and why."""
    if not _INT.fullmatch(text.strip()):
        raise AdminError(f"{name} {text!r}: not a number")
    value = int(text)
    if not low <= value <= high:
        raise AdminError(f"{name} {value}: must be {low}..{high}")
    return value


def parse_flags(text: str) -> int:
    """Flags as the list file writes them: decimal or ``0x`` hex, known bits only."""
    value = int(text, 16) if _HEX.fullmatch(text.strip()) else parse_int("flags", text, 0)
    try:
        return check_flags(value)
    except ValueError as exc:
        raise AdminError(str(exc)) from None


def make_destination(setid: str, uri: str, flags: str | None, priority: str | None, attrs: str | None) -> Destination:
    """Check ``add``'s arguments as the loaders would; AdminError (exit 1) naming what is wrong."""
    try:
        normalized = normalize_uri(uri)
    except ValueError as exc:
        raise AdminError(f"bad URI: {exc}") from None
    try:
        parsed = parse_attrs(attrs or "")
    except ValueError as exc:
        raise AdminError(f"bad attrs: {exc}") from None
    return Destination(
        setid=parse_int("set id", setid, 0),
        uri=normalized,
        flags=parse_flags(flags) if flags is not None else 0,
        priority=parse_int("priority", priority) if priority is not None else 0,
        attrs=parsed,
    )


# -- output ------------------------------------------------------------------------------------


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns, two blanks apart, headers first (like ``kamctl dispatcher show``).

    Every cell is escaped (:func:`~plugins.dispatcher.safetext.escape`): a row read from a
    table or a file is one line, whatever it holds.
    """
    cells = [[str(h) for h in headers], *[["" if c is None else escape(str(c)) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells)


def live_rows(listing: dict[str, Any]) -> list[list[Any]]:
    """``dispatcher.list``'s answer as ``list`` table rows: set, URI, state, priority,
    latency EST and AVG (ms, ``-`` without latency statistics), active calls."""
    rows = []
    for record in listing.get("RECORDS", []):
        setid = record["SET"]["ID"]
        for target in record["SET"]["TARGETS"]:
            dest = target["DEST"]
            latency = dest.get("LATENCY")
            est = f"{latency['EST']:.1f}" if latency else "-"
            avg = f"{latency['AVG']:.1f}" if latency else "-"
            load = dest.get("RUNTIME", {}).get("DLGLOAD", "-")
            rows.append([setid, dest["URI"], dest["FLAGS"], dest["PRIORITY"], est, avg, load])
    return rows


LIVE_HEADERS = ("SET", "URI", "STATE", "PRIO", "EST_MS", "AVG_MS", "LOAD")
ROW_HEADERS = ("ID", "SETID", "DESTINATION", "FLAGS", "PRIORITY", "ATTRS", "DESCRIPTION")


# -- control API -------------------------------------------------------------------------------


def call_b2bua(config_path: str, method: str, params: list[Any] | None = None,
               timeout: float = CONTROL_TIMEOUT) -> Any:
    """Call a control method of the B2BUA that runs with ``config_path``.

    :raises AdminError: exit 1 when it answered with an error, 2 when it cannot be reached.
    """
    try:
        client = ControlClient.from_config(load_config(config_path))
    except (ConfigError, ValueError) as exc:
        raise AdminError(str(exc), EXIT_USAGE) from None
    try:
        return client.call(method, params, timeout=timeout)
    except RpcCallError as exc:
        raise AdminError(f"{method}: {exc.code} {exc.message}") from None
    except ControlUnavailable as exc:
        raise AdminError(str(exc), EXIT_USAGE) from None


def call_every_b2bua(config_path: str, method: str, params: list[Any] | None = None,
                     timeout: float = CONTROL_TIMEOUT) -> list[Any]:
    """``--all``: call ``method`` on every live node of the cluster (:mod:`plugins.dispatcher.clusterview`).

    :raises AdminError: exit 2 without ``[cluster]``, when Redis does not answer or lists no node.
    """
    import os

    from b2bua.control_cli import TOKEN_ENV
    from b2bua.redislink import RedisMissing
    from plugins.dispatcher.clusterview import call_every_node

    try:
        config = load_config(config_path)
        token = os.environ.get(TOKEN_ENV, "") or config.control.token
        return call_every_node(config, method, params, token, timeout)
    except (ConfigError, RedisMissing) as exc:
        raise AdminError(str(exc), EXIT_USAGE) from None


def _print_every_node(answers: list[Any], out: TextIO, err: TextIO) -> int:
    """Each node's answer (a line, or an error line); the exit code: 1 if any node failed."""
    code = EXIT_OK
    for answer in answers:
        if answer.error is not None:
            print(f"error: node {answer.node}: {escape(answer.error, backslash=False)}", file=err)
            code = EXIT_FAILED
        else:
            print(f"{answer.node}: {answer.result}", file=out)
    return code


def _reload_after(args: argparse.Namespace, out: TextIO, what: str) -> None:
    if not args.reload:
        print(f"Not live yet: 'b2bua dispatcher reload' {what}.", file=out)
        return
    try:
        print(call_b2bua(args.config, "dispatcher.reload", timeout=RELOAD_TIMEOUT), file=out)
    except AdminError as exc:
        raise AdminError(f"saved, but the reload failed: {exc}", exc.code) from None


# -- commands ----------------------------------------------------------------------------------


def cmd_add(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``dispatcher add <setid> <uri> [flags] [priority] [attrs] [description] [--reload]``."""
    source = open_source(args.config)
    dest = make_destination(args.setid, args.uri, args.flags, args.priority, args.attrs)
    try:
        description = check_description(args.description or "")
    except ValueError as exc:
        raise AdminError(str(exc)) from None
    problem = sending_problem(dest, source.config.sip, source.dispatcher.send_defaults)
    if problem:  # the next load would refuse it: not written
        raise AdminError(f"set {dest.setid} {escape(dest.uri)}: {problem}")
    why = unresolved(dest, nameservers=effective_nameservers(source.config.sip.nameservers))
    if why is not None:
        if args.require_dns:
            raise AdminError(why)
        then = ("the b2bua skips it while it does not resolve" if source.dispatcher.dns_skip_unresolvable
                else "the next reload fails while it does not resolve")
        print(f"warning: {why}; added all the same: {then}", file=err)
    if source.list_file is not None:
        path = source.list_file
        with _locked(path):
            text = _read_list(path, missing_ok=True)
            try:
                new_text, line = list_add(text, dest, description, str(path))
            except ValueError as exc:
                raise AdminError(f"cannot add to {path}: {exc}") from None
            _write_list(path, new_text)
        same_set = [d for d in parse_list(new_text, str(path)) if d.setid == dest.setid]
        print(f"Added line {line} to {path}: set {dest.setid} {dest.uri}", file=out)
    else:
        with source.store() as store:
            rows = store.rows()
            for row in rows:
                if row["setid"] == dest.setid and _same_uri(str(row["destination"]), dest.uri):
                    raise AdminError(f"set {dest.setid} already has {escape(str(row['destination']))}"
                                     f" (id {row['id']})")
            try:
                row_id = store.add(dest.setid, dest.uri, dest.flags, dest.priority, dest.attrs.body, description)
            except ValueError as exc:
                raise AdminError(f"cannot add to {store.url} table {store.names.table!r}: {exc}") from None
        same_set = [*_loadable(r for r in rows if r["setid"] == dest.setid), dest]
        print(f"Added id {row_id} to {store.url} table {store.names.table!r}: set {dest.setid} {dest.uri}",
              file=out)
    for message in weight_warnings(build_snapshot(same_set, ""), source.dispatcher.effective_routes):
        print(f"warning: {message}", file=err)
    _reload_after(args, out, "puts it in service")
    return EXIT_OK


def unresolved(dest: Destination, timeout: float = DNS_TIMEOUT, resolver: Resolver | None = None,
               nameservers: Sequence[Nameserver] = ()) -> str | None:
    """Why ``dest``'s host does not resolve now, or None (it does, it is an address, or the
    entry has flag 16, NODNS). The lookup runs on a thread: a slow DNS costs ``timeout``.

    :param resolver: ``getaddrinfo``-compatible (tests); default: as the B2BUA looks names up,
        through ``nameservers`` (SRV first), or :func:`socket.getaddrinfo` without any.
    """
    if dest.flags & DestFlags.NODNS or parse_uri(dest.uri).is_ip:
        return None
    found: list[str | None] = []
    lookup_with = resolver or socket.getaddrinfo
    host_lookup = None if resolver is not None or not nameservers else make_lookup(nameservers)

    def lookup() -> None:
        try:
            resolve_destinations([dest], skip_unresolvable=False, resolver=lookup_with,
                                 location=lambda d: "dispatcher add", host_lookup=host_lookup)
            found.append(None)
        except ResolveError as exc:
            found.append(str(exc))

    thread = threading.Thread(target=lookup, name="dispatcher-add-dns", daemon=True)
    thread.start()
    thread.join(timeout)
    if not found:
        return f"dispatcher add: set {dest.setid} {dest.uri}: no answer from DNS within {timeout:g}s"
    return found[0]


def _loadable(rows: Iterable[dict[str, Any]]) -> list[Destination]:
    """The rows that load (a bad one is the loader's to report), as Destinations."""
    out = []
    for row in rows:
        try:
            out.append(row_to_destination(row))
        except ValueError:
            continue
    return out


def cmd_rm(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``dispatcher rm <id>`` or ``dispatcher rm <setid> <uri>`` [--reload]."""
    if len(args.what) not in (1, 2):
        raise AdminError("rm takes an id, or a set id and a URI", EXIT_USAGE)
    source = open_source(args.config)
    by_id = len(args.what) == 1
    number = parse_int("id", args.what[0], 0) if by_id else 0
    setid = parse_int("set id", args.what[0], 0) if not by_id else 0
    uri = args.what[1] if not by_id else ""
    if source.list_file is not None:
        path = source.list_file
        with _locked(path):
            text = _read_list(path)
            try:
                if by_id:
                    new_text, dest = list_remove_line(text, number, str(path))
                    removed = f"line {number}: set {dest.setid} {dest.uri}"
                else:
                    new_text, lines = list_remove_uri(text, setid, uri, str(path))
                    if not lines:
                        raise AdminError(f"{path}: set {setid} has no destination {escape(uri)}")
                    removed = f"line{'s' if len(lines) > 1 else ''} {', '.join(map(str, lines))}"
            except ValueError as exc:
                raise AdminError(str(exc)) from None
            _write_list(path, new_text)
        print(f"Removed {removed} from {path}", file=out)
    else:
        with source.store() as store:
            where = f"{store.url} table {store.names.table!r}"
            if by_id:
                if store.remove_id(number) == 0:
                    raise AdminError(f"{where}: no row with id {number}")
                removed = f"id {number}"
            else:
                try:
                    count = store.remove(setid, uri)
                except ValueError as exc:
                    raise AdminError(f"bad URI: {exc}") from None
                if count == 0:
                    raise AdminError(f"{where}: set {setid} has no destination {escape(uri)}")
                removed = f"{count} row{'s' if count > 1 else ''} of set {setid} ({escape(uri)})"
        print(f"Removed {removed} from {where}", file=out)
    _reload_after(args, out, "takes it out of service")
    return EXIT_OK


def cmd_show(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``dispatcher show [setid...] [--json]``: the rows of the source, like kamctl."""
    source = open_source(args.config)
    wanted = {parse_int("set id", s, 0) for s in args.setids}
    if source.list_file is not None:
        rows = list_rows(_read_list(source.list_file), str(source.list_file))
    elif source.sqlite_missing:
        rows = []  # nothing added yet; 'show' creates nothing
    else:
        with source.store(read_only=True) as store:
            rows = [{k: row.get(k) for k in ROW_FIELDS} for row in store.rows()]
    if wanted:
        rows = [r for r in rows if r["setid"] in wanted]
    if args.json:  # ASCII: a C1 control or a bidi override stays an escape on a terminal too
        print(json.dumps(rows, indent=2, default=str), file=out)
    else:
        print(format_table(ROW_HEADERS, [[r[k] for k in ROW_FIELDS] for r in rows]), file=out)
    return EXIT_OK


def cmd_list(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``dispatcher list [--json] [--all]``: the live state, from ``dispatcher.list``."""
    if getattr(args, "all", False):
        from plugins.dispatcher.clusterview import cluster_table, errors_of

        answers = call_every_b2bua(args.config, "dispatcher.list")
        if args.json:
            print(json.dumps({a.node: a.result if a.error is None else {"error": a.error} for a in answers},
                             indent=2), file=out)
        else:
            print(format_table(*cluster_table(answers)), file=out)
        for line in errors_of(answers):
            print(f"error: {escape(line, backslash=False)}", file=err)
        return EXIT_FAILED if errors_of(answers) else EXIT_OK
    listing = call_b2bua(args.config, "dispatcher.list")
    if args.json:
        print(json.dumps(listing, indent=2), file=out)
    else:
        print(format_table(LIVE_HEADERS, live_rows(listing)), file=out)
    return EXIT_OK


def cmd_reload(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``dispatcher reload [--all]``: ``dispatcher.reload`` (on every node of the cluster)."""
    if getattr(args, "all", False):
        return _print_every_node(call_every_b2bua(args.config, "dispatcher.reload", timeout=RELOAD_TIMEOUT), out, err)
    print(call_b2bua(args.config, "dispatcher.reload", timeout=RELOAD_TIMEOUT), file=out)
    return EXIT_OK


def cmd_set_state(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """``dispatcher set-state <state> <setid> <uri|all>``: ``dispatcher.set_state``."""
    setid = parse_int("set id", args.setid, 0)
    if getattr(args, "all", False):
        return _print_every_node(call_every_b2bua(args.config, "dispatcher.set_state", [args.state, setid, args.uri]),
                                 out, err)
    print(call_b2bua(args.config, "dispatcher.set_state", [args.state, setid, args.uri]), file=out)
    return EXIT_OK


# -- file helpers ------------------------------------------------------------------------------


def _same_uri(stored: str, uri: str) -> bool:
    try:
        return normalize_uri(stored).lower() == uri.lower()
    except ValueError:
        return False


def _read_list(path: Path, missing_ok: bool = False) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            return ""
        raise AdminError(f"{path}: no such file") from None
    except UnicodeDecodeError:
        raise AdminError(f"{path}: not valid UTF-8") from None
    except OSError as exc:
        raise AdminError(f"{path}: cannot read: {exc.strerror or exc}") from None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """:func:`~plugins.dispatcher.listfile.edit_lock`, its failures as AdminError."""
    with ExitStack() as stack:
        try:
            stack.enter_context(edit_lock(path))
        except TimeoutError as exc:
            raise AdminError(str(exc)) from None
        except OSError as exc:
            raise AdminError(f"{path.parent}: cannot lock: {exc.strerror or exc}") from None
        yield


def _write_list(path: Path, text: str) -> None:
    try:
        atomic_write_text(path, text)
    except OSError as exc:
        raise AdminError(f"{path}: cannot write: {exc.strerror or exc}") from None


# -- wiring ------------------------------------------------------------------------------------


Handler = Callable[[argparse.Namespace, TextIO, TextIO], int]


def run(handler: Handler, args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run one verb: its exit code; any failure is one ``error: ...`` line on ``err``."""
    out = out or sys.stdout
    err = err or sys.stderr
    logger.disable("plugins.dispatcher")  # the store's own log lines would mix with the output
    try:
        return handler(args, out, err)
    except AdminError as exc:
        _print_error(exc, err)
        return exc.code
    except LoadError as exc:  # StoreError, ListFileError: they name the URL or file:line
        _print_error(exc, err)
        return EXIT_FAILED
    finally:
        logger.enable("plugins.dispatcher")


def _print_error(exc: BaseException, err: TextIO) -> None:
    # each line of the message escaped: data quoted in it cannot start a line of its own
    lines = str(exc).split("\n")
    print("\n".join(f"error: {escape(lines[0], backslash=False)}" if i == 0 else escape(line, backslash=False)
                    for i, line in enumerate(lines)), file=err)


def _verb(parser: argparse.ArgumentParser, handler: Handler) -> None:
    parser.add_argument("-c", "--config", default=DEFAULT_CONFIG, metavar="FILE",
                        help=f"config file with [plugins.dispatcher] and [control] (default: ${CONFIG_ENV}, "
                        f"else ./{DEFAULT_CONFIG})")
    parser.set_defaults(func=lambda args: run(handler, args))


def add_admin_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``add``, ``rm``, ``show``, ``list``, ``reload`` and ``set-state`` to ``b2bua dispatcher``."""
    p = sub.add_parser("add", help="add a destination to the list file or table (kamctl dispatcher add)",
                       description="Add a destination to the configured list file or database table.")
    p.add_argument("setid", help="destination set id")
    p.add_argument("uri", help="destination URI, e.g. sip:10.0.0.1:5060 (sip: is added when missing)")
    p.add_argument("flags", nargs="?", help="flags: 0, 2 (trying), 4 (disabled), 8 (probing), ...; default 0")
    p.add_argument("priority", nargs="?", help="priority, higher first; default 0")
    p.add_argument("attrs", nargs="?", help="attributes, e.g. 'duid=gw1;weight=50'")
    p.add_argument("description", nargs="?", help="description (a list file keeps it as the line's comment)")
    p.add_argument("--reload", action="store_true", help="then ask the running b2bua to reload")
    p.add_argument("--require-dns", action="store_true",
                   help="refuse a host name that does not resolve now (default: add it with a warning)")
    _verb(p, cmd_add)

    p = sub.add_parser("rm", help="remove a destination by id, or by set id and URI",
                       description="Remove a destination from the configured list file or database table: "
                       "by id (the list file's line number, as 'show' prints it), or by set id and URI.")
    p.add_argument("what", nargs="+", metavar="ID | SETID URI", help="an id, or a set id and a URI")
    p.add_argument("--reload", action="store_true", help="then ask the running b2bua to reload")
    _verb(p, cmd_rm)

    p = sub.add_parser("show", help="the destinations in the list file or table (kamctl dispatcher show)",
                       description="Print the configured list file's or table's destinations.")
    p.add_argument("setids", nargs="*", metavar="SETID", help="only these sets")
    p.add_argument("--json", action="store_true", help="print JSON")
    _verb(p, cmd_show)

    p = sub.add_parser("list", help="the live destinations and their state (dispatcher.list)",
                       description="Ask the running b2bua for its destinations, their state, latency and calls.")
    p.add_argument("--json", action="store_true", help="print dispatcher.list's JSON answer")
    p.add_argument("--all", action="store_true", help="every node of the cluster side by side (state/calls per node)")
    _verb(p, cmd_list)

    p = sub.add_parser("reload", help="ask the running b2bua to reload its destinations (dispatcher.reload)")
    p.add_argument("--all", action="store_true", help="reload every node of the cluster")
    _verb(p, cmd_reload)

    p = sub.add_parser("set-state", help="set a destination's state in the running b2bua (dispatcher.set_state)",
                       description="Set the state of a destination of the running b2bua: a (active), i "
                       "(inactive), t (trying), d (disabled, kept across restarts), optionally followed by p "
                       "(probing).")
    p.add_argument("state", help="a, i, t or d, optionally followed by p (ap, ip, ...)")
    p.add_argument("setid", help="destination set id")
    p.add_argument("uri", help="destination URI, or 'all' for the whole set")
    p.add_argument("--all", action="store_true",
                   help="on every node of the cluster (one node is enough: the state is shared through Redis)")
    _verb(p, cmd_set_state)
