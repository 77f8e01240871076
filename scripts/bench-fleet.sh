#!/usr/bin/env bash
# A fleet on one instance: 1,000 simulated dongles in 500 active groups at 100 frames/s each way
# through one release `tether server` (SQLite, in-memory console hub), run twice side by side:
# with a small console history budget (256 MiB) and with the default budget (a sixteenth of the
# machine's memory, at most 2 GiB). Every relayed frame is also a `can_frame` console event in its
# dongle's and its group's stream, so the console history is what grows with the fleet.
#
# Per run: delivered rate, lost, p99 added latency (from `bench_relay`), the server's peak
# resident memory and its CPU use (user + system time over the run, in cores), and the console
# history gauges at the end (`tether_server_console_history_*` from /metrics).
#
# The load comes from `daemons/server/examples/bench_relay.rs` (protocol clients on /ws/data, as
# in scripts/bench-relay.sh). Everything runs under `nice`; the machine is shared, figures are
# noisy: compare the two rows of one run.
#
# Usage: scripts/bench-fleet.sh [PAIRS=500] [RATE=100] [SECONDS=75]
#        NO_BUILD=1 uses the release binaries already in $CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${1:-500}
RATE=${2:-100}
DURATION=${3:-75}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tether-target}
if [ -z "${NO_BUILD:-}" ]; then
  nice cargo build -q --release -p tether --bin tether && nice cargo build -q --release -p tether-server --example bench_relay
fi
BIN=$CARGO_TARGET_DIR/release
. scripts/lib/bench.sh
bench_setup
TICKS=$(getconf CLK_TCK)
ROWS=()

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
metric() { sed -n "s/^tether_server_$2 //p" <<<"$1" | head -1; }

# run_fleet LABEL [BUDGET_BYTES]
run_fleet() {
  local label=$1 budget=${2:-}
  local data="$WORK/$label"
  mkdir -p "$data"
  local config="$data/server.yaml"
  : >"$config"
  [ -n "$budget" ] && printf 'console:\n  history_budget_bytes: %s\n' "$budget" >"$config"
  # One user token sets up every group and one agent holds each side: REST rate limit off.
  printf 'limits:\n  rest_requests_per_s: 0\n  ws_data_connections_per_agent: 0\n' >>"$config"
  local token
  token=$("$BIN/tether" server token create --user bench --data-dir "$data" 2>/dev/null)
  REDIS_URL="" RUST_LOG=warn nice "$BIN/tether" server --listen 127.0.0.1:0 --data-dir "$data" \
    --config "$config" >"$WORK/$label.out" 2>"$WORK/$label.err" &
  local pid=$!
  PIDS+=("$pid")
  local base
  base=$(server_base "$WORK/$label.out")
  [ -n "$base" ] || { echo "server ($label) did not start:" >&2; cat "$WORK/$label.err" >&2; exit 1; }
  echo "== $label: $PAIRS pairs x $RATE frames/s per direction for ${DURATION}s via $base ==" >&2
  nice "$BIN/examples/bench_relay" relay --server "$base" --token "$token" \
    --pairs "$PAIRS" --rate "$RATE" --seconds "$DURATION" --label "$label" >"$WORK/$label.line" &
  local bench=$!
  local t0 c0 peak=0 rss
  t0=$(date +%s.%N)
  c0=$(cpu_ticks "$pid")
  while kill -0 "$bench" 2>/dev/null; do
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
    [ "$rss" -gt "$peak" ] && peak=$rss
    sleep 1
  done
  wait "$bench"
  local c1 t1 cores metrics
  c1=$(cpu_ticks "$pid")
  t1=$(date +%s.%N)
  cores=$(awk -v c="$((c1 - c0))" -v hz="$TICKS" -v t="$(echo "$t1 - $t0" | bc)" 'BEGIN {printf "%.2f", c / hz / t}')
  metrics=$(curl -s "$base/metrics")
  local line
  line="$(cat "$WORK/$label.line") server_peak_rss_kib=$peak server_cpu_cores=$cores history_bytes=$(metric "$metrics" console_history_bytes) history_events=$(metric "$metrics" console_history_events) history_budget=$(metric "$metrics" console_history_budget_bytes) trimmed_by_budget=$(metric "$metrics" console_history_trimmed_by_budget_total)"
  echo "$line"
  ROWS+=("$line")
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

run_fleet budget-256MiB $((256 << 20))
run_fleet budget-default

field() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"; }
echo
printf '%-15s %10s %12s %6s %8s %9s %10s %6s %12s %12s %12s\n' run offered/s delivered/s lost p99_ms peak_MiB budget_MiB cores history_MiB events trimmed
for r in "${ROWS[@]}"; do
  printf '%-15s %10s %12s %6s %8s %9s %10s %6s %12s %12s %12s\n' "$(field "$r" label)" "$(field "$r" offered_fps)" \
    "$(field "$r" delivered_fps_during_run)" "$(field "$r" lost)" "$(field "$r" latency_ms_p99)" \
    "$(( $(field "$r" server_peak_rss_kib) / 1024 ))" "$(( $(field "$r" history_budget) / 1048576 ))" \
    "$(field "$r" server_cpu_cores)" "$(( $(field "$r" history_bytes) / 1048576 ))" \
    "$(field "$r" history_events)" "$(field "$r" trimmed_by_budget)"
done
