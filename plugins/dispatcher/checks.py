"""Checks of loaded destinations that Kamailio does not make, and what they report.

* An **empty list file** is an error unless ``allow_empty = true``: a truncated write or a
  wrong path would otherwise take every gateway out of service on the next reload. An empty
  *table* only warns (Kamailio's "no dispatching data in the db"): a new SQLite table starts
  empty and is filled with ``b2bua dispatcher add``.
* The **same URI twice in a set** is loaded twice, as Kamailio does (it then gets two shares of
  round robin and of the hashes), with a warning naming both places: here the two entries share
  one state, and the intent is usually a typo or a ``weight``.
* **Weights that do not add up**: algorithm 9 builds its 100-slot table only when the first
  entry (in Kamailio's array order) has a ``weight``; entries without one get no calls, the last
  entry gets what the weights leave of 100, and slots past 100 are dropped. A set where only
  some entries have a weight, or a weight route over a set without any, is reported with the
  shares that result. ``rweight`` (algorithm 11) is checked the same way.

:func:`review` is pure (tests, ``simulate``); :func:`check_loaded` is what a load runs: it
raises for an error and logs the warnings; :func:`check_config_destinations` is ``b2bua check-config``'s.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from loguru import logger

from b2bua.config import ConfigError, SipConfig
from plugins.dispatcher.algorithms import TABLE_SIZE, weight_table
from plugins.dispatcher.config import DispatcherConfig, Route
from plugins.dispatcher.model import Destination, Snapshot
from plugins.dispatcher.outbound import check_outbound
from plugins.dispatcher.resolve import LoadError
from plugins.dispatcher.routes import unloaded_sets
from plugins.dispatcher.safetext import escape

WEIGHT = 9
RELATIVE_WEIGHT = 11


class EmptySource(LoadError):
    """A list file without a single destination, and ``allow_empty`` is off."""


def check_not_empty(snapshot: Snapshot, list_file: Path | None, allow_empty: bool) -> None:
    """Raise :class:`EmptySource` for a list file without destinations (unless allowed)."""
    if list_file is not None and not snapshot.sets and not allow_empty:
        raise EmptySource(
            f"{list_file}: no destinations (only blank or comment lines): refusing to remove every gateway;"
            " set allow_empty = true in [plugins.dispatcher] if that is what you want"
        )


def duplicate_warnings(snapshot: Snapshot, list_file: Path | None) -> list[str]:
    """One message per URI listed more than once in a set, naming where (line or row id)."""
    out = []
    for setid, dset in sorted(snapshot.sets.items()):
        seen: dict[str, list[Destination]] = {}
        for d in dset.destinations:
            seen.setdefault(d.key[1], []).append(d)
        for same in seen.values():
            if len(same) < 2:
                continue
            unit = "line" if list_file is not None else "row id"
            same.sort(key=lambda d: d.row_id)
            places = ", ".join(f"{unit} {d.row_id}" for d in same)
            out.append(
                f"set {setid}: {same[0].uri} is listed {len(same)} times ({places}); loaded {len(same)} times as"
                " Kamailio does (that many shares of round robin and hashes, one shared state): remove one,"
                " or use weight= for an uneven split"
            )
    return out


def _shares(counts: Counter[int], dests: Sequence[Destination]) -> str:
    return ", ".join(f"{d.uri} {100 * counts[i] // TABLE_SIZE} %" for i, d in enumerate(dests))


def weight_warnings(snapshot: Snapshot, routes: Sequence[Route] = ()) -> list[str]:
    """What algorithm 9 (and 11) would do with sets whose weights are missing or do not add up.

    ``routes``: the configured rules; a weight rule over a set without any weight is reported.
    Sets are checked whether or not a rule uses weights (a rule can be added later).
    """
    out = []
    weighted_sets = {r.set for r in routes if r.alg == WEIGHT}
    relative_sets = {r.set for r in routes if r.alg == RELATIVE_WEIGHT}
    for setid, dset in sorted(snapshot.sets.items()):
        dests = dset.destinations
        if len(dests) < 2:
            continue
        weights = [d.attrs.weight for d in dests]
        missing = [d.uri for d in dests if not d.attrs.weight]
        if any(weights) and missing:
            counts = Counter(weight_table(dests, random.Random(0)))
            out.append(
                f"set {setid}: weighted, but {', '.join(missing)} {'has' if len(missing) == 1 else 'have'} no"
                f" weight; algorithm 9 would send {_shares(counts, dests)}"
            )
        elif any(weights) and sum(weights) != TABLE_SIZE:
            counts = Counter(weight_table(dests, random.Random(0)))
            out.append(
                f"set {setid}: weights add up to {sum(weights)}, not 100; algorithm 9 would send"
                f" {_shares(counts, dests)}"
            )
        elif not any(weights) and setid in weighted_sets:
            out.append(
                f"set {setid}: a rule uses algorithm 9 (weight) but no entry has a weight: every call goes to"
                f" {dests[0].uri}"
            )
        rweights = [d.attrs.rweight for d in dests]
        missing_r = [d.uri for d in dests if not d.attrs.rweight]
        if any(rweights) and missing_r:
            out.append(
                f"set {setid}: relative-weighted, but {', '.join(missing_r)}"
                f" {'has' if len(missing_r) == 1 else 'have'} no rweight: algorithm 11 gives"
                f" {'it' if len(missing_r) == 1 else 'them'} no calls"
            )
        elif not any(rweights) and setid in relative_sets:
            out.append(
                f"set {setid}: a rule uses algorithm 11 (relative-weight) but no entry has an rweight: every"
                f" call goes to {dests[0].uri}"
            )
    return out


def review(snapshot: Snapshot, config: DispatcherConfig, list_file: Path | None) -> list[str]:
    """Every warning about ``snapshot``; raises :class:`EmptySource` for an empty list file."""
    check_not_empty(snapshot, list_file, config.allow_empty)
    warnings = []
    if not snapshot.sets:
        warnings.append(f"{snapshot.source}: no destinations: every call gets {config.no_destination_code}")
    return warnings + duplicate_warnings(snapshot, list_file) + weight_warnings(snapshot, config.effective_routes)


def check_loaded(snapshot: Snapshot, config: DispatcherConfig, list_file: Path | None) -> Snapshot:
    """Run :func:`review` on a fresh load and log its warnings; returns ``snapshot``.

    :raises EmptySource: an empty list file, unless ``allow_empty``.
    """
    for message in review(snapshot, config, list_file):
        logger.warning("dispatcher: {}", message)
    return snapshot


def check_sources(config: DispatcherConfig, list_file: Path | None, sip: SipConfig | None = None,
                  routes_where: str = "[[plugins.dispatcher.routes]]") -> list[str]:
    """For ``b2bua check-config``: read the destinations as a load would, but without DNS and
    without writing (a missing SQLite file is not created), and :func:`review` them.

    :param sip: the host's ``[sip]``, to check the socket, proxy and credential attributes
        (:func:`~plugins.dispatcher.outbound.check_outbound`).
    :param routes_where: the rules' place in the config, for messages.
    :raises LoadError: the list file cannot be loaded (every bad line named) or is empty, the
        database URL cannot work (it does not parse, or its driver is not installed), rows
        of the table are malformed, attributes name what the host does not have, or a rule's
        backup set has no destinations (start-up refuses that too:
        :func:`plugins.dispatcher.routes.unloaded_sets`).
    :returns: the warnings, including a database that cannot be reached (it may be up later).
    """
    from plugins.dispatcher.sqlstore import BadRowsError, SqlStore, StoreError, TableNames, UnusableUrl
    from plugins.dispatcher.storage import load_snapshot

    if list_file is not None:
        snapshot = load_snapshot(list_file=list_file, db_url=None, resolve=False)
    else:
        try:
            with SqlStore(config.db_url, TableNames.from_config(config), read_only=True) as store:
                snapshot = load_snapshot(list_file=None, db_url=config.db_url, resolve=False, create_schema=False,
                                         store=store)
        except (BadRowsError, UnusableUrl):  # b2bua run would stop too, whatever the server does
            raise
        except StoreError as exc:
            return [f"destinations not checked: {escape(str(exc), backslash=False)}"]
    if sip is not None:
        check_outbound(snapshot, sip, rows=list_file is None, defaults=config.send_defaults)
    backups, own = unloaded_sets(config.routes, snapshot.sets, routes_where)
    if backups:
        raise LoadError("; ".join(backups))
    return review(snapshot, config, list_file) + own


def check_config_destinations(config: DispatcherConfig, list_file: Path | None, sip: SipConfig | None = None,
                              routes_where: str = "[[plugins.dispatcher.routes]]") -> None:
    """:func:`check_sources` for ``b2bua check-config``: warnings logged, errors as ConfigError."""
    try:
        warnings = check_sources(config, list_file, sip, routes_where)
    except LoadError as exc:
        raise ConfigError(str(exc)) from None
    for message in warnings:
        logger.warning("dispatcher: {}", message)
