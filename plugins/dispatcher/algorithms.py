"""Kamailio's selection algorithms as small pure functions in a registry keyed by number.

Each algorithm looks at one set (an :class:`AlgInput`: the entries in Kamailio's array
order, their runtime flags, loads, latencies, the set's cursors and tables, the call) and
returns a :class:`Pick`: a *start* value that :mod:`plugins.dispatcher.selection` reduces
modulo the set size and walks past unusable entries (Kamailio's ``ds_manage_routes``), or,
for parallel (12) and latency (13), a complete *order*. Nothing here reads a clock, a
global or does I/O; randomness comes in as ``AlgInput.rng``.

Numbers are Kamailio's, so a ``ds_select_dst(1, 4)`` translates to ``set = 1,
algorithm = 4``; names are accepted wherever a number is (``algorithm = "round-robin"``).
"""

from __future__ import annotations

import functools
import random
import re
import string
from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from b2bua.api import CallInfo
from b2bua.sipuri import parse_uri_lenient
from plugins.dispatcher.hashing import ds_get_hash, uri_hash_keys
from plugins.dispatcher.model import Destination, is_usable
from plugins.dispatcher.setview import Cursors, SetView

#: slots in the weight (9) and relative-weight (11) tables, as in Kamailio
TABLE_SIZE = 100
_ZEROS = (0,) * TABLE_SIZE  # the table of a set without weights


# AlgInput and Pick are made and dropped once per call: plain slotted dataclasses build in a
# third of a frozen one's time (treat them as read-only all the same).
@dataclass(slots=True)
class AlgInput:
    """Everything an algorithm may look at, for one set and one call.

    :param view: the set: entries in Kamailio's array order and their runtime state.
    :param candidates: how many leading entries take part in normal selection
        (``len(dests) - 1`` with ``use_default``: the last entry is the reserve).
    :param cursors: the set's rotating positions before this call.
    :param user_only: URI hashes use the user part only (``flags`` bit 1).
    :param hash_template: alg 7's template.
    :param rng: randomness for alg 6 (None: a fresh generator).
    """

    call: CallInfo
    view: SetView
    candidates: int
    cursors: Cursors
    user_only: bool = False
    hash_template: str = ""
    rng: random.Random | None = None


@dataclass(slots=True)
class Pick:
    """An algorithm's answer.

    :param start: value to take modulo the candidate count, then skip unusable entries
        from; None means "no destination" (e.g. an empty hash template, no load slot).
    :param order: a complete order of indexes (algs 12, 13): used as is, no skip loop.
    :param cursors: the set's cursors after this pick.
    :param round_robin: the round-robin cursor moves to just after the *used* entry
        (Kamailio's ``ulast``), so a skipped dead entry does not cause a double pick.
    :param effective: the algorithm that actually ran, when it differs (alg 10 on a
        non-INVITE acts as 0 and has no load semantics; alg 5 without credentials is 4).
    """

    start: int | None = None
    order: tuple[int, ...] | None = None
    cursors: Cursors | None = None
    round_robin: bool = False
    effective: int | None = None


AlgorithmFn = Callable[[AlgInput], Pick]


@dataclass(frozen=True)
class Algorithm:
    """A registry entry: Kamailio's number, a readable name, the function."""

    number: int
    name: str
    pick: AlgorithmFn
    summary: str
    #: the start value is a hash or random number, so ``rehash`` may spread it over survivors
    hashed: bool = False


# -- hash algorithms ---------------------------------------------------------------------------


def hash_callid(inp: AlgInput) -> Pick:
    """0: ``ds_get_hash(trim(Call-ID))``."""
    return Pick(start=ds_get_hash(inp.call.call_id.strip().encode()))


def _hash_uri(uri: str, user_only: bool) -> int:
    return ds_get_hash(*uri_hash_keys(uri, user_only))


def hash_from(inp: AlgInput) -> Pick:
    """1: hash of the From URI's user and ``host[:port]`` (user only with ``flags`` bit 1)."""
    return Pick(start=_hash_uri(inp.call.from_uri, inp.user_only))


def hash_to(inp: AlgInput) -> Pick:
    """2: hash of the To URI, like 1."""
    return Pick(start=_hash_uri(inp.call.to_uri, inp.user_only))


def hash_ruri(inp: AlgInput) -> Pick:
    """3: hash of the Request-URI, like 1."""
    return Pick(start=_hash_uri(inp.call.request_uri, inp.user_only))


def auth_username(headers: Mapping[str, Sequence[str]]) -> str | None:
    """The user part of the digest ``username`` of Proxy-Authorization, else Authorization.

    ``username="bob@example.com"`` gives ``bob`` (Kamailio hashes ``username.user``).
    None when there are no credentials.
    """
    for name in ("proxy-authorization", "authorization"):
        for value in headers.get(name, ()):
            scheme, _, params = value.strip().partition(" ")
            if scheme.lower() != "digest":
                continue
            for item in _split_params(params):
                key, sep, val = item.partition("=")
                if sep and key.strip().lower() == "username":
                    username = val.strip().strip('"').strip()
                    return username.split("@", 1)[0].strip()
    return None


_PARAM = re.compile(r'(?:[^,"]|"[^"]*")+')


def _split_params(text: str) -> list[str]:
    """Split ``a="x, y", b=z`` at commas outside quotes."""
    return _PARAM.findall(text)


def hash_auth_user(inp: AlgInput) -> Pick:
    """5: hash of the digest username; without credentials Kamailio falls back to round robin."""
    user = auth_username(inp.call.headers)
    if user is None:
        pick = round_robin(inp)
        pick.effective = 4
        return pick
    return Pick(start=ds_get_hash(user.encode()))


_URI_OF = {"from": "from_uri", "to": "to_uri", "ruri": "request_uri"}
#: template fields that are CallInfo attributes of the same name
_PLAIN_FIELDS = frozenset({"call_id", "request_uri", "from_uri", "to_uri", "from_header", "to_header",
                           "source_ip", "source_port", "source", "transport", "method"})


def _field(call: CallInfo, name: str) -> str:
    """One template field of ``call``, computed on its own (a template names one or two, and
    the URI pieces cost a parse each)."""
    if name in _PLAIN_FIELDS:
        return str(getattr(call, name))
    prefix, _, part = name.rpartition("_")
    if prefix not in _URI_OF or part not in ("user", "host"):
        raise KeyError(name)
    parts = parse_uri_lenient(getattr(call, _URI_OF[prefix]))
    return parts.user if part == "user" else parts.host_ref  # an IPv6 host in brackets, as Kamailio


#: the names a hash template may use (for config validation and docs)
TEMPLATE_FIELDS: frozenset[str] = _PLAIN_FIELDS | {f"{p}_{part}" for p in _URI_OF for part in ("user", "host")}


def template_fields(call: CallInfo) -> dict[str, str]:
    """Every value a ``hash_template`` may use: CallInfo's text fields plus URI pieces."""
    return {name: _field(call, name) for name in sorted(TEMPLATE_FIELDS)}


def template_names(template: str) -> list[str]:
    """The field names used in ``template``; raises ValueError on a malformed template."""
    names = []
    for _, name, spec, conv in string.Formatter().parse(template):
        if name is None:
            continue
        if not name or not name.isidentifier():
            raise ValueError(f"{{{name}}}: use a field name, e.g. {{call_id}}")
        if spec or conv:
            raise ValueError(f"{{{name}}}: format specs and conversions are not supported")
        names.append(name)
    return names


@functools.lru_cache(maxsize=32)
def _compiled(template: str) -> tuple[tuple[str, str | None], ...]:
    """``(literal, field name or None)`` pairs; specs and conversions were refused at config time."""
    return tuple((literal, name) for literal, name, _spec, _conv in string.Formatter().parse(template))


def render_template(template: str, call: CallInfo) -> str:
    """``hash_template`` filled in from the call (the template was validated at config time)."""
    return "".join(literal if name is None else literal + _field(call, name) for literal, name in _compiled(template))


def hash_template(inp: AlgInput) -> Pick:
    """7: hash of ``hash_template`` (Kamailio ``hash_pvar``), trimmed; empty means no destination."""
    if not inp.hash_template:
        return Pick(start=None)
    text = render_template(inp.hash_template, inp.call).strip()
    if not text:
        return Pick(start=None)
    return Pick(start=ds_get_hash(text.encode()))


# -- rotating and random -----------------------------------------------------------------------


def round_robin(inp: AlgInput) -> Pick:
    """4: the set's cursor; afterwards it points just past the entry actually used."""
    nr = max(len(inp.view.dests), 1)
    cur = inp.cursors
    return Pick(start=cur.rr, cursors=Cursors((cur.rr + 1) % nr, cur.weight, cur.rweight), round_robin=True)


def random_pick(inp: AlgInput) -> Pick:
    """6: a random number (then modulo and the skip loop, as Kamailio's ``ksr_xrand()``)."""
    rng = inp.rng if inp.rng is not None else random.Random()
    return Pick(start=rng.getrandbits(31))


def priority(inp: AlgInput) -> Pick:
    """8: index 0, the highest priority; the failover list is the rest in array order."""
    return Pick(start=0)


# -- weights -----------------------------------------------------------------------------------


def weight_table(dests: Sequence[Destination], rng: random.Random) -> tuple[int, ...]:
    """Alg 9's 100-slot table, built once per load as Kamailio's ``dp_init_weights()``.

    Only when the first entry has a weight: each entry's index ``weight`` times in array
    order, stopping at 100; a shortfall goes to the *last* entry; then shuffled. Without a
    first weight the table is all zeros (index 0, then the skip loop).
    """
    if not dests or not 1 <= dests[0].attrs.weight <= 100:
        return (0,) * TABLE_SIZE
    table: list[int] = []
    for i, d in enumerate(dests):
        w = d.attrs.weight if 1 <= d.attrs.weight <= 100 else 0
        table.extend([i] * min(w, TABLE_SIZE - len(table)))
    table.extend([len(dests) - 1] * (TABLE_SIZE - len(table)))
    rng.shuffle(table)
    return tuple(table)


def relative_weight_table(dests: Sequence[Destination], flags: Sequence[int], rng: random.Random) -> tuple[int, ...]:
    """Alg 11's table over the *usable* entries, as Kamailio's ``dp_init_relative_weights()``.

    Slice = ``rweight * 100 // sum`` (truncated) per usable entry; the remainder goes to the
    last one inserted; shuffled. Rebuilt whenever an entry goes up or down, so a dead
    entry's share is split over the others in proportion (1/2/1 -> 25/50/25; third down ->
    33/67/0). No usable weight: all zeros (index 0, then the skip loop).
    """
    usable = [
        (i, d.attrs.rweight if 1 <= d.attrs.rweight <= 100 else 0) for i, d in enumerate(dests) if is_usable(flags[i])
    ]
    total = sum(w for _, w in usable)
    if len(dests) < 2 or total == 0:
        return (0,) * TABLE_SIZE
    table: list[int] = []
    for i, w in usable:
        table.extend([i] * (w * TABLE_SIZE // total))
    table.extend([table[-1] if table else len(dests) - 1] * (TABLE_SIZE - len(table)))
    rng.shuffle(table)
    return tuple(table)


def weight(inp: AlgInput) -> Pick:
    """9: the next slot of the static weight table."""
    cur = inp.cursors
    table = inp.view.weight_table or _ZEROS
    slot = cur.weight % len(table)
    return Pick(start=table[slot], cursors=Cursors(cur.rr, (slot + 1) % len(table), cur.rweight))


def relative_weight(inp: AlgInput) -> Pick:
    """11: the next slot of the relative-weight table."""
    cur = inp.cursors
    table = inp.view.rweight_table or _ZEROS
    slot = cur.rweight % len(table)
    return Pick(start=table[slot], cursors=Cursors(cur.rr, cur.weight, (slot + 1) % len(table)))


# -- load and latency --------------------------------------------------------------------------


def has_room(dest: Destination, load: int) -> bool:
    """Below ``maxload`` (0 = unlimited)."""
    return dest.attrs.maxload == 0 or load < dest.attrs.maxload


def call_load(inp: AlgInput) -> Pick:
    """10: the usable entry with the fewest active calls below its ``maxload`` (ties: lowest index).

    Only an INVITE starts a call; any other request takes index 0 like Kamailio. None when
    every usable entry is full. With ``use_default`` the reserve entry is not a candidate
    (Kamailio considers it and then folds its index onto entry 0).
    """
    if inp.call.method.upper() != "INVITE":
        return Pick(start=0, effective=0)
    view = inp.view
    dests, loads = view.dests, view.loads or (0,) * len(view.dests)
    best: int | None = None
    for i in view.usable:
        if i >= inp.candidates:
            break
        if has_room(dests[i], loads[i]) and (best is None or loads[i] < loads[best]):
            best = i
    return Pick(start=best)


def adjusted_priority(prio: int, latency_ms: int) -> int:
    """Alg 13's ``PRIORITY - LATENCY // PRIORITY`` (handicap only when latency > prio > 0; min 1).

    Doc examples: priority 30 with 21 ms -> 30, 91 ms -> 27, 201 ms -> 24.
    """
    handicap = latency_ms // prio if latency_ms > prio > 0 else 0
    adjusted = prio - handicap
    return 1 if adjusted < 1 and prio > 0 else adjusted


def latency_ms(dest: Destination, stats: Any) -> int:
    """The latency alg 13 weighs: ``int(EST)``, or ``int(EST - AVG)`` with ``cc=1``; 0 unknown."""
    if stats is None:
        return 0
    est = stats.est  # LatencyStats (plugins.dispatcher.latency): est and avg in ms
    if dest.attrs.cc:
        est -= stats.avg
    return int(est)  # C's double -> int truncates toward zero


def latency_order(inp: AlgInput) -> tuple[int, ...]:
    """Usable candidates by adjusted priority, highest first, walked from the RR cursor.

    Kamailio's ``ds_manage_route_algo13``: the stable sort keeps the rotation order among
    equal adjusted priorities, so equals share calls round-robin.
    """
    n = inp.candidates
    if n <= 0:
        return ()
    view = inp.view
    scores = view.scores
    if scores is None:  # once per view: it is rebuilt when a latency changes
        latencies = view.latencies or (None,) * len(view.dests)
        pairs = zip(view.dests, latencies, strict=True)
        scores = view.scores = tuple([adjusted_priority(d.priority, latency_ms(d, stats)) for d, stats in pairs])
    usable = view.usable
    usable = usable[: bisect_left(usable, n)]  # without the reserve entry
    at = bisect_left(usable, inp.cursors.rr % n)
    # sorting is stable, with reverse=True too: equals keep the rotation order
    return tuple(sorted(usable[at:] + usable[:at], key=scores.__getitem__, reverse=True))


def latency(inp: AlgInput) -> Pick:
    """13: latency-optimised order; the RR cursor moves past the chosen entry."""
    order = latency_order(inp)
    nr = max(len(inp.view.dests), 1)
    cur = inp.cursors
    cursors = Cursors((order[0] + 1) % nr, cur.weight, cur.rweight) if order else cur
    return Pick(order=order, cursors=cursors)


def parallel(inp: AlgInput) -> Pick:
    """12: every usable candidate in array order (beyond Kamailio: dead ones are not forked to)."""
    usable = inp.view.usable
    return Pick(order=usable[: bisect_left(usable, inp.candidates)])


# -- registry ----------------------------------------------------------------------------------

_ALGS = (
    Algorithm(0, "hash-callid", hash_callid, "hash of the Call-ID", hashed=True),
    Algorithm(1, "hash-from", hash_from, "hash of the From URI (user@host[:port])", hashed=True),
    Algorithm(2, "hash-to", hash_to, "hash of the To URI", hashed=True),
    Algorithm(3, "hash-ruri", hash_ruri, "hash of the Request-URI", hashed=True),
    Algorithm(4, "round-robin", round_robin, "next entry in turn"),
    Algorithm(5, "hash-auth-user", hash_auth_user, "hash of the digest user, else round robin", hashed=True),
    Algorithm(6, "random", random_pick, "uniformly random", hashed=True),
    Algorithm(7, "hash-template", hash_template, "hash of hash_template", hashed=True),
    Algorithm(8, "priority", priority, "highest priority first, the rest as failover (serial)"),
    Algorithm(9, "weight", weight, "static percentages from the weight attribute"),
    Algorithm(10, "call-load", call_load, "fewest active calls below maxload"),
    Algorithm(11, "relative-weight", relative_weight, "rweight shares over the usable entries"),
    Algorithm(12, "parallel", parallel, "fork to every usable entry at once"),
    Algorithm(13, "latency", latency, "priority lowered by the measured latency"),
)

#: Kamailio's algorithm numbers -> :class:`Algorithm` (read-only)
ALGORITHMS: Mapping[int, Algorithm] = MappingProxyType({a.number: a for a in _ALGS})
#: names (and a few Kamailio-doc synonyms) -> numbers
ALGORITHM_NAMES: Mapping[str, int] = MappingProxyType(
    {a.name: a.number for a in _ALGS} | {"serial": 8, "call-id": 0, "rr": 4, "weighted": 9, "load": 10}
)


def resolve_algorithm(value: int | str) -> int:
    """An algorithm number from a number, a digit string or a name (case-insensitive).

    :raises ValueError: unknown algorithm, with the list of known ones.
    """
    number: int | None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif value.strip().isdigit():
        number = int(value.strip())
    else:
        number = ALGORITHM_NAMES.get(value.strip().lower().replace("_", "-"))
    if number is None or number not in ALGORITHMS:
        known = ", ".join(f"{a.number} {a.name}" for a in _ALGS)
        raise ValueError(f"unknown algorithm {value!r} (known: {known})")
    return number


def algorithm_name(number: int) -> str:
    """``"4 round-robin"``-style label for logs and listings."""
    alg = ALGORITHMS.get(number)
    return f"{number} {alg.name}" if alg else str(number)
