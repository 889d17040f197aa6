"""Load the destinations in a child process, so a reload never competes with the loop.

Parsing a list file, checking every URI and resolving host names is CPU work in Python: about
35 µs per line, 3.5 s for 100,000 lines on our test machine. On a thread of the B2BUA it would
take the GIL from the loop at every pjsua2 call (see :mod:`b2bua.loop`); in a child process it
runs on another core with the very same code (:func:`plugins.dispatcher.storage.load_snapshot`)
and hands back its result as plain tuples, which the loop turns into destinations in slices of
:data:`CHUNK` (:func:`snapshot_steps`, ~15 µs per destination).

The child is ``python -m plugins.dispatcher.childload``: it reads a :class:`LoadRequest`
(pickled) on stdin, runs :func:`~plugins.dispatcher.source.load_configured` (the same load as
start-up, with its checks) and writes length-prefixed pickled frames on stdout:
``("log", level, message)`` for what the load logged (warnings about the list), then
``("set", setid, rows)`` in set order (a large set in several frames) and ``("end", source)``;
or ``("error", message)`` for a load error (exit 1). The loop logs the records and decodes the
sets a frame per step. A database URL with a password travels on stdin, never in argv.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import struct
import subprocess
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, Any

from loguru import logger

from b2bua.config import SipConfig
from b2bua.loop import Task, wait_for
from b2bua.nameservers import Nameserver
from plugins.dispatcher.config import DispatcherConfig
from plugins.dispatcher.model import Attrs, Destination, DestinationSet, Snapshot
from plugins.dispatcher.outbound import without_passwords
from plugins.dispatcher.resolve import LoadError
from plugins.dispatcher.source import RunBlocking, load_configured

#: destinations per frame: decoding one on the loop takes about 2-3 ms
CHUNK = 200
#: seconds a load may take before the child is killed (a database or DNS server that hangs)
LOAD_TIMEOUT = 300.0
#: the child's scheduling priority, below the B2BUA's: on a busy machine calls come first
LOAD_NICE = 10
_HEADER = struct.Struct(">I")
_DEST_FIELDS = tuple(f.name for f in fields(Destination))
_ATTRS_FIELDS = tuple(f.name for f in fields(Attrs))
_ATTRS_AT = _DEST_FIELDS.index("attrs")


@dataclass(frozen=True)
class LoadRequest:
    """What the child loads: the arguments of :func:`~plugins.dispatcher.source.load_configured`
    (``sip``: the host's ``[sip]`` to check the outbound attributes against, passwords blanked)."""

    config: DispatcherConfig
    list_file: Path | None = None
    nameservers: tuple[Nameserver, ...] = ()
    sip: SipConfig | None = None


def encode(dest: Destination) -> tuple[Any, ...]:
    """A destination as a tuple of plain values (field order; attrs as a tuple too)."""
    attrs = dest.attrs
    row = [getattr(dest, name) for name in _DEST_FIELDS]
    row[_ATTRS_AT] = tuple(dict(attrs.extra) if name == "extra" else getattr(attrs, name) for name in _ATTRS_FIELDS)
    return tuple(row)


def decode(row: tuple[Any, ...]) -> Destination:
    """The destination :func:`encode` made ``row`` from."""
    values = list(row)
    values[_ATTRS_AT] = Attrs(*values[_ATTRS_AT])
    return Destination(*values)


def frames(data: bytes) -> list[bytes]:
    """Split the child's output into its frames."""
    out: list[bytes] = []
    view, at = memoryview(data), 0
    while at < len(data):
        if at + _HEADER.size > len(data):
            raise LoadError("the load process's output is cut short")
        (size,) = _HEADER.unpack_from(view, at)
        at += _HEADER.size
        if at + size > len(data):
            raise LoadError("the load process's output is cut short")
        out.append(bytes(view[at:at + size]))
        at += size
    return out


def snapshot_steps(chunks: list[bytes]) -> Task[Snapshot]:
    """Turn the child's frames into a snapshot on the loop, a frame per step.

    :raises LoadError: the child reported one (the message names the file and line, or row).
    """
    sets: dict[int, list[Destination]] = {}
    source = ""
    complete = False
    for chunk in chunks:
        kind, *rest = pickle.loads(chunk)
        if kind == "log":
            logger.log(rest[0], "{}", rest[1])
        elif kind == "set":
            setid, rows = rest
            sets.setdefault(setid, []).extend([decode(row) for row in rows])
        elif kind == "end":
            source, complete = rest[0], True
        elif kind == "error":
            raise LoadError(rest[0])
        yield None
    if not complete:
        raise LoadError("the load process ended without its result")
    return Snapshot({setid: DestinationSet(setid, tuple(dests)) for setid, dests in sets.items()}, source)


class ChildLoad:
    """One load in a child process, seen from the B2BUA (run :meth:`run` on a worker thread)."""

    def __init__(self, request: LoadRequest, timeout: float = LOAD_TIMEOUT) -> None:
        self.request = request
        self.timeout = timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._killed = False

    def run(self) -> list[bytes]:
        """Start the child, wait for it (blocking) and return its frames.

        :raises LoadError: it could not start, ran out of time, or failed without a message.
        """
        env = dict(os.environ)
        # the child imports exactly what this process imports
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        try:
            proc = self._proc = subprocess.Popen(
                [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env=env, close_fds=True,
            )
        except OSError as exc:
            raise LoadError(f"cannot start the load process: {exc.strerror or exc}") from None
        if self._killed:  # stopped while it started
            proc.kill()
        try:
            out, err = proc.communicate(pickle.dumps(self.request), timeout=self.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise LoadError(f"the load did not finish within {self.timeout:g} s (database or DNS not answering?)"
                            ) from None
        last = _relay_output(err.decode("utf-8", "replace"))
        if self._killed:
            raise LoadError("the load was stopped (the B2BUA is stopping)")
        result = frames(out)
        if proc.returncode not in (0, 1) or not result:
            raise LoadError(f"the load process failed (exit {proc.returncode}): {last or 'no message'}")
        return result

    def kill(self) -> None:
        """Stop the child (shutdown); :meth:`run` then raises LoadError. Any thread."""
        self._killed = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()


def _relay_output(text: str) -> str:
    """Log what the child printed besides its frames (a traceback); returns its last line."""
    lines = [line for line in text.splitlines() if line.strip()]
    for line in lines:
        logger.warning("dispatcher: load process: {}", line)
    return lines[-1] if lines else ""


class ConfiguredSource:
    """The configured list file or database, loaded in a child process: what
    :func:`~plugins.dispatcher.source.load_configured` returns, without the loop doing the work."""

    def __init__(self, config: DispatcherConfig, list_file: Path | None, sip: SipConfig | None = None,
                 nameservers: tuple[Nameserver, ...] = ()) -> None:
        self.request = LoadRequest(config, list_file, nameservers, without_passwords(sip) if sip is not None else None)
        self._child: ChildLoad | None = None

    def load_steps(self, run_blocking: RunBlocking) -> Task[Snapshot]:
        child = self._child = ChildLoad(self.request)
        try:
            chunks = yield from wait_for(run_blocking(child.run))
        finally:
            self._child = None
        return (yield from snapshot_steps(chunks))

    def stop(self) -> None:
        child = self._child
        if child is not None:
            child.kill()


# -- the child --------------------------------------------------------------------------------


def _write(out: IO[bytes], item: tuple[Any, ...]) -> None:
    data = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(_HEADER.pack(len(data)))
    out.write(data)


def _chunks(dests: tuple[Destination, ...]) -> Iterator[tuple[Destination, ...]]:
    for start in range(0, len(dests), CHUNK):
        yield dests[start:start + CHUNK]


def main() -> int:
    """The child: load what stdin asks for, write the frames to stdout."""
    with contextlib.suppress(OSError):
        os.nice(LOAD_NICE)
    records: list[tuple[str, str]] = []  # what the load logs goes back as frames, first
    logger.remove()
    logger.add(lambda m: records.append((m.record["level"].name, m.record["message"])), level="INFO",
               format="{message}")
    out = sys.stdout.buffer
    snapshot = Snapshot()
    try:
        request: LoadRequest = pickle.loads(sys.stdin.buffer.read())  # our parent's request
        snapshot = load_configured(request.config, request.list_file, sip=request.sip,
                                   nameservers=request.nameservers, create=False)  # a reload creates nothing
    except LoadError as exc:
        failure = str(exc)
    except Exception as exc:
        traceback.print_exc()
        failure = f"{type(exc).__name__}: {exc}"
    else:
        failure = ""
    for level, message in records:
        _write(out, ("log", level, message))
    if failure:
        _write(out, ("error", failure))
        return 1
    for setid, dset in snapshot.sets.items():
        for part in _chunks(dset.destinations):
            _write(out, ("set", setid, [encode(d) for d in part]))
    _write(out, ("end", snapshot.source))
    out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
