#!/usr/bin/env bash
# Starts N `tether server` instances that form one cluster (docs/cluster.md) and prints their
# URLs and an admin user token; Ctrl-C (or SIGTERM) stops them all.
#
# Shared state: the local Redis (REDIS_URL, default redis://127.0.0.1:6379/0) for the relay's
# stream log, presence and the consoles, and one records store: a fresh PostgreSQL database
# when the binary has `--database-url` (created as tether_cluster_<pid> on DATABASE_ADMIN_URL,
# default postgres://postgres@127.0.0.1:5432/postgres, dropped on exit; KEEP_DB=1 keeps it),
# else one SQLite data directory shared by the instances (one machine only).
#
# Usage: scripts/cluster.sh [N=3]
#   BASE_PORT=P   instance i listens on P+i-1 (default: free ports)
#   NO_BUILD=1    use the binary already built in $CARGO_TARGET_DIR/debug
#   RELEASE=1     build and use the release binary
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-3}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tether-target}
PROFILE=debug
[ -n "${RELEASE:-}" ] && PROFILE=release
if [ -z "${NO_BUILD:-}" ]; then
  if [ "$PROFILE" = release ]; then cargo build -q --release -p tether --bin tether; else cargo build -q -p tether --bin tether; fi
fi
BIN=$CARGO_TARGET_DIR/$PROFILE/tether
WORK=$(mktemp -d -t tether-cluster.XXXXXX)
PIDS=()
DB=""
ADMIN_URL=${DATABASE_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "$DB" ] && [ -z "${KEEP_DB:-}" ]; then
    psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DB" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

redis-cli -u "$REDIS_URL" ping >/dev/null || { echo "Redis at $REDIS_URL does not answer" >&2; exit 1; }

RECORDS=(--data-dir "$WORK/records")
if "$BIN" server --help 2>/dev/null | grep -q -- '--database-url'; then
  DB="tether_cluster_$$"
  psql "$ADMIN_URL" -qc "CREATE DATABASE $DB" >/dev/null
  DATABASE_URL="${ADMIN_URL%/*}/$DB"
  RECORDS=(--database-url "$DATABASE_URL")
  echo "records: PostgreSQL $DATABASE_URL (fresh)" >&2
else
  echo "records: SQLite in $WORK/records, shared by the instances (this binary has no --database-url)" >&2
fi

TOKEN=$(REDIS_URL="" "$BIN" server token create --user admin "${RECORDS[@]}" 2>/dev/null)
for i in $(seq "$N"); do
  port=0
  [ -n "${BASE_PORT:-}" ] && port=$((BASE_PORT + i - 1))
  mkdir -p "$WORK/instance-$i"
  # Each instance: its own listen address and scratch directory; Redis and records shared.
  args=(server --listen "127.0.0.1:$port" --redis-url "$REDIS_URL" "${RECORDS[@]}")
  RUST_LOG=${RUST_LOG:-info} "$BIN" "${args[@]}" >"$WORK/instance-$i.out" 2>"$WORK/instance-$i.log" &
  PIDS+=($!)
  base=""
  for _ in $(seq 100); do
    base=$(sed -n 's/^tether server listening on //p' "$WORK/instance-$i.out" 2>/dev/null | head -1)
    [ -n "$base" ] && break
    sleep 0.1
  done
  [ -n "$base" ] || { echo "instance $i did not start:" >&2; tail -20 "$WORK/instance-$i.log" >&2; exit 1; }
  echo "instance $i: $base (pid ${PIDS[-1]}, log $WORK/instance-$i.log)"
done
echo "admin token: $TOKEN"
echo "agents: server_url: [$(for i in $(seq "$N"); do sed -n 's/^tether server listening on //p' "$WORK/instance-$i.out" | head -1; done | paste -sd, -)]"
echo "Ctrl-C stops the cluster." >&2
wait
