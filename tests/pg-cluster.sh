#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the PostgreSQL kind's tests and bench.
#
#   tests/pg-cluster.sh start     initdb + pg_ctl start in a fresh temp dir
#   tests/pg-cluster.sh env       print `export ...` lines (eval them)
#   tests/pg-cluster.sh restart   pg_ctl restart -m fast (the restart tests)
#   tests/pg-cluster.sh stop      pg_ctl stop -m immediate, remove the dir
#
# The server listens on a unix socket in its own dir and on 127.0.0.1 at a
# free port (TCP is what carries keepalives), trust auth, superuser
# "postgres".  initdb refuses to run as root, so as root the cluster runs as
# the `postgres` user (created by Debian's postgresql package) in a dir under
# /tmp that it owns (a checkout under /root is not traversable by it).  Where
# the cluster lives is kept in build/pg-cluster.env.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
state=$here/build/pg-cluster.env

find_bin() {
  local b
  for b in "$(command -v pg_ctl 2>/dev/null || true)" /usr/lib/postgresql/*/bin/pg_ctl; do
    if [ -x "$b" ]; then dirname "$b"; return 0; fi
  done
  return 1
}

as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

load() {
  [ -f "$state" ] || { echo "pg-cluster: no cluster (run '$0 start' first)" >&2; exit 1; }
  # shellcheck disable=SC1090
  . "$state"
}

case ${1:-} in
start)
  if [ -f "$state" ]; then
    . "$state"
    if as_owner "$PGBIN/pg_ctl" -D "$PGDIR/data" status >/dev/null 2>&1; then
      echo "pg-cluster: already running in $PGDIR"
      exit 0
    fi
    rm -f "$state"
  fi
  PGBIN=$(find_bin) || { echo "pg-cluster: PostgreSQL server binaries not found (apt-get install postgresql)" >&2; exit 1; }
  PGDIR=$(mktemp -d /tmp/heavylock-pg.XXXXXX)
  chmod 755 "$PGDIR"
  [ "$(id -u)" = 0 ] && chown postgres: "$PGDIR"
  PGPORT=$(free_port)
  as_owner "$PGBIN/initdb" -D "$PGDIR/data" -U postgres --auth=trust -E UTF8 --no-sync \
    >"$PGDIR/initdb.log" 2>&1 || { cat "$PGDIR/initdb.log" >&2; exit 1; }
  cat >>"$PGDIR/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PGPORT
unix_socket_directories = '$PGDIR'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  as_owner "$PGBIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/server.log" -w -t 60 start >/dev/null
  mkdir -p "$(dirname "$state")"
  cat >"$state" <<EOF
PGBIN=$PGBIN
PGDIR=$PGDIR
PGPORT=$PGPORT
EOF
  echo "pg-cluster: started in $PGDIR (port $PGPORT, $("$PGBIN/postgres" --version))"
  ;;
env)
  load
  echo "export HEAVYLOCK_TEST_PG_URL='postgresql://postgres@127.0.0.1:$PGPORT/postgres'"
  echo "export HEAVYLOCK_TEST_PG_SOCKET_URL='postgresql://postgres@/postgres?host=$PGDIR&port=$PGPORT'"
  echo "export HEAVYLOCK_TEST_PG_CLUSTER='$here/tests/pg-cluster.sh'"
  ;;
restart)
  load
  as_owner "$PGBIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/server.log" -w -t 60 -m fast restart >/dev/null
  ;;
stop)
  [ -f "$state" ] || exit 0
  load
  as_owner "$PGBIN/pg_ctl" -D "$PGDIR/data" -w -t 60 -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$PGDIR" "$state"
  ;;
*)
  echo "usage: $0 start|env|restart|stop" >&2
  exit 64
  ;;
esac
