"""Store tests against real MariaDB and PostgreSQL servers (scripts/test-databases.sh)."""
