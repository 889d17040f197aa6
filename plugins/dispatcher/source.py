"""Where the destinations come from: the configured list file or database.

:func:`load_configured` reads it in one blocking call (start-up, before calls arrive; the
``dispatcher simulate`` command). A reload goes through a :class:`Source` instead, as a loop
task: :class:`ConfiguredSource` has a child process do the parsing and resolving
(:mod:`~plugins.dispatcher.childload`), :class:`LoaderSource` runs a loader function of the
plugin's user (tests, embedding) on a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

from b2bua.loop import Task, wait_for
from plugins.dispatcher.childload import ChildLoad, LoadRequest, snapshot_steps
from plugins.dispatcher.config import DispatcherConfig
from plugins.dispatcher.model import Snapshot
from plugins.dispatcher.sqlstore import TableNames
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


def table_names(config: DispatcherConfig) -> TableNames:
    """The table and column names ``[plugins.dispatcher]`` sets (Kamailio's ``*_col`` params)."""
    return TableNames(
        table=config.table_name,
        setid=config.setid_col,
        destination=config.destination_col,
        flags=config.flags_col,
        priority=config.priority_col,
        attrs=config.attrs_col,
        description=config.description_col,
    )


def load_configured(config: DispatcherConfig, list_file: Path | None, resolve: bool = True) -> Snapshot:
    """Read the configured source: ``list_file`` when set, else ``db_url`` (blocking).

    :param resolve: resolve host names (off for a simulation, which needs no addresses).
    """
    return load_snapshot(
        list_file=list_file,
        db_url=None if list_file is not None else config.db_url,
        table=table_names(config),
        resolve=resolve,
        skip_unresolvable=config.dns_skip_unresolvable,
    )


def resolve_sqlite_url(url: str, base_dir: Path) -> str:
    """A relative SQLite path (``sqlite:///dispatcher.db``) is relative to the config's folder."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        return prefix + str(base_dir / url[len(prefix):])
    return url


class ConfiguredSource:
    """The configured list file or database, loaded in a child process; what
    :func:`load_configured` would return."""

    def __init__(self, config: DispatcherConfig, list_file: Path | None) -> None:
        names = table_names(config)
        self.request = LoadRequest(
            list_file=str(list_file) if list_file is not None else None,
            db_url=None if list_file is not None else (config.db_url or None),
            table={name: getattr(names, name) for name in names.__dataclass_fields__},
            skip_unresolvable=config.dns_skip_unresolvable,
        )
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
