"""``[plugins.cdr]``: where call records go.

Example::

    [plugins]
    enabled = ["dispatcher", "failover", "cdr"]

    [plugins.cdr]
    file = "/var/log/b2bua/cdr.jsonl"                        # one JSON object per call
    db_url = "postgresql+psycopg://cdr:secret@127.0.0.1/voip"  # and a row per call (optional)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from b2bua.config import opt
from plugins.cdr.record import NODE_MAX

#: a table name as every supported database takes it unquoted
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


@dataclass(frozen=True)
class CdrConfig:
    """Call records (``docs/cdr.md``): one per call to a JSON-lines file and, optionally, an SQL
    table; written by a thread of their own, never by the call's."""

    file: str = opt(
        "cdr.jsonl", "JSON-lines file of call records, relative to the config's folder; reopened on "
        "reload (SIGHUP) and when it was moved or deleted (logrotate); empty: none"
    )
    db_url: str = opt(
        "", "also write the records to this database (SQLAlchemy URL: sqlite:///cdr.db, "
        "mysql+pymysql://..., postgresql+psycopg://...); empty: none"
    )
    table: str = opt("cdr", "table of call records, one row per call (created when missing)")
    attempts_table: str = opt("cdr_attempts", "table of attempts, one row per B leg (created when missing)")
    node: str = opt("", "this B2BUA's name in every record (at most 64 characters), for several writing to one "
                   "table; empty: the host name")
    queue_size: int = opt(
        10000, "records waiting for the writer at most; past it new ones are dropped, counted and logged",
        bounds=(1, 10_000_000),
    )
    db_backlog: int = opt(
        50000, "records kept for the database while it fails (the file has them all); past it the oldest "
        "are dropped from the database's copy", bounds=(1, 10_000_000),
    )
    db_retry: float = opt(
        2.0, "seconds before the first retry of a failing database, doubled each time up to 60",
        bounds=(0.1, 3600),
    )

    def validate(self) -> None:
        if not self.file and not self.db_url:
            raise ValueError("file, db_url: set at least one (where would the records go?)")
        for name in ("table", "attempts_table"):
            value = getattr(self, name)
            if not _IDENTIFIER.fullmatch(value):
                raise ValueError(f"{name}: {value!r}: use letters, digits and '_' (not first), at most 63")
        if self.node:
            check_node(self.node)
        if self.table == self.attempts_table:
            raise ValueError(f"attempts_table: {self.attempts_table!r} is the same table as table")


def check_node(node: str) -> None:
    """A node name fits the records' column (:raises ValueError: why not; control characters are
    refused by the config parser for every string)."""
    if len(node) > NODE_MAX:
        raise ValueError(f"node: {node[:80]!r}{'...' if len(node) > 80 else ''} is {len(node)} characters, "
                         f"at most {NODE_MAX} (the records' node column)")
