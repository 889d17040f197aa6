#!/usr/bin/env bash
# Start private MariaDB and PostgreSQL servers on loopback for the database tests.
#
# Each server gets its own data directory under ${TMPDIR:-/tmp}/b2bua-testdb, a free TCP port on
# 127.0.0.1 (3306/5432 are never assumed free) and a unix socket in that directory, plus a
# database `b2bua_test` and a user `b2bua` with a generated password. A second run reuses the
# servers that are still running. Missing servers are installed with apt-get (root only).
#
# Usage: scripts/test-databases.sh [start|stop|purge]
#   start (default)  start (or reuse) both servers; prints on stdout, for `eval`:
#                      export B2BUA_TEST_MYSQL_URL=mysql+pymysql://b2bua:...@127.0.0.1:PORT/b2bua_test
#                      export B2BUA_TEST_PG_URL=postgresql+psycopg://b2bua:...@127.0.0.1:PORT/b2bua_test
#   stop             stop both servers (data kept, so the next start is quick)
#   purge            stop them and delete the data directory
# Env: B2BUA_TESTDB_DIR overrides the directory. Progress goes to stderr.
set -euo pipefail

BASE=${B2BUA_TESTDB_DIR:-${TMPDIR:-/tmp}/b2bua-testdb}
MY_DIR=$BASE/mariadb
PG_DIR=$BASE/postgres
DB_NAME=b2bua_test
DB_USER=b2bua
WAIT_SECONDS=30
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

say() { printf '[test-databases] %s\n' "$*" >&2; }
die() { printf '[test-databases] error: %s\n' "$*" >&2; exit 1; }
is_root() { [ "$(id -u)" -eq 0 ]; }

python_bin() {
  if [ -x "$HERE/../.venv/bin/python" ]; then echo "$HERE/../.venv/bin/python"
  elif command -v python3 >/dev/null 2>&1; then echo python3
  else die "python3 is needed to find free ports"; fi
}

# A port that is free on 127.0.0.1 right now (the kernel picks it).
free_port() {
  "$(python_bin)" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

apt_install() {
  is_root || die "$* not installed; run as root or: apt-get install -y $*"
  say "installing $* with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "$@" >&2 || { apt-get update >&2 && apt-get install -y --no-install-recommends "$@" >&2; }
}

password() {
  mkdir -p "$BASE"
  chmod 755 "$BASE"
  if [ ! -s "$BASE/password" ]; then
    (umask 077; od -An -N12 -tx1 /dev/urandom | tr -d ' \n' >"$BASE/password")
  fi
  cat "$BASE/password"
}

# ---------------------------------------------------------------- MariaDB
my_client() { mariadb --no-defaults --protocol=socket --socket="$MY_DIR/mysqld.sock" -uroot "$@"; }
my_alive() {
  [ -s "$MY_DIR/mysqld.pid" ] && kill -0 "$(cat "$MY_DIR/mysqld.pid")" 2>/dev/null \
    && mariadb-admin --no-defaults --protocol=socket --socket="$MY_DIR/mysqld.sock" -uroot ping >/dev/null 2>&1
}

start_mariadb() {
  command -v mariadbd >/dev/null 2>&1 || apt_install mariadb-server
  local pw=$1 user_opt=() port pid i
  is_root && user_opt=(--user=root)
  mkdir -p "$MY_DIR"
  if my_alive; then
    say "MariaDB already running on port $(cat "$MY_DIR/port")"
  else
    if [ ! -d "$MY_DIR/data/mysql" ]; then
      say "initialising MariaDB in $MY_DIR/data"
      rm -rf "$MY_DIR/data"
      mariadb-install-db --no-defaults --datadir="$MY_DIR/data" "${user_opt[@]}" \
        --auth-root-authentication-method=normal --skip-test-db >"$MY_DIR/install.log" 2>&1 \
        || die "mariadb-install-db failed, see $MY_DIR/install.log"
    fi
    rm -f "$MY_DIR/mysqld.pid" "$MY_DIR/mysqld.sock"
    port=$(free_port)
    say "starting MariaDB on 127.0.0.1:$port"
    setsid mariadbd --no-defaults --datadir="$MY_DIR/data" "${user_opt[@]}" \
      --bind-address=127.0.0.1 --port="$port" --socket="$MY_DIR/mysqld.sock" \
      --pid-file="$MY_DIR/mysqld.pid" --log-error="$MY_DIR/error.log" --skip-name-resolve \
      --skip-log-bin --innodb-buffer-pool-size=32M --innodb-log-file-size=16M \
      --innodb-flush-log-at-trx-commit=0 </dev/null >/dev/null 2>&1 &
    pid=$!
    echo "$port" >"$MY_DIR/port"
    for ((i = 0; i < WAIT_SECONDS * 5; i++)); do
      my_alive && break
      kill -0 "$pid" 2>/dev/null || die "MariaDB exited at start, see $MY_DIR/error.log"
      sleep 0.2
    done
    my_alive || die "MariaDB did not answer within ${WAIT_SECONDS}s, see $MY_DIR/error.log"
  fi
  my_client <<SQL || die "cannot create the MariaDB test database/user"
CREATE DATABASE IF NOT EXISTS \`$DB_NAME\`;
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$pw';
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$pw';
ALTER USER '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$pw';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$pw';
GRANT ALL PRIVILEGES ON \`$DB_NAME\`.* TO '$DB_USER'@'127.0.0.1', '$DB_USER'@'localhost';
SQL
}

stop_mariadb() {
  [ -s "$MY_DIR/mysqld.pid" ] || return 0
  local pid i
  pid=$(cat "$MY_DIR/mysqld.pid")
  if kill -0 "$pid" 2>/dev/null; then
    say "stopping MariaDB (pid $pid)"
    kill -TERM "$pid"
    for ((i = 0; i < WAIT_SECONDS * 5; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && die "MariaDB (pid $pid) did not stop"
  fi
  rm -f "$MY_DIR/mysqld.pid"
}

# ---------------------------------------------------------------- PostgreSQL
pg_bin() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$dir" ] && echo "$dir"
}
# PostgreSQL refuses to run as root: as root, run its tools as the postgres user.
as_pg() { if is_root; then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_alive() {
  local bin=$1
  [ -s "$PG_DIR/port" ] && [ -d "$PG_DIR/data" ] && as_pg "$bin/pg_ctl" -D "$PG_DIR/data" status >/dev/null 2>&1 \
    && as_pg "$bin/pg_isready" -q -h "$PG_DIR" -p "$(cat "$PG_DIR/port")" -t 2
}
pg_sql() { as_pg "$1/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_DIR" -p "$(cat "$PG_DIR/port")" -U postgres -d postgres "${@:2}"; }

start_postgres() {
  local pw=$1 bin port
  bin=$(pg_bin) || { apt_install postgresql; bin=$(pg_bin) || die "PostgreSQL binaries not found after install"; }
  mkdir -p "$PG_DIR"
  if is_root; then
    chown postgres: "$PG_DIR"
    runuser -u postgres -- test -w "$PG_DIR" \
      || die "the postgres user cannot reach $PG_DIR; set TMPDIR or B2BUA_TESTDB_DIR to a world-traversable directory"
  fi
  if pg_alive "$bin"; then
    say "PostgreSQL already running on port $(cat "$PG_DIR/port")"
  else
    if [ ! -s "$PG_DIR/data/PG_VERSION" ]; then
      say "initialising PostgreSQL in $PG_DIR/data"
      as_pg rm -rf "$PG_DIR/data"
      as_pg "$bin/initdb" -D "$PG_DIR/data" -U postgres -E UTF8 --locale=C --no-sync \
        --auth-local=trust --auth-host=scram-sha-256 >"$PG_DIR/initdb.log" 2>&1 \
        || die "initdb failed, see $PG_DIR/initdb.log"
    fi
    as_pg "$bin/pg_ctl" -D "$PG_DIR/data" stop -m immediate >/dev/null 2>&1 || true  # a stale instance
    port=$(free_port)
    echo "$port" >"$PG_DIR/port"
    say "starting PostgreSQL on 127.0.0.1:$port"
    as_pg "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t "$WAIT_SECONDS" \
      -o "-c port=$port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$PG_DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
      start >/dev/null || die "PostgreSQL did not start, see $PG_DIR/server.log"
  fi
  pg_sql "$bin" <<SQL || die "cannot create the PostgreSQL test database/user"
DO \$\$BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$DB_USER') THEN CREATE ROLE $DB_USER LOGIN; END IF;
END\$\$;
ALTER ROLE $DB_USER LOGIN PASSWORD '$pw';
SQL
  if [ "$(pg_sql "$bin" -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" != 1 ]; then
    pg_sql "$bin" -c "CREATE DATABASE $DB_NAME OWNER $DB_USER" || die "cannot create database $DB_NAME"
  fi
}

stop_postgres() {
  local bin
  bin=$(pg_bin) || return 0
  [ -s "$PG_DIR/data/postmaster.pid" ] || return 0
  say "stopping PostgreSQL"
  as_pg "$bin/pg_ctl" -D "$PG_DIR/data" stop -m fast -w -t "$WAIT_SECONDS" >/dev/null
}

# ---------------------------------------------------------------- main
case "${1:-start}" in
  start)
    pw=$(password)
    start_mariadb "$pw"
    start_postgres "$pw"
    echo "export B2BUA_TEST_MYSQL_URL=mysql+pymysql://$DB_USER:$pw@127.0.0.1:$(cat "$MY_DIR/port")/$DB_NAME"
    echo "export B2BUA_TEST_PG_URL=postgresql+psycopg://$DB_USER:$pw@127.0.0.1:$(cat "$PG_DIR/port")/$DB_NAME"
    ;;
  stop)
    stop_mariadb
    stop_postgres
    ;;
  purge)
    stop_mariadb
    stop_postgres
    say "removing $BASE"
    rm -rf "$BASE"
    ;;
  *) die "usage: $0 [start|stop|purge]" ;;
esac
