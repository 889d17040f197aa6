"""The dispatcher's live state: the current snapshot plus what changes while calls flow.

:class:`DispatcherState` holds the loaded :class:`~plugins.dispatcher.model.Snapshot`
(immutable, swapped whole on reload) and, keyed by :attr:`Destination.key`, each
destination's runtime: state flags (starting from the configured ones), probe counter,
latency statistics and active calls. Per set it keeps the rotating cursors and the weight
tables of algorithms 9 and 11.

Everything runs on the loop thread, with no locks. A reload builds the next load's
:class:`Generation` as a loop task (:meth:`DispatcherState.prepare_steps`, a slice per loop
pass while calls flow) and swaps it in with :meth:`DispatcherState.install`, in time
independent of the list's size.
Up/down changes are reported to a listener ``listener(dest, old_flags, new_flags, reason)``
(the plugin turns that into the ``dispatcher_dst_state_changed`` hook); ``old_flags`` is None
for an entry reported for the first time (start-up, reload, add).
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Callable, Collection, Hashable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from b2bua.api import CallInfo
from b2bua.loop import Task, run_task_now
from plugins.dispatcher.algorithms import relative_weight_table, weight_table
from plugins.dispatcher.model import (
    DestFlags,
    Destination,
    DestinationSet,
    Snapshot,
    is_usable,
    kamailio_order,
    state_letters,
)
from plugins.dispatcher.selection import CALL_LOAD, Policy, Selection, select
from plugins.dispatcher.setview import INITIAL_CURSORS, Cursors, SetView

DestKey = tuple[int, str]
#: entries :meth:`DispatcherState.prepare_steps` handles per step (~1-2 ms)
PREPARE_STEP = 200
#: listener(dest, old_flags or None, new_flags, reason)
Listener = Callable[[Destination, "int | None", int, str], None]
#: what :attr:`DispatcherState.observer` is told changed about an entry (bits)
FLAGS_CHANGED, LATENCY_CHANGED, LOAD_CHANGED = 1, 2, 4
#: observer(key, what): every change of an entry's flags, latency or call load (a cluster shares them)
Observer = Callable[[DestKey, int], None]

#: configuration bits a state change keeps (Kamailio clears them too; we treat "no DNS" and
#: "no ping" as configuration, so ``set_state a`` does not start pinging a no-ping entry)
CONFIG_BITS = DestFlags.NODNS | DestFlags.NOPING

_RPC_STATES = {
    "a": DestFlags.NONE,
    "1": DestFlags.NONE,
    "i": DestFlags.INACTIVE,
    "0": DestFlags.INACTIVE,
    "d": DestFlags.DISABLED,
    "2": DestFlags.DISABLED,
    "t": DestFlags.TRYING,
    "3": DestFlags.TRYING,
}
_MARK_BITS = {"i": DestFlags.INACTIVE, "t": DestFlags.TRYING, "d": DestFlags.DISABLED, "p": DestFlags.PROBING}


def parse_state_letters(text: str) -> int:
    """RPC ``dispatcher.set_state`` state: ``a|i|t|d`` (or ``1|0|3|2``) plus optional ``p``.

    Returns the state bits (I/T/D/P). ``p`` is ignored after ``d``, as in Kamailio.

    :raises ValueError: anything else, e.g. ``"x"``, ``"ap2"``.
    """
    s = text.strip().lower()
    if not 1 <= len(s) <= 2 or s[0] not in _RPC_STATES or (len(s) == 2 and s[1] != "p"):
        raise ValueError(f"bad state {text!r}: expected a, i, t or d (or 1, 0, 3, 2), optionally followed by p")
    bits = _RPC_STATES[s[0]]
    if len(s) == 2 and bits != DestFlags.DISABLED:
        bits |= DestFlags.PROBING
    return int(bits)


def mark_state_bits(text: str) -> int:
    """``ds_mark_dst()`` letters (Kamailio 6.1, set directly): any of ``a i t d p``.

    ``a`` clears what came before it, ``i``/``t``/``d``/``p`` add bits; then, as the 6.1
    SET mode does, ``t`` becomes ``I`` at once (thresholds bypassed) and ``d`` wins over
    everything (``P`` dropped).

    :raises ValueError: an empty string or another letter.
    """
    s = text.strip().lower()
    if not s or any(ch not in "aitdp" for ch in s):
        raise ValueError(f"bad mark state {text!r}: expected letters from a, i, t, d, p")
    bits = DestFlags.NONE
    for ch in s:
        bits = DestFlags.NONE if ch == "a" else bits | _MARK_BITS[ch]
    if bits & DestFlags.DISABLED:
        return int(DestFlags.DISABLED)
    if bits & DestFlags.TRYING:
        bits = (bits & ~DestFlags.TRYING) | DestFlags.INACTIVE
    return int(bits)


@dataclass
class DestRuntime:
    """What changes about one destination while the B2BUA runs (loop thread only)."""

    flags: int  #: state bits, Kamailio's values (see :class:`DestFlags`)
    probe_count: int = 0  #: Kamailio's ``probing_count`` (failures or recoveries so far)
    latency: Any = None  #: latency statistics (``.est``, ``.avg`` ms) from latency.py, or None
    load: int = 0  #: active B legs to it (call load, algorithm 10)
    remote_load: int = 0  #: the other cluster nodes' B legs to it (0 without a cluster)


@dataclass
class SetRuntime:
    """Per-set rotation state and weight tables."""

    cursors: Cursors = INITIAL_CURSORS
    weight_table: tuple[int, ...] = ()
    rweight_table: tuple[int, ...] = ()
    #: the set's runtime records in array order (rebuilt with the set whenever ``_rt`` changes)
    rts: tuple[DestRuntime, ...] = ()
    #: what selection reads, kept between calls; None after a flag or latency change (rebuilt on use)
    view: SetView | None = None
    #: bumped after every flag or latency change, so a reload prepared meanwhile knows the
    #: view and tables it derived from these records are out of date
    version: int = 0


@dataclass(eq=False)
class Generation:
    """One load's destinations with their runtime records and per-set state.

    :meth:`DispatcherState.prepare_steps` builds it (in slices for a reload);
    :meth:`DispatcherState.install` makes it current and returns the one it replaced, which
    the caller announces (:meth:`DispatcherState.announce`) and then lets go of.
    """

    snapshot: Snapshot
    dests: dict[DestKey, Destination]
    rt: dict[DestKey, DestRuntime]
    sets: dict[int, SetRuntime]
    #: set id -> the previous generation's :attr:`SetRuntime.version` when this one read it
    basis: dict[int, int] = field(default_factory=dict)
    keep_state: bool = False

    def __len__(self) -> int:
        return len(self.dests)


@dataclass(frozen=True)
class ListingSource:
    """What ``dispatcher.list`` reads, taken in O(1) and rendered by a loop task over several passes.

    ``snapshot`` is immutable (a reload meanwhile does not change what is listed); ``runtime``
    is the live mapping of runtime records: each value is read as it is when its entry is
    rendered, and an entry removed since reads as None.
    """

    snapshot: Snapshot
    runtime: Mapping[DestKey, DestRuntime]


class DispatcherState:
    """The current snapshot and the runtime of its destinations.

    :param policy: selection settings (``use_default``, hash options, ``rehash``).
    :param rng: randomness for the weight-table shuffles and, by default, algorithm 6.
    :param listener: told about up/down changes, see the module docstring.
    :param latency_factory: makes a new destination's latency object (e.g. seeded from the
        ``latency`` attribute); None leaves it None until probing sets one.
    """

    def __init__(
        self,
        *,
        policy: Policy | None = None,
        rng: random.Random | None = None,
        listener: Listener | None = None,
        latency_factory: Callable[[Destination], Any] | None = None,
    ) -> None:
        self.policy = policy or Policy()
        self.listener = listener
        #: told about every flags/latency/load change (None: nobody is); see :data:`Observer`
        self.observer: Observer | None = None
        self._rng = rng or random.Random()
        self._latency_factory = latency_factory
        self._snapshot = Snapshot()
        self._dests: dict[DestKey, Destination] = {}
        self._rt: dict[DestKey, DestRuntime] = {}
        self._sets: dict[int, SetRuntime] = {}
        #: call key -> destination keys it holds a load slot on (the single source of truth)
        self._calls: dict[Hashable, set[DestKey]] = {}

    # -- reading ---------------------------------------------------------------------------

    @property
    def snapshot(self) -> Snapshot:
        """The snapshot in use."""
        return self._snapshot

    def size(self) -> int:
        """How many entries are loaded."""
        return len(self._dests)

    def has_set(self, setid: int) -> bool:
        return setid in self._snapshot.sets

    def destination(self, key: DestKey) -> Destination | None:
        """The loaded entry for ``key`` = ``(setid, uri.lower())``."""
        return self._dests.get(key)

    def find(self, setid: int, uri: str) -> Destination | None:
        """The entry of ``setid`` with this URI (case-insensitive, as the key)."""
        return self._dests.get((setid, uri.lower()))

    def runtime(self, key: DestKey) -> DestRuntime | None:
        """The mutable runtime record (probing code updates ``probe_count``; flags and latency
        change through :meth:`set_flags` and :meth:`set_latency`, which selection depends on)."""
        return self._rt.get(key)

    def flags(self, key: DestKey) -> int | None:
        rt = self._rt.get(key)
        return rt.flags if rt else None

    def destinations(self) -> Iterator[Destination]:
        """Every loaded entry, set by set in array order."""
        for dset in self._snapshot.sets.values():
            yield from dset.destinations

    # -- loading ---------------------------------------------------------------------------

    def swap(self, snapshot: Snapshot, keep_state: bool, reason: str = "reload",
             disabled: Collection[DestKey] = ()) -> None:
        """Make ``snapshot`` current at once and report every entry (start-up, tests).

        The same as :meth:`prepare`, :meth:`install` and a full :meth:`announce` in a row.
        """
        previous = self.install(self.prepare(snapshot, keep_state, disabled), reason)
        for _ in self.announce(previous, reason):
            pass

    def prepare(self, snapshot: Snapshot, keep_state: bool, disabled: Collection[DestKey] = ()) -> Generation:
        """:meth:`prepare_steps` in one go (start-up, tests)."""
        return run_task_now(self.prepare_steps(snapshot, keep_state, disabled))

    def prepare_steps(self, snapshot: Snapshot, keep_state: bool,
                      disabled: Collection[DestKey] = ()) -> Task[Generation]:
        """Build the generation for ``snapshot`` as a loop task (``app.run_task``): a step per
        :data:`PREPARE_STEP` entries and per set, while calls flow in between.

        With ``keep_state``, an entry that survives (same set and URI) keeps its runtime
        record itself (flags, probe counter, latency, load), so what probing or an operator
        changes until the swap carries over; unless its *configured* flags changed: then the
        new configuration wins, so disabling a row in the database and reloading takes effect.
        Without it every entry restarts from its configured flags (Kamailio's reload).
        Entries in ``disabled`` (an operator's state file) start in D. Cursors restart and
        weight tables are built; each set's view is built too, so the first call after the
        swap finds it ready. Entries must not be added or removed meanwhile (the reloader
        refuses that while a reload runs).
        """
        old_dests, old_rt, old_sets = self._dests, self._rt, self._sets
        # versions first: a flag changed after this point marks the set for a rebuild at install
        basis = {setid: srt.version for setid, srt in old_sets.items()} if keep_state else {}
        dests: dict[DestKey, Destination] = {}
        rts: dict[DestKey, DestRuntime] = {}
        sets: dict[int, SetRuntime] = {}
        for setid, dset in snapshot.sets.items():
            for n, d in enumerate(dset.destinations, 1):
                if n % PREPARE_STEP == 0:
                    yield None
                key = d.key
                if key in dests:
                    logger.warning("dispatcher: set {} lists {} twice; the first entry's state is shared", *key)
                dests[key] = d
                if key in rts:
                    continue
                prev, prev_rt = old_dests.get(key), old_rt.get(key)
                if keep_state and prev is not None and prev_rt is not None:
                    rt = prev_rt if prev.flags == d.flags else DestRuntime(d.flags, 0, prev_rt.latency)
                else:
                    rt = self._new_runtime(d)
                if key in disabled and rt is not prev_rt:
                    rt.flags = (rt.flags & CONFIG_BITS) | DestFlags.DISABLED
                rts[key] = rt
            srt = sets[setid] = self._build_set(dset, rts)
            srt.view = self._make_view(dset, srt)
            yield None
        return Generation(snapshot, dests, rts, sets, basis, keep_state)

    def install(self, generation: Generation, reason: str = "reload") -> Generation:
        """Make a prepared generation current (loop thread); returns the one it replaced.

        Costs O(active calls + sets whose state changed since :meth:`prepare` read them), not
        O(entries): the call loads of new records are recounted from the calls in progress.
        Nobody is told yet: :meth:`announce` does that.
        """
        previous = Generation(self._snapshot, self._dests, self._rt, self._sets)
        for setid, version in generation.basis.items():
            old, new = previous.sets.get(setid), generation.sets.get(setid)
            if old is not None and new is not None and old.version != version:
                # probing or an operator changed this set while the reload was prepared
                dset = generation.snapshot.sets[setid]
                new.rweight_table = relative_weight_table(dset.destinations, self._flags_of(dset, generation.rt),
                                                          self._rng)
                new.view = None
        self._snapshot, self._dests, self._rt, self._sets = (
            generation.snapshot, generation.dests, generation.rt, generation.sets)
        held = Counter(key for keys in self._calls.values() for key in keys)
        for key, count in held.items():
            rt = self._rt.get(key)
            if rt is not None and rt is not previous.rt.get(key):
                rt.load = count
        logger.info(
            "dispatcher: {} loaded from {}: {} sets, {} destinations ({})",
            reason,
            self._snapshot.source or "?",
            len(self._snapshot.sets),
            len(self._dests),
            "state kept" if generation.keep_state else "state reset",
        )
        return previous

    def announce(self, previous: Generation, reason: str = "reload") -> Iterator[None]:
        """Report every current entry to the listener (``old`` from ``previous``, None for a
        new entry), one per step: a loop task spreads a large list over several passes.
        """
        snapshot, before = self._snapshot, previous.rt
        added: list[Destination] = []
        for dset in snapshot.sets.values():
            for d in dset.destinations:
                rt = self._rt.get(d.key)
                if rt is None:  # removed meanwhile
                    continue
                prev = before.get(d.key)
                if prev is None:
                    added.append(d)
                self._notify(d, prev.flags if prev is not None else None, rt.flags, reason)
                yield
        if reason == "startup":
            return
        removed: list[Destination] = []
        for n, (key, d) in enumerate(previous.dests.items(), 1):
            if key not in self._dests:
                removed.append(d)
            if n % PREPARE_STEP == 0:
                yield
        if changed := load_changes(added, removed):
            logger.info("dispatcher: {} {}", reason, changed)

    def add(self, dest: Destination, reason: str = "add") -> None:
        """Add one entry in memory (RPC ``dispatcher.add``); other entries keep their runtime.

        The entry takes the place a new last line of the list file would give it (first
        among its priority), and the order of the others does not change (Kamailio flips
        equal-priority entries on every add, moving hashed calls; we do not).

        :raises ValueError: the set already has this URI.
        """
        if dest.key in self._dests:
            raise ValueError(f"set {dest.setid} already has {dest.uri}")
        current = self._snapshot.sets.get(dest.setid)
        existing = list(current.destinations) if current else []
        # kamailio_order reverses load order; reversing the array restores it
        ordered = kamailio_order([*reversed(existing), dest])
        self._replace_set(dest.setid, ordered)
        self._dests[dest.key] = dest
        rt = self._new_runtime(dest)
        rt.load = sum(1 for keys in self._calls.values() if dest.key in keys)
        self._rt[dest.key] = rt
        self._sets[dest.setid] = self._build_set(self._snapshot.sets[dest.setid], self._rt)
        self._notify(dest, None, rt.flags, reason)

    def remove(self, setid: int, uri: str) -> bool:
        """Remove one entry in memory (RPC ``dispatcher.remove``); False when there is none."""
        key = (setid, uri.lower())
        if key not in self._dests:
            return False
        remaining = [d for d in self._snapshot.sets[setid].destinations if d.key != key]
        self._replace_set(setid, remaining)
        del self._dests[key]
        del self._rt[key]
        if setid in self._snapshot.sets:
            self._sets[setid] = self._build_set(self._snapshot.sets[setid], self._rt)
        else:
            self._sets.pop(setid, None)
        return True

    # -- selecting -------------------------------------------------------------------------

    def view(self, setid: int, alg: int | None = None) -> SetView | None:
        """The set as :func:`~plugins.dispatcher.selection.select` sees it, or None.

        The view is kept between calls and rebuilt after a state flag or latency changed.

        :param alg: the algorithm about to run: call loads change with every call and are only
            gathered for call load (10); None gathers them too.
        """
        srt = self._sets.get(setid)
        if srt is None:
            return None
        view = srt.view
        if view is None:
            view = srt.view = self._make_view(self._snapshot.sets[setid], srt)
        if alg == CALL_LOAD or alg is None:
            return view.with_loads(tuple([rt.load + rt.remote_load for rt in srt.rts]))
        return view

    def cursors(self, setid: int) -> Cursors | None:
        """The set's rotating positions (round robin, weight tables), or None for an unknown set."""
        srt = self._sets.get(setid)
        return srt.cursors if srt else None

    def select_full(
        self, setid: int, alg: int, call: CallInfo, limit: int = 0, rng: random.Random | None = None
    ) -> Selection | None:
        """Like :meth:`select`, with the whole :class:`Selection`; None for an unknown set."""
        view = self.view(setid, alg)
        if view is None:
            return None
        srt = self._sets[setid]
        result = select(view, alg, call, cursors=srt.cursors, policy=self.policy, limit=limit, rng=rng or self._rng)
        srt.cursors = result.cursors
        return result

    def select(
        self, setid: int, alg: int, call: CallInfo, limit: int = 0, rng: random.Random | None = None
    ) -> tuple[Destination, ...]:
        """Chosen destination then the failover list; empty: unknown set or none usable.

        Advances the set's cursors (round robin, weight tables) like Kamailio does.
        """
        result = self.select_full(setid, alg, call, limit, rng)
        return result.destinations if result else ()

    # -- state changes ---------------------------------------------------------------------

    def set_flags(self, key: DestKey, flags: int, reason: str) -> bool:
        """Set an entry's state flags; False when the entry is unknown.

        When the entry goes up or down, alg-11 tables of its set are rebuilt and the
        listener is told.
        """
        rt = self._rt.get(key)
        if rt is None:
            return False
        old, rt.flags = rt.flags, int(flags)
        srt = self._sets[key[0]]
        if old != rt.flags:
            srt.view = None
            srt.version += 1  # after the change: see Generation.basis
            if self.observer is not None:
                self.observer(key, FLAGS_CHANGED)
        if is_usable(old) != is_usable(rt.flags):
            dset = self._snapshot.sets[key[0]]
            srt.rweight_table = relative_weight_table(dset.destinations, self._flags_of(dset, self._rt), self._rng)
            self._notify(self._dests[key], old, rt.flags, reason)
        elif old != rt.flags:
            # T (failures below the threshold) is an operator's early warning: INFO
            logger.info("dispatcher: set {} {} {} -> {} ({})", key[0], key[1], state_letters(old),
                        state_letters(rt.flags), reason)
        return True

    def set_state(self, setid: int, uri: str, letters: str, reason: str = "set_state") -> int:
        """RPC ``dispatcher.set_state``: state bits overwritten, counters untouched.

        :param uri: the entry's URI (case-insensitive) or ``all`` for the whole set.
        :param letters: see :func:`parse_state_letters`.
        :return: how many entries were set (0: no such set or URI).
        :raises ValueError: bad letters.
        """
        bits = parse_state_letters(letters)
        dset = self._snapshot.sets.get(setid)
        if dset is None:
            return 0
        key = (setid, uri.lower())
        targets = [d for d in dset.destinations if uri.lower() == "all" or d.key == key]
        return self._apply_bits(targets, bits, reason)

    def set_duid_state(self, setid: int, duid: str, letters: str, reason: str = "set_duid_state") -> int:
        """RPC ``dispatcher.set_duid_state``: like :meth:`set_state`, by ``duid`` attribute."""
        bits = parse_state_letters(letters)
        dset = self._snapshot.sets.get(setid)
        if dset is None:
            return 0
        return self._apply_bits([d for d in dset.destinations if d.attrs.duid == duid], bits, reason)

    def mark(self, key: DestKey, letters: str, reason: str = "mark") -> bool:
        """``ds_mark_dst()`` (Kamailio 6.1): set the state directly, counters reset.

        :raises ValueError: bad letters (see :func:`mark_state_bits`).
        """
        bits = mark_state_bits(letters)
        rt = self._rt.get(key)
        if rt is None:
            return False
        rt.probe_count = 0
        return self.set_flags(key, (rt.flags & CONFIG_BITS) | bits, reason)

    def set_latency(self, key: DestKey, stats: Any) -> bool:
        """Store an entry's latency statistics (alg 13 reads them); False when the entry is unknown."""
        rt = self._rt.get(key)
        if rt is None:
            return False
        rt.latency = stats
        srt = self._sets[key[0]]
        srt.view = None
        srt.version += 1
        if self.observer is not None:
            self.observer(key, LATENCY_CHANGED)
        return True

    # -- call load -------------------------------------------------------------------------

    def load_add(self, call_key: Hashable, dest_key: DestKey) -> bool:
        """A leg of call ``call_key`` to ``dest_key`` started; False if already counted."""
        held = self._calls.setdefault(call_key, set())
        if dest_key in held:
            return False
        held.add(dest_key)
        rt = self._rt.get(dest_key)
        if rt is not None:
            rt.load += 1
            if self.observer is not None:
                self.observer(dest_key, LOAD_CHANGED)
        return True

    def load_release(self, call_key: Hashable, dest_key: DestKey) -> bool:
        """That leg ended; False (and nothing changes) if it was not counted or already released."""
        held = self._calls.get(call_key)
        if not held or dest_key not in held:
            return False
        held.discard(dest_key)
        if not held:
            del self._calls[call_key]
        rt = self._rt.get(dest_key)
        if rt is not None and rt.load > 0:
            rt.load -= 1
            if self.observer is not None:
                self.observer(dest_key, LOAD_CHANGED)
        return True

    def release_call(self, call_key: Hashable) -> list[DestKey]:
        """Release every load slot call ``call_key`` still holds; returns their destinations."""
        keys = list(self._calls.get(call_key, ()))
        return [k for k in keys if self.load_release(call_key, k)]

    def active_calls(self) -> int:
        """Calls holding at least one load slot (for tests and the listing)."""
        return len(self._calls)

    # -- admin listing ---------------------------------------------------------------------

    def listing_source(self) -> ListingSource:
        """What ``dispatcher.list`` renders, in O(1)."""
        return ListingSource(self._snapshot, self._rt)

    def listing(self) -> list[dict[str, Any]]:
        """Data for ``dispatcher.list``: per set (ascending id), the entries in array order."""
        out = []
        for setid in sorted(self._snapshot.sets):
            rows = []
            for d in self._snapshot.sets[setid].destinations:
                rt = self._rt[d.key]
                rows.append(
                    {
                        "uri": d.uri,
                        "flags": state_letters(rt.flags),
                        "flags_value": rt.flags,
                        "priority": d.priority,
                        "attrs": d.attrs.body,
                        "duid": d.attrs.duid,
                        "description": d.description,
                        "probe_count": rt.probe_count,
                        "latency": _latency_dict(rt.latency),
                        "load": rt.load,
                    }
                )
            out.append({"setid": setid, "destinations": rows})
        return out

    # -- internals -------------------------------------------------------------------------

    def _new_runtime(self, d: Destination) -> DestRuntime:
        lat = self._latency_factory(d) if self._latency_factory else None
        return DestRuntime(flags=d.flags, latency=lat)

    @staticmethod
    def _flags_of(dset: DestinationSet, rts: Mapping[DestKey, DestRuntime]) -> list[int]:
        return [rts[d.key].flags for d in dset.destinations]

    def _build_set(self, dset: DestinationSet, rts: Mapping[DestKey, DestRuntime]) -> SetRuntime:
        return SetRuntime(
            weight_table=weight_table(dset.destinations, self._rng),
            rweight_table=relative_weight_table(dset.destinations, self._flags_of(dset, rts), self._rng),
            rts=tuple([rts[d.key] for d in dset.destinations]),
        )

    @staticmethod
    def _make_view(dset: DestinationSet, srt: SetRuntime) -> SetView:
        rts = srt.rts
        return SetView(
            dset.destinations,
            tuple([rt.flags for rt in rts]),
            latencies=tuple([rt.latency for rt in rts]),
            weight_table=srt.weight_table,
            rweight_table=srt.rweight_table,
        )

    def _replace_set(self, setid: int, dests: list[Destination] | tuple[Destination, ...]) -> None:
        sets = dict(self._snapshot.sets)
        if dests:
            sets[setid] = DestinationSet(setid, tuple(dests))
        else:
            sets.pop(setid, None)
        self._snapshot = Snapshot(dict(sorted(sets.items())), self._snapshot.source)

    def _apply_bits(self, targets: Any, bits: int, reason: str) -> int:
        count = 0
        for d in targets:
            rt = self._rt[d.key]
            self.set_flags(d.key, (rt.flags & CONFIG_BITS) | bits, reason)
            count += 1
        return count

    def _notify(self, dest: Destination, old: int | None, new: int, reason: str) -> None:
        if old is not None and is_usable(old) != is_usable(new):
            logger.info(
                "dispatcher: set {} {} {} ({} -> {}, {})",
                dest.setid,
                dest.uri,
                "up" if is_usable(new) else "down",
                state_letters(old),
                state_letters(new),
                reason,
            )
        if self.listener is not None:
            self.listener(dest, old, new, reason)


def load_changes(added: Collection[Destination], removed: Collection[Destination], shown: int = 10) -> str:
    """What a reload changed, for its log line: ``added 1 (set 1 sip:a), removed 2 (set 2 sip:b,
    set 2 sip:c)``, naming at most ``shown`` entries each; "" when nothing was added or removed."""
    parts = []
    for word, dests in (("added", added), ("removed", removed)):
        if dests:
            named = ", ".join(f"set {d.setid} {d.uri}" for d in itertools.islice(dests, shown))
            more = f", and {len(dests) - shown} more" if len(dests) > shown else ""
            parts.append(f"{word} {len(dests)} ({named}{more})")
    return ", ".join(parts)


def _latency_dict(stats: Any) -> dict[str, Any] | None:
    if stats is None:
        return None
    return {k: getattr(stats, k) for k in ("avg", "std", "est", "max", "timeout") if hasattr(stats, k)}
