"""The dispatcher's state shared through Redis (:class:`RedisState`, a :class:`SharedState`).

Every node routes on its own :class:`DispatcherState`; this module keeps it in step with the
others (docs/scale-out.md, "What is shared"). Its Lua scripts are in
:mod:`plugins.dispatcher.redisscripts`, names and message checks in
:mod:`plugins.dispatcher.sharedwire`. Redis keys, under the cluster's name ``P``:

``P:seq``                 counter ordering every state change of the cluster
``P:epoch``               set by the first node that finds Redis empty (see "catching up")
``P:health:<set> <uri>``  an entry's latest flags and latency, as published (JSON with its seq);
                          expires ``3 x ping_interval + node_ttl`` after the last keepalive
                          (never for D, or without keepalives)
``P:admin``               hash ``<set> <uri>`` -> JSON: the operator disables (the state file's
                          cluster twin)
``P:load:<node>``         hash ``<set> <uri>`` -> that node's active B legs; expires ``node_ttl``
                          after its last heartbeat, so a dead node's calls stop counting
``P:probers``             sorted set of the nodes that send keepalives, scored with Redis' clock
``P:lease:<shard>``       the node probing the entries of one of :data:`SHARDS` shards (PX lease)
``P:events``              the channel: ``state`` and ``load`` messages

**Health** (keepalive results, failover marks, operator changes): a change on this node is
applied here at once, then written and published by a Lua script that numbers it (``INCR``);
every node (this one too) applies messages in that order and ignores one older than what it
has applied for the entry, so concurrent changes end the same everywhere. **Call loads**: this
node's counts are sent as absolute values, at most every ``load_sync`` seconds, and each node
adds the others' counts to its own for algorithm 10. **Keepalives**: shards are assigned by
rendezvous hashing over the live probers; a node takes (``SET NX PX``) and renews only the
leases of its shards and lets the others go, so each entry has one prober, and a dead prober's
shards are taken over when its lease and its ``probers`` entry expire. Times are Redis' own
(``TIME``, ``PX``): a node's clock never decides anything.

Redis unreachable (see :mod:`b2bua.redislink`): changes stay pending, every node probes every
entry and counts only its own calls once the others' counts are older than ``node_ttl``; when
Redis answers, pending changes are sent first, then everything is read back (catch-up). A Redis
that lost everything (restarted without persistence) has no ``P:epoch``: the first node to find
that writes its operator disables with a new epoch in one script, then publishes every entry's
state, and the others take it from there, so a Redis restart never re-enables a disabled gateway.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from loguru import logger

from b2bua.cluster import Cluster, Member
from plugins.dispatcher.model import DestFlags, Destination
from plugins.dispatcher.redisscripts import EPOCH_LUA, LEASE_LUA, LEAVE_LUA, LOAD_LUA, REFRESH_LUA, STATE_LUA
from plugins.dispatcher.runtime import (
    CONFIG_BITS,
    FLAGS_CHANGED,
    LATENCY_CHANGED,
    LOAD_CHANGED,
    DestKey,
    DispatcherState,
)
from plugins.dispatcher.shared import AdminSink
from plugins.dispatcher.sharedwire import (
    SHARDS,
    StateUpdate,
    encode_latency,
    field_of,
    health_ttl,
    key_of_field,
    parse_counts,
    parse_state,
    shard_of,
    wanted_shards,
)

#: keys read per MGET when catching up
READ_CHUNK = 500
_D = int(DestFlags.DISABLED)

# -- the shared state ----------------------------------------------------------------------------


class RedisState:
    """:class:`~plugins.dispatcher.shared.SharedState` through Redis (loop thread).

    :param cluster: the host's cluster (node name, Redis link, membership).
    :param ping_interval: the dispatcher's keepalive interval (health entries expire after
        :func:`health_ttl`).
    :param prober_active: whether this node's keepalives run (``dispatcher.ping_active``).
    :param call_soon: runs a callable on the loop on its next pass.
    :param call_later: the loop's timer.
    :param monotonic: the clock ``load_sync`` is measured with.
    """

    kind = "redis"

    def __init__(self, cluster: Cluster, *, ping_interval: float, prober_active: Callable[[], bool],
                 call_soon: Callable[[Callable[[], None]], None],
                 call_later: Callable[[float, Callable[[], None]], Any],
                 monotonic: Callable[[], float]) -> None:
        self.cluster = cluster
        self.node = cluster.node
        self._ping_interval = ping_interval
        self._prober_active = prober_active
        self._call_soon = call_soon
        self._call_later = call_later
        self._now = monotonic
        self._state: DispatcherState | None = None
        self._admin: AdminSink | None = None
        self._applying = False
        #: entries changed here and not published yet -> changed by an operator?
        self._dirty: dict[DestKey, bool] = {}
        #: entries whose state this node publishes as their new prober, unless changed meanwhile
        self._refresh: set[DestKey] = set()
        #: operator disables not written to P:admin yet: field -> JSON, or None to delete
        self._dirty_admin: dict[str, str | None] = {}
        self._dirty_loads: set[DestKey] = set()
        self._applied: dict[DestKey, int] = {}  #: the seq of the last change applied per entry
        self._epoch = ""  #: the epoch those seqs belong to
        self._own_write: dict[DestKey, int] = {}  #: this node's last write number per entry
        self._writes = 0
        self._remote: dict[str, dict[DestKey, int]] = {}  #: other nodes' loads
        self._remote_at: dict[str, float] = {}  #: when each node's loads were last heard of (our clock)
        self._live: frozenset[str] = frozenset()  #: the members at the last heartbeat
        self._holders: list[str] = [""] * SHARDS
        self._owned: frozenset[int] = frozenset()
        self._probers: tuple[str, ...] = ()
        self._state_flush = False  #: a flush is queued or in flight
        self._load_timer: Any = None
        self._load_inflight = False
        self._last_load_flush = -1e9
        self._lease_inflight = False
        self._down_timer: Any = None
        self.applied_messages = 0
        self.published = 0
        #: messages received so far, and the count when each entry / node last had one: a read
        #: started before a message must not undo it
        self._messages = 0
        self._entry_heard: dict[DestKey, int] = {}
        self._node_heard: dict[str, int] = {}

    # -- SharedState ---------------------------------------------------------------------------

    def attach(self, state: DispatcherState, admin: AdminSink) -> None:
        self._state, self._admin = state, admin
        state.observer = self._changed
        cluster = self.cluster
        cluster.on_message("state", self._on_state_message)
        cluster.on_message("load", self._on_load_message)
        cluster.on_members(self._on_members)
        cluster.on_up(self._catch_up)
        cluster.on_down(self._on_down)
        if self._ping_interval > 0:
            self._call_later(self._ping_interval, self._refresh_health)

    def startup(self) -> None:
        if not self.cluster.joined:
            return  # Redis did not answer: the catch-up runs when it does
        members = [m.name for m in self.cluster.members]
        try:
            keys, mine = self._entry_keys(), self._admin_values()
            found = self.cluster.link.call(lambda c: self._read_all(c, keys, members, mine))
            found["since"], found["protect"] = self._messages, set()
        except Exception as exc:
            logger.warning("cluster: could not read the shared dispatcher state at start-up ({}): starting on "
                           "this node's own; it is read again when Redis answers", exc)
            return
        self._apply_read(found, startup=True)

    def stop(self) -> None:
        if not self.cluster.up:
            return
        keys = [self.cluster.key("lease", s) for s in range(SHARDS)]
        keys += [self.cluster.key("probers"), self.cluster.key("load", self.node)]
        try:
            self.cluster.link.call(lambda c: self.cluster.run_script(c, LEAVE_LUA, keys, [self.node]))
        except Exception as exc:
            logger.info("cluster: could not release keepalive leases and loads ({}); they expire in {:g} s",
                        exc, self.cluster.config.node_ttl)

    def after_load(self) -> None:
        self._recount_remote(None)
        # a reload may have reset the entries to their configured state: what was applied
        # before counts for nothing now, the read applies the cluster's latest again
        self._applied.clear()
        if self.cluster.up:
            self._read_back()

    def operator_changed(self, dests: Sequence[Destination], disabled: bool) -> None:
        for dest in dests:
            key = dest.key
            self._dirty[key] = True
            self._dirty_admin[field_of(key)] = (
                json.dumps({"u": dest.uri, "n": self.node}, separators=(",", ":")) if disabled else None)
        self._schedule_state_flush()

    def probes(self, key: DestKey) -> bool:
        if not self.cluster.up:
            return True  # on our own: probe everything, as a single node does
        return shard_of(key) in self._owned

    def describe(self, key: DestKey) -> dict[str, Any] | None:
        state = self._state
        rt = state.runtime(key) if state is not None else None
        loads = {self.node: rt.load if rt is not None else 0}
        for node, counts in sorted(self._remote.items()):
            if counts.get(key):
                loads[node] = counts[key]
        holder = self._holders[shard_of(key)] if self.cluster.up else self.node
        return {"PROBER": holder or None, "LOAD": sum(loads.values()), "NODES": loads}

    def status(self) -> dict[str, Any]:
        return {
            "SHARED": "redis" if self.cluster.up else "local (Redis unreachable)",
            "PROBERS": list(self._probers),
            "SHARDS_PROBED_HERE": len(self._owned) if self.cluster.up else SHARDS,
            "SHARDS": SHARDS,
            "PENDING": len(self._dirty) + len(self._dirty_loads) + len(self._dirty_admin),
            "REMOTE_LOADS": {node: sum(c.values()) for node, c in sorted(self._remote.items())},
            "APPLIED": self.applied_messages,
            "PUBLISHED": self.published,
        }

    # -- changes made here ---------------------------------------------------------------------

    def _changed(self, key: DestKey, what: int) -> None:
        if what & LOAD_CHANGED:
            self._dirty_loads.add(key)
            self._schedule_load_flush()
        if what & (FLAGS_CHANGED | LATENCY_CHANGED) and not self._applying:
            self._dirty.setdefault(key, False)
            self._schedule_state_flush()

    def _schedule_state_flush(self) -> None:
        if not self._state_flush:
            self._state_flush = True
            self._call_soon(self._flush_state)

    def _flush_state(self) -> None:
        state = self._state
        if state is None or not self.cluster.up or not (self._dirty or self._dirty_admin or self._refresh):
            self._state_flush = False
            return  # kept pending: the catch-up sends them
        dirty, admin, refresh = self._dirty, self._dirty_admin, self._refresh - set(self._dirty)
        self._dirty, self._dirty_admin, self._refresh = {}, {}, set()
        ttl = health_ttl(self._ping_interval, self.cluster.config.node_ttl)
        keys, args = [self.cluster.key("seq"), self.cluster.key("epoch")], [self.cluster.channel]
        items = [(key, operator, "") for key, operator in dirty.items()]
        items += [(key, False, str(self._applied.get(key, 0))) for key in refresh]
        for key, operator, expect in items:
            rt = state.runtime(key)
            if rt is None:
                continue
            self._writes += 1
            self._own_write[key] = self._writes
            body = {"t": "state", "k": [key[0], key[1]], "f": rt.flags, "o": int(operator), "i": self._writes,
                    "l": encode_latency(rt.latency)}
            keys.append(self.cluster.key("health", field_of(key)))
            args += [self.cluster.encode(body), "0" if rt.flags & _D or not ttl else str(int(ttl * 1000)), expect]
        admin_key = self.cluster.key("admin")

        def write(client: Any) -> Any:
            pipe = client.pipeline(transaction=False)
            for name, value in admin.items():
                if value is None:
                    pipe.hdel(admin_key, name)
                else:
                    pipe.hset(admin_key, name, value)
            for start in range(2, len(keys), READ_CHUNK):  # a script at a time holds Redis: keep each short
                chunk = keys[start:start + READ_CHUNK]
                first = 3 * (start - 2) + 1
                self.cluster.run_script(pipe, STATE_LUA, [*keys[:2], *chunk],
                                        [args[0], *args[first:first + 3 * len(chunk)]])
            return pipe.execute()

        def done(_: Any, error: BaseException | None) -> None:
            self._state_flush = False
            if error is not None:
                for key, operator in dirty.items():
                    self._dirty[key] = self._dirty.get(key, False) or operator
                for name, value in admin.items():
                    self._dirty_admin.setdefault(name, value)
                if not isinstance(error, ConnectionError):
                    logger.error("cluster: publishing dispatcher state failed: {}", error)
                return
            self.published += len(keys) - 2
            if self._dirty or self._dirty_admin or self._refresh:
                self._schedule_state_flush()

        self.cluster.link.submit(write, done)

    def _schedule_load_flush(self) -> None:
        if self._load_timer is not None or self._load_inflight:
            return
        delay = self._last_load_flush + self.cluster.config.load_sync - self._now()
        if delay <= 0:
            self._load_timer = True
            self._call_soon(self._flush_loads)
        else:
            self._load_timer = self._call_later(delay, self._flush_loads)

    def _flush_loads(self, full: bool = False) -> None:
        self._load_timer = None
        state = self._state
        if state is None or not self.cluster.up:
            return  # kept pending; the catch-up sends every count
        if full:
            keys = [d.key for d in state.destinations() if (state.runtime(d.key) or _NO_RT).load]
            self._dirty_loads.clear()
        else:
            keys, self._dirty_loads = list(self._dirty_loads), set()
        if not keys and not full:
            return
        counts = {field_of(k): (rt.load if (rt := state.runtime(k)) is not None else 0) for k in keys}
        message = self.cluster.encode({"t": "load", "c": counts, "full": int(full)})
        args: list[Any] = [self.cluster.channel, int(self.cluster.config.node_ttl * 1000), "1" if full else "0",
                           message]
        for name, count in counts.items():
            args += [name, count]
        load_key = self.cluster.key("load", self.node)
        self._load_inflight = True
        self._last_load_flush = self._now()

        def write(client: Any) -> Any:
            return self.cluster.run_script(client, LOAD_LUA, [load_key], args)

        def done(_: Any, error: BaseException | None) -> None:
            self._load_inflight = False
            if error is not None:
                self._dirty_loads.update(keys)
                if not isinstance(error, ConnectionError):
                    logger.error("cluster: publishing call loads failed: {}", error)
                return
            if self._dirty_loads:
                self._schedule_load_flush()

        self.cluster.link.submit(write, done)

    # -- changes made elsewhere ----------------------------------------------------------------

    def _on_state_message(self, message: dict[str, Any]) -> None:
        update = parse_state(message)
        self._messages += 1
        self._entry_heard[update.key] = self._messages
        self._apply_update(update)

    def _note_epoch(self, epoch: str) -> None:
        """Seqs of another epoch are not comparable with ours: a Redis that lost everything counts anew."""
        if epoch and epoch != self._epoch:
            if self._epoch:
                logger.info("cluster: Redis' state epoch changed: its change numbers start again")
            self._epoch = epoch
            self._applied.clear()

    def _apply_update(self, update: StateUpdate) -> bool:
        """Apply one published change in Redis' order; False when it was older than what we have."""
        self._note_epoch(update.epoch)
        key = update.key
        if update.seq <= self._applied.get(key, 0):
            return False
        self._applied[key] = update.seq
        if update.node == self.node and self._own_write.get(key, update.write) != update.write:
            return False  # an earlier write of ours: a later one is on its way
        if key in self._dirty:
            return False  # changed here since: our write comes after this one in Redis' order and wins
        state, admin = self._state, self._admin
        rt = state.runtime(key) if state is not None else None
        if state is None or rt is None:
            return False  # not loaded here
        self.applied_messages += 1
        flags = (update.flags & ~CONFIG_BITS) | (rt.flags & CONFIG_BITS)
        dest = state.destination(key)
        if not update.operator and (key in (admin.disabled if admin is not None else ())
                                    or (dest is not None and dest.flags & _D)):
            # only an operator (or the configuration) takes an entry out of D: a keepalive result
            # published before its node heard of the disable does not
            flags = (flags & CONFIG_BITS) | _D
        self._applying = True
        try:
            if flags != rt.flags:
                state.set_flags(key, flags, f"cluster: {update.node}")
            if update.latency is not None and update.latency != rt.latency:
                state.set_latency(key, update.latency)
        finally:
            self._applying = False
        if admin is not None and dest is not None and update.operator:
            admin.note_remote(key, dest.uri, bool(flags & _D))
        return True

    def _on_load_message(self, message: dict[str, Any]) -> None:
        node = message["n"]
        if node == self.node:
            return
        counts = parse_counts(message.get("c"))
        self._messages += 1
        self._node_heard[node] = self._messages
        self._remote_at[node] = self._now()
        if message.get("full"):
            touched = set(self._remote.get(node, {})) | set(counts)
            self._remote[node] = {k: v for k, v in counts.items() if v}
        else:
            mine = self._remote.setdefault(node, {})
            for key, count in counts.items():
                if count:
                    mine[key] = count
                else:
                    mine.pop(key, None)
            touched = set(counts)
        self._recount_remote(touched)

    def _recount_remote(self, keys: Iterable[DestKey] | None) -> None:
        """Set ``remote_load`` of ``keys`` (None: every entry) from the other nodes' counts."""
        state = self._state
        if state is None:
            return
        if keys is None:
            keys = [d.key for d in state.destinations()]
        remote = self._remote.values()
        for key in keys:
            rt = state.runtime(key)
            if rt is not None:
                rt.remote_load = sum(counts.get(key, 0) for counts in remote)

    # -- membership, leases, catching up -----------------------------------------------------------

    def _on_members(self, members: tuple[Member, ...]) -> None:
        live = frozenset(m.name for m in members)
        # gone: left since the last heartbeat, or never a member and silent for node_ttl (a node
        # heard of before its first heartbeat shows in the members is not gone)
        stale = self._now() - self.cluster.config.node_ttl
        gone = [node for node in self._remote
                if node not in live and (node in self._live or self._remote_at.get(node, 0) < stale)]
        self._live = live
        if gone:
            touched = {k for node in gone for k in self._remote.pop(node)}
            logger.info("cluster: node(s) {} left: their call loads no longer count", ", ".join(sorted(gone)))
            self._recount_remote(touched)
        self._renew_leases(members)

    def _renew_leases(self, members: tuple[Member, ...]) -> None:
        if self._lease_inflight:
            return
        self._lease_inflight = True
        active = self._prober_active()
        probers = self._probers or tuple(m.name for m in members)
        wants = wanted_shards(self.node, probers) if active else "0" * SHARDS
        keys = [self.cluster.key("load", self.node), self.cluster.key("probers")]
        keys += [self.cluster.key("lease", s) for s in range(SHARDS)]
        args = [self.node, int(self.cluster.config.node_ttl * 1000), "1" if active else "0", wants]

        def renew(client: Any) -> Any:
            return self.cluster.run_script(client, LEASE_LUA, keys, args)

        self.cluster.link.submit(renew, self._after_leases)

    def _after_leases(self, reply: Any, error: BaseException | None) -> None:
        self._lease_inflight = False
        if error is not None:
            if not isinstance(error, ConnectionError):
                logger.error("cluster: renewing keepalive leases failed: {}", error)
            return
        holders = [h.decode("utf-8", "replace") if isinstance(h, bytes) else str(h) for h in reply[0]]
        probers = tuple(sorted(p.decode("utf-8", "replace") if isinstance(p, bytes) else str(p) for p in reply[1]))
        owned = frozenset(s for s, h in enumerate(holders) if h == self.node)
        gained = owned - self._owned
        if gained and self._state is not None:
            # the new prober's view of these entries is the cluster's until its next keepalive says more
            self._refresh.update(d.key for d in self._state.destinations() if shard_of(d.key) in gained)
            self._schedule_state_flush()
        if owned != self._owned:
            logger.info("cluster: node {} sends the keepalives of {} of {} shards (probers: {})", self.node,
                        len(owned), SHARDS, ", ".join(probers) or "none")
        self._holders, self._owned, self._probers = holders, owned, probers

    def _refresh_health(self) -> None:
        """Every ``ping_interval``: a prober keeps its entries' health keys alive (a state that does
        not change is not published again) and writes back those that are gone."""
        self._call_later(self._ping_interval, self._refresh_health)
        state = self._state
        if state is None or not self.cluster.up or not self._owned:
            return
        keys = [d.key for d in state.destinations() if shard_of(d.key) in self._owned]
        names = [self.cluster.key("health", field_of(k)) for k in keys]
        ttl_ms = int(health_ttl(self._ping_interval, self.cluster.config.node_ttl) * 1000)

        def refresh(client: Any) -> list[int]:
            missing: list[int] = []
            for start in range(0, len(names), READ_CHUNK):
                found = self.cluster.run_script(client, REFRESH_LUA, names[start:start + READ_CHUNK], [ttl_ms])
                missing += [start + int(i) - 1 for i in found]
            return missing

        def done(missing: list[int] | None, error: BaseException | None) -> None:
            if error is not None or not missing:
                return
            self._refresh.update(keys[i] for i in missing)
            self._schedule_state_flush()

        self.cluster.link.submit(refresh, done)

    def _catch_up(self) -> None:
        """Redis answers (again): send what changed meanwhile, then read everything back."""
        if self._down_timer is not None:
            self._down_timer.cancel()
            self._down_timer = None
        self._lease_inflight = False
        self._state_flush = False
        self._load_inflight = False
        # the read first (it writes our operator disables to a Redis that lost everything), then
        # what changed here meanwhile: the read does not undo those
        self._read_back(protect={*self._dirty, *(k for k in map(key_of_field, self._dirty_admin) if k)})
        if self._dirty or self._dirty_admin:
            self._flush_state()
        self._flush_loads(full=True)

    def _read_back(self, protect: Iterable[DestKey] = ()) -> None:
        members = [m.name for m in self.cluster.members]
        keys, mine, since, protected = self._entry_keys(), self._admin_values(), self._messages, set(protect)

        def read(client: Any) -> dict[str, Any]:
            return {**self._read_all(client, keys, members, mine), "since": since, "protect": protected}

        self.cluster.link.submit(read, self._after_read)

    def _after_read(self, found: Any, error: BaseException | None) -> None:
        if error is not None:
            if not isinstance(error, ConnectionError):
                logger.error("cluster: reading the shared dispatcher state failed: {}", error)
            return
        self._apply_read(found, startup=False)

    def _on_down(self) -> None:
        self._owned = frozenset()
        if self._down_timer is None:
            self._down_timer = self._call_later(self.cluster.config.node_ttl, self._forget_remote)

    def _forget_remote(self) -> None:
        self._down_timer = None
        if self.cluster.up or not self._remote:
            return
        logger.info("cluster: other nodes' call loads dropped after {:g} s without Redis: counting this "
                    "node's calls only", self.cluster.config.node_ttl)
        self._remote.clear()
        self._recount_remote(None)

    # -- reading everything (command thread, then the loop) ----------------------------------------

    def _admin_values(self) -> dict[str, str]:
        admin = self._admin
        if admin is None:
            return {}
        return {field_of(key): json.dumps({"u": uri, "n": self.node}, separators=(",", ":"))
                for key, uri in admin.disabled.items()}

    def _entry_keys(self) -> list[DestKey]:
        state = self._state
        return [d.key for d in state.destinations()] if state is not None else []

    def _read_all(self, client: Any, keys: list[DestKey], members: list[str],
                  mine: dict[str, str]) -> dict[str, Any]:
        """What the cluster knows, read and decoded on the command thread (``mine``: this node's
        operator disables, written when Redis turns out to hold no cluster state)."""
        pairs = [item for pair in mine.items() for item in pair]
        fresh = self.cluster.run_script(client, EPOCH_LUA, [self.cluster.key("epoch"), self.cluster.key("admin")],
                                        [f"{self.node}-{secrets.token_hex(6)}", *pairs])
        admin_raw = client.hgetall(self.cluster.key("admin"))
        admin: dict[DestKey, str] = {}
        for name, value in admin_raw.items():
            key = key_of_field(name)
            try:
                uri = json.loads(value).get("u")
            except (ValueError, AttributeError):
                uri = None
            if key is not None and isinstance(uri, str):
                admin[key] = uri
        health: list[StateUpdate] = []
        for start in range(0, len(keys), READ_CHUNK):
            chunk = keys[start:start + READ_CHUNK]
            values = client.mget([self.cluster.key("health", field_of(k)) for k in chunk])
            for value in values:
                if value is None:
                    continue
                try:
                    health.append(parse_state(json.loads(value)))
                except (ValueError, TypeError, AttributeError):
                    continue
        loads = {}
        for node in members:
            if node != self.node:
                loads[node] = parse_counts(client.hgetall(self.cluster.key("load", node)))
        epoch = client.get(self.cluster.key("epoch"))
        return {"admin": admin, "health": health, "loads": loads, "fresh": bool(fresh),
                "epoch": epoch.decode("utf-8", "replace") if epoch else ""}

    def _apply_read(self, found: dict[str, Any], *, startup: bool) -> None:
        state, admin = self._state, self._admin
        if state is None or admin is None:
            return
        since = found["since"]
        self._note_epoch(found["epoch"])
        # what was heard after the read began is newer than what it read
        loads = {node: {k: v for k, v in counts.items() if v} for node, counts in found["loads"].items()
                 if self._node_heard.get(node, 0) <= since}
        self._remote = {**loads, **{n: c for n, c in self._remote.items() if self._node_heard.get(n, 0) > since}}
        self._recount_remote(None)
        if found["fresh"]:
            # the probers publish their entries as they take the (lost) leases again
            logger.warning("cluster: Redis holds no dispatcher state (new, or restarted without persistence): this "
                           "node's {} operator disable(s) were written to it", len(admin.disabled))
            return
        cluster_admin: dict[DestKey, str] = found["admin"]
        pending = {key for key in (key_of_field(f) for f in self._dirty_admin) if key is not None}
        pending |= {key for key, heard in self._entry_heard.items() if heard > since}
        pending |= found["protect"]
        local_admin = dict(admin.disabled)
        merged = {k: v for k, v in cluster_admin.items()}
        merged.update({k: v for k, v in local_admin.items() if k in pending})
        for key in pending:
            if key not in local_admin:
                merged.pop(key, None)
        self._applying = True
        try:
            for key in merged:
                rt = state.runtime(key)
                if rt is not None and not rt.flags & _D:
                    state.set_flags(key, (rt.flags & CONFIG_BITS) | _D, "cluster: disabled by an operator")
            for key in set(local_admin) - set(merged):
                rt, dest = state.runtime(key), state.destination(key)
                if rt is not None and dest is not None and rt.flags & _D:
                    # re-enabled elsewhere while we did not hear it: back to its configured state
                    state.set_flags(key, (rt.flags & CONFIG_BITS) | (dest.flags & ~CONFIG_BITS & ~_D),
                                    "cluster: enabled by an operator")
        finally:
            self._applying = False
        admin.replace(merged)
        applied = sum(self._apply_update(update) for update in found["health"]
                      if update.key not in self._dirty and update.key not in pending)
        logger.info("cluster: {} the shared dispatcher state: {} operator disable(s), {} entry state(s) applied, "
                    "call loads of {} other node(s)", "took" if startup else "caught up with", len(merged), applied,
                    len(self._remote))


class _NoRuntime:
    load = 0


_NO_RT = _NoRuntime()
