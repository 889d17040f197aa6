"""``b2bua dispatcher list|reload|set-state --all``: every node of the cluster, side by side.

``list --all`` asks every live node for ``dispatcher.list`` (:mod:`b2bua.fanout`) and prints one
row per destination with what each node sees (its state letters and its own calls) and who
sends the destination's keepalives, so a node that disagrees stands out::

    SET  URI                PROBER  a       b       LOAD
    1    sip:10.0.0.1:5060  b       AP/3    AP/2    5
    1    sip:10.0.0.2:5060  a       DX/0    AP/0    0     <- b has not heard of the disable
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from b2bua.config import Config
from b2bua.fanout import NodeAnswer, call_all, cluster_nodes

#: what a node that did not answer shows in its column
NO_ANSWER = "?"


def call_every_node(config: Config, method: str, params: list[Any] | None, token: str,
                    timeout: float) -> list[NodeAnswer]:
    """``method`` on every live node of ``config``'s cluster.

    :raises ConfigError: no ``[cluster]``, Redis does not answer, or it lists no node.
    """
    from b2bua.config import ConfigError

    nodes = cluster_nodes(config)
    if not nodes:
        raise ConfigError("--all: Redis lists no live node")
    return call_all(nodes, method, params, token=token, timeout=timeout)


def _destinations(listing: Any) -> list[dict[str, Any]]:
    out = []
    for record in (listing or {}).get("RECORDS", []):
        setid = record["SET"]["ID"]
        for target in record["SET"]["TARGETS"]:
            out.append({"SET": setid, **target["DEST"]})
    return out


def cluster_table(answers: Sequence[NodeAnswer]) -> tuple[list[str], list[list[Any]]]:
    """Headers and rows: SET, URI, PROBER, one ``FLAGS/CALLS`` column per node, LOAD (every node's calls)."""
    names = [a.node for a in answers]
    seen: dict[tuple[int, str], dict[str, Any]] = {}
    order: list[tuple[int, str]] = []
    for answer in answers:
        if answer.error is not None:
            continue
        for dest in _destinations(answer.result):
            key = (dest["SET"], dest["URI"])
            if key not in seen:
                seen[key] = {"prober": None, "load": None, "nodes": {}}
                order.append(key)
            row = seen[key]
            calls = dest.get("RUNTIME", {}).get("DLGLOAD", 0)
            row["nodes"][answer.node] = f"{dest['FLAGS']}/{calls}"
            cluster = dest.get("CLUSTER") or {}
            row["prober"] = row["prober"] or cluster.get("PROBER")
            if cluster.get("LOAD") is not None:
                row["load"] = max(row["load"] or 0, cluster["LOAD"])
    rows = []
    for setid, uri in sorted(order):
        row = seen[(setid, uri)]
        rows.append([setid, uri, row["prober"] or "-",
                     *(row["nodes"].get(name, NO_ANSWER) for name in names),
                     row["load"] if row["load"] is not None else "-"])
    return ["SET", "URI", "PROBER", *names, "LOAD"], rows


def errors_of(answers: Sequence[NodeAnswer]) -> list[str]:
    """One line per node that did not answer (or answered with an error)."""
    return [f"node {a.node}: {a.error}" for a in answers if a.error is not None]
