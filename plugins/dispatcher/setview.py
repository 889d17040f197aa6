"""What selection reads about one set: :class:`SetView` (entries and their state) and
:class:`Cursors` (the set's rotating positions).

Both are plain data. The runtime keeps one view per set and rebuilds it only when a
destination's state flags or latency change, so the per-call work of selection does not include
gathering the set; call loads (algorithm 10) change with every call and
are added per call with :meth:`SetView.with_loads`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from plugins.dispatcher.model import UNUSABLE, Destination


class Cursors(NamedTuple):  # a tuple: immutable, and built in half a frozen dataclass's time
    """A set's rotating positions (Kamailio ``ds_set_t.last``, ``wlast``, ``rwlast``)."""

    rr: int = 0  #: next round-robin index (algs 4, 5 without credentials, 13)
    weight: int = 0  #: next slot of the weight table (alg 9)
    rweight: int = 0  #: next slot of the relative-weight table (alg 11)


#: a new set's cursors
INITIAL_CURSORS = Cursors()


# slots, not frozen: a frozen dataclass builds in three times the time, and algorithms 10 and
# 13 build one per call (treat it as read-only all the same)
@dataclass(slots=True)
class SetView:
    """One set as selection sees it: entries in array order and their runtime state.

    :param flags: runtime state flags, parallel to ``dests``.
    :param loads: active calls per entry (alg 10); empty: all 0.
    :param latencies: latency statistics (``.est``, ``.avg`` in ms) or None per entry (alg 13);
        empty: all unknown.
    :param weight_table: alg 9's slots; ``rweight_table``: alg 11's.
    :param usable: indexes of the usable entries (neither I nor D), ascending; derived from
        ``flags`` when empty (deriving it again gives the same answer).
    :param scores: alg 13's adjusted priorities, computed from ``latencies`` by the algorithm on
        first use and kept with the view.
    """

    dests: tuple[Destination, ...]
    flags: tuple[int, ...]
    loads: tuple[int, ...] = ()
    latencies: tuple[Any, ...] = ()
    weight_table: tuple[int, ...] = ()
    rweight_table: tuple[int, ...] = ()
    usable: tuple[int, ...] = ()
    scores: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.dests)
        if len(self.flags) != n:
            raise ValueError(f"SetView: {len(self.flags)} flags for {n} destinations")
        if self.loads and len(self.loads) != n:
            raise ValueError(f"SetView: {len(self.loads)} loads for {n} destinations")
        if self.latencies and len(self.latencies) != n:
            raise ValueError(f"SetView: {len(self.latencies)} latencies for {n} destinations")
        if not self.usable:
            self.usable = tuple([i for i, f in enumerate(self.flags) if not f & UNUSABLE])

    def with_loads(self, loads: tuple[int, ...]) -> SetView:
        """This view with the given call loads (everything else shared)."""
        return SetView(self.dests, self.flags, loads, self.latencies, self.weight_table, self.rweight_table,
                       self.usable, self.scores)
