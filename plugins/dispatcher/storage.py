"""Load the dispatcher's destinations into a :class:`~plugins.dispatcher.model.Snapshot`.

One entry point, :func:`load_snapshot`, for both sources (a Kamailio list file or an SQL
table). A load is all-or-nothing: any malformed line or row, unreachable database or
unresolvable host raises :class:`LoadError` and the caller keeps its previous snapshot
(Kamailio's ``ds_load_mode=1``). It blocks (file, database, DNS): run it off the loop thread.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import TYPE_CHECKING

from plugins.dispatcher.listfile import ListFileError, load_list_file
from plugins.dispatcher.model import Destination, Snapshot, build_snapshot
from plugins.dispatcher.resolve import LoadError, ResolveError, Resolver, resolve_destinations

if TYPE_CHECKING:
    from plugins.dispatcher.sqlstore import SqlStore, TableNames

__all__ = [
    "ListFileError",
    "LoadError",
    "ResolveError",
    "load_snapshot",
]


def load_snapshot(
    *,
    list_file: Path | None,
    db_url: str | None,
    table: TableNames | None = None,
    resolve: bool = True,
    skip_unresolvable: bool = False,
    create_schema: bool = True,
    store: SqlStore | None = None,
    resolver: Resolver = socket.getaddrinfo,
) -> Snapshot:
    """Read every destination from ``list_file`` or ``db_url`` (exactly one) and build a snapshot.

    :param table: table and column names for ``db_url``.
    :param resolve: resolve host names now (Kamailio's ``ds_dns_mode`` 1); entries flagged
        NODNS (16) are never resolved.
    :param skip_unresolvable: drop (with a warning) destinations whose host does not
        resolve instead of failing the load.
    :param create_schema: for an SQLite URL, create the table when missing (first use).
        Other databases are never changed.
    :param store: an existing store for ``db_url`` to reuse (its pooled connections);
        without one a store is made for this load and closed afterwards.
    :param resolver: ``getaddrinfo``-compatible function (tests inject one).
    :raises LoadError: with a message saying where (``path:line``, ``url row id N``) and why.
    """
    db_url = db_url or None  # an empty setting means "not set"
    if (list_file is None) == (db_url is None):
        raise LoadError("dispatcher: set exactly one of list_file and db_url")
    entries: list[Destination]
    if list_file is not None:
        path = Path(list_file)
        source = str(path)
        entries = load_list_file(path)

        def location(d: Destination) -> str:
            return f"{path}:{d.row_id}"
    else:
        assert db_url is not None
        # SQLAlchemy takes half a second to import: only a database load pays for it (a reload
        # runs in a fresh process, see childload.py)
        from plugins.dispatcher.sqlstore import SqlStore, TableNames

        own = store is None
        db = store if store is not None else SqlStore(db_url, table or TableNames())
        try:
            if create_schema and db.is_sqlite:
                db.ensure_schema()
            entries = db.load()
        finally:
            if own:
                db.close()
        source = f"{db.url} table {db.names.table}"

        def location(d: Destination) -> str:
            return f"{db.url}: table {db.names.table!r} row id {d.row_id}"

    if resolve:
        entries = resolve_destinations(
            entries, skip_unresolvable=skip_unresolvable, resolver=resolver, location=location
        )
    return build_snapshot(entries, source)
