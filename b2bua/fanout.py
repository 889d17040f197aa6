"""``--all``: one control method called on every live node of the cluster.

The nodes and their control addresses come from Redis (:func:`b2bua.cluster.read_members`), as
the nodes themselves put them there at every heartbeat: an ``http://`` address is called with
the token of this command line (``--token``, ``$B2BUA_TOKEN`` or ``[control] token``: the same on
every node), a ``unix:`` socket only when the node runs on this host. The calls run in parallel
threads (a slow node does not hold the others up); each node's answer or error is kept apart.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from b2bua.cluster import read_members
from b2bua.config import Config, ConfigError
from b2bua.control import ControlClient, ControlUnavailable, RpcCallError
from b2bua.redislink import redis_module, safe_url

#: nodes called at once
PARALLEL = 8


@dataclass(frozen=True)
class NodeAnswer:
    """One node's outcome: ``result``, or ``error`` (``rpc_error``: the node answered with one)."""

    node: str
    info: dict[str, Any]
    result: Any = None
    error: str | None = None
    rpc_error: bool = False


def cluster_nodes(config: Config, timeout: float = 2.0) -> list[dict[str, Any]]:
    """The live nodes (name, host, control address, ...) of the cluster ``config`` belongs to.

    :raises ConfigError: no ``[cluster] redis_url``, or Redis does not answer.
    """
    cluster = config.cluster
    if not cluster.enabled:
        raise ConfigError(f"{config.path}: --all needs [cluster] redis_url (the nodes are listed in Redis)")
    redis = redis_module()
    client = redis.Redis.from_url(cluster.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        return read_members(client, cluster.name, cluster.node_ttl)
    except redis.RedisError as exc:
        raise ConfigError(f"--all: Redis at {safe_url(cluster.redis_url)} did not answer: {exc}") from None
    finally:
        client.close()


def client_for(info: dict[str, Any], token: str, host: str | None = None) -> ControlClient:
    """The control client of one node, from the address it published.

    :raises ControlUnavailable: it published none this host can use.
    """
    address = str(info.get("control") or "")
    here = info.get("host") == (host or socket.gethostname())
    if address.startswith(("http://", "https://")):
        if not here and _host_local(address):  # from here it would reach this host's own node instead
            raise ControlUnavailable(f"node {info.get('node')} listens on {address} on host {info.get('host')}: "
                                     "give it [cluster] control_url with an address reachable from here")
        return ControlClient.http(address, token)
    if address.startswith("unix:"):
        if not here:
            raise ControlUnavailable(f"node {info.get('node')} has only a unix socket on host {info.get('host')}: "
                                     "give it [control] http (or [cluster] control_url) to reach it from here")
        return ControlClient.unix(address[len("unix:"):])
    raise ControlUnavailable(f"node {info.get('node')} published no control address")


def _host_local(url: str) -> bool:
    """Whether ``url`` names a loopback or wildcard address (meaningful on its own host only)."""
    name = (urllib.parse.urlsplit(url).hostname or "").lower()
    if name in ("", "localhost"):
        return True
    try:
        ip = ipaddress.ip_address(name)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def call_all(nodes: Sequence[dict[str, Any]], method: str, params: list[Any] | None, *, token: str,
             timeout: float, client: Callable[[dict[str, Any], str], ControlClient] = client_for) -> list[NodeAnswer]:
    """Call ``method`` on every node in parallel; the answers in the nodes' order."""

    def one(info: dict[str, Any]) -> NodeAnswer:
        name = str(info.get("node"))
        try:
            return NodeAnswer(name, info, result=client(info, token).call(method, params, timeout=timeout))
        except RpcCallError as exc:
            return NodeAnswer(name, info, error=f"{exc.code} {exc.message}", rpc_error=True)
        except (ControlUnavailable, ValueError) as exc:
            return NodeAnswer(name, info, error=str(exc))

    if not nodes:
        return []
    with ThreadPoolExecutor(max_workers=min(PARALLEL, len(nodes))) as pool:
        return list(pool.map(one, nodes))
