#!/usr/bin/env bash
# Telemetry uplink benchmark (docs/benchmarks.md, "Telemetry uplink"), all in one run:
#
# 1. loopback: one vehicle → one remote over a WebSocket on loopback, 64-byte records, both
#    stores durable (SQLite WAL, synchronous=FULL): records/s from the first record handed to
#    the vehicle to the remote's ack of the last one (`bench_telemetry loopback`, release).
# 2. the Python reference of the original design (scripts/bench_telemetry_ref.py: `websockets`
#    + `sqlite3`, one ack per batch, both ends durable), same record size, same machine, run
#    right after — and the ratio. Twice: its strong form (batches of 1000, records collected
#    4096 per transaction; the goal's peer) and the original collector's own defaults
#    (batches of 50, one transaction per collected record).
# 3. fleet: VEHICLES vehicles × RATE records/s into one remote (ROLE=remote, durable inbox;
#    run by `bench_telemetry serve`: `tether collector`'s `tether_collector::run` on the
#    role's runtime, without building the whole binary): aggregate acknowledged rate and
#    p50/p99 send → ack, twice, each against a fresh remote, with the remote's CPU time:
#    - full vehicles: the vehicles run in one process (`bench_telemetry fleet`) with
#      synchronous=NORMAL stores (one 2-core machine cannot fsync for 200 vehicles; each real
#      vehicle has its own disk). This generator is itself heavy: 200 SQLite stores.
#    - wire only: `bench_telemetry wire` speaks the upload protocol directly (no local store),
#      paced the same, timing each batch from its send to the ack that covers it: the remote's
#      capacity, not the generator's. Twice: a batch every 10 ms and every 100 ms.
# 4. rss: one vehicle with MAX_LOCAL_RECORDS=100000, remote down, 200,000 records: peak RSS
#    and what it is made of (threads, malloc arenas, file-backed pages).
#
# BEFORE=path/to/another/bench_telemetry (e.g. a build of main) runs 1 and 4 with it too,
# alternated with this build, PAIRS times (default 3), for before/after medians.
#
# Everything runs under `nice`; the machine is shared, figures are noisy (run it 3 times and
# take medians). Usage: scripts/bench-telemetry.sh [RECORDS=300000] [VEHICLES=200] [RATE=1000]
#   [SECONDS=10]; NO_BUILD=1 uses the release binaries already in $CARGO_TARGET_DIR;
#   PYTHON=… picks the interpreter with `websockets` (default: .venv/bin/python);
#   LOOPBACK_ONLY=1 runs parts 1 and 2 only (with BEFORE, the alternated loopback pairs too).
set -euo pipefail
cd "$(dirname "$0")/.."
RECORDS=${1:-300000}
VEHICLES=${2:-200}
RATE=${3:-1000}
SECONDS_=${4:-10}
PYTHON=${PYTHON:-.venv/bin/python}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tether-target}
if [ -z "${NO_BUILD:-}" ]; then
  nice cargo build -q --release -p tether-collector --example bench_telemetry
fi
BIN=$CARGO_TARGET_DIR/release
. scripts/lib/bench.sh
bench_setup

echo "== loopback, ${RECORDS} × 64-byte records, durable both ends"
RUST=$(nice "$BIN/examples/bench_telemetry" loopback "$RECORDS" 64)
echo "$RUST"
PY_RECORDS=$((RECORDS / 10))
echo "== python reference, strong form (websockets + sqlite3, one ack per batch of 1000, records collected 4096 per transaction), ${PY_RECORDS} records"
PY=$(nice "$PYTHON" scripts/bench_telemetry_ref.py "$PY_RECORDS" 64 1000 chunks)
echo "$PY"
# The original collector's own defaults: uplink batches of 50, one transaction per collected
# record. Its per-record cost does not grow with the count: 2,000 records are enough.
echo "== python reference, the original's defaults (batches of 50, one transaction per collected record), 2000 records"
PY_ORIG=$(nice "$PYTHON" scripts/bench_telemetry_ref.py 2000 64 50 rows)
echo "$PY_ORIG"
python3 - "$RUST" "$PY" "$PY_ORIG" <<'PYEOF'
import json, sys
r, p, o = (json.loads(a) for a in sys.argv[1:4])
print(f"ratio rust/python (strong form): {r['records_per_s'] / p['records_per_s']:.1f}x "
      f"({r['records_per_s']:.0f} vs {p['records_per_s']:.0f} records/s)")
print(f"ratio rust/python (original defaults): {r['records_per_s'] / o['records_per_s']:.0f}x "
      f"({r['records_per_s']:.0f} vs {o['records_per_s']:.0f} records/s)")
PYEOF
# before_after RSS: with BEFORE set, the loopback run (and with RSS=1 the RSS run) of both builds,
# alternated PAIRS times.
before_after() {
  if [ -z "${BEFORE:-}" ]; then return 0; fi
  echo "== before/after, alternated ${PAIRS:-3} times: before = $BEFORE, after = this build"
  for i in $(seq "${PAIRS:-3}"); do
    for side in before after; do
      if [ "$side" = before ]; then B=$BEFORE; else B=$BIN/examples/bench_telemetry; fi
      echo "pair $i $side loopback $(nice "$B" loopback "$RECORDS" 64)"
      if [ "$1" = 1 ]; then echo "pair $i $side rss $(nice "$B" rss 200000 100000)"; fi
    done
  done
}
# LOOPBACK_ONLY=1: stop after the loopback rows and, with BEFORE, the alternated loopback pairs.
if [ -n "${LOOPBACK_ONLY:-}" ]; then
  before_after 0
  exit 0
fi

KEYS=$(python3 -c "print(','.join(f'car-{i}:key-{i}' for i in range($VEHICLES)))")
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# fleet_run NAME ARGS…: a fresh remote, the generator, and the remote's CPU use (cores).
fleet_run() {
  local name=$1 port pid before after start end
  shift
  port=$(free_port)
  ROLE=remote DB_PATH="$WORK/remote-$name.db" LISTEN="127.0.0.1:$port" API_KEYS="$KEYS" \
    nice "$BIN/examples/bench_telemetry" serve 2>"$WORK/remote-$name.log" &
  pid=$!
  PIDS+=("$pid")
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.05; done
  before=$(cpu_ticks "$pid")
  start=$(date +%s.%N)
  nice "$BIN/examples/bench_telemetry" "$1" "ws://127.0.0.1:$port/ws/telemetry/upload" "${@:2}"
  end=$(date +%s.%N)
  after=$(cpu_ticks "$pid")
  python3 -c "print(f'remote CPU: {($after - $before) / 100:.2f} s over {$end - $start:.1f} s = {($after - $before) / 100 / ($end - $start):.2f} cores')"
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}

echo "== fleet, full vehicles: ${VEHICLES} vehicles (SQLite stores, one process) × ${RATE} records/s for ${SECONDS_} s into one remote"
mkdir -p "$WORK/fleet"
fleet_run vehicles fleet "$VEHICLES" "$RATE" "$SECONDS_" "$WORK/fleet"
echo "== fleet, wire only: ${VEHICLES} connections × ${RATE} records/s for ${SECONDS_} s into one remote, a batch every 10 ms"
fleet_run wire wire "$VEHICLES" "$RATE" "$SECONDS_" 10
echo "== fleet, wire only, a batch every 100 ms (same records/s, a tenth of the batches)"
fleet_run wire100 wire "$VEHICLES" "$RATE" "$SECONDS_" 100

echo "== vehicle RSS, MAX_LOCAL_RECORDS=100000, 200000 records, remote down"
nice "$BIN/examples/bench_telemetry" rss 200000 100000

before_after 1
