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
.venv/bin/python -m pytest "$@"
