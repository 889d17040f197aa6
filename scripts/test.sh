#!/usr/bin/env bash
# Set up everything the tests need (Debian packages, pjsua2, sipp, MariaDB, PostgreSQL) and run
# the whole suite: ruff, unit tests, database tests, end-to-end tests over real SIP.
# Extra arguments go to pytest, e.g. scripts/test.sh tests/unit -x
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
eval "$(scripts/test-databases.sh)"
export B2BUA_TEST_MYSQL_URL B2BUA_TEST_PG_URL
.venv/bin/ruff check .
.venv/bin/mypy
# three worker processes (pytest-xdist; B2BUA_TEST_WORKERS=0: one process): the end-to-end tests
# mostly wait on SIP timers, so three share two cores well (17 min -> 6.5 min for them here); each
# worker's SIP peers live on 127.0.<worker>.x (tests/e2e/harness.py AddressAllocator)
.venv/bin/python -m pytest -n "${B2BUA_TEST_WORKERS:-3}" "$@"
