# The prologue shared by scripts/bench-*.sh (sourced, not run). After `bench_setup`:
# WORK is a fresh directory and PIDS an array; on exit every PID in PIDS is killed, waited for,
# and WORK is removed.

bench_setup() {
  WORK=$(mktemp -d)
  PIDS=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}

# free_port: prints a TCP port of 127.0.0.1 that was free a moment ago.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_redis [ARG...]: a private redis-server (no persistence, files in WORK, extra ARGs) on a
# spare port, waited for until it answers; sets RPORT to its port.
start_redis() {
  RPORT=$(free_port)
  redis-server --port "$RPORT" --bind 127.0.0.1 --save '' --appendonly no "$@" \
    --dir "$WORK" >/dev/null 2>&1 &
  PIDS+=($!)
  for _ in $(seq 50); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
}

# median: the median of the numbers on stdin, one a line.
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

# server_base FILE: prints the URL of the `tether server` whose stdout is FILE once it printed
# "tether server listening on URL" (waits up to 10 s; prints nothing if it never did).
server_base() {
  local base=""
  for _ in $(seq 100); do
    base=$(sed -n 's/^tether server listening on //p' "$1" 2>/dev/null | head -1)
    [ -n "$base" ] && break
    sleep 0.1
  done
  printf '%s' "$base"
}
