"""Fixtures for the database-server tests.

``scripts/test-databases.sh`` starts MariaDB and PostgreSQL on loopback and prints the
``B2BUA_TEST_MYSQL_URL`` / ``B2BUA_TEST_PG_URL`` exports. A missing URL fails the test:
these tests are never skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

ENV = {"mariadb": "B2BUA_TEST_MYSQL_URL", "postgres": "B2BUA_TEST_PG_URL"}


@pytest.fixture(
    params=[
        pytest.param("mariadb", marks=pytest.mark.mariadb),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def backend(request: pytest.FixtureRequest) -> str:
    """Which server the test runs against ("mariadb" or "postgres")."""
    return str(request.param)


@pytest.fixture
def server_url(backend: str) -> str:
    """The server's SQLAlchemy URL, from the environment; fails when it is missing."""
    name = ENV[backend]
    url = os.environ.get(name, "")
    if not url:
        pytest.fail(f"{name} is not set: run `eval \"$(scripts/test-databases.sh)\"` first")
    return url


@pytest.fixture
def engine(server_url: str) -> Iterator[sa.Engine]:
    """A plain engine on the test database, for setting up tables by hand."""
    eng = sa.create_engine(server_url)
    yield eng
    eng.dispose()


@pytest.fixture
def table_name(engine: sa.Engine) -> Iterator[str]:
    """A table name of this test's own; the table and its version row go afterwards."""
    name = f"ds_test_{uuid.uuid4().hex[:12]}"
    yield name
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))
        if sa.inspect(conn).has_table("version"):
            conn.execute(sa.text("DELETE FROM version WHERE table_name = :t"), {"t": name})
