"""``[plugins.dispatcher]`` and its ``[[plugins.dispatcher.routes]]`` rules.

Settings keep Kamailio's module parameter names without ``ds_`` (``ping_interval``,
``probing_threshold``, ``use_default``, ...), so a Kamailio configuration translates line
by line. Example::

    [plugins.dispatcher]
    list_file = "dispatcher.list"     # or db_url = "mysql+pymysql://..."
    ping_interval = 10
    probing_mode = 1

    [[plugins.dispatcher.routes]]     # first matching rule wins
    ruri_user_prefix = "49"
    set = 1
    algorithm = "weight"              # or 9

    [[plugins.dispatcher.routes]]     # no match fields: every other call
    set = 2
    algorithm = "round-robin"
    limit = 2

    [[plugins.dispatcher.routes]]     # Kamailio: ds_select_routes("3=4;4=8", "d")
    header = "X-Carrier"
    set = 3
    algorithm = 4
    backup_sets = "4=8"               # set 4 by priority when set 3 has nothing usable or all fail

With no ``routes`` at all, every call goes to set 1 with round robin (algorithm 4), the
most common single-set Kamailio setup (``ds_select_dst("1", "4")``).

Exactly one source of destinations is used: ``list_file`` when it is set (relative to the
config file), otherwise ``db_url``. (Kamailio prefers ``db_url`` when both are set; here the
explicit file wins, since ``db_url`` has a default.)

``hash_size`` keeps Kamailio's name: ``> 0`` enables algorithm 10. The B2BUA sees every leg
of its calls, so call load needs no Call-ID hash table and nothing is sized by it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from b2bua.config import ConfigError, Listen, opt, parse_section
from b2bua.sip import request_method_problem
from plugins.dispatcher.algorithms import TEMPLATE_FIELDS, resolve_algorithm, template_names
from plugins.dispatcher.attrs import check_message_uri
from plugins.dispatcher.selection import PARALLEL, Policy

if TYPE_CHECKING:
    from b2bua.api import Outbound

SECTION = "plugins.dispatcher"
ROUTES_KEY = "routes"

_TOKEN = re.compile(r"[A-Z][A-Z0-9_-]*")
_REPLY_CODE_ITEM = re.compile(r"(code|class)=([0-9]+)")


@dataclass(frozen=True)
class Route:
    """One ``[[plugins.dispatcher.routes]]`` rule: match fields (all given must match), then
    the set, algorithm and ``limit`` to use. A rule without match fields matches every call.
    """

    method: str = opt("", "request method to match, e.g. INVITE (case-insensitive); empty: any")
    ruri_user_prefix: str = opt("", "the Request-URI user starts with this; empty: any")
    ruri_regex: str = opt("", "Python regex searched in the whole Request-URI; empty: any")
    source: tuple[str, ...] = opt([], "source addresses/networks (CIDR) the call must come from; empty: any")
    header: str = opt("", "header that must be present (name, case-insensitive)")
    header_regex: str = opt("", "Python regex searched in that header's values")
    header_value: str = opt("", "exact value of that header (after trimming)")
    set: int = opt(1, "destination set id")
    algorithm: int | str = opt(4, "Kamailio algorithm number or name (e.g. 4 or 'round-robin')")
    limit: int = opt(0, "most destinations tried, first one included, backup sets included; 0: all")
    backup_sets: str = opt(
        "", "sets tried after 'set', in order, as Kamailio's ds_select_routes rules: 'SET=ALGORITHM;...'"
        " (e.g. '2=8;3=round-robin'); each is used when those before it have no usable destination, and"
        " failover goes on through them"
    )

    def validate(self) -> None:
        """Check every field; the message starts with the field name."""
        try:
            resolve_algorithm(self.algorithm)
        except ValueError as exc:
            raise ValueError(f"algorithm: {exc}") from None
        backups = parse_backup_sets(self.backup_sets)  # ValueError starts with "backup_sets:"
        for setid, _ in backups:
            if setid == self.set:
                raise ValueError(f"backup_sets: set {setid} is the rule's own set")
        if backups and PARALLEL in (self.alg, *(alg for _, alg in backups)):
            raise ValueError("backup_sets: algorithm 12 (parallel) forks to every destination at once, so it"
                             " cannot be followed or preceded by backup sets")
        if self.set < 0:
            raise ValueError(f"set: {self.set} is negative (set ids are 0 or more)")
        if self.limit < 0:
            raise ValueError(f"limit: {self.limit} is negative (0 means no limit)")
        if self.method and not _TOKEN.fullmatch(self.method.upper()):
            raise ValueError(f"method: {self.method!r} is not a SIP method name")
        for name in ("ruri_regex", "header_regex"):
            pattern = getattr(self, name)
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{name}: {pattern!r} is not a valid regular expression: {exc}") from None
        for i, net in enumerate(self.source):
            try:
                ipaddress.ip_network(net.strip(), strict=False)
            except ValueError:
                raise ValueError(f"source[{i}]: {net!r} is not an IP address or network (e.g. 10.0.0.0/24)") from None
        if (self.header_regex or self.header_value) and not self.header:
            raise ValueError("header_regex/header_value need header (the header name)")
        if self.header_regex and self.header_value:
            raise ValueError("give header_regex or header_value, not both")
        if self.header and not _TOKEN.fullmatch(self.header.upper()):
            raise ValueError(f"header: {self.header!r} is not a header name")

    # Derived values; cached_property works on frozen dataclasses (it writes __dict__).

    @cached_property
    def alg(self) -> int:
        """The algorithm as Kamailio's number."""
        return resolve_algorithm(self.algorithm)

    @cached_property
    def backups(self) -> tuple[tuple[int, int], ...]:
        """``backup_sets`` as ``(set, algorithm number)`` pairs, in order."""
        return parse_backup_sets(self.backup_sets)

    @property
    def sets_text(self) -> str:
        """The sets tried, as Kamailio writes them: ``1=4;2=8``."""
        return ";".join(f"{setid}={alg}" for setid, alg in self.sets)

    @cached_property
    def sets(self) -> tuple[tuple[int, int], ...]:
        """Every ``(set, algorithm)`` the rule tries, its own first (Kamailio's ds_select_routes)."""
        return ((self.set, self.alg), *self.backups)

    @cached_property
    def ruri_pattern(self) -> re.Pattern[str] | None:
        return re.compile(self.ruri_regex) if self.ruri_regex else None

    @cached_property
    def header_pattern(self) -> re.Pattern[str] | None:
        return re.compile(self.header_regex) if self.header_regex else None

    @cached_property
    def networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(n.strip(), strict=False) for n in self.source)


def parse_backup_sets(text: str) -> tuple[tuple[int, int], ...]:
    """Kamailio's ``ds_select_routes`` rules, ``"2=8;3=round-robin"``: ``(set, algorithm)`` pairs.

    :raises ValueError: starting with ``backup_sets:``, naming the item and why.
    """
    out: list[tuple[int, int]] = []
    for item in (part.strip() for part in text.split(";")):
        if not item:
            continue
        setid, sep, alg = (x.strip() for x in item.partition("="))
        if not sep or not setid or not alg:
            raise ValueError(f"backup_sets: {item!r}: expected SET=ALGORITHM, e.g. 2=8 or 2=priority")
        if not setid.isdigit():
            raise ValueError(f"backup_sets: {item!r}: the set id {setid!r} is not a number (0 or more)")
        try:
            number = resolve_algorithm(alg)
        except ValueError as exc:
            raise ValueError(f"backup_sets: {item!r}: {exc}") from None
        if any(int(setid) == seen for seen, _ in out):
            raise ValueError(f"backup_sets: set {int(setid)} is listed twice")
        out.append((int(setid), number))
    return tuple(out)


#: the rule used when the config has none: set 1, round robin
DEFAULT_ROUTE = Route()


@dataclass(frozen=True)
class SendDefaults:
    """``[plugins.dispatcher]``'s listeners for destinations whose attributes name none
    (:attr:`DispatcherConfig.send_defaults`; used by :mod:`plugins.dispatcher.outbound`)."""

    socket: str = ""  #: ``default_socket``
    sockname: str = ""  #: ``default_sockname`` (wins over ``socket``)
    ping_socket: str = ""  #: ``ping_socket``: keepalives only, before the two above

    def describe(self, outbound: Outbound) -> str:
        """Which setting gave ``outbound`` its listener, for messages."""
        if outbound.sockname:
            return "[plugins.dispatcher] default_sockname"
        return "[plugins.dispatcher] " + ("ping_socket" if outbound.socket == self.ping_socket else "default_socket")


#: no defaults: pjsip picks the listener of a destination whose attributes name none
NO_DEFAULTS = SendDefaults()


@dataclass(frozen=True)
class DispatcherConfig:
    """``[plugins.dispatcher]``: Kamailio dispatcher module parameters without ``ds_``."""

    # -- where destinations come from: exactly one source is used
    list_file: str = opt("", "Kamailio dispatcher.list file; when set it is used and db_url is ignored")
    db_url: str = opt(
        "sqlite:///dispatcher.db", "SQLAlchemy URL of the dispatcher table (used when list_file is empty)"
    )
    table_name: str = opt("dispatcher", "table with the destinations (Kamailio's v4 layout)")
    setid_col: str = opt("setid", "set id column")
    destination_col: str = opt("destination", "destination URI column")
    flags_col: str = opt("flags", "flags column")
    priority_col: str = opt("priority", "priority column")
    attrs_col: str = opt("attrs", "attributes column")
    description_col: str = opt("description", "description column")
    keep_state_on_reload: bool = opt(
        True, "a reload keeps the runtime state (flags, probe counters, latency) of entries that survive"
    )
    state_file: str = opt(
        "dispatcher-state.json",
        "JSON file (relative to the config) keeping the entries an operator disabled with set_state d"
        " across reloads and restarts; empty: off",
    )
    allow_empty: bool = opt(
        False, "a list file without destinations loads (every call gets no_destination_code); off: it is"
        " an error and the current destinations stay"
    )
    dns_skip_unresolvable: bool = opt(False, "skip entries whose host does not resolve instead of failing the load")
    dns_failover: bool = opt(
        True, "a destination whose name leads to several servers (SRV targets, A/AAAA addresses) is tried"
        " server by server: a 503 or a timeout moves the call to the next server of the name (RFC 3263),"
        " then to the next destination; off: pjsip picks one server per call"
    )
    dns_interval: float = opt(
        0.0, "seconds between re-resolving host names besides when their records expire (TTL, 5 s at the"
        " least; a name that stops resolving keeps its answer); 0: by TTL only", bounds=(0, None)
    )

    # -- selection
    flags: int = opt(0, "bit 1: URI hashes (algs 1-3) use the user part only (failover lists: always)",
                     bounds=(0, None))
    use_default: bool = opt(False, "the last entry of each set is a last resort, never selected normally")
    hash_size: int = opt(
        0, "> 0 enables algorithm 10 (call load); kept from Kamailio for compatibility, no table is sized",
        bounds=(0, None)
    )
    hash_template: str = opt("", "algorithm 7 hashes this, e.g. '{from_user}@{call_id}' (fields of the call)")
    rehash: bool = opt(False, "hash algorithms spread a dead destination's share over all survivors, not one neighbour")

    # -- answer when nothing can be dialled
    no_destination_code: int = opt(503, "answer when no rule matches or no destination is usable", bounds=(300, 699))
    no_destination_reason: str = opt("No Destination Available", "reason phrase of that answer")
    retry_after: int = opt(5, "Retry-After seconds on that answer; 0: no header", bounds=(0, 86400))

    # -- probing (OPTIONS keepalives)
    ping_interval: float = opt(10.0, "seconds between keepalive rounds; 0: no probing", bounds=(0, None))
    ping_method: str = opt("OPTIONS", "keepalive request method (not ACK: an ACK exists only for an INVITE's answer)")
    ping_from: str = opt("sip:dispatcher@localhost", "From URI of keepalives (attribute ping_from overrides)")
    ping_timeout: float = opt(2.0, "seconds to wait for a keepalive answer (then a local 408)")
    probing_threshold: int = opt(1, "failed keepalives before an entry goes inactive (I); T before that",
                                 bounds=(1, None))
    inactive_threshold: int = opt(1, "successful keepalives before an inactive entry is active again",
                                  bounds=(1, None))
    probing_mode: int = opt(1, "0: probe P entries until one answer; 1: probe all; 2: only I+P; 3: only P",
                            bounds=(0, 3))
    ping_reply_codes: str = opt("", "extra codes counting as alive, 'code=403;class=4'; empty: only 2xx")
    ping_latency_stats: bool = opt(False, "keep latency statistics from keepalives (needed by algorithm 13)")
    latency_estimator_alpha: int = opt(100, "per mille weight of a new latency sample in EST (Kamailio 6.1 meaning)",
                                       bounds=(1, 999))
    ping_active: bool = opt(True, "send keepalives at start (dispatcher.ping_active toggles it at runtime)")

    # -- where requests leave from, for destinations whose attributes name no listener
    default_socket: str = opt(
        "", "listener ('udp:10.0.0.5:5060', one of [sip] listen) B legs and keepalives leave from when the"
        " destination has no socket or sockname attribute; empty: pjsip picks one of the transport's"
    )
    default_sockname: str = opt("", "the same by a name in [sip] socket_names; wins over default_socket")
    ping_socket: str = opt(
        "", "listener keepalives leave from when the destination has no ping_socket, sockname or socket"
        " attribute; wins over the defaults above (Kamailio 6.1's ds_ping_socket)"
    )

    routes: tuple[Route, ...] = field(default=(), metadata={"help": "[[plugins.dispatcher.routes]] rules"})

    def validate(self) -> None:
        """Cross-field checks; routes are checked by :func:`parse_dispatcher_config`."""
        if not self.list_file and not self.db_url:
            raise ValueError("list_file or db_url: one source of destinations is needed")
        if self.hash_template:
            try:
                names = template_names(self.hash_template)
            except ValueError as exc:
                raise ValueError(f"hash_template: {exc}") from None
            unknown = sorted(set(names) - TEMPLATE_FIELDS)
            if unknown:
                known = ", ".join(sorted(TEMPLATE_FIELDS))
                raise ValueError(f"hash_template: unknown field {{{unknown[0]}}} (known: {known})")
        if self.ping_timeout <= 0:
            raise ValueError("ping_timeout: must be > 0")
        if not _TOKEN.fullmatch(self.ping_method):
            raise ValueError(f"ping_method: {self.ping_method!r} is not an upper-case SIP method")
        problem = request_method_problem(self.ping_method)
        if problem:
            raise ValueError(f"ping_method: {problem}")
        check_message_uri("ping_from", self.ping_from)
        check_reply_codes(self.ping_reply_codes)
        for name in ("default_socket", "ping_socket"):  # whether it is a listener: at load, with [sip]
            value = getattr(self, name)
            if value:
                try:
                    Listen.parse(value)
                except ValueError as exc:
                    raise ValueError(f"{name}: {exc}") from None

    @cached_property
    def send_defaults(self) -> SendDefaults:
        """The listeners of destinations whose attributes name none (``default_socket``,
        ``default_sockname``, ``ping_socket``)."""
        return SendDefaults(self.default_socket, self.default_sockname, self.ping_socket)

    @property
    def user_only_hash(self) -> bool:
        """``flags`` bit 1: URI hashes use the user part only."""
        return bool(self.flags & 1)

    def selection_policy(self) -> Policy:
        """The settings :func:`plugins.dispatcher.selection.select` needs."""
        return Policy(
            use_default=self.use_default,
            user_only=self.user_only_hash,
            hash_template=self.hash_template,
            rehash=self.rehash,
        )

    @property
    def effective_routes(self) -> tuple[Route, ...]:
        """The rules, or the implicit set-1 round-robin rule when none is configured."""
        return self.routes or (DEFAULT_ROUTE,)


def resolve_sqlite_url(url: str, base_dir: Path) -> str:
    """A relative SQLite path (``sqlite:///dispatcher.db``) is relative to the config's folder."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        return prefix + str(base_dir / url[len(prefix):])
    return url


def check_reply_codes(text: str) -> None:
    """Validate Kamailio's ``ds_ping_reply_codes`` syntax: ``code=NNN`` / ``class=N``, ``;``-separated."""
    for item in filter(None, (x.strip() for x in text.split(";"))):
        m = _REPLY_CODE_ITEM.fullmatch(item.replace(" ", ""))
        if not m:
            raise ValueError(f"ping_reply_codes: {item!r}: expected code=NNN or class=N")
        kind, number = m.group(1), int(m.group(2))
        if kind == "code" and not 100 <= number <= 699:
            raise ValueError(f"ping_reply_codes: {item!r}: code must be 100-699")
        if kind == "class" and not 1 <= number <= 6:
            raise ValueError(f"ping_reply_codes: {item!r}: class must be 1-6")


def parse_dispatcher_config(data: Mapping[str, Any], path: str = "<config>") -> DispatcherConfig:
    """Build :class:`DispatcherConfig` from the ``[plugins.dispatcher]`` table.

    :param data: the table (``config.plugin_section("dispatcher")``), routes included.
    :param path: the config file, for messages such as
        ``config.toml: [[plugins.dispatcher.routes]][2] algorithm: unknown algorithm 'fast' ...``
        (rule indexes count from 0, in file order).
    :raises ConfigError: unknown key, wrong type or bad value, naming where.
    """
    where = f"{path}: [{SECTION}]"
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a table, got {data!r}")
    body = {k: v for k, v in data.items() if k != ROUTES_KEY}
    raw_routes = data.get(ROUTES_KEY, [])
    if not isinstance(raw_routes, list):
        raise ConfigError(f"{where} {ROUTES_KEY}: write rules as [[{SECTION}.{ROUTES_KEY}]] tables")
    # every rule's problems and the section's at once, so an operator fixes them in one round
    errors: list[str] = []
    parsed: list[Route] = []
    for i, r in enumerate(raw_routes):
        try:
            parsed.append(parse_section(Route, r, f"{path}: [[{SECTION}.{ROUTES_KEY}]][{i}]"))
        except ConfigError as exc:
            errors.extend(exc.errors)
    try:
        cfg = parse_section(DispatcherConfig, body, where)
    except ConfigError as exc:
        errors.extend(exc.errors)
    if errors:
        raise ConfigError(*errors)
    routes = tuple(parsed)
    for i, r in enumerate(routes):
        rwhere = f"{path}: [[{SECTION}.{ROUTES_KEY}]][{i}]"
        for n, (_, alg) in enumerate(r.sets):
            field_name = "algorithm" if n == 0 else "backup_sets"
            if alg == 10 and cfg.hash_size <= 0:
                raise ConfigError(f"{rwhere} {field_name}: 10 (call-load) needs hash_size > 0 in [{SECTION}]")
            if alg == 7 and not cfg.hash_template:
                raise ConfigError(f"{rwhere} {field_name}: 7 (hash-template) needs hash_template in [{SECTION}]")
    if not routes:
        return cfg
    return dataclasses.replace(cfg, routes=routes)
