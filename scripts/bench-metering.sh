#!/usr/bin/env bash
# Metering benchmarks (short runs; the machine is shared). Starts its own redis-server on a
# spare port (no persistence, noeviction) so it never touches anyone's data.
#  1. Drain N queued items with a do-nothing handler: our reliable-queue consumer
#     (metering-core, batched LMOVE + ack) vs a BullMQ worker vs an RQ SimpleWorker.
#  2. End to end: `tether agent` forwarding usage records to a control-plane double that answers
#     in 2 ms with 1 % 503s: records/s, duplicates, resident memory, start time.
# Usage: scripts/bench-metering.sh [DRAIN_N=100000] [E2E_N=200000] [RQ_N=20000] [RUNS=3]
# DRAIN_N=0 skips part 1 (only the end-to-end runs). The agent's in-flight window can be changed
# with MAX_CONCURRENT (control-plane requests per worker, default 16; 4 workers, batches of 1000:
# 64 requests in flight, as many as the agent's own defaults, 2 workers x 32).
set -euo pipefail
cd "$(dirname "$0")/.."
DRAIN_N=${1:-100000}
E2E_N=${2:-200000}
RQ_N=${3:-5000}
RUNS=${4:-3}
MAX_CONCURRENT=${MAX_CONCURRENT:-16}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/root/.cache/tether-target-metering}
cargo build -q --release -p metering-core --examples
cargo build -q --release -p tether --bin tether
BIN=$CARGO_TARGET_DIR/release
. scripts/lib/bench.sh
bench_setup
start_redis --maxmemory-policy noeviction
REDIS_URL="redis://127.0.0.1:$RPORT"


# Fill queue:usage_records under a prefix with N ~300-byte usage records (pipelined, fast).
fill() {
  local prefix=$1 n=$2
  python3 - "$prefix" "$n" <<'PY' | redis-cli -p "$RPORT" --pipe >/dev/null
import json, sys
prefix, n = sys.argv[1], int(sys.argv[2])
key = f"{prefix}queue:usage_records"
out = sys.stdout.buffer
def cmd(*parts):
    b = [f"*{len(parts)}\r\n".encode()]
    for p in parts:
        p = p.encode() if isinstance(p, str) else p
        b.append(f"${len(p)}\r\n".encode() + p + b"\r\n")
    return b"".join(b)
for i in range(n):
    rec = json.dumps({"api_session_id": f"s{i % 50}", "customer_id": "c1", "product_code": "speech_transcription",
        "connection_duration_seconds": 1.5, "data_bytes_processed": 4096, "audio_duration_seconds": 1.25,
        "request_count": 1, "request_timestamp": "2026-11-23T10:00:00Z",
        "response_timestamp": "2026-11-23T10:00:01Z", "record_id": f"rec-{i}"})
    out.write(cmd("LPUSH", key, rec))
PY
}

if [ "$DRAIN_N" -gt 0 ]; then
echo "== 1. drain $DRAIN_N items, do-nothing handler (runs: $RUNS) =="
ours=()
for r in $(seq "$RUNS"); do
  fill "d$r:" "$DRAIN_N"
  ours+=("$("$BIN/examples/bench_drain" "$REDIS_URL" "d$r:" "$DRAIN_N" 4 500 | awk '{print $3}')")
done
OURS=$(printf '%s\n' "${ours[@]}" | median)
echo "metering-core: runs ${ours[*]} items/s, median $OURS"

# BullMQ (npm), installed into a temp dir.
BULL=""
if command -v npm >/dev/null; then
  mkdir -p "$WORK/bull" && (cd "$WORK/bull" && npm init -y >/dev/null && npm install --silent bullmq ioredis >/dev/null 2>&1) || true
  cat > "$WORK/bull/drain.js" <<'JS'
const { Queue, Worker } = require('bullmq');
const [port, n, name] = [Number(process.argv[2]), Number(process.argv[3]), process.argv[4]];
const connection = { host: '127.0.0.1', port };
(async () => {
  const q = new Queue(name, { connection });
  const payload = { api_session_id: 's1', customer_id: 'c1', product_code: 'speech_transcription',
    connection_duration_seconds: 1.5, data_bytes_processed: 4096, audio_duration_seconds: 1.25,
    request_count: 1, request_timestamp: '2026-11-23T10:00:00Z', response_timestamp: '2026-11-23T10:00:01Z' };
  for (let i = 0; i < n; i += 1000) {
    const jobs = [];
    for (let j = i; j < Math.min(n, i + 1000); j++) jobs.push({ name: 'u', data: { ...payload, record_id: 'rec-' + j },
      opts: { removeOnComplete: true } });
    await q.addBulk(jobs);
  }
  let done = 0; const start = process.hrtime.bigint();
  await new Promise((resolve) => {
    const w = new Worker(name, async () => {}, { connection, concurrency: 100 });
    w.on('completed', () => { if (++done === n) { resolve(); w.close(); } });
  });
  const secs = Number(process.hrtime.bigint() - start) / 1e9;
  console.log(`${done} ${secs.toFixed(3)} ${(done / secs).toFixed(0)}`);
  await q.close();
  process.exit(0);
})();
JS
  if [ -d "$WORK/bull/node_modules/bullmq" ]; then
    bull=()
    for r in $(seq "$RUNS"); do bull+=("$(node "$WORK/bull/drain.js" "$RPORT" "$DRAIN_N" "b$r" | awk '{print $3}')"); done
    BULL=$(printf '%s\n' "${bull[@]}" | median)
    echo "BullMQ $(node -e "console.log(require('$WORK/bull/node_modules/bullmq/package.json').version)"): runs ${bull[*]} items/s, median $BULL"
  else
    echo "BullMQ: npm install failed; skipped"
  fi
fi

# RQ SimpleWorker (PyPI), in a temp venv. RQ is slow to enqueue; it drains RQ_N items.
RQ=""
if python3 -m venv "$WORK/venv" >/dev/null 2>&1 && "$WORK/venv/bin/pip" install -q rq >/dev/null 2>&1; then
  printf 'def noop(x):\n    return None\n' > "$WORK/rqnoop.py"
  cat > "$WORK/rqbench.py" <<'PY'
import sys, time
from redis import Redis
from rq import Queue, SimpleWorker
from rqnoop import noop
port, n, name = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
conn = Redis(port=port)
q = Queue(name, connection=conn)
with q.connection.pipeline() as pipe:
    # The do-nothing handler.
    q.enqueue_many([Queue.prepare_data(noop, args=("x",), result_ttl=0) for _ in range(n)], pipeline=pipe)
    pipe.execute()
w = SimpleWorker([q], connection=conn)
start = time.perf_counter()
w.work(burst=True, logging_level="WARNING")
secs = time.perf_counter() - start
print(n, f"{secs:.3f}", f"{n / secs:.0f}")
PY
  rq=()
  for r in $(seq "$RUNS"); do rq+=("$(cd "$WORK" && timeout 300 "$WORK/venv/bin/python" "$WORK/rqbench.py" "$RPORT" "$RQ_N" "rq$r" | tail -1 | awk '{print $3}')"); done
  RQ=$(printf '%s\n' "${rq[@]}" | median)
  echo "RQ $("$WORK/venv/bin/python" -c 'import rq; print(rq.__version__)') SimpleWorker ($RQ_N items): runs ${rq[*]} items/s, median $RQ"
else
  echo "RQ: pip install failed; skipped"
fi
[ -n "$BULL" ] && echo "ratio metering-core / BullMQ: $(python3 -c "print(round($OURS/$BULL, 2))")"
[ -n "$RQ" ] && echo "ratio metering-core / RQ: $(python3 -c "print(round($OURS/$RQ, 2))")"
fi

echo "== 2. end to end: $E2E_N records → control-plane double (2 ms, 1 % 503), max_concurrent_requests $MAX_CONCURRENT, runs: $RUNS =="
CPORT=$(free_port)
"$BIN/examples/bench_control_plane" "$CPORT" &
PIDS+=($!)
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$CPORT/stats" >/dev/null && break; sleep 0.1; done
rates=(); rsss=(); anons=(); files=(); healths=(); redis_ms=(); cpus=()
for r in $(seq "$RUNS"); do
  curl -sf -X POST "http://127.0.0.1:$CPORT/reset" >/dev/null
  HPORT=$(free_port)
  cat > "$WORK/agent.yaml" <<YAML
metering:
  server: {id: bench, region: local, port: 8080}
  redis: {url: "$REDIS_URL", key_prefix: "e2e$r:"}
  control_plane: {base_url: "http://127.0.0.1:$CPORT", api_key: k, retry_base: 0.01, retry_cap: 0.5}
  queues: {workers: 4, batch_size: 1000, max_concurrent_requests: $MAX_CONCURRENT}
  monitoring: {health_check_port: $HPORT, metrics_port: $HPORT, log_level: warn, heartbeat_interval: 5}
YAML
  fill "e2e$r:" "$E2E_N"
  redis-cli -p "$RPORT" config resetstat >/dev/null
  t0=$(date +%s.%N)
  "$BIN/tether" agent --config "$WORK/agent.yaml" 2>"$WORK/agent.log" &
  APID=$!
  PIDS+=($APID)
  until curl -sf "http://127.0.0.1:$HPORT/health" >/dev/null; do sleep 0.005; done
  t_health=$(date +%s.%N)
  while :; do
    u=$(curl -sf "http://127.0.0.1:$CPORT/stats" | python3 -c 'import json,sys; print(json.load(sys.stdin)["unique"])')
    [ "$u" -ge "$E2E_N" ] && break
    sleep 0.05
  done
  t1=$(date +%s.%N)
  STATS=$(curl -sf "http://127.0.0.1:$CPORT/stats")
  # Peak RSS, and what the current RSS is made of (anonymous = heap and stacks; file = the
  # mapped `tether` binary and shared libraries).
  MEM=$(awk '/VmHWM|RssAnon|RssFile/ {printf "%s ", $2}' "/proc/$APID/status")
  # CPU seconds the agent used (user + system): less noisy than wall-clock rates.
  CPU=$(awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$APID/stat")
  # Redis time spent in scripts (fetch, ack, …) during the run.
  RED=$(redis-cli -p "$RPORT" info commandstats | awk -F'[=,]' '/^cmdstat_(evalsha|eval):/ {u += $4} END {print u / 1000}')
  kill -TERM "$APID"; wait "$APID" || true
  left=$(redis-cli -p "$RPORT" llen "e2e$r:queue:usage_records")
  dlq=$(redis-cli -p "$RPORT" llen "e2e$r:metering:dlq:usage_records")
  line=$(python3 - "$t0" "$t_health" "$t1" "$E2E_N" "$MEM" "$STATS" "$left" "$dlq" "$RED" "$CPU" <<'PY'
import json, sys
t0, th, t1, n = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
hwm, anon, file = (int(x) for x in sys.argv[5].split())
s = json.loads(sys.argv[6])
rate = n / (t1 - t0)
print(f"{rate:.0f} {hwm / 1024:.1f} {anon / 1024:.1f} {file / 1024:.1f} {(th - t0) * 1000:.0f} {float(sys.argv[9]):.0f} {sys.argv[10]}")
print(f"run: {rate:.0f} records/s ({t1 - t0:.2f} s for {n}); /health after {(th - t0) * 1000:.0f} ms; "
      f"peak RSS {hwm / 1024:.1f} MiB (at the end: anon {anon / 1024:.1f}, file {file / 1024:.1f} MiB); "
      f"agent CPU {sys.argv[10]} s; Redis script time {float(sys.argv[9]):.0f} ms; requests {s['requests']}, 503s {s['failed']}, "
      f"distinct {s['unique']}, duplicate ids {s['duplicates']}; left in queue {sys.argv[7]}, DLQ {sys.argv[8]}",
      file=sys.stderr)
PY
)
  read -r rate rss anon file health red cpu <<<"$line"
  rates+=("$rate"); rsss+=("$rss"); anons+=("$anon"); files+=("$file"); healths+=("$health"); redis_ms+=("$red")
  cpus+=("$cpu")
done
echo "records/s end to end (from process start): runs ${rates[*]}, median $(printf '%s\n' "${rates[@]}" | median)"
echo "peak RSS MiB: runs ${rsss[*]}, median $(printf '%s\n' "${rsss[@]}" | median)" \
  "(anon ${anons[*]}; file-backed ${files[*]})"
echo "start to /health ms: runs ${healths[*]}, median $(printf '%s\n' "${healths[@]}" | median)"
echo "agent CPU s: runs ${cpus[*]}, median $(printf '%s\n' "${cpus[@]}" | median)"
echo "Redis script time per run ms: ${redis_ms[*]}"
