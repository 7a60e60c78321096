#!/bin/bash
# A PostgreSQL server for asl-sweep ledgers, run as yourself (no root, no system service) on a machine
# every compute node can reach, e.g. a login node or a small always-on VM. Uses the cluster's
# PostgreSQL binaries (module load postgresql, conda install postgresql, or Debian's postgresql).
#
#   PGPASSWORD=choose-one examples/slurm/postgres-server.sh start   # prints the ASL_SWEEP_LEDGER line
#   examples/slurm/postgres-server.sh stop
#
# Data lives in $PGDATA (default ~/asl-sweep-postgres); a later `start` reuses it, sweeps included.
set -euo pipefail
PGDATA="${PGDATA:-$HOME/asl-sweep-postgres}"
PORT="${PORT:-55432}"
DB="${DB:-asl_sweep}"
HOST="${HOST:-$(hostname -f 2>/dev/null || hostname)}"
case "${1:-start}" in
start)
    if [ ! -f "$PGDATA/PG_VERSION" ]; then
        : "${PGPASSWORD:?set PGPASSWORD: agents connect over the network with it}"
        initdb -D "$PGDATA" -U "$USER" -A scram-sha-256 --pwfile=<(printf '%s\n' "$PGPASSWORD") >/dev/null
        echo "host all $USER 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
    fi
    pg_ctl -D "$PGDATA" -l "$PGDATA/server.log" -w start \
        -o "-p $PORT -k $PGDATA -c listen_addresses=* -c max_connections=300"
    PGPASSWORD="${PGPASSWORD:-}" createdb -h 127.0.0.1 -p "$PORT" -U "$USER" "$DB" 2>/dev/null || true
    echo "export ASL_SWEEP_LEDGER=postgresql://$USER@$HOST:$PORT/$DB   # the password from ~/.pgpass or PGPASSWORD"
    ;;
stop)
    pg_ctl -D "$PGDATA" -m fast -w stop
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
