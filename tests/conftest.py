"""Shared by every test: the session header that makes a CI log self-explaining, and a private
Redis server for the cluster tests (``redis_factory``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redisserver import RedisServer, RedisServerError


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Show which Python and which sipp ran the tests (the e2e results depend on both)."""
    sipp = shutil.which("sipp")
    version = "not installed (e2e tests will fail: install sip-tester)"
    if sipp is not None:
        out = subprocess.run([sipp, "-v"], capture_output=True, text=True, timeout=10, check=False).stdout
        version = f"{sipp} ({next((ln.strip() for ln in out.splitlines() if 'SIPp' in ln), 'unknown version')})"
    return [f"python: {sys.executable}", f"sipp: {version}"]


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[[], RedisServer]]:
    """``redis_factory()`` starts a private redis-server (tests/redisserver.py); all are stopped at the end.

    A missing redis-server fails the test (scripts/setup.sh --test installs it), never skips it.
    """
    started: list[RedisServer] = []

    def start() -> RedisServer:
        try:
            server = RedisServer(tmp_path / f"redis{len(started) + 1}").start()
        except RedisServerError as exc:
            pytest.fail(str(exc), pytrace=False)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
