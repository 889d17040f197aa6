"""What the dispatcher shares with the other nodes of a cluster, behind one small interface.

The dispatcher's :class:`~plugins.dispatcher.runtime.DispatcherState` stays the one state calls
are routed on, on the loop thread, with no I/O on the way. A :class:`SharedState` mirrors what
changes there out to the other nodes and applies what they changed, never blocking:

* **operator states** (``set_state``, ``set_duid_state``; a ``d`` kept like the state file),
* **health**: every flags or latency change (keepalive results, failover marks),
* **call load** per destination (algorithm 10 and ``maxload`` count every node's calls),
* **keepalives**: :meth:`SharedState.probes` says whether this node probes an entry (one
  prober per entry in the cluster),
* **membership and reachability**: shown by :meth:`SharedState.status` and in listings.

:class:`LocalState` is the default: nothing is shared, every node probes everything; that is
a B2BUA without ``[cluster]``, exactly as before. The Redis implementation is
:class:`plugins.dispatcher.redisstate.RedisState`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from plugins.dispatcher.model import Destination
from plugins.dispatcher.runtime import DestKey, DispatcherState


class AdminSink(Protocol):
    """Where operator disables are kept on this node (:class:`~plugins.dispatcher.adminstate.AdminState`)."""

    disabled: dict[DestKey, str]

    def note_remote(self, key: DestKey, uri: str, disabled: bool) -> None: ...

    def replace(self, disabled: dict[DestKey, str]) -> None: ...


class SharedState(Protocol):
    """Runtime state shared across the nodes of a cluster (loop thread only; never blocks)."""

    #: ``"local"`` or the engine's name, for listings
    kind: str

    def attach(self, state: DispatcherState, admin: AdminSink) -> None:
        """Follow ``state`` (its observer) and keep operator disables in ``admin``; before start-up loads."""

    def startup(self) -> None:
        """Start-up, after the first load, before any call: take what the cluster knows (operator
        states, health, other nodes' loads). May wait on the network: no call is in progress."""

    def stop(self) -> None:
        """Shutdown: this node's loads stop counting for the others."""

    def after_load(self) -> None:
        """A reload installed new runtime records: apply the cluster's state to them again."""

    def operator_changed(self, dests: Sequence[Destination], disabled: bool) -> None:
        """An operator set ``dests``' state here (``disabled``: to D, kept across restarts)."""

    def probes(self, key: DestKey) -> bool:
        """Whether this node sends the keepalives of entry ``key`` (called for every entry each round)."""

    def describe(self, key: DestKey) -> dict[str, Any] | None:
        """The ``CLUSTER`` block of an entry in ``dispatcher.list`` (None: no such block)."""

    def status(self) -> dict[str, Any]:
        """What ``cluster.status`` shows about the dispatcher's sharing."""


class LocalState:
    """Nothing is shared: every node keeps its own state and probes every entry (no ``[cluster]``)."""

    kind = "local"

    def attach(self, state: DispatcherState, admin: AdminSink) -> None:
        return None

    def startup(self) -> None:
        return None

    def stop(self) -> None:
        return None

    def after_load(self) -> None:
        return None

    def operator_changed(self, dests: Sequence[Destination], disabled: bool) -> None:
        return None

    def probes(self, key: DestKey) -> bool:
        return True

    def describe(self, key: DestKey) -> dict[str, Any] | None:
        return None

    def status(self) -> dict[str, Any]:
        return {"SHARED": "local"}
