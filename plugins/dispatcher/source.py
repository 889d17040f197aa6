"""Where the destinations come from: the configured list file or database.

:func:`load_configured` reads it in one blocking call (start-up, before calls arrive; the
``dispatcher simulate`` command; a reload's child process). A reload goes through a
:class:`Source` instead, as a loop task: :class:`~plugins.dispatcher.childload.ConfiguredSource`
has a child process run :func:`load_configured`, :class:`LoaderSource` runs a loader function
of the plugin's user (tests, embedding) on a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

from b2bua.config import SipConfig
from b2bua.loop import Task, wait_for
from b2bua.nameservers import Nameserver
from plugins.dispatcher.checks import check_loaded
from plugins.dispatcher.config import DispatcherConfig
from plugins.dispatcher.dnslookup import make_lookup
from plugins.dispatcher.model import Snapshot
from plugins.dispatcher.outbound import check_outbound
from plugins.dispatcher.storage import load_snapshot

#: a function that loads the destinations (blocking); the default reads the configured source
Loader = Callable[[DispatcherConfig, "Path | None"], Snapshot]
#: the host's ``run_blocking`` (without ``on_done``)
RunBlocking = Callable[[Callable[[], Any]], "Future[Any]"]


class Source(Protocol):
    """Loads the destinations for a reload."""

    def load_steps(self, run_blocking: RunBlocking) -> Task[Snapshot]:
        """A loop task that returns the new snapshot; waits happen in ``run_blocking``.

        :raises LoadError: (or any error) the load failed; the message says where and why.
        """
        ...

    def stop(self) -> None:
        """Abandon a load under way (shutdown)."""
        ...


def load_configured(config: DispatcherConfig, list_file: Path | None, resolve: bool = True,
                    sip: SipConfig | None = None, nameservers: Sequence[Nameserver] = (),
                    create: bool = True) -> Snapshot:
    """Read the configured source: ``list_file`` when set, else ``db_url`` (blocking).

    :param resolve: resolve host names (off for a simulation, which needs no addresses).
    :param sip: the host's ``[sip]``: destinations whose socket, proxy or credential attributes
        it cannot honour fail the load (:func:`~plugins.dispatcher.outbound.check_outbound`).
    :param nameservers: the DNS servers pjsip asks (``[sip] nameservers``); host names are
        looked up through them as pjsip will (SRV first); none: the system resolver.
    :param create: an SQLite database or table that is missing is created (start-up: first
        use). A reload passes False: a file or table gone since start-up fails the reload, and
        the destinations in use stay, instead of an empty new table taking every one away.
    """
    table = None
    store = None
    if list_file is None:
        # SQLAlchemy takes half a second to import: a list file's reload (a fresh process) skips it
        from plugins.dispatcher.sqlstore import SqlStore, TableNames

        table = TableNames.from_config(config)
        if not create:
            store = SqlStore(config.db_url, table, read_only=True)  # opens nothing it would create
    try:
        snapshot = load_snapshot(
            list_file=list_file,
            db_url=None if list_file is not None else config.db_url,
            table=table,
            resolve=resolve,
            skip_unresolvable=config.dns_skip_unresolvable,
            create_schema=create,
            store=store,
            host_lookup=make_lookup(nameservers) if resolve else None,
        )
    finally:
        if store is not None:
            store.close()
    if sip is not None:
        check_outbound(snapshot, sip, rows=list_file is None, defaults=config.send_defaults)
    return check_loaded(snapshot, config, list_file)  # empty list file, duplicates, weights


class LoaderSource:
    """A loader function (tests, embedding); it runs on a worker thread, so one that computes
    a lot competes with the loop for the GIL."""

    def __init__(self, loader: Loader, config: DispatcherConfig, list_file: Path | None) -> None:
        self._loader = loader
        self._config = config
        self._list_file = list_file

    def load_steps(self, run_blocking: RunBlocking) -> Task[Snapshot]:
        snapshot: Snapshot = yield from wait_for(run_blocking(lambda: self._loader(self._config, self._list_file)))
        return snapshot

    def stop(self) -> None:
        pass
