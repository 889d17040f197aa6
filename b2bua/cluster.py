"""Cluster membership through Redis: this node's name, its heartbeat, the live nodes.

A node *joins* by taking the key ``<name>:node:<node>`` with its instance token (SET NX PX):
a second live process with the same node name is refused (at start-up it waits one
``node_ttl`` for a crashed predecessor's key to expire, then gives up with an error). Every
``heartbeat`` seconds a Lua script renews the key and the node's info, puts the node in the
sorted set ``<name>:members`` scored with **Redis' clock** (``TIME``), drops members whose last
heartbeat is older than ``node_ttl`` and returns the live ones. No node's own clock is ever
compared with another's: a node whose clock is off cannot make others look dead or alive.

Plugins build on :class:`Cluster` (``app.cluster``; None without ``[cluster] redis_url``):
``key()`` names their Redis keys, ``link`` runs their Redis jobs off the loop, ``run_script()``
runs a Lua script there (which may publish ``encode()``-d messages on ``channel``),
``on_message(kind, fn)`` receives them (decoded, on the loop), and ``on_members``,
``on_up`` and ``on_down`` follow membership and Redis' reachability.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from loguru import logger

from b2bua.config import ClusterConfig, Config
from b2bua.redislink import Post, RedisLink, redis_module, safe_url

#: seconds between start-up attempts to take a node name another process still holds
JOIN_POLL = 0.25
#: seconds between two WARNINGs about undecodable cluster messages
BAD_MESSAGE_LOG_INTERVAL = 60.0

CallLater = Callable[[float, Callable[[], None]], Any]
Handler = Callable[[dict[str, Any]], None]

# KEYS: node key; ARGV: token, ttl ms. Returns nil when the name is ours now, else its holder.
JOIN_LUA = """
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[1] then return cur end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""

# KEYS: node key, members, info key; ARGV: token, ttl ms, node name, info JSON.
# Returns {status, redis now ms, name1, last-seen1, name2, ...}; status 0 ok, 1 re-joined
# (the key had expired), or the other holder's token when the name was taken meanwhile.
HEARTBEAT_LUA = """
local cur = redis.call('GET', KEYS[1])
local status = 0
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  status = 1
elseif cur ~= ARGV[1] then
  return {cur}
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now, ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[2]))
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[2])
local out = {status, now}
local members = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = 1, #members do out[#out + 1] = members[i] end
return out
"""

# KEYS: node key; ARGV: the dead holder's token, our token, ttl ms. Takes the name over only
# from that holder: two processes that both found it dead cannot both win (a plain SET would
# let the second overwrite the first after the first had joined).
TAKEOVER_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return false
"""

# KEYS: node key; ARGV: token. Leave: the name is free at once.
LEAVE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class ClusterError(RuntimeError):
    """This node cannot join: its name is taken by another live node."""


class NameTaken(ClusterError):
    """The node name is held by another instance (``holder`` is its token)."""

    def __init__(self, node: str, holder: str) -> None:
        self.holder = holder
        super().__init__(f"[cluster] node {node!r} is in use by another live node ({describe_token(holder)}): "
                         "give every node its own name")


def default_node_name(config: Config) -> str:
    """``host-PORT``: the host name and the first SIP listener's port (unique per process on a host)."""
    host = socket.gethostname().split(".")[0] or "node"
    port = config.sip.listeners[0].port if config.sip.listen else 0
    name = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in host)[:50]
    return f"{name}-{port}"


def make_token() -> str:
    """This process's instance token: host, pid and a random part (a restart gets a new one)."""
    return f"{socket.gethostname()}|{os.getpid()}|{secrets.token_hex(4)}"


def describe_token(token: str | bytes) -> str:
    text = token.decode("utf-8", "replace") if isinstance(token, bytes) else token
    host, _, rest = text.partition("|")
    pid = rest.partition("|")[0]
    return f"host {host}, pid {pid}" if pid else repr(text[:80])


def _pid_gone(token: str) -> bool:
    """True when ``token`` names a process of this host that no longer runs (a crashed predecessor)."""
    host, _, rest = token.partition("|")
    pid = rest.partition("|")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass(frozen=True)
class Member:
    """A live node as the last heartbeat saw it (``age``: seconds since its heartbeat, Redis' clock)."""

    name: str
    age: float


def decode_members(reply: list[Any]) -> tuple[float, list[Member]]:
    """The heartbeat script's ``now, name, score, ...`` tail as ``(now_ms, members)``."""
    now = float(reply[1])
    members = []
    for i in range(2, len(reply) - 1, 2):
        name = reply[i].decode("utf-8", "replace") if isinstance(reply[i], bytes) else str(reply[i])
        members.append(Member(name, max(0.0, (now - float(reply[i + 1])) / 1000.0)))
    return now, sorted(members, key=lambda m: m.name)


def read_members(client: Any, prefix: str, ttl: float) -> list[dict[str, Any]]:
    """The live nodes with their info (control address, SIP listeners, state), by name; for
    ``cluster.nodes`` and ``--all``. ``client`` is a connected ``redis.Redis``."""
    seconds, micros = client.time()
    now = seconds * 1000 + micros // 1000
    names = [n.decode("utf-8", "replace") for n in
             client.zrangebyscore(f"{prefix}:members", now - int(ttl * 1000), "+inf")]
    infos = client.mget([f"{prefix}:info:{n}" for n in names]) if names else []
    out = []
    for name, raw in zip(names, infos, strict=True):
        info: dict[str, Any] = {}
        if raw:
            try:
                decoded = json.loads(raw)
                info = decoded if isinstance(decoded, dict) else {}
            except ValueError:
                info = {}
        out.append({**info, "node": name})
    return sorted(out, key=lambda m: m["node"])


class Cluster:
    """This node's membership, and the services plugins share Redis through.

    :param config: ``[cluster]``.
    :param node: this node's name (checked by the config).
    :param post: ``call_soon_threadsafe`` of the loop.
    :param call_later: the loop's timer.
    :param info: what this node tells the others about itself (control address, SIP, state), read
        at every heartbeat on the loop.
    """

    def __init__(self, config: ClusterConfig, node: str, *, post: Post, call_later: CallLater,
                 info: Callable[[], dict[str, Any]], link_factory: Callable[..., RedisLink] = RedisLink) -> None:
        self.config = config
        self.node = node
        self.prefix = config.name
        self.channel = f"{self.prefix}:events"
        self.token = make_token()
        self._call_later = call_later
        self._info = info
        self.link = link_factory(config.redis_url, self.channel, post=post, on_messages=self._on_messages,
                                 on_up=self._link_up, on_down=self._link_down, timeout=config.redis_timeout)
        self.members: tuple[Member, ...] = ()
        self.joined = False  #: the name is ours and the heartbeat runs
        self.conflict: str | None = None  #: who holds our name, when someone else does
        self._handlers: dict[str, list[Handler]] = {}
        self._member_listeners: list[Callable[[tuple[Member, ...]], None]] = []
        self._up_listeners: list[Callable[[], None]] = []
        self._down_listeners: list[Callable[[], None]] = []
        self._timer: Any = None
        self._beat_pending = False
        self._bad_messages = 0
        self._bad_logged = 0.0
        self._scripts: dict[str, Any] = {}
        self._running = False

    # -- names --------------------------------------------------------------------------------

    def key(self, *parts: object) -> str:
        """A Redis key of this cluster: ``<name>:<part>:<part>...``."""
        return ":".join([self.prefix, *(str(p) for p in parts)])

    # -- plugins' side ----------------------------------------------------------------------------

    def on_message(self, kind: str, handler: Handler) -> None:
        """Have ``handler(message)`` run on the loop for every message ``{"t": kind, ...}``."""
        self._handlers.setdefault(kind, []).append(handler)

    def on_members(self, listener: Callable[[tuple[Member, ...]], None]) -> None:
        """Have ``listener(members)`` run on the loop after every heartbeat."""
        self._member_listeners.append(listener)

    def on_up(self, listener: Callable[[], None]) -> None:
        """Have ``listener()`` run on the loop whenever Redis answers again after being unreachable
        (and once joined at start): the moment to catch up."""
        self._up_listeners.append(listener)

    def on_down(self, listener: Callable[[], None]) -> None:
        """Have ``listener()`` run on the loop whenever Redis becomes unreachable."""
        self._down_listeners.append(listener)

    @property
    def up(self) -> bool:
        """Redis reachable and this node a member: shared state is in use."""
        return self.link.up and self.joined

    def run_script(self, client: Any, source: str, keys: list[Any], args: list[Any]) -> Any:
        """Run the Lua ``source`` on ``client`` (a connection or a pipeline), by its SHA once Redis
        knows it (redis-py's ``Script``: loaded again after a Redis restart)."""
        found = self._scripts.get(source)
        if found is None:
            found = self._scripts[source] = client.register_script(source)
        return found(keys=keys, args=args, client=client)

    # -- life ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Join (waiting up to ``node_ttl`` for a crashed predecessor's name to expire) and start
        the heartbeat. Redis unreachable: a WARNING, and the node joins once Redis answers.

        :raises NameTaken: another live node holds this name.
        :raises RedisMissing: the ``redis`` package is not installed.
        """
        redis_module()
        self._running = True
        try:
            self._join_now()
        except NameTaken:
            self._running = False
            raise
        except Exception as exc:
            logger.warning("cluster: Redis at {} does not answer at start-up ({}): node {} starts on its own "
                           "state and joins when Redis answers", safe_url(self.config.redis_url),
                           str(exc).splitlines()[0] if str(exc) else type(exc).__name__, self.node)
        self.link.start()
        self._schedule()

    def stop(self) -> None:
        """Leave (the name is free at once, the node's loads stop counting) and stop the link."""
        self._running = False
        if self._timer is not None:
            self._timer.cancel()
        if self.joined:
            try:
                self.link.call(self._leave, timeout=self.config.redis_timeout)
            except Exception as exc:
                logger.info("cluster: could not leave cleanly ({}); the others drop this node after {:g} s",
                            exc, self.config.node_ttl)
        self.joined = False
        self.link.stop()

    def _join_now(self) -> None:
        ttl = self.config.node_ttl
        deadline = time.monotonic() + ttl + self.config.heartbeat
        first: str | None = None
        while True:
            holder = self.link.call(self._join)
            if holder is None:
                self.joined = True
                logger.info("cluster: node {} joined cluster {} (Redis at {})", self.node, self.prefix,
                            safe_url(self.config.redis_url))
                return
            holder = holder.decode("utf-8", "replace") if isinstance(holder, bytes) else str(holder)
            if _pid_gone(holder):
                logger.info("cluster: node name {} was held by a process that is gone ({}): taken over",
                            self.node, describe_token(holder))
                self.link.call(lambda c, dead=holder: self.run_script(  # type: ignore[misc]
                    c, TAKEOVER_LUA, [self.key("node", self.node)], [dead, self.token, int(ttl * 1000)]))
                continue  # joined if ours now; another taker's token otherwise (alive: wait)
            if first is None:
                first = holder
                logger.info("cluster: node name {} is held by {}: waiting up to {:g} s for it to expire",
                            self.node, describe_token(holder), ttl)
            if time.monotonic() > deadline:
                raise NameTaken(self.node, holder)
            time.sleep(JOIN_POLL)

    def _join(self, client: Any) -> Any:
        return self.run_script(client, JOIN_LUA, [self.key("node", self.node)],
                               [self.token, int(self.config.node_ttl * 1000)])

    def _leave(self, client: Any) -> Any:
        client.zrem(self.key("members"), self.node)
        client.delete(self.key("info", self.node))
        return self.run_script(client, LEAVE_LUA, [self.key("node", self.node)], [self.token])

    # -- heartbeat ---------------------------------------------------------------------------------

    def _schedule(self) -> None:
        if self._running:
            self._timer = self._call_later(self.config.heartbeat, self._beat)

    def _beat(self) -> None:
        self._schedule()
        if self._beat_pending or not self.link.up:
            return
        self._beat_pending = True
        info = json.dumps({**self._info(), "node": self.node}, separators=(",", ":"))
        ttl_ms = int(self.config.node_ttl * 1000)
        keys = [self.key("node", self.node), self.key("members"), self.key("info", self.node)]

        def beat(client: Any) -> Any:
            return self.run_script(client, HEARTBEAT_LUA, keys, [self.token, ttl_ms, self.node, info])

        self.link.submit(beat, self._after_beat)

    def _after_beat(self, reply: Any, error: BaseException | None) -> None:
        self._beat_pending = False
        if error is not None:
            if not isinstance(error, ConnectionError):
                logger.error("cluster: heartbeat failed: {}", error)
            return
        status = reply[0]
        if isinstance(status, bytes):  # another instance holds our name
            holder = status.decode("utf-8", "replace")
            if self.conflict != holder:
                self.conflict = holder
                logger.error("cluster: node name {} is now held by another node ({}): this node runs on its own "
                             "state until the name is free; give every node its own name", self.node,
                             describe_token(holder))
            self._set_joined(False)
            return
        if self.conflict is not None:
            logger.warning("cluster: node name {} is ours again", self.node)
            self.conflict = None
        if status == 1 and self.joined:
            logger.warning("cluster: node {}'s membership had expired (Redis lost it, or this node stalled "
                           "longer than node_ttl): joined again", self.node)
        _, members = decode_members(reply)
        self.members = tuple(members)
        self._set_joined(True)
        for listener in self._member_listeners:
            listener(self.members)

    def _set_joined(self, joined: bool) -> None:
        was = self.joined
        self.joined = joined
        if joined and not was:
            for listener in self._up_listeners:
                listener()
        elif was and not joined:
            for listener in self._down_listeners:
                listener()

    def _link_up(self) -> None:
        # a heartbeat at once; it (re-)joins, and the up listeners catch up after it
        self.joined = False
        self._beat_pending = False
        if self._timer is not None:
            self._timer.cancel()
        self._beat()

    def _link_down(self) -> None:
        self._set_joined(False)

    # -- messages ----------------------------------------------------------------------------------

    def encode(self, message: dict[str, Any]) -> str:
        """``message`` as the JSON text published on the channel, signed with this node's name."""
        return json.dumps({**message, "n": self.node}, separators=(",", ":"), ensure_ascii=False)

    def _on_messages(self, payloads: list[bytes]) -> None:
        for payload in payloads:
            try:
                message = json.loads(payload)
            except ValueError:
                message = None
            if not isinstance(message, dict) or not isinstance(message.get("t"), str) \
                    or not isinstance(message.get("n"), str):
                self._bad_message(payload)
                continue
            for handler in self._handlers.get(message["t"], ()):
                try:
                    handler(message)
                except Exception:
                    self._bad_message(payload, exc_info=True)

    def _bad_message(self, payload: bytes, exc_info: bool = False) -> None:
        self._bad_messages += 1
        now = time.monotonic()
        if now - self._bad_logged >= BAD_MESSAGE_LOG_INTERVAL:
            self._bad_logged = now
            logger.opt(exception=exc_info).warning(
                "cluster: {} message(s) on {} could not be used (the last: {!r}); something else publishes "
                "there, or nodes of different versions", self._bad_messages, self.channel, payload[:120])
            self._bad_messages = 0

    # -- listing -----------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """``cluster.status``: this node's view (loop thread)."""
        return {
            "NODE": self.node,
            "CLUSTER": self.prefix,
            "REDIS": safe_url(self.config.redis_url),
            "CONNECTED": self.link.up,
            "JOINED": self.joined,
            "DOWN_FOR": round(self.link.down_for(), 1),
            "OUTAGES": self.link.outages,
            "CONFLICT": describe_token(self.conflict) if self.conflict else None,
            "MEMBERS": [{"NODE": m.name, "SEEN": round(m.age, 2)} for m in self.members],
        }

    def nodes(self) -> list[dict[str, Any]]:
        """``cluster.nodes``: the live nodes with their info, read from Redis now (control thread)."""
        nodes: list[dict[str, Any]] = self.link.call(lambda c: read_members(c, self.prefix, self.config.node_ttl))
        return nodes


def control_address(config: Config) -> str:
    """Where ``--all`` reaches this node's control API: ``[cluster] control_url``, else ``[control]
    http`` as a URL, else ``unix:<socket path>`` (usable on the same host only), else ``""``."""
    if config.cluster.control_url:
        return config.cluster.control_url
    if config.control.http:
        host, _, port = config.control.http.rpartition(":")
        return f"http://{host}:{port}/"
    if config.control.socket:
        return f"unix:{config.resolve_path(config.control.socket).resolve()}"
    return ""


def make_cluster(config: Config, *, post: Post, call_later: CallLater,
                 info: Callable[[], dict[str, Any]]) -> Cluster | None:
    """The node's :class:`Cluster`, or None without ``[cluster] redis_url``."""
    if not config.cluster.enabled:
        return None
    node = config.cluster.node or default_node_name(config)
    return Cluster(config.cluster, node, post=post, call_later=call_later, info=info)


def register_cluster_methods(registry: Any, cluster: Cluster) -> None:
    """Add ``cluster.status`` (this node's view, loop thread) and ``cluster.nodes`` (the live nodes
    as Redis has them, with their control addresses; a control thread) to ``registry``."""
    from b2bua.rpc import SERVER_ERROR, RpcError

    def nodes() -> list[dict[str, Any]]:
        try:
            return cluster.nodes()
        except Exception as exc:
            raise RpcError(f"Redis at {safe_url(cluster.config.redis_url)} did not answer: {exc}",
                           SERVER_ERROR) from None

    registry.add("cluster.status", cluster.status,
                 "This node's view of the cluster: its name, whether Redis answers (and since when not), "
                 "the live nodes and how long ago each was seen.")
    registry.add("cluster.nodes", nodes,
                 "The live nodes as Redis has them: name, host, SIP listeners, control address, state "
                 "(running/draining), calls.", on_loop=False)
