"""End-to-end test harness: sipp as caller and gateways, the B2BUA as a subprocess.

Everything here is a plain helper (no pytest fixtures; those live in ``conftest.py``), so a bench
script can import it too. Every SIP peer gets its own 127.0.0.x address (`AddressAllocator`) and a
port found free by binding port 0 (`free_port`); every wait is bounded; every process writes its logs
into the test's ``workdir`` so a failed run leaves its artifacts behind.

Typical use::

    gw = Gateway.start("answer", "127.0.0.3", workdir=tmp_path)
    result = run_calls(gw.ip, gw.port, n=5, rate=10, ip="127.0.0.4", workdir=tmp_path)
    assert result.final_codes == [200] * 5, result.describe()
    assert gw.count("INVITE") == 5
    gw.stop()

How sipp is driven (sipp 3.6):

- Scenarios are templates in ``scenarios/*.xml`` with ``{{NAME}}`` placeholders, rendered into the
  workdir (the exact XML that ran is kept with the logs).
- What a peer sent and received comes from sipp's ``-trace_shortmsg`` log (one tab-separated line per
  message, written as it happens), so counts can be read while sipp runs.
- ``SIGUSR1`` makes sipp stop taking calls and exit once the current ones are done; ``SIGINT`` makes
  it exit at once (logs are complete either way, exit code 0); ``SIGKILL`` is the last resort.
- Exit codes: 0 all calls succeeded, 1 some failed, 97 internal command, 99 no call processed,
  255 (-1) fatal error, 254 (-2) cannot bind a socket.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import shutil
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Literal

from loguru import logger

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"
REPO_ROOT = Path(__file__).resolve().parents[2]

Transport = Literal["udp", "tcp"]
PortKind = Literal["udp", "tcp", "both"]

#: sipp ``-t`` values: one socket for all calls.
SIPP_TRANSPORTS: Mapping[str, str] = MappingProxyType({"udp": "u1", "tcp": "t1"})
#: sipp's exit codes for "could not start": fatal error (-1) and socket bind failure (-2).
SIPP_FATAL_EXITS = frozenset({255, 254})
SIPP_BIND_FAILURE = 254
#: "ring" waits this long for a CANCEL: an hour is forever for a test.
RING_FOREVER_MS = 3_600_000
DEFAULT_HANGUP_AFTER_MS = 1000
READY_MARKER = "b2bua ready"
#: seconds to wait after a caller exits before counts at the gateways are read
SETTLE_AFTER_CALLER = 0.2

REASON_PHRASES: Mapping[int, str] = MappingProxyType({
    200: "OK", 300: "Multiple Choices", 301: "Moved Permanently", 302: "Moved Temporarily",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 407: "Proxy Authentication Required", 408: "Request Timeout",
    410: "Gone", 480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist",
    484: "Address Incomplete", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 500: "Server Internal Error", 501: "Not Implemented",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Server Time-out", 600: "Busy Everywhere",
    603: "Decline", 604: "Does Not Exist Anywhere", 606: "Not Acceptable",
})


class HarnessError(RuntimeError):
    """The harness could not do what a test asked (a tool is missing, a process died, a wait ran out)."""


# --------------------------------------------------------------------------------------------------
# Addresses and ports


def free_port(host: str, kind: PortKind = "udp") -> int:
    """A port on ``host`` that the kernel just handed out for binding port 0 (then released).

    ``kind="both"`` finds a port free for UDP and TCP alike (a SIP listener on both transports).
    There is a window between this check and the real bind; callers that start a server retry on a
    bind failure.
    """
    if kind not in ("udp", "tcp", "both"):
        raise ValueError(f"free_port: kind must be 'udp', 'tcp' or 'both', not {kind!r}")
    for _ in range(50):
        first = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, first) as sock:
            sock.bind((host, 0))
            port: int = sock.getsockname()[1]
        if kind != "both" or _bindable(host, port, socket.SOCK_STREAM):
            return port
    raise HarnessError(f"no port free for both UDP and TCP on {host} after 50 tries")


def free_port_pair(host: str, gap: int = 2) -> int:
    """A UDP port ``p`` on ``host`` with ``p + gap`` free too (sipp binds media on -mp and -mp+2)."""
    for _ in range(50):
        port = free_port(host, "udp")
        if port + gap < 65536 and _bindable(host, port + gap, socket.SOCK_DGRAM):
            return port
    raise HarnessError(f"no UDP port pair (p, p+{gap}) free on {host} after 50 tries")


def sipp_side_ports(ip: str, sip_port: int) -> tuple[int, int]:
    """``-mp`` (a media pair on ``ip``) and ``-cp`` (control, on the wildcard) for one sipp.

    Each number comes from a bind that was released again, so the kernel may hand the same one
    out twice in a row (a caller once got its SIP port as its media port): draw until the SIP
    port, the media pair and the control port are all different.
    """
    for _ in range(50):
        media = free_port_pair(ip)
        control = free_port("0.0.0.0")
        if len({sip_port, media, media + 2, control}) == 4:
            return media, control
    raise HarnessError(f"no media and control ports apart from SIP port {sip_port} on {ip} after 50 tries")


def _bindable(host: str, port: int, kind: socket.SocketKind) -> bool:
    with socket.socket(socket.AF_INET, kind) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def xdist_worker() -> int:
    """This pytest-xdist worker's number (``gw3`` -> 3); 0 when the tests run in one process."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(name[2:]) if name.startswith("gw") and name[2:].isdigit() else 0


class AddressAllocator:
    """Hands out 127.0.N.x addresses, x from ``first`` to ``last``, one per SIP peer.

    N is the pytest-xdist worker's number (0 without xdist), so tests running side by side never
    share an address: each B2BUA binds its RTP range on its own address. Distinct for the first
    ``last - first + 1`` calls, then it starts over: ports are always probed free, so reusing an
    address for a later peer is safe. Thread-safe.
    """

    def __init__(self, first: int = 2, last: int = 250, network: int | None = None) -> None:
        if not 1 <= first <= last <= 254:
            raise ValueError(f"AddressAllocator: need 1 <= first <= last <= 254, got {first}..{last}")
        self._network = xdist_worker() if network is None else network
        if not 0 <= self._network <= 254:
            raise ValueError(f"AddressAllocator: the third octet must be 0-254, got {self._network}")
        self._first = first
        self._last = last
        self._next = first
        self._lock = threading.Lock()

    def next(self) -> str:
        """The next address, e.g. ``"127.0.0.7"`` (``"127.0.2.7"`` on xdist worker gw2)."""
        with self._lock:
            x = self._next
            self._next = self._first if x >= self._last else x + 1
        return f"127.0.{self._network}.{x}"


def socket_bound(ip: str, port: int, transport: Transport, proc_net: Mapping[str, str],
                 inodes: Iterable[str] | None = None) -> bool:
    """Whether the ``/proc/net/{udp,tcp}`` texts show a socket bound (TCP: listening) on ip:port.

    Pure: ``proc_net`` maps ``"udp"``/``"tcp"`` to the file contents. A wildcard bind counts. With
    ``inodes``, only those sockets count (the ones a given process holds), so a stranger already
    squatting on the port is not mistaken for our server.
    """
    wanted = {_proc_net_addr(ip, port), _proc_net_addr("0.0.0.0", port)}
    owned = None if inodes is None else set(inodes)
    for line in proc_net.get(transport, "").splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        local, state, inode = fields[1], fields[3], fields[9]
        if (local in wanted and (transport == "udp" or state == "0A")  # 0A = TCP_LISTEN
                and (owned is None or inode in owned)):
            return True
    return False


def _proc_net_addr(ip: str, port: int) -> str:
    # /proc/net prints the address as the raw 32-bit value in host byte order.
    (raw,) = struct.unpack("=I", socket.inet_aton(ip))
    return f"{raw:08X}:{port:04X}"


def _read_proc_net() -> dict[str, str]:
    return {name: Path(f"/proc/net/{name}").read_text() for name in ("udp", "tcp")}


def _socket_inodes(pid: int) -> set[str]:
    """Inodes of the sockets process ``pid`` holds (its fds link to ``socket:[inode]``)."""
    out = set()
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    out.add(target[8:-1])
    return out


# --------------------------------------------------------------------------------------------------
# Scenario templates

_PLACEHOLDER = re.compile(r"\{\{([A-Z0-9_]+)\}\}")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!%*_+`'~.-]+$")


def fill_template(text: str, values: Mapping[str, str], where: str = "template") -> str:
    """Replace every ``{{NAME}}`` in ``text`` by ``values[NAME]``; a missing value is an error."""
    missing = sorted({name for name in _PLACEHOLDER.findall(text) if name not in values})
    if missing:
        raise HarnessError(f"{where}: no value for placeholder(s) {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def render_scenario(template: str, values: Mapping[str, str]) -> str:
    """The XML of ``scenarios/<template>`` with its placeholders filled."""
    path = SCENARIO_DIR / template
    return fill_template(path.read_text(), values, where=str(path))


def format_extra_headers(headers: Mapping[str, str] | Sequence[str]) -> str:
    """``{"X-A": "1"}`` or ``["X-A: 1"]`` as header lines for a scenario, each ending in a newline.

    Raises ``ValueError`` for a header without a name, a bad name, or a line break in a value.
    """
    lines = [f"{k}: {v}" for k, v in headers.items()] if isinstance(headers, Mapping) else list(headers)
    out = []
    for i, line in enumerate(lines):
        name, sep, value = line.partition(":")
        if not sep or not _HEADER_NAME.match(name.strip()):
            raise ValueError(f"extra_headers[{i}]: {line!r} is not 'Name: value'")
        if "\r" in line or "\n" in line:
            raise ValueError(f"extra_headers[{i}]: {line!r} contains a line break")
        out.append(f"{name.strip()}: {value.strip()}\n")
    return "".join(out)


def _code(text: str, behaviour: str) -> int:
    try:
        code = int(text)
    except ValueError:
        raise ValueError(f"behaviour {behaviour!r}: {text!r} is not a SIP status code") from None
    if not 300 <= code <= 699:
        raise ValueError(f"behaviour {behaviour!r}: final code must be 300..699, not {code}")
    return code


GATEWAY_BEHAVIOURS = (
    "answer", "answer-183", "reject:<code>", "silent", "ring", "ring-then-answer:<seconds>", "ring-late:<ms>",
    "hangup", "hangup:<ms>",
)


def gateway_scenario(behaviour: str) -> tuple[str, dict[str, str]]:
    """The scenario template and placeholder values for a gateway behaviour (see `Gateway.start`)."""
    kind, _, arg = behaviour.partition(":")
    if kind in ("answer", "answer-183", "silent", "ring") and not arg:
        template = {"answer": "uas_answer.xml", "answer-183": "uas_answer_183.xml",
                    "silent": "uas_silent.xml", "ring": "uas_ring.xml"}[kind]
        return template, ({"ANSWER_AFTER_MS": str(RING_FOREVER_MS)} if kind == "ring" else {})
    if kind == "ring-late":
        try:
            ms = int(arg)
        except ValueError:
            raise ValueError(f"behaviour {behaviour!r}: {arg!r} is not a number of milliseconds") from None
        if not 0 < ms < 500:  # under T1: the INVITE's retransmission would meet a pause
            raise ValueError(f"behaviour {behaviour!r}: milliseconds must be in (0, 500)")
        return "uas_ring_late.xml", {"RING_AFTER_MS": str(ms)}
    if kind == "reject" and arg:
        code = _code(arg, behaviour)
        return "uas_reject.xml", {"CODE": str(code), "REASON": REASON_PHRASES.get(code, "Rejected")}
    if kind == "ring-then-answer" and arg:
        try:
            seconds = float(arg)
        except ValueError:
            raise ValueError(f"behaviour {behaviour!r}: {arg!r} is not a number of seconds") from None
        if not 0 < seconds <= 3600:
            raise ValueError(f"behaviour {behaviour!r}: seconds must be in (0, 3600]")
        return "uas_ring.xml", {"ANSWER_AFTER_MS": str(round(seconds * 1000))}
    if kind == "hangup":
        try:
            ms = int(arg) if arg else DEFAULT_HANGUP_AFTER_MS
        except ValueError:
            raise ValueError(f"behaviour {behaviour!r}: {arg!r} is not a number of milliseconds") from None
        if ms < 0:
            raise ValueError(f"behaviour {behaviour!r}: milliseconds must be >= 0")
        # A receive timeout of 0 would mean "none" to sipp.
        return "uas_hangup.xml", {"HANGUP_AFTER_MS": str(max(1, ms)), "BYE_HEADERS": ""}
    raise ValueError(f"unknown gateway behaviour {behaviour!r}; expected one of {', '.join(GATEWAY_BEHAVIOURS)}")


CALLER_BEHAVIOURS = ("call", "reinvite", "cancel", "expect:<code>", "hangup-by-callee", "options")


def caller_scenario(behaviour: str) -> tuple[str, dict[str, str]]:
    """The scenario template and behaviour-specific values for a caller behaviour (see `start_calls`)."""
    kind, _, arg = behaviour.partition(":")
    simple = {"call": "uac_call.xml", "reinvite": "uac_reinvite.xml", "cancel": "uac_cancel.xml",
              "hangup-by-callee": "uac_hangup_by_callee.xml", "options": "uac_options.xml"}
    if kind in simple and not arg:
        return simple[kind], {}
    if kind == "expect" and arg:
        return "uac_expect.xml", {"CODE": str(_code(arg, behaviour))}
    raise ValueError(f"unknown caller behaviour {behaviour!r}; expected one of {', '.join(CALLER_BEHAVIOURS)}")


# --------------------------------------------------------------------------------------------------
# sipp's logs

_CSEQ = re.compile(r"^CSeq:\s*(\d+)\s+(\S+)$", re.IGNORECASE)
_STATUS = re.compile(r"^SIP/2\.0\s+(\d{3})\b")


@dataclass(frozen=True)
class SipMessage:
    """One line of sipp's ``-trace_shortmsg`` log: a message sipp sent or received."""

    time: float
    direction: Literal["sent", "received"]
    call_id: str
    cseq: int
    cseq_method: str
    first_line: str

    @property
    def status(self) -> int | None:
        """The status code of a response, None for a request."""
        m = _STATUS.match(self.first_line)
        return int(m.group(1)) if m else None

    @property
    def method(self) -> str | None:
        """The method of a request, None for a response."""
        return None if self.status is not None else self.first_line.split(" ", 1)[0]


def parse_shortmsg_log(text: str, where: str = "shortmsg log") -> list[SipMessage]:
    """Parse sipp's ``-trace_shortmsg`` text.

    Each line is ``date<TAB>time<TAB>epoch<TAB>S|R<TAB>Call-ID<TAB>CSeq:<n> <method><TAB>first line``.
    A torn last line (sipp still writing it) is ignored; any other bad line is an error naming it.
    """
    out: list[SipMessage] = []
    lines = text.split("\n")
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.rstrip("\r").split("\t", 6)
        cseq = _CSEQ.match(fields[5].strip()) if len(fields) == 7 else None
        if cseq is None or fields[3] not in ("S", "R"):
            if no == len(lines):  # no newline yet: written while we read
                break
            raise ValueError(f"{where}:{no}: not a sipp short message line: {line!r}")
        try:
            stamp = float(fields[2])
        except ValueError:
            raise ValueError(f"{where}:{no}: bad timestamp {fields[2]!r}") from None
        out.append(SipMessage(
            time=stamp, direction="sent" if fields[3] == "S" else "received", call_id=fields[4],
            cseq=int(cseq.group(1)), cseq_method=cseq.group(2).upper(), first_line=fields[6].strip(),
        ))
    return out


def count_requests(messages: Iterable[SipMessage], method: str, *, direction: str = "received",
                   retransmissions: bool = False) -> int:
    """How many ``method`` requests went in ``direction``.

    By default each transaction counts once (retransmissions share Call-ID and CSeq), so an INVITE
    retransmitted six times to a silent gateway is one INVITE. ``retransmissions=True`` counts packets.
    """
    method = method.upper()
    hits = [m for m in messages if m.direction == direction and m.method == method]
    if retransmissions:
        return len(hits)
    return len({(m.call_id, m.cseq, m.method) for m in hits})


# "UDP message received [514] bytes :" and "UDP message sent (246 bytes):"
_TRACE_SEPARATOR = re.compile(r"^-{20,} \S+ \S+\n(\S+) message (sent|received) (?:\[\d+\] bytes|\(\d+ bytes\)) ?:\n\n",
                              re.MULTILINE)


@dataclass(frozen=True)
class TracedMessage:
    """A whole SIP message from sipp's ``-trace_msg`` log."""

    direction: Literal["sent", "received"]
    transport: str
    text: str

    @property
    def first_line(self) -> str:
        """The request or status line."""
        return self.text.split("\n", 1)[0].strip()

    def header(self, name: str) -> str | None:
        """The value of the first header called ``name`` (case-insensitive), or None."""
        for line in self.text.split("\n\n", 1)[0].split("\n")[1:]:
            key, sep, value = line.partition(":")
            if sep and key.strip().lower() == name.lower():
                return value.strip()
        return None


def parse_message_log(text: str) -> list[TracedMessage]:
    """Split sipp's ``-trace_msg`` text into messages (a torn last one is returned as far as written)."""
    matches = list(_TRACE_SEPARATOR.finditer(text))
    out = []
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = text[m.end():end].replace("\r\n", "\n").strip("\n") + "\n"
        out.append(TracedMessage(direction="sent" if m.group(2) == "sent" else "received",
                                 transport=m.group(1), text=body))
    return out


@dataclass(frozen=True)
class CallRecord:
    """What one caller call (one Call-ID) got back for its INVITE (or OPTIONS)."""

    call_id: str
    codes: tuple[int, ...]
    final_code: int | None
    sent_at: float
    progress_at: float | None
    final_at: float | None

    @property
    def setup_time(self) -> float | None:
        """Seconds from the first INVITE to its final response (None: no final response)."""
        return None if self.final_at is None else self.final_at - self.sent_at

    @property
    def post_dial_delay(self) -> float | None:
        """Seconds from the first INVITE to its first 18x (None: no 18x)."""
        return None if self.progress_at is None else self.progress_at - self.sent_at


def summarize_calls(messages: Iterable[SipMessage], method: str = "INVITE") -> list[CallRecord]:
    """Per Call-ID, in the order the calls started: every response to the first ``method`` request
    (retransmitted responses included; a later re-INVITE's are not) and the final one."""
    method = method.upper()
    started: dict[str, tuple[float, int]] = {}
    codes: dict[str, list[int]] = {}
    progress: dict[str, float] = {}
    final: dict[str, tuple[int, float]] = {}
    for m in messages:
        if m.direction == "sent" and m.method == method:
            started.setdefault(m.call_id, (m.time, m.cseq))
            codes.setdefault(m.call_id, [])
        elif m.direction == "received" and m.status is not None and m.cseq_method == method:
            if m.call_id not in started or m.cseq != started[m.call_id][1]:
                continue
            codes[m.call_id].append(m.status)
            if 180 <= m.status < 200:
                progress.setdefault(m.call_id, m.time)
            elif m.status >= 200:
                final.setdefault(m.call_id, (m.status, m.time))
    return [
        CallRecord(
            call_id=cid, codes=tuple(codes[cid]), final_code=final[cid][0] if cid in final else None,
            sent_at=t0, progress_at=progress.get(cid), final_at=final[cid][1] if cid in final else None,
        )
        for cid, (t0, _) in started.items()
    ]


def summarize_durations(values: Sequence[float]) -> dict[str, float]:
    """``{"min", "median", "p95", "max"}`` of ``values`` (nearest-rank p95); empty for no values."""
    if not values:
        return {}
    ordered = sorted(values)
    rank = max(0, -(-95 * len(ordered) // 100) - 1)  # ceil(0.95 n) - 1
    return {"min": ordered[0], "median": statistics.median(ordered), "p95": ordered[rank], "max": ordered[-1]}


def parse_stat_csv(text: str) -> dict[str, str]:
    """The last row of sipp's ``-trace_stat`` CSV (``;``-separated) as a dict (empty if no row yet)."""
    rows = [r for r in csv.reader(io.StringIO(text), delimiter=";") if r]
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))


# --------------------------------------------------------------------------------------------------
# sipp processes


@dataclass(frozen=True)
class SippFiles:
    """Where one sipp run keeps its scenario and logs (all in the test's workdir)."""

    scenario: Path
    messages: Path
    short: Path
    errors: Path
    stat: Path
    screen: Path
    output: Path

    @classmethod
    def for_name(cls, workdir: Path, name: str) -> SippFiles:
        """The files of the run called ``name``."""
        return cls(*(workdir / f"{name}{suffix}" for suffix in (
            ".xml", ".messages.log", ".short.log", ".errors.log", ".stat.csv", ".screen.log", ".out")))


def sipp_binary() -> str:
    """The sipp executable, or HarnessError telling how to install it."""
    path = shutil.which("sipp")
    if path is None:
        raise HarnessError("sipp not found on PATH: install sip-tester (apt-get install sip-tester)")
    return path


def _unique_name(workdir: Path, base: str) -> str:
    name = base
    for i in range(2, 1000):
        if not SippFiles.for_name(workdir, name).scenario.exists():
            return name
        name = f"{base}-{i}"
    raise HarnessError(f"{workdir}: more than 1000 sipp runs called {base!r}")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"({path.name}: missing)"
    return "\n".join(text.rstrip("\n").split("\n")[-lines:])


def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


class SippProcess:
    """A running sipp with its log files; the common part of `Gateway` and `CallerProcess`."""

    def __init__(self, proc: subprocess.Popen[bytes], *, name: str, ip: str, port: int,
                 transport: Transport, files: SippFiles, workdir: Path) -> None:
        self.proc = proc
        self.name = name
        self.ip = ip
        self.port = port
        self.transport: Transport = transport
        self.files = files
        self.workdir = workdir
        self.started_at = time.monotonic()
        self._paused = False

    @property
    def pid(self) -> int:
        """sipp's process id."""
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit code once sipp has exited, else None."""
        return self.proc.poll()

    @property
    def paused(self) -> bool:
        """Whether `pause` stopped the process."""
        return self._paused

    def messages(self) -> list[SipMessage]:
        """Every message sipp sent or received so far (from its short message log)."""
        try:
            text = self.files.short.read_text(errors="replace")
        except FileNotFoundError:
            return []
        return parse_shortmsg_log(text, where=str(self.files.short))

    def traced(self) -> list[TracedMessage]:
        """Every whole message so far (from the full ``-trace_msg`` log)."""
        try:
            return parse_message_log(self.files.messages.read_text(errors="replace"))
        except FileNotFoundError:
            return []

    def count(self, method: str, *, retransmissions: bool = False) -> int:
        """Requests of ``method`` received so far; one per transaction unless ``retransmissions``."""
        return count_requests(self.messages(), method, retransmissions=retransmissions)

    def requests(self, method: str) -> list[TracedMessage]:
        """The whole ``method`` requests received so far (retransmissions included), to check headers."""
        return [m for m in self.traced()
                if m.direction == "received" and m.first_line.split(" ", 1)[0] == method.upper()]

    def pause(self) -> None:
        """SIGSTOP: the peer goes silent (packets queue up in its socket until `resume`)."""
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT after `pause`: the peer comes back and works through what queued up."""
        self._signal(signal.SIGCONT)
        self._paused = False

    def _signal(self, sig: signal.Signals) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, grace: float = 3.0, timeout: float = 5.0) -> int:
        """End sipp: SIGUSR1 (finish current calls), after ``grace`` s SIGINT, after ``timeout`` s SIGKILL.

        Returns the exit code (negative: killed by that signal). Safe to call more than once.
        """
        if self.proc.poll() is None:
            self.resume()
            self.proc.send_signal(signal.SIGUSR1)
            if _wait_exit(self.proc, grace) is None:
                logger.debug("sipp {} still busy after {}s: SIGINT", self.name, grace)
                self.proc.send_signal(signal.SIGINT)
                if _wait_exit(self.proc, timeout) is None:
                    logger.warning("sipp {} ignored SIGINT for {}s: SIGKILL", self.name, timeout)
                    self.proc.kill()
        return self.proc.wait(timeout)

    def kill(self) -> int:
        """SIGKILL now (a crashed gateway); returns the exit code."""
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait(5.0)

    def log_tail(self, lines: int = 30) -> str:
        """The ends of sipp's error log and console output, for failure messages."""
        return (f"--- {self.files.errors}\n{_tail(self.files.errors, lines)}\n"
                f"--- {self.files.output}\n{_tail(self.files.output, lines)}")

    def __enter__(self) -> SippProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _launch_sipp(*, workdir: Path, name: str, template: str, values: Mapping[str, str], ip: str, port: int,
                 transport: Transport, extra_args: Sequence[str]) -> tuple[subprocess.Popen[bytes], SippFiles]:
    if transport not in SIPP_TRANSPORTS:
        raise ValueError(f"transport must be 'udp' or 'tcp', not {transport!r}")
    files = SippFiles.for_name(workdir, name)
    files.scenario.write_text(render_scenario(template, values))
    # sipp binds its control socket on the wildcard address: sipp_side_ports probes it there
    media_port, control_port = sipp_side_ports(ip, port)
    args = [
        sipp_binary(), "-sf", str(files.scenario), "-t", SIPP_TRANSPORTS[transport],
        "-i", ip, "-p", str(port), "-mi", ip, "-mp", str(media_port),
        "-cp", str(control_port), "-nostdin", "-aa",
        "-trace_msg", "-message_file", str(files.messages),
        "-trace_shortmsg", "-shortmessage_file", str(files.short),
        "-trace_err", "-error_file", str(files.errors),
        "-trace_screen", "-screen_file", str(files.screen),
        "-trace_stat", "-stf", str(files.stat), "-fd", "1",
        *extra_args,
    ]
    with files.output.open("wb") as out:
        out.write((" ".join(args) + "\n").encode())
        out.flush()
        proc = subprocess.Popen(args, cwd=workdir, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)
    logger.debug("sipp {} started (pid {}): {}", name, proc.pid, " ".join(args))
    return proc, files


class Gateway(SippProcess):
    """A sipp UAS standing in for a carrier gateway. Start one with `Gateway.start`."""

    def __init__(self, proc: subprocess.Popen[bytes], *, behaviour: str, name: str, ip: str, port: int,
                 transport: Transport, files: SippFiles, workdir: Path) -> None:
        super().__init__(proc, name=name, ip=ip, port=port, transport=transport, files=files, workdir=workdir)
        self.behaviour = behaviour

    @classmethod
    def start(cls, behaviour: str, ip: str, port: int | None = None, workdir: Path | None = None, *,
              transport: Transport = "udp", name: str | None = None, ready_timeout: float = 5.0) -> Gateway:
        """Start a gateway on ``ip:port`` and return once it listens.

        ``behaviour`` (every one also answers out-of-dialog OPTIONS with 200):

        - ``"answer"``: 100, 180, 200 with SDP; waits for ACK, then BYE, answers 200.
        - ``"answer-183"``: the same with 183 + SDP (early media) instead of 180.
        - ``"reject:<code>"``: 100, then the final ``<code>`` (300..699); waits for ACK.
        - ``"silent"``: no response to INVITE at all (retransmissions swallowed).
        - ``"ring"``: 100, 180, then nothing until CANCEL: 200 to it, 487 to the INVITE, waits for ACK.
        - ``"ring-then-answer:<seconds>"``: as ``ring``, but answers (like ``answer``) after that long.
        - ``"ring-late:<ms>"``: as ``ring``, but nothing comes until its 180, ``<ms>`` (< 500) after the
          INVITE (a gateway slow to answer anything: a CANCEL has to wait for it).
        - ``"hangup"`` / ``"hangup:<ms>"``: answers, then sends BYE itself after ``<ms>`` (default 1000).

        ``port=None`` picks a free one (and retries on a bind race). The scenario and sipp's logs go to
        ``workdir/<name>.*``.
        """
        if workdir is None:
            raise ValueError("Gateway.start: workdir is required (sipp's logs go there)")
        template, values = gateway_scenario(behaviour)
        return cls.start_scenario(template, values, ip, workdir, behaviour=behaviour, port=port,
                                  transport=transport, name=name, ready_timeout=ready_timeout)

    @classmethod
    def start_scenario(cls, template: str, values: Mapping[str, str], ip: str, workdir: Path, *,
                       behaviour: str, port: int | None = None, transport: Transport = "udp",
                       name: str | None = None, ready_timeout: float = 5.0) -> Gateway:
        """Like :meth:`start` with a scenario of your own: ``template`` names a file in
        ``scenarios/`` or is an absolute path, its ``{{NAME}}`` placeholders filled from ``values``;
        ``behaviour`` is only a label (names and logs)."""
        base = name or f"gw-{ip}-{behaviour.replace(':', '_')}"
        kind: PortKind = "tcp" if transport == "tcp" else "udp"
        attempts = 1 if port is not None else 3
        for attempt in range(1, attempts + 1):
            use_port = port if port is not None else free_port(ip, kind)
            run_name = _unique_name(workdir, base)
            proc, files = _launch_sipp(workdir=workdir, name=run_name, template=template, values=values, ip=ip,
                                       port=use_port, transport=transport, extra_args=())
            gw = cls(proc, behaviour=behaviour, name=run_name, ip=ip, port=use_port, transport=transport,
                     files=files, workdir=workdir)
            rc = gw._wait_listening(ready_timeout)
            if rc is None:
                return gw
            if rc != SIPP_BIND_FAILURE or attempt == attempts:
                raise HarnessError(f"gateway {run_name} exited with {rc} before listening on "
                                   f"{ip}:{use_port}/{transport}\n{gw.log_tail()}")
            logger.debug("gateway {}: port {} taken meanwhile, retrying", run_name, use_port)
        raise AssertionError("unreachable")

    def _wait_listening(self, timeout: float) -> int | None:
        """None once sipp's SIP socket is bound; its exit code if it died first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                return rc
            if socket_bound(self.ip, self.port, self.transport, _read_proc_net(), _socket_inodes(self.pid)):
                return None
            time.sleep(0.02)
        self.kill()
        raise HarnessError(f"gateway {self.name} not listening on {self.ip}:{self.port} after {timeout}s\n"
                           f"{self.log_tail()}")

    @property
    def uri(self) -> str:
        """``sip:ip:port`` (with ``;transport=tcp`` for TCP), as a dispatcher destination."""
        suffix = ";transport=tcp" if self.transport == "tcp" else ""
        return f"sip:{self.ip}:{self.port}{suffix}"


# --------------------------------------------------------------------------------------------------
# Callers


@dataclass(frozen=True)
class CallResult:
    """The outcome of one sipp caller run."""

    name: str
    exit_code: int
    created: int
    successful: int
    failed: int
    calls: tuple[CallRecord, ...]
    elapsed: float
    files: SippFiles

    @property
    def final_codes(self) -> list[int | None]:
        """The final response code per call, in call order (None: none arrived)."""
        return [c.final_code for c in self.calls]

    @property
    def setup_times(self) -> list[float]:
        """Seconds from INVITE to final response, for the calls that got one."""
        return [t for t in (c.setup_time for c in self.calls) if t is not None]

    def setup_time_summary(self) -> dict[str, float]:
        """min / median / p95 / max of `setup_times` in seconds (empty if no call got a final response)."""
        return summarize_durations(self.setup_times)

    @property
    def ok(self) -> bool:
        """Every call went as its scenario expected."""
        return self.exit_code == 0 and self.failed == 0

    def describe(self, lines: int = 20) -> str:
        """A summary and the error log's tail, for assertion messages."""
        return (f"caller {self.name}: exit {self.exit_code}, {self.created} created, {self.successful} ok, "
                f"{self.failed} failed in {self.elapsed:.2f}s; final codes {self.final_codes}\n"
                f"--- {self.files.errors}\n{_tail(self.files.errors, lines)}")


class CallerProcess(SippProcess):
    """A sipp UAC placing calls in the background; `wait` for its `CallResult`."""

    def __init__(self, proc: subprocess.Popen[bytes], *, method: str, default_timeout: float, name: str,
                 ip: str, port: int, transport: Transport, files: SippFiles, workdir: Path) -> None:
        super().__init__(proc, name=name, ip=ip, port=port, transport=transport, files=files, workdir=workdir)
        self.method = method
        self.default_timeout = default_timeout

    def wait(self, timeout: float | None = None) -> CallResult:
        """Wait (at most ``timeout`` s, default: what `start_calls` worked out) and collect the result.

        Raises HarnessError with sipp's logs when the run overruns (sipp is stopped first) or sipp could
        not start at all.
        """
        limit = self.default_timeout if timeout is None else timeout
        remaining = max(0.0, self.started_at + limit - time.monotonic())
        if _wait_exit(self.proc, remaining) is None:
            self.stop(grace=0.5)
            raise HarnessError(f"caller {self.name} still running after {limit:.1f}s; stopped it\n"
                               f"{self.log_tail()}")
        # what a B2BUA sends on after the caller's last message (the B leg's BYE, sent as the
        # caller's BYE is answered) is still on its way for a moment: let gateways log it
        time.sleep(SETTLE_AFTER_CALLER)
        return self.result()

    def result(self) -> CallResult:
        """The result of a finished run."""
        rc = self.proc.poll()
        if rc is None:
            raise HarnessError(f"caller {self.name} is still running")
        if rc in SIPP_FATAL_EXITS:
            raise HarnessError(f"caller {self.name} failed to run (exit {rc})\n{self.log_tail()}")
        missing = [p.name for p in (self.files.stat, self.files.short) if not p.exists()]
        stats = parse_stat_csv(self.files.stat.read_text()) if not missing else {}
        if missing or not stats:
            # Never report "0 failed" from logs that are not there.
            what = ", ".join(missing) or f"empty {self.files.stat.name}"
            raise HarnessError(f"caller {self.name} exited {rc} without its logs ({what}) in {self.workdir}\n"
                               f"{self.log_tail()}")
        calls = tuple(summarize_calls(self.messages(), self.method))

        def stat(key: str) -> int:
            return int(stats.get(key, "0") or 0)

        return CallResult(
            name=self.name, exit_code=rc, created=stat("TotalCallCreated") or len(calls),
            successful=stat("SuccessfulCall(C)"), failed=stat("FailedCall(C)"), calls=calls,
            elapsed=time.monotonic() - self.started_at, files=self.files,
        )


def start_calls(target_ip: str, target_port: int, *, ip: str, workdir: Path, n: int = 1, rate: float = 10.0,
                behaviour: str = "call", call_duration_ms: int = 200, cancel_after_ms: int = 0,
                service: str = "service", from_user: str = "caller", from_name: str = "", to_name: str = "",
                extra_headers: Mapping[str, str] | Sequence[str] = (), recv_timeout_ms: int = 10_000,
                max_concurrent: int | None = None, transport: Transport = "udp", port: int | None = None,
                name: str | None = None, timeout: float | None = None, template: str | None = None,
                values: Mapping[str, str] | None = None) -> CallerProcess:
    """Start a sipp caller placing ``n`` calls at ``rate`` calls/s to ``target_ip:target_port``.

    ``behaviour``:

    - ``"call"``: INVITE (with SDP), optional 100/180/183, 200, ACK, ``call_duration_ms`` of talk, BYE, 200.
      A re-INVITE from the far end while talking is answered (200 with SDP).
    - ``"reinvite"``: like ``call``, but sends one re-INVITE (200, ACK) once the call is up.
    - ``"cancel"``: INVITE, waits for 180 or 183, ``cancel_after_ms`` more, CANCEL; expects 200 to the
      CANCEL, 487 to the INVITE; ACK.
    - ``"expect:<code>"``: INVITE, expects the final ``<code>`` (300..699), ACK.
    - ``"hangup-by-callee"``: like ``call`` but waits for the far end's BYE and answers 200.
    - ``"options"``: one OPTIONS per call, expects 200.

    ``template`` runs a scenario of the test's own instead (a file in ``scenarios/`` or an absolute
    path, with the same placeholders filled, and ``values`` for its own); ``behaviour`` then only
    names the run.

    The Request-URI user is ``service``; ``from_name`` / ``to_name`` are display names for From and
    To (quoted, none when empty); ``extra_headers`` go into each INVITE/OPTIONS. Every wait for
    a message is bounded by ``recv_timeout_ms`` (the call then fails); the whole run by ``timeout``
    seconds (default: from n, rate and the durations), enforced by `CallerProcess.wait`.
    """
    if n < 1 or rate <= 0:
        raise ValueError(f"start_calls: need n >= 1 and rate > 0, got n={n}, rate={rate}")
    if template is None:
        template, fill = caller_scenario(behaviour)
    else:
        fill = dict(values or {})
    if call_duration_ms < 0 or cancel_after_ms < 0:
        raise ValueError("start_calls: call_duration_ms and cancel_after_ms must be >= 0")
    # header lines of the test's own on uac_call.xml's BYE and uac_cancel.xml's CANCEL
    fill.setdefault("BYE_HEADERS", "")
    fill.setdefault("CANCEL_HEADERS", "")
    # The talk time is a receive timeout (to answer re-INVITEs meanwhile); 0 would mean "none" to sipp.
    fill |= {"DURATION_MS": str(max(1, call_duration_ms)), "CANCEL_AFTER_MS": str(cancel_after_ms),
             "FROM_USER": from_user, "EXTRA_HEADERS": format_extra_headers(extra_headers),
             "FROM_NAME": _display(from_name, "from_name"), "TO_NAME": _display(to_name, "to_name")}
    kind: PortKind = "tcp" if transport == "tcp" else "udp"
    use_port = port if port is not None else free_port(ip, kind)
    run_name = _unique_name(workdir, name or f"caller-{ip}-{behaviour.replace(':', '_')}")
    args = ["-m", str(n), "-r", f"{rate:g}", "-rp", "1000", "-s", service,
            "-recv_timeout", str(recv_timeout_ms)]
    if max_concurrent is not None:
        args += ["-l", str(max_concurrent)]
    args.append(f"{target_ip}:{target_port}")
    proc, files = _launch_sipp(workdir=workdir, name=run_name, template=template, values=fill, ip=ip,
                               port=use_port, transport=transport, extra_args=args)
    if timeout is None:
        timeout = n / rate + (call_duration_ms + cancel_after_ms + 3 * recv_timeout_ms) / 1000 + 10
    return CallerProcess(proc, method="OPTIONS" if behaviour == "options" else "INVITE", default_timeout=timeout,
                         name=run_name, ip=ip, port=use_port, transport=transport, files=files, workdir=workdir)


def _display(name: str, what: str) -> str:
    """A display name as a scenario writes it before ``<uri>``: quoted, with a blank after it."""
    if not name:
        return ""
    if any(ch in name for ch in '"\\\r\n'):
        raise ValueError(f"{what}: {name!r}: no quotes, backslashes or line breaks")
    return f'"{name}" '


def run_calls(target_ip: str, target_port: int, *, ip: str, workdir: Path, timeout: float | None = None,
              **kwargs: Any) -> CallResult:
    """`start_calls` and wait for the result (same arguments)."""
    return start_calls(target_ip, target_port, ip=ip, workdir=workdir, timeout=timeout, **kwargs).wait()


@dataclass(frozen=True)
class Caller:
    """A calling party bound to one address and workdir: ``caller.run_calls(gw.ip, gw.port, n=3)``."""

    ip: str
    workdir: Path

    def run_calls(self, target_ip: str, target_port: int, **kwargs: Any) -> CallResult:
        """`run_calls` from this caller's address."""
        return run_calls(target_ip, target_port, ip=self.ip, workdir=self.workdir, **kwargs)

    def start_calls(self, target_ip: str, target_port: int, **kwargs: Any) -> CallerProcess:
        """`start_calls` from this caller's address."""
        return start_calls(target_ip, target_port, ip=self.ip, workdir=self.workdir, **kwargs)


def closed_by_peer(s: socket.socket) -> bool:
    """Whether the other end closed ``s`` (plain or TLS): what it sent before is read and put
    aside, then EOF, a reset or (TLS) a failed record; False while it is open with nothing to
    read. Non-blocking reads."""
    tls = isinstance(s, ssl.SSLSocket)
    if tls:
        s.setblocking(False)  # an SSLSocket takes no recv flags
    try:
        while s.recv(65536) if tls else s.recv(65536, socket.MSG_DONTWAIT):
            pass
        return True  # EOF
    except (BlockingIOError, TimeoutError, ssl.SSLWantReadError):  # nothing to read: still open
        return False
    except (ConnectionResetError, ssl.SSLError):
        return True


def check_idle_connections_closed(silent: Sequence[socket.socket], talking: socket.socket, b2b_ip: str,
                                  request_uri: str, what: str) -> None:
    """The B2BUA's rule for idle TCP/TLS connections: an OPTIONS on ``talking`` is answered 200,
    then every ``silent`` connection is closed by the B2BUA (within 30 s; ``what`` names them)
    while ``talking`` stays open. Every connection is closed afterwards."""
    src, port = talking.getsockname()[:2]
    via = "TLS" if isinstance(talking, ssl.SSLSocket) else "TCP"
    try:
        talking.sendall((f"OPTIONS {request_uri} SIP/2.0\r\n"
                         f"Via: SIP/2.0/{via} {src}:{port};branch=z9hG4bK-talking\r\n"
                         f"From: <sip:peer@{src}>;tag=1\r\nTo: <sip:{b2b_ip}>\r\nCall-ID: talking@{src}\r\n"
                         "CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode())
        assert talking.recv(4096).startswith(b"SIP/2.0 200 "), "the talking connection's OPTIONS is answered"
        wait_until(lambda: all(closed_by_peer(s) for s in silent), timeout=30, what=what)
        assert not closed_by_peer(talking), "a connection that sent a SIP message stays open"
    finally:
        for s in (*silent, talking):
            s.close()


def wait_until(predicate: Callable[[], bool], timeout: float, *, interval: float = 0.05,
               what: str = "condition") -> None:
    """Poll ``predicate`` until it is true; HarnessError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise HarnessError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------------------------------
# The B2BUA under test


class B2buaRpcError(HarnessError):
    """``b2bua rpc`` exited non-zero."""

    def __init__(self, method: str, returncode: int, stdout: str, stderr: str) -> None:
        super().__init__(f"b2bua rpc {method} exited {returncode}\nstdout: {stdout.strip()}\n"
                         f"stderr: {stderr.strip()}")
        self.method = method
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


class B2buaProcess:
    """The B2BUA under test as a subprocess in its own workdir. Start it with `B2buaProcess.start`.

    The config is ``workdir/config.toml``; stdout and stderr go to ``workdir/b2bua.log`` (appended, so a
    restart in the same workdir keeps the earlier run's log).
    """

    def __init__(self, workdir: Path, *, module: str = "b2bua", python: str = sys.executable,
                 env: Mapping[str, str] | None = None) -> None:
        self.workdir = workdir
        self.module = module
        self.python = python
        self.config_path = workdir / "config.toml"
        self.log_path = workdir / "b2bua.log"
        self._env = _child_env(env)
        self._log_offset = 0  # where the current run's log starts
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def start(cls, workdir: Path, config_text: str, *, ready_timeout: float = 30.0, module: str = "b2bua",
              env: Mapping[str, str] | None = None, args: Sequence[str] = ()) -> B2buaProcess:
        """Write the config, run ``python -m <module> run -c config.toml [args]`` and wait for readiness.

        Ready means the log shows ``b2bua ready``; HarnessError with the log's tail if the process
        exits first or ``ready_timeout`` passes (the process is killed then).
        """
        b2b = cls(workdir, module=module, env=env)
        b2b.config_path.write_text(config_text)
        b2b.launch(args)
        b2b.wait_for_log(READY_MARKER, ready_timeout)
        return b2b

    def launch(self, args: Sequence[str] = ()) -> None:
        """Start the process without waiting for readiness (most tests want `start`)."""
        if self.proc is not None and self.proc.poll() is None:
            raise HarnessError(f"b2bua in {self.workdir} is already running (pid {self.proc.pid})")
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        cmd = [self.python, "-m", self.module, "run", "-c", self.config_path.name, *args]
        with self.log_path.open("ab") as log:
            log.write(f"### harness: {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(cmd, cwd=self.workdir, env=self._env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        logger.debug("b2bua started (pid {}) in {}", self.proc.pid, self.workdir)

    def _require_proc(self) -> subprocess.Popen[bytes]:
        if self.proc is None:
            raise HarnessError("b2bua was never started")
        return self.proc

    @property
    def pid(self) -> int:
        """The process id."""
        return self._require_proc().pid

    @property
    def returncode(self) -> int | None:
        """The exit code once exited, else None."""
        return self._require_proc().poll()

    def log_text(self) -> str:
        """The whole log so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the log, for failure messages."""
        return f"--- {self.log_path}\n{_tail(self.log_path, lines)}"

    def wait_for_log(self, fragment: str, timeout: float = 10.0) -> None:
        """Wait until the current run's log contains ``fragment``; HarnessError if it exits or time runs out."""
        proc = self._require_proc()
        deadline = time.monotonic() + timeout
        while True:
            if fragment in self.log_text()[self._log_offset:]:
                return
            rc = proc.poll()
            if rc is not None:
                raise HarnessError(f"b2bua exited with {rc} before logging {fragment!r}\n{self.log_tail()}")
            if time.monotonic() >= deadline:
                self.stop(timeout=5.0)
                raise HarnessError(f"b2bua did not log {fragment!r} within {timeout}s (stopped it)\n"
                                   f"{self.log_tail()}")
            time.sleep(0.05)

    def cli(self, *args: str, timeout: float = 30.0, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``python -m <module> <args>`` in the workdir (so ``config.toml`` is the default config)."""
        return subprocess.run([self.python, "-m", self.module, *args], cwd=self.workdir, env=self._env,
                              input=input, capture_output=True, text=True, timeout=timeout, check=False)

    def rpc(self, method: str, *params: Any, timeout: float = 30.0) -> Any:
        """``b2bua rpc --json -c config.toml <method> <params>``, parsed.

        Strings go as they are, anything else as JSON (``5``, ``true``, ``{"a": 1}``). Raises
        `B2buaRpcError` on a non-zero exit and HarnessError if stdout is not JSON.
        """
        argv = [p if isinstance(p, str) else json.dumps(p) for p in params]
        done = self.cli("rpc", "--json", "-c", self.config_path.name, method, *argv, timeout=timeout)
        if done.returncode != 0:
            raise B2buaRpcError(method, done.returncode, done.stdout, done.stderr)
        try:
            return json.loads(done.stdout)
        except json.JSONDecodeError as exc:
            raise HarnessError(f"b2bua rpc {method}: stdout is not JSON ({exc}): {done.stdout!r}") from None

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the process (if it still runs)."""
        proc = self._require_proc()
        if proc.poll() is None:
            proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL; returns the exit code (negative: signal)."""
        proc = self._require_proc()
        if proc.poll() is None:
            proc.terminate()
            if _wait_exit(proc, timeout) is None:
                logger.warning("b2bua (pid {}) ignored SIGTERM for {}s: SIGKILL", proc.pid, timeout)
                proc.kill()
        return proc.wait(10.0)

    def __enter__(self) -> B2buaProcess:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc is not None:
            self.stop()


def _child_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    # The repo first on the path, so `-m b2bua` runs this tree even without an editable install.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"  # log lines reach b2bua.log as they happen
    env.update(extra or {})
    return env
