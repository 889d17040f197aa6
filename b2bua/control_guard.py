"""What the control API's listeners let in: request checks, the connection table, the refusal log.

Pure policies with no sockets, so that each can be tested alone; :mod:`b2bua.control` applies
them. The threats (``docs/security.md``, "Control plane"):

* a web page open in a browser on the host posting to a token-less loopback API (CSRF):
  refused by :func:`content_type_refusal` (a browser sends ``application/json`` cross-origin
  only after a CORS preflight, which the API never grants) and :func:`origin_refusal`;
* the same page after DNS rebinding (its name now resolves to 127.0.0.1, so the browser
  thinks it is same-origin): refused by :func:`host_refusal`;
* connections that send a byte now and then to hold every slot (slowloris): the deadlines of
  :class:`HttpLimits` bound each request's time, and :class:`ConnectionTable` gives a newcomer
  the place of the oldest connection that is only waiting for input;
* a flood of refused requests turning into a flood of log lines: :class:`RefusalLog`;
* a request without the token a route needs: :func:`access_refusal` (the access levels of
  :class:`b2bua.control_routes.Access`: public health checks, read-only data, administration).
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from loguru import logger

from b2bua.control_routes import Access
from b2bua.sipuri import is_ip_literal

#: media types a JSON-RPC request may carry; none of them is one a browser may send
#: cross-origin without asking first (``text/plain``, forms)
JSON_TYPES = ("application/json", "application/json-rpc")
#: a DNS name as it may appear in a Host header (lower case by then)
_HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")


@dataclass(frozen=True)
class HttpLimits:
    """How much one HTTP control client may take. Defaults suit a local admin API."""

    #: connections open at once; at the cap a newcomer replaces the oldest waiting connection
    max_connections: int = 64
    #: connections open at once from one address (every local client shares 127.0.0.1)
    max_per_source: int = 16
    #: seconds from the connection (or the previous answer) to the end of the request head
    head_timeout: float = 10.0
    #: seconds to receive a request's body once its head is in
    body_timeout: float = 20.0
    #: seconds to hand an answer to the client (it may be reading slowly on purpose)
    write_timeout: float = 20.0
    #: largest request head (request line and headers)
    max_head_bytes: int = 16 * 1024
    #: refusals logged one by one per log_interval; the rest are summed up once per interval
    log_burst: int = 10
    log_interval: float = 10.0


# -- request checks: each returns None (fine) or why the request is refused ----------------------


def source_of(address: object) -> str:
    """The client's address as a key for per-source limits: IPv4-mapped IPv6 as IPv4;
    ``local`` for a unix-socket peer."""
    if not isinstance(address, tuple) or not address:
        return "local"
    host = str(address[0])
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


def _host_name(host_header: str) -> str | None:
    """The host part of a ``Host`` header value, lower case; None when it is malformed."""
    parts = urllib.parse.urlsplit(f"//{host_header.strip()}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return None
    name = parts.hostname
    if parts.username is not None or parts.path or parts.query or parts.fragment or not name:
        return None
    return name if is_ip_literal(name) or _HOST_NAME.fullmatch(name) else None


def host_refusal(host_headers: list[str], *, token: bool) -> str | None:
    """Why a request's ``Host`` is refused, if it is.

    Without a token the API must be reached by an IP address or ``localhost``: after DNS
    rebinding a browser sends the attacker's name, which no local client uses. A token makes
    any name safe (the attacker's page does not know it). No Host at all is fine: browsers
    always send one, simple tools may not.
    """
    if len(host_headers) > 1:
        return "more than one Host header"
    if not host_headers:
        return None
    name = _host_name(host_headers[0])
    if name is None:
        return f"malformed Host {host_headers[0]!r}"
    if token or is_ip_literal(name) or name == "localhost" or name.endswith(".localhost"):
        return None
    return f"Host {host_headers[0]!r} is a name: without a token, use an IP address or localhost"


def origin_refusal(origin: str | None, host_header: str | None) -> str | None:
    """Why a request's ``Origin`` is refused, if it is.

    No Origin (curl, scripts, ``b2bua rpc``) is fine. A browser sends one with every POST; the
    API serves no pages, so only its own origin (the same host and port as ``Host``) is let
    through, and ``null`` (sandboxed frames, files) never.
    """
    if origin is None:
        return None
    parts = urllib.parse.urlsplit(origin.strip())
    if parts.scheme in ("http", "https") and host_header is not None and parts.netloc:
        default = "443" if parts.scheme == "https" else "80"
        if _with_port(parts.netloc, default) == _with_port(host_header.strip(), default):
            return None
    return f"cross-origin request (Origin {origin!r})"


def _with_port(netloc: str, default: str) -> str:
    netloc = netloc.lower()
    host, sep, port = netloc.rpartition(":")
    if sep and port.isdigit() and not host.endswith(":"):  # not the inside of a bare IPv6 address
        return netloc
    return f"{netloc}:{default}"


def content_type_refusal(content_type: str | None) -> str | None:
    """Why a POST's ``Content-Type`` is refused, if it is: it must be ``application/json``
    (parameters such as ``charset`` allowed) or ``application/json-rpc``."""
    if content_type is None:
        return "no Content-Type: send 'Content-Type: application/json'"
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type in JSON_TYPES:
        return None
    return f"Content-Type {content_type!r} is not application/json"


def access_refusal(access: Access, authorization: str | None, token: str, read_token: str = "") -> str | None:
    """Why a request with ``authorization`` (its ``Authorization`` header) may not use a route
    of level ``access``, if it may not.

    PUBLIC: anyone. ADMIN: ``Bearer <token>`` when a token is set. READ: ``Bearer <token>`` or
    ``Bearer <read_token>`` when either is set. With no token configured (the listener is then
    on loopback only) every level is open. Every configured token is compared in constant
    time, whatever the scheme, so the time taken says nothing about either.
    """
    if access is Access.PUBLIC:
        return None
    accepted = [t for t in ((token,) if access is Access.ADMIN else (token, read_token)) if t]
    if not accepted:
        return None
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    given = credentials.strip().encode("utf-8", "surrogateescape")
    matched = False
    for candidate in accepted:
        matched |= hmac.compare_digest(given, candidate.encode("utf-8"))
    if matched and scheme.lower() == "bearer":
        return None
    if not authorization:
        return "no token: send 'Authorization: Bearer <token>'"
    return "wrong token"


# -- connections ----------------------------------------------------------------------------------


@dataclass
class _Entry:
    source: str
    busy: bool
    idle_since: float


@dataclass(frozen=True)
class Admission:
    """What :meth:`ConnectionTable.admit` decided: whether the newcomer is in, and which open
    connections it displaced (their keys, sources and seconds spent waiting)."""

    admitted: bool
    evicted: tuple[tuple[Hashable, str, float], ...] = ()


class ConnectionTable:
    """The open connections of one listener, with a total cap and a per-source cap.

    A connection is *waiting* while it reads a request (or sits idle between requests) and
    *busy* while its request runs and its answer is sent. When a cap is reached, a newcomer
    takes the place of the connection that has waited longest (from the source with the most
    connections, when the total cap is the one reached); only when every candidate is busy is
    the newcomer refused. So connections that trickle bytes cannot lock anyone out: the next
    client displaces them. A request being run or answered is never cut; a client that just
    connected is displaced last (it has waited least). Thread-safe; keys are opaque (the
    listener uses the sockets).
    """

    def __init__(self, limit: int, per_source: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.per_source = per_source
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[Hashable, _Entry] = {}
        self._per_source: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entries

    def all_keys(self) -> list[Hashable]:
        """Every open connection's key."""
        with self._lock:
            return list(self._entries)

    def admit(self, key: Hashable, source: str) -> Admission:
        """Add connection ``key`` from ``source``, displacing a waiting one if a cap is reached.

        The caller closes the displaced connections.
        """
        with self._lock:
            now = self._clock()
            evicted: tuple[tuple[Hashable, str, float], ...] = ()
            source_full = self._per_source[source] >= self.per_source
            if source_full or len(self._entries) >= self.limit:
                # a source at its cap displaces only its own connections
                victim = self._longest_waiting(lambda e: not source_full or e.source == source)
                if victim is None:
                    return Admission(False)
                entry = self._pop(victim)
                evicted = ((victim, entry.source, now - entry.idle_since),)
            self._entries[key] = _Entry(source, False, now)
            self._per_source[source] += 1
            return Admission(True, evicted)

    def set_busy(self, key: Hashable, busy: bool) -> bool:
        """Mark connection ``key`` busy (a request runs) or waiting again.

        :return: False when the connection is no longer in the table (it was displaced): the
            caller must stop using it.
        """
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return False
            entry.busy = busy
            if not busy:
                entry.idle_since = self._clock()
            return True

    def remove(self, key: Hashable) -> None:
        """Forget connection ``key`` (closed); a no-op for one already displaced."""
        with self._lock:
            if key in self._entries:
                self._pop(key)

    def _pop(self, key: Hashable) -> _Entry:
        entry = self._entries.pop(key)
        self._per_source[entry.source] -= 1
        if not self._per_source[entry.source]:
            del self._per_source[entry.source]
        return entry

    def _longest_waiting(self, eligible: Callable[[_Entry], bool]) -> Hashable | None:
        # from the source holding the most connections first, then the one waiting longest
        best: tuple[int, float] | None = None
        found: Hashable | None = None
        for key, entry in self._entries.items():
            if entry.busy or not eligible(entry):
                continue
            rank = (self._per_source[entry.source], -entry.idle_since)
            if best is None or rank > best:
                best, found = rank, key
        return found


# -- logging --------------------------------------------------------------------------------------

#: distinct sources named in one summary line; the rest are counted together
_MAX_SOURCES = 20


class RefusalLog:
    """Logs each refusal with its source and reason, at most ``burst`` lines per ``interval``;
    the rest are counted and summed up in one line per interval (a flood of refused requests
    must not become a flood of log lines). An interval starts with the first refusal after a
    quiet one.

    ``kind`` groups refusals in the summary (``"origin"``, ``"slow request"``, ...); ``detail``
    says what exactly was wrong. :meth:`flush` writes a pending summary once its interval is
    over; the listener calls it between requests and at stop.
    """

    def __init__(self, listener: str, burst: int, interval: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.listener = listener
        self.burst = burst
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._window_start = clock()
        self._logged = 0
        self._held: Counter[str] = Counter()
        self._held_sources: Counter[str] = Counter()

    def refused(self, source: str, kind: str, detail: str) -> None:
        """One refusal: logged now, or counted for the next summary."""
        with self._lock:
            now = self._clock()
            if not self._logged and not self._held:
                self._window_start = now  # a quiet listener: the interval starts with this refusal
            elif now - self._window_start >= self.interval:
                self._summarise(now)
            if self._logged < self.burst:
                self._logged += 1
                logger.warning("{} {}: {}", self.listener, source, detail)
                return
            self._held[kind] += 1
            if source in self._held_sources or len(self._held_sources) < _MAX_SOURCES:
                self._held_sources[source] += 1
            else:
                self._held_sources["others"] += 1

    def flush(self, force: bool = False) -> None:
        """Write the summary of held-back refusals if the interval is over (or ``force``)."""
        with self._lock:
            now = self._clock()
            if force or now - self._window_start >= self.interval:
                self._summarise(now)

    def _summarise(self, now: float) -> None:
        held = sum(self._held.values())
        if held:
            kinds = ", ".join(f"{kind} x{count}" for kind, count in self._held.most_common())
            sources = ", ".join(f"{source} x{count}" for source, count in self._held_sources.most_common(5))
            logger.warning("{}: {} more refusals in the last {:.0f}s not logged one by one ({}; from {})",
                           self.listener, held, now - self._window_start, kinds, sources)
        self._window_start = now
        self._logged = 0
        self._held.clear()
        self._held_sources.clear()
