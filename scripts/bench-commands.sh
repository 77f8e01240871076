#!/usr/bin/env bash
# Vehicle-commands benchmark: ReadDTC commands through one release `tether server` with the mock
# connector at zero delay (`commands: {connector: mock, mock_delay_ms: [0, 0]}`) and a private
# Redis — each command accepted (202), stored, its final response stored and PUBLISHed on
# `response:{id}`, and every 100th one also read back through its `/ws/responses/{id}`
# WebSocket. Goal (issue 14): >= 5,000 commands/s, p99 from POST to the final response < 20 ms.
#
# The load comes from `daemons/server/examples/bench_commands.rs` (HTTP/1.1 keep-alive workers;
# a command is done when its final event arrives on Redis). Everything runs under `nice` on a
# shared machine: figures are noisy.
#
# Usage: scripts/bench-commands.sh [COUNT=20000] [CONCURRENCY=64] [VEHICLES=100]
#        NO_BUILD=1 uses the release binaries already in $CARGO_TARGET_DIR;
#        BIN_DIR=DIR (implies NO_BUILD) takes `tether` and `bench_commands` from DIR instead —
#        to alternate builds of two commits in one session.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${1:-20000}
CONCURRENCY=${2:-64}
VEHICLES=${3:-100}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tether-target}
if [ -z "${NO_BUILD:-}" ] && [ -z "${BIN_DIR:-}" ]; then
  nice cargo build -q --release -p tether --bin tether && nice cargo build -q --release -p tether-server --example bench_commands
fi
BIN=${BIN_DIR:-$CARGO_TARGET_DIR/release}
BENCH=$BIN/bench_commands
[ -x "$BENCH" ] || BENCH=$BIN/examples/bench_commands
. scripts/lib/bench.sh
bench_setup

start_redis
REDIS="redis://127.0.0.1:$RPORT"

cat >"$WORK/server.yaml" <<YAML
commands:
  connector: mock
  mock_delay_ms: [0, 0]
# One token drives the whole load: its REST rate limit is off.
limits:
  rest_requests_per_s: 0
YAML
DATA="$WORK/data"
TOKEN=$("$BIN/tether" server token create --user bench --data-dir "$DATA" 2>/dev/null)
REDIS_URL="" RUST_LOG=warn nice "$BIN/tether" server --listen 127.0.0.1:0 --data-dir "$DATA" \
  --redis-url "$REDIS" --config "$WORK/server.yaml" >"$WORK/server.out" 2>"$WORK/server.err" &
SERVER=$!
PIDS+=("$SERVER")
BASE=$(server_base "$WORK/server.out")
[ -n "$BASE" ] || { echo "server did not start:" >&2; cat "$WORK/server.err" >&2; exit 1; }
echo "== $COUNT ReadDTC commands, $CONCURRENCY in flight, $VEHICLES vehicles, mock connector at zero delay, via $BASE ==" >&2
LINE=$(nice "$BENCH" --server "$BASE" --token "$TOKEN" --redis "$REDIS" \
  --count "$COUNT" --concurrency "$CONCURRENCY" --vehicles "$VEHICLES")
echo "$LINE"
echo "   server resident memory after the run: $(ps -o rss= -p "$SERVER" | tr -d ' ') KiB" >&2
field() { tr ' ' '\n' <<<"$LINE" | sed -n "s/^$1=//p"; }
echo
printf '%10s %10s %6s %9s %14s %8s %8s\n' commands commands/s lost streamed stream_failures p50_ms p99_ms
printf '%10s %10s %6s %9s %14s %8s %8s\n' "$(field commands)" "$(field commands_per_s)" "$(field lost)" \
  "$(field streamed)" "$(field stream_failures)" "$(field latency_ms_p50)" "$(field latency_ms_p99)"
