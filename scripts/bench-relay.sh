#!/usr/bin/env bash
# Group relay benchmark: N dongle pairs, each direction at a fixed frame rate, through one
# release `tether server` — first with the SQLite default, then with Redis — and, in the same
# run, through a plain WebSocket relay (the ceiling of the same stack: loopback TCP,
# tungstenite, the same MessagePack batches, no storage and no protocol logic).
#
# The load comes from `daemons/server/examples/bench_relay.rs`: protocol clients that behave like
# dongle agents on `/ws/data` (hello with MessagePack, frame batches every 5 ms, cumulative
# acks), not `tether agent` processes fed over UDP — on this 2-core machine 40 agent processes
# plus 40 simulated dongles would measure the simulators, not the relay. Groups, agents and
# dongles are created through the REST API as a user would.
#
# Prints per target: frames/s delivered while sending (run_deliv) and over the whole run
# including the drain (all_deliv), frames lost (must be 0), duplicates, frames still undelivered
# when the drain timeout ended, added latency p50/p99 (send → receive through the relay, same
# clock), the servers' CPU time (user + system, all instances, set-up included) per delivered
# frame, then a summary table.
#
# The `cluster2` target runs the same load through two server instances on the same Redis and
# data directory, every group's side A on instance 1 and side B on instance 2 (docs/cluster.md:
# frames cross instances through the Redis stream log and its blocking tail).
#
# Redis: a private redis-server on a spare port (no persistence, noeviction), never the shared
# one. Everything runs under `nice`; the machine is shared, figures are noisy.
#
# `agents` mode: the load goes through two real `tether agent` processes (dongle role) fed by
# simulated REMP dongles over UDP (`daemons/server/examples/bench_agents.rs`), into one release
# server (SQLite): dongle → agent A → server → agent B → dongle and back. Two runs: the goal load
# (DONGLES per agent, RATE frames/s each way per dongle), then the overload case (one dongle
# pair sending as fast as they can, `dongle.outbox_max_frames` = OUTBOX_CAP): the delivered
# frames per second of the run show whether the rate holds, the agent's
# `frames_dropped_total{reason="outbox_full"}` counts what was shed. The result line also
# has each agent's CPU time (user + system, from /proc) from the start of sending to the end of
# the drain, per frame it handled (`agent_cpu_us_per_frame`, agent A/agent B: frames read from
# its dongles plus frames sent to them), the driver's (`driver_cpu_us_per_frame`) and the
# server's over its whole run per frame sent (`server_cpu_us_per_frame`): steadier than rates
# and latencies on a shared machine.
#
# Usage: scripts/bench-relay.sh [PAIRS=20] [RATE=4500] [SECONDS=10]
#        scripts/bench-relay.sh agents [DONGLES=10] [RATE=4500] [SECONDS=10] (OUTBOX_CAP=2000)
#        AGENT_LOGS=DIR keeps the agents' logs (agents mode).
#        ONLY=goal or ONLY=overload runs one of the two agents runs.
#        BIN=DIR runs the binaries of DIR (`tether`, `examples/bench_agents`), e.g. a copy of
#        an earlier build's, to alternate two builds in one session (with NO_BUILD=1).
#        NO_BUILD=1 uses the release binaries already in $CARGO_TARGET_DIR.
#        SERVER_CONFIG=FILE passes `--config FILE` to both servers (e.g. a `relay:` section).
#        TARGETS="sqlite redis cluster2 ceiling" (the default) picks the relay targets to run,
#        e.g. TARGETS="redis cluster2".
# Each server's CPU time (user + system) over its whole run is printed with its memory, also
# per frame offered (PAIRS x RATE x 2 x SECONDS): steadier than p99 on a shared machine.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=relay
if [ "${1:-}" = agents ]; then MODE=agents; shift; fi
PAIRS=${1:-$([ "$MODE" = agents ] && echo 10 || echo 20)}
RATE=${2:-4500}
DURATION=${3:-10}
TARGETS=${TARGETS:-sqlite redis cluster2 ceiling}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tether-target}
if [ -z "${NO_BUILD:-}" ]; then
  nice cargo build -q --release -p tether --bin tether && nice cargo build -q --release -p tether-server --example bench_relay --example bench_agents
fi
BIN=${BIN:-$CARGO_TARGET_DIR/release}
. scripts/lib/bench.sh
bench_setup

start_redis --maxmemory-policy noeviction
REDIS="redis://127.0.0.1:$RPORT"

RESULTS=()

# start_server NAME DATA [REDIS_URL] — starts an instance, sets SERVER_PID and SERVER_BASE.
start_server() {
  local name=$1 data=$2 redis=${3:-}
  local args=(server --listen 127.0.0.1:0 --data-dir "$data")
  [ -n "$redis" ] && args+=(--redis-url "$redis")
  # One user token sets up every group and one agent holds every side: limits off unless the
  # caller's SERVER_CONFIG says otherwise.
  if [ -n "${SERVER_CONFIG:-}" ]; then
    args+=(--config "$SERVER_CONFIG")
  else
    printf 'limits:\n  rest_requests_per_s: 0\n  ws_data_connections_per_agent: 0\n' >"$WORK/limits.yaml"
    args+=(--config "$WORK/limits.yaml")
  fi
  REDIS_URL="" RUST_LOG=warn nice "$BIN/tether" "${args[@]}" >"$WORK/$name.out" 2>"$WORK/$name.err" &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  SERVER_BASE=$(server_base "$WORK/$name.out")
  [ -n "$SERVER_BASE" ] || { echo "server ($name) did not start:" >&2; cat "$WORK/$name.err" >&2; exit 1; }
}

# run_relay LABEL [REDIS_URL [INSTANCES]] — INSTANCES=2 puts every group's sides on two
# instances sharing the Redis and the data directory.
run_relay() {
  local label=$1 redis=${2:-} instances=${3:-1}
  local data="$WORK/$label"
  mkdir -p "$data"
  local token
  token=$("$BIN/tether" server token create --user bench --data-dir "$data" 2>/dev/null)
  start_server "$label" "$data" "$redis"
  local base=$SERVER_BASE pids=("$SERVER_PID") extra=()
  if [ "$instances" = 2 ]; then
    start_server "$label-2" "$data" "$redis"
    pids+=("$SERVER_PID")
    extra=(--server-b "$SERVER_BASE")
    echo "== $label: $PAIRS pairs x $RATE frames/s per direction for ${DURATION}s, side A via $base, side B via $SERVER_BASE ==" >&2
  else
    echo "== $label: $PAIRS pairs x $RATE frames/s per direction for ${DURATION}s via $base ==" >&2
  fi
  local line
  line=$(nice "$BIN/examples/bench_relay" relay --server "$base" "${extra[@]}" --token "$token" \
    --pairs "$PAIRS" --rate "$RATE" --seconds "$DURATION" --label "$label")
  # utime + stime of each instance (fields 14 and 15 of /proc/PID/stat; the command name in
  # field 2 holds no spaces here), read once: per server on stderr, summed in the result line.
  local tck total=0 frames=$((PAIRS * RATE * 2 * DURATION)) p rss ticks
  tck=$(getconf CLK_TCK)
  local per_server=()
  for p in "${pids[@]}"; do
    rss=$(ps -o rss= -p "$p" 2>/dev/null | tr -d ' ' || echo "?")
    ticks=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
    total=$((total + ticks))
    per_server+=("   server $p resident memory after the run: ${rss} KiB; CPU $(awk -v t="$ticks" -v h="$tck" -v f="$frames" \
      'BEGIN { printf "%.2f s, %.2f us per frame offered", t / h, t / h * 1e6 / f }')")
  done
  line="$line server_cpu_s=$(awk -v t="$total" -v h="$tck" 'BEGIN {printf "%.2f", t / h}')"
  echo "$line"
  RESULTS+=("$line")
  printf '%s\n' "${per_server[@]}" >&2
  for p in "${pids[@]}"; do
    kill -TERM "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
}

# run_agents LABEL DONGLES RATE [EXTRA…] — a fresh SQLite server, the agents and dongles of
# bench_agents; prints its result line and the server's resident memory.
run_agents() {
  local label=$1 dongles=$2 rate=$3
  shift 3
  local data="$WORK/$label"
  mkdir -p "$data/agents"
  local token
  token=$("$BIN/tether" server token create --user bench --data-dir "$data" 2>/dev/null)
  start_server "$label" "$data"
  echo "== $label: 2 agents x $dongles dongles, ${rate} frames/s per dongle each way (0 = as fast as possible) for ${DURATION}s ==" >&2
  local line
  line=$(nice "$BIN/examples/bench_agents" --server "$SERVER_BASE" --token "$token" --tether "$BIN/tether" \
    --work "$data/agents" --dongles "$dongles" --rate "$rate" --seconds "$DURATION" --label "$label" "$@") || {
    tail -5 "$data"/agents/agent-*/agent.err >&2
    return 1
  }
  # The server's utime + stime over its whole run (set-up included), per frame sent.
  local ticks sent
  ticks=$(awk '{print $14 + $15}' "/proc/$SERVER_PID/stat" 2>/dev/null || echo 0)
  sent=$(tr ' ' '\n' <<<"$line" | sed -n 's/^sent=//p')
  line="$line $(awk -v t="$ticks" -v h="$(getconf CLK_TCK)" -v n="${sent:-0}" \
    'BEGIN { printf "server_cpu_s=%.2f server_cpu_us_per_frame=%s", t / h, (n > 0 ? sprintf("%.2f", t / h * 1e6 / n) : "-") }')"
  echo "$line"
  echo "   server resident memory after the run: $(ps -o rss= -p "$SERVER_PID" | tr -d ' ') KiB" >&2
  if [ -n "${AGENT_LOGS:-}" ]; then
    mkdir -p "$AGENT_LOGS"
    for f in "$data"/agents/agent-*/agent.err; do cp "$f" "$AGENT_LOGS/$label-$(basename "$(dirname "$f")").err"; done
  fi
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
}

if [ "$MODE" = agents ]; then
  if [ "${ONLY:-goal}" = goal ]; then run_agents goal "$PAIRS" "$RATE"; fi
  if [ "${ONLY:-overload}" = overload ]; then
    run_agents overload 1 0 --outbox-max-frames "${OUTBOX_CAP:-2000}"
  fi
  exit 0
fi

wants() { [[ " $TARGETS " == *" $1 "* ]]; }
if wants sqlite; then run_relay sqlite; fi
if wants redis; then run_relay redis "$REDIS"; fi
if wants cluster2; then run_relay cluster2 "$REDIS" 2; fi
if wants ceiling; then
  echo "== ceiling: plain WebSocket relay, same clients and batches ==" >&2
  line=$(nice "$BIN/examples/bench_relay" echo --pairs "$PAIRS" --rate "$RATE" --seconds "$DURATION" --label ceiling)
  echo "$line"
  RESULTS+=("$line")
fi

field() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"; }
echo
printf '%-9s %10s %12s %12s %6s %5s %12s %8s %10s %10s %12s\n' target offered/s run_deliv/s all_deliv/s lost dup undelivered drain_s p50_ms p99_ms cpu_us/frame
for r in "${RESULTS[@]}"; do
  cpu=$(field "$r" server_cpu_s)
  per_frame=$(awk -v c="${cpu:-0}" -v n="$(field "$r" delivered)" 'BEGIN {if (c > 0 && n > 0) printf "%.2f", c * 1e6 / n; else print "-"}')
  printf '%-9s %10s %12s %12s %6s %5s %12s %8s %10s %10s %12s\n' "$(field "$r" label)" "$(field "$r" offered_fps)" \
    "$(field "$r" delivered_fps_during_run)" "$(field "$r" delivered_fps_overall)" "$(field "$r" lost)" \
    "$(field "$r" duplicated)" "$(field "$r" undelivered_at_end)" "$(field "$r" drain_s)" \
    "$(field "$r" latency_ms_p50)" "$(field "$r" latency_ms_p99)" "$per_frame"
done
